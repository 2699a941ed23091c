//! Test harness: a moto server on a free loopback port, AWS clients pointed at it, schema
//! validation through kubernetes-validate, and paths to the built binaries.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "moto.rs"]
mod moto;
pub use moto::*;

/// Validates Kubernetes objects against the OpenAPI schemas (strict; 1.29 and newest).
pub fn validate_k8s(objects: &[serde_json::Value]) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        let p = dir.path().join(format!("{i}.json"));
        std::fs::write(&p, serde_json::to_vec(o).unwrap()).unwrap();
        files.push(p);
    }
    let out = Command::new(venv().join("bin/python"))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/validate-k8s.py"))
        .args(&files)
        .output()
        .expect("python runs");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

/// The built `kura-agent` binary (a sibling of this package's `kura`).
pub fn agent_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_kura")).with_file_name("kura-agent");
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (scripts/test does)",
        p.display()
    );
    p
}

pub fn kura_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kura"))
}

/// Applies a JSON Patch (as returned in an AdmissionResponse) to an object.
pub fn apply_patch(object: &serde_json::Value, patch: &[u8]) -> serde_json::Value {
    let ops: json_patch::Patch = serde_json::from_slice(patch).expect("patch is a JSON Patch");
    let mut doc = object.clone();
    json_patch::patch(&mut doc, &ops).expect("patch applies");
    doc
}

/// A CA-signed serving certificate for 127.0.0.1/localhost, written to a temp dir.
pub struct TestCerts {
    pub dir: tempfile::TempDir,
    pub ca: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn test_certs() -> TestCerts {
    kura::tls::provider();
    let b = kura::tls::bundle_for(vec!["localhost".into(), "127.0.0.1".into()], 2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    std::fs::write(&cert, &b.serving.cert).unwrap();
    std::fs::write(&key, &b.serving.key).unwrap();
    TestCerts {
        dir,
        ca: b.ca.cert,
        cert,
        key,
    }
}

/// An HTTPS client that trusts only `ca`.
pub fn https_client(ca: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.as_bytes()).unwrap()])
        .build()
        .unwrap()
}

/// The running `kura serve` binary, killed on drop.
pub struct Webhook {
    pub url: String,
    pub metrics_url: String,
    pub child: Child,
}

impl Webhook {
    pub fn start(certs: &TestCerts, extra_args: &[&str], env: &[(String, String)]) -> Webhook {
        let port = free_port();
        let mport = free_port();
        let child = Command::new(kura_bin())
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--metrics-listen",
                &format!("127.0.0.1:{mport}"),
            ])
            .arg("--tls-cert")
            .arg(&certs.cert)
            .arg("--tls-key")
            .arg(&certs.key)
            .args([
                "--watch-namespaces",
                "never",
                "--shutdown-delay",
                "200ms",
                "--log-format",
                "json",
            ])
            .args(extra_args)
            .envs(env.iter().cloned())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kura serve starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "kura serve did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Webhook {
            url: format!("https://127.0.0.1:{port}"),
            metrics_url: format!("http://127.0.0.1:{mport}/metrics"),
            child,
        }
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
