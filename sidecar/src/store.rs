//! Secret stores: AWS (Secrets Manager and SSM Parameter Store) and a local YAML file with the
//! same semantics.
//!
//! A reference names its store ([`crate::spec::Reference`]): `ssm:<name>` and parameter ARNs
//! are SSM parameters, everything else Secrets Manager secrets. The webhook asks stores for
//! metadata only ([`Store::describe`]); the agent asks for values ([`Store::fetch`]). Values are wrapped in `secrecy` types from the moment they arrive, so no
//! `Debug`, log line or error message can carry one.

mod aws;
mod connect_error;
mod file;
mod ssm;

use std::collections::BTreeMap;
use std::fmt;

use secrecy::{SecretSlice, SecretString};

use crate::metrics::ErrorKind;
use crate::spec::Reference;

pub use aws::AwsStore;
pub use file::FileStore;
pub use ssm::DESCRIBE_BATCH;

use std::sync::atomic::{AtomicU64, Ordering};

/// Errors from a store, per secret where one is concerned. Messages never hold values.
/// `secret` is the reference as the pod wrote it; messages call it a secret or a parameter.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("{} does not exist (or this identity may not see it)", subject(.secret))]
    NotFound { secret: String },
    #[error("{} is scheduled for deletion", subject(.secret))]
    Deleted { secret: String },
    #[error("{}: access denied: {message}", subject(.secret))]
    AccessDenied { secret: String, message: String },
    #[error("{}: could not be decrypted: {message}", subject(.secret))]
    Decryption { secret: String, message: String },
    #[error("{}: throttled by the store: {message}", subject(.secret))]
    Throttled { secret: String, message: String },
    #[error(
        "{}: the store could not be reached or did not answer in time: {message}",
        subject(.secret)
    )]
    Unavailable { secret: String, message: String },
    /// The endpoint's TLS certificate is not trusted: it will be presented again, so this is
    /// never retried (counted as `unavailable`).
    #[error("{}: {message}", subject(.secret))]
    Certificate { secret: String, message: String },
    #[error("{}: version {version:?} does not exist", subject(.secret))]
    VersionNotFound { secret: String, version: String },
    #[error("{}: {code}: {message}", subject(.secret))]
    Other {
        secret: String,
        code: String,
        message: String,
    },
    #[error("secret store: {0}")]
    Config(String),
}

/// How messages name a reference: `secret "/prod/db"` or `parameter "ssm:/prod/db-host"`.
pub fn subject(reference: &str) -> String {
    if Reference::of(reference).is_parameter() {
        format!("parameter {reference:?}")
    } else {
        format!("secret {reference:?}")
    }
}

impl StoreError {
    /// What kind of failure this is, for metrics and logs (`kind().as_str()` is the label).
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::NotFound { .. } => ErrorKind::NotFound,
            StoreError::Deleted { .. } => ErrorKind::Deleted,
            StoreError::AccessDenied { .. } => ErrorKind::AccessDenied,
            StoreError::Decryption { .. } => ErrorKind::Decryption,
            StoreError::Throttled { .. } => ErrorKind::Throttled,
            StoreError::Unavailable { .. } | StoreError::Certificate { .. } => {
                ErrorKind::Unavailable
            }
            StoreError::VersionNotFound { .. } => ErrorKind::VersionNotFound,
            StoreError::Other { .. } => ErrorKind::Other,
            StoreError::Config(_) => ErrorKind::Config,
        }
    }

    /// Whether the store itself failed (as opposed to an answer about the secret).
    pub fn is_store_failure(&self) -> bool {
        matches!(
            self,
            StoreError::Throttled { .. }
                | StoreError::Unavailable { .. }
                | StoreError::Certificate { .. }
                | StoreError::Config(_)
        )
    }

    /// Whether trying again later may succeed: throttling, or a store that did not answer (not
    /// an untrusted certificate, which is presented again).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Throttled { .. } | StoreError::Unavailable { .. }
        )
    }
}

