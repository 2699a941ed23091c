//! The version service's protocol (contract §8): what an agent asks the webhook's Deployment
//! each refresh interval instead of AWS, and what it is told. Names and version ids only; no
//! value ever passes through it.
//!
//! `POST` [`PATH`] with a JSON [`VersionsRequest`] and `Authorization: Bearer <token>` (the
//! pod's projected service-account token for [`AUDIENCE`]); the answer is a
//! [`VersionsAnswer`] (`200`) or an [`ErrorAnswer`] (`400`, `401`, `403`, `413`, `503`). The
//! agent fetches from AWS only the references whose answered version differs from the one it
//! holds, and the ones answered `unknown`; on any failure it polls AWS directly for that
//! interval.

use serde::{Deserialize, Serialize};

/// The endpoint.
pub const PATH: &str = "/v1/versions";

/// The audience of the projected token the agent presents, and the only one the service
/// accepts.
pub const AUDIENCE: &str = "kura.dev/version-service";

/// Where the webhook's patch mounts the projected token volume in agent containers.
pub const TOKEN_DIR: &str = "/var/run/kura/token";

/// The token file inside [`TOKEN_DIR`] (re-read before each request: the kubelet rotates it).
pub const TOKEN_FILE: &str = "/var/run/kura/token/token";

/// The token's lifetime as requested in the projected volume (the kubelet refreshes it at 80 %).
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3600;

/// Largest request body the service reads (a spec's references, each at most a few hundred
/// bytes, fit several times over).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Most references one request may name.
pub const MAX_REFERENCES: usize = 256;

/// How long an agent waits for the service before it polls AWS directly for that interval.
pub const CLIENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// One reference, spelled as in the spec (`secret` is a Secrets Manager name or ARN, or
/// `ssm:<name>` / a parameter ARN).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VersionRef {
    pub secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_stage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
}

/// The agent's own state, reported with each check (never a value): what the fleet metrics
/// are made of.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentState {
    /// The pod's name (from the downward API; empty when unknown).
    #[serde(default)]
    pub pod: String,
    pub refresh_interval_seconds: u64,
    /// Unix time of the last refresh that had no error; `None` before the first.
    #[serde(default)]
    pub last_success_unix: Option<u64>,
    #[serde(default)]
    pub consecutive_failures: u32,
    /// The last error's kind (`crate::metrics::ErrorKind::as_str`), `None` when healthy.
    #[serde(default)]
    pub error_kind: Option<String>,
}

/// `POST /v1/versions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VersionsRequest {
    pub references: Vec<VersionRef>,
    pub agent: AgentState,
}

/// One answered reference (echoing the asked one's fields). `current` is the version the reference currently resolves to (a
/// Secrets Manager version id, or an SSM parameter's version number as a string); `unknown`
/// tells the agent to ask AWS itself for it (an SSM label, a secret the service could not see).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VersionAnswer {
    pub secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_stage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unknown: bool,
}

/// `200`: one answer per asked reference, in request order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VersionsAnswer {
    pub versions: Vec<VersionAnswer>,
}

/// Any other status: a message a person can act on, and for `403` the references refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ErrorAnswer {
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_round_trip_in_camel_case() {
        let req = VersionsRequest {
            references: vec![VersionRef {
                secret: "/prod/orders/db".into(),
                version_stage: Some("AWSCURRENT".into()),
                version_id: None,
            }],
            agent: AgentState {
                pod: "orders-1".into(),
                refresh_interval_seconds: 120,
                last_success_unix: Some(1_700_000_000),
                consecutive_failures: 0,
                error_kind: None,
            },
        };
        let text = serde_json::to_string(&req).expect("serializes");
        assert!(text.contains("\"versionStage\":\"AWSCURRENT\""), "{text}");
        assert!(text.contains("\"refreshIntervalSeconds\":120"), "{text}");
        assert_eq!(
            serde_json::from_str::<VersionsRequest>(&text).expect("parses"),
            req
        );

        let answer: VersionsAnswer = serde_json::from_str(
            r#"{"versions":[{"secret":"ssm:/p","current":"7"},{"secret":"ssm:/q","versionStage":"blue","unknown":true}]}"#,
        )
        .expect("parses");
        assert_eq!(answer.versions[0].current.as_deref(), Some("7"));
        assert!(answer.versions[1].unknown);
        assert_eq!(answer.versions[1].version_stage.as_deref(), Some("blue"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = serde_json::from_str::<VersionsRequest>(
            r#"{"references":[],"agent":{"refreshIntervalSeconds":1},"value":"x"}"#,
        );
        assert!(e.is_err());
    }
}
