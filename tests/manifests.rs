//! What a platform team applies agrees with the code it deploys. Every fact has one source:
//! the version is the crate's, the agent image `kura::inject::DEFAULT_AGENT_IMAGE`, flags,
//! env twins, defaults and accepted values `kura::cli::Cli::command()`, the policy schema
//! `kura::policy::Policy::from_yaml`, the workload kinds `kura::workload::WORKLOAD_KINDS`, the
//! toolchain `rust-toolchain.toml`, the runtime uid the Dockerfiles' `USER`; the manifests
//! (deploy/, webhook-config/, read as written, each component's JSON patches applied) must say
//! the same. Rendering every overlay with kustomize and validating the renders against the
//! Kubernetes schemas is `scripts/check-manifests`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use kura::cli::Cli;
use kura::inject::DEFAULT_AGENT_IMAGE;
use kura::policy::Policy;
use kura_agent::contract::AgentCommand;
use serde::Deserialize;
use serde_json::{Value, json};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const REGISTRY: &str = "ghcr.io/kura-dev/";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn webhook_image() -> String {
    format!("{REGISTRY}kura:{VERSION}")
}

/// Problems collected over a whole check, reported together.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn check(&mut self, ok: bool, message: impl FnOnce() -> String) {
        if !ok {
            self.0.push(message());
        }
    }

    fn assert_none(self) {
        assert!(self.0.is_empty(), "\n  - {}", self.0.join("\n  - "));
    }
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

/// The documents a kustomization's `resources` name, following nested kustomizations.
fn resources(dir: &Path) -> Vec<Value> {
    let k = &yaml_docs(&dir.join("kustomization.yaml"))[0];
    let mut docs = Vec::new();
    for r in k["resources"].as_array().into_iter().flatten() {
        let path = dir.join(r.as_str().unwrap());
        if path.is_dir() {
            docs.extend(resources(&path));
        } else if path.exists() {
            docs.extend(yaml_docs(&path));
        }
    }
    docs
}

/// Applies a kustomization's JSON-patch `patches` (the form every component uses) to `docs`.
fn apply_patches(docs: &mut [Value], kustomization: &Value) {
    for p in kustomization["patches"].as_array().into_iter().flatten() {
        let target = &p["target"];
        let ops: Value = serde_yaml_ng::from_str(p["patch"].as_str().unwrap()).unwrap();
        let Ok(patch) = serde_json::from_value::<json_patch::Patch>(ops) else {
            continue; // a strategic-merge patch (the overlays' annotations), not an op list
        };
        let doc = docs
            .iter_mut()
            .find(|d| d["kind"] == target["kind"] && d["metadata"]["name"] == target["name"])
            .unwrap_or_else(|| panic!("a patch targets nothing: {target}"));
        json_patch::patch(doc, &patch).unwrap_or_else(|e| panic!("patch {target}: {e}"));
    }
}

/// One install as a component changes it: (label, documents, component name).
fn installs() -> Vec<(String, Vec<Value>, Option<String>)> {
    let mut base = resources(&root().join("deploy/base"));
    base.extend(resources(&root().join("webhook-config")));
    let mut out = vec![(
        "deploy/base + webhook-config".to_string(),
        base.clone(),
        None,
    )];
    let mut components: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/components"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    components.sort();
    for c in components {
        let name = c.file_name().unwrap().to_string_lossy().into_owned();
        let mut docs = base.clone();
        apply_patches(&mut docs, &yaml_docs(&c.join("kustomization.yaml"))[0]);
        out.push((format!("base + component {name}"), docs, Some(name)));
    }
    out
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind}/{name}");
    found[0]
}

fn kind_of<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| &labels[k] == v))
}

fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit_once(':')?.1.parse().ok()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(String::from))
        .collect()
}

/// The names a manifest gives kura: the Deployment, its namespace, and its one container.
struct Kura<'a> {
    deployment: &'a Value,
    namespace: String,
    container: &'a Value,
    pod: &'a Value,
}

fn kura(docs: &[Value]) -> Kura<'_> {
    let deployment = find(docs, "Deployment", "kura");
    let pod = &deployment["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().expect("containers");
    let container = containers
        .iter()
        .find(|c| c["name"] == "kura")
        .expect("a container named kura");
    Kura {
        deployment,
        namespace: deployment["metadata"]["namespace"]
            .as_str()
            .expect("namespace")
            .to_string(),
        container,
        pod,
    }
}

/// `kura <args>` as clap parses it (with defaults filled in): the serve subcommand's raw values
/// by long flag name, and which flags were given.
struct Serve {
    values: BTreeMap<String, String>,
    given: BTreeSet<String>,
}

fn parse_serve(args: &[String]) -> Result<Serve, String> {
    let cmd = Cli::command();
    let matches = cmd
        .clone()
        .try_get_matches_from(std::iter::once("kura".to_string()).chain(args.iter().cloned()))
        .map_err(|e| e.to_string())?;
    let Some(("serve", sub)) = matches.subcommand() else {
        return Err(format!("args do not start with serve: {args:?}"));
    };
    let serve = cmd.find_subcommand("serve").expect("a serve subcommand");
    let mut values = BTreeMap::new();
    let mut given = BTreeSet::new();
    for arg in serve.get_arguments() {
        let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else {
            continue;
        };
        if let Some(mut raw) = sub.get_raw(id)
            && let Some(v) = raw.next()
        {
            values.insert(long.to_string(), v.to_string_lossy().into_owned());
        }
        if sub.value_source(id) == Some(clap::parser::ValueSource::CommandLine) {
            given.insert(long.to_string());
        }
    }
    Ok(Serve { values, given })
}

fn args_of(container: &Value) -> Vec<String> {
    strings(&container["args"])
}

#[test]
fn the_agent_image_is_this_version() {
    let sidecar = std::fs::read_to_string(root().join("sidecar/Cargo.toml")).unwrap();
    let agent_version = sidecar
        .lines()
        .find_map(|l| l.strip_prefix("version = "))
        .expect("sidecar/Cargo.toml has a version")
        .trim_matches('"');
    assert_eq!(agent_version, VERSION, "kura and kura-agent ship together");
    assert_eq!(
        DEFAULT_AGENT_IMAGE,
        format!("{REGISTRY}kura-agent:{VERSION}")
    );
}

/// Every image reference in the manifests, Dockerfiles, IAM files and docs is one of the two
/// images of this version; in the manifests the only container image is the webhook's.
#[test]
fn image_references_name_this_version() {
    let re = regex::Regex::new(r"ghcr\.io/kura-dev/[\w.-]+(:[\w.${}-]+)?").unwrap();
    let known = [webhook_image(), DEFAULT_AGENT_IMAGE.to_string()];
    let mut p = Problems::default();
    let mut files = vec![root().join("README.md")];
    for top in ["deploy", "webhook-config", "docker", "iam", "docs"] {
        files.extend(walk(&root().join(top)));
    }
    for f in files {
        let manifest =
            f.starts_with(root().join("deploy")) || f.starts_with(root().join("webhook-config"));
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for m in re.find_iter(&text) {
            let image = m.as_str();
            let tagged = image[REGISTRY.len()..].contains(':');
            if (manifest || tagged) && !image.contains('$') {
                p.check(known.iter().any(|k| k == image), || {
                    format!("{}: image {image} is neither of {known:?}", f.display())
                });
            }
        }
    }
    for (label, docs, _) in installs() {
        for image in docs.iter().flat_map(images) {
            p.check(image == webhook_image(), || {
                format!(
                    "{label}: container image {image}, expected {}",
                    webhook_image()
                )
            });
        }
    }
    p.assert_none();
}

