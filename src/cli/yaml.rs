//! YAML as Kubernetes reads it, with the line of every field.
//!
//! kubectl turns manifests into JSON with sigs.k8s.io/yaml, which reads YAML 1.1 (go-yaml v2):
//! `defaultMode: 0400` is the integer 256, `yes`/`on`/`off` are booleans, `0x1F`, `0b101` and
//! `1_000` are integers, `<<` merges mappings, and a duplicate key is an error. A YAML 1.2 reader
//! sees the string `"0400"` instead and the document no longer decodes as a pod. This module
//! resolves plain scalars by go-yaml v2's rules over the events of [`saphyr_parser`], and keeps
//! the line where each field starts (by JSON pointer) so findings can point at it.
//!
//! Documents are read one by one (split at `---` lines), so a document that does not parse is
//! reported with its reason and line while the others are still read.

use std::collections::{BTreeMap, HashMap};

use saphyr_parser::{Event, Parser, ScalarStyle, Span, Tag};
use serde_json::{Map, Number, Value};

/// One document of a YAML stream.
#[derive(Debug, Clone)]
pub struct Doc {
    /// 1-based position in the stream.
    pub index: usize,
    /// The 1-based line where the document starts.
    pub line: usize,
    pub result: Result<Loaded, Unreadable>,
}

/// A document read as kubectl reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub value: Value,
    /// JSON pointer → 1-based line where that field (its key, for a mapping entry) starts.
    pub lines: BTreeMap<String, usize>,
}

impl Loaded {
    /// The line of the field at `pointer`, or of its nearest ancestor that has one.
    pub fn line_of(&self, pointer: &str) -> Option<usize> {
        let mut p = pointer;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(*l);
            }
            p = &p[..p.rfind('/')?];
        }
    }
}

/// Why a document cannot be read, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct Unreadable {
    pub line: usize,
    pub reason: String,
}

/// Every document of a YAML stream; empty documents (only comments or nothing) are skipped.
pub fn documents(text: &str) -> Vec<Doc> {
    let mut out = Vec::new();
    for (first_line, chunk) in chunks(text) {
        for result in load_chunk(chunk, first_line - 1) {
            match result {
                Ok(None) => {}
                Ok(Some(loaded)) => out.push((loaded.1, Ok(loaded.0))),
                Err(e) => out.push((e.line, Err(e))),
            }
        }
    }
    out.into_iter()
        .enumerate()
        .map(|(i, (line, result))| Doc {
            index: i + 1,
            line,
            result,
        })
        .collect()
}

/// The text split before every `---` line: (first line, text).
fn chunks(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        let is_marker = bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t");
        if is_marker && offset > start {
            out.push((start_line, &text[start..offset]));
            start = offset;
            start_line = i + 1;
        }
        offset += line.len();
    }
    if offset > start {
        out.push((start_line, &text[start..]));
    }
    out
}

type Loading = Result<Option<(Loaded, usize)>, Unreadable>;

/// The documents of one chunk (usually one), each with its first line.
fn load_chunk(chunk: &str, line_offset: usize) -> Vec<Loading> {
    let mut b = Builder {
        line_offset,
        ..Builder::default()
    };
    let mut out = Vec::new();
    // An error found at the end of the text (an unclosed bracket) is reported on its last line.
    let last_line = line_offset + chunk.trim_end().lines().count().max(1);
    for event in Parser::new_from_str(chunk) {
        let (event, span) = match event {
            Ok(e) => e,
            Err(e) => {
                out.push(Err(Unreadable {
                    line: (e.marker().line() + line_offset).min(last_line),
                    reason: e.info().to_string(),
                }));
                return out;
            }
        };
        match b.event(event, span) {
            Ok(Some(done)) => out.push(Ok(Some(done))),
            Ok(None) => {}
            Err(e) => {
                out.push(Err(e));
                return out;
            }
        }
    }
    out
}

enum Frame {
    Seq {
        items: Vec<Value>,
        pointer: String,
        anchor: usize,
    },
    Map {
        map: Map<String, Value>,
        pointer: String,
        anchor: usize,
        /// The key read, waiting for its value; `Some("<<")` with `merge` for a merge key.
        key: Option<String>,
        merge: bool,
        merges: Vec<Value>,
        line: usize,
    },
}