/// What `DescribeSecret` says of a secret, or `DescribeParameters` of a parameter: metadata,
/// never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMeta {
    /// Empty when the store did not say (moto's `DescribeParameters` has no ARN).
    pub arn: String,
    /// The secret's or the parameter's name (`/prod/app/db`, without `ssm:`).
    pub name: String,
    /// `None` means the AWS managed key (`aws/secretsmanager`, or `alias/aws/ssm` for a
    /// `SecureString`).
    pub kms_key_id: Option<String>,
    /// Scheduled for deletion (`DeletedDate` set); parameters have no such state.
    pub deleted: bool,
    /// A secret's tags. A parameter's are empty: `DescribeParameters` does not return them.
    pub tags: BTreeMap<String, String>,
    /// `Some` for an SSM parameter: its type.
    pub parameter_type: Option<ParameterType>,
}

/// The type of an SSM parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum ParameterType {
    /// Plain text, unencrypted.
    String,
    /// Comma-separated plain text, unencrypted.
    StringList,
    /// Encrypted with a KMS key.
    SecureString,
}

impl ParameterType {
    pub fn as_str(self) -> &'static str {
        match self {
            ParameterType::String => "String",
            ParameterType::StringList => "StringList",
            ParameterType::SecureString => "SecureString",
        }
    }

    fn parse(s: &str) -> Option<ParameterType> {
        match s {
            "String" => Some(ParameterType::String),
            "StringList" => Some(ParameterType::StringList),
            "SecureString" => Some(ParameterType::SecureString),
            _ => None,
        }
    }
}

/// A secret's versions and the staging labels on each, as `ListSecrets`
/// (`SecretVersionsToStages`) or `DescribeSecret` (`VersionIdsToStages`) give them: metadata,
/// never a value. What the version service answers agents from (contract §8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretVersions {
    pub arn: String,
    pub name: String,
    pub tags: BTreeMap<String, String>,
    /// Scheduled for deletion (`DeletedDate` set).
    pub deleted: bool,
    /// Version id → its stages (`AWSCURRENT`, `AWSPREVIOUS`, custom labels).
    pub versions: BTreeMap<String, Vec<String>>,
    /// `false` when the ids mean something only inside this process: the local store's
    /// shorthand values, whose ids are keyed hashes with a per-process key, so another process
    /// (the agent) sees other ids for the same value.
    pub shared_ids: bool,
}

impl SecretVersions {
    /// The version that carries `stage`.
    pub fn with_stage(&self, stage: &str) -> Option<&str> {
        self.versions
            .iter()
            .find(|(_, stages)| stages.iter().any(|s| s == stage))
            .map(|(id, _)| id.as_str())
    }

    /// What holding it costs, roughly, in bytes (for the caches that hold many).
    pub fn bytes(&self) -> usize {
        let versions: usize = self
            .versions
            .iter()
            .map(|(id, stages)| id.len() + stages.iter().map(|s| s.len() + 24).sum::<usize>() + 48)
            .sum();
        let tags: usize = self.tags.iter().map(|(k, v)| k.len() + v.len() + 48).sum();
        self.arn.len() + self.name.len() + versions + tags + 128
    }

    /// The same secret as [`SecretMeta`], for the scope checks that read name, ARN and tags.
    pub fn meta(&self) -> SecretMeta {
        SecretMeta {
            arn: self.arn.clone(),
            name: self.name.clone(),
            kms_key_id: None,
            deleted: self.deleted,
            tags: self.tags.clone(),
            parameter_type: None,
        }
    }
}

/// The secrets whose names start with a prefix ([`Store::list_secret_versions`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretListing {
    pub secrets: Vec<SecretVersions>,
    /// `false` when the page bound was reached before the last page: a secret missing from
    /// `secrets` may exist.
    pub complete: bool,
    /// `ListSecrets` calls made (one a page).
    pub pages: u32,
}

/// An SSM parameter's latest version, as `DescribeParameters` gives it (never its value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParameterVersion {
    /// Empty when the store did not say (moto's `DescribeParameters` has no ARN).
    pub arn: String,
    pub name: String,
    pub version: u64,
}

/// `ListSecrets` returns at most this many secrets a page.
pub const LIST_PAGE_SIZE: i32 = 100;

/// Values one `ListSecrets` filter may hold (AWS's limit): prefixes listed by one call.
pub const LIST_FILTER_VALUES: usize = 10;

/// The metadata APIs, counted one by one ([`Store::metadata_calls`]): what the version service
/// costs in AWS calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataApi {
    ListSecrets,
    DescribeSecret,
    DescribeParameters,
}

