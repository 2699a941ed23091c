//! Table-driven tests: the (op, path) pairs for each pod shape, and every patch applied.

use super::*;
use crate::inject::InjectConfig;
use serde_json::{Value, json};

fn pod(v: Value) -> Pod {
    serde_json::from_value(v).expect("test pod parses")
}

fn opted_in(extra: &[(&str, &str)]) -> Value {
    let mut ann = serde_json::Map::new();
    ann.insert("kura.dev/inject".into(), json!("true"));
    ann.insert(
        "kura.dev/secret.db-password".into(),
        json!("/demo/db#password"),
    );
    for (k, v) in extra {
        ann.insert((*k).into(), json!(v));
    }
    json!({ "metadata": { "generateName": "web-", "annotations": ann }, "spec": { "containers": [{ "name": "app", "image": "app:1" }] } })
}

fn secrets_of(p: &Pod) -> PodSecrets {
    kura_agent::annotations::parse(&p.metadata.annotations.clone().unwrap_or_default())
        .expect("valid annotations")
        .expect("opted in")
}

fn pairs(ops: &PatchText) -> Vec<(String, String)> {
    ops.operations()
        .iter()
        .map(|o| {
            let v = serde_json::to_value(o).expect("op serializes");
            (
                v["op"].as_str().expect("op").to_string(),
                v["path"].as_str().expect("path").to_string(),
            )
        })
        .collect()
}

/// Applies the plan and returns the result parsed as a Pod, which also proves the patch applies.
fn apply(v: &Value, ops: &PatchText) -> (Value, Pod) {
    let mut doc = v.clone();
    json_patch::patch(&mut doc, &ops.operations()).expect("patch applies");
    let p: Pod = serde_json::from_value(doc.clone()).expect("patched pod parses");
    (doc, p)
}

fn plan_for(v: &Value, cfg: &InjectConfig) -> Plan {
    let p = pod(v.clone());
    plan(&p, &secrets_of(&p), cfg).expect("plan succeeds")
}

fn s(a: &str, b: &str) -> (String, String) {
    (a.to_string(), b.to_string())
}

#[test]
fn op_path_pairs_per_pod_shape() {
    let cfg = InjectConfig::default();
    let minimal = opted_in(&[]);
    let mut with_everything = opted_in(&[]);
    with_everything["spec"]["volumes"] = json!([{ "name": "data", "emptyDir": {} }]);
    with_everything["spec"]["initContainers"] =
        json!([{ "name": "migrate", "image": "m:1", "volumeMounts": [] }]);
    with_everything["spec"]["containers"][0]["volumeMounts"] =
        json!([{ "name": "data", "mountPath": "/data" }]);
    let mut no_auto = opted_in(&[]);
    no_auto["spec"]["automountServiceAccountToken"] = json!(false);
    let init_only = opted_in(&[("kura.dev/agent", "init-only")]);

    let cases: Vec<(&str, Value, InjectConfig, Vec<(String, String)>)> = vec![
        (
            "no volumes, no initContainers, no volumeMounts",
            minimal.clone(),
            cfg.clone(),
            vec![
                s("add", "/metadata/annotations/kura.dev~1status"),
                s("add", "/spec/volumes"),
                s("add", "/spec/containers/0/volumeMounts"),
                s("add", "/spec/initContainers"),
            ],
        ),
        (
            "automountServiceAccountToken false",
            no_auto,
            cfg.clone(),
            vec![
                s("add", "/metadata/annotations/kura.dev~1status"),
                s("add", "/spec/volumes"),
                s("add", "/spec/containers/0/volumeMounts"),
                s("add", "/spec/initContainers"),
            ],
        ),
        (
            "existing volumes, init containers and mounts",
            with_everything,
            cfg.clone(),
            vec![
                s("add", "/metadata/annotations/kura.dev~1status"),
                s("add", "/spec/volumes/-"),
                s("add", "/spec/volumes/-"),
                s("add", "/spec/containers/0/volumeMounts/-"),
                s("add", "/spec/initContainers/0/volumeMounts/-"),
                s("add", "/spec/initContainers/0"),
            ],
        ),
        (
            "legacy sidecar",
            minimal.clone(),
            InjectConfig {
                sidecar_mode: SidecarMode::Legacy,
                ..cfg.clone()
            },
            vec![
                s("add", "/metadata/annotations/kura.dev~1status"),
                s("add", "/spec/volumes"),
                s("add", "/spec/containers/0/volumeMounts"),
                s("add", "/spec/initContainers"),
                s("add", "/spec/containers/-"),
            ],
        ),
        (
            "init-only has no downward-API volume",
            init_only,
            cfg.clone(),
            vec![
                s("add", "/metadata/annotations/kura.dev~1status"),
                s("add", "/spec/volumes"),
                s("add", "/spec/containers/0/volumeMounts"),
                s("add", "/spec/initContainers"),
            ],
        ),
    ];
    for (name, v, cfg, want) in cases {
        let plan = plan_for(&v, &cfg);
        assert_eq!(pairs(&plan.patch), want, "{name}");
        let (_, p) = apply(&v, &plan.patch);
        assert!(has_agent(&p), "{name}: agent present");
        assert!(is_injected(&p), "{name}: status written");
    }
}

