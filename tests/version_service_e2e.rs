//! The version service with its real parts together (contract §8): `kura serve` as a process
//! with `--store aws` on moto and its version service on, tokens reviewed by the stub
//! kube-apiserver; a pod reviewed over TLS as kube-apiserver sends it, the patch applied and
//! validated against the schema; the injected agent container's command and environment run
//! as a process, its token the one the stub accepts. Then what the service is for: intervals
//! that ask the service and fetch nothing, a rotation that still lands, the service killed
//! (the agent polls AWS directly and a rotation still lands) and brought back (the agent asks
//! it again), the service hung (the same, at the client's timeout), and no value in either
//! process's logs; and an agent failing to fetch, counted failing and stale in the service's
//! fleet gauges until it recovers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use kura_agent::contract::{self, env};
use kura_agent::versions::{AUDIENCE, TOKEN_DIR, TOKEN_FILE};
use serde_json::Value;

/// The secret's value (and the prefix of its rotated values): no log line may carry it.
const VALUE: &str = "kura-vs-e2e-plaintext-8b3f06";

/// The pod the stub kube-apiserver binds the token to.
const POD: &str = "orders-api-6d9c8b7f5d-x2v7q";

/// The projected token the kubelet would write into the agent's token volume.
const TOKEN: &str = "token-demo-orders-api-x2v7q";

/// Longest wait for anything, generous for a loaded two-core machine; never a timing assertion.
const WAIT: Duration = Duration::from_secs(60);

/// Logs of both processes at debug for kura's own crates (the HTTP and SDK layers below, which
/// would print raw AWS responses, stay at info as the agent also forces).
const LOG: &str = "debug,aws_smithy_runtime=info,aws_smithy_http=info,aws_config=info,hyper=info,hyper_util=info,h2=info,rustls=info,kube=info,tower=info,tower_http=info";

/// A child process, killed and reaped on drop (a failed assertion included).
struct Running(Child);

impl Running {
    fn id(&self) -> i32 {
        i32::try_from(self.0.id()).expect("a pid fits i32")
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.id()), signal).unwrap();
    }

    fn assert_alive(&mut self, what: &str, log: &Path) {
        if let Some(status) = self.0.try_wait().unwrap() {
            panic!(
                "{what} exited ({status}):\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
    }

    /// Waits (up to [`WAIT`]) for the process to exit after a signal.
    async fn exited(&mut self, what: &str) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{what} did not exit");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Output to a file: a pipe nobody reads would fill and stall the process.
fn log_to(path: &Path) -> (Stdio, Stdio) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    (file.try_clone().unwrap().into(), file.into())
}

/// The ports and files of `kura serve`, the same for each start.
struct Serve {
    listen: u16,
    metrics: u16,
    versions: u16,
    certs: TestCerts,
    ca_file: PathBuf,
    kubeconfig: PathBuf,
    env: Vec<(String, String)>,
}

impl Serve {
    /// `kura serve` on moto's AWS with the version service on, logging to `log`.
    fn start(&self, log: &Path) -> Running {
        let (stdout, stderr) = log_to(log);
        let vs = format!("127.0.0.1:{}", self.versions);
        let child = Command::new(kura_bin())
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{}", self.listen)])
            .args(["--metrics-listen", &format!("127.0.0.1:{}", self.metrics)])
            .arg("--tls-cert")
            .arg(&self.certs.cert)
            .arg("--tls-key")
            .arg(&self.certs.key)
            .args(["--store", "aws", "--watch-namespaces", "never"])
            .args(["--shutdown-delay", "200ms", "--log-format", "json"])
            .args(["--agent-image", "ghcr.io/kura-dev/kura-agent:test"])
            .args(["--refresh-interval", "2s"])
            .args(["--version-service-listen", &vs])
            .args(["--version-service-url", &format!("https://{vs}")])
            .arg("--version-service-ca")
            .arg(&self.ca_file)
            .args(["--version-service-ttl", "1s"])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KURA_LOG", LOG)
            .envs(self.env.iter().cloned())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("kura serve starts");
        Running(child)
    }

    /// A sample of the service's `/metrics` (0 while it does not answer).
    fn metric(&self, series: &str) -> f64 {
        metric(self.metrics, series)
    }
}

/// Polls `done` every 100 ms until it holds; fails naming `what` after [`WAIT`].
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of the env var `name` of a container (the whole entry).
fn env_entry<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {container}"))
}

