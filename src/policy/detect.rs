//! Plaintext credential detection (KURA005) and secret-like names (KURA006).
//!
//! Decisions go by classes, each explainable in one line (the finding says which):
//!
//! 1. **Shapes**, under any name: a value shaped like an AWS access key, a PEM private key, a
//!    bearer token, a JWT, a GitHub/Slack/Stripe token, a URL with a password, or a storage
//!    connection string with an account key (`AccountKey=`, `SharedAccessKey=`).
//! 2. **Not a credential**, whatever the name: empty, a reference (`$(VAR)`, `${VAR}`,
//!    `{{ }}`), a flag (`true`, `yes`, `1`…), a number (except under a password name), a
//!    duration (`30s`, `1h30m`, `PT5M`), a path, a URL without credentials, a host name or
//!    `host:port`, a label selector (`app=web`), or the name of a Secret object
//!    (`db-credentials`, `hf-token-secret`).
//! 3. **Secret-like names** (tokens split on `_`, `.`, `-` and camelCase: `PASSWORD`, `SECRET`,
//!    `TOKEN`, `COOKIE`, `API_KEY`…; not when the last token describes the value, `..._PATH`,
//!    `..._SECONDS`, `..._AUDIENCE`): any other literal is a credential.
//! 4. **Key-like names** (`..._KEY`, `SALT`, `SIGNATURE` without a qualifier): a credential when
//!    the value is high-entropy (long, mixed, random-looking), as account and signing keys are.
//!
//! Container `command` and `args` get the same classes: `--password=V`, `--password V`,
//! `--db-token V` (flags whose name is secret-like), a database client's `-pV`/`-p V`, and in
//! shell scripts (`sh -c`) `NAME=value` assignments and the same flags.

use std::sync::LazyLock;

use regex::Regex;

use super::file::{Action, PlaintextPolicy};

/// Why a literal looks like a credential, and what the policy does about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    pub reason: String,
    pub action: Action,
}

/// Tokens that alone make a name secret-like.
const SECRET_TOKENS: &[&str] = &[
    "PASSWORD",
    "PASSWORDS",
    "PASSWD",
    "PWD",
    "PASS",
    "PASSPHRASE",
    "SECRET",
    "SECRETS",
    "TOKEN",
    "TOKENS",
    "CREDENTIAL",
    "CREDENTIALS",
    "CREDS",
    "APIKEY",
    "PRIVATEKEY",
    "ACCESSKEY",
    "SECRETKEY",
    "AUTHTOKEN",
    "CLIENTSECRET",
    // Erlang distribution cookies (RabbitMQ, CouchDB, Elixir releases) are shared secrets.
    "COOKIE",
];

/// Tokens that make a name password-like: a number under such a name can be a password.
const PASSWORD_TOKENS: &[&str] = &[
    "PASSWORD",
    "PASSWORDS",
    "PASSWD",
    "PWD",
    "PASS",
    "PASSPHRASE",
];

/// Tokens that make a name key-like: credentials when the value is high-entropy.
const KEYISH_TOKENS: &[&str] = &["KEY", "KEYS", "SALT", "SIGNATURE", "HMAC"];

/// Tokens that make a following `KEY` secret-like (`ACCESS_KEY`, `API_KEY`, …).
const KEY_QUALIFIERS: &[&str] = &[
    "ACCESS",
    "SECRET",
    "API",
    "PRIVATE",
    "ENCRYPTION",
    "SIGNING",
    "MASTER",
    "LICENSE",
    "AUTH",
    "CLIENT",
    "APP",
    "HMAC",
    "JWT",
    "SSH",
    "SESSION",
    "CRYPTO",
    "DECRYPTION",
];

