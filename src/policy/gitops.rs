//! The GitOps half: how secrets reach a cluster other than through a pod's annotations.
//!
//! - KURA010: a `kind: Secret` manifest with values in `data`/`stringData` (`kura lint` only:
//!   in Git its values are readable by everyone who can read the repository). Empty placeholder
//!   Secrets and service-account-token Secrets are not findings.
//! - External Secrets (`ExternalSecret`, `ClusterExternalSecret`, `PushSecret`) name Secrets
//!   Manager secrets in `remoteRef.key`, `dataFrom[].extract.key` and
//!   `match.remoteRef.remoteKey`: the same namespace scope (KURA002) and, with a store, the KMS
//!   and existence rules (KURA003, KURA004, KURA009) apply to them as to a pod's annotations.
//!   A `dataFrom[].find` without a `path` can match any secret the operator's role may read:
//!   KURA002.
//! - KURA011 (a warning): a source usable outside its namespace, i.e. a `ClusterSecretStore`
//!   without `conditions`, or a cluster-wide or namespace-wide `SealedSecret`. Sealed Secrets
//!   are otherwise accepted.
//!
//! Everything here reads the object as JSON: these are CRDs kura has no types for.

use serde_json::Value;

use super::{Action, Decision, Finding, PolicyEngine, Rule, Scope, SecretRef, Severity, push_at};

const ESO_GROUP: &str = "external-secrets.io";
const SEALED_GROUP: &str = "bitnami.com";

/// The annotations that widen a SealedSecret's scope.
const SEALED_SCOPES: [&str; 2] = [
    "sealedsecrets.bitnami.com/cluster-wide",
    "sealedsecrets.bitnami.com/namespace-wide",
];

/// The resources `/validate` judges besides pods and workloads, as (API group, resource,
/// kind): what the `deploy/components/gitops-resources` component sends to kura
/// (`tests/manifests.rs` checks that the two agree).
pub const ADMISSION_RESOURCES: [(&str, &str, Kind); 5] = [
    (ESO_GROUP, "externalsecrets", Kind::ExternalSecret),
    (
        ESO_GROUP,
        "clusterexternalsecrets",
        Kind::ClusterExternalSecret,
    ),
    (ESO_GROUP, "pushsecrets", Kind::PushSecret),
    (ESO_GROUP, "clustersecretstores", Kind::ClusterSecretStore),
    (SEALED_GROUP, "sealedsecrets", Kind::SealedSecret),
];

/// What kind of GitOps resource an object is, from its `apiVersion` and `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Secret,
    ExternalSecret,
    ClusterExternalSecret,
    PushSecret,
    ClusterSecretStore,
    SealedSecret,
}

impl Kind {
    /// `None` for objects these rules do not look at.
    pub fn of(api_version: &str, kind: &str) -> Option<Kind> {
        let group = api_version.split_once('/').map_or("", |(g, _)| g);
        Kind::of_group(group, kind)
    }

    /// [`Kind::of`] from an API group (empty for the core group), as an AdmissionReview names it.
    pub fn of_group(group: &str, kind: &str) -> Option<Kind> {
        Some(match (group, kind) {
            ("", "Secret") => Kind::Secret,
            (ESO_GROUP, "ExternalSecret") => Kind::ExternalSecret,
            (ESO_GROUP, "ClusterExternalSecret") => Kind::ClusterExternalSecret,
            (ESO_GROUP, "PushSecret") => Kind::PushSecret,
            (ESO_GROUP, "ClusterSecretStore") => Kind::ClusterSecretStore,
            (SEALED_GROUP, "SealedSecret") => Kind::SealedSecret,
            _ => return None,
        })
    }

    /// The kind of a JSON object.
    pub fn of_object(obj: &Value) -> Option<Kind> {
        let s = |k: &str| obj.get(k).and_then(Value::as_str).unwrap_or_default();
        Kind::of(s("apiVersion"), s("kind"))
    }

