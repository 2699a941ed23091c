//! A moto server (a real Secrets Manager/SSM/KMS API) on a loopback port, stopped on drop, and
//! AWS clients and process environments pointed at any such endpoint.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::workspace_root;

/// The Python venv the test command prepared (moto, kubernetes-validate): `$KURA_VENV`, else
/// `.venv` at the workspace root.
pub fn venv() -> PathBuf {
    let path = std::env::var_os("KURA_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv"));
    assert!(
        path.join("bin/moto_server").exists(),
        "no moto in {}: run the tests with scripts/test, which prepares the venv",
        path.display()
    );
    path
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on the loopback `port`; panics after 30 s
/// naming `what`.
pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on 127.0.0.1:{port} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The port of a `http://127.0.0.1:PORT` endpoint.
pub fn port_of(endpoint: &str) -> u16 {
    endpoint.rsplit(':').next().unwrap().parse().unwrap()
}

/// The environment that points a process (kura, the agent) at `endpoint` as its AWS.
pub fn aws_env(endpoint: &str) -> Vec<(String, String)> {
    vec![
        ("AWS_ENDPOINT_URL".into(), endpoint.to_string()),
        ("AWS_REGION".into(), "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
    ]
}

/// A Secrets Manager client for `endpoint` with moto's test credentials.
pub fn client_for(endpoint: &str) -> aws_sdk_secretsmanager::Client {
    let creds =
        aws_sdk_secretsmanager::config::Credentials::new("testing", "testing", None, None, "test");
    let conf = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(aws_sdk_secretsmanager::config::BehaviorVersion::latest())
        .region(aws_sdk_secretsmanager::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(creds)
        .build();
    aws_sdk_secretsmanager::Client::from_conf(conf)
}

/// An SSM client for `endpoint` with moto's test credentials.
pub fn ssm_client_for(endpoint: &str) -> aws_sdk_ssm::Client {
    let creds = aws_sdk_ssm::config::Credentials::new("testing", "testing", None, None, "test");
    let conf = aws_sdk_ssm::Config::builder()
        .behavior_version(aws_sdk_ssm::config::BehaviorVersion::latest())
        .region(aws_sdk_ssm::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(creds)
        .build();
    aws_sdk_ssm::Client::from_conf(conf)
}

/// A child process killed (and reaped) on drop.
struct Server(Child);

impl Server {
    fn spawn(cmd: &mut Command, port: u16) -> Server {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto starts");
        let server = Server(child);
        wait_for_port(port, "moto");
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A moto server on a free port, stopped on drop.
pub struct Moto {
    pub endpoint: String,
    _server: Server,
}

impl Moto {
    pub fn start() -> Moto {
        let port = free_port();
        let server = Server::spawn(
            Command::new(venv().join("bin/moto_server")).args([
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ]),
            port,
        );
        Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            _server: server,
        }
    }

    /// Environment for a process that should use this moto as AWS.
    pub fn env(&self) -> Vec<(String, String)> {
        aws_env(&self.endpoint)
    }

    pub async fn client(&self) -> aws_sdk_secretsmanager::Client {
        client_for(&self.endpoint)
    }

    pub fn ssm(&self) -> aws_sdk_ssm::Client {
        ssm_client_for(&self.endpoint)
    }

    /// Writes a parameter (a new one, or a new version of an existing one) and returns its
    /// version. `kind` is `String`, `StringList` or `SecureString`; `kms` a SecureString's key
    /// (`None`: the AWS managed key `alias/aws/ssm`).
    pub async fn parameter(&self, name: &str, value: &str, kind: &str, kms: Option<&str>) -> i64 {
        let ssm = self.ssm();
        let exists = ssm.get_parameter().name(name).send().await.is_ok();
        ssm.put_parameter()
            .name(name)
            .value(value)
            .r#type(aws_sdk_ssm::types::ParameterType::from(kind))
            .set_key_id(kms.map(Into::into))
            .overwrite(exists)
            .send()
            .await
            .unwrap()
            .version
    }

    /// Puts `labels` on `version` of a parameter (moving them from any other version).
    pub async fn label(&self, name: &str, version: i64, labels: &[&str]) {
        self.ssm()
            .label_parameter_version()
            .name(name)
            .parameter_version(version)
            .set_labels(Some(labels.iter().map(|l| l.to_string()).collect()))
            .send()
            .await
            .unwrap();
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

/// moto's `UpdateSecretVersionStage` moves the `AWSCURRENT` label but not what an unversioned
/// read returns (its `default_version_id` only follows `PutSecretValue`), while AWS always
/// returns the version labelled `AWSCURRENT`. This keeps moto's own code and adds that one step,
/// so that moving `AWSCURRENT` back (a rollback) can be tested against it.
const MOTO_WITH_STAGE_FIX: &str = r#"
import sys
from moto.secretsmanager.models import SecretsManagerBackend
_update = SecretsManagerBackend.update_secret_version_stage
def update_secret_version_stage(self, secret_id, version_stage, remove_from_version_id, move_to_version_id):
    out = _update(self, secret_id, version_stage, remove_from_version_id, move_to_version_id)
    if version_stage == "AWSCURRENT" and move_to_version_id:
        self.secrets[secret_id].set_default_version_id(move_to_version_id)
    return out
SecretsManagerBackend.update_secret_version_stage = update_secret_version_stage
from moto.server import main
main(["-H", "127.0.0.1", "-p", sys.argv[1]])
"#;

/// A moto server on a given port (to bring "the same endpoint" back after stopping one), with
/// the rollback fix above; stopped on drop.
pub struct MotoOn {
    pub endpoint: String,
    _server: Server,
}

impl MotoOn {
    pub fn start(port: u16) -> MotoOn {
        let server = Server::spawn(
            Command::new(venv().join("bin/python")).args([
                "-c",
                MOTO_WITH_STAGE_FIX,
                &port.to_string(),
            ]),
            port,
        );
        MotoOn {
            endpoint: format!("http://127.0.0.1:{port}"),
            _server: server,
        }
    }

    pub fn client(&self) -> aws_sdk_secretsmanager::Client {
        client_for(&self.endpoint)
    }

    pub fn env(&self) -> Vec<(String, String)> {
        aws_env(&self.endpoint)
    }
}

/// Writes a new current value of `id`, as a rotation does.
/// `PutSecretValue`; returns the new version's id.
pub async fn put_value(client: &aws_sdk_secretsmanager::Client, id: &str, value: &str) -> String {
    client
        .put_secret_value()
        .secret_id(id)
        .secret_string(value)
        .send()
        .await
        .expect("PutSecretValue")
        .version_id
        .expect("a version id")
}
