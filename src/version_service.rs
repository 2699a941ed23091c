//! The version service (contract §8): agents ask it, not AWS, which versions the references
//! they hold are at, and fetch from AWS only what changed. It runs inside `kura serve` on an
//! HTTPS listener of its own (`--version-service-listen`), so a NetworkPolicy can open that
//! port to application namespaces without opening `/mutate` and `/validate`; the webhook's
//! certificate (and its reloads), connection limits and drain apply to it too.
//!
//! `POST` [`PATH`]: the caller proves its namespace with a projected service-account token
//! ([`auth`]); every reference must be in that namespace's scope under the current policy
//! (KURA002), else `403` naming each; versions come from metadata calls shared by the cluster
//! ([`learn`]), never a value; the agent's own state feeds the fleet gauges ([`fleet`]). Any
//! failure is an answer with a message (`400`, `401`, `403`, `413`, `503`), on which the agent
//! polls AWS directly for that interval.

mod auth;
mod fleet;
mod flight;
mod learn;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use kura_agent::spec::Reference;
use kura_agent::store::Store;
use kura_agent::versions::{
    AgentState, ErrorAnswer, MAX_REFERENCES, MAX_REQUEST_BYTES, PATH, VersionsAnswer,
    VersionsRequest,
};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

pub use auth::{AuthError, Authenticator, Identity, MAX_TOKEN_BYTES, VERDICT_BOUNDS, VERDICT_TTL};
pub use fleet::{Fleet, INTERVALS, MAX_AGENTS, NamespaceCounts, error_kind_label};
pub use flight::Bounds;
pub use learn::{LIST_BOUNDS, LOOKUP_BOUNDS, Learner, MAX_LIST_PAGES, list_prefix};

use crate::server::{self, AppState, BodyError, ConnectionMetrics, Limits};
use crate::telemetry::OutcomeLabels;

/// Reading, authenticating and answering one check, together: past it the answer is a `503`
/// (the agent gave up at 2 s already; what was being learned is still kept for the next one).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// Request bodies held at once, all checks together (a separate budget from admission's, so
/// agents cannot take the room admission reviews need).
pub const BODY_BUDGET: usize = 16 * 1024 * 1024;

/// The longest reference looked at (a secret ARN is at most about 2 KB).
const MAX_REFERENCE_BYTES: usize = 2048;

/// The version service: the webhook's state (the current policy, the metrics), its own
/// caches, and the API server that validates tokens.
#[derive(Debug)]
pub struct VersionService {
    state: Arc<AppState>,
    auth: Authenticator,
    learner: Arc<Learner>,
    fleet: Arc<Fleet>,
    bodies: Arc<Semaphore>,
}

/// Why a check got no versions.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    message: String,
    refused: Vec<String>,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Refusal {
            status,
            message: message.into(),
            refused: Vec::new(),
        }
    }

    /// The `kura_version_service_requests_total` outcome.
    fn outcome(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "unauthenticated",
            StatusCode::FORBIDDEN => "forbidden",
            _ => "error",
        }
    }
}

impl VersionService {
    /// `store`: where metadata comes from (the webhook's); `kube`: the API server for
    /// `TokenReview`s; `ttl`: how long what is learned from the store is trusted. Registers
    /// the fleet gauges in the webhook's metrics (one service per [`AppState`]).
    pub fn new(state: Arc<AppState>, store: Store, kube: kube::Client, ttl: Duration) -> Self {
        let calls = state.metrics.version_aws_calls.clone();
        let fleet = Arc::new(Fleet::default());
        state.metrics.register_collector(Box::new(fleet.clone()));
        VersionService {
            auth: Authenticator::new(kube),
            learner: Arc::new(Learner::new(store, ttl, calls)),
            fleet,
            bodies: Arc::new(Semaphore::new(BODY_BUDGET)),
            state,
        }
    }

    /// The agents heard from.
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// What learns versions from the store (its hot prefixes are refreshed by [`start`]).
    pub fn learner(&self) -> &Arc<Learner> {
        &self.learner
    }

    /// Token verdicts held.
    pub fn verdicts_cached(&self) -> usize {
        self.auth.cached()
    }

