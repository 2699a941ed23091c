//! The `kura` command line: `serve`, `lint`, `review`, `certs`.
//!
//! Every flag has an environment twin; values are typed and validated into settings before any
//! socket is bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use kura_agent::store::{Store, StoreSetting};
use tracing::{error, info, warn};

use crate::admission::Admission;
use crate::config::{DEFAULT_AGENT_IMAGE, DEFAULT_REFRESH_SECS, InjectConfig, SidecarMode};
use crate::policy::{Policy, PolicyEngine};
use crate::server::{self, AppState};
use crate::telemetry::ResultLabels;
use crate::{lint, tls};

#[derive(Debug, Parser)]
#[command(
    name = "kura",
    version,
    about = "Admission webhook and CLI that keep AWS secrets out of Kubernetes manifests"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(long, env = "KURA_LOG_FORMAT", default_value = "text", value_parser = ["json", "text"], global = true)]
    pub log_format: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the admission webhook.
    Serve(Box<ServeArgs>),
    /// Check manifests against the policy (for CI). Exit 0 clean, 1 violations, 2 usage error.
    Lint(LintArgs),
    /// Print the decision and the mutated pod for one manifest, as the webhook would answer.
    Review(ReviewArgs),
    /// Write a CA and a serving certificate for the webhook Service, and the caBundle.
    Certs(CertsArgs),
}

/// Whether to read namespace labels from the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WatchNamespaces {
    /// When running in a cluster (KUBERNETES_SERVICE_HOST is set).
    Auto,
    Always,
    Never,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address of the HTTPS admission listener.
    #[arg(long, env = "KURA_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// PEM certificate chain; reloaded when it changes.
    #[arg(long, env = "KURA_TLS_CERT", required_unless_present = "self_signed")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key; reloaded when it changes.
    #[arg(long, env = "KURA_TLS_KEY", required_unless_present = "self_signed")]
    pub tls_key: Option<PathBuf>,
    /// Generate a self-signed certificate for localhost at start (local runs only).
    #[arg(long, env = "KURA_SELF_SIGNED", conflicts_with_all = ["tls_cert", "tls_key"])]
    pub self_signed: bool,
    /// Policy file (YAML); reloaded when it changes. Without it the built-in policy applies.
    #[arg(long, env = "KURA_POLICY")]
    pub policy: Option<PathBuf>,
    /// Image of the injected agent.
    #[arg(long, env = "KURA_AGENT_IMAGE", default_value = DEFAULT_AGENT_IMAGE)]
    pub agent_image: String,
    /// Address of the plain-HTTP metrics listener (`/metrics`).
    #[arg(long, env = "KURA_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    pub metrics_listen: SocketAddr,
    /// Where secret metadata comes from: `aws` or `file:PATH`.
    #[arg(long, env = "KURA_STORE", default_value = "aws")]
    pub store: StoreSetting,
    /// `native` sidecars (Kubernetes 1.29+) or `legacy` (init container + sidecar container).
    #[arg(long, env = "KURA_SIDECAR_MODE", value_enum, default_value = "native")]
    pub sidecar_mode: SidecarMode,
    /// Default `kura.dev/refresh-interval`.
    #[arg(long, env = "KURA_REFRESH_INTERVAL", default_value = "2m", value_parser = kura_agent::duration::parse)]
    pub refresh_interval: Duration,
    /// `KURA_STORE` given to injected agents (e.g. `file:/path` for local demos); default: theirs (`aws`).
    #[arg(long, env = "KURA_AGENT_STORE")]
    pub agent_store: Option<String>,
    /// Size limit of the in-memory secrets volume.
    #[arg(long, env = "KURA_VOLUME_SIZE", default_value = "4Mi")]
    pub volume_size: String,
    /// Agent CPU request.
    #[arg(long, env = "KURA_AGENT_CPU_REQUEST", default_value = "5m")]
    pub agent_cpu_request: String,
    /// Agent memory request.
    #[arg(long, env = "KURA_AGENT_MEMORY_REQUEST", default_value = "16Mi")]
    pub agent_memory_request: String,
    /// Agent memory limit.
    #[arg(long, env = "KURA_AGENT_MEMORY_LIMIT", default_value = "32Mi")]
    pub agent_memory_limit: String,
    /// Agent CPU limit (none by default: CPU limits throttle without protecting anything).
    #[arg(long, env = "KURA_AGENT_CPU_LIMIT")]
    pub agent_cpu_limit: Option<String>,
    /// Read `kura.dev/mode` namespace labels from the cluster.
    #[arg(
        long,
        env = "KURA_WATCH_NAMESPACES",
        value_enum,
        default_value = "auto"
    )]
    pub watch_namespaces: WatchNamespaces,
    /// On SIGTERM, how long `/readyz` fails before the listener stops (endpoints catch up).
    #[arg(long, env = "KURA_SHUTDOWN_DELAY", default_value = "5s", value_parser = kura_agent::duration::parse)]
    pub shutdown_delay: Duration,
    /// How long in-flight requests may take to finish once draining.
    #[arg(long, env = "KURA_SHUTDOWN_GRACE", default_value = "10s", value_parser = kura_agent::duration::parse)]
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct LintArgs {
    /// Files or directories of YAML manifests; `-` reads stdin.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    #[arg(long, env = "KURA_POLICY")]
    pub policy: Option<PathBuf>,
    /// Verify store rules against `aws` or `file:PATH`; offline when absent.
    #[arg(long, env = "KURA_LINT_STORE")]
    pub store: Option<StoreSetting>,
    /// Namespace for documents that name none.
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    pub output: Output,
}

