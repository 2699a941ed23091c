//! Logs and metrics. Logs go to stdout as JSON or text with one span per admission; metrics are
//! Prometheus text on their own listener. Neither ever carries a secret value: admission only
//! sees metadata.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::wire::logs::{Batched, Batcher, JsonLines, JsonMembers};

/// The server's batched stdout, once [`init`] set it up.
static SERVER_LOGS: OnceLock<Arc<Batcher>> = OnceLock::new();

/// Writes the server's pending log lines now: before `std::process::exit`, which skips
/// destructors (and so [`LogGuard`]).
pub fn flush_logs() {
    if let Some(b) = SERVER_LOGS.get() {
        let _ = b.flush();
    }
}

/// Flushes the server's batched log lines when dropped: hold it until the process ends.
#[derive(Debug)]
#[must_use = "dropping the guard flushes the logs; hold it until exit"]
pub struct LogGuard(());

impl Drop for LogGuard {
    fn drop(&mut self) {
        flush_logs();
    }
}

/// Installs the global subscriber. `format`: `json` or `text`. The server logs to stdout at
/// `info`, in batches (see [`Batcher`]); the CLI commands keep stdout for their output and log
/// warnings to stderr, unbuffered.
pub fn init(format: &str, server: bool) -> LogGuard {
    use tracing_subscriber::util::SubscriberInitExt;
    let default = if server {
        "info,aws_config=warn,aws_smithy_runtime=warn,kube=warn"
    } else {
        "warn,kura::admission=off"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KURA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let terminal = if server {
        std::io::stdout().is_terminal()
    } else {
        std::io::stderr().is_terminal()
    };
    let ansi = colored(terminal, std::env::var_os("NO_COLOR").as_deref());
    let output = tracing_subscriber::fmt::layer().with_ansi(ansi);
    let batcher = Batcher::new(Box::new(std::io::stdout()));
    let stdout = Batched(batcher.clone());
    // `filter` (`KURA_LOG`, an `EnvFilter`, or the default) and the agent's cap on the HTTP
    // layers (`kura_agent::cli::http_layers_cap`) both decide: admission reviews carry pod specs
    // (plaintext credentials among them, which kura exists to refuse) and the version service's
    // TokenReviews carry tokens, so hyper, h2 and the AWS SDK's HTTP layers never log below
    // `info`, whatever `KURA_LOG` asks, span directives included.
    let _ = match (format == "json", server) {
        // kura opens one span, the admission's: `span` carries its fields, and the default
        // `spans` list would repeat them on every line.
        (true, true) => kura_agent::cli::capped_subscriber(
            filter,
            output
                .fmt_fields(JsonMembers)
                .event_format(JsonLines)
                .with_writer(stdout),
        )
        .try_init(),
        (true, false) => kura_agent::cli::capped_subscriber(
            filter,
            output
                .json()
                .flatten_event(true)
                .with_writer(std::io::stderr),
        )
        .try_init(),
        (false, true) => {
            kura_agent::cli::capped_subscriber(filter, output.with_writer(stdout)).try_init()
        }
        (false, false) => {
            kura_agent::cli::capped_subscriber(filter, output.with_writer(std::io::stderr))
                .try_init()
        }
    };
    if server {
        if let Err(e) = batcher.start() {
            eprintln!("kura: cannot start the logging thread, logging unbatched: {e}");
        }
        let _ = SERVER_LOGS.set(batcher);
    }
    LogGuard(())
}

/// Whether text logs are coloured: only on a terminal, and not when `NO_COLOR` is set
/// (<https://no-color.org>). Files, pipes and `kubectl logs` get plain text; tracing-subscriber
/// colours by default wherever the output goes.
fn colored(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: String,
    pub decision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub rule: String,
    pub decision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabels {
    pub namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailingLabels {
    pub namespace: String,
    pub error_kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    pub api: String,
}

/// The outcomes of a version check (`kura_version_service_requests_total{outcome}`).
pub const VERSION_OUTCOMES: [&str; 4] = ["ok", "unauthenticated", "forbidden", "error"];

/// Every metric the webhook exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<EndpointLabels, Histogram>,
    pub rules: Family<RuleLabels, Counter>,
    pub injections: Family<NamespaceLabels, Counter>,
    pub reloads: Family<ResultLabels, Counter>,
    /// Open admission connections (TLS handshake included).
    pub connections_open: Gauge,
    /// Connections closed at once because [`crate::server::Limits::max_connections`] were open.
    pub connections_refused: Counter,
    /// The served certificate's notAfter (Unix seconds), set by [`crate::tls::Resolver`].
    pub certificate_expiry: Gauge,
    /// Version checks by outcome (contract §8).
    pub version_requests: Family<OutcomeLabels, Counter>,
    /// The version service's AWS calls, by API.
    pub version_aws_calls: Family<ApiLabels, Counter>,
    /// Open connections to the version service's listener.
    pub version_connections_open: Gauge,
    /// Connections to it closed at once: the connection cap was reached.
    pub version_connections_refused: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kura");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ])
        });
        let rules = Family::<RuleLabels, Counter>::default();
        let injections = Family::<NamespaceLabels, Counter>::default();
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "admission_requests",
            "Admission requests by endpoint and decision",
            requests.clone(),
        );
        registry.register(
            "admission_duration_seconds",
            "Time to answer an admission request",
            latency.clone(),
        );
        registry.register(
            "rule_hits",
            "Policy findings by rule id and decision",
            rules.clone(),
        );
        registry.register(
            "injections",
            "Pods injected, by namespace",
            injections.clone(),
        );
        registry.register(
            "reloads",
            "Policy and certificate reloads by result",
            reloads.clone(),
        );
        let connections_open = Gauge::default();
        let connections_refused = Counter::default();
        registry.register(
            "connections_open",
            "Open connections to the admission listener",
            connections_open.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections to the admission listener closed at once: the connection cap was reached",
            connections_refused.clone(),
        );
        let certificate_expiry = Gauge::default();
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When the certificate the admission listener serves expires (its notAfter, Unix seconds)",
            certificate_expiry.clone(),
        );
        let version_requests = Family::<OutcomeLabels, Counter>::default();
        for outcome in VERSION_OUTCOMES {
            version_requests
                .get_or_create(&OutcomeLabels {
                    outcome: outcome.into(),
                })
                .inc_by(0);
        }
        registry.register(
            "version_service_requests",
            "Version checks by outcome: ok, unauthenticated, forbidden, error",
            version_requests.clone(),
        );
        let version_aws_calls = Family::<ApiLabels, Counter>::default();
        registry.register(
            "version_service_aws_calls",
            "AWS calls the version service made, by API (ListSecrets pages, DescribeSecret, DescribeParameters)",
            version_aws_calls.clone(),
        );
        let version_connections_open = Gauge::default();
        let version_connections_refused = Counter::default();
        registry.register(
            "version_service_connections_open",
            "Open connections to the version service's listener",
            version_connections_open.clone(),
        );
        registry.register(
            "version_service_connections_refused",
            "Connections to the version service's listener closed at once: the connection cap was reached",
            version_connections_refused.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            version_requests,
            version_aws_calls,
            version_connections_open,
            version_connections_refused,
            certificate_expiry,
            connections_open,
            connections_refused,
            requests,
            latency,
            rules,
            injections,
            reloads,
        }
    }
}

