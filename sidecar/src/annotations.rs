//! Pod annotations → [`PodSecrets`]: the developer-facing half of the spec, and the catalogue of
//! every `kura.dev/` annotation.
//!
//! Every `kura.dev/` annotation is checked, and every problem is reported at once with the
//! annotation it concerns and what to write instead, so one `kubectl apply` shows them all.
//!
//! The [`CATALOGUE`] is the one list of annotations: each entry declares its constant, what it
//! does, its values, default and an example, and who writes it ([`Author`]). The "known
//! annotations" part of the unknown-annotation message is derived from it.
//!
//! # Adding an annotation
//! 1. **One constant**: an entry in the `catalogue!` list below, with its doc comment (what it
//!    does, values, default, an example) and its author.
//! 2. **One parse arm**: its arm in [`parse`]'s `match`, storing the value or reporting what to
//!    write instead (`every_user_annotation_is_parsed` fails until the arm exists).
//! 3. **One spec field**: its field in [`PodSecrets`] (and, when the agent needs it, in
//!    [`Spec`]), written back by [`PodSecrets::to_annotations`] (the round-trip property test
//!    checks the two agree).
//! 4. **One test**: a case in `every_error_names_its_annotation` for a refused value.
//!
//! The README's annotation table lists every entry (`the_readme_lists_every_annotation`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Deserialize;

use crate::spec::{
    AgentMode, DEFAULT_FILE_MODE, EnvFrom, EnvOnRotation, EnvVar, FileMode, Format, Input, Invalid,
    Reload, SPEC_VERSION, SecretFile, Spec, TemplateFile, split_reference, validate_env_name,
    validate_file_name, validate_secret_id, validate_version,
};

/// Every kura annotation starts with this.
pub const PREFIX: &str = "kura.dev/";

/// Who writes an annotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Author {
    /// The pod's developer (or `kubectl annotate`); listed as known in error messages.
    User,
    /// kura's webhook; a developer never writes it.
    Kura,
}

/// One `kura.dev/` annotation of the [`CATALOGUE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Annotation {
    /// The key, or its prefix when [`Annotation::placeholder`] is set.
    pub name: &'static str,
    /// For a family of keys (`kura.dev/secret.<file>`): what follows the prefix.
    pub placeholder: Option<&'static str>,
    pub author: Author,
    /// The constant's doc comment.
    pub doc: &'static str,
}

impl fmt::Display for Annotation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)?;
        f.write_str(self.placeholder.unwrap_or(""))
    }
}

