//! `kura lint`'s manifest reader: multi-document YAML, each checked document turned into the
//! AdmissionReview the webhook would get.
#![no_main]

use kura::cli::manifests;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for d in manifests::parse_documents("fuzz.yaml", &text) {
        if d.unreadable.is_none() && manifests::is_checked_kind(d.kind()) {
            let _ = manifests::review_for(&d.value, "default");
        }
    }
});