#[derive(Default)]
struct Builder {
    line_offset: usize,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Value>,
    lines: BTreeMap<String, usize>,
    root: Option<Value>,
    start_line: usize,
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

impl Builder {
    fn line(&self, span: &Span) -> usize {
        span.start.line() + self.line_offset
    }

    fn fail(&self, span: &Span, reason: impl Into<String>) -> Unreadable {
        Unreadable {
            line: self.line(span),
            reason: reason.into(),
        }
    }

    /// The pointer of the node that starts now, or `None` when it is a mapping key.
    fn next_pointer(&self) -> Option<String> {
        match self.stack.last() {
            None => Some(String::new()),
            Some(Frame::Seq { items, pointer, .. }) => Some(format!("{pointer}/{}", items.len())),
            Some(Frame::Map {
                key: Some(k),
                pointer,
                ..
            }) => Some(format!("{pointer}/{}", escape(k))),
            Some(Frame::Map { key: None, .. }) => None,
        }
    }

    fn event(
        &mut self,
        event: Event<'_>,
        span: Span,
    ) -> Result<Option<(Loaded, usize)>, Unreadable> {
        match event {
            Event::DocumentStart(_) => {
                self.start_line = self.line(&span);
                self.lines.clear();
                self.anchors.clear();
            }
            Event::DocumentEnd => {
                let value = self.root.take().filter(|v| !v.is_null());
                let lines = std::mem::take(&mut self.lines);
                return Ok(value.map(|value| (Loaded { value, lines }, self.start_line)));
            }
            Event::Scalar(text, style, anchor, tag) => {
                let Some(pointer) = self.next_pointer() else {
                    // A mapping key: kubectl turns every key into a string.
                    let key = match resolve(&text, style, tag.as_deref()) {
                        Value::String(s) => s,
                        Value::Null => "null".to_string(),
                        other => other.to_string(),
                    };
                    if anchor != 0 {
                        self.anchors.insert(anchor, Value::String(key.clone()));
                    }
                    return self.key(key, style == ScalarStyle::Plain && text == "<<", &span);
                };
                let line = self.line(&span);
                self.lines.entry(pointer).or_insert(line);
                let value = resolve(&text, style, tag.as_deref());
                if anchor != 0 {
                    self.anchors.insert(anchor, value.clone());
                }
                self.value(value, &span)?;
            }
            Event::Alias(id) => {
                let Some(value) = self.anchors.get(&id).cloned() else {
                    return Err(self.fail(&span, "alias to an unknown anchor"));
                };
                match self.next_pointer() {
                    None => {
                        let Value::String(key) = value else {
                            return Err(self.fail(&span, "a mapping key must be a scalar"));
                        };
                        return self.key(key, false, &span);
                    }
                    Some(p) => {
                        let line = self.line(&span);
                        self.lines.entry(p).or_insert(line);
                        self.value(value, &span)?;
                    }
                }
            }
            Event::SequenceStart(anchor, _) => {
                let Some(pointer) = self.next_pointer() else {
                    return Err(self.fail(&span, "a mapping key must be a scalar"));
                };
                let line = self.line(&span);
                self.lines.entry(pointer.clone()).or_insert(line);
                self.stack.push(Frame::Seq {
                    items: Vec::new(),
                    pointer,
                    anchor,
                });
            }
            Event::MappingStart(anchor, _) => {
                let Some(pointer) = self.next_pointer() else {
                    return Err(self.fail(&span, "a mapping key must be a scalar"));
                };
                let line = self.line(&span);
                self.lines.entry(pointer.clone()).or_insert(line);
                self.stack.push(Frame::Map {
                    map: Map::new(),
                    pointer,
                    anchor,
                    key: None,
                    merge: false,
                    merges: Vec::new(),
                    line,
                });
            }
            Event::SequenceEnd => {
                let Some(Frame::Seq { items, anchor, .. }) = self.stack.pop() else {
                    return Err(self.fail(&span, "unbalanced sequence"));
                };
                let v = Value::Array(items);
                if anchor != 0 {
                    self.anchors.insert(anchor, v.clone());
                }
                self.value(v, &span)?;
            }
            Event::MappingEnd => {
                let Some(Frame::Map {
                    mut map,
                    anchor,
                    merges,
                    line,
                    ..
                }) = self.stack.pop()
                else {
                    return Err(self.fail(&span, "unbalanced mapping"));
                };
                // `<<: *base` and `<<: [*a, *b]`: keys written here win, then earlier merges.
                for m in merges {
                    let sources = match m {
                        Value::Array(a) => a,
                        other => vec![other],
                    };
                    for s in sources {
                        let Value::Object(o) = s else {
                            return Err(Unreadable {
                                line,
                                reason: "a merge key (<<) must name a mapping".into(),
                            });
                        };
                        for (k, v) in o {
                            map.entry(k).or_insert(v);
                        }
                    }
                }
                let v = Value::Object(map);
                if anchor != 0 {
                    self.anchors.insert(anchor, v.clone());
                }
                self.value(v, &span)?;
            }
            Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
        }
        Ok(None)
    }

