//! Rotation through the real binary against moto: new versions, a stage moved back, a deleted
//! secret, the endpoint going away and coming back, refresh-now and both reload hooks.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::process::ExitStatusExt;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

fn metrics_args(port: u16) -> Vec<String> {
    vec!["--metrics-listen".into(), format!("127.0.0.1:{port}")]
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn new_version_stage_moved_back_and_deleted_secret() {
    let moto = MotoOn::start(moto::free_port());
    let client = moto.client();
    let (db, api) = (name("db"), name("api"));
    let v1 = client
        .create_secret()
        .name(&db)
        .secret_string(r#"{"password":"rot-pw-1"}"#)
        .send()
        .await
        .unwrap()
        .version_id
        .unwrap();
    client
        .create_secret()
        .name(&api)
        .secret_string("rot-api-1")
        .send()
        .await
        .unwrap();
    let s = Scratch::new();
    let port = moto::free_port();
    let m = metrics_args(port);
    let spec = spec(
        vec![
            with_key(file("db-password", &db), "password"),
            file("db.json", &db),
            file("api-key", &api),
        ],
        1,
        None,
    );
    let mut agent = s.run(&spec, &moto.env(), &args(&m));
    s.expect_written(&agent, "api-key").await;
    assert_eq!(s.read("db-password").as_deref(), Some("rot-pw-1"));

    // A new version: written within the interval (1 s) plus one second.
    let v2 = client
        .put_secret_value()
        .secret_id(&db)
        .secret_string(r#"{"password":"rot-pw-2"}"#)
        .send()
        .await
        .unwrap()
        .version_id
        .unwrap();
    let put = Instant::now();
    assert!(
        eventually(Duration::from_secs(2), || s.read("db-password").as_deref()
            == Some("rot-pw-2"))
        .await,
        "not rotated within interval + 1 s: {}",
        agent.log()
    );
    println!("rotation latency: {:?}", put.elapsed());
    // Both files of the secret changed in the same swap.
    assert_eq!(
        s.read("db.json").as_deref(),
        Some(r#"{"password":"rot-pw-2"}"#)
    );

    // AWSCURRENT moved back to the first version: its value comes back.
    client
        .update_secret_version_stage()
        .secret_id(&db)
        .version_stage("AWSCURRENT")
        .move_to_version_id(&v1)
        .remove_from_version_id(&v2)
        .send()
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(2), || s.read("db-password").as_deref()
            == Some("rot-pw-1"))
        .await,
        "stage moved back not followed: {}",
        agent.log()
    );
    assert!(
        eventually(Duration::from_secs(3), || metric(
            port,
            "kura_agent_changes_total"
        ) == 3.0)
        .await,
        "first write, rotation, roll-back"
    );

    // Deleted (scheduled for deletion): the last good files stay, the error is counted and
    // logged by name, the agent keeps running and keeps following the other secret.
    client.delete_secret().secret_id(&db).send().await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || metric(
            port,
            "kura_agent_errors_total{kind=\"deleted\"}"
        ) >= 1.0)
        .await,
        "{}",
        agent.log()
    );
    put_value(&client, &api, "rot-api-2").await;
    s.expect_file(&agent, "api-key", "rot-api-2", Duration::from_secs(5))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(agent.is_running());
    assert_eq!(s.read("db-password").as_deref(), Some("rot-pw-1"));
    assert_eq!(
        s.read("db.json").as_deref(),
        Some(r#"{"password":"rot-pw-1"}"#)
    );
    let log = agent.log();
    assert!(
        log.lines()
            .any(|l| l.contains(&db) && l.contains("scheduled for deletion")),
        "the error names the secret:\n{log}"
    );
    agent.assert_log_free_of(&["rot-pw-1", "rot-pw-2", "rot-api-1", "rot-api-2"]);
}

#[tokio::test]
async fn endpoint_down_then_recovery() {
    let port = moto::free_port();
    let first = MotoOn::start(port);
    let db = name("db");
    client_for(&first.endpoint)
        .create_secret()
        .name(&db)
        .secret_string("down-1")
        .send()
        .await
        .unwrap();
    let s = Scratch::new();
    let mport = moto::free_port();
    let m = metrics_args(mport);
    let mut agent = s.run(
        &spec(vec![file("db", &db)], 2, None),
        &aws_env(&first.endpoint),
        &args(&m),
    );
    s.expect_written(&agent, "db").await;
    let success = metric(mport, "kura_agent_last_success_timestamp_seconds");
    assert!(success > 0.0);

    // The endpoint goes away: the files stay, the errors are counted, the agent waits.
    drop(first);
    assert!(
        eventually(Duration::from_secs(20), || metric(
            mport,
            "kura_agent_errors_total{kind=\"unavailable\"}"
        ) >= 2.0)
        .await,
        "{}",
        agent.log()
    );
    assert!(agent.is_running());
    assert_eq!(s.read("db").as_deref(), Some("down-1"));

    // It comes back on the same address with a rotated value: the agent recovers by itself.
    std::thread::sleep(Duration::from_secs(2));
    let second = MotoOn::start(port);
    client_for(&second.endpoint)
        .create_secret()
        .name(&db)
        .secret_string("down-2")
        .send()
        .await
        .unwrap();
    let back = Instant::now();
    s.expect_file(&agent, "db", "down-2", Duration::from_secs(15))
        .await;
    println!(
        "recovered {:?} after the endpoint came back",
        back.elapsed()
    );
    assert!(metric(mport, "kura_agent_last_success_timestamp_seconds") >= success);
    agent.assert_log_free_of(&["down-1", "down-2"]);
}

#[tokio::test]
async fn refresh_now_annotation_triggers_an_immediate_refresh() {
    let moto = Moto::start();
    let db = name("db");
    moto.secret(&db, "now-1", None, &[]).await;
    let s = Scratch::new();
    s.annotate("kura.dev/inject=\"true\"\nkura.dev/refresh-now=\"1\"\n");
    let mut agent = s.run(&spec(vec![file("db", &db)], 3600, None), &moto.env(), &[]);
    s.expect_written(&agent, "db").await;
    put_value(&moto.client().await, &db, "now-2").await;
    // The interval is an hour: nothing happens by itself.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(s.read("db").as_deref(), Some("now-1"));

    // `kubectl annotate --overwrite pod/x kura.dev/refresh-now=2`, as the kubelet projects it.
    s.annotate("kura.dev/inject=\"true\"\nkura.dev/refresh-now=\"2\"\n");
    let annotated = Instant::now();
    s.expect_file(&agent, "db", "now-2", Duration::from_secs(2))
        .await;
    println!("refresh-now took {:?}", annotated.elapsed());
    assert!(agent.is_running());
}

#[tokio::test]
async fn http_reload_hook_posts_after_a_rotation() {
    let moto = Moto::start();
    let db = name("db");
    moto.secret(&db, "http-1", None, &[]).await;
    let s = Scratch::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let hook_port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    let file_path = s.dir.join("db");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let mut c = conn.unwrap();
            let mut buf = [0u8; 2048];
            let n = c.read(&mut buf).unwrap();
            // What the app would see when it reloads.
            let content = std::fs::read_to_string(&file_path).unwrap_or_default();
            c.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                .unwrap();
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            if tx.send((request, content)).is_err() {
                return;
            }
        }
    });
    let port = moto::free_port();
    let m = metrics_args(port);
    let mut agent = s.run(
        &spec(
            vec![file("db", &db)],
            1,
            Some(&format!("http://127.0.0.1:{hook_port}/-/reload")),
        ),
        &moto.env(),
        &args(&m),
    );
    s.expect_written(&agent, "db").await;
    // The first write happens before the app starts: no reload for it.
    assert!(rx.recv_timeout(Duration::from_millis(2500)).is_err());

    put_value(&moto.client().await, &db, "http-2").await;
    let (request, content) = rx
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|_| panic!("no reload POST: {}", agent.log()));
    assert!(
        request.starts_with("POST /-/reload HTTP/1.1\r\n"),
        "{request}"
    );
    assert_eq!(
        content, "http-2",
        "the hook runs after the new set is in place"
    );
    assert!(
        eventually(Duration::from_secs(2), || metric(
            port,
            "kura_agent_reloads_total"
        ) == 1.0)
        .await
    );
    // One rotation, one reload.
    assert!(rx.recv_timeout(Duration::from_millis(2500)).is_err());
    assert!(agent.is_running());
}

