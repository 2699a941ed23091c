//! Logs and metrics. Logs go to stdout as JSON or text with one span per admission; metrics are
//! Prometheus text on their own listener. Neither ever carries a secret value: admission only
//! sees metadata.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Installs the global subscriber. `format`: `json` or `text`. The server logs to stdout at
/// `info`; the CLI commands keep stdout for their output and log warnings to stderr.
pub fn init(format: &str, server: bool) {
    let default = if server {
        "info,aws_config=warn,aws_smithy_runtime=warn,kube=warn"
    } else {
        "warn,kura::admission=off"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KURA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match (format == "json", server) {
        // kura opens one span, the admission's: `span` carries its fields, and the default
        // `spans` list would repeat them on every line.
        (true, true) => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stdout)
            .try_init(),
        (true, false) => builder
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .try_init(),
        (false, true) => builder.with_writer(std::io::stdout).try_init(),
        (false, false) => builder.with_writer(std::io::stderr).try_init(),
    };
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

/// Every metric the webhook exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<EndpointLabels, Histogram>,
    pub rules: Family<RuleLabels, Counter>,
    pub injections: Family<NamespaceLabels, Counter>,
    pub reloads: Family<ResultLabels, Counter>,
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
        Metrics {
            registry: Mutex::new(registry),
            requests,
            latency,
            rules,
            injections,
            reloads,
        }
    }
}

impl Metrics {
    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}