fn images(v: &Value) -> Vec<String> {
    match v {
        Value::Object(m) => m
            .iter()
            .flat_map(|(k, v)| match (k.as_str(), v) {
                ("image", Value::String(s)) => vec![s.clone()],
                _ => images(v),
            })
            .collect(),
        Value::Array(a) => a.iter().flat_map(images).collect(),
        _ => vec![],
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten() {
        let path = e.unwrap().path();
        if path.components().any(|c| c.as_os_str() == "generated") {
            continue;
        }
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The Deployment's args are a `kura serve` command line clap accepts (flags, values), every
/// flag has an env twin, the ports the container and Service expose are the ones kura listens
/// on, the agent image is this version's, and each component changes what it is there for.
#[test]
fn deployment_args_are_a_kura_serve_command_line() {
    let mut p = Problems::default();
    let serve_cmd = Cli::command();
    let serve_cmd = serve_cmd.find_subcommand("serve").unwrap();
    for (label, docs, component) in installs() {
        let k = kura(&docs);
        p.check(k.container["command"].is_null(), || {
            format!("{label}: the container sets command; the image's entrypoint must stay")
        });
        let args = args_of(k.container);
        let serve = match parse_serve(&args) {
            Ok(s) => s,
            Err(e) => {
                p.0.push(format!("{label}: kura rejects the Deployment's args: {e}"));
                continue;
            }
        };
        for flag in &serve.given {
            let arg = serve_cmd
                .get_arguments()
                .find(|a| a.get_long() == Some(flag.as_str()))
                .unwrap();
            p.check(arg.get_env().is_some(), || {
                format!("--{flag} has no env twin")
            });
        }
        let ports: BTreeMap<String, u64> = k.container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().to_string(),
                    p["containerPort"].as_u64().unwrap(),
                )
            })
            .collect();
        for (flag, port_name) in [("listen", "https"), ("metrics-listen", "metrics")] {
            let port = serve.values.get(flag).and_then(|a| port_of(a));
            p.check(port.map(u64::from) == ports.get(port_name).copied(), || {
                format!(
                    "{label}: --{flag} listens on {port:?}, the container port {port_name} is {:?}",
                    ports.get(port_name)
                )
            });
        }
        p.check(serve.values["agent-image"] == DEFAULT_AGENT_IMAGE, || {
            format!(
                "{label}: --agent-image {}, expected {DEFAULT_AGENT_IMAGE}",
                serve.values["agent-image"]
            )
        });
        for flag in ["tls-cert", "tls-key", "policy"] {
            p.check(serve.given.contains(flag), || {
                format!("{label}: --{flag} is not set")
            });
        }
        let want_mode = if component.as_deref() == Some("legacy-sidecar") {
            "legacy"
        } else {
            "native"
        };
        p.check(serve.values["sidecar-mode"] == want_mode, || {
            format!(
                "{label}: --sidecar-mode {}, expected {want_mode}",
                serve.values["sidecar-mode"]
            )
        });
        // Service -> container ports.
        let svc = find(&docs, "Service", "kura");
        for (port, name) in [(443, "https"), (9090, "metrics")] {
            let sp = svc["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .find(|sp| sp["port"] == port);
            p.check(
                sp.is_some_and(|sp| sp["name"] == name && (sp["targetPort"] == name || sp["targetPort"].as_u64() == ports.get(name).copied())),
                || format!("{label}: Service needs port {port} named {name} -> container port {name}; got {sp:?}"),
            );
        }
        check_mounts(&mut p, &label, &docs, &k, &serve);
    }
    p.assert_none();
}

/// `--tls-cert`, `--tls-key` and `--policy` name files the volumes provide: the TLS Secret's
/// keys and the policy ConfigMap's key, through whole-directory mounts (the kubelet never
/// updates a subPath mount, so kura could not reload it).
fn check_mounts(p: &mut Problems, label: &str, docs: &[Value], k: &Kura, serve: &Serve) {
    let volumes: BTreeMap<&str, &Value> = k.pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    let source = |p: &mut Problems, flag: &str| -> Option<(&Value, String)> {
        let path = serve.values.get(flag)?;
        for m in k.container["volumeMounts"].as_array().into_iter().flatten() {
            let base = format!(
                "{}/",
                m["mountPath"].as_str().unwrap().trim_end_matches('/')
            );
            if let Some(file) = path.strip_prefix(&base) {
                p.check(m["subPath"].is_null(), || {
                    format!("{label}: --{flag} is under a subPath mount")
                });
                let vol = volumes.get(m["name"].as_str().unwrap()).copied();
                p.check(vol.is_some(), || {
                    format!("{label}: --{flag}: mount {} has no volume", m["name"])
                });
                return vol.map(|v| (v, file.to_string()));
            }
        }
        p.0.push(format!(
            "{label}: --{flag}={path}: no volume is mounted there"
        ));
        None
    };
    let key_for = |src: &Value, file: &str| -> Option<String> {
        match src["items"].as_array() {
            None => Some(file.to_string()),
            Some(items) => items
                .iter()
                .find(|i| i["path"] == file)
                .map(|i| i["key"].as_str().unwrap().to_string()),
        }
    };
    let mut tls_secret = None;
    for (flag, key) in [("tls-cert", "tls.crt"), ("tls-key", "tls.key")] {
        let Some((vol, file)) = source(p, flag) else {
            continue;
        };
        let secret = &vol["secret"];
        p.check(secret.is_object(), || {
            format!("{label}: --{flag}: volume {} is not a Secret", vol["name"])
        });
        tls_secret = secret["secretName"].as_str().map(String::from);
        p.check(key_for(secret, &file).as_deref() == Some(key), || {
            format!("{label}: --{flag}: file {file} is not the Secret's key {key}")
        });
    }
    if let Some(name) = &tls_secret {
        // The Secret comes from `kura certs` or cert-manager: both must name the same one.
        p.check(certs_secret_name() == *name, || {
            format!(
                "{label}: the TLS volume mounts Secret {name}; `kura certs` writes {}",
                certs_secret_name()
            )
        });
        let cert = yaml_docs(&root().join("deploy/overlays/cert-manager/certificates.yaml"));
        let cert = find(&cert, "Certificate", "kura");
        p.check(cert["spec"]["secretName"] == name.as_str(), || {
            format!(
                "{label}: cert-manager's Certificate kura writes {}, the Deployment mounts {name}",
                cert["spec"]["secretName"]
            )
        });
    }
    let Some((vol, file)) = source(p, "policy") else {
        return;
    };
    let cm = &vol["configMap"];
    let Some(cm_name) = cm["name"].as_str() else {
        p.0.push(format!(
            "{label}: --policy: volume {} is not a ConfigMap",
            vol["name"]
        ));
        return;
    };
    let Some(key) = key_for(cm, &file) else {
        p.0.push(format!(
            "{label}: --policy: the ConfigMap volume's items do not provide {file}"
        ));
        return;
    };
    let text = find(docs, "ConfigMap", cm_name)["data"][&key].as_str();
    p.check(text.is_some(), || {
        format!("{label}: ConfigMap {cm_name} has no key {key}")
    });
}

/// `kura certs --out-dir` with every other flag at its default, run for real in a temp dir.
fn kura_certs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    common::kura_certs(dir.path());
    dir
}

/// The Secret name `kura certs` writes into secret.yaml.
fn certs_secret_name() -> String {
    let dir = kura_certs();
    let secret = &yaml_docs(&dir.path().join("secret.yaml"))[0];
    secret["metadata"]["name"].as_str().unwrap().to_string()
}

/// `kura certs` with its defaults writes what the kura-certs overlay applies: a
/// kubernetes.io/tls Secret in the Service's namespace, its data the files beside it, and
/// ca-bundle.txt one base64 line of ca.crt (pasted into caBundle verbatim).
#[test]
fn kura_certs_defaults_fit_the_install() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let docs = &installs()[0].1;
    let svc = find(docs, "Service", "kura");
    let dir = kura_certs();
    let certs = Cli::command();
    let certs = certs.find_subcommand("certs").unwrap();
    let default = |long: &str| {
        certs
            .get_arguments()
            .find(|a| a.get_long() == Some(long))
            .and_then(|a| a.get_default_values().first().cloned())
            .unwrap_or_else(|| panic!("kura certs --{long} has a default"))
            .to_string_lossy()
            .into_owned()
    };
    assert_eq!(
        svc["metadata"]["name"],
        default("service").as_str(),
        "kura certs --service"
    );
    assert_eq!(
        svc["metadata"]["namespace"],
        default("namespace").as_str(),
        "kura certs --namespace"
    );
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
    let bundle = read("ca-bundle.txt");
    assert!(
        !bundle.contains('\n') && bundle == bundle.trim(),
        "ca-bundle.txt is one line"
    );
    assert_eq!(
        String::from_utf8(b64.decode(&bundle).unwrap()).unwrap(),
        read("ca.crt")
    );
    let secrets = yaml_docs(&dir.path().join("secret.yaml"));
    assert_eq!(secrets.len(), 1, "secret.yaml holds one document");
    let s = &secrets[0];
    assert_eq!(s["kind"], "Secret");
    assert_eq!(s["type"], "kubernetes.io/tls");
    assert_eq!(s["metadata"]["namespace"], svc["metadata"]["namespace"]);
    // ca.crt too: the version service hands it to agents (--version-service-ca).
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        let data = b64.decode(s["data"][key].as_str().unwrap()).unwrap();
        assert_eq!(
            String::from_utf8(data).unwrap(),
            read(key),
            "secret.yaml {key}"
        );
    }
}

