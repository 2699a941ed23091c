//! AdmissionReview in, AdmissionReview out: decode → judge → plan → wrap.
//!
//! The HTTP layer hands bodies here. Decoding is [`crate::wire::review`]; judging is the
//! [`policy`](crate::policy) (every rule lives there); planning is [`inject`]; wrapping builds the
//! response with its audit annotations, warnings and patch. Everything below is synchronous
//! apart from the policy's metadata lookups, so the same code answers the webhook, `kura review`
//! and the tests.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde_json::value::RawValue;
use tracing::{Instrument, info, warn};

use crate::inject::InjectConfig;
use crate::inject::{self, Declarations, Declared};
use crate::policy::{self, Decision, Finding, PolicyEngine, Rule, Stage};
use crate::wire::{self, PatchText, review::WireReview};
use crate::workload::WirePod;

/// Errors that make a review unreadable: answered with HTTP 400 and the message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the body is not an AdmissionReview: {0}")]
    Body(String),
}

/// What the webhook needs to decide.
#[derive(Debug)]
pub struct Admission {
    pub inject: InjectConfig,
    pub policy: PolicyEngine,
    /// Parsed `kura.dev/` declarations, shared by the pods that carry the same ones.
    declarations: Declarations,
}

/// Which endpoint is answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Mutate,
    Validate,
}

impl Endpoint {
    /// The label in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Mutate => "mutate",
            Endpoint::Validate => "validate",
        }
    }
}

/// What an admission came to: the `decision` audit annotation, log field and metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The review could not be judged (no request, no object, an undecodable object).
    Invalid,
    Denied,
    /// Allowed with a patch that injects the agent (or tops up its identity).
    Injected,
    Allowed,
    /// Allowed, with findings that warn or are only recorded.
    AllowedWithFindings,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Invalid => "invalid",
            Verdict::Denied => "denied",
            Verdict::Injected => "injected",
            Verdict::Allowed => "allowed",
            Verdict::AllowedWithFindings => "allowed-with-findings",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer and what to log and count about it.
#[derive(Debug)]
pub struct Outcome {
    pub review: AdmissionReview<DynamicObject>,
    pub decision: Verdict,
    pub rules: Vec<Rule>,
    pub namespace: String,
    pub injected: bool,
    pub denied: bool,
    /// Every finding with its rule, for reports (`kura lint`).
    pub findings: Vec<Finding>,
}

/// A request's object: a pod decoded from the wire, raw JSON from the wire, or an object
/// decoded by the caller (`kura lint`, `kura review`).
// Pods are boxed, here and in `Target`: they are held across the admission's awaits, and an
// async function's state keeps a slot for every value it holds there, copied whole each time
// the future moves.
enum Object {
    Typed(Box<WirePod>),
    Raw(Box<RawValue>),
    Dynamic(Box<DynamicObject>),
}

impl Object {
    /// The object as JSON, for the resources judged without a pod ([`policy::gitops`]).
    fn into_json(self) -> Result<serde_json::Value, String> {
        match self {
            Object::Typed(_) => Err("a pod is not a GitOps resource".into()),
            Object::Raw(raw) => serde_json::from_str(raw.get()).map_err(|e| e.to_string()),
            Object::Dynamic(o) => serde_json::to_value(*o).map_err(|e| e.to_string()),
        }
    }

    fn into_pod(self, kind: &str) -> Result<Option<Box<Pod>>, String> {
        let pod = match self {
            Object::Typed(pod) => Ok(Some(Pod::from(*pod))),
            Object::Dynamic(o) => crate::workload::pod_from(kind, *o),
            Object::Raw(raw) => crate::workload::pod_from_json(kind, raw.get()),
        }
        .map_err(|e| e.to_string())?;
        Ok(pod.map(Box::new))
    }
}

/// What the request asks kura to judge.
enum Target {
    /// DELETE and CONNECT: nothing to judge.
    Skip,
    /// No object where one belongs.
    Missing,
    /// The pod (or workload's pod template); `None` for kinds kura does not look at.
    Decoded(Result<Option<Box<Pod>>, String>),
}