#[tokio::test]
async fn signal_reload_hook_reaches_the_named_process() {
    let moto = Moto::start();
    let db = name("db");
    moto.secret(&db, "sig-1", None, &[]).await;
    // A uniquely named copy of sleep, so that no other process on the machine is signalled.
    let bin_dir = tempfile::tempdir().unwrap();
    let process = format!("kr{}", fastrand::u32(..));
    let bin = bin_dir.path().join(&process);
    std::fs::copy("/bin/sleep", &bin).unwrap();
    let mut app = KillOnDrop(std::process::Command::new(&bin).arg("60").spawn().unwrap());
    let app = &mut app.0;

    let s = Scratch::new();
    let mut agent = s.run(
        &spec(
            vec![file("db", &db)],
            1,
            Some(&format!("signal:SIGHUP:{process}")),
        ),
        &moto.env(),
        &[],
    );
    s.expect_written(&agent, "db").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        app.try_wait().unwrap().is_none(),
        "no signal for the first write"
    );

    put_value(&moto.client().await, &db, "sig-2").await;
    let mut status = None;
    assert!(
        eventually(Duration::from_secs(5), || {
            status = app.try_wait().unwrap();
            status.is_some()
        })
        .await,
        "{}",
        agent.log()
    );
    assert_eq!(status.unwrap().signal(), Some(libc_sighup()));
    assert_eq!(s.read("db").as_deref(), Some("sig-2"));
    assert!(agent.is_running());
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn libc_sighup() -> i32 {
    nix::sys::signal::Signal::SIGHUP as i32
}

