//! The agent's client of the version service (contract §8): one `POST /v1/versions` per refresh
//! interval, over HTTPS that trusts only the CA the webhook's patch gave the agent, with the
//! pod's projected service-account token.
//!
//! It is built from the HTTP and TLS crates the AWS SDK already brings into the agent (hyper's
//! HTTP/1.1 client connection over tokio-rustls, aws-lc-rs), not a second HTTP stack: one
//! connection per check (a check happens once an interval, so a pool would only hold memory),
//! the whole exchange bounded by [`CLIENT_TIMEOUT`], the answer body bounded by
//! [`MAX_ANSWER_BYTES`] and checked against the question before the agent acts on it. The token
//! is re-read from its file for every check (the kubelet rotates it) and never appears in an
//! error, a log line or a `Debug` output.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::versions::{
    CLIENT_TIMEOUT, ErrorAnswer, MAX_REFERENCES, PATH, VersionAnswer, VersionRef, VersionsAnswer,
    VersionsRequest,
};

/// Largest answer the agent reads: [`MAX_REFERENCES`] answers of a few hundred bytes each fit
/// several times over.
pub const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// Longest part of a service's error message that is repeated in the agent's errors.
const MAX_MESSAGE_CHARS: usize = 300;

/// A client that could not be set up, or a check that failed. Names the service's URL and what
/// went wrong; never the token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("version service URL {url:?}: {message}")]
    Url { url: String, message: String },
    #[error("version service CA: {0}")]
    Ca(String),
    #[error("version service {url}: {failure}")]
    Check { url: Arc<str>, failure: Failure },
}

impl Error {
    /// What went wrong with a check (`None` for a setup error).
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            Error::Check { failure, .. } => Some(failure),
            _ => None,
        }
    }
}

/// Why a check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("cannot read the token file {}: {message}", .path.display())]
    Token { path: PathBuf, message: String },
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    #[error("HTTP exchange failed: {0}")]
    Http(String),
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("the answer is larger than {MAX_ANSWER_BYTES} bytes")]
    TooLarge,
    #[error("the answer is not a versions answer: {0}")]
    Malformed(String),
    #[error("the answer does not match the question: {0}")]
    Mismatch(String),
    #[error("{0} references to check; the service takes at most {MAX_REFERENCES} a request")]
    TooMany(usize),
}

/// The version service as the agent reaches it.
pub struct VersionClient {
    /// The URL as configured, for messages.
    url: Arc<str>,
    /// Where to connect.
    host: String,
    port: u16,
    /// The `Host` header.
    authority: String,
    /// The request target: the URL's path (without a trailing `/`) and [`PATH`].
    target: String,
    server_name: ServerName<'static>,
    tls: TlsConnector,
    token_file: PathBuf,
    timeout: Duration,
}

impl std::fmt::Debug for VersionClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VersionClient")
            .field("url", &self.url)
            .field("token_file", &self.token_file)
            .finish_non_exhaustive()
    }
}