/// A request, decoded: the pod to judge, or the answer that needs no judging.
enum Subject {
    Judge(Box<Pod>),
    /// Allowed unchanged: nothing to judge, a kind kura does not look at, or an update that
    /// leaves the judged spec alone.
    Allow,
    Invalid(String),
}

fn pod_label(req: &AdmissionRequest<DynamicObject>, target: &Target) -> String {
    if !req.name.is_empty() {
        return req.name.clone();
    }
    match target {
        Target::Decoded(Ok(Some(pod))) => pod.metadata.generate_name.as_ref(),
        _ => None,
    }
    .map(|g| format!("{g}*"))
    .unwrap_or_else(|| "<unnamed>".into())
}

/// The request's identity, for the answer and its logs.
struct Names<'a> {
    req: &'a AdmissionRequest<DynamicObject>,
    namespace: &'a str,
    pod: &'a str,
}

impl Admission {
    pub fn new(inject: InjectConfig, policy: PolicyEngine) -> Self {
        Admission {
            inject,
            policy,
            declarations: Declarations::default(),
        }
    }

    /// Decodes a body and answers it. A pod review is decoded in one pass straight into the pod
    /// kura judges ([`wire::review`]); other objects stay raw JSON until their kind is known.
    pub async fn review(&self, endpoint: Endpoint, body: &[u8]) -> Result<Outcome, Error> {
        // Anything but a pod (another kind, or a pod that does not decode) takes the general
        // path, which reports a bad pod with the request's uid.
        if let Ok(review) = serde_json::from_slice::<WireReview<Box<WirePod>>>(body)
            && let Some((req, object, old)) = review.into_parts()
            && req.kind.kind == "Pod"
            && req.kind.group.is_empty()
        {
            let (object, old) = (object.map(Object::Typed), old.map(Object::Typed));
            return self.review_request(endpoint, req, object, old).await;
        }
        let review: WireReview<Box<RawValue>> = serde_json::from_slice(body)
            .map_err(|e| Error::Body(kura_agent::redact::scalars(&e.to_string())))?;
        let Some((req, object, old)) = review.into_parts() else {
            return Ok(no_request());
        };
        let (object, old) = (object.map(Object::Raw), old.map(Object::Raw));
        self.review_request(endpoint, req, object, old).await
    }

    /// Answers an already decoded review.
    pub async fn review_parsed(
        &self,
        endpoint: Endpoint,
        review: AdmissionReview<DynamicObject>,
    ) -> Result<Outcome, Error> {
        let mut req: AdmissionRequest<DynamicObject> = match review.try_into() {
            Ok(r) => r,
            Err(_) => return Ok(no_request()),
        };
        let object = req.object.take().map(|o| Object::Dynamic(Box::new(o)));
        let old = req.old_object.take().map(|o| Object::Dynamic(Box::new(o)));
        self.review_request(endpoint, req, object, old).await
    }

    async fn review_request(
        &self,
        endpoint: Endpoint,
        req: AdmissionRequest<DynamicObject>,
        object: Option<Object>,
        old: Option<Object>,
    ) -> Result<Outcome, Error> {
        // External Secrets and Sealed Secrets are judged as they are, on /validate.
        let gitops = policy::gitops::Kind::of_group(&req.kind.group, &req.kind.kind)
            .filter(|k| k.at_admission() && endpoint == Endpoint::Validate);
        if gitops.is_some() && !matches!(req.operation, Operation::Delete | Operation::Connect) {
            return Ok(self.answer_resource(&req, object).await);
        }
        // Decoded before the span opens, so that the span can name a pod that has only a
        // generateName.
        let target = if matches!(req.operation, Operation::Delete | Operation::Connect) {
            Target::Skip
        } else {
            match object {
                None => Target::Missing,
                Some(o) => Target::Decoded(o.into_pod(&req.kind.kind)),
            }
        };
        let pod = pod_label(&req, &target);
        let namespace = req.namespace.clone().unwrap_or_default();
        // The span goes with the future, not the thread: lookups suspend this admission.
        let span = tracing::info_span!("admission", uid = %req.uid, %namespace, %pod, kind = %req.kind.kind, ?endpoint);
        let names = Names {
            req: &req,
            namespace: &namespace,
            pod: &pod,
        };
        Ok(self
            .answer(endpoint, &names, target, old)
            .instrument(span)
            .await)
    }

