//! The HTTPS admission server and the metrics listener.
//!
//! HTTP/1.1 keep-alive (what kube-apiserver uses) and HTTP/2 over TLS 1.2+; a body limit and a
//! per-request deadline; `/readyz` turns false first on SIGTERM, then the server drains.
//!
//! Whoever reaches the port can open connections, so each one is bounded ([`Limits`]): a cap
//! on open connections (past it a new one is closed at once and counted), an idle timeout on
//! the socket (no byte either way: closed, the TLS handshake included), and a timeout on
//! reading a request's headers (a client that trickles them): hyper's own for HTTP/1.1, and for
//! every protocol a connection with no request in progress must start one within that time
//! ([`Quiet`]; HTTP/2 has no header timeout of its own).
//!
//! Whoever reaches the port can also send what costs CPU and memory, and a slow request must not
//! delay the others:
//! - request bodies are read against one byte budget ([`Limits::body_budget`]) for all requests
//!   together, so memory does not grow with connections × 3 MiB; past it a request waits
//!   briefly, then gets a 503 that says so;
//! - a body over [`INLINE_BODY_MAX`] is decoded and judged on the heavy lane: a few threads of
//!   its own ([`heavy_lane_width`]) instead of the async workers, so a large or expensive
//!   body waits for and takes the lane's CPU, not the workers' that answer ordinary reviews.
//!   Ordinary reviews (a pod's is 4 to 10 KB) stay on the worker that read them, with no
//!   hand-off (see README "Hostile input and fuzzing" for what each costs).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kube::core::DynamicObject;
use kube::core::admission::AdmissionReview;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{error, info, warn};

use futures_util::StreamExt as _;

use crate::admission::{Admission, Endpoint, Outcome};
use crate::telemetry::{EndpointLabels, Metrics, NamespaceLabels, RequestLabels, RuleLabels};
use crate::wire::encode_review;

/// kube-apiserver caps request bodies at 3 MiB; anything larger is not a real review.
pub const BODY_LIMIT: usize = 3 * 1024 * 1024;
/// Reading the body and deciding, together, finish under the webhook configuration's 5 s
/// timeout, so the API server gets kura's answer rather than its own timeout error.
pub const REQUEST_DEADLINE: Duration = Duration::from_millis(4500);
/// Bodies up to this size are decoded and judged on the async worker that read them; larger
/// ones on the heavy lane. A pod's review is 4 to 10 KB (managed fields included); a
/// `kura.dev/secrets` value at its nesting bound makes a body of about 20 KB.
pub const INLINE_BODY_MAX: usize = 16 * 1024;
/// How long a request waits for room in the body budget before it gets a 503.
pub const BUDGET_WAIT: Duration = Duration::from_secs(1);

/// Shared by every request.
#[derive(Debug)]
pub struct AppState {
    pub admission: Admission,
    pub metrics: Metrics,
    /// False until dependencies are ready, and again once shutdown starts.
    pub ready: AtomicBool,
    /// Bytes of request bodies held at once, all requests together ([`Limits::body_budget`]).
    bodies: Arc<Semaphore>,
    body_budget: usize,
    /// Where large bodies are decided; `None` if its threads could not be started.
    heavy: Option<HeavyLane>,
}

impl AppState {
    /// With the default [`Limits`].
    pub fn new(admission: Admission) -> Arc<Self> {
        Self::with_limits(admission, &Limits::default())
    }

    pub fn with_limits(admission: Admission, limits: &Limits) -> Arc<Self> {
        let budget = limits.body_budget.clamp(BODY_LIMIT, Semaphore::MAX_PERMITS);
        Arc::new(AppState {
            admission,
            metrics: Metrics::default(),
            ready: AtomicBool::new(true),
            bodies: Arc::new(Semaphore::new(budget)),
            body_budget: budget,
            heavy: HeavyLane::start(heavy_lane_width()),
        })
    }
}

/// Requests decided on the heavy lane at once: half the CPUs the process may use, at least
/// one, so large bodies never take every core from the async workers.
pub fn heavy_lane_width() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    cpus.div_ceil(2)
}

