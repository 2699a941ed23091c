//! Planning the mutation of an opted-in pod: a pure function of (pod, requested secrets, config)
//! that returns JSON Patch operations. No I/O happens here.
//!
//! What is added: an in-memory `emptyDir`, a downward-API volume of the pod's annotations, the
//! agent (a native sidecar placed first among the init containers by default; an init container
//! plus a regular sidecar for clusters before 1.29; an init container alone for `init-only`), and
//! a read-only mount in the selected containers. With the version service on (contract §8), the
//! agent that keeps running also gets a projected service-account token for kura's audience and
//! the service's address; an init-only agent never asks it. The pod is marked with
//! `kura.dev/status`, so a second pass adds nothing.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, VolumeMount};
use kura_agent::annotations::{self, PodSecrets};
use kura_agent::contract::{self, AGENT_BINARY, AgentCommand, PODINFO_DIR};
use kura_agent::spec::AgentMode;
use kura_agent::versions;
use sha2::{Digest, Sha256};

use crate::wire::PatchText;

mod config;
mod declared;
mod shape;
pub use config::{
    AgentVersionService, DEFAULT_AGENT_IMAGE, DEFAULT_REFRESH_SECS, InjectConfig, Resources,
    SidecarMode,
};
pub use declared::{Declarations, Declared};

pub const VOLUME: &str = "kura-secrets";
pub const PODINFO_VOLUME: &str = "kura-podinfo";
/// The small disk volume the agent copies its binary into for `kura-agent exec` (pods with
/// environment variables only).
pub const EXEC_VOLUME: &str = "kura-bin";
/// Size limit of [`EXEC_VOLUME`]: the agent binary (about 7 MB) with room to spare.
pub const EXEC_VOLUME_SIZE: &str = "32Mi";
/// The projected service-account token the running agent presents to the version service
/// (contract §8), added only when the service is on.
pub const TOKEN_VOLUME: &str = "kura-token";
pub const AGENT: &str = "kura-agent";
/// The init container that precedes the regular sidecar in legacy mode.
pub const AGENT_INIT: &str = "kura-agent-init";
pub const DEFAULT_UID: i64 = 65532;

/// Environment variables that carry the pod's AWS identity (IRSA and EKS Pod Identity).
pub const IDENTITY_ENV: [&str; 7] = [
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_STS_REGIONAL_ENDPOINTS",
];

/// Volumes that carry the identity tokens (projected by the EKS webhook / Pod Identity agent).
pub const IDENTITY_VOLUMES: [&str; 2] = ["aws-iam-token", "eks-pod-identity-token"];

/// A problem with the pod that blocks injection (reported as KURA001).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

/// The planned mutation.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub patch: PatchText,
    /// The `kura.dev/status` value written.
    pub status: String,
}

/// The status annotation value for a spec.
pub fn status_for(spec_json: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(spec_json.as_bytes());
    let mut status = String::with_capacity(32);
    status.push_str("injected sha256:");
    for b in digest.iter().take(8) {
        status.push(char::from(HEX[usize::from(b >> 4)]));
        status.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    status
}

/// Whether the pod already went through kura's mutation.
pub fn is_injected(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotations::STATUS))
        .is_some_and(|s| s.starts_with("injected"))
}

/// Whether the pod's final spec carries the agent (for KURA008).
pub fn has_agent(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else { return false };
    let in_init = spec
        .init_containers
        .iter()
        .flatten()
        .any(|c| c.name == AGENT || c.name == AGENT_INIT);
    in_init || spec.containers.iter().any(|c| c.name == AGENT)
}

/// The annotations file's path inside [`PODINFO_DIR`]: the downward-API item's `path`.
fn annotations_item() -> &'static str {
    contract::ANNOTATIONS_FILE
        .strip_prefix(PODINFO_DIR)
        .and_then(|rest| rest.strip_prefix('/'))
        .expect("the contract puts the annotations file inside the podinfo directory")
}

