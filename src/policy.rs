//! Admission policy: the policy file, every rule (KURA001–KURA011; the GitOps ones in [`gitops`]), modes, and the decision
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
pub mod gitops;
mod glob;
mod rule;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use k8s_openapi::api::core::v1::{Container, Pod};
use kura_agent::annotations::{AnnotationError, PodSecrets};
use kura_agent::redact::clip;
use kura_agent::spec::Reference;
use kura_agent::store::{Store, StoreError, subject};

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
    /// The offending field as a JSON pointer into the judged object (`/spec/containers/0/env/2`
    /// for a pod), when there is one: `kura lint` turns it into a line number.
    pub field: Option<String>,
}

impl Finding {
    pub fn new(rule: Rule, message: String) -> Self {
        Finding {
            rule,
            message,
            severity: Severity::Deny,
            field: None,
        }
    }

    /// The finding about the field at `pointer`.
    pub fn at(mut self, pointer: String) -> Self {
        self.field = Some(pointer);
        self
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
            .map(|f| clip(&format!("[{}] {}", f.rule.id(), f.message), MAX_FINDING))
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
                clip(&w, MAX_WARNING)
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
        let refs: Vec<SecretRef<'_>> = secrets
            .secrets()
            .into_iter()
            .map(|id| SecretRef {
                id,
                field: None,
                must_exist: true,
            })
            .collect();
        self.check_refs(policy, &refs, namespace, decision).await;
    }

    /// KURA002–KURA004 and KURA009 for the secrets named by a pod or another resource
    /// ([`gitops`]): the string written must be in the namespace's scope, and, with a store,
    /// what it resolves to too, encrypted with an allowed key and existing.
    pub(crate) async fn check_refs(
        &self,
        policy: &Policy,
        refs: &[SecretRef<'_>],
        namespace: &str,
        decision: &mut Decision,
    ) {
        let at = |f: Finding, r: &SecretRef<'_>| match &r.field {
            Some(p) => f.at(p.clone()),
            None => f,
        };
        // The string the pod wrote must be in scope; so must what the store says it resolves to.
        let mut in_scope = Vec::new();
        for r in refs {
            let id = r.id;
            match policy.scope.check_id(id, namespace) {
                Ok(()) => in_scope.push(r),
                Err(why) => decision.push(at(
                    Finding::new(Rule::Kura002, format!("{}: {why}", subject(id))),
                    r,
                )),
            }
        }
        let Some(cache) = &self.cache else { return };
        let deadline = policy.store_timeout;
        // Warm answers are taken as they are; only misses are asked, concurrently and bounded.
        let mut lookups = Vec::with_capacity(in_scope.len());
        let mut misses = Vec::new();
        for (i, r) in in_scope.iter().enumerate() {
            match cache.cached(r.id) {
                Some(m) => lookups.push((i, Ok(m))),
                None => misses.push(i),
            }
        }
        if !misses.is_empty() {
            let in_scope = &in_scope;
            lookups.extend(
                futures_util::future::join_all(misses.iter().map(|&i| async move {
                    let r = tokio::time::timeout(deadline, cache.describe(in_scope[i].id)).await;
                    (i, r)
                }))
                .await,
            );
            // Findings in declaration order, whichever answers were cached.
            lookups.sort_by_key(|(i, _)| *i);
        }
        for (i, result) in lookups {
            let r = in_scope[i];
            let id = r.id;
            let mut found = Decision::new(decision.mode);
            let meta = match result {
                Err(_) => {
                    self.store_failure(
                        policy,
                        &mut found,
                        id,
                        &format!("no answer within {}ms", deadline.as_millis()),
                    );
                    None
                }
                Ok(Err(StoreError::NotFound { .. })) if !r.must_exist => None,
                Ok(Err(StoreError::NotFound { .. })) => {
                    let store = if Reference::of(id).is_parameter() {
                        "SSM Parameter Store"
                    } else {
                        "Secrets Manager"
                    };
                    found.push(Finding::new(
                        Rule::Kura004,
                        format!("{} does not exist in {store} (or kura may not describe it); create it first", subject(id)),
                    ));
                    None
                }
                Ok(Err(e)) => {
                    self.store_failure(policy, &mut found, id, &e.to_string());
                    None
                }
                Ok(Ok(m)) => Some(m),
            };
            if let Some(meta) = meta {
                if meta.deleted {
                    found.push(Finding::new(
                        Rule::Kura004,
                        format!("secret {id:?} is scheduled for deletion; restore it or point the pod at its replacement"),
                    ));
                }
                if let Err(why) = policy.scope.check_resolved(&meta, namespace) {
                    found.push(Finding::new(
                        Rule::Kura002,
                        format!(
                            "{} resolves to {}: {why}",
                            subject(id),
                            if meta.arn.is_empty() {
                                &meta.name
                            } else {
                                &meta.arn
                            }
                        ),
                    ));
                }
                if let Err(why) = policy.kms.check(&meta) {
                    found.push(Finding::new(
                        Rule::Kura003,
                        format!("{}: {why}", subject(id)),
                    ));
                }
            }
            for f in found.findings {
                decision.push(at(f, r));
            }
        }
    }

