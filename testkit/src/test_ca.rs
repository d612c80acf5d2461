//! TEST ONLY: the test CA that test images trust (a profile's `[test]`
//! table names its certificate) and that signs the certificate of the TLS
//! proxy in front of moto ([`crate::tls_proxy`]), so that nodes reach AWS
//! by its real endpoint names over verified HTTPS.
//!
//! The CA is made once per machine and kept in `~/.cache/keel/test-ca/`
//! (or `KEEL_TEST_CA_DIR`): `ca.crt` and `ca.key` (0600, written with that
//! mode before any byte). Images are cached by their inputs, the CA among
//! them, so a CA made anew each run would rebuild every image each run.
//! Concurrent test processes agree on one CA: each writes a complete pair
//! into a temporary directory and renames it into place; the first rename
//! wins and the others read the winner's.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

const CERT: &str = "ca.crt";
const KEY: &str = "ca.key";
/// The CA's common name: says what it is wherever a certificate shows up.
pub const CA_NAME: &str = "Keel TEST ONLY CA (qemu-tests; never trusted by a shipped image)";

/// Where the machine's test CA lives.
pub fn default_dir() -> PathBuf {
    crate::cache_dir("KEEL_TEST_CA_DIR", "test-ca")
}

/// A CA that can issue server certificates.
pub struct TestCa {
    /// The CA certificate, PEM (what test images trust).
    pub cert_pem: String,
    params: CertificateParams,
    key: KeyPair,
}

/// A server certificate and its key, PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    /// The machine's test CA ([`default_dir`]), made on first use.
    pub fn machine() -> Result<TestCa> {
        TestCa::load_or_create(&default_dir())
    }

    /// The CA in `dir`, made there first when missing.
    pub fn load_or_create(dir: &Path) -> Result<TestCa> {
        if !dir.join(CERT).is_file() {
            create(dir)?;
        }
        TestCa::load(dir)
    }

    fn load(dir: &Path) -> Result<TestCa> {
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
        };
        let (cert_pem, key_pem) = (read(CERT)?, read(KEY)?);
        let key = KeyPair::from_pem(&key_pem)
            .with_context(|| format!("{}: not a private key", dir.join(KEY).display()))?;
        let params = CertificateParams::from_ca_cert_pem(&cert_pem)
            .with_context(|| format!("{}: not a CA certificate", dir.join(CERT).display()))?;
        Ok(TestCa { cert_pem, params, key })
    }

    /// A fresh, unrelated CA in memory (for tests that need a certificate
    /// the trust store does not contain).
    pub fn ephemeral() -> Result<TestCa> {
        let (cert_pem, key_pem) = new_ca()?;
        let dir = tempfile::tempdir()?;
        write_pair(dir.path(), &cert_pem, &key_pem)?;
        TestCa::load(dir.path())
    }

    /// A server certificate for `names` (DNS names, `*.` wildcards, or IP
    /// addresses), signed by this CA.
    pub fn issue(&self, names: &[String]) -> Result<Issued> {
        let issuer = self.params.clone().self_signed(&self.key).context("loading the test CA")?;
        let mut params = CertificateParams::new(names.to_vec()).context("server names")?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, names.first().cloned().unwrap_or_default());
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().context("generating a server key")?;
        let cert = params.signed_by(&key, &issuer, &self.key).context("signing")?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

fn new_ca() -> Result<(String, String)> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    // Valid long enough that cached images keep working.
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2045, 1, 1);
    let key = KeyPair::generate().context("generating the test CA key")?;
    let cert = params.self_signed(&key).context("self-signing the test CA")?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write_pair(dir: &Path, cert_pem: &str, key_pem: &str) -> Result<()> {
    let mut key = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join(KEY))
        .with_context(|| format!("creating {}", dir.join(KEY).display()))?;
    key.write_all(key_pem.as_bytes())?;
    key.sync_all()?;
    std::fs::write(dir.join(CERT), cert_pem)
        .with_context(|| format!("writing {}", dir.join(CERT).display()))?;
    Ok(())
}

/// Makes the CA in a temporary directory beside `dir` and renames it into
/// place; when another process won the race, its CA stays.
fn create(dir: &Path) -> Result<()> {
    let parent = dir.parent().context("the test CA directory has no parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = tempfile::Builder::new().prefix(".test-ca-").tempdir_in(parent)?;
    let (cert_pem, key_pem) = new_ca()?;
    write_pair(tmp.path(), &cert_pem, &key_pem)?;
    match std::fs::rename(tmp.path(), dir) {
        Ok(()) => Ok(()),
        Err(_) if dir.join(CERT).is_file() && dir.join(KEY).is_file() => Ok(()),
        Err(e) => bail!("moving the new test CA to {}: {e}", dir.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_ca_is_made_once_with_a_private_key_and_reused() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join("test-ca");
        let first = TestCa::load_or_create(&dir).unwrap();
        let mode = std::fs::metadata(dir.join(KEY)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = TestCa::load_or_create(&dir).unwrap();
        assert_eq!(first.cert_pem, again.cert_pem, "a second use made another CA");
        let issued = again.issue(&["s3.us-east-1.amazonaws.com".into()]).unwrap();
        assert!(issued.cert_pem.contains("BEGIN CERTIFICATE"));
    }
}
