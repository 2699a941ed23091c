//! The HTTPS admission server and the metrics listener.
//!
//! HTTP/1.1 keep-alive (what kube-apiserver uses) and HTTP/2 over TLS 1.2+; a body limit and a
//! per-request deadline; `/readyz` turns false first on SIGTERM, then the server drains.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kube::core::DynamicObject;
use kube::core::admission::AdmissionReview;
use tracing::{error, info, warn};

use crate::admission::{Admission, Endpoint};
use crate::telemetry::{EndpointLabels, Metrics, NamespaceLabels, RequestLabels, RuleLabels};
use crate::wire::encode_review;

/// kube-apiserver caps request bodies at 3 MiB; anything larger is not a real review.
pub const BODY_LIMIT: usize = 3 * 1024 * 1024;
/// Reading the body and deciding, together, finish under the webhook configuration's 5 s
/// timeout, so the API server gets kura's answer rather than its own timeout error.
pub const REQUEST_DEADLINE: Duration = Duration::from_millis(4500);

/// Shared by every request.
#[derive(Debug)]
pub struct AppState {
    pub admission: Admission,
    pub metrics: Metrics,
    /// False until dependencies are ready, and again once shutdown starts.
    pub ready: AtomicBool,
}

impl AppState {
    pub fn new(admission: Admission) -> Arc<Self> {
        Arc::new(AppState {
            admission,
            metrics: Metrics::default(),
            ready: AtomicBool::new(true),
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
    Unreadable(BytesRejection),
    Malformed(crate::admission::Error),
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
            // Extracted here rather than as a handler argument so that the rejection gets kura's
            // message (and the deadline above), not axum's bare "Failed to buffer the request body".
            let body = Bytes::from_request(req, &()).await.map_err(|e| match e {
                BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => {
                    Failure::TooLarge
                }
                other => Failure::Unreadable(other),
            })?;
            s.admission
                .review(endpoint, &body)
                .await
                .map_err(Failure::Malformed)
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
        Ok(Err(Failure::Unreadable(e))) => {
            count("bad-request");
            info!(endpoint = name, error = %e.body_text(), "admission request body could not be read");
            (
                e.status(),
                format!("the request body could not be read: {}", e.body_text()),
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

/// A bound HTTPS server that can be told to drain.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    handle: axum_server::Handle,
    metrics_handle: Option<axum_server::Handle>,
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

/// Binds the admission listener (TLS) and, if given, the metrics listener.
pub async fn start(
    state: Arc<AppState>,
    listen: SocketAddr,
    metrics_listen: Option<SocketAddr>,
    resolver: Arc<crate::tls::Resolver>,
) -> Result<Running, Error> {
    resolver.count_reloads_in(state.metrics.reloads.clone());
    let tls = crate::tls::server_config(resolver)?;
    let rustls_config = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls));
    let handle = axum_server::Handle::new();
    let std_listener = std::net::TcpListener::bind(listen).map_err(|source| Error::Bind {
        addr: listen,
        source,
    })?;
    std_listener
        .set_nonblocking(true)
        .map_err(|source| Error::Bind {
            addr: listen,
            source,
        })?;
    let addr = std_listener.local_addr().map_err(|source| Error::Bind {
        addr: listen,
        source,
    })?;
    let server = axum_server::from_tcp_rustls(std_listener, rustls_config).handle(handle.clone());
    let router = app(state.clone());
    let task = tokio::spawn(async move { server.serve(router.into_make_service()).await });

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
    })
}

impl Running {
    /// Stops accepting and waits up to `grace` for in-flight requests.
    pub async fn drain(self, grace: Duration) {
        self.handle.graceful_shutdown(Some(grace));
        if let Some(h) = &self.metrics_handle {
            h.graceful_shutdown(Some(grace));
        }
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!(error = %e, "server stopped with an error"),
            Err(e) => error!(error = %e, "server task failed"),
        }
    }
}