#[test]
fn native_sidecar_is_first_and_gated_by_a_startup_probe() {
    let mut v = opted_in(&[]);
    v["spec"]["initContainers"] = json!([{ "name": "migrate", "image": "m:1" }]);
    let plan = plan_for(&v, &InjectConfig::default());
    let (doc, p) = apply(&v, &plan.patch);
    let init = p
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.clone())
        .expect("init containers");
    assert_eq!(init[0].name, AGENT);
    assert_eq!(init[0].restart_policy.as_deref(), Some("Always"));
    assert_eq!(init[1].name, "migrate");
    let probe = init[0]
        .startup_probe
        .as_ref()
        .and_then(|p| p.exec.as_ref())
        .and_then(|e| e.command.clone());
    assert_eq!(
        probe.expect("probe")[..2],
        [
            AGENT_BINARY.to_string(),
            AgentCommand::Ready.as_str().to_string()
        ]
    );
    // The user's init container got the mount (default: all containers).
    assert!(
        init[1]
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == VOLUME && m.read_only == Some(true))
    );
    let sc = &doc["spec"]["initContainers"][0]["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    let vol = doc["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == VOLUME)
        .cloned();
    assert_eq!(vol.expect("volume")["emptyDir"]["medium"], "Memory");
}

#[test]
fn spec_in_env_is_the_normalized_versioned_spec() {
    let v = opted_in(&[("kura.dev/refresh-interval", "5m")]);
    let plan = plan_for(&v, &InjectConfig::default());
    let (_, p) = apply(&v, &plan.patch);
    let agent = &p.spec.expect("spec").init_containers.expect("init")[0];
    let spec_json = agent
        .env
        .iter()
        .flatten()
        .find(|e| e.name == contract::env::SPEC)
        .and_then(|e| e.value.clone())
        .expect("spec");
    let spec = kura_agent::Spec::from_json(&spec_json).expect("agent reads it");
    assert_eq!(spec.refresh_interval, 300);
    assert_eq!(spec.files[0].key.as_deref(), Some("password"));
    assert_eq!(plan.status, status_for(&spec_json));
}

