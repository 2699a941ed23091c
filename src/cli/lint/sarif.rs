//! `kura lint -o sarif`: the reports as a SARIF 2.1.0 log, the format GitHub code scanning
//! uploads (`github/codeql-action/upload-sarif`). One run, kura as its tool with every rule
//! described, one result per finding (and per unreadable document) at its file and line.

use serde_json::{Value, json};

use super::Report;
use crate::policy::Rule;

/// The rule id of an unreadable document, which is no policy rule.
const UNREADABLE: &str = "unreadable";

fn level(severity: &str) -> &'static str {
    match severity {
        "deny" => "error",
        "warn" => "warning",
        _ => "note",
    }
}

fn location(file: &str, line: usize) -> Value {
    json!([{
        "physicalLocation": {
            "artifactLocation": { "uri": file.trim_start_matches("./") },
            "region": { "startLine": line.max(1) }
        }
    }])
}

/// The SARIF log of a lint run.
pub fn log(reports: &[Report]) -> Value {
    let mut rules: Vec<Value> = Rule::ALL
        .iter()
        .map(|r| {
            json!({
                "id": r.id(),
                "shortDescription": { "text": r.summary() },
            })
        })
        .collect();
    rules.push(json!({
        "id": UNREADABLE,
        "shortDescription": { "text": "a manifest document that cannot be read as YAML (kubectl refuses it too)" },
        "defaultConfiguration": { "level": "error" },
    }));
    let mut results = Vec::new();
    for r in reports {
        if r.unreadable {
            results.push(json!({
                "ruleId": UNREADABLE,
                "ruleIndex": Rule::ALL.len(),
                "level": "error",
                "message": { "text": r.error.clone().unwrap_or_default() },
                "locations": location(&r.file, r.line),
            }));
        }
        for f in &r.findings {
            let index = Rule::ALL.iter().position(|x| *x == f.rule);
            results.push(json!({
                "ruleId": f.rule.id(),
                "ruleIndex": index,
                "level": level(f.severity),
                "message": { "text": format!("{}/{}: {}", r.kind, r.name, f.message) },
                "locations": location(&r.file, f.line),
            }));
        }
    }
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": {
                "name": "kura",
                "version": env!("CARGO_PKG_VERSION"),
                "informationUri": env!("CARGO_PKG_REPOSITORY"),
                "rules": rules,
            }},
            "results": results,
        }]
    })
}
