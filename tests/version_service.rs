//! The version service (contract §8) over its real HTTPS listener, in process: versions from a
//! moto server (Secrets Manager and SSM), tokens validated by a stub kube-apiserver shaped as
//! kube-apiserver answers `TokenReview`s, the policy's scope, the fleet gauges, and the AWS
//! calls it makes for many agents.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::*;
use kura::admission::Admission;
use kura::inject::InjectConfig;
use kura::policy::{Policy, PolicyEngine};
use kura::server::{AppState, Limits};
use kura::version_service::{self, VersionService};
use kura_agent::store::{AwsStore, MetadataApi, Store};
use kura_agent::versions::{AUDIENCE, ErrorAnswer, PATH, VersionsAnswer};
use serde_json::json;

/// A value no response or log line may carry.
const VALUE: &str = "kura-vs-plaintext-4f1d9a";

/// Every log line of this test binary (kura at debug), for the no-value check.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = Captured(buf.clone());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug,hyper=info,h2=info,aws_smithy_runtime=info,aws_config=info,rustls=info,tower=info"))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init();
        buf
    })
}

#[derive(Clone)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Harness {
    api: ApiServer,
    url: String,
    http: reqwest::Client,
    state: Arc<AppState>,
    store: Store,
    service: Arc<VersionService>,
    _certs: TestCerts,
    _listener: kura::server::Listener,
}

async fn aws_store(endpoint: &str) -> Store {
    Store::Aws(
        AwsStore::for_endpoint(
            endpoint,
            "us-east-1",
            "testing",
            "testing",
            Duration::from_secs(3),
        )
        .await,
    )
}

impl Harness {
    async fn start(store: Store, ttl: Duration) -> Harness {
        logs();
        let certs = test_certs();
        let api = ApiServer::start().await;
        let kube = kube::Client::try_from(kube::Config::new(api.url.parse().unwrap())).unwrap();
        let state = AppState::new(Admission::new(
            InjectConfig::default(),
            PolicyEngine::new(Policy::default(), None),
        ));
        let service = Arc::new(VersionService::new(state.clone(), store.clone(), kube, ttl));
        let resolver = kura::tls::Resolver::new(
            kura::tls::CertReloader {
                cert_path: certs.cert.clone(),
                key_path: certs.key.clone(),
            }
            .read()
            .unwrap(),
        );
        let listener = version_service::start(
            service.clone(),
            "127.0.0.1:0".parse().unwrap(),
            resolver,
            &Limits::default(),
        )
        .unwrap();
        Harness {
            url: format!("https://127.0.0.1:{}{PATH}", listener.addr.port()),
            http: https_client(&certs.ca),
            api,
            state,
            store,
            service,
            _certs: certs,
            _listener: listener,
        }
    }

    /// A token for a pod of `namespace`, projected for the version service.
    fn token(&self, namespace: &str, pod: &str) -> String {
        let token = format!("token-{namespace}-{pod}");
        self.api.accept(
            &token,
            ServiceAccountToken {
                namespace: namespace.into(),
                service_account: "default".into(),
                pod: pod.into(),
                audiences: vec![AUDIENCE.into()],
            },
        );
        token
    }

    async fn ask(&self, token: Option<&str>, body: serde_json::Value) -> (u16, String) {
        self.send(token, body.to_string().into_bytes()).await
    }

    async fn send(&self, token: Option<&str>, body: Vec<u8>) -> (u16, String) {
        let mut req = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("the service answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert!(!text.contains(VALUE), "a value in an answer: {text}");
        (status, text)
    }

    /// A `200` answer's versions, as (secret, current or "unknown").
    async fn versions(&self, token: &str, refs: serde_json::Value) -> Vec<(String, String)> {
        let (status, text) = self.ask(Some(token), check(refs, "x", 60, None)).await;
        assert_eq!(status, 200, "{text}");
        let answer: VersionsAnswer = serde_json::from_str(&text).unwrap();
        answer
            .versions
            .into_iter()
            .map(|v| {
                assert_eq!(v.unknown, v.current.is_none(), "{v:?}");
                (v.secret, v.current.unwrap_or_else(|| "unknown".into()))
            })
            .collect()
    }

    fn metric(&self, series: &str) -> f64 {
        sample(&self.state.metrics.encode(), series).unwrap_or(0.0)
    }
}

fn check(
    refs: serde_json::Value,
    pod: &str,
    interval: u64,
    failing: Option<(&str, Option<u64>)>,
) -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (kind, last) = match failing {
        Some((kind, last)) => (Some(kind), last),
        None => (None, Some(now)),
    };
    json!({
        "references": refs,
        "agent": {"pod": pod, "refreshIntervalSeconds": interval, "lastSuccessUnix": last,
                  "consecutiveFailures": u32::from(kind.is_some()), "errorKind": kind}
    })
}

