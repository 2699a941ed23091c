//! What `kura lint` and `kura review` share: reading manifests, wrapping a document in the
//! AdmissionReview kube-apiserver would send, and the [`Admission`] that answers it.

use std::io::Read;
use std::path::Path;

use kura_agent::store::{Store, StoreSetting};
use serde_json::{Value, json};

use super::yaml::{self, Unreadable};
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
    /// The 1-based line where it starts.
    pub line: usize,
    /// `Null` when the document is unreadable.
    pub value: Value,
    /// JSON pointer → line, for the fields of `value`.
    pub lines: std::collections::BTreeMap<String, usize>,
    /// Why the document cannot be read (kubectl would refuse it too).
    pub unreadable: Option<Unreadable>,
}

impl Document {
    /// The document's `kind`, empty when it has none.
    pub fn kind(&self) -> &str {
        self.value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// The line of the field at `pointer` (a JSON pointer into the document), or of its nearest
    /// ancestor that has one.
    pub fn line_of(&self, pointer: &str) -> usize {
        let mut p = pointer;
        loop {
            if let Some(l) = self.lines.get(p) {
                return *l;
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => return self.line,
            }
        }
    }
}

/// Reads every YAML document of a text as kubectl reads it (YAML 1.1 scalars, see
/// [`super::yaml`]); `List` items are flattened. A document that cannot be read is returned
/// with [`Document::unreadable`] set, and the others are still read.
pub fn parse_documents(source: &str, text: &str) -> Vec<Document> {
    let mut out = Vec::new();
    for d in yaml::documents(text) {
        let loaded = match d.result {
            Ok(l) => l,
            Err(e) => {
                out.push(Document {
                    source: source.to_string(),
                    index: d.index,
                    line: d.line,
                    value: Value::Null,
                    lines: Default::default(),
                    unreadable: Some(e),
                });
                continue;
            }
        };
        let doc = |value, lines| Document {
            source: source.to_string(),
            index: d.index,
            line: d.line,
            value,
            lines,
            unreadable: None,
        };
        if loaded.value.get("kind").and_then(Value::as_str) == Some("List") {
            let items = loaded.value.get("items").and_then(Value::as_array);
            for (i, item) in items.into_iter().flatten().enumerate() {
                // The item's lines, re-rooted at the item.
                let prefix = format!("/items/{i}");
                let lines = loaded
                    .lines
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .filter(|(k, _)| k.len() == prefix.len() || k[prefix.len()..].starts_with('/'))
                    .map(|(k, l)| (k[prefix.len()..].to_string(), *l))
                    .collect();
                out.push(doc(item.clone(), lines));
            }
        } else {
            out.push(doc(loaded.value, loaded.lines));
        }
    }
    out
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

/// Every document of a manifest file, or of stdin for `-`; unreadable ones included.
pub fn read_documents(p: &Path) -> Result<Vec<Document>> {
    let (name, text) = read_source(p)?;
    Ok(parse_documents(&name, &text))
}

/// Every document of a manifest file, or the first reason one cannot be read.
pub fn read_readable(p: &Path) -> Result<Vec<Document>> {
    let docs = read_documents(p)?;
    if let Some(d) = docs.iter().find(|d| d.unreadable.is_some()) {
        return Err(Error::Document {
            file: d.source.clone(),
            index: d.index,
            source: d.unreadable.clone().expect("found by is_some"),
        });
    }
    Ok(docs)
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
