//! Where one admission's CPU goes, without TLS and HTTP: the whole `/mutate` decision for the
//! load benchmark's review (tests/fixtures/webhook-review.json: a Deployment's pod declaring 3 secrets,
//! warm metadata cache over tests/fixtures/webhook-store.yaml), and its parts: decoding the pod (and the
//! whole review through kube's types, for comparison), encoding the answer (kura's encoder, and
//! plain serde for comparison). The same decision with
//! tests/fixtures/webhook-policy-relaxed.yaml shows what the plaintext and KMS rules cost.
//!
//! `cargo bench --bench admission`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use kube::core::DynamicObject;
use kube::core::admission::AdmissionReview;
use kura::admission::{Admission, Endpoint, Verdict};
use kura::inject::InjectConfig;
use kura::policy::{Policy, PolicyEngine};
use kura_agent::store::{Store, StoreSetting};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn admission(rt: &tokio::runtime::Runtime, policy: Policy) -> Admission {
    let setting: StoreSetting = format!(
        "file:{}",
        root().join("tests/fixtures/webhook-store.yaml").display()
    )
    .parse()
    .unwrap();
    let store = rt
        .block_on(Store::open(&setting, Duration::from_secs(2)))
        .unwrap();
    Admission::new(
        InjectConfig::default(),
        PolicyEngine::new(policy, Some(store)),
    )
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = std::fs::read(root().join("tests/fixtures/webhook-review.json")).unwrap();
    let default = admission(&rt, Policy::default());
    let relaxed = admission(
        &rt,
        Policy::load(&root().join("tests/fixtures/webhook-policy-relaxed.yaml")).unwrap(),
    );
    // The floor the policy is measured against: no store lookups, no spec rules; only the
    // annotation parsing, the string scope check and the injection that admission always does.
    let minimal = Admission::new(
        InjectConfig::default(),
        PolicyEngine::new(
            Policy {
                plaintext: kura::policy::PlaintextPolicy {
                    enabled: false,
                    ..Default::default()
                },
                kms: kura::policy::KmsPolicy {
                    require_customer_managed: false,
                    ..Default::default()
                },
                native_secrets: kura::policy::Action::Ignore,
                config_map_secret_like: kura::policy::Action::Ignore,
                ..Policy::default()
            },
            None,
        ),
    );
    for a in [&default, &relaxed, &minimal] {
        // Warms the metadata cache, and checks this is the injection path.
        let out = rt.block_on(a.review(Endpoint::Mutate, &body)).unwrap();
        assert_eq!(out.decision, Verdict::Injected);
    }

    let mut g = c.benchmark_group("admission");
    // The pod as the server decodes it (only the judged part, `workload::WirePod`), and the
    // whole review as kube's types decode it, for comparison.
    let review: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let pod = review["request"]["object"].to_string();
    g.bench_function("decode the pod (kura::workload::pod_from_json)", |b| {
        b.iter(|| kura::workload::pod_from_json("Pod", black_box(&pod)).unwrap())
    });
    g.bench_function(
        "decode the review (kube's AdmissionReview<DynamicObject>)",
        |b| {
            b.iter(|| {
                serde_json::from_slice::<AdmissionReview<DynamicObject>>(black_box(&body)).unwrap()
            })
        },
    );
    g.bench_function("review (decode + decide), built-in policy", |b| {
        b.iter(|| {
            rt.block_on(default.review(Endpoint::Mutate, black_box(&body)))
                .unwrap()
        })
    });
    g.bench_function(
        "review (decode + decide), no store lookups and no spec rules",
        |b| {
            b.iter(|| {
                rt.block_on(minimal.review(Endpoint::Mutate, black_box(&body)))
                    .unwrap()
            })
        },
    );
    g.bench_function("review (decode + decide), relaxed policy", |b| {
        b.iter(|| {
            rt.block_on(relaxed.review(Endpoint::Mutate, black_box(&body)))
                .unwrap()
        })
    });
    let answer = rt
        .block_on(default.review(Endpoint::Mutate, &body))
        .unwrap()
        .review;
    g.bench_function("encode answer (kura::wire::encode_review)", |b| {
        b.iter(|| kura::wire::encode_review(black_box(answer.clone())).unwrap())
    });
    g.bench_function("encode answer (serde_json::to_vec)", |b| {
        b.iter(|| serde_json::to_vec(black_box(&answer)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
