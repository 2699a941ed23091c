//! Templates (contract §7): one file composed from several inputs with Jinja syntax, through
//! [minijinja](https://docs.rs/minijinja). The webhook [`check`]s a template at admission (syntax,
//! and every name it reads is an input); the agent [`render`]s it.
//!
//! Rendering is strict: an undefined input or key is an error naming the file and the key, never
//! an empty string, also when it goes through a filter (`tojson` and `escape` are wrapped so
//! they do not print `null` or nothing); `default(...)` and `is defined` still make a key
//! optional on purpose. A failed render keeps the previous good file (the agent's rule for every
//! file). Rendering is bounded: [`FUEL`] instructions and [`MAX_OUTPUT_BYTES`] of output, so a
//! template with a huge loop cannot stall the agent.
//!
//! Filters beyond Jinja's built-ins, for the formats people write:
//! - `shell`: a POSIX shell single-quoted word (`'it'\''s'`), for `.env` files a shell sources;
//! - `urlencode`: percent-encoding of everything but `A-Z a-z 0-9 - . _ ~`, for a password
//!   inside a DSN or URL (Jinja's own keeps `/`, which breaks a DSN's userinfo);
//! - `tojson` (built in): a JSON value, quotes and escapes included;
//! - `b64encode`: standard base64.
//!
//! Jinja's printf-style `format` filter is removed: minijinja 3.1's panics on a format string
//! with a non-ASCII character after `%` (found by the `template` fuzz target), and a panic
//! aborts the agent; a template that uses it fails with "unknown filter".
//!
//! Errors name the line and what is wrong, never a value: minijinja's messages name template
//! positions and names, and [`render`]'s own messages name inputs and keys.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use minijinja::{Environment, Error, ErrorKind, UndefinedBehavior, Value};

/// Instructions one render may execute: a few thousand lines of template with loops over every
/// key of every input, far below what takes noticeable time.
pub const FUEL: u64 = 1_000_000;
/// Largest rendered file: the memory volume is small, and a template that grows past this is a
/// mistake (or a loop).
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;

/// The environment both sides use: strict undefined, bounded fuel, kura's filters, no
/// auto-escaping (the template author picks the escaping per value).
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(64);
    let mut syntax = minijinja::syntax::SyntaxConfig::builder();
    syntax.keep_trailing_newline(true);
    env.set_syntax(syntax.build().expect("the default delimiters are valid"));
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.remove_filter("format");
    env.add_filter("shell", shell_quote);
    env.add_filter("urlencode", url_encode);
    // Built-ins that would turn an undefined value into output (`null`, an empty string)
    // instead of the strict error: the same filters with the check first.
    env.add_filter(
        "tojson",
        |v: Value, indent: Option<Value>, kwargs: minijinja::value::Kwargs| {
            defined(&v)?;
            minijinja::filters::tojson(&v, indent, kwargs)
        },
    );
    for name in ["escape", "e"] {
        env.add_filter(name, |state: &mut minijinja::State, v: Value| {
            defined(&v)?;
            minijinja::filters::escape(state, &v)
        });
    }
    env.add_filter("b64encode", |v: String| {
        base64::engine::general_purpose::STANDARD.encode(v.as_bytes())
    });
    env
}

/// Strict undefined for filters: minijinja hands an undefined value to a filter (so that
/// `default` works), and some would print it as `null` or nothing. This makes them fail the way
/// `{{ missing }}` does, so the message names the key.
fn defined(v: &Value) -> Result<(), Error> {
    if v.is_undefined() {
        Err(Error::new(
            ErrorKind::UndefinedError,
            "the filter's value is undefined",
        ))
    } else {
        Ok(())
    }
}

