//! `kura-agent init`, `run` and `ready` through the real binary, against moto.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

fn ready(dir: &std::path::Path) -> bool {
    Command::new(BIN)
        .args(["ready", "--dir"])
        .arg(dir)
        .env_clear()
        .output()
        .unwrap()
        .status
        .success()
}

#[tokio::test]
async fn init_writes_every_file_then_ready_passes() {
    let moto = Moto::start();
    let (db, api) = (name("db"), name("api"));
    moto.secret(&db, r#"{"password":"pw-init-1"}"#, None, &[])
        .await;
    let api_arn = moto.secret(&api, "api-key-init-1", None, &[]).await;
    let s = Scratch::new();
    assert!(!ready(&s.dir), "ready before any write");

    // One file by name with a JSON key, one by full ARN.
    let spec = spec(
        vec![
            with_key(file("db-password", &db), "password"),
            file("api-key", &api_arn),
        ],
        120,
        None,
    );
    let (status, log) = s.init(&spec, &moto.env());
    assert!(status.success(), "{log}");
    assert_eq!(s.read("db-password").as_deref(), Some("pw-init-1"));
    assert_eq!(s.read("api-key").as_deref(), Some("api-key-init-1"));
    assert!(ready(&s.dir));
    assert!(!log.contains("pw-init-1") && !log.contains("api-key-init-1"));
    assert!(
        !s.termination_log.exists(),
        "no termination message on success"
    );
}

#[tokio::test]
async fn init_failure_exits_non_zero_with_a_one_line_reason_and_writes_nothing() {
    let moto = Moto::start();
    let present = name("present");
    let missing = name("missing");
    moto.secret(&present, "present-value", None, &[]).await;
    let s = Scratch::new();
    let spec = spec(vec![file("a", &present), file("b", &missing)], 120, None);
    let (status, _) = s.init(&spec, &moto.env());
    assert_eq!(status.code(), Some(1));
    let msg = s.termination_message();
    assert!(
        msg.contains(&missing) && msg.contains("does not exist"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "one line: {msg:?}");
    assert!(!msg.contains("present-value"), "{msg}");
    assert_eq!(
        fs::read_dir(&s.dir).unwrap().count(),
        0,
        "an incomplete set is never written"
    );
    assert!(!ready(&s.dir));
}

#[tokio::test]
async fn missing_json_key_is_an_error_naming_file_and_secret() {
    let moto = Moto::start();
    let db = name("db");
    moto.secret(&db, r#"{"password":"hunter2-key"}"#, None, &[])
        .await;
    let s = Scratch::new();
    let spec = spec(vec![with_key(file("db-user", &db), "username")], 120, None);
    let (status, log) = s.init(&spec, &moto.env());
    assert!(!status.success());
    let msg = s.termination_message();
    assert!(
        msg.contains("\"db-user\"") && msg.contains(&db) && msg.contains("\"username\""),
        "{msg}"
    );
    assert!(!msg.contains("hunter2-key") && !log.contains("hunter2-key"));
}

#[tokio::test]
async fn a_bad_spec_is_a_clear_error() {
    let s = Scratch::new();
    for (spec, needle) in [
        (
            r#"{"version":"kura.dev/v9","refreshInterval":60,"files":[]}"#,
            "kura.dev/v9",
        ),
        ("{not json", "not valid JSON"),
        (
            r#"{"version":"kura.dev/v1","refreshInterval":60,"files":[{"file":"../x","secret":"s","mode":"0400"}]}"#,
            "\"../x\"",
        ),
        (
            r#"{"version":"kura.dev/v1","refreshInterval":60,"files":[],"extra":1}"#,
            "unknown field",
        ),
    ] {
        for mode in ["init", "run"] {
            let out = s.command(mode, spec).output().unwrap();
            assert_eq!(out.status.code(), Some(1), "{mode} {spec}");
            let msg = s.termination_message();
            assert!(
                msg.contains("KURA_SPEC") && msg.contains(needle),
                "{mode} {spec}: {msg}"
            );
        }
    }
}

#[tokio::test]
async fn run_writes_keeps_running_and_exits_on_sigterm_within_a_second() {
    let moto = Moto::start();
    let db = name("db");
    moto.secret(&db, "run-value-1", None, &[]).await;
    let s = Scratch::new();
    let mut agent = s.run(&spec(vec![file("db", &db)], 1, None), &moto.env(), &[]);
    s.expect_written(&agent, "db").await;
    // A few refresh cycles later it is still there, with the same set.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(agent.is_running(), "{}", agent.log());
    assert!(ready(&s.dir));

    let sent = Instant::now();
    agent.signal(Signal::SIGTERM);
    let status = agent
        .wait_timeout(Duration::from_secs(1))
        .expect("exits within a second of SIGTERM");
    assert!(sent.elapsed() <= Duration::from_secs(1));
    assert!(status.success(), "{status:?}");
    assert_eq!(s.read("db").as_deref(), Some("run-value-1"), "files stay");
    assert!(ready(&s.dir));
    agent.assert_log_free_of(&["run-value-1"]);
}

#[tokio::test]
async fn sigterm_cuts_a_hanging_store_call_short() {
    // An endpoint that accepts connections and never answers: the first fetch hangs for the
    // whole store timeout unless SIGTERM ends it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in listener.incoming().take(4) {
            conns.push(c);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let s = Scratch::new();
    let env = vec![
        (
            "AWS_ENDPOINT_URL".to_string(),
            format!("http://127.0.0.1:{port}"),
        ),
        ("AWS_REGION".into(), "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ("KURA_STORE_TIMEOUT".into(), "60s".into()),
    ];
    let mut agent = s.run(
        &spec(vec![file("x", "/never/answered")], 1, None),
        &env,
        &[],
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(agent.is_running(), "still waiting on the store");
    let sent = Instant::now();
    agent.signal(Signal::SIGTERM);
    let status = agent
        .wait_timeout(Duration::from_secs(1))
        .expect("exits within a second of SIGTERM, mid-request");
    assert!(sent.elapsed() <= Duration::from_secs(1));
    assert!(status.success(), "{status:?}");
    drop(held);
}

#[tokio::test]
async fn run_with_an_init_only_spec_exits_after_the_first_write() {
    let moto = Moto::start();
    let db = name("db");
    moto.secret(&db, "job-value", None, &[]).await;
    let s = Scratch::new();
    let spec = spec(vec![file("db", &db)], 60, None).replace(
        "\"refreshInterval\"",
        "\"agent\":\"init-only\",\"refreshInterval\"",
    );
    let mut agent = s.run(&spec, &moto.env(), &[]);
    let status = agent
        .wait_timeout(Duration::from_secs(15))
        .expect("init-only exits");
    assert!(status.success(), "{}", agent.log());
    assert_eq!(s.read("db").as_deref(), Some("job-value"));
}

#[tokio::test]
async fn files_get_the_spec_modes_in_a_0750_directory_owned_by_the_agent_user() {
    let moto = Moto::start();
    let db = name("db");
    moto.secret(&db, r#"{"u":"app","p":"pw"}"#, None, &[]).await;
    let s = Scratch::new();
    let spec = spec(
        vec![
            with_key(file("user", &db), "u"),
            with_mode(with_key(file("pass", &db), "p"), "0440"),
            with_mode(file("all", &db), "0640"),
        ],
        60,
        None,
    );
    let (status, log) = s.init(&spec, &moto.env());
    assert!(status.success(), "{log}");
    let me = fs::metadata("/proc/self").unwrap().uid();
    for (f, mode) in [("user", 0o400), ("pass", 0o440), ("all", 0o640)] {
        let m = fs::metadata(s.dir.join(f)).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, mode, "{f}");
        assert_eq!(m.uid(), me, "{f} is owned by the agent's uid");
        assert!(fs::symlink_metadata(s.dir.join(f)).unwrap().is_symlink());
        assert_eq!(
            fs::read_link(s.dir.join(f)).unwrap(),
            std::path::Path::new("..data").join(f)
        );
    }
    let target = fs::read_link(s.dir.join("..data")).unwrap();
    let name = target.to_string_lossy().into_owned();
    assert!(name.starts_with("..") && name[2..].contains('.'), "{name}");
    let d = fs::metadata(s.dir.join(&target)).unwrap();
    assert!(d.is_dir());
    assert_eq!(d.permissions().mode() & 0o7777, 0o750);
    assert_eq!(d.uid(), me);
}
