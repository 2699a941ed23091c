//! A TLS proxy in front of a plain-HTTP endpoint (moto) that presents a self-signed certificate
//! nobody trusts: what a client sees behind a TLS-intercepting proxy or at a private endpoint
//! whose CA is missing.

use std::net::TcpListener;
use std::sync::Arc;

use crate::moto::port_of;

/// The proxy, listening on a loopback port until dropped (its thread ends with the test).
pub struct UntrustedTls {
    /// `https://127.0.0.1:PORT`
    pub endpoint: String,
}

impl UntrustedTls {
    /// Proxies TLS connections on a free loopback port to `backend` (`http://127.0.0.1:PORT`).
    pub fn in_front_of(backend: &str) -> UntrustedTls {
        let backend_port = port_of(backend);
        let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap();
        let der_key =
            rustls::pki_types::PrivateKeyDer::try_from(key.signing_key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![key.cert.der().clone()], der_key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                while let Ok((tcp, _)) = listener.accept().await {
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        if let Ok(mut up) =
                            tokio::net::TcpStream::connect(("127.0.0.1", backend_port)).await
                        {
                            let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                        }
                    });
                }
            });
        });
        UntrustedTls {
            endpoint: format!("https://127.0.0.1:{port}"),
        }
    }
}