/// The token file's path inside [`versions::TOKEN_DIR`]: the projected source's `path`.
fn token_item() -> &'static str {
    versions::TOKEN_FILE
        .strip_prefix(versions::TOKEN_DIR)
        .and_then(|rest| rest.strip_prefix('/'))
        .expect("the protocol puts the token file inside the token directory")
}

/// Whether two absolute directory paths (without a trailing `/`) are one, or one holds the other.
fn nested(a: &str, b: &str) -> bool {
    let within = |inner: &str, outer: &str| {
        inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    within(a, b) || within(b, a)
}

/// Plans the mutation of a pod that has not been injected yet.
pub fn plan(pod: &Pod, secrets: &PodSecrets, cfg: &InjectConfig) -> Result<Plan, Vec<Problem>> {
    plan_declared(
        pod,
        &Declared::new(secrets.clone(), cfg.default_refresh_secs),
        cfg,
    )
}

/// [`plan`] for a declaration already parsed, with its agent spec and status (what
/// [`declared`] answers); `declared` must have been made with `cfg`'s default refresh interval.
pub fn plan_declared(
    pod: &Pod,
    declared: &Declared,
    cfg: &InjectConfig,
) -> Result<Plan, Vec<Problem>> {
    let Declared {
        secrets,
        spec_json,
        status,
    } = declared;
    let mut problems = Vec::new();
    let Some(spec) = &pod.spec else {
        return Err(vec![Problem {
            field: "spec".into(),
            message: "the pod has no spec".into(),
        }]);
    };
    let init = spec.init_containers.as_deref().unwrap_or_default();

    // Names we add must not exist already: duplicating or overwriting them would be worse.
    for v in spec.volumes.iter().flatten() {
        // kura-token is refused even with the version service off, so turning it on never
        // starts refusing pods that were admitted before.
        if [VOLUME, PODINFO_VOLUME, EXEC_VOLUME, TOKEN_VOLUME].contains(&v.name.as_str()) {
            problems.push(Problem {
                field: format!("spec.volumes[{}]", v.name),
                message: format!(
                    "volume name {:?} is reserved for kura; rename the pod's volume",
                    v.name
                ),
            });
        }
    }
    for c in spec.containers.iter().chain(init) {
        if c.name == AGENT || c.name == AGENT_INIT {
            problems.push(Problem {
                field: format!("container {}", c.name),
                message: format!(
                    "container name {:?} is reserved for kura; rename the container",
                    c.name
                ),
            });
        }
    }

    let targets = select_containers(spec.containers.as_slice(), init, secrets, &mut problems);
    for (c, _, _) in &targets {
        if let Some(m) = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path.trim_end_matches('/') == secrets.mount_path)
        {
            problems.push(Problem {
                field: format!("container {}", c.name),
                message: format!(
                    "already mounts volume {:?} at {}; choose another path with {}",
                    m.name,
                    secrets.mount_path,
                    annotations::MOUNT_PATH
                ),
            });
        }
    }

    // The running agent mounts both the secrets and the token; one inside the other (or both
    // at one path, which the API server rejects) would hide or mix them.
    let version_service = cfg
        .version_service
        .as_ref()
        .filter(|_| secrets.agent == AgentMode::Sidecar);
    if version_service.is_some() && nested(&secrets.mount_path, versions::TOKEN_DIR) {
        problems.push(Problem {
            field: annotations::MOUNT_PATH.into(),
            message: format!(
                "{} {} overlaps {}, where kura mounts the agent's token for the version service; choose another path",
                annotations::MOUNT_PATH,
                secrets.mount_path,
                versions::TOKEN_DIR
            ),
        });
    }

    for (c, list, _) in &targets {
        if wraps(secrets, list) {
            check_wrappable(c, secrets, &mut problems);
        }
    }

    let (uid, gid) = agent_identity(pod, &targets, secrets, &mut problems);
    if !problems.is_empty() {
        return Err(problems);
    }

    let identity = Identity::from_containers(spec.containers.iter().chain(init));

    let mut ops = PatchText::default();
    match &pod.metadata.annotations {
        Some(_) => ops.add(&["metadata", "annotations", annotations::STATUS], status),
        None => ops.add(
            &["metadata", "annotations"],
            &BTreeMap::from([(annotations::STATUS, status.as_str())]),
        ),
    }

    let mut volumes = vec![shape::Volume::Memory {
        name: VOLUME,
        empty_dir: shape::EmptyDir {
            medium: "Memory",
            size_limit: &cfg.volume_size_limit,
        },
    }];
    if secrets.has_env() {
        volumes.push(shape::Volume::Scratch {
            name: EXEC_VOLUME,
            empty_dir: shape::ScratchDir {
                size_limit: EXEC_VOLUME_SIZE,
            },
        });
    }
    if secrets.agent == AgentMode::Sidecar {
        volumes.push(shape::Volume::Annotations {
            name: PODINFO_VOLUME,
            downward_api: shape::DownwardApi {
                default_mode: 0o444,
                items: [shape::DownwardItem {
                    path: annotations_item(),
                    field_ref: shape::FieldRef {
                        api_version: "v1",
                        field_path: "metadata.annotations",
                    },
                }],
            },
        });
    }
    if version_service.is_some() {
        volumes.push(shape::Volume::Token {
            name: TOKEN_VOLUME,
            projected: shape::Projected {
                sources: [shape::ProjectedSource {
                    service_account_token: shape::TokenProjection {
                        audience: versions::AUDIENCE,
                        expiration_seconds: versions::TOKEN_EXPIRATION_SECONDS,
                        path: token_item(),
                    },
                }],
            },
        });
    }
    if spec.volumes.is_some() {
        for v in &volumes {
            ops.add(&["spec", "volumes", "-"], v);
        }
    } else {
        ops.add(&["spec", "volumes"], &volumes);
    }

    // Mounts go in before the agent is inserted at initContainers/0, so indices are the pod's own.
    let mount = shape::Mount::Ours {
        name: VOLUME,
        mount_path: &secrets.mount_path,
        read_only: Some(true),
    };
    let exec_mount = shape::Mount::Ours {
        name: EXEC_VOLUME,
        mount_path: contract::EXEC_DIR,
        read_only: Some(true),
    };
    let on_rotation = secrets.env_on_rotation.to_string();
    let exec_env = [
        shape::Env::Set {
            name: contract::env::EXEC_VALUES_DIR,
            value: &secrets.mount_path,
        },
        shape::Env::Set {
            name: contract::env::EXEC_ON_ROTATION,
            value: &on_rotation,
        },
    ];
    for (c, list, index) in &targets {
        let idx = index.to_string();
        let wrapped = wraps(secrets, list);
        let mounts: &[&shape::Mount] = if wrapped {
            &[&mount, &exec_mount]
        } else {
            &[&mount]
        };
        append_all(
            &mut ops,
            &["spec", list, &idx, "volumeMounts"],
            c.volume_mounts.is_some(),
            mounts,
        );
        if wrapped {
            // `add` on an existing member replaces it (RFC 6902 §4.1).
            let command: Vec<&str> = EXEC_COMMAND
                .into_iter()
                .chain(c.command.iter().flatten().map(String::as_str))
                .collect();
            ops.add(&["spec", list, &idx, "command"], &command);
            append_all(
                &mut ops,
                &["spec", list, &idx, "env"],
                c.env.is_some(),
                &exec_env,
            );
        }
    }

    let agent = |name, kind| AgentShape {
        name,
        kind,
        // The first agent container to run copies the binary for `kura-agent exec`.
        exec_copy: secrets.has_env() && kind != AgentKind::Sidecar,
        cfg,
        mount_path: &secrets.mount_path,
        spec_json,
        uid,
        gid,
        identity: &identity,
        version_service: version_service.filter(|_| kind.command() == AgentCommand::Run),
    };
    let (first_init, regular) = match (secrets.agent, cfg.sidecar_mode) {
        (AgentMode::InitOnly, _) => (agent(AGENT, AgentKind::Init), None),
        (AgentMode::Sidecar, SidecarMode::Native) => (agent(AGENT, AgentKind::NativeSidecar), None),
        (AgentMode::Sidecar, SidecarMode::Legacy) => (
            agent(AGENT_INIT, AgentKind::Init),
            Some(agent(AGENT, AgentKind::Sidecar)),
        ),
    };
    if spec.init_containers.is_some() {
        ops.add(&["spec", "initContainers", "0"], &first_init.container());
    } else {
        ops.add(&["spec", "initContainers"], &[first_init.container()]);
    }
    if let Some(sidecar) = regular {
        ops.add(&["spec", "containers", "-"], &sidecar.container());
    }
    Ok(Plan {
        patch: ops,
        status: status.clone(),
    })
}

