//! The policy file: versioned YAML, unknown fields refused, every field defaulted to the
//! contract's built-in policy.

use std::path::Path;
use std::time::Duration;

use kura_agent::store::{ParameterType, SecretMeta};
use regex::Regex;
use serde::{Deserialize, Deserializer};

use super::Mode;
use super::glob;

pub const API_VERSION: &str = "kura.dev/v1alpha1";
pub const KIND: &str = "Policy";

/// Why a policy file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {path}: {message}")]
    Invalid { path: String, message: String },
}

/// What to do with a finding of a configurable rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Deny,
    Warn,
    Ignore,
}

/// Whether a store that cannot be asked blocks admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StoreErrors {
    #[default]
    FailClosed,
    FailOpen,
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    kura_agent::duration::parse(&s).map_err(serde::de::Error::custom)
}

fn de_regexes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Regex>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    v.iter()
        .map(|s| Regex::new(s).map_err(|e| serde::de::Error::custom(format!("regex {s:?}: {e}"))))
        .collect()
}

/// Extra namespaces' access to more secrets.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Grant {
    /// Namespace globs this grant applies to.
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default)]
    pub arns: Vec<String>,
}

/// Which secrets a namespace may reference (KURA002).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Scope {
    /// Name templates; `{namespace}` is replaced, `*` and `?` are globs.
    #[serde(default = "default_names")]
    pub names: Vec<String>,
    /// ARN templates, same syntax.
    #[serde(default = "default_arns")]
    pub arns: Vec<String>,
    /// A tag on the secret that must equal the namespace.
    #[serde(default)]
    pub namespace_tag: Option<String>,
    #[serde(default)]
    pub grants: Vec<Grant>,
}

fn default_names() -> Vec<String> {
    vec!["/{namespace}/*".into()]
}

fn default_arns() -> Vec<String> {
    vec![
        "arn:*:secretsmanager:*:*:secret:/{namespace}/*".into(),
        "arn:*:ssm:*:*:parameter/{namespace}/*".into(),
    ]
}

impl Default for Scope {
    fn default() -> Self {
        Scope {
            names: default_names(),
            arns: default_arns(),
            namespace_tag: None,
            grants: Vec::new(),
        }
    }
}

impl Scope {
    /// The name templates (or ARN templates when `arn`) that apply to `namespace`, its own and
    /// those granted to it, `{namespace}` replaced.
    pub(crate) fn patterns<'a>(
        &'a self,
        namespace: &'a str,
        arn: bool,
    ) -> impl Iterator<Item = String> + 'a {
        let own = if arn { &self.arns } else { &self.names };
        let granted = self
            .grants
            .iter()
            .filter(move |g| g.namespaces.iter().any(|p| glob::matches(p, namespace)))
            .flat_map(move |g| if arn { g.arns.iter() } else { g.names.iter() });
        own.iter()
            .chain(granted)
            .map(move |p| p.replace("{namespace}", namespace))
    }

    /// Names are matched without `ssm:`: a parameter `ssm:/prod/x` and a secret `/prod/x` fall
    /// under the same name templates.
    fn allows(&self, id: &str, namespace: &str) -> bool {
        let id = id.strip_prefix(kura_agent::spec::SSM_PREFIX).unwrap_or(id);
        let is_arn = id.starts_with("arn:");
        self.patterns(namespace, is_arn)
            .any(|p| glob::matches(&p, id))
    }

    /// The id the pod wrote.
    pub fn check_id(&self, id: &str, namespace: &str) -> Result<(), ScopeError> {
        if namespace.is_empty() {
            return Err(ScopeError::NoNamespace);
        }
        if self.allows(id, namespace) {
            return Ok(());
        }
        Err(ScopeError::NotInScope {
            namespace: namespace.to_string(),
            allowed: self.patterns(namespace, id.starts_with("arn:")).collect(),
        })
    }

    /// What the store says the id resolves to: name, ARN and, if configured, the namespace tag.
    pub fn check_resolved(&self, meta: &SecretMeta, namespace: &str) -> Result<(), ScopeError> {
        let ns = || namespace.to_string();
        if !self.allows(&meta.name, namespace) {
            return Err(ScopeError::NameOutside {
                name: meta.name.clone(),
                namespace: ns(),
            });
        }
        if !meta.arn.is_empty() && !self.allows(&meta.arn, namespace) {
            return Err(ScopeError::ArnOutside { namespace: ns() });
        }
        // `DescribeParameters` (all the webhook may call) does not return tags: parameters are
        // scoped by name and ARN only, with every store alike.
        if let Some(tag) = self
            .namespace_tag
            .as_ref()
            .filter(|_| meta.parameter_type.is_none())
        {
            match meta.tags.get(tag) {
                Some(v) if v == namespace => {}
                Some(v) => {
                    return Err(ScopeError::TagMismatch {
                        tag: tag.clone(),
                        value: v.clone(),
                        namespace: ns(),
                    });
                }
                None => {
                    return Err(ScopeError::TagMissing {
                        tag: tag.clone(),
                        namespace: ns(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Why a secret is outside a namespace's scope (KURA002).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("the request has no namespace")]
    NoNamespace,
    #[error("not in namespace {namespace}'s scope (allowed: {}); ask the platform team for a grant", allowed.join(", "))]
    NotInScope {
        namespace: String,
        allowed: Vec<String>,
    },
    #[error("its name {name:?} is outside namespace {namespace}'s scope")]
    NameOutside { name: String, namespace: String },
    #[error("its ARN is outside namespace {namespace}'s scope")]
    ArnOutside { namespace: String },
    #[error("its tag {tag}={value:?} does not name namespace {namespace}")]
    TagMismatch {
        tag: String,
        value: String,
        namespace: String,
    },
    #[error("it has no tag {tag}={namespace}; tag the secret with its namespace")]
    TagMissing { tag: String, namespace: String },
}

/// Why a secret's encryption is not allowed (KURA003).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KmsError {
    #[error(
        "encrypted with the AWS managed key aws/secretsmanager; re-encrypt it with a customer-managed KMS key \
         (aws secretsmanager update-secret --kms-key-id ...)"
    )]
    AwsManaged,
    #[error("encrypted with KMS key {key}, which is not in the policy's allowed keys")]
    KeyNotAllowed { key: String },
    #[error(
        "a SecureString encrypted with the AWS managed key alias/aws/ssm; re-encrypt it with a \
         customer-managed KMS key (aws ssm put-parameter --overwrite --type SecureString --key-id ...)"
    )]
    ParameterAwsManaged,
    #[error(
        "a {kind} parameter, stored unencrypted; make it a SecureString with a customer-managed KMS key, \
         or set kms.allowPlainParameters: true in the policy"
    )]
    PlainParameter { kind: &'static str },
}

