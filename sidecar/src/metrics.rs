//! Optional Prometheus metrics, served on a loopback listener (`--metrics-listen`).
//!
//! The agent runs in every opted-in pod, so this is a few atomics and a hand-written text
//! exposition over a plain tokio listener rather than an HTTP framework. It binds loopback only:
//! the numbers are the pod's business (a scraping sidecar, `kubectl port-forward`), and nothing
//! outside the pod should be able to probe the agent.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

/// Declares [`ErrorKind`] from one list: the variants, their labels and [`ErrorKind::ALL`] cannot
/// disagree.
macro_rules! error_kinds {
    ($($(#[$doc:meta])* $variant:ident => $label:literal,)+) => {
        /// What failed: the `kind` label of `kura_agent_errors_total`. The store's answers map
        /// here through [`crate::store::StoreError::kind`]; render, write and reload failures are
        /// the agent's own.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorKind {
            $($(#[$doc])* $variant,)+
        }

        impl ErrorKind {
            /// Every kind, in declaration order (also the order of the exposition), so each label
            /// is exported from the start and `rate()` works before the first error.
            pub const ALL: &[ErrorKind] = &[$(ErrorKind::$variant,)+];

            /// The metric label.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorKind::$variant => $label,)+
                }
            }
        }
    };
}

error_kinds! {
    /// The secret does not exist (or the identity may not see it).
    NotFound => "not_found",
    /// The secret is scheduled for deletion.
    Deleted => "deleted",
    /// The identity may not read the secret.
    AccessDenied => "access_denied",
    /// KMS could not decrypt the value.
    Decryption => "decryption",
    /// The store throttled the call.
    Throttled => "throttled",
    /// The store could not be reached or did not answer in time.
    Unavailable => "unavailable",
    /// The pinned version or stage does not exist.
    VersionNotFound => "version_not_found",
    /// Any other store answer.
    Other => "other",
    /// The store is misconfigured.
    Config => "config",
    /// A value could not be rendered into its file, template or environment variable.
    Render => "render",
    /// The set of files could not be written.
    Write => "write",
    /// A reload hook failed.
    Reload => "reload",
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counters the agent updates as it works.
#[derive(Debug, Default)]
pub struct Metrics {
    refreshes: AtomicU64,
    changes: AtomicU64,
    reloads: AtomicU64,
    /// Indexed by `ErrorKind as usize`, the position in [`ErrorKind::ALL`].
    errors: [AtomicU64; ErrorKind::ALL.len()],
    last_refresh_aws_calls: AtomicU64,
    last_success: AtomicU64,
    /// Version service checks answered (only what changed was fetched).
    version_checks_ok: AtomicU64,
    /// Version service checks that failed (AWS was polled directly for that interval).
    version_checks_fallback: AtomicU64,
}

impl Metrics {
    /// One refresh attempted, with the AWS calls it made.
    pub fn refreshed(&self, aws_calls: u64) {
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        self.last_refresh_aws_calls
            .store(aws_calls, Ordering::Relaxed);
    }

    /// A new set of files was written.
    pub fn changed(&self) {
        self.changes.fetch_add(1, Ordering::Relaxed);
    }

    /// A reload hook ran successfully.
    pub fn reloaded(&self) {
        self.reloads.fetch_add(1, Ordering::Relaxed);
    }

    /// One error of `kind`.
    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Every declared secret was fetched and the set is on disk, now.
    pub fn succeeded(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.last_success.store(now, Ordering::Relaxed);
    }

    /// One version service check: answered (`true`) or failed, so AWS was polled directly.
    pub fn version_check(&self, answered: bool) {
        let counter = if answered {
            &self.version_checks_ok
        } else {
            &self.version_checks_fallback
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Unix time of the last refresh that had no error, if any.
    pub fn last_success(&self) -> Option<u64> {
        Some(self.last_success.load(Ordering::Relaxed)).filter(|&t| t > 0)
    }

    /// The errors of one kind counted so far.
    pub fn errors(&self, kind: ErrorKind) -> u64 {
        self.errors[kind as usize].load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self, aws_calls: u64) -> String {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        metric(
            "kura_agent_refreshes_total",
            "counter",
            "Refreshes attempted, the first fetch included.",
            &[(String::new(), load(&self.refreshes))],
        );
        metric(
            "kura_agent_changes_total",
            "counter",
            "Times a new set of files was written (the first write included).",
            &[(String::new(), load(&self.changes))],
        );
        let errors: Vec<(String, u64)> = ErrorKind::ALL
            .iter()
            .map(|&k| (format!("{{kind=\"{k}\"}}"), load(&self.errors[k as usize])))
            .collect();
        metric(
            "kura_agent_errors_total",
            "counter",
            "Failures by kind: store answers per secret, render errors per file, template or variable, failed writes and reload hooks.",
            &errors,
        );
        metric(
            "kura_agent_aws_calls_total",
            "counter",
            "AWS API calls made (Secrets Manager and SSM Parameter Store).",
            &[(String::new(), aws_calls)],
        );
        metric(
            "kura_agent_last_refresh_aws_calls",
            "gauge",
            "AWS API calls made by the last refresh (Secrets Manager and SSM Parameter Store).",
            &[(String::new(), load(&self.last_refresh_aws_calls))],
        );
        metric(
            "kura_agent_reloads_total",
            "counter",
            "Reload hooks that ran successfully.",
            &[(String::new(), load(&self.reloads))],
        );
        metric(
            "kura_agent_last_success_timestamp_seconds",
            "gauge",
            "Unix time of the last refresh that fetched every secret and wrote the set (0: never).",
            &[(String::new(), load(&self.last_success))],
        );
        metric(
            "kura_agent_version_checks_total",
            "counter",
            "Version service checks by outcome: ok (answered; only what changed was fetched from AWS) or fallback (failed; AWS was polled directly for that interval).",
            &[
                ("{outcome=\"ok\"}".into(), load(&self.version_checks_ok)),
                (
                    "{outcome=\"fallback\"}".into(),
                    load(&self.version_checks_fallback),
                ),
            ],
        );
        out
    }
}

/// A refused `--metrics-listen`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenError {
    #[error("{0:?} is not an address such as 127.0.0.1:9102 (an IP literal and a port)")]
    NotAnAddress(String),
    #[error(
        "{0} is not a loopback address: the agent serves metrics on 127.0.0.1 or [::1] only, \
         so nothing outside the pod can reach it"
    )]
    NotLoopback(SocketAddr),
}

/// Parses `--metrics-listen`: a socket address on a loopback interface, nothing else.
pub fn parse_listen(s: &str) -> Result<SocketAddr, ListenError> {
    let addr: SocketAddr = s
        .parse()
        .map_err(|_| ListenError::NotAnAddress(s.to_string()))?;
    if !addr.ip().is_loopback() {
        return Err(ListenError::NotLoopback(addr));
    }
    Ok(addr)
}

/// Binds the metrics listener (checked to be loopback again, for callers that skip the CLI).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{addr} is not a loopback address"),
        ));
    }
    TcpListener::bind(addr).await
}

