//! Pod templates inside workloads, so policy runs at `kubectl apply` of a Deployment instead of
//! surfacing later as a ReplicaSet event.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, EnvFromSource, EnvVar, EphemeralContainer, Pod, PodSecurityContext, PodSpec,
    PodTemplateSpec, ProjectedVolumeSource, SecretProjection, SecretVolumeSource, SecurityContext,
    Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::DynamicObject;
use serde::Deserialize;

/// A Pod as it comes off the wire, with only what kura reads decoded: from the metadata the
/// names, labels and annotations, and from the spec what [`judged`] keeps. `managedFields` (a
/// JSON tree per field manager), `ownerReferences`, timestamps, `status`, and the spec's
/// images, probes, ports, resources, tolerations, affinity and every volume source but
/// secrets are skipped over, not built: this is decoded for every pod admission, and
/// k8s-openapi's `Volume` and `Container` are 3.3 and 2.3 KiB structs whose decoding was the
/// largest part of an admission's CPU.
#[derive(Debug, Deserialize)]
pub struct WirePod {
    #[serde(default)]
    metadata: WireMeta,
    spec: Option<WireSpec>,
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

/// The judged part of a pod spec, as [`judged`] defines it. Types and required fields are
/// those of `PodSpec`: a spec of the wrong shape is an error here too.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireSpec {
    containers: Vec<WireContainer>,
    init_containers: Option<Vec<WireContainer>>,
    ephemeral_containers: Option<Vec<WireContainer>>,
    volumes: Option<Vec<WireVolume>>,
    security_context: Option<PodSecurityContext>,
}

