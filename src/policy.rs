//! Admission policy: the policy file, every rule (KURA001–KURA009), modes, and the decision
//! they build. [`PolicyEngine::judge`] runs them all over a pod; the catalogue of ids and
//! summaries is [`Rule`].
//!
//! Rules that need only the pod and its annotations (KURA001, KURA005–KURA008) run without I/O.
//! Rules about the secrets themselves (KURA002–KURA004) ask the store for metadata through
//! [`cache::MetaCache`]; a store that fails or is slow yields KURA009 within the policy's
//! deadline. Rules know nothing of HTTP: admission decodes and answers.

pub mod cache;
pub mod detect;
mod file;
mod glob;
mod rule;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use k8s_openapi::api::core::v1::{Container, Pod};
use kura_agent::annotations::{AnnotationError, PodSecrets};
use kura_agent::store::{Store, StoreError};

pub use file::{
    Action, KmsError, KmsPolicy, PlaintextPolicy, Policy, PolicyError, Scope, ScopeError,
    StoreErrors,
};
pub use rule::Rule;

use crate::inject;

/// PSA-style modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Warn,
    Audit,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Warn => "warn",
            Mode::Audit => "audit",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "enforce" => Some(Mode::Enforce),
            "warn" => Some(Mode::Warn),
            "audit" => Some(Mode::Audit),
            _ => None,
        }
    }
}

/// How serious a finding is before the namespace's mode applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Denied in `enforce`, a warning in `warn`, recorded in `audit`.
    Deny,
    /// A warning in `enforce` and `warn`, recorded in `audit`.
    Warn,
    /// Denied whatever the mode: there is nothing correct to admit (malformed annotations).
    AlwaysDeny,
}

/// One rule hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub rule: Rule,
    pub message: String,
    pub severity: Severity,
}

impl Finding {
    pub fn new(rule: Rule, message: String) -> Self {
        Finding {
            rule,
            message,
            severity: Severity::Deny,
        }
    }
}

/// Findings plus the mode they are judged in.
#[derive(Debug, Clone, Default)]
pub struct Decision {
    pub mode: Mode,
    pub findings: Vec<Finding>,
    /// Secrets the pod references (for audit annotations).
    pub secrets: Vec<String>,
}

/// Longest warning kubectl shows without truncation.
pub const MAX_WARNING: usize = 120;

impl Decision {
    pub fn new(mode: Mode) -> Self {
        Decision {
            mode,
            ..Default::default()
        }
    }

    pub fn allow() -> Self {
        Decision::default()
    }

    pub fn push(&mut self, f: Finding) {
        self.findings.push(f);
    }

    pub fn push_always_deny(&mut self, mut f: Finding) {
        f.severity = Severity::AlwaysDeny;
        self.findings.push(f);
    }

    fn is_denying(&self, f: &Finding) -> bool {
        match f.severity {
            Severity::AlwaysDeny => true,
            Severity::Deny => self.mode == Mode::Enforce,
            Severity::Warn => false,
        }
    }

    pub fn denies(&self) -> bool {
        self.findings.iter().any(|f| self.is_denying(f))
    }

    /// The denial message: the first [`MAX_SHOWN`] denying findings, each with its rule id and
    /// at most [`MAX_FINDING`] characters, then how many more there are. kube-apiserver shows
    /// it to a person, and its size must not follow the size of what the caller sent.
    pub fn message(&self) -> String {
        let denying: Vec<&Finding> = self
            .findings
            .iter()
            .filter(|f| self.is_denying(f))
            .collect();
        let mut shown: Vec<String> = denying
            .iter()
            .take(MAX_SHOWN)
            .map(|f| truncate_chars(&format!("[{}] {}", f.rule.id(), f.message), MAX_FINDING))
            .collect();
        if denying.len() > MAX_SHOWN {
            shown.push(format!("and {} more", denying.len() - MAX_SHOWN));
        }
        shown.join("; ")
    }

