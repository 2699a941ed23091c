//! Secret values → what the agent delivers: a file's content (JSON key selection and the `raw`,
//! `json` and `env` formats), an environment variable's value, the variables of an `envFrom`
//! object, a template's inputs and its rendered file.
//!
//! Every consumer selects `#key` the same way ([`select`]: a top-level key, or a JSON Pointer
//! when it starts with `/`). Errors name the file, variable, input, secret and key, never the
//! value.

use std::collections::BTreeMap;
use std::fmt;

use secrecy::{ExposeSecret, SecretString};

use crate::spec::{EnvFrom, EnvVar, Format, Input, SecretFile, TemplateFile, validate_env_name};
use crate::store::{SecretValue, subject};
use crate::template::{self, InputValue};

/// Bytes destined for a file. `Debug` never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct Content(Vec<u8>);

impl Content {
    pub fn new(bytes: Vec<u8>) -> Self {
        Content(bytes)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Content([REDACTED; {} bytes])", self.0.len())
    }
}

impl Drop for Content {
    fn drop(&mut self) {
        // Best effort: do not leave the value in freed memory.
        self.0.iter_mut().for_each(|b| *b = 0);
    }
}

/// What a rendering failure concerns: the thing the pod declared, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A file from one secret.
    File { file: String, secret: String },
    /// A `kura.dev/env.<NAME>` / `env:` variable.
    Variable { name: String, secret: String },
    /// An `envFrom:` entry.
    EnvFrom { secret: String },
    /// A file rendered from a template.
    Template { file: String },
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Item::File { file, secret } => write!(f, "file {file:?} from {}", subject(secret)),
            Item::Variable { name, secret } => {
                write!(f, "environment variable {name:?} from {}", subject(secret))
            }
            Item::EnvFrom { secret } => write!(f, "envFrom {}", subject(secret)),
            Item::Template { file } => write!(f, "template file {file:?}"),
        }
    }
}

/// A rendering failure: the item it concerns and what is wrong, never a value.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{item}: {message}")]
pub struct RenderError {
    pub item: Item,
    pub message: String,
}

/// Environment variable name → value, as `kura-agent exec` sets them.
pub type EnvValues = BTreeMap<String, SecretString>;

/// The text of a value, or why a binary one cannot be used (`for_what` completes "a binary
/// secret cannot be used for ...").
fn text_of<'a>(value: &'a SecretValue, for_what: &str) -> Result<&'a str, String> {
    match value {
        SecretValue::Text(t) => Ok(t.expose_secret()),
        SecretValue::Binary(_) => Err(format!(
            "the secret is binary (SecretBinary); {for_what} needs a SecretString"
        )),
    }
}

/// Parses a value as JSON and applies `#key`. serde_json's errors give a position only, never
/// the input.
fn select_json(text: &str, key: Option<&str>) -> Result<serde_json::Value, String> {
    let mut doc: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| format!("the secret is not JSON ({e}), so keys and formats cannot apply"))?;
    match key {
        None => Ok(doc),
        Some(key) => select(&mut doc, key)
            .map(serde_json::Value::take)
            .ok_or_else(|| format!("the secret has no JSON key {key:?}")),
    }
}

/// `#key` of a JSON document: a top-level key, or a JSON Pointer when it starts with `/`.
fn select<'a>(doc: &'a mut serde_json::Value, key: &str) -> Option<&'a mut serde_json::Value> {
    if key.starts_with('/') {
        doc.pointer_mut(key)
    } else {
        doc.as_object_mut()?.get_mut(key)
    }
}

/// A selected JSON value as text: a string as-is, anything else as JSON.
fn scalar_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Renders one file from its secret's value.
pub fn render(file: &SecretFile, value: &SecretValue) -> Result<Content, RenderError> {
    let fail = |message: String| RenderError {
        item: Item::File {
            file: file.file.clone(),
            secret: file.secret.clone(),
        },
        message,
    };
    let needs_json = file.key.is_some() || file.format != Format::Raw;
    if !needs_json {
        return Ok(Content(match value {
            SecretValue::Binary(b) => b.expose_secret().to_vec(),
            SecretValue::Text(t) => t.expose_secret().as_bytes().to_vec(),
        }));
    }
    let text = text_of(value, "a key or the json/env format").map_err(fail)?;
    let selected = select_json(text, file.key.as_deref()).map_err(fail)?;
    match file.format {
        Format::Raw => Ok(Content(scalar_text(&selected).into_bytes())),
        Format::Json => Ok(Content(selected.to_string().into_bytes())),
        Format::Env => env_lines(&selected).map(Content).map_err(fail),
    }
}