#[test]
fn one_to_fifty_containers() {
    for n in [1usize, 2, 7, 50] {
        let mut v = opted_in(&[]);
        let containers: Vec<Value> = (0..n)
            .map(|i| {
                if i % 2 == 0 {
                    json!({ "name": format!("c{i}"), "image": "x" })
                } else {
                    json!({ "name": format!("c{i}"), "image": "x", "volumeMounts": [{ "name": "v", "mountPath": "/v" }], "env": [] })
                }
            })
            .collect();
        v["spec"]["containers"] = json!(containers);
        v["spec"]["volumes"] = json!([{ "name": "v", "emptyDir": {} }]);
        let plan = plan_for(&v, &InjectConfig::default());
        let (_, p) = apply(&v, &plan.patch);
        let mounted = p
            .spec
            .expect("spec")
            .containers
            .iter()
            .filter(|c| c.volume_mounts.iter().flatten().any(|m| m.name == VOLUME))
            .count();
        assert_eq!(mounted, n);
    }
}

#[test]
fn containers_annotation_targets_named_containers_including_init() {
    let mut v = opted_in(&[("kura.dev/containers", "worker,setup")]);
    v["spec"]["containers"] =
        json!([{ "name": "app", "image": "a" }, { "name": "worker", "image": "w" }]);
    v["spec"]["initContainers"] = json!([{ "name": "setup", "image": "s" }]);
    let planned = plan_for(&v, &InjectConfig::default());
    let (_, p) = apply(&v, &planned.patch);
    let spec = p.spec.expect("spec");
    let mounts = |c: &Container| c.volume_mounts.iter().flatten().any(|m| m.name == VOLUME);
    assert!(!mounts(&spec.containers[0]));
    assert!(mounts(&spec.containers[1]));
    let init = spec.init_containers.expect("init");
    assert!(mounts(
        init.iter().find(|c| c.name == "setup").expect("setup")
    ));

    let v = opted_in(&[("kura.dev/containers", "nope")]);
    let p = pod(v);
    let err = plan(&p, &secrets_of(&p), &InjectConfig::default()).unwrap_err();
    assert!(err[0].message.contains("no container \"nope\""), "{err:?}");
}

#[test]
fn agent_runs_as_the_reading_user() {
    let mut v = opted_in(&[]);
    v["spec"]["securityContext"] = json!({ "runAsUser": 2000, "runAsGroup": 3000 });
    let (doc, _) = apply(&v, &plan_for(&v, &InjectConfig::default()).patch);
    assert_eq!(
        doc["spec"]["initContainers"][0]["securityContext"]["runAsUser"],
        2000
    );
    assert_eq!(
        doc["spec"]["initContainers"][0]["securityContext"]["runAsGroup"],
        3000
    );

    v["spec"]["containers"][0]["securityContext"] = json!({ "runAsUser": 1234 });
    let (doc, _) = apply(&v, &plan_for(&v, &InjectConfig::default()).patch);
    assert_eq!(
        doc["spec"]["initContainers"][0]["securityContext"]["runAsUser"],
        1234
    );

    let v = opted_in(&[("kura.dev/run-as-user", "4321")]);
    let (doc, _) = apply(&v, &plan_for(&v, &InjectConfig::default()).patch);
    assert_eq!(
        doc["spec"]["initContainers"][0]["securityContext"]["runAsUser"],
        4321
    );

    let (doc, _) = apply(
        &opted_in(&[]),
        &plan_for(&opted_in(&[]), &InjectConfig::default()).patch,
    );
    assert_eq!(
        doc["spec"]["initContainers"][0]["securityContext"]["runAsUser"],
        DEFAULT_UID
    );
}