/// Encryption requirements (KURA003).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KmsPolicy {
    #[serde(default = "yes")]
    pub require_customer_managed: bool,
    /// Key ids, key ARNs, alias names (`alias/x`) or alias ARNs; empty = any customer-managed key.
    #[serde(default)]
    pub allowed_keys: Vec<String>,
    /// Admit `String` and `StringList` parameters, which are not encrypted.
    #[serde(default)]
    pub allow_plain_parameters: bool,
}

fn yes() -> bool {
    true
}

impl Default for KmsPolicy {
    fn default() -> Self {
        KmsPolicy {
            require_customer_managed: true,
            allowed_keys: Vec::new(),
            allow_plain_parameters: false,
        }
    }
}

/// The last path element of a key reference: `key/<id>` → `<id>`, `alias/<name>` → `alias/<name>`.
fn key_ref(k: &str) -> String {
    let tail = k.rsplit(':').next().unwrap_or(k);
    match tail.strip_prefix("key/") {
        Some(id) => id.to_string(),
        None => tail.to_string(),
    }
}

impl KmsPolicy {
    /// A secret's key, or a parameter's type and key.
    pub fn check(&self, meta: &SecretMeta) -> Result<(), KmsError> {
        let key = meta.kms_key_id.as_deref().filter(|k| !k.is_empty());
        let managed_alias = match meta.parameter_type {
            None => "alias/aws/secretsmanager",
            Some(ParameterType::SecureString) => "alias/aws/ssm",
            Some(_) if self.allow_plain_parameters => return Ok(()),
            Some(plain) => {
                return Err(KmsError::PlainParameter {
                    kind: plain.as_str(),
                });
            }
        };
        let aws_managed = key.is_none_or(|k| key_ref(k) == managed_alias);
        if self.require_customer_managed && aws_managed {
            return Err(if meta.parameter_type.is_some() {
                KmsError::ParameterAwsManaged
            } else {
                KmsError::AwsManaged
            });
        }
        if let (false, Some(k)) = (self.allowed_keys.is_empty(), key) {
            let have = key_ref(k);
            if !self
                .allowed_keys
                .iter()
                .any(|a| a == k || key_ref(a) == have)
            {
                return Err(KmsError::KeyNotAllowed { key: k.to_string() });
            }
        }
        Ok(())
    }
}