/// A last token that says the value is about a secret, not the secret (`..._PATH`, `..._ENABLED`).
const DESCRIPTIVE_SUFFIXES: &[&str] = &[
    "PATH",
    "FILE",
    "FILES",
    "DIR",
    "DIRECTORY",
    "PREFIX",
    "SUFFIX",
    "MODE",
    "ENABLED",
    "ENABLE",
    "DISABLED",
    "DISABLE",
    "TIMEOUT",
    "TTL",
    "VERSION",
    "TYPE",
    "URL",
    "URI",
    "ENDPOINT",
    "HOST",
    "PORT",
    "ADDR",
    "ADDRESS",
    "LENGTH",
    "LEN",
    "SIZE",
    "COUNT",
    "REF",
    "ALGORITHM",
    "ALG",
    "FORMAT",
    "LOCATION",
    "EXPIRY",
    "EXPIRATION",
    "EXPIRES",
    "ROTATION",
    "INTERVAL",
    "NAME",
    "NAMES",
    "NAMESPACE",
    "HEADER",
    "FIELD",
    "ID",
    "USER",
    "USERNAME",
    "REGION",
    "POLICY",
    "PROVIDER",
    "STRATEGY",
    "LIFETIME",
    "DURATION",
    "RETRIES",
    "MOUNT",
    "KIND",
    "ARN",
    // Units and quantities: `TOKEN_EXPIRY_SECONDS`, `MAX_TOTAL_TOKENS` are numbers.
    "SECONDS",
    "SECS",
    "SEC",
    "MS",
    "MILLIS",
    "MINUTES",
    "MINS",
    "HOURS",
    "DAYS",
    "BYTES",
    "LIMIT",
    "MAX",
    "MIN",
    // Public attributes of a token or key: its audience, issuer, scope, owner.
    "AUDIENCE",
    "AUDIENCES",
    "AUD",
    "ISSUER",
    "SCOPE",
    "SCOPES",
    "SUBJECT",
    "LABEL",
    "SELECTOR",
    "ROLE",
];

/// Splits an env var name into upper-case tokens on `_`, `.`, `-` and camelCase boundaries.
pub fn tokens(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in name.split(|c: char| !c.is_ascii_alphanumeric()) {
        let chars: Vec<char> = part.chars().collect();
        let mut cur = String::new();
        for (i, &c) in chars.iter().enumerate() {
            let prev = i.checked_sub(1).map(|j| chars[j]);
            let next = chars.get(i + 1).copied();
            let boundary = match prev {
                Some(p) => {
                    (p.is_ascii_lowercase() && c.is_ascii_uppercase())
                        || (p.is_ascii_uppercase()
                            && c.is_ascii_uppercase()
                            && next.is_some_and(|n| n.is_ascii_lowercase()))
                }
                None => false,
            };
            if boundary && !cur.is_empty() {
                out.push(std::mem::take(&mut cur).to_ascii_uppercase());
            }
            cur.push(c);
        }
        if !cur.is_empty() {
            out.push(cur.to_ascii_uppercase());
        }
    }
    out
}

/// How strongly a name says its value is secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum NameClass {
    Plain,
    /// `..._KEY`, `SALT`: a credential only when the value is high-entropy.
    KeyLike,
    Secret,
    /// A password name: numbers count too.
    Password,
}

fn name_class(name: &str) -> NameClass {
    let t = tokens(name);
    let Some(last) = t.last() else {
        return NameClass::Plain;
    };
    if DESCRIPTIVE_SUFFIXES.contains(&last.as_str())
        || t.first()
            .is_some_and(|f| f == "MAX" || f == "MIN" || f == "NUM")
    {
        return NameClass::Plain;
    }
    let mut class = NameClass::Plain;
    for (i, tok) in t.iter().enumerate() {
        let tok = tok.as_str();
        let c = if PASSWORD_TOKENS.contains(&tok) {
            NameClass::Password
        } else if SECRET_TOKENS.contains(&tok)
            || (tok == "KEY"
                && (t.len() == 1 || (i > 0 && KEY_QUALIFIERS.contains(&t[i - 1].as_str()))))
        {
            NameClass::Secret
        } else if KEYISH_TOKENS.contains(&tok) {
            NameClass::KeyLike
        } else {
            NameClass::Plain
        };
        class = class.max(c);
    }
    class
}

fn builtin_secret_like(name: &str) -> bool {
    name_class(name) >= NameClass::Secret
}

