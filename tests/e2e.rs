//! One pod, walked as a cluster would: kube-apiserver's AdmissionReview for a Deployment-created
//! pod → `/mutate` over TLS on the real binary → the patch applied → the mutated pod validated
//! against the Kubernetes schema → the injected agent container run as a process (its command,
//! args and env taken from the patched pod) against moto → the app's mount shows the secret.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use kura_agent::contract::{self, AgentCommand};
use serde_json::{Value, json};

/// Runs a container spec from the pod as a local process: the volume's mount path is mapped to
/// `dir`, the binary to the built agent, AWS to moto.
fn container_command(
    container: &Value,
    mount_path: &str,
    dir: &std::path::Path,
    moto: &Moto,
) -> Command {
    assert_eq!(
        container["command"][0],
        contract::AGENT_BINARY,
        "the injected container runs the agent binary"
    );
    let mut cmd = mapped_command(container, &[(mount_path, dir)], moto);
    cmd.env(
        contract::env::TERMINATION_LOG,
        dir.join("..termination-log"),
    );
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_pod_end_to_end() {
    let moto = Moto::start();
    let key = moto.create_kms_key().await;
    moto.secret(
        "/demo/orders/db",
        r#"{"username":"orders","password":"s3cr3t-from-moto"}"#,
        Some(&key),
        &[],
    )
    .await;
    moto.secret("/demo/orders/api-key", "api-key-from-moto", Some(&key), &[])
        .await;

    let certs = test_certs();
    let hook = Webhook::start(
        &certs,
        &["--agent-image", "ghcr.io/kura-dev/kura-agent:test"],
        &moto.env(),
    );
    let client = https_client(&certs.ca);

    let review = example_review();
    let object = review["request"]["object"].clone();
    assert!(
        object["metadata"].get("name").is_none() && object["metadata"].get("namespace").is_none()
    );
    let resp = json!({ "response": post(&client, &format!("{}/mutate", hook.url), &review).await });
    let r = &resp["response"];
    assert_eq!(r["uid"], review["request"]["uid"]);
    assert_eq!(r["allowed"], true, "{resp}");
    assert_eq!(r["patchType"], "JSONPatch");
    let patch = patch_bytes(&r["patch"]).expect("a base64 patch");
    assert!(
        r["patch"].is_string(),
        "the patch is base64, as Go writes []byte"
    );
    let pod = apply_patch(&object, &patch);
    validate_k8s(std::slice::from_ref(&pod)).unwrap();

    let agent = pod["spec"]["initContainers"][0].clone();
    assert_eq!(agent["name"], "kura-agent");
    assert_eq!(agent["restartPolicy"], "Always");
    let mount_path = agent["volumeMounts"][0]["mountPath"]
        .as_str()
        .unwrap()
        .to_string();
    let app = &pod["spec"]["containers"][0];
    let app_mount = app["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "kura-secrets")
        .unwrap();
    assert_eq!(app_mount["readOnly"], true);
    assert_eq!(app_mount["mountPath"], mount_path.as_str());

    // The native sidecar runs `run`; its startup probe gates the app until the first write.
    let dir = tempfile::tempdir().unwrap();
    let mut agent_proc = container_command(&agent, &mount_path, dir.path(), &moto)
        .spawn()
        .unwrap();
    let probe: Vec<String> = agent["startupProbe"]["exec"]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap()
                .replace(&mount_path, dir.path().to_str().unwrap())
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = Command::new(agent_bin())
            .args(&probe[1..])
            .output()
            .unwrap()
            .status
            .success();
        if ok {
            break;
        }
        assert!(
            agent_proc.try_wait().unwrap().is_none(),
            "agent exited before becoming ready"
        );
        assert!(Instant::now() < deadline, "startup probe never passed");
        std::thread::sleep(Duration::from_millis(100));
    }

    // What the app container sees through its read-only mount.
    let file = dir.path().join("db-password");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "s3cr3t-from-moto");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("api-key")).unwrap(),
        "api-key-from-moto"
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o400, "the declared default mode");

    // SIGTERM: the agent exits promptly and leaves the files.
    let t = Instant::now();
    Command::new("kill")
        .args(["-TERM", &agent_proc.id().to_string()])
        .status()
        .unwrap();
    let status = agent_proc.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(file.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_get_clear_answers() {
    let moto = Moto::start();
    let certs = test_certs();
    let hook = Webhook::start(&certs, &[], &moto.env());
    let client = https_client(&certs.ca);

    let resp = client
        .post(format!("{}/mutate", hook.url))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("not an AdmissionReview")
    );

    let resp: Value = client
        .post(format!("{}/mutate", hook.url))
        .json(&serde_json::json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(resp["response"]["allowed"], false);
    assert!(
        resp["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("no request")
    );

    let mut review = example_review();
    review["request"]["object"]["spec"]["containers"] = serde_json::json!("not a list");
    let resp = json!({ "response": post(&client, &format!("{}/mutate", hook.url), &review).await });
    assert_eq!(resp["response"]["allowed"], false);
    assert_eq!(resp["response"]["uid"], review["request"]["uid"]);
    assert!(
        resp["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("pod spec"),
        "{resp}"
    );

    let mut review = example_review();
    review["request"]["object"]["metadata"]["annotations"]["kura.dev/agent"] =
        serde_json::json!("daemon");
    let resp = json!({ "response": post(&client, &format!("{}/mutate", hook.url), &review).await });
    assert_eq!(resp["response"]["allowed"], false);
    let msg = resp["response"]["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains("KURA001") && msg.contains("kura.dev/agent"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_with_a_missing_secret_names_it() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let spec = r#"{"version":"kura.dev/v1","refreshInterval":120,"files":[{"file":"x","secret":"/demo/does-not-exist","format":"raw","mode":"0400"}]}"#;
    let out = Command::new(agent_bin())
        .args([AgentCommand::Init.as_str(), "--dir"])
        .arg(dir.path())
        .env(contract::env::SPEC, spec)
        .env(
            contract::env::TERMINATION_LOG,
            dir.path().join("termination-log"),
        )
        .envs(moto.env())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let log = std::fs::read_to_string(dir.path().join("termination-log")).unwrap();
    assert!(log.contains("/demo/does-not-exist"), "{log}");
    assert!(!log.contains('\n'), "one line");
    assert!(!dir.path().join("x").exists());
}

/// A pod that mixes SSM parameters and Secrets Manager secrets, walked through the webhook and
/// the injected agent, both behind the counting proxy: the webhook asks one batch of
/// `DescribeParameters` for twelve parameters, the agent two `GetParameters` (ten names a call;
/// a pinned version of a name already in the first call rides in the second) and one
/// `BatchGetSecretValue` for the secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_and_secrets_in_one_pod_are_batched() {
    let moto = Moto::start();
    let key = moto.create_kms_key().await;
    let mut entries = Vec::new();
    for i in 0..12 {
        let n = format!("/demo/p/{i:02}");
        moto.parameter(&n, &format!("param-{i}-v1"), "SecureString", Some(&key))
            .await;
        entries.push(json!({"file": format!("p{i:02}"), "secret": format!("ssm:{n}")}));
    }
    moto.parameter("/demo/p/00", "param-0-v2", "SecureString", Some(&key))
        .await;
    entries.push(json!({"file": "p00-v1", "secret": "ssm:/demo/p/00", "versionId": "1"}));
    for i in 0..3 {
        let n = format!("/demo/s/{i}");
        moto.secret(&n, &format!("secret-{i}"), Some(&key), &[])
            .await;
        entries.push(json!({"file": format!("s{i}"), "secret": n}));
    }
    let list = serde_json::to_string(&entries).unwrap();
    let proxy = Proxy::start(&moto.endpoint).await;
    let certs = test_certs();
    let hook = Webhook::start(&certs, &[], &proxy.env(&moto));
    let client = https_client(&certs.ca);
    let review = review(
        "demo",
        &[("kura.dev/inject", "true"), ("kura.dev/secrets", &list)],
    );
    let r = post(&client, &format!("{}/mutate", hook.url), &review).await;
    assert_eq!(r["allowed"], true, "{r}");
    // One batch for the twelve names; moto answers ten parameters a page (AWS up to the
    // MaxResults of 50 kura asks for), so the batch takes two pages, against twelve calls
    // unbatched.
    assert_eq!(proxy.count("describeparameters"), 2, "one batch, two pages");
    assert_eq!(proxy.count("describesecret"), 3);

    let pod = apply_patch(
        &review["request"]["object"],
        &patch_bytes(&r["patch"]).unwrap(),
    );
    let agent = pod["spec"]["initContainers"][0].clone();
    let mount_path = agent["volumeMounts"][0]["mountPath"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut agent_proc = container_command(&agent, mount_path, dir.path(), &moto)
        .envs(proxy.env(&moto))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.path().join("s2").exists() {
        assert!(
            agent_proc.try_wait().unwrap().is_none(),
            "agent exited before writing"
        );
        assert!(Instant::now() < deadline, "files never written");
        std::thread::sleep(Duration::from_millis(50));
    }
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
    assert_eq!(read("p00"), "param-0-v2");
    assert_eq!(read("p00-v1"), "param-0-v1");
    assert_eq!(read("p11"), "param-11-v1");
    assert_eq!(read("s1"), "secret-1");
    assert_eq!(proxy.count("getparameters"), 2);
    assert_eq!(proxy.count("batchgetsecretvalue"), 1);
    assert_eq!(proxy.count("getsecretvalue"), 0);
    let _ = agent_proc.kill();
    let _ = agent_proc.wait();
}

/// examples/pod-parameters.yaml with the example store, as `scripts/run-local` serves it:
/// `kura review` injects it, and the agent, given the spec from the mutated pod and the same
/// file store, writes the parameter's latest version, its labelled one and a pinned one.
#[test]
fn the_parameters_example_runs_on_the_file_store() {
    let root = env!("CARGO_MANIFEST_DIR");
    let store = format!("file:{root}/examples/store.yaml");
    let out = Command::new(kura_bin())
        .args(["review", &format!("{root}/examples/pod-parameters.yaml")])
        .args(["--store", &store])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("decision: injected\n"), "{text}");
    let pod: Value = serde_yaml_ng::from_str(text.split("---\n").nth(1).unwrap()).unwrap();
    let agent = &pod["spec"]["initContainers"][0];
    let spec = agent["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == contract::env::SPEC)
        .unwrap()["value"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(agent_bin())
        .arg("init")
        .env_clear()
        .env(contract::env::SPEC, &spec)
        .env(contract::env::DIR, dir.path())
        .env(contract::env::STORE, &store)
        .env(contract::env::TERMINATION_LOG, dir.path().join("..log"))
        .status()
        .unwrap();
    assert!(status.success());
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
    assert_eq!(read("db-host"), "db.demo.internal");
    assert_eq!(read("db-host.previous"), "db-old.demo.internal");
    assert_eq!(read("db-host.v1"), "db-old.demo.internal");
    assert_eq!(read("db-password"), "local-demo-password");
}

/// A container of the patched pod as a local process: every path kura chose (the files' mount
/// path, the exec volume, the podinfo volume) mapped into `root`, AWS to moto. Unlike
/// [`container_command`], the first word is whatever the container runs: the agent image's
/// binary becomes the built agent; a wrapped app's `/var/run/kura/bin/kura-agent` is the copy the
/// agent made, run from where it was copied.
fn mapped_command(container: &Value, paths: &[(&str, &std::path::Path)], moto: &Moto) -> Command {
    let map = |s: &str| {
        paths.iter().fold(s.to_string(), |acc, (from, to)| {
            acc.replace(from, to.to_str().unwrap())
        })
    };
    let argv: Vec<String> = container["command"]
        .as_array()
        .unwrap()
        .iter()
        .chain(container["args"].as_array().into_iter().flatten())
        .map(|v| map(v.as_str().unwrap()))
        .collect();
    let program = if argv[0] == contract::AGENT_BINARY {
        agent_bin()
    } else {
        std::path::PathBuf::from(&argv[0])
    };
    let mut cmd = Command::new(program);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/bin:/bin");
    for e in container["env"].as_array().into_iter().flatten() {
        if let Some(v) = e["value"].as_str() {
            cmd.env(e["name"].as_str().unwrap(), map(v));
        }
    }
    cmd.envs(moto.env()).env(
        contract::env::LOG_FORMAT,
        contract::LogFormat::Text.as_str(),
    );
    cmd
}

/// Environment variables and templates, walked like the pod above: the review over TLS → the
/// patch → the schema → the agent's native sidecar (`run`, which copies its binary into the
/// exec volume) and the wrapped app container (`kura-agent exec` from that copy, its child
/// printing its environment) as processes against moto; then a rotation restarts the app with
/// the new value and re-renders the templates, and SIGTERM to the wrapper comes back as the
/// child's status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_variables_and_templates_end_to_end() {
    let moto = Moto::start();
    let key = moto.create_kms_key().await;
    moto.secret(
        "/demo/orders/db",
        r#"{"username":"orders","password":"p@ss:w/rd%1"}"#,
        Some(&key),
        &[],
    )
    .await;
    moto.secret("/demo/orders/api-key", "api-key-v1", Some(&key), &[])
        .await;
    moto.parameter(
        "/demo/orders/db-host",
        "db.internal",
        "SecureString",
        Some(&key),
    )
    .await;

    let certs = test_certs();
    let hook = Webhook::start(
        &certs,
        &["--agent-image", "ghcr.io/kura-dev/kura-agent:test"],
        &moto.env(),
    );
    let client = https_client(&certs.ca);

    let mut review = example_review();
    let object = &mut review["request"]["object"];
    object["metadata"]["annotations"] = json!({
        "kura.dev/inject": "true",
        "kura.dev/env.DB_PASSWORD": "/demo/orders/db#password",
        "kura.dev/env.API_KEY": "/demo/orders/api-key",
        "kura.dev/env-on-rotation": "restart",
        "kura.dev/secret.api-key": "/demo/orders/api-key",
        "kura.dev/secrets": "- {env: DB_HOST, secret: 'ssm:/demo/orders/db-host'}\n\
                             - {envFrom: /demo/orders/db}\n\
                             - file: database-url\n  inputs: {db: /demo/orders/db, host: 'ssm:/demo/orders/db-host'}\n  \
                             template: 'postgres://{{ db.username }}:{{ db.password | urlencode }}@{{ host }}/orders'\n\
                             - file: application.properties\n  inputs: {db: /demo/orders/db}\n  \
                             template: |\n    spring.datasource.username={{ db.username }}\n    spring.datasource.password={{ db.password }}\n",
    });
    // The app: record each start with what it was given, then wait like a server.
    object["spec"]["containers"][0]["command"] = json!(["/bin/sh", "-c"]);
    object["spec"]["containers"][0]["args"] = json!([
        "echo \"start DB_PASSWORD=$DB_PASSWORD API_KEY=$API_KEY DB_HOST=$DB_HOST username=$username exec=${KURA_EXEC_VALUES_DIR:-unset}\" >> \"$OUT\"; exec sleep 600"
    ]);
    object["spec"]["containers"][0]["env"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "OUT", "value": "/var/run/kura/out/starts"}));
    let object = object.clone();

    let resp = json!({ "response": post(&client, &format!("{}/mutate", hook.url), &review).await });
    let r = &resp["response"];
    assert_eq!(r["allowed"], true, "{resp}");
    let pod = apply_patch(&object, &patch_bytes(&r["patch"]).expect("a patch"));
    validate_k8s(std::slice::from_ref(&pod)).unwrap();
    let text = pod.to_string();
    for value in ["p@ss:w/rd%1", "api-key-v1", "db.internal"] {
        assert!(!text.contains(value), "no value in the pod");
    }

    let root = tempfile::tempdir().unwrap();
    let secrets = root.path().join("secrets");
    let bin = root.path().join("bin");
    let podinfo = root.path().join("podinfo");
    let out = root.path().join("out");
    for d in [&secrets, &bin, &podinfo, &out] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::write(podinfo.join("annotations"), "kura.dev/refresh-now=\"0\"\n").unwrap();
    let paths = [
        ("/var/run/secrets/kura", secrets.as_path()),
        (contract::EXEC_DIR, bin.as_path()),
        (contract::PODINFO_DIR, podinfo.as_path()),
        ("/var/run/kura/out", out.as_path()),
    ];

    let agent = pod["spec"]["initContainers"][0].clone();
    assert_eq!(agent["name"], "kura-agent");
    let mut agent_proc = mapped_command(&agent, &paths, &moto)
        .env(
            contract::env::TERMINATION_LOG,
            root.path().join("agent-log"),
        )
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !Command::new(agent_bin())
        .args([AgentCommand::Ready.as_str(), "--dir"])
        .arg(&secrets)
        .status()
        .unwrap()
        .success()
    {
        assert!(agent_proc.try_wait().unwrap().is_none(), "agent exited");
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let copy = bin.join(contract::EXEC_BINARY);
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(agent_bin()).unwrap(),
        "the agent copied itself for kura-agent exec"
    );
    assert_eq!(
        std::fs::read_to_string(secrets.join("database-url")).unwrap(),
        "postgres://orders:p%40ss%3Aw%2Frd%251@db.internal/orders"
    );
    // A plain file beside the variables and templates, in the same set.
    assert_eq!(
        std::fs::read_to_string(secrets.join("api-key")).unwrap(),
        "api-key-v1"
    );
    assert_eq!(
        std::fs::read_to_string(secrets.join("application.properties")).unwrap(),
        "spring.datasource.username=orders\nspring.datasource.password=p@ss:w/rd%1\n"
    );

    // The wrapped app container, started from the copy.
    let app = pod["spec"]["containers"][0].clone();
    assert_eq!(app["command"][0], contract::EXEC_PATH);
    let mut app_proc = mapped_command(&app, &paths, &moto).spawn().unwrap();
    let starts = out.join("starts");
    let wait_for_starts = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let lines: Vec<String> = std::fs::read_to_string(&starts)
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect();
            if lines.len() >= n {
                return lines;
            }
            assert!(Instant::now() < deadline, "{n} starts expected: {lines:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let lines = wait_for_starts(1);
    assert_eq!(
        lines[0],
        "start DB_PASSWORD=p@ss:w/rd%1 API_KEY=api-key-v1 DB_HOST=db.internal username=orders exec=unset"
    );

    // A rotation: the agent refreshes at once (kura.dev/refresh-now), rewrites the set, and the
    // wrapper restarts the app with the new value.
    put_value(
        &moto.client().await,
        "/demo/orders/db",
        r#"{"username":"orders","password":"rotated/2"}"#,
    )
    .await;
    std::fs::write(podinfo.join("annotations"), "kura.dev/refresh-now=\"1\"\n").unwrap();
    let lines = wait_for_starts(2);
    assert!(
        lines[1].starts_with("start DB_PASSWORD=rotated/2 API_KEY=api-key-v1"),
        "{lines:?}"
    );
    assert_eq!(
        std::fs::read_to_string(secrets.join("database-url")).unwrap(),
        "postgres://orders:rotated%2F2@db.internal/orders"
    );

    // SIGTERM to the wrapper reaches the app (sleep dies of it): 128 + 15 comes back.
    Command::new("kill")
        .args(["-TERM", &app_proc.id().to_string()])
        .status()
        .unwrap();
    let status = app_proc.wait().unwrap();
    assert_eq!(status.code(), Some(143), "{status:?}");

    Command::new("kill")
        .args(["-TERM", &agent_proc.id().to_string()])
        .status()
        .unwrap();
    let agent_out = agent_proc.wait_with_output().unwrap();
    let logs = String::from_utf8_lossy(&agent_out.stderr);
    for value in ["p@ss:w/rd%1", "rotated/2", "api-key-v1"] {
        assert!(!logs.contains(value), "no value in the agent's logs");
    }
}
