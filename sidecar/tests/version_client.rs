//! The agent and the version service (contract §8), through the real binary against moto: a
//! stub service in this file (HTTPS with its own CA, answering what each test says and recording
//! every request) and a recording proxy in front of moto that can also throttle, so the tests
//! see exactly which AWS calls the agent makes.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use kura_agent::contract::env;
use kura_agent::version_client::{Failure, VersionClient};
use kura_agent::versions::{
    AgentState, PATH, VersionAnswer, VersionRef, VersionsAnswer, VersionsRequest,
};

/// Runs `serve` on a thread of its own with its own runtime, so that a test blocking its own
/// thread never stalls the stubs.
fn on_own_thread<F>(serve: impl FnOnce() -> F + Send + 'static)
where
    F: std::future::Future<Output = ()>,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(serve());
    });
}

/// Serves HTTP/1.1 on `tcp` (already wrapped in TLS or not) with `handle`.
async fn serve_http<S, H, Fut>(io: S, handle: H)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let handle = Arc::new(handle);
    let service = hyper::service::service_fn(move |req| {
        let handle = handle.clone();
        async move { Ok::<_, Infallible>(handle(req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

fn response(status: u16, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The stub version service.

/// What the stub does with the next checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Answers from its table: `current` for a known secret, `unknown` for the rest.
    Answer,
    /// Closes every connection as soon as it is accepted.
    Close,
    /// Answers correctly, 3 s late (the agent gives up after 2 s).
    Slow,
    /// Answers this status with an error message.
    Status(u16),
    /// `200` with a body that is not JSON.
    Garbage,
    /// `200` with one answer fewer than the references asked.
    Short,
}

/// A request the stub saw.
#[derive(Debug, Clone)]
struct Seen {
    authorization: String,
    body: String,
}

struct StubState {
    mode: Mode,
    versions: BTreeMap<String, String>,
    seen: Vec<Seen>,
    answered: usize,
}

struct Stub {
    url: String,
    ca_pem: String,
    state: Arc<Mutex<StubState>>,
}

/// A CA and a serving certificate for 127.0.0.1 that it signed.
fn certificates() -> (String, rustls::ServerConfig) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kura test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let der_key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], der_key)
        .unwrap();
    (ca.pem(), config)
}

impl Stub {
    fn start() -> Stub {
        let (ca_pem, config) = certificates();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(StubState {
            mode: Mode::Answer,
            versions: BTreeMap::new(),
            seen: Vec::new(),
            answered: 0,
        }));
        let shared = state.clone();
        on_own_thread(move || async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((tcp, _)) = listener.accept().await {
                if shared.lock().unwrap().mode == Mode::Close {
                    drop(tcp);
                    continue;
                }
                let (acceptor, state) = (acceptor.clone(), shared.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    serve_http(tls, move |req| stub_answer(state.clone(), req)).await;
                });
            }
        });
        Stub { url, ca_pem, state }
    }

    fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    fn set_version(&self, secret: &str, version: &str) {
        self.state
            .lock()
            .unwrap()
            .versions
            .insert(secret.into(), version.into());
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    fn checks(&self) -> usize {
        self.state.lock().unwrap().seen.len()
    }

    fn answered(&self) -> usize {
        self.state.lock().unwrap().answered
    }

    /// The environment that points an agent at this stub, with `token` as its token file.
    fn env(&self, token: &std::path::Path) -> Vec<(String, String)> {
        vec![
            (env::VERSION_SERVICE_URL.into(), self.url.clone()),
            (env::VERSION_SERVICE_CA.into(), self.ca_pem.clone()),
            (
                env::VERSION_SERVICE_TOKEN.into(),
                token.display().to_string(),
            ),
            (env::POD_NAME.into(), "orders-7c9f".into()),
        ]
    }

    /// Waits until `more` checks past the current count were made.
    async fn wait_checks(&self, more: usize, agent: &AgentProc) {
        let want = self.checks() + more;
        assert!(
            eventually(Duration::from_secs(20), || self.checks() >= want).await,
            "the agent did not check the service {more} more times\n{}",
            agent.log()
        );
    }
}

