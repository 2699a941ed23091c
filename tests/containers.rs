//! The images users run, built from the Dockerfiles' final stages and run as real OCI
//! containers with podman (testkit::podman; no registry, no Docker engine):
//!
//! - the images agree with `docker/*.Dockerfile`: base contents, binary, user, entrypoint,
//!   command, ports, labels, CA bundle; no shell; the binary runs under a read-only root;
//! - the injected pod, through `/mutate` and the applied patch: the agent with its security
//!   context, memory limit, env and command, the memory volume as a tmpfs of its `sizeLimit`, the
//!   downward-API annotations, beside an app container with its read-only mount, against moto on
//!   the host: files before the app starts, rotation and both reload hooks reaching the app,
//!   SIGTERM, the files' owner and group, and peak memory with 20 secrets;
//! - the webhook container as `deploy/` runs it: its args, probes and security context, TLS
//!   from a Secret-style mounted certificate reloaded on a `..data` swap, draining on SIGTERM.
//!
//! The binaries are `$KURA_IMAGE_BINARIES/{kura,kura-agent}` when set (`scripts/test` builds the
//! release binaries, what ships, and sets it), else this build's. Every test skips, printing
//! why, only when no container can run here at all (`testkit::podman::available`).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use testkit::podman::{self, FinalStage, Image, PodRun};

struct Images {
    kura: Image,
    agent: Image,
    app: Image,
}

/// A line on the test command's output even when the test passes: the numbers the issue asks
/// to see and the reason for a skip. (libtest captures `print!`/`eprint!`, not the stderr
/// handle itself.)
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "containers: {line}");
}

fn binaries_dir() -> PathBuf {
    std::env::var_os("KURA_IMAGE_BINARIES")
        .map(PathBuf::from)
        .unwrap_or_else(|| kura_bin().parent().unwrap().to_path_buf())
}

/// The images, built once per test run; `None` (with the reason printed) where no container
/// runtime works.
fn images() -> Option<&'static Images> {
    static IMAGES: OnceLock<Result<Images, String>> = OnceLock::new();
    let built = IMAGES.get_or_init(|| {
        podman::available()?;
        let dir = binaries_dir();
        say(&format!("binaries from {}", dir.display()));
        let app_bin = kura_bin().parent().unwrap().join("examples/pod_app");
        assert!(
            app_bin.exists(),
            "{} is missing: `cargo test` builds the examples",
            app_bin.display()
        );
        let app_stage = FinalStage {
            base: "scratch".into(),
            instructions: vec![
                "COPY --from=build --chown=0:0 --chmod=0555 /pod_app /pod_app".into(),
                "USER 65532:65532".into(),
                "ENTRYPOINT [\"/pod_app\"]".into(),
            ],
        };
        Ok(Images {
            kura: Image::build("kura", &dir.join("kura")),
            agent: Image::build("kura-agent", &dir.join("kura-agent")),
            app: Image::assemble("kura-pod-app", app_stage, &app_bin),
        })
    });
    match built {
        Ok(images) => Some(images),
        Err(why) => {
            say(&format!("SKIPPED: no container can run here: {why}"));
            None
        }
    }
}

fn json_list(instr: Option<&str>) -> Value {
    instr.map_or(Value::Null, |s| serde_json::from_str(s).unwrap())
}