fn error(text: &str) -> ErrorAnswer {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not an ErrorAnswer ({e}): {text}"))
}

async fn version_id_of(client: &aws_sdk_secretsmanager::Client, id: &str, stage: &str) -> String {
    client
        .get_secret_value()
        .secret_id(id)
        .version_stage(stage)
        .send()
        .await
        .unwrap()
        .version_id
        .unwrap()
}

#[tokio::test]
async fn versions_are_answered_and_a_rotation_is_seen_after_the_ttl() {
    let moto = Moto::start();
    let sm = moto.client().await;
    moto.secret("/orders/db", VALUE, None, &[]).await;
    put_value(&sm, "/orders/db", &format!("{VALUE}-2")).await;
    moto.parameter("/orders/host", VALUE, "SecureString", None)
        .await;
    moto.parameter("/orders/host", &format!("{VALUE}-2"), "SecureString", None)
        .await;
    moto.parameter("/orders/flag", VALUE, "String", None).await;
    moto.label("/orders/flag", 1, &["blue"]).await;
    let current = version_id_of(&sm, "/orders/db", "AWSCURRENT").await;
    let previous = version_id_of(&sm, "/orders/db", "AWSPREVIOUS").await;

    let ttl = Duration::from_secs(1);
    let h = Harness::start(aws_store(&moto.endpoint).await, ttl).await;
    let token = h.token("orders", "orders-api-1");
    let refs = json!([
        {"secret": "/orders/db"},
        {"secret": "/orders/db", "versionStage": "AWSPREVIOUS"},
        {"secret": "/orders/db", "versionId": previous},
        {"secret": "/orders/db", "versionId": "no-such-version"},
        {"secret": "ssm:/orders/host"},
        {"secret": "ssm:/orders/host", "versionId": "1"},
        {"secret": "ssm:/orders/flag", "versionStage": "blue"},
        {"secret": "/orders/missing"},
    ]);
    let got = h.versions(&token, refs.clone()).await;
    let expected = |db: &str, prev: &str, ssm: &str| {
        vec![
            ("/orders/db".to_string(), db.to_string()),
            ("/orders/db".to_string(), prev.to_string()),
            ("/orders/db".to_string(), previous.clone()),
            ("/orders/db".to_string(), "unknown".to_string()),
            ("ssm:/orders/host".to_string(), ssm.to_string()),
            ("ssm:/orders/host".to_string(), "1".to_string()),
            // A label: only GetParameterHistory, which returns values, says where it is.
            ("ssm:/orders/flag".to_string(), "unknown".to_string()),
            ("/orders/missing".to_string(), "unknown".to_string()),
        ]
    };
    assert_eq!(got, expected(&current, &previous, "2"));
    // The answer echoes what was asked.
    let (_, text) = h
        .ask(Some(&token), check(refs.clone(), "x", 60, None))
        .await;
    let answer: VersionsAnswer = serde_json::from_str(&text).unwrap();
    assert_eq!(
        answer.versions[1].version_stage.as_deref(),
        Some("AWSPREVIOUS")
    );
    assert_eq!(
        answer.versions[2].version_id.as_deref(),
        Some(previous.as_str())
    );

    // A rotation of both, seen once what was learned is older than the TTL.
    put_value(&sm, "/orders/db", &format!("{VALUE}-3")).await;
    moto.parameter("/orders/host", &format!("{VALUE}-3"), "SecureString", None)
        .await;
    let rotated = version_id_of(&sm, "/orders/db", "AWSCURRENT").await;
    assert_ne!(rotated, current);
    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
    let got = h.versions(&token, refs).await;
    assert_eq!(got, expected(&rotated, &current, "3"));
}

