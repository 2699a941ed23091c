//! Pod templates inside workloads, so policy runs at `kubectl apply` of a Deployment instead of
//! surfacing later as a ReplicaSet event.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::DynamicObject;
use serde::Deserialize;

/// A Pod as it comes off the wire, with only what kura reads decoded: the spec, and from the
/// metadata the names, labels and annotations. `managedFields` (a JSON tree per field
/// manager), `ownerReferences`, timestamps and `status` are skipped over, not built: this is
/// decoded for every pod admission.
#[derive(Debug, Deserialize)]
pub struct WirePod {
    #[serde(default)]
    metadata: WireMeta,
    spec: Option<PodSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMeta {
    name: Option<String>,
    generate_name: Option<String>,
    namespace: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
}

impl From<WirePod> for Pod {
    fn from(w: WirePod) -> Pod {
        let WireMeta {
            name,
            generate_name,
            namespace,
            labels,
            annotations,
        } = w.metadata;
        Pod {
            metadata: ObjectMeta {
                name,
                generate_name,
                namespace,
                labels,
                annotations,
                ..ObjectMeta::default()
            },
            spec: w.spec,
            status: None,
        }
    }
}

/// Kinds whose pod template kura checks, with the path to the template.
pub const WORKLOAD_KINDS: [(&str, &[&str]); 6] = [
    ("Deployment", &["spec", "template"]),
    ("StatefulSet", &["spec", "template"]),
    ("DaemonSet", &["spec", "template"]),
    ("ReplicaSet", &["spec", "template"]),
    ("Job", &["spec", "template"]),
    ("CronJob", &["spec", "jobTemplate", "spec", "template"]),
];

fn invalid(kind: &str, e: &serde_json::Error) -> String {
    // A position in the object's JSON text means nothing to whoever wrote the manifest.
    let text = e.to_string();
    let text = match text.rsplit_once(" at line ") {
        Some((head, _)) if e.line() != 0 => head,
        _ => &text,
    };
    format!(
        "the {kind} does not hold a valid pod spec: {}",
        kura_agent::redact::scalars(text)
    )
}

/// [`pod_from`] for an object still in its JSON text: a Pod is decoded straight into its typed
/// form (only what [`WirePod`] reads); the kinds kura does not look at are not decoded at all.
pub fn pod_from_json(kind: &str, json: &str) -> Result<Option<Pod>, String> {
    if kind == "Pod" {
        let pod: WirePod = serde_json::from_str(json).map_err(|e| invalid(kind, &e))?;
        return Ok(Some(pod.into()));
    }
    if !WORKLOAD_KINDS.iter().any(|(k, _)| *k == kind) {
        return Ok(None);
    }
    let object: DynamicObject = serde_json::from_str(json).map_err(|e| invalid(kind, &e))?;
    pod_from(kind, object)
}

/// The pod an object of `kind` describes: the Pod itself, or a workload's template (named after
/// the workload, so messages point at something the user wrote). `None` for kinds kura does not
/// look at. The object's data is moved, not copied: this runs on every admission.
pub fn pod_from(kind: &str, object: DynamicObject) -> Result<Option<Pod>, String> {
    let DynamicObject {
        metadata, mut data, ..
    } = object;
    let invalid = |e: serde_json::Error| invalid(kind, &e);
    if kind == "Pod" {
        let spec = match data.get_mut("spec") {
            Some(v) => Some(serde_json::from_value::<PodSpec>(v.take()).map_err(invalid)?),
            None => None,
        };
        return Ok(Some(Pod {
            metadata,
            spec,
            status: None,
        }));
    }
    let Some((_, path)) = WORKLOAD_KINDS.iter().find(|(k, _)| *k == kind) else {
        return Ok(None);
    };
    let mut cur = &mut data;
    for seg in path.iter() {
        cur = cur
            .get_mut(*seg)
            .ok_or_else(|| format!("the {kind} has no {}", path.join(".")))?;
    }
    let template: PodTemplateSpec = serde_json::from_value(cur.take()).map_err(invalid)?;
    let mut pod_meta = template.metadata.unwrap_or_default();
    if pod_meta.name.is_none() && pod_meta.generate_name.is_none() {
        pod_meta.generate_name = match metadata.name {
            Some(n) => Some(format!("{n}-")),
            None => metadata.generate_name,
        };
    }
    Ok(Some(Pod {
        metadata: pod_meta,
        spec: template.spec,
        status: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: serde_json::Value) -> DynamicObject {
        serde_json::from_value(v).expect("object")
    }

    #[test]
    fn a_wire_pod_is_the_pod_without_what_kura_never_reads() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/bench/webhook-review.json"
        ))
        .expect("the bench review");
        let review: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let mut object = review["request"]["object"].clone();
        object["metadata"]["name"] = json!("web-1");
        object["metadata"]["namespace"] = json!("orders");
        object["status"] =
            json!({ "phase": "Pending", "conditions": [{ "type": "Ready", "status": "False" }] });
        assert!(
            object["metadata"]["managedFields"].is_array()
                && object["metadata"]["ownerReferences"].is_array(),
            "the review carries what a controller-made pod has"
        );

        let full: Pod = serde_json::from_value(object.clone()).expect("a Pod");
        let wire: Pod = pod_from_json("Pod", &object.to_string())
            .expect("decodes")
            .expect("a pod");
        let expected = Pod {
            metadata: ObjectMeta {
                name: full.metadata.name,
                generate_name: full.metadata.generate_name,
                namespace: full.metadata.namespace,
                labels: full.metadata.labels,
                annotations: full.metadata.annotations,
                ..ObjectMeta::default()
            },
            spec: full.spec,
            status: None,
        };
        assert!(expected.spec.is_some() && expected.metadata.annotations.is_some());
        assert_eq!(wire, expected);

        // A pod spec of the wrong shape is still an error, not skipped.
        object["spec"]["containers"] = json!("nope");
        let e = pod_from_json("Pod", &object.to_string()).unwrap_err();
        assert!(e.contains("valid pod spec"), "{e}");
    }

