//! Policy rules against moto-backed secrets through the real webhook binary: scope (names,
//! ARNs, tags), KMS, missing and deleted secrets, a dead or slow store, modes, warnings, audit
//! annotations, workload templates, KURA008, the metadata cache and policy hot reload.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const POLICY: &str = r#"
apiVersion: kura.dev/v1alpha1
kind: Policy
mode: enforce
scope:
  namespaceTag: kubernetes-namespace
  grants:
    - namespaces: ["team-a"]
      names: ["/shared/team-a/*"]
      arns: ["arn:*:secretsmanager:*:*:secret:/shared/team-a/*"]
storeTimeout: 1500ms
"#;

fn message(r: &Value) -> String {
    r["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

struct Setup {
    moto: Moto,
    key: String,
    _dir: tempfile::TempDir,
    policy: std::path::PathBuf,
    certs: TestCerts,
}

async fn setup(policy: &str) -> Setup {
    let moto = Moto::start();
    let key = moto.create_kms_key().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, policy).unwrap();
    Setup {
        moto,
        key,
        _dir: dir,
        policy: path,
        certs: test_certs(),
    }
}

fn inject(file_secret: &str) -> Vec<(&'static str, String)> {
    vec![
        ("kura.dev/inject", "true".into()),
        ("kura.dev/secret.s", file_secret.into()),
    ]
}

async fn mutate(
    client: &reqwest::Client,
    hook: &Webhook,
    ns: &str,
    ann: &[(&str, String)],
) -> Value {
    let ann: Vec<(&str, &str)> = ann.iter().map(|(k, v)| (*k, v.as_str())).collect();
    post(client, &format!("{}/mutate", hook.url), &review(ns, &ann)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_rules_against_moto() {
    let s = setup(POLICY).await;
    let tag = [("kubernetes-namespace", "team-a")];
    let ok_arn = s
        .moto
        .secret("/team-a/db", r#"{"password":"x"}"#, Some(&s.key), &tag)
        .await;
    s.moto.secret("/team-a/aws-managed", "x", None, &tag).await;
    s.moto
        .secret("/team-a/untagged", "x", Some(&s.key), &[])
        .await;
    s.moto
        .secret(
            "/team-a/wrong-tag",
            "x",
            Some(&s.key),
            &[("kubernetes-namespace", "team-b")],
        )
        .await;
    s.moto
        .secret(
            "/team-b/db",
            "x",
            Some(&s.key),
            &[("kubernetes-namespace", "team-b")],
        )
        .await;
    s.moto
        .secret("/shared/team-a/key", "x", Some(&s.key), &tag)
        .await;
    s.moto
        .secret("/team-a/deleted", "x", Some(&s.key), &tag)
        .await;
    s.moto
        .client()
        .await
        .delete_secret()
        .secret_id("/team-a/deleted")
        .recovery_window_in_days(7)
        .send()
        .await
        .unwrap();

    let hook = Webhook::start(
        &s.certs,
        &["--policy", s.policy.to_str().unwrap()],
        &s.moto.env(),
    );
    let client = https_client(&s.certs.ca);
    let account_arn = |name: &str| ok_arn.replace("/team-a/db", name);
    let partial = ok_arn.rsplit_once('-').unwrap().0.to_string();

    // (namespace, secret reference, expected rule or None when allowed)
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        ("team-a", "/team-a/db#password".into(), None),
        ("team-a", ok_arn.clone(), None),
        ("team-a", partial.clone(), None),
        ("team-a", "/shared/team-a/key".into(), None),
        ("team-a", "/team-a/aws-managed".into(), Some("KURA003")),
        ("team-a", "/team-a/untagged".into(), Some("KURA002")),
        ("team-a", "/team-a/wrong-tag".into(), Some("KURA002")),
        ("team-a", "/team-b/db".into(), Some("KURA002")),
        ("team-a", account_arn("/team-b/db"), Some("KURA002")),
        ("team-b", "/team-a/db".into(), Some("KURA002")),
        ("team-b", "/shared/team-a/key".into(), Some("KURA002")),
        ("team-a", "/team-a/missing".into(), Some("KURA004")),
        ("team-a", "/team-a/deleted".into(), Some("KURA004")),
        ("team", "/team-a/db".into(), Some("KURA002")),
    ];
    for (ns, secret, want) in cases {
        let r = mutate(&client, &hook, ns, &inject(&secret)).await;
        match want {
            None => {
                assert_eq!(r["allowed"], true, "{ns} {secret}: {r}");
                assert!(
                    patch_bytes(&r["patch"]).is_some(),
                    "{ns} {secret}: injected"
                );
            }
            Some(rule) => {
                assert_eq!(r["allowed"], false, "{ns} {secret}: {r}");
                let m = message(&r);
                assert!(m.contains(rule), "{ns} {secret}: wanted {rule} in {m}");
                assert!(
                    m.contains(secret.split('#').next().unwrap()),
                    "message names the secret: {m}"
                );
                assert_eq!(r["auditAnnotations"]["decision"], "denied");
                assert!(
                    r["auditAnnotations"]["rules"]
                        .as_str()
                        .unwrap()
                        .contains(rule)
                );
            }
        }
    }

    // An allowed key list: another customer-managed key is refused.
    let other_key = s.moto.create_kms_key().await;
    s.moto
        .secret("/team-a/other-key", "x", Some(&other_key), &tag)
        .await;
    let only = format!("{POLICY}kms:\n  allowedKeys: [\"{}\"]\n", s.key);
    std::fs::write(&s.policy, only).unwrap();
    let hook2 = Webhook::start(
        &s.certs,
        &["--policy", s.policy.to_str().unwrap()],
        &s.moto.env(),
    );
    let r = mutate(&client, &hook2, "team-a", &inject("/team-a/other-key")).await;
    assert!(
        message(&r).contains("KURA003") && message(&r).contains("not in the policy"),
        "{r}"
    );
    let r = mutate(&client, &hook2, "team-a", &inject("/team-a/db")).await;
    assert_eq!(r["allowed"], true, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modes_warnings_and_audit_annotations() {
    let plaintext = json!([{ "name": "DB_PASSWORD", "value": "hunter2" }]);
    for (mode, allowed, warnings) in [("enforce", false, 0), ("warn", true, 1), ("audit", true, 0)]
    {
        let s = setup(&format!(
            "apiVersion: kura.dev/v1alpha1\nkind: Policy\nmode: {mode}\n"
        ))
        .await;
        let hook = Webhook::start(
            &s.certs,
            &["--policy", s.policy.to_str().unwrap()],
            &s.moto.env(),
        );
        let client = https_client(&s.certs.ca);
        let mut rv = review("demo", &[]);
        rv["request"]["object"]["spec"]["containers"][0]["env"] = plaintext.clone();
        let r = post(&client, &format!("{}/mutate", hook.url), &rv).await;
        assert_eq!(r["allowed"], allowed, "{mode}: {r}");
        let w = r["warnings"].as_array().map(Vec::len).unwrap_or(0);
        assert_eq!(w, warnings, "{mode}: {r}");
        if let Some(ws) = r["warnings"].as_array() {
            assert!(
                ws.iter()
                    .all(|w| w.as_str().unwrap().chars().count() <= 120)
            );
            assert!(ws[0].as_str().unwrap().starts_with("KURA005"));
        }
        assert_eq!(r["auditAnnotations"]["rules"], "KURA005", "{mode}");
        assert_eq!(r["auditAnnotations"]["mode"], mode);
        if !allowed {
            let m = message(&r);
            assert!(
                m.contains("KURA005") && m.contains("DB_PASSWORD") && m.contains("container api"),
                "{m}"
            );
            assert!(!m.contains("hunter2"), "denials never quote the value");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_checks_workload_templates_and_missing_agents() {
    let s = setup("apiVersion: kura.dev/v1alpha1\nkind: Policy\n").await;
    s.moto
        .secret("/demo/orders/db", r#"{"password":"x"}"#, Some(&s.key), &[])
        .await;
    s.moto
        .secret("/demo/orders/api-key", "x", Some(&s.key), &[])
        .await;
    let hook = Webhook::start(&s.certs, &[], &s.moto.env());
    let client = https_client(&s.certs.ca);
    let validate = format!("{}/validate", hook.url);

    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "web", "namespace": "demo" },
        "spec": { "selector": { "matchLabels": { "app": "web" } }, "template": {
            "metadata": { "labels": { "app": "web" } },
            "spec": { "containers": [{ "name": "web", "image": "nginx", "env": [{ "name": "API_TOKEN", "value": "abc123def" }] }] }
        } }
    });
    for op in ["CREATE", "UPDATE"] {
        let mut rv = review("demo", &[]);
        rv["request"]["kind"] = json!({ "group": "apps", "version": "v1", "kind": "Deployment" });
        rv["request"]["resource"] =
            json!({ "group": "apps", "version": "v1", "resource": "deployments" });
        rv["request"]["operation"] = json!(op);
        rv["request"]["name"] = json!("web");
        rv["request"]["object"] = deployment.clone();
        if op == "UPDATE" {
            rv["request"]["oldObject"] = deployment.clone();
        }
        let r = post(&client, &validate, &rv).await;
        assert_eq!(r["allowed"], false, "{op}: {r}");
        let m = message(&r);
        assert!(
            m.contains("Deployment web") && m.contains("KURA005") && m.contains("API_TOKEN"),
            "{m}"
        );
    }

    // An opted-in pod that reaches /validate without the agent: KURA008.
    let rv = review(
        "demo",
        &[
            ("kura.dev/inject", "true"),
            ("kura.dev/secret.db", "/demo/orders/db#password"),
        ],
    );
    let r = post(&client, &validate, &rv).await;
    assert_eq!(r["allowed"], false);
    assert!(message(&r).contains("KURA008"), "{r}");

    // The same pod after /mutate passes /validate; a second /mutate adds nothing.
    let m = post(&client, &format!("{}/mutate", hook.url), &rv).await;
    let patch = patch_bytes(&m["patch"]).expect("a patch");
    let mut mutated = rv.clone();
    mutated["request"]["object"] = apply_patch(&rv["request"]["object"], &patch);
    let r = post(&client, &validate, &mutated).await;
    assert_eq!(r["allowed"], true, "{r}");
    let again = post(&client, &format!("{}/mutate", hook.url), &mutated).await;
    assert_eq!(again["allowed"], true);
    assert!(again["patch"].is_null(), "idempotent: {again}");

    // kubectl annotate kura.dev/refresh-now on a running pod: an UPDATE of annotations only.
    let mut upd = mutated.clone();
    upd["request"]["operation"] = json!("UPDATE");
    upd["request"]["oldObject"] = mutated["request"]["object"].clone();
    upd["request"]["object"]["metadata"]["annotations"]["kura.dev/refresh-now"] =
        json!("1764370000");
    let r = post(&client, &validate, &upd).await;
    assert_eq!(r["allowed"], true, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_down_or_slow_is_kura009_within_the_deadline() {
    let s = setup(POLICY).await;
    let client = https_client(&s.certs.ca);
    let ann = inject("/team-a/db");

    // Nothing listens on the endpoint. The bound that matters is the webhook's 5 s timeout: kura
    // must answer itself (storeTimeout is 1.5 s here), with room for a loaded CI machine.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let env: Vec<(String, String)> = s
        .moto
        .env()
        .into_iter()
        .map(|(k, v)| {
            if k == "AWS_ENDPOINT_URL" {
                (k, dead.clone())
            } else {
                (k, v)
            }
        })
        .collect();
    let hook = Webhook::start(&s.certs, &["--policy", s.policy.to_str().unwrap()], &env);
    let t = Instant::now();
    let r = mutate(&client, &hook, "team-a", &ann).await;
    assert!(
        t.elapsed() < Duration::from_millis(4000),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(r["allowed"], false);
    let m = message(&r);
    assert!(m.contains("KURA009") && m.contains("/team-a/db"), "{m}");
    drop(hook);

    // The store answers, but too slowly.
    let proxy = Proxy::start(&s.moto.endpoint).await;
    proxy.set_delay(Duration::from_secs(20));
    let hook = Webhook::start(
        &s.certs,
        &["--policy", s.policy.to_str().unwrap()],
        &proxy.env(&s.moto),
    );
    let t = Instant::now();
    let r = mutate(&client, &hook, "team-a", &ann).await;
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_millis(4000),
        "{took:?}"
    );
    assert!(message(&r).contains("KURA009"), "{r}");
    drop(hook);

    // failOpen: allowed, with a warning naming the rule.
    std::fs::write(&s.policy, format!("{POLICY}storeErrors: failOpen\n")).unwrap();
    let hook = Webhook::start(&s.certs, &["--policy", s.policy.to_str().unwrap()], &env);
    let r = mutate(&client, &hook, "team-a", &ann).await;
    assert_eq!(r["allowed"], true, "{r}");
    assert!(
        r["warnings"][0].as_str().unwrap().starts_with("KURA009"),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_lookups_are_cached_and_shared() {
    let s =
        setup("apiVersion: kura.dev/v1alpha1\nkind: Policy\ncache: {ttl: 60s, negativeTtl: 60s}\n")
            .await;
    for n in ["a", "b", "c"] {
        s.moto
            .secret(&format!("/team-a/{n}"), "x", Some(&s.key), &[])
            .await;
    }
    let proxy = Proxy::start(&s.moto.endpoint).await;
    // Slow enough that concurrent admissions overlap on the first lookups.
    proxy.set_delay(Duration::from_millis(300));
    let hook = Webhook::start(
        &s.certs,
        &["--policy", s.policy.to_str().unwrap()],
        &proxy.env(&s.moto),
    );
    let client = https_client(&s.certs.ca);
    let ann: Vec<(&str, String)> = vec![
        ("kura.dev/inject", "true".into()),
        ("kura.dev/secret.a", "/team-a/a".into()),
        ("kura.dev/secret.b", "/team-a/b".into()),
        ("kura.dev/secret.c", "/team-a/c".into()),
        ("kura.dev/secret.d", "/team-a/missing".into()),
    ];
    let calls = (0..16).map(|_| mutate(&client, &hook, "team-a", &ann));
    let answers = futures_util::future::join_all(calls).await;
    for r in &answers {
        assert!(message(r).contains("KURA004"), "{r}");
    }
    assert_eq!(
        proxy.count("describesecret"),
        4,
        "one in-flight call per secret, shared by 16 admissions"
    );
    let r = mutate(&client, &hook, "team-a", &ann).await;
    assert!(message(&r).contains("KURA004"));
    assert_eq!(
        proxy.count("describesecret"),
        4,
        "answers and not-found are cached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_reloads_and_keeps_the_last_good_one() {
    let s = setup("apiVersion: kura.dev/v1alpha1\nkind: Policy\nmode: enforce\n").await;
    let hook = Webhook::start(
        &s.certs,
        &["--policy", s.policy.to_str().unwrap()],
        &s.moto.env(),
    );
    let client = https_client(&s.certs.ca);
    let mut rv = review("demo", &[]);
    rv["request"]["object"]["spec"]["containers"][0]["env"] =
        json!([{ "name": "DB_PASSWORD", "value": "hunter2" }]);
    let url = format!("{}/mutate", hook.url);
    assert_eq!(post(&client, &url, &rv).await["allowed"], false);

    std::fs::write(
        &s.policy,
        "apiVersion: kura.dev/v1alpha1\nkind: Policy\nmode: audit\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while post(&client, &url, &rv).await["allowed"] != true {
        assert!(Instant::now() < deadline, "policy not reloaded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    std::fs::write(
        &s.policy,
        "apiVersion: kura.dev/v1alpha1\nkind: Policy\nmode: [broken\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        post(&client, &url, &rv).await["allowed"],
        true,
        "the last good policy (audit) stays"
    );
    let metrics = hook.metrics().await;
    assert!(metrics.contains("result=\"policy-refused\""), "{metrics}");
}

/// SSM parameters under the built-in scope and KMS rules, through the real webhook: names and
/// ARNs (KURA002), a customer-managed key, the AWS managed key and unencrypted types (KURA003,
/// and `kms.allowPlainParameters`), missing (KURA004), malformed (KURA001), a dead store
/// (KURA009), and one `DescribeParameters` for the parameters of many concurrent admissions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameter_rules_against_moto() {
    let s =
        setup("apiVersion: kura.dev/v1alpha1\nkind: Policy\ncache: {ttl: 60s, negativeTtl: 60s}\n")
            .await;
    let m = &s.moto;
    m.parameter(
        "/team-a/cmk",
        r#"{"host":"db"}"#,
        "SecureString",
        Some(&s.key),
    )
    .await;
    m.parameter("/team-a/managed", "x", "SecureString", None)
        .await;
    m.parameter("/team-a/plain", "x", "String", None).await;
    m.parameter("/team-a/list", "x,y", "StringList", None).await;
    m.parameter("/team-b/cmk", "x", "SecureString", Some(&s.key))
        .await;
    let arn = |name: &str| format!("arn:aws:ssm:us-east-1:123456789012:parameter{name}");

    let hook = Webhook::start(
        &s.certs,
        &["--policy", s.policy.to_str().unwrap()],
        &s.moto.env(),
    );
    let client = https_client(&s.certs.ca);
    let cases: Vec<(&str, String, Option<&str>, &str)> = vec![
        ("team-a", "ssm:/team-a/cmk#host".into(), None, ""),
        ("team-a", arn("/team-a/cmk"), None, ""),
        (
            "team-a",
            "ssm:/team-a/managed".into(),
            Some("KURA003"),
            "alias/aws/ssm",
        ),
        (
            "team-a",
            "ssm:/team-a/plain".into(),
            Some("KURA003"),
            "allowPlainParameters",
        ),
        (
            "team-a",
            "ssm:/team-a/list".into(),
            Some("KURA003"),
            "StringList",
        ),
        (
            "team-a",
            "ssm:/team-b/cmk".into(),
            Some("KURA002"),
            "team-a",
        ),
        ("team-a", arn("/team-b/cmk"), Some("KURA002"), "team-a"),
        (
            "team-b",
            "ssm:/team-a/cmk".into(),
            Some("KURA002"),
            "team-b",
        ),
        (
            "team-a",
            "ssm:/team-a/missing".into(),
            Some("KURA004"),
            "SSM Parameter Store",
        ),
        (
            "team-a",
            "ssm:team-a/cmk".into(),
            Some("KURA001"),
            "ssm:/team-a/cmk",
        ),
    ];
    for (ns, reference, want, says) in &cases {
        let r = mutate(&client, &hook, ns, &inject(reference)).await;
        match want {
            None => {
                assert_eq!(r["allowed"], true, "{ns} {reference}: {r}");
                let pod = patch_bytes(&r["patch"]).expect("injected");
                assert!(
                    String::from_utf8_lossy(&pod).contains(reference.split('#').next().unwrap()),
                    "the agent's spec carries the reference"
                );
            }
            Some(rule) => {
                assert_eq!(r["allowed"], false, "{ns} {reference}: {r}");
                let msg = message(&r);
                assert!(
                    msg.contains(rule) && msg.contains(says),
                    "{ns} {reference}: wanted {rule} and {says:?} in {msg}"
                );
            }
        }
    }
    drop(hook);

    // kms.allowPlainParameters admits String/StringList, never a SecureString on the AWS key.
    std::fs::write(
        &s.policy,
        "apiVersion: kura.dev/v1alpha1\nkind: Policy\nkms: {allowPlainParameters: true}\n",
    )
    .unwrap();
    let hook = Webhook::start(
        &s.certs,
        &["--policy", s.policy.to_str().unwrap()],
        &s.moto.env(),
    );
    for (reference, allowed) in [
        ("ssm:/team-a/plain", true),
        ("ssm:/team-a/list", true),
        ("ssm:/team-a/managed", false),
    ] {
        let r = mutate(&client, &hook, "team-a", &inject(reference)).await;
        assert_eq!(r["allowed"], allowed, "{reference}: {r}");
    }
    drop(hook);

    // A store that cannot answer: KURA009 naming the parameter.
    let dead = aws_env(&format!("http://127.0.0.1:{}", free_port()));
    let hook = Webhook::start(&s.certs, &["--policy", s.policy.to_str().unwrap()], &dead);
    let r = mutate(&client, &hook, "team-a", &inject("ssm:/team-a/cmk")).await;
    assert_eq!(r["allowed"], false, "{r}");
    let msg = message(&r);
    assert!(
        msg.contains("KURA009") && msg.contains("ssm:/team-a/cmk"),
        "{msg}"
    );
    drop(hook);

    // Many admissions of a pod with three parameters (one missing) and two secrets: one
    // DescribeParameters for all the parameters, one DescribeSecret per secret.
    s.moto.secret("/team-a/s1", "x", Some(&s.key), &[]).await;
    s.moto.secret("/team-a/s2", "x", Some(&s.key), &[]).await;
    std::fs::write(
        &s.policy,
        "apiVersion: kura.dev/v1alpha1\nkind: Policy\ncache: {ttl: 60s, negativeTtl: 60s}\n",
    )
    .unwrap();
    let proxy = Proxy::start(&s.moto.endpoint).await;
    proxy.set_delay(Duration::from_millis(300));
    let hook = Webhook::start(
        &s.certs,
        &["--policy", s.policy.to_str().unwrap()],
        &proxy.env(&s.moto),
    );
    let ann: Vec<(&str, String)> = vec![
        ("kura.dev/inject", "true".into()),
        ("kura.dev/secret.a", "ssm:/team-a/cmk#host".into()),
        ("kura.dev/secret.b", arn("/team-a/cmk")),
        ("kura.dev/secret.c", "ssm:/team-a/missing".into()),
        ("kura.dev/secret.d", "/team-a/s1".into()),
        ("kura.dev/secret.e", "/team-a/s2".into()),
    ];
    let answers =
        futures_util::future::join_all((0..8).map(|_| mutate(&client, &hook, "team-a", &ann)))
            .await;
    for r in &answers {
        let msg = message(r);
        assert!(
            msg.contains("KURA004") && msg.contains("ssm:/team-a/missing"),
            "{r}"
        );
        assert_eq!(
            msg.matches("[KURA").count(),
            1,
            "only the missing one: {msg}"
        );
    }
    assert_eq!(proxy.count("describeparameters"), 1, "one batch, shared");
    assert_eq!(proxy.count("describesecret"), 2);
    assert_eq!(
        proxy.count("getparameters") + proxy.count("getparameter"),
        0
    );
}
