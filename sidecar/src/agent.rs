//! The agent's modes: `init` (fetch once), `run` (fetch, then follow rotation) and `ready`.
//!
//! A refresh fetches every declared secret (batched), renders the files and hands the whole set
//! to the [`AtomicWriter`]. A secret that fails keeps its last good files; nothing is ever
//! removed or truncated because a fetch failed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tracing::{debug, error, info, warn};

use crate::metrics::{ErrorKind, Metrics};
use crate::reload;
use crate::render::{RenderError, render};
use crate::spec::{AgentMode, Spec};
use crate::store::{FetchRequest, Fetched, Store, StoreError};
use crate::writer::{AtomicWriter, FilePayload, WriteError};

/// Errors of the agent. Each names secrets and files, never values.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    #[error("{}", join(.0))]
    Store(Vec<StoreError>),
    #[error("{}", join(.0))]
    Render(Vec<RenderError>),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("{0}")]
    Usage(String),
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a mode needs.
#[derive(Debug)]
pub struct Agent {
    pub spec: Spec,
    pub store: Store,
    pub writer: AtomicWriter,
    /// The downward-API file with the pod's annotations, for `kura.dev/refresh-now`.
    pub annotations_file: Option<PathBuf>,
    /// What the refreshes did, for `--metrics-listen`.
    pub metrics: Arc<Metrics>,
}

/// The outcome of one refresh.
#[derive(Debug, Default)]
pub struct Refresh {
    /// Whether the set on disk changed.
    pub changed: bool,
    /// Secrets that failed; their files kept their last good content.
    pub errors: Vec<String>,
}

/// In-memory state between refreshes.
#[derive(Debug, Default)]
pub struct State {
    files: BTreeMap<String, FilePayload>,
    versions: BTreeMap<FetchRequest, String>,
}

impl Agent {
    fn requests(&self) -> Vec<FetchRequest> {
        let mut reqs: Vec<FetchRequest> =
            self.spec.files.iter().map(FetchRequest::for_file).collect();
        reqs.sort();
        reqs.dedup();
        reqs
    }

    /// Fetches and writes. On the first refresh (empty state) any failure is an error and
    /// nothing is written; later, failed secrets keep their last good files.
    pub async fn refresh(&self, state: &mut State) -> Result<Refresh> {
        let calls_before = self.store.api_calls();
        let result = self.refresh_inner(state).await;
        let aws_calls = self.store.api_calls().saturating_sub(calls_before);
        let m = &self.metrics;
        m.refreshed(aws_calls);
        match &result {
            Ok(r) => {
                if r.changed {
                    m.changed();
                }
                if r.errors.is_empty() {
                    m.succeeded();
                }
            }
            Err(Error::Write(_)) => m.error(ErrorKind::Write),
            Err(_) => {}
        }
        debug!(aws_calls, ok = result.is_ok(), "refresh done");
        result
    }

    async fn refresh_inner(&self, state: &mut State) -> Result<Refresh> {
        let requests = self.requests();
        let results = self.store.fetch(&requests).await;
        let mut fetched: BTreeMap<&FetchRequest, Fetched> = BTreeMap::new();
        let mut store_errors = Vec::new();
        for (req, res) in requests.iter().zip(results) {
            match res {
                Ok(f) => {
                    if let Some(old) = state.versions.get(req)
                        && old != &f.version_id
                    {
                        info!(secret = %req.secret, from = %old, to = %f.version_id, "secret changed version");
                    }
                    fetched.insert(req, f);
                }
                Err(e) => {
                    self.metrics.error(e.kind());
                    store_errors.push(e);
                }
            }
        }

        let mut files = BTreeMap::new();
        let mut render_errors = Vec::new();
        for f in &self.spec.files {
            let req = FetchRequest::for_file(f);
            let rendered = match fetched.get(&req) {
                Some(v) => render(f, &v.value)
                    .map_err(|e| {
                        self.metrics.error(ErrorKind::Render);
                        render_errors.push(e);
                    })
                    .ok(),
                None => None,
            };
            // A file without a value now keeps its last good content; with neither, the set is
            // incomplete and nothing is written.
            let payload = rendered.map(|content| FilePayload {
                content,
                mode: f.mode.0,
            });
            if let Some(p) = payload.or_else(|| state.files.get(&f.file).cloned()) {
                files.insert(f.file.clone(), p);
            }
        }

        if files.len() < self.spec.files.len() {
            if !store_errors.is_empty() {
                return Err(Error::Store(store_errors));
            }
            return Err(Error::Render(render_errors));
        }

        let changed = self.writer.write(&files)?;
        for (req, f) in &fetched {
            state.versions.insert((*req).clone(), f.version_id.clone());
        }
        state.files = files;
        let errors = store_errors
            .iter()
            .map(ToString::to_string)
            .chain(render_errors.iter().map(ToString::to_string))
            .collect();
        Ok(Refresh { changed, errors })
    }

    /// `kura-agent init`: fetch everything once.
    pub async fn init(&self) -> Result<State> {
        let mut state = State::default();
        let r = self.refresh(&mut state).await?;
        info!(files = self.spec.files.len(), dir = %self.writer.dir().display(), changed = r.changed, "secrets written");
        Ok(state)
    }