/// The agent container as a local process: its command, args and plain env values from the
/// pod, each path kura chose mapped to `paths`, the binary the built agent.
fn agent_command(container: &Value, paths: &[(&str, &Path)]) -> Command {
    let map = |s: &str| {
        paths.iter().fold(s.to_string(), |acc, (from, to)| {
            acc.replace(from, to.to_str().unwrap())
        })
    };
    assert_eq!(container["command"][0], contract::AGENT_BINARY);
    let mut cmd = Command::new(agent_bin());
    for a in container["args"].as_array().into_iter().flatten() {
        cmd.arg(map(a.as_str().unwrap()));
    }
    cmd.env_clear().env("PATH", "/usr/bin:/bin");
    for e in container["env"].as_array().unwrap() {
        if let Some(v) = e["value"].as_str() {
            cmd.env(e["name"].as_str().unwrap(), map(v));
        }
    }
    cmd
}

/// The parts around the pod: moto (with a customer KMS key), the stub kube-apiserver knowing
/// the pod's token, and the ports, certificate and kubeconfig of `kura serve`.
struct Cluster {
    moto: Moto,
    key: String,
    api: ApiServer,
    root: tempfile::TempDir,
    serve: Serve,
}

impl Cluster {
    async fn start() -> Cluster {
        let moto = Moto::start();
        let key = moto.create_kms_key().await;
        let api = ApiServer::start().await;
        api.accept(
            TOKEN,
            ServiceAccountToken {
                namespace: "demo".into(),
                service_account: "orders-api".into(),
                pod: POD.into(),
                audiences: vec![AUDIENCE.into()],
            },
        );
        let root = tempfile::tempdir().unwrap();
        let kubeconfig = root.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig);
        let certs = test_certs();
        let ca_file = root.path().join("ca.crt");
        std::fs::write(&ca_file, &certs.ca).unwrap();
        let serve = Serve {
            listen: free_port(),
            metrics: free_port(),
            versions: free_port(),
            certs,
            ca_file,
            kubeconfig,
            env: moto.env(),
        };
        Cluster {
            moto,
            key,
            api,
            root,
            serve,
        }
    }

    /// Starts `kura serve` (logging to `log` under the root) and waits for its listeners.
    fn start_serve(&self, log: &str) -> Running {
        let server = self.serve.start(&self.root.path().join(log));
        wait_for_port(self.serve.listen, "kura serve");
        wait_for_port(self.serve.versions, "the version service");
        server
    }

    /// A pod of `demo` with these annotations, as kube-apiserver sends it for review, through
    /// `/mutate` over TLS: the patched pod, validated against the schema.
    async fn admit(&self, annotations: &[(&str, &str)]) -> Value {
        let review = review("demo", annotations);
        let r = post(
            &https_client(&self.serve.certs.ca),
            &format!("https://127.0.0.1:{}/mutate", self.serve.listen),
            &review,
        )
        .await;
        assert_eq!(r["allowed"], true, "{r}");
        let pod = apply_patch(
            &review["request"]["object"],
            &patch_bytes(&r["patch"]).expect("a patch"),
        );
        validate_k8s(std::slice::from_ref(&pod)).unwrap();
        assert!(!pod.to_string().contains(VALUE), "no value in the pod");
        pod
    }
}

/// The pod's agent container running as a process.
struct Agent {
    running: Running,
    metrics: u16,
    log: PathBuf,
    secrets: PathBuf,
}

impl Agent {
    /// The agent container as a process: its paths mapped under `root`, the kubelet's part
    /// done by hand (the token file, the pod's name), AWS at `aws`.
    fn start(container: &Value, root: &Path, aws: Vec<(String, String)>) -> Agent {
        let mount_path = container["volumeMounts"][0]["mountPath"].as_str().unwrap();
        let secrets = root.join("secrets");
        let token_dir = root.join("token");
        let podinfo = root.join("podinfo");
        for d in [&secrets, &token_dir, &podinfo] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(token_dir.join("token"), TOKEN).unwrap();
        let metrics = free_port();
        let log = root.join("agent.log");
        let (stdout, stderr) = log_to(&log);
        let running = Running(
            agent_command(
                container,
                &[
                    (mount_path, secrets.as_path()),
                    (TOKEN_DIR, token_dir.as_path()),
                    (contract::PODINFO_DIR, podinfo.as_path()),
                ],
            )
            .envs(aws)
            .env(env::POD_NAME, POD)
            .env(env::METRICS_LISTEN, format!("127.0.0.1:{metrics}"))
            .env(env::TERMINATION_LOG, root.join("termination-log"))
            .env(env::LOG_FORMAT, contract::LogFormat::Text.as_str())
            .env("KURA_LOG", LOG)
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("the agent starts"),
        );
        Agent {
            running,
            metrics,
            log,
            secrets,
        }
    }

