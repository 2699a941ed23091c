//! Who is asking: the agent's projected service-account token, validated with a `TokenReview`
//! for [`AUDIENCE`] (the API server checks signature, expiry, audience and that the pod still
//! exists), the verdict kept a minute keyed by the token's SHA-256 (never the token), and the
//! namespace taken from `system:serviceaccount:<namespace>:<name>`.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use kura_agent::versions::AUDIENCE;
use sha2::{Digest, Sha256};

use super::flight::{Bounds, Flights, Lost};

/// How long a verdict, accepted or rejected, is kept.
pub const VERDICT_TTL: Duration = Duration::from_secs(60);

/// Verdicts kept at most: entries and bytes (each is a hash and a few names).
pub const VERDICT_BOUNDS: Bounds = Bounds {
    entries: 100_000,
    bytes: 16 * 1024 * 1024,
};

/// The longest token looked at (a service-account JWT is about 1 KB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The pod name the API server puts in a bound token's review.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub namespace: String,
    pub service_account: String,
    /// The pod the token is bound to, as the API server says (`None` for a token not bound
    /// to a pod).
    pub pod: Option<String>,
}

/// Why a request is not answered for want of an identity.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// `401`: no token, or one the API server does not accept for [`AUDIENCE`].
    #[error("{0}")]
    Unauthenticated(String),
    /// `503`: the API server could not be asked.
    #[error("{0}")]
    Unavailable(String),
}

impl From<Lost> for AuthError {
    fn from(_: Lost) -> Self {
        AuthError::Unavailable("the TokenReview stopped before it answered".into())
    }
}

/// The API server's verdict on one token.
#[derive(Debug, Clone)]
enum Verdict {
    Accepted(Identity),
    Rejected(String),
}

impl Verdict {
    fn bytes(&self) -> usize {
        match self {
            Verdict::Accepted(i) => {
                i.namespace.len() + i.service_account.len() + i.pod.as_ref().map_or(0, String::len)
            }
            Verdict::Rejected(why) => why.len(),
        }
    }
}

/// Validates tokens with the API server, verdicts cached.
pub struct Authenticator {
    client: kube::Client,
    verdicts: Flights<Verdict, AuthError>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("verdicts", &self.verdicts)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn new(client: kube::Client) -> Self {
        Authenticator {
            client,
            verdicts: Flights::new(VERDICT_TTL, VERDICT_BOUNDS),
        }
    }

    /// The identity behind an `Authorization` header.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Identity, AuthError> {
        let token = bearer(authorization)?;
        let key = hex(&Sha256::digest(token.as_bytes()));
        let client = self.client.clone();
        let token = token.to_string();
        let found = self
            .verdicts
            .get(
                std::slice::from_ref(&key),
                Verdict::bytes,
                move |keys| async move {
                    let verdict = review(client, token).await?;
                    Ok(keys.into_iter().map(|k| (k, verdict.clone())).collect())
                },
            )
            .await?;
        match found.get(&key).cloned().flatten() {
            Some(Verdict::Accepted(id)) => Ok(id),
            Some(Verdict::Rejected(why)) => Err(AuthError::Unauthenticated(why)),
            None => Err(AuthError::Unavailable(
                "the TokenReview gave no verdict".into(),
            )),
        }
    }

    /// Verdicts held (for tests and the README's bounds).
    pub fn cached(&self) -> usize {
        self.verdicts.len()
    }
}

/// The token of a `Bearer` header, refused when absent or not shaped like one.
fn bearer(authorization: Option<&str>) -> Result<&str, AuthError> {
    let refuse = |why: &str| Err(AuthError::Unauthenticated(why.to_string()));
    let Some(value) = authorization else {
        return refuse(
            "no Authorization header: send the pod's projected service-account token as `Authorization: Bearer <token>`",
        );
    };
    let Some((scheme, token)) = value.split_once(' ') else {
        return refuse("the Authorization header is not `Bearer <token>`");
    };
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return refuse("the Authorization header is not `Bearer <token>`");
    }
    if token.len() > MAX_TOKEN_BYTES || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return refuse("the bearer token is not a service-account token");
    }
    Ok(token)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One `TokenReview` for [`AUDIENCE`].