/// The policy ConfigMap is a policy kura loads (the parser is the schema), and its store
/// timeout leaves room under every webhook's timeout.
#[test]
fn policy_configmap_is_a_policy_kura_loads() {
    let docs = &installs()[0].1;
    let text = find(docs, "ConfigMap", "kura-policy")["data"]["policy.yaml"]
        .as_str()
        .expect("the ConfigMap holds policy.yaml");
    let policy = Policy::from_yaml(text, "deploy/base/policy-configmap.yaml").unwrap();
    for kind in [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ] {
        for hook in find(docs, kind, "kura")["webhooks"].as_array().unwrap() {
            let timeout = hook["timeoutSeconds"].as_u64().unwrap();
            assert!(
                policy.store_timeout < std::time::Duration::from_secs(timeout),
                "{kind}: storeTimeout {:?} is not under the webhook's {timeout}s",
                policy.store_timeout
            );
        }
    }
    // Namespace-scoped patterns: a pattern without {namespace} would be shared by every namespace.
    for pattern in policy.scope.names.iter().chain(&policy.scope.arns) {
        assert!(
            pattern.contains("{namespace}"),
            "scope pattern {pattern} lacks {{namespace}}"
        );
    }
}

/// The webhooks call the routes kura serves through the Service of this install, cover the
/// kinds kura judges, and skip what kura must never judge.
#[test]
fn webhooks_reach_kura_and_cover_what_it_judges() {
    let mut p = Problems::default();
    let workloads: BTreeSet<(String, String)> = kura::workload::WORKLOAD_KINDS
        .iter()
        .map(|(kind, _)| {
            let group = if matches!(*kind, "Job" | "CronJob") {
                "batch"
            } else {
                "apps"
            };
            (group.to_string(), format!("{}s", kind.to_lowercase()))
        })
        .collect();
    for (label, docs, component) in installs() {
        let svc = find(&docs, "Service", "kura");
        let ns = kura(&docs).namespace;
        for (kind, name, path) in [
            ("MutatingWebhookConfiguration", "mutate.kura.dev", "/mutate"),
            (
                "ValidatingWebhookConfiguration",
                "validate.kura.dev",
                "/validate",
            ),
        ] {
            let hooks = find(&docs, kind, "kura")["webhooks"].as_array().unwrap();
            p.check(hooks.len() == 1 && hooks[0]["name"] == name, || {
                format!("{label}: {kind} must hold only {name}")
            });
            let hook = &hooks[0];
            let w = format!("{label} {kind}");
            let cc = &hook["clientConfig"];
            p.check(cc["url"].is_null(), || {
                format!("{w}: clientConfig.url bypasses the Service")
            });
            // cert-manager's cainjector or the kura-certs overlay fills caBundle in; a
            // hand-set one would be overwritten or go stale.
            p.check(cc["caBundle"].is_null(), || {
                format!("{w}: caBundle is set in the sources")
            });
            let sref = &cc["service"];
            p.check(
                sref["name"] == svc["metadata"]["name"] && sref["namespace"] == svc["metadata"]["namespace"] && sref["path"] == path,
                || format!("{w}: clientConfig.service must be the Service kura, path {path}; got {sref}"),
            );
            let port = sref["port"].as_u64().unwrap_or(443);
            let https = svc["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .find(|sp| sp["name"] == "https");
            p.check(https.is_some_and(|sp| sp["port"] == port), || {
                format!("{w}: port {port} is not the Service's https port")
            });
            p.check(hook["admissionReviewVersions"] == json!(["v1"]), || {
                format!("{w}: admissionReviewVersions must be [v1]")
            });
            p.check(hook["sideEffects"] == "None", || {
                format!("{w}: sideEffects must be None")
            });
            p.check(hook["timeoutSeconds"] == 5, || {
                format!("{w}: timeoutSeconds must be 5")
            });
            let mutating = kind.starts_with("Mutating");
            let want_failure = match (mutating, component.as_deref()) {
                (true, _) => "Ignore",
                (false, Some("failure-policy-ignore")) => "Ignore",
                (false, _) => "Fail",
            };
            p.check(hook["failurePolicy"] == want_failure, || {
                format!(
                    "{w}: failurePolicy {}, expected {want_failure}",
                    hook["failurePolicy"]
                )
            });
            if mutating {
                p.check(hook["reinvocationPolicy"] == "IfNeeded", || {
                    format!("{w}: reinvocationPolicy must be IfNeeded")
                });
            }
            let mut covered: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
            for rule in hook["rules"].as_array().into_iter().flatten() {
                for g in strings(&rule["apiGroups"]) {
                    for r in strings(&rule["resources"]) {
                        covered
                            .entry((g.clone(), r))
                            .or_default()
                            .extend(strings(&rule["operations"]));
                    }
                }
            }
            let ops = |o: &[&str]| o.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
            let mut want =
                BTreeMap::from([((String::new(), "pods".to_string()), ops(&["CREATE"]))]);
            if !mutating {
                want.insert((String::new(), "pods".into()), ops(&["CREATE", "UPDATE"]));
                for w in &workloads {
                    want.insert(w.clone(), ops(&["CREATE", "UPDATE"]));
                }
                // The GitOps resources kura judges on /validate, when the component asks.
                if component.as_deref() == Some("gitops-resources") {
                    for (group, resource, _) in kura::policy::gitops::ADMISSION_RESOURCES {
                        want.insert(
                            (group.to_string(), resource.to_string()),
                            ops(&["CREATE", "UPDATE"]),
                        );
                    }
                }
            }
            p.check(covered == want, || {
                format!("{w}: rules cover {covered:?}, expected {want:?}")
            });
            let exprs = hook["namespaceSelector"]["matchExpressions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let excluded: BTreeSet<String> = exprs
                .iter()
                .filter(|e| e["key"] == "kubernetes.io/metadata.name" && e["operator"] == "NotIn")
                .flat_map(|e| strings(&e["values"]))
                .collect();
            for n in ["kube-system", "kube-public", "kube-node-lease", ns.as_str()] {
                p.check(excluded.contains(n), || {
                    format!("{w}: namespaceSelector must exclude {n}")
                });
            }
            let has = |key: &str, op: &str| {
                exprs.iter().any(|e| {
                    e["key"] == key && e["operator"] == op && e["values"] == json!(["true"])
                })
            };
            p.check(has("kura.dev/ignore", "NotIn"), || {
                format!("{w}: namespaceSelector must exclude kura.dev/ignore=true")
            });
            let canary = component.as_deref() == Some("canary-namespaces");
            p.check(has("kura.dev/canary", "In") == canary, || {
                format!("{w}: kura.dev/canary opt-in should be {canary}")
            });
            p.check(
                hook["matchConditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| {
                        c["expression"]
                            .as_str()
                            .unwrap_or("")
                            .contains("kubernetes.io/config.mirror")
                    }),
                || format!("{w}: no matchCondition skipping mirror pods"),
            );
        }
        p.check(
            component.is_none()
                || matches!(
                    component.as_deref(),
                    Some(
                        "legacy-sidecar"
                            | "failure-policy-ignore"
                            | "canary-namespaces"
                            | "gitops-resources"
                            // Adds Prometheus Operator objects only: monitoring_* below.
                            | "monitoring"
                            // Leaves the webhooks alone: version_service_component_fits_the_install.
                            | "version-service"
                    )
                ),
            || format!("{label}: a component this test has no expectation for"),
        );
    }
    p.assert_none();
}

/// One install is complete and holds together: namespaces, selectors, replicas, the security
/// context (the uid is the images' USER), probes on the https port, RBAC, PDB, NetworkPolicy.
#[test]
fn the_install_holds_together() {
    let mut p = Problems::default();
    let uid: u64 = dockerfile_user("docker/kura.Dockerfile");
    let docs = &installs()[0].1;
    let k = kura(docs);
    let ns = k.namespace.as_str();
    let cluster_scoped = [
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ];
    for d in docs {
        let id = format!("{}/{}", d["kind"], d["metadata"]["name"]);
        if cluster_scoped.contains(&d["kind"].as_str().unwrap()) {
            p.check(d["metadata"]["namespace"].is_null(), || {
                format!("{id}: cluster-scoped kind with a namespace")
            });
        } else {
            p.check(d["metadata"]["namespace"] == ns, || {
                format!("{id}: expected namespace {ns}")
            });
        }
    }
    let namespace = find(docs, "Namespace", ns);
    p.check(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted",
        || "the namespace must enforce the restricted pod security level".into(),
    );
    let spec = &k.deployment["spec"];
    let labels = &spec["template"]["metadata"]["labels"];
    p.check(selects(&spec["selector"]["matchLabels"], labels), || {
        "Deployment selector does not match its pods".into()
    });
    p.check(spec["replicas"].as_u64().unwrap_or(1) >= 2, || {
        "Deployment needs 2+ replicas: the validating webhook fails closed".into()
    });
    p.check(
        k.pod["topologySpreadConstraints"]
            .as_array()
            .is_some_and(|a| !a.is_empty()),
        || "no topologySpreadConstraints".into(),
    );
    p.check(
        k.pod["serviceAccountName"] == "kura"
            && find(docs, "ServiceAccount", "kura")["metadata"]["namespace"] == ns,
        || "serviceAccountName must be the ServiceAccount kura".into(),
    );
    let psc = &k.pod["securityContext"];
    p.check(
        psc["runAsNonRoot"] == true && psc["runAsUser"] == uid,
        || format!("pod securityContext must run as non-root uid {uid}"),
    );
    let csc = &k.container["securityContext"];
    for (key, want) in [
        ("readOnlyRootFilesystem", true),
        ("allowPrivilegeEscalation", false),
        ("runAsNonRoot", true),
    ] {
        p.check(csc[key] == want, || {
            format!("container securityContext.{key} must be {want}")
        });
    }
    p.check(csc["capabilities"]["drop"] == json!(["ALL"]), || {
        "container capabilities must drop ALL".into()
    });
    let run_as = if csc["runAsUser"].is_null() {
        &psc["runAsUser"]
    } else {
        &csc["runAsUser"]
    };
    p.check(*run_as == uid, || {
        format!("container must run as uid {uid} (the image's USER)")
    });
    // Probe paths: tests/server.rs asserts that kura serves them on the admission port.
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &k.container[probe]["httpGet"];
        p.check(
            get["path"] == path && get["scheme"] == "HTTPS" && get["port"] == "https",
            || format!("{probe} must be HTTPS GET {path} on the https port; got {get}"),
        );
    }
    for kind in ["Service", "PodDisruptionBudget", "NetworkPolicy"] {
        let d = find(docs, kind, "kura");
        let sel = match kind {
            "Service" => &d["spec"]["selector"],
            "NetworkPolicy" => &d["spec"]["podSelector"]["matchLabels"],
            _ => &d["spec"]["selector"]["matchLabels"],
        };
        p.check(selects(sel, labels), || {
            format!("{kind} does not select the Deployment's pods")
        });
    }
    p.check(
        find(docs, "PodDisruptionBudget", "kura")["spec"]["minAvailable"] == 1,
        || "PodDisruptionBudget must keep minAvailable: 1".into(),
    );
    let ports: BTreeMap<String, Value> = k.container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["containerPort"].clone(),
            )
        })
        .collect();
    let rules = find(docs, "NetworkPolicy", "kura")["spec"]["ingress"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let admits = |name: &str, open: bool| {
        rules.iter().any(|r| {
            (!open || r["from"].is_null())
                && r["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|rp| rp["port"] == ports[name] || rp["port"] == name)
        })
    };
    p.check(admits("https", true), || "NetworkPolicy must admit the https port from any source (the EKS API server is not selectable)".into());
    p.check(admits("metrics", false), || {
        "NetworkPolicy admits nothing on the metrics port".into()
    });
    let roles: Vec<String> = kind_of(docs, "ClusterRole")
        .into_iter()
        .chain(kind_of(docs, "Role"))
        .map(|r| format!("{}/{}", r["kind"], r["metadata"]["name"]))
        .collect();
    p.check(roles == ["\"ClusterRole\"/\"kura\""], || {
        format!("expected only ClusterRole/kura, found {roles:?}")
    });
    p.check(find(docs, "ClusterRole", "kura")["rules"] == json!([{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]}]), || "ClusterRole/kura must grant exactly get/list/watch on namespaces".into());
    let binding = find(docs, "ClusterRoleBinding", "kura");
    p.check(binding["roleRef"] == json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kura"}), || "ClusterRoleBinding/kura must bind ClusterRole/kura".into());
    p.check(
        binding["subjects"] == json!([{"kind": "ServiceAccount", "name": "kura", "namespace": ns}]),
        || "ClusterRoleBinding/kura must bind only the ServiceAccount kura".into(),
    );
    p.check(kind_of(docs, "RoleBinding").is_empty(), || {
        "unexpected RoleBindings".into()
    });
    p.assert_none();
}

/// cert-manager's overlay: the webhooks' CA comes from the Certificate that writes the
/// Deployment's TLS Secret, for the DNS name the API server dials, through an Issuer chain
/// that ends in a self-signed Issuer of this install.
#[test]
fn cert_manager_overlay_issues_the_serving_certificate() {
    let dir = root().join("deploy/overlays/cert-manager");
    let certs = yaml_docs(&dir.join("certificates.yaml"));
    let docs = &installs()[0].1;
    let svc = find(docs, "Service", "kura");
    let dns = format!(
        "{}.{}.svc",
        svc["metadata"]["name"].as_str().unwrap(),
        svc["metadata"]["namespace"].as_str().unwrap()
    );
    let k = yaml_docs(&dir.join("kustomization.yaml"));
    for patch in k[0]["patches"].as_array().unwrap() {
        let doc: Value = serde_yaml_ng::from_str(patch["patch"].as_str().unwrap()).unwrap();
        let reference = doc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
            .as_str()
            .expect("inject-ca-from");
        let (ns, name) = reference.split_once('/').unwrap();
        let cert = find(&certs, "Certificate", name);
        assert_eq!(cert["metadata"]["namespace"], ns, "{reference}");
        assert!(
            strings(&cert["spec"]["dnsNames"]).contains(&dns),
            "Certificate {name} lacks {dns}"
        );
        let mut current = cert;
        let mut seen = BTreeSet::new();
        loop {
            let issuer = current["spec"]["issuerRef"]["name"].as_str().unwrap();
            assert!(seen.insert(issuer.to_string()), "Issuer loop at {issuer}");
            let issuer = find(&certs, "Issuer", issuer);
            if issuer["spec"]["selfSigned"].is_object() {
                break;
            }
            let ca_secret = &issuer["spec"]["ca"]["secretName"];
            current = certs
                .iter()
                .find(|d| {
                    d["kind"] == "Certificate"
                        && d["spec"]["secretName"] == *ca_secret
                        && d["spec"]["isCA"] == true
                })
                .unwrap_or_else(|| panic!("no isCA Certificate writes {ca_secret}"));
        }
    }
}

fn dockerfile_user(path: &str) -> u64 {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    let user = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER");
    user.split(':').next().unwrap().trim().parse().unwrap()
}

/// The Dockerfiles build this workspace's binaries with the toolchain rust-toolchain.toml pins,
/// in release (the agent in the `agent` profile: release, optimized for size) and `--locked`,
/// on the Debian release of their distroless/cc runtime (glibc binaries run on the C library
/// they were linked against), into a shell-less non-root runtime whose entrypoint is the binary
/// and whose default command is one of its subcommands. The container tests
/// (tests/containers.rs) build and run what these final stages describe.
#[test]
fn dockerfiles_build_the_workspace_binaries() {
    let toolchain = std::fs::read_to_string(root().join("rust-toolchain.toml")).unwrap();
    let channel = toolchain
        .lines()
        .find_map(|l| l.strip_prefix("channel = "))
        .unwrap()
        .trim_matches('"');
    let minor = channel.rsplitn(2, '.').last().unwrap(); // 1.95.0 -> 1.95
    let mut p = Problems::default();
    for (file, package, binary, cmd, subcommands) in [
        (
            "docker/kura.Dockerfile",
            "kura",
            "kura",
            "serve",
            subcommand_names(Cli::command()),
        ),
        (
            "docker/kura-agent.Dockerfile",
            "kura-agent",
            kura_agent::contract::AGENT_BINARY.trim_start_matches('/'),
            AgentCommand::Run.as_str(),
            vec![AgentCommand::Run.as_str().into()],
        ),
    ] {
        let text = std::fs::read_to_string(root().join(file))
            .unwrap()
            .replace("\\\n", " ");
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let stages: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.starts_with("FROM "))
            .map(|(i, _)| i)
            .collect();
        p.check(stages.len() >= 2, || format!("{file}: must be multi-stage"));
        let builder = lines[stages[0]];
        p.check(
            builder.starts_with(&format!("FROM rust:{minor}-bookworm ")),
            || {
                format!(
                    "{file}: builder {builder}; rust-toolchain.toml pins {channel}, and the \
                     runtime is Debian 12 (bookworm)"
                )
            },
        );
        let last = *stages.last().unwrap();
        let from = lines[last].split_whitespace().nth(1).unwrap();
        p.check(
            from == "gcr.io/distroless/cc-debian12:nonroot"
                || from.starts_with("gcr.io/distroless/cc-debian12:nonroot@sha256:"),
            || {
                format!(
                    "{file}: runtime base {from}; the container tests reproduce \
                     gcr.io/distroless/cc-debian12:nonroot (optionally pinned by digest)"
                )
            },
        );
        let runtime = &lines[last + 1..];
        let instr = |name: &str| {
            runtime
                .iter()
                .rev()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
        };
        p.check(instr("RUN").is_none(), || {
            format!("{file}: RUN in the runtime stage, which has no shell")
        });
        p.check(
            instr("ENTRYPOINT") == Some(&format!("[\"/{binary}\"]")),
            || format!("{file}: ENTRYPOINT must be [\"/{binary}\"]"),
        );
        p.check(instr("CMD") == Some(&format!("[\"{cmd}\"]")), || {
            format!("{file}: CMD must be [\"{cmd}\"]")
        });
        p.check(subcommands.iter().any(|s| s == cmd), || {
            format!("{file}: {binary} has no subcommand {cmd}")
        });
        // The agent is static (it also runs in app containers as `kura-agent exec`), built for
        // the build platform's own target with the `agent` profile; the webhook is an ordinary
        // glibc binary.
        let build = if package == "kura-agent" {
            p.check(
                squeezed_contains(
                    &text,
                    &format!("cp \"target/$host/agent/{binary}\" /{binary}"),
                ),
                || {
                    format!(
                        "{file}: must copy the agent profile's binary, target/$host/agent/{binary}"
                    )
                },
            );
            format!(
                "RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --profile agent --locked -p {package} --bin {binary} --target \"$host\""
            )
        } else {
            format!("cargo build --release --locked -p {package} --bin {binary} ")
        };
        p.check(
            squeezed_contains(&text, &build)
                && (package == "kura-agent" || !text.contains("--target")),
            || format!("{file}: must build `{build}` for the build platform"),
        );
        p.check(
            runtime
                .iter()
                .any(|l| *l == format!("COPY --from=build --chown=0:0 --chmod=0555 /{binary} /{binary}")),
            || format!("{file}: the runtime stage must COPY --from=build --chown=0:0 --chmod=0555 /{binary} /{binary}"),
        );
        p.check(
            instr("USER").is_some_and(|u| {
                u.split(':').next() == Some(&dockerfile_user("docker/kura.Dockerfile").to_string())
            }),
            || format!("{file}: both images run as one uid"),
        );
    }
    // The profile the agent's image is built with is the release profile, smaller.
    let cargo = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let agent_profile = cargo
        .split("\n[")
        .find_map(|section| section.strip_prefix("profile.agent]"));
    p.check(
        agent_profile
            .is_some_and(|body| body.lines().any(|l| l.trim() == "inherits = \"release\"")),
        || "Cargo.toml: [profile.agent] must inherit the release profile".into(),
    );
    p.assert_none();
}