impl MetadataApi {
    pub const ALL: [MetadataApi; 3] = [
        MetadataApi::ListSecrets,
        MetadataApi::DescribeSecret,
        MetadataApi::DescribeParameters,
    ];

    /// The API's name, as AWS spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            MetadataApi::ListSecrets => "ListSecrets",
            MetadataApi::DescribeSecret => "DescribeSecret",
            MetadataApi::DescribeParameters => "DescribeParameters",
        }
    }
}

/// Calls made to each [`MetadataApi`].
#[derive(Debug, Default)]
pub(crate) struct MetadataCalls([AtomicU64; 3]);

impl MetadataCalls {
    pub(crate) fn count(&self, api: MetadataApi) {
        self.0[api as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self, api: MetadataApi) -> u64 {
        self.0[api as usize].load(Ordering::Relaxed)
    }
}

/// A secret value. Its `Debug` never shows the content.
pub enum SecretValue {
    Text(SecretString),
    Binary(SecretSlice<u8>),
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretValue::Text(_) => f.write_str("SecretValue::Text([REDACTED])"),
            SecretValue::Binary(_) => f.write_str("SecretValue::Binary([REDACTED])"),
        }
    }
}

/// One version of one secret, as fetched.
#[derive(Debug)]
pub struct Fetched {
    pub arn: String,
    pub name: String,
    pub version_id: String,
    pub value: SecretValue,
}

/// What to fetch: a secret (or parameter), optionally pinned to a version id or stage (a
/// parameter's version number or label).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FetchRequest {
    pub secret: String,
    pub version_id: Option<String>,
    pub version_stage: Option<String>,
}

impl FetchRequest {
    /// What a declared file reads.
    pub fn for_file(f: &crate::spec::SecretFile) -> Self {
        FetchRequest {
            secret: f.secret.clone(),
            version_id: f.version_id.clone(),
            version_stage: f.version_stage.clone(),
        }
    }

    pub fn current(secret: impl Into<String>) -> Self {
        FetchRequest {
            secret: secret.into(),
            version_id: None,
            version_stage: None,
        }
    }

    /// Whether a version or stage other than the current one is asked for (Secrets Manager's
    /// batch reads only return `AWSCURRENT`, so such a secret is fetched on its own).
    pub fn is_pinned(&self) -> bool {
        self.version_id.is_some()
            || self
                .version_stage
                .as_deref()
                .is_some_and(|s| s != "AWSCURRENT")
    }

    pub(crate) fn version_label(&self) -> String {
        self.version_id
            .clone()
            .or_else(|| self.version_stage.clone())
            .unwrap_or_else(|| "AWSCURRENT".into())
    }
}

/// A configured store.
#[derive(Debug, Clone)]
pub enum Store {
    Aws(AwsStore),
    File(FileStore),
}

/// The `--store` setting: `aws` or `file:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSetting {
    Aws,
    File(std::path::PathBuf),
}

impl std::str::FromStr for StoreSetting {
    type Err = crate::spec::Invalid;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "aws" => Ok(StoreSetting::Aws),
            _ => match s.strip_prefix("file:") {
                Some(p) if !p.is_empty() => Ok(StoreSetting::File(p.into())),
                _ => Err(crate::spec::Invalid(format!(
                    "{s:?} is not a store; use \"aws\" or \"file:PATH\""
                ))),
            },
        }
    }
}

impl fmt::Display for StoreSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreSetting::Aws => f.write_str("aws"),
            StoreSetting::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

impl Store {
    /// Opens a store. AWS takes the standard configuration (region, credentials chain,
    /// `AWS_ENDPOINT_URL`); `timeout` bounds every call including retries.
    pub async fn open(
        setting: &StoreSetting,
        timeout: std::time::Duration,
    ) -> Result<Store, StoreError> {
        match setting {
            StoreSetting::Aws => Ok(Store::Aws(AwsStore::from_env(timeout).await)),
            StoreSetting::File(p) => Ok(Store::File(FileStore::open(p)?)),
        }
    }

    /// Metadata of one secret or parameter, by the reference the pod wrote.
    pub async fn describe(&self, secret: &str) -> Result<SecretMeta, StoreError> {
        match self {
            Store::Aws(s) => s.describe(secret).await,
            Store::File(s) => s.describe(secret),
        }
    }

