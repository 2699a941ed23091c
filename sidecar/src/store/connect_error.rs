//! What a request that never reached the store ran into, said so that a person can act on it.
//!
//! The SDK reports a refused TLS handshake as an opaque dispatch failure, which reads like a
//! network outage. The usual causes are not network ones: a proxy or firewall intercepting TLS
//! with its own certificate, a private endpoint whose CA the image lacks, a clock far off. So the
//! certificate error is looked up by type in the error chain (rustls' own error, also when an
//! `io::Error` carries it) and reported with the endpoint that presented it.

use std::error::Error;

use aws_sdk_secretsmanager::config::interceptors::InterceptorContext;
use aws_sdk_secretsmanager::config::retry::{ClassifyRetry, RetryAction};

/// A message for a request that was not sent, when the cause is the endpoint's TLS certificate;
/// `None` for every other cause.
pub(crate) fn certificate_problem(
    service: &str,
    endpoint: &str,
    err: &(dyn Error + 'static),
) -> Option<String> {
    let tls = chain(err).find_map(rustls_error)?;
    let rustls::Error::InvalidCertificate(why) = tls else {
        return None;
    };
    Some(format!(
        "TLS certificate problem with {service} at {endpoint}: the certificate it presented was \
         refused ({why:?}); is a proxy intercepting TLS, is the endpoint's CA missing from the CA \
         bundle, or is the clock wrong?"
    ))
}

/// A retry classifier for the SDK clients: an untrusted certificate will be presented again, so
/// retrying only spends the caller's time budget (an admission has 2 s) and hides the cause
/// behind a timeout.
#[derive(Debug)]
pub(crate) struct CertificateErrorsAreFinal;

impl ClassifyRetry for CertificateErrorsAreFinal {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        let refused = ctx
            .output_or_error()
            .and_then(Result::err)
            .and_then(|e| e.as_connector_error())
            .is_some_and(|e| chain(e).filter_map(rustls_error).any(is_certificate));
        if refused {
            RetryAction::RetryForbidden
        } else {
            RetryAction::NoActionIndicated
        }
    }

    fn name(&self) -> &'static str {
        "kura: certificate errors are final"
    }
}

fn is_certificate(e: &rustls::Error) -> bool {
    matches!(e, rustls::Error::InvalidCertificate(_))
}

/// rustls' error in `e`, also where `io::Error`s wrap it (hyper nests one in another, and an
/// `io::Error`'s `source` skips the error it wraps).
fn rustls_error<'a>(e: &'a (dyn Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    let inner: &'a (dyn Error + 'static) = e.downcast_ref::<std::io::Error>()?.get_ref()?;
    rustls_error(inner)
}

fn chain<'a>(err: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(err), |&e| e.source())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("dispatch failure")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn an_untrusted_certificate_is_named_with_the_endpoint() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        // As hyper builds it: an io::Error in an io::Error.
        let err = Outer(std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            tls,
        )));
        let msg = certificate_problem("Secrets Manager", "https://sm.example:443", &err)
            .expect("a certificate problem");
        assert!(
            msg.contains("TLS certificate problem with Secrets Manager at https://sm.example:443")
                && msg.contains("UnknownIssuer"),
            "{msg}"
        );
    }

    #[test]
    fn other_failures_are_left_alone() {
        let refused = Outer(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(certificate_problem("S", "https://e", &refused), None);
        let alert = Outer(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::HandshakeNotComplete,
        ));
        assert_eq!(certificate_problem("S", "https://e", &alert), None);
    }
}
