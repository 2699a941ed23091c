//! Harness of kura's integration tests: the built binaries, certificates, the running `kura
//! serve`, reviews and patches. What the agent's tests share too (moto, metrics scrapes, schema
//! validation) is the `testkit` crate, re-exported here.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub use testkit::*;

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

/// The patch bytes of an answer's response: base64, as kura's server writes them (Go's encoding
/// of `[]byte`), or an array of numbers, as kube's `Serialize` writes them in-process.
pub fn patch_bytes(patch: &serde_json::Value) -> Option<Vec<u8>> {
    use base64::Engine as _;
    match patch {
        serde_json::Value::String(s) => base64::engine::general_purpose::STANDARD.decode(s).ok(),
        other => serde_json::from_value(other.clone()).ok(),
    }
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
        wait_for_port(port, "kura serve");
        Webhook {
            url: format!("https://127.0.0.1:{port}"),
            metrics_url: format!("http://127.0.0.1:{mport}/metrics"),
            child,
        }
    }

    /// The `/metrics` text, checked to be a 200 answer with a text content type.
    pub async fn metrics(&self) -> String {
        let resp = reqwest::get(&self.metrics_url)
            .await
            .expect("metrics answer");
        assert_eq!(resp.status(), 200);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .expect("ascii content type")
                .contains("text")
        );
        resp.text().await.expect("metrics text")
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy in front of a real endpoint (moto) that counts Secrets Manager and SSM calls by
/// operation and can delay or refuse to forward, to make a slow or dead store out of a real one.
pub struct Proxy {
    pub endpoint: String,
    counts: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, usize>>>,
    delay: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let counts = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
        let delay = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (c, d) = (counts.clone(), delay.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (c, d, upstream) = (c.clone(), d.clone(), upstream.clone());
                tokio::spawn(async move {
                    let ms = d.load(Ordering::Relaxed);
                    if ms > 0 {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.split();
                    let (mut sr, mut sw) = server.split();
                    let up = async {
                        let mut buf = vec![0u8; 65536];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            let text = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                            for service in ["secretsmanager.", "amazonssm."] {
                                let target = format!("x-amz-target: {service}");
                                for part in text.split(&target).skip(1) {
                                    let op = part
                                        .split(['\r', '\n'])
                                        .next()
                                        .unwrap_or_default()
                                        .to_string();
                                    *c.lock().unwrap().entry(op).or_default() += 1;
                                }
                            }
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    let down = tokio::io::copy(&mut sr, &mut cw);
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Proxy {
            endpoint,
            counts,
            delay,
        }
    }

    /// Calls seen for an operation (lower case, e.g. "describesecret", "getparameters").
    pub fn count(&self, op: &str) -> usize {
        self.counts.lock().unwrap().get(op).copied().unwrap_or(0)
    }

    /// Holds every new connection this long before forwarding it.
    pub fn set_delay(&self, d: Duration) {
        self.delay
            .store(d.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// `moto.env()` with the endpoint replaced by this proxy.
    pub fn env(&self, moto: &Moto) -> Vec<(String, String)> {
        moto.env()
            .into_iter()
            .map(|(k, v)| {
                if k == "AWS_ENDPOINT_URL" {
                    (k, self.endpoint.clone())
                } else {
                    (k, v)
                }
            })
            .collect()
    }
}

/// examples/admission-review.json: a Deployment-created pod as kube-apiserver sends it.
pub fn example_review() -> serde_json::Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/admission-review.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The example AdmissionReview with another namespace and other annotations.
pub fn review(namespace: &str, annotations: &[(&str, &str)]) -> serde_json::Value {
    let mut r = example_review();
    r["request"]["namespace"] = serde_json::json!(namespace);
    r["request"]["uid"] = serde_json::json!(format!("uid-{}", fastrand_u64()));
    let ann: serde_json::Map<String, serde_json::Value> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
        .collect();
    r["request"]["object"]["metadata"]["annotations"] = serde_json::Value::Object(ann);
    r
}

fn fastrand_u64() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Posts a review to an endpoint and returns the `response` object.
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    review: &serde_json::Value,
) -> serde_json::Value {
    let resp: serde_json::Value = client
        .post(url)
        .json(review)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    resp["response"].clone()
}

/// Runs `kura certs --out-dir DIR` with every other flag at its default; fails the test with
/// its stderr when it fails.
pub fn kura_certs(dir: &Path) {
    let out = Command::new(kura_bin())
        .args(["certs", "--out-dir"])
        .arg(dir)
        .output()
        .expect("kura certs runs");
    assert!(
        out.status.success(),
        "kura certs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