/// The value of one environment variable: the secret's text, or its `#key` (a string as-is,
/// anything else as JSON). A binary secret or a value holding NUL (which no environment can
/// carry) is an error naming the variable.
pub fn env_value(var: &EnvVar, value: &SecretValue) -> Result<SecretString, RenderError> {
    let fail = |message: String| RenderError {
        item: Item::Variable {
            name: var.name.clone(),
            secret: var.secret.clone(),
        },
        message,
    };
    let text = text_of(value, "an environment variable").map_err(fail)?;
    let out = match &var.key {
        None => text.to_string(),
        Some(key) => scalar_text(&select_json(text, Some(key)).map_err(fail)?),
    };
    if out.contains('\0') {
        return Err(fail(
            "the value contains a NUL byte, which an environment variable cannot hold".into(),
        ));
    }
    Ok(SecretString::from(out))
}

/// The variables of an `envFrom` entry: every top-level key of the JSON object (or of the
/// object at its `#key`). A key that is not a C identifier, or a value holding NUL, is an error
/// naming the key and the secret; nothing is skipped silently.
pub fn env_from(entry: &EnvFrom, value: &SecretValue) -> Result<EnvValues, RenderError> {
    let fail = |message: String| RenderError {
        item: Item::EnvFrom {
            secret: entry.secret.clone(),
        },
        message,
    };
    let text = text_of(value, "envFrom").map_err(fail)?;
    let selected = select_json(text, entry.key.as_deref()).map_err(fail)?;
    let obj = selected.as_object().ok_or_else(|| {
        fail(format!(
            "envFrom needs a JSON object, and the value is {}",
            json_kind(&selected)
        ))
    })?;
    let mut out = EnvValues::new();
    for (k, v) in obj {
        validate_env_name(k).map_err(|e| fail(format!("key {}", e.0)))?;
        let text = scalar_text(v);
        if text.contains('\0') {
            return Err(fail(format!(
                "the value of key {k:?} contains a NUL byte, which an environment variable cannot hold"
            )));
        }
        out.insert(k.clone(), SecretString::from(text));
    }
    Ok(out)
}

/// One template input's value: the secret's text (a JSON object is a map, anything else a
/// string), or its `#key` (an object a map, a string its content). The message names the input
/// and its secret; the caller adds the file.
pub fn template_input(
    name: &str,
    input: &Input,
    value: &SecretValue,
) -> Result<InputValue, String> {
    let fail = |m: String| format!("input {name:?} ({}): {m}", subject(&input.secret));
    let text = text_of(value, "a template input").map_err(fail)?;
    match &input.key {
        None => Ok(InputValue::from_text(text)),
        Some(key) => select_json(text, Some(key))
            .map(|v| InputValue::from_json(&v))
            .map_err(fail),
    }
}

/// Renders a template file over its inputs' values (strict: a missing key is an error naming
/// the file and the key).
pub fn render_template(
    t: &TemplateFile,
    inputs: &BTreeMap<String, InputValue>,
) -> Result<Content, RenderError> {
    template::render(&t.template, inputs)
        .map(|out| Content(out.into_bytes()))
        .map_err(|e| RenderError {
            item: Item::Template {
                file: t.file.clone(),
            },
            message: e.0,
        })
}

/// The `.kura-env.json` content: a JSON object of name → string value.
pub fn env_file(values: &EnvValues) -> Content {
    let view: BTreeMap<&str, &str> = values
        .iter()
        .map(|(k, v)| (k.as_str(), v.expose_secret()))
        .collect();
    Content(serde_json::to_vec(&view).expect("a map of strings always serializes"))
}

