//! Pod templates inside workloads, so policy runs at `kubectl apply` of a Deployment instead of
//! surfacing later as a ReplicaSet event.

use serde_json::{Value, json};

/// Kinds whose pod template kura checks, with the path to the template.
pub const WORKLOAD_KINDS: [(&str, &[&str]); 6] = [
    ("Deployment", &["spec", "template"]),
    ("StatefulSet", &["spec", "template"]),
    ("DaemonSet", &["spec", "template"]),
    ("ReplicaSet", &["spec", "template"]),
    ("Job", &["spec", "template"]),
    ("CronJob", &["spec", "jobTemplate", "spec", "template"]),
];

/// The pod (as a Pod-shaped JSON value) that an object of `kind` describes; `None` for kinds
/// kura does not look at.
pub fn pod_template(kind: &str, object: &Value) -> Result<Option<Value>, String> {
    if kind == "Pod" {
        return Ok(Some(object.clone()));
    }
    let Some((_, path)) = WORKLOAD_KINDS.iter().find(|(k, _)| *k == kind) else {
        return Ok(None);
    };
    let mut cur = object;
    for seg in path.iter() {
        cur = cur
            .get(seg)
            .ok_or_else(|| format!("the {kind} has no {}", path.join(".")))?;
    }
    let mut metadata = cur.get("metadata").cloned().unwrap_or_else(|| json!({}));
    if metadata.get("name").is_none()
        && let Some(n) = object.pointer("/metadata/name")
    {
        // Name the template after its workload so messages point at something the user wrote.
        metadata["generateName"] = json!(format!("{}-", n.as_str().unwrap_or_default()));
    }
    Ok(Some(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": cur.get("spec").cloned().unwrap_or_else(|| json!({})),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_found() {
        let d = json!({"kind":"Deployment","metadata":{"name":"web"},"spec":{"template":{"metadata":{"labels":{"a":"b"}},"spec":{"containers":[{"name":"c"}]}}}});
        let p = pod_template("Deployment", &d).expect("ok").expect("pod");
        assert_eq!(p["spec"]["containers"][0]["name"], "c");
        assert_eq!(p["metadata"]["generateName"], "web-");
        let cj = json!({"spec":{"jobTemplate":{"spec":{"template":{"spec":{"containers":[]}}}}}});
        assert!(pod_template("CronJob", &cj).expect("ok").is_some());
        assert!(pod_template("Service", &json!({})).expect("ok").is_none());
        assert!(
            pod_template("Job", &json!({"spec":{}}))
                .unwrap_err()
                .contains("spec.template")
        );
    }
}
