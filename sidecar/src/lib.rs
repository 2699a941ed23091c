//! kura-agent: fetches AWS Secrets Manager secrets and SSM parameters into an in-memory volume and
//! keeps them fresh.
//!
//! The library also owns what the webhook and the agent share: the secret [`spec`] (and its
//! parsing from pod [`annotations`]) and the secret [`store`]s. It depends on neither axum nor
//! kube, so the agent stays small.
#![forbid(unsafe_code)]

pub mod agent;
pub mod annotations;
pub mod cli;
pub mod contract;
pub mod duration;
pub mod exec;
pub mod metrics;
pub mod redact;
pub mod reload;
pub mod render;
pub mod spec;
pub mod store;
pub mod template;
pub mod version_client;
pub mod versions;
pub mod watch;
pub mod writer;

pub use spec::{AgentMode, Format, Spec};
pub use store::{Store, StoreSetting};
