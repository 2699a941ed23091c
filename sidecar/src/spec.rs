//! The secret spec: what a pod asked for, normalized and versioned.
//!
//! The webhook parses pod annotations into a [`Spec`] and hands it to the agent as JSON in
//! `KURA_SPEC`; the agent reads it back with [`Spec::from_json`]. Both sides share this module so
//! the format cannot drift. Parsing annotations lives in [`crate::annotations`] (feature
//! `annotations`), which only the webhook needs.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The spec version the webhook writes and this agent reads.
pub const SPEC_VERSION: &str = "kura.dev/v1";

/// Default mode of written files (`kura.dev/file-mode`).
pub const DEFAULT_FILE_MODE: FileMode = FileMode(0o400);

/// Why a value someone wrote (an annotation, a spec field, a store file entry) is refused: one
/// sentence naming the value and what to write instead, never a secret value.
///
/// A message rather than an enum of causes: every caller only shows it, prefixed with the
/// annotation, field or file it concerns (KURA001, the termination log, a store error), and none
/// acts on which check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl Invalid {
    /// A fixed message.
    pub fn new(message: &str) -> Self {
        Invalid(message.to_string())
    }

    /// The same message, prefixed with the field it concerns (`"file: ..."`).
    pub fn context(self, field: &str) -> Self {
        Invalid(format!("{field}: {}", self.0))
    }
}

/// Errors reading a spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("KURA_SPEC is not valid JSON: {0}")]
    Json(String),
    #[error(
        "KURA_SPEC has version {found:?}; this agent reads {SPEC_VERSION:?} (upgrade the agent image or the webhook so they match)"
    )]
    Version { found: String },
    #[error("KURA_SPEC is invalid: {0}")]
    Invalid(String),
}

/// How the agent runs in the pod (`kura.dev/agent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentMode {
    /// Fetch before the app starts, then keep refreshing.
    #[default]
    Sidecar,
    /// Fetch once before the app starts (Jobs, CronJobs).
    InitOnly,
}

impl AgentMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentMode::Sidecar => "sidecar",
            AgentMode::InitOnly => "init-only",
        }
    }
}

/// How a secret value becomes file content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The value (or the selected key) as-is.
    #[default]
    Raw,
    /// The value must be JSON; written as JSON.
    Json,
    /// A JSON object written as `KEY='value'` lines for `set -a; . file`.
    Env,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Json => "json",
            Format::Env => "env",
        }
    }
}

/// An octal file mode, written as a string such as `"0400"`.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FileMode(pub u32);

impl FileMode {
    /// Parses `0400`, `400` or `0o400`; modes above `0777` are refused.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let digits = s.strip_prefix("0o").unwrap_or(s);
        if digits.is_empty()
            || digits.len() > 4
            || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
        {
            return Err(Invalid(format!(
                "{s:?} is not an octal file mode such as \"0400\""
            )));
        }
        let mode = u32::from_str_radix(digits, 8).map_err(|e| Invalid(e.to_string()))?;
        if mode > 0o777 {
            return Err(Invalid(format!(
                "{s:?} sets special bits; use a mode from 0000 to 0777"
            )));
        }
        if mode & 0o400 == 0 {
            return Err(Invalid(format!(
                "{s:?} does not let the owner read the file"
            )));
        }
        Ok(FileMode(mode))
    }
}

impl fmt::Debug for FileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl fmt::Display for FileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl TryFrom<String> for FileMode {
    type Error = Invalid;
    fn try_from(s: String) -> Result<Self, Invalid> {
        FileMode::parse(&s)
    }
}

impl From<FileMode> for String {
    fn from(m: FileMode) -> String {
        m.to_string()
    }
}

/// What to do after files changed (`kura.dev/reload`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Reload {
    /// POST to a URL on the pod's loopback interface.
    Http { url: String },
    /// Send a signal to the process with this name (shared process namespace).
    Signal { signal: Signal, process: String },
}

/// Signals a reload hook may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Hup,
    Usr1,
    Usr2,
    Int,
    Quit,
    Term,
    Winch,
}