    #[test]
    fn templates_are_found() {
        let d = obj(
            json!({"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web"},"spec":{"template":{"metadata":{"labels":{"a":"b"}},"spec":{"containers":[{"name":"c"}]}}}}),
        );
        let p = pod_from("Deployment", d).expect("ok").expect("pod");
        assert_eq!(p.spec.expect("spec").containers[0].name, "c");
        assert_eq!(p.metadata.generate_name.as_deref(), Some("web-"));
        let cj = obj(
            json!({"apiVersion":"batch/v1","kind":"CronJob","metadata":{},"spec":{"jobTemplate":{"spec":{"template":{"spec":{"containers":[]}}}}}}),
        );
        assert!(pod_from("CronJob", cj).expect("ok").is_some());
        let svc = obj(json!({"apiVersion":"v1","kind":"Service","metadata":{}}));
        assert!(pod_from("Service", svc).expect("ok").is_none());
        let job = obj(json!({"apiVersion":"batch/v1","kind":"Job","metadata":{},"spec":{}}));
        assert!(pod_from("Job", job).unwrap_err().contains("spec.template"));
        let bad =
            obj(json!({"apiVersion":"v1","kind":"Pod","metadata":{},"spec":{"containers":"nope"}}));
        assert!(pod_from("Pod", bad).unwrap_err().contains("valid pod spec"));
        // A literal credential typed as a number is not echoed into the denial or the logs.
        let num = obj(
            json!({"apiVersion":"v1","kind":"Pod","metadata":{},"spec":{"containers":[{"name":"c","env":[{"name":"DB_PASSWORD","value":918273645}]}]}}),
        );
        let e = pod_from("Pod", num).unwrap_err();
        assert!(
            e.contains("invalid type") && !e.contains("918273645"),
            "{e}"
        );
    }
}
