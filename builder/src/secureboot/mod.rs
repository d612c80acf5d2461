//! UEFI Secure Boot with the user's own keys: `keel keys init` makes the
//! key hierarchy (PK, KEK, db: RSA 2048 key pairs with self-signed
//! certificates, as UEFI firmware requires RSA), `keel build
//! --secure-boot-key` signs the UKI with db, and `keel publish` enrols the
//! three certificates in the AMI's UEFI variables (`UefiData`, see
//! [`uefidata`]).
//!
//! A hierarchy is a directory: `PK.key PK.crt KEK.key KEK.crt db.key
//! db.crt` (PEM; keys 0600, PKCS#8) and `owner-guid`, the signature owner
//! GUID put in every EFI_SIGNATURE_LIST entry. It is written to a private
//! temp directory and renamed into place, so it appears whole or not at
//! all, and never over an existing one.

pub mod command;
pub mod uefidata;

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rcgen::{CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SerialNumber};
use sha2::{Digest as _, Sha256};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

/// The three keys, in the order of the UEFI hierarchy.
pub const NAMES: [&str; 3] = ["PK", "KEK", "db"];
/// How long the certificates are valid. UEFI firmware does not check
/// expiry when it verifies a boot image; the date is for people.
pub const LIFETIME: Duration = Duration::days(3652);
/// The file holding the signature owner GUID.
pub const OWNER_FILE: &str = "owner-guid";

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error(
        "{path} is not empty: keel keys init never overwrites a key hierarchy; choose a new directory"
    )]
    NotEmpty { path: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("generating the {which} key pair: {source}")]
    Generate { which: &'static str, source: rcgen::Error },
    #[error("{path}: no PEM {label} block in it")]
    Pem { path: String, label: &'static str },
    #[error("{path}: not a GUID: {value:?}")]
    Owner { path: String, value: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeysError + '_ {
    move |source| KeysError::Io { path: path.display().to_string(), source }
}

/// One certificate of a new hierarchy, for the summary.
#[derive(Debug, Clone)]
pub struct Summary {
    pub name: &'static str,
    pub subject: String,
    pub not_after: OffsetDateTime,
    /// sha256 of the DER certificate, hex.
    pub fingerprint: String,
}

/// sha256 of a DER certificate, lowercase hex: the identity of a key pair
/// in manifests and AMI tags.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Creates the hierarchy in `dir` (missing or empty), certificates valid
/// from `now` for [`LIFETIME`], subjects `CN=<owner> <name>`.
pub fn init(dir: &Path, owner: &str, now: OffsetDateTime) -> Result<Vec<Summary>, KeysError> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(KeysError::NotEmpty { path: dir.display().to_string() });
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io(dir)(e)),
    }
    let mut files: Vec<(String, u32, Zeroizing<Vec<u8>>)> = Vec::new();
    let mut out = Vec::new();
    for name in NAMES {
        let gen = |source| KeysError::Generate { which: name, source };
        let key = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).map_err(gen)?;
        let subject = format!("{owner} {name}");
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, subject.clone());
        params.not_before = now;
        params.not_after = now + LIFETIME;
        let mut serial: [u8; 16] = rand::random();
        serial[0] &= 0x7f;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key).map_err(gen)?;
        out.push(Summary {
            name,
            subject: format!("CN={subject}"),
            not_after: now + LIFETIME,
            fingerprint: fingerprint(cert.der()),
        });
        files.push((format!("{name}.key"), 0o600, Zeroizing::new(key.serialize_pem().into())));
        files.push((format!("{name}.crt"), 0o644, Zeroizing::new(cert.pem().into_bytes())));
    }
    let guid = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    files.push((OWNER_FILE.into(), 0o644, Zeroizing::new(format!("{guid}\n").into_bytes())));
    write_new_dir(dir, &files)?;
    Ok(out)
}

