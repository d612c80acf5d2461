//! The cluster's PKI, generated with rcgen: three CAs (cluster, etcd,
//! front-proxy), the service-account signing key pair, the API server's
//! etcd client certificate, admin credentials with a kubeconfig, a worker
//! bootstrap token and the encryption config for secrets at rest.
//!
//! Defaults: every key is ECDSA P-256 (kube-apiserver, etcd and kubelet
//! accept it; rcgen's ring backend cannot generate RSA). CAs are valid for
//! 10 years with `pathlen:0` (they sign only leaves); leaves for 1 year.
//! Per-node certificates (etcd peer/server, API server serving) are issued
//! at boot by keel-bootstrap from the CA in its role's bundle.

use std::net::IpAddr;

use base64::Engine as _;
use keel_contract::kubeconfig::{CaSource, Credential, Kubeconfig};
use rand::Rng as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

/// Lifetime of a CA certificate.
pub const CA_LIFETIME: Duration = Duration::days(3652);
/// Lifetime of a leaf certificate and of the bootstrap token.
pub const LEAF_LIFETIME: Duration = Duration::days(365);
/// Certificates start this long before "now" to tolerate clock skew
/// between the machine running `keel` and the nodes.
const BACKDATE: Duration = Duration::minutes(5);
/// The API server's port in the admin kubeconfig.
pub const API_PORT: u16 = 6443;
/// The key algorithm of every generated key, for the summary.
pub const KEY_ALGORITHM: &str = "ECDSA P-256";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error(transparent)]
    ClusterName(#[from] keel_contract::names::ClusterNameError),
    #[error("API endpoint {0:?} is not an IP address or DNS name")]
    Endpoint(String),
    #[error("at least one --api-endpoint is needed")]
    NoEndpoint,
    #[error("generating {what}: {source}")]
    Generate { what: &'static str, source: rcgen::Error },
}

/// What one generated certificate is, for the summary.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub path: &'static str,
    pub subject: String,
    pub issuer: String,
    pub not_after: OffsetDateTime,
    pub is_ca: bool,
}

/// A generated file: path relative to the asset directory (which mirrors
/// the node's /etc), permission bits and contents.
pub struct GeneratedFile {
    pub path: &'static str,
    pub mode: u32,
    pub contents: Zeroizing<Vec<u8>>,
}

/// Everything `keel assets init` makes.
pub struct Pki {
    pub files: Vec<GeneratedFile>,
    pub certs: Vec<CertInfo>,
    /// The bootstrap token's id (the public half, `<id>.<secret>`).
    pub token_id: String,
    pub token_expires: OffsetDateTime,
}

pub use keel_contract::assets::{paths, PUBLIC_MODE, SECRET_MODE};

/// Checks a cluster name (the one rule, `keel_contract::names`).
pub fn check_cluster_name(name: &str) -> Result<(), PkiError> {
    Ok(keel_contract::names::check_cluster_name(name)?)
}

/// An API endpoint: an IP address or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Ip(IpAddr),
    Dns(String),
}

impl Endpoint {
    pub fn parse(s: &str) -> Result<Endpoint, PkiError> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Endpoint::Ip(ip));
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if s.len() <= 253 && s.split('.').all(label_ok) {
            Ok(Endpoint::Dns(s.to_ascii_lowercase()))
        } else {
            Err(PkiError::Endpoint(s.to_string()))
        }
    }

    /// `https://host:6443`, with brackets around an IPv6 address.
    pub fn url(&self) -> String {
        match self {
            Endpoint::Ip(IpAddr::V6(ip)) => format!("https://[{ip}]:{API_PORT}"),
            Endpoint::Ip(ip) => format!("https://{ip}:{API_PORT}"),
            Endpoint::Dns(name) => format!("https://{name}:{API_PORT}"),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Ip(ip) => write!(f, "{ip}"),
            Endpoint::Dns(name) => f.write_str(name),
        }
    }
}

struct Issued {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn generate_key(what: &'static str) -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|source| PkiError::Generate { what, source })
}

fn name(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if let Some(o) = org {
        dn.push(DnType::OrganizationName, o);
    }
    dn.push(DnType::CommonName, cn);
    dn
}

fn subject_string(cn: &str, org: Option<&str>) -> String {
    match org {
        Some(o) => format!("O={o}, CN={cn}"),
        None => format!("CN={cn}"),
    }
}

struct Generator {
    now: OffsetDateTime,
    files: Vec<GeneratedFile>,
    certs: Vec<CertInfo>,
}

impl Generator {
    fn ca(
        &mut self,
        what: &'static str,
        path: &'static str,
        key_path: &'static str,
        cn: &str,
    ) -> Result<Issued, PkiError> {
        let key = generate_key(what)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(cn, None);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        params.not_before = self.now - BACKDATE;
        params.not_after = self.now + CA_LIFETIME;
        let not_after = params.not_after;
        let cert =
            params.self_signed(&key).map_err(|source| PkiError::Generate { what, source })?;
        self.push_pair(path, key_path, &cert, &key);
        self.certs.push(CertInfo {
            path,
            subject: subject_string(cn, None),
            issuer: subject_string(cn, None),
            not_after,
            is_ca: true,
        });
        Ok(Issued { cert, key })
    }