/// The base the Dockerfiles name, and what the local images put in its place: distroless/cc on
/// Debian 12 brings glibc (libc6) and libgcc (libgcc-s1); the host that assembles the images
/// must be that Debian release, so the libraries are the same package versions' files.
#[test]
fn images_are_the_dockerfiles_final_stage() {
    let Some(images) = images() else { return };
    let os = std::fs::read_to_string("/etc/os-release").unwrap();
    assert!(
        os.lines().any(|l| l == "VERSION_ID=\"12\""),
        "the images are assembled from this machine's Debian 12 libraries (distroless cc-debian12); this is not Debian 12:\n{os}"
    );
    for image in [&images.kura, &images.agent] {
        let stage = &image.stage;
        let tag = &image.tag;
        assert!(
            stage
                .base
                .starts_with("gcr.io/distroless/cc-debian12:nonroot"),
            "{tag}: the Dockerfile's base is {}, the local image reproduces distroless/cc-debian12:nonroot",
            stage.base
        );
        let cfg = &image.inspect()["Config"];
        assert_eq!(cfg["User"], stage.get("USER").unwrap(), "{tag}: user");
        assert_eq!(
            cfg["Entrypoint"],
            json_list(stage.get("ENTRYPOINT")),
            "{tag}: entrypoint"
        );
        assert_eq!(cfg["Cmd"], json_list(stage.get("CMD")), "{tag}: cmd");
        let exposed: Vec<String> = stage
            .get("EXPOSE")
            .map(|e| e.split_whitespace().map(|p| format!("{p}/tcp")).collect())
            .unwrap_or_default();
        let mut got: Vec<String> = cfg["ExposedPorts"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        got.sort();
        assert_eq!(got, exposed, "{tag}: exposed ports");
        let labels = stage.get("LABEL").unwrap();
        for pair in labels.split("\" ") {
            let (k, v) = pair.split_once('=').unwrap();
            assert_eq!(cfg["Labels"][k], v.trim_matches('"'), "{tag}: label {k}");
        }
        let user: Vec<u32> = stage
            .get("USER")
            .unwrap()
            .split(':')
            .map(|n| n.parse().expect("a numeric USER"))
            .collect();
        assert!(
            user.len() == 2 && user.iter().all(|&n| n != 0),
            "{tag}: USER {user:?}"
        );

        let files = image.files();
        let (_, binary) = stage.binary();
        assert_eq!(
            files.get(&binary).map(String::as_str),
            Some("-r-xr-xr-x 0:0"),
            "{tag}: {binary} as COPY --chown=0:0 --chmod=0555 makes it"
        );
        assert!(files.contains_key(podman::CA_BUNDLE), "{tag}: CA bundle");
        for lib in &image.libraries {
            let lib = lib.to_str().unwrap();
            assert!(files.contains_key(lib), "{tag}: {lib}");
            let owner = std::process::Command::new("dpkg")
                .args(["-S", lib])
                .output()
                .unwrap();
            let pkg = String::from_utf8_lossy(&owner.stdout);
            assert!(
                pkg.starts_with("libc6:") || pkg.starts_with("libgcc-s1:"),
                "{tag}: links {lib} ({}), which distroless/cc does not have",
                pkg.trim()
            );
        }
        for shell in ["/bin/sh", "/bin/bash", "/bin/busybox", "/usr/bin/sh"] {
            assert!(!files.contains_key(shell), "{tag}: has {shell}");
        }
        let version = podman::podman(&["run", "--rm", "--entrypoint", &binary, tag, "--version"]);
        assert!(!version.is_empty(), "{tag}: --version printed nothing");
        // Read-only root, no capabilities, the image's own user: the binary starts.
        let out = podman::podman_output(&[
            "run",
            "--rm",
            "--read-only",
            "--cap-drop=ALL",
            "--security-opt=no-new-privileges",
            tag,
            "--help",
        ]);
        assert!(out.status.success(), "{tag} --help under a read-only root");
        let sh =
            podman::podman_output(&["run", "--rm", "--entrypoint", "/bin/sh", tag, "-c", "true"]);
        assert!(!sh.status.success(), "{tag}: a shell ran");
    }
}

const SECRETS: usize = 20;
const APP_UID: i64 = 1000;
const APP_GID: i64 = 3000;

/// How the pod gives the files a group: the app's `runAsGroup` (files `0400`), only an
/// `fsGroup` (the app runs with group 0, as containerd leaves it; files `0440` for the group),
/// or neither (the agent takes its uid as group, never 0).
#[derive(Clone, Copy)]
enum GroupSource {
    RunAsGroup,
    FsGroup,
    Neither,
}

/// The pod a developer writes: `SECRETS` secrets, a reload hook, the app reading `s00`.
fn app_pod(images: &Images, run: &str, reload: &str, share_pid: bool, group: GroupSource) -> Value {
    let mut ann = serde_json::Map::new();
    ann.insert("kura.dev/inject".into(), json!("true"));
    let pod_sc = match group {
        GroupSource::RunAsGroup => {
            json!({ "runAsUser": APP_UID, "runAsGroup": APP_GID, "runAsNonRoot": true })
        }
        GroupSource::FsGroup => {
            ann.insert("kura.dev/file-mode".into(), json!("0440"));
            json!({ "runAsUser": APP_UID, "fsGroup": APP_GID, "runAsNonRoot": true })
        }
        GroupSource::Neither => json!({ "runAsUser": APP_UID, "runAsNonRoot": true }),
    };
    ann.insert("kura.dev/reload".into(), json!(reload));
    for i in 0..SECRETS {
        ann.insert(
            format!("kura.dev/secret.s{i:02}"),
            json!(format!("/demo/{run}/s{i:02}")),
        );
    }
    // An SSM parameter beside the secrets: the second store's path runs in the pod too.
    ann.insert(
        "kura.dev/secret.p00".into(),
        json!(format!("ssm:/demo/{run}/p00")),
    );
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "generateName": "app-", "namespace": "demo", "annotations": ann },
        "spec": {
            "shareProcessNamespace": share_pid,
            "securityContext": pod_sc,
            "containers": [{
                "name": "app",
                "image": images.app.tag,
                "command": ["/pod_app", "/var/run/secrets/kura/s00", "8080"],
                "securityContext": {
                    "readOnlyRootFilesystem": true,
                    "allowPrivilegeEscalation": false,
                    "capabilities": { "drop": ["ALL"] }
                }
            }]
        }
    })
}

