//! SSM Parameter Store through the AWS SDK: `DescribeParameters` for the webhook (metadata,
//! batched), `GetParameters` for the agent (values, at most ten names a call, decrypted).
//!
//! A reference is a parameter name or a parameter ARN; a version or label is asked for as SSM
//! spells it, `name:3` or `name:label`. SSM answers unknown names in `InvalidParameters`, not
//! as an error, so each one becomes an error naming the parameter here.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aws_sdk_ssm::Client;
use aws_sdk_ssm::types::{ParameterMetadata, ParameterStringFilter};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::OnceCell;

use super::aws::map_err_for;
use super::{
    FetchRequest, Fetched, MetadataApi, MetadataCalls, ParameterType, ParameterVersion, SecretMeta,
    SecretValue, StoreError,
};
use crate::spec::{Reference, parameter_name};

/// `GetParameters` takes at most this many names.
pub const GET_BATCH: usize = 10;
/// A `DescribeParameters` filter takes at most this many values.
pub const DESCRIBE_BATCH: usize = 50;

const SERVICE: &str = "SSM Parameter Store";

/// The metadata of the parameters one `DescribeParameters` batch found, by name.
type Answer = Result<BTreeMap<String, SecretMeta>, StoreError>;

#[derive(Debug, Default)]
struct Names {
    names: Vec<String>,
    /// Set when the call starts: later lookups open a new batch.
    closed: bool,
}

/// Lookups that arrive together (the parameters of one admission, and of admissions at the
/// same moment) share one `DescribeParameters` call.
#[derive(Debug, Default)]
struct Batch {
    names: Mutex<Names>,
    answer: OnceCell<Answer>,
}

#[derive(Debug)]
pub(super) struct Ssm {
    client: Client,
    /// Where requests go, for errors that people read.
    endpoint: String,
    calls: Arc<AtomicU64>,
    metadata: Arc<MetadataCalls>,
    open: Mutex<Option<Arc<Batch>>>,
}

impl Ssm {
    pub(super) fn new(
        conf: &aws_config::SdkConfig,
        calls: Arc<AtomicU64>,
        metadata: Arc<MetadataCalls>,
    ) -> Self {
        // The SDK resolves the service's own variable per client; it wins over the general one.
        let endpoint = std::env::var("AWS_ENDPOINT_URL_SSM")
            .ok()
            .or_else(|| conf.endpoint_url().map(str::to_string))
            .unwrap_or_else(|| {
                let region = conf.region().map_or("<no region>", |r| r.as_ref());
                format!("https://ssm.{region}.amazonaws.com")
            });
        Ssm {
            client: Client::from_conf(
                aws_sdk_ssm::config::Builder::from(conf)
                    .retry_classifier(super::connect_error::CertificateErrorsAreFinal)
                    .build(),
            ),
            endpoint,
            calls,
            metadata,
            open: Mutex::new(None),
        }
    }

    /// Metadata of one parameter, `reference` being what the pod wrote (`ssm:<name>` or an
    /// ARN). Joins the batch being gathered, if any.
    pub(super) async fn describe(&self, reference: &str) -> Result<SecretMeta, StoreError> {
        let asked = match Reference::of(reference) {
            Reference::Parameter(p) => p,
            Reference::Secret(s) => s,
        };
        let name = parameter_name(asked);
        let batch = self.join(&name);
        let answer = batch.answer.get_or_init(|| self.run(&batch)).await;
        let found = match answer {
            Ok(found) => found,
            Err(e) => return Err(with_secret(e.clone(), reference)),
        };
        let Some(meta) = found.get(&name) else {
            return Err(StoreError::NotFound {
                secret: reference.to_string(),
            });
        };
        let mut meta = meta.clone();
        if asked.starts_with("arn:") {
            // The webhook describes parameters in its own account and Region; an ARN of another
            // one does not name what it found there.
            if !meta.arn.is_empty() && meta.arn != asked {
                return Err(StoreError::NotFound {
                    secret: reference.to_string(),
                });
            }
            meta.arn = asked.to_string();
        }
        Ok(meta)
    }

