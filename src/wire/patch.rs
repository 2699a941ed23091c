//! The JSON Patch kura answers with, written straight to its JSON text: each operation's value
//! is serialized once, from structs that borrow the pod and the configuration
//! (`inject::shape`), instead of being built as a `json_patch::Patch` of `serde_json::Value`
//! trees (a map allocation per object, a string per key) and serialized afterwards. The price is
//! the JSON Pointer escaping of RFC 6901 written here by hand; the unit test below and the
//! injection tests, which apply every patch to its pod, hold it to the RFC.

use std::fmt;

use serde::Serialize;

/// A JSON Patch document of `add` operations, as JSON text.
#[derive(Clone, PartialEq, Eq)]
pub struct PatchText {
    /// `[` and the operations written so far, comma-separated; `]` is added by [`Self::into_json`].
    json: Vec<u8>,
    ops: usize,
}

/// Room for an injection's patch (the agent's container and a few mounts: about 3 KiB).
const CAPACITY: usize = 4 * 1024;

impl Default for PatchText {
    fn default() -> Self {
        let mut json = Vec::with_capacity(CAPACITY);
        json.push(b'[');
        PatchText { json, ops: 0 }
    }
}

impl PatchText {
    /// Appends `{"op":"add","path":…,"value":…}`; `path` is unescaped reference tokens.
    pub fn add(&mut self, path: &[&str], value: &impl Serialize) {
        if self.ops > 0 {
            self.json.push(b',');
        }
        self.ops += 1;
        self.json.extend_from_slice(br#"{"op":"add","path":"#);
        let mut pointer = String::with_capacity(64);
        for token in path {
            pointer.push('/');
            // RFC 6901: `~` is `~0`, `/` is `~1`.
            for ch in token.chars() {
                match ch {
                    '~' => pointer.push_str("~0"),
                    '/' => pointer.push_str("~1"),
                    c => pointer.push(c),
                }
            }
        }
        write_json(&mut self.json, &pointer);
        self.json.extend_from_slice(br#","value":"#);
        write_json(&mut self.json, value);
        self.json.push(b'}');
    }

    /// The number of operations.
    pub fn len(&self) -> usize {
        self.ops
    }

    pub fn is_empty(&self) -> bool {
        self.ops == 0
    }

    /// The document's JSON text.
    pub fn into_json(mut self) -> Vec<u8> {
        self.json.push(b']');
        self.json
    }

    /// The operations, decoded (for inspecting and applying a plan outside the webhook).
    pub fn operations(&self) -> json_patch::Patch {
        let mut json = self.json.clone();
        json.push(b']');
        serde_json::from_slice(&json).expect("kura writes valid JSON Patch documents")
    }
}

/// Serializing to a `Vec` fails only on a map with non-string keys, which none of the values
/// kura writes (its own structs below, k8s-openapi types, strings) has.
fn write_json(out: &mut Vec<u8>, value: &(impl Serialize + ?Sized)) {
    serde_json::to_writer(out, value).expect("patch values have string keys only");
}

/// The patch holds references to secrets and container settings, never secret values, so it
/// prints as its text.
impl fmt::Debug for PatchText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut json = self.json.clone();
        json.push(b']');
        f.debug_tuple("PatchText")
            .field(&String::from_utf8_lossy(&json))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_are_escaped_and_the_text_is_the_document() {
        let mut p = PatchText::default();
        assert!(p.is_empty());
        assert_eq!(p.clone().into_json(), b"[]");
        p.add(&["metadata", "annotations", "kura.dev/status"], &"a\"b");
        p.add(&["spec", "x~y", "-"], &[1, 2]);
        assert_eq!(p.len(), 2);
        let doc: serde_json::Value = serde_json::from_slice(&p.clone().into_json()).expect("JSON");
        assert_eq!(
            doc,
            json!([
                { "op": "add", "path": "/metadata/annotations/kura.dev~1status", "value": "a\"b" },
                { "op": "add", "path": "/spec/x~0y/-", "value": [1, 2] },
            ])
        );
        assert_eq!(serde_json::to_value(p.operations()).expect("ops"), doc);
        assert!(format!("{p:?}").contains("kura.dev~1status"));
    }
}