    fn key(
        &mut self,
        key: String,
        merge_key: bool,
        span: &Span,
    ) -> Result<Option<(Loaded, usize)>, Unreadable> {
        let line = self.line(span);
        let Some(Frame::Map {
            map,
            pointer,
            key: slot,
            merge,
            ..
        }) = self.stack.last_mut()
        else {
            return Err(self.fail(span, "a key outside a mapping"));
        };
        if !merge_key && map.contains_key(&key) {
            let reason = format!("mapping key {key:?} already defined");
            return Err(Unreadable { line, reason });
        }
        self.lines
            .entry(format!("{pointer}/{}", escape(&key)))
            .or_insert(line);
        *merge = merge_key;
        *slot = Some(key);
        Ok(None)
    }

    fn value(&mut self, value: Value, span: &Span) -> Result<(), Unreadable> {
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Frame::Seq { items, .. }) => items.push(value),
            Some(Frame::Map {
                map,
                key,
                merge,
                merges,
                ..
            }) => {
                let Some(k) = key.take() else {
                    return Err(self.fail(span, "a value without a key"));
                };
                if *merge {
                    *merge = false;
                    merges.push(value);
                } else {
                    map.insert(k, value);
                }
            }
        }
        Ok(())
    }
}

/// A scalar as go-yaml v2 resolves it: quoted and block scalars are strings; a plain scalar is
/// null, a YAML 1.1 boolean, an integer (decimal, `0` octal, `0x`, `0o`, `0b`, `_` ignored), a
/// float, or a string. Core-schema tags (`!!str`, `!!int`…) are obeyed.
fn resolve(text: &str, style: ScalarStyle, tag: Option<&Tag>) -> Value {
    let core = tag.filter(|t| t.is_yaml_core_schema() || t.handle == "!!");
    if let Some(t) = core {
        match t.suffix.as_str() {
            "str" | "binary" | "timestamp" => return Value::String(text.to_string()),
            "int" | "float" | "bool" | "null" => {
                let v = resolve_plain(text);
                return if v.is_string() {
                    Value::String(text.to_string())
                } else {
                    v
                };
            }
            _ => {}
        }
    }
    if style != ScalarStyle::Plain || (tag.is_some() && core.is_none()) {
        return Value::String(text.to_string());
    }
    resolve_plain(text)
}

fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "true" | "True" | "TRUE" => {
            return Value::Bool(true);
        }
        "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" | "false" | "False" | "FALSE" => {
            return Value::Bool(false);
        }
        _ => {}
    }
    let numeric_hint = text
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | '.'));
    if !numeric_hint {
        return Value::String(text.to_string());
    }
    let plain = text.replace('_', "");
    if let Some(n) = parse_int(&plain) {
        return Value::Number(n);
    }
    if is_float(&plain)
        && let Ok(f) = plain.parse::<f64>()
        && f.is_finite()
    {
        // sigs.k8s.io/yaml writes a whole float as an integer in the JSON it hands on.
        if f.fract() == 0.0 && f.abs() < 9.0e15 {
            return Value::Number(Number::from(f as i64));
        }
        if let Some(n) = Number::from_f64(f) {
            return Value::Number(n);
        }
    }
    Value::String(text.to_string())
}