static ENV_REF: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\$\([A-Za-z_][A-Za-z0-9_]*\)|\$\{[^}]+\}|\{\{[^}]*\}\}").expect("valid regex")
});
static NOT_SECRET: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^(true|false|yes|no|y|n|on|off|enabled?|disabled?|none|null|nil|auto|required|optional|-?[01])$")
        .expect("valid regex")
});
static NUMBER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?$").expect("valid regex")
});
static DURATION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h|d|w))+$|^P(T?[0-9]+[YMWDHS])+$|^PT([0-9]+[HMS])+$")
        .expect("valid regex")
});
/// A host name with at least one dot (every label DNS-1123, the last alphabetic), an IPv4
/// address, or either of them (or a single DNS label) with a port.
static HOST: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(([a-z0-9]([a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,63}\.?|[0-9]{1,3}(\.[0-9]{1,3}){3})(:[0-9]{1,5})?$|^[a-z0-9]([a-z0-9-]*[a-z0-9])?:[0-9]{1,5}$")
        .expect("valid regex")
});
/// `key=value[,key=value]` and `key in (a,b)` label selectors, with prefixed keys.
static SELECTOR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^([a-z0-9.-]+/)?[A-Za-z0-9][A-Za-z0-9_.-]*(==?|!=)[A-Za-z0-9_.-]*(,([a-z0-9.-]+/)?[A-Za-z0-9][A-Za-z0-9_.-]*(==?|!=)[A-Za-z0-9_.-]*)*$")
        .expect("valid regex")
});
/// The name of a Secret object: a DNS-1123 name of two or more words, the last of which says
/// what it holds, as Kubernetes names go (`db-credentials`, `hf-token-secret`, `ingress-tls`).
static SECRET_OBJECT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]+(-[a-z0-9]+)*-(secret|secrets|creds|credentials|tls|token|tokens|keys?|certs?)$")
        .expect("valid regex")
});

static PATH_OR_URL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(/|\./|~/|file://)\S*$|^[a-z][a-z0-9+.-]*://[^\s@]*$").expect("valid regex")
});

struct Shape {
    name: &'static str,
    re: Regex,
}

static SHAPES: LazyLock<Vec<Shape>> = LazyLock::new(|| {
    let s = |name, re: &str| Shape {
        name,
        re: Regex::new(re).expect("valid regex"),
    };
    vec![
        s("an AWS access key id", r"\b(AKIA|ASIA)[A-Z0-9]{16}\b"),
        s(
            "a PEM private key",
            r"-----BEGIN ([A-Z0-9]+ )*PRIVATE KEY-----",
        ),
        s(
            "a bearer token",
            r"(?i)\bbearer\s+[A-Za-z0-9\-._~+/]{16,}=*",
        ),
        s(
            "a JSON Web Token",
            r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
        ),
        s(
            "a GitHub token",
            r"\b(gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})",
        ),
        s("a Slack token", r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
        s("a Stripe live key", r"\b[rs]k_live_[A-Za-z0-9]{16,}"),
        s(
            "a URL with a password",
            r"[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+:[^/\s@$]+@",
        ),
        s(
            "a storage or service-bus connection string with an account key",
            r"(?i)(^|;)\s*(AccountKey|SharedAccessKey|SharedAccessSignature)\s*=\s*[^;\s$]",
        ),
    ]
});

static CONNECTION_STRING: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)(^|;)\s*(password|pwd)\s*=\s*[^;\s$]").expect("valid regex"));

impl PlaintextPolicy {
    /// Whether an env var name suggests its value is a secret.
    pub fn is_secret_like(&self, name: &str) -> bool {
        if self.ignore_names.iter().any(|r| r.is_match(name)) {
            return false;
        }
        builtin_secret_like(name)
            || self
                .extra_secret_like_names
                .iter()
                .any(|r| r.is_match(name))
    }

