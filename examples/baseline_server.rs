//! The baseline `bench/webhook-load.sh` measures kura against: the least a webhook on the same
//! stack can do. axum 0.8 + axum-server 0.7 over rustls (aws-lc-rs, h2 and http/1.1), on the
//! same tokio runtime kura uses; it parses each AdmissionReview (a webhook must echo the
//! request's uid) and answers with a fixed response: the answer kura gave for the same review,
//! patch included, encoded with kura's own `encode_review`. Both servers move the same bytes
//! the same way; the difference is kura's decision.
//!
//! `baseline_server --serve 127.0.0.1:PORT --response FILE --cert-out FILE` serves until killed.
//! Without those arguments it says so and exits.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum_server::tls_rustls::RustlsConfig;
use kube::core::DynamicObject;
use kube::core::admission::AdmissionReview;
use serde_json::Value;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

type Answer = AdmissionReview<DynamicObject>;

async fn mutate(State(template): State<Arc<Answer>>, body: Bytes) -> Response {
    let review: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let mut answer = (*template).clone();
    if let Some(r) = answer.response.as_mut() {
        r.uid = review["request"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
    }
    match kura::wire::encode_review(answer) {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(response)) = (arg(&args, "--serve"), arg(&args, "--response")) else {
        println!(
            "usage: baseline_server --serve ADDR --response FILE [--cert-out FILE] (bench/webhook-load.sh runs it)"
        );
        return;
    };
    let listen: SocketAddr = listen.parse().expect("--serve ADDR");
    let mut answer: Value =
        serde_json::from_slice(&std::fs::read(&response).expect("--response FILE"))
            .expect("the response is JSON");
    // kura writes the patch base64, as Go writes []byte; kube's types read it as bytes.
    if let Some(p) = answer.pointer_mut("/response/patch")
        && let Some(b64) = p.as_str()
    {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("the patch is base64");
        *p = bytes.into();
    }
    let template: Answer =
        serde_json::from_value(answer).expect("the response is an AdmissionReview");

    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("a self-signed certificate");
    if let Some(out) = arg(&args, "--cert-out") {
        std::fs::write(out, cert.cert.pem()).expect("--cert-out is writable");
    }

    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(async move {
            let tls = RustlsConfig::from_pem(
                cert.cert.pem().into_bytes(),
                cert.signing_key.serialize_pem().into_bytes(),
            )
            .await
            .expect("TLS configuration");
            let app = Router::new()
                .route("/mutate", post(mutate))
                .route("/healthz", get(|| async { "ok" }))
                .with_state(Arc::new(template));
            println!("baseline_server listening on {listen}");
            axum_server::bind_rustls(listen, tls)
                .serve(app.into_make_service())
                .await
                .expect("serves");
        });
}