/// The agent's group is never left to the runtime, whose default (containerd) is group 0.
#[test]
fn agent_group_is_never_root() {
    let agent_ids = |v: &Value| {
        let (doc, _) = apply(v, &plan_for(v, &InjectConfig::default()).patch);
        let sc = &doc["spec"]["initContainers"][0]["securityContext"];
        (sc["runAsUser"].as_i64(), sc["runAsGroup"].as_i64())
    };
    let uid = Some(DEFAULT_UID);
    // Nothing set: the distroless convention, gid = uid.
    assert_eq!(agent_ids(&opted_in(&[])), (uid, uid));
    let mut v = opted_in(&[]);
    v["spec"]["containers"][0]["securityContext"] = json!({ "runAsUser": 1000 });
    assert_eq!(agent_ids(&v), (Some(1000), Some(1000)));
    // The reading container's own group, over the pod's.
    v["spec"]["securityContext"] = json!({ "runAsGroup": 3000 });
    assert_eq!(agent_ids(&v), (Some(1000), Some(3000)));
    v["spec"]["containers"][0]["securityContext"]["runAsGroup"] = json!(4000);
    assert_eq!(agent_ids(&v), (Some(1000), Some(4000)));
    // An explicit group 0 is the runtime default again: fsGroup, else the uid.
    v["spec"]["containers"][0]["securityContext"]["runAsGroup"] = json!(0);
    v["spec"]["securityContext"] = json!({ "fsGroup": 5000 });
    assert_eq!(agent_ids(&v), (Some(1000), Some(5000)));
    v["spec"]["securityContext"] = json!({});
    assert_eq!(agent_ids(&v), (Some(1000), Some(1000)));
    // The annotation's uid.
    assert_eq!(
        agent_ids(&opted_in(&[("kura.dev/run-as-user", "4321")])),
        (Some(4321), Some(4321))
    );
    // Several users sharing group-readable files: the fsGroup that makes them readable.
    let mut v = opted_in(&[("kura.dev/file-mode", "0440")]);
    v["spec"]["containers"] = json!([
        { "name": "a", "image": "a", "securityContext": { "runAsUser": 1000 } },
        { "name": "b", "image": "b", "securityContext": { "runAsUser": 2000 } }
    ]);
    v["spec"]["securityContext"] = json!({ "fsGroup": 3000 });
    assert_eq!(agent_ids(&v), (Some(1000), Some(3000)));
}

#[test]
fn several_app_users_need_fs_group_and_group_readable_files() {
    let mut v = opted_in(&[]);
    v["spec"]["containers"] = json!([
        { "name": "a", "image": "a", "securityContext": { "runAsUser": 1000 } },
        { "name": "b", "image": "b", "securityContext": { "runAsUser": 2000 } }
    ]);
    let p = pod(v.clone());
    let err = plan(&p, &secrets_of(&p), &InjectConfig::default()).unwrap_err();
    assert!(err[0].message.contains("fsGroup"), "{err:?}");

    v["spec"]["securityContext"] = json!({ "fsGroup": 3000 });
    v["metadata"]["annotations"]["kura.dev/file-mode"] = json!("0440");
    let planned = plan_for(&v, &InjectConfig::default());
    apply(&v, &planned.patch);
}

