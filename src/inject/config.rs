//! What shapes an injection: the agent's image, where it runs, its resources and defaults.
//! Part of [`Config`](crate::config::Config), which validates it; planning reads it only.

/// Default agent image; manifests under `deploy/` use the same tag.
pub const DEFAULT_AGENT_IMAGE: &str =
    concat!("ghcr.io/kura-dev/kura-agent:", env!("CARGO_PKG_VERSION"));
/// Cluster default for `kura.dev/refresh-interval`.
pub const DEFAULT_REFRESH_SECS: u64 = 120;

/// Where the agent runs when it must keep refreshing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SidecarMode {
    /// Kubernetes 1.29+: an init container with `restartPolicy: Always`.
    #[default]
    Native,
    /// Before 1.29: an init container for the first fetch plus a regular sidecar container.
    Legacy,
}

/// Requests and limits of the injected containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resources {
    pub cpu_request: String,
    pub memory_request: String,
    pub memory_limit: String,
    pub cpu_limit: Option<String>,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpu_request: "5m".into(),
            memory_request: "16Mi".into(),
            memory_limit: "32Mi".into(),
            cpu_limit: None,
        }
    }
}

/// What shapes an injection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectConfig {
    pub agent_image: String,
    pub sidecar_mode: SidecarMode,
    pub default_refresh_secs: u64,
    pub volume_size_limit: String,
    pub resources: Resources,
    /// `KURA_STORE` for the agent; `None` leaves its default (`aws`).
    pub agent_store: Option<String>,
    /// Where agents ask for versions (contract §8); `None`: the service is off and agents poll
    /// AWS directly.
    pub version_service: Option<AgentVersionService>,
}

/// What the patch tells agents about the version service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentVersionService {
    /// Base URL, such as `https://kura.kura-system.svc:8444` (the kura Service's `versions`
    /// port, deploy/components/version-service).
    pub url: String,
    /// PEM of the CA that signs the service's certificate (public).
    pub ca_pem: String,
}

impl Default for InjectConfig {
    fn default() -> Self {
        InjectConfig {
            agent_image: DEFAULT_AGENT_IMAGE.into(),
            sidecar_mode: SidecarMode::Native,
            default_refresh_secs: DEFAULT_REFRESH_SECS,
            volume_size_limit: "4Mi".into(),
            resources: Resources::default(),
            agent_store: None,
            version_service: None,
        }
    }
}