async fn admitted(hook: &Webhook, ca: &str, pod: &Value) -> Value {
    let mut review = example_review();
    review["request"]["namespace"] = json!("demo");
    review["request"]["object"] = pod.clone();
    let resp = post(&https_client(ca), &format!("{}/mutate", hook.url), &review).await;
    assert_eq!(resp["allowed"], true, "{resp}");
    let patched = apply_patch(pod, &patch_bytes(&resp["patch"]).expect("a patch"));
    validate_k8s(std::slice::from_ref(&patched)).unwrap();
    patched
}

fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

/// The host's loopback as the pod's network (slirp4netns) reaches it.
fn from_pod(endpoint: &str) -> String {
    endpoint.replace("127.0.0.1", "10.0.2.2")
}

/// Runs the injected pod with one reload hook and checks everything the issue names.
async fn injected_pod(reload: &str, share_pid: bool, group: GroupSource, expect_reload: &str) {
    let Some(images) = images() else { return };
    let moto = Moto::start();
    let client = moto.client().await;
    let key = moto.create_kms_key().await;
    let run = format!("r{}", std::process::id());
    for i in 0..SECRETS {
        client
            .create_secret()
            .name(format!("/demo/{run}/s{i:02}"))
            .kms_key_id(&key)
            .secret_string(format!("value-{i:02}-v1"))
            .send()
            .await
            .unwrap();
    }
    moto.parameter(
        &format!("/demo/{run}/p00"),
        "param-v1",
        "SecureString",
        Some(&key),
    )
    .await;
    let certs = test_certs();
    let hook = Webhook::start(&certs, &["--agent-image", &images.agent.tag], &moto.env());
    let pod = admitted(
        &hook,
        &certs.ca,
        &app_pod(images, &run, reload, share_pid, group),
    )
    .await;
    let agent = &pod["spec"]["initContainers"][0];
    assert_eq!(agent["name"], "kura-agent");
    assert_eq!(agent["restartPolicy"], "Always");

    let p = PodRun::create(&pod);
    let aws = aws_env(&from_pod(&moto.endpoint));
    p.start("kura-agent", &aws);
    // As the kubelet does for a native sidecar: the app starts once the startup probe passes.
    let probe: Vec<&str> = agent["startupProbe"]["exec"]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let ready = wait_until("the agent's startup probe", Duration::from_secs(60), || {
        p.exec("kura-agent", &probe)
    });
    say(&format!(
        "agent ready (startup probe passed) {ready:?} after start, {SECRETS} secrets"
    ));
    p.start("app", &[]);
    let (gid, mode) = match group {
        GroupSource::RunAsGroup => (APP_GID, "400"),
        GroupSource::FsGroup => (APP_GID, "440"),
        GroupSource::Neither => (APP_UID, "400"),
    };
    let expect_start = format!("start content=value-00-v1 uid={APP_UID} gid={gid} mode={mode}");
    wait_until("the app's first line", Duration::from_secs(20), || {
        p.logs("app").contains("start ")
    });
    assert!(
        p.logs("app").contains(&expect_start),
        "app: {}\nagent: {}",
        p.logs("app"),
        p.logs("kura-agent")
    );

    let parameter = p.host_dir.path().join("kura-secrets/p00");
    assert_eq!(
        std::fs::read_to_string(&parameter).unwrap(),
        "param-v1",
        "the SSM parameter's file in the memory volume"
    );

    // Rotation, noticed at once through kura.dev/refresh-now in the downward-API file.
    testkit::put_value(&client, &format!("/demo/{run}/s00"), "value-00-v2").await;
    moto.parameter(
        &format!("/demo/{run}/p00"),
        "param-v2",
        "SecureString",
        Some(&key),
    )
    .await;
    let ann_file = p.host_dir.path().join("kura-podinfo/annotations");
    let mut text = std::fs::read_to_string(&ann_file).unwrap();
    text.push_str("kura.dev/refresh-now=\"1\"\n");
    let tmp = ann_file.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &ann_file).unwrap();
    let want = format!("{expect_reload} content=value-00-v2 uid={APP_UID} gid={gid}");
    wait_until(
        "the reload hook reaching the app",
        Duration::from_secs(20),
        || p.logs("app").contains(&want),
    );
    assert_eq!(
        std::fs::read_to_string(&parameter).unwrap(),
        "param-v2",
        "a new parameter version reaches the pod in the same refresh"
    );

    let limit = podman::quantity_bytes(agent["resources"]["limits"]["memory"].as_str().unwrap());
    let peak = p.peak_memory("kura-agent");
    say(&format!(
        "agent peak memory (cgroup, tmpfs pages included), {SECRETS} secrets: {:.2} MiB of a {:.0} MiB limit",
        peak as f64 / f64::from(1 << 20),
        limit as f64 / f64::from(1 << 20)
    ));
    assert!(peak < limit, "peak {peak} over the limit {limit}");

    // SIGTERM: the agent exits 0 within a second and the app still reads its files.
    p.kill("kura-agent", "TERM");
    let stopped = wait_until(
        "the agent stopping on SIGTERM",
        Duration::from_secs(5),
        || p.inspect("kura-agent", "{{.State.Running}}") == "false",
    );
    say(&format!("agent stopped {stopped:?} after SIGTERM"));
    assert!(stopped < Duration::from_secs(1), "SIGTERM took {stopped:?}");
    assert_eq!(p.inspect("kura-agent", "{{.State.ExitCode}}"), "0");
    p.kill("app", "HUP");
    wait_until(
        "the app reading after the agent stopped",
        Duration::from_secs(10),
        || {
            p.logs("app")
                .contains(&format!("reload-signal content=value-00-v2 uid={APP_UID}"))
        },
    );
    let log = p.logs("kura-agent");
    for i in 0..SECRETS {
        assert!(
            !log.contains(&format!("value-{i:02}")),
            "a value in the agent's log"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn injected_pod_with_an_http_reload_hook_and_run_as_group() {
    injected_pod(
        "http://127.0.0.1:8080/reload",
        false,
        GroupSource::RunAsGroup,
        "reload-http method=POST",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn injected_pod_without_a_group_has_files_of_the_uid_group() {
    injected_pod(
        "http://127.0.0.1:8080/reload",
        false,
        GroupSource::Neither,
        "reload-http method=POST",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn injected_pod_with_a_signal_reload_hook_a_shared_pid_namespace_and_fs_group() {
    injected_pod(
        "signal:SIGHUP:pod_app",
        true,
        GroupSource::FsGroup,
        "reload-signal",
    )
    .await;
}

/// Writes a certificate and key as the kubelet projects a Secret: `..<version>/` files,
/// `..data -> ..<version>` swapped by a rename, `tls.crt -> ..data/tls.crt`; owned by root and
/// group 65532 (the pod's fsGroup), mode 0440 (the volume's defaultMode).
fn secret_style_certs(dir: &Path, version: &str, cert: &Path, key: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let v = dir.join(format!("..{version}"));
    std::fs::create_dir_all(&v).unwrap();
    for (from, name) in [(cert, "tls.crt"), (key, "tls.key")] {
        let to = v.join(name);
        std::fs::copy(from, &to).unwrap();
        std::os::unix::fs::chown(&to, Some(0), Some(65532)).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o440)).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for f in ["tls.crt", "tls.key"] {
        let link = dir.join(f);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(format!("..data/{f}"), &link).unwrap();
        }
    }
}

/// The webhook as `deploy/` runs it, from the Deployment's pod template: args, ports, probes,
/// security context, the TLS Secret and policy ConfigMap as the kubelet projects them.
#[tokio::test(flavor = "multi_thread")]
async fn webhook_container_as_deployed() {
    let Some(images) = images() else { return };
    let text =
        std::fs::read_to_string(workspace_root().join("deploy/base/deployment.yaml")).unwrap();
    let deployment: Value = serde_yaml_ng::from_str(&text).unwrap();
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": deployment["spec"]["template"]["metadata"].clone(),
        "spec": deployment["spec"]["template"]["spec"].clone(),
    });
    pod["spec"]["containers"][0]["image"] = json!(images.kura.tag);
    let c = pod["spec"]["containers"][0].clone();
    let port_of = |probe: &str| -> u16 {
        let named = c[probe]["httpGet"]["port"].as_str().unwrap();
        let p = c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == named)
            .unwrap();
        u16::try_from(p["containerPort"].as_i64().unwrap()).unwrap()
    };
    let https = port_of("readinessProbe");
    assert_eq!(https, port_of("livenessProbe"));
    assert_eq!(c["readinessProbe"]["httpGet"]["scheme"], "HTTPS");

    let moto = Moto::start();
    let client = moto.client().await;
    let key = moto.create_kms_key().await;
    let run = format!("w{}", std::process::id());
    let secret = format!("/demo/{run}/db");
    client
        .create_secret()
        .name(&secret)
        .kms_key_id(&key)
        .secret_string("v")
        .send()
        .await
        .unwrap();

    let host_port = free_port();
    let p = PodRun::create_publishing(&pod, &[(host_port, https)]);
    // The Secret and the ConfigMap, projected as the kubelet does (..data symlink swap), the
    // key group-readable by fsGroup and not world-readable (defaultMode 0440).
    let first = test_certs();
    let tls = p.host_dir.path().join("tls");
    secret_style_certs(&tls, "1", &first.cert, &first.key);
    let policy_dir = p.host_dir.path().join("policy");
    std::fs::create_dir_all(&policy_dir).unwrap();
    let cm: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(workspace_root().join("deploy/base/policy-configmap.yaml"))
            .unwrap(),
    )
    .unwrap();
    for (file, content) in cm["data"].as_object().unwrap() {
        std::fs::write(policy_dir.join(file), content.as_str().unwrap()).unwrap();
    }
    p.start("kura", &aws_env(&from_pod(&moto.endpoint)));

    let url = url_of(host_port);
    let probe = |client: reqwest::Client, path: String| async move {
        client
            .get(format!("{}{path}", url_of(host_port)))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    let readiness = c["readinessProbe"]["httpGet"]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let liveness = c["livenessProbe"]["httpGet"]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let trusting_first = https_client(&first.ca);
    let start = Instant::now();
    while probe(trusting_first.clone(), readiness.clone()).await != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "readiness probe never passed: {}",
            p.logs("kura")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(probe(trusting_first.clone(), liveness.clone()).await, 200);

    let mut review = review(
        "demo",
        &[
            ("kura.dev/inject", "true"),
            ("kura.dev/secret.db", secret.as_str()),
        ],
    );
    review["request"]["object"]["metadata"]["namespace"] = json!("demo");
    let resp = post(&trusting_first, &format!("{url}/mutate"), &review).await;
    assert_eq!(resp["allowed"], true, "{resp}\n{}", p.logs("kura"));
    let patched = apply_patch(
        &review["request"]["object"],
        &patch_bytes(&resp["patch"]).expect("a patch"),
    );
    let agent_image = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|a| a.as_str()?.strip_prefix("--agent-image="))
        .unwrap();
    assert_eq!(patched["spec"]["initContainers"][0]["image"], agent_image);

    // A renewed certificate from another CA, swapped in as the kubelet updates a Secret.
    let second = test_certs();
    secret_style_certs(&tls, "2", &second.cert, &second.key);
    let trusting_second = https_client(&second.ca);
    let start = Instant::now();
    while probe(trusting_second.clone(), liveness.clone()).await != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the renewed certificate was never served: {}",
            p.logs("kura")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    say(&format!(
        "renewed certificate served {:?} after the ..data swap",
        start.elapsed()
    ));

    // SIGTERM: not ready at once (endpoints drop the pod), still answering admissions while
    // draining, exit 0 within the pod's grace period.
    p.kill("kura", "TERM");
    let start = Instant::now();
    while probe(trusting_second.clone(), readiness.clone()).await == 200 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "still ready after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resp = post(&trusting_second, &format!("{url}/mutate"), &review).await;
    assert_eq!(resp["allowed"], true, "admissions while draining: {resp}");
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    let stopped = wait_until("kura stopping", Duration::from_secs(grace), || {
        p.inspect("kura", "{{.State.Running}}") == "false"
    });
    say(&format!(
        "kura drained and stopped {stopped:?} after SIGTERM (grace {grace}s)"
    ));
    assert_eq!(
        p.inspect("kura", "{{.State.ExitCode}}"),
        "0",
        "{}",
        p.logs("kura")
    );
}

