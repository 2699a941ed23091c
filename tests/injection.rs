//! Injection through the admission code for every pod shape: each patch applied and the result
//! validated against the Kubernetes schemas (1.29 and newest, strict); idempotency,
//! reinvocation and dry-run.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{apply_patch, patch_bytes, review, validate_k8s};
use kube::core::DynamicObject;
use kube::core::admission::AdmissionReview;
use kura::admission::{Admission, Endpoint, Verdict};
use kura::inject::{AgentVersionService, InjectConfig, SidecarMode, TOKEN_VOLUME};
use kura::policy::{Policy, PolicyEngine};
use kura_agent::contract::env as contract_env;
use kura_agent::store::{Store, StoreSetting};
use kura_agent::versions;
use serde_json::{Value, json};

async fn admission(mode: SidecarMode) -> Admission {
    admission_with(InjectConfig {
        sidecar_mode: mode,
        ..InjectConfig::default()
    })
    .await
}

async fn admission_with(cfg: InjectConfig) -> Admission {
    let store = Store::open(
        &StoreSetting::File(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/store.yaml").into()),
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    Admission::new(cfg, PolicyEngine::new(Policy::default(), Some(store)))
}

async fn mutate(a: &Admission, rv: &Value) -> Value {
    let parsed: AdmissionReview<DynamicObject> = serde_json::from_value(rv.clone()).unwrap();
    let out = a.review_parsed(Endpoint::Mutate, parsed).await.unwrap();
    serde_json::to_value(out.review.response.unwrap()).unwrap()
}

fn patched(rv: &Value, resp: &Value) -> Option<Value> {
    let patch = patch_bytes(resp.get("patch")?)?;
    Some(apply_patch(&rv["request"]["object"], &patch))
}

const SECRETS: [(&str, &str); 3] = [
    ("kura.dev/inject", "true"),
    ("kura.dev/secret.db-password", "/demo/orders/db#password"),
    ("kura.dev/secret.api-key", "/demo/orders/api-key"),
];

fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    SECRETS
        .iter()
        .copied()
        .chain(extra.iter().copied())
        .collect()
}

/// Pod shapes, each a function of the example review.
fn shapes() -> Vec<(&'static str, Value)> {
    let base = || review("demo", &SECRETS);
    let mut out = vec![("deployment pod as kube-apiserver sends it", base())];

    let mut v = base();
    v["request"]["object"]["spec"]
        .as_object_mut()
        .unwrap()
        .remove("volumes");
    v["request"]["object"]["spec"]["automountServiceAccountToken"] = json!(false);
    v["request"]["object"]["spec"]["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("volumeMounts");
    v["request"]["object"]["spec"]["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("env");
    out.push(("no volumes, no mounts, no env", v));

    let mut v = base();
    v["request"]["object"]["spec"]["initContainers"] = json!([
        { "name": "migrate", "image": "migrate:1", "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent" },
        { "name": "warm", "image": "warm:1", "volumeMounts": [] }
    ]);
    out.push(("user init containers", v));

    for n in [2usize, 10, 50] {
        let mut v = base();
        let c = v["request"]["object"]["spec"]["containers"][0].clone();
        let list: Vec<Value> = (0..n)
            .map(|i| {
                let mut c = c.clone();
                c["name"] = json!(format!("c{i}"));
                if i % 3 == 1 {
                    c.as_object_mut().unwrap().remove("volumeMounts");
                }
                c
            })
            .collect();
        v["request"]["object"]["spec"]["containers"] = json!(list);
        out.push((
            if n == 2 {
                "2 containers"
            } else if n == 10 {
                "10 containers"
            } else {
                "50 containers"
            },
            v,
        ));
    }

    let mut v = review("demo", &with(&[("kura.dev/agent", "init-only")]));
    v["request"]["object"]["spec"]["restartPolicy"] = json!("OnFailure");
    out.push(("job pod, init-only", v));

    let mut v = review(
        "demo",
        &with(&[
            ("kura.dev/mount-path", "/etc/app/secrets"),
            ("kura.dev/file-mode", "0440"),
        ]),
    );
    v["request"]["object"]["spec"]["securityContext"] = json!({ "fsGroup": 2000 });
    out.push(("mount path and file mode", v));

    let mut v = review("demo", &with(&[("kura.dev/containers", "api,setup")]));
    v["request"]["object"]["spec"]["initContainers"] = json!([{ "name": "setup", "image": "s:1" }]);
    v["request"]["object"]["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "name": "metrics", "image": "m:1" }));
    out.push(("containers annotation", v));

    let mut v = base();
    let c = &mut v["request"]["object"]["spec"]["containers"][0];
    c["env"].as_array_mut().unwrap().extend([
        json!({ "name": "AWS_ROLE_ARN", "value": "arn:aws:iam::111122223333:role/orders" }),
        json!({ "name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": "/var/run/secrets/eks.amazonaws.com/serviceaccount/token" }),
        json!({ "name": "AWS_REGION", "value": "us-east-1" }),
    ]);
    c["volumeMounts"].as_array_mut().unwrap().push(json!({ "name": "aws-iam-token", "readOnly": true, "mountPath": "/var/run/secrets/eks.amazonaws.com/serviceaccount" }));
    v["request"]["object"]["spec"]["volumes"].as_array_mut().unwrap().push(json!({
        "name": "aws-iam-token",
        "projected": { "defaultMode": 420, "sources": [{ "serviceAccountToken": { "audience": "sts.amazonaws.com", "expirationSeconds": 86400, "path": "token" } }] }
    }));
    out.push(("IRSA", v));

    let mut v = base();
    let c = &mut v["request"]["object"]["spec"]["containers"][0];
    c["env"].as_array_mut().unwrap().extend([
        json!({ "name": "AWS_CONTAINER_CREDENTIALS_FULL_URI", "value": "http://169.254.170.23/v1/credentials" }),
        json!({ "name": "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "value": "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount/eks-pod-identity-token" }),
    ]);
    c["volumeMounts"].as_array_mut().unwrap().push(json!({ "name": "eks-pod-identity-token", "readOnly": true, "mountPath": "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount" }));
    v["request"]["object"]["spec"]["volumes"].as_array_mut().unwrap().push(json!({
        "name": "eks-pod-identity-token",
        "projected": { "defaultMode": 420, "sources": [{ "serviceAccountToken": { "audience": "pods.eks.amazonaws.com", "expirationSeconds": 86400, "path": "eks-pod-identity-token" } }] }
    }));
    out.push(("EKS Pod Identity", v));

    for (name, extra) in [
        (
            "environment variables, envFrom and a template",
            ENV.as_slice(),
        ),
        (
            "environment variables, init-only",
            &[
                ("kura.dev/env.API_KEY", "/demo/orders/api-key"),
                ("kura.dev/agent", "init-only"),
            ],
        ),
    ] {
        let mut v = review("demo", &with(extra));
        give_commands(&mut v);
        out.push((name, v));
    }
    out
}

/// Environment variables of every form, and a template, on top of [`SECRETS`].
const ENV: [(&str, &str); 4] = [
    ("kura.dev/env.DB_PASSWORD", "/demo/orders/db#password"),
    ("kura.dev/env-on-rotation", "restart"),
    (
        "kura.dev/secrets",
        "- {envFrom: /demo/orders/db}\n- {env: DB_HOST, secret: 'ssm:/demo/orders/db-host'}\n\
         - file: dsn\n  inputs: {db: /demo/orders/db, host: 'ssm:/demo/orders/db-host'}\n  \
         template: 'postgres://{{ db.username }}:{{ db.password | urlencode }}@{{ host }}/orders'\n",
    ),
    ("kura.dev/containers", "api,migrate"),
];

/// A pod with [`ENV`] whose containers have commands.
fn env_review(extra: &[(&'static str, &'static str)]) -> Value {
    let pairs: Vec<_> = with(&ENV)
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let mut v = review("demo", &pairs);
    give_commands(&mut v);
    v
}

/// The example pod's app container with a command and args, and an init container with a
/// command: what environment variables need.
fn give_commands(review: &mut Value) {
    let spec = &mut review["request"]["object"]["spec"];
    spec["containers"][0]["command"] = json!(["/app/server"]);
    spec["containers"][0]["args"] = json!(["--port", "8080"]);
    spec["initContainers"] =
        json!([{ "name": "migrate", "image": "migrate:1", "command": ["/migrate", "up"] }]);
}

/// [`env_review`] whose app container lost its command.
fn env_review_without_command() -> Value {
    let mut v = env_review(&[]);
    v["request"]["object"]["spec"]["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("command");
    v
}

#[tokio::test]
async fn containers_with_environment_variables_run_through_kura_agent_exec() {
    for mode in [SidecarMode::Native, SidecarMode::Legacy] {
        let a = admission(mode).await;
        let rv = env_review(&[]);
        let resp = mutate(&a, &rv).await;
        assert_eq!(resp["allowed"], true, "{mode:?}: {resp}");
        let pod = patched(&rv, &resp).expect("a patch");
        let spec = &pod["spec"];
        let find = |list: &str, name: &str| {
            spec[list]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == name)
                .unwrap_or_else(|| panic!("{list} {name}"))
                .clone()
        };
        for (list, name, command, args) in [
            (
                "containers",
                "api",
                json!(["/var/run/kura/bin/kura-agent", "exec", "--", "/app/server"]),
                json!(["--port", "8080"]),
            ),
            (
                "initContainers",
                "migrate",
                json!([
                    "/var/run/kura/bin/kura-agent",
                    "exec",
                    "--",
                    "/migrate",
                    "up"
                ]),
                Value::Null,
            ),
        ] {
            let c = find(list, name);
            assert_eq!(c["command"], command, "{mode:?} {name}");
            assert_eq!(c["args"], args, "{mode:?} {name}: args kept");
            let env = c["env"].as_array().cloned().unwrap_or_default();
            let get = |n: &str| {
                env.iter()
                    .find(|e| e["name"] == n)
                    .map(|e| e["value"].clone())
            };
            assert_eq!(
                get("KURA_EXEC_VALUES_DIR"),
                Some(json!("/var/run/secrets/kura"))
            );
            assert_eq!(get("KURA_EXEC_ON_ROTATION"), Some(json!("restart")));
            let mount = c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"] == "kura-bin")
                .expect("the binary's volume")
                .clone();
            assert_eq!(mount["readOnly"], true);
            assert_eq!(mount["mountPath"], "/var/run/kura/bin");
        }
        // The first agent container copies the binary; a legacy regular sidecar does not.
        let first = &spec["initContainers"][0];
        assert!(first["name"].as_str().unwrap().starts_with("kura-agent"));
        assert!(
            first["env"].to_string().contains("KURA_EXEC_COPY_TO"),
            "{first}"
        );
        assert!(first["volumeMounts"].to_string().contains("kura-bin"));
        let bin = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "kura-bin")
            .expect("kura-bin volume");
        assert!(
            bin["emptyDir"].get("medium").is_none(),
            "disk, not memory: {bin}"
        );
        // No value anywhere in the patch; references only.
        let text = resp["patch"].to_string() + &pod.to_string();
        assert!(!text.contains("local-demo-password"));
        // The agent's spec carries the variables and the template.
        let agent_spec = first["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "KURA_SPEC")
            .unwrap()["value"]
            .as_str()
            .unwrap()
            .to_string();
        let spec_json: Value = serde_json::from_str(&agent_spec).unwrap();
        let names: Vec<&str> = spec_json["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["name"].as_str())
            .collect();
        assert_eq!(names, ["DB_PASSWORD", "DB_HOST"]);
        assert_eq!(spec_json["envFrom"][0]["secret"], "/demo/orders/db");
        assert_eq!(spec_json["templates"][0]["file"], "dsn");
        // A second pass adds nothing, and the validating webhook admits the mutated pod.
        let mut again = rv.clone();
        again["request"]["object"] = pod.clone();
        assert!(mutate(&a, &again).await.get("patch").is_none());
        let parsed: AdmissionReview<DynamicObject> = serde_json::from_value(again).unwrap();
        let out = a.review_parsed(Endpoint::Validate, parsed).await.unwrap();
        let validated = serde_json::to_value(out.review.response.unwrap()).unwrap();
        assert_eq!(validated["allowed"], true, "{mode:?}: {validated}");
        assert!(validated.get("warnings").is_none(), "{validated}");
        validate_k8s(&[pod]).unwrap();
    }
}

async fn denial(a: &Admission, rv: &Value) -> String {
    let resp = mutate(a, rv).await;
    assert_eq!(resp["allowed"], false, "{resp}");
    resp["status"]["message"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn environment_variables_need_a_command_and_no_clash() {
    let a = admission(SidecarMode::Native).await;

    let rv = env_review_without_command();
    let m = denial(&a, &rv).await;
    assert!(
        m.contains("KURA001") && m.contains("\"api\" has no command"),
        "{m}"
    );
    assert!(m.contains("set command"), "{m}");

    // Limiting the containers to the ones with a command is the way out.
    let rv = {
        let mut v = env_review(&[]);
        let ann = &mut v["request"]["object"]["metadata"]["annotations"];
        ann["kura.dev/containers"] = json!("api");
        v["request"]["object"]["spec"]["initContainers"][0]
            .as_object_mut()
            .unwrap()
            .remove("command");
        v
    };
    assert_eq!(mutate(&a, &rv).await["allowed"], true);

    // By default only app containers are wrapped: an init container without a command (one a
    // mesh's webhook added, say) neither blocks the pod nor is rewritten.
    let rv = {
        let mut v = env_review(&[]);
        v["request"]["object"]["metadata"]["annotations"]
            .as_object_mut()
            .unwrap()
            .remove("kura.dev/containers");
        v["request"]["object"]["spec"]["initContainers"] =
            json!([{ "name": "mesh-init", "image": "mesh:1", "args": ["--redirect"] }]);
        v
    };
    let resp = mutate(&a, &rv).await;
    assert_eq!(resp["allowed"], true, "{resp}");
    let pod = patched(&rv, &resp).unwrap();
    let init = pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "mesh-init")
        .unwrap();
    assert!(init.get("command").is_none(), "{init}");
    assert!(init["volumeMounts"].to_string().contains("kura-secrets"));
    assert!(!init["volumeMounts"].to_string().contains("kura-bin"));
    assert_eq!(
        pod["spec"]["containers"][0]["command"][0],
        "/var/run/kura/bin/kura-agent"
    );

    let mut rv = env_review(&[]);
    rv["request"]["object"]["spec"]["containers"][0]["env"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "DB_PASSWORD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}));
    let m = denial(&a, &rv).await;
    assert!(
        m.contains("KURA001")
            && m.contains("sets DB_PASSWORD in its own env")
            && m.contains("kura.dev/env.DB_PASSWORD"),
        "{m}"
    );

    let mut rv = env_review(&[]);
    rv["request"]["object"]["spec"]["containers"][0]["env"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "KURA_EXEC_VALUES_DIR", "value": "/tmp"}));
    assert!(denial(&a, &rv).await.contains("KURA_EXEC_VALUES_DIR"));
}

#[tokio::test]
async fn bad_variables_and_templates_are_denied_with_the_place_to_fix() {
    let a = admission(SidecarMode::Native).await;
    let cases: [(&[(&str, &str)], &[&str]); 6] = [
        (
            &[("kura.dev/env.1BAD", "/demo/orders/api-key")],
            &["kura.dev/env.1BAD", "not an environment variable name"],
        ),
        (
            &[("kura.dev/env-on-rotation", "sometimes")],
            &["kura.dev/env-on-rotation", "\"restart\""],
        ),
        (
            &[(
                "kura.dev/secrets",
                "- {env: API_KEY, secret: /demo/orders/api-key}\n- {env: API_KEY, secret: /demo/orders/db}",
            )],
            &["API_KEY", "declared twice"],
        ),
        (
            &[(
                "kura.dev/secrets",
                "- file: app.properties\n  inputs: {db: /demo/orders/db}\n  template: |\n    a={{ db.username }}\n    b={{ db.password\n",
            )],
            &["app.properties", "syntax error", "line 2"],
        ),
        (
            &[(
                "kura.dev/secrets",
                "- file: app.properties\n  inputs: {db: /demo/orders/db}\n  template: |\n    a={{ db.username }}\n    k={{ api_key }}\n",
            )],
            &["app.properties", "\"api_key\" is not an input", "line 2"],
        ),
        (
            &[(
                "kura.dev/secrets",
                "- {file: x, env: X, secret: /demo/orders/db}",
            )],
            &["exactly one of file, env or envFrom"],
        ),
    ];
    for (annotations, needles) in cases {
        let mut pairs = vec![
            ("kura.dev/inject", "true"),
            ("kura.dev/secret.a", "/demo/orders/api-key"),
        ];
        pairs.extend_from_slice(annotations);
        let mut rv = review("demo", &pairs);
        rv["request"]["object"]["spec"]["containers"][0]["command"] = json!(["/app"]);
        let m = denial(&a, &rv).await;
        assert!(m.contains("KURA001"), "{m}");
        for n in needles {
            assert!(m.contains(n), "{annotations:?}: wanted {n:?} in {m}");
        }
    }
}

#[tokio::test]
async fn policy_applies_to_every_reference_of_variables_and_templates() {
    let a = admission(SidecarMode::Native).await;
    for annotations in [
        vec![("kura.dev/env.STRIPE", "/payments/stripe")],
        vec![("kura.dev/secrets", "- {envFrom: /payments/stripe}")],
        vec![(
            "kura.dev/secrets",
            "- file: t\n  inputs: {a: /demo/orders/db, b: /payments/stripe}\n  template: '{{ a.username }}{{ b }}'",
        )],
    ] {
        let mut pairs = vec![("kura.dev/inject", "true")];
        pairs.extend(annotations.iter().copied());
        let mut rv = review("demo", &pairs);
        rv["request"]["object"]["spec"]["containers"][0]["command"] = json!(["/app"]);
        let m = denial(&a, &rv).await;
        assert!(
            m.contains("KURA002") && m.contains("/payments/stripe"),
            "{annotations:?}: {m}"
        );
    }
    // KURA003 for an input on the AWS managed key.
    let mut rv = review(
        "demo",
        &[
            ("kura.dev/inject", "true"),
            ("kura.dev/env.LEGACY", "/demo/orders/legacy"),
        ],
    );
    rv["request"]["object"]["spec"]["containers"][0]["command"] = json!(["/app"]);
    assert!(denial(&a, &rv).await.contains("KURA003"));
}

#[tokio::test]
async fn a_workload_whose_pods_cannot_be_wrapped_is_denied_at_validation() {
    let a = admission(SidecarMode::Native).await;
    let mut rv = env_review_without_command();
    let template = rv["request"]["object"].clone();
    rv["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    rv["request"]["resource"] =
        json!({"group": "apps", "version": "v1", "resource": "deployments"});
    rv["request"]["object"] = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "demo"},
        "spec": {"selector": {}, "template": {"metadata": template["metadata"], "spec": template["spec"]}},
    });
    let parsed: AdmissionReview<DynamicObject> = serde_json::from_value(rv).unwrap();
    let out = a.review_parsed(Endpoint::Validate, parsed).await.unwrap();
    let resp = serde_json::to_value(out.review.response.unwrap()).unwrap();
    assert_eq!(resp["allowed"], false, "{resp}");
    assert!(
        resp["status"]["message"]
            .as_str()
            .unwrap()
            .contains("has no command"),
        "{resp}"
    );
}

#[tokio::test]
async fn every_shape_patches_into_a_valid_pod() {
    let mut results = Vec::new();
    for mode in [SidecarMode::Native, SidecarMode::Legacy] {
        let a = admission(mode).await;
        for (name, rv) in shapes() {
            let resp = mutate(&a, &rv).await;
            assert_eq!(resp["allowed"], true, "{name} ({mode:?}): {resp}");
            let pod = patched(&rv, &resp).unwrap_or_else(|| panic!("{name}: no patch"));
            let agents: Vec<&str> = ["initContainers", "containers"]
                .iter()
                .flat_map(|l| pod["spec"][l].as_array().into_iter().flatten())
                .filter_map(|c| c["name"].as_str())
                .filter(|n| n.starts_with("kura-agent"))
                .collect();
            assert!(!agents.is_empty(), "{name}");
            let first = pod["spec"]["initContainers"][0]["name"].as_str().unwrap();
            assert!(first.starts_with("kura-agent"), "{name}: agent first");
            if name.contains("IRSA") || name.contains("Pod Identity") {
                let agent_env = pod["spec"]["initContainers"][0]["env"].to_string();
                assert!(
                    agent_env.contains("AWS_ROLE_ARN")
                        || agent_env.contains("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
                    "{name}"
                );
            }
            results.push(pod);
        }
    }
    validate_k8s(&results).unwrap();
}

#[tokio::test]
async fn pods_without_opt_in_or_annotations_are_untouched() {
    let a = admission(SidecarMode::Native).await;
    let mut rv = review("demo", &[]);
    rv["request"]["object"]["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("annotations");
    let resp = mutate(&a, &rv).await;
    assert_eq!(resp["allowed"], true);
    assert!(resp.get("patch").is_none());
    assert_eq!(resp["auditAnnotations"]["decision"], "allowed");
}

#[tokio::test]
async fn second_pass_is_a_no_op_and_dry_run_answers_the_same() {
    let a = admission(SidecarMode::Native).await;
    let rv = review("demo", &SECRETS);
    let first = mutate(&a, &rv).await;
    let mut dry = rv.clone();
    dry["request"]["dryRun"] = json!(true);
    let dry_resp = mutate(&a, &dry).await;
    assert_eq!(
        dry_resp["patch"], first["patch"],
        "dryRun gets the same answer"
    );

    let mut again = rv.clone();
    again["request"]["object"] = patched(&rv, &first).unwrap();
    let second = mutate(&a, &again).await;
    assert_eq!(second["allowed"], true);
    assert!(second.get("patch").is_none(), "{second}");
}

#[tokio::test]
async fn reinvocation_gives_later_identity_to_the_agent() {
    let a = admission(SidecarMode::Legacy).await;
    let rv = review("demo", &SECRETS);
    let first = mutate(&a, &rv).await;
    let mut pod = patched(&rv, &first).unwrap();
    // The EKS Pod Identity webhook runs after kura and adds its env to the app container.
    pod["spec"]["containers"][0]["env"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "name": "AWS_CONTAINER_CREDENTIALS_FULL_URI", "value": "http://169.254.170.23/v1/credentials" }));
    let mut again = rv.clone();
    again["request"]["object"] = pod;
    let second = mutate(&a, &again).await;
    let after = patched(&again, &second).expect("reinvocation patch");
    for (list, name) in [
        ("initContainers", "kura-agent-init"),
        ("containers", "kura-agent"),
    ] {
        let c = after["spec"][list]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap();
        assert!(
            c["env"]
                .to_string()
                .contains("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
            "{name}"
        );
    }
    let mut third = again.clone();
    third["request"]["object"] = after.clone();
    assert!(mutate(&a, &third).await.get("patch").is_none());
    validate_k8s(&[after]).unwrap();
}

/// The server decodes reviews from bytes (a pod in one pass; other kinds and undecodable pods
/// through raw JSON); `kura review` and `kura lint` hand over decoded reviews. Every kind of
/// request gets the same answer either way.
#[tokio::test]
async fn bytes_and_decoded_reviews_get_the_same_answer() {
    let a = admission(SidecarMode::Native).await;
    let pod = review("demo", &SECRETS);
    let mut cases = vec![("pod", pod.clone())];

    let mut bad = pod.clone();
    bad["request"]["object"]["spec"]["containers"] = json!("not a list");
    cases.push(("undecodable pod", bad));

    let mut update = pod.clone();
    update["request"]["operation"] = json!("UPDATE");
    update["request"]["oldObject"] = pod["request"]["object"].clone();
    update["request"]["object"]["metadata"]["annotations"]["kura.dev/refresh-now"] = json!("1");
    cases.push(("update of annotations only", update));

    let mut changed = pod.clone();
    changed["request"]["operation"] = json!("UPDATE");
    changed["request"]["oldObject"] = pod["request"]["object"].clone();
    changed["request"]["object"]["spec"]["containers"][0]["env"] =
        json!([{"name": "DB_PASSWORD", "value": "hunter2hunter2"}]);
    cases.push(("update of the spec", changed));

    // kura judges env, mounts, volumes' secrets and users, not images (workload::judged).
    let mut image = pod.clone();
    image["request"]["operation"] = json!("UPDATE");
    image["request"]["oldObject"] = pod["request"]["object"].clone();
    image["request"]["object"]["spec"]["containers"][0]["image"] = json!("app:2");
    cases.push(("update of an image", image));

    let mut delete = pod.clone();
    delete["request"]["operation"] = json!("DELETE");
    delete["request"]["oldObject"] = delete["request"]["object"].take();
    cases.push(("delete", delete));

    let mut deployment = pod.clone();
    let template = pod["request"]["object"].clone();
    deployment["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    deployment["request"]["name"] = json!("web");
    deployment["request"]["object"] = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"selector": {}, "template": {"metadata": template["metadata"], "spec": template["spec"]}},
    });
    cases.push(("deployment", deployment));

    let mut service = pod.clone();
    service["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Service"});
    service["request"]["object"] =
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}});
    cases.push(("a kind kura does not judge", service));

    let mut no_object = pod.clone();
    no_object["request"]
        .as_object_mut()
        .unwrap()
        .remove("object");
    cases.push(("no object", no_object));

    for (what, rv) in cases {
        for endpoint in [Endpoint::Mutate, Endpoint::Validate] {
            let from_bytes = a
                .review(endpoint, &serde_json::to_vec(&rv).unwrap())
                .await
                .unwrap();
            let parsed: AdmissionReview<DynamicObject> =
                serde_json::from_value(rv.clone()).unwrap();
            let decoded = a.review_parsed(endpoint, parsed).await.unwrap();
            assert_eq!(from_bytes.decision, decoded.decision, "{what} {endpoint:?}");
            let expected = match (what, endpoint) {
                ("pod", Endpoint::Mutate) => Some(Verdict::Injected),
                ("undecodable pod" | "no object", _) => Some(Verdict::Invalid),
                (
                    "update of annotations only"
                    | "update of an image"
                    | "delete"
                    | "a kind kura does not judge",
                    _,
                ) => Some(Verdict::Allowed),
                ("update of the spec", _) => Some(Verdict::Denied),
                _ => None,
            };
            if let Some(expected) = expected {
                assert_eq!(from_bytes.decision, expected, "{what} {endpoint:?}");
            }
            assert_eq!(
                serde_json::to_value(&from_bytes.review).unwrap(),
                serde_json::to_value(&decoded.review).unwrap(),
                "{what} {endpoint:?}"
            );
        }
    }
}

