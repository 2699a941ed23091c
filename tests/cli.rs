//! The `kura` command line as users run it: certs, lint, review.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::sync::Arc;

use common::kura_bin;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

fn verify(ca_pem: &str, cert_pem: &str, name: &str) -> Result<(), rustls::Error> {
    let provider = kura::tls::provider();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
    let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    verifier
        .verify_server_cert(
            &cert,
            &[],
            &ServerName::try_from(name.to_string()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
}

#[test]
fn certs_verify_for_the_service_and_renewal_keeps_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let run = || common::kura_certs(dir.path());
    run();
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
    let (ca, cert) = (read("ca.crt"), read("tls.crt"));
    for name in [
        "kura.kura-system.svc",
        "kura.kura-system.svc.cluster.local",
        "kura.kura-system",
    ] {
        verify(&ca, &cert, name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(verify(&ca, &cert, "other.kura-system.svc").is_err());
    let bundle = read("ca-bundle.txt");
    assert!(!bundle.ends_with('\n'));
    use base64::Engine;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(&bundle)
            .unwrap(),
        ca.as_bytes()
    );
    let secret: serde_json::Value = serde_yaml_ng::from_str(&read("secret.yaml")).unwrap();
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(secret["metadata"]["name"], "kura-tls");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(dir.path().join("tls.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    run();
    assert_eq!(read("ca.crt"), ca, "renewal keeps the CA");
    assert_ne!(
        read("tls.crt"),
        cert,
        "renewal issues a new serving certificate"
    );
    verify(&ca, &read("tls.crt"), "kura.kura-system.svc").unwrap();
}

fn lint(args: &[&str], stdin: Option<&str>) -> (i32, String) {
    let mut cmd = Command::new(kura_bin());
    cmd.arg("lint").args(args);
    let out = if let Some(input) = stdin {
        use std::io::Write;
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    } else {
        cmd.output().unwrap()
    };
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

#[test]
fn lint_exit_codes_and_outputs() {
    let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/realworld");
    let (code, out) = lint(&[corpus], None);
    assert_eq!(code, 1);
    assert!(out.ends_with("69 document(s) checked, 7 denied\n"), "{out}");

    let clean = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/realworld/kubernetes__website__cronjob.yaml"
    );
    assert_eq!(lint(&[clean], None).0, 0);

    let (code, out) = lint(
        &["-o", "json", "-"],
        Some(
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: p, annotations: {kura.dev/inject: 'true', kura.dev/secret.a: /other/x}}\n  spec: {containers: [{name: c, image: i}]}\n",
        ),
    );
    assert_eq!(code, 1);
    let reports: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reports[0]["findings"][0]["rule"], "KURA002");
    assert!(reports[0]["notVerified"].is_null() || reports[0]["not_verified"].is_array());

    assert_eq!(lint(&["/nonexistent/path.yaml"], None).0, 2);
    // A document that is not YAML is reported, not a usage error.
    let (code, out) = lint(&["-"], Some("a: [unclosed"));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("<stdin>:1 document 1: UNREADABLE"), "{out}");
    let (code, _) = lint(&["--policy", "/nonexistent/policy.yaml", corpus], None);
    assert_eq!(code, 2);
}

#[test]
fn shipped_policies_load_and_apply() {
    let root = env!("CARGO_MANIFEST_DIR");
    let corpus = format!("{root}/tests/realworld");
    // The example denies native Secret references too, so more documents are denied.
    let (code, out) = lint(
        &["--policy", &format!("{root}/examples/policy.yaml"), &corpus],
        None,
    );
    assert_eq!(code, 1, "{out}");
    let denied: usize = out
        .lines()
        .last()
        .unwrap()
        .split(", ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(denied > 7, "{out}");

    // The policy deploy/ ships is the built-in default written out: same 7 denials.
    let cm: serde_json::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(format!("{root}/deploy/base/policy-configmap.yaml")).unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, cm["data"]["policy.yaml"].as_str().unwrap()).unwrap();
    let (code, out) = lint(&["--policy", path.to_str().unwrap(), &corpus], None);
    assert_eq!(code, 1);
    assert!(out.ends_with("69 document(s) checked, 7 denied\n"), "{out}");
}

#[test]
fn review_prints_the_decision_and_the_mutated_pod() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(kura_bin())
        .args([
            "review",
            &format!("{root}/examples/admission-review.json"),
            "--store",
            &format!("file:{root}/examples/store.yaml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("decision: injected\n"), "{text}");
    let pod: serde_json::Value =
        serde_yaml_ng::from_str(text.split("---\n").nth(1).unwrap()).unwrap();
    assert_eq!(pod["spec"]["initContainers"][0]["name"], "kura-agent");
    common::validate_k8s(&[pod]).unwrap();
}

#[test]
fn lint_verifies_store_rules_with_a_store() {
    let root = env!("CARGO_MANIFEST_DIR");
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: legacy\n  namespace: demo\n  annotations:\n    kura.dev/inject: \"true\"\n    kura.dev/secret.old: /demo/orders/legacy\nspec:\n  containers: [{name: app, image: app:1}]\n";
    let (code, out) = lint(&["-"], Some(pod));
    assert_eq!(
        code, 0,
        "offline: scope passes, the rest is not verified: {out}"
    );
    assert!(out.contains("NOTE not verified offline: KURA002 (resolved identity and namespace tag), KURA003, KURA004"), "{out}");
    let (code, out) = lint(
        &["--store", &format!("file:{root}/examples/store.yaml"), "-"],
        Some(pod),
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("DENY [KURA003]") && out.contains("/demo/orders/legacy"),
        "{out}"
    );
    assert!(!out.contains("not verified"));
    let legend = format!(
        "\n{}: {}\n",
        kura::policy::Rule::Kura003.id(),
        kura::policy::Rule::Kura003.summary()
    );
    assert!(
        out.contains(&legend),
        "each rule found is explained once: {out}"
    );
}

/// Text logs written to a pipe (a file, `kubectl logs`) carry no terminal colour codes.
#[test]
fn text_logs_to_a_pipe_are_plain() {
    use std::io::{BufRead, BufReader};
    let store = concat!(
        "file:",
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/webhook-store.yaml"
    );
    let mut child = Command::new(kura_bin())
        .args([
            "serve",
            "--self-signed",
            "--listen=127.0.0.1:0",
            "--metrics-listen=127.0.0.1:0",
            "--watch-namespaces=never",
            "--log-format=text",
            &format!("--store={store}"),
        ])
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let done = line.contains("webhook listening");
        seen.push(line);
        if done {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let text = seen.join("\n");
    assert!(
        text.contains("WARN") && text.contains("self-signed"),
        "{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in piped logs: {text:?}"
    );
}

/// A manifest as kubectl reads it (YAML 1.1: `defaultMode: 0400` is 256), next to one that
/// is not YAML at all: the broken document is reported with its line and reason, and the
/// others are still checked, with the line of each finding.
const MIXED: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: app
        image: web:1
        args: [\"--db-password\", \"hunter2\"]
        env:
        - name: TOKEN_EXPIRY_SECONDS
          value: \"3600\"
        - name: DB_PASSWORD
          value: hunter2
        volumeMounts: [{name: cfg, mountPath: /etc/web}]
      volumes:
      - name: cfg
        configMap: {name: web, defaultMode: 0400}
---
kind: Pod
metadata: {name: broken
---
apiVersion: v1
kind: Secret
metadata: {name: web-db, namespace: shop}
stringData:
  password: hunter2
";

#[test]
fn lint_reads_yaml_as_kubectl_and_reports_lines() {
    let (code, out) = lint(&["-"], Some(MIXED));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("<stdin>:12 Deployment/web (document 1, namespace shop): DENY [KURA005] container app args[1]: the --db-password flag"), "{out}");
    assert!(out.contains("<stdin>:17 Deployment/web (document 1, namespace shop): DENY [KURA005] container app env DB_PASSWORD"), "{out}");
    assert!(
        !out.contains("TOKEN_EXPIRY_SECONDS"),
        "a lifetime is not a credential: {out}"
    );
    assert!(out.contains("<stdin>:24 document 2: UNREADABLE"), "{out}");
    assert!(
        out.contains("<stdin>:30 Secret/web-db (document 3, namespace shop): DENY [KURA010]"),
        "{out}"
    );
    assert!(!out.contains("hunter2"), "never a value: {out}");
    assert!(
        out.ends_with("3 document(s) checked, 2 denied, 1 unreadable\n"),
        "{out}"
    );

    let (code, out) = lint(&["-o", "json", "-"], Some(MIXED));
    assert_eq!(code, 1);
    let reports: serde_json::Value = serde_json::from_str(&out).unwrap();
    let web = &reports[0];
    assert_eq!(web["line"], 1);
    let lines: Vec<(String, u64, String)> = web["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["rule"].as_str().unwrap().to_string(),
                f["line"].as_u64().unwrap(),
                f["field"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        [
            (
                "KURA005".to_string(),
                12,
                "/spec/template/spec/containers/0/args/1".to_string()
            ),
            (
                "KURA005".to_string(),
                17,
                "/spec/template/spec/containers/0/env/1/value".to_string()
            ),
        ]
    );
    assert_eq!(reports[1]["unreadable"], true);
    assert_eq!(reports[1]["decision"], "unreadable");
    assert!(
        reports[1]["error"].as_str().unwrap().contains("line 24"),
        "{}",
        reports[1]
    );
}

/// `-o sarif`: a SARIF 2.1.0 log GitHub code scanning accepts: one run, kura's rules, a
/// result per finding at its file and line, levels from the severity.
#[test]
fn lint_writes_sarif_for_code_scanning() {
    let (code, out) = lint(&["-o", "sarif", "-"], Some(MIXED));
    assert_eq!(code, 1);
    let log: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(log["version"], "2.1.0");
    assert!(log["$schema"].as_str().unwrap().contains("sarif-2.1.0"));
    let run = &log["runs"][0];
    let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
    let ids: Vec<&str> = rules.iter().map(|r| r["id"].as_str().unwrap()).collect();
    for r in kura::policy::Rule::ALL {
        assert!(ids.contains(&r.id()), "{ids:?}");
    }
    let results = run["results"].as_array().unwrap();
    let got: Vec<(String, String, u64)> = results
        .iter()
        .map(|r| {
            let index = r["ruleIndex"].as_u64().unwrap() as usize;
            assert_eq!(
                rules[index]["id"], r["ruleId"],
                "ruleIndex points at the rule"
            );
            assert!(!r["message"]["text"].as_str().unwrap().is_empty());
            let loc = &r["locations"][0]["physicalLocation"];
            assert_eq!(loc["artifactLocation"]["uri"], "<stdin>");
            (
                r["ruleId"].as_str().unwrap().to_string(),
                r["level"].as_str().unwrap().to_string(),
                loc["region"]["startLine"].as_u64().unwrap(),
            )
        })
        .collect();
    let want = [
        ("unreadable", "error", 24),
        ("KURA005", "error", 12),
        ("KURA005", "error", 17),
        ("KURA010", "error", 30),
    ];
    let mut got_sorted = got.clone();
    got_sorted.sort_by_key(|g| g.2);
    let mut want: Vec<(String, String, u64)> = want
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), *c))
        .collect();
    want.sort_by_key(|w| w.2);
    assert_eq!(got_sorted, want);
}

/// The pre-commit hooks run `kura lint` on the files pre-commit passes.
#[test]
fn pre_commit_hooks_run_kura_lint() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/.pre-commit-hooks.yaml"
    ))
    .unwrap();
    let hooks: Vec<serde_json::Value> = serde_yaml_ng::from_str(&text).unwrap();
    assert!(!hooks.is_empty());
    for h in &hooks {
        assert!(h["entry"].as_str().unwrap().ends_with("kura lint"), "{h}");
        assert!(h["id"].as_str().unwrap().starts_with("kura-lint"), "{h}");
        let files = regex::Regex::new(h["files"].as_str().unwrap()).unwrap();
        assert!(files.is_match("k8s/app/deployment.yaml") && files.is_match("x.yml"));
        assert!(!files.is_match("README.md"));
    }
}