#[test]
fn identity_is_copied_and_topped_up_on_reinvocation() {
    let mut v = opted_in(&[]);
    v["spec"]["containers"][0]["env"] = json!([
        { "name": "AWS_ROLE_ARN", "value": "arn:aws:iam::111122223333:role/app" },
        { "name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": "/var/run/secrets/eks.amazonaws.com/serviceaccount/token" },
        { "name": "UNRELATED", "value": "x" }
    ]);
    v["spec"]["containers"][0]["volumeMounts"] = json!([
        { "name": "aws-iam-token", "mountPath": "/var/run/secrets/eks.amazonaws.com/serviceaccount", "readOnly": true }
    ]);
    v["spec"]["volumes"] = json!([{ "name": "aws-iam-token", "projected": { "sources": [{ "serviceAccountToken": { "audience": "sts.amazonaws.com", "expirationSeconds": 86400, "path": "token" } }] } }]);
    let (doc, p) = apply(&v, &plan_for(&v, &InjectConfig::default()).patch);
    let agent = &doc["spec"]["initContainers"][0];
    let names: Vec<&str> = agent["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| e["name"].as_str().expect("name"))
        .collect();
    assert!(names.contains(&"AWS_ROLE_ARN") && names.contains(&"AWS_WEB_IDENTITY_TOKEN_FILE"));
    assert!(!names.contains(&"UNRELATED"));
    assert!(
        agent["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .any(|m| m["name"] == "aws-iam-token")
    );
    assert!(
        top_up_identity(&p).is_empty(),
        "nothing new: reinvocation adds nothing"
    );

    // Another webhook adds Pod Identity after kura ran: reinvocation gives it to the agent too.
    let mut later = doc.clone();
    later["spec"]["containers"][0]["env"]
        .as_array_mut()
        .expect("env")
        .push(json!({ "name": "AWS_CONTAINER_CREDENTIALS_FULL_URI", "value": "http://169.254.170.23/v1/credentials" }));
    let ops = top_up_identity(&pod(later.clone()));
    assert_eq!(pairs(&ops), vec![s("add", "/spec/initContainers/0/env/-")]);
    let (after, _) = apply(&later, &ops);
    assert!(
        after["spec"]["initContainers"][0]["env"]
            .as_array()
            .expect("env")
            .iter()
            .any(|e| e["name"] == "AWS_CONTAINER_CREDENTIALS_FULL_URI")
    );
    assert!(top_up_identity(&pod(after)).is_empty());
}

#[test]
fn reserved_names_and_mount_paths_are_refused() {
    let mut v = opted_in(&[]);
    v["spec"]["volumes"] = json!([{ "name": VOLUME, "emptyDir": {} }]);
    v["spec"]["containers"][0]["volumeMounts"] =
        json!([{ "name": VOLUME, "mountPath": contract::DEFAULT_DIR }]);
    v["spec"]["initContainers"] = json!([{ "name": AGENT, "image": "x" }]);
    let p = pod(v);
    let err = plan(&p, &secrets_of(&p), &InjectConfig::default()).unwrap_err();
    let all: String = err
        .iter()
        .map(|e| e.message.clone())
        .collect::<Vec<_>>()
        .join("|");
    assert!(
        all.contains("volume name \"kura-secrets\" is reserved"),
        "{all}"
    );
    assert!(
        all.contains("container name \"kura-agent\" is reserved"),
        "{all}"
    );
    assert!(all.contains("already mounts"), "{all}");
}

fn with_version_service(mode: SidecarMode) -> InjectConfig {
    InjectConfig {
        sidecar_mode: mode,
        version_service: Some(AgentVersionService {
            url: "https://kura.kura-system.svc:8444".into(),
            ca_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        }),
        ..InjectConfig::default()
    }
}

/// Every container of the patched pod with its list, agents included.
fn all_containers(doc: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|l| doc["spec"][l].as_array().into_iter().flatten())
        .collect()
}

fn mounts_token(c: &Value) -> bool {
    c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|m| m["name"] == TOKEN_VOLUME)
}

fn env_names(c: &Value) -> Vec<&str> {
    c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["name"].as_str())
        .collect()
}

const VERSION_ENV: [&str; 4] = [
    contract::env::VERSION_SERVICE_URL,
    contract::env::VERSION_SERVICE_CA,
    contract::env::VERSION_SERVICE_TOKEN,
    contract::env::POD_NAME,
];

