//! The agent's modes: `init` (fetch once), `run` (fetch, then follow rotation) and `ready`.
//!
//! A refresh fetches every reference the spec makes — files, environment variables, `envFrom`
//! entries, template inputs — in one batched pass (a reference used in several places is
//! fetched once), renders each item and hands the whole set, the environment values file
//! included, to the [`AtomicWriter`]. An item whose reference fails (or whose rendering fails)
//! keeps its last good content; nothing is ever removed or truncated because a fetch failed.
//! The first refresh must be complete.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{debug, error, info, warn};

use crate::contract::ENV_VALUES_FILE;
use crate::metrics::{ErrorKind, Metrics};
use crate::reload;
use crate::render::{
    EnvValues, Item, RenderError, env_file, env_from, env_value, render, render_template,
    template_input,
};
use crate::spec::{AgentMode, Reference, Spec};
use crate::store::{FetchRequest, Fetched, Store, StoreError};
use crate::writer::{AtomicWriter, FilePayload, WriteError};

/// Mode of the environment values file: read by its owner (the agent's uid, which is the app's).
pub const ENV_VALUES_MODE: u32 = 0o400;

/// Errors of the agent. Each names secrets, files and variables, never values.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    #[error("{}", join(.0))]
    Store(Vec<StoreError>),
    /// The first refresh could not produce every item: the store and rendering failures.
    #[error("{}", join_both(.store, .render))]
    Incomplete {
        store: Vec<StoreError>,
        render: Vec<RenderError>,
    },
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

fn join_both(store: &[StoreError], render: &[RenderError]) -> String {
    match (store.is_empty(), render.is_empty()) {
        (false, false) => format!("{}; {}", join(store), join(render)),
        (false, true) => join(store),
        _ => join(render),
    }
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
    /// Failures (store answers per secret, renderings per item); the items concerned kept their
    /// last good content.
    pub errors: Vec<String>,
    /// Files (plain and rendered) whose content or mode changed, by name.
    pub changed_files: Vec<String>,
    /// Environment variables that were added, removed or got a new value, by name.
    pub changed_variables: Vec<String>,
}

/// In-memory state between refreshes: the last good content of every item.
#[derive(Debug, Default)]
pub struct State {
    /// Plain and rendered files, by name.
    files: BTreeMap<String, FilePayload>,
    /// `env` entries, by variable name.
    env: BTreeMap<String, SecretString>,
    /// `envFrom` entries, by position in the spec.
    env_from: BTreeMap<usize, EnvValues>,
    /// The variables as last written (precedence applied).
    env_values: EnvValues,
    versions: BTreeMap<FetchRequest, String>,
    /// This process wrote (or found unchanged) a complete set.
    complete: bool,
}

/// What one reference reads. `versionStage: AWSCURRENT` on a secret is what an unpinned read
/// returns, so both spellings are one request.
fn request(
    secret: &str,
    version_id: Option<&String>,
    version_stage: Option<&String>,
) -> FetchRequest {
    let current = |s: &&String| {
        s.as_str() == "AWSCURRENT" && version_id.is_none() && !Reference::of(secret).is_parameter()
    };
    FetchRequest {
        secret: secret.to_string(),
        version_id: version_id.cloned(),
        version_stage: version_stage.filter(|s| !current(s)).cloned(),
    }
}

/// Puts an item's new value, else its last good one, into `into`; counts the item as missing
/// when it has neither.
fn settle<K: Ord + Clone, V: Clone>(
    into: &mut BTreeMap<K, V>,
    key: &K,
    fresh: Option<V>,
    last: &BTreeMap<K, V>,
    missing: &mut usize,
) {
    match fresh.or_else(|| last.get(key).cloned()) {
        Some(v) => {
            into.insert(key.clone(), v);
        }
        None => *missing += 1,
    }
}

/// Records a rendering failure (counted, kept for the report) and drops the value.
fn keep_err<T>(r: Result<T, RenderError>, errors: &mut Vec<RenderError>, m: &Metrics) -> Option<T> {
    r.map_err(|e| {
        m.error(ErrorKind::Render);
        errors.push(e);
    })
    .ok()
}

/// Names whose value differs between `a` and `b` (added, removed or changed), sorted.
fn changed_names(a: &EnvValues, b: &EnvValues) -> Vec<String> {
    let mut changed: Vec<String> = a
        .iter()
        .filter(|(k, v)| {
            b.get(*k)
                .is_none_or(|w| w.expose_secret() != v.expose_secret())
        })
        .map(|(k, _)| k.clone())
        .chain(b.keys().filter(|k| !a.contains_key(*k)).cloned())
        .collect();
    changed.sort();
    changed
}

impl Agent {
    /// Every distinct request the spec makes: files, variables, envFrom, template inputs.
    fn requests(&self) -> Vec<FetchRequest> {
        let spec = &self.spec;
        let mut reqs: Vec<FetchRequest> = spec
            .files
            .iter()
            .map(|f| request(&f.secret, f.version_id.as_ref(), f.version_stage.as_ref()))
            .chain(
                spec.env
                    .iter()
                    .map(|v| request(&v.secret, v.version_id.as_ref(), v.version_stage.as_ref())),
            )
            .chain(
                spec.env_from
                    .iter()
                    .map(|e| request(&e.secret, e.version_id.as_ref(), e.version_stage.as_ref())),
            )
            .chain(
                spec.templates
                    .iter()
                    .flat_map(|t| t.inputs.values())
                    .map(|i| FetchRequest::current(&i.secret)),
            )
            .collect();
        reqs.sort();
        reqs.dedup();
        reqs
    }