/// POSIX shell single quoting: the value stays one word with no expansion.
fn shell_quote(v: String) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('\'');
    for c in v.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Percent-encodes everything but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`), so
/// the result is safe in any URL part: a password in a DSN's userinfo (`/`, `@`, `:` encoded),
/// a path segment or a query value. Jinja's own `urlencode` keeps `/`, which breaks a DSN; this
/// one replaces it. A map becomes a query string (`k=v&k2=v2`), as Jinja's does.
fn url_encode(v: Value) -> Result<String, Error> {
    defined(&v)?;
    fn encode(s: &str, out: &mut String) {
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    let mut out = String::new();
    if v.kind() == minijinja::value::ValueKind::Map {
        for (i, key) in v.try_iter()?.enumerate() {
            if i > 0 {
                out.push('&');
            }
            encode(&key.to_string(), &mut out);
            out.push('=');
            encode(&v.get_item(&key)?.to_string(), &mut out);
        }
    } else {
        encode(&v.to_string(), &mut out);
    }
    Ok(out)
}

/// Why a template is refused or failed to render: a sentence naming the line and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

/// The line (when minijinja knows it) and the kind and detail of an error, never a value.
fn describe(e: &Error) -> String {
    let what = match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    };
    match e.line() {
        Some(line) => format!("line {line}: {what}"),
        None => what,
    }
}

/// Checks a template at admission: it parses, and every name it reads is one of `inputs` (or a
/// Jinja global such as `range`). Does not render.
pub fn check<'a>(
    source: &str,
    inputs: impl IntoIterator<Item = &'a str>,
) -> Result<(), TemplateError> {
    let env = environment();
    let tpl = env
        .template_from_str(source)
        .map_err(|e| TemplateError(format!("syntax error at {}", describe(&e))))?;
    let inputs: BTreeSet<&str> = inputs.into_iter().collect();
    let globals: BTreeSet<&str> = env.globals().map(|(name, _)| name).collect();
    let mut unknown: Vec<String> = tpl
        .undeclared_variables(false)
        .into_iter()
        .filter(|n| !inputs.contains(n.as_str()) && !globals.contains(n.as_str()))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort();
    let line = first_line_naming(source, &unknown[0]);
    let declared = if inputs.is_empty() {
        "none".to_string()
    } else {
        inputs.into_iter().collect::<Vec<_>>().join(", ")
    };
    let names: Vec<String> = unknown.iter().map(|n| format!("{n:?}")).collect();
    let what = match names.as_slice() {
        [one] => format!("{one} is not an input"),
        many => format!("{} are not inputs", many.join(", ")),
    };
    let at = line.map(|l| format!("line {l}: ")).unwrap_or_default();
    Err(TemplateError(format!(
        "{at}{what}; the inputs are: {declared}"
    )))
}

/// The first line of `source` where `name` appears as a word (for a message; minijinja's
/// analysis does not keep positions).
fn first_line_naming(source: &str, name: &str) -> Option<usize> {
    source
        .lines()
        .position(|line| {
            line.match_indices(name).any(|(i, _)| {
                let before = line[..i].chars().next_back();
                let after = line[i + name.len()..].chars().next();
                let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
                !word(before) && !word(after)
            })
        })
        .map(|i| i + 1)
}

/// One input's value for a render: a JSON object (or any JSON value) becomes a map or list,
/// anything else a string.
#[derive(Clone)]
pub struct InputValue(pub Value);

impl std::fmt::Debug for InputValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InputValue([REDACTED])")
    }
}

impl InputValue {
    /// A text value: JSON objects and arrays become maps and lists, anything else the string
    /// itself (a JSON string is its content, a number stays text as written).
    pub fn from_text(text: &str) -> Self {
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(v @ (serde_json::Value::Object(_) | serde_json::Value::Array(_))) => {
                InputValue(to_value(&v))
            }
            _ => InputValue(Value::from(text)),
        }
    }

    /// An already selected JSON value (`#key` of an input): a string is its content.
    pub fn from_json(v: &serde_json::Value) -> Self {
        match v {
            serde_json::Value::String(s) => InputValue(Value::from(s.as_str())),
            other => InputValue(to_value(other)),
        }
    }
}

/// A JSON value as a template value: objects are maps, arrays lists, strings their content.
fn to_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::from(i),
            (_, Some(u), _) => Value::from(u),
            (_, _, Some(f)) => Value::from(f),
            _ => Value::from(n.to_string()),
        },
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(items) => items.iter().map(to_value).collect(),
        serde_json::Value::Object(map) => {
            Value::from_pairs(map.iter().map(|(k, v)| (k.as_str(), to_value(v))))
        }
    }
}