async fn review(client: kube::Client, token: String) -> Result<Verdict, AuthError> {
    let api: Api<TokenReview> = Api::all(client);
    let asked = TokenReview {
        spec: TokenReviewSpec {
            token,
            audiences: Some(vec![AUDIENCE.to_string()]),
        },
        ..TokenReview::default()
    };
    let answer = api
        .create(&PostParams::default(), &asked)
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 401 || s.code == 403 => AuthError::Unavailable(format!(
                "the API server refused kura's TokenReview ({} {}): kura's service account needs `tokenreviews: create`",
                s.code, s.message
            )),
            other => AuthError::Unavailable(format!("TokenReview failed: {other}")),
        })?;
    Ok(verdict(answer))
}

/// What a `TokenReview`'s status says of the token.
fn verdict(answer: TokenReview) -> Verdict {
    let Some(status) = answer.status else {
        return Verdict::Rejected("the API server's TokenReview has no status".into());
    };
    if status.authenticated != Some(true) {
        let why = status
            .error
            .filter(|e| !e.is_empty())
            .map(|e| e.chars().take(400).collect::<String>())
            .unwrap_or_else(|| "the API server did not authenticate it".into());
        return Verdict::Rejected(format!("the token was not accepted: {why}"));
    }
    if !status
        .audiences
        .as_ref()
        .is_some_and(|a| a.iter().any(|a| a == AUDIENCE))
    {
        return Verdict::Rejected(format!(
            "the token is not for audience {AUDIENCE:?}: project one with that audience"
        ));
    }
    let user = status.user.unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let Some((namespace, service_account)) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
    else {
        return Verdict::Rejected(format!(
            "{:?} is not a service account: only agents' service-account tokens are answered",
            username.chars().take(256).collect::<String>()
        ));
    };
    let pod = user
        .extra
        .unwrap_or_else(BTreeMap::new)
        .remove(POD_NAME_EXTRA)
        .and_then(|v| v.into_iter().next());
    Verdict::Accepted(Identity {
        namespace: namespace.to_string(),
        service_account: service_account.to_string(),
        pod,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_headers_are_read_strictly() {
        assert_eq!(bearer(Some("Bearer abc.def")).ok(), Some("abc.def"));
        assert_eq!(bearer(Some("bearer abc")).ok(), Some("abc"));
        for bad in [
            None,
            Some("Basic abc"),
            Some("Bearer "),
            Some("Bearer a b"),
            Some("abc"),
        ] {
            assert!(
                matches!(bearer(bad), Err(AuthError::Unauthenticated(_))),
                "{bad:?}"
            );
        }
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert!(bearer(Some(&long)).is_err());
    }

    #[test]
    fn only_authenticated_service_accounts_for_the_audience_are_accepted() {
        let review =
            |json: serde_json::Value| verdict(serde_json::from_value(json).expect("a TokenReview"));
        let ok = review(serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "metadata": {"creationTimestamp": null}, "spec": {"token": "t"},
            "status": {"authenticated": true, "audiences": [AUDIENCE],
                "user": {"username": "system:serviceaccount:orders:default",
                         "extra": {POD_NAME_EXTRA: ["orders-1"]}}}
        }));
        assert!(
            matches!(&ok, Verdict::Accepted(i) if i.namespace == "orders" && i.pod.as_deref() == Some("orders-1")),
            "{ok:?}"
        );
        for status in [
            serde_json::json!({"user": {}, "error": "[invalid bearer token]"}),
            serde_json::json!({"authenticated": true, "audiences": ["other"],
                "user": {"username": "system:serviceaccount:orders:default"}}),
            serde_json::json!({"authenticated": true, "audiences": [AUDIENCE],
                "user": {"username": "jane@example.com"}}),
            serde_json::json!({"authenticated": true, "audiences": [AUDIENCE],
                "user": {"username": "system:serviceaccount:orders"}}),
        ] {
            let v = review(serde_json::json!({"spec": {}, "status": status}));
            assert!(matches!(v, Verdict::Rejected(_)), "{status}: {v:?}");
        }
    }
}