/// `needle` in `text` with every run of whitespace (line continuations included) as one space.
fn squeezed_contains(text: &str, needle: &str) -> bool {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .contains(needle)
}

fn subcommand_names(cmd: clap::Command) -> Vec<String> {
    cmd.get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect()
}

/// Paths the docs (and the comments of the files they describe) name exist.
#[test]
fn paths_the_docs_name_exist() {
    let re = regex::Regex::new(
        r"(^|[^\w./-])((?:deploy|webhook-config|iam|docker|docs|scripts)/[\w./-]*[\w/])(:?)",
    )
    .unwrap();
    let mut files: Vec<PathBuf> = walk(&root().join("docs"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    assert!(!files.is_empty(), "no docs");
    for top in ["webhook-config", "deploy", "docker", "iam"] {
        files.extend(walk(&root().join(top)));
    }
    let mut p = Problems::default();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for line in text.lines() {
            for c in re.captures_iter(line) {
                let reference = c[2].trim_end_matches('/');
                let image = !c[3].is_empty(); // docker/dockerfile:1.7 is an image
                let kubectl_shorthand = reference.starts_with("deploy/")
                    && reference.matches('/').count() == 1
                    && line.contains("kubectl");
                if image || kubectl_shorthand || reference.split('/').any(|s| s == "generated") {
                    continue;
                }
                p.check(root().join(reference).exists(), || {
                    format!(
                        "{}: mentions {reference}, which does not exist",
                        f.display()
                    )
                });
            }
        }
    }
    p.assert_none();
}

/// The IAM policy files grant what the code calls and no more: the webhook
/// `secretsmanager:DescribeSecret` and `ssm:DescribeParameters`, an app role what the agent calls
/// (GetSecretValue per secret, scoped to the namespace; BatchGetSecretValue, which takes no
/// resource; GetParameters under the namespace's path; kms:Decrypt through Secrets Manager or
/// SSM only), and the trust policies bind the right principals.
#[test]
fn iam_policies_grant_what_kura_calls() {
    let placeholders = [
        "REGION",
        "ACCOUNT_ID",
        "CLUSTER_NAME",
        "NAMESPACE",
        "OIDC_PROVIDER",
    ];
    let token = regex::Regex::new(r"\b[A-Z][A-Z_]{2,}[A-Z]\b").unwrap();
    // Upper-case names that are AWS's own, not placeholders: the encryption context key SSM
    // puts on a SecureString.
    let aws_names = ["PARAMETER_ARN"];
    let var = regex::Regex::new(r"\$\{([^}]*)\}").unwrap();
    let mut p = Problems::default();
    let files: Vec<PathBuf> = walk(&root().join("iam"))
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "json"))
        .collect();
    assert!(!files.is_empty(), "no IAM policy files");
    let ns = kura(&installs()[0].1).namespace;
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let statements = doc["Statement"].as_array().cloned().unwrap_or_default();
        p.check(
            doc["Version"] == "2012-10-17" && !statements.is_empty(),
            || format!("{name}: needs Version 2012-10-17 and Statements"),
        );
        for t in token.find_iter(&text) {
            p.check(
                placeholders.contains(&t.as_str()) || aws_names.contains(&t.as_str()),
                || format!("{name}: unknown placeholder {}", t.as_str()),
            );
        }
        for v in var.captures_iter(&text) {
            p.check(v[1].starts_with("aws:PrincipalTag/"), || {
                format!("{name}: unexpected policy variable ${{{}}}", &v[1])
            });
        }
        let sids: Vec<String> = statements.iter().map(|s| s["Sid"].to_string()).collect();
        p.check(
            sids.iter().collect::<BTreeSet<_>>().len() == sids.len(),
            || format!("{name}: duplicate Sid"),
        );
        let actions = |s: &Value| -> Vec<String> {
            match &s["Action"] {
                Value::String(a) => vec![a.clone()],
                other => strings(other),
            }
        };
        let allows: Vec<&Value> = statements
            .iter()
            .filter(|s| s["Effect"] == "Allow")
            .collect();
        for s in &statements {
            p.check(s["Effect"] == "Allow" || s["Effect"] == "Deny", || {
                format!("{name}: Effect must be Allow or Deny")
            });
            for a in actions(s) {
                p.check(!(a.contains('*') && s["Effect"] == "Allow"), || {
                    format!("{name}: wildcard action {a}")
                });
            }
        }
        if name.contains("-trust-") {
            for s in &allows {
                let cond = s["Condition"].to_string();
                let acts: BTreeSet<String> = actions(s).into_iter().collect();
                if name.contains("pod-identity") {
                    p.check(s["Principal"] == json!({"Service": "pods.eks.amazonaws.com"}) && acts == BTreeSet::from(["sts:AssumeRole".into(), "sts:TagSession".into()]), || format!("{name}: Pod Identity trust is pods.eks.amazonaws.com with sts:AssumeRole and sts:TagSession"));
                    p.check(cond.contains("aws:SourceAccount"), || {
                        format!(
                            "{name}: Pod Identity trust without aws:SourceAccount (confused deputy)"
                        )
                    });
                } else {
                    p.check(acts == BTreeSet::from(["sts:AssumeRoleWithWebIdentity".into()]) && cond.contains(":sub") && cond.contains(":aud"), || format!("{name}: IRSA trust is sts:AssumeRoleWithWebIdentity conditioned on :sub and :aud"));
                }
            }
            if name.starts_with("webhook-") {
                p.check(text.contains(&ns), || {
                    format!("{name}: the webhook's trust must name its namespace {ns}")
                });
            }
            continue;
        }
        let granted: BTreeSet<String> = allows.iter().flat_map(|s| actions(s)).collect();
        if name == "webhook-policy-version-service.json" {
            // ListSecrets takes no resource: "*" is the only way to grant it.
            p.check(
                allows.len() == 1
                    && granted == BTreeSet::from(["secretsmanager:ListSecrets".into()])
                    && allows[0]["Resource"] == "*",
                || format!("{name}: the version service needs secretsmanager:ListSecrets on \"*\" only; grants {granted:?}"),
            );
            continue;
        }
        if name.starts_with("webhook-") {
            p.check(granted == BTreeSet::from(["secretsmanager:DescribeSecret".into(), "ssm:DescribeParameters".into()]), || format!("{name}: the webhook needs secretsmanager:DescribeSecret and ssm:DescribeParameters only; grants {granted:?}"));
            continue;
        }
        let want: BTreeSet<String> = [
            "secretsmanager:GetSecretValue",
            "secretsmanager:BatchGetSecretValue",
            "ssm:GetParameters",
            "kms:Decrypt",
        ]
        .map(String::from)
        .into();
        p.check(granted == want, || {
            format!("{name}: an app role grants {granted:?}, expected {want:?}")
        });
        for s in &allows {
            let acts = actions(s);
            let cond = s["Condition"].to_string();
            if acts.iter().any(|a| a == "secretsmanager:GetSecretValue") {
                let scoped = s["Resource"].to_string().contains("/NAMESPACE/")
                    || (cond.contains("secretsmanager:ResourceTag/kubernetes-namespace")
                        && cond.contains("${aws:PrincipalTag/kubernetes-namespace}"));
                p.check(scoped, || {
                    format!(
                        "{name}: GetSecretValue is not scoped to the namespace (name prefix or tag)"
                    )
                });
                if name.contains("abac") {
                    p.check(
                        cond.contains("${aws:PrincipalTag/eks-cluster-name}"),
                        || format!("{name}: ABAC GetSecretValue is not scoped to the cluster"),
                    );
                }
            }
            if acts.iter().any(|a| a == "ssm:GetParameters") {
                let resource = s["Resource"].to_string();
                p.check(
                    resource.contains("parameter/NAMESPACE/")
                        || resource.contains("parameter/${aws:PrincipalTag/kubernetes-namespace}/"),
                    || format!("{name}: GetParameters is not scoped to the namespace's path"),
                );
            }
            if acts
                .iter()
                .any(|a| a == "secretsmanager:BatchGetSecretValue")
            {
                p.check(s["Resource"] == "*", || {
                    format!("{name}: BatchGetSecretValue takes no resource: it must be on \"*\"")
                });
            }
            if acts.iter().any(|a| a == "kms:Decrypt") {
                p.check(cond.contains("kms:ViaService"), || {
                    format!("{name}: kms:Decrypt without kms:ViaService")
                });
            }
        }
    }
    p.assert_none();
}

