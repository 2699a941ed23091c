//! The `kura` command line: one file per command, each owning its arguments and its `run`.
//!
//! [`serve`] runs the webhook, [`lint`] and [`review`] run its decision code over manifests
//! (sharing [`manifests`]), [`certs`] writes the webhook's certificates. Every flag has an
//! environment twin; values are typed, and `serve` validates them into a
//! [`Config`](crate::config::Config) before any socket is bound.

pub mod certs;
pub mod lint;
pub mod manifests;
pub mod review;
pub mod serve;
pub mod yaml;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kura_agent::contract::LogFormat;
use tracing::error;

pub use serve::WatchNamespaces;

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
    #[arg(
        long,
        env = "KURA_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the admission webhook.
    Serve(Box<serve::Args>),
    /// Check manifests against the policy (for CI). Exit 0 clean, 1 violations, 2 usage error.
    Lint(lint::Args),
    /// Print the decision and the mutated pod for one manifest, as the webhook would answer.
    Review(review::Args),
    /// Write a CA and a serving certificate for the webhook Service, and the caBundle.
    Certs(certs::Args),
}

/// Why a command could not do its work. `kura serve` exits 1 on any of them, the other
/// commands 2 (a usage error, distinct from lint's and review's 1 for a denial).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line or its input cannot be used as given.
    #[error("{0}")]
    Usage(String),
    /// The serve settings do not validate.
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A YAML document of an input that does not parse.
    #[error("{file}: document {index}: {source}")]
    Document {
        file: String,
        index: usize,
        source: yaml::Unreadable,
    },
    /// An input that is not the Kubernetes object it must be.
    #[error("not {what}: {source}")]
    Object {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    Store(#[from] kura_agent::store::StoreError),
    #[error(transparent)]
    Admission(#[from] crate::admission::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::Error),
    #[error(transparent)]
    Server(#[from] crate::server::Error),
    #[error("cannot reach the cluster: {0}")]
    Cluster(#[from] kube::Error),
    /// A bug in kura, not in the input.
    #[error("internal: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> ExitCode {
    let (name, result) = match cli.command {
        Command::Serve(args) => ("serve", serve::run(*args).await.map(|()| ExitCode::SUCCESS)),
        Command::Lint(args) => ("lint", lint::run(args).await),
        Command::Review(args) => ("review", review::run(args).await),
        Command::Certs(args) => ("certs", certs::run(&args).map(|()| ExitCode::SUCCESS)),
    };
    result.unwrap_or_else(|e| {
        if name == "serve" {
            error!(error = %e, "kura serve failed");
        }
        eprintln!("kura {name}: {e}");
        if name == "serve" {
            ExitCode::FAILURE
        } else {
            ExitCode::from(2)
        }
    })
}