    /// Values for every request, in request order. Unpinned requests are batched.
    pub async fn fetch(&self, requests: &[FetchRequest]) -> Vec<Result<Fetched, StoreError>> {
        match self {
            Store::Aws(s) => s.fetch(requests).await,
            Store::File(s) => s.fetch(requests),
        }
    }

    /// Number of API calls made so far, both services (AWS only; 0 for files).
    pub fn api_calls(&self) -> u64 {
        match self {
            Store::Aws(s) => s.api_calls(),
            Store::File(_) => 0,
        }
    }

    /// Calls made so far to one metadata API (AWS only; 0 for files).
    pub fn metadata_calls(&self, api: MetadataApi) -> u64 {
        match self {
            Store::Aws(s) => s.metadata_calls().get(api),
            Store::File(_) => 0,
        }
    }

    /// The secrets whose names start with one of `prefixes` (case-sensitive, whatever the
    /// store's own filter matched), with their versions' stages: `ListSecrets` filtered by
    /// name, up to [`LIST_FILTER_VALUES`] prefixes a call, pages of [`LIST_PAGE_SIZE`], at most
    /// `max_pages` pages for each group of prefixes. Secrets scheduled for deletion are left
    /// out, as `ListSecrets` leaves them out.
    pub async fn list_secret_versions(
        &self,
        prefixes: &[String],
        max_pages: u32,
    ) -> Result<SecretListing, StoreError> {
        match self {
            Store::Aws(s) => s.list_secret_versions(prefixes, max_pages).await,
            Store::File(s) => s.list_secret_versions(prefixes),
        }
    }

    /// One secret's versions and their stages (`DescribeSecret`).
    pub async fn describe_secret_versions(
        &self,
        secret: &str,
    ) -> Result<SecretVersions, StoreError> {
        match self {
            Store::Aws(s) => s.describe_secret_versions(secret).await,
            Store::File(s) => s.describe_secret_versions(secret),
        }
    }

    /// The latest version of each named parameter (names without `ssm:`) that exists:
    /// `DescribeParameters`, 50 names a call. A name missing from the answer does not exist.
    pub async fn parameter_versions(
        &self,
        names: &[String],
    ) -> Result<BTreeMap<String, ParameterVersion>, StoreError> {
        match self {
            Store::Aws(s) => s.parameter_versions(names).await,
            Store::File(s) => s.parameter_versions(names),
        }
    }
}

/// Whether `id` (a name, a full ARN or a partial ARN without the random suffix) names `meta`.
pub fn id_matches(id: &str, arn: &str, name: &str) -> bool {
    if id == name || id == arn {
        return true;
    }
    // A partial ARN: the full ARN minus its "-XXXXXX" suffix.
    arn.len() == id.len() + 7 && arn.starts_with(id) && arn.as_bytes()[id.len()] == b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_settings() {
        assert_eq!("aws".parse::<StoreSetting>(), Ok(StoreSetting::Aws));
        assert_eq!(
            "file:/x.yaml".parse::<StoreSetting>(),
            Ok(StoreSetting::File("/x.yaml".into()))
        );
        assert!("file:".parse::<StoreSetting>().is_err());
        assert!("vault".parse::<StoreSetting>().is_err());
    }

    #[test]
    fn ids_match_names_and_arns() {
        let arn = "arn:aws:secretsmanager:us-east-1:111122223333:secret:/demo/db-AbCdEf";
        assert!(id_matches("/demo/db", arn, "/demo/db"));
        assert!(id_matches(arn, arn, "/demo/db"));
        assert!(id_matches(
            "arn:aws:secretsmanager:us-east-1:111122223333:secret:/demo/db",
            arn,
            "/demo/db"
        ));
        assert!(!id_matches("/demo/d", arn, "/demo/db"));
        assert!(!id_matches(
            "arn:aws:secretsmanager:us-east-1:111122223333:secret:/demo/d",
            arn,
            "/demo/db"
        ));
    }

    #[test]
    fn values_never_debug_print() {
        let v = SecretValue::Text(SecretString::from("hunter2".to_string()));
        assert!(!format!("{v:?}").contains("hunter2"));
        let f = Fetched {
            arn: "a".into(),
            name: "n".into(),
            version_id: "v".into(),
            value: v,
        };
        assert!(!format!("{f:?}").contains("hunter2"));
    }
}