/// The flags of the version service (contract §8): off in every install but the one with
/// its component.
const VERSION_SERVICE_FLAGS: [&str; 3] = [
    "version-service-listen",
    "version-service-url",
    "version-service-ca",
];

/// `deploy/components/version-service` turns the service on and holds together: the listener's
/// port is the container port, the Service port and the one NetworkPolicy rule it adds (from
/// the namespaces the mutating webhook injects into, pods only); the URL agents get is that
/// Service's `<name>.<namespace>.svc` on that port, a name both certificate sources issue; the
/// CA is the TLS Secret's `ca.crt` through the same whole-directory mount; RBAC gains exactly
/// `create` on `tokenreviews`. Without the component none of it is there.
#[test]
fn version_service_component_fits_the_install() {
    let mut p = Problems::default();
    let all = installs();
    let base = &all[0].1;
    let base_rules = find(base, "ClusterRole", "kura")["rules"].clone();
    let base_ingress = find(base, "NetworkPolicy", "kura")["spec"]["ingress"].clone();
    let base_ports = find(base, "Service", "kura")["spec"]["ports"].clone();
    let mut seen = false;
    for (label, docs, component) in &all {
        let k = kura(docs);
        let serve = parse_serve(&args_of(k.container)).unwrap();
        let on = component.as_deref() == Some("version-service");
        seen |= on;
        let rules = &find(docs, "ClusterRole", "kura")["rules"];
        let ingress = &find(docs, "NetworkPolicy", "kura")["spec"]["ingress"];
        let svc = find(docs, "Service", "kura");
        if !on {
            for flag in VERSION_SERVICE_FLAGS {
                p.check(!serve.given.contains(flag), || {
                    format!(
                        "{label}: --{flag} is set; the service is off unless its component is in"
                    )
                });
            }
            p.check(*rules == base_rules, || {
                format!("{label}: ClusterRole kura changed")
            });
            p.check(*ingress == base_ingress, || {
                format!("{label}: NetworkPolicy kura changed")
            });
            p.check(svc["spec"]["ports"] == base_ports, || {
                format!("{label}: Service ports changed")
            });
            continue;
        }
        for flag in VERSION_SERVICE_FLAGS {
            p.check(serve.given.contains(flag), || {
                format!("{label}: --{flag} is not set")
            });
        }
        // RBAC: the base's rules, then exactly create on tokenreviews.
        let mut want = base_rules.as_array().unwrap().clone();
        want.push(json!({"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}));
        p.check(*rules == Value::Array(want), || {
            format!(
                "{label}: ClusterRole kura must add exactly create on tokenreviews; has {rules}"
            )
        });

        // The listener, the container port and the Service port.
        let listen = serve
            .values
            .get("version-service-listen")
            .and_then(|a| port_of(a));
        let container_port = k.container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|cp| cp["name"] == "versions");
        p.check(
            listen.is_some() && container_port.is_some_and(|cp| cp["containerPort"].as_u64() == listen.map(u64::from)),
            || format!("{label}: --version-service-listen port {listen:?}, container port `versions` {container_port:?}"),
        );
        let service_port = svc["spec"]["ports"].as_array().unwrap().iter().find(|sp| {
            sp["targetPort"] == "versions" || sp["targetPort"].as_u64() == listen.map(u64::from)
        });
        p.check(service_port.is_some(), || {
            format!("{label}: the Service has no port to `versions`")
        });
        let mut base_then_one = base_ports.as_array().unwrap().clone();
        base_then_one.extend(service_port.cloned());
        p.check(svc["spec"]["ports"] == Value::Array(base_then_one), || {
            format!("{label}: the Service must keep its ports and add one")
        });

        // The URL agents get: https://<service>.<namespace>.svc:<service port>.
        let url = serve
            .values
            .get("version-service-url")
            .cloned()
            .unwrap_or_default();
        let host = format!(
            "{}.{}.svc",
            svc["metadata"]["name"].as_str().unwrap(),
            svc["metadata"]["namespace"].as_str().unwrap()
        );
        let want_url = format!(
            "https://{host}:{}",
            service_port.map_or(Value::Null, |sp| sp["port"].clone())
        );
        p.check(url == want_url, || {
            format!("{label}: --version-service-url {url}, expected {want_url}")
        });
        // Both certificate sources issue that name: cert-manager's Certificate and `kura certs`
        // (whose names are tls::service_names of its defaults, checked to be this Service).
        let certs = yaml_docs(&root().join("deploy/overlays/cert-manager/certificates.yaml"));
        let cert = find(&certs, "Certificate", "kura");
        p.check(strings(&cert["spec"]["dnsNames"]).contains(&host), || {
            format!("{label}: cert-manager's Certificate kura lacks {host}")
        });
        p.check(
            kura::tls::service_names("kura", &k.namespace).contains(&host),
            || format!("{label}: `kura certs` does not issue {host}"),
        );
        // cert-manager writes ca.crt into the Secret only for a CA (or self-signed) Issuer.
        let issuer = find(
            &certs,
            "Issuer",
            cert["spec"]["issuerRef"]["name"].as_str().unwrap(),
        );
        p.check(issuer["spec"]["ca"].is_object(), || {
            format!("{label}: the serving certificate's Issuer is not a CA Issuer, so kura-tls may lack ca.crt")
        });

        // The CA file: the TLS Secret's ca.crt, through the mount --tls-cert uses.
        let ca = serve
            .values
            .get("version-service-ca")
            .cloned()
            .unwrap_or_default();
        let cert_path = &serve.values["tls-cert"];
        let dir = |path: &str| {
            path.rsplit_once('/')
                .map(|(d, f)| (d.to_string(), f.to_string()))
        };
        let (ca_dir, ca_file) = dir(&ca).unwrap_or_default();
        p.check(dir(cert_path).map(|d| d.0) == Some(ca_dir), || {
            format!("{label}: --version-service-ca {ca} is not beside --tls-cert {cert_path}")
        });
        let tls = k.pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "tls")
            .unwrap();
        p.check(
            tls["secret"]["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["key"] == "ca.crt" && i["path"] == ca_file.as_str()),
            || format!("{label}: the TLS volume does not put the Secret's ca.crt at {ca_file}"),
        );

        // NetworkPolicy: the base's rules, then one rule for that port from the injected
        // namespaces' pods (never open to every source like 8443).
        let mut ingress_rules = base_ingress.as_array().unwrap().clone();
        let added = ingress
            .as_array()
            .unwrap()
            .get(ingress_rules.len())
            .cloned();
        ingress_rules.extend(added.clone());
        p.check(*ingress == Value::Array(ingress_rules), || {
            format!("{label}: NetworkPolicy kura must keep its rules and add one")
        });
        let added = added.unwrap_or_default();
        p.check(
            added["ports"] == json!([{"port": listen, "protocol": "TCP"}]),
            || {
                format!(
                    "{label}: the added NetworkPolicy rule admits {}, not port {listen:?}",
                    added["ports"]
                )
            },
        );
        let selector =
            &find(docs, "MutatingWebhookConfiguration", "kura")["webhooks"][0]["namespaceSelector"];
        p.check(
            added["from"] == json!([{"namespaceSelector": selector}]),
            || format!("{label}: the added rule must admit the mutating webhook's namespaces ({selector}), got {}", added["from"]),
        );
    }
    p.check(seen, || "no deploy/components/version-service".into());
    p.assert_none();
}

/// Series that kura does not export yet but the monitoring component already watches: the
/// version service's fleet view (issue 17, contract §8), by name and labels. Once the code
/// exports one, its labels must be these.
const PLANNED_SERIES: &[(&str, &[&str])] = &[
    ("kura_fleet_agents", &["namespace"]),
    ("kura_fleet_agents_failing", &["namespace", "error_kind"]),
    ("kura_fleet_agents_stale", &["namespace"]),
    ("kura_version_service_requests_total", &["outcome"]),
];

/// Series other software exports, which the rules and the dashboard use: Prometheus's own
/// `up` for the scrape target, and cert-manager's certificate expiry (the cert-manager
/// overlay; kura exports no expiry of the certificate it serves).
const OTHER_SERIES: &[&str] = &["up", "certmanager_certificate_expiration_timestamp_seconds"];

/// Labels Prometheus adds to every series it scrapes through the ServiceMonitor. `namespace`
/// is not among them for kura's series: with honorLabels kura's own `namespace` label wins,
/// and on a series without one it is always kura-system, so a selector on it is a mistake.
const TARGET_LABELS: &[&str] = &["job", "instance", "pod", "service", "endpoint", "container"];

/// Every series the webhook exports, with its labels: the text exposition of
/// `kura::telemetry::Metrics` after one observation in each labelled family.
fn exported_series() -> BTreeMap<String, BTreeSet<String>> {
    use kura::telemetry::{
        EndpointLabels, Metrics, NamespaceLabels, RequestLabels, ResultLabels, RuleLabels,
    };
    let m = Metrics::default();
    let endpoint = || "mutate".to_string();
    m.requests
        .get_or_create(&RequestLabels {
            endpoint: endpoint(),
            decision: "injected".into(),
        })
        .inc();
    m.latency
        .get_or_create(&EndpointLabels {
            endpoint: endpoint(),
        })
        .observe(0.01);
    m.rules
        .get_or_create(&RuleLabels {
            rule: "KURA001".into(),
            decision: "denied".into(),
        })
        .inc();
    m.injections
        .get_or_create(&NamespaceLabels {
            namespace: "demo".into(),
        })
        .inc();
    m.reloads
        .get_or_create(&ResultLabels {
            result: "cert-ok".into(),
        })
        .inc();
    let text = m.encode();
    let mut series: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut families = BTreeSet::new();
    let label = regex::Regex::new(r#"(\w+)="#).unwrap();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families.insert(rest.split(' ').next().unwrap().to_string());
        } else if !line.starts_with('#') && !line.is_empty() {
            let name_end = line.find(['{', ' ']).unwrap();
            let labels = series.entry(line[..name_end].to_string()).or_default();
            if line[name_end..].starts_with('{') {
                let inner = &line[name_end + 1..line.rfind('}').unwrap()];
                labels.extend(label.captures_iter(inner).map(|c| c[1].to_string()));
            }
        }
    }
    for f in families {
        assert!(
            series.keys().any(|s| s.starts_with(&f)),
            "metric family {f} has no sample: observe it in exported_series() so the \
             monitoring checks know its labels"
        );
    }
    series
}

/// The series a PromQL expression selects, each with the label names its matchers use. Not
/// a PromQL parser: it skips strings, ranges and the label lists of `by`, `without`, `on`,
/// `ignoring`, `group_left` and `group_right`, takes a name followed by `(`, `by` or
/// `without` for a function or an aggregation, and a bare `{__name__=~"a|b"}` for the series
/// it lists.
fn selected_series(expr: &str) -> Vec<(String, BTreeSet<String>)> {
    let token = regex::Regex::new(
        r#""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|\[[^\]]*\]|\{[^}]*\}|\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[a-zA-Z]*|[a-zA-Z_:][a-zA-Z0-9_:]*|\S"#,
    )
    .unwrap();
    let matcher = regex::Regex::new(r#"(\w+)\s*(?:=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)""#).unwrap();
    let grouping = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let keywords = ["and", "or", "unless", "offset", "bool", "inf", "nan"];
    let tokens: Vec<&str> = token.find_iter(expr).map(|m| m.as_str()).collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i];
        let next = tokens.get(i + 1).copied().unwrap_or("");
        let ident = t.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == ':');
        if ident && grouping.contains(&t) {
            // Skip the label list in parentheses.
            i += 1;
            if tokens.get(i) == Some(&"(") {
                while i < tokens.len() && tokens[i] != ")" {
                    i += 1;
                }
            }
        } else if ident
            && !keywords.contains(&t)
            && next != "("
            && next != "by"
            && next != "without"
        {
            // (`sum by (x) (...)`: an aggregation, like a function.)
            let mut labels = BTreeSet::new();
            if next.starts_with('{') {
                labels.extend(matcher.captures_iter(next).map(|c| c[1].to_string()));
                i += 1;
            }
            out.push((t.to_string(), labels));
        } else if t.starts_with('{') {
            let mut labels = BTreeSet::new();
            let mut names = Vec::new();
            for c in matcher.captures_iter(t) {
                if &c[1] == "__name__" {
                    names.extend(c[2].split('|').map(str::to_string));
                } else {
                    labels.insert(c[1].to_string());
                }
            }
            assert!(
                !names.is_empty(),
                "{expr}: a selector without a metric name"
            );
            out.extend(names.into_iter().map(|n| (n, labels.clone())));
        }
        i += 1;
    }
    out
}

