//! `kura serve`: validate the settings into a [`Config`], then open the store, reach the
//! cluster, bind the listeners, and serve until a signal ([`crate::shutdown`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::ValueEnum;
use kura_agent::store::{Store, StoreSetting};
use tracing::{info, warn};

use super::Result;
use crate::admission::Admission;
use crate::config::{self, Config, TlsSource};
use crate::inject::{
    DEFAULT_AGENT_IMAGE, DEFAULT_REFRESH_SECS, InjectConfig, Resources, SidecarMode,
};
use crate::policy::PolicyEngine;
use crate::server::{self, AppState};
use crate::version_service::VersionService;
use crate::{shutdown, tls};

/// Whether to read namespace labels from the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WatchNamespaces {
    /// When running in a cluster (KUBERNETES_SERVICE_HOST is set).
    Auto,
    Always,
    Never,
}

#[derive(Debug, clap::Args)]
pub struct Args {
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
    /// How often the certificate and policy files are checked for changes.
    // The default is `kura_agent::watch::DEFAULT_INTERVAL` (a test holds them equal).
    #[arg(long, env = "KURA_WATCH_INTERVAL", default_value = "2s", value_parser = kura_agent::duration::parse)]
    pub watch_interval: Duration,
    /// On SIGTERM, how long `/readyz` fails before the listener stops (endpoints catch up).
    #[arg(long, env = "KURA_SHUTDOWN_DELAY", default_value = "5s", value_parser = kura_agent::duration::parse)]
    pub shutdown_delay: Duration,
    /// How long in-flight requests may take to finish once draining.
    #[arg(long, env = "KURA_SHUTDOWN_GRACE", default_value = "10s", value_parser = kura_agent::duration::parse)]
    pub shutdown_grace: Duration,
    /// Open admission connections at most; past this a new one is closed at once (and counted
    /// in `kura_connections_refused_total`). Lowered to fit the open-files limit.
    #[arg(long, env = "KURA_MAX_CONNECTIONS", default_value = "4096")]
    pub max_connections: usize,
    /// A connection with no byte in either direction for this long is closed.
    #[arg(long, env = "KURA_IDLE_TIMEOUT", default_value = "60s", value_parser = kura_agent::duration::parse)]
    pub idle_timeout: Duration,
    /// A client must send a request's headers within this time, and a connection (HTTP/1.1 or
    /// HTTP/2) with no request in progress for this long is closed.
    #[arg(long, env = "KURA_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = kura_agent::duration::parse)]
    pub header_read_timeout: Duration,
    /// Request bodies held at once, all requests together, in MiB (at least 3, one body at the
    /// 3 MiB limit); past it a request waits up to 1 s, then gets a 503.
    #[arg(long, env = "KURA_BODY_BUDGET_MIB", default_value = "64")]
    pub body_budget_mib: usize,
    /// Address of the version service's HTTPS listener (contract §8); off when not set.
    #[arg(long, env = "KURA_VERSION_SERVICE_LISTEN")]
    pub version_service_listen: Option<SocketAddr>,
    /// The version service's URL as agents reach it (`https://<service>.<namespace>.svc:8444`);
    /// when set, the patch points agents at it with a projected token.
    #[arg(
        long,
        env = "KURA_VERSION_SERVICE_URL",
        requires = "version_service_ca"
    )]
    pub version_service_url: Option<String>,
    /// PEM CA certificate agents trust for the version service (the serving Secret's `ca.crt`).
    #[arg(long, env = "KURA_VERSION_SERVICE_CA")]
    pub version_service_ca: Option<PathBuf>,
    /// How often the version service lists the secrets agents ask about (every hot scope
    /// prefix, ten a `ListSecrets` call) and how long what it learned is trusted: a rotation
    /// reaches agents within this plus their refresh interval.
    #[arg(long, env = "KURA_VERSION_SERVICE_TTL", default_value = "5s", value_parser = kura_agent::duration::parse)]
    pub version_service_ttl: Duration,
}