impl Signal {
    pub const ALL: [Signal; 7] = [
        Signal::Hup,
        Signal::Usr1,
        Signal::Usr2,
        Signal::Int,
        Signal::Quit,
        Signal::Term,
        Signal::Winch,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Signal::Hup => "SIGHUP",
            Signal::Usr1 => "SIGUSR1",
            Signal::Usr2 => "SIGUSR2",
            Signal::Int => "SIGINT",
            Signal::Quit => "SIGQUIT",
            Signal::Term => "SIGTERM",
            Signal::Winch => "SIGWINCH",
        }
    }

    /// The Linux signal number.
    pub fn number(self) -> i32 {
        match self {
            Signal::Hup => 1,
            Signal::Int => 2,
            Signal::Quit => 3,
            Signal::Usr1 => 10,
            Signal::Usr2 => 12,
            Signal::Term => 15,
            Signal::Winch => 28,
        }
    }

    fn parse(s: &str) -> Option<Signal> {
        let upper = s.to_ascii_uppercase();
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        Signal::ALL.into_iter().find(|sig| &sig.name()[3..] == name)
    }
}

/// Longest mount path or reload hook accepted.
pub const MAX_PATH_BYTES: usize = 1024;
/// Longest segment (between `/`) of a mount path or reload URL: Linux's `NAME_MAX`.
pub const MAX_SEGMENT_BYTES: usize = 255;

/// Unicode bidirectional controls: they make text read differently from what it is.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Checks the text of a path or URL a person writes and reads (`kura.dev/mount-path`,
/// `kura.dev/reload`): no control characters (C0, DEL, C1), no bidirectional controls, at most
/// [`MAX_PATH_BYTES`] in all and [`MAX_SEGMENT_BYTES`] between slashes. The message names the
/// offending character by code point and never repeats the value, which may be huge or
/// written to mislead.
pub fn check_path_text(s: &str) -> Result<(), Invalid> {
    if s.len() > MAX_PATH_BYTES {
        return Err(Invalid(format!(
            "the value is {} bytes; at most {MAX_PATH_BYTES} are accepted",
            s.len()
        )));
    }
    check_characters(s)?;
    if let Some(seg) = s.split('/').find(|seg| seg.len() > MAX_SEGMENT_BYTES) {
        return Err(Invalid(format!(
            "a segment between slashes is {} bytes; at most {MAX_SEGMENT_BYTES} are accepted",
            seg.len()
        )));
    }
    Ok(())
}

/// Checks that text a person reads back (a path, a URL, a JSON key) holds no control character
/// (C0, DEL, C1) and no bidirectional control; the message names the character by code point.
pub fn check_characters(s: &str) -> Result<(), Invalid> {
    if let Some((at, c)) = s
        .char_indices()
        .find(|(_, c)| c.is_control() || is_bidi_control(*c))
    {
        let what = if c.is_control() {
            "a control character"
        } else {
            "a bidirectional text control"
        };
        return Err(Invalid(format!(
            "the value contains {what} (U+{:04X}) at byte {at}",
            u32::from(c)
        )));
    }
    Ok(())
}

impl Reload {
    /// Parses `http://127.0.0.1:<port>/<path>` or `signal:<SIGNAME>:<process-name>`.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        check_path_text(s)?;
        if let Some(rest) = s.strip_prefix("signal:") {
            let (sig, process) = rest.split_once(':').ok_or_else(|| {
                Invalid(format!(
                    "{s:?} must be signal:<SIGNAME>:<process-name>, e.g. signal:SIGHUP:nginx"
                ))
            })?;
            let signal = Signal::parse(sig).ok_or_else(|| {
                let names: Vec<_> = Signal::ALL.iter().map(|s| s.name()).collect();
                Invalid(format!("{sig:?} is not one of {}", names.join(", ")))
            })?;
            if process.is_empty() || process.len() > 64 || process.contains(['/', '\0']) {
                return Err(Invalid(format!(
                    "{process:?} is not a process name (the command name as in /proc/<pid>/comm)"
                )));
            }
            return Ok(Reload::Signal {
                signal,
                process: process.to_string(),
            });
        }
        let rest = s.strip_prefix("http://").ok_or_else(|| {
            Invalid(format!(
                "{s:?} must be http://127.0.0.1:<port>/<path> or signal:<SIGNAME>:<process-name>"
            ))
        })?;
        let (host_port, _path) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = host_port.rsplit_once(':').ok_or_else(|| {
            Invalid(format!(
                "{s:?} needs an explicit port, e.g. http://127.0.0.1:8080/-/reload"
            ))
        })?;
        if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
            return Err(Invalid(format!(
                "{s:?} must target the pod's loopback (127.0.0.1, localhost or [::1]), not {host:?}"
            )));
        }
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => return Err(Invalid(format!("{port:?} is not a port number"))),
        }
        if s.contains(char::is_whitespace) {
            return Err(Invalid(format!("{s:?} contains whitespace")));
        }
        Ok(Reload::Http { url: s.to_string() })
    }
}