/// A job for the heavy lane: runs on one of its threads.
type Job = Box<dyn FnOnce() + Send>;

/// Threads of their own for deciding large bodies, one job each at a time. Long-lived rather
/// than tokio's blocking pool, which starts a thread whenever none is idle: each new thread
/// gets its own allocator heap, and under a stream of large bodies that cost some 100 MiB of
/// RSS (measured with `bench/hostile-load.sh`).
#[derive(Debug)]
struct HeavyLane {
    places: Arc<Semaphore>,
    jobs: std::sync::mpsc::Sender<Job>,
}

impl HeavyLane {
    /// Starts `width` threads; `None` if none could be started (large bodies are then decided
    /// inline, as small ones are).
    fn start(width: usize) -> Option<HeavyLane> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut started = 0;
        for i in 0..width {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("kura-heavy-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held while waiting: one idle thread waits on the
                        // channel, the others on the lock.
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            match spawned {
                Ok(_) => started += 1,
                Err(e) => warn!(error = %e, "a heavy-lane thread could not be started"),
            }
        }
        (started > 0).then(|| HeavyLane {
            places: Arc::new(Semaphore::new(started)),
            jobs: tx,
        })
    }
}

/// The admission router (served over TLS).
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/validate", post(validate))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// The metrics router (plain HTTP on its own listener).
pub fn metrics_app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    if s.ready.load(Ordering::Relaxed) {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

async fn mutate(State(s): State<Arc<AppState>>, req: Request) -> Response {
    handle(s, Endpoint::Mutate, req).await
}

async fn validate(State(s): State<Arc<AppState>>, req: Request) -> Response {
    handle(s, Endpoint::Validate, req).await
}

/// Why a request got no AdmissionReview back.
enum Failure {
    TooLarge,
    OverBudget,
    Unreadable(String),
    Malformed(crate::admission::Error),
}

/// Why a body could not be read whole.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// Over the limit the caller set.
    TooLarge,
    /// The budget had no room within [`BUDGET_WAIT`].
    OverBudget,
    Unreadable(String),
}

impl From<BodyError> for Failure {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge => Failure::TooLarge,
            BodyError::OverBudget => Failure::OverBudget,
            BodyError::Unreadable(m) => Failure::Unreadable(m),
        }
    }
}

/// A body read whole, with its share of the body budget (given back when dropped).
pub(crate) struct Body {
    pub(crate) bytes: Vec<u8>,
    _held: OwnedSemaphorePermit,
}

/// Reads a request's body against [`BODY_LIMIT`] and the shared body budget.
async fn read_body(s: &AppState, req: Request) -> Result<Body, Failure> {
    Ok(read_limited(&s.bodies, BODY_LIMIT, req).await?)
}

/// Reads a request's body, at most `limit` bytes, against a byte `budget` shared by the
/// requests that read at once. The budget counts the buffer's capacity, taken before it grows,
/// so what it admits is what is allocated; a client that declares 3 MiB and sends a few bytes
/// holds a few bytes of it.
pub(crate) async fn read_limited(
    budget: &Arc<Semaphore>,
    limit: usize,
    req: Request,
) -> Result<Body, BodyError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    // A declared length over the limit is not refused before the body is read: answering
    // while an HTTP/1.1 client still writes makes it see a broken pipe, not the 413's message.
    let mut held = budget
        .clone()
        .try_acquire_many_owned(0)
        .map_err(|_| BodyError::OverBudget)?;
    let mut bytes: Vec<u8> = Vec::new();
    let mut stream = req.into_body().into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| BodyError::Unreadable(e.to_string()))?;
        let needed = bytes.len() + chunk.len();
        if needed > limit {
            return Err(BodyError::TooLarge);
        }
        if needed > bytes.capacity() {
            // Grow by doubling (an ordinary review, its length declared, in one step), never
            // past the declared length: the budget pays for bytes received, not promised.
            let ceiling = declared.map_or(limit, |n| n.clamp(needed, limit));
            let first = declared.map_or(0, |n| n.min(INLINE_BODY_MAX));
            let want = needed.max(bytes.capacity() * 2).max(first).min(ceiling);
            let more = u32::try_from(want - bytes.capacity()).map_err(|_| BodyError::TooLarge)?;
            let permit = match budget.clone().try_acquire_many_owned(more) {
                Ok(p) => p,
                Err(_) => {
                    tokio::time::timeout(BUDGET_WAIT, budget.clone().acquire_many_owned(more))
                        .await
                        .map_err(|_| BodyError::OverBudget)?
                        .map_err(|_| BodyError::OverBudget)?
                }
            };
            held.merge(permit);
            bytes.reserve_exact(want - bytes.len());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Body { bytes, _held: held })
}