/// Plaintext detection (KURA005, KURA006).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlaintextPolicy {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// More names to treat as secret-like, as regexes.
    #[serde(default, deserialize_with = "de_regexes")]
    pub extra_secret_like_names: Vec<Regex>,
    /// Names never treated as secret-like, as regexes.
    #[serde(default, deserialize_with = "de_regexes")]
    pub ignore_names: Vec<Regex>,
    /// `Password=...;` inside connection strings.
    #[serde(default = "warn")]
    pub connection_strings: Action,
    /// KURA010: `kind: Secret` manifests with values (`kura lint`).
    #[serde(default = "deny")]
    pub secret_manifests: Action,
}

fn deny() -> Action {
    Action::Deny
}

fn warn() -> Action {
    Action::Warn
}

impl Default for PlaintextPolicy {
    fn default() -> Self {
        PlaintextPolicy {
            enabled: true,
            extra_secret_like_names: Vec::new(),
            ignore_names: Vec::new(),
            connection_strings: Action::Warn,
            secret_manifests: Action::Deny,
        }
    }
}

/// Metadata cache settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CacheSettings {
    #[serde(default = "ttl", deserialize_with = "de_duration")]
    pub ttl: Duration,
    #[serde(default = "negative_ttl", deserialize_with = "de_duration")]
    pub negative_ttl: Duration,
    #[serde(default = "max_entries")]
    pub max_entries: usize,
}

fn ttl() -> Duration {
    Duration::from_secs(60)
}

fn negative_ttl() -> Duration {
    Duration::from_secs(10)
}

fn max_entries() -> usize {
    10_000
}

fn store_timeout() -> Duration {
    super::DEFAULT_STORE_TIMEOUT
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            ttl: ttl(),
            negative_ttl: negative_ttl(),
            max_entries: max_entries(),
        }
    }
}

/// The whole policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub scope: Scope,
    #[serde(default)]
    pub kms: KmsPolicy,
    #[serde(default)]
    pub plaintext: PlaintextPolicy,
    /// KURA006.
    #[serde(default = "warn")]
    pub config_map_secret_like: Action,
    /// KURA007.
    #[serde(default = "warn")]
    pub native_secrets: Action,
    /// KURA009.
    #[serde(default)]
    pub store_errors: StoreErrors,
    /// Deadline for all metadata lookups of one admission.
    #[serde(default = "store_timeout", deserialize_with = "de_duration")]
    pub store_timeout: Duration,
    #[serde(default)]
    pub cache: CacheSettings,
}

impl Default for Policy {
    /// The contract's built-in policy.
    fn default() -> Self {
        Policy {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            mode: Mode::Enforce,
            scope: Scope::default(),
            kms: KmsPolicy::default(),
            plaintext: PlaintextPolicy::default(),
            config_map_secret_like: Action::Warn,
            native_secrets: Action::Warn,
            store_errors: StoreErrors::FailClosed,
            store_timeout: store_timeout(),
            cache: CacheSettings::default(),
        }
    }
}