impl fmt::Display for Reload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reload::Http { url } => f.write_str(url),
            Reload::Signal { signal, process } => write!(f, "signal:{}:{process}", signal.name()),
        }
    }
}

impl TryFrom<String> for Reload {
    type Error = Invalid;
    fn try_from(s: String) -> Result<Self, Invalid> {
        Reload::parse(&s)
    }
}

impl From<Reload> for String {
    fn from(r: Reload) -> String {
        r.to_string()
    }
}

/// One file the agent writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretFile {
    /// File name inside the mount directory.
    pub file: String,
    /// Secret name or ARN.
    pub secret: String,
    /// Top-level JSON key, or a JSON Pointer when it starts with `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_stage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    #[serde(default)]
    pub format: Format,
    pub mode: FileMode,
}

/// One environment variable (contract §6): `kura.dev/env.<NAME>` or a list entry's `env`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    /// The variable's name, a C identifier.
    pub name: String,
    /// Secret name or ARN, or SSM parameter.
    pub secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_stage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
}

/// Every top-level key of a JSON object secret becomes a variable (a list entry's `envFrom`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvFrom {
    /// Secret name or ARN, or SSM parameter.
    pub secret: String,
    /// A nested object to take the keys of instead of the top level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_stage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
}

/// One input of a template: `<secret-id>[#<json-key>]`, as everywhere a reference is written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Input {
    pub secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl Input {
    /// Splits `<secret-id>[#<json-key>]` and checks both halves.
    pub fn parse(value: &str) -> Result<Self, Invalid> {
        let (secret, key) = split_reference(value)?;
        Ok(Input {
            secret: secret.to_string(),
            key: key.map(str::to_string),
        })
    }
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.secret)?;
        if let Some(k) = &self.key {
            write!(f, "#{k}")?;
        }
        Ok(())
    }
}

/// Splits a reference `<secret-id>[#<json-key>]` and checks both halves (neither a Secrets
/// Manager name nor an SSM name can hold `#`).
pub fn split_reference(value: &str) -> Result<(&str, Option<&str>), Invalid> {
    let (secret, key) = match value.split_once('#') {
        Some((s, k)) => (s, Some(k)),
        None => (value, None),
    };
    validate_secret_id(secret)?;
    if key == Some("") {
        return Err(Invalid::new("the JSON key after '#' is empty"));
    }
    check_characters(secret).map_err(|m| m.context("the secret"))?;
    if let Some(k) = key {
        check_characters(k).map_err(|m| m.context("the JSON key after '#'"))?;
    }
    Ok((secret, key))
}

/// A file rendered from a Jinja template over several inputs (contract §7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateFile {
    /// File name inside the mount directory.
    pub file: String,
    /// Input name (a Jinja identifier) → reference.
    pub inputs: std::collections::BTreeMap<String, Input>,
    /// The template's source.
    pub template: String,
    pub mode: FileMode,
}

/// What `kura-agent exec` does when the variables' values change (`kura.dev/env-on-rotation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EnvOnRotation {
    /// Keep the values the process started with.
    #[default]
    None,
    /// Stop the process (SIGTERM, a grace period, SIGKILL) and start it again with the new values.
    Restart,
    /// Send the process this signal (it re-reads its configuration its own way).
    Signal(Signal),
}

impl EnvOnRotation {
    /// Parses `none`, `restart` or `signal:<SIGNAME>`.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        match s {
            "none" => Ok(EnvOnRotation::None),
            "restart" => Ok(EnvOnRotation::Restart),
            _ => match s.strip_prefix("signal:") {
                Some(name) => Signal::parse(name)
                    .map(EnvOnRotation::Signal)
                    .ok_or_else(|| {
                        let names: Vec<_> = Signal::ALL.iter().map(|s| s.name()).collect();
                        Invalid(format!("{name:?} is not one of {}", names.join(", ")))
                    }),
                None => Err(Invalid(format!(
                    "{s:?} is not \"none\", \"restart\" or \"signal:<SIGNAME>\" (such as signal:SIGHUP)"
                ))),
            },
        }
    }
}

impl fmt::Display for EnvOnRotation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvOnRotation::None => f.write_str("none"),
            EnvOnRotation::Restart => f.write_str("restart"),
            EnvOnRotation::Signal(s) => write!(f, "signal:{}", s.name()),
        }
    }
}