#[tokio::test]
async fn tokens_are_checked_with_a_token_review_for_the_audience() {
    let moto = Moto::start();
    moto.secret("/web/db", VALUE, None, &[]).await;
    let h = Harness::start(aws_store(&moto.endpoint).await, Duration::from_secs(60)).await;
    let refs = json!([{"secret": "/web/db"}]);

    let (status, text) = h.ask(None, check(refs.clone(), "x", 60, None)).await;
    assert_eq!(status, 401, "{text}");
    assert!(error(&text).message.contains("Authorization"), "{text}");

    for _ in 0..3 {
        let (status, text) = h
            .ask(
                Some("not-a-token-the-cluster-knows"),
                check(refs.clone(), "x", 60, None),
            )
            .await;
        assert_eq!(status, 401, "{text}");
        assert!(
            error(&text).message.contains("invalid bearer token"),
            "{text}"
        );
    }
    // Rejections are kept too: one review for the three.
    assert_eq!(h.api.reviews(), 1);

    // A real token of the namespace, projected for another audience.
    h.api.accept(
        "token-for-the-api-server",
        ServiceAccountToken {
            namespace: "web".into(),
            service_account: "default".into(),
            pod: "web-1".into(),
            audiences: vec!["https://kubernetes.default.svc.cluster.local".into()],
        },
    );
    let (status, text) = h
        .ask(
            Some("token-for-the-api-server"),
            check(refs.clone(), "x", 60, None),
        )
        .await;
    assert_eq!(status, 401, "{text}");
    assert!(error(&text).message.contains(AUDIENCE), "{text}");
    assert!(
        h.api
            .asked_audiences()
            .iter()
            .all(|a| a == &vec![AUDIENCE.to_string()]),
        "{:?}",
        h.api.asked_audiences()
    );

    let token = h.token("web", "web-1");
    assert_eq!(h.versions(&token, refs.clone()).await.len(), 1);
    assert_eq!(
        h.metric("kura_version_service_requests_total{outcome=\"unauthenticated\"}"),
        5.0
    );
    assert_eq!(
        h.metric("kura_version_service_requests_total{outcome=\"ok\"}"),
        1.0
    );

    // The API server refusing kura's own reviews (RBAC), or gone: 503, the agent polls AWS.
    h.api.fail_with(Some(403));
    let (status, text) = h
        .ask(Some("a-new-token"), check(refs.clone(), "x", 60, None))
        .await;
    assert_eq!(status, 503, "{text}");
    assert!(
        error(&text).message.contains("tokenreviews: create"),
        "{text}"
    );
    h.api.stop();
    let (status, text) = h
        .ask(Some("another-token"), check(refs, "x", 60, None))
        .await;
    assert_eq!(status, 503, "{text}");
    assert!(error(&text).message.contains("TokenReview"), "{text}");
}

#[tokio::test]
async fn references_outside_the_namespace_scope_are_refused_and_named() {
    let moto = Moto::start();
    moto.secret("/billing/db", VALUE, None, &[]).await;
    moto.secret("/shop/db", VALUE, None, &[]).await;
    let h = Harness::start(aws_store(&moto.endpoint).await, Duration::from_secs(60)).await;
    let token = h.token("shop", "shop-1");
    let (status, text) = h
        .ask(
            Some(&token),
            check(
                json!([
                    {"secret": "/shop/db"},
                    {"secret": "/billing/db"},
                    {"secret": "ssm:/billing/host"},
                    {"secret": "arn:aws:secretsmanager:us-east-1:123456789012:secret:/billing/api-AbCdEf"}
                ]),
                "x",
                60,
                None,
            ),
        )
        .await;
    assert_eq!(status, 403, "{text}");
    let e = error(&text);
    assert_eq!(
        e.refused,
        vec![
            "/billing/db",
            "ssm:/billing/host",
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:/billing/api-AbCdEf"
        ]
    );
    assert!(
        e.message.contains("KURA002") && e.message.contains("\"shop\""),
        "{text}"
    );
    assert!(!text.contains("versions"), "{text}");
    // Nothing was asked of AWS for a refused check.
    assert_eq!(h.store.metadata_calls(MetadataApi::ListSecrets), 0);
    assert_eq!(
        h.metric("kura_version_service_requests_total{outcome=\"forbidden\"}"),
        1.0
    );
}