    fn join(&self, name: &str) -> Arc<Batch> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = open.as_ref() {
            let mut n = b.names.lock().unwrap_or_else(|p| p.into_inner());
            if !n.closed && (n.names.len() < DESCRIBE_BATCH || n.names.iter().any(|x| x == name)) {
                if !n.names.iter().any(|x| x == name) {
                    n.names.push(name.to_string());
                }
                drop(n);
                return b.clone();
            }
        }
        let b = Arc::new(Batch::default());
        b.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .names
            .push(name.to_string());
        *open = Some(b.clone());
        b
    }

    async fn run(&self, batch: &Arc<Batch>) -> Answer {
        // Let the other lookups polled with this one (one admission's `join_all`) join first.
        tokio::task::yield_now().await;
        let names = {
            let mut n = batch.names.lock().unwrap_or_else(|p| p.into_inner());
            n.closed = true;
            n.names.clone()
        };
        {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            if open.as_ref().is_some_and(|b| Arc::ptr_eq(b, batch)) {
                *open = None;
            }
        }
        let mut found = BTreeMap::new();
        for p in self.describe_names(names).await? {
            let Some(name) = p.name() else { continue };
            let parameter_type = p
                .r#type()
                .and_then(|t| ParameterType::parse(t.as_str()))
                .unwrap_or(ParameterType::String);
            found.insert(
                name.to_string(),
                SecretMeta {
                    arn: p.arn().unwrap_or_default().to_string(),
                    name: name.to_string(),
                    kms_key_id: p
                        .key_id()
                        .filter(|k| !k.is_empty() && parameter_type == ParameterType::SecureString)
                        .map(str::to_string),
                    deleted: false,
                    tags: BTreeMap::new(),
                    parameter_type: Some(parameter_type),
                },
            );
        }
        Ok(found)
    }

    /// `DescribeParameters` filtered by `Name Equals` (at most [`DESCRIBE_BATCH`] names), every
    /// page.
    async fn describe_names(
        &self,
        names: Vec<String>,
    ) -> Result<Vec<ParameterMetadata>, StoreError> {
        let filter = ParameterStringFilter::builder()
            .key("Name")
            .option("Equals")
            .set_values(Some(names))
            .build()
            .map_err(|e| StoreError::Config(format!("DescribeParameters filter: {e}")))?;
        let mut found = Vec::new();
        let mut token: Option<String> = None;
        loop {
            self.calls.fetch_add(1, Ordering::Relaxed);
            self.metadata.count(MetadataApi::DescribeParameters);
            let out = self
                .client
                .describe_parameters()
                .parameter_filters(filter.clone())
                .max_results(DESCRIBE_BATCH as i32)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| map_err_for(SERVICE, &self.endpoint, "", &e))?;
            found.extend(out.parameters.unwrap_or_default());
            match out.next_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        Ok(found)
    }

    /// The latest version of each named parameter that exists ([`DESCRIBE_BATCH`] names a
    /// call): what the version service answers unpinned parameter references with.
    pub(super) async fn versions(
        &self,
        names: &[String],
    ) -> Result<BTreeMap<String, ParameterVersion>, StoreError> {
        let mut unique: Vec<String> = names.to_vec();
        unique.sort();
        unique.dedup();
        let mut found = BTreeMap::new();
        for chunk in unique.chunks(DESCRIBE_BATCH) {
            for p in self.describe_names(chunk.to_vec()).await? {
                let Some(name) = p.name() else { continue };
                let Ok(version) = u64::try_from(p.version()) else {
                    continue;
                };
                found.insert(
                    name.to_string(),
                    ParameterVersion {
                        arn: p.arn().unwrap_or_default().to_string(),
                        name: name.to_string(),
                        version,
                    },
                );
            }
        }
        Ok(found)
    }

    /// Values for parameter requests, in request order: `GetParameters` with decryption, at
    /// most [`GET_BATCH`] names a call, and a name at most once a call so that each answer
    /// maps back to its request whether or not SSM reports the selector.
    pub(super) async fn fetch(
        &self,
        requests: &[FetchRequest],
    ) -> Vec<Result<Fetched, StoreError>> {
        let queries: Vec<String> = requests.iter().map(query).collect();
        let mut calls: Vec<Vec<String>> = Vec::new();
        for q in &queries {
            if calls.iter().any(|c| c.contains(q)) {
                continue;
            }
            let name = parameter_name(strip_selector(q));
            match calls.iter_mut().find(|c| {
                c.len() < GET_BATCH && !c.iter().any(|x| parameter_name(strip_selector(x)) == name)
            }) {
                Some(c) => c.push(q.clone()),
                None => calls.push(vec![q.clone()]),
            }
        }
        let mut answers: BTreeMap<
            String,
            Result<(String, String, String, SecretString), StoreError>,
        > = BTreeMap::new();
        for call in calls {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let out = self
                .client
                .get_parameters()
                .set_names(Some(call.clone()))
                .with_decryption(true)
                .send()
                .await;
            let out = match out {
                Ok(out) => out,
                Err(e) => {
                    let err = map_err_for(SERVICE, &self.endpoint, "", &e);
                    for q in call {
                        answers.insert(q, Err(err.clone()));
                    }
                    continue;
                }
            };
            for p in out.parameters() {
                let Some(name) = p.name() else { continue };
                let Some(q) = call.iter().find(|q| {
                    parameter_name(strip_selector(q)) == parameter_name(strip_selector(name))
                }) else {
                    continue;
                };
                let Some(value) = p.value() else { continue };
                answers.insert(
                    q.clone(),
                    Ok((
                        p.arn().unwrap_or_default().to_string(),
                        name.to_string(),
                        p.version().to_string(),
                        SecretString::from(value.to_string()),
                    )),
                );
            }
            for q in out.invalid_parameters() {
                answers.insert(
                    q.clone(),
                    Err(StoreError::NotFound {
                        secret: String::new(),
                    }),
                );
            }
        }
        requests
            .iter()
            .zip(&queries)
            .map(|(req, q)| match answers.get(q) {
                Some(Ok((arn, name, version, value))) => Ok(Fetched {
                    arn: arn.clone(),
                    name: name.clone(),
                    version_id: version.clone(),
                    value: SecretValue::Text(SecretString::from(value.expose_secret().to_string())),
                }),
                Some(Err(StoreError::NotFound { .. })) if req.is_pinned() => {
                    Err(StoreError::VersionNotFound {
                        secret: req.secret.clone(),
                        version: req.version_label(),
                    })
                }
                Some(Err(e)) => Err(with_secret(e.clone(), &req.secret)),
                None => Err(StoreError::Other {
                    secret: req.secret.clone(),
                    code: "MissingFromBatch".into(),
                    message: "GetParameters returned neither a value nor an invalid name for it"
                        .into(),
                }),
            })
            .collect()
    }
}