    /// A client certificate (clientAuth) signed by `ca`.
    #[allow(clippy::too_many_arguments)]
    fn client(
        &mut self,
        what: &'static str,
        path: &'static str,
        key_path: &'static str,
        cn: &str,
        org: Option<&str>,
        ca: &Issued,
        ca_subject: &str,
    ) -> Result<Issued, PkiError> {
        let key = generate_key(what)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(cn, org);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = self.now - BACKDATE;
        params.not_after = self.now + LEAF_LIFETIME;
        let not_after = params.not_after;
        let cert = params
            .signed_by(&key, &ca.cert, &ca.key)
            .map_err(|source| PkiError::Generate { what, source })?;
        self.push_pair(path, key_path, &cert, &key);
        self.certs.push(CertInfo {
            path,
            subject: subject_string(cn, org),
            issuer: ca_subject.to_string(),
            not_after,
            is_ca: false,
        });
        Ok(Issued { cert, key })
    }

    fn push_pair(
        &mut self,
        path: &'static str,
        key_path: &'static str,
        cert: &rcgen::Certificate,
        key: &KeyPair,
    ) {
        self.public(path, cert.pem().into_bytes());
        self.secret(key_path, key.serialize_pem().into_bytes());
    }

    fn public(&mut self, path: &'static str, contents: Vec<u8>) {
        self.files.push(GeneratedFile {
            path,
            mode: PUBLIC_MODE,
            contents: Zeroizing::new(contents),
        });
    }