/// On reinvocation: identity that another webhook added after kura ran is given to the agent.
pub fn top_up_identity(pod: &Pod) -> PatchText {
    let mut ops = PatchText::default();
    let Some(spec) = &pod.spec else {
        return ops;
    };
    let init = spec.init_containers.as_deref().unwrap_or_default();
    let apps = spec
        .containers
        .iter()
        .chain(init)
        .filter(|c| c.name != AGENT && c.name != AGENT_INIT);
    let identity = Identity::from_containers(apps);
    for (list, containers) in [
        ("initContainers", init),
        ("containers", spec.containers.as_slice()),
    ] {
        for (i, c) in containers.iter().enumerate() {
            if c.name != AGENT && c.name != AGENT_INIT {
                continue;
            }
            let idx = i.to_string();
            let have: BTreeSet<&str> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
            let missing: Vec<&EnvVar> = identity
                .env
                .iter()
                .filter(|e| !have.contains(e.name.as_str()))
                .collect();
            append_all(
                &mut ops,
                &["spec", list, &idx, "env"],
                c.env.is_some(),
                &missing,
            );
            let have: BTreeSet<&str> = c
                .volume_mounts
                .iter()
                .flatten()
                .map(|m| m.mount_path.as_str())
                .collect();
            let missing: Vec<&VolumeMount> = identity
                .mounts
                .iter()
                .filter(|m| !have.contains(m.mount_path.as_str()))
                .collect();
            append_all(
                &mut ops,
                &["spec", list, &idx, "volumeMounts"],
                c.volume_mounts.is_some(),
                &missing,
            );
        }
    }
    ops
}

