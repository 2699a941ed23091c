//! `--metrics-listen`: the Prometheus endpoint of `kura-agent run`, loopback only, off by default.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test]
async fn metrics_report_refreshes_changes_errors_calls_and_last_success() {
    let moto = Moto::start();
    let (db, api) = (name("db"), name("api"));
    moto.secret(&db, r#"{"password":"m-1"}"#, None, &[]).await;
    moto.secret(&api, "m-api", None, &[]).await;
    let s = Scratch::new();
    let port = moto::free_port();
    let started = now().floor();
    let mut agent = s.run(
        &spec(
            vec![with_key(file("db", &db), "password"), file("api", &api)],
            1,
            None,
        ),
        &moto.env(),
        &["--metrics-listen", &format!("127.0.0.1:{port}")],
    );
    assert!(
        eventually(Duration::from_secs(10), || metric(
            port,
            "kura_agent_refreshes_total"
        ) >= 2.0)
        .await,
        "{}",
        agent.log()
    );
    let text = scrape(port).unwrap();
    for family in [
        "kura_agent_refreshes_total",
        "kura_agent_changes_total",
        "kura_agent_errors_total",
        "kura_agent_aws_calls_total",
        "kura_agent_last_refresh_aws_calls",
        "kura_agent_reloads_total",
        "kura_agent_last_success_timestamp_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family}:\n{text}"
        );
    }
    let refreshes = sample(&text, "kura_agent_refreshes_total").unwrap();
    assert_eq!(sample(&text, "kura_agent_changes_total"), Some(1.0));
    // One batch per refresh for two unpinned secrets.
    assert_eq!(
        sample(&text, "kura_agent_last_refresh_aws_calls"),
        Some(1.0)
    );
    let calls = sample(&text, "kura_agent_aws_calls_total").unwrap();
    assert!(calls >= refreshes && calls <= refreshes + 1.0, "{text}");
    let last = sample(&text, "kura_agent_last_success_timestamp_seconds").unwrap();
    assert!(last >= started && last <= now(), "{last} vs {started}");
    for kind in kura_agent::metrics::ErrorKind::ALL {
        assert_eq!(
            sample(
                &text,
                &format!("kura_agent_errors_total{{kind=\"{kind}\"}}")
            ),
            Some(0.0),
            "{kind}"
        );
    }

    // A rotation is a change.
    let client = moto.client().await;
    put_value(&client, &db, r#"{"password":"m-2"}"#).await;
    assert!(
        eventually(Duration::from_secs(3), || metric(
            port,
            "kura_agent_changes_total"
        ) == 2.0)
        .await
    );
    assert_eq!(s.read("db").as_deref(), Some("m-2"));

    // A value that no longer renders (the key is gone) is a render error; the file keeps its
    // last good content and the last success time stops moving.
    put_value(&client, &db, r#"{"user":"m-3"}"#).await;
    assert!(
        eventually(Duration::from_secs(3), || metric(
            port,
            "kura_agent_errors_total{kind=\"render\"}"
        ) >= 1.0)
        .await,
        "{}",
        agent.log()
    );
    let stuck = metric(port, "kura_agent_last_success_timestamp_seconds");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        metric(port, "kura_agent_last_success_timestamp_seconds"),
        stuck
    );
    assert_eq!(s.read("db").as_deref(), Some("m-2"));
    assert_eq!(metric(port, "kura_agent_changes_total"), 2.0);
    assert!(agent.is_running());
    agent.assert_log_free_of(&["m-1", "m-2", "m-3", "m-api"]);
}

#[test]
fn metrics_listen_refuses_non_loopback_addresses() {
    let s = Scratch::new();
    let spec = spec(vec![file("x", "/x")], 60, None);
    for (how, addr) in [
        ("flag", "0.0.0.0:9102"),
        ("env", "10.1.2.3:9102"),
        ("flag", "[::]:9102"),
    ] {
        let mut c = s.command("run", &spec);
        if how == "flag" {
            c.args(["--metrics-listen", addr]);
        } else {
            c.env("KURA_METRICS_LISTEN", addr);
        }
        let out = c.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{how} {addr}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--metrics-listen") && err.contains("not a loopback address"),
            "{err}"
        );
    }
}

#[test]
fn a_taken_metrics_port_is_a_clear_start_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let s = Scratch::new();
    let store = s.tmp.path().join("store.yaml");
    fs::write(&store, "secrets: [{name: /x, value: v}]\n").unwrap();
    let out = s
        .command("run", &spec(vec![file("x", "/x")], 60, None))
        .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
        .env("KURA_STORE", format!("file:{}", store.display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let msg = s.termination_message();
    assert!(
        msg.contains(&format!("--metrics-listen 127.0.0.1:{port}")) && msg.contains("in use"),
        "{msg}"
    );
    assert!(
        s.read("x").is_none(),
        "nothing fetched before the listener is up"
    );
}

/// Inodes of the listening TCP sockets in this network namespace.
fn listening_inodes() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // st 0A = LISTEN; column 9 is the inode.
            if cols.get(3) == Some(&"0A")
                && let Some(inode) = cols.get(9)
            {
                out.insert(inode.to_string());
            }
        }
    }
    out
}

/// Whether process `pid` holds a listening TCP socket.
fn listens(pid: u32) -> bool {
    let listening = listening_inodes();
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| fs::read_link(e.path()).ok())
        .filter_map(|t| {
            t.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_string)
        })
        .any(|inode| listening.contains(&inode))
}

#[tokio::test]
async fn metrics_are_off_by_default() {
    let moto = Moto::start();
    let db = name("db");
    moto.secret(&db, "off-1", None, &[]).await;
    let (s, t) = (Scratch::new(), Scratch::new());
    let spec = spec(vec![file("db", &db)], 60, None);
    let plain = t.run(&spec, &moto.env(), &[]);
    let port = moto::free_port();
    let with = s.run(
        &spec,
        &moto.env(),
        &["--metrics-listen", &format!("127.0.0.1:{port}")],
    );
    assert!(eventually(Duration::from_secs(10), || scrape(port).is_some()).await);
    assert!(eventually(Duration::from_secs(10), || t.read("db").is_some()).await);
    assert!(listens(with.child.id()), "the positive control listens");
    assert!(
        !listens(plain.child.id()),
        "no listener without --metrics-listen"
    );
}