/// Renders a template over its inputs' values. An undefined input or key is an error naming it
/// (the message lists the lookups the template makes that the inputs lack).
pub fn render(
    source: &str,
    inputs: &BTreeMap<String, InputValue>,
) -> Result<String, TemplateError> {
    let env = environment();
    let tpl = env
        .template_from_str(source)
        .map_err(|e| TemplateError(format!("syntax error at {}", describe(&e))))?;
    let ctx = Value::from_pairs(inputs.iter().map(|(k, v)| (k.as_str(), v.0.clone())));
    match tpl.render(ctx) {
        Ok(out) if out.len() > MAX_OUTPUT_BYTES => Err(TemplateError(format!(
            "the rendered file is {} bytes; at most {MAX_OUTPUT_BYTES} are written",
            out.len()
        ))),
        Ok(out) => Ok(out),
        Err(e) if e.kind() == ErrorKind::UndefinedError => {
            let missing = missing_lookups(&tpl, inputs);
            Err(TemplateError(match missing.first() {
                Some(m) => format!(
                    "{}{m} is undefined (strict: a missing key is an error, not an empty string)",
                    e.line().map(|l| format!("line {l}: ")).unwrap_or_default()
                ),
                None => describe(&e),
            }))
        }
        Err(e) if e.kind() == ErrorKind::OutOfFuel => Err(TemplateError(format!(
            "{}: the template ran more than {FUEL} steps",
            describe(&e)
        ))),
        // Another failure may still come from a missing key (`{{ db.user | list }}`): say so.
        Err(e) => Err(TemplateError(match missing_lookups(&tpl, inputs).first() {
            Some(m) => format!("{} ({m} is undefined)", describe(&e)),
            None => describe(&e),
        })),
    }
}

