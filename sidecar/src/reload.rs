//! Reload hooks run after the set of files changed: a POST to a loopback URL or a signal to a
//! process in the pod's shared process namespace. Bounded retries; a failed hook is logged and
//! never affects the files.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use crate::spec::{Reload, Signal};

/// Why one attempt of a hook failed, for the log line. A message rather than an enum: [`run`]
/// logs and retries every failure alike, so no caller acts on the cause.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct HookFailed(String);

impl From<&str> for HookFailed {
    fn from(m: &str) -> Self {
        HookFailed(m.to_string())
    }
}

const ATTEMPTS: u32 = 3;
const TIMEOUT: Duration = Duration::from_secs(2);

/// Runs the hook, retrying a few times.
pub async fn run(hook: &Reload) -> bool {
    for attempt in 1..=ATTEMPTS {
        let result = match hook {
            Reload::Http { url } => post(url).await,
            Reload::Signal { signal, process } => signal_process(*signal, process),
        };
        match result {
            Ok(what) => {
                info!(hook = %hook, %what, "reload hook ran");
                return true;
            }
            Err(e) => {
                warn!(hook = %hook, attempt, error = %e, "reload hook failed");
                if attempt < ATTEMPTS {
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                }
            }
        }
    }
    false
}

/// A minimal HTTP/1.1 POST: the target is always the pod's own loopback, plain HTTP.
async fn post(url: &str) -> Result<String, HookFailed> {
    let rest = url.strip_prefix("http://").ok_or("not an http:// URL")?;
    let (host_port, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let connect_to = host_port.replace("localhost", "127.0.0.1");
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(&connect_to)
            .await
            .map_err(|e| HookFailed(e.to_string()))?;
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {host_port}\r\nUser-Agent: kura-agent\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| HookFailed(e.to_string()))?;
        let mut buf = vec![0u8; 256];
        let n = s
            .read(&mut buf)
            .await
            .map_err(|e| HookFailed(e.to_string()))?;
        let head = String::from_utf8_lossy(&buf[..n]);
        let status = head.split_whitespace().nth(1).unwrap_or("").to_string();
        if status.starts_with('2') {
            Ok(format!("HTTP {status}"))
        } else {
            Err(HookFailed(format!("HTTP status {status:?}")))
        }
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| HookFailed::from("timed out"))?
}

fn signal_process(signal: Signal, process: &str) -> Result<String, HookFailed> {
    let sig = nix::sys::signal::Signal::try_from(signal.number())
        .map_err(|e| HookFailed(e.to_string()))?;
    let me = std::process::id();
    let mut sent = 0;
    let entries = std::fs::read_dir("/proc")
        .map_err(|e| HookFailed(format!("cannot list processes: {e}")))?;
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid as u32 == me {
            continue;
        }
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == process {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
                .map_err(|e| HookFailed(format!("kill {pid}: {e}")))?;
            sent += 1;
        }
    }
    if sent == 0 {
        return Err(HookFailed(format!(
            "no process named {process:?} (is shareProcessNamespace: true set on the pod?)"
        )));
    }
    Ok(format!("{} sent to {sent} process(es)", signal.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn http_hook_posts_to_loopback() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 1024];
            let n = s.read(&mut buf).await.expect("read");
            s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .expect("write");
            String::from_utf8_lossy(&buf[..n]).to_string()
        });
        let hook = Reload::parse(&format!("http://127.0.0.1:{port}/-/reload")).expect("valid");
        assert!(run(&hook).await);
        let req = server.await.expect("server");
        assert!(req.starts_with("POST /-/reload HTTP/1.1\r\n"), "{req}");
    }

    #[tokio::test]
    async fn signal_hook_reaches_the_named_process() {
        // A uniquely named copy of sleep, so no other process on the machine is signalled.
        let dir = tempfile::tempdir().expect("tempdir");
        let name = format!("kt{}", fastrand::u32(..));
        let bin = dir.path().join(&name);
        std::fs::copy("/bin/sleep", &bin).expect("copy sleep");
        let mut child = std::process::Command::new(&bin)
            .arg("30")
            .spawn()
            .expect("sleep");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let hook = Reload::parse(&format!("signal:SIGTERM:{name}")).expect("valid");
        assert!(run(&hook).await);
        let status = child.wait().expect("wait");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(15));
    }
}
