//! The JSON Patch kura answers with, written straight to its JSON text from borrowed data.
//!
//! Every admission of an opted-in pod writes a patch, so this is on the webhook's hot path: the
//! operations are serialized once, from structs that borrow the pod and the configuration,
//! instead of being built as `serde_json::Value` trees (a map allocation per object, a string
//! per key) that are then serialized and dropped.

use std::fmt;

use k8s_openapi::api::core::v1::{EnvVar, VolumeMount};
use serde::Serialize;

/// A JSON Patch document of `add` operations, as JSON text.
#[derive(Clone, PartialEq, Eq)]
pub struct PatchText {
    /// `[` and the operations written so far, comma-separated; `]` is added by [`Self::into_json`].
    json: Vec<u8>,
    ops: usize,
}

/// Room for an injection's patch (the agent's container and a few mounts: about 3 KiB).
const CAPACITY: usize = 4 * 1024;

impl Default for PatchText {
    fn default() -> Self {
        let mut json = Vec::with_capacity(CAPACITY);
        json.push(b'[');
        PatchText { json, ops: 0 }
    }
}

impl PatchText {
    /// Appends `{"op":"add","path":…,"value":…}`; `path` is unescaped reference tokens.
    pub fn add(&mut self, path: &[&str], value: &impl Serialize) {
        if self.ops > 0 {
            self.json.push(b',');
        }
        self.ops += 1;
        self.json.extend_from_slice(br#"{"op":"add","path":"#);
        let mut pointer = String::with_capacity(64);
        for token in path {
            pointer.push('/');
            // RFC 6901: `~` is `~0`, `/` is `~1`.
            for ch in token.chars() {
                match ch {
                    '~' => pointer.push_str("~0"),
                    '/' => pointer.push_str("~1"),
                    c => pointer.push(c),
                }
            }
        }
        write_json(&mut self.json, &pointer);
        self.json.extend_from_slice(br#","value":"#);
        write_json(&mut self.json, value);
        self.json.push(b'}');
    }

    /// The number of operations.
    pub fn len(&self) -> usize {
        self.ops
    }

    pub fn is_empty(&self) -> bool {
        self.ops == 0
    }

    /// The document's JSON text.
    pub fn into_json(mut self) -> Vec<u8> {
        self.json.push(b']');
        self.json
    }

    /// The operations, decoded (for inspecting and applying a plan outside the webhook).
    pub fn operations(&self) -> json_patch::Patch {
        let mut json = self.json.clone();
        json.push(b']');
        serde_json::from_slice(&json).expect("kura writes valid JSON Patch documents")
    }
}

/// Serializing to a `Vec` fails only on a map with non-string keys, which none of the values
/// kura writes (its own structs below, k8s-openapi types, strings) has.
fn write_json(out: &mut Vec<u8>, value: &(impl Serialize + ?Sized)) {
    serde_json::to_writer(out, value).expect("patch values have string keys only");
}

/// The patch holds references to secrets and container settings, never secret values, so it
/// prints as its text.
impl fmt::Debug for PatchText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut json = self.json.clone();
        json.push(b']');
        f.debug_tuple("PatchText")
            .field(&String::from_utf8_lossy(&json))
            .finish()
    }
}

/// An environment variable of the agent: one of kura's, or one copied from an app container.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Env<'a> {
    Set { name: &'a str, value: &'a str },
    Copied(&'a EnvVar),
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_as_group: Option<i64>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_are_escaped_and_the_text_is_the_document() {
        let mut p = PatchText::default();
        assert!(p.is_empty());
        assert_eq!(p.clone().into_json(), b"[]");
        p.add(&["metadata", "annotations", "kura.dev/status"], &"a\"b");
        p.add(&["spec", "x~y", "-"], &[1, 2]);
        assert_eq!(p.len(), 2);
        let doc: serde_json::Value = serde_json::from_slice(&p.clone().into_json()).expect("JSON");
        assert_eq!(
            doc,
            json!([
                { "op": "add", "path": "/metadata/annotations/kura.dev~1status", "value": "a\"b" },
                { "op": "add", "path": "/spec/x~0y/-", "value": [1, 2] },
            ])
        );
        assert_eq!(serde_json::to_value(p.operations()).expect("ops"), doc);
        assert!(format!("{p:?}").contains("kura.dev~1status"));
    }
}