    /// Whether a literal env value is a plaintext credential. The reason never quotes the value.
    pub fn detect(&self, name: &str, value: &str) -> Option<Detection> {
        let value_trimmed = value.trim();
        if value_trimmed.is_empty() {
            return None;
        }
        if let Some(d) = shape(value) {
            return Some(d);
        }
        let class = if self.ignore_names.iter().any(|r| r.is_match(name)) {
            NameClass::Plain
        } else if self
            .extra_secret_like_names
            .iter()
            .any(|r| r.is_match(name))
        {
            NameClass::Secret.max(name_class(name))
        } else {
            name_class(name)
        };
        let credential = match class {
            NameClass::Plain => false,
            NameClass::KeyLike => {
                not_a_credential(value_trimmed, false).is_none() && high_entropy(value_trimmed)
            }
            NameClass::Secret | NameClass::Password => {
                not_a_credential(value_trimmed, class == NameClass::Password).is_none()
            }
        };
        if credential {
            let reason = match class {
                NameClass::KeyLike => "a high-entropy literal under a key-like name",
                _ => "a literal value under a secret-like name",
            };
            return Some(Detection {
                reason: reason.into(),
                action: Action::Deny,
            });
        }
        if self.connection_strings != Action::Ignore && CONNECTION_STRING.is_match(value) {
            return Some(Detection {
                reason: "the value is a connection string with a password".into(),
                action: self.connection_strings,
            });
        }
        None
    }
}

/// A value shaped like a credential, whatever its name.
fn shape(value: &str) -> Option<Detection> {
    SHAPES
        .iter()
        .find(|s| s.re.is_match(value))
        .map(|s| Detection {
            reason: format!("the value looks like {}", s.name),
            action: Action::Deny,
        })
}

/// Why a literal is not a credential, or `None` when it may be one. `password`: the name says
/// password, so a number can be one.
pub fn not_a_credential(v: &str, password: bool) -> Option<&'static str> {
    Some(if ENV_REF.is_match(v) || v.starts_with('$') {
        "a reference"
    } else if NOT_SECRET.is_match(v) {
        "a flag"
    } else if NUMBER.is_match(v) {
        if password {
            return None;
        }
        "a number"
    } else if DURATION.is_match(v) {
        "a duration"
    } else if PATH_OR_URL.is_match(v) {
        "a path or a URL without credentials"
    } else if HOST.is_match(v) {
        "a host name"
    } else if SELECTOR.is_match(v) {
        "a label selector"
    } else if SECRET_OBJECT.is_match(v) {
        "the name of a Secret object"
    } else {
        return None;
    })
}

/// Random-looking: at least 16 characters of a key alphabet (base64, base64url, hex), from at
/// least two character classes, with Shannon entropy of at least 3.5 bits per character
/// (words, names and lists stay under it or outside the alphabet; base64 and hex keys do not).
fn high_entropy(v: &str) -> bool {
    let key_alphabet = |c: char| c.is_ascii_alphanumeric() || "+/=_-.~".contains(c);
    if v.len() < 16 || !v.chars().all(key_alphabet) {
        return false;
    }
    let classes = [
        v.chars().any(|c| c.is_ascii_lowercase()),
        v.chars().any(|c| c.is_ascii_uppercase()),
        v.chars().any(|c| c.is_ascii_digit()),
        v.chars().any(|c| !c.is_ascii_alphanumeric()),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if classes < 2 {
        return false;
    }
    let mut counts = std::collections::HashMap::new();
    for c in v.chars() {
        *counts.entry(c).or_insert(0usize) += 1;
    }
    let n = v.chars().count() as f64;
    let entropy: f64 = counts
        .values()
        .map(|&k| {
            let p = k as f64 / n;
            -p * p.log2()
        })
        .sum();
    entropy >= 3.5
}

/// A credential found on a container's command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgHit {
    /// Position in `command` followed by `args`.
    pub index: usize,
    pub detection: Detection,
}

/// Database clients whose `-p` takes a password (`mysql -pX`, `mongosh -p X`), and
/// `redis-cli -a`.
fn short_password_flag(program: &str) -> Option<&'static str> {
    let base = program.rsplit('/').next().unwrap_or(program);
    if base.starts_with("mysql")
        || base.starts_with("mariadb")
        || base.starts_with("mongo")
        || base == "sshpass"
    {
        Some("-p")
    } else if base == "redis-cli" {
        Some("-a")
    } else {
        None
    }
}

static ASSIGNMENT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"(?:^|[\s;&|(])(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|'[^']*'|[^\s;&|)]*)"#,
    )
    .expect("valid regex")
});

