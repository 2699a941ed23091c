//! `kura-agent exec -- CMD ARGS...`: runs an app container's command with the environment
//! variables the agent wrote (contract §6), and does what PID 1 of a container must.
//!
//! - It waits (bounded) for the agent's first complete set, reads the values from
//!   `<dir>/..data/.kura-env.json` ([`values`]), drops its own `KURA_EXEC_*` settings from the
//!   child's environment, adds the values (a variable the container already has keeps the
//!   container's value) and starts the command with [`std::process::Command`].
//! - As PID 1 (tini is the reference) it is a child subreaper, forwards [`FORWARDED`] signals to
//!   the child, reaps every exited process on SIGCHLD (`waitpid(-1, WNOHANG)` until none is
//!   left, so orphans never stay zombies), and exits with the child's status: its exit code, or
//!   128+n after signal n.
//! - With `restart` it polls the values file; when a value changed it stops the child (SIGTERM,
//!   the grace period, SIGKILL) and starts it again with the new values. With `signal:<SIG>` it
//!   sends that signal instead. A new file that cannot be used is logged and the child keeps
//!   running with the values it has.
//!
//! Nothing here creates a store client: the wrapper runs in every wrapped container.
//! [`std::process::Command`] only spawns; every wait is this module's own `waitpid`, so no other
//! reaper (such as `tokio::process`'s) can take a child's status away from it.

mod install;
pub mod values;

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::task::Poll;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::contract::env;
use crate::spec::EnvOnRotation;
use crate::watch::FileWatch;

pub use install::{InstallError, MODE as BINARY_MODE, install_self};
pub use values::{Values, ValuesError};

/// How long `exec` waits for the first complete write unless told otherwise.
pub const DEFAULT_WAIT: &str = "60s";
/// How long a restart waits after SIGTERM before SIGKILL unless told otherwise.
pub const DEFAULT_GRACE: &str = "10s";

/// Signals the wrapper passes on to the child. The ones a process cannot catch (SIGKILL,
/// SIGSTOP) and the ones that report the wrapper's own faults (SIGSEGV, SIGBUS, …) are not
/// among them, as with tini; SIGPIPE neither: it would come from the wrapper's own writes.
pub const FORWARDED: [Signal; 8] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGALRM,
];

/// Forwarded signals that also mean "stop": after one of them the wrapper starts no new child
/// (a restart in progress ends with the old child's exit) and exits with the child's status.
const STOP_SIGNALS: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT];

/// The wrapper's own settings, removed from the child's environment.
const EXEC_VARIABLES: [&str; 5] = [
    env::EXEC_VALUES_DIR,
    env::EXEC_ON_ROTATION,
    env::EXEC_WAIT,
    env::EXEC_GRACE,
    env::EXEC_COPY_TO,
];

/// How often the first write is looked for.
const FIRST_WRITE_POLL: Duration = Duration::from_millis(100);
/// How often the values file is looked at for a rotation.
const ROTATION_POLL: Duration = Duration::from_secs(1);

/// What `kura-agent exec` runs.
#[derive(Debug, Clone)]
pub struct Exec {
    /// Where the agent's files appear in this container.
    pub values_dir: PathBuf,
    pub on_rotation: EnvOnRotation,
    /// Bound on the wait for the first complete write.
    pub wait: Duration,
    /// Between SIGTERM and SIGKILL when a rotation restarts the command.
    pub grace: Duration,
    /// The command and its arguments.
    pub command: Vec<OsString>,
}

/// Why the wrapper could not run the command. Names paths, variables and the command, never a
/// value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no command to run: give it after `--`")]
    NoCommand,
    #[error("cannot handle signals: {0}")]
    Signals(#[source] io::Error),
    #[error(
        "no environment values at {path} after waiting {waited:?}: {reason}; check the logs of the agent container (kubectl logs <pod> -c kura-agent)"
    )]
    Timeout {
        path: PathBuf,
        waited: Duration,
        reason: String,
    },
    #[error(transparent)]
    Values(#[from] ValuesError),
    #[error("{command}: command not found")]
    NotFound { command: String },
    #[error("{command}: cannot execute: {source}")]
    NotExecutable {
        command: String,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The wrapper's exit status for this error: 127 and 126 as shells use them.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::NotFound { .. } => 127,
            Error::NotExecutable { .. } => 126,
            _ => 1,
        }
    }
}