impl Args {
    /// Validates the settings: everything that can be checked without binding a socket,
    /// opening the store or reaching the cluster. Reads the policy file.
    pub fn config(self) -> Result<Config, config::Error> {
        let tls = if self.self_signed {
            TlsSource::SelfSigned
        } else {
            TlsSource::Files {
                cert: self
                    .tls_cert
                    .ok_or(config::Error::Missing { flag: "tls-cert" })?,
                key: self
                    .tls_key
                    .ok_or(config::Error::Missing { flag: "tls-key" })?,
            }
        };
        let inject = InjectConfig {
            agent_image: self.agent_image,
            sidecar_mode: self.sidecar_mode,
            default_refresh_secs: self.refresh_interval.as_secs().max(1),
            volume_size_limit: self.volume_size,
            resources: Resources {
                cpu_request: self.agent_cpu_request,
                memory_request: self.agent_memory_request,
                memory_limit: self.agent_memory_limit,
                cpu_limit: self.agent_cpu_limit,
            },
            agent_store: self.agent_store,
            version_service: match (&self.version_service_url, &self.version_service_ca) {
                (Some(url), Some(ca)) => Some(crate::inject::AgentVersionService {
                    url: url.clone(),
                    ca_pem: config::read_ca(ca)?,
                }),
                _ => None,
            },
        };
        inject.validate()?;
        if self.watch_interval.is_zero() {
            return Err(config::Error::Zero {
                flag: "watch-interval",
            });
        }
        for (flag, zero) in [
            ("max-connections", self.max_connections == 0),
            ("idle-timeout", self.idle_timeout.is_zero()),
            ("header-read-timeout", self.header_read_timeout.is_zero()),
        ] {
            if zero {
                return Err(config::Error::Zero { flag });
            }
        }
        if self.body_budget_mib < server::BODY_LIMIT / (1024 * 1024) {
            return Err(config::Error::Invalid {
                flag: "body-budget-mib",
                message: format!(
                    "{} MiB cannot hold one body at the {} MiB limit",
                    self.body_budget_mib,
                    server::BODY_LIMIT / (1024 * 1024)
                ),
            });
        }
        if self.version_service_ttl.is_zero() {
            return Err(config::Error::Zero {
                flag: "version-service-ttl",
            });
        }
        let policy = config::load_policy(self.policy.as_deref())?;
        Ok(Config {
            version_service: self
                .version_service_listen
                .map(|listen| config::VersionService {
                    listen,
                    ttl: self.version_service_ttl,
                }),
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            tls,
            policy,
            policy_file: self.policy,
            store: self.store,
            inject,
            watch_namespaces: match self.watch_namespaces {
                WatchNamespaces::Always => true,
                WatchNamespaces::Never => false,
                WatchNamespaces::Auto => std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
            },
            watch_interval: self.watch_interval,
            shutdown: shutdown::Timing {
                delay: self.shutdown_delay,
                grace: self.shutdown_grace,
            },
            limits: server::Limits {
                max_connections: self.max_connections,
                idle_timeout: self.idle_timeout,
                header_read_timeout: self.header_read_timeout,
                body_budget: self.body_budget_mib.saturating_mul(1024 * 1024),
            },
        })
    }
}

/// `kura serve`: validates the settings, then serves until a signal and drains.
pub async fn run(args: Args) -> Result<()> {
    tls::provider();
    serve(args.config()?).await
}