#[derive(Debug, clap::Args)]
pub struct ReviewArgs {
    /// A YAML or JSON manifest (Pod or workload), or an AdmissionReview; `-` reads stdin.
    pub file: PathBuf,
    #[arg(long, env = "KURA_POLICY")]
    pub policy: Option<PathBuf>,
    /// Verify store rules against `aws` or `file:PATH`; offline when absent.
    #[arg(long, env = "KURA_REVIEW_STORE")]
    pub store: Option<StoreSetting>,
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    #[arg(long, env = "KURA_AGENT_IMAGE", default_value = DEFAULT_AGENT_IMAGE)]
    pub agent_image: String,
    #[arg(long, env = "KURA_SIDECAR_MODE", value_enum, default_value = "native")]
    pub sidecar_mode: SidecarMode,
}

#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    /// The webhook Service's name.
    #[arg(long, default_value = "kura")]
    pub service: String,
    /// The webhook Service's namespace.
    #[arg(long, default_value = "kura-system")]
    pub namespace: String,
    /// Validity of the serving certificate in days (the CA gets twice as long).
    #[arg(long, default_value_t = 365)]
    pub days: i64,
    /// Directory to write ca.crt, ca.key, tls.crt, tls.key, secret.yaml and ca-bundle.txt into.
    #[arg(long, default_value = "kura-certs")]
    pub out_dir: PathBuf,
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => match serve(*args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!(error = %e, "kura serve failed");
                eprintln!("kura serve: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Lint(args) => lint::lint(args).await,
        Command::Review(args) => lint::review(args).await,
        Command::Certs(args) => match certs(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kura certs: {e}");
                ExitCode::from(2)
            }
        },
    }
}

/// Loads the policy file, or the built-in policy.
pub fn load_policy(path: Option<&Path>) -> Result<Policy, String> {
    match path {
        Some(p) => Policy::load(p).map_err(|e| e.to_string()),
        None => Ok(Policy::default()),
    }
}

/// Opens a store with the policy's deadline.
pub async fn open_store(setting: &StoreSetting, policy: &Policy) -> Result<Store, String> {
    Store::open(setting, policy.store_timeout)
        .await
        .map_err(|e| e.to_string())
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    tls::provider();
    let policy = load_policy(args.policy.as_deref())?;
    let store = open_store(&args.store, &policy).await?;
    let inject = InjectConfig {
        agent_image: args.agent_image.clone(),
        sidecar_mode: args.sidecar_mode,
        default_refresh_secs: args.refresh_interval.as_secs().max(1),
        volume_size_limit: args.volume_size.clone(),
        resources: crate::config::Resources {
            cpu_request: args.agent_cpu_request.clone(),
            memory_request: args.agent_memory_request.clone(),
            memory_limit: args.agent_memory_limit.clone(),
            cpu_limit: args.agent_cpu_limit.clone(),
        },
        agent_store: args.agent_store.clone(),
    };
    if args.refresh_interval.as_secs() != DEFAULT_REFRESH_SECS {
        info!(
            secs = args.refresh_interval.as_secs(),
            "default refresh interval"
        );
    }

    let watch = match args.watch_namespaces {
        WatchNamespaces::Always => true,
        WatchNamespaces::Never => false,
        WatchNamespaces::Auto => std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
    };
    let mut engine = PolicyEngine::new(policy, Some(store));
    let mut namespaces = None;
    if watch {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| format!("cannot reach the cluster: {e}"))?;
        let ns = crate::namespaces::ClusterNamespaces::start(client);
        engine = engine.with_namespaces(ns.clone());
        namespaces = Some(ns);
    }
    let state = AppState::new(Admission::new(inject, engine));

    let resolver = if args.self_signed {
        let pair = tls::self_signed(&["localhost".into(), "127.0.0.1".into(), "::1".into()])
            .map_err(|e| e.to_string())?;
        warn!("serving a self-signed certificate for localhost: for local runs only");
        tls::Resolver::new(tls::certified_key(&pair, "self-signed").map_err(|e| e.to_string())?)
    } else {
        let reloader = tls::CertReloader {
            cert_path: args
                .tls_cert
                .clone()
                .ok_or("--tls-cert is required without --self-signed")?,
            key_path: args
                .tls_key
                .clone()
                .ok_or("--tls-key is required without --self-signed")?,
        };
        let resolver = tls::Resolver::new(reloader.read().map_err(|e| e.to_string())?);
        tokio::spawn(reloader.watch(resolver.clone(), Duration::from_secs(2)));
        resolver
    };

    if let Some(ns) = namespaces {
        state.ready.store(false, Ordering::Relaxed);
        let st = state.clone();
        tokio::spawn(async move {
            if ns.synced().await {
                info!("namespace labels synced; ready");
                st.ready.store(true, Ordering::Relaxed);
            }
        });
    }
    if let Some(path) = args.policy.clone() {
        tokio::spawn(watch_policy(state.clone(), path));
    }

    let running = server::start(
        state.clone(),
        args.listen,
        Some(args.metrics_listen),
        resolver,
    )
    .await
    .map_err(|e| e.to_string())?;
    // Registered once, so a second signal that arrives right after the first is not lost.
    let mut signals = Signals::new();
    signals.recv().await;
    info!(delay = ?args.shutdown_delay, "shutting down: /readyz now fails");
    state.ready.store(false, Ordering::Relaxed);
    tokio::spawn(async move {
        signals.recv().await;
        warn!("second signal: exiting now");
        crate::telemetry::flush_logs();
        std::process::exit(130);
    });
    tokio::time::sleep(args.shutdown_delay).await;
    running.drain(args.shutdown_grace).await;
    info!("drained; bye");
    Ok(())
}