#[test]
fn version_service_gives_the_running_agent_a_token_and_its_address() {
    for (mode, running) in [
        (SidecarMode::Native, ("initContainers", AGENT)),
        (SidecarMode::Legacy, ("containers", AGENT)),
    ] {
        let cfg = with_version_service(mode);
        let mut v = opted_in(&[]);
        v["spec"]["automountServiceAccountToken"] = json!(false);
        let (doc, _) = apply(&v, &plan_for(&v, &cfg).patch);
        let token: Vec<&Value> = doc["spec"]["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .filter(|v| v["name"] == TOKEN_VOLUME)
            .collect();
        assert_eq!(
            token,
            [
                &json!({ "name": TOKEN_VOLUME, "projected": { "sources": [{ "serviceAccountToken": {
                "audience": versions::AUDIENCE,
                "expirationSeconds": versions::TOKEN_EXPIRATION_SECONDS,
                "path": "token",
            } }] } })
            ],
            "{mode:?}"
        );
        // The default API token stays off: kura never turns it on or mounts it.
        assert_eq!(doc["spec"]["automountServiceAccountToken"], false);

        let agent = doc["spec"][running.0]
            .as_array()
            .expect("list")
            .iter()
            .find(|c| c["name"] == running.1)
            .expect("running agent");
        assert_eq!(
            agent["args"],
            json!([AgentCommand::Run.as_str()]),
            "{mode:?}"
        );
        let mount: Vec<&Value> = agent["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .filter(|m| m["name"] == TOKEN_VOLUME)
            .collect();
        assert_eq!(
            mount,
            [&json!({ "name": TOKEN_VOLUME, "mountPath": versions::TOKEN_DIR, "readOnly": true })]
        );
        let env = agent["env"].as_array().expect("env");
        let value = |name: &str| {
            env.iter()
                .find(|e| e["name"] == name)
                .unwrap_or_else(|| panic!("{mode:?}: {name} missing"))
        };
        let vs = cfg.version_service.as_ref().expect("configured");
        assert_eq!(value(contract::env::VERSION_SERVICE_URL)["value"], *vs.url);
        assert_eq!(
            value(contract::env::VERSION_SERVICE_CA)["value"],
            *vs.ca_pem
        );
        assert_eq!(
            value(contract::env::VERSION_SERVICE_TOKEN)["value"],
            versions::TOKEN_FILE
        );
        assert_eq!(
            value(contract::env::POD_NAME)["valueFrom"],
            json!({ "fieldRef": { "apiVersion": "v1", "fieldPath": "metadata.name" } })
        );

        // Nobody else gets the token or the address: not the app, not legacy's init agent.
        for c in all_containers(&doc) {
            if std::ptr::eq(c, agent) {
                continue;
            }
            assert!(!mounts_token(c), "{mode:?}: {} mounts the token", c["name"]);
            let names = env_names(c);
            assert!(
                VERSION_ENV.iter().all(|n| !names.contains(n)),
                "{mode:?}: {} has {names:?}",
                c["name"]
            );
        }
    }
}

#[test]
fn init_only_and_a_service_that_is_off_add_no_token() {
    let init_only = opted_in(&[("kura.dev/agent", "init-only")]);
    let sidecar = opted_in(&[]);
    for (what, v, cfg) in [
        (
            "init-only, native",
            &init_only,
            with_version_service(SidecarMode::Native),
        ),
        (
            "init-only, legacy",
            &init_only,
            with_version_service(SidecarMode::Legacy),
        ),
        ("service off", &sidecar, InjectConfig::default()),
        (
            "service off, legacy",
            &sidecar,
            InjectConfig {
                sidecar_mode: SidecarMode::Legacy,
                ..InjectConfig::default()
            },
        ),
    ] {
        let (doc, _) = apply(v, &plan_for(v, &cfg).patch);
        assert!(
            !doc["spec"]["volumes"].to_string().contains(TOKEN_VOLUME),
            "{what}"
        );
        for c in all_containers(&doc) {
            assert!(!mounts_token(c), "{what}");
            let names = env_names(c);
            assert!(
                VERSION_ENV.iter().all(|n| !names.contains(n)),
                "{what}: {names:?}"
            );
        }
    }
}

#[test]
fn version_service_adds_one_volume_op_and_nothing_else() {
    let v = opted_in(&[]);
    let on = plan_for(&v, &with_version_service(SidecarMode::Native));
    let off = plan_for(&v, &InjectConfig::default());
    // Same operations (the token rides in the volumes list and the agent), same status.
    assert_eq!(pairs(&on.patch), pairs(&off.patch));
    assert_eq!(on.status, off.status);
    let mut with_volumes = opted_in(&[]);
    with_volumes["spec"]["volumes"] = json!([{ "name": "data", "emptyDir": {} }]);
    let on = plan_for(&with_volumes, &with_version_service(SidecarMode::Native));
    let off = plan_for(&with_volumes, &InjectConfig::default());
    let mut want = pairs(&off.patch);
    want.insert(3, s("add", "/spec/volumes/-"));
    assert_eq!(pairs(&on.patch), want);
}

#[test]
fn the_token_volume_name_is_reserved_whether_the_service_is_on_or_off() {
    let mut v = opted_in(&[]);
    v["spec"]["volumes"] = json!([{ "name": TOKEN_VOLUME, "emptyDir": {} }]);
    let p = pod(v);
    for cfg in [
        InjectConfig::default(),
        with_version_service(SidecarMode::Native),
    ] {
        let err = plan(&p, &secrets_of(&p), &cfg).unwrap_err();
        assert_eq!(err.len(), 1, "{err:?}");
        assert_eq!(err[0].field, format!("spec.volumes[{TOKEN_VOLUME}]"));
        assert!(
            err[0]
                .message
                .contains("volume name \"kura-token\" is reserved for kura"),
            "{err:?}"
        );
    }
}

#[test]
fn a_mount_path_around_or_inside_the_token_directory_is_refused_when_the_token_is_mounted() {
    for (path, clash) in [
        ("/var/run/kura/token", true),
        ("/var/run/kura", true),
        ("/var/run/kura/token/app", true),
        ("/var/run/kura/tokens", false),
        ("/var/run/kura/to", false),
        ("/etc/app/secrets", false),
    ] {
        let v = opted_in(&[("kura.dev/mount-path", path)]);
        let p = pod(v.clone());
        let on = plan(
            &p,
            &secrets_of(&p),
            &with_version_service(SidecarMode::Native),
        );
        if clash {
            let err = on.expect_err(path);
            assert_eq!(err.len(), 1, "{path}: {err:?}");
            assert_eq!(err[0].field, "kura.dev/mount-path");
            assert!(
                err[0].message.contains(versions::TOKEN_DIR)
                    && err[0].message.contains("choose another path"),
                "{err:?}"
            );
        } else {
            apply(&v, &on.expect(path).patch);
        }
        // No token, no clash: the service off, or an init-only agent.
        plan(&p, &secrets_of(&p), &InjectConfig::default()).expect(path);
        let v = opted_in(&[
            ("kura.dev/mount-path", path),
            ("kura.dev/agent", "init-only"),
        ]);
        let p = pod(v);
        plan(
            &p,
            &secrets_of(&p),
            &with_version_service(SidecarMode::Native),
        )
        .expect(path);
    }
}

#[test]
fn annotation_keys_with_slash_and_tilde_are_escaped() {
    let mut ops = PatchText::default();
    ops.add(&["metadata", "annotations", "a~b/c"], &1);
    assert_eq!(pairs(&ops), vec![s("add", "/metadata/annotations/a~0b~1c")]);
}

proptest::proptest! {
    /// kura writes JSON Pointers itself (the hot path); they must be what jsonptr builds.
    #[test]
    fn pointers_match_jsonptr(tokens in proptest::collection::vec("[a-z~/.\\\"\u{e9}-]{0,6}", 1..5)) {
        let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let mut ops = PatchText::default();
        ops.add(&tokens, &true);
        let expected = json_patch::jsonptr::PointerBuf::from_tokens(tokens.iter().copied());
        proptest::prop_assert_eq!(pairs(&ops), vec![s("add", expected.as_str())]);
    }
}

#[test]
fn status_hash_tracks_the_spec() {
    let a = plan_for(&opted_in(&[]), &InjectConfig::default()).status;
    let b = plan_for(
        &opted_in(&[("kura.dev/file-mode", "0440")]),
        &InjectConfig::default(),
    )
    .status;
    assert!(a.starts_with("injected sha256:"));
    assert_ne!(a, b);
}

mod generated {
    use super::*;
    use proptest::prelude::*;

    /// A pod of random shape: 1–6 containers, 0–3 init containers, with or without volumes,
    /// mounts, env and extra annotations.
    fn arb_pod() -> impl Strategy<Value = (Value, bool)> {
        (
            1usize..7,
            0usize..4,
            any::<bool>(),
            proptest::collection::vec((any::<bool>(), any::<bool>()), 10),
            any::<bool>(),
            prop_oneof![Just(None), Just(Some("init-only")), Just(Some("sidecar"))],
        )
            .prop_map(|(n, m, volumes, flags, extra_ann, agent)| {
                let container = |name: String, i: usize| {
                    let (mounts, env) = flags[i % flags.len()];
                    let mut c = json!({ "name": name, "image": "img" });
                    if mounts {
                        c["volumeMounts"] =
                            json!([{ "name": "data", "mountPath": format!("/data/{i}") }]);
                    }
                    if env {
                        c["env"] = json!([{ "name": "A", "value": "b" }]);
                    }
                    c
                };
                let mut v = opted_in(&[]);
                if let Some(a) = agent {
                    v["metadata"]["annotations"]["kura.dev/agent"] = json!(a);
                }
                if extra_ann {
                    v["metadata"]["annotations"]["example.com/a~b"] = json!("x");
                }
                v["spec"]["containers"] = json!(
                    (0..n)
                        .map(|i| container(format!("c{i}"), i))
                        .collect::<Vec<_>>()
                );
                if m > 0 {
                    v["spec"]["initContainers"] = json!(
                        (0..m)
                            .map(|i| container(format!("i{i}"), i + 5))
                            .collect::<Vec<_>>()
                    );
                }
                // Mounts refer to the "data" volume, so it exists whenever some container mounts it.
                if volumes || flags.iter().any(|f| f.0) {
                    v["spec"]["volumes"] = json!([{ "name": "data", "emptyDir": {} }]);
                }
                (v, agent == Some("init-only"))
            })
    }

    proptest! {
        #[test]
        fn every_generated_patch_applies((v, init_only) in arb_pod(), legacy in any::<bool>(), service in any::<bool>()) {
            let mode = if legacy { SidecarMode::Legacy } else { SidecarMode::Native };
            let cfg = if service {
                with_version_service(mode)
            } else {
                InjectConfig { sidecar_mode: mode, ..InjectConfig::default() }
            };
            let p = pod(v.clone());
            let planned = plan(&p, &secrets_of(&p), &cfg).expect("plan");
            let (_, after) = apply(&v, &planned.patch);
            // The status is written, so a second pass over the result adds nothing.
            prop_assert!(is_injected(&after) && has_agent(&after));
            let spec = after.spec.expect("spec");
            let init = spec.init_containers.clone().expect("init containers");
            prop_assert!(init[0].name.starts_with(AGENT));
            let regular_agent = spec.containers.iter().any(|c| c.name == AGENT);
            prop_assert_eq!(regular_agent, legacy && !init_only);
            for c in spec.containers.iter().chain(init.iter()).filter(|c| !c.name.starts_with(AGENT)) {
                prop_assert!(c.volume_mounts.iter().flatten().any(|m| m.name == VOLUME && m.read_only == Some(true)));
            }
            // The token: with the service on, exactly the one running agent mounts it.
            let token_mounts: Vec<&str> = spec.containers.iter().chain(init.iter())
                .filter(|c| c.volume_mounts.iter().flatten().any(|m| m.name == TOKEN_VOLUME))
                .map(|c| c.name.as_str())
                .collect();
            let volume = spec.volumes.iter().flatten().filter(|v| v.name == TOKEN_VOLUME).count();
            if service && !init_only {
                prop_assert_eq!(token_mounts, vec![AGENT]);
                prop_assert_eq!(volume, 1);
            } else {
                prop_assert!(token_mounts.is_empty());
                prop_assert_eq!(volume, 0);
            }
        }
    }
}