    /// kubectl warnings for findings that do not deny (none in `audit` mode): the first
    /// [`MAX_SHOWN`], then one that counts the rest.
    pub fn warnings(&self) -> Vec<String> {
        if self.mode == Mode::Audit {
            return Vec::new();
        }
        let warning: Vec<&Finding> = self
            .findings
            .iter()
            .filter(|f| !self.is_denying(f))
            .collect();
        let mut shown: Vec<String> = warning
            .iter()
            .take(MAX_SHOWN)
            .map(|f| {
                let w = format!("{}: {}", f.rule.id(), f.message);
                truncate_chars(&w, MAX_WARNING)
            })
            .collect();
        if warning.len() > MAX_SHOWN {
            shown.push(format!("and {} more findings", warning.len() - MAX_SHOWN));
        }
        shown
    }
}

/// Findings named in a denial or in the warnings; the rest are counted.
pub const MAX_SHOWN: usize = 5;
/// Longest finding in a denial, in characters (its rule id included).
pub const MAX_FINDING: usize = 400;

fn truncate_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// Namespace → mode from the `kura.dev/mode` label, when a cluster is there to ask.
pub trait NamespaceModes: Send + Sync + std::fmt::Debug {
    /// `None`: the namespace has no valid label (the policy default applies).
    fn mode(&self, namespace: &str) -> Option<Mode>;
}

/// The policy, its store and caches: what admission asks.
#[derive(Debug)]
pub struct PolicyEngine {
    policy: ArcSwap<Policy>,
    cache: Option<cache::MetaCache>,
    namespaces: Option<Arc<dyn NamespaceModes>>,
}

impl PolicyEngine {
    /// `store`: where metadata comes from; `None` (e.g. `kura lint` offline) reports the store
    /// rules as not verified.
    pub fn new(policy: Policy, store: Option<Store>) -> Self {
        let cache = store.map(|s| cache::MetaCache::new(s, &policy.cache));
        PolicyEngine {
            policy: ArcSwap::from_pointee(policy),
            cache,
            namespaces: None,
        }
    }