    /// A GitOps resource (ExternalSecret, ClusterExternalSecret, PushSecret,
    /// ClusterSecretStore, SealedSecret) on /validate: judged by [`policy::gitops`], never
    /// mutated.
    async fn answer_resource(
        &self,
        req: &AdmissionRequest<DynamicObject>,
        object: Option<Object>,
    ) -> Outcome {
        let namespace = req.namespace.clone().unwrap_or_default();
        let name = if req.name.is_empty() {
            "<unnamed>".to_string()
        } else {
            req.name.clone()
        };
        let span = tracing::info_span!("admission", uid = %req.uid, %namespace, pod = %name, kind = %req.kind.kind, endpoint = ?Endpoint::Validate);
        let names = Names {
            req,
            namespace: &namespace,
            pod: &name,
        };
        let value = match object.map(Object::into_json) {
            None => return invalid(&names, "the request has no object".into()),
            Some(Err(e)) => {
                return invalid(
                    &names,
                    format!(
                        "the {} is not valid JSON: {}",
                        req.kind.kind,
                        kura_agent::redact::scalars(&e)
                    ),
                );
            }
            Some(Ok(v)) => v,
        };
        async {
            let decision = policy::gitops::judge(&self.policy, &value, &namespace, true).await;
            wrap(&names, decision, None)
        }
        .instrument(span)
        .await
    }

    /// decode → judge → plan → wrap.
    async fn answer(
        &self,
        endpoint: Endpoint,
        names: &Names<'_>,
        target: Target,
        old: Option<Object>,
    ) -> Outcome {
        let pod = match subject(names.req, target, old) {
            Subject::Judge(pod) => pod,
            Subject::Allow => return wrap(names, Decision::allow(), None),
            Subject::Invalid(msg) => return invalid(names, msg),
        };
        let declared = self.declared(&pod);
        let is_pod = names.req.kind.kind == "Pod";
        let stage = match endpoint {
            Endpoint::Validate if is_pod => Stage::Final,
            _ => Stage::Submitted,
        };
        let mut decision = self
            .policy
            .judge(
                &pod,
                declared
                    .as_ref()
                    .map(|d| d.as_deref().map(|d| &d.secrets))
                    .map_err(Vec::as_slice),
                names.namespace,
                stage,
            )
            .await;
        let patch = match (&declared, endpoint) {
            (Ok(Some(declared)), Endpoint::Mutate) if is_pod && !decision.denies() => {
                self.plan(&pod, declared, &mut decision)
            }
            // A workload's template: what would block its pods' injection (a container without
            // the command kura-agent exec wraps, users that conflict) is found now, where the
            // developer applies it, not later in the controller's events.
            (Ok(Some(declared)), _) if !is_pod && !decision.denies() => {
                if let Err(problems) = inject::plan_declared(&pod, declared, &self.inject) {
                    policy::check_plan(&problems, &mut decision);
                }
                None
            }
            _ => None,
        };
        wrap(names, decision, patch)
    }

    /// The pod's `kura.dev/` declaration (`None`: it did not opt in), or why it does not parse.
    fn declared(
        &self,
        pod: &Pod,
    ) -> Result<Option<Arc<Declared>>, Vec<kura_agent::annotations::AnnotationError>> {
        static NONE: BTreeMap<String, String> = BTreeMap::new();
        self.declarations.get(
            pod.metadata.annotations.as_ref().unwrap_or(&NONE),
            self.inject.default_refresh_secs,
        )
    }

    /// The mutation of an admitted, opted-in pod: the injection, or on reinvocation the identity
    /// another webhook added since. What blocks the injection joins the decision (KURA001).
    fn plan(&self, pod: &Pod, declared: &Declared, decision: &mut Decision) -> Option<PatchText> {
        if inject::is_injected(pod) {
            let ops = inject::top_up_identity(pod);
            return (!ops.is_empty()).then_some(ops);
        }
        match inject::plan_declared(pod, declared, &self.inject) {
            Ok(plan) => Some(plan.patch),
            Err(problems) => {
                policy::check_plan(&problems, decision);
                None
            }
        }
    }
}

