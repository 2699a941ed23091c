//! A moto server (a real Secrets Manager/KMS API) on a free loopback port, for the tests of
//! both crates: `tests/common/mod.rs` and `sidecar/tests/` include this file with `#[path]`.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Python venv the test command prepared (moto, kubernetes-validate).
pub fn venv() -> PathBuf {
    let path = std::env::var_os("KURA_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(workspace_root())
                .join(".venv")
        });
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

/// The workspace root relative to the including crate (`sidecar/` is one level down).
fn workspace_root() -> &'static str {
    if env!("CARGO_PKG_NAME") == "kura-agent" {
        ".."
    } else {
        "."
    }
}
