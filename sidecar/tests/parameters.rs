//! SSM Parameter Store against moto: the three parameter types, versions and labels, ten names a
//! `GetParameters` call, unknown names (SSM's `InvalidParameters`), batched `DescribeParameters`,
//! one client per service created on first use, and rotation with last-good values through the
//! real binary.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use kura_agent::spec::SecretFile;
use kura_agent::store::{AwsStore, FetchRequest, ParameterType, SecretValue, StoreError};
use secrecy::ExposeSecret;

async fn store(moto: &Moto) -> AwsStore {
    aws_store(&moto.endpoint).await
}

fn text(r: &Result<kura_agent::store::Fetched, StoreError>) -> String {
    match &r.as_ref().unwrap().value {
        SecretValue::Text(t) => t.expose_secret().to_string(),
        SecretValue::Binary(_) => panic!("a parameter is text"),
    }
}

fn pinned(secret: &str, id: Option<&str>, label: Option<&str>) -> FetchRequest {
    FetchRequest {
        secret: secret.into(),
        version_id: id.map(Into::into),
        version_stage: label.map(Into::into),
    }
}

#[tokio::test]
async fn types_keys_and_metadata() {
    let moto = Moto::start();
    let key = moto.create_kms_key().await;
    let (cmk, managed, plain, list) = (name("cmk"), name("managed"), name("plain"), name("list"));
    moto.parameter(&cmk, "param-cmk-value", "SecureString", Some(&key))
        .await;
    moto.parameter(&managed, "param-managed-value", "SecureString", None)
        .await;
    moto.parameter(&plain, "param-plain-value", "String", None)
        .await;
    moto.parameter(&list, "a,b,c", "StringList", None).await;
    let store = store(&moto).await;

    // Values: a SecureString is decrypted, a StringList is its comma-separated text.
    let refs: Vec<String> = [&cmk, &managed, &plain, &list]
        .iter()
        .map(|n| format!("ssm:{n}"))
        .collect();
    let reqs: Vec<FetchRequest> = refs.iter().map(FetchRequest::current).collect();
    let before = store.api_calls();
    let got = store.fetch(&reqs).await;
    assert_eq!(
        store.api_calls() - before,
        1,
        "four names, one GetParameters"
    );
    assert_eq!(text(&got[0]), "param-cmk-value");
    assert_eq!(text(&got[1]), "param-managed-value");
    assert_eq!(text(&got[2]), "param-plain-value");
    assert_eq!(text(&got[3]), "a,b,c");
    assert_eq!(got[0].as_ref().unwrap().version_id, "1");
    assert_eq!(got[0].as_ref().unwrap().name, cmk);

    // Metadata, concurrently: one DescribeParameters for the four (and the missing one).
    let missing = format!("ssm:{}", name("missing"));
    let before = store.api_calls();
    let metas =
        futures_util::future::join_all(refs.iter().chain([&missing]).map(|r| store.describe(r)))
            .await;
    assert_eq!(
        store.api_calls() - before,
        1,
        "lookups that arrive together share one DescribeParameters"
    );
    let m = metas[0].as_ref().unwrap();
    assert_eq!(m.name, cmk);
    assert_eq!(m.parameter_type, Some(ParameterType::SecureString));
    assert_eq!(m.kms_key_id.as_deref(), Some(key.as_str()));
    let m = metas[1].as_ref().unwrap();
    assert_eq!(m.parameter_type, Some(ParameterType::SecureString));
    assert!(
        m.kms_key_id.is_none() || m.kms_key_id.as_deref() == Some("alias/aws/ssm"),
        "{m:?}"
    );
    assert_eq!(
        metas[2].as_ref().unwrap().parameter_type,
        Some(ParameterType::String)
    );
    assert_eq!(
        metas[3].as_ref().unwrap().parameter_type,
        Some(ParameterType::StringList)
    );
    match &metas[4] {
        Err(e @ StoreError::NotFound { secret }) => {
            assert_eq!(secret, &missing);
            assert!(e.to_string().starts_with("parameter \"ssm:"), "{e}");
        }
        other => panic!("{other:?}"),
    }

    // By ARN, as SSM spells it (the leading '/' of the name is not repeated).
    let arn = format!(
        "arn:aws:ssm:us-east-1:123456789012:parameter/{}",
        cmk.trim_start_matches('/')
    );
    assert_eq!(store.describe(&arn).await.unwrap().name, cmk);
    assert_eq!(
        text(&store.fetch(&[FetchRequest::current(&arn)]).await[0]),
        "param-cmk-value"
    );

    // Many concurrent lookups: at most 50 names a DescribeParameters batch.
    let many: Vec<String> = (0..60)
        .map(|i| format!("ssm:{}-{i}", name("none")))
        .collect();
    let before = store.api_calls();
    let r = futures_util::future::join_all(many.iter().map(|r| store.describe(r))).await;
    assert!(
        r.iter()
            .all(|m| matches!(m, Err(StoreError::NotFound { .. })))
    );
    assert_eq!(store.api_calls() - before, 2, "60 names: two batches");
}

