//! A local YAML secret store with Secrets Manager's semantics, so the whole flow runs on a laptop.
//!
//! ```yaml
//! region: us-east-1            # used to build ARNs
//! account: "111122223333"
//! secrets:
//!   - name: /demo/db
//!     kmsKeyId: alias/demo     # absent = the AWS managed key aws/secretsmanager
//!     tags: {kubernetes-namespace: demo}
//!     value: '{"password":"example"}'    # shorthand: one AWSCURRENT version
//!   - name: /demo/tls
//!     versions:
//!       - {id: v2, stages: [AWSCURRENT], value: "..."}
//!       - {id: v1, stages: [AWSPREVIOUS], binary: "<base64>"}
//! parameters:                  # SSM Parameter Store, referenced as ssm:<name>
//!   - name: /demo/db-host
//!     type: SecureString       # String | StringList | SecureString
//!     keyId: alias/demo        # SecureString only; absent = the AWS managed key alias/aws/ssm
//!     tags: {kubernetes-namespace: demo}
//!     value: db.internal       # shorthand: one version (`version`, default 1; `labels`)
//!   - name: /demo/feature
//!     type: String
//!     versions:                # the latest (highest) version is what an unpinned read gets
//!       - {version: 1, value: "off", labels: [previous]}
//!       - {version: 2, value: "on"}
//! ```
//! The file is read again whenever it changes, so editing it is a rotation (for a parameter,
//! bump its `version` as SSM would).

