//! TLS: the serving certificate (reloaded when its files change, keeping the last good pair on a
//! bad one), self-signed certificates for local runs, and the CA + serving certificate that
//! `kura certs` writes. One crypto provider: aws-lc-rs, the AWS SDK's own.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use kura_agent::watch::FileWatch;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::{info, warn};

use crate::telemetry::ResultLabels;

/// TLS errors, naming the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The process-wide crypto provider, installed once.
pub fn provider() -> Arc<CryptoProvider> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    CryptoProvider::get_default()
        .cloned()
        .expect("installed just above")
}

/// A PEM certificate chain and key.
#[derive(Clone)]
pub struct PemPair {
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for PemPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PemPair")
            .field("cert", &self.cert)
            .field("key", &"[REDACTED]")
            .finish()
    }
}

/// Parses and checks a pair: the key must match the certificate.
pub fn certified_key(pair: &PemPair, origin: &str) -> Result<CertifiedKey, Error> {
    let err = |message: String| Error::File {
        path: origin.to_string(),
        message,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pair.cert.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(err("no certificate in the PEM".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(pair.key.as_bytes())
        .map_err(|e| err(format!("private key PEM: {e}")))?;
    CertifiedKey::from_der(certs, key, &provider())
        .map_err(|e| err(format!("key and certificate: {e}")))
}

/// The leaf certificate's notAfter, in Unix seconds.
pub fn not_after(key: &CertifiedKey) -> Option<i64> {
    let leaf = key.cert.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Serves the current certificate; [`CertReloader`] swaps it.
#[derive(Debug)]
pub struct Resolver {
    current: ArcSwap<CertifiedKey>,
    /// Where reload results are counted (`cert-ok`, `cert-refused`), once the server has metrics.
    reloads: OnceLock<Family<ResultLabels, Counter>>,
    /// Where the served certificate's notAfter goes (Unix seconds), once the server has metrics.
    expiry: OnceLock<Gauge>,
}

impl Resolver {
    pub fn new(key: CertifiedKey) -> Arc<Self> {
        Arc::new(Resolver {
            current: ArcSwap::from_pointee(key),
            reloads: OnceLock::new(),
            expiry: OnceLock::new(),
        })
    }

    pub fn set(&self, key: CertifiedKey) {
        self.report_expiry(&key);
        self.current.store(Arc::new(key));
    }

    /// Sets `gauge` to the served certificate's notAfter now and after every reload (the first
    /// call wins), so an alert can fire before it expires, whoever issued it.
    pub fn report_expiry_in(&self, gauge: Gauge) {
        let _ = self.expiry.set(gauge);
        self.report_expiry(&self.current.load());
    }

    fn report_expiry(&self, key: &CertifiedKey) {
        if let (Some(gauge), Some(t)) = (self.expiry.get(), not_after(key)) {
            gauge.set(t);
        }
    }

    /// Counts later reloads in `reloads` (the first call wins).
    pub fn count_reloads_in(&self, reloads: Family<ResultLabels, Counter>) {
        let _ = self.reloads.set(reloads);
    }

    fn counted(&self, result: &str) {
        if let Some(f) = self.reloads.get() {
            f.get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
        }
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The rustls server configuration: TLS 1.2 and 1.3, HTTP/2 and HTTP/1.1.
pub fn server_config(resolver: Arc<Resolver>) -> Result<rustls::ServerConfig, Error> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Watches the certificate and key files and swaps in a new pair when both parse and match.
#[derive(Debug, Clone)]
pub struct CertReloader {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl CertReloader {
    pub fn read(&self) -> Result<CertifiedKey, Error> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| Error::File {
                path: p.display().to_string(),
                message: e.to_string(),
            })
        };
        let pair = PemPair {
            cert: read(&self.cert_path)?,
            key: read(&self.key_path)?,
        };
        certified_key(
            &pair,
            &format!("{} + {}", self.cert_path.display(), self.key_path.display()),
        )
    }

    /// Polls the files every `every` ([`FileWatch`]). A pair written file by file may be seen
    /// half-written (new certificate, old key): that read is refused, and the next change of
    /// the second file triggers another.
    pub async fn watch(self, resolver: Arc<Resolver>, every: Duration) {
        let mut files = FileWatch::new([self.cert_path.clone(), self.key_path.clone()], every);
        loop {
            files.changed().await;
            match self.read() {
                Ok(k) => {
                    resolver.set(k);
                    resolver.counted("cert-ok");
                    info!(cert = %self.cert_path.display(), "TLS certificate reloaded");
                }
                Err(e) => {
                    resolver.counted("cert-refused");
                    warn!(error = %e, "new TLS certificate refused; keeping the last good one")
                }
            }
        }
    }
}

fn days_from_now(days: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(days)
}

/// A self-signed serving certificate for local runs.
pub fn self_signed(names: &[String]) -> Result<PemPair, Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "kura local webhook");
    params.not_before = days_from_now(-1);
    params.not_after = days_from_now(30);
    let cert = params.self_signed(&key)?;
    Ok(PemPair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// What `kura certs` produces.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub ca: PemPair,
    pub serving: PemPair,
}

/// DNS names of a Service, as the API server dials it.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// A CA and a serving certificate for the given DNS names or IP addresses.
pub fn bundle_for(names: Vec<String>, days: i64) -> Result<Bundle, Error> {
    let first = names.first().cloned().unwrap_or_default();
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, format!("kura webhook CA ({first})"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = days_from_now(-1);
    ca.not_after = days_from_now(days * 2);
    let ca_cert = ca.self_signed(&ca_key)?;
    let ca_pem = PemPair {
        cert: ca_cert.pem(),
        key: ca_key.serialize_pem(),
    };
    let serving = serving_cert(names, days, &Issuer::new(ca, ca_key))?;
    Ok(Bundle {
        ca: ca_pem,
        serving,
    })
}

/// A new serving certificate signed by an existing CA, so renewal keeps the `caBundle`.
pub fn renew_with_ca(ca: &PemPair, names: Vec<String>, days: i64) -> Result<Bundle, Error> {
    let key = KeyPair::from_pem(&ca.key)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, key)?;
    let serving = serving_cert(names, days, &issuer)?;
    Ok(Bundle {
        ca: ca.clone(),
        serving,
    })
}

fn serving_cert(
    names: Vec<String>,
    days: i64,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<PemPair, Error> {
    let first = names.first().cloned().unwrap_or_default();
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, first);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = days_from_now(-1);
    params.not_after = days_from_now(days);
    let cert = params.signed_by(&key, issuer)?;
    Ok(PemPair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expiry_gauge_follows_the_served_certificate() {
        let names = vec!["kura.kura-system.svc".to_string()];
        let short = bundle_for(names.clone(), 10).expect("a bundle");
        let long = bundle_for(names, 400).expect("a bundle");
        let key = |b: &Bundle| certified_key(&b.serving, "test").expect("loads");
        let resolver = Resolver::new(key(&short));
        let gauge = Gauge::default();
        resolver.report_expiry_in(gauge.clone());
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let days = |t: i64| (t - now) / 86_400;
        assert!((9..=10).contains(&days(gauge.get())), "{}", gauge.get());
        resolver.set(key(&long));
        assert!((399..=400).contains(&days(gauge.get())), "{}", gauge.get());
    }

    #[test]
    fn self_signed_pairs_load() {
        let p = self_signed(&["localhost".into(), "127.0.0.1".into()]).expect("generate");
        certified_key(&p, "test").expect("loads");
        assert!(!format!("{p:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn mismatched_pairs_are_refused() {
        let a = self_signed(&["a".into()]).expect("a");
        let b = self_signed(&["b".into()]).expect("b");
        let mixed = PemPair {
            cert: a.cert,
            key: b.key,
        };
        let e = certified_key(&mixed, "mixed.pem").unwrap_err().to_string();
        assert!(e.contains("mixed.pem"), "{e}");
        let garbage = PemPair {
            cert: "nope".into(),
            key: "nope".into(),
        };
        assert!(certified_key(&garbage, "g").is_err());
    }
}
