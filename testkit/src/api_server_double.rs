//! A TEST DOUBLE of the Kubernetes API server, not kube-apiserver (no
//! Kubernetes binary can be had on the test machines). It speaks what
//! Keel's join step needs and nothing more:
//!
//! - HTTPS with a serving certificate, a client certificate required and
//!   verified against the client CA (as kube-apiserver's `--client-ca-file`);
//! - `/readyz` answers 503 for the first `unready` requests, then `ok`;
//! - every other request is answered with the current status (200 unless
//!   the test changes it) and its body echoed back, as server-side apply
//!   answers with the applied object.
//!
//! Each request is recorded (method, target, content type, the client
//! certificate's subject and expiry, body) and, when `log` is set, handed
//! to it as one line. It checks nothing about the objects: their schemas are
//! checked by kubernetes-validate (keel's CLI tests), and what a real API
//! server would do with them cannot be shown here.
//!
//! Used in process by the bootstrap's tests and, as the binary
//! `keel-apiserver-double`, inside the TEST-ONLY controller image, where the
//! kube-apiserver test double hands over to it once its flags are checked.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncWriteExt;

use crate::http::{read_request, response_head, Served};

/// One request as the double saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub content_type: String,
    /// The client certificate's subject (`CN=..., O=...`).
    pub client: String,
    /// The client certificate's notAfter (Unix seconds).
    pub client_not_after: i64,
    pub body: Vec<u8>,
}

/// What the double serves with.
pub struct Config {
    /// Where to listen (port 0: any free port).
    pub listen: SocketAddr,
    /// PEM: the CA client certificates must chain to.
    pub client_ca_pem: String,
    /// PEM: the serving certificate and its key.
    pub serving_cert_pem: String,
    pub serving_key_pem: String,
    /// How many `/readyz` requests get 503 before it answers `ok`.
    pub unready: usize,
    /// Called with one line per request.
    pub log: Option<Log>,
}

/// Where the request lines go.
pub type Log = Arc<dyn Fn(&str) + Send + Sync>;

struct State {
    seen: Vec<Seen>,
    status: u16,
    readyz: usize,
}

/// A running double; it stops when dropped.
pub struct ApiServerDouble {
    state: Arc<Mutex<State>>,
    served: Served,
}

impl ApiServerDouble {
    pub fn start(config: Config) -> Result<ApiServerDouble> {
        let client_ca = CertificateDer::from_pem_slice(config.client_ca_pem.as_bytes())
            .context("client CA: not a PEM certificate")?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(client_ca).context("client CA: not a usable CA certificate")?;
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .context("client certificate verifier")?;
        let cert = CertificateDer::pem_slice_iter(config.serving_cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("serving certificate: not PEM")?;
        let key = PrivateKeyDer::from_pem_slice(config.serving_key_pem.as_bytes())
            .context("serving key: not a PEM private key")?;
        let tls = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(cert, key)
            .context("serving certificate and key do not go together")?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = std::net::TcpListener::bind(config.listen)
            .with_context(|| format!("binding {}", config.listen))?;
        let state = Arc::new(Mutex::new(State { seen: Vec::new(), status: 200, readyz: 0 }));
        let (st, unready, log) = (state.clone(), config.unready, config.log.clone());
        let served = Served::start_on(listener, "apiserver-double", move |tcp| {
            let (acceptor, st, log) = (acceptor.clone(), st.clone(), log.clone());
            Box::pin(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                serve(tls, st, unready, log).await;
            })
        })
        .context("starting the API server double")?;
        Ok(ApiServerDouble { state, served })
    }

    /// `https://IP:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.served.addr())
    }

    /// Every request so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).seen.clone()
    }

    /// The status every later non-`/readyz` request gets.
    pub fn set_status(&self, status: u16) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).status = status;
    }
}

async fn serve(
    mut tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    state: Arc<Mutex<State>>,
    unready: usize,
    log: Option<Log>,
) {
    // The verifier required a certificate; its subject names the client.
    let Some((client, client_not_after)) = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|der| x509_parser::parse_x509_certificate(der).ok())
        .map(|(_, c)| (c.subject().to_string(), c.validity().not_after.timestamp()))
    else {
        return;
    };
    let mut buf = Vec::new();
    while let Some(req) = read_request(&mut tls, &mut buf).await {
        let (status, reply) = {
            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
            let answer = if req.path == "/readyz" {
                st.readyz += 1;
                if st.readyz <= unready {
                    (503, b"not ready".to_vec())
                } else {
                    (200, b"ok".to_vec())
                }
            } else {
                (st.status, req.body.clone())
            };
            let seen = Seen {
                method: req.method.clone(),
                target: req.path.clone(),
                content_type: req.header("content-type").unwrap_or_default().to_string(),
                client: client.clone(),
                client_not_after,
                body: req.body,
            };
            if let Some(log) = &log {
                log(&format!(
                    "apiserver-double: {} {} from \"{}\": {} ({} bytes)",
                    seen.method,
                    seen.target,
                    seen.client,
                    answer.0,
                    seen.body.len()
                ));
            }
            st.seen.push(seen);
            answer
        };
        let headers = [("Content-Type".to_string(), "application/json".to_string())];
        let mut out = response_head(status, &headers, reply.len());
        out.extend_from_slice(&reply);
        if tls.write_all(&out).await.is_err() || req.close {
            return;
        }
    }
}