fn env_lines(v: &serde_json::Value) -> Result<Vec<u8>, String> {
    let obj = v.as_object().ok_or_else(|| {
        format!(
            "the env format needs a JSON object, and the value is {}",
            json_kind(v)
        )
    })?;
    let mut out = String::new();
    for (k, v) in obj {
        let valid = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "key {k:?} is not a shell variable name ([A-Za-z_][A-Za-z0-9_]*)"
            ));
        }
        let text = scalar_text(v);
        out.push_str(k);
        out.push_str("='");
        out.push_str(&text.replace('\'', r"'\''"));
        out.push_str("'\n");
    }
    Ok(out.into_bytes())
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::DEFAULT_FILE_MODE;
    use secrecy::{SecretSlice, SecretString};

    fn f(key: Option<&str>, format: Format) -> SecretFile {
        SecretFile {
            file: "out".into(),
            secret: "/demo/s".into(),
            key: key.map(Into::into),
            version_stage: None,
            version_id: None,
            format,
            mode: DEFAULT_FILE_MODE,
        }
    }

    fn text(s: &str) -> SecretValue {
        SecretValue::Text(SecretString::from(s.to_string()))
    }

    fn ok(file: &SecretFile, v: &SecretValue) -> String {
        String::from_utf8(render(file, v).expect("renders").bytes().to_vec()).expect("utf8")
    }

    #[test]
    fn formats_and_keys() {
        let doc = text(r#"{"user":"app","password":"p'w","port":5432,"nested":{"a":[1,2]}}"#);
        assert_eq!(ok(&f(None, Format::Raw), &text("plain")), "plain");
        assert_eq!(ok(&f(Some("password"), Format::Raw), &doc), "p'w");
        assert_eq!(ok(&f(Some("port"), Format::Raw), &doc), "5432");
        assert_eq!(ok(&f(Some("/nested/a/1"), Format::Raw), &doc), "2");
        assert_eq!(ok(&f(Some("nested"), Format::Json), &doc), r#"{"a":[1,2]}"#);
        let env = ok(
            &f(None, Format::Env),
            &text(r#"{"USER":"app","PASS":"p'w","N":1}"#),
        );
        assert_eq!(env, "N='1'\nPASS='p'\\''w'\nUSER='app'\n");
        let bin = SecretValue::Binary(SecretSlice::from(vec![0u8, 159, 146, 150]));
        assert_eq!(
            render(&f(None, Format::Raw), &bin).expect("binary").bytes(),
            &[0u8, 159, 146, 150]
        );
    }

    #[test]
    fn errors_name_file_and_secret_but_not_value() {
        let cases = [
            (
                f(Some("missing"), Format::Raw),
                text(r#"{"password":"hunter2"}"#),
                "no JSON key \"missing\"",
            ),
            (
                f(Some("password"), Format::Raw),
                text("hunter2"),
                "not JSON",
            ),
            (f(None, Format::Env), text(r#"["hunter2"]"#), "an array"),
            (
                f(None, Format::Env),
                text(r#"{"bad-key":"hunter2"}"#),
                "not a shell variable",
            ),
            (
                f(Some("k"), Format::Raw),
                SecretValue::Binary(SecretSlice::from(b"hunter2".to_vec())),
                "binary",
            ),
        ];
        for (file, value, needle) in cases {
            let e = render(&file, &value).expect_err(needle).to_string();
            assert!(
                e.contains(needle) && e.contains("\"out\"") && e.contains("/demo/s"),
                "{e}"
            );
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    fn var(key: Option<&str>) -> EnvVar {
        EnvVar {
            name: "DB_PASSWORD".into(),
            secret: "/demo/s".into(),
            key: key.map(Into::into),
            version_stage: None,
            version_id: None,
        }
    }

    fn from(key: Option<&str>) -> EnvFrom {
        EnvFrom {
            secret: "ssm:/demo/p".into(),
            key: key.map(Into::into),
            version_stage: None,
            version_id: None,
        }
    }

    fn exposed(v: &EnvValues) -> Vec<(&str, &str)> {
        v.iter()
            .map(|(k, v)| (k.as_str(), v.expose_secret()))
            .collect()
    }

    #[test]
    fn environment_values_and_their_errors() {
        let doc = text(r#"{"password":"hunter2","port":5432,"nested":{"A":"x","B_2":[1]}}"#);
        let get = |v: &EnvVar, val: &SecretValue| {
            env_value(v, val)
                .expect("a value")
                .expose_secret()
                .to_string()
        };
        assert_eq!(get(&var(None), &text("plain {json")), "plain {json");
        assert_eq!(get(&var(Some("password")), &doc), "hunter2");
        assert_eq!(get(&var(Some("port")), &doc), "5432");
        assert_eq!(get(&var(Some("nested")), &doc), r#"{"A":"x","B_2":[1]}"#);
        let got = env_from(&from(Some("/nested")), &doc).expect("an object");
        assert_eq!(exposed(&got), [("A", "x"), ("B_2", "[1]")]);

        let bin = SecretValue::Binary(SecretSlice::from(b"hunter2".to_vec()));
        for (e, needles) in [
            (
                env_value(&var(None), &bin).expect_err("binary"),
                vec!["binary", "\"DB_PASSWORD\""],
            ),
            (
                env_value(&var(None), &text("a\0hunter2")).expect_err("NUL"),
                vec!["NUL", "\"DB_PASSWORD\""],
            ),
            (
                env_value(&var(Some("user")), &doc).expect_err("no key"),
                vec!["no JSON key \"user\"", "DB_PASSWORD", "/demo/s"],
            ),
            (
                env_from(
                    &from(None),
                    &text(r#"{"OK":"hunter2","db-host":"hunter2"}"#),
                )
                .expect_err("a bad name"),
                vec![
                    "\"db-host\"",
                    "ssm:/demo/p",
                    "not an environment variable name",
                ],
            ),
            (
                env_from(&from(None), &text(r#"["hunter2"]"#)).expect_err("not an object"),
                vec!["an array", "ssm:/demo/p"],
            ),
            (
                env_from(&from(None), &text(r#"{"A":"x\u0000hunter2"}"#)).expect_err("NUL"),
                vec!["key \"A\"", "NUL"],
            ),
            (
                env_from(&from(None), &bin).expect_err("binary"),
                vec!["binary", "parameter \"ssm:/demo/p\""],
            ),
        ] {
            let e = e.to_string();
            for n in needles {
                assert!(e.contains(n), "{n}: {e}");
            }
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn template_inputs_select_keys_and_refuse_binary() {
        let t = TemplateFile {
            file: "app.properties".into(),
            inputs: BTreeMap::new(),
            template: "u={{ db.username }} p={{ pw }} n={{ port }}".into(),
            mode: DEFAULT_FILE_MODE,
        };
        let doc = text(r#"{"username":"app","password":"hunter2","port":5432}"#);
        let input = |key: Option<&str>| Input {
            secret: "/demo/db".into(),
            key: key.map(Into::into),
        };
        let inputs: BTreeMap<String, InputValue> = [
            ("db", template_input("db", &input(None), &doc)),
            ("pw", template_input("pw", &input(Some("password")), &doc)),
            ("port", template_input("port", &input(Some("/port")), &doc)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.expect("an input")))
        .collect();
        let out = render_template(&t, &inputs).expect("renders");
        assert_eq!(out.bytes(), b"u=app p=hunter2 n=5432");

        let bin = SecretValue::Binary(SecretSlice::from(b"hunter2".to_vec()));
        let e = template_input("db", &input(None), &bin).expect_err("binary");
        assert!(e.contains("input \"db\"") && e.contains("binary"), "{e}");
        let e = template_input("db", &input(Some("user")), &doc).expect_err("no key");
        assert!(e.contains("\"user\"") && !e.contains("hunter2"), "{e}");

        let mut lacking = inputs.clone();
        lacking.insert(
            "db".into(),
            InputValue::from_text(r#"{"password":"hunter2"}"#),
        );
        let e = render_template(&t, &lacking)
            .expect_err("strict")
            .to_string();
        assert!(
            e.starts_with("template file \"app.properties\"") && e.contains("\"username\""),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn the_env_values_file_is_a_json_object_of_strings() {
        let values: EnvValues = [("B", "it's \"q\"\n"), ("A", "1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), SecretString::from(v.to_string())))
            .collect();
        let parsed: BTreeMap<String, String> =
            serde_json::from_slice(env_file(&values).bytes()).expect("JSON");
        assert_eq!(parsed["A"], "1");
        assert_eq!(parsed["B"], "it's \"q\"\n");
        assert_eq!(parsed.len(), 2);
    }

    #[test]
    fn env_output_is_safe_for_the_shell() {
        let v = text(r#"{"A":"$(exit 7) `x` ' \" \n"}"#);
        let out = ok(&f(None, Format::Env), &v);
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "set -a; {out}\n[ \"$A\" = '$(exit 7) `x` '\\'' \" \n' ]"
            ))
            .status()
            .expect("sh runs");
        assert!(status.success(), "{out}");
    }
}