#[test]
fn selected_series_finds_names_and_matchers() {
    let got = selected_series(
        r#"sum by (rule, le) (rate(kura_rule_hits_total{decision="denied", rule=~"K.*"}[5m] offset 1h)) > 3 * (up or vector(0)) and on (pod) {__name__=~"a_b|c", namespace!="x"}"#,
    );
    let want: Vec<(String, BTreeSet<String>)> = vec![
        (
            "kura_rule_hits_total".into(),
            ["decision", "rule"].map(String::from).into(),
        ),
        ("up".into(), BTreeSet::new()),
        ("a_b".into(), ["namespace".to_string()].into()),
        ("c".into(), ["namespace".to_string()].into()),
    ];
    assert_eq!(got, want);
}

/// Every PromQL query of the monitoring component's rules and of the Grafana dashboards:
/// (where, expression).
fn monitoring_queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let dir = root().join("deploy/components/monitoring");
    for doc in resources(&dir) {
        for g in doc["spec"]["groups"].as_array().into_iter().flatten() {
            for r in g["rules"].as_array().unwrap() {
                let name = r["alert"].as_str().or(r["record"].as_str()).unwrap();
                out.push((
                    format!("{}: {name}", dir.display()),
                    r["expr"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    assert!(!out.is_empty(), "no rules in {}", dir.display());
    let dashboards: Vec<PathBuf> = walk(&root().join("deploy/monitoring"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert!(!dashboards.is_empty(), "no dashboard in deploy/monitoring");
    fn panels(v: &Value, out: &mut Vec<Value>) {
        for p in v["panels"].as_array().into_iter().flatten() {
            out.push(p.clone());
            panels(p, out);
        }
    }
    for path in dashboards {
        let text = std::fs::read_to_string(&path).unwrap();
        let d: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
        let mut all = Vec::new();
        panels(&d, &mut all);
        for p in &all {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((format!("{}: {}", path.display(), p["title"]), e.to_string()));
                }
            }
        }
        for v in d["templating"]["list"].as_array().into_iter().flatten() {
            let q = v["query"]["query"].as_str().or(v["query"].as_str());
            if let (Some("query"), Some(q)) = (v["type"].as_str(), q) {
                let q = q.strip_prefix("label_values(").unwrap_or(q);
                let q = q.rsplit_once(',').map_or(q, |(selector, _label)| selector);
                out.push((format!("{}: ${}", path.display(), v["name"]), q.into()));
            }
        }
    }
    out
}

/// The alerts and the dashboard use series kura exports, with labels those series have, or
/// the version service's planned series, or the few other programs' series named above.
#[test]
fn monitoring_uses_series_kura_exports() {
    let exported = exported_series();
    let mut p = Problems::default();
    for (name, labels) in PLANNED_SERIES {
        if let Some(have) = exported.get(*name) {
            let want: BTreeSet<String> = labels.iter().map(|l| l.to_string()).collect();
            p.check(*have == want, || {
                format!("kura exports {name} with labels {have:?}; the monitoring component expects {want:?}")
            });
        }
    }
    for (where_, expr) in monitoring_queries() {
        for (name, labels) in selected_series(&expr) {
            if OTHER_SERIES.contains(&name.as_str()) {
                continue;
            }
            let planned = PLANNED_SERIES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, l)| l.iter().map(|l| l.to_string()).collect::<BTreeSet<_>>());
            let Some(known) = exported.get(&name).cloned().or(planned) else {
                p.check(false, || {
                    format!(
                        "{where_}: {name} is not a series kura exports (nor a planned or other one)"
                    )
                });
                continue;
            };
            for l in labels {
                p.check(
                    known.contains(&l) || TARGET_LABELS.contains(&l.as_str()),
                    || {
                        format!(
                            "{where_}: {name} has no label {l} (it has {known:?} and the target's)"
                        )
                    },
                );
            }
        }
    }
    p.assert_none();
}

/// GitHub's anchor for a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Each alert links a section of docs/runbooks.md that exists and is named after it, and the
/// README's monitoring section names it (links from those sections lead somewhere); the ServiceMonitor scrapes the Service's metrics
/// port; the dashboard takes its data source from a variable.
#[test]
fn monitoring_component_fits_the_install() {
    let mut p = Problems::default();
    let runbooks = std::fs::read_to_string(root().join("docs/runbooks.md")).unwrap();
    let anchors: BTreeSet<String> = runbooks
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|h| anchor(h.trim_start_matches('#')))
        .collect();
    // The alerts' sections send readers on to other sections: those exist.
    let alerts_section = runbooks.split("\n## Alerts\n").nth(1).unwrap_or_default();
    let link = regex::Regex::new(r"\]\(#([^)]+)\)").unwrap();
    for c in link.captures_iter(alerts_section) {
        p.check(anchors.contains(&c[1]), || {
            format!(
                "docs/runbooks.md, Alerts: a link to #{}, which no heading makes",
                &c[1]
            )
        });
    }
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let monitoring = readme
        .split("### Monitoring: alerts and dashboard")
        .nth(1)
        .map(|s| {
            s.split("\n## ")
                .next()
                .unwrap()
                .split("\n### ")
                .next()
                .unwrap()
        })
        .unwrap_or_default();
    p.check(!monitoring.is_empty(), || {
        "README: no section \"### Monitoring: alerts and dashboard\"".into()
    });
    let prefix = format!(
        "{}/blob/main/docs/runbooks.md#",
        env!("CARGO_PKG_REPOSITORY")
    );
    let dir = root().join("deploy/components/monitoring");
    let docs = resources(&dir);
    for rule in kind_of(&docs, "PrometheusRule")
        .into_iter()
        .flat_map(|d| d["spec"]["groups"].as_array().unwrap())
        .flat_map(|g| g["rules"].as_array().unwrap())
    {
        let Some(alert) = rule["alert"].as_str() else {
            continue;
        };
        let url = rule["annotations"]["runbook_url"].as_str().unwrap_or("");
        let want = format!("{prefix}{}", alert.to_lowercase());
        p.check(url == want, || {
            format!("{alert}: runbook_url {url:?}, want {want:?}")
        });
        p.check(anchors.contains(&alert.to_lowercase()), || {
            format!("{alert}: docs/runbooks.md has no section \"### {alert}\"")
        });
        p.check(monitoring.contains(&format!("`{alert}`")), || {
            format!("{alert}: not in the README's monitoring section")
        });
    }

    // The ServiceMonitor scrapes the kura Service's metrics port, where kura serves metrics.
    let base = resources(&root().join("deploy/base"));
    let service = find(&base, "Service", "kura");
    let sm = find(&docs, "ServiceMonitor", "kura");
    p.check(
        selects(
            &sm["spec"]["selector"]["matchLabels"],
            &service["metadata"]["labels"],
        ),
        || "the ServiceMonitor does not select the kura Service".into(),
    );
    p.check(
        strings(&sm["spec"]["namespaceSelector"]["matchNames"]).contains(
            &service["metadata"]["namespace"]
                .as_str()
                .unwrap()
                .to_string(),
        ),
        || "the ServiceMonitor does not look in the kura Service's namespace".into(),
    );
    let ports: Vec<String> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str().map(String::from))
        .collect();
    for ep in sm["spec"]["endpoints"].as_array().unwrap() {
        p.check(
            ep["port"] == "metrics" && ports.contains(&"metrics".to_string()),
            || format!("ServiceMonitor endpoint {ep}: not the Service's metrics port"),
        );
        p.check(ep["honorLabels"] == true, || {
            "ServiceMonitor: without honorLabels, kura's namespace label becomes exported_namespace"
                .into()
        });
    }

    // The dashboard: its data source is a variable every panel and query uses.
    for path in walk(&root().join("deploy/monitoring"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
    {
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let f = path.display();
        let vars = d["templating"]["list"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let ds = vars
            .iter()
            .find(|v| v["type"] == "datasource" && v["query"] == "prometheus");
        p.check(ds.is_some(), || {
            format!("{f}: no Prometheus data source variable")
        });
        let want = format!("${{{}}}", ds.map_or("", |v| v["name"].as_str().unwrap()));
        let mut ids = BTreeSet::new();
        for panel in d["panels"].as_array().unwrap() {
            let title = &panel["title"];
            p.check(ids.insert(panel["id"].as_u64()), || {
                format!("{f}: panel id {} twice", panel["id"])
            });
            let g = &panel["gridPos"];
            p.check(
                g["x"].as_u64().unwrap_or(99) + g["w"].as_u64().unwrap_or(99) <= 24,
                || format!("{f}: panel {title} is wider than the 24-column grid"),
            );
            if panel["type"] == "row" {
                continue;
            }
            p.check(panel["datasource"]["uid"] == want.as_str(), || {
                format!("{f}: panel {title} does not use the data source variable {want}")
            });
            for t in panel["targets"].as_array().into_iter().flatten() {
                p.check(t["datasource"]["uid"] == want.as_str(), || {
                    format!("{f}: a query of panel {title} does not use {want}")
                });
            }
        }
    }
    p.assert_none();
}
