//! The agent's spec (`KURA_SPEC`, JSON): what parses serializes back to the same spec.
#![no_main]

use kura_agent::spec::Spec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(spec) = Spec::from_json(text) {
        let back = Spec::from_json(&spec.to_json()).expect("a spec written reads back");
        assert_eq!(back, spec);
    }
});
