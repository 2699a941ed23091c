//! Pod annotations → [`PodSecrets`]: the developer-facing half of the spec.
//!
//! Every `kura.dev/` annotation is checked, and every problem is reported at once with the
//! annotation it concerns and what to write instead, so one `kubectl apply` shows them all.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Deserialize;

use crate::spec::{
    AgentMode, DEFAULT_FILE_MODE, FileMode, Format, Reload, SPEC_VERSION, SecretFile, Spec,
    validate_file_name, validate_secret_id,
};

pub const PREFIX: &str = "kura.dev/";
pub const INJECT: &str = "kura.dev/inject";
pub const SECRET_PREFIX: &str = "kura.dev/secret.";
pub const SECRETS: &str = "kura.dev/secrets";
pub const MOUNT_PATH: &str = "kura.dev/mount-path";
pub const CONTAINERS: &str = "kura.dev/containers";
pub const AGENT: &str = "kura.dev/agent";
pub const REFRESH_INTERVAL: &str = "kura.dev/refresh-interval";
pub const FILE_MODE: &str = "kura.dev/file-mode";
pub const RUN_AS_USER: &str = "kura.dev/run-as-user";
pub const RELOAD: &str = "kura.dev/reload";
pub const STATUS: &str = "kura.dev/status";
pub const REFRESH_NOW: &str = "kura.dev/refresh-now";

pub const DEFAULT_MOUNT_PATH: &str = "/var/run/secrets/kura";
pub const MIN_REFRESH_SECS: u64 = 30;
pub const MAX_REFRESH_SECS: u64 = 24 * 3600;

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
        }
    }

    /// Annotations that parse back into this value (the advanced list form, explicit modes).
    pub fn to_annotations(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        out.insert(INJECT.to_string(), "true".to_string());
        let entries: Vec<serde_json::Value> = self
            .files
            .iter()
            .map(|f| serde_json::to_value(f).expect("a secret file always serializes"))
            .collect();
        // JSON is YAML, and quoting every string keeps odd names intact.
        out.insert(
            SECRETS.to_string(),
            serde_json::to_string(&entries).expect("values serialize"),
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
        out
    }

    /// Distinct secrets, in declaration order.
    pub fn secrets(&self) -> Vec<&str> {
        let mut seen = BTreeSet::new();
        self.files
            .iter()
            .map(|f| f.secret.as_str())
            .filter(|s| seen.insert(*s))
            .collect()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListEntry {
    file: String,
    secret: String,
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
            err(FILE_MODE, e);
            DEFAULT_FILE_MODE
        }),
        None => DEFAULT_FILE_MODE,
    };

    let mut files: Vec<SecretFile> = Vec::new();
    let mut agent = AgentMode::Sidecar;
    let mut mount_path = DEFAULT_MOUNT_PATH.to_string();
    let mut containers = None;
    let mut refresh_interval = None;
    let mut run_as_user = None;
    let mut reload = None;

    for (key, value) in annotations {
        let Some(name) = key.strip_prefix(PREFIX) else {
            continue;
        };
        if let Some(file) = key.strip_prefix(SECRET_PREFIX) {
            match parse_short_form(file, value, default_mode) {
                Ok(f) => files.push(f),
                Err(m) => err(key, m),
            }
            continue;
        }
        match name {
            "inject" | "file-mode" | "status" | "refresh-now" => {}
            "secrets" => match serde_yaml_ng::from_str::<Vec<ListEntry>>(value) {
                Ok(entries) if entries.is_empty() => err(key, "the list is empty".into()),
                Ok(entries) => {
                    for (i, e) in entries.into_iter().enumerate() {
                        match list_entry(e, default_mode) {
                            Ok(f) => files.push(f),
                            Err(m) => err(key, format!("entry {}: {m}", i + 1)),
                        }
                    }
                }
                Err(e) => err(
                    key,
                    format!(
                        "not a YAML list of entries with file, secret, key, versionStage, versionId, format, mode: {e}"
                    ),
                ),
            },
            "mount-path" => match validate_mount_path(value) {
                Ok(()) => mount_path = value.trim_end_matches('/').to_string(),
                Err(m) => err(key, m),
            },
            "containers" => {
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
            "agent" => match value.as_str() {
                "sidecar" => agent = AgentMode::Sidecar,
                "init-only" => agent = AgentMode::InitOnly,
                other => err(
                    key,
                    format!("{other:?} is not \"sidecar\" or \"init-only\""),
                ),
            },
            "refresh-interval" => match crate::duration::parse(value).map(|d| d.as_secs()) {
                Ok(s) if (MIN_REFRESH_SECS..=MAX_REFRESH_SECS).contains(&s) => {
                    refresh_interval = Some(s)
                }
                Ok(_) => err(key, format!("{value:?} is outside 30s..24h")),
                Err(_) => err(
                    key,
                    format!("{value:?} is not a duration such as \"90s\", \"5m\" or \"1h30m\""),
                ),
            },
            "run-as-user" => match value.parse::<i64>() {
                Ok(u) if (1..=i64::from(u32::MAX)).contains(&u) => run_as_user = Some(u),
                Ok(0) => err(
                    key,
                    "the agent never runs as root; give the app's non-zero uid".into(),
                ),
                _ => err(key, format!("{value:?} is not a uid")),
            },
            "reload" => match Reload::parse(value) {
                Ok(r) => reload = Some(r),
                Err(m) => err(key, m),
            },
            "secret" => err(
                key,
                "write kura.dev/secret.<file>: the file name goes after the dot".into(),
            ),
            _ => err(
                key,
                format!(
                    "unknown kura annotation; known: {INJECT}, {SECRET_PREFIX}<file>, {SECRETS}, {MOUNT_PATH}, \
                     {CONTAINERS}, {AGENT}, {REFRESH_INTERVAL}, {FILE_MODE}, {RUN_AS_USER}, {RELOAD}, {REFRESH_NOW}"
                ),
            ),
        }
    }

    let mut seen = BTreeSet::new();
    for f in &files {
        if !seen.insert(f.file.as_str()) {
            err(
                SECRETS,
                format!(
                    "file {:?} is declared twice; each file name may appear once",
                    f.file
                ),
            );
        }
    }

    match inject {
        Some(true) if files.is_empty() => err(
            INJECT,
            format!(
                "the pod opts in but declares no secret; add {SECRET_PREFIX}<file>: <secret-id> or {SECRETS}"
            ),
        ),
        None if !files.is_empty() => err(
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
        agent,
        mount_path,
        containers,
        refresh_interval,
        run_as_user,
        reload,
    }))
}