    /// Answers one check, or says why not.
    async fn check(&self, req: Request) -> Result<VersionsAnswer, Refusal> {
        let authorization = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let identity = self
            .auth
            .authenticate(authorization.as_deref())
            .await
            .map_err(|e| match e {
                AuthError::Unauthenticated(m) => Refusal::new(StatusCode::UNAUTHORIZED, m),
                AuthError::Unavailable(m) => Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("kura could not validate the token: {m}"),
                ),
            })?;
        let body = server::read_limited(&self.bodies, MAX_REQUEST_BYTES, req)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge => Refusal::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "the request body is larger than {} KiB, more than any spec's references",
                        MAX_REQUEST_BYTES / 1024
                    ),
                ),
                BodyError::OverBudget => Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the version service is holding as many request bodies as it may: try again",
                ),
                BodyError::Unreadable(m) => Refusal::new(
                    StatusCode::BAD_REQUEST,
                    format!("the request body could not be read: {m}"),
                ),
            })?;
        let asked = read_check(&body.bytes).map_err(|message| Refusal {
            status: StatusCode::BAD_REQUEST,
            message,
            refused: Vec::new(),
        })?;
        drop(body);
        let namespace = identity.namespace.as_str();
        let pod = identity.pod.as_deref().unwrap_or(&asked.agent.pod);
        // Heard from, whatever the answer: its state is what the fleet gauges are made of.
        self.fleet().heard(namespace, pod, &asked.agent);

        let policy = self.state.admission.policy.policy();
        let refused: Vec<(String, String)> = asked
            .references
            .iter()
            .filter_map(|r| {
                let why = policy.scope.check_id(&r.secret, namespace).err()?;
                Some((r.secret.clone(), why.to_string()))
            })
            .collect();
        if !refused.is_empty() {
            return Err(forbidden(namespace, refused));
        }
        match self
            .learner
            .answer(&asked.references, namespace, &policy.scope)
            .await
        {
            Ok(learn::Learned::Answers(versions)) => {
                debug!(
                    namespace,
                    pod,
                    references = versions.len(),
                    unknown = versions.iter().filter(|v| v.unknown).count(),
                    "versions answered"
                );
                Ok(VersionsAnswer { versions })
            }
            Ok(learn::Learned::Refused(refused)) => Err(forbidden(namespace, refused)),
            Err(e) => Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("kura could not learn the versions from the store: {e}"),
            )),
        }
    }
}

/// A check's body, decoded and checked; the error is the `400` answer's message (it never
/// repeats a scalar of the body but the references it names, each bounded).
pub fn read_check(body: &[u8]) -> Result<VersionsRequest, String> {
    let clip = |m: String| kura_agent::redact::clip(&m, MAX_MESSAGE_CHARS);
    let asked: VersionsRequest = serde_json::from_slice(body).map_err(|e| {
        clip(format!(
            "the body is not a version check (POST {PATH}, JSON {{\"references\": [...], \"agent\": {{...}}}}): {}",
            kura_agent::redact::scalars(&e.to_string())
        ))
    })?;
    check_request(&asked).map_err(|r| clip(r.message))?;
    Ok(asked)
}

/// Longest `400` message, in characters: it may quote the body (an unknown field's name, a
/// reference), which the caller chose.
pub const MAX_MESSAGE_CHARS: usize = 1024;

/// What a check may hold, beyond what its type says.
fn check_request(asked: &VersionsRequest) -> Result<(), Refusal> {
    let bad = |m: String| Err(Refusal::new(StatusCode::BAD_REQUEST, m));
    if asked.references.len() > MAX_REFERENCES {
        return bad(format!(
            "{} references: at most {MAX_REFERENCES} in one check",
            asked.references.len()
        ));
    }
    for r in &asked.references {
        if r.secret.len() > MAX_REFERENCE_BYTES {
            return bad(format!(
                "a reference of {} bytes: at most {MAX_REFERENCE_BYTES}",
                r.secret.len()
            ));
        }
        if let Err(e) = kura_agent::spec::validate_secret_id(&r.secret).and_then(|()| {
            kura_agent::spec::validate_version(
                &r.secret,
                r.version_id.as_deref(),
                r.version_stage.as_deref(),
            )
        }) {
            return bad(format!("reference {:?}: {e}", r.secret));
        }
        // An SSM label is answered `unknown`; a Secrets Manager reference must not be both.
        if !Reference::of(&r.secret).is_parameter()
            && r.version_id.is_some()
            && r.version_stage.is_some()
        {
            return bad(format!(
                "reference {:?}: versionId and versionStage together",
                r.secret
            ));
        }
    }
    check_agent(&asked.agent)
}

