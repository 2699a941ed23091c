//! Templates (`kura_agent::template`): arbitrary sources checked and rendered over arbitrary
//! inputs. The input is split at NUL bytes: the template's source, then the values of the inputs
//! `a`, `b`, `c`, ... (each as the agent reads it: JSON objects and arrays become maps and lists,
//! anything else text).
//!
//! Neither [`check`] nor [`render`] may panic or run away (fuel bounds a render); what renders is
//! at most `MAX_OUTPUT_BYTES`; and an error never repeats an input's value: every value carries a
//! marker, and no message may contain it unless the template's own text does.
#![no_main]

use std::collections::BTreeMap;

use kura_agent::template::{self, InputValue};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 4] = ["a", "b", "c", "d"];
const MARKER: &str = "kvQ7marker";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let source = parts.next().unwrap_or_default();
    let values: Vec<String> = parts.take(NAMES.len()).map(|v| mark(v)).collect();
    let names = &NAMES[..values.len()];
    let checked = template::check(source, names.iter().copied());
    if let Err(e) = &checked {
        assert!(!e.0.is_empty());
    }
    let inputs: BTreeMap<String, InputValue> = names
        .iter()
        .zip(&values)
        .map(|(n, v)| (n.to_string(), InputValue::from_text(v)))
        .collect();
    match template::render(source, &inputs) {
        Ok(out) => assert!(out.len() <= template::MAX_OUTPUT_BYTES),
        Err(e) => assert!(
            source.contains(MARKER) || !e.0.contains(MARKER),
            "a render error repeats an input's value: {e}"
        ),
    }
});

/// The value with the marker in every string: in each JSON string of an object or array, else
/// appended to the text.
fn mark(v: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(v) {
        Ok(mut j @ (serde_json::Value::Object(_) | serde_json::Value::Array(_))) => {
            fn walk(j: &mut serde_json::Value) {
                match j {
                    serde_json::Value::String(s) => s.push_str(MARKER),
                    serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
                    serde_json::Value::Object(map) => map.values_mut().for_each(walk),
                    _ => {}
                }
            }
            walk(&mut j);
            j.to_string()
        }
        _ => format!("{v}{MARKER}"),
    }
}
