//! Fetching against moto: pinned versions, binary secrets, JSON keys and formats, and the
//! number of API calls per refresh.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_secretsmanager::primitives::Blob;
use common::*;
use kura_agent::agent::{Agent, State};
use kura_agent::spec::{Format, SPEC_VERSION, SecretFile, Spec};
use kura_agent::store::{AwsStore, FetchRequest, Store, StoreError};
use kura_agent::writer::AtomicWriter;

fn pinned(mut f: SecretFile, id: Option<&str>, stage: Option<&str>) -> SecretFile {
    f.version_id = id.map(Into::into);
    f.version_stage = stage.map(Into::into);
    f
}

async fn store(moto: &Moto) -> AwsStore {
    aws_store(&moto.endpoint).await
}

#[tokio::test]
async fn pinned_version_ids_and_stages() {
    let moto = Moto::start();
    let client = moto.client().await;
    let db = name("pinned");
    let v1 = client
        .create_secret()
        .name(&db)
        .secret_string("pin-v1")
        .send()
        .await
        .unwrap()
        .version_id
        .unwrap();
    put_value(&client, &db, "pin-v2").await;
    // A custom label on the first version, as blue/green rotations use.
    client
        .update_secret_version_stage()
        .secret_id(&db)
        .version_stage("BLUE")
        .move_to_version_id(&v1)
        .send()
        .await
        .unwrap();

    let s = Scratch::new();
    let port = moto::free_port();
    let spec = spec(
        vec![
            file("current", &db),
            pinned(file("current-stage", &db), None, Some("AWSCURRENT")),
            pinned(file("previous", &db), None, Some("AWSPREVIOUS")),
            pinned(file("first", &db), Some(&v1), None),
            pinned(file("blue", &db), None, Some("BLUE")),
        ],
        1,
        None,
    );
    let mut agent = s.run(
        &spec,
        &moto.env(),
        &["--metrics-listen", &format!("127.0.0.1:{port}")],
    );
    s.expect_written(&agent, "blue").await;
    assert_eq!(s.read("current").as_deref(), Some("pin-v2"));
    assert_eq!(s.read("current-stage").as_deref(), Some("pin-v2"));
    assert_eq!(s.read("previous").as_deref(), Some("pin-v1"));
    assert_eq!(s.read("first").as_deref(), Some("pin-v1"));
    assert_eq!(s.read("blue").as_deref(), Some("pin-v1"));
    // One batch for the AWSCURRENT reads, one GetSecretValue per pinned entry.
    assert!(
        eventually(Duration::from_secs(5), || metric(
            port,
            "kura_agent_last_refresh_aws_calls"
        ) == 4.0)
        .await
    );

    // A rotation moves the stages; the version id pin does not move.
    put_value(&client, &db, "pin-v3").await;
    s.expect_file(&agent, "current", "pin-v3", Duration::from_secs(5))
        .await;
    assert_eq!(s.read("current-stage").as_deref(), Some("pin-v3"));
    assert_eq!(s.read("previous").as_deref(), Some("pin-v2"));
    assert_eq!(s.read("first").as_deref(), Some("pin-v1"));
    assert_eq!(s.read("blue").as_deref(), Some("pin-v1"));
    assert!(agent.is_running());
    agent.assert_log_free_of(&["pin-v1", "pin-v2", "pin-v3"]);
}