    /// Whether `/validate` judges it: everything but plain Secrets, which controllers and
    /// operators create in the cluster legitimately (KURA010 is about Git).
    pub fn at_admission(self) -> bool {
        self != Kind::Secret
    }
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// Runs the GitOps rules over one object in `namespace`. `admission`: judged at `/validate`
/// (KURA010 is `kura lint`'s alone).
pub async fn judge(
    engine: &PolicyEngine,
    obj: &Value,
    namespace: &str,
    admission: bool,
) -> Decision {
    let mut decision = Decision::new(engine.mode_for(namespace));
    let Some(kind) = Kind::of_object(obj) else {
        return decision;
    };
    let policy = engine.policy();
    let name = str_at(obj, "/metadata/name").unwrap_or("<unnamed>");
    match kind {
        Kind::Secret if !admission => {
            check_secret(obj, name, policy.plaintext.secret_manifests, &mut decision)
        }
        Kind::Secret => {}
        Kind::ExternalSecret => {
            let refs = external_refs(
                obj.pointer("/spec"),
                "/spec",
                &policy.scope,
                namespace,
                &mut decision,
            );
            engine
                .check_refs(&policy, &refs, namespace, &mut decision)
                .await;
            decision.secrets = refs.iter().map(|r| r.id.to_string()).collect();
        }
        Kind::ClusterExternalSecret => {
            let spec = obj.pointer("/spec/externalSecretSpec");
            let listed: Vec<&str> = obj
                .pointer("/spec/namespaces")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let selects = obj.pointer("/spec/namespaceSelector").is_some()
                || obj.pointer("/spec/namespaceSelectors").is_some();
            if selects {
                decision.push(Finding {
                    severity: Severity::Warn,
                    ..Finding::new(
                        Rule::Kura002,
                        format!(
                            "ClusterExternalSecret {name} selects namespaces by label, so kura cannot check its keys against each namespace's scope; list them in spec.namespaces"
                        ),
                    )
                    .at("/spec".into())
                });
            }
            let mut refs = Vec::new();
            for ns in listed {
                let mut per_ns = Decision::new(decision.mode);
                refs = external_refs(
                    spec,
                    "/spec/externalSecretSpec",
                    &policy.scope,
                    ns,
                    &mut per_ns,
                );
                engine.check_refs(&policy, &refs, ns, &mut per_ns).await;
                for mut f in per_ns.findings {
                    f.message = format!("in namespace {ns}: {}", f.message);
                    decision.push(f);
                }
            }
            decision.secrets = refs.iter().map(|r| r.id.to_string()).collect();
        }
        Kind::PushSecret => {
            let refs = push_refs(obj);
            engine
                .check_refs(&policy, &refs, namespace, &mut decision)
                .await;
            decision.secrets = refs.iter().map(|r| r.id.to_string()).collect();
        }
        Kind::ClusterSecretStore => {
            let conditions = obj
                .pointer("/spec/conditions")
                .and_then(Value::as_array)
                .is_some_and(|c| !c.is_empty());
            if !conditions {
                push_at(
                    &mut decision,
                    Action::Warn,
                    Rule::Kura011,
                    format!(
                        "ClusterSecretStore {name} has no spec.conditions: an ExternalSecret in any namespace can read whatever its role can; restrict it with conditions (namespaces or namespaceSelector) or use a namespaced SecretStore"
                    ),
                    Some("/spec".into()),
                );
            }
        }
        Kind::SealedSecret => {
            for key in SEALED_SCOPES {
                let annotated = [
                    "/metadata/annotations",
                    "/spec/template/metadata/annotations",
                ]
                .iter()
                .find(|p| {
                    obj.pointer(p)
                        .and_then(|a| a.get(key))
                        .and_then(Value::as_str)
                        == Some("true")
                });
                if let Some(p) = annotated {
                    push_at(
                        &mut decision,
                        Action::Warn,
                        Rule::Kura011,
                        format!(
                            "SealedSecret {name} is sealed with {key}: it can be unsealed in another namespace (or under another name); seal it strict (the default)"
                        ),
                        Some(format!("{p}/{}", key.replace('/', "~1"))),
                    );
                }
            }
        }
    }
    decision
}

/// KURA010: a Secret manifest that carries values.
fn check_secret(obj: &Value, name: &str, action: Action, decision: &mut Decision) {
    if str_at(obj, "/type") == Some("kubernetes.io/service-account-token") {
        return;
    }
    let mut keys = Vec::new();
    let mut first = None;
    for field in ["data", "stringData"] {
        for (k, v) in obj
            .get(field)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let empty = v.is_null() || v.as_str() == Some("");
            if !empty {
                first.get_or_insert_with(|| {
                    format!("/{field}/{}", k.replace('~', "~0").replace('/', "~1"))
                });
                keys.push(k.as_str());
            }
        }
    }
    let Some(first) = first else { return };
    let shown: Vec<&str> = keys.iter().take(5).copied().collect();
    let more = if keys.len() > shown.len() {
        ", …"
    } else {
        ""
    };
    push_at(
        decision,
        action,
        Rule::Kura010,
        format!(
            "Secret {name} carries {} value(s) in Git ({}{more}): anyone who can read the repository can read them; keep them in Secrets Manager and deliver them with a kura.dev/secret.<file> annotation, an ExternalSecret, or a SealedSecret",
            keys.len(),
            shown.join(", ")
        ),
        Some(first),
    );
}