use crate::watch::Stamp;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine;
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{
    FetchRequest, Fetched, ParameterType, ParameterVersion, SecretListing, SecretMeta, SecretValue,
    SecretVersions, StoreError, id_matches,
};
use crate::spec::{Invalid, Reference, parameter_name};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Doc {
    #[serde(default = "default_region")]
    region: String,
    #[serde(default = "default_account")]
    account: String,
    #[serde(default)]
    secrets: Vec<FileSecret>,
    #[serde(default)]
    parameters: Vec<FileParameter>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileParameter {
    name: String,
    #[serde(rename = "type")]
    parameter_type: ParameterType,
    #[serde(default)]
    key_id: Option<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    value: Option<SecretString>,
    #[serde(default)]
    version: Option<u64>,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    versions: Vec<FileParameterVersion>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileParameterVersion {
    version: u64,
    value: SecretString,
    #[serde(default)]
    labels: Vec<String>,
}

impl FileParameter {
    /// Every version as (number, labels, value), the shorthand included.
    fn versions(&self) -> Vec<(u64, &[String], &SecretString)> {
        match &self.value {
            Some(v) => vec![(self.version.unwrap_or(1), self.labels.as_slice(), v)],
            None => self
                .versions
                .iter()
                .map(|v| (v.version, v.labels.as_slice(), &v.value))
                .collect(),
        }
    }
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_account() -> String {
    "000000000000".into()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileSecret {
    name: String,
    #[serde(default)]
    kms_key_id: Option<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    scheduled_for_deletion: bool,
    #[serde(default)]
    value: Option<SecretString>,
    #[serde(default)]
    binary: Option<SecretString>,
    #[serde(default)]
    versions: Vec<FileVersion>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileVersion {
    id: String,
    #[serde(default)]
    stages: Vec<String>,
    #[serde(default)]
    value: Option<SecretString>,
    #[serde(default)]
    binary: Option<SecretString>,
}

struct Loaded {
    stamp: Stamp,
    doc: Arc<Doc>,
}

/// The local store. Cheap to clone.
#[derive(Clone)]
pub struct FileStore {
    path: PathBuf,
    /// Version ids of shorthand values are keyed hashes, so they change with the value without
    /// revealing anything about it outside this process.
    salt: [u8; 16],
    cache: Arc<Mutex<Option<Loaded>>>,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl FileStore {
    /// Opens and checks the file now, so a bad store is reported at start.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut salt = [0u8; 16];
        salt.iter_mut().for_each(|b| *b = fastrand::u8(..));
        let store = FileStore {
            path: path.to_path_buf(),
            salt,
            cache: Arc::new(Mutex::new(None)),
        };
        store.load()?;
        Ok(store)
    }

    fn load(&self) -> Result<Arc<Doc>, StoreError> {
        let err = |m: String| StoreError::Config(format!("{}: {m}", self.path.display()));
        let meta = std::fs::metadata(&self.path).map_err(|e| err(e.to_string()))?;
        let stamp = Stamp::from_metadata(&meta);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = cache.as_ref()
            && l.stamp == stamp
        {
            return Ok(l.doc.clone());
        }
        let text = std::fs::read_to_string(&self.path).map_err(|e| err(e.to_string()))?;
        let doc: Doc = serde_yaml_ng::from_str(&text)
            .map_err(|e| err(format!("not a kura local store: {}", redacted(&e))))?;
        for s in &doc.secrets {
            check_secret(s).map_err(|m| err(format!("secret {:?}: {m}", s.name)))?;
        }
        for p in &doc.parameters {
            check_parameter(p).map_err(|m| err(format!("parameter {:?}: {m}", p.name)))?;
        }
        let doc = Arc::new(doc);
        *cache = Some(Loaded {
            stamp,
            doc: doc.clone(),
        });
        Ok(doc)
    }

    fn arn(doc: &Doc, name: &str) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let digest = Sha256::digest(name.as_bytes());
        let suffix: String = digest
            .iter()
            .take(6)
            .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
            .collect();
        format!(
            "arn:aws:secretsmanager:{}:{}:secret:{name}-{suffix}",
            doc.region, doc.account
        )
    }

    fn find<'a>(doc: &'a Doc, id: &str) -> Result<&'a FileSecret, StoreError> {
        doc.secrets
            .iter()
            .find(|s| id_matches(id, &Self::arn(doc, &s.name), &s.name))
            .ok_or_else(|| StoreError::NotFound {
                secret: id.to_string(),
            })
    }

    fn parameter_arn(doc: &Doc, name: &str) -> String {
        format!(
            "arn:aws:ssm:{}:{}:parameter/{}",
            doc.region,
            doc.account,
            name.strip_prefix('/').unwrap_or(name)
        )
    }

    /// The parameter a reference (`ssm:<name>` or a parameter ARN) names.
    fn find_parameter<'a>(doc: &'a Doc, reference: &str) -> Result<&'a FileParameter, StoreError> {
        let asked = match Reference::of(reference) {
            Reference::Parameter(p) | Reference::Secret(p) => p,
        };
        doc.parameters
            .iter()
            .find(|p| {
                if asked.starts_with("arn:") {
                    Self::parameter_arn(doc, &p.name) == asked
                } else {
                    parameter_name(asked) == p.name
                }
            })
            .ok_or_else(|| StoreError::NotFound {
                secret: reference.to_string(),
            })
    }

    pub fn describe(&self, secret: &str) -> Result<SecretMeta, StoreError> {
        let doc = self.load()?;
        if Reference::of(secret).is_parameter() {
            let p = Self::find_parameter(&doc, secret)?;
            return Ok(SecretMeta {
                arn: Self::parameter_arn(&doc, &p.name),
                name: p.name.clone(),
                kms_key_id: p
                    .key_id
                    .clone()
                    .filter(|_| p.parameter_type == ParameterType::SecureString),
                deleted: false,
                tags: p.tags.clone(),
                parameter_type: Some(p.parameter_type),
            });
        }
        let s = Self::find(&doc, secret)?;
        Ok(SecretMeta {
            arn: Self::arn(&doc, &s.name),
            name: s.name.clone(),
            kms_key_id: s.kms_key_id.clone(),
            deleted: s.scheduled_for_deletion,
            tags: s.tags.clone(),
            parameter_type: None,
        })
    }

    fn versions_of(&self, doc: &Doc, s: &FileSecret) -> SecretVersions {
        let versions = if s.versions.is_empty() {
            BTreeMap::from([(self.shorthand_version_id(s), vec!["AWSCURRENT".to_string()])])
        } else {
            s.versions
                .iter()
                .map(|v| (v.id.clone(), v.stages.clone()))
                .collect()
        };
        SecretVersions {
            arn: Self::arn(doc, &s.name),
            name: s.name.clone(),
            tags: s.tags.clone(),
            deleted: s.scheduled_for_deletion,
            versions,
            shared_ids: !s.versions.is_empty(),
        }
    }

    /// See [`super::Store::list_secret_versions`]: every secret of the file under a prefix
    /// (the file is one page).
    pub fn list_secret_versions(&self, prefixes: &[String]) -> Result<SecretListing, StoreError> {
        let doc = self.load()?;
        Ok(SecretListing {
            secrets: doc
                .secrets
                .iter()
                .filter(|s| {
                    prefixes.iter().any(|p| s.name.starts_with(p.as_str()))
                        && !s.scheduled_for_deletion
                })
                .map(|s| self.versions_of(&doc, s))
                .collect(),
            complete: true,
            pages: 1,
        })
    }

    /// See [`super::Store::describe_secret_versions`].
    pub fn describe_secret_versions(&self, secret: &str) -> Result<SecretVersions, StoreError> {
        let doc = self.load()?;
        let s = Self::find(&doc, secret)?;
        Ok(self.versions_of(&doc, s))
    }

    /// See [`super::Store::parameter_versions`].
    pub fn parameter_versions(
        &self,
        names: &[String],
    ) -> Result<BTreeMap<String, ParameterVersion>, StoreError> {
        let doc = self.load()?;
        Ok(doc
            .parameters
            .iter()
            .filter(|p| names.contains(&p.name))
            .filter_map(|p| {
                let latest = p.versions().iter().map(|(n, _, _)| *n).max()?;
                Some((
                    p.name.clone(),
                    ParameterVersion {
                        arn: Self::parameter_arn(&doc, &p.name),
                        name: p.name.clone(),
                        version: latest,
                    },
                ))
            })
            .collect())
    }

    fn fetch_parameter(doc: &Doc, req: &FetchRequest) -> Result<Fetched, StoreError> {
        let p = Self::find_parameter(doc, &req.secret)?;
        let versions = p.versions();
        let picked = match (&req.version_id, &req.version_stage) {
            (Some(v), _) => versions.iter().find(|(n, _, _)| n.to_string() == *v),
            (None, Some(l)) => versions.iter().find(|(_, labels, _)| labels.contains(l)),
            (None, None) => versions.iter().max_by_key(|(n, _, _)| *n),
        };
        let (n, _, value) = picked.ok_or_else(|| StoreError::VersionNotFound {
            secret: req.secret.clone(),
            version: req.version_label(),
        })?;
        Ok(Fetched {
            arn: Self::parameter_arn(doc, &p.name),
            name: p.name.clone(),
            version_id: n.to_string(),
            value: SecretValue::Text(SecretString::from(value.expose_secret().to_string())),
        })
    }

    pub fn fetch(&self, requests: &[FetchRequest]) -> Vec<Result<Fetched, StoreError>> {
        let doc = match self.load() {
            Ok(d) => d,
            Err(e) => return requests.iter().map(|_| Err(e.clone())).collect(),
        };
        requests.iter().map(|r| self.fetch_one(&doc, r)).collect()
    }

    fn fetch_one(&self, doc: &Doc, req: &FetchRequest) -> Result<Fetched, StoreError> {
        if Reference::of(&req.secret).is_parameter() {
            return Self::fetch_parameter(doc, req);
        }
        let s = Self::find(doc, &req.secret)?;
        if s.scheduled_for_deletion {
            return Err(StoreError::Deleted {
                secret: req.secret.clone(),
            });
        }
        let (version_id, text, binary) = if s.versions.is_empty() {
            if req.is_pinned() && req.version_stage.as_deref() != Some("AWSCURRENT") {
                return Err(StoreError::VersionNotFound {
                    secret: req.secret.clone(),
                    version: req.version_label(),
                });
            }
            (
                self.shorthand_version_id(s),
                s.value.as_ref(),
                s.binary.as_ref(),
            )
        } else {
            let stage = req.version_stage.as_deref().unwrap_or("AWSCURRENT");
            let v = s
                .versions
                .iter()
                .find(|v| match &req.version_id {
                    Some(id) => &v.id == id,
                    None => v.stages.iter().any(|st| st == stage),
                })
                .ok_or_else(|| StoreError::VersionNotFound {
                    secret: req.secret.clone(),
                    version: req.version_label(),
                })?;
            (v.id.clone(), v.value.as_ref(), v.binary.as_ref())
        };
        let value = match (text, binary) {
            (Some(t), _) => SecretValue::Text(SecretString::from(t.expose_secret().to_string())),
            (None, Some(b)) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b.expose_secret().trim())
                    .map_err(|_| StoreError::Other {
                        secret: req.secret.clone(),
                        code: "InvalidBinary".into(),
                        message: "binary is not base64".into(),
                    })?;
                SecretValue::Binary(SecretSlice::from(bytes))
            }
            (None, None) => {
                unreachable!("check_secret requires a value or binary in every version")
            }
        };
        Ok(Fetched {
            arn: Self::arn(doc, &s.name),
            name: s.name.clone(),
            version_id,
            value,
        })
    }

    fn shorthand_version_id(&self, s: &FileSecret) -> String {
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update(s.name.as_bytes());
        for v in [&s.value, &s.binary].into_iter().flatten() {
            h.update(v.expose_secret().as_bytes());
        }
        let d = h.finalize();
        let hex: String = d.iter().take(16).map(|b| format!("{b:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    }
}

fn redacted(e: &serde_yaml_ng::Error) -> String {
    crate::redact::scalars(&e.to_string())
}

fn check_parameter(p: &FileParameter) -> Result<(), Invalid> {
    crate::spec::validate_secret_id(&format!("{}{}", crate::spec::SSM_PREFIX, p.name))?;
    if p.key_id.is_some() && p.parameter_type != ParameterType::SecureString {
        return Err(Invalid(format!(
            "keyId is set but the type is {}; only a SecureString is encrypted",
            p.parameter_type.as_str()
        )));
    }
    match (&p.value, p.versions.is_empty()) {
        (Some(_), false) => {
            return Err(Invalid::new(
                "has both a shorthand value and versions; keep one",
            ));
        }
        (None, true) => return Err(Invalid::new("needs exactly one of value or versions")),
        (Some(_), true) => {}
        (None, false) => {
            if p.version.is_some() || !p.labels.is_empty() {
                return Err(Invalid::new(
                    "version and labels belong to the shorthand value; put them in versions",
                ));
            }
        }
    }
    let mut seen_versions = std::collections::BTreeSet::new();
    let mut seen_labels = std::collections::BTreeSet::new();
    for (n, labels, _) in p.versions() {
        if n == 0 || !seen_versions.insert(n) {
            return Err(Invalid(format!(
                "version {n} is 0 or appears twice; versions are 1, 2, 3…"
            )));
        }
        for l in labels {
            crate::spec::validate_version("ssm:x", None, Some(l))?;
            if !seen_labels.insert(l.as_str()) {
                return Err(Invalid(format!(
                    "label {l:?} is on two versions; a label marks one version"
                )));
            }
        }
    }
    Ok(())
}

fn check_secret(s: &FileSecret) -> Result<(), Invalid> {
    crate::spec::validate_secret_id(&s.name)?;
    let has = |v: &Option<SecretString>, b: &Option<SecretString>| v.is_some() ^ b.is_some();
    if s.versions.is_empty() {
        if !has(&s.value, &s.binary) {
            return Err(Invalid::new(
                "needs exactly one of value, binary or versions",
            ));
        }
        return Ok(());
    }
    if s.value.is_some() || s.binary.is_some() {
        return Err(Invalid::new(
            "has both a shorthand value and versions; keep one",
        ));
    }
    let mut current = 0;
    for v in &s.versions {
        if !has(&v.value, &v.binary) {
            return Err(Invalid(format!(
                "version {:?} needs exactly one of value or binary",
                v.id
            )));
        }
        current += v.stages.iter().filter(|st| *st == "AWSCURRENT").count();
    }
    if current != 1 {
        return Err(Invalid(format!(
            "exactly one version must carry AWSCURRENT (found {current})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn store(yaml: &str) -> (tempfile::NamedTempFile, Result<FileStore, StoreError>) {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(yaml.as_bytes()).expect("write");
        let s = FileStore::open(f.path());
        (f, s)
    }

    const DOC: &str = r#"
region: eu-west-1
account: "111122223333"
secrets:
  - name: /demo/db
    kmsKeyId: alias/demo
    tags: {kubernetes-namespace: demo}
    value: '{"password":"pw1"}'
  - name: /demo/tls
    versions:
      - {id: v2, stages: [AWSCURRENT], value: new}
      - {id: v1, stages: [AWSPREVIOUS], binary: "AAEC"}
  - name: /demo/gone
    scheduledForDeletion: true
    value: x
"#;

    #[test]
    fn lists_versions_and_stages_by_prefix_as_the_version_service_reads_them() {
        let (_f, s) = store(&format!(
            "{DOC}parameters:\n  - {{name: /demo/p, type: String, versions: [{{version: 1, value: a}}, {{version: 3, value: b}}]}}\n"
        ));
        let s = s.expect("valid store");
        let l = s
            .list_secret_versions(&["/demo/".to_string()])
            .expect("listed");
        assert!(l.complete);
        let names: Vec<&str> = l.secrets.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["/demo/db", "/demo/tls"],
            "scheduled for deletion: left out"
        );
        let tls = &l.secrets[1];
        assert!(tls.shared_ids);
        assert_eq!(tls.with_stage("AWSPREVIOUS"), Some("v1"));
        // A shorthand value's id is a per-process keyed hash: not comparable with an agent's.
        assert!(!l.secrets[0].shared_ids);
        assert!(
            s.list_secret_versions(&["/dem/".to_string()])
                .expect("listed")
                .secrets
                .is_empty()
        );
        let d = s.describe_secret_versions(&tls.arn).expect("described");
        assert_eq!(d, *tls);
        let p = s
            .parameter_versions(&["/demo/p".to_string(), "/demo/none".to_string()])
            .expect("described");
        assert_eq!(p.len(), 1);
        assert_eq!(p["/demo/p"].version, 3);
    }

    #[test]
    fn describes_like_secrets_manager() {
        let (_f, s) = store(DOC);
        let s = s.expect("valid store");
        let m = s.describe("/demo/db").expect("exists");
        assert!(
            m.arn
                .starts_with("arn:aws:secretsmanager:eu-west-1:111122223333:secret:/demo/db-"),
            "{}",
            m.arn
        );
        assert_eq!(m.kms_key_id.as_deref(), Some("alias/demo"));
        assert_eq!(m.tags["kubernetes-namespace"], "demo");
        assert_eq!(s.describe(&m.arn).expect("by arn").name, "/demo/db");
        assert!(
            s.describe("/demo/tls")
                .expect("exists")
                .kms_key_id
                .is_none()
        );
        assert!(s.describe("/demo/gone").expect("exists").deleted);
        assert!(matches!(
            s.describe("/demo/nope"),
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn fetches_versions_and_stages() {
        let (_f, s) = store(DOC);
        let s = s.expect("valid store");
        let reqs = vec![
            FetchRequest::current("/demo/tls"),
            FetchRequest {
                secret: "/demo/tls".into(),
                version_id: None,
                version_stage: Some("AWSPREVIOUS".into()),
            },
            FetchRequest {
                secret: "/demo/tls".into(),
                version_id: Some("v9".into()),
                version_stage: None,
            },
            FetchRequest::current("/demo/gone"),
            FetchRequest::current("/demo/db"),
        ];
        let got = s.fetch(&reqs);
        let current = got[0].as_ref().expect("current");
        assert_eq!(current.version_id, "v2");
        match &got[1].as_ref().expect("previous").value {
            SecretValue::Binary(b) => assert_eq!(b.expose_secret(), &[0u8, 1, 2]),
            other => panic!("expected binary, got {other:?}"),
        }
        assert!(matches!(got[2], Err(StoreError::VersionNotFound { .. })));
        assert!(matches!(got[3], Err(StoreError::Deleted { .. })));
        let db = got[4].as_ref().expect("db");
        assert_eq!(db.version_id.len(), 36);
        assert!(!db.version_id.contains("pw1"));
    }

    #[test]
    fn bad_files_are_refused_without_echoing_values() {
        for (doc, needle) in [
            (
                "secrets: [{name: /a, value: x, binary: eA==}]",
                "exactly one",
            ),
            ("secrets: [{name: /a}]", "exactly one"),
            (
                "secrets: [{name: /a, value: supersecret, colour: red}]",
                "unknown field",
            ),
            (
                "secrets: [{name: /a, versions: [{id: v1, value: supersecret}]}]",
                "AWSCURRENT",
            ),
            ("secrets: [{name: 'a b', value: supersecret}]", "contains"),
            ("- not a map", "not a kura local store"),
            (
                "secrets: [{name: /a, value: supersecret, scheduledForDeletion: supersecret}]",
                "invalid type",
            ),
        ] {
            let (_f, s) = store(doc);
            let e = s.expect_err(doc).to_string();
            assert!(e.contains(needle), "{doc}: {e}");
            assert!(!e.contains("supersecret"), "{e}");
        }
    }

    const PARAMS: &str = r#"
region: eu-west-1
account: "111122223333"
parameters:
  - name: /demo/db-host
    type: SecureString
    keyId: alias/demo
    tags: {kubernetes-namespace: demo}
    value: db.internal
  - name: /demo/flag
    type: String
    versions:
      - {version: 1, value: "off", labels: [previous]}
      - {version: 2, value: "on"}
  - name: /demo/managed
    type: SecureString
    value: m
"#;

    #[test]
    fn parameters_like_ssm() {
        let (_f, s) = store(PARAMS);
        let s = s.expect("valid store");
        let m = s.describe("ssm:/demo/db-host").expect("exists");
        assert_eq!(
            m.arn,
            "arn:aws:ssm:eu-west-1:111122223333:parameter/demo/db-host"
        );
        assert_eq!(m.name, "/demo/db-host");
        assert_eq!(m.parameter_type, Some(ParameterType::SecureString));
        assert_eq!(m.kms_key_id.as_deref(), Some("alias/demo"));
        assert_eq!(m.tags["kubernetes-namespace"], "demo");
        assert_eq!(s.describe(&m.arn).expect("by arn").name, "/demo/db-host");
        assert!(
            s.describe("ssm:/demo/managed")
                .expect("exists")
                .kms_key_id
                .is_none()
        );
        assert_eq!(
            s.describe("ssm:/demo/flag").expect("exists").parameter_type,
            Some(ParameterType::String)
        );
        // A secret of the same name is another thing.
        assert!(matches!(
            s.describe("/demo/db-host"),
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            s.describe("ssm:/demo/nope"),
            Err(StoreError::NotFound { .. })
        ));
        let req = |v: Option<&str>, l: Option<&str>| FetchRequest {
            secret: "ssm:/demo/flag".into(),
            version_id: v.map(Into::into),
            version_stage: l.map(Into::into),
        };
        let got = s.fetch(&[
            req(None, None),
            req(Some("1"), None),
            req(None, Some("previous")),
            req(Some("7"), None),
            req(None, Some("nope")),
            FetchRequest::current("ssm:/demo/db-host"),
        ]);
        let text = |r: &Result<Fetched, StoreError>| match &r.as_ref().expect("value").value {
            SecretValue::Text(t) => t.expose_secret().to_string(),
            SecretValue::Binary(_) => panic!("text"),
        };
        assert_eq!(text(&got[0]), "on");
        assert_eq!(got[0].as_ref().expect("latest").version_id, "2");
        assert_eq!(text(&got[1]), "off");
        assert_eq!(text(&got[2]), "off");
        assert!(matches!(got[3], Err(StoreError::VersionNotFound { .. })));
        assert!(matches!(got[4], Err(StoreError::VersionNotFound { .. })));
        assert_eq!(text(&got[5]), "db.internal");
        assert_eq!(got[5].as_ref().expect("shorthand").version_id, "1");
    }

    #[test]
    fn bad_parameters_are_refused_without_echoing_values() {
        for (doc, needle) in [
            (
                "parameters: [{name: /a, value: supersecret}]",
                "missing field `type`",
            ),
            (
                "parameters: [{name: /a, type: Secure, value: supersecret}]",
                "unknown variant",
            ),
            (
                "parameters: [{name: /a, type: String, keyId: k, value: supersecret}]",
                "only a SecureString",
            ),
            (
                "parameters: [{name: a/b, type: String, value: supersecret}]",
                "start with '/'",
            ),
            ("parameters: [{name: /a, type: String}]", "exactly one"),
            (
                "parameters: [{name: /a, type: String, versions: [{version: 1, value: supersecret}, {version: 1, value: x}]}]",
                "twice",
            ),
            (
                "parameters: [{name: /a, type: String, versions: [{version: 1, value: supersecret, labels: [aws-x]}]}]",
                "not a parameter label",
            ),
        ] {
            let (_f, s) = store(doc);
            let e = s.expect_err(doc).to_string();
            assert!(e.contains(needle), "{doc}: {e}");
            assert!(!e.contains("supersecret"), "{e}");
        }
    }

    #[test]
    fn edits_are_picked_up() {
        let (f, s) = store("secrets: [{name: /a, value: one}]");
        let s = s.expect("valid");
        let v1 = s
            .fetch(&[FetchRequest::current("/a")])
            .remove(0)
            .expect("a")
            .version_id;
        std::fs::write(f.path(), "secrets: [{name: /a, value: second}]").expect("rewrite");
        let v2 = s
            .fetch(&[FetchRequest::current("/a")])
            .remove(0)
            .expect("a")
            .version_id;
        assert_ne!(v1, v2);
    }
}