#[tokio::test]
async fn versions_labels_and_unknown_ones() {
    let moto = Moto::start();
    let p = name("versions");
    let r = format!("ssm:{p}");
    for v in ["lv-1", "lv-2", "lv-3"] {
        moto.parameter(&p, v, "SecureString", None).await;
    }
    moto.label(&p, 1, &["blue"]).await;
    let store = store(&moto).await;
    let reqs = vec![
        FetchRequest::current(&r),
        pinned(&r, Some("2"), None),
        pinned(&r, None, Some("blue")),
        pinned(&r, Some("9"), None),
        pinned(&r, None, Some("green")),
    ];
    let got = store.fetch(&reqs).await;
    assert_eq!(text(&got[0]), "lv-3");
    assert_eq!(got[0].as_ref().unwrap().version_id, "3");
    assert_eq!(text(&got[1]), "lv-2");
    assert_eq!(text(&got[2]), "lv-1");
    assert_eq!(got[2].as_ref().unwrap().version_id, "1");
    for (g, version) in [(&got[3], "9"), (&got[4], "green")] {
        match g {
            Err(e @ StoreError::VersionNotFound { secret, version: v }) => {
                assert_eq!(secret, &r);
                assert_eq!(v, version);
                assert!(e.to_string().contains(&p), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn ten_names_a_call_unknown_names_named_and_clients_on_first_use() {
    let moto = Moto::start();
    let prefix = name("many");
    let mut refs = Vec::new();
    for i in 0..25 {
        let n = format!("{prefix}/{i:02}");
        moto.parameter(&n, &format!("value-{i}"), "SecureString", None)
            .await;
        refs.push(format!("ssm:{n}"));
    }
    let secret = name("secret");
    moto.secret(&secret, "secret-value", None, &[]).await;
    let store = store(&moto).await;
    assert!(store.clients().is_empty());

    // Secrets only: no SSM client.
    let got = store.fetch(&[FetchRequest::current(&secret)]).await;
    assert!(got[0].is_ok());
    assert_eq!(store.clients(), ["secretsmanager"]);

    for n in [1usize, 10, 11, 25] {
        let reqs: Vec<FetchRequest> = refs[..n].iter().map(FetchRequest::current).collect();
        let before = store.api_calls();
        let got = store.fetch(&reqs).await;
        assert_eq!(store.api_calls() - before, n.div_ceil(10) as u64, "n = {n}");
        for (i, g) in got.iter().enumerate() {
            assert_eq!(text(g), format!("value-{i}"));
        }
    }
    assert_eq!(store.clients(), ["secretsmanager", "ssm"]);

    // An unknown name comes back in InvalidParameters: an error naming it, the rest arrive.
    let missing = format!("ssm:{prefix}/missing");
    let mut reqs: Vec<FetchRequest> = refs[..12].iter().map(FetchRequest::current).collect();
    reqs.insert(4, FetchRequest::current(&missing));
    let got = store.fetch(&reqs).await;
    for (r, g) in reqs.iter().zip(&got) {
        match g {
            Ok(f) => assert_eq!(format!("ssm:{}", f.name), r.secret),
            Err(e @ StoreError::NotFound { secret }) => {
                assert_eq!(secret, &missing);
                assert!(e.to_string().contains("missing"), "{e}");
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(got.iter().filter(|g| g.is_err()).count(), 1);

    // Parameters only: a fresh store never builds a Secrets Manager client.
    let only = aws_store(&moto.endpoint).await;
    only.fetch(&[FetchRequest::current(&refs[0])]).await;
    only.describe(&refs[1]).await.unwrap();
    assert_eq!(only.clients(), ["ssm"]);
}

fn param_file(file_name: &str, reference: &str) -> SecretFile {
    file(file_name, reference)
}

#[tokio::test]
async fn rotation_is_a_new_version_and_failures_keep_the_last_good_value() {
    let moto = MotoOn::start(moto::free_port());
    let ssm = ssm_client_for(&moto.endpoint);
    let (host, flag) = (name("host"), name("flag"));
    for (n, v) in [(&host, r#"{"host":"rot-host-1"}"#), (&flag, "rot-flag-1")] {
        ssm.put_parameter()
            .name(n)
            .value(v)
            .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
            .send()
            .await
            .unwrap();
    }
    let secret = name("mixed-secret");
    moto.client()
        .create_secret()
        .name(&secret)
        .secret_string("rot-secret-1")
        .send()
        .await
        .unwrap();
    let s = Scratch::new();
    let mut pinned = param_file("flag-v1", &format!("ssm:{flag}"));
    pinned.version_id = Some("1".into());
    let spec = spec(
        vec![
            with_key(param_file("host", &format!("ssm:{host}")), "host"),
            param_file("flag", &format!("ssm:{flag}")),
            pinned,
            file("secret", &secret),
        ],
        1,
        None,
    );
    let agent = s.run(&spec, &moto.env(), &[]);
    s.expect_written(&agent, "host").await;
    assert_eq!(s.read("host").as_deref(), Some("rot-host-1"));
    assert_eq!(s.read("secret").as_deref(), Some("rot-secret-1"));

    // A new version is a rotation; the pinned file keeps version 1.
    ssm.put_parameter()
        .name(&flag)
        .value("rot-flag-2")
        .overwrite(true)
        .send()
        .await
        .unwrap();
    s.expect_file(&agent, "flag", "rot-flag-2", Duration::from_secs(3))
        .await;
    assert_eq!(s.read("flag-v1").as_deref(), Some("rot-flag-1"));

    // The parameter disappears: its files keep their last good values, the error names it.
    ssm.delete_parameter().name(&host).send().await.unwrap();
    ssm.put_parameter()
        .name(&flag)
        .value("rot-flag-3")
        .overwrite(true)
        .send()
        .await
        .unwrap();
    s.expect_file(&agent, "flag", "rot-flag-3", Duration::from_secs(3))
        .await;
    assert!(
        eventually(Duration::from_secs(3), || agent.log().contains(&host)).await,
        "{}",
        agent.log()
    );
    assert_eq!(s.read("host").as_deref(), Some("rot-host-1"));
    agent.assert_log_free_of(&["rot-host-1", "rot-flag-", "rot-secret-1"]);

    // `init` with a missing parameter fails and names it.
    let s2 = Scratch::new();
    let gone = format!("ssm:{host}");
    let (status, _) = s2.init(&spec_one(param_file("host", &gone)), &moto.env());
    assert!(!status.success());
    let msg = s2.termination_message();
    assert!(msg.contains(&gone) && msg.contains("parameter"), "{msg}");
}

fn spec_one(f: SecretFile) -> String {
    spec(vec![f], 60, None)
}