/// Decodes and judges a body: inline if it is small, else on the heavy lane, where waiting for
/// a place counts under the deadline.
async fn decide(s: &Arc<AppState>, endpoint: Endpoint, body: Body) -> Result<Outcome, Failure> {
    let lane = match &s.heavy {
        Some(lane) if body.bytes.len() > INLINE_BODY_MAX => lane,
        _ => {
            return s
                .admission
                .review(endpoint, &body.bytes)
                .await
                .map_err(Failure::Malformed);
        }
    };
    let place = lane
        .places
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| Failure::OverBudget)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let state = s.clone();
    let rt = tokio::runtime::Handle::current();
    // Once started it runs to its end even past the deadline (a parse cannot be interrupted;
    // each is bounded), holding its place and its bytes until then.
    let job: Job = Box::new(move || {
        let outcome = rt.block_on(state.admission.review(endpoint, &body.bytes));
        drop(place);
        let _ = tx.send(outcome);
    });
    if lane.jobs.send(job).is_err() {
        return Err(Failure::Unreadable("the heavy lane has stopped".into()));
    }
    match rx.await {
        Ok(r) => r.map_err(Failure::Malformed),
        Err(_) => Err(Failure::Unreadable("the admission failed".into())),
    }
}

async fn handle(s: Arc<AppState>, endpoint: Endpoint, req: Request) -> Response {
    let start = Instant::now();
    let name = endpoint.as_str();
    // The deadline covers reading the body too: a client that trickles a body must not hold a
    // request past the point where the API server has given up on it.
    // Boxed: the admission's state (a decoded pod, its plan) is several KiB, and a future is
    // copied whole each time it moves, into the timeout and on into axum's boxed future.
    let result = tokio::time::timeout(
        REQUEST_DEADLINE,
        Box::pin(async {
            let body = read_body(&s, req).await?;
            decide(&s, endpoint, body).await
        }),
    )
    .await;
    let elapsed = start.elapsed().as_secs_f64();
    s.metrics
        .latency
        .get_or_create(&EndpointLabels {
            endpoint: name.into(),
        })
        .observe(elapsed);
    let count = |decision: &str| {
        s.metrics
            .requests
            .get_or_create(&RequestLabels {
                endpoint: name.into(),
                decision: decision.into(),
            })
            .inc();
    };
    match result {
        Ok(Ok(outcome)) => {
            count(outcome.decision.as_str());
            for rule in &outcome.rules {
                s.metrics
                    .rules
                    .get_or_create(&RuleLabels {
                        rule: rule.id().into(),
                        decision: if outcome.denied {
                            "denied".into()
                        } else {
                            "allowed".into()
                        },
                    })
                    .inc();
            }
            if outcome.injected {
                s.metrics
                    .injections
                    .get_or_create(&NamespaceLabels {
                        namespace: outcome.namespace.clone(),
                    })
                    .inc();
            }
            review_response(outcome.review)
        }
        Ok(Err(Failure::TooLarge)) => {
            count("too-large");
            warn!(
                endpoint = name,
                limit = BODY_LIMIT,
                "admission request body over the limit"
            );
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is larger than {} MiB, the most kube-apiserver sends: this is not an AdmissionReview kura can answer",
                    BODY_LIMIT / (1024 * 1024)
                ),
            )
                .into_response()
        }
        Ok(Err(Failure::OverBudget)) => {
            count("over-budget");
            warn!(
                endpoint = name,
                budget = s.body_budget,
                "the request-body budget is spent: a request is turned away"
            );
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "kura is holding {} MiB of request bodies, its budget (--body-budget-mib): try again",
                    s.body_budget / (1024 * 1024)
                ),
            )
                .into_response()
        }
        Ok(Err(Failure::Unreadable(e))) => {
            count("bad-request");
            info!(endpoint = name, error = %e, "admission request body could not be read");
            (
                StatusCode::BAD_REQUEST,
                format!("the request body could not be read: {e}"),
            )
                .into_response()
        }
        Ok(Err(Failure::Malformed(e))) => {
            count("bad-request");
            info!(endpoint = name, error = %e, "malformed admission request");
            (StatusCode::BAD_REQUEST, e.to_string()).into_response()
        }
        Err(_) => {
            count("timeout");
            error!(endpoint = name, "admission not decided within the deadline");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "kura did not decide within {} ms",
                    REQUEST_DEADLINE.as_millis()
                ),
            )
                .into_response()
        }
    }
}

