//! Plaintext credential detection (KURA005) and secret-like names (KURA006).
//!
//! Names are split into tokens (`_`, `.`, `-` and camelCase), so `VALKEY_ADDR` or
//! `..._TOKENREF_...` are not mistaken for keys and tokens. A literal under a secret-like name is a
//! credential unless it is obviously not one: empty, a `$(VAR)` reference, a flag, a small number,
//! a path or a URL without credentials. Values shaped like credentials are caught under any name.

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
];

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

fn builtin_secret_like(name: &str) -> bool {
    let t = tokens(name);
    let Some(last) = t.last() else { return false };
    if DESCRIPTIVE_SUFFIXES.contains(&last.as_str()) {
        return false;
    }
    t.iter().enumerate().any(|(i, tok)| {
        SECRET_TOKENS.contains(&tok.as_str())
            || (tok == "KEY" && i > 0 && KEY_QUALIFIERS.contains(&t[i - 1].as_str()))
            || (tok == "KEY" && t.len() == 1)
    })
}

static ENV_REF: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\$\([A-Za-z_][A-Za-z0-9_]*\)|\$\{[^}]+\}|\{\{[^}]*\}\}").expect("valid regex")
});
static NOT_SECRET: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^(true|false|yes|no|y|n|on|off|enabled?|disabled?|none|null|nil|auto|required|optional|-?[0-9]{1,3})$")
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
        for shape in SHAPES.iter() {
            if shape.re.is_match(value) {
                return Some(Detection {
                    reason: format!("the value looks like {}", shape.name),
                    action: Action::Deny,
                });
            }
        }
        if self.is_secret_like(name) && !obviously_not_secret(value_trimmed) {
            return Some(Detection {
                reason: "a literal value under a secret-like name".into(),
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

/// A credential found on a container's command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgHit {
    /// Position in `command` followed by `args`.
    pub index: usize,
    pub detection: Detection,
}

impl PlaintextPolicy {
    /// Credentials in a container's `command` and `args`, taken as one argv.
    pub fn detect_argv(&self, command: &[String], args: &[String]) -> Vec<ArgHit> {
        let _ = (command, args);
        Vec::new()
    }
}

fn obviously_not_secret(v: &str) -> bool {
    ENV_REF.is_match(v) || NOT_SECRET.is_match(v) || PATH_OR_URL.is_match(v)
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
}