fn append_all<T: serde::Serialize>(ops: &mut PatchText, path: &[&str], exists: bool, items: &[T]) {
    if items.is_empty() {
        return;
    }
    if exists {
        let mut p = path.to_vec();
        p.push("-");
        for item in items {
            ops.add(&p, item);
        }
    } else {
        ops.add(path, &items);
    }
}

/// The containers that get the mount: (container, list name, index in that list).
fn select_containers<'a>(
    containers: &'a [Container],
    init: &'a [Container],
    secrets: &PodSecrets,
    problems: &mut Vec<Problem>,
) -> Vec<(&'a Container, &'static str, usize)> {
    let all = containers
        .iter()
        .enumerate()
        .map(|(i, c)| (c, "containers", i))
        .chain(
            init.iter()
                .enumerate()
                .map(|(i, c)| (c, "initContainers", i)),
        );
    match &secrets.containers {
        None => all.collect(),
        Some(wanted) => {
            let names: BTreeSet<&str> = containers
                .iter()
                .chain(init)
                .map(|c| c.name.as_str())
                .collect();
            for w in wanted {
                if !names.contains(w.as_str()) {
                    problems.push(Problem {
                        field: annotations::CONTAINERS.into(),
                        message: format!(
                            "annotation {}: the pod has no container {w:?} (it has: {})",
                            annotations::CONTAINERS,
                            names.iter().copied().collect::<Vec<_>>().join(", ")
                        ),
                    });
                }
            }
            all.filter(|(c, _, _)| wanted.iter().any(|w| w == &c.name))
                .collect()
        }
    }
}

/// The start of a wrapped container's `command`: the agent's copy, then `exec --`.
const EXEC_COMMAND: [&str; 3] = [contract::EXEC_PATH, AgentCommand::Exec.as_str(), "--"];