/// The answer as a response, its JSON from [`encode_review`].
fn review_response(review: AdmissionReview<DynamicObject>) -> Response {
    match encode_review(review) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => {
            error!(error = %e, "the answer could not be encoded");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "kura could not encode its answer",
            )
                .into_response()
        }
    }
}

/// How many connections may be open and how long they may be quiet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open admission connections; past this a new one is closed at once.
    pub max_connections: usize,
    /// Longest time without a byte in either direction before a connection is closed.
    pub idle_timeout: Duration,
    /// Longest time to receive a request's headers, counted from when the server starts
    /// waiting for them (also between keep-alive requests): hyper's timeout for HTTP/1.1, and
    /// for every protocol the longest a connection may have no request in progress ([`Quiet`]).
    pub header_read_timeout: Duration,
    /// Bytes of request bodies held at once, all requests together (at least [`BODY_LIMIT`]).
    pub body_budget: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            idle_timeout: Duration::from_secs(60),
            header_read_timeout: Duration::from_secs(10),
            body_budget: 64 * 1024 * 1024,
        }
    }
}

/// Descriptors kept for what is not an admission connection: the metrics listener and its
/// clients, the store's connections, files being watched, the runtime's own.
pub const RESERVED_FDS: u64 = 128;

/// Raises the soft open-files limit to the hard one, as far as the process may, and returns
/// the soft limit in force afterwards (`None` if it cannot be read). A container's default soft
/// limit is often 1024, which a thousand idle connections would exhaust.
pub fn raise_fd_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => return Some(hard),
            Err(e) => warn!(soft, hard, error = %e, "the open-files limit could not be raised"),
        }
    }
    Some(soft)
}

/// The connection cap that fits under an open-files limit: `wanted`, or fewer if the limit
/// leaves less room once [`RESERVED_FDS`] are set aside.
pub fn connection_cap(wanted: usize, fd_limit: Option<u64>) -> usize {
    match fd_limit {
        Some(limit) => {
            let room = usize::try_from(limit.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
            wanted.min(room).max(1)
        }
        None => wanted,
    }
}

/// Accepts a connection only while fewer than [`Limits::max_connections`] are open, and wraps
/// it in an idle timeout; below the TLS acceptor, so a handshake counts and is timed too.
#[derive(Debug, Clone)]
struct Guard {
    permits: Arc<Semaphore>,
    idle: Duration,
    quiet: Duration,
    open: Gauge,
    refused: Counter,
}

impl<S> axum_server::accept::Accept<TcpStream, S> for Guard {
    type Stream = Guarded;
    type Service = Tracked<S>;
    type Future = std::future::Ready<std::io::Result<(Guarded, Tracked<S>)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.refused.inc();
            warn!("connection cap reached: a new connection is closed");
            return std::future::ready(Err(std::io::Error::other("connection cap reached")));
        };
        self.open.inc();
        let requests = Arc::new(Requests::default());
        std::future::ready(Ok((
            Guarded {
                inner: stream,
                idle: self.idle,
                deadline: Box::pin(tokio::time::sleep(self.idle)),
                quiet: Quiet {
                    limit: self.quiet,
                    requests: requests.clone(),
                    deadline: Box::pin(tokio::time::sleep(self.quiet)),
                },
                _slot: Slot {
                    _permit: permit,
                    open: self.open.clone(),
                },
            },
            Tracked {
                inner: service,
                requests,
            },
        )))
    }
}

