//! The `kura-agent` command line: `init`, `run`, `ready` and `exec`.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing::{error, info, warn};

use crate::agent::{self, Agent};
use crate::contract::{self, LogFormat, env};
use crate::exec::{self, Exec};
use crate::metrics;
use crate::spec::{EnvOnRotation, Spec};
use crate::store::{Store, StoreSetting};
use crate::version_client::VersionClient;
use crate::writer::AtomicWriter;

#[derive(Debug, Parser)]
#[command(
    name = "kura-agent",
    version,
    about = "Fetches AWS Secrets Manager values into files and keeps them fresh"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(long, env = env::LOG_FORMAT, value_enum, default_value_t = LogFormat::Json, global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fetch every declared secret, write the files and exit.
    #[command(name = contract::AgentCommand::Init.as_str())]
    Init(RunArgs),
    /// Like init, then refresh on rotation until SIGTERM.
    #[command(name = contract::AgentCommand::Run.as_str())]
    Run {
        #[command(flatten)]
        args: RunArgs,
        /// Serve Prometheus metrics at http://ADDR/metrics; loopback addresses only
        /// (127.0.0.1:PORT or [::1]:PORT). Off when unset.
        #[arg(long, env = env::METRICS_LISTEN, value_parser = metrics::parse_listen)]
        metrics_listen: Option<SocketAddr>,
        #[command(flatten)]
        versions: VersionServiceArgs,
    },
    /// Exit 0 once a complete set of files has been written (startup probe).
    #[command(name = contract::AgentCommand::Ready.as_str())]
    Ready {
        /// Directory the files are written to.
        #[arg(long, env = env::DIR, default_value = contract::DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Run a command with the environment variables the agent wrote (wrapped app containers).
    #[command(name = contract::AgentCommand::Exec.as_str())]
    Exec(ExecArgs),
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Directory where the agent's files appear in this container.
    #[arg(long, env = env::EXEC_VALUES_DIR, default_value = contract::DEFAULT_DIR)]
    pub values_dir: PathBuf,
    /// After a rotation: `none`, `restart` or `signal:<SIGNAME>`.
    #[arg(long, env = env::EXEC_ON_ROTATION, default_value = "none", value_parser = parse_on_rotation)]
    pub on_rotation: EnvOnRotation,
    /// Bound on the wait for the agent's first complete write.
    #[arg(long, env = env::EXEC_WAIT, default_value = exec::DEFAULT_WAIT, value_parser = crate::duration::parse)]
    pub wait: Duration,
    /// How long a restart waits after SIGTERM before SIGKILL.
    #[arg(long, env = env::EXEC_GRACE, default_value = exec::DEFAULT_GRACE, value_parser = crate::duration::parse)]
    pub grace: Duration,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, num_args = 1.., value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

fn parse_on_rotation(s: &str) -> Result<EnvOnRotation, String> {
    EnvOnRotation::parse(s).map_err(|e| e.0)
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The secret spec the webhook wrote (JSON).
    #[arg(long, env = env::SPEC, hide_env_values = true)]
    pub spec: String,
    /// Directory the files are written to.
    #[arg(long, env = env::DIR, default_value = contract::DEFAULT_DIR)]
    pub dir: PathBuf,
    /// Secret store: `aws` or `file:PATH`.
    #[arg(long, env = env::STORE, default_value = "aws")]
    pub store: StoreSetting,
    /// Where a failed init leaves its one-line reason.
    #[arg(
        long,
        env = env::TERMINATION_LOG,
        default_value = "/dev/termination-log"
    )]
    pub termination_log: PathBuf,
    /// The pod's annotations through the downward API (for kura.dev/refresh-now).
    #[arg(long, env = env::ANNOTATIONS_FILE)]
    pub annotations_file: Option<PathBuf>,
    /// Bound on one store call, retries included.
    #[arg(long, env = env::STORE_TIMEOUT, default_value = "10s", value_parser = crate::duration::parse)]
    pub store_timeout: Duration,
    /// Copy this binary into DIR (as `kura-agent`, mode 0555) before the first write, for the
    /// app containers' `kura-agent exec`.
    #[arg(long, env = env::EXEC_COPY_TO)]
    pub exec_copy_to: Option<PathBuf>,
    /// How long the first fetch keeps trying, with backoff, while the store throttles or cannot
    /// be reached (0s: fail at the first such error).
    #[arg(long, env = env::INIT_DEADLINE, default_value = agent::DEFAULT_INIT_DEADLINE, value_parser = crate::duration::parse)]
    pub init_deadline: Duration,
}

