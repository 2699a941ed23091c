//! Secret value → file content: JSON key selection and the `raw`, `json` and `env` formats.
//!
//! Errors name the file, the secret and what is wrong, never the value.

use std::fmt;

use secrecy::ExposeSecret;

use crate::spec::{Format, SecretFile};
use crate::store::SecretValue;

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

/// A rendering failure, naming the file and secret.
#[derive(Debug, Clone, thiserror::Error)]
#[error("file {file:?} from secret {secret:?}: {message}")]
pub struct RenderError {
    pub file: String,
    pub secret: String,
    pub message: String,
}

/// Renders one file from its secret's value.
pub fn render(file: &SecretFile, value: &SecretValue) -> Result<Content, RenderError> {
    let fail = |message: String| RenderError {
        file: file.file.clone(),
        secret: file.secret.clone(),
        message,
    };
    let needs_json = file.key.is_some() || file.format != Format::Raw;
    let text = match value {
        SecretValue::Binary(b) if !needs_json => return Ok(Content(b.expose_secret().to_vec())),
        SecretValue::Binary(_) => {
            return Err(fail("the secret is binary (SecretBinary); a key or the json/env format needs a JSON SecretString".into()));
        }
        SecretValue::Text(t) => t.expose_secret(),
    };
    if !needs_json {
        return Ok(Content(text.as_bytes().to_vec()));
    }
    // serde_json's errors give a position only, never the input.
    let doc: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        fail(format!(
            "the secret is not JSON ({e}), so keys and formats cannot apply"
        ))
    })?;
    let selected = match &file.key {
        None => &doc,
        Some(key) => {
            select(&doc, key).ok_or_else(|| fail(format!("the secret has no JSON key {key:?}")))?
        }
    };
    match file.format {
        Format::Raw => Ok(Content(match selected {
            serde_json::Value::String(s) => s.as_bytes().to_vec(),
            other => other.to_string().into_bytes(),
        })),
        Format::Json => Ok(Content(selected.to_string().into_bytes())),
        Format::Env => env_lines(selected).map(Content).map_err(fail),
    }
}

fn select<'a>(doc: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    if key.starts_with('/') {
        doc.pointer(key)
    } else {
        doc.as_object()?.get(key)
    }
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
        let text = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
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
