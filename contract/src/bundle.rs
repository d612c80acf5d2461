//! The asset bundle: the files one role of one cluster needs (certificates,
//! keys, tokens), sealed with AES-256-GCM under a data key that only KMS can
//! unwrap. This module is the pure format; `envelope` adds KMS and S3.
//!
//! # Serialised form, version 1
//!
//! All integers are big-endian. Strings are UTF-8 with a `u16` length.
//!
//! ```text
//! offset   size  field
//! 0        8     magic "KEELBNDL"
//! 8        4     u32 format version (1)
//! 12       4     u32 H: length of the header body that follows
//! 16       H     header body:
//!                  u16 + bytes  cluster name
//!                  u16 + bytes  role ("controller", "etcd", "worker")
//!                  u16 + bytes  KMS key id (the key ARN KMS reported)
//!                  u16 + bytes  encrypted data key (KMS CiphertextBlob)
//!                  12           AES-GCM nonce (random per seal)
//! 16+H     rest  AES-256-GCM ciphertext of the file list, 16-byte tag last
//! ```
//!
//! The additional authenticated data is the whole header, bytes
//! `0 .. 16+H`, so a changed byte anywhere (magic, version, cluster, role,
//! key id, data key, nonce or ciphertext) fails authentication. The header
//! body must be consumed exactly: trailing or missing bytes are refused.
//!
//! The file list (the plaintext) is:
//!
//! ```text
//! u32 N: number of files, then N times:
//!   u16 + bytes  path, relative to the node's /etc
//!   u32          permission bits (at most 0o777)
//!   u32 + bytes  contents
//! ```
//!
//! with nothing after the last file. Files are sorted by path and paths are
//! unique, so the same files always give the same plaintext. A path is
//! relative, has no empty, `.` or `..` component and no NUL byte.
//!
//! The data key is made by KMS GenerateDataKey with the encryption context
//! `{"keel:cluster": cluster, "keel:role": role}` (see
//! [`encryption_context`]); a node asks KMS to decrypt it with the context
//! of the cluster and role *it expects*, so a bundle of another role or
//! cluster cannot be decrypted even before the header check here.

use std::collections::HashMap;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use zeroize::Zeroizing;

use crate::role::Role;
use crate::tags;

pub const FORMAT_VERSION: u32 = 1;
pub const MAGIC: &[u8; 8] = b"KEELBNDL";
/// Length of the AES-256 data key.
pub const DATA_KEY_LEN: usize = 32;
/// Length of the AES-GCM nonce.
pub const NONCE_LEN: usize = 12;
/// Length of the AES-GCM tag at the end of the ciphertext.
pub const TAG_LEN: usize = 16;
/// The fixed part before the header body: magic, version, header length.
const PREAMBLE_LEN: usize = 16;
/// Permission bits a file may carry.
const MAX_MODE: u32 = 0o777;

/// One role's assets for one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub cluster: String,
    pub role: Role,
    pub files: Vec<BundleFile>,
}

/// One file of a bundle. `path` is relative to the node's /etc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleFile {
    pub path: String,
    pub mode: u32,
    pub contents: Zeroizing<Vec<u8>>,
}