#[tokio::test]
async fn a_store_that_cannot_be_reached_is_a_503_and_bad_bodies_are_refused() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let h = Harness::start(aws_store(&dead).await, Duration::from_secs(60)).await;
    let token = h.token("pay", "pay-1");
    let (status, text) = h
        .ask(
            Some(&token),
            check(json!([{"secret": "/pay/db"}]), "x", 60, None),
        )
        .await;
    assert_eq!(status, 503, "{text}");
    assert!(error(&text).message.contains("ListSecrets"), "{text}");
    let (status, text) = h
        .ask(
            Some(&token),
            check(json!([{"secret": "ssm:/pay/host"}]), "x", 60, None),
        )
        .await;
    assert_eq!(status, 503, "{text}");
    assert!(
        error(&text).message.contains("DescribeParameters"),
        "{text}"
    );
    assert_eq!(
        h.metric("kura_version_service_requests_total{outcome=\"error\"}"),
        2.0
    );

    // Over the body limit: 413, before any parsing.
    let big = vec![b' '; kura_agent::versions::MAX_REQUEST_BYTES + 1];
    let (status, text) = h.send(Some(&token), big).await;
    assert_eq!(status, 413, "{text}");
    assert!(error(&text).message.contains("64 KiB"), "{text}");
    // Not JSON, or not a check: 400 saying what is wrong.
    let (status, text) = h.send(Some(&token), b"{\"references\": [".to_vec()).await;
    assert_eq!(status, 400, "{text}");
    assert!(
        error(&text).message.contains("not a version check"),
        "{text}"
    );
    let (status, text) = h
        .ask(
            Some(&token),
            json!({"references": [], "agent": {"refreshIntervalSeconds": 60}, "value": VALUE}),
        )
        .await;
    assert_eq!(status, 400, "{text}");
    assert!(
        error(&text).message.contains("unknown field `value`"),
        "{text}"
    );
    let too_many: Vec<_> = (0..kura_agent::versions::MAX_REFERENCES + 1)
        .map(|i| json!({"secret": format!("/pay/s{i}")}))
        .collect();
    let (status, text) = h
        .ask(Some(&token), check(json!(too_many), "x", 60, None))
        .await;
    assert_eq!(status, 400, "{text}");
    // An invalid token with a large body is refused before the body is read.
    let (status, _) = h
        .send(
            Some("unknown"),
            vec![b' '; kura_agent::versions::MAX_REQUEST_BYTES + 1],
        )
        .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn no_value_reaches_an_answer_or_a_log_line() {
    let moto = Moto::start();
    moto.secret("/vault/db", VALUE, None, &[]).await;
    moto.parameter("/vault/host", VALUE, "SecureString", None)
        .await;
    let h = Harness::start(aws_store(&moto.endpoint).await, Duration::from_secs(60)).await;
    let token = h.token("vault", "vault-1");
    // Every answer is checked by `send`; these cover each kind of answer.
    h.versions(
        &token,
        json!([{"secret": "/vault/db"}, {"secret": "ssm:/vault/host"}]),
    )
    .await;
    h.ask(
        Some(&token),
        check(json!([{"secret": "/elsewhere/db"}]), "x", 60, None),
    )
    .await;
    h.ask(
        Some(VALUE),
        check(json!([{"secret": "/vault/db"}]), "x", 60, None),
    )
    .await;
    h.ask(
        Some(&token),
        json!({"references": [{"secret": "/vault/db", "versionId": 7}], "agent": {"refreshIntervalSeconds": 60}}),
    )
    .await;
    h.ask(
        Some(&token),
        json!({"references": [], "agent": {"refreshIntervalSeconds": VALUE}}),
    )
    .await;
    let logs = String::from_utf8_lossy(&logs().lock().unwrap()).to_string();
    assert!(
        logs.contains("version check refused"),
        "the logs were captured"
    );
    assert!(!logs.contains(VALUE), "a value in the logs");
}

