//! `kura review`: the decision and the mutated pod for one manifest, as the webhook would
//! answer its AdmissionReview.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use kube::core::DynamicObject;
use kube::core::admission::AdmissionReview;
use kura_agent::store::StoreSetting;
use serde_json::Value;

use super::manifests::{self, is_checked_kind, review_for};
use super::{Error, Result};
use crate::admission::Endpoint;
use crate::inject::{DEFAULT_AGENT_IMAGE, InjectConfig, SidecarMode};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A YAML or JSON manifest (Pod or workload), or an AdmissionReview; `-` reads stdin.
    pub file: PathBuf,
    #[arg(long, env = "KURA_POLICY")]
    pub policy: Option<PathBuf>,
    /// Verify store rules against `aws` or `file:PATH`; offline when absent.
    #[arg(long, env = "KURA_REVIEW_STORE")]
    pub store: Option<StoreSetting>,
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    #[arg(long, env = "KURA_AGENT_IMAGE", default_value = DEFAULT_AGENT_IMAGE)]
    pub agent_image: String,
    #[arg(long, env = "KURA_SIDECAR_MODE", value_enum, default_value = "native")]
    pub sidecar_mode: SidecarMode,
}

/// `kura review`: exit 0 when the webhook would allow the object, 1 when it would refuse it.
pub async fn run(args: Args) -> Result<ExitCode> {
    let inject = InjectConfig {
        agent_image: args.agent_image.clone(),
        sidecar_mode: args.sidecar_mode,
        ..InjectConfig::default()
    };
    let admission =
        manifests::admission(args.policy.as_deref(), args.store.as_ref(), inject).await?;
    let doc = manifests::read_readable(&args.file)?
        .into_iter()
        .find(|d| d.kind() == "AdmissionReview" || is_checked_kind(d.kind()))
        .ok_or_else(|| Error::Usage("no Pod, workload or AdmissionReview in the input".into()))?;
    let review_json = if doc.kind() == "AdmissionReview" {
        doc.value
    } else {
        review_for(&doc.value, &args.namespace)
    };
    let object = review_json
        .pointer("/request/object")
        .cloned()
        .unwrap_or(Value::Null);
    let parsed = serde_json::from_value::<AdmissionReview<DynamicObject>>(review_json).map_err(
        |source| Error::Object {
            what: "an AdmissionReview",
            source,
        },
    )?;
    let outcome = admission.review_parsed(Endpoint::Mutate, parsed).await?;
    let resp = outcome
        .review
        .response
        .as_ref()
        .ok_or_else(|| Error::Internal("no response".into()))?;
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
        let ops: json_patch::Patch = serde_json::from_slice(patch)
            .map_err(|e| Error::Internal(format!("patch does not parse: {e}")))?;
        json_patch::patch(&mut pod, &ops)
            .map_err(|e| Error::Internal(format!("patch does not apply: {e}")))?;
        let yaml = serde_yaml_ng::to_string(&pod).map_err(|e| Error::Internal(e.to_string()))?;
        out.push_str(&format!("---\n{yaml}"));
    }
    // A closed pipe is not worth a panic.
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
    Ok(if resp.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