fn url_of(port: u16) -> String {
    format!("https://127.0.0.1:{port}")
}

/// The pod of environment variables: an app image with no C library at all (busybox-static on
/// `scratch`), whose `command` kura wraps in `kura-agent exec` from the copy the agent made.
/// Shows the copied binary runs on any image, the variables and a template reach the app, a
/// rotation restarts it with the new value inside the container, and SIGTERM to the wrapper —
/// PID 1 of its container — comes back as the app's status (128 + 15).
#[tokio::test(flavor = "multi_thread")]
async fn environment_variables_in_a_libc_less_app_image() {
    let Some(images) = images() else { return };
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        say("SKIPPED: /bin/busybox (busybox-static) is missing; scripts/test installs it");
        return;
    }
    // The wrapper runs from the agent's binary inside an image with no libc: it must be static.
    let agent = binaries_dir().join("kura-agent");
    let libs = testkit::podman::linked_libraries(&agent);
    assert!(
        libs.is_empty(),
        "{} links {libs:?}: this test needs the static agent that scripts/test builds \
         (set KURA_IMAGE_BINARIES to its directory)",
        agent.display()
    );
    let app_image = Image::assemble(
        "kura-busybox-app",
        FinalStage {
            base: "scratch".into(),
            instructions: vec![
                "COPY --from=build --chown=0:0 --chmod=0555 /busybox /busybox".into(),
                "USER 65532:65532".into(),
                "ENTRYPOINT [\"/busybox\"]".into(),
            ],
        },
        busybox,
    );
    let moto = Moto::start();
    let client = moto.client().await;
    let key = moto.create_kms_key().await;
    let run = format!("e{}", std::process::id());
    let db = format!("/demo/{run}/db");
    client
        .create_secret()
        .name(&db)
        .kms_key_id(&key)
        .secret_string(r#"{"username":"app","password":"pw-v1"}"#)
        .send()
        .await
        .unwrap();
    let certs = test_certs();
    let hook = Webhook::start(&certs, &["--agent-image", &images.agent.tag], &moto.env());
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "generateName": "env-", "namespace": "demo", "annotations": {
            "kura.dev/inject": "true",
            "kura.dev/env.DB_PASSWORD": format!("{db}#password"),
            "kura.dev/env-on-rotation": "restart",
            "kura.dev/secrets": format!(
                "- {{envFrom: {db}}}\n- file: dsn\n  inputs: {{db: {db}}}\n  template: 'postgres://{{{{ db.username }}}}:{{{{ db.password | urlencode }}}}@db/app'\n"
            ),
        }},
        "spec": {
            "securityContext": { "runAsUser": APP_UID, "runAsGroup": APP_GID, "runAsNonRoot": true },
            "containers": [{
                "name": "app",
                "image": app_image.tag,
                "command": ["/busybox", "sh", "-c",
                    "echo \"start DB_PASSWORD=$DB_PASSWORD username=$username dsn=$(/busybox cat /var/run/secrets/kura/dsn) pid=$$\"; exec /busybox sleep 600"],
                "securityContext": {
                    "readOnlyRootFilesystem": true,
                    "allowPrivilegeEscalation": false,
                    "capabilities": { "drop": ["ALL"] }
                }
            }]
        }
    });
    let pod = admitted(&hook, &certs.ca, &pod).await;
    let agent = &pod["spec"]["initContainers"][0];
    let p = PodRun::create(&pod);
    let aws = aws_env(&from_pod(&moto.endpoint));
    p.start("kura-agent", &aws);
    let probe: Vec<&str> = agent["startupProbe"]["exec"]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    wait_until("the agent's startup probe", Duration::from_secs(60), || {
        p.exec("kura-agent", &probe)
    });
    p.start("app", &[]);
    let first = "start DB_PASSWORD=pw-v1 username=app dsn=postgres://app:pw-v1@db/app pid=";
    wait_until("the app's first start", Duration::from_secs(30), || {
        p.logs("app").contains(first)
    });
    // The wrapper is PID 1 of the app container; the app is its child.
    assert!(
        !p.logs("app").contains(&format!("{first}1\n")),
        "{}",
        p.logs("app")
    );

    testkit::put_value(&client, &db, r#"{"username":"app","password":"pw/v2"}"#).await;
    let ann_file = p.host_dir.path().join("kura-podinfo/annotations");
    let mut text = std::fs::read_to_string(&ann_file).unwrap();
    text.push_str("kura.dev/refresh-now=\"1\"\n");
    let tmp = ann_file.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &ann_file).unwrap();
    let second = "start DB_PASSWORD=pw/v2 username=app dsn=postgres://app:pw%2Fv2@db/app";
    wait_until(
        "the restart with the new value",
        Duration::from_secs(30),
        || p.logs("app").contains(second),
    );

    p.kill("app", "TERM");
    wait_until(
        "the app container stopping",
        Duration::from_secs(15),
        || p.inspect("app", "{{.State.Running}}") == "false",
    );
    assert_eq!(p.inspect("app", "{{.State.ExitCode}}"), "143");
    let log = p.logs("kura-agent");
    assert!(
        !log.contains("pw-v1") && !log.contains("pw/v2"),
        "a value in the agent's log"
    );
}
