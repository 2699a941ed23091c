//! A stub kube-apiserver that answers `TokenReview`s (`POST
//! /apis/authentication.k8s.io/v1/tokenreviews`) as kube-apiserver does, over plain HTTP/1.1 on
//! a loopback port: a known token for the asked audience is authenticated (its service
//! account, groups, the bound pod in `extra`, the audiences), any other token or audience
//! is not (`status.error`, as kube-apiserver words it). Everything else is a `404` `Status`.
//! Reviews are counted and their asked audiences kept, so tests see what the service asks.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A token the stub accepts.
#[derive(Debug, Clone)]
pub struct ServiceAccountToken {
    pub namespace: String,
    pub service_account: String,
    pub pod: String,
    /// The audiences the token was projected for.
    pub audiences: Vec<String>,
}

#[derive(Default)]
struct Known {
    tokens: BTreeMap<String, ServiceAccountToken>,
    /// The audiences of each review asked, in order.
    asked: Vec<Vec<String>>,
    /// When set, every review gets this HTTP status and a `Status` body (RBAC refusals).
    failing: Option<u16>,
    /// Stopped: connections are closed without an answer, as a dead API server's would be.
    stopped: bool,
}

/// The stub, stopped on drop.
pub struct ApiServer {
    pub url: String,
    known: Arc<Mutex<Known>>,
    reviews: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ApiServer {
    /// Starts on a free loopback port (inside a tokio runtime).
    pub async fn start() -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let known = Arc::new(Mutex::new(Known::default()));
        let reviews = Arc::new(AtomicU64::new(0));
        let (k, r) = (known.clone(), reviews.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (k, r) = (k.clone(), r.clone());
                tokio::spawn(async move {
                    let _ = connection(stream, k, r).await;
                });
            }
        });
        ApiServer {
            url,
            known,
            reviews,
            task,
        }
    }

    /// Accepts `token` as `account` from now on.
    pub fn accept(&self, token: &str, account: ServiceAccountToken) {
        self.known
            .lock()
            .unwrap()
            .tokens
            .insert(token.to_string(), account);
    }

    /// Answers every review with `status` (e.g. 403, as when RBAC lacks `tokenreviews:
    /// create`); `None` answers them again.
    pub fn fail_with(&self, status: Option<u16>) {
        self.known.lock().unwrap().failing = status;
    }

    /// Stops answering: new connections are refused and open ones closed at their next
    /// request.
    pub fn stop(&self) {
        self.known.lock().unwrap().stopped = true;
        self.task.abort();
    }

    /// Writes a kubeconfig that points a client (`KUBECONFIG` of `kura serve`) at this stub,
    /// with no credentials.
    pub fn write_kubeconfig(&self, path: &std::path::Path) {
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: stub, cluster: {{server: \"{}\"}}}}]\nusers: [{{name: kura, user: {{}}}}]\ncontexts: [{{name: stub, context: {{cluster: stub, user: kura}}}}]\ncurrent-context: stub\n",
                self.url
            ),
        )
        .unwrap();
    }

    /// Reviews answered so far.
    pub fn reviews(&self) -> u64 {
        self.reviews.load(Ordering::Relaxed)
    }

    /// The audiences each review asked for.
    pub fn asked_audiences(&self) -> Vec<Vec<String>> {
        self.known.lock().unwrap().asked.clone()
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    known: Arc<Mutex<Known>>,
    reviews: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    loop {
        let mut line = String::new();
        if read.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        if known.lock().unwrap().stopped {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or_default().to_string(),
            parts.next().unwrap_or_default().to_string(),
        );
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if read.read_line(&mut h).await? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((name, value)) = h.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        read.read_exact(&mut body).await?;
        let (status, answer) = if method == "POST"
            && path.starts_with("/apis/authentication.k8s.io/v1/tokenreviews")
        {
            reviews.fetch_add(1, Ordering::Relaxed);
            review(&known, &body)
        } else {
            (
                404,
                serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Failure", "message": format!("the server could not find the requested resource ({method} {path})"),
                    "reason": "NotFound", "code": 404}),
            )
        };
        let text = answer.to_string();
        let reason = match status {
            201 => "Created",
            403 => "Forbidden",
            404 => "Not Found",
            _ => "Error",
        };
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nCache-Control: no-cache, private\r\n\r\n",
            text.len()
        );
        write.write_all(head.as_bytes()).await?;
        write.write_all(text.as_bytes()).await?;
    }
}

/// kube-apiserver's answer to one `TokenReview`.
fn review(known: &Mutex<Known>, body: &[u8]) -> (u16, serde_json::Value) {
    let asked: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let token = asked["spec"]["token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let audiences: Vec<String> = asked["spec"]["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let mut k = known.lock().unwrap();
    k.asked.push(audiences.clone());
    if let Some(code) = k.failing {
        return (
            code,
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure",
                "message": "tokenreviews.authentication.k8s.io is forbidden: User \"system:serviceaccount:kura-system:kura\" cannot create resource \"tokenreviews\" in API group \"authentication.k8s.io\" at the cluster scope",
                "reason": "Forbidden", "details": {"group": "authentication.k8s.io", "kind": "tokenreviews"},
                "code": code}),
        );
    }
    // The spec comes back as it was sent, token included, as kube-apiserver does.
    let spec = asked["spec"].clone();
    let base = |status: serde_json::Value| {
        serde_json::json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null}, "spec": spec, "status": status})
    };
    let Some(account) = k.tokens.get(&token) else {
        return (
            201,
            base(serde_json::json!({"user": {},
                "error": "[invalid bearer token, service account token has been invalidated]"})),
        );
    };
    let wanted = if audiences.is_empty() {
        vec!["https://kubernetes.default.svc.cluster.local".to_string()]
    } else {
        audiences.clone()
    };
    let granted: Vec<&String> = wanted
        .iter()
        .filter(|a| account.audiences.contains(a))
        .collect();
    if granted.is_empty() {
        return (
            201,
            base(serde_json::json!({"user": {},
                "error": format!("[invalid bearer token, token audiences {:?} is invalid for the target audiences {:?}]", account.audiences, wanted)})),
        );
    }
    let ns = &account.namespace;
    (
        201,
        base(serde_json::json!({
            "authenticated": true,
            "user": {
                "username": format!("system:serviceaccount:{ns}:{}", account.service_account),
                "uid": "5b1e2c52-1f3e-4c0a-9d7b-2c1d0e9f8a71",
                "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"],
                "extra": {
                    "authentication.kubernetes.io/credential-id": ["JTI=0f9c3a5e-7d1b-4b8e-a2f4-6c3d9e1b7a20"],
                    "authentication.kubernetes.io/node-name": ["kind-worker"],
                    "authentication.kubernetes.io/node-uid": ["1c7e9a3d-5b2f-4e8a-9c6d-3f1b7e2a9d40"],
                    "authentication.kubernetes.io/pod-name": [account.pod],
                    "authentication.kubernetes.io/pod-uid": ["8e2d4f6a-9b1c-4d3e-a5f7-2b9c1e4d6f80"]
                }
            },
            "audiences": granted,
        })),
    )
}