/// `kura lint` judges environment variables and templates as admission does: a workload whose
/// containers cannot be wrapped, a template that does not parse or reads a name that is not an
/// input, and every reference's policy.
#[test]
fn lint_understands_environment_variables_and_templates() {
    let deployment = |command: &str, template: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: demo\nspec:\n  selector: {{}}\n  template:\n    metadata:\n      annotations:\n        kura.dev/inject: \"true\"\n        kura.dev/env.DB_PASSWORD: /demo/orders/db#password\n        kura.dev/secrets: |\n          - envFrom: /demo/orders/db\n          - file: app.properties\n            inputs: {{db: /demo/orders/db}}\n            template: |\n              {template}\n    spec:\n      containers:\n        - name: api\n          image: app:1\n{command}"
        )
    };
    let ok = deployment(
        "          command: [/app/server]\n",
        "spring.datasource.username={{ db.username }}",
    );
    let (code, out) = lint(&["-"], Some(&ok));
    assert_eq!(code, 0, "{out}");

    let (code, out) = lint(&["-"], Some(&deployment("", "u={{ db.username }}")));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("KURA001") && out.contains("has no command"),
        "{out}"
    );

    let (code, out) = lint(
        &["-"],
        Some(&deployment(
            "          command: [/app/server]\n",
            "u={{ db.username",
        )),
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("app.properties") && out.contains("syntax error"),
        "{out}"
    );

    let (code, out) = lint(
        &["-"],
        Some(&deployment(
            "          command: [/app/server]\n",
            "u={{ user }}",
        )),
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("\"user\" is not an input"), "{out}");

    let root = env!("CARGO_MANIFEST_DIR");
    let foreign = ok.replace(
        "kura.dev/env.DB_PASSWORD: /demo/orders/db#password",
        "kura.dev/env.STRIPE: /payments/stripe",
    );
    let (code, out) = lint(
        &["--store", &format!("file:{root}/examples/store.yaml"), "-"],
        Some(&foreign),
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("KURA002") && out.contains("/payments/stripe"),
        "{out}"
    );
}
