//! AWS through the SDK: the default configuration chain (region, IRSA web identity, EKS Pod
//! Identity, `AWS_ENDPOINT_URL[_SECRETS_MANAGER|_SSM]`), bounded by a timeout. Secrets Manager
//! lives here; SSM Parameter Store in [`super::ssm`]. Each service's client is created the
//! first time a reference to it is asked for, so an agent whose spec names only secrets never
//! builds an SSM client, and the other way round.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use secrecy::{SecretSlice, SecretString};

use super::ssm::Ssm;
use super::{
    FetchRequest, Fetched, LIST_PAGE_SIZE, MetadataApi, MetadataCalls, ParameterVersion,
    SecretListing, SecretMeta, SecretValue, SecretVersions, StoreError, id_matches,
};
use crate::spec::Reference;

/// Batch reads take at most this many secrets per call.
pub const BATCH_SIZE: usize = 20;

#[derive(Debug, Clone)]
pub struct AwsStore {
    conf: Arc<aws_config::SdkConfig>,
    secrets: Arc<OnceLock<Client>>,
    parameters: Arc<OnceLock<Ssm>>,
    calls: Arc<AtomicU64>,
    /// The version service's metadata calls, by API.
    metadata: Arc<MetadataCalls>,
    /// Where requests go, for errors that people read.
    endpoint: Arc<str>,
}

impl AwsStore {
    /// Builds a client from the environment; `timeout` bounds each operation, retries included.
    pub async fn from_env(timeout: Duration) -> Self {
        Self::load(
            aws_config::defaults(aws_config::BehaviorVersion::latest()),
            timeout,
        )
        .await
    }

    /// Builds a client for an explicit endpoint, region and static credentials (a local
    /// Secrets Manager such as moto, and in-process tests); otherwise like [`AwsStore::from_env`].
    pub async fn for_endpoint(
        endpoint: &str,
        region: &str,
        access_key_id: &str,
        secret_access_key: &str,
        timeout: Duration,
    ) -> Self {
        let creds = aws_sdk_secretsmanager::config::Credentials::new(
            access_key_id,
            secret_access_key,
            None,
            None,
            "kura-agent-static",
        );
        let loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(aws_config::Region::new(region.to_string()))
            .credentials_provider(creds);
        Self::load(loader, timeout).await
    }