/// The unencrypted header of a serialised bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub cluster: String,
    pub role: Role,
    pub kms_key_id: String,
    pub encrypted_data_key: Vec<u8>,
    pub nonce: [u8; NONCE_LEN],
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("not a keel asset bundle (no KEELBNDL magic at the start)")]
    BadMagic,
    #[error("bundle format version {found} is not supported (this build reads version {FORMAT_VERSION})")]
    UnsupportedVersion { found: u32 },
    #[error(
        "bundle is truncated: {what} needs {needed} bytes at offset {offset}, {available} left"
    )]
    Truncated { what: &'static str, offset: usize, needed: usize, available: usize },
    #[error("bundle header is malformed: {0}")]
    MalformedHeader(String),
    #[error("bundle is for cluster {found:?} role {found_role}, expected cluster {expected:?} role {expected_role}")]
    WrongRecipient { found: String, found_role: String, expected: String, expected_role: Role },
    #[error("bundle failed authentication (AES-GCM): the ciphertext or header was altered, or the data key is not the one it was sealed with")]
    Authentication,
    #[error("bundle file list is malformed: {0}")]
    MalformedFiles(String),
    #[error("bundle file path {path:?} is not allowed: {reason}")]
    BadPath { path: String, reason: &'static str },
    #[error("bundle file {path:?} has mode {mode:#o}, more than permission bits")]
    BadMode { path: String, mode: u32 },
    #[error("a {role} bundle may not write {path:?}: its files are {}", crate::assets::files(*role).join(", "))]
    NotRolePath { role: Role, path: String },
    #[error("bundle file {path:?} has mode {mode:#o}, looser than {max:#o}")]
    ModeTooLoose { path: String, mode: u32, max: u32 },
    #[error("bundle holds {path:?} twice")]
    DuplicatePath { path: String },
    #[error("bundle field {what} is {len} bytes, more than the format allows ({max})")]
    TooLong { what: &'static str, len: usize, max: usize },
    #[error("data key is {0} bytes, expected {DATA_KEY_LEN}")]
    DataKeyLength(usize),
}

/// The KMS encryption context of a role's bundle.
pub fn encryption_context(cluster: &str, role: Role) -> HashMap<String, String> {
    HashMap::from([
        (tags::CLUSTER.to_string(), cluster.to_string()),
        (tags::ROLE.to_string(), role.as_str().to_string()),
    ])
}

/// The S3 key of a role's bundle under `prefix`: `<prefix>/<role>.bundle`.
pub fn object_key(prefix: &str, role: Role) -> String {
    under_prefix(prefix, &format!("{role}.bundle"))
}

/// The S3 key of `rel` under the cluster's `prefix` (no stray slashes:
/// an empty or "/" prefix puts `rel` at the bucket's root). Bundles, the
/// etcd formation record and etcd snapshots all live under it.
pub fn under_prefix(prefix: &str, rel: &str) -> String {
    match prefix.trim_matches('/') {
        "" => rel.to_string(),
        p => format!("{p}/{rel}"),
    }
}

/// Checks that `role`'s bundle may write `path` with `mode`: only the
/// files the contract gives that role (`assets::files`), with a mode no
/// looser than the contract's (`assets::mode`). A node refuses a bundle
/// that names anything else before it writes any file.
pub fn check_role_file(role: Role, path: &str, mode: u32) -> Result<(), BundleError> {
    check_path(path)?;
    if !crate::assets::files(role).contains(&path) {
        return Err(BundleError::NotRolePath { role, path: path.to_string() });
    }
    let max = crate::assets::mode(path);
    if mode & !max != 0 {
        return Err(BundleError::ModeTooLoose { path: path.to_string(), mode, max });
    }
    Ok(())
}

/// Checks a bundle file path: relative to /etc, no `..`, `.` or empty
/// component, no NUL.
pub fn check_path(path: &str) -> Result<(), BundleError> {
    let bad = |reason| Err(BundleError::BadPath { path: path.to_string(), reason });
    if path.is_empty() {
        return bad("empty");
    }
    if path.starts_with('/') {
        return bad("absolute");
    }
    if path.contains('\0') {
        return bad("contains NUL");
    }
    for part in path.split('/') {
        match part {
            "" => return bad("empty component"),
            "." => return bad("'.' component"),
            ".." => return bad("'..' component"),
            _ => {}
        }
    }
    Ok(())
}

impl Bundle {
    /// The file list as the plaintext of the format (sorted by path).
    /// Refuses bad paths, modes and duplicates.
    pub fn encode_files(&self) -> Result<Zeroizing<Vec<u8>>, BundleError> {
        let mut files: Vec<&BundleFile> = self.files.iter().collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        for pair in files.windows(2) {
            if pair[0].path == pair[1].path {
                return Err(BundleError::DuplicatePath { path: pair[0].path.clone() });
            }
        }
        let count = u32::try_from(files.len()).map_err(|_| BundleError::TooLong {
            what: "file count",
            len: files.len(),
            max: u32::MAX as usize,
        })?;
        let size: usize = files.iter().map(|f| 10 + f.path.len() + f.contents.len()).sum();
        let mut out = Zeroizing::new(Vec::with_capacity(4 + size));
        out.extend_from_slice(&count.to_be_bytes());
        for f in files {
            check_path(&f.path)?;
            if f.mode > MAX_MODE {
                return Err(BundleError::BadMode { path: f.path.clone(), mode: f.mode });
            }
            put_u16_bytes(&mut out, "file path", f.path.as_bytes())?;
            out.extend_from_slice(&f.mode.to_be_bytes());
            let len = u32::try_from(f.contents.len()).map_err(|_| BundleError::TooLong {
                what: "file contents",
                len: f.contents.len(),
                max: u32::MAX as usize,
            })?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&f.contents);
        }
        Ok(out)
    }

    /// Parses a file list (the decrypted plaintext).
    pub fn decode_files(plain: &[u8]) -> Result<Vec<BundleFile>, BundleError> {
        let malformed = |e: BundleError| match e {
            BundleError::Truncated { what, offset, .. } => {
                BundleError::MalformedFiles(format!("{what} runs past the end at offset {offset}"))
            }
            other => other,
        };
        let mut r = Reader { bytes: plain, pos: 0 };
        let count = r.u32("file count").map_err(malformed)?;
        let mut files: Vec<BundleFile> = Vec::new();
        for _ in 0..count {
            let path = r.u16_bytes("file path").map_err(malformed)?;
            let path = std::str::from_utf8(path)
                .map_err(|_| BundleError::MalformedFiles("a file path is not UTF-8".into()))?
                .to_string();
            check_path(&path)?;
            let mode = r.u32("file mode").map_err(malformed)?;
            if mode > MAX_MODE {
                return Err(BundleError::BadMode { path, mode });
            }
            let len = r.u32("file length").map_err(malformed)? as usize;
            let contents =
                Zeroizing::new(r.take("file contents", len).map_err(malformed)?.to_vec());
            if let Some(prev) = files.last() {
                if prev.path == path {
                    return Err(BundleError::DuplicatePath { path });
                }
                if prev.path > path {
                    return Err(BundleError::MalformedFiles(format!("{path:?} is out of order")));
                }
            }
            files.push(BundleFile { path, mode, contents });
        }
        if r.pos != plain.len() {
            return Err(BundleError::MalformedFiles(format!(
                "{} bytes after the last file",
                plain.len() - r.pos
            )));
        }
        Ok(files)
    }

    /// Seals the bundle under `data_key` (the plaintext half of a KMS data
    /// key) with a fresh random nonce. `kms_key_id` and
    /// `encrypted_data_key` go into the header unencrypted.
    pub fn seal(
        &self,
        kms_key_id: &str,
        encrypted_data_key: &[u8],
        data_key: &[u8],
    ) -> Result<Vec<u8>, BundleError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        self.seal_with_nonce(kms_key_id, encrypted_data_key, data_key, nonce)
    }

    fn seal_with_nonce(
        &self,
        kms_key_id: &str,
        encrypted_data_key: &[u8],
        data_key: &[u8],
        nonce: [u8; NONCE_LEN],
    ) -> Result<Vec<u8>, BundleError> {
        let cipher = cipher(data_key)?;
        let header = Header {
            version: FORMAT_VERSION,
            cluster: self.cluster.clone(),
            role: self.role,
            kms_key_id: kms_key_id.to_string(),
            encrypted_data_key: encrypted_data_key.to_vec(),
            nonce,
        };
        let mut out = header.encode()?;
        let plain = self.encode_files()?;
        let sealed = cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: &plain, aad: &out })
            .map_err(|_| BundleError::Authentication)?;
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens a serialised bundle whose header has been read with
    /// [`Header::parse`] and whose data key KMS has decrypted. Checks the
    /// header names `cluster` and `role` before decrypting.
    pub fn open(
        bytes: &[u8],
        cluster: &str,
        role: Role,
        data_key: &[u8],
    ) -> Result<Bundle, BundleError> {
        let (header, header_len) = Header::parse(bytes)?;
        header.expect(cluster, role)?;
        let cipher = cipher(data_key)?;
        let (aad, sealed) = bytes.split_at(header_len);
        if sealed.len() < TAG_LEN {
            return Err(BundleError::Truncated {
                what: "ciphertext tag",
                offset: header_len,
                needed: TAG_LEN,
                available: sealed.len(),
            });
        }
        let plain = Zeroizing::new(
            cipher
                .decrypt(Nonce::from_slice(&header.nonce), Payload { msg: sealed, aad })
                .map_err(|_| BundleError::Authentication)?,
        );
        let files = Bundle::decode_files(&plain)?;
        Ok(Bundle { cluster: header.cluster, role: header.role, files })
    }
}