/// Declares each annotation's constant and its [`CATALOGUE`] entry from one list, so the two
/// cannot disagree.
macro_rules! catalogue {
    ($($(#[doc = $doc:literal])+ $author:ident $constant:ident = $name:literal $(+ $placeholder:literal)?;)+) => {
        $($(#[doc = $doc])+ pub const $constant: &str = $name;)+

        /// Every `kura.dev/` annotation, in the order the README and error messages list them.
        pub const CATALOGUE: &[Annotation] = &[$(Annotation {
            name: $constant,
            placeholder: catalogue!(@placeholder $($placeholder)?),
            author: Author::$author,
            doc: concat!($($doc, "\n"),+),
        },)+];
    };
    (@placeholder) => { None };
    (@placeholder $p:literal) => { Some($p) };
}

catalogue! {
    /// Opts the pod in (`"true"`) or out explicitly (`"false"`). Any other value is refused, and
    /// so is a pod that declares secrets without it or opts in without declaring any.
    /// Default: not injected. Example: `kura.dev/inject: "true"`.
    User INJECT = "kura.dev/inject";
    /// One file per annotation: the file name follows the dot (`[A-Za-z0-9][A-Za-z0-9._-]*`), the
    /// value is `<secret-id>[#<json-key>]`, a secret name or full ARN (or an SSM parameter,
    /// `ssm:<name>` or its ARN) and optionally one top-level JSON key (or a JSON Pointer
    /// starting with `/`). Written as-is, with
    /// [`FILE_MODE`]. No default. Example:
    /// `kura.dev/secret.db-password: /prod/user-service/db#password`.
    User SECRET_PREFIX = "kura.dev/secret." + "<file>";
    /// The advanced form: a YAML list of entries, each with exactly one of `file`, `env` or
    /// `envFrom`. A file takes `secret` and optionally `key`, `versionStage` or `versionId` (not
    /// both), `format` (`raw`, `json`, `env`) and `mode`, or instead of `secret` a Jinja
    /// `template` over named `inputs` (references). `env: <NAME>` takes `secret` (and `key`,
    /// versions) like a file; `envFrom: <reference>` makes every top-level key of a JSON object
    /// a variable. No default. Example:
    /// `kura.dev/secrets: "- {file: db.env, secret: /prod/db, format: env}"`.
    User SECRETS = "kura.dev/secrets";
    /// One environment variable per annotation: the name follows the dot (a C identifier), the
    /// value is a reference as for [`SECRET_PREFIX`]. The selected containers run through
    /// `kura-agent exec`, which sets it before starting their `command`. No default. Example:
    /// `kura.dev/env.DB_PASSWORD: /prod/user-service/db#password`.
    User ENV_PREFIX = "kura.dev/env." + "<NAME>";
    /// What `kura-agent exec` does when a variable's value changes: `none` (keep the values the
    /// process started with), `restart` (SIGTERM, a grace period, SIGKILL, start again with the
    /// new values) or `signal:<SIGNAME>`. Only with environment variables. Default: `none`.
    /// Example: `kura.dev/env-on-rotation: restart`.
    User ENV_ON_ROTATION = "kura.dev/env-on-rotation";
    /// Absolute directory where the files appear in the app containers (no `.`/`..` segments).
    /// Default: [`DEFAULT_MOUNT_PATH`]. Example: `kura.dev/mount-path: /etc/app/secrets`.
    User MOUNT_PATH = "kura.dev/mount-path";
    /// Comma list of the containers (init containers included) that get the mount. Default: all
    /// of them. Example: `kura.dev/containers: api,migrate`.
    User CONTAINERS = "kura.dev/containers";
    /// How the agent runs: `sidecar` (fetch before the app starts, then follow rotation) or
    /// `init-only` (fetch once; Jobs and CronJobs). Default: `sidecar`. Example:
    /// `kura.dev/agent: init-only`.
    User AGENT = "kura.dev/agent";
    /// Time between rotation checks, a duration from `30s` to `24h`. Default: the webhook's
    /// `--refresh-interval`. Example: `kura.dev/refresh-interval: 5m`.
    User REFRESH_INTERVAL = "kura.dev/refresh-interval";
    /// Default octal mode of the files (the owner must be able to read; no special bits).
    /// Default: `0400`. Example: `kura.dev/file-mode: "0440"`.
    User FILE_MODE = "kura.dev/file-mode";
    /// Non-zero uid the agent runs as and that owns the files. Default: the app containers'
    /// `runAsUser`, else the pod's, else 65532. Example: `kura.dev/run-as-user: "1000"`.
    User RUN_AS_USER = "kura.dev/run-as-user";
    /// What to do after the files changed: POST to `http://127.0.0.1:<port>/<path>` (the pod's
    /// loopback only) or send `signal:<SIGNAME>:<process-name>` (shared process namespace).
    /// Default: nothing. Example: `kura.dev/reload: signal:SIGHUP:nginx`.
    User RELOAD = "kura.dev/reload";
    /// Written by kura on an injected pod: `injected sha256:<spec hash>`. Never written by
    /// users; its presence tells the webhook the pod is already injected.
    Kura STATUS = "kura.dev/status";
    /// Any change of its value makes running agents refresh at once (they read it through the
    /// downward API). No default. Example:
    /// `kubectl annotate --overwrite pod my-pod kura.dev/refresh-now="$(date +%s)"`.
    User REFRESH_NOW = "kura.dev/refresh-now";
}

/// The annotations a developer may write, as the unknown-annotation message lists them.
pub fn known() -> String {
    CATALOGUE
        .iter()
        .filter(|a| a.author == Author::User)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where the files appear in app containers unless [`MOUNT_PATH`] says otherwise: the directory
/// the agent writes to.
pub const DEFAULT_MOUNT_PATH: &str = crate::contract::DEFAULT_DIR;
/// Bounds of [`REFRESH_INTERVAL`], in seconds.
pub const MIN_REFRESH_SECS: u64 = 30;
/// Bounds of [`REFRESH_INTERVAL`], in seconds.
pub const MAX_REFRESH_SECS: u64 = 24 * 3600;

/// Largest [`SECRETS`] value parsed: a list of a few hundred entries. Checked before the YAML
/// parser sees the value, so the time a parse takes is bounded by the caller's choice of this
/// constant, not by the caller's choice of input.
pub const MAX_SECRETS_BYTES: usize = 16 * 1024;
/// Deepest nesting of [`SECRETS`] parsed: flow brackets (`[`, `{`) plus the columns of a line's
/// leading indentation and block indicators (`- `, `? `). A list of entries needs 2 levels and
/// 2 columns; deeply nested flow collections are what makes a YAML parser slow.
pub const MAX_SECRETS_DEPTH: usize = 10;

/// The size and nesting bounds of a [`SECRETS`] value, checked without parsing it (linear in
/// its length).
fn check_secrets_bounds(value: &str) -> Result<(), Invalid> {
    if value.len() > MAX_SECRETS_BYTES {
        return Err(Invalid(format!(
            "the value is {} bytes; at most {MAX_SECRETS_BYTES} are accepted",
            value.len()
        )));
    }
    let mut flow = 0usize;
    let mut deepest = 0usize;
    for line in value.lines() {
        let lead = line
            .bytes()
            .take_while(|b| matches!(b, b' ' | b'\t' | b'-' | b'?' | b':'))
            .count();
        deepest = deepest.max(flow + lead);
        for b in line.bytes() {
            match b {
                b'[' | b'{' => {
                    flow += 1;
                    deepest = deepest.max(flow + lead);
                }
                b']' | b'}' => flow = flow.saturating_sub(1),
                _ => {}
            }
        }
    }
    if deepest > MAX_SECRETS_DEPTH {
        return Err(Invalid(format!(
            "the value nests {deepest} levels deep; at most {MAX_SECRETS_DEPTH} are accepted (a list of entries needs 2)"
        )));
    }
    Ok(())
}

/// Writes `[ ] { }` inside the JSON strings of `json` as `\u005b` and so on (the same string to
/// JSON and YAML), so that [`check_secrets_bounds`], which counts brackets without parsing,
/// counts only the structure: a JSON key or a template may hold any number of them.
fn escape_brackets(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        match c {
            '[' | ']' | '{' | '}' if in_string => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
                continue;
            }
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            _ => {}
        }
        out.push(c);
    }
    out
}

/// One problem with one annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationError {
    pub annotation: String,
    pub message: String,
}

impl fmt::Display for AnnotationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "annotation {}: {}", self.annotation, self.message)
    }
}

/// What an opted-in pod asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSecrets {
    pub files: Vec<SecretFile>,
    pub env: Vec<EnvVar>,
    pub env_from: Vec<EnvFrom>,
    pub templates: Vec<TemplateFile>,
    pub env_on_rotation: EnvOnRotation,
    pub agent: AgentMode,
    pub mount_path: String,
    /// Containers that get the mount; `None` means all of them.
    pub containers: Option<Vec<String>>,
    /// Seconds; `None` takes the cluster default.
    pub refresh_interval: Option<u64>,
    pub run_as_user: Option<i64>,
    pub reload: Option<Reload>,
}

impl PodSecrets {
    /// The spec the agent receives.
    pub fn to_spec(&self, default_refresh_secs: u64) -> Spec {
        Spec {
            version: SPEC_VERSION.to_string(),
            agent: self.agent,
            refresh_interval: self.refresh_interval.unwrap_or(default_refresh_secs),
            reload: self.reload.clone(),
            files: self.files.clone(),
            env: self.env.clone(),
            env_from: self.env_from.clone(),
            templates: self.templates.clone(),
        }
    }

    /// Whether the selected containers take environment variables (and so run through
    /// `kura-agent exec`).
    pub fn has_env(&self) -> bool {
        !self.env.is_empty() || !self.env_from.is_empty()
    }