/// Serves a validated configuration until a signal, then drains.
pub async fn serve(config: Config) -> Result<()> {
    let Config {
        listen,
        metrics_listen,
        tls,
        policy,
        policy_file,
        store,
        inject,
        watch_namespaces,
        watch_interval,
        shutdown,
        mut limits,
        version_service,
    } = config;
    let fd_limit = server::raise_fd_limit();
    limits.max_connections = server::connection_cap(limits.max_connections, fd_limit);
    info!(
        open_files = fd_limit,
        max_connections = limits.max_connections,
        "connection limits"
    );
    let store = Store::open(&store, policy.store_timeout).await?;
    if inject.default_refresh_secs != DEFAULT_REFRESH_SECS {
        info!(
            secs = inject.default_refresh_secs,
            "default refresh interval"
        );
    }

    // The version service shares the webhook's store (its client and call counter).
    let versions_store = version_service.as_ref().map(|_| store.clone());
    let mut engine = PolicyEngine::new(policy, Some(store));
    let mut namespaces = None;
    let mut cluster = None;
    if watch_namespaces {
        let client = kube::Client::try_default().await?;
        let ns = crate::namespaces::ClusterNamespaces::start(client.clone());
        engine = engine.with_namespaces(ns.clone());
        namespaces = Some(ns);
        cluster = Some(client);
    }
    // Validating agents' tokens needs the API server whether or not labels are watched.
    let versions = match (&version_service, versions_store) {
        (Some(vs), Some(store)) => {
            let client = match cluster {
                Some(c) => c,
                None => kube::Client::try_default().await?,
            };
            Some((vs.clone(), store, client))
        }
        _ => None,
    };
    let state = AppState::with_limits(Admission::new(inject, engine), &limits);

    let resolver = match tls {
        TlsSource::SelfSigned => {
            let pair = tls::self_signed(&["localhost".into(), "127.0.0.1".into(), "::1".into()])?;
            warn!("serving a self-signed certificate for localhost: for local runs only");
            tls::Resolver::new(tls::certified_key(&pair, "self-signed")?)
        }
        TlsSource::Files { cert, key } => {
            let reloader = tls::CertReloader {
                cert_path: cert,
                key_path: key,
            };
            let resolver = tls::Resolver::new(reloader.read()?);
            tokio::spawn(reloader.watch(resolver.clone(), watch_interval));
            resolver
        }
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
    if let Some(path) = policy_file {
        let st = state.clone();
        tokio::spawn(async move {
            let (engine, reloads) = (&st.admission.policy, &st.metrics.reloads);
            crate::policy::watch::reload_on_change(engine, &path, watch_interval, reloads).await
        });
    }

    let mut running = server::start(
        state.clone(),
        listen,
        Some(metrics_listen),
        resolver.clone(),
        limits,
    )
    .await?;
    if let Some((settings, store, client)) = versions {
        let service = VersionService::new(state.clone(), store, client, settings.ttl);
        running.add(crate::version_service::start(
            Arc::new(service),
            settings.listen,
            resolver,
            &limits,
        )?);
    }
    shutdown::on_signal(&state.ready, running, shutdown).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::{CommandFactory, Parser};

    fn args(extra: &[&str]) -> Args {
        let store = concat!(
            "--store=file:",
            env!("CARGO_MANIFEST_DIR"),
            "/examples/store.yaml"
        );
        let base = ["kura", "serve", "--watch-namespaces=never", store];
        let cli = Cli::try_parse_from(base.iter().chain(extra)).expect("parses");
        match cli.command {
            Command::Serve(a) => *a,
            other => panic!("not serve: {other:?}"),
        }
    }

    #[test]
    fn the_watch_interval_defaults_to_the_shared_one() {
        let cmd = Cli::command();
        let serve = cmd.find_subcommand("serve").expect("serve");
        let arg = serve
            .get_arguments()
            .find(|a| a.get_id() == "watch_interval")
            .expect("--watch-interval");
        let default = arg.get_default_values()[0].to_str().expect("UTF-8");
        assert_eq!(
            kura_agent::duration::parse(default).expect("parses"),
            kura_agent::watch::DEFAULT_INTERVAL
        );
        assert_eq!(
            args(&["--self-signed"]).watch_interval,
            kura_agent::watch::DEFAULT_INTERVAL
        );
    }

    #[test]
    fn bad_settings_are_refused_and_name_their_flag() {
        let cases: [(&[&str], &str); 6] = [
            (&["--self-signed", "--volume-size=4MB"], "--volume-size"),
            (
                &["--self-signed", "--agent-memory-limit=lots"],
                "--agent-memory-limit",
            ),
            (
                &["--self-signed", "--watch-interval=0s"],
                "--watch-interval",
            ),
            (&["--self-signed", "--agent-store=s3://x"], "--agent-store"),
            (
                &["--self-signed", "--policy=/nonexistent/policy.yaml"],
                "/nonexistent/policy.yaml",
            ),
            (
                &[
                    "--tls-cert=/tmp/c.pem",
                    "--tls-key=/tmp/k.pem",
                    "--agent-cpu-request=-5m",
                ],
                "--agent-cpu-request",
            ),
        ];
        for (extra, named) in cases {
            let e = args(extra).config().expect_err("refused").to_string();
            assert!(e.contains(named), "{extra:?}: {e}");
        }
        let mut a = args(&["--self-signed"]);
        a.self_signed = false;
        a.tls_key = Some("/tmp/k.pem".into());
        let e = a.config().expect_err("no certificate");
        assert!(
            matches!(e, config::Error::Missing { flag: "tls-cert" }),
            "{e}"
        );

        let c = args(&[
            "--self-signed",
            "--agent-cpu-limit=500m",
            "--refresh-interval=30s",
        ])
        .config()
        .expect("valid");
        assert_eq!(c.tls, TlsSource::SelfSigned);
        assert_eq!(c.inject.resources.cpu_limit.as_deref(), Some("500m"));
        assert_eq!(c.inject.default_refresh_secs, 30);
        assert!(!c.watch_namespaces);
    }

    /// The listen address is held here: had serve bound before validating, it would fail to
    /// bind, not refuse the setting.
    #[tokio::test]
    async fn a_bad_config_is_refused_before_anything_binds() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = held.local_addr().expect("addr").to_string();
        let listen = format!("--listen={addr}");
        let metrics = format!("--metrics-listen={addr}");
        let bad = args(&["--self-signed", &listen, &metrics, "--volume-size=4 MiB"]);
        let e = run(bad).await.expect_err("refused");
        assert!(
            matches!(
                e,
                crate::cli::Error::Config(config::Error::Quantity {
                    flag: "volume-size",
                    ..
                })
            ),
            "{e}"
        );
        // The same settings with a valid size get as far as binding, and fail there.
        let good = args(&["--self-signed", &listen, &metrics]);
        let e = run(good).await.expect_err("the address is taken");
        assert!(matches!(e, crate::cli::Error::Server(_)), "{e}");
    }
}
