//! Stopping the webhook on SIGTERM or SIGINT without failing admissions: `/readyz` fails first
//! so the endpoints controller takes the pod out of the Service, then the listeners close and
//! in-flight requests get a bounded time to finish. A second signal exits at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{info, warn};

use crate::server::Running;

/// The exit status after a second signal (128 + SIGINT, as shells report an interrupt).
pub const ABORT_STATUS: i32 = 130;

/// How long each phase of a shutdown may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long `/readyz` fails while the listeners keep serving.
    pub delay: Duration,
    /// How long in-flight requests may take to finish once the listeners close.
    pub grace: Duration,
}

/// SIGTERM and SIGINT, registered once, so a second signal that arrives right after the first
/// is not lost.
#[derive(Debug)]
pub struct Signals {
    term: Option<Signal>,
    int: Option<Signal>,
}

impl Signals {
    /// Registers the handlers; one that cannot be registered is left to its default action.
    pub fn new() -> Self {
        Signals {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    /// Waits for either; without handlers the process can only be killed, so it keeps serving.
    pub async fn recv(&mut self) {
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

impl Default for Signals {
    fn default() -> Self {
        Signals::new()
    }
}

/// Serves until the first signal, then fails readiness (`ready`), waits `timing.delay`, and
/// drains `running` within `timing.grace`. A second signal at any point after the first exits
/// the process with [`ABORT_STATUS`].
pub async fn on_signal(ready: &AtomicBool, running: Running, timing: Timing) {
    let mut signals = Signals::new();
    signals.recv().await;
    info!(delay = ?timing.delay, "shutting down: /readyz now fails");
    ready.store(false, Ordering::Relaxed);
    tokio::spawn(async move {
        signals.recv().await;
        warn!("second signal: exiting now");
        crate::telemetry::flush_logs();
        std::process::exit(ABORT_STATUS);
    });
    tokio::time::sleep(timing.delay).await;
    running.drain(timing.grace).await;
    info!("drained; bye");
}