/// The template's dotted lookups (`db.username`) that the inputs cannot answer, described as
/// "input \"db\" has no key \"username\"".
fn missing_lookups(
    tpl: &minijinja::Template<'_, '_>,
    inputs: &BTreeMap<String, InputValue>,
) -> Vec<String> {
    let mut lookups: Vec<String> = tpl.undeclared_variables(true).into_iter().collect();
    lookups.sort();
    let mut out = Vec::new();
    for lookup in lookups {
        let mut parts = lookup.split('.');
        let Some(root) = parts.next() else { continue };
        let Some(mut value) = inputs.get(root).map(|v| v.0.clone()) else {
            out.push(format!("input {root:?}"));
            continue;
        };
        let mut path = root.to_string();
        for key in parts {
            match value.get_attr(key) {
                Ok(v) if !v.is_undefined() => value = v,
                _ => {
                    out.push(format!("input {path:?} has no key {key:?}: {path}.{key}"));
                    break;
                }
            }
            path = format!("{path}.{key}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(pairs: &[(&str, &str)]) -> BTreeMap<String, InputValue> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), InputValue::from_text(v)))
            .collect()
    }

    #[test]
    fn renders_maps_and_strings() {
        let out = render(
            "user={{ db.username }}\npass={{ db.password }}\nkey={{ key }}\n",
            &inputs(&[
                ("db", r#"{"username":"app","password":"s3cr3t"}"#),
                ("key", "abc123"),
            ]),
        )
        .expect("renders");
        assert_eq!(out, "user=app\npass=s3cr3t\nkey=abc123\n");
    }

    #[test]
    fn a_missing_key_is_an_error_naming_it() {
        let e = render(
            "a\nuser={{ db.username }}\n",
            &inputs(&[("db", r#"{"password":"s3cr3t"}"#)]),
        )
        .expect_err("strict");
        assert!(e.0.contains("\"username\""), "{e}");
        assert!(e.0.contains("line 2"), "{e}");
        assert!(!e.0.contains("s3cr3t"), "{e}");
    }

    #[test]
    fn strict_undefined_holds_through_filters() {
        let v = inputs(&[("db", r#"{"password":"s3cr3t"}"#)]);
        for f in [
            "urlencode",
            "tojson",
            "shell",
            "b64encode",
            "escape",
            "e",
            "upper",
        ] {
            let e = render(&format!("{{{{ db.username | {f} }}}}"), &v).expect_err(f);
            assert!(
                e.0.contains(r#"input "db" has no key "username""#),
                "{f}: {e}"
            );
        }
        let e = render("{{ db.username | list }}", &v).expect_err("list");
        assert!(e.0.contains(r#"no key "username""#), "{e}");
        assert_eq!(
            render("{{ db.username | default('app') | urlencode }}", &v).expect("default"),
            "app"
        );
        assert_eq!(
            render(
                "{{ db.password | tojson(indent=2) }}|{{ db.password | e }}",
                &v
            )
            .expect("defined values pass"),
            r#""s3cr3t"|s3cr3t"#
        );
    }

    #[test]
    fn escaping_filters() {
        let v = inputs(&[("p", r#"{"pw":"a b'c/@:%?#"}"#)]);
        let out = render(
            "{{ p.pw | urlencode }}|{{ p.pw | shell }}|{{ p.pw | tojson }}|{{ p.pw | b64encode }}",
            &v,
        )
        .expect("renders");
        let parts: Vec<&str> = out.split('|').collect();
        assert_eq!(parts[0], "a%20b%27c%2F%40%3A%25%3F%23");
        let q = render(
            "{{ p | urlencode }}",
            &inputs(&[("p", r#"{"a":"x y","b":"1/2"}"#)]),
        )
        .expect("renders");
        assert_eq!(q, "a=x%20y&b=1%2F2");
        assert_eq!(parts[1], r#"'a b'\''c/@:%?#'"#);
        // JSON with HTML-safe escapes (\u0027): valid JSON, safe inside markup too.
        assert_eq!(parts[2], r#""a b\u0027c/@:%?#""#);
        assert_eq!(parts[3], "YSBiJ2MvQDolPyM=");
    }

    #[test]
    fn check_refuses_syntax_errors_with_the_line() {
        let e = check("ok\n{{ db.password \n", ["db"]).expect_err("syntax");
        assert!(e.0.starts_with("syntax error at line 2"), "{e}");
    }

    #[test]
    fn check_refuses_names_that_are_not_inputs() {
        let e = check("a={{ db.user }}\nb={{ api_key }}\n", ["db", "key"]).expect_err("undeclared");
        assert!(e.0.contains("\"api_key\" is not an input"), "{e}");
        assert!(e.0.contains("line 2"), "{e}");
        assert!(e.0.contains("db, key"), "{e}");
    }

    #[test]
    fn statements_that_load_other_templates_are_syntax_errors() {
        // Built without minijinja's multi_template: there is no loader, and a template sees
        // only its inputs, never another file; admission says so with the line.
        for (source, tag) in [
            ("a\n{% include 'secrets.txt' %}", "include"),
            ("a\n{%- import 'm' as m %}", "import"),
            ("a\n{% from 'm' import x %}", "from"),
            ("a\n{%  extends 'base' %}", "extends"),
        ] {
            let e = check(source, ["db"]).expect_err(source);
            assert!(
                e.0.starts_with("syntax error at line 2") && e.0.contains(tag),
                "{e}"
            );
        }
    }

    #[test]
    fn check_accepts_loops_globals_and_set() {
        check(
            "{% for k, v in db|items %}{{ k }}={{ v }}{{ loop.index }}\n{% endfor %}{% set x = key %}{{ x }}{% for i in range(2) %}{% endfor %}",
            ["db", "key"],
        )
        .expect("valid");
    }

    #[test]
    fn printf_format_is_not_offered() {
        // minijinja 3.1's `format` panics on these (a non-ASCII character in a `%(name)`
        // mapping key), over a literal or over an input's value.
        let e = render("{{ \"%(\u{e9})s\" | format }}", &BTreeMap::new()).expect_err("no format");
        assert!(e.0.contains("unknown filter"), "{e}");
        let e =
            render("{{ a | format }}", &inputs(&[("a", "%(\u{e9}\"k")])).expect_err("no format");
        assert!(e.0.contains("unknown filter"), "{e}");
    }

    #[test]
    fn runaway_templates_are_stopped() {
        let e = render(
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            &BTreeMap::new(),
        )
        .expect_err("bounded");
        assert!(!e.0.is_empty());
    }
}