    /// `kura-agent run`: init (unless a complete set is already there from the init container),
    /// then refresh every interval until SIGTERM (or SIGINT), which ends it at once, even in the
    /// middle of a store call or a reload hook: writes are synchronous, so a swap is never cut
    /// short, and the files stay in place.
    pub async fn run(&self) -> Result<()> {
        let watch = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| Error::Usage(format!("cannot watch {name}: {e}")))
        };
        let mut term = watch(SignalKind::terminate(), "SIGTERM")?;
        let mut int = watch(SignalKind::interrupt(), "SIGINT")?;
        tokio::select! {
            r = self.follow() => r,
            _ = term.recv() => {
                info!("SIGTERM: exiting, files stay in place");
                Ok(())
            }
            _ = int.recv() => {
                info!("SIGINT: exiting, files stay in place");
                Ok(())
            }
        }
    }

    async fn follow(&self) -> Result<()> {
        let mut state = match self.init().await {
            Ok(s) => s,
            // The init container wrote a set; the sidecar keeps it and retries with backoff.
            Err(e) if self.writer.is_ready() => {
                warn!(error = %e, "first refresh failed; keeping the files already written");
                State::default()
            }
            Err(e) => return Err(e),
        };
        if self.spec.agent == AgentMode::InitOnly {
            return Ok(());
        }
        let interval = Duration::from_secs(self.spec.refresh_interval.max(1));
        let mut failures: u32 = u32::from(state.files.is_empty());
        let mut refresh_now = self.annotations_file.as_deref().and_then(read_refresh_now);
        loop {
            let wait = if failures == 0 {
                jitter(interval)
            } else {
                backoff(failures, interval)
            };
            let deadline = tokio::time::Instant::now() + wait;
            // Poll the downward-API file until the deadline; a changed refresh-now cuts the wait.
            loop {
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    break;
                }
                let step = (deadline - now).min(Duration::from_secs(1));
                tokio::time::sleep(step).await;
                if let Some(path) = &self.annotations_file {
                    let seen = read_refresh_now(path);
                    if seen.is_some() && seen != refresh_now {
                        info!("kura.dev/refresh-now changed: refreshing now");
                        refresh_now = seen;
                        break;
                    }
                }
            }
            match self.refresh(&mut state).await {
                Ok(r) => {
                    if r.errors.is_empty() {
                        failures = 0;
                    } else {
                        failures = failures.saturating_add(1);
                        for e in &r.errors {
                            warn!(error = %e, "refresh incomplete; last good files kept");
                        }
                    }
                    if r.changed {
                        info!("secrets changed: new set written");
                        if let Some(hook) = &self.spec.reload {
                            if reload::run(hook).await {
                                self.metrics.reloaded();
                            } else {
                                self.metrics.error(ErrorKind::Reload);
                            }
                        }
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    error!(error = %e, failures, "refresh failed; last good files kept");
                }
            }
        }
    }
}

/// `kura-agent ready`: whether a complete set has been written.
pub fn ready(dir: &Path) -> bool {
    AtomicWriter::new(dir).is_ready()
}

fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.9 + fastrand::f64() * 0.2)
}

/// 1 s, 2 s, 4 s … capped at the refresh interval (and at 5 minutes), with jitter.
fn backoff(failures: u32, interval: Duration) -> Duration {
    let cap = interval
        .min(Duration::from_secs(300))
        .max(Duration::from_secs(1));
    let exp = Duration::from_secs(1u64 << failures.saturating_sub(1).min(16));
    jitter(exp.min(cap))
}

/// The value of `kura.dev/refresh-now` in a downward-API annotations file.
fn read_refresh_now(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    // The downward API writes one `key="value"` a line.
    text.lines().find_map(|l| {
        l.strip_prefix(crate::annotations::REFRESH_NOW)?
            .strip_prefix('=')
            .map(str::to_string)
    })
}

/// Writes a one-line reason where Kubernetes shows it as the container's termination message.
pub fn write_termination_log(path: &Path, message: &str) {
    let mut line: String = message.replace('\n', " ");
    line.truncate(4000);
    if let Err(e) = std::fs::write(path, line) {
        warn!(path = %path.display(), error = %e, "could not write the termination log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_caps() {
        let i = Duration::from_secs(60);
        assert!(backoff(1, i) <= Duration::from_millis(1100));
        assert!(backoff(3, i) >= Duration::from_millis(3600));
        assert!(backoff(30, i) <= Duration::from_secs(66));
        assert!(backoff(30, i) >= Duration::from_secs(54));
    }

    #[test]
    fn refresh_now_is_read_from_downward_api_format() {
        let tmp = tempfile::NamedTempFile::new().expect("tmp");
        std::fs::write(
            tmp.path(),
            "kura.dev/inject=\"true\"\nkura.dev/refresh-now=\"1700000000\"\n",
        )
        .expect("write");
        assert_eq!(
            read_refresh_now(tmp.path()).as_deref(),
            Some("\"1700000000\"")
        );
        assert_eq!(read_refresh_now(Path::new("/nonexistent")), None);
    }
}