/// Checks an environment variable name: a C identifier (`[A-Za-z_][A-Za-z0-9_]*`), at most 255
/// bytes.
pub fn validate_env_name(name: &str) -> Result<(), Invalid> {
    let mut bytes = name.bytes();
    let ok = name.len() <= 255
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Invalid(format!(
            "{:?} is not an environment variable name; use letters, digits and '_', not starting with a digit",
            crate::redact::clip(name, 65)
        )))
    }
}

/// What the agent needs to know, as the webhook wrote it in `KURA_SPEC`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    pub version: String,
    #[serde(default)]
    pub agent: AgentMode,
    /// Seconds between rotation checks.
    pub refresh_interval: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<Reload>,
    #[serde(default)]
    pub files: Vec<SecretFile>,
    /// Environment variables, written to the values file `kura-agent exec` reads.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFrom>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub templates: Vec<TemplateFile>,
}

impl Spec {
    /// Reads a spec, refusing unknown versions and fields with a message that says which.
    pub fn from_json(s: &str) -> Result<Spec, SpecError> {
        let value: serde_json::Value =
            serde_json::from_str(s).map_err(|e| SpecError::Json(e.to_string()))?;
        match value.get("version").and_then(|v| v.as_str()) {
            Some(SPEC_VERSION) => {}
            Some(other) => {
                return Err(SpecError::Version {
                    found: other.to_string(),
                });
            }
            None => return Err(SpecError::Invalid("missing \"version\"".into())),
        }
        let spec: Spec =
            serde_json::from_value(value).map_err(|e| SpecError::Invalid(e.to_string()))?;
        if spec.files.is_empty()
            && spec.templates.is_empty()
            && spec.env.is_empty()
            && spec.env_from.is_empty()
        {
            return Err(SpecError::Invalid(
                "no files or environment variables declared".into(),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for name in spec.file_names() {
            validate_file_name(name).map_err(|e| SpecError::Invalid(e.0))?;
            if !names.insert(name) {
                return Err(SpecError::Invalid(format!(
                    "file {name:?} is declared twice"
                )));
            }
        }
        let mut vars = std::collections::BTreeSet::new();
        for v in &spec.env {
            validate_env_name(&v.name).map_err(|e| SpecError::Invalid(e.0))?;
            if !vars.insert(v.name.as_str()) {
                return Err(SpecError::Invalid(format!(
                    "environment variable {:?} is declared twice",
                    v.name
                )));
            }
        }
        for t in &spec.templates {
            crate::template::check(&t.template, t.inputs.keys().map(String::as_str))
                .map_err(|e| SpecError::Invalid(format!("template of file {:?}: {e}", t.file)))?;
        }
        Ok(spec)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a spec of strings and numbers always serializes")
    }

    /// Distinct secrets this spec reads (files, variables, template inputs), in declaration
    /// order.
    pub fn secrets(&self) -> Vec<&str> {
        references(&self.files, &self.env, &self.env_from, &self.templates)
    }

    /// Every file the agent writes: plain files, then templates.
    pub fn file_names(&self) -> impl Iterator<Item = &str> {
        self.files
            .iter()
            .map(|f| f.file.as_str())
            .chain(self.templates.iter().map(|t| t.file.as_str()))
    }

    /// Whether the pod's containers take environment variables from the agent (and so run
    /// through `kura-agent exec`).
    pub fn has_env(&self) -> bool {
        !self.env.is_empty() || !self.env_from.is_empty()
    }
}

/// Distinct secrets named by files, variables and template inputs, in declaration order: what
/// the policy checks and the agent fetches.
pub fn references<'a>(
    files: &'a [SecretFile],
    env: &'a [EnvVar],
    env_from: &'a [EnvFrom],
    templates: &'a [TemplateFile],
) -> Vec<&'a str> {
    let mut seen = std::collections::BTreeSet::new();
    files
        .iter()
        .map(|f| f.secret.as_str())
        .chain(env.iter().map(|e| e.secret.as_str()))
        .chain(env_from.iter().map(|e| e.secret.as_str()))
        .chain(
            templates
                .iter()
                .flat_map(|t| t.inputs.values().map(|i| i.secret.as_str())),
        )
        .filter(|s| seen.insert(*s))
        .collect()
}

/// Checks a file name against `[A-Za-z0-9][A-Za-z0-9._-]*`, at most 255 bytes.
pub fn validate_file_name(name: &str) -> Result<(), Invalid> {
    if name.is_empty() {
        return Err(Invalid::new("the file name is empty"));
    }
    if name.len() > 255 {
        return Err(Invalid(format!(
            "file name is {} bytes; at most 255 are allowed",
            name.len()
        )));
    }
    let mut bytes = name.bytes();
    let first = bytes.next().expect("checked non-empty above");
    if !first.is_ascii_alphanumeric() {
        return Err(Invalid(format!(
            "file name {name:?} must start with a letter or digit"
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(Invalid(format!(
            "file name {name:?} contains {bad:?}; use letters, digits, '.', '_' and '-'"
        )));
    }
    Ok(())
}

/// What `ssm:` in front of a name means: an SSM Parameter Store parameter.
pub const SSM_PREFIX: &str = "ssm:";

/// Where a reference points, as the pod wrote it (`kura.dev/secret.<file>`, a list entry's
/// `secret`). Classification only; [`validate_secret_id`] says whether it is well formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reference<'a> {
    /// A Secrets Manager secret: a name or a secret ARN.
    Secret(&'a str),
    /// An SSM parameter: its name (`ssm:` removed) or its parameter ARN, as SSM takes it.
    Parameter(&'a str),
}

impl<'a> Reference<'a> {
    pub fn of(id: &'a str) -> Self {
        if let Some(name) = id.strip_prefix(SSM_PREFIX) {
            return Reference::Parameter(name);
        }
        if is_parameter_arn(id) {
            return Reference::Parameter(id);
        }
        Reference::Secret(id)
    }

    pub fn is_parameter(self) -> bool {
        matches!(self, Reference::Parameter(_))
    }
}

/// `arn:<partition>:ssm:...`: the ARN of a parameter (or a malformed one).
fn is_parameter_arn(id: &str) -> bool {
    id.strip_prefix("arn:")
        .and_then(|rest| rest.split(':').nth(1))
        .is_some_and(|service| service == "ssm")
}

/// The parameter name an SSM reference (a name, or a parameter ARN) stands for: in an ARN,
/// `parameter/prod/app/db` is the name `/prod/app/db` (SSM drops a hierarchical name's leading
/// `/` there) and `parameter/db` the name `db`.
pub fn parameter_name(reference: &str) -> String {
    let Some(tail) = reference
        .strip_prefix("arn:")
        .and_then(|rest| rest.splitn(5, ':').nth(4))
        .and_then(|res| res.strip_prefix("parameter/"))
    else {
        return reference.to_string();
    };
    if tail.contains('/') {
        format!("/{tail}")
    } else {
        tail.to_string()
    }
}

/// Checks a reference: a Secrets Manager name or secret ARN, or an SSM parameter
/// (`ssm:<name>` or a parameter ARN). The message says what to write instead.
pub fn validate_secret_id(id: &str) -> Result<(), Invalid> {
    if id.is_empty() {
        return Err(Invalid::new("the secret id is empty"));
    }
    if let Some(name) = id.strip_prefix(SSM_PREFIX) {
        return validate_parameter_name(name).map_err(|m| Invalid(format!("{id:?}: {}", m.0)));
    }
    if is_parameter_arn(id) {
        return validate_parameter_arn(id);
    }
    if let Some(rest) = id.strip_prefix("arn:") {
        let parts: Vec<&str> = rest.splitn(6, ':').collect();
        let ok = parts.len() == 6
            && !parts[0].is_empty()
            && parts[1] == "secretsmanager"
            && !parts[2].is_empty()
            && is_account(parts[3])
            && parts[4] == "secret"
            && !parts[5].is_empty();
        if !ok {
            return Err(Invalid(format!(
                "{id:?} is not a Secrets Manager secret ARN (arn:<partition>:secretsmanager:<region>:<account>:secret:<name>) \
                 or an SSM parameter ARN (arn:<partition>:ssm:<region>:<account>:parameter/<name>)"
            )));
        }
        return validate_secret_name(parts[5]);
    }
    if id.starts_with("ssm/") || id.starts_with("SSM:") {
        return Err(Invalid(format!(
            "{id:?}: an SSM parameter is written ssm:<name>, e.g. ssm:/prod/app/db-host"
        )));
    }
    validate_secret_name(id)
}

fn is_account(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

fn validate_parameter_arn(id: &str) -> Result<(), Invalid> {
    let usage = || {
        Invalid(format!(
            "{id:?} is not an SSM parameter ARN (arn:<partition>:ssm:<region>:<account>:parameter/<name>, \
             e.g. arn:aws:ssm:us-east-1:111122223333:parameter/prod/app/db-host)"
        ))
    };
    let parts: Vec<&str> = id.splitn(6, ':').collect();
    if parts.len() != 6 || parts[1].is_empty() || parts[3].is_empty() || !is_account(parts[4]) {
        return Err(usage());
    }
    let Some(tail) = parts[5].strip_prefix("parameter/") else {
        return Err(usage());
    };
    if tail.is_empty() || tail.starts_with('/') {
        return Err(usage());
    }
    validate_parameter_name(&parameter_name(id)).map_err(|m| Invalid(format!("{id:?}: {}", m.0)))
}

/// SSM's own rules for a parameter name, checked at admission so the fix is named there.
fn validate_parameter_name(name: &str) -> Result<(), Invalid> {
    if name.is_empty() {
        return Err(Invalid::new(
            "the parameter name is empty; write ssm:<name>, e.g. ssm:/prod/app/db-host",
        ));
    }
    if name.len() > 1011 {
        return Err(Invalid(format!(
            "the parameter name is {} characters; SSM allows 1011",
            name.len()
        )));
    }
    if let Some((base, selector)) = name.split_once(':') {
        return Err(Invalid(format!(
            "{name:?} holds a version or label selector; write ssm:{base} and pin it with \
             versionId: \"{selector}\" (a version) or versionStage: {selector} (a label) in kura.dev/secrets"
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "/_.-".contains(*c)))
    {
        return Err(Invalid(format!(
            "parameter name {name:?} contains {bad:?}; SSM names use letters, digits and /_.-"
        )));
    }
    if name.contains('/') && !name.starts_with('/') {
        return Err(Invalid(format!(
            "parameter name {name:?} has a path but does not start with '/'; write ssm:/{name}"
        )));
    }
    if name.contains("//") || name.ends_with('/') {
        return Err(Invalid(format!(
            "parameter name {name:?} has an empty path segment"
        )));
    }
    if name.matches('/').count() > 15 {
        return Err(Invalid(format!(
            "parameter name {name:?} is deeper than SSM's 15 levels"
        )));
    }
    let first = name.trim_start_matches('/').to_ascii_lowercase();
    if first.starts_with("aws") || first.starts_with("ssm") {
        return Err(Invalid(format!(
            "parameter name {name:?} starts with \"aws\" or \"ssm\", which SSM reserves for itself"
        )));
    }
    Ok(())
}

/// Checks `versionId`/`versionStage` of a list entry against the store the reference names:
/// a secret's version id or staging label, or a parameter's version number or label.
pub fn validate_version(
    id: &str,
    version_id: Option<&str>,
    version_stage: Option<&str>,
) -> Result<(), Invalid> {
    if version_stage.is_some() && version_id.is_some() {
        return Err(Invalid::new("set versionStage or versionId, not both"));
    }
    for (field, v) in [("versionStage", version_stage), ("versionId", version_id)] {
        if let Some(v) = v
            && (v.is_empty() || v.len() > 256 || v.contains(char::is_whitespace))
        {
            return Err(Invalid(format!("{field} {v:?} is not a version label")));
        }
    }
    if !Reference::of(id).is_parameter() {
        return Ok(());
    }
    if let Some(v) = version_id
        && !(v.len() <= 19
            && v.bytes().all(|b| b.is_ascii_digit())
            && v.parse::<u64>().is_ok_and(|n| n > 0))
    {
        return Err(Invalid(format!(
            "versionId {v:?} is not a parameter version; SSM numbers versions 1, 2, 3…: write versionId: \"3\", \
             or versionStage: <label> for a label"
        )));
    }
    if let Some(l) = version_stage {
        let lower = l.to_ascii_lowercase();
        let ok = l.len() <= 100
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            && !l.starts_with(|c: char| c.is_ascii_digit())
            && !lower.starts_with("aws")
            && !lower.starts_with("ssm");
        if !ok {
            return Err(Invalid(format!(
                "versionStage {l:?} is not a parameter label (letters, digits, '.', '_', '-'; at most 100; \
                 not starting with a digit, \"aws\" or \"ssm\"); omit it to read the latest version"
            )));
        }
    }
    Ok(())
}

fn validate_secret_name(name: &str) -> Result<(), Invalid> {
    if name.len() > 512 {
        return Err(Invalid(format!(
            "secret name is {} characters; Secrets Manager allows 512",
            name.len()
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "/_+=.@-".contains(*c)))
    {
        return Err(Invalid(format!(
            "secret name {name:?} contains {bad:?}; Secrets Manager names use letters, digits and /_+=.@-"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str) -> SecretFile {
        SecretFile {
            file: name.into(),
            secret: "/demo/db".into(),
            key: Some("password".into()),
            version_stage: None,
            version_id: None,
            format: Format::Raw,
            mode: DEFAULT_FILE_MODE,
        }
    }

    #[test]
    fn spec_json_round_trips() {
        let spec = Spec {
            version: SPEC_VERSION.into(),
            agent: AgentMode::InitOnly,
            refresh_interval: 120,
            reload: Some(Reload::parse("signal:HUP:nginx").expect("valid")),
            files: vec![file("db-password")],
            env: vec![EnvVar {
                name: "DB_PASSWORD".into(),
                secret: "/demo/db".into(),
                key: Some("password".into()),
                version_stage: None,
                version_id: None,
            }],
            env_from: vec![EnvFrom {
                secret: "ssm:/demo/app".into(),
                key: None,
                version_stage: Some("blue".into()),
                version_id: None,
            }],
            templates: vec![TemplateFile {
                file: "dsn".into(),
                inputs: std::collections::BTreeMap::from([(
                    "db".to_string(),
                    Input::parse("/demo/db").expect("valid"),
                )]),
                template: "postgres://{{ db.username }}:{{ db.password | urlencode }}@db/app"
                    .into(),
                mode: DEFAULT_FILE_MODE,
            }],
        };
        let json = spec.to_json();
        assert!(json.contains("\"mode\":\"0400\""), "{json}");
        assert!(json.contains("signal:SIGHUP:nginx"), "{json}");
        assert_eq!(Spec::from_json(&json).expect("round trip"), spec);
    }

    #[test]
    fn unknown_version_and_fields_are_clear_errors() {
        let err = Spec::from_json(r#"{"version":"kura.dev/v9","refreshInterval":1,"files":[]}"#)
            .unwrap_err();
        assert!(err.to_string().contains("kura.dev/v9"), "{err}");
        let err =
            Spec::from_json(r#"{"version":"kura.dev/v1","refreshInterval":1,"files":[],"x":1}"#)
                .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let err = Spec::from_json("not json").unwrap_err();
        assert!(matches!(err, SpecError::Json(_)));
        let dup = format!(
            r#"{{"version":"kura.dev/v1","refreshInterval":1,"files":[{0},{0}]}}"#,
            serde_json::to_string(&file("a")).expect("serializes")
        );
        assert!(
            Spec::from_json(&dup)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }

    #[test]
    fn file_modes() {
        assert_eq!(FileMode::parse("0440").expect("ok").0, 0o440);
        assert_eq!(FileMode::parse("600").expect("ok").0, 0o600);
        for bad in ["", "0800", "4755", "rw", "0040", "12345"] {
            assert!(FileMode::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_names() {
        for ok in ["db-password", "tls.crt", "A_1", "x"] {
            validate_file_name(ok).expect(ok);
        }
        let long = "a".repeat(256);
        for bad in ["", ".env", "..data", "a/b", "-x", "a b", "é", long.as_str()] {
            assert!(validate_file_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secret_ids() {
        for ok in [
            "/prod/user-service/db",
            "arn:aws:secretsmanager:ap-northeast-1:111122223333:secret:/prod/user-service/api-AbCdEf",
            "arn:aws-us-gov:secretsmanager:us-gov-west-1:111122223333:secret:x",
        ] {
            validate_secret_id(ok).expect(ok);
        }
        for bad in [
            "",
            "has space",
            "arn:aws:s3:::bucket",
            "arn:aws:secretsmanager:us-east-1:1111:secret:x",
            "arn:aws:secretsmanager:us-east-1:111122223333:secret:",
        ] {
            assert!(validate_secret_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parameter_references() {
        for ok in [
            "ssm:/prod/app/db-host",
            "ssm:db_host.v2",
            "arn:aws:ssm:us-east-1:111122223333:parameter/prod/app/db-host",
            "arn:aws-cn:ssm:cn-north-1:111122223333:parameter/flat",
        ] {
            validate_secret_id(ok).expect(ok);
            assert!(Reference::of(ok).is_parameter(), "{ok}");
        }
        assert_eq!(Reference::of("/prod/db"), Reference::Secret("/prod/db"));
        assert_eq!(
            Reference::of("ssm:/prod/db"),
            Reference::Parameter("/prod/db")
        );
        assert_eq!(
            parameter_name("arn:aws:ssm:us-east-1:111122223333:parameter/prod/app/db-host"),
            "/prod/app/db-host"
        );
        assert_eq!(
            parameter_name("arn:aws:ssm:us-east-1:111122223333:parameter/flat"),
            "flat"
        );
        assert_eq!(parameter_name("/prod/x"), "/prod/x");
        // Each refusal says what to write instead.
        for (bad, fix) in [
            ("ssm:", "ssm:/prod/app/db-host"),
            ("ssm:prod/app/db", "ssm:/prod/app/db"),
            ("ssm:/prod/db:3", "versionId: \"3\""),
            ("ssm:/prod/db:blue", "versionStage: blue"),
            ("ssm:/prod/db host", "letters, digits and /_.-"),
            ("ssm:/aws/reference/x", "reserves"),
            ("ssm:/prod//db", "empty path segment"),
            (
                "arn:aws:ssm:us-east-1:111122223333:parameter",
                "arn:<partition>:ssm:<region>:<account>:parameter/<name>",
            ),
            (
                "arn:aws:ssm:us-east-1:1111:parameter/prod/db",
                "arn:<partition>:ssm:<region>:<account>:parameter/<name>",
            ),
            (
                "arn:aws:ssm:us-east-1:111122223333:document/prod",
                "parameter/<name>",
            ),
            ("SSM:/prod/db", "ssm:<name>"),
            ("arn:aws:s3:::bucket", "parameter ARN"),
        ] {
            let e = validate_secret_id(bad).expect_err(bad).to_string();
            assert!(e.contains(fix), "{bad}: {e}");
        }
    }

    #[test]
    fn parameter_versions_and_labels() {
        let p = "ssm:/prod/db";
        validate_version(p, Some("3"), None).expect("a version number");
        validate_version(p, None, Some("blue-green_1.0")).expect("a label");
        validate_version("/prod/db", Some("a1b2-uuid"), None).expect("a secret's version id");
        validate_version("/prod/db", None, Some("AWSPREVIOUS")).expect("a secret's stage");
        for (id, stage, fix) in [
            (Some("abc"), None, "versionId: \"3\""),
            (Some("0"), None, "1, 2, 3"),
            (None, Some("AWSCURRENT"), "omit it"),
            (None, Some("1st"), "not starting with a digit"),
            (None, Some("a/b"), "letters, digits"),
            (Some("1"), Some("x"), "not both"),
        ] {
            let e = validate_version(p, id, stage).expect_err(fix).to_string();
            assert!(e.contains(fix), "{id:?} {stage:?}: {e}");
        }
    }

    #[test]
    fn reload_hooks() {
        assert_eq!(
            Reload::parse("http://127.0.0.1:8080/-/reload").expect("ok"),
            Reload::Http {
                url: "http://127.0.0.1:8080/-/reload".into()
            }
        );
        assert_eq!(
            Reload::parse("signal:SIGUSR1:envoy").expect("ok"),
            Reload::Signal {
                signal: Signal::Usr1,
                process: "envoy".into()
            }
        );
        for bad in [
            "http://example.com:80/",
            "http://127.0.0.1/x",
            "https://127.0.0.1:1/",
            "signal:KILL:x",
            "signal:HUP:",
            "ftp://x",
        ] {
            assert!(Reload::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_and_hooks_refuse_control_and_bidi_characters_and_oversized_segments() {
        let long = "a".repeat(MAX_SEGMENT_BYTES + 1);
        for (bad, why) in [
            ("/var/run/x\u{1b}[31m".to_string(), "U+001B"),
            ("/var/run/\u{202E}txt.exe".to_string(), "U+202E"),
            ("/var/run/a\u{2067}b".to_string(), "U+2067"),
            ("/var/run/a\u{85}b".to_string(), "U+0085"),
            ("/var/run/a\tb".to_string(), "U+0009"),
            ("/var/run/a\u{7f}".to_string(), "U+007F"),
            (format!("/var/{long}"), "segment"),
            (format!("/{}", "a/".repeat(600)), "bytes"),
        ] {
            let e = check_path_text(&bad).expect_err(&bad).0;
            assert!(e.contains(why), "{e}");
            assert!(e.len() < 120, "the message never repeats the value: {e}");
            let hook = format!("http://127.0.0.1:8080{bad}");
            assert!(Reload::parse(&hook).is_err(), "{hook:?}");
        }
        assert!(Reload::parse("signal:HUP:ngi\u{1b}nx").is_err());
        check_path_text("/var/run/secrets/kura").expect("plain");
        check_path_text(&format!("/{}", "a".repeat(MAX_SEGMENT_BYTES))).expect("at the bound");
        check_path_text("/données/clé").expect("non-ASCII letters are fine");
    }
}
