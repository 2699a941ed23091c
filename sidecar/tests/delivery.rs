//! Delivery beyond plain files, against moto and the local file store: templates over several
//! inputs (Secrets Manager and SSM), the escaping filters, re-rendering on rotation of one input,
//! strict undefined keys, the environment values file `kura-agent exec` reads (content, mode,
//! atomic swap, precedence, `envFrom` key checks) and one fetch per reference.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use kura_agent::agent::State;
use kura_agent::contract::{ENV_VALUES_FILE, env};
use kura_agent::store::{AwsStore, Store};

async fn store(moto: &Moto) -> AwsStore {
    aws_store(&moto.endpoint).await
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn read(dir: &Path, name: &str) -> String {
    fs::read_to_string(dir.join(name)).unwrap()
}

#[tokio::test]
async fn spring_boot_properties_from_a_secret_and_a_parameter() {
    let moto = Moto::start();
    let (db, key) = (name("db"), name("api-key"));
    moto.secret(
        &db,
        r#"{"username":"orders","password":"sb-pass-1"}"#,
        None,
        &[],
    )
    .await;
    moto.parameter(&key, "sb-key-1", "SecureString", None).await;
    let mut spec = base_spec(60);
    spec.templates.push(template(
        "application.properties",
        &[("db", &db), ("key", &format!("ssm:{key}"))],
        "spring.datasource.username={{ db.username }}\n\
         spring.datasource.password={{ db.password }}\n\
         api.key={{ key }}\n",
        "0440",
    ));
    spec.files
        .push(with_key(file("db-password", &db), "password"));
    let s = Scratch::new();
    let (status, log) = s.init(&spec.to_json(), &moto.env());
    assert!(status.success(), "{log}");
    assert_eq!(
        s.read("application.properties").as_deref(),
        Some(
            "spring.datasource.username=orders\n\
             spring.datasource.password=sb-pass-1\n\
             api.key=sb-key-1\n"
        )
    );
    assert_eq!(s.mode("application.properties"), 0o440);
    assert_eq!(s.read("db-password").as_deref(), Some("sb-pass-1"));
    // A rendered file is one of the set, linked like every other file.
    assert_eq!(
        fs::read_link(s.dir.join("application.properties")).unwrap(),
        Path::new("..data/application.properties")
    );
    // No variables declared: no values file.
    assert!(s.env_values().is_none());
    assert!(log.contains("\"templates\":1"), "{log}");
    for v in ["sb-pass-1", "sb-key-1"] {
        assert!(!log.contains(v), "a value leaked into the log:\n{log}");
    }
}

#[tokio::test]
async fn escaping_filters_for_a_dsn_an_env_file_and_json() {
    let moto = Moto::start();
    let db = name("db");
    let password = r#"p@ss:w/rd%20 'it"s$(x)"#;
    let value = serde_json::json!({"username": "orders", "password": password, "port": 5432});
    moto.secret(&db, &value.to_string(), None, &[]).await;
    let mut spec = base_spec(60);
    let inputs = [("db", db.as_str())];
    spec.templates.push(template(
        "dsn",
        &inputs,
        "postgres://{{ db.username }}:{{ db.password | urlencode }}@db.internal:{{ db.port }}/orders",
        "0400",
    ));
    spec.templates.push(template(
        "app.env",
        &inputs,
        "DB_USER={{ db.username | shell }}\nDB_PASSWORD={{ db.password | shell }}\n",
        "0400",
    ));
    spec.templates.push(template(
        "config.json",
        &inputs,
        r#"{"user": {{ db.username | tojson }}, "password": {{ db.password | tojson }}, "port": {{ db.port }}}"#,
        "0400",
    ));
    let s = Scratch::new();
    let (status, log) = s.init(&spec.to_json(), &moto.env());
    assert!(status.success(), "{log}");

    // Every reserved character of the password is percent-encoded: the DSN has one '@' and
    // its userinfo one ':'.
    let dsn = s.read("dsn").unwrap();
    assert_eq!(
        dsn,
        "postgres://orders:p%40ss%3Aw%2Frd%2520%20%27it%22s%24%28x%29@db.internal:5432/orders"
    );
    assert_eq!(dsn.matches('@').count(), 1);

    // A shell that sources the file gets the password back, unexpanded.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"set -a; . "$1"; [ "$DB_PASSWORD" = "$WANT" ] && [ "$DB_USER" = orders ]"#)
        .arg("sh")
        .arg(s.dir.join("app.env"))
        .env("WANT", password)
        .status()
        .unwrap();
    assert!(out.success(), "{}", s.read("app.env").unwrap_or_default());

    let json: serde_json::Value = serde_json::from_str(&s.read("config.json").unwrap()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"user": "orders", "password": password, "port": 5432})
    );
}