/// Runs the wrapper to the end: the child's status, or the error's.
pub async fn run(exec: Exec) -> ExitCode {
    match supervise(&exec).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            error!(error = %e, "kura-agent exec failed");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn supervise(exec: &Exec) -> Result<u8, Error> {
    let Some((program, args)) = exec.command.split_first() else {
        return Err(Error::NoCommand);
    };
    // Orphans of the command are re-parented to the wrapper even when it is not PID 1 (and
    // tests can see it reap them).
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        warn!(error = %e, "cannot become a child subreaper: orphans are reaped only when this is PID 1");
    }
    // Before the first spawn, so no SIGCHLD or forwarded signal can be missed.
    let mut signals = Signals::new().map_err(Error::Signals)?;
    let (mut current, mut watch) = match wait_for_values(exec, &mut signals).await? {
        Waited::Ready(values, watch) => (values, watch),
        Waited::Stopped(code) => return Ok(code),
    };
    let inherited: BTreeSet<OsString> = std::env::vars_os()
        .map(|(name, _)| name)
        .filter(|name| !EXEC_VARIABLES.iter().any(|v| name == OsStr::new(v)))
        .collect();
    let mut child = spawn(program, args, &current, &inherited)?;
    info!(command = %program.to_string_lossy(), pid = child.as_raw(), variables = current.names().count(), "started the command");

    let mut ticker = tokio::time::interval(ROTATION_POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let watching = exec.on_rotation != EnvOnRotation::None;
    let mut stop_requested = false;
    let mut restart = Restart::No;
    loop {
        let kill_at = match restart {
            Restart::Terminated { kill_at } => Some(kill_at),
            Restart::No | Restart::Killed => None,
        };
        tokio::select! {
            event = signals.next() => match event {
                Event::Child => {
                    let Some(status) = reap(Some(child)) else { continue };
                    let restarting = restart != Restart::No;
                    restart = Restart::No;
                    if !restarting || stop_requested {
                        info!(status, "the command exited");
                        return Ok(status);
                    }
                    // The set may have changed again during the grace period.
                    match values::read(&exec.values_dir) {
                        Ok(Some(newer)) => current = newer,
                        Ok(None) => {}
                        Err(e) => error!(error = %e, "the newest values cannot be used; starting with the previous new ones"),
                    }
                    child = spawn(program, args, &current, &inherited)?;
                    info!(command = %program.to_string_lossy(), pid = child.as_raw(), "started the command again with the new values");
                }
                Event::Forward(sig) => {
                    if STOP_SIGNALS.contains(&sig) {
                        stop_requested = true;
                    }
                    debug!(signal = %sig, "forwarding");
                    send(child, sig);
                }
            },
            () = tokio::time::sleep_until(kill_at.unwrap_or_else(Instant::now)), if kill_at.is_some() => {
                warn!(grace = ?exec.grace, "the command did not exit within the grace period after SIGTERM: sending SIGKILL");
                send(child, Signal::SIGKILL);
                restart = Restart::Killed;
            }
            _ = ticker.tick(), if watching && restart == Restart::No && !stop_requested => {
                let Some(changed) = rotated(&exec.values_dir, &mut watch, &mut current) else {
                    continue;
                };
                match exec.on_rotation {
                    EnvOnRotation::None => {}
                    EnvOnRotation::Restart => {
                        info!(?changed, grace = ?exec.grace, "values changed: stopping the command (SIGTERM) to start it again");
                        send(child, Signal::SIGTERM);
                        restart = Restart::Terminated { kill_at: Instant::now() + exec.grace };
                    }
                    EnvOnRotation::Signal(s) => match Signal::try_from(s.number()) {
                        Ok(sig) => {
                            info!(?changed, signal = %sig, "values changed: signalling the command");
                            send(child, sig);
                        }
                        Err(e) => error!(signal = s.name(), error = %e, "cannot send this signal"),
                    },
                }
            }
        }
    }
}

/// Whether the values changed since the last look: the names of the variables that did, with
/// `current` updated to the new values. A file that is gone or cannot be used is logged and
/// changes nothing.
fn rotated(dir: &Path, watch: &mut FileWatch, current: &mut Values) -> Option<Vec<String>> {
    if !watch.poll() {
        return None;
    }
    let new = match values::read(dir) {
        Ok(Some(new)) => new,
        Ok(None) => {
            warn!(path = %values::path(dir).display(), "the values file is gone; the command keeps its values");
            return None;
        }
        Err(e) => {
            error!(error = %e, "the new values cannot be used; the command keeps running with the values it has");
            return None;
        }
    };
    let changed = current.changed_names(&new);
    if changed.is_empty() {
        debug!("a new set with the same values");
        return None;
    }
    *current = new;
    Some(changed)
}

/// Where a restart is: the old child must exit before the new one starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restart {
    /// No restart under way.
    No,
    /// SIGTERM sent; SIGKILL follows at `kill_at`.
    Terminated { kill_at: Instant },
    /// SIGKILL sent.
    Killed,
}

/// The outcome of the wait for the first write.
enum Waited {
    /// The values, and a watch whose stamp was taken before they were read.
    Ready(Values, FileWatch),
    /// A stop signal came first: the status to exit with.
    Stopped(u8),
}