    fn store_failure(&self, policy: &Policy, decision: &mut Decision, id: &str, why: &str) {
        // The operator's view: the denial reaches only the developer who applied the pod.
        tracing::warn!(secret = %id, error = %why, "store lookup failed");
        let mut f = Finding::new(
            Rule::Kura009,
            format!(
                "{} could not be checked: {why}; retry, or see the runbook for store failures",
                subject(id)
            ),
        );
        if policy.store_errors == StoreErrors::FailOpen {
            f.severity = Severity::Warn;
        }
        decision.push(f);
    }
}

/// A secret named by a pod or a resource, for [`PolicyEngine::check_refs`].
#[derive(Debug, Clone)]
pub(crate) struct SecretRef<'a> {
    pub id: &'a str,
    /// Where it is named (a JSON pointer into the object), when not in annotations.
    pub field: Option<String>,
    /// `false` for a secret the resource creates (a PushSecret's target): KURA004 does not apply.
    pub must_exist: bool,
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
    fn as_view(c: &Container) -> ContainerView<'_> {
        ContainerView {
            name: c.name.as_str(),
            env: c.env.as_deref(),
            env_from: c.env_from.as_deref(),
            command: c.command.as_deref(),
            args: c.args.as_deref(),
        }
    }
    let lists = [
        ("container", "containers", Some(&spec.containers)),
        (
            "initContainer",
            "initContainers",
            spec.init_containers.as_ref(),
        ),
    ];
    for (what, field, list) in lists {
        for (i, c) in list.into_iter().flatten().enumerate() {
            let base = format!("/spec/{field}/{i}");
            check_container(policy, what, &base, as_view(c), decision);
        }
    }
    for (i, e) in spec.ephemeral_containers.iter().flatten().enumerate() {
        // Ephemeral containers share the fields kura looks at.
        let view = ContainerView {
            name: e.name.as_str(),
            env: e.env.as_deref(),
            env_from: e.env_from.as_deref(),
            command: e.command.as_deref(),
            args: e.args.as_deref(),
        };
        let base = format!("/spec/ephemeralContainers/{i}");
        check_container(policy, "ephemeralContainer", &base, view, decision);
    }
    if policy.native_secrets != Action::Ignore {
        for (i, v) in spec.volumes.iter().flatten().enumerate() {
            if let Some(s) = &v.secret {
                let name = s.secret_name.as_deref().unwrap_or("");
                push_at(
                    decision,
                    policy.native_secrets,
                    Rule::Kura007,
                    format!(
                        "volume {} mounts native Secret {name:?}; declare it with kura.dev/secret.<file> instead",
                        v.name
                    ),
                    Some(format!("/spec/volumes/{i}")),
                );
            }
            if let Some(p) = &v.projected {
                for src in p.sources.iter().flatten() {
                    if let Some(s) = &src.secret {
                        push_at(
                            decision,
                            policy.native_secrets,
                            Rule::Kura007,
                            format!(
                                "projected volume {} includes native Secret {:?}; declare it with kura.dev/secret.<file> instead",
                                v.name, s.name
                            ),
                            Some(format!("/spec/volumes/{i}")),
                        );
                    }
                }
            }
        }
    }
}