/// The secrets an ExternalSecret spec (at `base`) names; a `find` without a path is KURA002.
fn external_refs<'a>(
    spec: Option<&'a Value>,
    base: &str,
    scope: &Scope,
    namespace: &str,
    decision: &mut Decision,
) -> Vec<SecretRef<'a>> {
    let mut refs = Vec::new();
    let Some(spec) = spec else { return refs };
    let items = |field: &str| {
        spec.get(field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
    };
    for (i, d) in items("data") {
        if let Some(key) = str_at(d, "/remoteRef/key") {
            refs.push(SecretRef {
                id: key,
                field: Some(format!("{base}/data/{i}/remoteRef/key")),
                must_exist: true,
            });
        }
    }
    for (i, d) in items("dataFrom") {
        if let Some(key) = str_at(d, "/extract/key") {
            refs.push(SecretRef {
                id: key,
                field: Some(format!("{base}/dataFrom/{i}/extract/key")),
                must_exist: true,
            });
        }
        if let Some(find) = d.get("find") {
            let field = format!("{base}/dataFrom/{i}/find");
            match find.get("path").and_then(Value::as_str) {
                // Secrets Manager matches the path as a name prefix: every name that starts
                // with it must be in scope, so it is checked as the glob `<path>*`.
                Some(path) if !path.is_empty() => {
                    if let Err(why) = scope.check_id(&format!("{path}*"), namespace) {
                        decision.push(
                            Finding::new(
                                Rule::Kura002,
                                format!("dataFrom.find path {path:?} reaches secrets outside the namespace's scope ({why}); end it with the namespace's prefix and a slash"),
                            )
                            .at(format!("{field}/path")),
                        );
                    }
                }
                _ => decision.push(
                    Finding::new(
                        Rule::Kura002,
                        "dataFrom.find without a path matches any secret the operator's role can read, outside the namespace's scope too; set find.path to the namespace's prefix".into(),
                    )
                    .at(field),
                ),
            }
        }
    }
    refs
}

/// The secrets a PushSecret writes to; they need not exist yet.
fn push_refs(obj: &Value) -> Vec<SecretRef<'_>> {
    obj.pointer("/spec/data")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, d)| {
            Some(SecretRef {
                id: str_at(d, "/match/remoteRef/remoteKey")?,
                field: Some(format!("/spec/data/{i}/match/remoteRef/remoteKey")),
                must_exist: false,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every resource the component sends is one [`Kind::of_group`] recognises, judged at
    /// admission, under its own kind name.
    #[test]
    fn admission_resources_are_judged_kinds() {
        for (group, resource, kind) in ADMISSION_RESOURCES {
            let name = format!("{kind:?}");
            assert_eq!(Kind::of_group(group, &name), Some(kind));
            assert!(kind.at_admission());
            assert_eq!(resource, format!("{}s", name.to_lowercase()));
        }
    }
}
