//! TEST ONLY: a TLS-terminating proxy in front of moto, so that nodes
//! reach "AWS" by its real endpoint names (`kms.us-east-1.amazonaws.com`,
//! `<bucket>.s3.us-east-1.amazonaws.com`, ...) over verified HTTPS: the
//! QEMU network's resolver answers those names with the proxy's address,
//! the proxy presents a certificate for them signed by the test CA
//! ([`crate::test_ca`]), and passes the decrypted bytes unchanged to moto
//! (the Host header included; moto picks the service from the request's
//! signing scope and the bucket from a virtual-hosted Host).
//!
//! It records each connection: the client's address, the server name it
//! asked for (SNI) and whether the handshake succeeded, so a test can
//! show which names were used and that a client refused the certificate.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::http::Served;
use crate::test_ca::Issued;

/// Connecting to the upstream (moto) and the TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// One client connection as the proxy saw it.
#[derive(Debug, Clone)]
pub struct Connection {
    pub peer: SocketAddr,
    /// The name the client asked for (SNI), when it sent one.
    pub server_name: Option<String>,
    /// `Err` with rustls's reason when the handshake failed (e.g. the
    /// client did not trust the certificate: an `UnknownCA` alert).
    pub handshake: Result<(), String>,
}

pub struct TlsProxy {
    addr: SocketAddr,
    connections: Arc<Mutex<Vec<Connection>>>,
    _served: Served,
}

impl TlsProxy {
    /// Serves TLS with `cert` on `listener` (e.g. port 443 inside the QEMU
    /// network's namespace), forwarding to `upstream`.
    pub fn start_on(
        listener: std::net::TcpListener,
        upstream: SocketAddr,
        cert: &Issued,
    ) -> Result<TlsProxy> {
        crate::install_crypto_provider();
        let chain: Vec<CertificateDer<'static>> =
            pem_certs(&cert.cert_pem).context("the proxy's certificate")?;
        let key = {
            use rustls::pki_types::pem::PemObject;
            PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
                .map_err(|e| anyhow::anyhow!("reading the proxy's PEM private key: {e}"))?
        };
        let config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .context("the proxy's TLS configuration")?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let connections: Arc<Mutex<Vec<Connection>>> = Arc::default();
        let seen = connections.clone();
        let served = Served::start_on(listener, "tls-proxy", move |stream| {
            Box::pin(serve(stream, acceptor.clone(), upstream, seen.clone()))
        })?;
        Ok(TlsProxy { addr: served.addr(), connections, _served: served })
    }

    /// [`TlsProxy::start_on`] on a loopback port.
    pub fn start(upstream: SocketAddr, cert: &Issued) -> Result<TlsProxy> {
        TlsProxy::start_on(std::net::TcpListener::bind("127.0.0.1:0")?, upstream, cert)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every connection so far, in order.
    pub fn connections(&self) -> Vec<Connection> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

async fn serve(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    upstream: SocketAddr,
    seen: Arc<Mutex<Vec<Connection>>>,
) {
    let Ok(peer) = stream.peer_addr() else { return };
    let record = |server_name: Option<String>, handshake: Result<(), String>| {
        seen.lock().unwrap_or_else(|e| e.into_inner()).push(Connection {
            peer,
            server_name,
            handshake,
        });
    };
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return record(None, Err(e.to_string())),
        Err(_) => return record(None, Err("handshake timed out".into())),
    };
    let name = tls.get_ref().1.server_name().map(str::to_string);
    record(name, Ok(()));
    let Ok(Ok(mut moto)) =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(upstream)).await
    else {
        return;
    };
    let mut tls = tls;
    let _ = tokio::io::copy_bidirectional(&mut tls, &mut moto).await;
}

/// The certificates of a PEM chain.
fn pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("reading PEM certificates: {e}"))
}