impl VersionClient {
    /// A client for `url` (`https://host[:port][/base]`) trusting only the certificates in
    /// `ca_pem`, presenting the token read from `token_file` at each check.
    pub fn new(url: &str, ca_pem: &str, token_file: PathBuf) -> Result<Self, Error> {
        let bad = |message: &str| Error::Url {
            url: url.to_string(),
            message: message.to_string(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|_| bad("not a URL such as https://kura.kura-system.svc:8444"))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("the version service is reached over https:// only"));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| bad("no host in it"))?
            .as_str()
            .to_string();
        if authority.contains('@') {
            return Err(bad("credentials in the URL are not accepted"));
        }
        if uri.query().is_some() {
            return Err(bad("a query is not accepted"));
        }
        let host = uri
            .host()
            .ok_or_else(|| bad("no host in it"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let server_name = ServerName::try_from(host.clone())
            .map_err(|_| bad("its host is neither a DNS name nor an IP address"))?;
        let target = format!("{}{PATH}", uri.path().trim_end_matches('/'));

        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| Error::Ca(format!("not PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| Error::Ca(format!("a certificate cannot be used: {e}")))?;
        }
        if roots.is_empty() {
            return Err(Error::Ca("no PEM certificate in it".into()));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Ca(format!("no TLS version available: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(VersionClient {
            url: url.into(),
            port: uri.port_u16().unwrap_or(443),
            host,
            authority,
            target,
            server_name,
            tls: TlsConnector::from(Arc::new(config)),
            token_file,
            timeout: CLIENT_TIMEOUT,
        })
    }

    /// The service's URL as configured.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Asks which versions the references currently resolve to. The answers are in request
    /// order, one per reference, each about the reference asked; anything else is an error.
    pub async fn check(&self, request: &VersionsRequest) -> Result<Vec<VersionAnswer>, Error> {
        self.check_inner(request)
            .await
            .map_err(|failure| Error::Check {
                url: self.url.clone(),
                failure,
            })
    }

    async fn check_inner(&self, request: &VersionsRequest) -> Result<Vec<VersionAnswer>, Failure> {
        if request.references.len() > MAX_REFERENCES {
            return Err(Failure::TooMany(request.references.len()));
        }
        let auth = bearer(&self.token_file)?;
        let body = serde_json::to_vec(request).expect("a versions request always serializes");
        let (status, body) = tokio::time::timeout(self.timeout, self.exchange(auth, body))
            .await
            .map_err(|_| Failure::Timeout(self.timeout))??;
        if status != StatusCode::OK {
            let message = serde_json::from_slice::<ErrorAnswer>(&body)
                .map(|a| {
                    if a.refused.is_empty() {
                        a.message
                    } else {
                        format!("{} (refused: {})", a.message, a.refused.join(", "))
                    }
                })
                .unwrap_or_else(|_| "no error message".into());
            return Err(Failure::Status {
                status: status.as_u16(),
                message: printable(&message),
            });
        }
        read_answer(&request.references, &body)
    }

    /// One connection, one request, the whole answer.
    async fn exchange(
        &self,
        auth: HeaderValue,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes), Failure> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| Failure::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| Failure::Tls(chain(&e)))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| Failure::Http(chain(&e)))?;
        // Driven beside the request; aborted with the exchange (a timeout drops it).
        let _conn = AbortOnDrop(tokio::spawn(conn));
        let request = Request::post(self.target.as_str())
            .header(HOST, self.authority.as_str())
            .header(CONTENT_TYPE, "application/json")
            .header(
                USER_AGENT,
                concat!("kura-agent/", env!("CARGO_PKG_VERSION")),
            )
            .header(AUTHORIZATION, auth)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Failure::Http(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| Failure::Http(chain(&e)))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    Failure::TooLarge
                } else {
                    Failure::Http(e.to_string())
                }
            })?
            .to_bytes();
        Ok((status, body))
    }
}