/// Whether a selected container (in `list`) runs through `kura-agent exec`: with environment
/// variables, every app container by default (contract §6), and init containers only when
/// `kura.dev/containers` names them, so an init container another webhook adds without a
/// `command` (a mesh's) does not block the pod.
fn wraps(secrets: &PodSecrets, list: &str) -> bool {
    secrets.has_env() && (secrets.containers.is_some() || list == "containers")
}

/// Checks that a selected container can run through `kura-agent exec`: it has a `command` to
/// wrap (admission cannot see an image's entrypoint), none of its own `env` entries has a
/// declared variable's name (never silently won), and it does not use the wrapper's names.
fn check_wrappable(c: &Container, secrets: &PodSecrets, problems: &mut Vec<Problem>) {
    if c.command.as_ref().is_none_or(Vec::is_empty) {
        problems.push(Problem {
            field: format!("container {}", c.name),
            message: format!(
                "container {:?} has no command, and environment variables from kura ({}<NAME>, or env/envFrom in {}) run the                  container's command through kura-agent exec; admission cannot see an image's entrypoint, so set command                  (and args) in the pod spec to what the image runs, or limit {} to containers that have one",
                c.name,
                annotations::ENV_PREFIX,
                annotations::SECRETS,
                annotations::CONTAINERS
            ),
        });
    }
    // KURA_EXEC_WAIT and KURA_EXEC_GRACE stay the container's to tune.
    let reserved = [
        contract::env::EXEC_VALUES_DIR,
        contract::env::EXEC_ON_ROTATION,
    ];
    for e in c.env.iter().flatten() {
        if let Some(v) = secrets.env.iter().find(|v| v.name == e.name) {
            problems.push(Problem {
                field: format!("container {}", c.name),
                message: format!(
                    "container {:?} sets {} in its own env, and {}{} declares it too; a conflict is never silently won:                      remove one of them",
                    c.name,
                    e.name,
                    annotations::ENV_PREFIX,
                    v.name
                ),
            });
        }
        if reserved.contains(&e.name.as_str()) {
            problems.push(Problem {
                field: format!("container {}", c.name),
                message: format!(
                    "container {:?} sets {}, which kura sets for kura-agent exec; remove it",
                    c.name, e.name
                ),
            });
        }
    }
    if let Some(m) = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path.trim_end_matches('/') == contract::EXEC_DIR)
    {
        problems.push(Problem {
            field: format!("container {}", c.name),
            message: format!(
                "already mounts volume {:?} at {}, where kura mounts kura-agent for its environment variables; move it",
                m.name,
                contract::EXEC_DIR
            ),
        });
    }
}