    /// Annotations that parse back into this value (the advanced list form, explicit modes).
    pub fn to_annotations(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        out.insert(INJECT.to_string(), "true".to_string());
        let value =
            |v: serde_json::Result<serde_json::Value>| v.expect("an entry always serializes");
        let entries: Vec<serde_json::Value> = self
            .files
            .iter()
            .map(|f| value(serde_json::to_value(f)))
            .chain(self.templates.iter().map(|t| {
                let inputs: BTreeMap<&str, String> = t
                    .inputs
                    .iter()
                    .map(|(k, i)| (k.as_str(), i.to_string()))
                    .collect();
                serde_json::json!({"file": t.file, "inputs": inputs, "template": t.template, "mode": t.mode})
            }))
            .chain(self.env.iter().map(|e| {
                let mut v = value(serde_json::to_value(e));
                if let Some(o) = v.as_object_mut()
                    && let Some(name) = o.remove("name")
                {
                    o.insert("env".into(), name);
                }
                v
            }))
            .chain(self.env_from.iter().map(|e| {
                // The list form writes an envFrom's key into its reference (`/prod/db#nested`).
                let reference = Input {
                    secret: e.secret.clone(),
                    key: e.key.clone(),
                };
                let mut v = serde_json::json!({"envFrom": reference.to_string()});
                for (field, version) in [
                    ("versionStage", &e.version_stage),
                    ("versionId", &e.version_id),
                ] {
                    if let Some(version) = version {
                        v[field] = serde_json::json!(version);
                    }
                }
                v
            }))
            .collect();
        // JSON is YAML, and quoting every string keeps odd names intact.
        out.insert(
            SECRETS.to_string(),
            escape_brackets(&serde_json::to_string(&entries).expect("values serialize")),
        );
        if self.mount_path != DEFAULT_MOUNT_PATH {
            out.insert(MOUNT_PATH.to_string(), self.mount_path.clone());
        }
        if let Some(c) = &self.containers {
            out.insert(CONTAINERS.to_string(), c.join(","));
        }
        if self.agent != AgentMode::Sidecar {
            out.insert(AGENT.to_string(), self.agent.as_str().to_string());
        }
        if let Some(s) = self.refresh_interval {
            out.insert(REFRESH_INTERVAL.to_string(), format!("{s}s"));
        }
        if let Some(u) = self.run_as_user {
            out.insert(RUN_AS_USER.to_string(), u.to_string());
        }
        if let Some(r) = &self.reload {
            out.insert(RELOAD.to_string(), r.to_string());
        }
        if self.env_on_rotation != EnvOnRotation::None {
            out.insert(
                ENV_ON_ROTATION.to_string(),
                self.env_on_rotation.to_string(),
            );
        }
        out
    }

    /// Distinct secrets (files, variables, template inputs), in declaration order.
    pub fn secrets(&self) -> Vec<&str> {
        crate::spec::references(&self.files, &self.env, &self.env_from, &self.templates)
    }