impl PlaintextPolicy {
    /// Credentials in a container's `command` and `args`, taken as one argv.
    pub fn detect_argv(&self, command: &[String], args: &[String]) -> Vec<ArgHit> {
        let argv: Vec<&str> = command.iter().chain(args).map(String::as_str).collect();
        let mut hits = Vec::new();
        let mut push = |index: usize, detection: Option<Detection>| {
            if let Some(detection) = detection
                && !hits.iter().any(|h: &ArgHit| h.index == index)
            {
                hits.push(ArgHit { index, detection });
            }
        };
        for (i, d) in self.flags(&argv) {
            push(i, Some(d));
        }
        for (i, arg) in argv.iter().enumerate() {
            push(i, shape(arg));
            // A shell script: `sh -c '...'`, or any argument with a newline.
            let is_script = arg.contains('\n')
                || (i > 0 && argv[i - 1] == "-c" && arg.contains(char::is_whitespace));
            if is_script {
                push(i, self.detect_script(arg));
            }
        }
        hits
    }

    /// `--password=V`, `--password V` (a flag whose name is secret-like) and a database
    /// client's `-pV`/`-p V`, over one argv; (index of the value, why).
    fn flags(&self, argv: &[&str]) -> Vec<(usize, Detection)> {
        let mut out = Vec::new();
        let mut program: Option<&str> = argv.first().copied();
        for (i, arg) in argv.iter().enumerate() {
            // In scripts the program changes with each command: a database client named
            // anywhere starts one.
            if i > 0 && short_password_flag(arg).is_some() {
                program = Some(arg);
            }
            let next = argv.get(i + 1).filter(|n| !n.starts_with('-'));
            if let Some(flag) = arg.strip_prefix("--") {
                let (name, value, at) = match flag.split_once('=') {
                    Some((n, v)) => (n, Some(v), i),
                    None => (flag, next.copied(), i + 1),
                };
                let class = name_class(name);
                if let Some(v) = value
                    && class >= NameClass::Secret
                    && !v.is_empty()
                    && !self.ignore_names.iter().any(|r| r.is_match(name))
                    && not_a_credential(v.trim_matches(['"', '\'']), class == NameClass::Password)
                        .is_none()
                {
                    out.push((
                        at,
                        Detection {
                            reason: format!("the --{name} flag is given a literal value"),
                            action: Action::Deny,
                        },
                    ));
                }
                continue;
            }
            let Some(short) = program.and_then(short_password_flag) else {
                continue;
            };
            let (value, at) = match arg.strip_prefix(short) {
                Some("") => (next.copied(), i + 1),
                Some(v) if !arg.starts_with("--") => (Some(v), i),
                _ => (None, i),
            };
            if let Some(v) = value
                && not_a_credential(v.trim_matches(['"', '\'']), true).is_none()
            {
                out.push((
                    at,
                    Detection {
                        reason: format!(
                            "a database client's {short} flag is given a literal password"
                        ),
                        action: Action::Deny,
                    },
                ));
            }
        }
        out
    }

