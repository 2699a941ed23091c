//! `kura-agent exec` and the binary-copy step, through the real binary with `/bin/sh` children.
//!
//! Values are written with the agent's own [`AtomicWriter`], so the `..data` layout is the
//! real one. Child scripts loop while their scratch directory exists, so whatever a failed
//! assertion leaves behind ends when the test's temporary directory is removed.
#![allow(clippy::unwrap_used)]

#[allow(unused_imports)] // testkit (moto) is not needed here
mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use kura_agent::contract::{ENV_VALUES_FILE, EXEC_BINARY, env};
use kura_agent::render::Content;
use kura_agent::writer::{AtomicWriter, FilePayload};
use nix::sys::signal::Signal;

/// Generous bound for anything the tests wait for (they poll; this only stops a hang).
const DEADLINE: Duration = Duration::from_secs(20);

/// A values directory the "agent" writes into and a work directory the child records in.
struct Case {
    tmp: tempfile::TempDir,
    values: PathBuf,
    work: PathBuf,
}

impl Case {
    fn new() -> Case {
        let tmp = tempfile::tempdir().unwrap();
        let values = tmp.path().join("values");
        let work = tmp.path().join("work");
        fs::create_dir(&values).unwrap();
        fs::create_dir(&work).unwrap();
        Case { tmp, values, work }
    }

    /// Writes a new set holding these values, as the agent does.
    fn write_values(&self, pairs: &[(&str, &str)]) {
        let doc: BTreeMap<&str, &str> = pairs.iter().copied().collect();
        self.write_set(&serde_json::to_vec(&doc).unwrap(), &[]);
    }

    /// Writes a new set: this values file and these other files.
    fn write_set(&self, values_file: &[u8], files: &[(&str, &str)]) {
        let payload = std::iter::once((ENV_VALUES_FILE, values_file))
            .chain(files.iter().map(|(n, c)| (*n, c.as_bytes())))
            .map(|(name, content)| {
                let content = Content::new(content.to_vec());
                (
                    name.to_string(),
                    FilePayload {
                        content,
                        mode: 0o400,
                    },
                )
            })
            .collect();
        assert!(AtomicWriter::new(&self.values).write(&payload).unwrap());
    }

    /// `kura-agent exec -- /bin/sh -c SCRIPT sh WORKDIR` with a clean environment: the script
    /// finds its work directory in `$1`.
    fn wrapper(&self, script: &str) -> Command {
        let mut c = Command::new(BIN);
        c.args(["exec", "--", "/bin/sh", "-c", script, "sh"])
            .arg(&self.work)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("KURA_LOG", "info,kura_agent=debug")
            .env(env::EXEC_VALUES_DIR, &self.values)
            .env(env::EXEC_WAIT, "30s");
        c
    }

    fn start(&self, cmd: &mut Command) -> AgentProc {
        AgentProc::spawn(cmd, &self.tmp.path().join("wrapper.log"))
    }

    fn record(&self, name: &str) -> String {
        fs::read_to_string(self.work.join(name)).unwrap_or_default()
    }

    fn lines(&self, name: &str) -> Vec<String> {
        self.record(name).lines().map(str::to_string).collect()
    }
}

/// The child records each start as `<pid> <value of VAL>` and loops until its work directory
/// is gone; `trap` is put first.
fn recording_child(trap: &str) -> String {
    format!(
        r#"{trap}
echo "$$ $VAL" >> "$1/starts"
while [ -d "$1" ]; do sleep 0.1; done"#
    )
}

async fn wait_for(what: &str, proc: &AgentProc, mut cond: impl FnMut() -> bool) {
    assert!(
        eventually(DEADLINE, &mut cond).await,
        "{what} did not happen within {DEADLINE:?}\nwrapper log:\n{}",
        proc.log()
    );
}

fn pid_of(start_line: &str) -> i32 {
    start_line.split(' ').next().unwrap().parse().unwrap()
}

/// Parent pid and state of a process, from `/proc/<pid>/stat`.
fn stat(pid: i32) -> Option<(i32, char)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name in parentheses may contain spaces: fields follow the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((ppid, state))
}

fn zombies_of(parent: i32) -> Vec<i32> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| stat(pid) == Some((parent, 'Z')))
        .collect()
}