#[tokio::test]
async fn the_fleet_is_counted_by_namespace_failing_stale_and_dropped() {
    let moto = Moto::start();
    moto.secret("/fa/db", VALUE, None, &[]).await;
    moto.secret("/fb/db", VALUE, None, &[]).await;
    let h = Harness::start(aws_store(&moto.endpoint).await, Duration::from_secs(60)).await;
    let ask = |ns: &'static str, pod: &'static str, interval, failing| {
        let h = &h;
        async move {
            let token = h.token(ns, pod);
            let refs = json!([{"secret": format!("/{ns}/db")}]);
            // The pod name the token is bound to wins over the one the agent reports.
            let (status, text) = h
                .ask(Some(&token), check(refs, "claimed-name", interval, failing))
                .await;
            assert_eq!(status, 200, "{text}");
        }
    };
    let long_ago = Some(1_000_000);
    ask("fa", "a-1", 60, None).await;
    ask("fa", "a-2", 60, Some(("throttled", long_ago))).await;
    ask("fa", "a-3", 60, Some(("made-up kind with\nnewlines", None))).await;
    ask("fa", "a-1", 60, None).await;
    ask("fb", "b-1", 1, Some(("access_denied", long_ago))).await;
    let m = |s: &str| h.metric(s);
    assert_eq!(m("kura_fleet_agents{namespace=\"fa\"}"), 3.0);
    assert_eq!(
        m("kura_fleet_agents_failing{namespace=\"fa\",error_kind=\"throttled\"}"),
        1.0
    );
    assert_eq!(
        m("kura_fleet_agents_failing{namespace=\"fa\",error_kind=\"other\"}"),
        1.0
    );
    assert_eq!(m("kura_fleet_agents_stale{namespace=\"fa\"}"), 1.0);
    assert_eq!(m("kura_fleet_agents{namespace=\"fb\"}"), 1.0);
    assert_eq!(m("kura_fleet_agents_stale{namespace=\"fb\"}"), 1.0);
    assert_eq!(
        m("kura_fleet_agents_failing{namespace=\"fb\",error_kind=\"access_denied\"}"),
        1.0
    );
    let text = h.state.metrics.encode();
    assert!(!text.contains("made-up"), "{text}");
    assert!(!text.contains("claimed-name"), "{text}");
    // fb's agent checks every second: not heard from for 3 of them, it is dropped.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let text = h.state.metrics.encode();
    assert!(!text.contains("namespace=\"fb\""), "{text}");
    assert_eq!(m("kura_fleet_agents{namespace=\"fa\"}"), 3.0);
}

#[tokio::test]
async fn many_agents_asking_about_the_same_secrets_cost_one_paged_listing_per_ttl() {
    let moto = Moto::start();
    for name in ["/many/a", "/many/b", "/many/c"] {
        moto.secret(name, VALUE, None, &[]).await;
    }
    // More than a page (100) under the prefix, and more elsewhere that the filter leaves out.
    for i in 0..105 {
        moto.secret(&format!("/many/filler-{i}"), "x", None, &[])
            .await;
    }
    for i in 0..20 {
        moto.secret(&format!("/other/many/{i}"), "x", None, &[])
            .await;
    }
    moto.parameter("/many/p", VALUE, "SecureString", None).await;
    let h =
        Arc::new(Harness::start(aws_store(&moto.endpoint).await, Duration::from_secs(600)).await);
    let refs = json!([
        {"secret": "/many/a"}, {"secret": "/many/b"}, {"secret": "/many/c"},
        {"secret": "ssm:/many/p"}
    ]);
    let agents: Vec<_> = (0..60)
        .map(|i| {
            let h = h.clone();
            let refs = refs.clone();
            let token = h.token("many", &format!("many-{i}"));
            tokio::spawn(async move {
                let got = h.versions(&token, refs).await;
                assert!(got.iter().all(|(_, v)| v != "unknown"), "{got:?}");
            })
        })
        .collect();
    for a in agents {
        a.await.unwrap();
    }
    // Each agent again, within the TTL: answered from what was learned.
    for i in 0..60 {
        let token = h.token("many", &format!("many-{i}"));
        h.versions(&token, refs.clone()).await;
    }
    // One listing of two pages (108 secrets under /many/), for 120 checks.
    assert_eq!(h.store.metadata_calls(MetadataApi::ListSecrets), 2);
    assert_eq!(h.store.metadata_calls(MetadataApi::DescribeSecret), 0);
    assert_eq!(h.store.metadata_calls(MetadataApi::DescribeParameters), 1);
    assert_eq!(
        h.metric("kura_version_service_aws_calls_total{api=\"ListSecrets\"}"),
        2.0
    );
    assert_eq!(h.metric("kura_fleet_agents{namespace=\"many\"}"), 60.0);

    // A secret created after the listing (kept for 600 s) is described on its own, once.
    moto.secret("/many/new", VALUE, None, &[]).await;
    let sm = moto.client().await;
    let new_id = version_id_of(&sm, "/many/new", "AWSCURRENT").await;
    for i in 0..3 {
        let token = h.token("many", &format!("many-{i}"));
        let got = h.versions(&token, json!([{"secret": "/many/new"}])).await;
        assert_eq!(got, vec![("/many/new".to_string(), new_id.clone())]);
    }
    assert_eq!(h.store.metadata_calls(MetadataApi::DescribeSecret), 1);
    assert_eq!(h.store.metadata_calls(MetadataApi::ListSecrets), 2);
}

