//! The admission server as kube-apiserver and an operator meet it, on the real `kura serve`
//! binary: HTTP/1.1 keep-alive and HTTP/2 over TLS 1.2/1.3 (nothing older), certificate reload
//! that keeps the last good pair, the body limit, `/healthz` and `/readyz`, graceful drain on
//! SIGTERM, Prometheus metrics on their own listener, and JSON logs with one span per admission
//! that never carry a secret value.
//!
//! Secret metadata comes from the local file store (`examples/store.yaml`), which holds values
//! too: the logs must show none of them.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;

const STORE: &str = concat!(
    "--store=file:",
    env!("CARGO_MANIFEST_DIR"),
    "/examples/store.yaml"
);
/// Values in `examples/store.yaml`: the webhook reads metadata only, so none may reach a log.
const STORE_VALUES: [&str; 4] = [
    "local-demo-password",
    "older-demo-password",
    "local-demo-api-key",
    "not-for-demo",
];

fn example_review() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/admission-review.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn review_with_uid(uid: &str) -> Value {
    let mut r = example_review();
    r["request"]["uid"] = json!(uid);
    r
}

/// The child's stdout (JSON logs) and stderr, read continuously so the pipe never fills and
/// blocks the server.
#[derive(Clone, Default)]
struct Logs {
    lines: Arc<Mutex<Vec<String>>>,
}

impl Logs {
    fn capture(hook: &mut Webhook) -> Logs {
        let logs = Logs::default();
        let out = hook.child.stdout.take().unwrap();
        let err = hook.child.stderr.take().unwrap();
        for stream in [Box::new(out) as Box<dyn Read + Send>, Box::new(err)] {
            let lines = logs.lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap().push(line);
                }
            });
        }
        logs
    }

    fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    fn json(&self) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until a line satisfies `f`.
    fn wait_for(&self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = self.json().into_iter().find(&f) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "no log line {what}:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `kura serve` with the file store, its logs captured.
fn start(certs: &TestCerts, extra: &[&str]) -> (Webhook, Logs) {
    let mut args = vec![STORE];
    args.extend_from_slice(extra);
    let mut hook = Webhook::start(certs, &args, &[]);
    let logs = Logs::capture(&mut hook);
    (hook, logs)
}

/// `kura serve` with our own shutdown timings (the shared harness fixes them), logs captured.
fn start_with_shutdown(certs: &TestCerts, delay: &str, grace: &str) -> (Webhook, Logs) {
    let shutdown = [
        format!("--shutdown-delay={delay}"),
        format!("--shutdown-grace={grace}"),
    ];
    start_under(&[], certs, &shutdown)
}

/// `kura serve` run through `wrapper` (a command that execs the rest, such as `prlimit`), with
/// the file store and `extra` flags, logs captured.
fn start_under(wrapper: &[&str], certs: &TestCerts, extra: &[String]) -> (Webhook, Logs) {
    let port = free_port();
    let mport = free_port();
    let kura = kura_bin();
    let mut argv: Vec<&std::ffi::OsStr> = wrapper.iter().map(|a| a.as_ref()).collect();
    argv.push(kura.as_ref());
    let child = Command::new(argv[0])
        .args(&argv[1..])
        .arg("serve")
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg(format!("--metrics-listen=127.0.0.1:{mport}"))
        .arg("--tls-cert")
        .arg(&certs.cert)
        .arg("--tls-key")
        .arg(&certs.key)
        .args([STORE, "--watch-namespaces=never", "--log-format=json"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "kura serve did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut hook = Webhook {
        url: format!("https://127.0.0.1:{port}"),
        metrics_url: format!("http://127.0.0.1:{mport}/metrics"),
        child,
    };
    let logs = Logs::capture(&mut hook);
    (hook, logs)
}

fn addr(hook: &Webhook) -> SocketAddr {
    hook.url.trim_start_matches("https://").parse().unwrap()
}

fn signal(hook: &Webhook, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &hook.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig}");
}

fn wait_exit(hook: &mut Webhook, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = hook.child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "kura serve did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A rustls client trusting only `ca`, restricted to `versions`, offering `alpn`.
fn connector(
    ca: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> TlsConnector {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(kura::tls::provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(cfg))
}

async fn tls_connect(
    hook: &Webhook,
    ca: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr(hook)).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    connector(ca, versions, alpn).connect(name, tcp).await
}

/// One HTTP/1.1 response read off a stream: status, headers (lower-case names), body.
struct Http1Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Http1Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

async fn read_response<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Http1Response {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let b = s.read_u8().await.expect("response head");
        head.push(b);
    }
    let head = String::from_utf8(head).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse().unwrap())
        .expect("kura answers with a Content-Length");
    let mut body = vec![0; len];
    s.read_exact(&mut body).await.unwrap();
    Http1Response {
        status,
        headers,
        body,
    }
}

