//! Hot reload of the policy file: a new file that loads replaces the engine's policy, one that
//! does not is refused and the last good policy stays in force.

use std::path::Path;
use std::time::Duration;

use kura_agent::watch::FileWatch;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tracing::{info, warn};

use super::{Policy, PolicyEngine};
use crate::telemetry::ResultLabels;

/// Polls `path` every `every` and reloads `engine`'s policy when the file changes; counts each
/// outcome in `reloads` (`policy-ok`, `policy-refused`). Runs until dropped.
pub async fn reload_on_change(
    engine: &PolicyEngine,
    path: &Path,
    every: Duration,
    reloads: &Family<ResultLabels, Counter>,
) {
    let counted = |result: &str| {
        reloads
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    };
    let mut files = FileWatch::new([path.to_path_buf()], every);
    loop {
        files.changed().await;
        match Policy::load(path) {
            Ok(p) => {
                engine.replace(p);
                counted("policy-ok");
                info!(path = %path.display(), "policy reloaded");
            }
            Err(e) => {
                counted("policy-refused");
                warn!(error = %e, "new policy refused; keeping the last good one");
            }
        }
    }
}
