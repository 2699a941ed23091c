//! Validated settings the webhook runs with, built from the command line before any socket is
//! bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kura_agent::store::StoreSetting;

use crate::inject::InjectConfig;
use crate::policy::{Policy, PolicyError};

/// The policy file's policy, or the built-in one without a file.
pub fn load_policy(path: Option<&Path>) -> Result<Policy, PolicyError> {
    match path {
        Some(p) => Policy::load(p),
        None => Ok(Policy::default()),
    }
}

/// Where the serving certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// A certificate for localhost made at start (local runs only).
    SelfSigned,
    /// PEM files, re-read when they change.
    Files { cert: PathBuf, key: PathBuf },
}

/// Everything `kura serve` runs with, validated: building one reads the policy file and
/// nothing else; binding sockets, opening the store and reaching the cluster come after.
#[derive(Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub tls: TlsSource,
    /// The policy in force at start: the file's (watched for changes), or the built-in one.
    pub policy: Policy,
    pub policy_file: Option<PathBuf>,
    pub store: StoreSetting,
    pub inject: InjectConfig,
    /// Whether to read namespace labels from the cluster.
    pub watch_namespaces: bool,
    /// How often the certificate and policy files are polled for changes.
    pub watch_interval: Duration,
    pub shutdown: crate::shutdown::Timing,
    /// Connection cap and timeouts of the admission listener.
    pub limits: crate::server::Limits,
    /// The version service's listener, when on (contract §8).
    pub version_service: Option<VersionService>,
}

/// The version service's settings (`--version-service-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionService {
    pub listen: SocketAddr,
    /// How long versions learned from AWS are trusted.
    pub ttl: Duration,
}

/// Reads the PEM CA given to agents for the version service; refuses a file without a
/// certificate.
pub fn read_ca(path: &Path) -> Result<String, Error> {
    let flag = "version-service-ca";
    let text = std::fs::read_to_string(path).map_err(|e| Error::Invalid {
        flag,
        message: format!("{}: {e}", path.display()),
    })?;
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(Error::Invalid {
            flag,
            message: format!("{}: no PEM certificate in it", path.display()),
        });
    }
    Ok(text)
}

/// A setting that cannot be used; names the flag.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--{flag}: {value:?} is not a Kubernetes quantity (such as 16Mi, 0.5Gi or 5m)")]
    Quantity { flag: &'static str, value: String },
    #[error("--{flag} must be more than zero")]
    Zero { flag: &'static str },
    #[error("--{flag} is required without --self-signed")]
    Missing { flag: &'static str },
    #[error("--{flag}: {message}")]
    Invalid { flag: &'static str, message: String },
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

// The injection's settings are the inject module's; what the command line can get wrong
// about them is checked here, with the other settings.
impl InjectConfig {
    /// Checks what the API server would otherwise refuse only when a pod is created: the
    /// resource quantities, the agent image and the agent's store setting.
    pub fn validate(&self) -> Result<(), Error> {
        let r = &self.resources;
        let quantities = [
            ("volume-size", Some(&self.volume_size_limit)),
            ("agent-cpu-request", Some(&r.cpu_request)),
            ("agent-memory-request", Some(&r.memory_request)),
            ("agent-memory-limit", Some(&r.memory_limit)),
            ("agent-cpu-limit", r.cpu_limit.as_ref()),
        ];
        for (flag, value) in quantities {
            if let Some(v) = value.filter(|v| !is_quantity(v)) {
                return Err(Error::Quantity {
                    flag,
                    value: v.clone(),
                });
            }
        }
        if self.agent_image.trim().is_empty() {
            return Err(Error::Invalid {
                flag: "agent-image",
                message: "empty".into(),
            });
        }
        if let Some(s) = &self.agent_store {
            s.parse::<StoreSetting>().map_err(|e| Error::Invalid {
                flag: "agent-store",
                message: e.to_string(),
            })?;
        }
        Ok(())
    }
}

/// Whether `s` is a non-negative Kubernetes resource quantity: a decimal number and a suffix,
/// binary (`Ki` … `Ei`), decimal (`n`, `u`, `m`, `k`, `M` … `E`) or an exponent (`e3`, `E-2`).
pub fn is_quantity(s: &str) -> bool {
    let s = s.strip_prefix('+').unwrap_or(s);
    let end = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(end);
    let digits = number.chars().filter(char::is_ascii_digit).count();
    if digits == 0 || number.len() - digits > 1 {
        return false;
    }
    const SUFFIXES: [&str; 16] = [
        "", "n", "u", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    if SUFFIXES.contains(&suffix) {
        return true;
    }
    let Some(exp) = suffix.strip_prefix(['e', 'E']) else {
        return false;
    };
    let exp = exp.strip_prefix(['+', '-']).unwrap_or(exp);
    !exp.is_empty() && exp.chars().all(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_what_kubernetes_accepts() {
        for ok in [
            "4Mi", "16Mi", "5m", "0.5", ".5", "1", "+2Gi", "1e3", "1E-2", "100k", "2Ei", "3n",
        ] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in [
            "", "Mi", "4MB", "4 Mi", "-1", "1.2.3", "4mi", "1e", "1e+", "0x10", "1Mi ", "abc",
        ] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn the_defaults_validate_and_a_bad_quantity_names_its_flag() {
        InjectConfig::default()
            .validate()
            .expect("defaults are valid");
        let mut c = InjectConfig::default();
        c.resources.cpu_limit = Some("half".into());
        let e = c.validate().unwrap_err();
        assert!(
            matches!(
                e,
                Error::Quantity {
                    flag: "agent-cpu-limit",
                    ..
                }
            ),
            "{e}"
        );
        let c = InjectConfig {
            agent_store: Some("s3".into()),
            ..InjectConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(Error::Invalid {
                flag: "agent-store",
                ..
            })
        ));
    }
}