/// The version service (contract §8), set by the webhook's patch when it is on.
#[derive(Debug, clap::Args)]
pub struct VersionServiceArgs {
    /// The version service's base URL (https://…); each interval asks it what changed and
    /// fetches only that. Off when unset: every interval polls the store directly.
    #[arg(long, env = env::VERSION_SERVICE_URL)]
    pub version_service_url: Option<String>,
    /// The PEM CA certificate(s) that sign the version service's certificate (the text itself).
    #[arg(long, env = env::VERSION_SERVICE_CA)]
    pub version_service_ca: Option<String>,
    /// The projected service-account token presented to the version service (re-read at each
    /// check).
    #[arg(long, env = env::VERSION_SERVICE_TOKEN, default_value = crate::versions::TOKEN_FILE)]
    pub version_service_token: PathBuf,
    /// The pod's name, reported to the version service.
    #[arg(long, env = env::POD_NAME, default_value = "")]
    pub pod_name: String,
}

impl VersionServiceArgs {
    /// The client, or `None` when the service is off. A URL or CA that cannot be used is logged
    /// and the agent polls the store directly: the service is never a reason for a pod to fail.
    fn client(&self) -> Option<VersionClient> {
        let url = self
            .version_service_url
            .as_deref()
            .filter(|u| !u.is_empty())?;
        let Some(ca) = self.version_service_ca.as_deref().filter(|c| !c.is_empty()) else {
            warn!(
                url,
                "the version service has no CA ({}): polling the store directly",
                env::VERSION_SERVICE_CA
            );
            return None;
        };
        match VersionClient::new(url, ca, self.version_service_token.clone()) {
            Ok(c) => {
                info!(url, "asking the version service what changed each interval");
                Some(c)
            }
            Err(e) => {
                warn!(error = %e, "the version service cannot be used: polling the store directly");
                None
            }
        }
    }
}

/// The agent's default log filter: its own lines at `info`, the AWS SDK's at `warn`.
const DEFAULT_LOG_FILTER: &str = "info,aws_config=warn,aws_smithy_runtime=warn";

/// The HTTP layers below the SDK, which trace raw requests and responses (values included).
const HTTP_TARGETS: [&str; 6] = [
    "aws_smithy_runtime",
    "aws_smithy_http",
    "aws_smithy_http_client",
    "hyper",
    "hyper_util",
    "h2",
];

/// A filter beside the one `KURA_LOG` sets, which an event must pass too: the HTTP layers below
/// the SDK and their modules never log below `info`, whatever `KURA_LOG` (the agent's or the
/// webhook's, span directives included) asks for. Everything else passes.
pub fn http_layers_cap() -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    // A `Targets` directive covers every target its name is a prefix of.
    HTTP_TARGETS
        .iter()
        .fold(Targets::new().with_default(LevelFilter::TRACE), |t, h| {
            t.with_target(*h, LevelFilter::INFO)
        })
}

/// The log filter from `KURA_LOG` (`target=level` directives, as `RUST_LOG` writes them), or
/// the default with the reason it was not usable. A `Targets` filter, not an `EnvFilter`: the
/// agent's filter needs no span or field matching, and `EnvFilter` parses its directives with
/// regular expressions, whose compiler was a few hundred KiB of every agent's resident memory.
pub fn log_filter(setting: Option<&str>) -> (tracing_subscriber::filter::Targets, Option<String>) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    let default = || {
        DEFAULT_LOG_FILTER
            .parse::<Targets>()
            .unwrap_or_else(|_| Targets::new().with_default(LevelFilter::INFO))
    };
    match setting.map(str::trim).filter(|s| !s.is_empty()) {
        None => (default(), None),
        Some(s) => match s.parse::<Targets>() {
            Ok(t) => (t, None),
            Err(e) => (
                default(),
                Some(format!(
                    "KURA_LOG is not a filter such as \"info,kura_agent=debug\" ({e}); logging at the default"
                )),
            ),
        },
    }
}