    /// Every file written: plain files, then templates.
    pub fn file_names(&self) -> impl Iterator<Item = &str> {
        self.files
            .iter()
            .map(|f| f.file.as_str())
            .chain(self.templates.iter().map(|t| t.file.as_str()))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListEntry {
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    env: Option<String>,
    #[serde(default)]
    env_from: Option<String>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    inputs: Option<BTreeMap<String, String>>,
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    version_stage: Option<String>,
    #[serde(default)]
    version_id: Option<String>,
    #[serde(default)]
    format: Option<Format>,
    #[serde(default)]
    mode: Option<String>,
}

/// Parses a pod's annotations.
///
/// `Ok(None)`: the pod did not opt in (and declares no secrets). `Ok(Some(_))`: inject this.
/// `Err(errors)`: every problem found, each naming its annotation.
pub fn parse(
    annotations: &BTreeMap<String, String>,
) -> Result<Option<PodSecrets>, Vec<AnnotationError>> {
    let mut errors = Vec::new();
    let mut err = |annotation: &str, message: String| {
        errors.push(AnnotationError {
            annotation: annotation.to_string(),
            message,
        });
    };

    let inject = match annotations.get(INJECT).map(String::as_str) {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(other) => {
            err(INJECT, format!("{other:?} is not \"true\" or \"false\""));
            None
        }
    };

    let default_mode = match annotations.get(FILE_MODE) {
        Some(v) => FileMode::parse(v).unwrap_or_else(|e| {
            err(FILE_MODE, e.0);
            DEFAULT_FILE_MODE
        }),
        None => DEFAULT_FILE_MODE,
    };

    let mut files: Vec<SecretFile> = Vec::new();
    let mut env: Vec<EnvVar> = Vec::new();
    let mut env_from: Vec<EnvFrom> = Vec::new();
    let mut templates: Vec<TemplateFile> = Vec::new();
    let mut env_on_rotation = None;
    let mut agent = AgentMode::Sidecar;
    let mut mount_path = DEFAULT_MOUNT_PATH.to_string();
    let mut containers = None;
    let mut refresh_interval = None;
    let mut run_as_user = None;
    let mut reload = None;
    let mut unknown = 0usize;

    for (key, value) in annotations {
        if !key.starts_with(PREFIX) {
            continue;
        }
        if let Some(file) = key.strip_prefix(SECRET_PREFIX) {
            match parse_short_form(file, value, default_mode) {
                Ok(f) => files.push(f),
                Err(m) => err(key, m.0),
            }
            continue;
        }
        if let Some(name) = key.strip_prefix(ENV_PREFIX) {
            match parse_env_short_form(name, value) {
                Ok(v) => env.push(v),
                Err(m) => err(key, m.0),
            }
            continue;
        }
        match key.as_str() {
            // Read before the loop (they affect the others), written by kura, or read by the agent.
            INJECT | FILE_MODE | STATUS | REFRESH_NOW => {}
            SECRETS => match check_secrets_bounds(value)
                .and_then(|()| {
                    serde_yaml_ng::from_str::<Vec<ListEntry>>(value).map_err(|e| {
                        Invalid(format!(
                            "not a YAML list of entries with file, env or envFrom and secret, key, versionStage, versionId, format, mode, inputs, template: {e}"
                        ))
                    })
                }) {
                Ok(entries) if entries.is_empty() => err(key, "the list is empty".into()),
                Ok(entries) => {
                    for (i, e) in entries.into_iter().enumerate() {
                        match list_entry(e, default_mode) {
                            Ok(Entry::File(f)) => files.push(f),
                            Ok(Entry::Template(t)) => templates.push(t),
                            Ok(Entry::Env(v)) => env.push(v),
                            Ok(Entry::EnvFrom(v)) => env_from.push(v),
                            Err(m) => err(key, format!("entry {}: {m}", i + 1)),
                        }
                    }
                }
                Err(m) => err(key, m.0),
            },
            MOUNT_PATH => match validate_mount_path(value) {
                Ok(()) => mount_path = value.trim_end_matches('/').to_string(),
                Err(m) => err(key, m.0),
            },
            CONTAINERS => {
                let list: Vec<String> = value.split(',').map(|s| s.trim().to_string()).collect();
                if let Some(bad) = list.iter().find(|c| !is_dns_label(c)) {
                    err(
                        key,
                        format!(
                            "{bad:?} is not a container name; write a comma list such as \"app,worker\""
                        ),
                    );
                } else {
                    containers = Some(list);
                }
            }
            AGENT => match value.as_str() {
                "sidecar" => agent = AgentMode::Sidecar,
                "init-only" => agent = AgentMode::InitOnly,
                other => err(
                    key,
                    format!("{other:?} is not \"sidecar\" or \"init-only\""),
                ),
            },
            REFRESH_INTERVAL => match crate::duration::parse(value).map(|d| d.as_secs()) {
                Ok(s) if (MIN_REFRESH_SECS..=MAX_REFRESH_SECS).contains(&s) => {
                    refresh_interval = Some(s)
                }
                Ok(_) => err(key, format!("{value:?} is outside 30s..24h")),
                Err(_) => err(
                    key,
                    format!("{value:?} is not a duration such as \"90s\", \"5m\" or \"1h30m\""),
                ),
            },
            RUN_AS_USER => match value.parse::<i64>() {
                Ok(u) if (1..=i64::from(u32::MAX)).contains(&u) => run_as_user = Some(u),
                Ok(0) => err(
                    key,
                    "the agent never runs as root; give the app's non-zero uid".into(),
                ),
                _ => err(key, format!("{value:?} is not a uid")),
            },
            RELOAD => match Reload::parse(value) {
                Ok(r) => reload = Some(r),
                Err(m) => err(key, m.0),
            },
            ENV_ON_ROTATION => match EnvOnRotation::parse(value) {
                Ok(r) => env_on_rotation = Some(r),
                Err(m) => err(key, m.0),
            },
            k if ENV_PREFIX.strip_suffix('.') == Some(k) => err(
                key,
                "write kura.dev/env.<NAME>: the variable's name goes after the dot".into(),
            ),
            k if SECRET_PREFIX.strip_suffix('.') == Some(k) => err(
                key,
                "write kura.dev/secret.<file>: the file name goes after the dot".into(),
            ),
            _ => {
                // The catalogue once, not once per unknown annotation: a pod may carry
                // thousands, and each copy would cost its length again.
                unknown += 1;
                if unknown == 1 {
                    err(key, format!("unknown kura annotation; known: {}", known()));
                } else {
                    err(key, "unknown kura annotation".into());
                }
            }
        }
    }

    let mut seen = BTreeSet::new();
    for f in files
        .iter()
        .map(|f| f.file.as_str())
        .chain(templates.iter().map(|t| t.file.as_str()))
    {
        if !seen.insert(f) {
            err(
                SECRETS,
                format!("file {f:?} is declared twice; each file name may appear once"),
            );
        }
    }
    let mut seen = BTreeSet::new();
    for v in &env {
        if !seen.insert(v.name.as_str()) {
            err(
                SECRETS,
                format!(
                    "environment variable {:?} is declared twice ({ENV_PREFIX}{} or an env entry); each name may appear once",
                    v.name, v.name
                ),
            );
        }
    }
    let has_env = !env.is_empty() || !env_from.is_empty();
    if env_on_rotation.is_some() && !has_env {
        err(
            ENV_ON_ROTATION,
            format!(
                "the pod declares no environment variable ({ENV_PREFIX}<NAME>, or env/envFrom in {SECRETS}), so there is nothing to restart or signal; remove it"
            ),
        );
    }
    let declares_any = !files.is_empty() || !templates.is_empty() || has_env;

    match inject {
        Some(true) if !declares_any => err(
            INJECT,
            format!(
                "the pod opts in but declares no secret; add {SECRET_PREFIX}<file>: <secret-id>, {ENV_PREFIX}<NAME>: <secret-id> or {SECRETS}"
            ),
        ),
        None if declares_any => err(
            INJECT,
            format!(
                "secrets are declared but {INJECT} is missing; set {INJECT}: \"true\" to inject them"
            ),
        ),
        _ => {}
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    if inject != Some(true) {
        return Ok(None);
    }
    Ok(Some(PodSecrets {
        files,
        env,
        env_from,
        templates,
        env_on_rotation: env_on_rotation.unwrap_or_default(),
        agent,
        mount_path,
        containers,
        refresh_interval,
        run_as_user,
        reload,
    }))
}

fn parse_short_form(file: &str, value: &str, mode: FileMode) -> Result<SecretFile, Invalid> {
    validate_file_name(file)?;
    let (secret, key) = split_reference(value)?;
    Ok(SecretFile {
        file: file.to_string(),
        secret: secret.to_string(),
        key: key.map(str::to_string),
        version_stage: None,
        version_id: None,
        format: Format::Raw,
        mode,
    })
}

/// One list entry, by what it delivers.
enum Entry {
    File(SecretFile),
    Template(TemplateFile),
    Env(EnvVar),
    EnvFrom(EnvFrom),
}

fn parse_env_short_form(name: &str, value: &str) -> Result<EnvVar, Invalid> {
    validate_env_name(name)?;
    let (secret, key) = split_reference(value)?;
    Ok(EnvVar {
        name: name.to_string(),
        secret: secret.to_string(),
        key: key.map(str::to_string),
        version_stage: None,
        version_id: None,
    })
}

fn list_entry(e: ListEntry, default_mode: FileMode) -> Result<Entry, Invalid> {
    let kinds = [e.file.is_some(), e.env.is_some(), e.env_from.is_some()];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return Err(Invalid::new(
            "an entry has exactly one of file, env or envFrom",
        ));
    }
    if e.key.as_deref() == Some("") {
        return Err(Invalid::new("key is empty"));
    }
    check_characters_of(&[
        ("key", e.key.as_deref()),
        ("versionStage", e.version_stage.as_deref()),
        ("versionId", e.version_id.as_deref()),
    ])?;
    let only_for_files = |what: &str| {
        Invalid(format!(
            "{what} applies to files only; an env or envFrom entry takes secret (or the envFrom reference), key and versionStage/versionId"
        ))
    };
    if e.file.is_none() {
        if e.format.is_some() {
            return Err(only_for_files("format"));
        }
        if e.mode.is_some() {
            return Err(only_for_files("mode"));
        }
        if e.template.is_some() || e.inputs.is_some() {
            return Err(only_for_files("template/inputs"));
        }
    }
    if let Some(reference) = e.env_from {
        if e.secret.is_some() {
            return Err(Invalid::new(
                "envFrom is itself the reference (envFrom: /prod/app/db); drop secret",
            ));
        }
        if e.key.is_some() {
            return Err(Invalid::new(
                "write the key into the reference (envFrom: /prod/app/db#nested), not as key",
            ));
        }
        let (secret, key) = split_reference(&reference).map_err(|m| m.context("envFrom"))?;
        validate_version(secret, e.version_id.as_deref(), e.version_stage.as_deref())?;
        return Ok(Entry::EnvFrom(EnvFrom {
            secret: secret.to_string(),
            key: key.map(str::to_string),
            version_stage: e.version_stage,
            version_id: e.version_id,
        }));
    }
    if let Some(name) = e.env {
        validate_env_name(&name).map_err(|m| m.context("env"))?;
        let secret = e
            .secret
            .ok_or_else(|| Invalid::new("an env entry needs secret: <secret-id>"))?;
        validate_secret_id(&secret).map_err(|m| m.context("secret"))?;
        check_characters_of(&[("secret", Some(&secret))])?;
        validate_version(&secret, e.version_id.as_deref(), e.version_stage.as_deref())?;
        return Ok(Entry::Env(EnvVar {
            name,
            secret,
            key: e.key,
            version_stage: e.version_stage,
            version_id: e.version_id,
        }));
    }
    let file = e.file.expect("exactly one kind, checked above");
    validate_file_name(&file).map_err(|m| m.context("file"))?;
    let mode = match e.mode {
        Some(m) => FileMode::parse(&m).map_err(|m| m.context("mode"))?,
        None => default_mode,
    };
    match (e.secret, e.template, e.inputs) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(Invalid::new(
            "a file has either secret or template with inputs, not both",
        )),
        (None, Some(template), inputs) => {
            if e.key.is_some() || e.version_id.is_some() || e.version_stage.is_some() {
                return Err(Invalid::new(
                    "a template file takes no key or version; write them into its inputs (db: /prod/app/db#password)",
                ));
            }
            if e.format.is_some() {
                return Err(Invalid::new(
                    "a template file takes no format; the template is the format",
                ));
            }
            let inputs = inputs.unwrap_or_default();
            let mut parsed = BTreeMap::new();
            for (name, reference) in &inputs {
                if !is_identifier(name) {
                    return Err(Invalid(format!(
                        "input name {name:?} is not a template name; use letters, digits and '_', not starting with a digit"
                    )));
                }
                let input =
                    Input::parse(reference).map_err(|m| m.context(&format!("inputs.{name}")))?;
                parsed.insert(name.clone(), input);
            }
            if parsed.is_empty() {
                return Err(Invalid::new(
                    "a template needs inputs: {name: <secret-id>[#<key>], ...}",
                ));
            }
            crate::template::check(&template, parsed.keys().map(String::as_str))
                .map_err(|m| Invalid(format!("template of file {file:?}: {m}")))?;
            Ok(Entry::Template(TemplateFile {
                file,
                inputs: parsed,
                template,
                mode,
            }))
        }
        (None, None, Some(_)) => Err(Invalid::new("inputs need a template")),
        (None, None, None) => Err(Invalid::new(
            "a file needs secret: <secret-id> (or template and inputs)",
        )),
        (Some(secret), None, None) => {
            validate_secret_id(&secret).map_err(|m| m.context("secret"))?;
            check_characters_of(&[("secret", Some(&secret))])?;
            validate_version(&secret, e.version_id.as_deref(), e.version_stage.as_deref())?;
            Ok(Entry::File(SecretFile {
                file,
                secret,
                key: e.key,
                version_stage: e.version_stage,
                version_id: e.version_id,
                format: e.format.unwrap_or_default(),
                mode,
            }))
        }
    }
}

/// A Jinja name: `[A-Za-z_][A-Za-z0-9_]*`.
fn is_identifier(s: &str) -> bool {
    crate::spec::validate_env_name(s).is_ok()
}

/// [`crate::spec::check_characters`] over an entry's free-text fields: no control or bidi
/// character reaches the agent's spec (or fails to round-trip through YAML).
fn check_characters_of(fields: &[(&str, Option<&str>)]) -> Result<(), Invalid> {
    for (field, value) in fields {
        if let Some(v) = value {
            crate::spec::check_characters(v).map_err(|m| m.context(field))?;
        }
    }
    Ok(())
}

fn validate_mount_path(p: &str) -> Result<(), Invalid> {
    crate::spec::check_path_text(p)?;
    if !p.starts_with('/') {
        return Err(Invalid(format!("{p:?} is not an absolute path")));
    }
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(Invalid::new("the mount path cannot be /"));
    }
    if trimmed
        .split('/')
        .skip(1)
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(Invalid(format!("{p:?} has empty, '.' or '..' segments")));
    }
    if p.contains([':', '\0', '\n']) {
        return Err(Invalid(format!(
            "{p:?} contains a character a mount path cannot hold"
        )));
    }
    Ok(())
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn messages(r: Result<Option<PodSecrets>, Vec<AnnotationError>>) -> Vec<String> {
        r.expect_err("should fail")
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn env_from_with_a_nested_key_round_trips() {
        // Found by the `annotations` fuzz target: the key was written back as a separate `key`,
        // which the parser refuses on an envFrom entry.
        let a = map(&[
            ("kura.dev/inject", "true"),
            (
                "kura.dev/secrets",
                "- envFrom: /prod/app/db#nested\n  versionStage: AWSPREVIOUS\n- envFrom: ssm:/prod/app\n",
            ),
        ]);
        let p = parse(&a).expect("valid").expect("opted in");
        assert_eq!(p.env_from[0].key.as_deref(), Some("nested"));
        let again = parse(&p.to_annotations())
            .expect("normalized annotations parse")
            .expect("and opt in");
        assert_eq!(again.to_spec(120), p.to_spec(120));
    }

    #[test]
    fn brackets_in_keys_round_trip() {
        // Found by the `annotations` fuzz target: a short form's JSON key with many `[` parsed,
        // but written back into kura.dev/secrets it counted as nesting and was refused.
        let key = format!("pa{}ss\\\"{{}}]word", "[".repeat(40));
        let a = map(&[
            ("kura.dev/inject", "true"),
            ("kura.dev/secret.db", &format!("/prod/app/db#{key}")),
        ]);
        let p = parse(&a).expect("valid").expect("opted in");
        assert_eq!(p.files[0].key.as_deref(), Some(key.as_str()));
        let again = parse(&p.to_annotations())
            .expect("normalized annotations parse")
            .expect("and opt in");
        assert_eq!(again.to_spec(120), p.to_spec(120));
    }

    #[test]
    fn contract_example_parses() {
        let a = map(&[
            ("kura.dev/inject", "true"),
            (
                "kura.dev/secret.db-password",
                "/prod/user-service/db#password",
            ),
            (
                "kura.dev/secret.api-key",
                "arn:aws:secretsmanager:ap-northeast-1:111122223333:secret:/prod/user-service/api-AbCdEf",
            ),
            (
                "kura.dev/secrets",
                "- file: db.env\n  secret: /prod/user-service/db\n  format: env\n- file: tls.crt\n  secret: /prod/user-service/tls\n  key: certificate\n  mode: \"0440\"\n",
            ),
        ]);
        let p = parse(&a).expect("valid").expect("opted in");
        assert_eq!(p.files.len(), 4);
        let by_name: BTreeMap<_, _> = p.files.iter().map(|f| (f.file.as_str(), f)).collect();
        assert_eq!(by_name["db-password"].key.as_deref(), Some("password"));
        assert_eq!(by_name["db.env"].format, Format::Env);
        assert_eq!(by_name["tls.crt"].mode, FileMode(0o440));
        assert_eq!(by_name["api-key"].mode, DEFAULT_FILE_MODE);
        assert_eq!(p.mount_path, DEFAULT_MOUNT_PATH);
        assert_eq!(p.secrets().len(), 3);
    }

    #[test]
    fn parameters_are_referenced_like_secrets() {
        let a = map(&[
            ("kura.dev/inject", "true"),
            ("kura.dev/secret.db-host", "ssm:/prod/app/db#host"),
            (
                "kura.dev/secret.flag",
                "arn:aws:ssm:us-east-1:111122223333:parameter/prod/app/flag",
            ),
            (
                "kura.dev/secrets",
                "- {file: old, secret: ssm:/prod/app/db, versionId: \"3\"}\n- {file: blue, secret: ssm:/prod/app/db, versionStage: blue}\n",
            ),
        ]);
        let p = parse(&a).expect("valid").expect("opted in");
        let by_name: BTreeMap<_, _> = p.files.iter().map(|f| (f.file.as_str(), f)).collect();
        assert_eq!(by_name["db-host"].secret, "ssm:/prod/app/db");
        assert_eq!(by_name["db-host"].key.as_deref(), Some("host"));
        assert_eq!(by_name["old"].version_id.as_deref(), Some("3"));
        assert_eq!(by_name["blue"].version_stage.as_deref(), Some("blue"));
        assert_eq!(p.secrets().len(), 2, "three files read one parameter");
    }

    #[test]
    fn not_opted_in() {
        assert_eq!(parse(&map(&[("app", "x")])).expect("ok"), None);
        assert_eq!(
            parse(&map(&[
                ("kura.dev/inject", "false"),
                ("kura.dev/secret.a", "/x/y")
            ]))
            .expect("ok"),
            None
        );
    }

    #[test]
    fn every_error_names_its_annotation() {
        let cases: &[(&[(&str, &str)], &str, &str)] = &[
            (&[("kura.dev/inject", "yes")], "kura.dev/inject", "\"yes\""),
            (
                &[("kura.dev/inject", "true")],
                "kura.dev/inject",
                "declares no secret",
            ),
            (
                &[("kura.dev/secret.a", "/x/y")],
                "kura.dev/inject",
                "missing",
            ),
            (
                &[
                    ("kura.dev/inject", "true"),
                    ("kura.dev/secret.../x", "/x/y"),
                ],
                "kura.dev/secret.../x",
                "must start",
            ),
            (
                &[("kura.dev/inject", "true"), ("kura.dev/secret.a", "/x y")],
                "kura.dev/secret.a",
                "contains",
            ),
            (
                &[("kura.dev/inject", "true"), ("kura.dev/secret.a", "/x#")],
                "kura.dev/secret.a",
                "empty",
            ),
            (
                &[
                    ("kura.dev/inject", "true"),
                    ("kura.dev/secret.a", "/x"),
                    ("kura.dev/colour", "red"),
                ],
                "kura.dev/colour",
                "unknown",
            ),
            (
                &[
                    ("kura.dev/inject", "true"),
                    ("kura.dev/secret.a", "/x"),
                    ("kura.dev/agent", "daemon"),
                ],
                "kura.dev/agent",
                "init-only",
            ),
            (
                &[
                    ("kura.dev/inject", "true"),
                    ("kura.dev/secret.a", "/x"),
                    ("kura.dev/refresh-interval", "5s"),
                ],
                "kura.dev/refresh-interval",
                "30s..24h",
            ),
            (
                &[
                    ("kura.dev/inject", "true"),
                    ("kura.dev/secret.a", "/x"),
                    ("kura.dev/refresh-interval", "soon"),
                ],
                "kura.dev/refresh-interval",
                "duration",
            ),
            (
                &[
                    ("kura.dev/inject", "true"),
                    ("kura.dev/secret.a", "/x"),
                    ("kura.dev/run-as-user", "0"),
                ],
                "kura.dev/run-as-user",
                "root",
            ),
            (
                &[
                    ("kura.dev/inject", "true"),
                    ("kura.dev/secret.a", "/x"),
                    ("kura.dev/mount-path", "rel/path"),
                ],
                "kura.dev/mount-path",
                "absolute",
            ),
            (
                &[
                    ("kura.dev/inject", "true"),
                    ("kura.dev/secret.a", "/x"),
                    ("kura.dev/mount-path", "/a/../b"),
                ],
                "kura.dev/mount-path",
                "'..'",
            ),
            (
                &[
                    ("kura.dev/inject", "true"),
                    ("kura.dev/secret.a", "/x"),
                    ("kura.dev/containers", "App"),
                ],
                "kura.dev/containers",
                "\"App\"",
            ),
            (
                &[
                    ("kura.dev/inject", "true"),
                    ("kura.dev/secret.a", "/x"),
                    ("kura.dev/file-mode", "777x"),
                ],
                "kura.dev/file-mode",
                "octal",
            ),
            (
                &[
                    ("kura.dev/inject", "true"),
                    ("kura.dev/secret.a", "/x"),
                    ("kura.dev/reload", "http://10.0.0.1:80/"),
                ],
                "kura.dev/reload",
                "loopback",
            ),
            (
                &[("kura.dev/inject", "true"), ("kura.dev/secrets", "file: a")],
                "kura.dev/secrets",
                "YAML list",
            ),
            (
                &[
                    ("kura.dev/inject", "true"),
                    ("kura.dev/secrets", "- file: a\n  secret: /x\n  colour: red"),
                ],
                "kura.dev/secrets",
                "unknown field",
            ),
            (
                &[
                    ("kura.dev/inject", "true"),
                    (
                        "kura.dev/secrets",
                        "- file: a\n  secret: /x\n  versionId: v\n  versionStage: s",
                    ),
                ],
                "kura.dev/secrets",
                "not both",
            ),
            (
                &[
                    ("kura.dev/inject", "true"),
                    ("kura.dev/secrets", "- file: a\n  secret: /x\n  format: xml"),
                ],
                "kura.dev/secrets",
                "unknown variant",
            ),
            (
                &[
                    ("kura.dev/inject", "true"),
                    ("kura.dev/secret.a", "/x"),
                    ("kura.dev/secrets", "- file: a\n  secret: /y"),
                ],
                "kura.dev/secrets",
                "twice",
            ),
            (
                &[
                    ("kura.dev/inject", "true"),
                    ("kura.dev/secret.a", "ssm:prod/db#password"),
                ],
                "kura.dev/secret.a",
                "write ssm:/prod/db",
            ),
            (
                &[
                    ("kura.dev/inject", "true"),
                    (
                        "kura.dev/secrets",
                        "- file: a\n  secret: ssm:/prod/db\n  versionId: latest",
                    ),
                ],
                "kura.dev/secrets",
                "not a parameter version",
            ),
        ];
        for (pairs, annotation, needle) in cases {
            let msgs = messages(parse(&map(pairs)));
            assert!(
                msgs.iter()
                    .any(|m| m.contains(annotation) && m.contains(needle)),
                "{pairs:?}: wanted {annotation} / {needle} in {msgs:?}"
            );
        }
    }

    #[test]
    fn the_unknown_annotation_message_lists_the_catalogue() {
        let msgs = messages(parse(&map(&[
            ("kura.dev/inject", "true"),
            ("kura.dev/secret.a", "/x"),
            ("kura.dev/colour", "red"),
        ])));
        assert_eq!(
            msgs,
            [
                "annotation kura.dev/colour: unknown kura annotation; known: kura.dev/inject, \
                 kura.dev/secret.<file>, kura.dev/secrets, kura.dev/env.<NAME>, \
                 kura.dev/env-on-rotation, kura.dev/mount-path, kura.dev/containers, \
                 kura.dev/agent, kura.dev/refresh-interval, kura.dev/file-mode, kura.dev/run-as-user, \
                 kura.dev/reload, kura.dev/refresh-now"
            ]
        );
        for a in CATALOGUE {
            assert!(a.name.starts_with(PREFIX), "{a}");
            assert!(!a.doc.trim().is_empty(), "{a} has no doc");
            assert_eq!(
                known().contains(&a.to_string()),
                a.author == Author::User,
                "{a}"
            );
        }
        let names: BTreeSet<&str> = CATALOGUE.iter().map(|a| a.name).collect();
        assert_eq!(names.len(), CATALOGUE.len(), "each annotation once");
    }

    /// A catalogue entry without its arm in `parse` would be refused as unknown.
    #[test]
    fn every_user_annotation_is_parsed() {
        for a in CATALOGUE.iter().filter(|a| a.author == Author::User) {
            let key = match a.placeholder {
                Some(_) => format!("{}b", a.name),
                None => a.name.to_string(),
            };
            let mut pairs = map(&[("kura.dev/inject", "true"), ("kura.dev/secret.a", "/x")]);
            pairs.entry(key.clone()).or_insert_with(|| "x".to_string());
            let msgs = match parse(&pairs) {
                Ok(_) => Vec::new(),
                Err(e) => e.iter().map(ToString::to_string).collect(),
            };
            assert!(
                !msgs.iter().any(|m| m.contains("unknown kura annotation")),
                "{key}: {msgs:?}"
            );
        }
    }

    /// The README's annotation table is the users' copy of the catalogue.
    #[test]
    fn the_readme_lists_every_annotation() {
        let readme = include_str!("../../README.md");
        for a in CATALOGUE {
            let row = format!("| `{a}` |");
            assert!(readme.contains(&row), "README lacks the row {row}");
        }
    }

    #[test]
    fn all_errors_reported_at_once() {
        let msgs = messages(parse(&map(&[
            ("kura.dev/inject", "true"),
            ("kura.dev/secret.a", "/x"),
            ("kura.dev/agent", "nope"),
            ("kura.dev/file-mode", "9"),
        ])));
        assert_eq!(msgs.len(), 2, "{msgs:?}");
    }

    fn arb_file() -> impl Strategy<Value = SecretFile> {
        (
            "[A-Za-z0-9][A-Za-z0-9._-]{0,20}",
            "/[a-z]{1,8}/[a-z0-9_+=.@-]{1,12}",
            proptest::option::of("[a-zA-Z0-9_/ -]{1,10}"),
            proptest::option::of(prop_oneof![
                Just("AWSPREVIOUS".to_string()),
                Just("AWSCURRENT".to_string())
            ]),
            prop_oneof![Just(Format::Raw), Just(Format::Json), Just(Format::Env)],
            prop_oneof![Just(0o400u32), Just(0o440), Just(0o600), Just(0o644)],
        )
            .prop_map(
                |(file, secret, key, version_stage, format, mode)| SecretFile {
                    file,
                    secret,
                    key,
                    version_stage,
                    version_id: None,
                    format,
                    mode: FileMode(mode),
                },
            )
    }

    proptest! {
        #[test]
        fn parser_never_panics(pairs in proptest::collection::btree_map(
            prop_oneof![
                Just("kura.dev/inject".to_string()),
                Just("kura.dev/secrets".to_string()),
                Just("kura.dev/reload".to_string()),
                Just("kura.dev/refresh-interval".to_string()),
                Just("kura.dev/mount-path".to_string()),
                Just("kura.dev/file-mode".to_string()),
                "kura\\.dev/secret\\.[ -~]{0,12}",
                "kura\\.dev/[ -~]{0,12}",
            ],
            "\\PC{0,40}",
            0..6,
        )) {
            let _ = parse(&pairs);
        }

        #[test]
        fn spec_annotations_round_trip(
            files in proptest::collection::vec(arb_file(), 1..5),
            agent in prop_oneof![Just(AgentMode::Sidecar), Just(AgentMode::InitOnly)],
            refresh in proptest::option::of(30u64..86400),
            uid in proptest::option::of(1i64..70000),
            containers in proptest::option::of(proptest::collection::vec("[a-z][a-z0-9-]{0,8}[a-z0-9]", 1..3)),
            env in proptest::collection::vec(("[A-Z_][A-Z0-9_]{0,10}", "/[a-z]{1,8}/[a-z]{1,8}", proptest::option::of("[a-z]{1,6}")), 0..4),
            env_from in proptest::collection::vec(("(ssm:)?/[a-z]{1,8}/[a-z]{1,8}", proptest::option::of("/?[a-z]{1,6}"), proptest::option::of(Just("blue".to_string()))), 0..2),
            with_template in proptest::bool::ANY,
            on_rotation in prop_oneof![Just("none"), Just("restart"), Just("signal:SIGHUP")],
        ) {
            let mut seen = BTreeSet::new();
            let files: Vec<_> = files.into_iter().filter(|f| seen.insert(f.file.clone())).collect();
            let mut names = BTreeSet::new();
            let env: Vec<EnvVar> = env
                .into_iter()
                .filter(|(n, _, _)| names.insert(n.clone()))
                .map(|(name, secret, key)| EnvVar { name, secret, key, version_stage: None, version_id: None })
                .collect();
            let env_from: Vec<EnvFrom> = env_from
                .into_iter()
                .map(|(secret, key, version_stage)| EnvFrom { secret, key, version_stage, version_id: None })
                .collect();
            let templates = if with_template && !seen.contains("app.properties") {
                vec![TemplateFile {
                    file: "app.properties".into(),
                    inputs: BTreeMap::from([
                        ("db".to_string(), Input::parse("/prod/app/db").expect("valid")),
                        ("key".to_string(), Input::parse("ssm:/prod/app/key#k").expect("valid")),
                    ]),
                    template: "u={{ db.username }}\nk={{ key | urlencode }}\n".into(),
                    mode: FileMode(0o440),
                }]
            } else {
                Vec::new()
            };
            let has_env = !env.is_empty() || !env_from.is_empty();
            let env_on_rotation = if has_env { EnvOnRotation::parse(on_rotation).expect("valid") } else { EnvOnRotation::None };
            let original = PodSecrets {
                files,
                env,
                env_from,
                templates,
                env_on_rotation,
                agent,
                mount_path: "/etc/app/secrets".into(),
                containers,
                refresh_interval: refresh,
                run_as_user: uid,
                reload: Some(Reload::parse("http://127.0.0.1:9000/reload").expect("valid")),
            };
            let back = parse(&original.to_annotations()).expect("valid").expect("opted in");
            prop_assert_eq!(&back, &original);
            prop_assert_eq!(back.to_spec(120), original.to_spec(120));
        }
    }

    #[test]
    fn secrets_lists_are_bounded_in_size_and_depth_before_parsing() {
        let opted = |v: &str| map(&[(INJECT, "true"), (SECRETS, v)]);
        // Deep flow nesting is what makes a YAML parser slow: refused before it starts.
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        let e = messages(parse(&opted(&deep)));
        assert!(e[0].contains("nests") && e[0].contains("10"), "{e:?}");
        let deep_block = (0..12)
            .map(|i| format!("{}- x\n", " ".repeat(i)))
            .collect::<String>();
        assert!(messages(parse(&opted(&deep_block)))[0].contains("nests"));
        let mixed = format!("- {{a: {}}}", "[{".repeat(5));
        assert!(messages(parse(&opted(&mixed)))[0].contains("nests"));

        let mut list = String::new();
        let mut n = 0;
        while list.len() < MAX_SECRETS_BYTES - 100 {
            list.push_str(&format!(
                "- file: f{n}\n  secret: /bounds-test/s{n}\n  mode: \"0440\"\n"
            ));
            n += 1;
        }
        let ok = parse(&opted(&list)).expect("a long list within the bound parses");
        assert_eq!(ok.expect("opted in").files.len(), n);
        list.push_str(&"#".repeat(200));
        let e = messages(parse(&opted(&list)));
        assert!(e[0].contains("bytes") && e[0].len() < 200, "{e:?}");
        // Flow style within the bounds is still YAML.
        let flow = "[{file: a, secret: /bounds-test/a}, {file: b, secret: /bounds-test/b}]";
        assert_eq!(
            parse(&opted(flow))
                .expect("valid")
                .expect("opted in")
                .files
                .len(),
            2
        );
    }

    /// Found by the `annotations` fuzz target: a JSON key holding DEL parsed, but the
    /// annotations written back for it (`to_annotations`) were not YAML.
    #[test]
    fn json_keys_with_control_characters_are_refused() {
        for key in ["pass\u{7f}word", "pass\u{19}\u{0}word", "a\u{202e}b"] {
            // YAML's double-quoted escapes, so that the YAML parser passes the characters on.
            let quoted: String = key
                .chars()
                .map(|c| match c {
                    ' '..='~' => c.to_string(),
                    c => format!("\\u{:04x}", u32::from(c)),
                })
                .collect();
            for m in [
                map(&[
                    (INJECT, "true"),
                    ("kura.dev/secret.db", &format!("/x/db#{key}")),
                ]),
                map(&[
                    (INJECT, "true"),
                    (
                        SECRETS,
                        &format!("- file: db\n  secret: /x/db\n  key: \"{quoted}\"\n"),
                    ),
                ]),
            ] {
                let e = parse(&m).expect_err(key);
                assert!(e[0].message.contains("U+"), "{}", e[0].message);
            }
        }
        // The second fuzz finding: NUL in an ARN's region.
        let arn = "arn:aws:secretsmanager:ap\u{0}\u{0}:111122223333:secret:/x/db";
        let e = parse(&map(&[(INJECT, "true"), ("kura.dev/secret.db", arn)])).expect_err(arn);
        assert!(e[0].message.contains("U+0000"), "{}", e[0].message);
        let stage = "- file: db\n  secret: /x/db\n  versionStage: \"A\\x01B\"\n";
        let e = parse(&map(&[(INJECT, "true"), (SECRETS, stage)])).expect_err(stage);
        assert!(e[0].message.contains("U+0001"), "{}", e[0].message);
        let ok = parse(&map(&[
            (INJECT, "true"),
            ("kura.dev/secret.db", "/x/db#clé/0"),
        ]))
        .expect("a key of letters parses")
        .expect("opted in");
        assert_eq!(parse(&ok.to_annotations()).expect("round trip"), Some(ok));
    }

    #[test]
    fn many_unknown_annotations_cost_the_catalogue_once() {
        let mut m = map(&[(INJECT, "true"), ("kura.dev/secret.db", "/x/db")]);
        for i in 0..5000 {
            m.insert(format!("kura.dev/unknown-{i:04}"), "x".into());
        }
        let e = parse(&m).expect_err("unknown annotations");
        assert_eq!(e.len(), 5000);
        assert!(e[0].message.contains(&known()));
        let bytes: usize = e.iter().map(|e| e.message.len()).sum();
        assert!(bytes < 200 * 1024, "{bytes} bytes of messages");
    }

    #[test]
    fn mount_paths_and_reload_hooks_with_control_or_bidi_characters_are_refused() {
        for (annotation, value) in [
            (MOUNT_PATH, "/etc/app\u{1b}[2J"),
            (MOUNT_PATH, "/etc/\u{202E}ppa"),
            (MOUNT_PATH, "/etc/app\u{9b}"),
            (RELOAD, "http://127.0.0.1:8080/re\u{0}load"),
            (RELOAD, "http://127.0.0.1:8080/\u{2066}reload"),
        ] {
            let e = parse(&map(&[
                (INJECT, "true"),
                ("kura.dev/secret.db", "/x/db"),
                (annotation, value),
            ]))
            .expect_err(value);
            assert_eq!(e.len(), 1);
            assert_eq!(e[0].annotation, annotation);
            assert!(e[0].message.contains("U+"), "{}", e[0].message);
        }
        let long = format!("/etc/{}", "a".repeat(256));
        let e = parse(&map(&[
            (INJECT, "true"),
            ("kura.dev/secret.db", "/x/db"),
            (MOUNT_PATH, &long),
        ]))
        .expect_err("oversized segment");
        assert!(e[0].message.contains("segment"), "{}", e[0].message);
    }
}