/// A connection's place under the cap, given back when the connection is dropped.
#[derive(Debug)]
struct Slot {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// A connection's requests in progress, and when the last one ended (or the connection
/// opened): shared by its stream ([`Quiet`]) and its service ([`Tracked`]).
#[derive(Debug)]
struct Requests {
    in_progress: AtomicUsize,
    last_end: Mutex<tokio::time::Instant>,
}

impl Default for Requests {
    fn default() -> Self {
        Requests {
            in_progress: AtomicUsize::new(0),
            last_end: Mutex::new(tokio::time::Instant::now()),
        }
    }
}

/// Counts a request in progress until its response is ready (or it is dropped).
struct InProgress(Arc<Requests>);

impl InProgress {
    fn new(requests: &Arc<Requests>) -> Self {
        requests.in_progress.fetch_add(1, Ordering::Relaxed);
        InProgress(requests.clone())
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        if let Ok(mut t) = self.0.last_end.lock() {
            *t = tokio::time::Instant::now();
        }
        self.0.in_progress.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's service, counting its requests in progress for [`Quiet`].
#[derive(Debug, Clone)]
pub struct Tracked<S> {
    inner: S,
    requests: Arc<Requests>,
}

impl<S, R> tower_service::Service<R> for Tracked<S>
where
    S: tower_service::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let counted = InProgress::new(&self.requests);
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            drop(counted);
            r
        })
    }
}

/// The header-read timeout of every protocol: a connection with no request in progress must
/// start one within `limit` of opening or of its last request's end. HTTP/2 needs it (hyper
/// has no header timeout for it: a client that trickles a HEADERS frame's bytes, or sends
/// only pings, would hold its connection forever); for HTTP/1.1 it matches hyper's own.
#[derive(Debug)]
struct Quiet {
    limit: Duration,
    requests: Arc<Requests>,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Quiet {
    /// Whether the connection has gone too long with no request in progress.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.requests.in_progress.load(Ordering::Relaxed) > 0 {
            return false;
        }
        let Ok(last_end) = self.requests.last_end.lock().map(|t| *t) else {
            return false;
        };
        let due = last_end + self.limit;
        if self.deadline.deadline() != due {
            self.deadline.as_mut().reset(due);
        }
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

/// A TCP stream that fails with `TimedOut` once no byte has moved for its idle timeout, or once
/// it has had no request in progress for its header-read timeout ([`Quiet`]).
#[derive(Debug)]
struct Guarded {
    inner: TcpStream,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    quiet: Quiet,
    _slot: Slot,
}

impl Guarded {
    fn moved(&mut self) {
        self.deadline
            .as_mut()
            .reset(tokio::time::Instant::now() + self.idle);
    }

