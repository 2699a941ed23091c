//! Kubernetes schema validation (kubernetes-validate, strict; 1.29 and newest) of objects a
//! test produced, through `scripts/validate-k8s.py` in the venv.

use std::process::Command;

use crate::{venv, workspace_root};

/// Validates Kubernetes objects against the OpenAPI schemas; the error is the validator's report.
pub fn validate_k8s(objects: &[serde_json::Value]) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        let p = dir.path().join(format!("{i}.json"));
        std::fs::write(&p, serde_json::to_vec(o).unwrap()).unwrap();
        files.push(p);
    }
    let out = Command::new(venv().join("bin/python"))
        .arg(workspace_root().join("scripts/validate-k8s.py"))
        .args(&files)
        .output()
        .expect("python runs");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}