    /// A file the app would read (empty while absent).
    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.secrets.join(file)).unwrap_or_default()
    }

    fn metric(&self, series: &str) -> f64 {
        metric(self.metrics, series)
    }

    /// `kura_agent_version_checks_total{outcome}`.
    fn checks(&self, outcome: &str) -> f64 {
        self.metric(&format!(
            "kura_agent_version_checks_total{{outcome=\"{outcome}\"}}"
        ))
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test with the agent's log if it exited.
    fn alive(&mut self) {
        self.running.assert_alive("the agent", &self.log);
    }

    /// Waits until `done` holds of the running agent.
    async fn until(&mut self, what: &str, mut done: impl FnMut(&Agent) -> bool) {
        until(what, || {
            self.alive();
            done(self)
        })
        .await;
    }
}

/// Puts a new value of `/demo/orders/db` and waits for it in the agent's file.
async fn rotation_lands(a: &mut Agent, sm: &aws_sdk_secretsmanager::Client, value: &str) {
    put_value(sm, "/demo/orders/db", value).await;
    a.until("the rotated value in the file", |a| {
        a.read("db-password") == value
    })
    .await;
}

/// Waits for `checks` more answered checks and asserts that no value was fetched meanwhile.
async fn fetches_nothing(a: &mut Agent, checks: u32, value_calls: &dyn Fn() -> usize, when: &str) {
    let calls = value_calls();
    let from = a.checks("ok");
    a.until(&format!("{checks} more answered checks {when}"), |a| {
        a.checks("ok") >= from + f64::from(checks)
    })
    .await;
    assert_eq!(value_calls(), calls, "nothing fetched {when}");
}

