//! An AdmissionReview body as kube-apiserver (or anyone reaching the port) sends it, through
//! the whole admission: decode, judge, plan, wrap, encode. Both endpoints; the local file store.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use kura::admission::{Admission, Endpoint};
use kura::inject::InjectConfig;
use kura::policy::{Policy, PolicyEngine};
use kura_agent::store::{Store, StoreSetting};
use libfuzzer_sys::fuzz_target;

struct Target {
    rt: tokio::runtime::Runtime,
    admission: Admission,
}

fn target() -> &'static Target {
    static T: OnceLock<Target> = OnceLock::new();
    T.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime");
        let setting: StoreSetting = concat!(
            "file:",
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/store.yaml"
        )
        .parse()
        .expect("a store setting");
        let store = rt
            .block_on(Store::open(&setting, Duration::from_secs(2)))
            .expect("the example store opens");
        let admission = Admission::new(
            InjectConfig::default(),
            PolicyEngine::new(Policy::default(), Some(store)),
        );
        Target { rt, admission }
    })
}

fuzz_target!(|data: &[u8]| {
    let t = target();
    for endpoint in [Endpoint::Mutate, Endpoint::Validate] {
        if let Ok(outcome) = t.rt.block_on(t.admission.review(endpoint, data)) {
            let _ = kura::wire::encode_review(outcome.review);
        }
    }
});