fn check_agent(agent: &AgentState) -> Result<(), Refusal> {
    let pod_name = |p: &str| {
        p.len() <= 253
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    if !pod_name(&agent.pod) {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "agent.pod is not a pod name (lowercase letters, digits, '-', '.', at most 253)",
        ));
    }
    if agent.refresh_interval_seconds == 0 {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "agent.refreshIntervalSeconds is 0",
        ));
    }
    Ok(())
}

fn forbidden(namespace: &str, refused: Vec<(String, String)>) -> Refusal {
    let reasons: Vec<String> = refused
        .iter()
        .map(|(r, why)| format!("{r:?}: {why}"))
        .collect();
    Refusal {
        status: StatusCode::FORBIDDEN,
        message: format!(
            "{} reference(s) outside namespace {namespace:?}'s scope (KURA002): {}",
            refused.len(),
            reasons.join("; ")
        ),
        refused: refused.into_iter().map(|(r, _)| r).collect(),
    }
}

/// The version service's router.
pub fn app(vs: Arc<VersionService>) -> Router {
    Router::new().route(PATH, post(versions)).with_state(vs)
}

async fn versions(State(vs): State<Arc<VersionService>>, req: Request) -> Response {
    let answer = match tokio::time::timeout(REQUEST_DEADLINE, vs.check(req)).await {
        Ok(a) => a,
        Err(_) => Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "kura did not answer within {} s",
                REQUEST_DEADLINE.as_secs()
            ),
        )),
    };
    let outcome = match &answer {
        Ok(_) => "ok",
        Err(r) => r.outcome(),
    };
    vs.state
        .metrics
        .version_requests
        .get_or_create(&OutcomeLabels {
            outcome: outcome.into(),
        })
        .inc();
    match answer {
        Ok(versions) => (StatusCode::OK, axum::Json(versions)).into_response(),
        Err(r) => {
            match r.status {
                StatusCode::UNAUTHORIZED => {
                    info!(reason = %r.message, "version check refused: not authenticated")
                }
                StatusCode::FORBIDDEN => {
                    warn!(refused = ?r.refused, reason = %r.message, "version check refused: out of scope")
                }
                StatusCode::SERVICE_UNAVAILABLE => {
                    warn!(reason = %r.message, "version check not answered")
                }
                _ => {
                    info!(status = r.status.as_u16(), reason = %r.message, "version check refused")
                }
            }
            let body = ErrorAnswer {
                message: r.message,
                refused: r.refused,
            };
            (r.status, axum::Json(body)).into_response()
        }
    }
}

/// Starts the version service's HTTPS listener on `listen`, with the webhook's certificate
/// `resolver` and connection `limits` (its own connection count).
pub fn start(
    vs: Arc<VersionService>,
    listen: SocketAddr,
    resolver: Arc<crate::tls::Resolver>,
    limits: &Limits,
) -> Result<server::Listener, server::Error> {
    let counted = ConnectionMetrics {
        open: vs.state.metrics.version_connections_open.clone(),
        refused: vs.state.metrics.version_connections_refused.clone(),
    };
    // Hot prefixes are listed once a TTL from here on, ahead of the agents' checks.
    tokio::spawn(vs.learner.clone().refresh_loop());
    let listener = server::serve_tls(app(vs), listen, resolver, limits, counted)?;
    info!(addr = %listener.addr, "version service listening");
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (`version_protocol`): serde names an unknown field in full, so a 16 KiB
    /// field name made a 16 KiB message.
    #[test]
    fn refusals_are_bounded_whatever_the_body_quotes() {
        let field = "r".repeat(16 * 1024);
        let body = format!(
            r#"{{"{field}": 1, "references": [], "agent": {{"refreshIntervalSeconds": 1}}}}"#
        );
        let e = read_check(body.as_bytes()).expect_err("an unknown field");
        assert!(
            e.chars().count() <= MAX_MESSAGE_CHARS,
            "{} characters",
            e.chars().count()
        );
        assert!(e.contains("not a version check"), "{e}");

        let reference = "\u{1}".repeat(2000);
        let body = serde_json::json!({
            "references": [{"secret": reference}],
            "agent": {"refreshIntervalSeconds": 1},
        });
        let e = read_check(body.to_string().as_bytes()).expect_err("a bad reference");
        assert!(
            e.chars().count() <= MAX_MESSAGE_CHARS,
            "{} characters",
            e.chars().count()
        );
    }
}