/// The refresher lists every prefix agents asked about in one `ListSecrets` filter (ten a
/// call), ahead of their checks: twelve namespaces cost two calls a TTL, not twelve, and a
/// rotation is answered from that listing without any agent's check paying for it.
#[tokio::test]
async fn hot_prefixes_are_listed_together_ahead_of_the_checks() {
    let moto = Moto::start();
    let namespaces: Vec<String> = (0..12).map(|i| format!("hot{i}")).collect();
    for ns in &namespaces {
        moto.secret(&format!("/{ns}/db"), VALUE, None, &[]).await;
    }
    moto.secret("/elsewhere/db", VALUE, None, &[]).await;
    // A TTL no test run reaches: the refresher runs only when the test says.
    let h = Harness::start(aws_store(&moto.endpoint).await, Duration::from_secs(600)).await;
    let sm = moto.client().await;
    let mut before = Vec::new();
    for ns in &namespaces {
        let token = h.token(ns, &format!("{ns}-pod"));
        let got = h
            .versions(&token, json!([{"secret": format!("/{ns}/db")}]))
            .await;
        before.push(got[0].1.clone());
    }
    // Each namespace's first check listed its own prefix.
    assert_eq!(h.store.metadata_calls(MetadataApi::ListSecrets), 12);

    put_value(&sm, "/hot3/db", &format!("{VALUE}-2")).await;
    let rotated = version_id_of(&sm, "/hot3/db", "AWSCURRENT").await;
    assert_ne!(rotated, before[3]);
    let token = h.token("hot3", "hot3-pod");
    let ask = || h.versions(&token, json!([{"secret": "/hot3/db"}]));
    assert_eq!(
        ask().await[0].1,
        before[3],
        "within the TTL: what was learned"
    );

    let listed = h.service.learner().refresh_hot().await.expect("listed");
    assert_eq!(listed, 12);
    assert_eq!(
        h.store.metadata_calls(MetadataApi::ListSecrets),
        14,
        "twelve prefixes, ten a call"
    );
    assert_eq!(ask().await[0].1, rotated);
    for (i, ns) in namespaces.iter().enumerate().filter(|(i, _)| *i != 3) {
        let token = h.token(ns, &format!("{ns}-pod"));
        let got = h
            .versions(&token, json!([{"secret": format!("/{ns}/db")}]))
            .await;
        assert_eq!(got[0].1, before[i]);
    }
    assert_eq!(h.store.metadata_calls(MetadataApi::ListSecrets), 14);
    assert_eq!(h.store.metadata_calls(MetadataApi::DescribeSecret), 0);
}

/// `kura serve --version-service-listen` with the local store: the service answers on its own
/// port with the webhook's certificate, its tokens reviewed by the API server of the
/// kubeconfig, and it drains with the rest on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kura_serve_starts_the_service_on_its_own_port_and_drains_it() {
    let api = ApiServer::start().await;
    api.accept(
        "demo-token",
        ServiceAccountToken {
            namespace: "demo".into(),
            service_account: "orders".into(),
            pod: "orders-1".into(),
            audiences: vec![AUDIENCE.into()],
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let certs = test_certs();
    let port = free_port();
    let listen = format!("--version-service-listen=127.0.0.1:{port}");
    let store = format!(
        "--store=file:{}",
        workspace_root().join("examples/store.yaml").display()
    );
    let mut hook = Webhook::start(
        &certs,
        &[&listen, &store],
        &[("KUBECONFIG".into(), kubeconfig.display().to_string())],
    );
    wait_for_port(port, "the version service");
    let answer = https_client(&certs.ca)
        .post(format!("https://127.0.0.1:{port}{PATH}"))
        .bearer_auth("demo-token")
        .json(&check(
            json!([{"secret": "/demo/orders/db"}, {"secret": "/demo/orders/api-key"}]),
            "x",
            60,
            None,
        ))
        .send()
        .await
        .expect("the service answers over TLS with the webhook's certificate");
    assert_eq!(answer.status(), 200);
    let answer: VersionsAnswer = answer.json().await.unwrap();
    assert_eq!(
        answer.versions[0].current.as_deref(),
        Some("5f0d3c1e-2b4a-4c6d-8e9f-0a1b2c3d4e5f")
    );
    // A shorthand value's id is salted per process: the agent asks the store itself.
    assert!(answer.versions[1].unknown);
    assert_eq!(api.reviews(), 1);
    let metrics = hook.metrics().await;
    assert_eq!(
        sample(&metrics, "kura_fleet_agents{namespace=\"demo\"}"),
        Some(1.0),
        "{metrics}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(hook.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::task::spawn_blocking(move || hook.child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
}
