//! The agent's modes: `init` (fetch once), `run` (fetch, then follow rotation) and `ready`.
//!
//! A refresh fetches every reference the spec makes — files, environment variables, `envFrom`
//! entries, template inputs — in one batched pass (a reference used in several places is
//! fetched once), renders each item and hands the whole set, the environment values file
//! included, to the [`AtomicWriter`]. An item whose reference fails (or whose rendering fails)
//! keeps its last good content; nothing is ever removed or truncated because a fetch failed.
//! The first refresh must be complete; while the store throttles or cannot be reached, it is
//! tried again with exponential backoff and full jitter until `--init-deadline`, so that a
//! rollout of many pods spreads its first fetches instead of failing them all into the kubelet's
//! crash-loop backoff.
//!
//! With the version service configured (contract §8), each interval of `run` first asks it which
//! version each reference currently resolves to, and fetches from the store only what differs
//! from the version held (and what it does not know, and what was never fetched); every item is
//! still rendered from complete inputs, the values not fetched being the last ones fetched
//! ([`State`] keeps them, wrapped). When the service fails in any way the interval polls the
//! store directly, exactly as without it, and the next interval asks the service again: it only
//! decides *when* to fetch, never *what* the files hold.

use std::collections::{BTreeMap, BTreeSet};
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
use crate::store::{FetchRequest, Fetched, SecretValue, Store, StoreError};
use crate::version_client::VersionClient;
use crate::versions::{AgentState, VersionRef, VersionsRequest};
use crate::writer::{AtomicWriter, FilePayload, WriteError};

/// Mode of the environment values file: read by its owner (the agent's uid, which is the app's).
pub const ENV_VALUES_MODE: u32 = 0o400;

/// How long the first fetch keeps trying while the store throttles or cannot be reached
/// (`--init-deadline`).
pub const DEFAULT_INIT_DEADLINE: &str = "60s";

/// The first fetch's backoff: full jitter over 0.5 s, 1 s, 2 s … capped at 16 s.
const FIRST_FETCH_BACKOFF_BASE: Duration = Duration::from_millis(500);
const FIRST_FETCH_BACKOFF_CAP: Duration = Duration::from_secs(16);

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
    /// The first fetch met only throttling or an unavailable store until `--init-deadline`.
    #[error(
        "{last} (still throttled or unavailable after {attempts} attempts over {:?}, the --init-deadline)",
        .deadline
    )]
    GaveUp {
        attempts: u32,
        deadline: Duration,
        last: Box<Error>,
    },
}

impl Error {
    /// The kind of the (last) failure, as metrics and the version service label it.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            Error::Store(errors) => errors.last().map(StoreError::kind),
            Error::Incomplete { store, render } => store
                .last()
                .map(StoreError::kind)
                .or((!render.is_empty()).then_some(ErrorKind::Render)),
            Error::Write(_) => Some(ErrorKind::Write),
            Error::GaveUp { last, .. } => last.kind(),
            Error::Spec(_) | Error::Usage(_) => None,
        }
    }

    /// Whether trying again later may succeed: every failure is the store throttling or not
    /// answering (a missing secret, a denied read or a rendering error would fail again).
    fn is_transient(&self) -> bool {
        let transient = StoreError::is_transient;
        match self {
            Error::Store(errors) => !errors.is_empty() && errors.iter().all(transient),
            Error::Incomplete { store, render } => {
                render.is_empty() && !store.is_empty() && store.iter().all(transient)
            }
            _ => false,
        }
    }
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
    /// The version service, when configured: asked each interval of `run` what changed.
    pub versions: Option<VersionClient>,
    /// The pod's name, reported to the version service.
    pub pod: String,
    /// How long the first fetch retries a throttling or unavailable store (zero: no retry).
    pub init_deadline: Duration,
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
    /// The kind of the last failure in `errors`.
    pub error_kind: Option<ErrorKind>,
    /// The requests fetched from the store (the others reused their last value).
    pub fetched: usize,
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
    /// The last value fetched for each request and its version: what an interval that fetches
    /// only what changed renders the rest from.
    held: BTreeMap<FetchRequest, Held>,
    /// This process wrote (or found unchanged) a complete set.
    complete: bool,
}

/// A fetched value kept between refreshes (wrapped: its `Debug` shows no value).
#[derive(Debug)]
struct Held {
    version_id: String,
    value: SecretValue,
}