/// Go's `strconv.ParseInt(s, 0, 64)`, then `ParseUint`: sign, then `0x`, `0o`, `0b`, a leading
/// `0` for octal, or decimal.
fn parse_int(s: &str) -> Option<Number> {
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let lower = body.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = u64::from_str_radix(digits, radix).ok()?;
    if neg {
        let v = i64::try_from(magnitude)
            .map(|v| -v)
            .ok()
            .or((magnitude == 1 << 63).then_some(i64::MIN))?;
        Some(Number::from(v))
    } else {
        Some(Number::from(magnitude))
    }
}

/// go-yaml v2's `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
fn is_float(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some(("", frac)) => digits(frac),
        Some((int, frac)) => digits(int) && (frac.is_empty() || digits(frac)),
        None => digits(mantissa),
    };
    let exp_ok = exp.is_none_or(|e| digits(e.strip_prefix(['-', '+']).unwrap_or(e)));
    mantissa_ok && exp_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(text: &str) -> Value {
        let docs = documents(text);
        assert_eq!(docs.len(), 1, "{docs:?}");
        docs[0].result.clone().expect("readable").value
    }

    #[test]
    fn yaml_1_1_scalars_as_kubectl_reads_them() {
        let v = one(
            "a: 0400\nb: 0o17\nc: 0x1F\nd: 0b101\ne: 1_000\nf: yes\ng: Off\nh: ~\ni: '0400'\n\
             j: 08\nk: 1.5\nl: -12\nm: 012abc\nnn: \"yes\"\no: !!str 0400\np: 2026-01-01\nq: .5\n",
        );
        assert_eq!(
            v,
            json!({"a": 256, "b": 15, "c": 31, "d": 5, "e": 1000, "f": true, "g": false,
                   "h": null, "i": "0400", "j": 8, "k": 1.5, "l": -12, "m": "012abc",
                   "nn": "yes", "o": "0400", "p": "2026-01-01", "q": 0.5})
        );
    }

    #[test]
    fn anchors_aliases_and_merge_keys() {
        let v = one("base: &b {x: 1, z: 2}\nuse:\n  <<: *b\n  z: 3\nlist: [*b]\n");
        assert_eq!(v["use"], json!({"x": 1, "z": 3}));
        assert_eq!(v["list"], json!([{"x": 1, "z": 2}]));
    }

    #[test]
    fn lines_by_json_pointer() {
        let docs = documents(
            "# c\n---\nkind: Pod\nspec:\n  containers:\n  - name: a\n    env:\n    - name: X\n      value: y\n",
        );
        let d = docs[0].result.as_ref().expect("readable");
        assert_eq!(docs[0].line, 2);
        assert_eq!(d.lines["/kind"], 3);
        assert_eq!(d.lines["/spec/containers/0/env/0/value"], 9);
        assert_eq!(d.line_of("/spec/containers/0/env/0/valueFrom"), Some(8));
    }

    #[test]
    fn a_broken_document_does_not_hide_the_others() {
        let docs = documents("a: 1\n---\nb: [1, 2\n---\nc: 3\nc: 4\n---\nd: 4\n");
        assert_eq!(docs.len(), 4);
        assert!(docs[0].result.is_ok());
        let e = docs[1]
            .result
            .as_ref()
            .expect_err("unterminated flow sequence");
        assert!(e.line >= 3, "{e}");
        let e = docs[2].result.as_ref().expect_err("duplicate key");
        assert_eq!(e.line, 6);
        assert!(e.reason.contains("already defined"), "{e}");
        assert_eq!(
            docs[3].result.as_ref().map(|d| d.value.clone()),
            Ok(json!({"d": 4}))
        );
        assert_eq!(docs[3].index, 4);
    }

    #[test]
    fn empty_documents_are_skipped() {
        assert!(documents("").is_empty());
        assert_eq!(documents("---\n# only a comment\n---\na: 1\n").len(), 1);
    }

    proptest::proptest! {
        /// Any text, and text made of YAML's own punctuation, is read or reported: never a panic.
        #[test]
        fn never_panics(text in "\\PC{0,200}", yamlish in "[-:?,\\[\\]{}#&*!|>'\"%@<~ a-z0-9\n]{0,300}") {
            let _ = documents(&text);
            let _ = documents(&yamlish);
        }

        #[test]
        fn integers_round_trip(n in proptest::num::i64::ANY) {
            proptest::prop_assert_eq!(one(&format!("a: {n}\n"))["a"].clone(), json!(n));
        }
    }
}
