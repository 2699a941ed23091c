//! The GitOps half of the policy: External Secrets and Sealed Secrets on `/validate` (reviews
//! shaped as kube-apiserver sends them) and in `kura lint`, and Secret manifests in lint.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use kura::admission::{Admission, Endpoint};
use kura::cli::lint::check;
use kura::cli::manifests::parse_documents;
use kura::inject::InjectConfig;
use kura::policy::{Policy, PolicyEngine, Rule};
use kura_agent::store::{Store, StoreSetting};
use serde_json::{Value, json};

fn offline() -> Admission {
    Admission::new(
        InjectConfig::default(),
        PolicyEngine::new(Policy::default(), None),
    )
}

/// The webhook's decision code over the example file store (`/demo/...` secrets).
async fn with_store() -> Admission {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/store.yaml"));
    let store = Store::open(&StoreSetting::File(path), Duration::from_secs(2))
        .await
        .unwrap();
    Admission::new(
        InjectConfig::default(),
        PolicyEngine::new(Policy::default(), Some(store)),
    )
}

/// The AdmissionReview kube-apiserver sends to /validate for creating `object`.
fn review(object: &Value, resource: &str) -> Vec<u8> {
    let api_version = object["apiVersion"].as_str().unwrap();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let namespace = object["metadata"]["namespace"].as_str();
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "2a1f3a0e-5a4b-4f7e-9d1c-7c0e8d9b6a11",
            "kind": {"group": group, "version": version, "kind": object["kind"]},
            "resource": {"group": group, "version": version, "resource": resource},
            "requestKind": {"group": group, "version": version, "kind": object["kind"]},
            "requestResource": {"group": group, "version": version, "resource": resource},
            "name": object["metadata"]["name"],
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:argocd:argocd-application-controller", "groups": ["system:serviceaccounts"]},
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    }))
    .unwrap()
}

fn external_secret(namespace: &str, keys: &[&str]) -> Value {
    let data: Vec<Value> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| json!({"secretKey": format!("k{i}"), "remoteRef": {"key": k}}))
        .collect();
    json!({
        "apiVersion": "external-secrets.io/v1",
        "kind": "ExternalSecret",
        "metadata": {"name": "orders-db", "namespace": namespace},
        "spec": {
            "refreshInterval": "1h",
            "secretStoreRef": {"name": "aws", "kind": "ClusterSecretStore"},
            "target": {"name": "orders-db"},
            "data": data
        }
    })
}

async fn validate(
    admission: &Admission,
    object: &Value,
    resource: &str,
) -> kura::admission::Outcome {
    admission
        .review(Endpoint::Validate, &review(object, resource))
        .await
        .unwrap()
}