impl Policy {
    pub fn from_yaml(text: &str, origin: &str) -> Result<Policy, PolicyError> {
        let err = |message: String| PolicyError::Invalid {
            path: origin.to_string(),
            message,
        };
        let p: Policy = serde_yaml_ng::from_str(text).map_err(|e| err(e.to_string()))?;
        if p.api_version != API_VERSION || p.kind != KIND {
            return Err(err(format!(
                "apiVersion/kind are {}/{}; this kura reads {API_VERSION}/{KIND}",
                p.api_version, p.kind
            )));
        }
        if p.scope.names.is_empty() && p.scope.arns.is_empty() {
            return Err(err(
                "scope has neither names nor arns: no secret could ever be used".into(),
            ));
        }
        if p.store_timeout.is_zero() || p.store_timeout > Duration::from_secs(4) {
            return Err(err(
                "storeTimeout must be above 0 and at most 4s, under the webhook's 5s timeout"
                    .into(),
            ));
        }
        Ok(p)
    }

    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError::Invalid {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Policy::from_yaml(&text, &path.display().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn meta(name: &str, arn: &str, key: Option<&str>, tags: &[(&str, &str)]) -> SecretMeta {
        SecretMeta {
            name: name.into(),
            arn: arn.into(),
            kms_key_id: key.map(Into::into),
            deleted: false,
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            parameter_type: None,
        }
    }

    #[test]
    fn policy_files() {
        let p = Policy::from_yaml(
            "apiVersion: kura.dev/v1alpha1\nkind: Policy\nmode: warn\ncache: {ttl: 30s}\nstoreTimeout: 1500ms\n",
            "test",
        )
        .expect("valid");
        assert_eq!(p.mode, Mode::Warn);
        assert_eq!(p.cache.ttl, Duration::from_secs(30));
        assert_eq!(p.store_timeout, Duration::from_millis(1500));
        assert_eq!(p.scope, Scope::default());
        for (bad, needle) in [
            (
                "apiVersion: kura.dev/v1alpha1\nkind: Policy\ncolour: red\n",
                "unknown field",
            ),
            ("apiVersion: kura.dev/v2\nkind: Policy\n", "this kura reads"),
            (
                "apiVersion: kura.dev/v1alpha1\nkind: Policy\nmode: strict\n",
                "unknown variant",
            ),
            (
                "apiVersion: kura.dev/v1alpha1\nkind: Policy\ncache: {ttl: soon}\n",
                "not a duration",
            ),
            (
                "apiVersion: kura.dev/v1alpha1\nkind: Policy\nstoreTimeout: 10s\n",
                "storeTimeout",
            ),
            (
                "apiVersion: kura.dev/v1alpha1\nkind: Policy\nplaintext: {ignoreNames: ['(']}\n",
                "regex",
            ),
            ("kind: Policy\n", "apiVersion"),
        ] {
            let e = Policy::from_yaml(bad, "p.yaml").expect_err(bad).to_string();
            assert!(e.contains(needle) && e.contains("p.yaml"), "{bad}: {e}");
        }
    }

    #[test]
    fn scope_names_and_arns() {
        let s = Scope::default();
        s.check_id("/prod/db", "prod").expect("own name");
        s.check_id(
            "arn:aws:secretsmanager:eu-west-1:111122223333:secret:/prod/db-AbCdEf",
            "prod",
        )
        .expect("own arn");
        s.check_id(
            "arn:aws-cn:secretsmanager:cn-north-1:111122223333:secret:/prod/db",
            "prod",
        )
        .expect("partial arn");
        for bad in [
            "/production/db",
            "/dev/db",
            "/PROD/db",
            "prod/db",
            "arn:aws:secretsmanager:eu-west-1:111122223333:secret:/dev/db-AbCdEf",
            "arn:aws:secretsmanager:eu-west-1:111122223333:secret:/production/db",
        ] {
            let e = s.check_id(bad, "prod").expect_err(bad);
            assert!(matches!(e, ScopeError::NotInScope { .. }), "{e:?}");
            assert!(e.to_string().contains("prod"), "{e}");
        }
    }

    #[test]
    fn grants_extend_scope() {
        let s = Scope {
            grants: vec![Grant {
                namespaces: vec!["pay*".into()],
                names: vec!["/shared/payments/*".into()],
                arns: vec![],
            }],
            ..Scope::default()
        };
        s.check_id("/shared/payments/key", "payments")
            .expect("granted");
        assert!(s.check_id("/shared/payments/key", "web").is_err());
        assert_eq!(
            s.check_id("/shared/payments/key", ""),
            Err(ScopeError::NoNamespace)
        );
    }

    #[test]
    fn resolved_identity_and_tags() {
        let s = Scope {
            namespace_tag: Some("kubernetes-namespace".into()),
            ..Scope::default()
        };
        let arn = "arn:aws:secretsmanager:us-east-1:111122223333:secret:/prod/db-AbCdEf";
        s.check_resolved(
            &meta("/prod/db", arn, None, &[("kubernetes-namespace", "prod")]),
            "prod",
        )
        .expect("ok");
        let e = s
            .check_resolved(
                &meta("/prod/db", arn, None, &[("kubernetes-namespace", "dev")]),
                "prod",
            )
            .unwrap_err();
        assert!(matches!(e, ScopeError::TagMismatch { .. }), "{e:?}");
        assert!(e.to_string().contains("does not name"), "{e}");
        let e = s
            .check_resolved(&meta("/prod/db", arn, None, &[]), "prod")
            .unwrap_err();
        assert!(matches!(e, ScopeError::TagMissing { .. }), "{e:?}");
        assert!(e.to_string().contains("no tag"), "{e}");
        let other = "arn:aws:secretsmanager:us-east-1:111122223333:secret:/dev/db-AbCdEf";
        assert!(
            s.check_resolved(
                &meta("/dev/db", other, None, &[("kubernetes-namespace", "prod")]),
                "prod"
            )
            .is_err()
        );
    }

    fn param(kind: ParameterType, key: Option<&str>) -> SecretMeta {
        SecretMeta {
            parameter_type: Some(kind),
            ..meta(
                "/prod/db-host",
                "arn:aws:ssm:us-east-1:111122223333:parameter/prod/db-host",
                key,
                &[],
            )
        }
    }

    #[test]
    fn parameter_scope_and_kms() {
        let s = Scope::default();
        s.check_id("ssm:/prod/db-host", "prod").expect("own name");
        s.check_id(
            "arn:aws:ssm:us-east-1:111122223333:parameter/prod/db-host",
            "prod",
        )
        .expect("own arn");
        for bad in [
            "ssm:/dev/db-host",
            "ssm:/production/x",
            "arn:aws:ssm:us-east-1:111122223333:parameter/dev/db-host",
        ] {
            let e = s.check_id(bad, "prod").expect_err(bad);
            assert!(matches!(e, ScopeError::NotInScope { .. }), "{e:?}");
        }
        s.check_resolved(&param(ParameterType::SecureString, Some("k")), "prod")
            .expect("in scope");
        assert!(matches!(
            s.check_resolved(&param(ParameterType::SecureString, Some("k")), "dev"),
            Err(ScopeError::NameOutside { .. })
        ));

        let k = KmsPolicy::default();
        k.check(&param(ParameterType::SecureString, Some("alias/prod")))
            .expect("a customer-managed key");
        for key in [
            None,
            Some("alias/aws/ssm"),
            Some("arn:aws:kms:us-east-1:111122223333:alias/aws/ssm"),
        ] {
            let e = k
                .check(&param(ParameterType::SecureString, key))
                .unwrap_err();
            assert_eq!(e, KmsError::ParameterAwsManaged);
            assert!(e.to_string().contains("alias/aws/ssm"), "{e}");
        }
        for kind in [ParameterType::String, ParameterType::StringList] {
            let e = k.check(&param(kind, None)).unwrap_err();
            assert!(
                e.to_string().contains(kind.as_str())
                    && e.to_string().contains("kms.allowPlainParameters"),
                "{e}"
            );
        }
        let plain_ok = KmsPolicy {
            allow_plain_parameters: true,
            ..KmsPolicy::default()
        };
        plain_ok
            .check(&param(ParameterType::String, None))
            .expect("allowed");
        plain_ok
            .check(&param(ParameterType::SecureString, None))
            .expect_err("a SecureString still needs a CMK");
        let allowed = KmsPolicy {
            allowed_keys: vec!["alias/prod".into()],
            ..KmsPolicy::default()
        };
        assert!(matches!(
            allowed.check(&param(ParameterType::SecureString, Some("alias/other"))),
            Err(KmsError::KeyNotAllowed { .. })
        ));
        let p = Policy::from_yaml(
            "apiVersion: kura.dev/v1alpha1\nkind: Policy\nkms: {allowPlainParameters: true}\n",
            "t",
        )
        .expect("valid");
        assert!(p.kms.allow_plain_parameters);
    }

    #[test]
    fn kms_rules() {
        let arn = "arn:aws:secretsmanager:us-east-1:111122223333:secret:/prod/db-AbCdEf";
        let k = KmsPolicy::default();
        assert!(
            k.check(&meta("/p", arn, None, &[]))
                .unwrap_err()
                .to_string()
                .contains("AWS managed")
        );
        assert_eq!(
            k.check(&meta("/p", arn, Some("alias/aws/secretsmanager"), &[])),
            Err(KmsError::AwsManaged)
        );
        assert!(
            k.check(&meta(
                "/p",
                arn,
                Some("arn:aws:kms:us-east-1:111122223333:alias/aws/secretsmanager"),
                &[]
            ))
            .is_err()
        );
        k.check(&meta(
            "/p",
            arn,
            Some("1234abcd-12ab-34cd-56ef-1234567890ab"),
            &[],
        ))
        .expect("cmk");
        let allowed = KmsPolicy {
            require_customer_managed: true,
            allow_plain_parameters: false,
            allowed_keys: vec![
                "1234abcd-12ab-34cd-56ef-1234567890ab".into(),
                "alias/prod".into(),
            ],
        };
        allowed
            .check(&meta(
                "/p",
                arn,
                Some("arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"),
                &[],
            ))
            .expect("key arn of an allowed id");
        allowed
            .check(&meta(
                "/p",
                arn,
                Some("arn:aws:kms:us-east-1:111122223333:alias/prod"),
                &[],
            ))
            .expect("alias arn");
        assert!(
            allowed
                .check(&meta("/p", arn, Some("alias/other"), &[]))
                .unwrap_err()
                .to_string()
                .contains("not in the policy")
        );
        let lax = KmsPolicy {
            require_customer_managed: false,
            allowed_keys: vec![],
            allow_plain_parameters: false,
        };
        lax.check(&meta("/p", arn, None, &[]))
            .expect("not required");
    }
}