    async fn load(loader: aws_config::ConfigLoader, timeout: Duration) -> Self {
        let attempt = timeout.mul_f32(0.45).max(Duration::from_millis(200));
        let conf = loader
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_timeout(timeout)
                    .operation_attempt_timeout(attempt)
                    .connect_timeout(attempt.min(Duration::from_secs(2)))
                    .build(),
            )
            .retry_config(RetryConfig::standard().with_max_attempts(3))
            .load()
            .await;
        // The SDK resolves the service's own variable per client; it wins over the general one.
        let endpoint = std::env::var("AWS_ENDPOINT_URL_SECRETS_MANAGER")
            .ok()
            .or_else(|| conf.endpoint_url().map(str::to_string))
            .unwrap_or_else(|| {
                let region = conf.region().map_or("<no region>", |r| r.as_ref());
                format!("https://secretsmanager.{region}.amazonaws.com")
            });
        AwsStore {
            conf: Arc::new(conf),
            secrets: Arc::new(OnceLock::new()),
            parameters: Arc::new(OnceLock::new()),
            calls: Arc::new(AtomicU64::new(0)),
            metadata: Arc::new(MetadataCalls::default()),
            endpoint: endpoint.into(),
        }
    }

    /// The Secrets Manager client, created on first use.
    fn client(&self) -> &Client {
        self.secrets.get_or_init(|| {
            Client::from_conf(
                aws_sdk_secretsmanager::config::Builder::from(&*self.conf)
                    .retry_classifier(super::connect_error::CertificateErrorsAreFinal)
                    .build(),
            )
        })
    }

    /// The SSM client, created on first use.
    fn parameters(&self) -> &Ssm {
        self.parameters
            .get_or_init(|| Ssm::new(&self.conf, self.calls.clone(), self.metadata.clone()))
    }

    /// The services whose client exists so far: `secretsmanager`, `ssm`.
    pub fn clients(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.secrets.get().is_some() {
            out.push("secretsmanager");
        }
        if self.parameters.get().is_some() {
            out.push("ssm");
        }
        out
    }

    pub fn api_calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    pub(super) fn metadata_calls(&self) -> &MetadataCalls {
        &self.metadata
    }

    /// See [`super::Store::list_secret_versions`].
    pub async fn list_secret_versions(
        &self,
        prefixes: &[String],
        max_pages: u32,
    ) -> Result<SecretListing, StoreError> {
        let mut listing = SecretListing {
            complete: true,
            ..SecretListing::default()
        };
        for group in prefixes.chunks(super::LIST_FILTER_VALUES) {
            self.list_group(group, max_pages, &mut listing).await?;
        }
        Ok(listing)
    }

    /// One `ListSecrets` filter's pages (at most [`super::LIST_FILTER_VALUES`] prefixes), added
    /// to `listing`.
    async fn list_group(
        &self,
        prefixes: &[String],
        max_pages: u32,
        listing: &mut SecretListing,
    ) -> Result<(), StoreError> {
        use aws_sdk_secretsmanager::types::{Filter, FilterNameStringType};
        let filter = Filter::builder()
            .key(FilterNameStringType::Name)
            .set_values(Some(prefixes.to_vec()))
            .build();
        let subject = prefixes.join(", ");
        let mut token: Option<String> = None;
        for _ in 0..max_pages {
            self.calls.fetch_add(1, Ordering::Relaxed);
            self.metadata.count(MetadataApi::ListSecrets);
            listing.pages += 1;
            let out = self
                .client()
                .list_secrets()
                .filters(filter.clone())
                .max_results(LIST_PAGE_SIZE)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| map_err(&self.endpoint, &subject, &e))?;
            for e in out.secret_list() {
                let name = e.name().unwrap_or_default();
                // AWS matches the filter without regard to case; a prefix is a scope, which
                // is case-sensitive.
                if !prefixes.iter().any(|p| name.starts_with(p.as_str())) {
                    continue;
                }
                listing.secrets.push(SecretVersions {
                    arn: e.arn().unwrap_or_default().to_string(),
                    name: name.to_string(),
                    tags: tag_map(e.tags()),
                    deleted: e.deleted_date().is_some(),
                    versions: stage_map(e.secret_versions_to_stages()),
                    shared_ids: true,
                });
            }
            match out.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => return Ok(()),
            }
        }
        // The page bound came first: a secret missing from the listing may exist.
        listing.complete = false;
        Ok(())
    }

    /// One `DescribeSecret`, counted: metadata for the policy and versions for the version
    /// service come from the same call.
    async fn describe_secret(
        &self,
        secret: &str,
    ) -> Result<aws_sdk_secretsmanager::operation::describe_secret::DescribeSecretOutput, StoreError>
    {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.metadata.count(MetadataApi::DescribeSecret);
        self.client()
            .describe_secret()
            .secret_id(secret)
            .send()
            .await
            .map_err(|e| map_err(&self.endpoint, secret, &e))
    }

    /// See [`super::Store::describe_secret_versions`].
    pub async fn describe_secret_versions(
        &self,
        secret: &str,
    ) -> Result<SecretVersions, StoreError> {
        let out = self.describe_secret(secret).await?;
        Ok(SecretVersions {
            arn: out.arn().unwrap_or_default().to_string(),
            name: out.name().unwrap_or_default().to_string(),
            tags: tag_map(out.tags()),
            deleted: out.deleted_date().is_some(),
            versions: stage_map(out.version_ids_to_stages()),
            shared_ids: true,
        })
    }

    /// See [`super::Store::parameter_versions`].
    pub async fn parameter_versions(
        &self,
        names: &[String],
    ) -> Result<BTreeMap<String, ParameterVersion>, StoreError> {
        self.parameters().versions(names).await
    }

    /// Metadata of a secret (`DescribeSecret`) or a parameter (`DescribeParameters`, batched
    /// with the lookups that arrive at the same time).
    pub async fn describe(&self, secret: &str) -> Result<SecretMeta, StoreError> {
        if Reference::of(secret).is_parameter() {
            return self.parameters().describe(secret).await;
        }
        let out = self.describe_secret(secret).await?;
        let tags = tag_map(out.tags());
        Ok(SecretMeta {
            arn: out.arn().unwrap_or_default().to_string(),
            name: out.name().unwrap_or_default().to_string(),
            kms_key_id: out
                .kms_key_id()
                .filter(|k| !k.is_empty())
                .map(str::to_string),
            deleted: out.deleted_date().is_some(),
            tags,
            parameter_type: None,
        })
    }

    /// Values for every request, in request order: secrets from Secrets Manager, parameters
    /// from SSM.
    pub async fn fetch(&self, requests: &[FetchRequest]) -> Vec<Result<Fetched, StoreError>> {
        let (parameters, secrets): (Vec<usize>, Vec<usize>) =
            (0..requests.len()).partition(|&i| Reference::of(&requests[i].secret).is_parameter());
        let mut results: Vec<Option<Result<Fetched, StoreError>>> =
            requests.iter().map(|_| None).collect();
        for (kind, picked) in [(true, parameters), (false, secrets)] {
            if picked.is_empty() {
                continue;
            }
            let asked: Vec<FetchRequest> = picked.iter().map(|&i| requests[i].clone()).collect();
            let got = if kind {
                self.parameters().fetch(&asked).await
            } else {
                self.fetch_secrets(&asked).await
            };
            for (i, r) in picked.into_iter().zip(got) {
                results[i] = Some(r);
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every request is a secret or a parameter"))
            .collect()
    }

    async fn fetch_secrets(&self, requests: &[FetchRequest]) -> Vec<Result<Fetched, StoreError>> {
        let mut results: Vec<Option<Result<Fetched, StoreError>>> =
            requests.iter().map(|_| None).collect();
        let batched: Vec<usize> = (0..requests.len())
            .filter(|&i| !requests[i].is_pinned())
            .collect();
        for chunk in batched.chunks(BATCH_SIZE) {
            self.fetch_batch(requests, chunk, &mut results).await;
        }
        for (i, req) in requests.iter().enumerate().filter(|(_, r)| r.is_pinned()) {
            results[i] = Some(self.fetch_one(req).await);
        }
        self.confirm_deleted(&mut results).await;
        results
            .into_iter()
            .zip(requests)
            .map(|(r, req)| {
                r.unwrap_or_else(|| {
                    Err(StoreError::Other {
                        secret: req.secret.clone(),
                        code: "MissingFromBatch".into(),
                        message: "BatchGetSecretValue returned neither a value nor an error for it"
                            .into(),
                    })
                })
            })
            .collect()
    }

    /// Secrets Manager refuses to read a secret scheduled for deletion with
    /// `InvalidRequestException`, a code it also gives other refused requests; neither the SDK
    /// (no narrower variant) nor the batch error entry (a code and prose) says which. The one
    /// typed signal is `DescribeSecret`'s `DeletedDate`, so each secret answered with that code
    /// is described once, on this error path only, and becomes [`StoreError::Deleted`] when it is
    /// set. Any other answer keeps the original error.
    async fn confirm_deleted(&self, results: &mut [Option<Result<Fetched, StoreError>>]) {
        let mut checked: BTreeMap<String, bool> = BTreeMap::new();
        for slot in results.iter_mut() {
            let secret = match slot {
                Some(Err(StoreError::Other { secret, code, .. })) if code == INVALID_REQUEST => {
                    secret.clone()
                }
                _ => continue,
            };
            let deleted = match checked.get(&secret) {
                Some(d) => *d,
                None => {
                    let d = self.describe(&secret).await.is_ok_and(|m| m.deleted);
                    checked.insert(secret.clone(), d);
                    d
                }
            };
            if deleted {
                *slot = Some(Err(StoreError::Deleted { secret }));
            }
        }
    }

    async fn fetch_batch(
        &self,
        requests: &[FetchRequest],
        chunk: &[usize],
        results: &mut [Option<Result<Fetched, StoreError>>],
    ) {
        let mut ids: Vec<String> = chunk.iter().map(|&i| requests[i].secret.clone()).collect();
        ids.sort();
        ids.dedup();
        self.calls.fetch_add(1, Ordering::Relaxed);
        let out = match self
            .client()
            .batch_get_secret_value()
            .set_secret_id_list(Some(ids))
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                for &i in chunk {
                    results[i] = Some(Err(map_err(&self.endpoint, &requests[i].secret, &e)));
                }
                return;
            }
        };
        for entry in out.secret_values.unwrap_or_default() {
            let arn = entry.arn.unwrap_or_default();
            let name = entry.name.unwrap_or_default();
            let version_id = entry.version_id.unwrap_or_default();
            let value = match (entry.secret_string, entry.secret_binary) {
                (Some(s), _) => Some(SecretValue::Text(SecretString::from(s))),
                (None, Some(b)) => Some(SecretValue::Binary(SecretSlice::from(b.into_inner()))),
                (None, None) => None,
            };
            let Some(value) = value else { continue };
            let wanted: Vec<usize> = chunk
                .iter()
                .copied()
                .filter(|&i| id_matches(&requests[i].secret, &arn, &name))
                .collect();
            // Several files may read one secret; each gets its own copy of the value.
            let mut value = Some(value);
            for (n, &i) in wanted.iter().enumerate() {
                let v = if n + 1 == wanted.len() {
                    value.take().expect("taken only on the last iteration")
                } else {
                    clone_value(
                        value
                            .as_ref()
                            .expect("still present before the last iteration"),
                    )
                };
                results[i] = Some(Ok(Fetched {
                    arn: arn.clone(),
                    name: name.clone(),
                    version_id: version_id.clone(),
                    value: v,
                }));
            }
        }
        for err in out.errors.unwrap_or_default() {
            let id = err.secret_id.unwrap_or_default();
            let code = err.error_code.unwrap_or_default();
            let message = err.message.unwrap_or_default();
            for &i in chunk.iter().filter(|&&i| requests[i].secret == id) {
                results[i] = Some(Err(classify(&requests[i].secret, &code, &message)));
            }
        }
    }

    async fn fetch_one(&self, req: &FetchRequest) -> Result<Fetched, StoreError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let out = self
            .client()
            .get_secret_value()
            .secret_id(&req.secret)
            .set_version_id(req.version_id.clone())
            .set_version_stage(req.version_stage.clone())
            .send()
            .await
            .map_err(|e| match map_err(&self.endpoint, &req.secret, &e) {
                StoreError::NotFound { secret } if req.is_pinned() => StoreError::VersionNotFound {
                    secret,
                    version: req.version_label(),
                },
                other => other,
            })?;
        let value = match (out.secret_string, out.secret_binary) {
            (Some(s), _) => SecretValue::Text(SecretString::from(s)),
            (None, Some(b)) => SecretValue::Binary(SecretSlice::from(b.into_inner())),
            (None, None) => {
                return Err(StoreError::Other {
                    secret: req.secret.clone(),
                    code: "EmptyValue".into(),
                    message: "the version holds neither SecretString nor SecretBinary".into(),
                });
            }
        };
        Ok(Fetched {
            arn: out.arn.unwrap_or_default(),
            name: out.name.unwrap_or_default(),
            version_id: out.version_id.unwrap_or_default(),
            value,
        })
    }
}