/// A subscriber (the agent's and the webhook's): `filter` (what `KURA_LOG` or the default asks
/// for) decides what is logged, and so does [`http_layers_cap`]; `output` formats and writes
/// what both enable.
pub fn capped_subscriber<F, L>(filter: F, output: L) -> impl tracing::Subscriber + Send + Sync
where
    F: tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
    L: tracing_subscriber::Layer<
            tracing_subscriber::layer::Layered<
                tracing_subscriber::filter::Targets,
                tracing_subscriber::layer::Layered<F, tracing_subscriber::Registry>,
            >,
        > + Send
        + Sync
        + 'static,
{
    use tracing_subscriber::layer::SubscriberExt;
    // Two global filters: an event is logged when both enable it.
    tracing_subscriber::registry()
        .with(filter)
        .with(http_layers_cap())
        .with(output)
}

pub fn init_tracing(format: LogFormat) {
    use tracing_subscriber::util::SubscriberInitExt;
    let setting = std::env::var("KURA_LOG").ok();
    let (filter, problem) = log_filter(setting.as_deref());
    let output = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Json => capped_subscriber(filter, output.json().flatten_event(true)).init(),
        LogFormat::Text => capped_subscriber(filter, output).init(),
    }
    if let Some(problem) = problem {
        warn!("{problem}");
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Ready { dir } => {
            if agent::ready(&dir) {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "not ready: no complete set of files in {} yet",
                    dir.display()
                );
                ExitCode::FAILURE
            }
        }
        Command::Exec(args) => {
            exec::run(Exec {
                values_dir: args.values_dir,
                on_rotation: args.on_rotation,
                wait: args.wait,
                grace: args.grace,
                command: args.command,
            })
            .await
        }
        Command::Init(args) => {
            let termination_log = args.termination_log.clone();
            let built = build(args).await.map(|agent| Built {
                agent,
                mode: Mode::Once,
            });
            finish(&termination_log, built).await
        }
        Command::Run {
            args,
            metrics_listen,
            versions,
        } => {
            let termination_log = args.termination_log.clone();
            let built = match build(args).await {
                Ok(mut agent) => {
                    agent.versions = versions.client();
                    agent.pod = versions.pod_name;
                    serve_metrics(metrics_listen, &agent).await.map(|()| Built {
                        agent,
                        mode: Mode::Follow,
                    })
                }
                Err(e) => Err(e),
            };
            finish(&termination_log, built).await
        }
    }
}

/// An agent ready to start, and what it does once started.
#[derive(Debug)]
struct Built {
    agent: Agent,
    mode: Mode,
}

/// What a built agent does: the one difference between `init` and `run` after start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Fetch and write once (`init`).
    Once,
    /// Fetch, write and follow rotation until a signal (`run`).
    Follow,
}

/// Binds the metrics listener before the first fetch, so a taken port is a clear start error.
async fn serve_metrics(listen: Option<SocketAddr>, agent: &Agent) -> Result<(), agent::Error> {
    let Some(addr) = listen else {
        return Ok(());
    };
    let listener = metrics::bind(addr)
        .await
        .map_err(|e| agent::Error::Usage(format!("--metrics-listen {addr}: {e}")))?;
    info!(%addr, "serving metrics at /metrics");
    let store = agent.store.clone();
    tokio::spawn(metrics::serve(listener, agent.metrics.clone(), move || {
        store.api_calls()
    }));
    Ok(())
}

async fn build(args: RunArgs) -> Result<Agent, agent::Error> {
    let spec = Spec::from_json(&args.spec)?;
    if let Some(dir) = &args.exec_copy_to {
        copy_binary(dir)?;
    }
    let store = Store::open(&args.store, args.store_timeout)
        .await
        .map_err(|e| agent::Error::Store(vec![e]))?;
    let mut agent = Agent::new(spec, store, AtomicWriter::new(args.dir));
    agent.annotations_file = args.annotations_file;
    agent.init_deadline = args.init_deadline;
    Ok(agent)
}

