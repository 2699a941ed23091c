//! `kura lint`: the webhook's own decision code run over manifests, for CI.
//!
//! Each Pod or workload document is wrapped in the AdmissionReview kube-apiserver would send
//! and answered by [`Admission`], so CI and the cluster can never disagree. Offline (no
//! `--store`), the rules that need secret metadata are reported as not verified.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::ValueEnum;
use kube::core::DynamicObject;
use kube::core::admission::AdmissionReview;
use kura_agent::store::StoreSetting;
use serde::Serialize;
use serde_json::Value;

use super::manifests::{self, Document, is_checked_kind, review_for};
use super::{Error, Result};
use crate::admission::{Admission, Endpoint, Outcome};
use crate::inject::InjectConfig;
use crate::policy::{Finding, Rule, Severity, gitops};
use crate::workload::WORKLOAD_KINDS;

mod sarif;

/// How `kura lint` prints its reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
    /// SARIF 2.1.0, for GitHub code scanning (`github/codeql-action/upload-sarif`).
    Sarif,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Files or directories of YAML manifests; `-` reads stdin.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    #[arg(long, env = "KURA_POLICY")]
    pub policy: Option<PathBuf>,
    /// Verify store rules against `aws` or `file:PATH`; offline when absent.
    #[arg(long, env = "KURA_LINT_STORE")]
    pub store: Option<StoreSetting>,
    /// Namespace for documents that name none.
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    pub output: Output,
}

#[derive(Debug, Serialize)]
pub struct FindingReport {
    #[serde(serialize_with = "rule_id")]
    pub rule: Rule,
    pub severity: &'static str,
    pub message: String,
    /// 1-based line of the offending field in the file (of the document when there is none).
    pub line: usize,
    /// The offending field as a JSON pointer into the document.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// The lint result of one document.
#[derive(Debug, Serialize)]
pub struct Report {
    pub file: String,
    pub document: usize,
    /// 1-based line where the document starts.
    pub line: usize,
    pub kind: String,
    pub name: String,
    pub namespace: String,
    pub decision: String,
    pub denied: bool,
    /// The document cannot be read as YAML (kubectl would refuse it too); `error` says why.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unreadable: bool,
    pub findings: Vec<FindingReport>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_verified: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn rule_id<S: serde::Serializer>(rule: &Rule, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(rule.id())
}

fn severity(s: Severity, denied_here: bool) -> &'static str {
    match (s, denied_here) {
        (Severity::AlwaysDeny, _) => "deny",
        (Severity::Deny, true) => "deny",
        (Severity::Deny, false) => "warn",
        (Severity::Warn, _) => "warn",
    }
}

/// Where a kind's pod sits in its document, as a JSON pointer prefix.
fn pod_prefix(kind: &str) -> String {
    WORKLOAD_KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, path)| path.iter().map(|p| format!("/{p}")).collect())
        .unwrap_or_default()
}

/// Checks one document with the webhook's own code; `None` for kinds kura does not check.
/// An unreadable document is always reported.
pub async fn check(admission: &Admission, doc: &Document, namespace: &str) -> Option<Report> {
    if let Some(e) = &doc.unreadable {
        return Some(Report {
            file: doc.source.clone(),
            document: doc.index,
            line: e.line,
            kind: String::new(),
            name: String::new(),
            namespace: namespace.to_string(),
            decision: "unreadable".into(),
            denied: false,
            unreadable: true,
            findings: Vec::new(),
            not_verified: Vec::new(),
            error: Some(format!("not readable as YAML: {e}")),
        });
    }
    let kind = doc.kind().to_string();
    if gitops::Kind::of_object(&doc.value).is_some() {
        return Some(check_gitops(admission, doc, namespace).await);
    }
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
    let prefix = pod_prefix(&kind);
    let mut report = Report {
        file: doc.source.clone(),
        document: doc.index,
        line: doc.line,
        kind,
        name,
        namespace: ns,
        decision: String::new(),
        denied: false,
        unreadable: false,
        findings: Vec::new(),
        not_verified: Vec::new(),
        error: None,
    };
    let outcome: Result<Outcome> =
        match serde_json::from_value::<AdmissionReview<DynamicObject>>(review_json) {
            Ok(r) => admission
                .review_parsed(Endpoint::Mutate, r)
                .await
                .map_err(Error::from),
            Err(source) => Err(Error::Object {
                what: "a Kubernetes object",
                source,
            }),
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
                .map(|f| finding_report(doc, &prefix, f, enforce))
                .collect();
            let has_secrets = o
                .review
                .response
                .as_ref()
                .is_some_and(|r| r.audit_annotations.contains_key("secrets"));
            if has_secrets && !admission.policy.has_store() {
                report.not_verified = Rule::ALL
                    .iter()
                    .filter_map(|r| r.not_verified_offline())
                    .collect();
            }
        }
        Err(e) => {
            report.decision = "error".into();
            report.denied = true;
            report.error = Some(e.to_string());
        }
    }
    Some(report)
}