/// The `Authorization` header from the token file, read now. The token is never put in an
/// error: a failure names the file only.
fn bearer(path: &Path) -> Result<HeaderValue, Failure> {
    let fail = |message: &str| Failure::Token {
        path: path.to_path_buf(),
        message: message.to_string(),
    };
    let text = SecretString::from(std::fs::read_to_string(path).map_err(|e| fail(&e.to_string()))?);
    let token = text.expose_secret().trim();
    if token.is_empty() {
        return Err(fail("it is empty"));
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| fail("it holds characters an HTTP header cannot carry"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// A `200` answer's body, decoded and checked against the references asked.
pub fn read_answer(asked: &[VersionRef], body: &[u8]) -> Result<Vec<VersionAnswer>, Failure> {
    let answer: VersionsAnswer =
        serde_json::from_slice(body).map_err(|e| Failure::Malformed(printable(&e.to_string())))?;
    verify(asked, answer.versions)
}

/// Checks that each answer is about the reference asked at its position and says something.
fn verify(
    asked: &[VersionRef],
    answers: Vec<VersionAnswer>,
) -> Result<Vec<VersionAnswer>, Failure> {
    if answers.len() != asked.len() {
        return Err(Failure::Mismatch(format!(
            "{} answers for {} references",
            answers.len(),
            asked.len()
        )));
    }
    for (i, (q, a)) in asked.iter().zip(&answers).enumerate() {
        if a.secret != q.secret
            || a.version_stage != q.version_stage
            || a.version_id != q.version_id
        {
            return Err(Failure::Mismatch(format!(
                "answer {i} is about {:?}, the reference asked there is {:?}",
                printable(&a.secret),
                q.secret
            )));
        }
        if a.current.is_none() && !a.unknown {
            return Err(Failure::Mismatch(format!(
                "answer {i} ({:?}) has neither a current version nor unknown",
                q.secret
            )));
        }
    }
    Ok(answers)
}

/// Text from the service as it may appear in a log line: bounded, no control characters.
fn printable(s: &str) -> String {
    s.chars()
        .take(MAX_MESSAGE_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// An error and its sources, `: `-separated (the TLS and HTTP errors' reasons are in sources).
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut src = err.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        src = s.source();
    }
    out
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(secret: &str) -> VersionRef {
        VersionRef {
            secret: secret.into(),
            version_stage: None,
            version_id: None,
        }
    }

    fn a(secret: &str, current: Option<&str>, unknown: bool) -> VersionAnswer {
        VersionAnswer {
            secret: secret.into(),
            version_stage: None,
            version_id: None,
            current: current.map(Into::into),
            unknown,
        }
    }

    #[test]
    fn answers_must_match_the_question() {
        let asked = [r("/a"), r("ssm:/b")];
        assert!(
            verify(
                &asked,
                vec![a("/a", Some("v1"), false), a("ssm:/b", None, true)]
            )
            .is_ok()
        );
        for (answers, needle) in [
            (
                vec![a("/a", Some("v1"), false)],
                "1 answers for 2 references",
            ),
            (
                vec![a("ssm:/b", Some("1"), false), a("/a", Some("v1"), false)],
                "answer 0 is about \"ssm:/b\"",
            ),
            (
                vec![a("/a", Some("v1"), false), a("ssm:/b", None, false)],
                "neither a current version nor unknown",
            ),
        ] {
            let e = verify(&asked, answers).expect_err(needle).to_string();
            assert!(e.contains(needle), "{e}");
        }
        let mut staged = a("/a", Some("v1"), false);
        staged.version_stage = Some("AWSPREVIOUS".into());
        assert!(verify(&asked[..1], vec![staged]).is_err(), "another stage");
    }

    #[test]
    fn urls_and_cas_are_checked() {
        let key = rcgen::generate_simple_self_signed(vec!["kura.kura-system.svc".into()])
            .expect("a certificate");
        let ca = key.cert.pem();
        let token = PathBuf::from("/nonexistent/token");
        let ok = VersionClient::new("https://kura.kura-system.svc:8444/", &ca, token.clone())
            .expect("a client");
        assert_eq!((ok.host.as_str(), ok.port), ("kura.kura-system.svc", 8444));
        assert_eq!(ok.target, PATH);
        let v6 = VersionClient::new("https://[::1]/base", &ca, token.clone()).expect("IPv6");
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 443));
        assert_eq!(v6.target, format!("/base{PATH}"));
        for (url, needle) in [
            ("http://kura:8444", "https:// only"),
            ("kura:8444", "https:// only"),
            ("https://user:pw@kura:8444", "credentials"),
            ("https://kura:8444/?a=b", "query"),
            ("not a url", "not a URL"),
        ] {
            let e = VersionClient::new(url, &ca, token.clone())
                .expect_err(url)
                .to_string();
            assert!(e.contains(needle), "{url}: {e}");
        }
        let e = VersionClient::new("https://kura:8444", "hello", token.clone())
            .expect_err("no certificate")
            .to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
    }

    #[test]
    fn the_token_is_read_at_each_call_and_never_shown() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("token");
        let e = bearer(&path).expect_err("missing").to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        std::fs::write(&path, "tok-1\n").expect("write");
        assert_eq!(bearer(&path).expect("a token"), "Bearer tok-1");
        assert!(bearer(&path).expect("a token").is_sensitive());
        std::fs::write(&path, "tok-2").expect("write");
        assert_eq!(bearer(&path).expect("a token"), "Bearer tok-2");
        std::fs::write(&path, " \n").expect("write");
        assert!(bearer(&path).is_err());
        std::fs::write(&path, "tok\u{1}secret").expect("write");
        let e = bearer(&path).expect_err("control").to_string();
        assert!(!e.contains("secret"), "{e}");
    }
}