/// Writes `files` into a new private directory beside `dir`, then renames
/// it to `dir` (rename(2) replaces only an empty directory).
fn write_new_dir(dir: &Path, files: &[(String, u32, Zeroizing<Vec<u8>>)]) -> Result<(), KeysError> {
    let name = dir.file_name().unwrap_or(dir.as_os_str()).to_string_lossy().into_owned();
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(io(&parent))?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        fs::DirBuilder::new().mode(0o700).create(&tmp).map_err(io(&tmp))?;
        for (file, mode, bytes) in files {
            let p = tmp.join(file);
            keel_bootstrap::atomic_file::write(&p, *mode, bytes).map_err(io(&p))?;
        }
        fs::rename(&tmp, dir).map_err(|e| match e.kind() {
            ErrorKind::DirectoryNotEmpty | ErrorKind::AlreadyExists => {
                KeysError::NotEmpty { path: dir.display().to_string() }
            }
            _ => io(dir)(e),
        })?;
        fs::File::open(&parent).and_then(|d| d.sync_all()).map_err(io(&parent))
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

/// The DER bytes of the first PEM block labelled `label`.
pub fn pem_der(text: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    let b64: String = text[start..stop].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// A certificate of a hierarchy, read from `<dir>/<name>.crt`.
#[derive(Debug, Clone)]
pub struct Cert {
    pub path: PathBuf,
    pub der: Vec<u8>,
}

impl Cert {
    pub fn read(dir: &Path, name: &'static str) -> Result<Cert, KeysError> {
        let path = dir.join(format!("{name}.crt"));
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        let der = pem_der(&text, "CERTIFICATE").ok_or_else(|| KeysError::Pem {
            path: path.display().to_string(),
            label: "CERTIFICATE",
        })?;
        Ok(Cert { path, der })
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(&self.der)
    }
}

/// The signing half of a hierarchy: db's key and certificate.
#[derive(Debug, Clone)]
pub struct SigningKey {
    pub key_path: PathBuf,
    pub cert: Cert,
}

impl SigningKey {
    /// db of the hierarchy in `dir`; the key file must exist (it is read
    /// only by the signing tool, never by keel).
    pub fn open(dir: &Path) -> Result<SigningKey, KeysError> {
        let cert = Cert::read(dir, "db")?;
        let key_path = dir.join("db.key");
        fs::metadata(&key_path).map_err(io(&key_path))?;
        Ok(SigningKey { key_path, cert })
    }
}

/// The public half of a hierarchy: what firmware enrols.
#[derive(Debug, Clone)]
pub struct Hierarchy {
    pub owner: uuid::Uuid,
    pub pk: Cert,
    pub kek: Cert,
    pub db: Cert,
}

impl Hierarchy {
    pub fn read(dir: &Path) -> Result<Hierarchy, KeysError> {
        let path = dir.join(OWNER_FILE);
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        let owner = text.trim().parse().map_err(|_| KeysError::Owner {
            path: path.display().to_string(),
            value: text.trim().to_string(),
        })?;
        Ok(Hierarchy {
            owner,
            pk: Cert::read(dir, "PK")?,
            kek: Cert::read(dir, "KEK")?,
            db: Cert::read(dir, "db")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_writes_a_private_hierarchy_once() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sb");
        let now = OffsetDateTime::now_utc();
        let made = init(&dir, "Test", now).unwrap();
        assert_eq!(made.iter().map(|s| s.name).collect::<Vec<_>>(), NAMES);
        for name in NAMES {
            let key = dir.join(format!("{name}.key"));
            assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
            let pem = fs::read_to_string(&key).unwrap();
            let der = pem_der(&pem, "PRIVATE KEY").unwrap();
            // PKCS#8 rsaEncryption, 2048-bit: about 1.2 KB of DER.
            assert!(der.len() > 1100 && der.len() < 1300, "{} bytes", der.len());
        }
        let h = Hierarchy::read(&dir).unwrap();
        assert_eq!(h.db.fingerprint(), made[2].fingerprint);
        assert_ne!(h.pk.der, h.kek.der);
        let before = fs::read(dir.join("db.key")).unwrap();
        let err = init(&dir, "Test", now).unwrap_err();
        assert!(matches!(err, KeysError::NotEmpty { .. }), "{err}");
        assert_eq!(fs::read(dir.join("db.key")).unwrap(), before);
        let leftovers: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1);
    }
}