fn message(o: &kura::admission::Outcome) -> String {
    o.review
        .response
        .as_ref()
        .map(|r| r.result.message.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn external_secrets_follow_the_namespace_scope_on_validate() {
    let a = offline();
    let ok = validate(
        &a,
        &external_secret("demo", &["/demo/orders/db"]),
        "externalsecrets",
    )
    .await;
    assert!(!ok.denied, "{}", message(&ok));
    let out = validate(
        &a,
        &external_secret("demo", &["/demo/orders/db", "/payments/stripe"]),
        "externalsecrets",
    )
    .await;
    assert!(out.denied);
    assert_eq!(out.rules, [Rule::Kura002]);
    let msg = message(&out);
    assert!(
        msg.contains("/payments/stripe") && msg.contains("[KURA002]"),
        "{msg}"
    );
    assert!(msg.contains("ExternalSecret orders-db"), "{msg}");
}

#[tokio::test]
async fn external_secrets_get_the_kms_and_existence_rules_with_a_store() {
    let a = with_store().await;
    let out = validate(
        &a,
        &external_secret("demo", &["/demo/orders/legacy", "/demo/orders/gone"]),
        "externalsecrets",
    )
    .await;
    assert!(out.denied);
    assert_eq!(
        out.rules,
        [Rule::Kura003, Rule::Kura004],
        "{}",
        message(&out)
    );
    let ok = validate(
        &a,
        &external_secret("demo", &["/demo/orders/db"]),
        "externalsecrets",
    )
    .await;
    assert!(!ok.denied, "{}", message(&ok));
}

#[tokio::test]
async fn find_without_a_path_and_cluster_external_secrets() {
    let a = offline();
    let mut es = external_secret("demo", &[]);
    es["spec"]["dataFrom"] = json!([{"find": {"name": {"regexp": ".*"}}}, {"find": {"path": "/demo/"}}, {"extract": {"key": "/other/x"}}]);
    let out = validate(&a, &es, "externalsecrets").await;
    assert_eq!(
        out.rules,
        [Rule::Kura002, Rule::Kura002],
        "{}",
        message(&out)
    );
    let msg = message(&out);
    assert!(
        msg.contains("without a path") && msg.contains("/other/x"),
        "{msg}"
    );

    let ces = json!({
        "apiVersion": "external-secrets.io/v1",
        "kind": "ClusterExternalSecret",
        "metadata": {"name": "shared"},
        "spec": {
            "namespaces": ["demo", "payments"],
            "externalSecretSpec": {"secretStoreRef": {"name": "aws", "kind": "ClusterSecretStore"},
                "data": [{"secretKey": "k", "remoteRef": {"key": "/demo/orders/db"}}]}
        }
    });
    let out = validate(&a, &ces, "clusterexternalsecrets").await;
    assert!(out.denied);
    let msg = message(&out);
    assert!(
        msg.contains("in namespace payments") && !msg.contains("in namespace demo"),
        "{msg}"
    );

    let push = json!({
        "apiVersion": "external-secrets.io/v1alpha1",
        "kind": "PushSecret",
        "metadata": {"name": "push", "namespace": "demo"},
        "spec": {"secretStoreRefs": [{"name": "aws"}], "selector": {"secret": {"name": "s"}},
            "data": [{"match": {"secretKey": "k", "remoteRef": {"remoteKey": "/payments/x"}}}]}
    });
    let out = validate(&a, &push, "pushsecrets").await;
    assert_eq!(out.rules, [Rule::Kura002], "{}", message(&out));
}

#[tokio::test]
async fn sealed_secrets_are_accepted_and_wide_scopes_warn() {
    let a = offline();
    let mut sealed = json!({
        "apiVersion": "bitnami.com/v1alpha1",
        "kind": "SealedSecret",
        "metadata": {"name": "db", "namespace": "demo"},
        "spec": {"encryptedData": {"password": "AgBy3i4OJSWK+PiTySYZZA9rO43cGDEq"}}
    });
    let ok = validate(&a, &sealed, "sealedsecrets").await;
    assert!(!ok.denied && ok.rules.is_empty());
    sealed["metadata"]["annotations"] = json!({"sealedsecrets.bitnami.com/cluster-wide": "true"});
    let out = validate(&a, &sealed, "sealedsecrets").await;
    assert!(!out.denied);
    assert_eq!(out.rules, [Rule::Kura011]);
    let warnings = out.review.response.unwrap().warnings.unwrap();
    assert!(
        warnings[0].starts_with("KURA011: SealedSecret db"),
        "{warnings:?}"
    );
    assert!(warnings[0].chars().count() <= kura::policy::MAX_WARNING);

    let store = json!({
        "apiVersion": "external-secrets.io/v1",
        "kind": "ClusterSecretStore",
        "metadata": {"name": "aws"},
        "spec": {"provider": {"aws": {"service": "SecretsManager", "region": "us-east-1"}}}
    });
    let out = validate(&a, &store, "clustersecretstores").await;
    assert_eq!(out.rules, [Rule::Kura011]);
    assert!(!out.denied);
}

#[tokio::test]
async fn plain_secrets_are_not_judged_at_admission() {
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "demo"}, "stringData": {"password": "hunter2"}});
    let out = validate(&offline(), &secret, "secrets").await;
    assert!(!out.denied && out.rules.is_empty());
}

async fn lint(text: &str) -> Vec<kura::cli::lint::Report> {
    let a = offline();
    let mut out = Vec::new();
    for d in parse_documents("k8s.yaml", text) {
        if let Some(r) = check(&a, &d, "default").await {
            out.push(r);
        }
    }
    out
}

#[tokio::test]
async fn secret_manifests_with_values_are_findings_in_lint() {
    let reports = lint(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\ntype: Opaque\ndata:\n  user: YWRtaW4=\n  password: aHVudGVyMg==\n\
         ---\napiVersion: v1\nkind: Secret\nmetadata: {name: placeholder}\nstringData:\n  token: \"\"\n\
         ---\napiVersion: v1\nkind: Secret\nmetadata: {name: empty}\n\
         ---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: sa-token\n  annotations: {kubernetes.io/service-account.name: app}\ntype: kubernetes.io/service-account-token\n",
    )
    .await;
    assert_eq!(reports.len(), 4);
    let db = &reports[0];
    assert!(db.denied);
    assert_eq!(db.findings.len(), 1);
    let f = &db.findings[0];
    assert_eq!(f.rule, Rule::Kura010);
    // Keys are reported in sorted order: `password` (line 7) before `user`.
    assert_eq!(f.field.as_deref(), Some("/data/password"));
    assert_eq!(f.line, 7, "the line of the value");
    for alternative in ["kura.dev/secret.", "ExternalSecret", "SealedSecret"] {
        assert!(f.message.contains(alternative), "{}", f.message);
    }
    assert!(!f.message.contains("aHVudGVyMg"), "never the value");
    for r in &reports[1..] {
        assert!(!r.denied && r.findings.is_empty(), "{r:?}");
    }
}
