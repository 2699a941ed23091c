//! What kura adds to a pod, as structs that borrow the pod and the configuration and serialize
//! straight into the patch text ([`crate::wire::PatchText`]) rather than through k8s-openapi's
//! owned types. Field names are the Kubernetes API's.

use k8s_openapi::api::core::v1::{EnvVar, VolumeMount};
use serde::Serialize;

/// An environment variable of the agent: one of kura's, or one copied from an app container.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Env<'a> {
    Set {
        name: &'a str,
        value: &'a str,
    },
    /// A field of the pod, through the downward API (`valueFrom.fieldRef`).
    #[serde(rename_all = "camelCase")]
    Field {
        name: &'a str,
        value_from: ValueFrom<'a>,
    },
    Copied(&'a EnvVar),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ValueFrom<'a> {
    pub field_ref: FieldRef<'a>,
}

/// A volume mount: one of kura's, or one copied from an app container.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Mount<'a> {
    #[serde(rename_all = "camelCase")]
    Ours {
        name: &'a str,
        mount_path: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        read_only: Option<bool>,
    },
    Copied(&'a VolumeMount),
}

/// The volumes kura adds.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Volume<'a> {
    #[serde(rename_all = "camelCase")]
    Memory {
        name: &'a str,
        empty_dir: EmptyDir<'a>,
    },
    Annotations {
        name: &'a str,
        #[serde(rename = "downwardAPI")]
        downward_api: DownwardApi<'a>,
    },
    /// A disk-backed `emptyDir` (the binary copy for `kura-agent exec`): reclaimable page cache,
    /// not memory charged to the pod.
    #[serde(rename_all = "camelCase")]
    Scratch {
        name: &'a str,
        empty_dir: ScratchDir<'a>,
    },
    /// A projected service-account token for the version service (contract §8). No
    /// `defaultMode`: the kubelet's own rule for token files (KEP 2451: owned by the pod's one
    /// runAsUser with 0600 when all its containers share it, else readable by the pod's users)
    /// keeps it readable by the agent; a fixed mode could lock the agent out.
    Token {
        name: &'a str,
        projected: Projected<'a>,
    },
}

#[derive(Serialize)]
pub struct Projected<'a> {
    pub sources: [ProjectedSource<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProjectedSource<'a> {
    pub service_account_token: TokenProjection<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenProjection<'a> {
    pub audience: &'a str,
    pub expiration_seconds: i64,
    pub path: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScratchDir<'a> {
    pub size_limit: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDir<'a> {
    pub medium: &'a str,
    pub size_limit: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DownwardApi<'a> {
    pub default_mode: i32,
    pub items: [DownwardItem<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DownwardItem<'a> {
    pub path: &'a str,
    pub field_ref: FieldRef<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldRef<'a> {
    pub api_version: &'a str,
    pub field_path: &'a str,
}

/// The injected container.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Container<'a> {
    pub name: &'a str,
    pub image: &'a str,
    pub image_pull_policy: &'a str,
    pub command: [&'a str; 1],
    pub args: [&'a str; 1],
    pub env: Vec<Env<'a>>,
    pub volume_mounts: Vec<Mount<'a>>,
    pub resources: Resources<'a>,
    pub security_context: SecurityContext,
    pub termination_message_policy: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Probe<'a>>,
}

#[derive(Serialize)]
pub struct Resources<'a> {
    pub requests: Quantities<'a>,
    pub limits: Quantities<'a>,
}

#[derive(Serialize)]
pub struct Quantities<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<&'a str>,
    pub memory: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityContext {
    pub run_as_non_root: bool,
    pub run_as_user: i64,
    pub run_as_group: i64,
    pub allow_privilege_escalation: bool,
    pub read_only_root_filesystem: bool,
    pub privileged: bool,
    pub capabilities: Capabilities,
    pub seccomp_profile: SeccompProfile,
}

#[derive(Serialize)]
pub struct Capabilities {
    pub drop: [&'static str; 1],
}

#[derive(Serialize)]
pub struct SeccompProfile {
    #[serde(rename = "type")]
    pub type_: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe<'a> {
    pub exec: Exec<'a>,
    pub period_seconds: i32,
    pub failure_threshold: i32,
    pub timeout_seconds: i32,
}

#[derive(Serialize)]
pub struct Exec<'a> {
    pub command: [&'a str; 4],
}