#[tokio::test]
async fn an_unknown_pinned_version_is_an_error_naming_it() {
    let moto = Moto::start();
    let db = name("pinned");
    moto.secret(&db, "x", None, &[]).await;
    let s = Scratch::new();
    let spec = spec(
        vec![pinned(file("old", &db), None, Some("NOSUCHSTAGE"))],
        60,
        None,
    );
    let (status, _) = s.init(&spec, &moto.env());
    assert!(!status.success());
    let msg = s.termination_message();
    assert!(
        msg.contains(&db) && msg.contains("NOSUCHSTAGE") && msg.contains("does not exist"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_secret_scheduled_for_deletion_is_deleted_batched_or_pinned() {
    let moto = Moto::start();
    let db = name("doomed");
    moto.secret(&db, "x", None, &[]).await;
    let client = moto.client().await;
    // A second version, so the pinned read below names a stage that exists.
    put_value(&client, &db, "y").await;
    client.delete_secret().secret_id(&db).send().await.unwrap();
    let store = store(&moto).await;
    let got = store
        .fetch(&[
            FetchRequest::current(&db),
            FetchRequest {
                secret: db.clone(),
                version_id: None,
                version_stage: Some("AWSPREVIOUS".into()),
            },
        ])
        .await;
    for r in &got {
        match r {
            Err(e @ StoreError::Deleted { secret }) => {
                assert_eq!(secret, &db);
                assert!(e.to_string().contains("scheduled for deletion"), "{e}");
            }
            other => panic!("wanted Deleted, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn secret_binary_is_written_as_bytes() {
    let moto = Moto::start();
    let client = moto.client().await;
    let bin = name("bin");
    let bytes: Vec<u8> = vec![0, 159, 146, 150, 255, b'\n', b'\r', 0, 1, 2];
    let v1 = client
        .create_secret()
        .name(&bin)
        .secret_binary(Blob::new(bytes.clone()))
        .send()
        .await
        .unwrap()
        .version_id
        .unwrap();
    let s = Scratch::new();
    let spec = spec(
        vec![
            // Through BatchGetSecretValue and through GetSecretValue.
            file("keystore.p12", &bin),
            pinned(file("pinned.p12", &bin), Some(&v1), None),
        ],
        60,
        None,
    );
    let (status, log) = s.init(&spec, &moto.env());
    assert!(status.success(), "{log}");
    assert_eq!(s.read_bytes("keystore.p12").unwrap(), bytes);
    assert_eq!(s.read_bytes("pinned.p12").unwrap(), bytes);

    // A key on a binary secret is an error naming the file and the secret.
    let s2 = Scratch::new();
    let (status, _) = s2.init(
        &spec_of(vec![with_key(file("k", &bin), "password")]),
        &moto.env(),
    );
    assert!(!status.success());
    let msg = s2.termination_message();
    assert!(
        msg.contains("\"k\"") && msg.contains(&bin) && msg.contains("binary"),
        "{msg}"
    );
}

#[tokio::test]
async fn json_keys_pointers_and_the_json_and_env_formats() {
    let moto = Moto::start();
    let db = name("json");
    let doc = r#"{"user":"app","password":"p'w $HOME `x`","port":5432,"nested":{"a":[1,{"b":"deep"}]},"tls":{"crt":"C"}}"#;
    moto.secret(&db, doc, None, &[]).await;
    let s = Scratch::new();
    let spec = spec(
        vec![
            with_key(file("user", &db), "user"),
            with_key(file("port", &db), "port"),
            with_key(file("deep", &db), "/nested/a/1/b"),
            with_format(with_key(file("nested.json", &db), "nested"), Format::Json),
            with_format(with_key(file("tls.json", &db), "/tls"), Format::Json),
            with_format(file("all.json", &db), Format::Json),
            with_format(file("db.env", &db), Format::Env),
            with_format(with_key(file("tls.env", &db), "tls"), Format::Env),
        ],
        60,
        None,
    );
    let (status, log) = s.init(&spec, &moto.env());
    assert!(status.success(), "{log}");
    assert_eq!(s.read("user").as_deref(), Some("app"));
    assert_eq!(s.read("port").as_deref(), Some("5432"));
    assert_eq!(s.read("deep").as_deref(), Some("deep"));
    assert_eq!(
        s.read("nested.json").as_deref(),
        Some(r#"{"a":[1,{"b":"deep"}]}"#)
    );
    assert_eq!(s.read("tls.json").as_deref(), Some(r#"{"crt":"C"}"#));
    let all: serde_json::Value = serde_json::from_str(&s.read("all.json").unwrap()).unwrap();
    assert_eq!(all, serde_json::from_str::<serde_json::Value>(doc).unwrap());
    assert_eq!(s.read("tls.env").as_deref(), Some("crt='C'\n"));

    // The env file is what `set -a; . file` expects, and quoting survives the shell.
    let env_file = s.dir.join("db.env");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"set -a; . "$1"; printf '%s|%s|%s|%s' "$user" "$password" "$port" "$nested""#)
        .arg("sh")
        .arg(&env_file)
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        r#"app|p'w $HOME `x`|5432|{"a":[1,{"b":"deep"}]}"#
    );

    // Errors name the file and the secret: a missing pointer, env of a non-object.
    for (f, needle) in [
        (with_key(file("missing", &db), "/nested/zz"), "no JSON key"),
        (
            with_format(with_key(file("port.env", &db), "port"), Format::Env),
            "a number",
        ),
    ] {
        let s = Scratch::new();
        let fname = f.file.clone();
        let (status, _) = s.init(&spec_of(vec![f]), &moto.env());
        assert!(!status.success());
        let msg = s.termination_message();
        assert!(
            msg.contains(&format!("{fname:?}")) && msg.contains(&db) && msg.contains(needle),
            "{msg}"
        );
        assert!(!msg.contains("deep") && !msg.contains("p'w"), "{msg}");
    }
}

fn spec_of(files: Vec<SecretFile>) -> String {
    spec(files, 60, None)
}

#[tokio::test]
async fn batches_take_twenty_secrets_per_call() {
    let moto = Moto::start();
    let prefix = name("many");
    let mut names = Vec::new();
    for i in 0..45 {
        let n = format!("{prefix}/{i:02}");
        moto.secret(&n, &format!("value-{i}"), None, &[]).await;
        names.push(n);
    }
    let store = store(&moto).await;
    for n in [1usize, 19, 20, 21, 40, 45] {
        let reqs: Vec<FetchRequest> = names[..n].iter().map(FetchRequest::current).collect();
        let before = store.api_calls();
        let got = store.fetch(&reqs).await;
        assert_eq!(store.api_calls() - before, n.div_ceil(20) as u64, "n = {n}");
        assert_eq!(got.len(), n);
        for (r, g) in reqs.iter().zip(&got) {
            assert_eq!(&g.as_ref().unwrap().name, &r.secret);
        }
    }

    // A missing secret in a batch is reported by name; the others still arrive.
    let missing = format!("{prefix}/missing");
    let mut reqs: Vec<FetchRequest> = names[..21].iter().map(FetchRequest::current).collect();
    reqs.insert(7, FetchRequest::current(&missing));
    let got = store.fetch(&reqs).await;
    for (r, g) in reqs.iter().zip(&got) {
        match g {
            Ok(f) => assert_eq!(f.name, r.secret),
            Err(StoreError::NotFound { secret }) => assert_eq!(secret, &missing),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(got.iter().filter(|g| g.is_err()).count(), 1);

    // Through a whole refresh: two files per secret and an explicit AWSCURRENT still cost
    // ⌈45/20⌉ batch calls, plus one call for the entry pinned to AWSPREVIOUS.
    put_value(&moto.client().await, &names[0], "value-0b").await;
    let mut files = Vec::new();
    for (i, n) in names.iter().enumerate() {
        files.push(file(&format!("f{i}"), n));
        files.push(with_format(file(&format!("g{i}"), n), Format::Raw));
    }
    let mut p = file("pinned-a", &names[0]);
    p.version_stage = Some("AWSPREVIOUS".into());
    let mut q = file("pinned-b", &names[1]);
    q.version_stage = Some("AWSCURRENT".into());
    files.push(p);
    files.push(q);
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::new(
        Spec {
            version: SPEC_VERSION.into(),
            agent: Default::default(),
            refresh_interval: 60,
            reload: None,
            files,
            env: Vec::new(),
            env_from: Vec::new(),
            templates: Vec::new(),
        },
        Store::Aws(store.clone()),
        AtomicWriter::new(dir.path()),
    );
    let mut state = State::default();
    let before = store.api_calls();
    let r = agent.refresh(&mut state).await.unwrap();
    assert!(r.changed && r.errors.is_empty());
    assert_eq!(store.api_calls() - before, 4, "AWSCURRENT pins are batched");
    let before = store.api_calls();
    let r = agent.refresh(&mut state).await.unwrap();
    assert!(!r.changed, "nothing rotated, nothing rewritten");
    assert_eq!(store.api_calls() - before, 4);
    let text = agent.metrics.render(store.api_calls());
    assert_eq!(
        sample(&text, "kura_agent_last_refresh_aws_calls"),
        Some(4.0)
    );
    assert_eq!(sample(&text, "kura_agent_refreshes_total"), Some(2.0));
    assert_eq!(sample(&text, "kura_agent_changes_total"), Some(1.0));
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
    let content: BTreeMap<String, String> = (1..45)
        .map(|i| (format!("g{i}"), read(&format!("g{i}"))))
        .collect();
    for (f, v) in &content {
        assert_eq!(&format!("value-{}", &f[1..]), v);
    }
    assert_eq!(read("f0"), "value-0b");
    assert_eq!(read("pinned-a"), "value-0");
    assert_eq!(read("pinned-b"), "value-1");
}
