//! AdmissionReview in, AdmissionReview out: decoding, the decision, and wrapping it.
//!
//! The HTTP layer hands bodies here; everything below is synchronous planning plus the policy's
//! metadata lookups, so the same code answers the webhook, `kura review` and the tests.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::authentication::v1::UserInfo;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::{DynamicObject, GroupVersionKind, GroupVersionResource, TypeMeta};
use serde::Deserialize;
use serde_json::value::RawValue;
use tracing::{Instrument, info, warn};

use crate::config::InjectConfig;
use crate::inject::{self, Declared};
use crate::policy::{Decision, Finding, PolicyEngine, Rule};
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
}

/// Which endpoint is answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Mutate,
    Validate,
}

/// The answer and what to log and count about it.
#[derive(Debug)]
pub struct Outcome {
    pub review: AdmissionReview<DynamicObject>,
    pub decision: &'static str,
    pub rules: Vec<Rule>,
    pub namespace: String,
    pub injected: bool,
    pub denied: bool,
    /// Every finding with its rule, for reports (`kura lint`).
    pub findings: Vec<Finding>,
}

/// The review as kube-apiserver sends it, its objects decoded as `O`: a [`Pod`] when the
/// request is for one, else raw JSON until the kind is known.
/// (serde reads a missing `Option` field as `None`.)
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", bound(deserialize = "O: Deserialize<'de>"))]
struct WireReview<O> {
    api_version: String,
    kind: String,
    request: Option<WireRequest<O>>,
}

impl<O> WireReview<O> {
    /// The request without its objects, and the objects; `None` without a request.
    fn into_parts(self) -> Option<(AdmissionRequest<DynamicObject>, Option<O>, Option<O>)> {
        let types = TypeMeta {
            api_version: self.api_version,
            kind: self.kind,
        };
        self.request.map(|r| r.into_parts(types))
    }
}

/// The `AdmissionRequest` fields kura reads, as kube-apiserver names them. `userInfo`,
/// `options` and the `request*` fields (the original kind and resource, before conversion)
/// are skipped over: nothing kura decides or answers depends on them, and kube-apiserver's
/// audit log records the requesting user along with kura's audit annotations.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", bound(deserialize = "O: Deserialize<'de>"))]
struct WireRequest<O> {
    uid: String,
    kind: GroupVersionKind,
    resource: GroupVersionResource,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    operation: Operation,
    object: Option<O>,
    old_object: Option<O>,
    #[serde(default)]
    dry_run: bool,
}

impl<O> WireRequest<O> {
    /// The request without its objects, and the objects.
    fn into_parts(
        self,
        types: TypeMeta,
    ) -> (AdmissionRequest<DynamicObject>, Option<O>, Option<O>) {
        let req = AdmissionRequest {
            types,
            uid: self.uid,
            kind: self.kind,
            resource: self.resource,
            sub_resource: self.sub_resource,
            request_kind: None,
            request_resource: None,
            request_sub_resource: None,
            name: self.name,
            namespace: self.namespace,
            operation: self.operation,
            user_info: UserInfo::default(),
            object: None,
            old_object: None,
            dry_run: self.dry_run,
            options: None,
        };
        (req, self.object, self.old_object)
    }
}

/// A request's object: a pod decoded from the wire, raw JSON from the wire, or an object
/// decoded by the caller (`kura lint`, `kura review`).
// Pods are boxed, here and in `Target`: they are held across the admission's awaits, and an
// async function's state keeps a slot for every value it holds there, copied whole each time
// the future moves. Unboxed, the admission future was 32 KiB.
enum Object {
    Typed(Box<WirePod>),
    Raw(Box<RawValue>),
    Dynamic(Box<DynamicObject>),
}