    pub fn with_namespaces(mut self, ns: Arc<dyn NamespaceModes>) -> Self {
        self.namespaces = Some(ns);
        self
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Swaps in a new policy (hot reload). Cache TTLs apply to new entries.
    pub fn replace(&self, policy: Policy) {
        if let Some(c) = &self.cache {
            c.set_ttls(&policy.cache);
        }
        self.policy.store(Arc::new(policy));
    }

    pub fn has_store(&self) -> bool {
        self.cache.is_some()
    }

    pub fn mode_for(&self, namespace: &str) -> Mode {
        self.namespaces
            .as_ref()
            .and_then(|n| n.mode(namespace))
            .unwrap_or_else(|| self.policy.load().mode)
    }

    /// Runs every rule over a pod (or a workload's pod template) in its namespace's mode.
    /// `declared`: the pod's parsed `kura.dev/` annotations (`None`: it did not opt in), or why
    /// they do not parse.
    pub async fn judge(
        &self,
        pod: &Pod,
        declared: Result<Option<&PodSecrets>, &[AnnotationError]>,
        namespace: &str,
        stage: Stage,
    ) -> Decision {
        let mut decision = Decision::new(self.mode_for(namespace));
        let secrets = match declared {
            Ok(s) => s,
            Err(errors) => {
                check_annotations(errors, &mut decision);
                None
            }
        };
        self.check_pod(pod, secrets, namespace, &mut decision).await;
        if let Some(s) = secrets {
            check_agent(pod, stage, &mut decision);
            decision.secrets = s.secrets().into_iter().map(str::to_string).collect();
        }
        decision
    }

    /// The rules over the pod's spec and the secrets it declares (KURA002–KURA007, KURA009).
    async fn check_pod(
        &self,
        pod: &Pod,
        secrets: Option<&PodSecrets>,
        namespace: &str,
        decision: &mut Decision,
    ) {
        let policy = self.policy.load_full();
        check_spec(&policy, pod, decision);
        if let Some(s) = secrets {
            self.check_secrets(&policy, s, namespace, decision).await;
        }
    }

    async fn check_secrets(
        &self,
        policy: &Policy,
        secrets: &PodSecrets,
        namespace: &str,
        decision: &mut Decision,
    ) {
        let ids = secrets.secrets();
        // The string the pod wrote must be in scope; so must what the store says it resolves to.
        let mut in_scope = Vec::new();
        for id in &ids {
            match policy.scope.check_id(id, namespace) {
                Ok(()) => in_scope.push(*id),
                Err(why) => {
                    decision.push(Finding::new(Rule::Kura002, format!("secret {id:?}: {why}")))
                }
            }
        }
        let Some(cache) = &self.cache else { return };
        let deadline = policy.store_timeout;
        // Warm answers are taken as they are; only misses are asked, concurrently and bounded.
        let mut lookups = Vec::with_capacity(in_scope.len());
        let mut misses = Vec::new();
        for id in &in_scope {
            match cache.cached(id) {
                Some(r) => lookups.push((*id, Ok(r))),
                None => misses.push(*id),
            }
        }
        if !misses.is_empty() {
            lookups.extend(
                futures_util::future::join_all(misses.iter().map(|id| async move {
                    let r = tokio::time::timeout(deadline, cache.describe(id)).await;
                    (*id, r)
                }))
                .await,
            );
            // Findings in declaration order, whichever answers were cached.
            lookups.sort_by_key(|(id, _)| in_scope.iter().position(|x| x == id));
        }
        for (id, result) in lookups {
            let meta = match result {
                Err(_) => {
                    self.store_failure(
                        policy,
                        decision,
                        id,
                        &format!("no answer within {}ms", deadline.as_millis()),
                    );
                    continue;
                }
                Ok(Err(StoreError::NotFound { .. })) => {
                    decision.push(Finding::new(
                        Rule::Kura004,
                        format!("secret {id:?} does not exist in Secrets Manager (or kura may not describe it); create it first"),
                    ));
                    continue;
                }
                Ok(Err(e))
                    if e.is_store_failure() || matches!(e, StoreError::AccessDenied { .. }) =>
                {
                    self.store_failure(policy, decision, id, &e.to_string());
                    continue;
                }
                Ok(Err(e)) => {
                    self.store_failure(policy, decision, id, &e.to_string());
                    continue;
                }
                Ok(Ok(m)) => m,
            };
            if meta.deleted {
                decision.push(Finding::new(
                    Rule::Kura004,
                    format!("secret {id:?} is scheduled for deletion; restore it or point the pod at its replacement"),
                ));
            }
            if let Err(why) = policy.scope.check_resolved(&meta, namespace) {
                decision.push(Finding::new(
                    Rule::Kura002,
                    format!("secret {id:?} resolves to {}: {why}", meta.arn),
                ));
            }
            if let Err(why) = policy.kms.check(&meta) {
                decision.push(Finding::new(Rule::Kura003, format!("secret {id:?}: {why}")));
            }
        }
    }

    fn store_failure(&self, policy: &Policy, decision: &mut Decision, id: &str, why: &str) {
        let mut f = Finding::new(
            Rule::Kura009,
            format!(
                "secret {id:?} could not be checked: {why}; retry, or see the runbook for store failures"
            ),
        );
        if policy.store_errors == StoreErrors::FailOpen {
            f.severity = Severity::Warn;
        }
        decision.push(f);
    }
}

/// How far admission has gone with the pod that is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// As submitted, mutation still to come (or a workload's pod template, which never carries
    /// the agent).
    Submitted,
    /// A pod's final spec, after every mutating webhook (`/validate`).
    Final,
}

/// KURA001: annotations that do not parse always deny, since there is nothing correct to inject.
fn check_annotations(errors: &[AnnotationError], decision: &mut Decision) {
    for e in errors {
        decision.push_always_deny(Finding::new(Rule::Kura001, e.to_string()));
    }
}

/// KURA001: a declaration that cannot be injected into this pod (reserved names, containers
/// it does not have, users that conflict), as planning found it; always denies.
pub fn check_plan(problems: &[inject::Problem], decision: &mut Decision) {
    for p in problems {
        decision.push_always_deny(Finding::new(
            Rule::Kura001,
            format!("{}: {}", p.field, p.message),
        ));
    }
}

/// KURA008: an opted-in pod whose final spec lacks the agent.
fn check_agent(pod: &Pod, stage: Stage, decision: &mut Decision) {
    if stage == Stage::Final && !inject::has_agent(pod) {
        decision.push(Finding::new(
            Rule::Kura008,
            "the pod opts in with kura.dev/inject but its final spec has no kura-agent: the mutating webhook \
             was skipped or another mutator removed the agent; recreate the pod, and check the \
             MutatingWebhookConfiguration"
                .into(),
        ));
    }
}