impl State {
    /// The version held for a request, if it was ever fetched.
    pub fn version(&self, request: &FetchRequest) -> Option<&str> {
        self.held.get(request).map(|h| h.version_id.as_str())
    }
}

/// What `run` carries from one interval to the next: the state, the health it reports to the
/// version service, and whether the service answered last time (so that a change is logged
/// once, not every interval).
#[derive(Debug)]
pub struct Cycle {
    pub state: State,
    /// Refreshes in a row that had an error.
    pub failures: u32,
    /// The kind of the last refresh's error; `None` after a clean one.
    pub last_error: Option<ErrorKind>,
    service: Link,
}

/// The version service as the last check found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    NotAsked,
    Answering,
    Failing,
}

impl Cycle {
    /// Starts from the first refresh's state (an incomplete one counts as a failure).
    pub fn new(state: State) -> Cycle {
        Cycle {
            failures: u32::from(!state.complete),
            last_error: None,
            service: Link::NotAsked,
            state,
        }
    }
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
    /// An agent over `store` writing with `writer`: no downward-API file, no version service,
    /// the default `--init-deadline`.
    pub fn new(spec: Spec, store: Store, writer: AtomicWriter) -> Agent {
        Agent {
            spec,
            store,
            writer,
            annotations_file: None,
            metrics: Arc::default(),
            versions: None,
            pod: String::new(),
            init_deadline: crate::duration::parse(DEFAULT_INIT_DEADLINE)
                .expect("the default deadline parses"),
        }
    }