impl Object {
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

fn no_request() -> Outcome {
    Outcome {
        review: AdmissionResponse::invalid("the AdmissionReview has no request").into_review(),
        decision: "invalid",
        rules: Vec::new(),
        namespace: String::new(),
        injected: false,
        denied: true,
        findings: Vec::new(),
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

impl Admission {
    /// Decodes a body and answers it. A pod is decoded straight into its typed form, once, and
    /// only the parts kura reads ([`WirePod`]): through `DynamicObject` it was buffered, built
    /// as a JSON tree and converted, the largest cost of an admission. Other objects stay raw
    /// JSON until their kind is known.
    pub async fn review(&self, endpoint: Endpoint, body: &[u8]) -> Result<Outcome, Error> {
        // Most reviews are for pods: one pass decodes the pod in place. Anything else (another
        // kind, or a pod that does not decode) takes the general path, which keeps the object
        // raw until its kind is known and reports a bad pod with the request's uid.
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
        let name = pod_label(&req, &target);
        let namespace = req.namespace.clone().unwrap_or_default();
        // The span goes with the future, not the thread: lookups suspend this admission.
        let span = tracing::info_span!("admission", uid = %req.uid, %namespace, pod = %name, kind = %req.kind.kind, ?endpoint);
        Ok(self
            .answer(endpoint, &req, target, old, namespace, name)
            .instrument(span)
            .await)
    }

    async fn answer(
        &self,
        endpoint: Endpoint,
        req: &AdmissionRequest<DynamicObject>,
        target: Target,
        old: Option<Object>,
        namespace: String,
        name: String,
    ) -> Outcome {
        let invalid = |msg: String| {
            let mut r = AdmissionResponse::invalid(msg);
            r.uid = req.uid.clone();
            Outcome {
                review: r.into_review(),
                decision: "invalid",
                rules: Vec::new(),
                namespace: namespace.clone(),
                injected: false,
                denied: true,
                findings: Vec::new(),
            }
        };

        let kind = req.kind.kind.as_str();
        let pod: Box<Pod> = match target {
            Target::Skip => return self.finish(req, Decision::allow(), None, &namespace, &name),
            Target::Missing => return invalid("the request has no object".into()),
            Target::Decoded(Ok(Some(p))) => p,
            // Not a kind kura looks at: allow unchanged.
            Target::Decoded(Ok(None)) => {
                return self.finish(req, Decision::allow(), None, &namespace, &name);
            }
            Target::Decoded(Err(e)) => return invalid(e),
        };
        // An update that leaves the judged spec alone (labels, annotations such as
        // kura.dev/refresh-now, images: see `workload::judged`) is not re-judged: the pod was
        // admitted on create.
        if req.operation == Operation::Update
            && kind == "Pod"
            && let Some(old) = old
            && let Ok(Some(old)) = old.into_pod(kind)
            && old.spec == pod.spec
        {
            return self.finish(req, Decision::allow(), None, &namespace, &name);
        }

        let mode = self.policy.mode_for(&namespace);
        static NONE: BTreeMap<String, String> = BTreeMap::new();
        let parsed = inject::declared(
            pod.metadata.annotations.as_ref().unwrap_or(&NONE),
            self.inject.default_refresh_secs,
        );
        let mut decision = Decision::new(mode);
        let declared: Option<Arc<Declared>> = match parsed {
            Ok(s) => s,
            Err(errors) => {
                // Malformed annotations always deny: there is nothing correct to inject.
                for e in errors {
                    decision.push_always_deny(Finding::new(Rule::Kura001, e.to_string()));
                }
                None
            }
        };

        let secrets = declared.as_ref().map(|d| &d.secrets);
        self.policy
            .check_pod(&pod, secrets, &namespace, &mut decision)
            .await;

        let is_pod = kind == "Pod";
        if endpoint == Endpoint::Validate && is_pod && secrets.is_some() && !inject::has_agent(&pod)
        {
            decision.push(Finding::new(
                Rule::Kura008,
                "the pod opts in with kura.dev/inject but its final spec has no kura-agent: the mutating webhook \
                 was skipped or another mutator removed the agent; recreate the pod, and check the \
                 MutatingWebhookConfiguration"
                    .into(),
            ));
        }

        let mut patch = None;
        if endpoint == Endpoint::Mutate
            && is_pod
            && !decision.denies()
            && let Some(declared) = &declared
        {
            if inject::is_injected(&pod) {
                let ops = inject::top_up_identity(&pod);
                if !ops.is_empty() {
                    patch = Some(ops);
                }
            } else {
                match inject::plan_declared(&pod, declared, &self.inject) {
                    Ok(plan) => patch = Some(plan.patch),
                    Err(problems) => {
                        for p in problems {
                            decision.push_always_deny(Finding::new(
                                Rule::Kura001,
                                format!("{}: {}", p.field, p.message),
                            ));
                        }
                    }
                }
            }
        }
        if let Some(s) = secrets {
            decision.secrets = s.secrets().into_iter().map(str::to_string).collect();
        }
        self.finish(req, decision, patch, &namespace, &name)
    }

    fn finish(
        &self,
        req: &AdmissionRequest<DynamicObject>,
        decision: Decision,
        patch: Option<inject::PatchText>,
        namespace: &str,
        name: &str,
    ) -> Outcome {
        let mut resp = AdmissionResponse::from(req);
        let rules: Vec<Rule> = decision.findings.iter().map(|f| f.rule).collect();
        let denied = decision.denies();
        let injected = patch.is_some() && !denied;
        let label = if denied {
            "denied"
        } else if injected {
            "injected"
        } else if decision.findings.is_empty() {
            "allowed"
        } else {
            "allowed-with-findings"
        };

        let ids: Vec<&str> = rules.iter().map(|r| r.id()).collect();
        let audit = &mut resp.audit_annotations;
        audit.reserve(4);
        audit.insert("decision".into(), label.into());
        audit.insert("mode".into(), decision.mode.as_str().into());
        if !ids.is_empty() {
            let mut distinct = ids.clone();
            distinct.dedup();
            audit.insert("rules".into(), distinct.join(","));
        }
        if !decision.secrets.is_empty() {
            audit.insert("secrets".into(), decision.secrets.join(","));
        }

        if denied {
            let what = if req.kind.kind == "Pod" {
                format!("pod {name}")
            } else {
                format!("{} {name}", req.kind.kind)
            };
            let msg = format!(
                "kura denied {what} in namespace {namespace}: {}",
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
                // kube sets the patch type only through `with_patch`, which serializes a
                // `json_patch::Patch`; the patch is already JSON text, so an empty one marks
                // the type and the text replaces it. (Serializing an empty list cannot fail.)
                resp = match resp.with_patch(json_patch::Patch(Vec::new())) {
                    Ok(mut r) => {
                        r.patch = Some(p.into_json());
                        r
                    }
                    Err(e) => AdmissionResponse::from(req)
                        .deny(format!("kura could not serialize its patch: {e}")),
                };
            }
            info!(decision = label, rules = ?ids, "admitted");
        }
        Outcome {
            review: resp.into_review(),
            decision: label,
            rules,
            namespace: namespace.to_string(),
            injected,
            denied,
            findings: decision.findings,
        }
    }
}
