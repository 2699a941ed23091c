//! What `kura lint` and `kura review` share: reading manifests, wrapping a document in the
//! AdmissionReview kube-apiserver would send, and the [`Admission`] that answers it.

use std::io::Read;
use std::path::Path;

use kura_agent::store::{Store, StoreSetting};
use serde_json::{Value, json};

use super::{Error, Result};
use crate::admission::Admission;
use crate::config::load_policy;
use crate::inject::InjectConfig;
use crate::policy::PolicyEngine;
use crate::workload::WORKLOAD_KINDS;

/// One manifest document.
#[derive(Debug, Clone)]
pub struct Document {
    pub source: String,
    /// 1-based position in its file.
    pub index: usize,
    pub value: Value,
}

impl Document {
    /// The document's `kind`, empty when it has none.
    pub fn kind(&self) -> &str {
        self.value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

/// Reads every YAML document of a text (multi-document YAML, `List` items flattened).
pub fn parse_documents(source: &str, text: &str) -> Result<Vec<Document>> {
    let mut out = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value: Value = serde::Deserialize::deserialize(de).map_err(|e| Error::Document {
            file: source.to_string(),
            index: i + 1,
            source: e,
        })?;
        if value.is_null() {
            continue;
        }
        let doc = |value| Document {
            source: source.to_string(),
            index: i + 1,
            value,
        };
        if value.get("kind").and_then(Value::as_str) == Some("List") {
            let items = value.get("items").and_then(Value::as_array);
            out.extend(items.into_iter().flatten().cloned().map(doc));
        } else {
            out.push(doc(value));
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

/// Reads a manifest file, or stdin for `-`; returns the name to report it by and its text.
pub fn read_source(p: &Path) -> Result<(String, String)> {
    if p == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(Error::io("stdin"))?;
        return Ok(("<stdin>".into(), s));
    }
    let text = std::fs::read_to_string(p).map_err(Error::io(p))?;
    Ok((p.display().to_string(), text))
}

/// Every document of a manifest file, or of stdin for `-`.
pub fn read_documents(p: &Path) -> Result<Vec<Document>> {
    let (name, text) = read_source(p)?;
    parse_documents(&name, &text)
}

/// The webhook's decision code with the given policy file and, to verify the store rules, store.
pub async fn admission(
    policy: Option<&Path>,
    store: Option<&StoreSetting>,
    inject: InjectConfig,
) -> Result<Admission> {
    crate::tls::provider();
    let policy = load_policy(policy)?;
    let store = match store {
        Some(s) => Some(Store::open(s, policy.store_timeout).await?),
        None => None,
    };
    Ok(Admission::new(inject, PolicyEngine::new(policy, store)))
}