    /// A shell script: `NAME=value` assignments (`export`, `PASSWORD=x exec app`) judged as env
    /// values, and the flags of its commands.
    fn detect_script(&self, script: &str) -> Option<Detection> {
        for c in ASSIGNMENT.captures_iter(script) {
            let name = &c[1];
            let value = c[2].trim_matches(['"', '\'']);
            if let Some(d) = self.detect(name, value) {
                return Some(Detection {
                    reason: format!("the script sets {name}: {}", d.reason),
                    action: d.action,
                });
            }
        }
        let words: Vec<&str> = script
            .split(|c: char| c.is_whitespace() || c == ';')
            .filter(|w| !w.is_empty())
            .collect();
        self.flags(&words)
            .into_iter()
            .next()
            .map(|(_, d)| Detection {
                reason: format!("in the script, {}", d.reason),
                action: d.action,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> PlaintextPolicy {
        PlaintextPolicy::default()
    }

    #[test]
    fn tokenizes_names() {
        assert_eq!(tokens("MYSQL_ROOT_PASSWORD"), ["MYSQL", "ROOT", "PASSWORD"]);
        assert_eq!(tokens("apiKey"), ["API", "KEY"]);
        assert_eq!(tokens("APIKey"), ["API", "KEY"]);
        assert_eq!(
            tokens("discovery.seed_hosts"),
            ["DISCOVERY", "SEED", "HOSTS"]
        );
        assert_eq!(tokens("VALKEY_ADDR"), ["VALKEY", "ADDR"]);
    }

    #[test]
    fn secret_like_names() {
        let p = policy();
        for yes in [
            "POSTGRES_PASSWORD",
            "MINIO_ACCESS_KEY",
            "MINIO_SECRET_KEY",
            "SECRET_KEY_BASE",
            "apiKey",
            "GITHUB_TOKEN",
            "DB_PASS",
            "client_secret",
            "AWS_SECRET_ACCESS_KEY",
            "STRIPE_API_KEY",
        ] {
            assert!(p.is_secret_like(yes), "{yes}");
        }
        for no in [
            "VALKEY_ADDR",
            "ARGOCD_APPLICATIONSET_CONTROLLER_TOKENREF_STRICT_MODE",
            "ARGOCD_REDIS_KEY_PREFIX",
            "ARGOCD_SERVER_REPO_SERVER_CLIENT_CERT_KEY_PATH",
            "ARGOCD_SERVER_DISABLE_AUTH",
            "AGENT_INJECT_TLS_AUTO",
            "ARGOCD_TLS_CIPHERS",
            "PASSWORD_FILE",
            "TOKEN_URL",
            "HOME",
            "SSH_KNOWN_HOSTS",
            "MONKEY",
        ] {
            assert!(!p.is_secret_like(no), "{no}");
        }
    }

    #[test]
    fn literals_under_secret_like_names() {
        let p = policy();
        assert!(p.detect("POSTGRES_PASSWORD", "postgres").is_some());
        assert!(p.detect("MINIO_ACCESS_KEY", "minio").is_some());
        for (name, value) in [
            ("POSTGRES_PASSWORD", ""),
            ("POSTGRES_PASSWORD", "$(DB_PASSWORD)"),
            ("POSTGRES_PASSWORD", "${DB_PASSWORD}"),
            ("MYSQL_ALLOW_EMPTY_PASSWORD", "1"),
            ("REQUIRE_TOKEN", "true"),
            ("API_TOKEN", "/var/run/secrets/token"),
            ("VALKEY_ADDR", "valkey-cart:6379"),
            ("LOG_LEVEL", "debug"),
        ] {
            assert_eq!(p.detect(name, value), None, "{name}={value}");
        }
    }

    #[test]
    fn credential_shapes_under_any_name() {
        let p = policy();
        let cases = [
            ("X", "AKIAIOSFODNN7EXAMPLE", "AWS access key"),
            ("X", "-----BEGIN RSA PRIVATE KEY-----\nMIIE...", "PEM"),
            ("X", "-----BEGIN PRIVATE KEY-----", "PEM"),
            (
                "HEADERS",
                "Authorization: Bearer abcdefghijklmnopqrstuvwx",
                "bearer",
            ),
            (
                "X",
                "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
                "JSON Web",
            ),
            ("X", "ghp_abcdefghijklmnopqrstuvwxyz0123456789", "GitHub"),
            (
                "DATABASE_URL",
                "postgres://app:hunter2@db:5432/app",
                "URL with a password",
            ),
        ];
        for (name, value, needle) in cases {
            let d = p
                .detect(name, value)
                .unwrap_or_else(|| panic!("{value} not detected"));
            assert!(d.reason.contains(needle), "{}", d.reason);
            assert!(
                !d.reason.contains(value),
                "the reason must not quote the value"
            );
        }
        assert_eq!(
            p.detect("DATABASE_URL", "postgres://app:$(DB_PASS)@db/app"),
            None
        );
        assert_eq!(p.detect("ENDPOINT", "https://example.com/path"), None);
        assert_eq!(p.detect("CERT", "-----BEGIN CERTIFICATE-----"), None);
    }

    #[test]
    fn connection_strings_follow_their_own_action() {
        let p = policy();
        let d = p
            .detect(
                "DB_CONNECTION_STRING",
                "Host=postgresql;Username=u;Password=p;Database=d",
            )
            .expect("found");
        assert_eq!(d.action, Action::Warn);
        let off = PlaintextPolicy {
            connection_strings: Action::Ignore,
            ..policy()
        };
        assert_eq!(
            off.detect("DB_CONNECTION_STRING", "Host=h;Password=p"),
            None
        );
    }

    /// Issue 18's false denials: counts, limits, durations, audiences and names of objects under
    /// secret-like names are not credentials, and each non-finding has its class.
    #[test]
    fn values_that_are_not_credentials_under_secret_like_names() {
        let p = policy();
        for (name, value) in [
            ("MAX_TOTAL_TOKENS", "2048"),
            ("MAX_BATCH_PREFILL_TOKENS", "4096"),
            ("TOKEN_EXPIRY_SECONDS", "3600"),
            ("TOKEN_LIFETIME", "24h"),
            ("ACCESS_TOKEN_TTL", "1h30m"),
            ("REFRESH_TOKEN_VALIDITY", "PT15M"),
            ("SESSION_TOKEN_TIMEOUT", "900"),
            ("TOKEN_AUDIENCE", "sts.amazonaws.com"),
            ("SA_TOKEN_AUDIENCE", "vault"),
            ("SECRET_NAME", "db-credentials"),
            ("JWT_SECRET", "app-jwt-secret"),
            ("TLS_SECRET", "ingress-tls"),
            ("HF_TOKEN_SECRET", "hf-token-secret"),
            ("API_KEY_SECRET_REF", "payments-api-keys"),
            ("TOKEN_SELECTOR", "app.kubernetes.io/name=vault"),
            ("SECRET_LABEL", "team=payments"),
            (
                "REDIS_PASSWORD_HOST",
                "redis-master.cache.svc.cluster.local",
            ),
            ("TOKEN_SERVER", "auth.example.com:8443"),
            ("CLIENT_SECRET", "${CLIENT_SECRET}"),
            ("API_TOKEN", "1"),
        ] {
            assert_eq!(p.detect(name, value), None, "{name}={value}");
        }
        assert_eq!(not_a_credential("2048", false), Some("a number"));
        assert_eq!(not_a_credential("30s", false), Some("a duration"));
        assert_eq!(
            not_a_credential("db.internal.example.com", false),
            Some("a host name")
        );
        assert_eq!(
            not_a_credential("db-credentials", false),
            Some("the name of a Secret object")
        );
        assert_eq!(
            not_a_credential("app=web,tier=db", false),
            Some("a label selector")
        );
    }

    /// Demo passwords stay credentials: numbers under password names, words, and `fake_password`.
    #[test]
    fn literals_that_stay_credentials() {
        let p = policy();
        for (name, value) in [
            ("MYSQL_ROOT_PASSWORD", "123456"),
            ("MYSQL_ROOT_PASSWORD", "migration"),
            ("MYSQL_ROOT_PASSWORD", "fake_password"),
            ("POSTGRES_PASSWORD", "postgres"),
            ("ORDER_QUEUE_PASSWORD", "password"),
            ("GITHUB_TOKEN", "0123456789abcdef"),
            ("SECRET_KEY_BASE", "f3b8c1d2e4a5968778695a4b3c2d1e0f"),
        ] {
            assert!(p.detect(name, value).is_some(), "{name}={value}");
        }
    }

    #[test]
    fn erlang_cookies_and_storage_account_keys() {
        let p = policy();
        let d = p
            .detect("RABBITMQ_ERLANG_COOKIE", "mycookie")
            .expect("a cookie");
        assert!(d.reason.contains("secret-like name"), "{}", d.reason);
        assert!(
            p.detect("RELEASE_COOKIE", "secret-cookie-change-me")
                .is_some()
        );
        assert_eq!(p.detect("SESSION_COOKIE_SECURE", "true"), None);
        assert_eq!(p.detect("COOKIE_NAME", "session"), None);
        let key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
        let d = p
            .detect("AZURE_STORAGE_ACCOUNT_KEY", key)
            .expect("an account key");
        assert!(d.reason.contains("high-entropy"), "{}", d.reason);
        assert_eq!(
            p.detect("AZURE_STORAGE_ACCOUNT_KEY", "$(STORAGE_KEY)"),
            None
        );
        // A key-like name with a word or a list is not a key.
        assert_eq!(p.detect("PARTITION_KEY", "customerId"), None);
        assert_eq!(
            p.detect("SORT_KEYS", "created_at,updated_at,deleted_at"),
            None
        );
        let conn = format!(
            "DefaultEndpointsProtocol=https;AccountName=store;AccountKey={key};EndpointSuffix=core.windows.net"
        );
        let d = p
            .detect("STORAGE_CONNECTION", &conn)
            .expect("a connection string");
        assert!(d.reason.contains("account key"), "{}", d.reason);
        assert!(!d.reason.contains(key));
    }

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn credentials_in_args_and_commands() {
        let p = policy();
        let hits = p.detect_argv(
            &[],
            &argv(&["--username", "username", "--password", "password"]),
        );
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!(hits[0].index, 3);
        assert!(hits[0].detection.reason.contains("--password"), "{hits:?}");
        let hits = p.detect_argv(
            &argv(&["server"]),
            &argv(&["--db-password=hunter2", "--port=8080"]),
        );
        assert_eq!(hits.iter().map(|h| h.index).collect::<Vec<_>>(), [1]);
        let hits = p.detect_argv(&argv(&["mysql", "-uroot", "-psecret", "-h", "db"]), &[]);
        assert_eq!(hits.iter().map(|h| h.index).collect::<Vec<_>>(), [2]);
        let hits = p.detect_argv(&argv(&["mongosh", "-u", "admin", "-p", "s3cr3t"]), &[]);
        assert_eq!(hits.iter().map(|h| h.index).collect::<Vec<_>>(), [4]);
        let hits = p.detect_argv(
            &argv(&["sh", "-c"]),
            &argv(&["PASSWORD=hunter2 exec /app --serve"]),
        );
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert!(hits[0].detection.reason.contains("PASSWORD"), "{hits:?}");
        let hits = p.detect_argv(
            &argv(&[
                "/bin/bash",
                "-c",
                "until mysqladmin ping -uroot -proot; do sleep 1; done",
            ]),
            &[],
        );
        assert_eq!(hits.len(), 1, "{hits:?}");
        let hits = p.detect_argv(
            &argv(&["sh", "-c", "export API_TOKEN=abcdef0123456789\nexec app"]),
            &[],
        );
        assert_eq!(hits.len(), 1, "{hits:?}");
        let hits = p.detect_argv(&[], &argv(&["--endpoint=postgres://u:pw@db:5432/app"]));
        assert!(
            hits[0].detection.reason.contains("URL with a password"),
            "{hits:?}"
        );
    }

    #[test]
    fn args_that_are_not_credentials() {
        let p = policy();
        for (command, args) in [
            (vec!["redis-cli"], vec!["-p", "6379", "ping"]),
            (vec!["ssh"], vec!["-p", "22", "host"]),
            (vec!["mysqladmin"], vec!["ping", "-p$(MYSQL_ROOT_PASSWORD)"]),
            (
                vec!["sh", "-c"],
                vec!["mysql -uroot -p\"$MYSQL_ROOT_PASSWORD\" -e 'SELECT 1'"],
            ),
            (
                vec!["sh", "-c"],
                vec!["PASSWORD=$(cat /run/secrets/pw) exec /app"],
            ),
            (
                vec!["/cloud_sql_proxy"],
                vec!["-credential_file=/secrets/cloudsql/key.json"],
            ),
            (
                vec!["app"],
                vec!["--token-file=/var/run/secrets/token", "--max-tokens=4096"],
            ),
            (
                vec!["app"],
                vec![
                    "--password-file",
                    "/etc/app/pw",
                    "--secret-name",
                    "app-secret",
                ],
            ),
            (vec!["app"], vec!["--token", "--verbose"]),
            (
                vec!["vault"],
                vec!["agent", "-config=/etc/vault/config.hcl"],
            ),
        ] {
            let hits = p.detect_argv(&argv(&command), &argv(&args));
            assert!(hits.is_empty(), "{command:?} {args:?}: {hits:?}");
        }
    }
}
