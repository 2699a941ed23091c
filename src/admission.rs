//! AdmissionReview in, AdmissionReview out: decoding, the decision, and wrapping it.
//!
//! The HTTP layer hands bodies here; everything below is synchronous planning plus the policy's
//! metadata lookups, so the same code answers the webhook, `kura review` and the tests.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kura_agent::annotations::{self, PodSecrets};
use tracing::{Instrument, info, warn};

use crate::config::InjectConfig;
use crate::inject;
use crate::policy::{Decision, Finding, PolicyEngine, Rule};

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

fn pod_label(req: &AdmissionRequest<DynamicObject>) -> String {
    if !req.name.is_empty() {
        return req.name.clone();
    }
    req.object
        .as_ref()
        .and_then(|o| o.metadata.generate_name.clone())
        .map(|g| format!("{g}*"))
        .unwrap_or_else(|| "<unnamed>".into())
}

impl Admission {
    /// Decodes a body and answers it.
    pub async fn review(&self, endpoint: Endpoint, body: &[u8]) -> Result<Outcome, Error> {
        let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)
            .map_err(|e| Error::Body(kura_agent::redact::scalars(&e.to_string())))?;
        self.review_parsed(endpoint, review).await
    }

    /// Answers an already decoded review.
    pub async fn review_parsed(
        &self,
        endpoint: Endpoint,
        review: AdmissionReview<DynamicObject>,
    ) -> Result<Outcome, Error> {
        let req: AdmissionRequest<DynamicObject> = match review.try_into() {
            Ok(r) => r,
            Err(_) => {
                return Ok(Outcome {
                    review: AdmissionResponse::invalid("the AdmissionReview has no request")
                        .into_review(),
                    decision: "invalid",
                    rules: Vec::new(),
                    namespace: String::new(),
                    injected: false,
                    denied: true,
                    findings: Vec::new(),
                });
            }
        };
        let name = pod_label(&req);
        let namespace = req.namespace.clone().unwrap_or_default();
        // The span goes with the future, not the thread: lookups suspend this admission.
        let span = tracing::info_span!("admission", uid = %req.uid, %namespace, pod = %name, kind = %req.kind.kind, ?endpoint);
        Ok(self
            .answer(endpoint, req, namespace, name)
            .instrument(span)
            .await)
    }

    async fn answer(
        &self,
        endpoint: Endpoint,
        mut req: AdmissionRequest<DynamicObject>,
        namespace: String,
        name: String,
    ) -> Outcome {
        let object = req.object.take();
        let req = &req;
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

        if matches!(req.operation, Operation::Delete | Operation::Connect) {
            return self.finish(req, Decision::allow(), None, &namespace, &name);
        }
        let Some(object) = object else {
            return invalid("the request has no object".into());
        };

        // An update that leaves the pod spec alone (labels, annotations such as
        // kura.dev/refresh-now) is not re-judged: the pod was admitted on create.
        if req.operation == Operation::Update
            && req.kind.kind == "Pod"
            && let Some(old) = &req.old_object
            && old.data.get("spec") == object.data.get("spec")
        {
            return self.finish(req, Decision::allow(), None, &namespace, &name);
        }
        let kind = req.kind.kind.as_str();
        let pod: Pod = match crate::workload::pod_from(kind, object) {
            Ok(Some(p)) => p,
            // Not a kind kura looks at: allow unchanged.
            Ok(None) => return self.finish(req, Decision::allow(), None, &namespace, &name),
            Err(e) => return invalid(e),
        };

        let mode = self.policy.mode_for(&namespace);
        static NONE: BTreeMap<String, String> = BTreeMap::new();
        let parsed = annotations::parse(pod.metadata.annotations.as_ref().unwrap_or(&NONE));
        let mut decision = Decision::new(mode);
        let secrets: Option<PodSecrets> = match parsed {
            Ok(s) => s,
            Err(errors) => {
                // Malformed annotations always deny: there is nothing correct to inject.
                for e in errors {
                    decision.push_always_deny(Finding::new(Rule::Kura001, e.to_string()));
                }
                None
            }
        };

        self.policy
            .check_pod(&pod, secrets.as_ref(), &namespace, &mut decision)
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
            && let Some(secrets) = &secrets
        {
            if inject::is_injected(&pod) {
                let ops = inject::top_up_identity(&pod);
                if !ops.is_empty() {
                    patch = Some(json_patch::Patch(ops));
                }
            } else {
                match inject::plan(&pod, secrets, &self.inject) {
                    Ok(plan) => patch = Some(json_patch::Patch(plan.patch)),
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
        if let Some(s) = &secrets {
            decision.secrets = s.secrets().into_iter().map(str::to_string).collect();
        }
        self.finish(req, decision, patch, &namespace, &name)
    }

    fn finish(
        &self,
        req: &AdmissionRequest<DynamicObject>,
        decision: Decision,
        patch: Option<json_patch::Patch>,
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

        let mut audit: BTreeMap<String, String> = BTreeMap::new();
        audit.insert("decision".into(), label.into());
        audit.insert("mode".into(), decision.mode.as_str().into());
        if !rules.is_empty() {
            let mut ids: Vec<&str> = rules.iter().map(|r| r.id()).collect();
            ids.dedup();
            audit.insert("rules".into(), ids.join(","));
        }
        if !decision.secrets.is_empty() {
            audit.insert("secrets".into(), decision.secrets.join(","));
        }
        resp.audit_annotations = audit.into_iter().collect();

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
            warn!(decision = label, rules = ?rules.iter().map(|r| r.id()).collect::<Vec<_>>(), "denied");
            resp = resp.deny(msg);
        } else {
            let warnings = decision.warnings();
            if !warnings.is_empty() {
                resp.warnings = Some(warnings);
            }
            if let Some(p) = patch {
                match resp.clone().with_patch(p) {
                    Ok(r) => resp = r,
                    Err(e) => resp = resp.deny(format!("kura could not serialize its patch: {e}")),
                }
            }
            info!(decision = label, rules = ?rules.iter().map(|r| r.id()).collect::<Vec<_>>(), "admitted");
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
