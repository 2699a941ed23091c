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
    assert_eq!(lint(&["-"], Some("a: [unclosed")).0, 2);
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