/// The uid and gid the agent runs as. The uid: the annotation, else the app containers'
/// runAsUser, else the pod's, else 65532; the files are then owned by the user that reads them,
/// so 0400 works. The gid is never left to the runtime (containerd's default is group 0): the
/// reading container's runAsGroup (its own or the pod's) when set, so 0440 files belong to the
/// app's group; else the pod's fsGroup, the group the kubelet gives the volume and every
/// container; else the uid itself, the distroless convention (65532:65532).
fn agent_identity(
    pod: &Pod,
    targets: &[(&Container, &'static str, usize)],
    secrets: &PodSecrets,
    problems: &mut Vec<Problem>,
) -> (i64, i64) {
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let pod_uid = pod_sc.and_then(|s| s.run_as_user);
    let pod_gid = pod_sc.and_then(|s| s.run_as_group);
    let fs_group = pod_sc.and_then(|s| s.fs_group);
    let effective = |c: &Container| {
        c.security_context
            .as_ref()
            .and_then(|s| s.run_as_user)
            .or(pod_uid)
    };
    let gid_of = |c: &Container| {
        c.security_context
            .as_ref()
            .and_then(|s| s.run_as_group)
            .or(pod_gid)
    };

    let group = |c: Option<&Container>, uid: i64| {
        c.and_then(gid_of)
            .filter(|g| *g != 0)
            .or(fs_group.filter(|g| *g != 0))
            .unwrap_or(uid)
    };

    if let Some(uid) = secrets.run_as_user {
        return (uid, group(targets.first().map(|t| t.0), uid));
    }
    // Containers without a runAsUser run as their image's user, which kura cannot know; only
    // explicit, differing users are a conflict.
    let uids: BTreeSet<i64> = targets
        .iter()
        .filter_map(|(c, _, _)| effective(c))
        .collect();
    if uids.len() > 1 {
        let readable_by_group = secrets
            .files
            .iter()
            .map(|f| f.mode)
            .chain(secrets.templates.iter().map(|t| t.mode))
            .all(|m| m.0 & 0o040 != 0);
        if fs_group.is_none() || !readable_by_group {
            let list: Vec<String> = targets
                .iter()
                .map(|(c, _, _)| {
                    format!(
                        "{}={}",
                        c.name,
                        effective(c).map_or("image default".into(), |u| u.to_string())
                    )
                })
                .collect();
            problems.push(Problem {
                field: "securityContext.runAsUser".into(),
                message: format!(
                    "the mounted containers run as different users ({}); set spec.securityContext.fsGroup, \
                     {}: \"0440\" and {}: <uid>, or limit {} to containers of one user",
                    list.join(", "),
                    annotations::FILE_MODE,
                    annotations::RUN_AS_USER,
                    annotations::CONTAINERS
                ),
            });
        }
    }
    let first = targets
        .iter()
        .map(|(c, _, _)| *c)
        .find(|c| effective(c).is_some())
        .or_else(|| targets.first().map(|t| t.0));
    let uid = first
        .and_then(effective)
        .filter(|u| *u != 0)
        .unwrap_or(DEFAULT_UID);
    (uid, group(first, uid))
}

/// The AWS identity the app containers carry, to give to the agent.
struct Identity {
    env: Vec<EnvVar>,
    mounts: Vec<VolumeMount>,
}

impl Identity {
    fn from_containers<'a>(containers: impl Iterator<Item = &'a Container>) -> Self {
        let mut env: Vec<EnvVar> = Vec::new();
        let mut mounts: Vec<VolumeMount> = Vec::new();
        for c in containers {
            for e in c.env.iter().flatten() {
                if IDENTITY_ENV.contains(&e.name.as_str()) && !env.iter().any(|x| x.name == e.name)
                {
                    env.push(e.clone());
                }
            }
            for m in c.volume_mounts.iter().flatten() {
                if IDENTITY_VOLUMES.contains(&m.name.as_str())
                    && !mounts.iter().any(|x| x.mount_path == m.mount_path)
                {
                    mounts.push(VolumeMount {
                        read_only: Some(true),
                        ..m.clone()
                    });
                }
            }
        }
        Identity { env, mounts }
    }
}

/// Which of the three injected containers an agent is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AgentKind {
    /// Fetches once and exits: `init-only`, and the first half of a legacy sidecar.
    Init,
    /// A regular container that keeps running and follows `kura.dev/refresh-now` (clusters
    /// before 1.29, after an [`AgentKind::Init`]).
    Sidecar,
    /// An init container with `restartPolicy: Always` and a startup probe: runs before the app
    /// containers start and alongside them after.
    NativeSidecar,
}

impl AgentKind {
    fn command(self) -> AgentCommand {
        match self {
            AgentKind::Init => AgentCommand::Init,
            AgentKind::Sidecar | AgentKind::NativeSidecar => AgentCommand::Run,
        }
    }

    /// Keeps running, so it watches the pod's annotations.
    fn follows_annotations(self) -> bool {
        self != AgentKind::Init
    }
}

/// What one injected container is made of.
struct AgentShape<'a> {
    name: &'a str,
    kind: AgentKind,
    exec_copy: bool,
    cfg: &'a InjectConfig,
    mount_path: &'a str,
    spec_json: &'a str,
    uid: i64,
    gid: i64,
    identity: &'a Identity,
    /// Set on the agent that runs `kura-agent run` when the version service is on.
    version_service: Option<&'a AgentVersionService>,
}

