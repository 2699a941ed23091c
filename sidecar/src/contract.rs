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

/// Where the agent's first container copies its own binary, in a small volume the selected app
/// containers mount read-only when the pod declares environment variables: their `command`
/// becomes `[EXEC_DIR/kura-agent, exec, --, <command>...]` (contract §6).
pub const EXEC_DIR: &str = "/var/run/kura/bin";

/// The binary's name inside [`EXEC_DIR`].
pub const EXEC_BINARY: &str = "kura-agent";

/// [`EXEC_DIR`]`/`[`EXEC_BINARY`]: the first word of a wrapped container's `command`.
pub const EXEC_PATH: &str = "/var/run/kura/bin/kura-agent";

/// The file, inside the atomically swapped set (`<dir>/..data/`), that holds the environment
/// variables' values for `kura-agent exec`: a JSON object of name → string value, mode 0400,
/// owned by the agent's (= the app's) user. Its name starts with `.`, which no declared file
/// name may, so it cannot collide with one.
pub const ENV_VALUES_FILE: &str = ".kura-env.json";

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
    /// On the agent's first container: copy the agent binary into this directory (the exec
    /// volume) before the first write, so `kura-agent exec` exists when app containers start.
    pub const EXEC_COPY_TO: &str = "KURA_EXEC_COPY_TO";
    /// On a wrapped app container: the directory where the agent's files appear (the
    /// container's `kura.dev/mount-path`); `kura-agent exec` reads
    /// `<dir>/..data/`[`ENV_VALUES_FILE`](super::ENV_VALUES_FILE).
    pub const EXEC_VALUES_DIR: &str = "KURA_EXEC_VALUES_DIR";
    /// On a wrapped app container: `none`, `restart` or `signal:<SIGNAME>`
    /// (`kura.dev/env-on-rotation`).
    pub const EXEC_ON_ROTATION: &str = "KURA_EXEC_ON_ROTATION";
    /// Optional, on a wrapped app container: how long `kura-agent exec` waits for the first
    /// complete write before it fails (a duration; default 60s).
    pub const EXEC_WAIT: &str = "KURA_EXEC_WAIT";
    /// Optional, on a wrapped app container: how long a `restart` waits after SIGTERM before
    /// SIGKILL (a duration; default 10s).
    pub const EXEC_GRACE: &str = "KURA_EXEC_GRACE";
    /// Optional, on agent containers: the version service's base URL (`https://…:8444`),
    /// set when `kura serve --version-service-url` is (contract §8).
    pub const VERSION_SERVICE_URL: &str = "KURA_VERSION_SERVICE_URL";
    /// With [`VERSION_SERVICE_URL`]: the PEM CA certificate(s) that sign the service's
    /// certificate (public, not a secret).
    pub const VERSION_SERVICE_CA: &str = "KURA_VERSION_SERVICE_CA";
    /// With [`VERSION_SERVICE_URL`]: the projected service-account token file
    /// (default [`crate::versions::TOKEN_FILE`]).
    pub const VERSION_SERVICE_TOKEN: &str = "KURA_VERSION_SERVICE_TOKEN";
    /// The pod's name (downward API), reported to the version service.
    pub const POD_NAME: &str = "KURA_POD_NAME";
    /// Optional, on agent containers: how long the first fetch retries, with backoff, while
    /// the store throttles or cannot be reached (a duration; default 60s, 0s: no retry).
    pub const INIT_DEADLINE: &str = "KURA_INIT_DEADLINE";
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
    /// Run an app's command with the environment variables set (the wrapped containers).
    Exec,
}

impl AgentCommand {
    /// The subcommand's name on the command line.
    pub const fn as_str(self) -> &'static str {
        match self {
            AgentCommand::Init => "init",
            AgentCommand::Run => "run",
            AgentCommand::Ready => "ready",
            AgentCommand::Exec => "exec",
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

    #[test]
    fn the_exec_path_is_the_binary_in_the_exec_dir() {
        assert_eq!(EXEC_PATH, format!("{EXEC_DIR}/{EXEC_BINARY}"));
    }
}