fn version_service_on(mode: SidecarMode) -> InjectConfig {
    InjectConfig {
        sidecar_mode: mode,
        version_service: Some(AgentVersionService {
            url: "https://kura.kura-system.svc:8444".into(),
            ca_pem: common::test_certs().ca,
        }),
        ..InjectConfig::default()
    }
}

/// The injected containers of a patched pod: (name, args, container).
fn agents(pod: &Value) -> Vec<(&str, String, &Value)> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|l| pod["spec"][l].as_array().into_iter().flatten())
        .filter(|c| {
            c["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("kura-agent"))
        })
        .map(|c| (c["name"].as_str().unwrap(), c["args"].to_string(), c))
        .collect()
}

/// Every shape, both sidecar modes, with the version service on: the agent that runs `run`
/// gets the projected token and the service's address, the init agents and the apps get none,
/// the default API token is never mounted, the pods validate, and a second pass adds nothing.
#[tokio::test]
async fn version_service_reaches_the_running_agent_in_every_shape() {
    let mut results = Vec::new();
    for mode in [SidecarMode::Native, SidecarMode::Legacy] {
        let cfg = version_service_on(mode);
        let vs = cfg.version_service.clone().unwrap();
        let a = admission_with(cfg).await;
        for (name, rv) in shapes() {
            let resp = mutate(&a, &rv).await;
            assert_eq!(resp["allowed"], true, "{name} ({mode:?}): {resp}");
            let pod = patched(&rv, &resp).unwrap();
            let init_only = name.contains("init-only");
            let volume = pod["spec"]["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == TOKEN_VOLUME);
            let serialized = pod.to_string();
            assert_eq!(
                pod["spec"]["automountServiceAccountToken"],
                rv["request"]["object"]["spec"]["automountServiceAccountToken"],
                "{name}"
            );
            if init_only {
                assert!(volume.is_none(), "{name} ({mode:?})");
                assert!(!serialized.contains(TOKEN_VOLUME), "{name} ({mode:?})");
                assert!(
                    !serialized.contains(contract_env::VERSION_SERVICE_URL),
                    "{name}"
                );
                assert!(!serialized.contains(contract_env::POD_NAME), "{name}");
            } else {
                let source = &volume.unwrap()["projected"]["sources"];
                assert_eq!(source.as_array().unwrap().len(), 1, "{name}");
                let token = &source[0]["serviceAccountToken"];
                assert_eq!(token["audience"], versions::AUDIENCE);
                assert_eq!(
                    token["expirationSeconds"],
                    versions::TOKEN_EXPIRATION_SECONDS
                );
                assert_eq!(
                    format!(
                        "{}/{}",
                        versions::TOKEN_DIR,
                        token["path"].as_str().unwrap()
                    ),
                    versions::TOKEN_FILE
                );
            }
            for (agent, args, c) in agents(&pod) {
                let running = args == r#"["run"]"#;
                // The API server's token (kube-api-access-*) is the app's, never the agent's.
                assert!(
                    !c["volumeMounts"].to_string().contains("kube-api-access"),
                    "{name} {agent}"
                );
                assert_eq!(
                    running,
                    !init_only && agent == "kura-agent",
                    "{name} ({mode:?}) {agent}"
                );
                let env = c["env"].as_array().unwrap();
                let get = |n: &str| env.iter().find(|e| e["name"] == n);
                let mount = c["volumeMounts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|m| m["name"] == TOKEN_VOLUME);
                if running {
                    assert_eq!(
                        get(contract_env::VERSION_SERVICE_URL).unwrap()["value"],
                        *vs.url
                    );
                    assert_eq!(
                        get(contract_env::VERSION_SERVICE_CA).unwrap()["value"],
                        *vs.ca_pem
                    );
                    assert_eq!(
                        get(contract_env::VERSION_SERVICE_TOKEN).unwrap()["value"],
                        versions::TOKEN_FILE
                    );
                    assert_eq!(
                        get(contract_env::POD_NAME).unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
                        "metadata.name"
                    );
                    let mount = mount.unwrap_or_else(|| panic!("{name}: no token mount"));
                    assert_eq!(mount["mountPath"], versions::TOKEN_DIR);
                    assert_eq!(mount["readOnly"], true);
                } else {
                    assert!(
                        get(contract_env::VERSION_SERVICE_URL).is_none(),
                        "{name} {agent}"
                    );
                    assert!(get(contract_env::POD_NAME).is_none(), "{name} {agent}");
                    assert!(mount.is_none(), "{name} {agent}");
                }
            }
            let apps_with_token = ["initContainers", "containers"]
                .iter()
                .flat_map(|l| pod["spec"][l].as_array().into_iter().flatten())
                .filter(|c| !c["name"].as_str().unwrap().starts_with("kura-agent"))
                .filter(|c| c.to_string().contains(TOKEN_VOLUME))
                .count();
            assert_eq!(apps_with_token, 0, "{name}");

            let mut again = rv.clone();
            again["request"]["object"] = pod.clone();
            let second = mutate(&a, &again).await;
            assert_eq!(second["allowed"], true, "{name}");
            assert!(
                second.get("patch").is_none(),
                "{name}: second pass {second}"
            );
            results.push(pod);
        }
    }
    validate_k8s(&results).unwrap();
}

/// A pod that names a volume `kura-token` is refused with the field to rename, whether the
/// service is on or off (turning it on never starts refusing pods admitted before).
#[tokio::test]
async fn a_pod_volume_named_like_the_token_is_refused() {
    let mut rv = review("demo", &SECRETS);
    rv["request"]["object"]["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "name": TOKEN_VOLUME, "emptyDir": {} }));
    for cfg in [
        InjectConfig::default(),
        version_service_on(SidecarMode::Native),
    ] {
        let a = admission_with(cfg).await;
        let m = denial(&a, &rv).await;
        assert!(m.contains("KURA001"), "{m}");
        assert!(
            m.contains("volume name \"kura-token\" is reserved for kura"),
            "{m}"
        );
    }
}