    /// Every distinct request the spec makes (files, variables, envFrom, template inputs),
    /// sorted.
    pub fn requests(&self) -> Vec<FetchRequest> {
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

    /// Fetches everything and writes. On the first refresh (empty state) any failure is an
    /// error and nothing is written; later, failed items keep their last good content.
    pub async fn refresh(&self, state: &mut State) -> Result<Refresh> {
        self.refresh_with(state, None).await
    }

    /// Like [`Agent::refresh`], but with `stale` (what the version service says changed) fetches
    /// only those requests and the ones never fetched, and renders the rest from their held
    /// values.
    pub async fn refresh_with(
        &self,
        state: &mut State,
        stale: Option<&BTreeSet<FetchRequest>>,
    ) -> Result<Refresh> {
        let calls_before = self.store.api_calls();
        let result = self.refresh_inner(state, stale).await;
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

    async fn refresh_inner(
        &self,
        state: &mut State,
        stale: Option<&BTreeSet<FetchRequest>>,
    ) -> Result<Refresh> {
        let requests = self.requests();
        // Sorted, as `requests` is: looked up by binary search below.
        let asked: Vec<FetchRequest> = match stale {
            None => requests,
            Some(stale) => requests
                .into_iter()
                .filter(|r| stale.contains(r) || !state.held.contains_key(r))
                .collect(),
        };
        let results = if asked.is_empty() {
            Vec::new()
        } else {
            self.store.fetch(&asked).await
        };
        let mut fetched: BTreeMap<&FetchRequest, Fetched> = BTreeMap::new();
        let mut store_errors: Vec<StoreError> = Vec::new();
        for (req, res) in asked.iter().zip(results) {
            match res {
                Ok(f) => {
                    if let Some(old) = state.version(req)
                        && old != f.version_id
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
        // A request fetched now uses what came back (nothing when its fetch failed, so its
        // items keep their last good content, as without the service); one not fetched reuses
        // its held value.
        let held = &state.held;
        let value = |r: FetchRequest| {
            if asked.binary_search(&r).is_ok() {
                fetched.get(&r).map(|f| &f.value)
            } else {
                held.get(&r).map(|h| &h.value)
            }
        };

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
        for (req, f) in fetched {
            state.held.insert(
                req.clone(),
                Held {
                    version_id: f.version_id,
                    value: f.value,
                },
            );
        }
        state.files = files;
        state.env = env;
        state.env_from = from;
        state.env_values = env_values;
        state.complete = true;
        let error_kind = store_errors
            .last()
            .map(StoreError::kind)
            .or((!render_errors.is_empty()).then_some(ErrorKind::Render));
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
            error_kind,
            fetched: asked.len(),
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

    /// `kura-agent init`: fetch everything once. While the store throttles or cannot be
    /// reached, tries again with exponential backoff and full jitter until `init_deadline`;
    /// any other failure ends it at once.
    pub async fn init(&self) -> Result<State> {
        let deadline = tokio::time::Instant::now() + self.init_deadline;
        let mut attempts: u32 = 0;
        loop {
            attempts += 1;
            let mut state = State::default();
            match self.refresh(&mut state).await {
                Ok(r) => {
                    info!(
                        files = self.spec.files.len(),
                        templates = self.spec.templates.len(),
                        variables = state.env_values.len(),
                        dir = %self.writer.dir().display(),
                        changed = r.changed,
                        attempts,
                        "secrets written"
                    );
                    return Ok(state);
                }
                Err(e) if e.is_transient() && !self.init_deadline.is_zero() => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if left.is_zero() {
                        return Err(Error::GaveUp {
                            attempts,
                            deadline: self.init_deadline,
                            last: Box::new(e),
                        });
                    }
                    let wait = full_jitter(attempts).min(left);
                    warn!(
                        error = %e,
                        attempts,
                        wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        "first fetch: the store is throttling or unavailable; trying again"
                    );
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
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
        let mut first_error = None;
        let state = match self.init().await {
            Ok(s) => s,
            // The init container wrote a set; the sidecar keeps it and retries with backoff.
            Err(e) if self.writer.is_ready() => {
                warn!(error = %e, "first refresh failed; keeping the files already written");
                first_error = e.kind();
                State::default()
            }
            Err(e) => return Err(e),
        };
        if self.spec.agent == AgentMode::InitOnly {
            return Ok(());
        }
        let interval = Duration::from_secs(self.spec.refresh_interval.max(1));
        let mut cycle = Cycle::new(state);
        cycle.last_error = first_error;
        let mut refresh_now = self.annotations_file.as_deref().and_then(read_refresh_now);
        let mut first = true;
        loop {
            let wait = if cycle.failures == 0 {
                interval_wait(interval, std::mem::take(&mut first))
            } else {
                backoff(cycle.failures, interval)
            };
            let deadline = tokio::time::Instant::now() + wait;
            let mut forced = false;
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
                        forced = true;
                        break;
                    }
                }
            }
            self.step(&mut cycle, forced).await;
        }
    }

    /// One interval of `run`: unless `forced` (`kura.dev/refresh-now`, a full fetch), ask the
    /// version service what changed; fetch that, or everything when there is no service or it
    /// failed; write, and run the reload hook when the set changed.
    pub async fn step(&self, cycle: &mut Cycle, forced: bool) {
        let stale = if forced {
            None
        } else {
            self.check_versions(cycle).await
        };
        match self.refresh_with(&mut cycle.state, stale.as_ref()).await {
            Ok(r) => {
                cycle.last_error = r.error_kind;
                if r.errors.is_empty() {
                    cycle.failures = 0;
                } else {
                    cycle.failures = cycle.failures.saturating_add(1);
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
                cycle.last_error = e.kind();
                cycle.failures = cycle.failures.saturating_add(1);
                error!(error = %e, failures = cycle.failures, "refresh failed; last good files kept");
            }
        }
    }

    /// Asks the version service about every request, with this agent's state. Returns the
    /// requests to fetch (answered with another version than the one held, or `unknown`), or
    /// `None` when there is no service or it failed: then the interval fetches everything.
    async fn check_versions(&self, cycle: &mut Cycle) -> Option<BTreeSet<FetchRequest>> {
        let client = self.versions.as_ref()?;
        let requests = self.requests();
        let ask = VersionsRequest {
            references: requests
                .iter()
                .map(|r| VersionRef {
                    secret: r.secret.clone(),
                    version_stage: r.version_stage.clone(),
                    version_id: r.version_id.clone(),
                })
                .collect(),
            agent: AgentState {
                pod: self.pod.clone(),
                refresh_interval_seconds: self.spec.refresh_interval,
                last_success_unix: self.metrics.last_success(),
                consecutive_failures: cycle.failures,
                error_kind: cycle.last_error.map(|k| k.as_str().to_string()),
            },
        };
        match client.check(&ask).await {
            Ok(answers) => {
                self.metrics.version_check(true);
                match cycle.service {
                    Link::Failing => info!(
                        url = client.url(),
                        "the version service answers again: fetching from AWS only what changed"
                    ),
                    Link::NotAsked => info!(
                        url = client.url(),
                        "the version service answers: fetching from AWS only what changed"
                    ),
                    Link::Answering => {}
                }
                cycle.service = Link::Answering;
                let stale: BTreeSet<FetchRequest> = requests
                    .into_iter()
                    .zip(answers)
                    .filter(|(r, a)| a.unknown || a.current.as_deref() != cycle.state.version(r))
                    .map(|(r, _)| r)
                    .collect();
                debug!(
                    references = ask.references.len(),
                    to_fetch = stale.len(),
                    "version service answered"
                );
                Some(stale)
            }
            Err(e) => {
                self.metrics.version_check(false);
                if cycle.service == Link::Failing {
                    debug!(error = %e, "the version service still fails; polling AWS directly");
                } else {
                    warn!(error = %e, "the version service failed: polling AWS directly until it answers again");
                }
                cycle.service = Link::Failing;
                None
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

/// The wait before a healthy refresh: never longer than the interval, so a rotation is seen
/// within one interval (plus the version service's TTL); 90–100 % of it, so pods do not stay
/// in step. The first wait after start is 50–100 %: a rollout's pods, started together, spread
/// their first checks over half an interval instead of arriving at once.
fn interval_wait(interval: Duration, first: bool) -> Duration {
    let low = if first { 0.5 } else { 0.9 };
    interval.mul_f64(low + fastrand::f64() * (1.0 - low))
}

/// The first fetch's wait before attempt `attempts + 1`: uniformly random up to 0.5 s × 2^(n-1),
/// capped (full jitter: pods that failed together do not come back together).
fn full_jitter(attempts: u32) -> Duration {
    let exp = FIRST_FETCH_BACKOFF_BASE
        .saturating_mul(1 << attempts.saturating_sub(1).min(10))
        .min(FIRST_FETCH_BACKOFF_CAP);
    exp.mul_f64(fastrand::f64())
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
    fn interval_waits_never_exceed_the_interval_and_the_first_spreads_wider() {
        let i = Duration::from_secs(120);
        let waits: Vec<Duration> = (0..2000).map(|_| interval_wait(i, false)).collect();
        assert!(waits.iter().all(|w| *w <= i && *w >= i.mul_f64(0.9)));
        let first: Vec<Duration> = (0..2000).map(|_| interval_wait(i, true)).collect();
        assert!(first.iter().all(|w| *w <= i && *w >= i / 2));
        // Spread over the whole range, not bunched at one end.
        assert!(first.iter().any(|w| *w < i.mul_f64(0.6)));
        assert!(first.iter().any(|w| *w > i.mul_f64(0.9)));
    }

    #[test]
    fn backoff_grows_then_caps() {
        let i = Duration::from_secs(60);
        assert!(backoff(1, i) <= Duration::from_millis(1100));
        assert!(backoff(3, i) >= Duration::from_millis(3600));
        assert!(backoff(30, i) <= Duration::from_secs(66));
        assert!(backoff(30, i) >= Duration::from_secs(54));
    }

    #[test]
    fn first_fetch_backoff_is_full_jitter_under_a_cap() {
        for attempts in 1..40 {
            let cap = FIRST_FETCH_BACKOFF_BASE
                .saturating_mul(1 << (attempts - 1).min(10))
                .min(FIRST_FETCH_BACKOFF_CAP);
            assert!(full_jitter(attempts) <= cap, "{attempts}");
        }
        assert!(full_jitter(u32::MAX) <= FIRST_FETCH_BACKOFF_CAP);
    }

    #[test]
    fn only_throttling_and_unavailability_are_retried() {
        let throttled = || StoreError::Throttled {
            secret: "/a".into(),
            message: "slow down".into(),
        };
        let missing = || StoreError::NotFound {
            secret: "/b".into(),
        };
        assert!(Error::Store(vec![throttled()]).is_transient());
        assert!(
            Error::Incomplete {
                store: vec![
                    throttled(),
                    StoreError::Unavailable {
                        secret: "/c".into(),
                        message: "down".into()
                    }
                ],
                render: vec![],
            }
            .is_transient()
        );
        assert!(
            !Error::Incomplete {
                store: vec![throttled(), missing()],
                render: vec![],
            }
            .is_transient()
        );
        assert!(!Error::Store(vec![missing()]).is_transient());
        assert!(!Error::Usage("x".into()).is_transient());
        assert_eq!(
            Error::Store(vec![missing(), throttled()]).kind(),
            Some(ErrorKind::Throttled)
        );
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
