//! What the webhook writes into the pod and the agent reads back: the one definition of the
//! names both sides must agree on. The webhook's patch and the agent's command line both use
//! these constants, so a rename is one edit and cannot leave the two halves disagreeing.

/// Path of the agent binary in its image; the injected containers' `command`.
pub const AGENT_BINARY: &str = "/kura-agent";

/// Directory the agent writes the files into unless told otherwise (`KURA_DIR`); also the
/// default `kura.dev/mount-path` of app containers.
pub const DEFAULT_DIR: &str = "/var/run/secrets/kura";

/// Where the webhook mounts the downward-API volume with the pod's annotations.
pub const PODINFO_DIR: &str = "/var/run/kura/podinfo";

/// The pod's annotations file inside [`PODINFO_DIR`] (how `kura.dev/refresh-now` reaches the
/// agent). The annotations themselves, `refresh-now` included, are defined once in the
/// catalogue ([`crate::annotations::CATALOGUE`]).
pub const ANNOTATIONS_FILE: &str = "/var/run/kura/podinfo/annotations";

/// Environment variables the webhook sets on the agent container, each the twin of an agent flag.
pub mod env {
    /// The normalized, versioned secret spec (JSON).
    pub const SPEC: &str = "KURA_SPEC";
    /// Directory the files are written to.
    pub const DIR: &str = "KURA_DIR";
    /// The secret store: `aws` or `file:PATH`.
    pub const STORE: &str = "KURA_STORE";
    /// The downward-API annotations file.
    pub const ANNOTATIONS_FILE: &str = "KURA_ANNOTATIONS_FILE";
    /// `json` or `text` (both binaries).
    pub const LOG_FORMAT: &str = "KURA_LOG_FORMAT";
    /// Loopback address of the agent's metrics listener.
    pub const METRICS_LISTEN: &str = "KURA_METRICS_LISTEN";
    /// Bound on one store call.
    pub const STORE_TIMEOUT: &str = "KURA_STORE_TIMEOUT";
    /// Where a failed init leaves its one-line reason.
    pub const TERMINATION_LOG: &str = "KURA_TERMINATION_LOG";
}

/// The agent's subcommands, as the webhook names them in the containers it injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentCommand {
    /// Fetch once, write, exit (init containers).
    Init,
    /// Fetch, write, then refresh until SIGTERM (sidecars).
    Run,
    /// Exit 0 once a complete set of files exists (the native sidecar's startup probe).
    Ready,
}

impl AgentCommand {
    /// The subcommand's name on the command line.
    pub const fn as_str(self) -> &'static str {
        match self {
            AgentCommand::Init => "init",
            AgentCommand::Run => "run",
            AgentCommand::Ready => "ready",
        }
    }
}

/// Log format of both binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object a line.
    Json,
    /// Human-readable lines.
    Text,
}

impl LogFormat {
    /// The flag value.
    pub const fn as_str(self) -> &'static str {
        match self {
            LogFormat::Json => "json",
            LogFormat::Text => "text",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_annotations_file_is_inside_the_podinfo_dir() {
        let rest = ANNOTATIONS_FILE
            .strip_prefix(PODINFO_DIR)
            .expect("inside the podinfo dir");
        assert_eq!(rest, "/annotations");
    }
}