/// The copy step: before the first write, so the binary is there when the startup probe passes
/// and the app containers start.
fn copy_binary(dir: &Path) -> Result<(), agent::Error> {
    let to = exec::install_self(dir).map_err(|e| agent::Error::Usage(e.to_string()))?;
    info!(path = %to.display(), "copied the agent binary for kura-agent exec");
    Ok(())
}

async fn finish(termination_log: &std::path::Path, built: Result<Built, agent::Error>) -> ExitCode {
    let result = match built {
        Ok(Built {
            agent,
            mode: Mode::Once,
        }) => agent.init().await.map(|_| ()),
        Ok(Built {
            agent,
            mode: Mode::Follow,
        }) => agent.run().await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "kura-agent failed");
            agent::write_termination_log(termination_log, &e.to_string());
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// The env twins and subcommand names of the agent's command line are the contract's, so the
    /// webhook's patch and the agent cannot disagree: every `KURA_*` variable the agent reads is
    /// one of [`contract::env`], and each [`contract::AgentCommand`] is a subcommand.
    #[test]
    fn command_line_uses_the_contract() {
        let cli = Cli::command();
        let mut subcommands: Vec<&str> = cli.get_subcommands().map(|c| c.get_name()).collect();
        subcommands.sort_unstable();
        let mut expected: Vec<&str> = [
            contract::AgentCommand::Init,
            contract::AgentCommand::Run,
            contract::AgentCommand::Ready,
            contract::AgentCommand::Exec,
        ]
        .into_iter()
        .map(contract::AgentCommand::as_str)
        .collect();
        expected.sort_unstable();
        assert_eq!(subcommands, expected);

        let mut envs = std::collections::BTreeSet::new();
        let mut args: Vec<&clap::Arg> = cli.get_arguments().collect();
        for sub in cli.get_subcommands() {
            args.extend(sub.get_arguments());
        }
        for arg in args {
            if let Some(e) = arg.get_env() {
                envs.insert(e.to_str().expect("env names are ASCII").to_string());
            }
        }
        let contract_envs: std::collections::BTreeSet<String> = [
            env::SPEC,
            env::DIR,
            env::STORE,
            env::ANNOTATIONS_FILE,
            env::LOG_FORMAT,
            env::METRICS_LISTEN,
            env::STORE_TIMEOUT,
            env::TERMINATION_LOG,
            env::EXEC_COPY_TO,
            env::EXEC_VALUES_DIR,
            env::EXEC_ON_ROTATION,
            env::EXEC_WAIT,
            env::EXEC_GRACE,
            env::INIT_DEADLINE,
            env::VERSION_SERVICE_URL,
            env::VERSION_SERVICE_CA,
            env::VERSION_SERVICE_TOKEN,
            env::POD_NAME,
        ]
        .into_iter()
        .map(str::to_string)
        .collect();
        assert_eq!(envs, contract_envs);

        let dir = cli
            .find_subcommand(contract::AgentCommand::Ready.as_str())
            .and_then(|c| c.get_arguments().find(|a| a.get_id() == "dir"))
            .expect("ready --dir");
        assert_eq!(
            dir.get_default_values(),
            [std::ffi::OsStr::new(contract::DEFAULT_DIR)]
        );
        cli.debug_assert();
    }

    #[test]
    fn exec_takes_the_command_after_the_double_dash_as_it_is() {
        let cli = Cli::try_parse_from([
            "kura-agent",
            "exec",
            "--on-rotation",
            "signal:HUP",
            "--grace",
            "2s",
            "--",
            "app",
            "--grace",
            "-x",
        ])
        .expect("parses");
        let Command::Exec(args) = cli.command else {
            panic!("not exec: {:?}", cli.command);
        };
        assert_eq!(args.command, ["app", "--grace", "-x"]);
        assert_eq!(
            args.on_rotation,
            EnvOnRotation::Signal(crate::spec::Signal::Hup)
        );
        assert_eq!(args.grace, Duration::from_secs(2));
        assert_eq!(args.wait, Duration::from_secs(60));
        assert_eq!(args.values_dir, Path::new(contract::DEFAULT_DIR));

        assert!(
            Cli::try_parse_from(["kura-agent", "exec"]).is_err(),
            "a command is required"
        );
        assert!(
            Cli::try_parse_from(["kura-agent", "exec", "app"]).is_err(),
            "only after --"
        );
        let bad = Cli::try_parse_from(["kura-agent", "exec", "--on-rotation", "reboot", "--", "x"])
            .expect_err("not a rotation action")
            .to_string();
        assert!(bad.contains("restart"), "{bad}");
    }

    #[test]
    fn log_format_parses_into_the_contract_enum() {
        let cli =
            Cli::try_parse_from(["kura-agent", "--log-format", "text", "ready"]).expect("parses");
        assert_eq!(cli.log_format, LogFormat::Text);
        let cli = Cli::try_parse_from(["kura-agent", "ready"]).expect("parses");
        assert_eq!(cli.log_format, LogFormat::Json);
        assert!(Cli::try_parse_from(["kura-agent", "--log-format", "xml", "ready"]).is_err());
    }

    /// Whatever `KURA_LOG` says, the HTTP layers below the SDK (which trace raw responses, values
    /// included) never log below `info`: not through the default, a crate directive, a module
    /// directive or a prefix of their names. The agent's own lines are as asked.
    #[test]
    fn no_log_setting_opens_the_http_layers_below_info() {
        // (setting, whether the agent's error line shows, whether hyper's warning shows)
        for (setting, agent, hyper) in [
            ("trace", true, true),
            ("hyper=trace", false, true),
            ("hyper::proto::h1=trace", false, false),
            ("hyper:=trace", false, true),
            ("hyp=trace", false, true),
            ("aws_smithy=trace", false, false),
            (
                "aws_smithy_runtime::client::orchestrator=debug,kura_agent=trace",
                true,
                false,
            ),
            (
                "warn,h2=trace,hyper_util::client=debug,kura_agent=trace",
                true,
                true,
            ),
        ] {
            let (filter, problem) = log_filter(Some(setting));
            assert_eq!(problem, None, "{setting}");
            let out = testkit::Captured::default();
            let writer = out.clone();
            let output = tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || writer.clone());
            tracing::subscriber::with_default(capped_subscriber(filter, output), || {
                tracing::debug!(target: "hyper::proto::h1::io", "hyper-debug");
                tracing::trace!(target: "hyper_util::client::legacy", "hyper-util-trace");
                tracing::debug!(target: "h2::codec", "h2-debug");
                tracing::trace!(target: "aws_smithy_runtime::client::orchestrator", "smithy-trace");
                tracing::debug!(target: "aws_smithy_http_client::hyper_impl", "client-debug");
                tracing::warn!(target: "hyper::client", "hyper-warn");
                tracing::error!(target: "kura_agent::agent", "agent-error");
            });
            let out = out.text();
            for quiet in [
                "hyper-debug",
                "hyper-util-trace",
                "h2-debug",
                "smithy-trace",
                "client-debug",
            ] {
                assert!(
                    !out.contains(quiet),
                    "KURA_LOG={setting} let {quiet} out:\n{out}"
                );
            }
            assert_eq!(
                out.contains("agent-error"),
                agent,
                "KURA_LOG={setting}:\n{out}"
            );
            assert_eq!(
                out.contains("hyper-warn"),
                hyper,
                "KURA_LOG={setting}:\n{out}"
            );
        }
    }

    #[test]
    fn the_default_log_filter_and_a_bad_setting() {
        use tracing::Level;
        let (filter, problem) = log_filter(None);
        assert_eq!(problem, None);
        assert!(filter.would_enable("kura_agent::agent", &Level::INFO));
        assert!(!filter.would_enable("kura_agent::agent", &Level::DEBUG));
        assert!(!filter.would_enable("aws_config::profile", &Level::INFO));
        assert!(filter.would_enable("aws_config::profile", &Level::WARN));
        let (filter, problem) = log_filter(Some("kura_agent=loud"));
        let problem = problem.expect("a bad setting is reported");
        assert!(problem.contains("KURA_LOG"), "{problem}");
        assert!(filter.would_enable("kura_agent::agent", &Level::INFO));
    }
}