/// Rules that need only the pod spec: KURA005, KURA006, KURA007.
fn check_spec(policy: &Policy, pod: &Pod, decision: &mut Decision) {
    let Some(spec) = &pod.spec else { return };
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| (c, "initContainer"));
    let eph = spec.ephemeral_containers.iter().flatten().map(|e| {
        // Ephemeral containers share the fields kura looks at.
        (e, "ephemeralContainer")
    });
    let mut containers: Vec<(&Container, &str)> =
        spec.containers.iter().map(|c| (c, "container")).collect();
    containers.extend(init);
    for (c, what) in containers {
        check_container(
            policy,
            &c.name,
            what,
            c.env.as_deref(),
            c.env_from.as_deref(),
            decision,
        );
    }
    for (e, what) in eph {
        check_container(
            policy,
            &e.name,
            what,
            e.env.as_deref(),
            e.env_from.as_deref(),
            decision,
        );
    }
    if policy.native_secrets != Action::Ignore {
        for v in spec.volumes.iter().flatten() {
            if let Some(s) = &v.secret {
                let name = s.secret_name.as_deref().unwrap_or("");
                push_action(
                    decision,
                    policy.native_secrets,
                    Rule::Kura007,
                    format!(
                        "volume {} mounts native Secret {name:?}; declare it with kura.dev/secret.<file> instead",
                        v.name
                    ),
                );
            }
            if let Some(p) = &v.projected {
                for src in p.sources.iter().flatten() {
                    if let Some(s) = &src.secret {
                        push_action(
                            decision,
                            policy.native_secrets,
                            Rule::Kura007,
                            format!(
                                "projected volume {} includes native Secret {:?}; declare it with kura.dev/secret.<file> instead",
                                v.name, s.name
                            ),
                        );
                    }
                }
            }
        }
    }
}

fn push_action(decision: &mut Decision, action: Action, rule: Rule, message: String) {
    let severity = match action {
        Action::Deny => Severity::Deny,
        Action::Warn => Severity::Warn,
        Action::Ignore => return,
    };
    decision.push(Finding {
        rule,
        message,
        severity,
    });
}

fn check_container(
    policy: &Policy,
    name: &str,
    what: &str,
    env: Option<&[k8s_openapi::api::core::v1::EnvVar]>,
    env_from: Option<&[k8s_openapi::api::core::v1::EnvFromSource]>,
    decision: &mut Decision,
) {
    for e in env.into_iter().flatten() {
        if let Some(value) = &e.value
            && policy.plaintext.enabled
            && let Some(why) = policy.plaintext.detect(&e.name, value)
        {
            push_action(
                decision,
                why.action,
                Rule::Kura005,
                format!(
                    "{what} {name} env {}: {}; store it in Secrets Manager and use kura.dev/secret.<file>",
                    e.name, why.reason
                ),
            );
        }
        let Some(from) = &e.value_from else { continue };
        if let Some(cm) = &from.config_map_key_ref
            && policy.plaintext.is_secret_like(&e.name)
        {
            push_action(
                decision,
                policy.config_map_secret_like,
                Rule::Kura006,
                format!(
                    "{what} {name} env {} reads a secret-like value from ConfigMap {:?} key {:?}; ConfigMaps are not encrypted secrets",
                    e.name, cm.name, cm.key
                ),
            );
        }
        if let Some(s) = &from.secret_key_ref {
            push_action(
                decision,
                policy.native_secrets,
                Rule::Kura007,
                format!(
                    "{what} {name} env {} reads native Secret {:?}; use kura.dev/secret.<file> instead",
                    e.name, s.name
                ),
            );
        }
    }
    for f in env_from.into_iter().flatten() {
        if let Some(s) = &f.secret_ref {
            push_action(
                decision,
                policy.native_secrets,
                Rule::Kura007,
                format!(
                    "{what} {name} envFrom reads native Secret {:?}; use kura.dev/secret.<file> instead",
                    s.name
                ),
            );
        }
    }
}

/// Default deadline for store lookups: well under the webhook's 5 s timeout.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(2000);

#[cfg(test)]
mod tests;
