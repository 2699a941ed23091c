//! A pod's `kura.dev/` annotations, both forms: the first byte picks the shape.
//! - even: the rest is the value of `kura.dev/secrets` (the YAML list), on an opted-in pod;
//! - odd: the rest is lines of `<name>=<value>`, each name under `kura.dev/` (short forms such
//!   as `secret.db=/prod/db#password`, and every other annotation).
//!
//! Whatever parses must become an agent spec that reads back the same.
#![no_main]

use std::collections::BTreeMap;

use kura_agent::annotations::{self, PREFIX};
use kura_agent::spec::Spec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&shape, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let mut map = BTreeMap::new();
    if shape % 2 == 0 {
        map.insert(annotations::INJECT.to_string(), "true".to_string());
        map.insert(annotations::SECRETS.to_string(), text.into_owned());
    } else {
        for line in text.lines() {
            let (k, v) = line.split_once('=').unwrap_or((line, ""));
            map.insert(format!("{PREFIX}{k}"), v.to_string());
        }
    }
    if let Ok(Some(secrets)) = annotations::parse(&map) {
        let spec = secrets.to_spec(120);
        let back = Spec::from_json(&spec.to_json()).expect("a spec kura writes reads back");
        assert_eq!(back, spec);
        // The round trip writes every entry into kura.dev/secrets: many short-form annotations,
        // each within bounds, can add up to more than that one annotation's size bound, which
        // applies to what a developer writes (kura never writes annotations back to a pod).
        let written = secrets.to_annotations();
        if written[annotations::SECRETS].len() <= annotations::MAX_SECRETS_BYTES {
            let again = annotations::parse(&written)
                .expect("normalized annotations parse")
                .expect("and opt in");
            assert_eq!(again.to_spec(120), spec);
        }
    }
});
