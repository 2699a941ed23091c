//! `kura lint` and `kura review`: the webhook's own decision code run over manifests.
//!
//! Each Pod or workload document is wrapped in the AdmissionReview kube-apiserver would send
//! and answered by [`Admission`], so CI and the cluster can never disagree. Offline (no
//! `--store`), the rules that need secret metadata are reported as not verified.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use kube::core::DynamicObject;
use kube::core::admission::AdmissionReview;
use serde::Serialize;
use serde_json::{Value, json};

use crate::admission::{Admission, Endpoint, Outcome};
use crate::cli::{LintArgs, Output, ReviewArgs, load_policy, open_store};
use crate::config::InjectConfig;
use crate::policy::{PolicyEngine, Severity};
use crate::workload::WORKLOAD_KINDS;

/// One manifest document.
#[derive(Debug, Clone)]
pub struct Document {
    pub source: String,
    /// 1-based position in its file.
    pub index: usize,
    pub value: Value,
}

/// Reads every YAML document of a text (multi-document YAML, `List` items flattened).
pub fn parse_documents(source: &str, text: &str) -> Result<Vec<Document>, String> {
    let mut out = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value: Value = serde::Deserialize::deserialize(de)
            .map_err(|e| format!("{source}: document {}: {e}", i + 1))?;
        if value.is_null() {
            continue;
        }
        if value.get("kind").and_then(Value::as_str) == Some("List") {
            for item in value
                .get("items")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                out.push(Document {
                    source: source.to_string(),
                    index: i + 1,
                    value: item.clone(),
                });
            }
        } else {
            out.push(Document {
                source: source.to_string(),
                index: i + 1,
                value,
            });
        }
    }
    Ok(out)
}

/// Whether kura checks documents of this kind.
pub fn is_checked_kind(kind: &str) -> bool {
    kind == "Pod" || WORKLOAD_KINDS.iter().any(|(k, _)| *k == kind)
}

/// The AdmissionReview kube-apiserver would send to create this object.
pub fn review_for(doc: &Value, namespace: &str) -> Value {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
    let api_version = doc
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("v1");
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    let ns = doc
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or(namespace);
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "00000000-0000-0000-0000-00000000c0de",
            "kind": { "group": group, "version": version, "kind": kind },
            "resource": { "group": group, "version": version, "resource": format!("{}s", kind.to_lowercase()) },
            "name": name,
            "namespace": ns,
            "operation": "CREATE",
            "userInfo": { "username": "kura-lint" },
            "object": doc,
            "dryRun": true,
        }
    })
}

#[derive(Debug, Serialize)]
pub struct FindingReport {
    pub rule: &'static str,
    pub severity: &'static str,
    pub message: String,
}

/// The lint result of one document.
#[derive(Debug, Serialize)]
pub struct Report {
    pub file: String,
    pub document: usize,
    pub kind: String,
    pub name: String,
    pub namespace: String,
    pub decision: String,
    pub denied: bool,
    pub findings: Vec<FindingReport>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_verified: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn severity(s: Severity, denied_here: bool) -> &'static str {
    match (s, denied_here) {
        (Severity::AlwaysDeny, _) => "deny",
        (Severity::Deny, true) => "deny",
        (Severity::Deny, false) => "warn",
        (Severity::Warn, _) => "warn",
    }
}

/// Checks one document with the webhook's own code.
pub async fn check(admission: &Admission, doc: &Document, namespace: &str) -> Option<Report> {
    let kind = doc
        .value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if !is_checked_kind(&kind) {
        return None;
    }
    let review_json = review_for(&doc.value, namespace);
    let ns = review_json
        .pointer("/request/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let name = doc
        .value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>")
        .to_string();
    let mut report = Report {
        file: doc.source.clone(),
        document: doc.index,
        kind,
        name,
        namespace: ns,
        decision: String::new(),
        denied: false,
        findings: Vec::new(),
        not_verified: Vec::new(),
        error: None,
    };
    let outcome: Result<Outcome, String> =
        match serde_json::from_value::<AdmissionReview<DynamicObject>>(review_json) {
            Ok(r) => admission
                .review_parsed(Endpoint::Mutate, r)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(format!("not a Kubernetes object: {e}")),
        };
    match outcome {
        Ok(o) => {
            let enforce =
                admission.policy.mode_for(&report.namespace) == crate::policy::Mode::Enforce;
            report.decision = o.decision.to_string();
            report.denied = o.denied;
            if o.decision == crate::admission::Verdict::Invalid {
                report.error = o.review.response.as_ref().map(|r| r.result.message.clone());
            }
            report.findings = o
                .findings
                .iter()
                .map(|f| FindingReport {
                    rule: f.rule.id(),
                    severity: severity(f.severity, enforce),
                    message: f.message.clone(),
                })
                .collect();
            let has_secrets = o
                .review
                .response
                .as_ref()
                .is_some_and(|r| r.audit_annotations.contains_key("secrets"));
            if has_secrets && !admission.policy.has_store() {
                report.not_verified = vec![
                    "KURA002 (resolved identity and namespace tag)".into(),
                    "KURA003".into(),
                    "KURA004".into(),
                ];
            }
        }
        Err(e) => {
            report.decision = "error".into();
            report.denied = true;
            report.error = Some(e);
        }
    }
    Some(report)
}

fn collect_paths(p: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    if p == Path::new("-") {
        out.push(p.to_path_buf());
        return Ok(());
    }
    let meta = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
            .map_err(|e| format!("{}: {e}", p.display()))?
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for e in entries {
            let is_manifest = e
                .extension()
                .is_some_and(|x| x == "yaml" || x == "yml" || x == "json");
            if e.is_dir() || is_manifest {
                collect_paths(&e, out)?;
            }
        }
    } else {
        out.push(p.to_path_buf());
    }
    Ok(())
}