/// Pushes a finding whose severity is the policy's `action` for it (nothing for `ignore`).
pub(crate) fn push_at(
    decision: &mut Decision,
    action: Action,
    rule: Rule,
    message: String,
    field: Option<String>,
) {
    let severity = match action {
        Action::Deny => Severity::Deny,
        Action::Warn => Severity::Warn,
        Action::Ignore => return,
    };
    decision.push(Finding {
        rule,
        message,
        severity,
        field,
    });
}

/// What the rules read of a container (app, init or ephemeral).
struct ContainerView<'a> {
    name: &'a str,
    env: Option<&'a [k8s_openapi::api::core::v1::EnvVar]>,
    env_from: Option<&'a [k8s_openapi::api::core::v1::EnvFromSource]>,
    command: Option<&'a [String]>,
    args: Option<&'a [String]>,
}

fn check_container(
    policy: &Policy,
    what: &str,
    base: &str,
    c: ContainerView<'_>,
    decision: &mut Decision,
) {
    let name = c.name;
    if policy.plaintext.enabled {
        let command = c.command.unwrap_or_default();
        let args = c.args.unwrap_or_default();
        for hit in policy.plaintext.detect_argv(command, args) {
            let (field, i) = if hit.index < command.len() {
                ("command", hit.index)
            } else {
                ("args", hit.index - command.len())
            };
            push_at(
                decision,
                hit.detection.action,
                Rule::Kura005,
                format!(
                    "{what} {name} {field}[{i}]: {}; store it in Secrets Manager and pass it with kura.dev/secret.<file>",
                    hit.detection.reason
                ),
                Some(format!("{base}/{field}/{i}")),
            );
        }
    }
    for (i, e) in c.env.into_iter().flatten().enumerate() {
        if let Some(value) = &e.value
            && policy.plaintext.enabled
            && let Some(why) = policy.plaintext.detect(&e.name, value)
        {
            push_at(
                decision,
                why.action,
                Rule::Kura005,
                format!(
                    "{what} {name} env {}: {}; store it in Secrets Manager and use kura.dev/secret.<file>",
                    e.name, why.reason
                ),
                Some(format!("{base}/env/{i}/value")),
            );
        }
        let Some(from) = &e.value_from else { continue };
        if let Some(cm) = &from.config_map_key_ref
            && policy.plaintext.is_secret_like(&e.name)
        {
            push_at(
                decision,
                policy.config_map_secret_like,
                Rule::Kura006,
                format!(
                    "{what} {name} env {} reads a secret-like value from ConfigMap {:?} key {:?}; ConfigMaps are not encrypted secrets",
                    e.name, cm.name, cm.key
                ),
                Some(format!("{base}/env/{i}/valueFrom")),
            );
        }
        if let Some(s) = &from.secret_key_ref {
            push_at(
                decision,
                policy.native_secrets,
                Rule::Kura007,
                format!(
                    "{what} {name} env {} reads native Secret {:?}; use kura.dev/secret.<file> instead",
                    e.name, s.name
                ),
                Some(format!("{base}/env/{i}/valueFrom")),
            );
        }
    }
    for (i, f) in c.env_from.into_iter().flatten().enumerate() {
        if let Some(s) = &f.secret_ref {
            push_at(
                decision,
                policy.native_secrets,
                Rule::Kura007,
                format!(
                    "{what} {name} envFrom reads native Secret {:?}; use kura.dev/secret.<file> instead",
                    s.name
                ),
                Some(format!("{base}/envFrom/{i}")),
            );
        }
    }
}

/// Default deadline for store lookups: well under the webhook's 5 s timeout.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(2000);

#[cfg(test)]
mod tests;