#[tokio::test]
async fn the_child_gets_the_values_without_the_wrappers_settings_and_keeps_its_own() {
    let case = Case::new();
    case.write_values(&[
        ("DB_PASSWORD", "pw-exec-1"),
        ("CLASH", "clash-from-kura"),
        ("SPACED", "a b\n'c'"),
    ]);
    let out = case
        .wrapper(r#"env > "$1/env""#)
        .env("CLASH", "from-the-container")
        .env(env::EXEC_ON_ROTATION, "restart")
        .env(env::EXEC_GRACE, "3s")
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let env = case.record("env");
    assert!(env.lines().any(|l| l == "DB_PASSWORD=pw-exec-1"), "{env}");
    assert!(env.contains("SPACED=a b\n'c'"), "{env}");
    assert!(
        env.lines().any(|l| l == "CLASH=from-the-container"),
        "the container's own value wins: {env}"
    );
    assert!(!env.contains("KURA_EXEC_"), "{env}");
    assert!(log.contains("CLASH"), "the clash is named: {log}");
    for value in ["pw-exec-1", "clash-from-kura"] {
        assert!(!log.contains(value), "a value leaked into the log: {log}");
    }
}

#[tokio::test]
async fn flags_before_the_double_dash_are_the_env_twins() {
    let case = Case::new();
    case.write_values(&[("VAL", "by-flag")]);
    let out = Command::new(BIN)
        .args(["exec", "--values-dir"])
        .arg(&case.values)
        .args([
            "--on-rotation",
            "signal:SIGHUP",
            "--wait",
            "5s",
            "--grace",
            "1s",
        ])
        .args(["--", "/bin/sh", "-c", r#"echo "$VAL" > "$1/val""#, "sh"])
        .arg(&case.work)
        .env_clear()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(case.record("val"), "by-flag\n");
}

#[tokio::test]
async fn the_wrapper_waits_for_values_written_later() {
    let case = Case::new();
    let mut proc = case.start(&mut case.wrapper(r#"echo "$VAL" > "$1/val""#));
    wait_for("the waiting message", &proc, || {
        proc.log().contains("waiting for the agent")
    })
    .await;
    assert!(
        case.record("val").is_empty(),
        "the command waits for values"
    );
    case.write_values(&[("VAL", "late-value")]);
    let status = proc.wait_timeout(DEADLINE).expect("the wrapper exits");
    assert!(status.success(), "{}", proc.log());
    assert_eq!(case.record("val"), "late-value\n");
}

#[tokio::test]
async fn values_that_never_come_are_a_bounded_wait_and_a_clear_error() {
    let case = Case::new();
    let mut proc = case.start(
        case.wrapper(r#"echo ran > "$1/ran""#)
            .env(env::EXEC_WAIT, "300ms"),
    );
    let status = proc.wait_timeout(DEADLINE).expect("the wait is bounded");
    assert_eq!(status.code(), Some(1), "{}", proc.log());
    let log = proc.log();
    assert!(
        log.contains(&case.values.display().to_string())
            && log.contains("kubectl logs")
            && log.contains("not written a complete set"),
        "{log}"
    );
    assert!(case.record("ran").is_empty(), "the command never ran");
}

#[tokio::test]
async fn a_value_with_a_nul_byte_is_an_error_naming_the_variable() {
    let case = Case::new();
    case.write_values(&[("NUL_VAR", "before\0after-secret")]);
    let out = case
        .wrapper(r#"echo ran > "$1/ran""#)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("NUL_VAR") && log.contains("NUL byte"), "{log}");
    assert!(!log.contains("after-secret"), "{log}");
    assert!(case.record("ran").is_empty());
}

#[tokio::test]
async fn restart_on_rotation_stops_the_child_and_starts_it_with_the_new_values() {
    let case = Case::new();
    case.write_values(&[("VAL", "v1")]);
    let mut proc = case.start(
        case.wrapper(&recording_child(
            r#"trap 'echo "$$ term" >> "$1/events"; exit 0' TERM"#,
        ))
        .env(env::EXEC_ON_ROTATION, "restart")
        .env(env::EXEC_GRACE, "10s"),
    );
    wait_for("the first start", &proc, || case.lines("starts").len() == 1).await;
    let first = case.lines("starts")[0].clone();
    assert!(first.ends_with(" v1"), "{first}");

    case.write_values(&[("VAL", "v2")]);
    wait_for("the second start", &proc, || {
        case.lines("starts").len() == 2
    })
    .await;
    let second = case.lines("starts")[1].clone();
    assert!(second.ends_with(" v2"), "{second}");
    assert_ne!(pid_of(&first), pid_of(&second));
    assert_eq!(
        case.lines("events"),
        [format!("{} term", pid_of(&first))],
        "the first child got SIGTERM"
    );

    // A new set with the same values (another file changed) is no rotation of the environment;
    // an unusable values file is logged and the command keeps running.
    case.write_set(br#"{"VAL":"v2"}"#, &[("other-file", "x")]);
    wait_for("the new set with the same values", &proc, || {
        proc.log().contains("a new set with the same values")
    })
    .await;
    case.write_set(br#"{"VAL":12345}"#, &[]);
    wait_for("the error about the unusable file", &proc, || {
        proc.log().contains("the value of VAL is not a string")
    })
    .await;
    assert!(proc.is_running());
    assert_eq!(case.lines("starts").len(), 2, "{}", proc.log());

    // SIGTERM to the wrapper ends it with the child's status (the trap exits 0).
    proc.signal(Signal::SIGTERM);
    let status = proc.wait_timeout(DEADLINE).expect("the wrapper exits");
    assert_eq!(status.code(), Some(0), "{}", proc.log());
    assert_eq!(case.lines("starts").len(), 2, "{}", proc.log());
    proc.assert_log_free_of(&["v1", "v2"]);
}

#[tokio::test]
async fn sigterm_to_the_wrapper_during_a_restart_ends_it_with_the_childs_status() {
    let case = Case::new();
    case.write_values(&[("VAL", "v1")]);
    // The first SIGTERM (the restart's) is only recorded; the second one exits 42.
    let mut proc = case.start(
        case.wrapper(&recording_child(
            r#"n=0; trap 'n=$((n+1)); echo term >> "$1/events"; [ $n -ge 2 ] && exit 42' TERM"#,
        ))
        .env(env::EXEC_ON_ROTATION, "restart")
        .env(env::EXEC_GRACE, "60s"),
    );
    wait_for("the first start", &proc, || case.lines("starts").len() == 1).await;
    case.write_values(&[("VAL", "v2")]);
    wait_for("the restart's SIGTERM", &proc, || {
        case.lines("events").len() == 1
    })
    .await;

    proc.signal(Signal::SIGTERM);
    let status = proc.wait_timeout(DEADLINE).expect("the wrapper exits");
    assert_eq!(status.code(), Some(42), "{}", proc.log());
    assert_eq!(case.lines("events").len(), 2);
    assert_eq!(case.lines("starts").len(), 1, "no new start after the stop");
}

#[tokio::test]
async fn a_child_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let case = Case::new();
    case.write_values(&[("VAL", "v1")]);
    let mut proc = case.start(
        case.wrapper(&recording_child("trap '' TERM"))
            .env(env::EXEC_ON_ROTATION, "restart")
            .env(env::EXEC_GRACE, "300ms"),
    );
    wait_for("the first start", &proc, || case.lines("starts").len() == 1).await;
    case.write_values(&[("VAL", "v2")]);
    wait_for("the second start", &proc, || {
        case.lines("starts").len() == 2
    })
    .await;
    let first = pid_of(&case.lines("starts")[0]);
    assert!(
        stat(first).is_none(),
        "the first child is gone (killed and reaped)"
    );
    assert!(proc.log().contains("SIGKILL"), "{}", proc.log());

    // The second one ignores SIGTERM too; killing it by a signal gives 128+n.
    let second = pid_of(&case.lines("starts")[1]);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(second), Signal::SIGKILL).unwrap();
    let status = proc.wait_timeout(DEADLINE).expect("the wrapper exits");
    assert_eq!(status.code(), Some(128 + 9), "{}", proc.log());
}

#[tokio::test]
async fn signal_on_rotation_reaches_the_child_without_a_restart() {
    let case = Case::new();
    case.write_values(&[("VAL", "v1")]);
    let mut proc = case.start(
        case.wrapper(&recording_child(r#"trap 'echo hup >> "$1/events"' HUP"#))
            .env(env::EXEC_ON_ROTATION, "signal:SIGHUP"),
    );
    wait_for("the start", &proc, || case.lines("starts").len() == 1).await;
    case.write_values(&[("VAL", "v2")]);
    wait_for("SIGHUP in the child", &proc, || {
        case.lines("events") == ["hup"]
    })
    .await;
    assert_eq!(case.lines("starts").len(), 1, "not restarted");

    // The child does not trap SIGTERM: it dies of it, and the wrapper reports 128+15.
    proc.signal(Signal::SIGTERM);
    let status = proc.wait_timeout(DEADLINE).expect("the wrapper exits");
    assert_eq!(status.code(), Some(128 + 15), "{}", proc.log());
}

#[tokio::test]
async fn sigterm_reaches_the_child_and_its_exit_code_comes_back() {
    let case = Case::new();
    case.write_values(&[("VAL", "v1")]);
    let mut proc = case.start(&mut case.wrapper(&recording_child("trap 'exit 42' TERM")));
    wait_for("the start", &proc, || case.lines("starts").len() == 1).await;
    proc.signal(Signal::SIGTERM);
    let status = proc.wait_timeout(DEADLINE).expect("the wrapper exits");
    assert_eq!(status.code(), Some(42), "{}", proc.log());
}

#[tokio::test]
async fn other_signals_are_forwarded_too() {
    let case = Case::new();
    case.write_values(&[("VAL", "v1")]);
    let mut proc = case.start(&mut case.wrapper(&recording_child(
        r#"trap 'echo usr1 >> "$1/events"' USR1; trap 'echo int >> "$1/events"; exit 7' INT"#,
    )));
    wait_for("the start", &proc, || case.lines("starts").len() == 1).await;
    proc.signal(Signal::SIGUSR1);
    wait_for("SIGUSR1 in the child", &proc, || {
        case.lines("events") == ["usr1"]
    })
    .await;
    proc.signal(Signal::SIGINT);
    let status = proc.wait_timeout(DEADLINE).expect("the wrapper exits");
    assert_eq!(status.code(), Some(7), "{}", proc.log());
    assert_eq!(case.lines("events"), ["usr1", "int"]);
}

#[tokio::test]
async fn a_child_killed_by_a_signal_gives_128_plus_n() {
    let case = Case::new();
    case.write_values(&[("VAL", "v1")]);
    let status = case
        .wrapper("kill -USR2 $$")
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(128 + 12));
}

#[tokio::test]
async fn orphans_are_adopted_and_reaped() {
    let case = Case::new();
    case.write_values(&[("VAL", "v1")]);
    // An inner shell starts a background subshell and exits at once: the subshell is orphaned
    // and, the wrapper being a subreaper, becomes its child. It waits for `go`, then exits.
    let script = r#"/bin/sh -c '(while [ ! -e "$1/go" ]; do sleep 0.05; done) & echo $! > "$1/orphan"' sh "$1"
echo "$$ $VAL" >> "$1/starts"
while [ -d "$1" ]; do sleep 0.1; done"#;
    let proc = case.start(&mut case.wrapper(script));
    let wrapper = proc.pid().as_raw();
    wait_for("the orphan's pid", &proc, || {
        case.record("orphan").ends_with('\n')
    })
    .await;
    let orphan: i32 = case.record("orphan").trim().parse().unwrap();
    wait_for("the orphan's adoption by the wrapper", &proc, || {
        stat(orphan).is_some_and(|(ppid, _)| ppid == wrapper)
    })
    .await;

    fs::write(case.work.join("go"), "").unwrap();
    wait_for("the orphan's reaping", &proc, || stat(orphan).is_none()).await;
    wait_for("no zombie child of the wrapper", &proc, || {
        zombies_of(wrapper).is_empty()
    })
    .await;
}

/// The wrapper as PID 1 of a new PID namespace (`unshare --pid`, in a user namespace so that
/// no privilege is needed), where the kernel drops any signal PID 1 has no handler for: SIGTERM from outside
/// still reaches the command and its exit code comes back, and an orphan is adopted and reaped.
#[tokio::test]
async fn as_pid_1_it_takes_sigterm_and_reaps_orphans() {
    let case = Case::new();
    case.write_values(&[("VAL", "v1")]);
    let script = r#"/bin/sh -c '(while [ ! -e "$1/go" ]; do sleep 0.05; done) &' sh "$1"
trap 'exit 42' TERM
echo "$$ $VAL" >> "$1/starts"
while [ -d "$1" ]; do sleep 0.1; done"#;
    let wrapper = case.wrapper(script);
    let mut cmd = Command::new("unshare");
    cmd.args(["--map-root-user", "--pid", "--kill-child"])
        .arg(wrapper.get_program())
        .args(wrapper.get_args())
        .env_clear()
        .envs(wrapper.get_envs().filter_map(|(k, v)| Some((k, v?))));
    let mut proc = case.start(&mut cmd);
    let unshare = proc.pid().as_raw();
    let started = eventually(DEADLINE, || case.lines("starts").len() == 1).await;
    if !started {
        let log = proc.log();
        if let Some(status) = proc.wait_timeout(Duration::ZERO) {
            println!("SKIPPED: cannot unshare a PID namespace ({status}): {log}");
            return;
        }
        panic!("the command did not start within {DEADLINE:?}\n{log}");
    }
    assert_eq!(
        pid_of(&case.lines("starts")[0]),
        2,
        "the command is the namespace's second process"
    );
    let children_of = |parent: i32| -> Vec<i32> {
        fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| stat(pid).is_some_and(|(ppid, _)| ppid == parent))
            .collect()
    };
    let wrapper_pid = children_of(unshare)[0];
    wait_for("the orphan's adoption by PID 1", &proc, || {
        children_of(wrapper_pid).len() == 2
    })
    .await;
    fs::write(case.work.join("go"), "").unwrap();
    wait_for("the orphan's reaping", &proc, || {
        children_of(wrapper_pid).len() == 1
    })
    .await;

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(wrapper_pid), Signal::SIGTERM).unwrap();
    let status = proc.wait_timeout(DEADLINE).expect("the wrapper exits");
    assert_eq!(status.code(), Some(42), "{}", proc.log());
}

#[tokio::test]
async fn a_missing_command_is_127_and_a_non_executable_one_126() {
    let case = Case::new();
    case.write_values(&[("VAL", "v1")]);
    let run = |program: &Path| {
        Command::new(BIN)
            .args(["exec", "--"])
            .arg(program)
            .env_clear()
            .env(env::EXEC_VALUES_DIR, &case.values)
            .output()
            .unwrap()
    };
    let missing = case.work.join("no-such-command");
    let out = run(&missing);
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(127), "{log}");
    assert!(
        log.contains(&format!("{}: command not found", missing.display())),
        "{log}"
    );

    let plain = case.work.join("not-executable");
    fs::write(&plain, "#!/bin/sh\n").unwrap();
    fs::set_permissions(&plain, fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&plain);
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(126), "{log}");
    assert!(log.contains(&plain.display().to_string()), "{log}");
}

fn file_store(dir: &Path) -> PathBuf {
    let store = dir.join("store.yaml");
    fs::write(
        &store,
        "secrets: [{name: /exec/db, value: copy-step-value}]\n",
    )
    .unwrap();
    store
}

#[test]
fn init_copies_the_binary_for_exec_before_writing() {
    let s = Scratch::new();
    let store = file_store(s.tmp.path());
    let bin_dir = s.tmp.path().join("bin");
    fs::create_dir(&bin_dir).unwrap();
    let spec = spec(vec![file("db", "/exec/db")], 120, None);
    let (status, log) = s.init(
        &spec,
        &[
            (env::STORE.into(), format!("file:{}", store.display())),
            (env::EXEC_COPY_TO.into(), bin_dir.display().to_string()),
        ],
    );
    assert!(status.success(), "{log}");
    let copy = bin_dir.join(EXEC_BINARY);
    assert_eq!(fs::read(&copy).unwrap(), fs::read(BIN).unwrap());
    let mode = fs::metadata(&copy).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o555);
    assert_eq!(
        fs::read_dir(&bin_dir).unwrap().count(),
        1,
        "no temporary file"
    );
    assert_eq!(s.read("db").as_deref(), Some("copy-step-value"));
    // The copy runs.
    let out = Command::new(&copy).arg("--version").output().unwrap();
    assert!(out.status.success());
}

#[test]
fn a_failed_copy_fails_the_command_before_any_write() {
    let s = Scratch::new();
    let store = file_store(s.tmp.path());
    let absent = s.tmp.path().join("no-exec-volume");
    let spec = spec(vec![file("db", "/exec/db")], 120, None);
    for mode in ["init", "run"] {
        let out = s
            .command(mode, &spec)
            .env(env::STORE, format!("file:{}", store.display()))
            .env(env::EXEC_COPY_TO, &absent)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{mode}");
        let msg = s.termination_message();
        assert!(
            msg.contains(&absent.display().to_string()) && msg.contains("kura-agent exec"),
            "{mode}: {msg}"
        );
        assert_eq!(
            fs::read_dir(&s.dir).unwrap().count(),
            0,
            "{mode}: nothing written"
        );
    }
}