fn http1_request(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

async fn post(client: &reqwest::Client, url: &str, review: &Value) -> Value {
    let resp = client.post(url).json(review).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_keep_alive_answers_many_reviews_on_one_connection() {
    let certs = test_certs();
    let (hook, _logs) = start(&certs, &[]);
    let mut tls = tls_connect(&hook, &certs.ca, &[&rustls::version::TLS13], &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    for i in 0..25 {
        let uid = format!("keep-alive-{i}");
        let body = serde_json::to_vec(&review_with_uid(&uid)).unwrap();
        tls.write_all(&http1_request("POST", "/mutate", &body))
            .await
            .unwrap();
        let resp = read_response(&mut tls).await;
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
        assert_ne!(resp.header("connection"), Some("close"));
        let review: Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(review["response"]["uid"], uid.as_str());
        assert_eq!(review["response"]["allowed"], true);
        assert_eq!(review["response"]["patchType"], "JSONPatch");
    }
    // Pipelined, as a client may: two requests written at once, answered in order.
    let mut both = http1_request(
        "POST",
        "/validate",
        &serde_json::to_vec(&review_with_uid("pipelined-1")).unwrap(),
    );
    both.extend(http1_request("GET", "/healthz", b""));
    tls.write_all(&both).await.unwrap();
    let first: Value = serde_json::from_slice(&read_response(&mut tls).await.body).unwrap();
    assert_eq!(first["response"]["uid"], "pipelined-1");
    let second = read_response(&mut tls).await;
    assert_eq!((second.status, &second.body[..]), (200, &b"ok"[..]));

    // reqwest restricted to HTTP/1.1 gets HTTP/1.1.
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(certs.ca.as_bytes()).unwrap()])
        .http1_only()
        .build()
        .unwrap();
    let resp = client
        .post(format!("{}/mutate", hook.url))
        .json(&example_review())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_is_negotiated_and_multiplexed() {
    let certs = test_certs();
    let (hook, _logs) = start(&certs, &[]);

    let tls = tls_connect(
        &hook,
        &certs.ca,
        &[&rustls::version::TLS13],
        &[b"h2", b"http/1.1"],
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    drop(tls);

    // One reqwest client keeps one HTTP/2 connection and multiplexes concurrent requests on it.
    let client = https_client(&certs.ca);
    let url = format!("{}/mutate", hook.url);
    let resp = client
        .post(&url)
        .json(&example_review())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let uid = format!("h2-{i}");
                let resp = client
                    .post(&url)
                    .json(&review_with_uid(&uid))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.version(), reqwest::Version::HTTP_2);
                let v: Value = resp.json().await.unwrap();
                assert_eq!(v["response"]["uid"], uid.as_str());
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// A TLS 1.0/1.1-style ClientHello: no `supported_versions`, `client_version` as given.
fn legacy_client_hello(version: [u8; 2]) -> Vec<u8> {
    let mut body = version.to_vec();
    body.extend([7u8; 32]); // random
    body.push(0); // no session id
    let suites: [u16; 4] = [0xc009, 0xc013, 0x002f, 0x0035];
    body.extend(((suites.len() * 2) as u16).to_be_bytes());
    suites.iter().for_each(|s| body.extend(s.to_be_bytes()));
    body.extend([1, 0]); // compression: null
    // signature_algorithms (ecdsa_secp256r1_sha256, rsa_pkcs1_sha256), supported_groups
    // (secp256r1), ec_point_formats (uncompressed): enough for the server to reach the version.
    let ext: &[u8] = &[
        0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x04, 0x01, //
        0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x17, //
        0x00, 0x0b, 0x00, 0x02, 0x01, 0x00,
    ];
    body.extend((ext.len() as u16).to_be_bytes());
    body.extend(ext);
    let mut hs = vec![1]; // ClientHello
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((hs.len() as u16).to_be_bytes());
    record.extend(hs);
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_12_and_13_are_accepted_and_older_versions_refused() {
    let certs = test_certs();
    let (hook, _logs) = start(&certs, &[]);
    for (version, wire) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let mut tls = tls_connect(&hook, &certs.ca, &[version], &[b"http/1.1"])
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.protocol_version(), Some(wire));
        tls.write_all(&http1_request("GET", "/healthz", b""))
            .await
            .unwrap();
        assert_eq!(read_response(&mut tls).await.status, 200);
    }

    // rustls clients cannot speak TLS 1.1, so the hello is written by hand: the server answers
    // with a fatal protocol_version alert and never a ServerHello.
    for version in [[0x03, 0x01], [0x03, 0x02]] {
        let mut tcp = TcpStream::connect(addr(&hook)).await.unwrap();
        tcp.write_all(&legacy_client_hello(version)).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
        assert_eq!(
            answer.first(),
            Some(&0x15),
            "an alert record, not a handshake: {answer:02x?}"
        );
        // Alert record: type, version (2), length (2), level, description.
        assert_eq!(
            &answer[5..7],
            &[2, 70],
            "fatal protocol_version: {answer:02x?}"
        );
    }
}

/// Writes a new pair in place, as a person or cert-manager would.
fn write_pair(certs: &TestCerts, cert: &str, key: &str) {
    std::fs::write(&certs.cert, cert).unwrap();
    std::fs::write(&certs.key, key).unwrap();
}

async fn connects(hook: &Webhook, ca: &str) -> bool {
    match tls_connect(hook, ca, &[&rustls::version::TLS13], &[b"http/1.1"]).await {
        Ok(mut tls) => {
            tls.write_all(&http1_request("GET", "/healthz", b""))
                .await
                .unwrap();
            read_response(&mut tls).await.status == 200
        }
        Err(_) => false,
    }
}

async fn eventually(what: &str, within: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_reload_takes_a_new_pair_and_keeps_the_last_good_one() {
    let certs = test_certs();
    let (hook, logs) = start(&certs, &[]);
    assert!(connects(&hook, &certs.ca).await);

    // A new pair from a new CA: taken within the 2 s poll.
    let next = kura::tls::bundle_for(vec!["127.0.0.1".into()], 2).unwrap();
    write_pair(&certs, &next.serving.cert, &next.serving.key);
    eventually(
        "the new certificate was not served within 6 s",
        Duration::from_secs(6),
        async || connects(&hook, &next.ca.cert).await,
    )
    .await;
    assert!(
        !connects(&hook, &certs.ca).await,
        "the old CA no longer verifies"
    );

    // Garbage, then a certificate with someone else's key: both refused, the last good pair stays.
    let other = kura::tls::bundle_for(vec!["127.0.0.1".into()], 2).unwrap();
    let bad_pairs = [
        ("garbage".to_string(), "also garbage".to_string()),
        (other.serving.cert.clone(), next.serving.key.clone()),
        (String::new(), String::new()),
    ];
    for (i, (cert, key)) in bad_pairs.iter().enumerate() {
        write_pair(&certs, cert, key);
        let refusals = i + 1;
        let deadline = Instant::now() + Duration::from_secs(8);
        while logs
            .json()
            .iter()
            .filter(|l| l["message"].as_str().is_some_and(|m| m.contains("refused")))
            .count()
            < refusals
        {
            assert!(
                Instant::now() < deadline,
                "bad pair {i} not noticed:\n{}",
                logs.text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            connects(&hook, &next.ca.cert).await,
            "bad pair {i} replaced the good one"
        );
        assert!(!connects(&hook, &other.ca.cert).await);
    }
    let refused = logs
        .json()
        .into_iter()
        .find(|l| l["level"] == "WARN")
        .unwrap();
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains(certs.cert.to_str().unwrap()),
        "the warning names the files: {refused}"
    );
    assert!(
        !logs.text().contains("PRIVATE KEY"),
        "no key material in logs"
    );

    let metrics = hook.metrics().await;
    assert!(
        metrics.contains(r#"kura_reloads_total{result="cert-ok"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"kura_reloads_total{result="cert-refused"} 3"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_3_mib_get_413_with_a_message() {
    let certs = test_certs();
    let (hook, _logs) = start(&certs, &[]);
    let client = https_client(&certs.ca);
    let url = format!("{}/mutate", hook.url);

    // A review padded just under the limit is still answered.
    let mut body = serde_json::to_vec(&review_with_uid("big-but-fine")).unwrap();
    body.resize(3 * 1024 * 1024 - 1, b' ');
    let resp = client.post(&url).body(body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["response"]["uid"], "big-but-fine");

    // One byte more: 413, with a message, over HTTP/2 and over HTTP/1.1.
    let mut body = serde_json::to_vec(&example_review()).unwrap();
    body.resize(3 * 1024 * 1024 + 1, b' ');
    let resp = client.post(&url).body(body.clone()).send().await.unwrap();
    assert_eq!(resp.status(), 413);
    let text = resp.text().await.unwrap();
    assert!(text.contains("larger than 3 MiB"), "{text}");

    let mut tls = tls_connect(&hook, &certs.ca, &[&rustls::version::TLS13], &[b"http/1.1"])
        .await
        .unwrap();
    tls.write_all(&http1_request("POST", "/validate", &body))
        .await
        .unwrap();
    let resp = read_response(&mut tls).await;
    assert_eq!(resp.status, 413);
    assert!(String::from_utf8_lossy(&resp.body).contains("larger than 3 MiB"));

    let metrics = hook.metrics().await;
    assert!(
        metrics
            .contains(r#"kura_admission_requests_total{endpoint="mutate",decision="too-large"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_readyz_and_unknown_paths() {
    let certs = test_certs();
    let (hook, _logs) = start(&certs, &[]);
    let client = https_client(&certs.ca);
    for path in ["/healthz", "/readyz"] {
        let resp = client
            .get(format!("{}{path}", hook.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.text().await.unwrap(), "ok");
    }
    let resp = client
        .get(format!("{}/metrics", hook.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "metrics are not on the admission port");
    let resp = client
        .get(format!("{}/mutate", hook.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_fails_readyz_first_finishes_in_flight_requests_then_exits_0() {
    let certs = test_certs();
    let (mut hook, logs) = start_with_shutdown(&certs, "1500ms", "10s");
    let client = https_client(&certs.ca);
    let readyz = format!("{}/readyz", hook.url);
    assert_eq!(client.get(&readyz).send().await.unwrap().status(), 200);

    // An in-flight request: headers and half the body sent on a keep-alive connection.
    let body = serde_json::to_vec(&review_with_uid("in-flight")).unwrap();
    let request = http1_request("POST", "/mutate", &body);
    let half = request.len() - body.len() / 2;
    let mut tls = tls_connect(&hook, &certs.ca, &[&rustls::version::TLS12], &[b"http/1.1"])
        .await
        .unwrap();
    tls.write_all(&request[..half]).await.unwrap();
    tls.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let t0 = Instant::now();
    signal(&hook, "TERM");
    // /readyz fails first, while the listener still takes connections (the shutdown delay).
    eventually(
        "/readyz did not turn 503",
        Duration::from_secs(1),
        async || {
            let fresh = https_client(&certs.ca);
            fresh.get(&readyz).send().await.unwrap().status() == 503
        },
    )
    .await;
    assert!(t0.elapsed() < Duration::from_millis(1500));
    let fresh = https_client(&certs.ca);
    let resp = fresh
        .post(format!("{}/mutate", hook.url))
        .json(&review_with_uid("during-delay"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "admissions are still answered during the delay"
    );

    // Once the delay is over the listener closes...
    eventually(
        "the listener did not close after the delay",
        Duration::from_secs(5),
        async || TcpStream::connect(addr(&hook)).await.is_err(),
    )
    .await;
    assert!(t0.elapsed() >= Duration::from_millis(1400));
    assert!(
        hook.child.try_wait().unwrap().is_none(),
        "still draining the in-flight request"
    );

    // ...and the in-flight request still gets its answer, then the process exits 0.
    tls.write_all(&request[half..]).await.unwrap();
    let resp = read_response(&mut tls).await;
    assert_eq!(resp.status, 200);
    let review: Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(review["response"]["uid"], "in-flight");
    assert_eq!(review["response"]["allowed"], true);
    assert_eq!(
        resp.header("connection"),
        Some("close"),
        "a draining server closes keep-alive connections"
    );
    let status = wait_exit(&mut hook, Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", logs.text());
    logs.wait_for("saying it drained", |l| l["message"] == "drained; bye");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let certs = test_certs();
    let (mut hook, logs) = start_with_shutdown(&certs, "60s", "60s");
    signal(&hook, "TERM");
    logs.wait_for("about shutting down", |l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("shutting down"))
    });
    let client = https_client(&certs.ca);
    eventually(
        "/readyz did not turn 503",
        Duration::from_secs(2),
        async || {
            client
                .get(format!("{}/readyz", hook.url))
                .send()
                .await
                .unwrap()
                .status()
                == 503
        },
    )
    .await;
    let t0 = Instant::now();
    signal(&hook, "INT");
    let status = wait_exit(&mut hook, Duration::from_secs(3));
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(status.code(), Some(130), "{status:?}");
}

/// The value of the sample whose line starts with `series` (name and labels).
fn sample(metrics: &str, series: &str) -> f64 {
    testkit::sample(metrics, series).unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
}

/// A pod with a literal credential in its env: KURA005, denied by the default policy.
fn review_with_plaintext(uid: &str, value: &str) -> Value {
    let mut r = review_with_uid(uid);
    r["request"]["object"]["spec"]["containers"][0]["env"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "DB_PASSWORD", "value": value}));
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_latency_rule_hits_and_injections() {
    let certs = test_certs();
    let (hook, _logs) = start(&certs, &[]);
    let client = https_client(&certs.ca);
    let (mutate, validate) = (
        format!("{}/mutate", hook.url),
        format!("{}/validate", hook.url),
    );

    for i in 0..3 {
        let v = post(&client, &mutate, &review_with_uid(&format!("m{i}"))).await;
        assert_eq!(v["response"]["allowed"], true);
    }
    let mut other_ns = review_with_uid("other-ns");
    other_ns["request"]["namespace"] = json!("payments");
    other_ns["request"]["object"]["metadata"]["annotations"] =
        json!({"kura.dev/inject": "true", "kura.dev/secret.stripe": "/payments/stripe"});
    let v = post(&client, &mutate, &other_ns).await;
    assert_eq!(v["response"]["allowed"], true, "{v}");
    let v = post(
        &client,
        &mutate,
        &review_with_plaintext("p1", "Tr0ub4dor&3-x9"),
    )
    .await;
    assert_eq!(v["response"]["allowed"], false);
    let v = post(&client, &validate, &review_with_uid("v1")).await;
    assert_eq!(
        v["response"]["allowed"], false,
        "no agent on /validate: KURA008"
    );

    let m = hook.metrics().await;
    assert_eq!(
        sample(
            &m,
            r#"kura_admission_requests_total{endpoint="mutate",decision="injected"}"#
        ),
        4.0
    );
    assert_eq!(
        sample(
            &m,
            r#"kura_admission_requests_total{endpoint="mutate",decision="denied"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            r#"kura_admission_requests_total{endpoint="validate",decision="denied"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            r#"kura_admission_duration_seconds_count{endpoint="mutate"}"#
        ),
        5.0
    );
    assert_eq!(
        sample(
            &m,
            r#"kura_admission_duration_seconds_bucket{le="+Inf",endpoint="mutate"}"#
        ),
        5.0
    );
    assert!(
        sample(
            &m,
            r#"kura_admission_duration_seconds_sum{endpoint="mutate"}"#
        ) > 0.0
    );
    assert_eq!(
        sample(
            &m,
            r#"kura_rule_hits_total{rule="KURA005",decision="denied"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            r#"kura_rule_hits_total{rule="KURA008",decision="denied"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(&m, r#"kura_injections_total{namespace="demo"}"#),
        3.0
    );
    assert_eq!(
        sample(&m, r#"kura_injections_total{namespace="payments"}"#),
        1.0
    );
    assert!(m.contains("# TYPE kura_admission_duration_seconds histogram"));
    assert!(!m.contains("Tr0ub4dor"), "no values in metrics");

    // Plain HTTP only: the metrics listener does not speak TLS.
    let tls = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap()
        .get(hook.metrics_url.replace("http://", "https://"))
        .send()
        .await;
    assert!(tls.is_err());
}

fn span_of(line: &Value) -> &Value {
    &line["span"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_json_with_one_span_per_admission_and_no_secret_values() {
    let certs = test_certs();
    let (hook, logs) = start(&certs, &[]);
    let client = https_client(&certs.ca);
    let url = format!("{}/mutate", hook.url);

    // generateName (a Deployment's pod), then a named pod, then a denial.
    post(&client, &url, &review_with_uid("log-generated")).await;
    let mut named = review_with_uid("log-named");
    named["request"]["name"] = json!("orders-api-0");
    named["request"]["object"]["metadata"]["name"] = json!("orders-api-0");
    post(&client, &url, &named).await;
    let plaintext = "hunter2-Xq9!vL7#pR4";
    let v = post(
        &client,
        &url,
        &review_with_plaintext("log-denied", plaintext),
    )
    .await;
    let message = v["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("KURA005") && message.contains("DB_PASSWORD"),
        "{message}"
    );
    assert!(
        !message.contains(plaintext),
        "the denial names the variable, not its value"
    );

    for (uid, pod, decision) in [
        ("log-generated", "orders-api-6d9c8b7f5d-*", "injected"),
        ("log-named", "orders-api-0", "injected"),
        ("log-denied", "orders-api-6d9c8b7f5d-*", "denied"),
    ] {
        let line = logs.wait_for(&format!("for {uid}"), |l| {
            span_of(l)["uid"] == uid && l["decision"].is_string()
        });
        let span = span_of(&line);
        assert_eq!(span["name"], "admission", "{line}");
        assert_eq!(span["namespace"], "demo", "{line}");
        assert_eq!(span["pod"], pod, "{line}");
        assert_eq!(line["decision"], decision, "{line}");
        assert!(line["timestamp"].is_string() && line["level"].is_string());
        // One decision line per admission.
        let n = logs
            .json()
            .iter()
            .filter(|l| span_of(l)["uid"] == uid && l["decision"].is_string())
            .count();
        assert_eq!(n, 1, "{uid}");
    }
    let denied = logs.wait_for("for the denial", |l| span_of(l)["uid"] == "log-denied");
    assert!(denied.to_string().contains("KURA005"), "{denied}");

    // Every stdout line is JSON, and no secret value appears anywhere: neither the literal in the
    // pod spec nor anything the store holds.
    let text = logs.text();
    for line in text.lines() {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
    for value in STORE_VALUES.iter().chain([&plaintext]) {
        assert!(
            !text.contains(value),
            "{value:?} leaked into the logs:\n{text}"
        );
    }
}

#[test]
fn store_values_are_in_the_example_store() {
    // Guards the leak assertions above against the example store changing under them.
    let store =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/store.yaml"))
            .unwrap();
    for v in STORE_VALUES {
        assert!(store.contains(v), "{v}");
    }
}

/// Reads until the server closes the stream (end of stream or an error); panics if it is
/// still open after `within`. Returns how long it took.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(s: &mut S, within: Duration) -> Duration {
    let t0 = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((t0 + within).into(), s.read(&mut buf)).await {
            Err(_) => panic!("the connection is still open after {within:?}"),
            Ok(Ok(0) | Err(_)) => return t0.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_trickling_connections_are_closed() {
    let certs = test_certs();
    let (hook, _logs) = start(&certs, &["--idle-timeout=1s", "--header-read-timeout=2s"]);

    // A TCP connection that never starts TLS, and a TLS one that never sends a request.
    let mut tcp = TcpStream::connect(addr(&hook)).await.unwrap();
    closed_within(&mut tcp, Duration::from_secs(5)).await;
    let mut tls = tls_connect(&hook, &certs.ca, &[&rustls::version::TLS13], &[b"http/1.1"])
        .await
        .unwrap();
    closed_within(&mut tls, Duration::from_secs(5)).await;

    // Kept alive after an answer, then quiet.
    let mut tls = tls_connect(&hook, &certs.ca, &[&rustls::version::TLS13], &[b"http/1.1"])
        .await
        .unwrap();
    tls.write_all(&http1_request("GET", "/healthz", b""))
        .await
        .unwrap();
    assert_eq!(read_response(&mut tls).await.status, 200);
    closed_within(&mut tls, Duration::from_secs(5)).await;

    // Headers trickled a byte every 250 ms: never idle for 1 s, but never complete either.
    let tls = tls_connect(&hook, &certs.ca, &[&rustls::version::TLS13], &[b"http/1.1"])
        .await
        .unwrap();
    let (mut rx, mut tx) = tokio::io::split(tls);
    let trickle = tokio::spawn(async move {
        let mut bytes = b"GET /healthz HTTP/1.1\r\nX-Slow: "
            .iter()
            .chain(std::iter::repeat(&b'a'));
        while tx.write_all(&[*bytes.next().unwrap()]).await.is_ok() && tx.flush().await.is_ok() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let took = closed_within(&mut rx, Duration::from_secs(8)).await;
    assert!(
        took >= Duration::from_millis(1500),
        "closed by the header timeout, not the idle one: {took:?}"
    );
    trickle.abort();
}

/// An HTTP/2 frame: length, type, flags, stream id, payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connections_that_trickle_headers_or_only_ping_are_closed() {
    let certs = test_certs();
    let (hook, _logs) = start(&certs, &["--idle-timeout=1s", "--header-read-timeout=2s"]);
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    // Each connection sends the preface and its SETTINGS, then a byte every 250 ms: never idle
    // for 1 s, never a complete request. hyper has no header timeout for HTTP/2.
    let trickles: [Vec<u8>; 2] = [
        // A HEADERS frame (END_HEADERS, stream 1) that announces 200 bytes, sent one by one.
        [0, 0, 200, 1, 0x4, 0, 0, 0, 1]
            .into_iter()
            .chain(std::iter::repeat_n(b'a', 200))
            .collect(),
        // PING frames only (each answered by the server).
        (0..40u8).flat_map(|i| h2_frame(6, 0, 0, &[i; 8])).collect(),
    ];
    for (what, bytes) in ["a trickled HEADERS frame", "pings only"]
        .into_iter()
        .zip(trickles)
    {
        let tls = tls_connect(&hook, &certs.ca, &[&rustls::version::TLS13], &[b"h2"])
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut rx, mut tx) = tokio::io::split(tls);
        let step = if what == "pings only" { 17 } else { 1 };
        let trickle = tokio::spawn(async move {
            tx.write_all(PREFACE).await.unwrap();
            tx.write_all(&h2_frame(4, 0, 0, &[])).await.unwrap();
            tx.flush().await.unwrap();
            for chunk in bytes.chunks(step) {
                if tx.write_all(chunk).await.is_err() || tx.flush().await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        let took = closed_within(&mut rx, Duration::from_secs(8)).await;
        assert!(
            took >= Duration::from_millis(1500),
            "{what}: closed by the header-read timeout, not the idle one: {took:?}"
        );
        trickle.abort();
    }

    // A connection that does send requests stays open across them, and HTTP/2 still works.
    let client = https_client(&certs.ca);
    for _ in 0..3 {
        let resp = client
            .get(format!("{}/healthz", hook.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_share_one_byte_budget() {
    let certs = test_certs();
    let (hook, _logs) = start(&certs, &["--body-budget-mib=3"]);
    let url = format!("{}/validate", hook.url);

    // One client sends 2.5 MiB of a 3 MiB body and holds the rest: the whole budget is its.
    let mut hog = tls_connect(&hook, &certs.ca, &[&rustls::version::TLS13], &[b"http/1.1"])
        .await
        .unwrap();
    let head = format!(
        "POST /validate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        3 * 1024 * 1024 - 1
    );
    hog.write_all(head.as_bytes()).await.unwrap();
    hog.write_all(&vec![b' '; 5 * 512 * 1024]).await.unwrap();
    hog.flush().await.unwrap();

    // Another client's ordinary review finds no room: a 503 that says why, not a wait for
    // memory nobody bounds.
    let client = https_client(&certs.ca);
    let review = review_with_uid("budget");
    let mut answer = String::new();
    eventually(
        "a review past the budget gets a 503",
        Duration::from_secs(3),
        async || {
            let resp = client.post(&url).json(&review).send().await.unwrap();
            if resp.status() != 503 {
                return false;
            }
            answer = resp.text().await.unwrap();
            true
        },
    )
    .await;
    assert!(answer.contains("budget"), "{answer}");
    assert!(answer.contains("3 MiB"), "{answer}");

    // Once the hog is gone its bytes are given back.
    drop(hog);
    eventually(
        "the budget is given back",
        Duration::from_secs(10),
        async || {
            client
                .post(&url)
                .json(&review)
                .send()
                .await
                .unwrap()
                .status()
                == 200
        },
    )
    .await;
    let metrics = hook.metrics().await;
    assert!(
        metrics.contains(
            r#"kura_admission_requests_total{endpoint="validate",decision="over-budget"}"#
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_new_connections_are_closed_and_counted() {
    let certs = test_certs();
    let (hook, _logs) = start(&certs, &["--max-connections=3"]);
    let versions = [&rustls::version::TLS13];
    let alpn: [&[u8]; 1] = [b"http/1.1"];
    let connect = || tls_connect(&hook, &certs.ca, &versions, &alpn);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect().await.unwrap());
    }
    assert!(
        connect().await.is_err(),
        "a fourth connection gets no handshake"
    );
    let m = hook.metrics().await;
    assert_eq!(sample(&m, "kura_connections_refused_total"), 1.0);
    assert_eq!(sample(&m, "kura_connections_open"), 3.0);

    // A connection closed frees its place.
    drop(held.pop());
    eventually(
        "a place is free again",
        Duration::from_secs(5),
        async || match connect().await {
            Ok(mut tls) => {
                tls.write_all(&http1_request("GET", "/healthz", b""))
                    .await
                    .unwrap();
                read_response(&mut tls).await.status == 200
            }
            Err(_) => false,
        },
    )
    .await;
}

#[test]
fn the_open_files_limit_is_raised_to_the_hard_limit_and_caps_connections() {
    let certs = test_certs();
    let (hook, logs) = start_under(&["prlimit", "--nofile=256:1024", "--"], &certs, &[]);
    let line = logs.wait_for("with the connection limits", |l| {
        l["message"] == "connection limits"
    });
    assert_eq!(line["open_files"], 1024, "{line}");
    assert_eq!(line["max_connections"], 1024 - 128, "{line}");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", hook.child.id())).unwrap();
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        nofile
            .split_whitespace()
            .skip(3)
            .take(2)
            .collect::<Vec<_>>(),
        ["1024", "1024"],
        "{nofile}"
    );
}