/// What `GetParameters` is asked for a request: the name or ARN, with `:version` or `:label`.
fn query(req: &FetchRequest) -> String {
    let base = match Reference::of(&req.secret) {
        Reference::Parameter(p) => p,
        Reference::Secret(s) => s,
    };
    match (&req.version_id, &req.version_stage) {
        (Some(v), _) => format!("{base}:{v}"),
        (None, Some(l)) => format!("{base}:{l}"),
        (None, None) => base.to_string(),
    }
}

/// A query without its `:version`/`:label` (an ARN's own colons stay).
fn strip_selector(q: &str) -> &str {
    let resource_start = if q.starts_with("arn:") {
        q.match_indices(':').nth(4).map_or(0, |(i, _)| i + 1)
    } else {
        0
    };
    match q[resource_start..].find(':') {
        Some(i) => &q[..resource_start + i],
        None => q,
    }
}

/// The same error about another reference.
fn with_secret(e: StoreError, reference: &str) -> StoreError {
    let secret = reference.to_string();
    match e {
        StoreError::NotFound { .. } => StoreError::NotFound { secret },
        StoreError::Deleted { .. } => StoreError::Deleted { secret },
        StoreError::AccessDenied { message, .. } => StoreError::AccessDenied { secret, message },
        StoreError::Decryption { message, .. } => StoreError::Decryption { secret, message },
        StoreError::Throttled { message, .. } => StoreError::Throttled { secret, message },
        StoreError::Unavailable { message, .. } => StoreError::Unavailable { secret, message },
        StoreError::Certificate { message, .. } => StoreError::Certificate { secret, message },
        StoreError::VersionNotFound { version, .. } => {
            StoreError::VersionNotFound { secret, version }
        }
        StoreError::Other { code, message, .. } => StoreError::Other {
            secret,
            code,
            message,
        },
        StoreError::Config(m) => StoreError::Config(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_spell_versions_and_labels_as_ssm_does() {
        let mut r = FetchRequest::current("ssm:/demo/db-host");
        assert_eq!(query(&r), "/demo/db-host");
        r.version_id = Some("3".into());
        assert_eq!(query(&r), "/demo/db-host:3");
        r.version_id = None;
        r.version_stage = Some("blue".into());
        assert_eq!(query(&r), "/demo/db-host:blue");
        let arn = "arn:aws:ssm:us-east-1:111122223333:parameter/demo/db-host";
        assert_eq!(query(&FetchRequest::current(arn)), arn);
        assert_eq!(strip_selector(&format!("{arn}:7")), arn);
        assert_eq!(strip_selector(arn), arn);
        assert_eq!(strip_selector("/demo/db-host:blue"), "/demo/db-host");
        assert_eq!(strip_selector("plain"), "plain");
    }
}