/// The agent container of a patched pod (the native sidecar running `run`).
fn agent_container(pod: &Value) -> Value {
    let agent = pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "kura-agent")
        .expect("the agent's native sidecar")
        .clone();
    assert_eq!(agent["restartPolicy"], "Always");
    assert_eq!(agent["args"][0], contract::AgentCommand::Run.as_str());
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_ask_the_version_service_and_fall_back_to_aws_without_it() {
    // A secret and a parameter of the namespace under a customer KMS key; kura serve with its
    // version service on its own port, with the webhook's certificate.
    let c = Cluster::start().await;
    let (moto, serve) = (&c.moto, &c.serve);
    moto.secret("/demo/orders/db", VALUE, Some(&c.key), &[])
        .await;
    let host = "/demo/orders/db-host";
    moto.parameter(host, &format!("{VALUE}-host"), "SecureString", Some(&c.key))
        .await;
    let sm = moto.client().await;
    let mut server = Some(c.start_serve("serve-1.log"));

    let pod = c
        .admit(&[
            ("kura.dev/inject", "true"),
            ("kura.dev/secret.db-password", "/demo/orders/db"),
            ("kura.dev/secret.db-host", "ssm:/demo/orders/db-host"),
        ])
        .await;

    // The running agent: the token volume mounted read-only, and the four variables.
    let agent = agent_container(&pod);
    let token_mount = agent["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == TOKEN_DIR)
        .unwrap_or_else(|| panic!("no token mount in {agent}"));
    assert_eq!(token_mount["readOnly"], true);
    let token_volume = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == token_mount["name"])
        .unwrap();
    let projection = &token_volume["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(projection["audience"], AUDIENCE, "{token_volume}");
    assert_eq!(
        format!("{TOKEN_DIR}/{}", projection["path"].as_str().unwrap()),
        TOKEN_FILE
    );
    for c in pod["spec"]["containers"].as_array().unwrap() {
        assert!(
            !c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|m| m["name"] == token_mount["name"]),
            "only the agent mounts the token: {c}"
        );
    }
    let vs_url = format!("https://127.0.0.1:{}", serve.versions);
    assert_eq!(
        env_entry(&agent, env::VERSION_SERVICE_URL)["value"],
        vs_url.as_str()
    );
    assert_eq!(
        env_entry(&agent, env::VERSION_SERVICE_CA)["value"],
        serve.certs.ca.as_str()
    );
    assert_eq!(
        env_entry(&agent, env::VERSION_SERVICE_TOKEN)["value"],
        TOKEN_FILE
    );
    assert_eq!(
        env_entry(&agent, env::POD_NAME)["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    let spec: Value =
        serde_json::from_str(env_entry(&agent, env::SPEC)["value"].as_str().unwrap()).unwrap();
    assert_eq!(spec["refreshInterval"], 2, "--refresh-interval 2s: {spec}");

    // The agent, its AWS calls through a counting proxy to moto.
    let proxy = Proxy::start(&moto.endpoint).await;
    let mut a = Agent::start(&agent, c.root.path(), proxy.env(moto));
    let value_calls = || {
        [
            "batchgetsecretvalue",
            "getsecretvalue",
            "getparameters",
            "getparameter",
        ]
        .iter()
        .map(|op| proxy.count(op))
        .sum::<usize>()
    };

    a.until("the first write", |a| a.read("db-password") == VALUE)
        .await;
    assert_eq!(a.read("db-host"), format!("{VALUE}-host"));
    assert_eq!(
        (
            proxy.count("batchgetsecretvalue"),
            proxy.count("getparameters")
        ),
        (1, 1),
        "one call a service for the first fetch"
    );
    let first_fetch = value_calls();
    assert_eq!(first_fetch, 2);
    assert_eq!(
        a.metric("kura_agent_aws_calls_total"),
        2.0,
        "the agent counts the calls the proxy saw"
    );

    // Several intervals answered by the service: nothing fetched from AWS.
    a.until("three answered checks", |a| a.checks("ok") >= 3.0)
        .await;
    assert_eq!(
        value_calls(),
        first_fetch,
        "no value fetched while nothing changed"
    );
    assert_eq!(a.checks("fallback"), 0.0);
    assert_eq!(
        serve.metric("kura_fleet_agents{namespace=\"demo\"}"),
        1.0,
        "the agent is counted in its namespace"
    );
    let ok_requests = "kura_version_service_requests_total{outcome=\"ok\"}";
    let answered = serve.metric(ok_requests);
    assert!(answered >= 3.0, "{answered}");
    until("the service answering more checks", || {
        serve.metric(ok_requests) > answered
    })
    .await;
    assert!(
        (c.api.reviews() as f64) < answered,
        "the token's review is remembered, not asked for each check"
    );

    // A rotation of each: the service sees them within its TTL, the agent fetches just those.
    put_value(&sm, "/demo/orders/db", &format!("{VALUE}-r2")).await;
    moto.parameter(
        host,
        &format!("{VALUE}-host-r2"),
        "SecureString",
        Some(&c.key),
    )
    .await;
    a.until("the rotated values in the files", |a| {
        a.read("db-password") == format!("{VALUE}-r2")
            && a.read("db-host") == format!("{VALUE}-host-r2")
    })
    .await;
    // Once both are held, the service's versions match them again: nothing more is fetched.
    fetches_nothing(&mut a, 2, &value_calls, "once the rotation is held").await;
    assert_eq!(a.checks("fallback"), 0.0);

    // The service dies: the agent says so once and polls AWS directly; a rotation still lands.
    drop(server.take());
    a.until("a check falling back", |a| a.checks("fallback") >= 1.0)
        .await;
    let warnings = |a: &Agent| {
        a.logs()
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("the version service failed"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let warned = warnings(&a);
    assert_eq!(warned.len(), 1, "one warning for the outage:\n{}", a.logs());
    assert!(warned[0].contains("could not connect"), "{warned:?}");
    rotation_lands(&mut a, &sm, &format!("{VALUE}-r3")).await;

    // The service back on the same ports: the agent asks it again, and fetches nothing.
    server = Some(c.start_serve("serve-2.log"));
    let ok_before = a.checks("ok");
    a.until("an answered check after the restart", |a| {
        a.checks("ok") > ok_before
    })
    .await;
    assert!(
        a.logs().contains("the version service answers again"),
        "{}",
        a.logs()
    );
    // Four intervals: longer than the three after which an agent without a success is stale.
    fetches_nothing(&mut a, 4, &value_calls, "once the service answers again").await;
    assert_eq!(a.read("db-password"), format!("{VALUE}-r3"));
    assert_eq!(serve.metric("kura_fleet_agents{namespace=\"demo\"}"), 1.0);
    // Intervals that fetch nothing are successes too: the agent is not stale.
    until("the agent counted fresh", || {
        scrape(serve.metrics).is_some_and(|t| {
            sample(&t, "kura_fleet_agents_stale{namespace=\"demo\"}").unwrap_or(0.0) == 0.0
        })
    })
    .await;

    // The service hangs (stopped, its socket still accepting): each check gives up at the
    // client's timeout and the agent polls AWS; a rotation still lands, and when the service
    // runs again the agent asks it again. (Its metrics are not scraped while it is stopped.)
    let mut server = server.take().unwrap();
    let fallbacks = a.checks("fallback");
    server.signal(nix::sys::signal::Signal::SIGSTOP);
    a.until("a check falling back from a hung service", |a| {
        a.checks("fallback") > fallbacks
    })
    .await;
    let warned = warnings(&a);
    assert_eq!(warned.len(), 2, "one warning an outage:\n{}", a.logs());
    assert!(warned[1].contains("no answer within"), "{warned:?}");
    rotation_lands(&mut a, &sm, &format!("{VALUE}-r4")).await;
    server.signal(nix::sys::signal::Signal::SIGCONT);
    let ok_before = a.checks("ok");
    a.until("an answered check after the hang", |a| {
        a.checks("ok") > ok_before
    })
    .await;

    // Both stop on SIGTERM, flushing their logs; no value in either.
    server.signal(nix::sys::signal::Signal::SIGTERM);
    a.running.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(server.exited("kura serve").await.success());
    assert!(a.running.exited("the agent").await.success());
    let agent_logs = a.logs();
    assert!(
        agent_logs.contains("version service answered"),
        "debug lines were captured:\n{agent_logs}"
    );
    assert!(!agent_logs.contains(VALUE), "a value in the agent's logs");
    for log in ["serve-1.log", "serve-2.log"] {
        let text = std::fs::read_to_string(c.root.path().join(log)).unwrap();
        assert!(!text.contains(VALUE), "a value in {log}");
        assert!(text.contains("version service listening"), "{log}: {text}");
    }
}

/// An agent that cannot fetch a secret tells the service so at its next check: the fleet
/// gauges count it as failing with the agent's own error kind, the files keep the last good
/// value, and once the secret is back the agent is counted healthy again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_agent_is_counted_by_the_service_until_it_recovers() {
    let c = Cluster::start().await;
    c.moto
        .secret("/demo/orders/db", VALUE, Some(&c.key), &[])
        .await;
    let sm = c.moto.client().await;
    let _server = c.start_serve("serve.log");
    let pod = c
        .admit(&[
            ("kura.dev/inject", "true"),
            ("kura.dev/secret.db-password", "/demo/orders/db"),
        ])
        .await;
    let mut a = Agent::start(&agent_container(&pod), c.root.path(), c.moto.env());
    a.until("the first write and an answered check", |a| {
        a.read("db-password") == VALUE && a.checks("ok") >= 1.0
    })
    .await;
    let agents = "kura_fleet_agents{namespace=\"demo\"}";
    let failing = "kura_fleet_agents_failing{namespace=\"demo\",error_kind=\"deleted\"}";
    let stale = "kura_fleet_agents_stale{namespace=\"demo\"}";
    assert_eq!(c.serve.metric(agents), 1.0);
    assert_eq!(c.serve.metric(failing), 0.0);
    assert_eq!(c.serve.metric(stale), 0.0);

    // Scheduled for deletion: the service answers `unknown`, the agent asks AWS, fails, and
    // reports the failure with its next check.
    sm.delete_secret()
        .secret_id("/demo/orders/db")
        .recovery_window_in_days(7)
        .send()
        .await
        .unwrap();
    a.until("the agent's deleted error", |a| {
        a.metric("kura_agent_errors_total{kind=\"deleted\"}") >= 1.0
    })
    .await;
    until("the service counting the agent as failing", || {
        c.serve.metric(failing) == 1.0
    })
    .await;
    assert_eq!(c.serve.metric(agents), 1.0);
    // Its last success ages past three intervals: stale as well.
    until("the service counting the agent as stale", || {
        c.serve.metric(stale) == 1.0
    })
    .await;
    assert_eq!(a.read("db-password"), VALUE, "the last good value kept");
    assert_eq!(a.checks("fallback"), 0.0, "the service kept answering");

    // Restored: the version the agent holds is current again, and it is healthy.
    sm.restore_secret()
        .secret_id("/demo/orders/db")
        .send()
        .await
        .unwrap();
    until("the service counting the agent as healthy", || {
        scrape(c.serve.metrics).is_some_and(|t| {
            sample(&t, agents) == Some(1.0)
                && sample(&t, failing).unwrap_or(0.0) == 0.0
                && sample(&t, stale).unwrap_or(0.0) == 0.0
        })
    })
    .await;
    assert_eq!(a.read("db-password"), VALUE);
    assert!(!a.logs().contains(VALUE), "a value in the agent's logs");
}
