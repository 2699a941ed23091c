//! A Secrets Manager endpoint whose TLS certificate is not trusted (moto behind a proxy with a
//! self-signed certificate): the agent says it is a certificate problem and names the endpoint,
//! in its log and its termination message.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

#[tokio::test]
async fn an_untrusted_endpoint_certificate_is_named_as_such() {
    let moto = Moto::start();
    let id = name("tls");
    moto.client()
        .await
        .create_secret()
        .name(&id)
        .secret_string("v")
        .send()
        .await
        .unwrap();
    let s = Scratch::new();
    let spec = spec(vec![file("v", &id)], 60, None);

    // The same secret straight from moto: only the certificate differs.
    let (ok, log) = s.init(&spec, &moto.env());
    assert!(ok.success(), "{log}");

    let proxy = UntrustedTls::in_front_of(&moto.endpoint);
    let s = Scratch::new();
    // The store reports a certificate problem as unavailable, which the first fetch retries
    // until --init-deadline: a short one keeps the test short.
    let mut env = aws_env(&proxy.endpoint);
    env.push((kura_agent::contract::env::INIT_DEADLINE.into(), "1s".into()));
    let (status, log) = s.init(&spec, &env);
    assert!(!status.success());
    let want = format!(
        "TLS certificate problem with Secrets Manager at {}",
        proxy.endpoint
    );
    assert!(log.contains(&want), "log lacks {want:?}: {log}");
    let msg = s.termination_message();
    assert!(
        msg.contains(&want),
        "termination message lacks {want:?}: {msg}"
    );
    assert!(msg.contains("UnknownIssuer"), "{msg}");
}