    /// Fetches and writes. On the first refresh (empty state) any failure is an error and
    /// nothing is written; later, failed items keep their last good content.
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
        let value = |r: FetchRequest| fetched.get(&r).map(|f| &f.value);

        let spec = &self.spec;
        let m = &self.metrics;
        let mut render_errors = Vec::new();
        // Items with neither a new value nor a last good one: the set would be incomplete.
        let mut missing = 0usize;

        let mut files = BTreeMap::new();
        for f in &spec.files {
            let fresh = value(request(
                &f.secret,
                f.version_id.as_ref(),
                f.version_stage.as_ref(),
            ))
            .and_then(|v| keep_err(render(f, v), &mut render_errors, m))
            .map(|content| FilePayload {
                content,
                mode: f.mode.0,
            });
            settle(&mut files, &f.file, fresh, &state.files, &mut missing);
        }
        for t in &spec.templates {
            let fresh = self
                .template_inputs(t, &value, &mut render_errors)
                .and_then(|inputs| keep_err(render_template(t, &inputs), &mut render_errors, m))
                .map(|content| FilePayload {
                    content,
                    mode: t.mode.0,
                });
            settle(&mut files, &t.file, fresh, &state.files, &mut missing);
        }

        let mut env = BTreeMap::new();
        for v in &spec.env {
            let fresh = value(request(
                &v.secret,
                v.version_id.as_ref(),
                v.version_stage.as_ref(),
            ))
            .and_then(|val| keep_err(env_value(v, val), &mut render_errors, m));
            settle(&mut env, &v.name, fresh, &state.env, &mut missing);
        }
        let mut from = BTreeMap::new();
        for (i, e) in spec.env_from.iter().enumerate() {
            let fresh = value(request(
                &e.secret,
                e.version_id.as_ref(),
                e.version_stage.as_ref(),
            ))
            .and_then(|val| keep_err(env_from(e, val), &mut render_errors, m));
            settle(&mut from, &i, fresh, &state.env_from, &mut missing);
        }

        if missing > 0 {
            return Err(Error::Incomplete {
                store: store_errors,
                render: render_errors,
            });
        }

        let env_values = self.compose_env(&env, &from);
        if spec.has_env() {
            files.insert(
                ENV_VALUES_FILE.to_string(),
                FilePayload {
                    content: env_file(&env_values),
                    mode: ENV_VALUES_MODE,
                },
            );
        }
        let changed = self.writer.write(&files)?;
        // The values file is reported as variables, below.
        files.remove(ENV_VALUES_FILE);

        let changed_files = files
            .iter()
            .filter(|(name, p)| state.files.get(*name) != Some(*p))
            .map(|(name, _)| name.clone())
            .collect();
        let changed_variables = if state.complete {
            changed_names(&env_values, &state.env_values)
        } else {
            env_values.keys().cloned().collect()
        };
        for (req, f) in &fetched {
            state.versions.insert((*req).clone(), f.version_id.clone());
        }
        state.files = files;
        state.env = env;
        state.env_from = from;
        state.env_values = env_values;
        state.complete = true;
        let errors = store_errors
            .iter()
            .map(ToString::to_string)
            .chain(render_errors.iter().map(ToString::to_string))
            .collect();
        Ok(Refresh {
            changed,
            errors,
            changed_files,
            changed_variables,
        })
    }

    /// A template's inputs, or `None` when one is missing (its fetch failed and is reported
    /// already) or unusable (recorded in `errors`).
    fn template_inputs<'v>(
        &self,
        t: &crate::spec::TemplateFile,
        value: &impl Fn(FetchRequest) -> Option<&'v crate::store::SecretValue>,
        errors: &mut Vec<RenderError>,
    ) -> Option<BTreeMap<String, crate::template::InputValue>> {
        let mut inputs = BTreeMap::new();
        for (name, input) in &t.inputs {
            let v = value(FetchRequest::current(&input.secret))?;
            let input = template_input(name, input, v).map_err(|message| RenderError {
                item: Item::Template {
                    file: t.file.clone(),
                },
                message,
            });
            inputs.insert(name.clone(), keep_err(input, errors, &self.metrics)?);
        }
        Some(inputs)
    }

    /// The variables `kura-agent exec` sets, with Kubernetes' precedence: `envFrom` entries in
    /// order (a later one wins a clash), then `env` entries, which beat any `envFrom` key.
    fn compose_env(
        &self,
        env: &BTreeMap<String, SecretString>,
        from: &BTreeMap<usize, EnvValues>,
    ) -> EnvValues {
        let mut out = EnvValues::new();
        for (i, vars) in from {
            for (k, v) in vars {
                if out.insert(k.clone(), v.clone()).is_some() {
                    debug!(variable = %k, secret = %self.spec.env_from[*i].secret, "envFrom key overrides an earlier envFrom's");
                }
            }
        }
        for (k, v) in env {
            if out.insert(k.clone(), v.clone()).is_some() {
                debug!(variable = %k, "env entry overrides an envFrom key");
            }
        }
        out
    }

    /// `kura-agent init`: fetch everything once.
    pub async fn init(&self) -> Result<State> {
        let mut state = State::default();
        let r = self.refresh(&mut state).await?;
        info!(
            files = self.spec.files.len(),
            templates = self.spec.templates.len(),
            variables = state.env_values.len(),
            dir = %self.writer.dir().display(),
            changed = r.changed,
            "secrets written"
        );
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
        let mut failures: u32 = u32::from(!state.complete);
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
                        info!(files = ?r.changed_files, variables = ?r.changed_variables, "secrets changed: new set written");
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
