//! The admission's cost in instructions, for `bench/admission-instructions.sh`: the VM this
//! project is measured on drifts by ±15 % in speed, which hides changes of a few percent in
//! timings; an instruction count (valgrind's callgrind) does not drift.
//!
//! `admission_instructions N` answers the load benchmark's review (tests/fixtures/webhook-review.json,
//! built-in policy, warm metadata cache over tests/fixtures/webhook-store.yaml) once to warm up, then N
//! times more, encoding each answer as the server does, with the server's allocator. The script
//! runs it for two values of N and divides the difference. Without N it says so and exits.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use kura::admission::{Admission, Endpoint};
use kura::inject::InjectConfig;
use kura::policy::{Policy, PolicyEngine};
use kura_agent::store::{Store, StoreSetting};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let Some(n) = std::env::args()
        .nth(1)
        .and_then(|a| a.parse::<usize>().ok())
    else {
        println!("usage: admission_instructions N (bench/admission-instructions.sh runs it)");
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let setting: StoreSetting = format!(
        "file:{}",
        root.join("tests/fixtures/webhook-store.yaml").display()
    )
    .parse()
    .unwrap();
    let store = rt
        .block_on(Store::open(&setting, Duration::from_secs(2)))
        .unwrap();
    let admission = Admission::new(
        InjectConfig::default(),
        PolicyEngine::new(Policy::default(), Some(store)),
    );
    let body = std::fs::read(root.join("tests/fixtures/webhook-review.json")).unwrap();
    let out = rt
        .block_on(admission.review(Endpoint::Mutate, &body))
        .unwrap();
    assert_eq!(out.decision.as_str(), "injected");
    for _ in 0..n {
        let out = rt
            .block_on(admission.review(Endpoint::Mutate, black_box(&body)))
            .unwrap();
        black_box(kura::wire::encode_review(out.review).unwrap());
    }
}