/// Serves `GET /metrics` until the runtime stops. Other paths get 404. `api_calls` reads the
/// store's call counter at each scrape.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    api_calls: impl Fn() -> u64 + Send + 'static,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let body = metrics.render(api_calls());
                tokio::spawn(answer(stream, body));
            }
            Err(e) => {
                // Out of file descriptors and the like: do not spin.
                warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream, body: String) {
    let exchange = async {
        let mut head = Vec::with_capacity(512);
        let mut buf = [0u8; 512];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 || head.len() > 8192 {
                return Ok(());
            }
            head.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&head);
        let mut parts = line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let path = target.split('?').next().unwrap_or("");
        let (status, content_type, body) = match (method, path) {
            ("GET" | "HEAD", "/metrics") => {
                ("200 OK", "text/plain; version=0.0.4; charset=utf-8", body)
            }
            _ => (
                "404 Not Found",
                "text/plain; charset=utf-8",
                "only GET /metrics is served here\n".to_string(),
            ),
        };
        let mut response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        if method != "HEAD" {
            response.push_str(&body);
        }
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(Duration::from_secs(5), exchange).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(error = %e, "metrics request failed"),
        Err(_) => debug!("metrics request timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_are_accepted() {
        assert!(parse_listen("127.0.0.1:9102").is_ok());
        assert!(parse_listen("[::1]:9102").is_ok());
        let e = parse_listen("0.0.0.0:9102").expect_err("any address");
        assert!(matches!(e, ListenError::NotLoopback(_)), "{e}");
        assert_eq!(
            e.to_string(),
            "0.0.0.0:9102 is not a loopback address: the agent serves metrics on 127.0.0.1 or \
             [::1] only, so nothing outside the pod can reach it"
        );
        assert_eq!(
            parse_listen("9102"),
            Err(ListenError::NotAnAddress("9102".into()))
        );
        assert_eq!(
            ListenError::NotAnAddress("9102".into()).to_string(),
            "\"9102\" is not an address such as 127.0.0.1:9102 (an IP literal and a port)"
        );
        assert!(parse_listen("10.0.0.1:9102").is_err());
        assert!(parse_listen("[::]:9102").is_err());
        assert!(parse_listen("localhost:9102").is_err());
        assert!(parse_listen("9102").is_err());
    }

    #[test]
    fn error_kinds_index_their_counters() {
        for (i, k) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i, "{k}");
        }
        // The labels are a published interface (dashboards, alerts): renaming one is a break.
        let labels: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            labels,
            [
                "not_found",
                "deleted",
                "access_denied",
                "decryption",
                "throttled",
                "unavailable",
                "version_not_found",
                "other",
                "config",
                "render",
                "write",
                "reload",
            ]
        );
        let m = Metrics::default();
        m.error(ErrorKind::Reload);
        m.error(ErrorKind::Reload);
        assert_eq!(m.errors(ErrorKind::Reload), 2);
        assert_eq!(m.errors(ErrorKind::Write), 0);
    }

    #[test]
    fn exposition_has_every_family() {
        let m = Metrics::default();
        m.refreshed(3);
        m.changed();
        m.error(ErrorKind::Unavailable);
        m.error(ErrorKind::Other);
        m.succeeded();
        m.version_check(true);
        m.version_check(true);
        m.version_check(false);
        let text = m.render(7);
        for line in [
            "kura_agent_refreshes_total 1",
            "kura_agent_changes_total 1",
            "kura_agent_errors_total{kind=\"unavailable\"} 1",
            "kura_agent_errors_total{kind=\"other\"} 1",
            "kura_agent_errors_total{kind=\"write\"} 0",
            "kura_agent_aws_calls_total 7",
            "kura_agent_last_refresh_aws_calls 3",
            "# TYPE kura_agent_last_success_timestamp_seconds gauge",
            "kura_agent_version_checks_total{outcome=\"ok\"} 2",
            "kura_agent_version_checks_total{outcome=\"fallback\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        let ts: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("kura_agent_last_success_timestamp_seconds "))
            .expect("sample")
            .parse()
            .expect("number");
        assert!(ts > 1_700_000_000);
    }

    #[tokio::test]
    async fn serves_metrics_and_404s_the_rest() {
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let metrics = Arc::new(Metrics::default());
        metrics.refreshed(1);
        tokio::spawn(serve(listener, metrics, || 7));
        let get = |path: &'static str| async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            out
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("\r\n\r\n# HELP kura_agent_refreshes_total"),
            "{ok}"
        );
        assert!(ok.contains("\nkura_agent_refreshes_total 1\n"), "{ok}");
        assert!(
            ok.contains("\nkura_agent_aws_calls_total 7\n"),
            "the store's counter is read at the scrape: {ok}"
        );
        let missing = get("/").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        assert!(bind("0.0.0.0:0".parse().expect("addr")).await.is_err());
    }
}