/// SIGTERM and SIGINT.
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        Signals {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    /// Waits for either; without handlers the process can only be killed, so it keeps serving.
    async fn recv(&mut self) {
        match (&mut self.term, &mut self.int) {
            (Some(t), Some(i)) => {
                tokio::select! {
                    _ = t.recv() => {}
                    _ = i.recv() => {}
                }
            }
            (Some(t), None) => {
                t.recv().await;
            }
            (None, Some(i)) => {
                i.recv().await;
            }
            (None, None) => std::future::pending::<()>().await,
        }
    }
}

/// Reloads the policy when its file changes; a bad file is refused and the last good policy kept.
async fn watch_policy(state: Arc<AppState>, path: PathBuf) {
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    };
    let mut last = stamp(&path);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = stamp(&path);
        if now == last {
            continue;
        }
        last = now;
        match Policy::load(&path) {
            Ok(p) => {
                state.admission.policy.replace(p);
                state
                    .metrics
                    .reloads
                    .get_or_create(&ResultLabels {
                        result: "policy-ok".into(),
                    })
                    .inc();
                info!(path = %path.display(), "policy reloaded");
            }
            Err(e) => {
                state
                    .metrics
                    .reloads
                    .get_or_create(&ResultLabels {
                        result: "policy-refused".into(),
                    })
                    .inc();
                warn!(error = %e, "new policy refused; keeping the last good one");
            }
        }
    }
}

fn certs(args: &CertsArgs) -> Result<(), String> {
    use base64::Engine;
    tls::provider();
    let names = tls::service_names(&args.service, &args.namespace);
    let (ca_crt, ca_key) = (args.out_dir.join("ca.crt"), args.out_dir.join("ca.key"));
    let b = match (
        std::fs::read_to_string(&ca_crt),
        std::fs::read_to_string(&ca_key),
    ) {
        // Renewal: keep the CA, so the webhooks' caBundle does not change.
        (Ok(cert), Ok(key)) => {
            eprintln!(
                "reusing the CA in {} (delete ca.crt and ca.key to make a new one)",
                args.out_dir.display()
            );
            tls::renew_with_ca(&tls::PemPair { cert, key }, names, args.days)
        }
        _ => tls::bundle_for(names, args.days),
    }
    .map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&args.out_dir)
        .map_err(|e| format!("{}: {e}", args.out_dir.display()))?;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: kura-tls\n  namespace: {ns}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {crt}\n  tls.key: {key}\n  ca.crt: {ca}\n",
        ns = args.namespace,
        crt = b64(&b.serving.cert),
        key = b64(&b.serving.key),
        ca = b64(&b.ca.cert),
    );
    let files: [(&str, &str, u32); 6] = [
        ("ca.crt", &b.ca.cert, 0o644),
        ("ca.key", &b.ca.key, 0o600),
        ("tls.crt", &b.serving.cert, 0o644),
        ("tls.key", &b.serving.key, 0o600),
        ("secret.yaml", &secret, 0o600),
        ("ca-bundle.txt", &b64(&b.ca.cert), 0o644),
    ];
    for (name, content, mode) in files {
        let path = args.out_dir.join(name);
        write_private(&path, content.as_bytes(), mode)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    println!(
        "wrote {dir}/{{ca.crt,ca.key,tls.crt,tls.key,secret.yaml,ca-bundle.txt}} for {svc}.{ns}.svc (valid {days} days)\n\
         apply: kubectl apply -f {dir}/secret.yaml\n\
         caBundle: the content of {dir}/ca-bundle.txt (see deploy/overlays/kura-certs)",
        dir = args.out_dir.display(),
        svc = args.service,
        ns = args.namespace,
        days = args.days
    );
    Ok(())
}

fn write_private(path: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    f.write_all(content)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}