async fn stub_answer(
    state: Arc<Mutex<StubState>>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let path = req.uri().path().to_string();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    let (mode, versions) = {
        let mut s = state.lock().unwrap();
        s.seen.push(Seen {
            authorization,
            body: text.clone(),
        });
        (s.mode, s.versions.clone())
    };
    if path != PATH {
        return response(404, r#"{"message":"no such path"}"#);
    }
    let asked: VersionsRequest = match serde_json::from_str(&text) {
        Ok(r) => r,
        Err(_) => return response(400, r#"{"message":"not a versions request"}"#),
    };
    let mut answer = VersionsAnswer {
        versions: asked
            .references
            .iter()
            .map(|r| VersionAnswer {
                secret: r.secret.clone(),
                version_stage: r.version_stage.clone(),
                version_id: r.version_id.clone(),
                current: versions.get(&r.secret).cloned(),
                unknown: !versions.contains_key(&r.secret),
            })
            .collect(),
    };
    match mode {
        Mode::Answer | Mode::Close => {}
        Mode::Slow => tokio::time::sleep(Duration::from_secs(3)).await,
        Mode::Status(code) => {
            return response(
                code,
                format!(r#"{{"message":"stub says {code}","refused":["/elsewhere/x"]}}"#),
            );
        }
        Mode::Garbage => return response(200, "<html>not json</html>"),
        Mode::Short => {
            answer.versions.pop();
        }
    }
    state.lock().unwrap().answered += 1;
    response(200, serde_json::to_vec(&answer).unwrap())
}

// ---------------------------------------------------------------------------------------------
// The recording (and throttling) proxy in front of moto.

/// An AWS call the agent made: its `X-Amz-Target` and its body.
#[derive(Debug, Clone)]
struct Call {
    target: String,
    body: String,
}

struct AwsProxy {
    endpoint: String,
    calls: Arc<Mutex<Vec<Call>>>,
    /// Calls still to answer with `ThrottlingException`.
    throttle: Arc<Mutex<usize>>,
}

impl AwsProxy {
    fn in_front_of(backend: &str, throttle: usize) -> AwsProxy {
        let backend_port = moto::port_of(backend);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let calls = Arc::new(Mutex::new(Vec::new()));
        let throttle = Arc::new(Mutex::new(throttle));
        let (c, t) = (calls.clone(), throttle.clone());
        on_own_thread(move || async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((tcp, _)) = listener.accept().await {
                let (calls, throttle) = (c.clone(), t.clone());
                tokio::spawn(serve_http(tcp, move |req| {
                    proxy(backend_port, calls.clone(), throttle.clone(), req)
                }));
            }
        });
        AwsProxy {
            endpoint,
            calls,
            throttle,
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        aws_env(&self.endpoint)
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    fn set_throttle(&self, n: usize) {
        *self.throttle.lock().unwrap() = n;
    }
}

async fn proxy(
    port: u16,
    calls: Arc<Mutex<Vec<Call>>>,
    throttle: Arc<Mutex<usize>>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    calls.lock().unwrap().push(Call {
        target,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    {
        let mut left = throttle.lock().unwrap();
        if *left > 0 {
            *left -= 1;
            return response(
                400,
                r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#,
            );
        }
    }
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let answer = sender
        .send_request(Request::from_parts(parts, Full::new(body)))
        .await
        .unwrap();
    let (mut parts, body) = answer.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    parts.headers.remove("transfer-encoding");
    parts.headers.remove("content-length");
    Response::from_parts(parts, Full::new(body))
}

// ---------------------------------------------------------------------------------------------

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn create(moto: &Moto, name: &str, value: &str) -> String {
    moto.client()
        .await
        .create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await
        .unwrap()
        .version_id
        .unwrap()
}

async fn rotate(moto: &Moto, name: &str, value: &str) -> String {
    testkit::moto::put_value(&moto.client().await, name, value).await
}

fn write_token(path: &std::path::Path, token: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, token).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn the_service_decides_what_is_fetched_from_aws() {
    let moto = Moto::start();
    let aws = AwsProxy::in_front_of(&moto.endpoint, 0);
    let (a, b, p) = (name("vs-a"), name("vs-b"), name("vs-p"));
    let va1 = create(&moto, &a, "sv-a-1").await;
    let vb1 = create(&moto, &b, "sv-b-1").await;
    moto.parameter(&p, "sv-p-1", "String", None).await;
    let parameter = format!("ssm:{p}");
    let stub = Stub::start();
    stub.set_version(&a, &va1);
    stub.set_version(&b, &vb1);
    // The parameter is unknown to the service for now.

    let s = Scratch::new();
    let token = s.tmp.path().join("token");
    write_token(&token, "token-1");
    let mport = moto::free_port();
    let started = now();
    let spec = spec(
        vec![file("a", &a), file("b", &b), file("p", &parameter)],
        1,
        None,
    );
    let env: Vec<(String, String)> = aws.env().into_iter().chain(stub.env(&token)).collect();
    let agent = s.run(
        &spec,
        &env,
        &["--metrics-listen", &format!("127.0.0.1:{mport}")],
    );
    s.expect_written(&agent, "p").await;

    // `unknown` is fetched from AWS every interval; what the service knows, never.
    stub.wait_checks(1, &agent).await;
    let mark = aws.count();
    stub.wait_checks(3, &agent).await;
    let window: Vec<Call> = aws.calls()[mark..].to_vec();
    assert!(window.len() >= 2, "{window:?}\n{}", agent.log());
    for c in &window {
        assert_eq!(c.target, "AmazonSSM.GetParameters", "{c:?}");
        assert!(c.body.contains(&p), "{c:?}");
    }

    // Everything known and unchanged: no AWS call at all, interval after interval.
    stub.set_version(&parameter, "1");
    stub.wait_checks(1, &agent).await;
    let mark = aws.count();
    let calls_metric = metric(mport, "kura_agent_aws_calls_total");
    stub.wait_checks(4, &agent).await;
    assert_eq!(aws.calls()[mark..].len(), 0, "{:?}", &aws.calls()[mark..]);
    assert_eq!(metric(mport, "kura_agent_aws_calls_total"), calls_metric);

    // A rotation the service reports: only that reference is fetched, its file rewritten.
    let va2 = rotate(&moto, &a, "sv-a-2").await;
    stub.set_version(&a, &va2);
    let mark = aws.count();
    s.expect_file(&agent, "a", "sv-a-2", Duration::from_secs(10))
        .await;
    stub.wait_checks(2, &agent).await;
    let window: Vec<Call> = aws.calls()[mark..].to_vec();
    assert_eq!(window.len(), 1, "{window:?}");
    assert_eq!(window[0].target, "secretsmanager.BatchGetSecretValue");
    assert!(
        window[0].body.contains(&a) && !window[0].body.contains(&b),
        "{window:?}"
    );
    assert_eq!(s.read("b").as_deref(), Some("sv-b-1"));
    assert_eq!(s.read("p").as_deref(), Some("sv-p-1"));

    // The token is read again for each check.
    assert!(
        stub.seen()
            .iter()
            .all(|c| c.authorization == "Bearer token-1"),
        "{:?}",
        stub.seen()
    );
    write_token(&token, "token-2");
    stub.wait_checks(2, &agent).await;
    assert_eq!(stub.seen().last().unwrap().authorization, "Bearer token-2");

    // kura.dev/refresh-now still fetches everything directly, whatever the service says.
    rotate(&moto, &b, "sv-b-2").await;
    s.annotate("kura.dev/refresh-now=\"1\"\n");
    s.expect_file(&agent, "b", "sv-b-2", Duration::from_secs(10))
        .await;

    // What the agent reports about itself, and no value in anything the service saw.
    let last: VersionsRequest = serde_json::from_str(&stub.seen().last().unwrap().body).unwrap();
    assert_eq!(last.references, {
        let mut refs: Vec<VersionRef> = [&a, &b, &parameter]
            .iter()
            .map(|s| VersionRef {
                secret: s.to_string(),
                version_stage: None,
                version_id: None,
            })
            .collect();
        refs.sort();
        refs
    });
    let AgentState {
        pod,
        refresh_interval_seconds,
        last_success_unix,
        consecutive_failures,
        error_kind,
    } = last.agent;
    assert_eq!(pod, "orders-7c9f");
    assert_eq!(refresh_interval_seconds, 1);
    assert!(
        last_success_unix.unwrap() >= started,
        "{last_success_unix:?}"
    );
    assert_eq!((consecutive_failures, error_kind), (0, None));

    // A failing agent says so: the service reports a version AWS then refuses to serve.
    aws.set_throttle(usize::MAX);
    stub.set_version(&a, "a-version-aws-throttles");
    let failing = |seen: &Seen| {
        let r: VersionsRequest = serde_json::from_str(&seen.body).unwrap();
        r.agent.consecutive_failures >= 1 && r.agent.error_kind.as_deref() == Some("throttled")
    };
    assert!(
        eventually(Duration::from_secs(30), || stub.seen().iter().any(failing)).await,
        "{}",
        agent.log()
    );
    aws.set_throttle(0);
    stub.set_version(&a, &va2);
    assert_eq!(
        s.read("a").as_deref(),
        Some("sv-a-2"),
        "the last good file stays"
    );

    let values = ["sv-a-1", "sv-a-2", "sv-b-1", "sv-b-2", "sv-p-1"];
    for seen in stub.seen() {
        for v in values {
            assert!(
                !seen.body.contains(v),
                "a value reached the service: {seen:?}"
            );
        }
    }
    assert!(metric(mport, "kura_agent_version_checks_total{outcome=\"ok\"}") >= 10.0);
    assert_eq!(
        metric(
            mport,
            "kura_agent_version_checks_total{outcome=\"fallback\"}"
        ),
        0.0
    );
    agent.assert_log_free_of(&values);
    assert!(!agent.log().contains("token-1") && !agent.log().contains("token-2"));
}

#[tokio::test]
async fn any_service_failure_polls_aws_directly_and_the_service_is_used_again_after() {
    let moto = Moto::start();
    let aws = AwsProxy::in_front_of(&moto.endpoint, 0);
    let (a, b) = (name("fb-a"), name("fb-b"));
    let va = create(&moto, &a, "bf-a-0").await;
    let vb = create(&moto, &b, "bf-b-0").await;
    let stub = Stub::start();
    stub.set_version(&a, &va);
    stub.set_version(&b, &vb);
    let s = Scratch::new();
    let token = s.tmp.path().join("token");
    write_token(&token, "fb-token");
    let mport = moto::free_port();
    let env: Vec<(String, String)> = aws.env().into_iter().chain(stub.env(&token)).collect();
    let agent = s.run(
        &spec(vec![file("a", &a), file("b", &b)], 1, None),
        &env,
        &["--metrics-listen", &format!("127.0.0.1:{mport}")],
    );
    s.expect_written(&agent, "a").await;
    stub.wait_checks(2, &agent).await;

    let modes = [
        Mode::Close,
        Mode::Slow,
        Mode::Status(401),
        Mode::Status(403),
        Mode::Status(503),
        Mode::Garbage,
        Mode::Short,
    ];
    for (i, mode) in modes.into_iter().enumerate() {
        // The service fails; a rotation it would not report still lands, from AWS directly.
        stub.set_mode(mode);
        let value = format!("bf-a-{}", i + 1);
        let v = rotate(&moto, &a, &value).await;
        s.expect_file(&agent, "a", &value, Duration::from_secs(15))
            .await;

        // It answers again: the agent goes back to it, and stops calling AWS.
        stub.set_version(&a, &v);
        stub.set_mode(Mode::Answer);
        let answered = stub.answered();
        assert!(
            eventually(Duration::from_secs(15), || stub.answered() >= answered + 2).await,
            "{mode:?}: the agent did not come back to the service\n{}",
            agent.log()
        );
        let mark = aws.count();
        let answered = stub.answered();
        assert!(
            eventually(Duration::from_secs(15), || stub.answered() >= answered + 2).await,
            "{mode:?}\n{}",
            agent.log()
        );
        assert_eq!(aws.count(), mark, "{mode:?}: {:?}", &aws.calls()[mark..]);
    }
    assert_eq!(s.read("b").as_deref(), Some("bf-b-0"));
    assert!(
        metric(
            mport,
            "kura_agent_version_checks_total{outcome=\"fallback\"}"
        ) >= modes.len() as f64
    );

    // Each failure is logged once when it starts and once when it ends, not every interval.
    let log = agent.log();
    let failed = log
        .lines()
        .filter(|l| l.contains("the version service failed"))
        .count();
    let back = log
        .lines()
        .filter(|l| l.contains("the version service answers again"))
        .count();
    assert_eq!((failed, back), (modes.len(), modes.len()), "{log}");
    for reason in [
        "stub says 401",
        "stub says 403",
        "stub says 503",
        "no answer within 2000 ms",
        "not a versions answer",
        "1 answers for 2 references",
    ] {
        assert!(log.contains(reason), "{reason}:\n{log}");
    }
    assert!(!log.contains("fb-token"), "{log}");
    agent.assert_log_free_of(&["bf-a-0", "bf-a-1", "bf-a-7", "bf-b-0"]);
}

#[tokio::test]
async fn check_errors_name_the_service_and_what_went_wrong_never_the_token() {
    let stub = Stub::start();
    let tmp = tempfile::tempdir().unwrap();
    let token = tmp.path().join("token");
    write_token(&token, "hunter2-token");
    let ask = VersionsRequest {
        references: vec![VersionRef {
            secret: "/prod/orders/db".into(),
            version_stage: None,
            version_id: None,
        }],
        agent: AgentState::default(),
    };
    let client = VersionClient::new(&stub.url, &stub.ca_pem, token.clone()).unwrap();
    stub.set_version("/prod/orders/db", "v1");
    let answers = client.check(&ask).await.unwrap();
    assert_eq!(answers[0].current.as_deref(), Some("v1"));

    stub.set_mode(Mode::Status(401));
    let e = client.check(&ask).await.unwrap_err();
    assert!(
        matches!(e.failure(), Some(Failure::Status { status: 401, .. })),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.starts_with(&format!(
            "version service {}: answered 401: stub says 401",
            stub.url
        )),
        "{text}"
    );
    let mut errors = vec![format!("{e} {e:?}")];

    // Another CA than the service's: a TLS failure.
    let (other_ca, _) = certificates();
    let untrusting = VersionClient::new(&stub.url, &other_ca, token.clone()).unwrap();
    stub.set_mode(Mode::Answer);
    let e = untrusting.check(&ask).await.unwrap_err();
    assert!(matches!(e.failure(), Some(Failure::Tls(_))), "{e:?}");
    errors.push(format!("{e} {e:?}"));

    // Nothing listening.
    let refused = format!("https://127.0.0.1:{}", moto::free_port());
    let e = VersionClient::new(&refused, &stub.ca_pem, token.clone())
        .unwrap()
        .check(&ask)
        .await
        .unwrap_err();
    assert!(matches!(e.failure(), Some(Failure::Connect(_))), "{e:?}");
    assert!(e.to_string().contains(&refused), "{e}");

    errors.push(format!("{e} {e:?}"));
    for e in &errors {
        assert!(!e.contains("hunter2"), "{e}");
    }
}

#[tokio::test]
async fn the_first_fetch_backs_off_while_aws_throttles() {
    let moto = Moto::start();
    let db = name("throttled");
    create(&moto, &db, "th-1").await;
    let spec = spec(vec![file("db", &db)], 60, None);

    // Throttled for longer than the deadline: a clear error at the end.
    let aws = AwsProxy::in_front_of(&moto.endpoint, usize::MAX);
    let s = Scratch::new();
    let mut env = aws.env();
    // Longer than one attempt can take (--store-timeout 5s), so there are at least two.
    env.push((env::INIT_DEADLINE.into(), "8s".into()));
    let (status, log) = s.init(&spec, &env);
    assert!(!status.success(), "{log}");
    let msg = s.termination_message();
    assert!(
        msg.contains("throttled") && msg.contains(&db) && msg.contains("--init-deadline"),
        "{msg}"
    );
    assert!(
        aws.count() > 3,
        "more than the SDK's own attempts: {}",
        aws.count()
    );

    // Throttled for a while (two rounds of the SDK's three attempts): init succeeds.
    aws.set_throttle(6);
    let s = Scratch::new();
    let (status, log) = s.init(&spec, &aws.env());
    assert!(status.success(), "{log}");
    assert_eq!(s.read("db").as_deref(), Some("th-1"));
    assert!(
        log.contains("the store is throttling or unavailable; trying again"),
        "{log}"
    );
    // `run` (the native sidecar, with no set on disk yet) backs off the same way.
    aws.set_throttle(6);
    let s = Scratch::new();
    let mut agent = s.run(&spec, &aws.env(), &[]);
    s.expect_file(&agent, "db", "th-1", Duration::from_secs(30))
        .await;
    assert!(agent.is_running(), "{}", agent.log());

    // A failure that waiting cannot fix is not retried.
    let before = aws.count();
    let s = Scratch::new();
    let (status, _) = s.init(&spec_missing(), &aws.env());
    assert!(!status.success());
    assert_eq!(aws.count() - before, 1);
}

fn spec_missing() -> String {
    spec(vec![file("x", "/kura-test/never-created")], 60, None)
}