#[tokio::test]
async fn a_failing_reload_hook_is_counted_and_leaves_the_files() {
    let moto = Moto::start();
    let db = name("db");
    moto.secret(&db, "fail-1", None, &[]).await;
    let s = Scratch::new();
    // Nothing listens there.
    let dead = moto::free_port();
    let port = moto::free_port();
    let m = metrics_args(port);
    let mut agent = s.run(
        &spec(
            vec![file("db", &db)],
            1,
            Some(&format!("http://127.0.0.1:{dead}/-/reload")),
        ),
        &moto.env(),
        &args(&m),
    );
    s.expect_written(&agent, "db").await;
    put_value(&moto.client().await, &db, "fail-2").await;
    assert!(
        eventually(Duration::from_secs(10), || metric(
            port,
            "kura_agent_errors_total{kind=\"reload\"}"
        ) == 1.0)
        .await,
        "{}",
        agent.log()
    );
    assert_eq!(s.read("db").as_deref(), Some("fail-2"));
    assert_eq!(metric(port, "kura_agent_reloads_total"), 0.0);
    // The agent goes on refreshing; an unchanged set does not run the hook again.
    let refreshes = metric(port, "kura_agent_refreshes_total");
    assert!(
        eventually(Duration::from_secs(5), || metric(
            port,
            "kura_agent_refreshes_total"
        ) >= refreshes + 2.0)
        .await
    );
    assert_eq!(
        metric(port, "kura_agent_errors_total{kind=\"reload\"}"),
        1.0
    );
    assert!(agent.is_running());
}