fn parse_short_form(file: &str, value: &str, mode: FileMode) -> Result<SecretFile, String> {
    validate_file_name(file)?;
    let (secret, key) = match value.split_once('#') {
        Some((s, k)) => (s, Some(k)),
        None => (value, None),
    };
    validate_secret_id(secret)?;
    if key == Some("") {
        return Err("the JSON key after '#' is empty".into());
    }
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

fn list_entry(e: ListEntry, default_mode: FileMode) -> Result<SecretFile, String> {
    validate_file_name(&e.file).map_err(|m| format!("file: {m}"))?;
    validate_secret_id(&e.secret).map_err(|m| format!("secret: {m}"))?;
    if e.key.as_deref() == Some("") {
        return Err("key is empty".into());
    }
    if e.version_stage.is_some() && e.version_id.is_some() {
        return Err("set versionStage or versionId, not both".into());
    }
    for (field, v) in [
        ("versionStage", &e.version_stage),
        ("versionId", &e.version_id),
    ] {
        if let Some(v) = v
            && (v.is_empty() || v.len() > 256 || v.contains(char::is_whitespace))
        {
            return Err(format!("{field} {v:?} is not a version label"));
        }
    }
    let mode = match e.mode {
        Some(m) => FileMode::parse(&m).map_err(|m| format!("mode: {m}"))?,
        None => default_mode,
    };
    Ok(SecretFile {
        file: e.file,
        secret: e.secret,
        key: e.key,
        version_stage: e.version_stage,
        version_id: e.version_id,
        format: e.format.unwrap_or_default(),
        mode,
    })
}

fn validate_mount_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} is not an absolute path"));
    }
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err("the mount path cannot be /".into());
    }
    if trimmed
        .split('/')
        .skip(1)
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(format!("{p:?} has empty, '.' or '..' segments"));
    }
    if p.contains([':', '\0', '\n']) {
        return Err(format!(
            "{p:?} contains a character a mount path cannot hold"
        ));
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
        ) {
            let mut seen = BTreeSet::new();
            let files: Vec<_> = files.into_iter().filter(|f| seen.insert(f.file.clone())).collect();
            let original = PodSecrets {
                files,
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
}
