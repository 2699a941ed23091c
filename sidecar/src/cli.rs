//! The `kura-agent` command line: `init`, `run` and `ready`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing::{error, info};

use crate::agent::{self, Agent};
use crate::metrics::{self, Metrics};
use crate::spec::Spec;
use crate::store::{Store, StoreSetting};
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
    #[arg(long, env = "KURA_LOG_FORMAT", default_value = "json", value_parser = ["json", "text"], global = true)]
    pub log_format: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fetch every declared secret, write the files and exit.
    Init(RunArgs),
    /// Like init, then refresh on rotation until SIGTERM.
    Run {
        #[command(flatten)]
        args: RunArgs,
        /// Serve Prometheus metrics at http://ADDR/metrics; loopback addresses only
        /// (127.0.0.1:PORT or [::1]:PORT). Off when unset.
        #[arg(long, env = "KURA_METRICS_LISTEN", value_parser = metrics::parse_listen)]
        metrics_listen: Option<SocketAddr>,
    },
    /// Exit 0 once a complete set of files has been written (startup probe).
    Ready {
        /// Directory the files are written to.
        #[arg(long, env = "KURA_DIR", default_value = "/var/run/secrets/kura")]
        dir: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The secret spec the webhook wrote (JSON).
    #[arg(long, env = "KURA_SPEC", hide_env_values = true)]
    pub spec: String,
    /// Directory the files are written to.
    #[arg(long, env = "KURA_DIR", default_value = "/var/run/secrets/kura")]
    pub dir: PathBuf,
    /// Secret store: `aws` or `file:PATH`.
    #[arg(long, env = "KURA_STORE", default_value = "aws")]
    pub store: StoreSetting,
    /// Where a failed init leaves its one-line reason.
    #[arg(
        long,
        env = "KURA_TERMINATION_LOG",
        default_value = "/dev/termination-log"
    )]
    pub termination_log: PathBuf,
    /// The pod's annotations through the downward API (for kura.dev/refresh-now).
    #[arg(long, env = "KURA_ANNOTATIONS_FILE")]
    pub annotations_file: Option<PathBuf>,
    /// Bound on one store call, retries included.
    #[arg(long, env = "KURA_STORE_TIMEOUT", default_value = "10s", value_parser = crate::duration::parse)]
    pub store_timeout: Duration,
}

pub fn init_tracing(format: &str) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("KURA_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,aws_config=warn,aws_smithy_runtime=warn")
    });
    // The HTTP layers below the SDK trace raw responses, which carry secret values: whatever
    // KURA_LOG asks for, they never log below info.
    for target in [
        "aws_smithy_runtime",
        "aws_smithy_http",
        "aws_smithy_http_client",
        "hyper",
        "hyper_util",
        "h2",
    ] {
        if let Ok(d) = format!("{target}=info").parse() {
            filter = filter.add_directive(d);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
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
        Command::Init(args) => {
            finish(
                &args.termination_log.clone(),
                build(args).await.map(|a| (a, true)),
            )
            .await
        }
        Command::Run {
            args,
            metrics_listen,
        } => {
            let termination_log = args.termination_log.clone();
            let built = match build(args).await {
                Ok(a) => serve_metrics(metrics_listen, &a).await.map(|()| (a, false)),
                Err(e) => Err(e),
            };
            finish(&termination_log, built).await
        }
    }
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
    tokio::spawn(metrics::serve(
        listener,
        agent.metrics.clone(),
        agent.store.clone(),
    ));
    Ok(())
}

async fn build(args: RunArgs) -> Result<Agent, agent::Error> {
    let spec = Spec::from_json(&args.spec)?;
    let store = Store::open(&args.store, args.store_timeout)
        .await
        .map_err(|e| agent::Error::Store(vec![e]))?;
    Ok(Agent {
        spec,
        store,
        writer: AtomicWriter::new(args.dir),
        annotations_file: args.annotations_file,
        metrics: Arc::new(Metrics::default()),
    })
}

async fn finish(
    termination_log: &std::path::Path,
    built: Result<(Agent, bool), agent::Error>,
) -> ExitCode {
    let result = match built {
        Ok((a, true)) => a.init().await.map(|_| ()),
        Ok((a, false)) => a.run().await,
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
