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
    // A certificate problem is final: the first fetch, which retries throttling and an
    // unreachable store until --init-deadline (60 s here), does not retry it.
    let (status, log) = s.init(&spec, &aws_env(&proxy.endpoint));
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
    assert!(!msg.contains("attempts"), "retried: {msg}");
}