/// What the request asks to judge, or the answer that needs no judging. An update that leaves
/// the judged spec alone (labels, annotations such as kura.dev/refresh-now, images: see
/// `workload::judged`) is not re-judged: the pod was admitted on create.
fn subject(req: &AdmissionRequest<DynamicObject>, target: Target, old: Option<Object>) -> Subject {
    let kind = req.kind.kind.as_str();
    let pod = match target {
        Target::Skip | Target::Decoded(Ok(None)) => return Subject::Allow,
        Target::Missing => return Subject::Invalid("the request has no object".into()),
        Target::Decoded(Err(e)) => return Subject::Invalid(e),
        Target::Decoded(Ok(Some(p))) => p,
    };
    if req.operation == Operation::Update
        && kind == "Pod"
        && let Some(old) = old
        && let Ok(Some(old)) = old.into_pod(kind)
        && old.spec == pod.spec
    {
        return Subject::Allow;
    }
    Subject::Judge(pod)
}

fn no_request() -> Outcome {
    invalid_outcome(
        AdmissionResponse::invalid("the AdmissionReview has no request"),
        "",
    )
}

fn invalid(names: &Names<'_>, msg: String) -> Outcome {
    let mut r = AdmissionResponse::invalid(msg);
    r.uid = names.req.uid.clone();
    invalid_outcome(r, names.namespace)
}

fn invalid_outcome(response: AdmissionResponse, namespace: &str) -> Outcome {
    Outcome {
        review: response.into_review(),
        decision: Verdict::Invalid,
        rules: Vec::new(),
        namespace: namespace.to_string(),
        injected: false,
        denied: true,
        findings: Vec::new(),
    }
}

/// The decision as an AdmissionReview: audit annotations, the denial or the warnings and the
/// patch, and the log line.
fn wrap(names: &Names<'_>, decision: Decision, patch: Option<PatchText>) -> Outcome {
    let req = names.req;
    let mut resp = AdmissionResponse::from(req);
    let rules: Vec<Rule> = decision.findings.iter().map(|f| f.rule).collect();
    let denied = decision.denies();
    let injected = patch.is_some() && !denied;
    let verdict = if denied {
        Verdict::Denied
    } else if injected {
        Verdict::Injected
    } else if decision.findings.is_empty() {
        Verdict::Allowed
    } else {
        Verdict::AllowedWithFindings
    };
    let label = verdict.as_str();

    let ids: Vec<&str> = rules.iter().map(|r| r.id()).collect();
    let audit = &mut resp.audit_annotations;
    audit.reserve(4);
    audit.insert("decision".into(), label.into());
    audit.insert("mode".into(), decision.mode.as_str().into());
    // Each rule once: a pod with thousands of findings has at most nine distinct rules.
    let mut ids = ids;
    ids.sort_unstable();
    ids.dedup();
    if !ids.is_empty() {
        audit.insert("rules".into(), ids.join(","));
    }
    if !decision.secrets.is_empty() {
        audit.insert("secrets".into(), decision.secrets.join(","));
    }

    if denied {
        let what = if req.kind.kind == "Pod" {
            format!("pod {}", names.pod)
        } else {
            format!("{} {}", req.kind.kind, names.pod)
        };
        let msg = format!(
            "kura denied {what} in namespace {}: {}",
            names.namespace,
            decision.message()
        );
        warn!(decision = label, rules = ?ids, "denied");
        resp = resp.deny(msg);
    } else {
        let warnings = decision.warnings();
        if !warnings.is_empty() {
            resp.warnings = Some(warnings);
        }
        if let Some(p) = patch {
            resp = match wire::answer::with_patch(resp, p) {
                Ok(r) => r,
                Err(e) => AdmissionResponse::from(req)
                    .deny(format!("kura could not serialize its patch: {e}")),
            };
        }
        info!(decision = label, rules = ?ids, "admitted");
    }
    Outcome {
        review: resp.into_review(),
        decision: verdict,
        rules,
        namespace: names.namespace.to_string(),
        injected,
        denied,
        findings: decision.findings,
    }
}