    /// `Pending` from the socket: still pending, unless the idle deadline has passed.
    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connection idle",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Fails a read once the connection has had no request in progress for too long, whether
    /// bytes arrive (a trickle) or not.
    fn quiet<T>(&mut self, cx: &mut Context<'_>) -> Option<Poll<std::io::Result<T>>> {
        self.quiet.expired(cx).then(|| {
            Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no request within the header-read timeout",
            )))
        })
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Some(closed) = this.quiet(cx) {
            return closed;
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.moved();
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.pending(cx),
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    this.moved();
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.pending(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    this.moved();
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.pending(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A bound HTTPS server that can be told to drain.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    handle: axum_server::Handle,
    metrics_handle: Option<axum_server::Handle>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// Other HTTPS listeners drained with the admission one (the version service's).
    others: Vec<Listener>,
}

/// One HTTPS listener of [`serve_tls`].
#[derive(Debug)]
pub struct Listener {
    pub addr: SocketAddr,
    handle: axum_server::Handle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::Error),
}

/// How a TLS listener counts its connections.
#[derive(Debug, Clone)]
pub struct ConnectionMetrics {
    pub open: Gauge,
    pub refused: Counter,
}

/// Binds an HTTPS listener serving `router` with the certificate `resolver` gives (reloads
/// included), each connection bounded by `limits` (cap, idle and header-read timeouts).
pub fn serve_tls(
    router: Router,
    listen: SocketAddr,
    resolver: Arc<crate::tls::Resolver>,
    limits: &Limits,
    counted: ConnectionMetrics,
) -> Result<Listener, Error> {
    let tls = crate::tls::server_config(resolver)?;
    let rustls_config = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls));
    let handle = axum_server::Handle::new();
    let bind = |source| Error::Bind {
        addr: listen,
        source,
    };
    let std_listener = std::net::TcpListener::bind(listen).map_err(bind)?;
    std_listener.set_nonblocking(true).map_err(bind)?;
    let addr = std_listener.local_addr().map_err(bind)?;
    let guard = Guard {
        permits: Arc::new(Semaphore::new(limits.max_connections)),
        idle: limits.idle_timeout,
        quiet: limits.header_read_timeout,
        open: counted.open,
        refused: counted.refused,
    };
    let mut server = axum_server::from_tcp(std_listener)
        .acceptor(axum_server::tls_rustls::RustlsAcceptor::new(rustls_config).acceptor(guard))
        .handle(handle.clone());
    server
        .http_builder()
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let task = tokio::spawn(async move { server.serve(router.into_make_service()).await });
    Ok(Listener { addr, handle, task })
}

/// Binds the admission listener (TLS) and, if given, the metrics listener.
pub async fn start(
    state: Arc<AppState>,
    listen: SocketAddr,
    metrics_listen: Option<SocketAddr>,
    resolver: Arc<crate::tls::Resolver>,
    limits: Limits,
) -> Result<Running, Error> {
    resolver.count_reloads_in(state.metrics.reloads.clone());
    resolver.report_expiry_in(state.metrics.certificate_expiry.clone());
    let admission = serve_tls(
        app(state.clone()),
        listen,
        resolver,
        &limits,
        ConnectionMetrics {
            open: state.metrics.connections_open.clone(),
            refused: state.metrics.connections_refused.clone(),
        },
    )?;
    let Listener { addr, handle, task } = admission;

    let (metrics_addr, metrics_handle) = match metrics_listen {
        Some(m) => {
            let l =
                std::net::TcpListener::bind(m).map_err(|source| Error::Bind { addr: m, source })?;
            l.set_nonblocking(true)
                .map_err(|source| Error::Bind { addr: m, source })?;
            let a = l
                .local_addr()
                .map_err(|source| Error::Bind { addr: m, source })?;
            let h = axum_server::Handle::new();
            let srv = axum_server::from_tcp(l).handle(h.clone());
            let r = metrics_app(state);
            tokio::spawn(async move { srv.serve(r.into_make_service()).await });
            (Some(a), Some(h))
        }
        None => (None, None),
    };
    info!(%addr, metrics = ?metrics_addr, "kura webhook listening");
    Ok(Running {
        addr,
        metrics_addr,
        handle,
        metrics_handle,
        task,
        others: Vec::new(),
    })
}

impl Running {
    /// Stops accepting and waits up to `grace` for in-flight requests.
    pub async fn drain(self, grace: Duration) {
        self.handle.graceful_shutdown(Some(grace));
        if let Some(h) = &self.metrics_handle {
            h.graceful_shutdown(Some(grace));
        }
        for other in &self.others {
            other.handle.graceful_shutdown(Some(grace));
        }
        let tasks = std::iter::once(self.task).chain(self.others.into_iter().map(|o| o.task));
        for task in tasks {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => error!(error = %e, "server stopped with an error"),
                Err(e) => error!(error = %e, "server task failed"),
            }
        }
    }

    /// Drains `listener` with the rest.
    pub fn add(&mut self, listener: Listener) {
        self.others.push(listener);
    }
}
