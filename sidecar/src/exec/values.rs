//! The values file `kura-agent exec` reads: `<dir>/..data/`[`ENV_VALUES_FILE`], a JSON object
//! of variable name → string that the agent writes inside its atomically swapped set. Reading
//! it through `..data` resolves the link once, so a read sees one complete set or the next one,
//! never a mix.
//!
//! Values are held in [`SecretString`]s from the moment they are parsed: neither `Debug` nor an
//! error of this module shows one.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};

use crate::contract::ENV_VALUES_FILE;
use crate::writer::DATA_LINK;

/// The path of the values file inside the agent's directory, through the `..data` link.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(DATA_LINK).join(ENV_VALUES_FILE)
}

/// The environment variables of one complete set.
#[derive(Default)]
pub struct Values(BTreeMap<String, SecretString>);

impl fmt::Debug for Values {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Values")
            .field("names", &self.0.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl PartialEq for Values {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|((a, va), (b, vb))| a == b && va.expose_secret() == vb.expose_secret())
    }
}

impl Eq for Values {}

impl Values {
    /// Values from pairs (tests and callers that already hold them).
    pub fn from_pairs<N: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (N, V)>,
    ) -> Values {
        Values(
            pairs
                .into_iter()
                .map(|(n, v)| (n.into(), SecretString::from(v.into())))
                .collect(),
        )
    }

    /// The variables' names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// The names whose value differs between `self` and `other`, or that only one of them has.
    pub fn changed_names(&self, other: &Values) -> Vec<String> {
        let names: BTreeSet<&String> = self.0.keys().chain(other.0.keys()).collect();
        names
            .into_iter()
            .filter(|n| {
                self.0.get(*n).map(ExposeSecret::expose_secret)
                    != other.0.get(*n).map(ExposeSecret::expose_secret)
            })
            .cloned()
            .collect()
    }

    /// What to set in a child's environment: every value whose name is not already in
    /// `inherited` (the container's own variables win, as the webhook's KURA001 clash check
    /// promises for declared ones), and the names that clashed.
    pub fn plan<'a>(&'a self, inherited: &BTreeSet<OsString>) -> EnvPlan<'a> {
        let mut plan = EnvPlan::default();
        for (name, value) in &self.0 {
            if inherited.contains(std::ffi::OsStr::new(name)) {
                plan.kept.push(name);
            } else {
                plan.set.push((name, value.expose_secret()));
            }
        }
        plan
    }
}

/// The outcome of [`Values::plan`].
#[derive(Default)]
pub struct EnvPlan<'a> {
    /// Name and value to set.
    pub set: Vec<(&'a str, &'a str)>,
    /// Names the container already has: its value is kept.
    pub kept: Vec<&'a str>,
}

impl fmt::Debug for EnvPlan<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvPlan")
            .field("set", &self.set.iter().map(|(n, _)| n).collect::<Vec<_>>())
            .field("kept", &self.kept)
            .finish()
    }
}

/// A values file that exists but cannot be used. Names the file and the variable, never a value.
#[derive(Debug, thiserror::Error)]
pub enum ValuesError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a JSON object of variable names to strings: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}: the value of {name} is not a string")]
    NotString { path: PathBuf, name: String },
    #[error(
        "{path}: the value of {name} contains a NUL byte, which an environment variable cannot hold"
    )]
    Nul { path: PathBuf, name: String },
    #[error("{path}: {message}")]
    BadName { path: PathBuf, message: String },
}