fn finding_report(doc: &Document, prefix: &str, f: &Finding, enforce: bool) -> FindingReport {
    let field = f.field.as_ref().map(|p| format!("{prefix}{p}"));
    FindingReport {
        rule: f.rule,
        severity: severity(f.severity, enforce),
        message: f.message.clone(),
        line: field.as_deref().map_or(doc.line, |p| doc.line_of(p)),
        field,
    }
}

/// Secrets, External Secrets and Sealed Secrets: the GitOps rules ([`gitops`]).
async fn check_gitops(admission: &Admission, doc: &Document, namespace: &str) -> Report {
    let ns = doc
        .value
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or(namespace)
        .to_string();
    let decision = gitops::judge(&admission.policy, &doc.value, &ns, false).await;
    let enforce = decision.mode == crate::policy::Mode::Enforce;
    let denied = decision.denies();
    let decision_label = if denied {
        "denied"
    } else if decision.findings.is_empty() {
        "allowed"
    } else {
        "allowed-with-findings"
    };
    let not_verified = if decision.secrets.is_empty() || admission.policy.has_store() {
        Vec::new()
    } else {
        Rule::ALL
            .iter()
            .filter_map(|r| r.not_verified_offline())
            .collect()
    };
    Report {
        file: doc.source.clone(),
        document: doc.index,
        line: doc.line,
        kind: doc.kind().to_string(),
        name: doc
            .value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("<unnamed>")
            .to_string(),
        namespace: ns,
        decision: decision_label.into(),
        denied,
        unreadable: false,
        findings: decision
            .findings
            .iter()
            .map(|f| finding_report(doc, "", f, enforce))
            .collect(),
        not_verified,
        error: None,
    }
}

/// The manifest files under `p` (itself if a file, `-` for stdin), in name order.
fn collect_paths(p: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if p == Path::new("-") {
        out.push(p.to_path_buf());
        return Ok(());
    }
    let meta = std::fs::metadata(p).map_err(Error::io(p))?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
            .map_err(Error::io(p))?
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

/// `kura lint`: exit 0 when nothing is denied, 1 when something is.
pub async fn run(args: Args) -> Result<ExitCode> {
    let admission = manifests::admission(
        args.policy.as_deref(),
        args.store.as_ref(),
        InjectConfig::default(),
    )
    .await?;
    let mut paths = Vec::new();
    for p in &args.paths {
        collect_paths(p, &mut paths)?;
    }
    let mut reports = Vec::new();
    for p in &paths {
        for d in &manifests::read_documents(p)? {
            if let Some(r) = check(&admission, d, &args.namespace).await {
                reports.push(r);
            }
        }
    }
    let denied = reports.iter().filter(|r| r.denied).count();
    let unreadable = reports.iter().filter(|r| r.unreadable).count();
    let text = match args.output {
        Output::Json => pretty(&reports)?,
        Output::Sarif => pretty(&sarif::log(&reports))?,
        Output::Text => text_report(&reports, denied, unreadable),
    };
    // A closed pipe (`kura lint | head`) is not worth a panic.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    Ok(if denied + unreadable > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn pretty<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string_pretty(v)
        .map(|s| s + "\n")
        .map_err(|e| Error::Internal(e.to_string()))
}

fn text_report(reports: &[Report], denied: usize, unreadable: usize) -> String {
    let mut out = String::new();
    for r in reports {
        let what = format!(
            "{}/{} (document {}, namespace {})",
            r.kind, r.name, r.document, r.namespace
        );
        let head = format!("{}:{} {what}", r.file, r.line);
        if r.unreadable {
            let e = r.error.as_deref().unwrap_or_default();
            out.push_str(&format!(
                "{}:{} document {}: UNREADABLE {e}\n",
                r.file, r.line, r.document
            ));
        } else if let Some(e) = &r.error {
            out.push_str(&format!("{head}: ERROR {e}\n"));
        }
        for f in &r.findings {
            out.push_str(&format!(
                "{}:{} {what}: {} [{}] {}\n",
                r.file,
                f.line,
                f.severity.to_uppercase(),
                f.rule.id(),
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
    // What each rule that was found means, once per rule.
    let found: std::collections::BTreeSet<Rule> = reports
        .iter()
        .flat_map(|r| r.findings.iter().map(|f| f.rule))
        .collect();
    for rule in found {
        out.push_str(&format!("{}: {}\n", rule.id(), rule.summary()));
    }
    out.push_str(&format!(
        "{} document(s) checked, {denied} denied",
        reports.len()
    ));
    if unreadable > 0 {
        out.push_str(&format!(", {unreadable} unreadable"));
    }
    out.push('\n');
    out
}