#[tokio::test]
async fn a_rotated_input_re_renders_its_files_only_and_failed_references_keep_last_good_values() {
    let moto = Moto::start();
    let client = moto.client().await;
    let (db, key, other) = (name("db"), name("key"), name("other"));
    moto.secret(
        &db,
        r#"{"username":"u1","password":"rr-pass-1"}"#,
        None,
        &[],
    )
    .await;
    moto.parameter(&key, "rr-key-1", "SecureString", None).await;
    moto.secret(&other, r#"{"token":"rr-other-1"}"#, None, &[])
        .await;
    let mut spec = base_spec(60);
    spec.templates.push(template(
        "application.properties",
        &[("db", &db), ("key", &format!("ssm:{key}"))],
        "user={{ db.username }}\npassword={{ db.password }}\nkey={{ key }}\n",
        "0400",
    ));
    spec.templates.push(template(
        "other.conf",
        &[("o", &other)],
        "token={{ o.token }}\n",
        "0400",
    ));
    spec.files
        .push(with_key(file("other-token", &other), "token"));
    spec.env.push(env_var("DB_USER", &format!("{db}#username")));
    spec.env
        .push(env_var("OTHER_TOKEN", &format!("{other}#token")));
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(Store::Aws(store(&moto).await), dir.path(), spec);
    let mut state = State::default();
    let r = agent.refresh(&mut state).await.unwrap();
    assert!(r.changed && r.errors.is_empty(), "{:?}", r.errors);
    let props = |k: &str| format!("user=u1\npassword=rr-pass-1\nkey={k}\n");
    assert_eq!(
        read(dir.path(), "application.properties"),
        props("rr-key-1")
    );

    // A new parameter version: the one template reading it is re-rendered, nothing else.
    moto.parameter(&key, "rr-key-2", "SecureString", None).await;
    let r = agent.refresh(&mut state).await.unwrap();
    assert!(r.changed && r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.changed_files, ["application.properties"]);
    assert!(r.changed_variables.is_empty());
    assert_eq!(
        read(dir.path(), "application.properties"),
        props("rr-key-2")
    );
    assert_eq!(read(dir.path(), "other.conf"), "token=rr-other-1\n");
    assert_eq!(read(dir.path(), "other-token"), "rr-other-1");

    // PutSecretValue on the secret: the template changes, and the variable reading a key that
    // kept its value does not.
    put_value(&client, &db, r#"{"username":"u1","password":"rr-pass-2"}"#).await;
    let r = agent.refresh(&mut state).await.unwrap();
    assert_eq!(r.changed_files, ["application.properties"]);
    assert!(r.changed_variables.is_empty());
    assert!(read(dir.path(), "application.properties").contains("password=rr-pass-2\n"));
    put_value(&client, &db, r#"{"username":"u2","password":"rr-pass-2"}"#).await;
    let r = agent.refresh(&mut state).await.unwrap();
    assert_eq!(r.changed_files, ["application.properties"]);
    assert_eq!(r.changed_variables, ["DB_USER"]);

    // Nothing rotated: nothing rewritten.
    let r = agent.refresh(&mut state).await.unwrap();
    assert!(!r.changed && r.changed_files.is_empty() && r.changed_variables.is_empty());

    // One reference fails (scheduled for deletion): every file, template and variable reading
    // it keeps its last good value, while the others still rotate in the same refresh.
    client
        .delete_secret()
        .secret_id(&other)
        .send()
        .await
        .unwrap();
    moto.parameter(&key, "rr-key-3", "SecureString", None).await;
    let r = agent.refresh(&mut state).await.unwrap();
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert!(
        r.errors[0].contains(&other) && r.errors[0].contains("deletion"),
        "{:?}",
        r.errors
    );
    assert_eq!(r.changed_files, ["application.properties"]);
    assert!(read(dir.path(), "application.properties").ends_with("key=rr-key-3\n"));
    assert_eq!(read(dir.path(), "other.conf"), "token=rr-other-1\n");
    assert_eq!(read(dir.path(), "other-token"), "rr-other-1");
    let vars: BTreeMap<String, String> =
        serde_json::from_slice(&fs::read(dir.path().join("..data").join(ENV_VALUES_FILE)).unwrap())
            .unwrap();
    assert_eq!(
        vars,
        map(&[("DB_USER", "u2"), ("OTHER_TOKEN", "rr-other-1")])
    );
}

#[tokio::test]
async fn an_undefined_key_keeps_the_previous_file_and_names_file_and_key() {
    let moto = Moto::start();
    let client = moto.client().await;
    let (db, plain) = (name("db"), name("plain"));
    moto.secret(
        &db,
        r#"{"username":"u1","password":"su-pass-1"}"#,
        None,
        &[],
    )
    .await;
    moto.secret(&plain, "su-plain-1", None, &[]).await;
    let mut spec = base_spec(1);
    spec.templates.push(template(
        "dsn",
        &[("db", &db)],
        "postgres://{{ db.username | urlencode }}:{{ db.password | urlencode }}@db/app",
        "0400",
    ));
    spec.files.push(file("plain", &plain));
    let spec = spec.to_json();
    let s = Scratch::new();
    let agent = s.run(&spec, &moto.env(), &[]);
    s.expect_file(
        &agent,
        "dsn",
        "postgres://u1:su-pass-1@db/app",
        Duration::from_secs(10),
    )
    .await;

    // The secret loses its username: the error names the file and the key, the previous good
    // file stays, and the other file still rotates.
    put_value(&client, &db, r#"{"password":"su-pass-2"}"#).await;
    let named = |log: &str| {
        log.lines().any(|l| {
            l.contains(r#"template file \"dsn\""#)
                && l.contains(r#"no key \"username\""#)
                && l.contains("undefined")
        })
    };
    assert!(
        eventually(Duration::from_secs(10), || named(&agent.log())).await,
        "{}",
        agent.log()
    );
    put_value(&client, &plain, "su-plain-2").await;
    s.expect_file(&agent, "plain", "su-plain-2", Duration::from_secs(10))
        .await;
    assert_eq!(
        s.read("dsn").as_deref(),
        Some("postgres://u1:su-pass-1@db/app")
    );

    // The key comes back: the file follows.
    put_value(&client, &db, r#"{"username":"u3","password":"su-pass-3"}"#).await;
    s.expect_file(
        &agent,
        "dsn",
        "postgres://u3:su-pass-3@db/app",
        Duration::from_secs(10),
    )
    .await;
    agent.assert_log_free_of(&["su-pass-1", "su-pass-2", "su-pass-3", "su-plain"]);

    // On the first write there is no previous file: init fails, naming file and key.
    let mut typo = base_spec(60);
    typo.templates.push(template(
        "dsn",
        &[("db", &db)],
        "{{ db.password }}\n{{ db.user }}",
        "0400",
    ));
    let fresh = Scratch::new();
    let (status, log) = fresh.init(&typo.to_json(), &moto.env());
    assert!(!status.success());
    let msg = fresh.termination_message();
    assert!(
        msg.contains(r#"template file "dsn""#)
            && msg.contains(r#"no key "user""#)
            && msg.contains("line 2"),
        "{msg}"
    );
    assert!(fresh.read("dsn").is_none());
    for text in [msg.as_str(), log.as_str()] {
        assert!(!text.contains("su-pass-3"), "{text}");
    }
}

#[tokio::test]
async fn the_env_values_file_is_private_and_swaps_with_the_set() {
    let moto = Moto::start();
    let client = moto.client().await;
    let db = name("db");
    moto.secret(&db, r#"{"n":"0","other":"o0"}"#, None, &[])
        .await;
    let mut spec = base_spec(60);
    spec.files.push(with_key(file("n", &db), "n"));
    spec.files.push(with_key(file("other", &db), "other"));
    spec.templates
        .push(template("n.txt", &[("db", &db)], "n={{ db.n }}", "0400"));
    spec.env.push(env_var("N", &format!("{db}#n")));
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(Store::Aws(store(&moto).await), dir.path(), spec);
    let mut state = State::default();
    agent.refresh(&mut state).await.unwrap();

    let values = dir.path().join("..data").join(ENV_VALUES_FILE);
    let meta = fs::metadata(&values).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.permissions().mode() & 0o7777, 0o400);
    let file = fs::metadata(dir.path().join("n")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (file.uid(), file.gid()),
        "owned like every file"
    );
    assert_eq!(
        fs::read_to_string(&values).unwrap(),
        r#"{"N":"0"}"#,
        "a JSON object of name to string"
    );
    assert!(
        fs::symlink_metadata(dir.path().join(ENV_VALUES_FILE)).is_err(),
        "no top-level link: its reader opens it under ..data"
    );

    // A key only a file reads changes: a new set, the values file's content unchanged.
    put_value(&client, &db, r#"{"n":"0","other":"o1"}"#).await;
    let r = agent.refresh(&mut state).await.unwrap();
    assert!(r.changed && r.changed_variables.is_empty());
    assert_eq!(fs::read_to_string(&values).unwrap(), r#"{"N":"0"}"#);

    // A reader that resolves ..data once always sees the file, the template and the variable
    // of one version, however the swaps fall.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (dir, stop) = (dir.path().to_path_buf(), stop.clone());
        std::thread::spawn(move || {
            let mut seen = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let Ok(target) = fs::read_link(dir.join("..data")) else {
                    continue;
                };
                let set = dir.join(target);
                let (Ok(n), Ok(t), Ok(v)) = (
                    fs::read_to_string(set.join("n")),
                    fs::read_to_string(set.join("n.txt")),
                    fs::read(set.join(ENV_VALUES_FILE)),
                ) else {
                    continue; // that set was just replaced: read again
                };
                let v: BTreeMap<String, String> = serde_json::from_slice(&v).unwrap();
                assert_eq!(t, format!("n={n}"), "a mixed set");
                assert_eq!(v["N"], n, "a mixed set");
                seen += 1;
            }
            seen
        })
    };
    for i in 1..=25 {
        put_value(&client, &db, &format!(r#"{{"n":"{i}","other":"o1"}}"#)).await;
        let r = agent.refresh(&mut state).await.unwrap();
        assert_eq!(r.changed_variables, ["N"]);
    }
    stop.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0, "the reader saw no set");
    assert_eq!(fs::read_to_string(&values).unwrap(), r#"{"N":"25"}"#);
}

#[tokio::test]
async fn env_beats_env_from_and_a_later_env_from_beats_an_earlier_one() {
    let moto = Moto::start();
    let (a, b, c) = (name("a"), name("b"), name("c"));
    moto.secret(
        &a,
        r#"{"X":"from-a","Y":"from-a","ONLY_A":"a","nested":{"DEEP":"d"},"port":5432}"#,
        None,
        &[],
    )
    .await;
    moto.parameter(&b, r#"{"Y":"from-b","Z":"from-b"}"#, "SecureString", None)
        .await;
    moto.secret(&c, "from-c", None, &[]).await;
    let mut spec = base_spec(60);
    spec.env_from.push(env_from(&format!("{a}#nested")));
    spec.env_from.push(env_from(&a));
    spec.env_from.push(env_from(&format!("ssm:{b}")));
    spec.env.push(env_var("X", &c));
    spec.env.push(env_var("PORT", &format!("{a}#port")));
    spec.files.push(file("c", &c));
    let s = Scratch::new();
    let (status, log) = s.init(&spec.to_json(), &moto.env());
    assert!(status.success(), "{log}");
    let got = s.env_values().unwrap();
    assert_eq!(
        got,
        map(&[
            ("DEEP", "d"),
            ("nested", r#"{"DEEP":"d"}"#),
            ("ONLY_A", "a"),
            ("PORT", "5432"),
            ("X", "from-c"),
            ("Y", "from-b"),
            ("Z", "from-b"),
            ("port", "5432"),
        ])
    );
    assert!(log.contains("\"variables\":8"), "{log}");
}

#[tokio::test]
async fn an_env_from_key_that_is_not_a_c_identifier_is_an_error_naming_it() {
    let moto = Moto::start();
    let db = name("db");
    moto.secret(
        &db,
        r#"{"GOOD":"ef-good","db-host":"ef-secret"}"#,
        None,
        &[],
    )
    .await;
    let mut spec = base_spec(60);
    spec.env_from.push(env_from(&db));
    let s = Scratch::new();
    let (status, log) = s.init(&spec.to_json(), &moto.env());
    assert!(!status.success());
    let msg = s.termination_message();
    assert!(
        msg.contains(&format!("envFrom secret {db:?}"))
            && msg.contains(r#"key "db-host" is not an environment variable name"#),
        "{msg}"
    );
    assert!(s.env_values().is_none(), "nothing written, nothing skipped");
    for text in [msg.as_str(), log.as_str()] {
        assert!(
            !text.contains("ef-secret") && !text.contains("ef-good"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn a_reference_used_by_a_file_a_variable_and_a_template_is_fetched_once() {
    let moto = Moto::start();
    let client = moto.client().await;
    // 8 secrets and 4 parameters, each read by a file, a variable and a template input (and
    // the parameters by an envFrom too). Fetched per use they would be 24 secrets (2 batches)
    // and 16 parameters (2 GetParameters); fetched once they are 1 + 1 calls.
    let mut spec = base_spec(60);
    let mut inputs = Vec::new();
    for i in 0..8 {
        let s = name(&format!("s{i}"));
        moto.secret(&s, &format!(r#"{{"v":"s{i}"}}"#), None, &[])
            .await;
        spec.files.push(with_key(file(&format!("s{i}"), &s), "v"));
        spec.env.push(env_var(&format!("S{i}"), &format!("{s}#v")));
        inputs.push((format!("s{i}"), s));
    }
    for i in 0..4 {
        let p = name(&format!("p{i}"));
        moto.parameter(&p, &format!(r#"{{"P{i}":"p{i}"}}"#), "SecureString", None)
            .await;
        let r = format!("ssm:{p}");
        spec.files.push(file(&format!("p{i}"), &r));
        spec.env.push(env_var(&format!("P{i}_JSON"), &r));
        spec.env_from.push(env_from(&r));
        inputs.push((format!("p{i}"), r));
    }
    // A pinned version read by a file and a variable: one GetSecretValue. `versionStage:
    // AWSCURRENT` is the unpinned read, so it joins the batch.
    let pinned = name("pinned");
    let v1 = client
        .create_secret()
        .name(&pinned)
        .secret_string("pin-1")
        .send()
        .await
        .unwrap()
        .version_id
        .unwrap();
    put_value(&client, &pinned, "pin-2").await;
    let mut f = file("pinned", &pinned);
    f.version_id = Some(v1.clone());
    spec.files.push(f);
    let mut v = env_var("PINNED", &pinned);
    v.version_id = Some(v1);
    spec.env.push(v);
    let mut current = file("current", &inputs[0].1);
    current.version_stage = Some("AWSCURRENT".into());
    spec.files.push(current);

    let source: String = inputs
        .iter()
        .map(|(k, _)| format!("{{{{ {k} }}}}\n"))
        .collect();
    let refs: Vec<(&str, &str)> = inputs
        .iter()
        .map(|(k, r)| (k.as_str(), r.as_str()))
        .collect();
    spec.templates.push(template("all", &refs, &source, "0400"));

    let store = store(&moto).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(Store::Aws(store.clone()), dir.path(), spec);
    let mut state = State::default();
    let before = store.api_calls();
    let r = agent.refresh(&mut state).await.unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(
        store.api_calls() - before,
        3,
        "one BatchGetSecretValue, one GetParameters, one GetSecretValue for the pin"
    );
    assert_eq!(read(dir.path(), "pinned"), "pin-1");
    assert_eq!(read(dir.path(), "current"), r#"{"v":"s0"}"#);
    let all = read(dir.path(), "all");
    assert!(all.contains("s7") && all.contains("p3"), "{all}");
    let vars: BTreeMap<String, String> =
        serde_json::from_slice(&fs::read(dir.path().join("..data").join(ENV_VALUES_FILE)).unwrap())
            .unwrap();
    assert_eq!(vars["S7"], "s7");
    assert_eq!(vars["P3"], "p3");
    assert_eq!(vars["P3_JSON"], r#"{"P3":"p3"}"#);
    assert_eq!(vars["PINNED"], "pin-1");
}

#[test]
fn the_local_file_store_delivers_the_same() {
    let s = Scratch::new();
    let store = s.tmp.path().join("store.yaml");
    fs::write(
        &store,
        r#"
secrets:
  - name: /demo/db
    value: '{"username":"orders","password":"fs-pass"}'
  - name: /demo/env
    value: '{"LOG_LEVEL":"debug","FEATURE_X":"on"}'
  - name: /demo/cert
    binary: aGVsbG8=
parameters:
  - name: /demo/api-key
    type: SecureString
    value: fs-key
"#,
    )
    .unwrap();
    let setting = vec![(env::STORE.to_string(), format!("file:{}", store.display()))];
    let mut spec = base_spec(60);
    spec.templates.push(template(
        "application.properties",
        &[("db", "/demo/db"), ("key", "ssm:/demo/api-key")],
        "user={{ db.username }}\npassword={{ db.password | urlencode }}\nkey={{ key }}\n",
        "0400",
    ));
    spec.env.push(env_var("DB_PASSWORD", "/demo/db#password"));
    spec.env_from.push(env_from("/demo/env"));
    let (status, log) = s.init(&spec.to_json(), &setting);
    assert!(status.success(), "{log}");
    assert_eq!(
        s.read("application.properties").as_deref(),
        Some("user=orders\npassword=fs-pass\nkey=fs-key\n")
    );
    assert_eq!(
        s.env_values().unwrap(),
        map(&[
            ("DB_PASSWORD", "fs-pass"),
            ("FEATURE_X", "on"),
            ("LOG_LEVEL", "debug")
        ])
    );

    // A binary secret cannot be a template input: the error names the file and the input.
    let mut bin = base_spec(60);
    bin.templates.push(template(
        "tls.conf",
        &[("cert", "/demo/cert")],
        "{{ cert }}",
        "0400",
    ));
    let other = Scratch::new();
    let (status, _) = other.init(&bin.to_json(), &setting);
    assert!(!status.success());
    let msg = other.termination_message();
    assert!(
        msg.contains(r#"template file "tls.conf""#)
            && msg.contains(r#"input "cert" (secret "/demo/cert")"#)
            && msg.contains("binary"),
        "{msg}"
    );
}

#[test]
fn the_example_store_serves_the_readme_examples() {
    let store = workspace_root().join("examples/store.yaml");
    let setting = vec![(env::STORE.to_string(), format!("file:{}", store.display()))];
    let mut spec = base_spec(60);
    spec.templates.push(template(
        "reporting-dsn",
        &[
            ("db", "/demo/orders/reporting-db"),
            ("host", "ssm:/demo/orders/db-host"),
        ],
        "postgres://{{ db.username }}:{{ db.password | urlencode }}@{{ host }}:5432/orders",
        "0400",
    ));
    spec.env_from.push(env_from("/demo/orders/settings"));
    spec.env
        .push(env_var("DB_PASSWORD", "/demo/orders/db#password"));
    let s = Scratch::new();
    let (status, log) = s.init(&spec.to_json(), &setting);
    assert!(status.success(), "{log}");
    assert_eq!(
        s.read("reporting-dsn").as_deref(),
        Some("postgres://reporting:rep%40rt%3Aing%2Fpa%25ss@db.demo.internal:5432/orders")
    );
    assert_eq!(
        s.env_values().unwrap(),
        map(&[
            ("CHECKOUT_ENABLED", "true"),
            ("DB_PASSWORD", "local-demo-password"),
            ("LOG_LEVEL", "info")
        ])
    );
}