async fn wait_for_values(exec: &Exec, signals: &mut Signals) -> Result<Waited, Error> {
    let path = values::path(&exec.values_dir);
    let deadline = Instant::now() + exec.wait;
    let mut told = false;
    loop {
        // Stamped before reading: a swap in between shows as a change at the first poll.
        let watch = FileWatch::new([path.clone()], ROTATION_POLL);
        if let Some(values) = values::read(&exec.values_dir)? {
            return Ok(Waited::Ready(values, watch));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::Timeout {
                reason: values::diagnose_missing(&exec.values_dir),
                path,
                waited: exec.wait,
            });
        }
        if !told {
            info!(path = %path.display(), wait = ?exec.wait, "waiting for the agent to write the environment values");
            told = true;
        }
        tokio::select! {
            () = tokio::time::sleep(FIRST_WRITE_POLL.min(deadline - now)) => {}
            event = signals.next() => match event {
                Event::Forward(sig) if STOP_SIGNALS.contains(&sig) => {
                    info!(signal = %sig, "stopped before the values were written");
                    return Ok(Waited::Stopped(signal_status(sig)));
                }
                // Nothing to forward to yet; processes inherited from before the wrapper
                // exec'd are reaped all the same.
                Event::Forward(_) => {}
                Event::Child => {
                    reap(None);
                }
            }
        }
    }
}

/// Starts the command with the values in its environment.
fn spawn(
    program: &OsStr,
    args: &[OsString],
    values: &Values,
    inherited: &BTreeSet<OsString>,
) -> Result<Pid, Error> {
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    for name in EXEC_VARIABLES {
        cmd.env_remove(name);
    }
    let plan = values.plan(inherited);
    for name in &plan.kept {
        warn!(variable = %name, "the container already has this variable: it keeps its own value, not kura's");
    }
    cmd.envs(plan.set.iter().copied());
    let command = program.to_string_lossy().into_owned();
    let child = cmd.spawn().map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => Error::NotFound { command },
        _ => Error::NotExecutable { command, source },
    })?;
    // `child` is dropped without a wait: the reaper below takes its status.
    Ok(Pid::from_raw(
        i32::try_from(child.id()).expect("Linux pids fit in an i32"),
    ))
}

fn send(pid: Pid, sig: Signal) {
    if let Err(e) = kill(pid, sig) {
        debug!(signal = %sig, error = %e, "could not signal the command");
    }
}

/// The exit status of a process killed by `sig`, as shells report it.
fn signal_status(sig: Signal) -> u8 {
    u8::try_from(128 + sig as i32).unwrap_or(u8::MAX)
}

/// Reaps every process that has exited; returns the status of `child` if it was among them.
fn reap(child: Option<Pid>) -> Option<u8> {
    let mut status = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if Some(pid) == child => {
                status = Some(u8::try_from(code).unwrap_or(u8::MAX));
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if Some(pid) == child => {
                status = Some(signal_status(sig));
            }
            Ok(WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _)) => {
                debug!(pid = pid.as_raw(), "reaped an orphan");
            }
            Ok(WaitStatus::StillAlive) => return status,
            Ok(_) | Err(Errno::EINTR) => {}
            // ECHILD: no child left.
            Err(_) => return status,
        }
    }
}

/// SIGCHLD and the forwarded signals, as one stream.
struct Signals {
    child: tokio::signal::unix::Signal,
    forwarded: Vec<(Signal, tokio::signal::unix::Signal)>,
}

enum Event {
    /// A child changed state: reap.
    Child,
    /// A signal to pass on.
    Forward(Signal),
}

impl Signals {
    fn new() -> io::Result<Signals> {
        let forwarded = FORWARDED
            .iter()
            .map(|&sig| Ok((sig, signal(SignalKind::from_raw(sig as i32))?)))
            .collect::<io::Result<_>>()?;
        Ok(Signals {
            child: signal(SignalKind::child())?,
            forwarded,
        })
    }

    async fn next(&mut self) -> Event {
        std::future::poll_fn(|cx| {
            if self.child.poll_recv(cx).is_ready() {
                return Poll::Ready(Event::Child);
            }
            for (sig, stream) in &mut self.forwarded {
                if stream.poll_recv(cx).is_ready() {
                    return Poll::Ready(Event::Forward(*sig));
                }
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_the_shells() {
        let nf = Error::NotFound {
            command: "nope".into(),
        };
        assert_eq!(nf.exit_code(), 127);
        assert_eq!(nf.to_string(), "nope: command not found");
        let ne = Error::NotExecutable {
            command: "x".into(),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        assert_eq!(ne.exit_code(), 126);
        assert_eq!(Error::NoCommand.exit_code(), 1);
        assert_eq!(signal_status(Signal::SIGTERM), 143);
        assert_eq!(signal_status(Signal::SIGKILL), 137);
    }

    #[test]
    fn the_wrappers_variables_are_the_contracts_exec_variables() {
        for v in EXEC_VARIABLES {
            assert!(v.starts_with("KURA_EXEC_"), "{v}");
        }
        for s in STOP_SIGNALS {
            assert!(FORWARDED.contains(&s), "{s}");
        }
    }
}
