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
use kura::inject::{InjectConfig, SidecarMode};
use kura::policy::{Policy, PolicyEngine};
use kura_agent::store::{Store, StoreSetting};
use serde_json::{Value, json};

async fn admission(mode: SidecarMode) -> Admission {
    let store = Store::open(
        &StoreSetting::File(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/store.yaml").into()),
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    Admission::new(
        InjectConfig {
            sidecar_mode: mode,
            ..InjectConfig::default()
        },
        PolicyEngine::new(Policy::default(), Some(store)),
    )
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
    out
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
