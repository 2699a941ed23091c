//! kura: a mutating and validating admission webhook that keeps AWS Secrets Manager secrets out
//! of Kubernetes manifests, and the operator CLI (`lint`, `review`, `certs`).
//!
//! [`admission`] answers AdmissionReviews by running the [`policy`] and planning the
//! [`inject`]ion; [`server`] serves them over [`tls`] and stops through [`shutdown`]; [`cli`]
//! holds one module per command, and `serve` validates a [`config::Config`] before binding.
#![forbid(unsafe_code)]
// Proving the admission handler's future `Send` walks the AWS SDK's nested future types
// (admission → policy cache → store → SSM batch → SDK); the default 128 overflows.
#![recursion_limit = "256"]

pub mod admission;
pub mod cli;
pub mod config;
pub mod inject;
pub mod namespaces;
pub mod policy;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod version_service;
pub mod wire;
pub mod workload;