    fn secret(&mut self, path: &'static str, contents: Vec<u8>) {
        self.files.push(GeneratedFile {
            path,
            mode: SECRET_MODE,
            contents: Zeroizing::new(contents),
        });
    }
}

/// Generates a cluster's assets. `endpoints` are the API server addresses
/// (the first one goes into the admin kubeconfig).
pub fn generate(
    cluster: &str,
    endpoints: &[Endpoint],
    now: OffsetDateTime,
) -> Result<Pki, PkiError> {
    check_cluster_name(cluster)?;
    let first = endpoints.first().ok_or(PkiError::NoEndpoint)?;
    let mut g = Generator { now, files: Vec::new(), certs: Vec::new() };

    let ca = g.ca("the cluster CA", paths::CA_CRT, paths::CA_KEY, "kubernetes")?;
    let etcd_ca = g.ca("the etcd CA", paths::ETCD_CA_CRT, paths::ETCD_CA_KEY, "etcd-ca")?;
    g.ca(
        "the front-proxy CA",
        paths::FRONT_PROXY_CA_CRT,
        paths::FRONT_PROXY_CA_KEY,
        "front-proxy-ca",
    )?;

    let sa = generate_key("the service-account key")?;
    g.secret(paths::SA_KEY, sa.serialize_pem().into_bytes());
    g.public(paths::SA_PUB, sa.public_key_pem().into_bytes());

    g.client(
        "the API server's etcd client certificate",
        paths::APISERVER_ETCD_CLIENT_CRT,
        paths::APISERVER_ETCD_CLIENT_KEY,
        "kube-apiserver-etcd-client",
        None,
        &etcd_ca,
        "CN=etcd-ca",
    )?;
    let admin = g.client(
        "the admin client certificate",
        paths::ADMIN_CRT,
        paths::ADMIN_KEY,
        "kubernetes-admin",
        Some("system:masters"),
        &ca,
        "CN=kubernetes",
    )?;
    let kubeconfig = admin_kubeconfig(cluster, &first.url(), &ca.cert.pem(), &admin);
    g.secret(paths::ADMIN_KUBECONFIG, kubeconfig.into_bytes());

    g.secret(paths::ENCRYPTION_CONFIG, encryption_config(now).into_bytes());

    let (token_id, token_secret) = bootstrap_token();
    let token_expires = now + LEAF_LIFETIME;
    let token = Zeroizing::new(format!("{token_id}.{}\n", token_secret.as_str()));
    g.secret(paths::BOOTSTRAP_TOKEN, token.as_bytes().to_vec());
    g.secret(
        paths::BOOTSTRAP_TOKEN_SECRET,
        bootstrap_token_secret(cluster, &token_id, &token_secret, token_expires).into_bytes(),
    );

    Ok(Pki { files: g.files, certs: g.certs, token_id, token_expires })
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn admin_kubeconfig(cluster: &str, server: &str, ca_pem: &str, admin: &Issued) -> String {
    let user = "kubernetes-admin";
    let key_pem = Zeroizing::new(admin.key.serialize_pem());
    let context = format!("{user}@{cluster}");
    Kubeconfig {
        cluster,
        server,
        ca: CaSource::Pem(ca_pem),
        user,
        credential: Credential::EmbeddedCertificate {
            cert_pem: &admin.cert.pem(),
            key_pem: key_pem.as_str(),
        },
        context: &context,
    }
    .render()
}

/// An EncryptionConfiguration that encrypts Secrets with a fresh 32-byte
/// secretbox key (XSalsa20-Poly1305), and still reads unencrypted ones.
fn encryption_config(now: OffsetDateTime) -> String {
    let mut key = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill(&mut key[..]);
    format!(
        "apiVersion: apiserver.config.k8s.io/v1\n\
         kind: EncryptionConfiguration\n\
         resources:\n\
         - resources:\n  - secrets\n  providers:\n\
         \x20 - secretbox:\n      keys:\n      - name: keel-{date}\n        secret: {secret}\n\
         \x20 - identity: {{}}\n",
        date = now.unix_timestamp(),
        secret = b64(&key[..]),
    )
}

/// A Kubernetes bootstrap token: `[a-z0-9]{6}` id, `[a-z0-9]{16}` secret.
fn bootstrap_token() -> (String, Zeroizing<String>) {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rngs::OsRng;
    let mut pick = |n: usize| -> String {
        (0..n).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
    };
    let id = pick(6);
    let secret = Zeroizing::new(pick(16));
    (id, secret)
}

/// The Secret that makes the token valid, for `kubectl apply` on the
/// cluster (bootstrap-token authentication, kube-system namespace).
fn bootstrap_token_secret(
    cluster: &str,
    id: &str,
    secret: &str,
    expires: OffsetDateTime,
) -> String {
    let expiration = expires
        .replace_nanosecond(0)
        .unwrap_or(expires)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    format!(
        "apiVersion: v1\n\
         kind: Secret\n\
         metadata:\n  name: bootstrap-token-{id}\n  namespace: kube-system\n\
         type: bootstrap.kubernetes.io/token\n\
         stringData:\n\
         \x20 description: \"keel worker bootstrap token for cluster {cluster}\"\n\
         \x20 token-id: \"{id}\"\n\
         \x20 token-secret: \"{secret}\"\n\
         \x20 expiration: \"{expiration}\"\n\
         \x20 usage-bootstrap-authentication: \"true\"\n\
         \x20 usage-bootstrap-signing: \"true\"\n\
         \x20 auth-extra-groups: \"system:bootstrappers:keel:worker\"\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_and_endpoints_are_checked() {
        for ok in ["prod", "prod-eu-1", "a"] {
            check_cluster_name(ok).unwrap();
        }
        for bad in ["", "Prod", "-a", "a-", "a_b", "a.b", &"x".repeat(64)] {
            assert!(check_cluster_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Endpoint::parse("10.0.0.1").unwrap().url(), "https://10.0.0.1:6443");
        assert_eq!(Endpoint::parse("fd00::1").unwrap().url(), "https://[fd00::1]:6443");
        assert_eq!(
            Endpoint::parse("API.example.com").unwrap().url(),
            "https://api.example.com:6443"
        );
        for bad in ["", "a..b", "https://x", "x:6443", "-x.com"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bootstrap_token_has_the_kubernetes_format() {
        let (id, secret) = bootstrap_token();
        assert_eq!(id.len(), 6);
        assert_eq!(secret.len(), 16);
        let ok = |s: &str| s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        assert!(ok(&id) && ok(&secret));
    }

    #[test]
    fn generates_every_file_once_with_the_right_mode() {
        let now = OffsetDateTime::now_utc();
        let pki = generate("c1", &[Endpoint::parse("10.0.0.1").unwrap()], now).unwrap();
        let mut paths: Vec<_> = pki.files.iter().map(|f| f.path).collect();
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), pki.files.len());
        assert_eq!(paths.len(), 16);
        for f in &pki.files {
            let public = f.path.ends_with(".crt") || f.path.ends_with(".pub");
            assert_eq!(f.mode, if public { 0o644 } else { 0o600 }, "{}", f.path);
        }
        assert_eq!(pki.certs.iter().filter(|c| c.is_ca).count(), 3);
        assert!(generate("c1", &[], now).is_err());
    }
}