fn read_source(p: &Path) -> Result<(String, String), String> {
    if p == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("stdin: {e}"))?;
        return Ok(("<stdin>".into(), s));
    }
    let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok((p.display().to_string(), text))
}

async fn engine(
    policy: Option<&Path>,
    store: Option<&kura_agent::store::StoreSetting>,
) -> Result<PolicyEngine, String> {
    let policy = load_policy(policy)?;
    let store = match store {
        Some(s) => Some(open_store(s, &policy).await?),
        None => None,
    };
    Ok(PolicyEngine::new(policy, store))
}

/// `kura lint`.
pub async fn lint(args: LintArgs) -> ExitCode {
    crate::tls::provider();
    let usage = |m: String| {
        eprintln!("kura lint: {m}");
        ExitCode::from(2)
    };
    let policy = match engine(args.policy.as_deref(), args.store.as_ref()).await {
        Ok(p) => p,
        Err(e) => return usage(e),
    };
    let admission = Admission::new(InjectConfig::default(), policy);
    let mut paths = Vec::new();
    for p in &args.paths {
        if let Err(e) = collect_paths(p, &mut paths) {
            return usage(e);
        }
    }
    let mut reports = Vec::new();
    for p in &paths {
        let docs = match read_source(p).and_then(|(name, text)| parse_documents(&name, &text)) {
            Ok(d) => d,
            Err(e) => return usage(e),
        };
        for d in &docs {
            if let Some(r) = check(&admission, d, &args.namespace).await {
                reports.push(r);
            }
        }
    }
    let denied = reports.iter().filter(|r| r.denied).count();
    let text = match args.output {
        Output::Json => match serde_json::to_string_pretty(&reports) {
            Ok(s) => s + "\n",
            Err(e) => return usage(e.to_string()),
        },
        Output::Text => text_report(&reports, denied),
    };
    // A closed pipe (`kura lint | head`) is not worth a panic.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    if denied > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn text_report(reports: &[Report], denied: usize) -> String {
    let mut out = String::new();
    for r in reports {
        let head = format!(
            "{}#{} {}/{} (namespace {})",
            r.file, r.document, r.kind, r.name, r.namespace
        );
        if let Some(e) = &r.error {
            out.push_str(&format!("{head}: ERROR {e}\n"));
        }
        for f in &r.findings {
            out.push_str(&format!(
                "{head}: {} [{}] {}\n",
                f.severity.to_uppercase(),
                f.rule,
                f.message
            ));
        }
        if !r.not_verified.is_empty() {
            let rules = r.not_verified.join(", ");
            out.push_str(&format!(
                "{head}: NOTE not verified offline: {rules} (pass --store aws|file:PATH)\n"
            ));
        }
    }
    out.push_str(&format!(
        "{} document(s) checked, {} denied\n",
        reports.len(),
        denied
    ));
    out
}

/// `kura review`.
pub async fn review(args: ReviewArgs) -> ExitCode {
    crate::tls::provider();
    let usage = |m: String| {
        eprintln!("kura review: {m}");
        ExitCode::from(2)
    };
    let policy = match engine(args.policy.as_deref(), args.store.as_ref()).await {
        Ok(p) => p,
        Err(e) => return usage(e),
    };
    let inject = InjectConfig {
        agent_image: args.agent_image.clone(),
        sidecar_mode: args.sidecar_mode,
        ..InjectConfig::default()
    };
    let admission = Admission::new(inject, policy);
    let docs = match read_source(&args.file).and_then(|(name, text)| parse_documents(&name, &text))
    {
        Ok(d) => d,
        Err(e) => return usage(e),
    };
    let Some(doc) = docs.into_iter().find(|d| {
        let kind = d
            .value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        kind == "AdmissionReview" || is_checked_kind(kind)
    }) else {
        return usage("no Pod, workload or AdmissionReview in the input".into());
    };
    let review_json = if doc.value.get("kind").and_then(Value::as_str) == Some("AdmissionReview") {
        doc.value.clone()
    } else {
        review_for(&doc.value, &args.namespace)
    };
    let object = review_json
        .pointer("/request/object")
        .cloned()
        .unwrap_or(Value::Null);
    let parsed = match serde_json::from_value::<AdmissionReview<DynamicObject>>(review_json) {
        Ok(r) => r,
        Err(e) => return usage(format!("not an AdmissionReview: {e}")),
    };
    let outcome = match admission.review_parsed(Endpoint::Mutate, parsed).await {
        Ok(o) => o,
        Err(e) => return usage(e.to_string()),
    };
    let Some(resp) = &outcome.review.response else {
        return usage("no response".into());
    };
    let mut out = format!("decision: {}\n", outcome.decision);
    if !resp.allowed {
        out.push_str(&format!("message: {}\n", resp.result.message));
    }
    for w in resp.warnings.iter().flatten() {
        out.push_str(&format!("warning: {w}\n"));
    }
    let mut audit: Vec<_> = resp.audit_annotations.iter().collect();
    audit.sort();
    for (k, v) in audit {
        out.push_str(&format!("audit: {k}={v}\n"));
    }
    if let Some(patch) = &resp.patch {
        let mut pod = object;
        let ops: json_patch::Patch = match serde_json::from_slice(patch) {
            Ok(p) => p,
            Err(e) => return usage(format!("internal: patch does not parse: {e}")),
        };
        if let Err(e) = json_patch::patch(&mut pod, &ops) {
            return usage(format!("internal: patch does not apply: {e}"));
        }
        match serde_yaml_ng::to_string(&pod) {
            Ok(y) => out.push_str(&format!("---\n{y}")),
            Err(e) => return usage(e.to_string()),
        }
    }
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
    if resp.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