fn cipher(data_key: &[u8]) -> Result<Aes256Gcm, BundleError> {
    if data_key.len() != DATA_KEY_LEN {
        return Err(BundleError::DataKeyLength(data_key.len()));
    }
    Ok(Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(data_key)))
}

impl Header {
    /// The header bytes (preamble and body), which are also the AAD.
    pub fn encode(&self) -> Result<Vec<u8>, BundleError> {
        let mut body = Vec::new();
        put_u16_bytes(&mut body, "cluster", self.cluster.as_bytes())?;
        put_u16_bytes(&mut body, "role", self.role.as_str().as_bytes())?;
        put_u16_bytes(&mut body, "KMS key id", self.kms_key_id.as_bytes())?;
        put_u16_bytes(&mut body, "encrypted data key", &self.encrypted_data_key)?;
        body.extend_from_slice(&self.nonce);
        let mut out = Vec::with_capacity(PREAMBLE_LEN + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Parses the header at the start of `bytes`; returns it and its length
    /// in bytes (where the ciphertext starts). Needs only the header, so it
    /// can be used on the first bytes of an object.
    pub fn parse(bytes: &[u8]) -> Result<(Header, usize), BundleError> {
        let mut r = Reader { bytes, pos: 0 };
        if r.take("magic", MAGIC.len())? != MAGIC {
            return Err(BundleError::BadMagic);
        }
        let version = r.u32("format version")?;
        if version != FORMAT_VERSION {
            return Err(BundleError::UnsupportedVersion { found: version });
        }
        let body_len = r.u32("header length")? as usize;
        let body = r.take("header body", body_len)?;
        let mut h = Reader { bytes: body, pos: 0 };
        let malformed = |e: BundleError| match e {
            BundleError::Truncated { what, .. } => BundleError::MalformedHeader(format!(
                "{what} runs past the header's declared length"
            )),
            other => other,
        };
        let utf8 = |what: &str, b: &[u8]| {
            std::str::from_utf8(b)
                .map(str::to_string)
                .map_err(|_| BundleError::MalformedHeader(format!("{what} is not UTF-8")))
        };
        let cluster = utf8("cluster", h.u16_bytes("cluster").map_err(malformed)?)?;
        let role_name = utf8("role", h.u16_bytes("role").map_err(malformed)?)?;
        let role =
            role_name.parse::<Role>().map_err(|e| BundleError::MalformedHeader(e.to_string()))?;
        let kms_key_id = utf8("KMS key id", h.u16_bytes("KMS key id").map_err(malformed)?)?;
        let encrypted_data_key = h.u16_bytes("encrypted data key").map_err(malformed)?.to_vec();
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(h.take("nonce", NONCE_LEN).map_err(malformed)?);
        if h.pos != body.len() {
            return Err(BundleError::MalformedHeader(format!(
                "{} unexpected bytes at the end of the header",
                body.len() - h.pos
            )));
        }
        if cluster.is_empty() || kms_key_id.is_empty() || encrypted_data_key.is_empty() {
            return Err(BundleError::MalformedHeader(
                "empty cluster, KMS key id or data key".into(),
            ));
        }
        let header = Header { version, cluster, role, kms_key_id, encrypted_data_key, nonce };
        Ok((header, PREAMBLE_LEN + body_len))
    }

    /// Refuses a header that names another cluster or role.
    pub fn expect(&self, cluster: &str, role: Role) -> Result<(), BundleError> {
        if self.cluster != cluster || self.role != role {
            return Err(BundleError::WrongRecipient {
                found: self.cluster.clone(),
                found_role: self.role.to_string(),
                expected: cluster.to_string(),
                expected_role: role,
            });
        }
        Ok(())
    }
}

fn put_u16_bytes(out: &mut Vec<u8>, what: &'static str, bytes: &[u8]) -> Result<(), BundleError> {
    let len = u16::try_from(bytes.len()).map_err(|_| BundleError::TooLong {
        what,
        len: bytes.len(),
        max: u16::MAX as usize,
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// A bounds-checked cursor over bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, what: &'static str, n: usize) -> Result<&'a [u8], BundleError> {
        let available = self.bytes.len() - self.pos;
        if n > available {
            return Err(BundleError::Truncated { what, offset: self.pos, needed: n, available });
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn u16_bytes(&mut self, what: &'static str) -> Result<&'a [u8], BundleError> {
        let len = self.take(what, 2)?;
        let len = u16::from_be_bytes([len[0], len[1]]) as usize;
        self.take(what, len)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, BundleError> {
        let b = self.take(what, 4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_writes_only_its_roles_paths_with_modes_no_looser_than_the_table() {
        check_role_file(Role::Etcd, "etcd/pki/ca.key", 0o600).unwrap();
        check_role_file(Role::Etcd, "etcd/pki/ca.crt", 0o644).unwrap();
        check_role_file(Role::Controller, "kubernetes/pki/sa.pub", 0o644).unwrap();
        check_role_file(Role::Worker, "kubernetes/bootstrap-token", 0o400).unwrap();
        for (role, path, mode, why) in [
            (Role::Worker, "kubernetes/pki/ca.key", 0o600, "may not write"),
            (Role::Worker, "systemd/system/evil.service", 0o644, "may not write"),
            (Role::Etcd, "etcd/pki/sub/x.crt", 0o644, "may not write"),
            (Role::Etcd, "kubernetes/pki/ca.crt", 0o644, "may not write"),
            (Role::Controller, "etcd/pki/ca.key", 0o600, "may not write"),
            (Role::Controller, "kubernetes/pki/ca.key", 0o640, "looser than 0o600"),
            (Role::Worker, "kubernetes/pki/ca.crt", 0o666, "looser than 0o644"),
            (Role::Worker, "kubernetes/bootstrap-token", 0o4600, "looser"),
        ] {
            let err = check_role_file(role, path, mode).unwrap_err().to_string();
            assert!(err.contains(why), "{role} {path} {mode:o}: {err}");
        }
    }

    const KEY: [u8; 32] = [7u8; 32];
    const EDK: &[u8] = b"encrypted-data-key-blob";

    fn file(path: &str, mode: u32, contents: &[u8]) -> BundleFile {
        BundleFile { path: path.into(), mode, contents: Zeroizing::new(contents.to_vec()) }
    }

    fn sample() -> Bundle {
        Bundle {
            cluster: "prod-eu".into(),
            role: Role::Etcd,
            files: vec![
                file("etcd/pki/ca.key", 0o600, b"-----BEGIN PRIVATE KEY-----\nsecret\n"),
                file("etcd/pki/ca.crt", 0o644, b"-----BEGIN CERTIFICATE-----\npublic\n"),
            ],
        }
    }

    fn sealed() -> Vec<u8> {
        sample().seal("arn:aws:kms:eu-west-1:123456789012:key/abc", EDK, &KEY).unwrap()
    }

    #[test]
    fn round_trip_sorts_files_and_keeps_modes() {
        let bytes = sealed();
        let b = Bundle::open(&bytes, "prod-eu", Role::Etcd, &KEY).unwrap();
        assert_eq!(b.cluster, "prod-eu");
        assert_eq!(b.role, Role::Etcd);
        let paths: Vec<_> = b.files.iter().map(|f| (f.path.as_str(), f.mode)).collect();
        assert_eq!(paths, [("etcd/pki/ca.crt", 0o644), ("etcd/pki/ca.key", 0o600)]);
        assert_eq!(&b.files[1].contents[..], b"-----BEGIN PRIVATE KEY-----\nsecret\n");
    }

    #[test]
    fn layout_matches_the_documentation() {
        let bytes = sealed();
        assert_eq!(&bytes[..8], b"KEELBNDL");
        assert_eq!(u32::from_be_bytes(bytes[8..12].try_into().unwrap()), 1);
        let (h, len) = Header::parse(&bytes).unwrap();
        let body = u32::from_be_bytes(bytes[12..16].try_into().unwrap()) as usize;
        assert_eq!(len, 16 + body);
        assert_eq!(h.kms_key_id, "arn:aws:kms:eu-west-1:123456789012:key/abc");
        assert_eq!(h.encrypted_data_key, EDK);
        assert_eq!(&bytes[len - NONCE_LEN..len], &h.nonce);
        let plain = sample().encode_files().unwrap();
        assert_eq!(bytes.len(), len + plain.len() + TAG_LEN);
        // The secret never appears in the clear.
        assert!(!bytes.windows(6).any(|w| w == b"secret"));
    }

    #[test]
    fn nonce_is_fresh_per_seal() {
        let (a, _) = Header::parse(&sealed()).unwrap();
        let (b, _) = Header::parse(&sealed()).unwrap();
        assert_ne!(a.nonce, b.nonce);
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let bytes = sealed();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            let r = Bundle::open(&bad, "prod-eu", Role::Etcd, &KEY);
            assert!(r.is_err(), "flipping byte {i} was not detected");
        }
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = sealed();
        for n in 0..bytes.len() {
            assert!(
                Bundle::open(&bytes[..n], "prod-eu", Role::Etcd, &KEY).is_err(),
                "truncation to {n}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            Bundle::open(&longer, "prod-eu", Role::Etcd, &KEY),
            Err(BundleError::Authentication)
        ));
    }

    #[test]
    fn header_of_another_recipient_is_refused_before_decrypting() {
        let bytes = sealed();
        let e = Bundle::open(&bytes, "prod-us", Role::Etcd, &KEY).unwrap_err();
        assert!(matches!(e, BundleError::WrongRecipient { .. }), "{e}");
        let e = Bundle::open(&bytes, "prod-eu", Role::Worker, &KEY).unwrap_err();
        assert!(e.to_string().contains("role etcd"), "{e}");
    }

    #[test]
    fn wrong_data_key_fails_authentication() {
        let e = Bundle::open(&sealed(), "prod-eu", Role::Etcd, &[8u8; 32]).unwrap_err();
        assert!(matches!(e, BundleError::Authentication));
        let e = Bundle::open(&sealed(), "prod-eu", Role::Etcd, &[8u8; 16]).unwrap_err();
        assert!(matches!(e, BundleError::DataKeyLength(16)));
    }

    #[test]
    fn unknown_version_and_magic_are_named() {
        let mut bytes = sealed();
        bytes[11] = 2;
        assert!(matches!(Header::parse(&bytes), Err(BundleError::UnsupportedVersion { found: 2 })));
        assert!(matches!(Header::parse(b"PK\x03\x04....____"), Err(BundleError::BadMagic)));
    }

    #[test]
    fn bad_paths_are_refused_on_write_and_read() {
        for p in ["/etc/passwd", "../x", "a/../../x", "a//b", "./a", "", "a/\0"] {
            let mut b = sample();
            b.files.push(file(p, 0o600, b"x"));
            assert!(matches!(b.encode_files(), Err(BundleError::BadPath { .. })), "{p:?} accepted");
        }
        // A list made by hand with '..' is refused by the reader.
        let mut plain = 1u32.to_be_bytes().to_vec();
        plain.extend_from_slice(&5u16.to_be_bytes());
        plain.extend_from_slice(b"../ca");
        plain.extend_from_slice(&0o600u32.to_be_bytes());
        plain.extend_from_slice(&0u32.to_be_bytes());
        assert!(matches!(Bundle::decode_files(&plain), Err(BundleError::BadPath { .. })));
    }

    #[test]
    fn duplicates_and_bad_modes_are_refused() {
        let mut b = sample();
        b.files.push(file("etcd/pki/ca.crt", 0o644, b"again"));
        assert!(matches!(b.encode_files(), Err(BundleError::DuplicatePath { .. })));
        let mut b = sample();
        b.files[0].mode = 0o4755;
        assert!(matches!(b.encode_files(), Err(BundleError::BadMode { .. })));
    }

    #[test]
    fn object_keys_have_no_stray_slashes() {
        assert_eq!(object_key("", Role::Worker), "worker.bundle");
        assert_eq!(object_key("clusters/prod", Role::Etcd), "clusters/prod/etcd.bundle");
        assert_eq!(object_key("clusters/prod/", Role::Etcd), "clusters/prod/etcd.bundle");
        assert_eq!(object_key("/", Role::Controller), "controller.bundle");
    }

    #[test]
    fn encryption_context_names_cluster_and_role() {
        let c = encryption_context("prod-eu", Role::Controller);
        assert_eq!(c.len(), 2);
        assert_eq!(c["keel:cluster"], "prod-eu");
        assert_eq!(c["keel:role"], "controller");
    }
}
