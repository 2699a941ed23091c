//! Test harness: a moto server on a free loopback port, AWS clients pointed at it, schema
//! validation through kubernetes-validate, and paths to the built binaries.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Python venv the test command prepared (moto, kubernetes-validate).
pub fn venv() -> PathBuf {
    let path = std::env::var_os("KURA_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv"));
    assert!(
        path.join("bin/moto_server").exists(),
        "no moto in {}: run the tests with scripts/test, which prepares the venv",
        path.display()
    );
    path
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A moto server, stopped on drop.
pub struct Moto {
    pub endpoint: String,
    child: Child,
}

impl Moto {
    pub fn start() -> Moto {
        let port = free_port();
        let child = Command::new(venv().join("bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto did not start on {endpoint}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Moto { endpoint, child }
    }

    /// Environment for a process that should use this moto as AWS.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint.clone()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]
    }

    pub async fn client(&self) -> aws_sdk_secretsmanager::Client {
        let creds = aws_sdk_secretsmanager::config::Credentials::new(
            "testing", "testing", None, None, "test",
        );
        let conf = aws_sdk_secretsmanager::Config::builder()
            .behavior_version(aws_sdk_secretsmanager::config::BehaviorVersion::latest())
            .region(aws_sdk_secretsmanager::config::Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .credentials_provider(creds)
            .build();
        aws_sdk_secretsmanager::Client::from_conf(conf)
    }

    /// Creates a customer-managed KMS key through moto's KMS API and returns its ARN.
    pub async fn create_kms_key(&self) -> String {
        let resp: serde_json::Value = reqwest::Client::new()
            .post(&self.endpoint)
            .header("X-Amz-Target", "TrentService.CreateKey")
            .header("Content-Type", "application/x-amz-json-1.1")
            .header(
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=0",
            )
            .body(r#"{"Description":"kura test key"}"#)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        resp["KeyMetadata"]["Arn"]
            .as_str()
            .expect("KMS key ARN")
            .to_string()
    }

    /// Creates a secret with a string value, optionally encrypted with `kms` and tagged.
    pub async fn secret(
        &self,
        name: &str,
        value: &str,
        kms: Option<&str>,
        tags: &[(&str, &str)],
    ) -> String {
        let mut req = self
            .client()
            .await
            .create_secret()
            .name(name)
            .secret_string(value)
            .set_kms_key_id(kms.map(Into::into));
        for (k, v) in tags {
            req = req.tags(
                aws_sdk_secretsmanager::types::Tag::builder()
                    .key(*k)
                    .value(*v)
                    .build(),
            );
        }
        req.send().await.unwrap().arn.unwrap()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