/// Reads the values of the current set: `None` while no set with a values file exists yet.
pub fn read(dir: &Path) -> Result<Option<Values>, ValuesError> {
    let path = path(dir);
    let mut bytes = match std::fs::read(&path) {
        Ok(b) => b,
        // A set swapped away between resolving `..data` and opening the file is also NotFound:
        // the caller reads again.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ValuesError::Read { path, source }),
    };
    let parsed = parse(&path, &bytes);
    bytes.fill(0);
    parsed.map(Some)
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Values, ValuesError> {
    let invalid = |message: String| ValuesError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    // Parsed as a `Value`, not as a map of strings: serde's type errors quote the offending
    // scalar, a syntax error only gives its position.
    let doc: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    let serde_json::Value::Object(map) = doc else {
        return Err(invalid("the document is not an object".into()));
    };
    let mut values = BTreeMap::new();
    for (name, value) in map {
        crate::spec::validate_env_name(&name).map_err(|e| ValuesError::BadName {
            path: path.to_path_buf(),
            message: e.0,
        })?;
        let serde_json::Value::String(value) = value else {
            return Err(ValuesError::NotString {
                path: path.to_path_buf(),
                name,
            });
        };
        let value = SecretString::from(value);
        if value.expose_secret().contains('\0') {
            return Err(ValuesError::Nul {
                path: path.to_path_buf(),
                name,
            });
        }
        values.insert(name, value);
    }
    Ok(Values(values))
}

/// Why no values file is there yet, for the message after the wait.
pub fn diagnose_missing(dir: &Path) -> String {
    if !dir.is_dir() {
        return format!(
            "{} does not exist or is not a directory: is it the agent's volume (kura.dev/mount-path)?",
            dir.display()
        );
    }
    if !dir.join(DATA_LINK).is_dir() {
        return format!(
            "the agent has not written a complete set into {} yet",
            dir.display()
        );
    }
    format!(
        "the agent's set in {} has no {ENV_VALUES_FILE}: is the agent's image older than the webhook, or does the pod declare no environment variable?",
        dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<Values, ValuesError> {
        parse(Path::new("/v/..data/.kura-env.json"), s.as_bytes())
    }

    #[test]
    fn an_object_of_strings_is_read_and_debug_shows_names_only() {
        let v = parse_str(r#"{"DB_PASSWORD":"hunter2","API_KEY":"k-123"}"#).expect("valid");
        assert_eq!(v.names().collect::<Vec<_>>(), ["API_KEY", "DB_PASSWORD"]);
        let debug = format!("{v:?}");
        assert!(debug.contains("DB_PASSWORD"), "{debug}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("k-123"),
            "{debug}"
        );
        let plan = v.plan(&BTreeSet::new());
        let debug = format!("{plan:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("k-123"),
            "{debug}"
        );
    }

    #[test]
    fn bad_files_are_errors_naming_the_variable_never_the_value() {
        for (doc, needle) in [
            (r#"{"A":"x\u0000y-secret"}"#, "A contains a NUL"),
            (r#"{"B":12345}"#, "value of B is not a string"),
            (
                r#"{"C":{"k":"nested-secret"}}"#,
                "value of C is not a string",
            ),
            (r#"{"1X":"v"}"#, "not an environment variable name"),
            (r#"{"A=B":"v"}"#, "not an environment variable name"),
            (r#""just-a-secret-string""#, "not an object"),
            (r#"{"A":"unterminated-secret"#, "not a JSON object"),
        ] {
            let msg = parse_str(doc).expect_err(doc).to_string();
            assert!(msg.contains(needle), "{doc}: {msg}");
            assert!(msg.contains("/v/..data/.kura-env.json"), "{msg}");
            for secret in ["secret", "12345"] {
                assert!(!msg.contains(secret), "{doc}: {msg}");
            }
        }
    }

    #[test]
    fn the_container_keeps_its_own_variables() {
        let v = Values::from_pairs([("A", "from-kura"), ("HOME", "from-kura")]);
        let inherited: BTreeSet<OsString> = [OsString::from("HOME")].into();
        let plan = v.plan(&inherited);
        assert_eq!(plan.set, [("A", "from-kura")]);
        assert_eq!(plan.kept, ["HOME"]);
    }

    #[test]
    fn changed_names_compare_values() {
        let a = Values::from_pairs([("A", "1"), ("B", "2")]);
        let b = Values::from_pairs([("A", "1"), ("B", "3"), ("C", "4")]);
        assert_eq!(a.changed_names(&b), ["B", "C"]);
        assert!(a != b);
        assert_eq!(a, Values::from_pairs([("B", "2"), ("A", "1")]));
    }

    #[test]
    fn a_missing_file_is_not_yet_and_the_reason_is_told() {
        let tmp = tempfile::tempdir().expect("tempdir");
        assert!(read(tmp.path()).expect("no error").is_none());
        assert!(diagnose_missing(&tmp.path().join("nope")).contains("does not exist"));
        assert!(diagnose_missing(tmp.path()).contains("not written a complete set"));
        std::fs::create_dir(tmp.path().join(DATA_LINK)).expect("mkdir");
        assert!(diagnose_missing(tmp.path()).contains(ENV_VALUES_FILE));
    }
}
