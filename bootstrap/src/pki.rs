//! Certificates issued on the node at boot, from a CA in the role's bundle
//! (rcgen): etcd's peer and server certificates, the API server's serving
//! certificate, client certificates for the control plane's components.
//! Keys are made here and never leave the node.

use std::net::IpAddr;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

/// Node certificates are re-issued at every boot; a year is ample.
pub(crate) const VALIDITY_DAYS: i64 = 365;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("loading the CA from {what}: {source}")]
    Ca { what: String, source: rcgen::Error },
    #[error("{what}: {message}")]
    Name { what: String, message: String },
    #[error("issuing {what}: {source}")]
    Issue { what: String, source: rcgen::Error },
}

/// A CA that can sign: its certificate (as rcgen needs it) and its key.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    /// The CA certificate as it was given (PEM), for bundles of trust.
    pub pem: String,
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
    /// Both (etcd peers authenticate each other with one certificate).
    Both,
}

/// A certificate request: subject and names.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// For error messages: "etcd peer certificate".
    pub what: &'a str,
    pub common_name: &'a str,
    pub organization: Option<&'a str>,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub usage: Usage,
}

/// An issued certificate and its new private key (PEM).
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: Zeroizing<String>,
}

impl Ca {
    /// Loads a CA from its certificate and key (PEM). `what` names them in
    /// errors (e.g. the bundle paths).
    pub fn load(what: &str, cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let ca_err = |source| PkiError::Ca { what: what.to_string(), source };
        let key = KeyPair::from_pem(key_pem).map_err(ca_err)?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem).map_err(ca_err)?;
        // rcgen signs with the issuer's name and key; re-creating the CA
        // certificate object from its own parameters gives it both.
        let cert = params.self_signed(&key).map_err(ca_err)?;
        Ok(Ca { cert, key, pem: cert_pem.to_string() })
    }

    /// Issues a certificate for `req` with a new P-256 key.
    pub fn issue(&self, req: &Request<'_>) -> Result<Issued, PkiError> {
        let issue_err = |source| PkiError::Issue { what: req.what.to_string(), source };
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, req.common_name);
        if let Some(o) = req.organization {
            dn.push(DnType::OrganizationName, o);
        }
        params.distinguished_name = dn;
        for name in &req.dns_names {
            let ia5 = name.clone().try_into().map_err(|_| PkiError::Name {
                what: req.what.to_string(),
                message: format!("{name:?} is not a valid DNS name"),
            })?;
            params.subject_alt_names.push(SanType::DnsName(ia5));
        }
        params.subject_alt_names.extend(req.ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages =
            vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = match req.usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::Both => {
                vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
            }
        };
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(VALIDITY_DAYS);
        let key = KeyPair::generate().map_err(issue_err)?;
        let cert = params.signed_by(&key, &self.cert, &self.key).map_err(issue_err)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: Zeroizing::new(key.serialize_pem()) })
    }
}

/// A new self-signed CA, for tests and for `keel`'s test fixtures.
pub fn new_ca(common_name: &str) -> Result<(String, Zeroizing<String>), rcgen::Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(3650);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), Zeroizing::new(key.serialize_pem())))
}