fn tag_map(tags: &[aws_sdk_secretsmanager::types::Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_string(),
                t.value().unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

fn stage_map(
    stages: Option<&std::collections::HashMap<String, Vec<String>>>,
) -> BTreeMap<String, Vec<String>> {
    stages
        .into_iter()
        .flatten()
        .map(|(id, stages)| (id.clone(), stages.clone()))
        .collect()
}

fn clone_value(v: &SecretValue) -> SecretValue {
    use secrecy::ExposeSecret;
    match v {
        SecretValue::Text(s) => {
            SecretValue::Text(SecretString::from(s.expose_secret().to_string()))
        }
        SecretValue::Binary(b) => {
            SecretValue::Binary(SecretSlice::from(b.expose_secret().to_vec()))
        }
    }
}

fn map_err<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug + 'static>(
    endpoint: &str,
    secret: &str,
    err: &SdkError<E, R>,
) -> StoreError {
    map_err_for("Secrets Manager", endpoint, secret, err)
}

/// An SDK error of `service` (as people call it) at `endpoint` about `secret`, classified.
pub(super) fn map_err_for<
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
>(
    service: &str,
    endpoint: &str,
    secret: &str,
    err: &SdkError<E, R>,
) -> StoreError {
    match err {
        SdkError::TimeoutError(_) => StoreError::Unavailable {
            secret: secret.into(),
            message: format!("timed out waiting for {service}"),
        },
        SdkError::DispatchFailure(d) => {
            if let Some(message) = super::connect_error::certificate_problem(service, endpoint, err)
            {
                return StoreError::Certificate {
                    secret: secret.into(),
                    message,
                };
            }
            let message = if d.is_timeout() {
                format!("timed out connecting to {service}")
            } else if d.is_io() {
                format!("could not connect to {service}")
            } else {
                format!("request not sent: {}", describe_chain(err))
            };
            StoreError::Unavailable {
                secret: secret.into(),
                message,
            }
        }
        SdkError::ConstructionFailure(_) => StoreError::Config(format!(
            "could not build a {service} request (is a region configured? set AWS_REGION): {}",
            describe_chain(err)
        )),
        _ => classify(
            secret,
            err.code().unwrap_or("Unknown"),
            err.message().unwrap_or("no message from the store"),
        ),
    }
}

fn describe_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut src = err.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

/// The error code of a request Secrets Manager refuses in the secret's current state.
const INVALID_REQUEST: &str = "InvalidRequestException";

/// Classifies an answer by its error code (the SDK's `ProvideErrorMetadata::code`, or a batch
/// entry's `ErrorCode`): one function for single and batch reads, whose errors the SDK types
/// differently. The message is carried along for people, never inspected.
fn classify(secret: &str, code: &str, message: &str) -> StoreError {
    let secret = secret.to_string();
    let message = message.to_string();
    match code {
        "ResourceNotFoundException" | "ParameterNotFound" => StoreError::NotFound { secret },
        "AccessDeniedException"
        | "AccessDenied"
        | "UnrecognizedClientException"
        | "ExpiredTokenException" => StoreError::AccessDenied { secret, message },
        "DecryptionFailure"
        | "KMSAccessDeniedException"
        | "KMSDisabledException"
        | "KMSInvalidStateException"
        | "InvalidKeyId" => StoreError::Decryption { secret, message },
        "ThrottlingException"
        | "Throttling"
        | "TooManyRequestsException"
        | "RequestLimitExceeded" => StoreError::Throttled { secret, message },
        "InternalServiceError"
        | "InternalServerError"
        | "InternalFailure"
        | "ServiceUnavailable" => StoreError::Unavailable { secret, message },
        // Also a secret scheduled for deletion: see `AwsStore::confirm_deleted`.
        _ => StoreError::Other {
            secret,
            code: code.to_string(),
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ErrorKind;

    #[test]
    fn error_codes_are_classified() {
        assert_eq!(
            classify("s", "ResourceNotFoundException", "").kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            classify("s", "ThrottlingException", "slow down").kind(),
            ErrorKind::Throttled
        );
        assert_eq!(
            classify("s", "DecryptionFailure", "kms").kind(),
            ErrorKind::Decryption
        );
        // The message is never read: a deletion is confirmed with DescribeSecret instead.
        let refused = classify(
            "s",
            INVALID_REQUEST,
            "You can't perform this operation on the secret because it was marked for deletion.",
        );
        assert!(
            matches!(&refused, StoreError::Other { code, .. } if code == INVALID_REQUEST),
            "{refused:?}"
        );
        // SSM's codes for the same situations.
        assert_eq!(
            classify("ssm:/p", "ParameterNotFound", "").kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            classify("ssm:/p", "InvalidKeyId", "disabled").kind(),
            ErrorKind::Decryption
        );
        assert_eq!(
            classify("ssm:/p", "InternalServerError", "").kind(),
            ErrorKind::Unavailable
        );
        assert!(
            classify("ssm:/p", "ThrottlingException", "Rate exceeded")
                .to_string()
                .starts_with("parameter \"ssm:/p\": throttled")
        );
        assert_eq!(
            classify("s", "Weird", "m").to_string(),
            "secret \"s\": Weird: m"
        );
    }
}