/// Moves a container's judged fields into a container struct of another type (k8s-openapi's
/// `Container` and `EphemeralContainer` share them): the one list of them, so a field added to
/// [`WireContainer`] cannot be dropped silently by a conversion that fills the rest by default.
macro_rules! judged_container {
    ($c:ident => $ty:ident { $($rest:tt)* }) => {
        $ty {
            name: $c.name,
            env: $c.env,
            env_from: $c.env_from,
            command: $c.command,
            args: $c.args,
            volume_mounts: $c.volume_mounts,
            security_context: $c.security_context,
            $($rest)*
        }
    };
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireContainer {
    name: String,
    env: Option<Vec<EnvVar>>,
    env_from: Option<Vec<EnvFromSource>>,
    /// Judged for credentials on the command line (KURA005).
    command: Option<Vec<String>>,
    args: Option<Vec<String>>,
    volume_mounts: Option<Vec<VolumeMount>>,
    security_context: Option<SecurityContext>,
}

#[derive(Debug, Deserialize)]
struct WireVolume {
    name: String,
    secret: Option<SecretVolumeSource>,
    projected: Option<WireProjected>,
}

#[derive(Debug, Deserialize)]
struct WireProjected {
    sources: Option<Vec<WireProjection>>,
}

#[derive(Debug, Deserialize)]
struct WireProjection {
    secret: Option<SecretProjection>,
}

impl From<WireSpec> for PodSpec {
    fn from(w: WireSpec) -> PodSpec {
        let containers = |cs: Vec<WireContainer>| -> Vec<Container> {
            cs.into_iter()
                .map(|c| judged_container!(c => Container { ..Container::default() }))
                .collect()
        };
        let volume = |v: WireVolume| Volume {
            name: v.name,
            secret: v.secret,
            projected: v.projected.map(|p| ProjectedVolumeSource {
                sources: p.sources.map(|s| {
                    s.into_iter()
                        .map(|p| VolumeProjection {
                            secret: p.secret,
                            ..VolumeProjection::default()
                        })
                        .collect()
                }),
                ..ProjectedVolumeSource::default()
            }),
            ..Volume::default()
        };
        PodSpec {
            containers: containers(w.containers),
            init_containers: w.init_containers.map(containers),
            ephemeral_containers: w.ephemeral_containers.map(|cs| {
                cs.into_iter()
                    .map(|c| {
                        judged_container!(c => EphemeralContainer {
                            ..EphemeralContainer::default()
                        })
                    })
                    .collect()
            }),
            volumes: w.volumes.map(|vs| vs.into_iter().map(volume).collect()),
            security_context: w.security_context,
            ..PodSpec::default()
        }
    }
}

impl From<Container> for WireContainer {
    fn from(c: Container) -> Self {
        judged_container!(c => WireContainer {})
    }
}

impl From<EphemeralContainer> for WireContainer {
    fn from(c: EphemeralContainer) -> Self {
        judged_container!(c => WireContainer {})
    }
}

impl From<Volume> for WireVolume {
    fn from(v: Volume) -> Self {
        WireVolume {
            name: v.name,
            secret: v.secret,
            projected: v.projected.map(|p| WireProjected {
                sources: p.sources.map(|s| {
                    s.into_iter()
                        .map(|p| WireProjection { secret: p.secret })
                        .collect()
                }),
            }),
        }
    }
}

/// The part of a pod spec kura judges and plans from, and nothing else: per container (init,
/// app and ephemeral) its name, env, envFrom, command, args, volumeMounts and securityContext; per volume its
/// name, its `secret` source and the secrets among its projected sources; the pod's
/// securityContext. Every pod kura judges is reduced to this, whether it came off the wire
/// ([`WirePod`]) or whole (`kura lint`, `kura review`), so both see the same pod, and an
/// UPDATE is re-judged only when this part changed. Code that starts reading another field
/// of the spec must add it to the wire types above.
pub fn judged(spec: PodSpec) -> PodSpec {
    fn all<T, W: From<T>>(items: Option<Vec<T>>) -> Option<Vec<W>> {
        items.map(|v| v.into_iter().map(W::from).collect())
    }
    PodSpec::from(WireSpec {
        containers: spec
            .containers
            .into_iter()
            .map(WireContainer::from)
            .collect(),
        init_containers: all(spec.init_containers),
        ephemeral_containers: all(spec.ephemeral_containers),
        volumes: all(spec.volumes),
        security_context: spec.security_context,
    })
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
            spec: w.spec.map(PodSpec::from),
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

/// Why an object does not yield the pod kura judges.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The pod, or the workload's template, is not a pod spec; `detail` has scalar values
    /// redacted, so a literal credential of the wrong type is not echoed.
    #[error("the {kind} does not hold a valid pod spec: {detail}")]
    InvalidSpec { kind: String, detail: String },
    /// The workload has nothing at the path of its pod template.
    #[error("the {kind} has no {path}")]
    NoTemplate { kind: String, path: String },
}

fn invalid(kind: &str, e: &serde_json::Error) -> Error {
    // A position in the object's JSON text means nothing to whoever wrote the manifest.
    let text = e.to_string();
    let text = match text.rsplit_once(" at line ") {
        Some((head, _)) if e.line() != 0 => head,
        _ => &text,
    };
    Error::InvalidSpec {
        kind: kind.to_string(),
        detail: kura_agent::redact::scalars(text),
    }
}

/// [`pod_from`] for an object still in its JSON text: a Pod is decoded straight into its typed
/// form (only what [`WirePod`] reads); the kinds kura does not look at are not decoded at all.
pub fn pod_from_json(kind: &str, json: &str) -> Result<Option<Pod>, Error> {
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
pub fn pod_from(kind: &str, object: DynamicObject) -> Result<Option<Pod>, Error> {
    let DynamicObject {
        metadata, mut data, ..
    } = object;
    let invalid = |e: serde_json::Error| invalid(kind, &e);
    if kind == "Pod" {
        let spec = match data.get_mut("spec") {
            Some(v) => Some(judged(
                serde_json::from_value::<PodSpec>(v.take()).map_err(invalid)?,
            )),
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
        cur = cur.get_mut(*seg).ok_or_else(|| Error::NoTemplate {
            kind: kind.to_string(),
            path: path.join("."),
        })?;
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
        spec: template.spec.map(judged),
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
            "/tests/fixtures/webhook-review.json"
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
            spec: full.spec.clone().map(judged),
            status: None,
        };
        assert!(expected.metadata.annotations.is_some());
        assert_eq!(wire, expected);

        // What the judged spec keeps, and what it drops, of this pod.
        let (full, wire) = (
            full.spec.expect("a spec"),
            wire.spec.expect("the wire pod has the spec"),
        );
        let (app, kept) = (&full.containers[0], &wire.containers[0]);
        assert_eq!(kept.name, app.name);
        assert!(app.env.is_some() && kept.env == app.env);
        assert!(app.volume_mounts.is_some() && kept.volume_mounts == app.volume_mounts);
        assert!(app.image.is_some() && kept.image.is_none());
        assert!(app.resources.is_some() && kept.resources.is_none());
        assert!(full.tolerations.is_some() && wire.tolerations.is_none());
        assert_eq!(wire.security_context, full.security_context);
        let names = |s: &PodSpec| -> Vec<String> {
            s.volumes.iter().flatten().map(|v| v.name.clone()).collect()
        };
        assert_eq!(names(&wire), names(&full));
        let token = full.volumes.as_ref().and_then(|v| v[0].projected.as_ref());
        let sources = token
            .and_then(|p| p.sources.as_ref())
            .expect("the token volume");
        assert!(sources.iter().any(|s| s.service_account_token.is_some()));
        let kept = wire.volumes.as_ref().and_then(|v| v[0].projected.as_ref());
        let kept = kept
            .and_then(|p| p.sources.as_ref())
            .expect("projected sources");
        assert_eq!(kept.len(), sources.len());
        assert!(kept.iter().all(|s| *s == VolumeProjection::default()));

        // A pod spec of the wrong shape is still an error, not skipped.
        object["spec"]["containers"] = json!("nope");
        let e = pod_from_json("Pod", &object.to_string()).unwrap_err();
        assert!(matches!(e, Error::InvalidSpec { .. }), "{e}");
        assert!(e.to_string().contains("valid pod spec"), "{e}");
    }

    #[test]
    fn the_judged_spec_keeps_secrets_identity_and_users_from_every_kind_of_container() {
        let container = |name: &str| {
            json!({
                "name": name, "image": "app:1", "args": ["--x"],
                "env": [
                    { "name": "A", "value": "1" },
                    { "name": "B", "valueFrom": { "secretKeyRef": { "name": "s", "key": "k" } } },
                ],
                "envFrom": [{ "secretRef": { "name": "s" } }],
                "volumeMounts": [{ "name": "v", "mountPath": "/v", "readOnly": true }],
                "securityContext": { "runAsUser": 1000, "runAsGroup": 2000 },
                "livenessProbe": { "exec": { "command": ["true"] } },
            })
        };
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "p" },
            "spec": {
                "containers": [container("app")],
                "initContainers": [container("init")],
                "ephemeralContainers": [container("debug")],
                "securityContext": { "fsGroup": 3000, "runAsUser": 4000 },
                "volumes": [
                    { "name": "v", "secret": { "secretName": "s" } },
                    { "name": "p", "projected": { "sources": [
                        { "secret": { "name": "s2" } },
                        { "configMap": { "name": "c" } },
                    ] } },
                    { "name": "e", "emptyDir": {} },
                ],
                "nodeSelector": { "a": "b" },
            },
        });
        let wire = pod_from_json("Pod", &pod.to_string())
            .expect("decodes")
            .expect("a pod");
        let whole = pod_from("Pod", obj(pod.clone()))
            .expect("decodes")
            .expect("a pod");
        let full: Pod = serde_json::from_value(pod).expect("a Pod");
        let full = full.spec.expect("a spec");
        let spec = wire.spec.expect("a spec");
        assert_eq!(
            whole.spec.as_ref(),
            Some(&spec),
            "both decodings judge the same spec"
        );

        for (kept, had) in [
            (&spec.containers[0], &full.containers[0]),
            (
                &spec.init_containers.as_ref().expect("init")[0],
                &full.init_containers.as_ref().expect("init")[0],
            ),
        ] {
            assert_eq!(
                (
                    &kept.name,
                    &kept.env,
                    &kept.env_from,
                    &kept.volume_mounts,
                    &kept.security_context
                ),
                (
                    &had.name,
                    &had.env,
                    &had.env_from,
                    &had.volume_mounts,
                    &had.security_context
                )
            );
            // Credentials on the command line are judged too (KURA005).
            assert_eq!((&kept.command, &kept.args), (&had.command, &had.args));
            assert!(had.env.is_some() && had.env_from.is_some() && had.security_context.is_some());
            assert!(kept.image.is_none() && kept.liveness_probe.is_none());
        }
        let (kept, had) = (
            &spec.ephemeral_containers.as_ref().expect("ephemeral")[0],
            &full.ephemeral_containers.as_ref().expect("ephemeral")[0],
        );
        assert_eq!((&kept.env, &kept.env_from), (&had.env, &had.env_from));
        assert!(kept.image.is_none());
        assert_eq!(spec.security_context, full.security_context);
        assert!(spec.node_selector.is_none());
        let volumes = spec.volumes.expect("volumes");
        assert_eq!(volumes.len(), 3);
        assert_eq!(
            volumes[0].secret,
            full.volumes.as_ref().expect("volumes")[0].secret
        );
        let sources = volumes[1]
            .projected
            .as_ref()
            .and_then(|p| p.sources.as_ref());
        let sources = sources.expect("projected sources");
        assert_eq!(
            sources[0].secret.as_ref().map(|s| s.name.as_str()),
            Some("s2")
        );
        assert!(sources[1].config_map.is_none());
        assert!(volumes[2].empty_dir.is_none() && volumes[2].name == "e");
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
        let e = pod_from("Job", job).unwrap_err();
        assert!(matches!(e, Error::NoTemplate { .. }), "{e}");
        assert!(e.to_string().contains("spec.template"), "{e}");
        let bad =
            obj(json!({"apiVersion":"v1","kind":"Pod","metadata":{},"spec":{"containers":"nope"}}));
        let e = pod_from("Pod", bad).unwrap_err();
        assert!(e.to_string().contains("valid pod spec"), "{e}");
        // A literal credential typed as a number is not echoed into the denial or the logs.
        let num = obj(
            json!({"apiVersion":"v1","kind":"Pod","metadata":{},"spec":{"containers":[{"name":"c","env":[{"name":"DB_PASSWORD","value":918273645}]}]}}),
        );
        let e = pod_from("Pod", num).unwrap_err().to_string();
        assert!(
            e.contains("invalid type") && !e.contains("918273645"),
            "{e}"
        );
    }
}
