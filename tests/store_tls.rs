//! The webhook's store behind an untrusted TLS certificate (moto behind a proxy with a
//! self-signed certificate): KURA009 and the log say it is a certificate problem and name the
//! endpoint, instead of a generic connection failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;

use common::*;

#[tokio::test]
async fn an_untrusted_store_certificate_is_named_in_kura009_and_the_log() {
    let moto = Moto::start();
    let proxy = UntrustedTls::in_front_of(&moto.endpoint);
    let certs = test_certs();
    let mut hook = Webhook::start(
        &certs,
        &["--shutdown-grace", "1s"],
        &aws_env(&proxy.endpoint),
    );
    let client = https_client(&certs.ca);
    let resp = post(
        &client,
        &format!("{}/mutate", hook.url),
        &review(
            "demo",
            &[
                ("kura.dev/inject", "true"),
                ("kura.dev/secret.db", "/demo/db"),
            ],
        ),
    )
    .await;
    let want = format!(
        "TLS certificate problem with Secrets Manager at {}",
        proxy.endpoint
    );
    let message = resp["status"]["message"].as_str().unwrap_or_default();
    assert_eq!(resp["allowed"], false, "{resp}");
    assert!(
        message.contains("KURA009") && message.contains(&want),
        "denial lacks {want:?}: {message}"
    );

    drop(client); // no idle keep-alive connection for the drain to wait for
    // SIGTERM: the log writer flushes on a clean exit.
    let term = std::process::Command::new("kill")
        .args(["-TERM", &hook.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    hook.child.wait().unwrap();
    let mut log = String::new();
    hook.child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    hook.child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(log.contains(&want), "log lacks {want:?}: {log}");
}