impl Metrics {
    /// Adds metrics computed at each scrape (the version service's fleet gauges).
    pub fn register_collector(&self, collector: Box<dyn prometheus_client::collector::Collector>) {
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .register_collector(collector);
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The HTTP layers (which see admission bodies and tokens) never log below `info`, whatever
    /// `KURA_LOG` says: a default, a module directive, a span directive on the admission span.
    #[test]
    fn no_log_setting_opens_the_http_layers_below_info() {
        for setting in [
            "trace",
            "hyper::proto::h1=trace,kura=debug",
            "[admission]=trace",
            "kura=info,[admission{uid}]=trace,h2=debug",
        ] {
            let out = testkit::Captured::default();
            let writer = out.clone();
            let output = tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || writer.clone());
            let sub = kura_agent::cli::capped_subscriber(
                tracing_subscriber::EnvFilter::new(setting),
                output,
            );
            tracing::subscriber::with_default(sub, || {
                let span = tracing::info_span!(target: "kura::admission", "admission", uid = "u1");
                let _in = span.enter();
                tracing::debug!(target: "hyper::proto::h1::io", "hyper-debug");
                tracing::trace!(target: "h2::codec::framed_read", "h2-trace");
                tracing::debug!(target: "aws_smithy_runtime::client::orchestrator", "smithy-debug");
                tracing::info!(target: "kura::admission", "kura-info");
            });
            let out = out.text();
            for quiet in ["hyper-debug", "h2-trace", "smithy-debug"] {
                assert!(
                    !out.contains(quiet),
                    "KURA_LOG={setting} let {quiet} out:\n{out}"
                );
            }
            assert!(out.contains("kura-info"), "KURA_LOG={setting}:\n{out}");
        }
    }

    #[test]
    fn text_logs_are_coloured_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colored(true, None));
        assert!(colored(true, Some(OsStr::new(""))));
        assert!(!colored(true, Some(OsStr::new("1"))));
        assert!(!colored(false, None));
    }
}
