//! Namespace modes through the reflector, against a minimal API server that answers the
//! Namespace list and holds the watch open, as kube-apiserver does.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use axum::Router;
use axum::extract::RawQuery;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kura::namespaces::ClusterNamespaces;
use kura::policy::{Mode, NamespaceModes};

async fn namespaces(RawQuery(q): RawQuery) -> Response {
    if q.unwrap_or_default().contains("watch=true") {
        // An open watch with no events yet.
        let body = axum::body::Body::from_stream(futures_util::stream::pending::<
            Result<Vec<u8>, std::io::Error>,
        >());
        return ([("content-type", "application/json")], body).into_response();
    }
    let list = serde_json::json!({
        "kind": "NamespaceList", "apiVersion": "v1",
        "metadata": { "resourceVersion": "100" },
        "items": [
            { "metadata": { "name": "team-a", "resourceVersion": "10", "labels": { "kura.dev/mode": "warn" } } },
            { "metadata": { "name": "team-b", "resourceVersion": "11", "labels": { "kura.dev/mode": "bogus" } } },
            { "metadata": { "name": "team-c", "resourceVersion": "12" } }
        ]
    });
    axum::Json(list).into_response()
}

#[tokio::test]
async fn modes_come_from_namespace_labels_once_synced() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            Router::new().route("/api/v1/namespaces", get(namespaces)),
        )
        .await
    });

    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let ns = ClusterNamespaces::start(client);
    let synced = tokio::time::timeout(Duration::from_secs(10), ns.synced())
        .await
        .unwrap();
    assert!(synced);
    assert_eq!(ns.mode("team-a"), Some(Mode::Warn));
    assert_eq!(
        ns.mode("team-b"),
        None,
        "an invalid label falls back to the policy default"
    );
    assert_eq!(ns.mode("team-c"), None);
    assert_eq!(ns.mode("unknown"), None);

    let engine = kura::policy::PolicyEngine::new(kura::policy::Policy::default(), None)
        .with_namespaces(ns.clone());
    assert_eq!(engine.mode_for("team-a"), Mode::Warn);
    assert_eq!(engine.mode_for("team-c"), Mode::Enforce);
}
