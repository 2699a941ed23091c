//! The test harness both crates' integration tests share (a dev-dependency only, never
//! published): a moto server (a real Secrets Manager/KMS API) on a loopback port with AWS
//! clients and environments pointed at it, a TLS proxy with an untrusted certificate in front
//! of it (`tls_proxy`), Prometheus scrapes, Kubernetes schema validation through the Python
//! venv `scripts/test` prepares, and real containers with podman (`podman`: the images from the
//! Dockerfiles' final stages, pods run as a patched Pod object says), and a stub kube-apiserver
//! that answers `TokenReview`s (`apiserver`), and a writer that captures log output in memory
//! (`output`).
//!
//! What only one crate's tests need (the `kura serve` process, the agent's scratch area) stays
//! in that crate's `tests/common/mod.rs`, which re-exports this crate.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)]

pub mod apiserver;
pub mod k8s;
pub mod metrics;
pub mod moto;
pub mod output;
pub mod podman;
pub mod tls_proxy;

pub use apiserver::{ApiServer, ServiceAccountToken};
pub use k8s::validate_k8s;
pub use metrics::{metric, sample, scrape};
pub use moto::{
    Moto, MotoOn, aws_env, client_for, free_port, port_of, put_value, ssm_client_for, venv,
    wait_for_port,
};
pub use output::Captured;
pub use tls_proxy::UntrustedTls;

use std::path::{Path, PathBuf};

/// The workspace root (this crate's parent folder).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives in the workspace root")
        .to_path_buf()
}