impl<'a> AgentShape<'a> {
    fn container(&self) -> shape::Container<'a> {
        use shape::{Env, Mount};
        let cfg = self.cfg;
        let native = self.kind == AgentKind::NativeSidecar;
        let mut env = vec![
            Env::Set {
                name: contract::env::SPEC,
                value: self.spec_json,
            },
            Env::Set {
                name: contract::env::DIR,
                value: self.mount_path,
            },
        ];
        if let Some(store) = &cfg.agent_store {
            env.push(Env::Set {
                name: contract::env::STORE,
                value: store,
            });
        }
        let mut mounts = vec![Mount::Ours {
            name: VOLUME,
            mount_path: self.mount_path,
            read_only: None,
        }];
        if self.kind.follows_annotations() {
            env.push(Env::Set {
                name: contract::env::ANNOTATIONS_FILE,
                value: contract::ANNOTATIONS_FILE,
            });
            mounts.push(Mount::Ours {
                name: PODINFO_VOLUME,
                mount_path: PODINFO_DIR,
                read_only: Some(true),
            });
        }
        if self.exec_copy {
            env.push(Env::Set {
                name: contract::env::EXEC_COPY_TO,
                value: contract::EXEC_DIR,
            });
            mounts.push(Mount::Ours {
                name: EXEC_VOLUME,
                mount_path: contract::EXEC_DIR,
                read_only: None,
            });
        }
        if let Some(vs) = self.version_service {
            env.extend([
                Env::Set {
                    name: contract::env::VERSION_SERVICE_URL,
                    value: &vs.url,
                },
                Env::Set {
                    name: contract::env::VERSION_SERVICE_CA,
                    value: &vs.ca_pem,
                },
                Env::Set {
                    name: contract::env::VERSION_SERVICE_TOKEN,
                    value: versions::TOKEN_FILE,
                },
                Env::Field {
                    name: contract::env::POD_NAME,
                    value_from: shape::ValueFrom {
                        field_ref: shape::FieldRef {
                            api_version: "v1",
                            field_path: "metadata.name",
                        },
                    },
                },
            ]);
            mounts.push(Mount::Ours {
                name: TOKEN_VOLUME,
                mount_path: versions::TOKEN_DIR,
                read_only: Some(true),
            });
        }
        env.extend(self.identity.env.iter().map(Env::Copied));
        mounts.extend(self.identity.mounts.iter().map(Mount::Copied));
        let r = &cfg.resources;
        shape::Container {
            name: self.name,
            image: &cfg.agent_image,
            image_pull_policy: "IfNotPresent",
            command: [AGENT_BINARY],
            args: [self.kind.command().as_str()],
            env,
            volume_mounts: mounts,
            resources: shape::Resources {
                requests: shape::Quantities {
                    cpu: Some(&r.cpu_request),
                    memory: &r.memory_request,
                },
                limits: shape::Quantities {
                    cpu: r.cpu_limit.as_deref(),
                    memory: &r.memory_limit,
                },
            },
            security_context: shape::SecurityContext {
                run_as_non_root: true,
                run_as_user: self.uid,
                run_as_group: self.gid,
                allow_privilege_escalation: false,
                read_only_root_filesystem: true,
                privileged: false,
                capabilities: shape::Capabilities { drop: ["ALL"] },
                seccomp_profile: shape::SeccompProfile {
                    type_: "RuntimeDefault",
                },
            },
            termination_message_policy: "FallbackToLogsOnError",
            restart_policy: native.then_some("Always"),
            // App containers and later init containers start once this passes: after the
            // first complete write.
            startup_probe: native.then_some(shape::Probe {
                exec: shape::Exec {
                    command: [
                        AGENT_BINARY,
                        AgentCommand::Ready.as_str(),
                        "--dir",
                        self.mount_path,
                    ],
                },
                period_seconds: 1,
                failure_threshold: 300,
                timeout_seconds: 1,
            }),
        }
    }
}

#[cfg(test)]
mod tests;
