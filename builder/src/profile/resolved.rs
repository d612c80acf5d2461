//! The fully resolved, pinned manifest for one profile and role: the single
//! source of truth for what goes into an image. `keel resolve --json` prints
//! it; `keel build` consumes it and copies it into the image's manifest.

use std::fmt;

use keel_contract::Role;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Resolved {
    /// Profile name (file stem), and the chain it extends, nearest first.
    pub profile: String,
    pub extends: Vec<String>,
    pub role: Role,
    /// Target architecture (`amd64`), substituted for `{arch}` in URLs.
    pub arch: String,
    /// Timestamp (seconds since the epoch) that the build clamps file times
    /// to and exports as SOURCE_DATE_EPOCH; `None` when the profile sets
    /// none (the build then chooses, and says so in its manifest).
    pub source_date_epoch: Option<u64>,
    /// Arguments the profile appends to the kernel command line (none on
    /// a shipped profile; the test profile's QEMU workarounds).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_cmdline: Vec<String>,
    pub base: Base,
    /// Sorted by name.
    pub components: Vec<Component>,
    /// TEST ONLY: present when the profile has a `[test]` table; the image
    /// is then a test image (never shipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<TestImage>,
}

/// What makes a test image: the marker `/usr/lib/keel/test-image`
/// (`keel_contract::userdata::TEST_IMAGE_FILE`) and these CAs added to
/// its trust store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TestImage {
    /// PEM certificates, in the profile's order.
    pub trusted_cas: Vec<String>,
}

/// The Debian base root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Base {
    /// Debian suite, e.g. `trixie`.
    pub suite: String,
    /// Debian mirror URL given to mmdebstrap; `None` means mmdebstrap's
    /// default mirror.
    pub mirror: Option<String>,
    /// Packages installed by mmdebstrap, sorted and deduplicated: the
    /// profile's base packages, the role's packages, the profile's packages
    /// for that role, and the packages of Debian-sourced components. An
    /// entry `name=version` pins a Debian version (apt syntax).
    pub packages: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Component {
    pub name: String,
    /// The pinned upstream version for URL components; for Debian
    /// components the pinned Debian version, or `None` for the version the
    /// suite carries.
    pub version: Option<String>,
    pub source: Source,
    pub install: Install,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Source {
    /// Downloaded from `url` (templates already expanded), verified by digest.
    Url { url: String, digest: Digest },
    /// Installed from a Debian package of the base.
    Debian { package: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "algorithm", content = "hex")]
pub enum Digest {
    /// 64 lowercase hex characters.
    Sha256(String),
    /// 128 lowercase hex characters.
    Sha512(String),
}

impl Digest {
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Digest::Sha256(_) => Algorithm::Sha256,
            Digest::Sha512(_) => Algorithm::Sha512,
        }
    }

    pub fn hex(&self) -> &str {
        match self {
            Digest::Sha256(h) | Digest::Sha512(h) => h,
        }
    }

    pub fn new(algorithm: Algorithm, hex: String) -> Digest {
        match algorithm {
            Algorithm::Sha256 => Digest::Sha256(hex),
            Algorithm::Sha512 => Digest::Sha512(hex),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm(), self.hex())
    }
}

/// A digest algorithm that profiles accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the digest in hex characters.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    /// Checks and normalises (to lowercase) a hex digest.
    pub fn parse_hex(self, s: &str) -> Result<String, MalformedDigest> {
        let s = s.trim();
        if s.len() != self.hex_len() || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(MalformedDigest { algorithm: self, found: s.to_string() });
        }
        Ok(s.to_ascii_lowercase())
    }
}

/// A digest that is not `hex_len` hexadecimal characters.
#[derive(Debug, thiserror::Error)]
#[error("malformed {algorithm}: expected {} hexadecimal characters, found {found:?}", algorithm.hex_len())]
pub struct MalformedDigest {
    pub algorithm: Algorithm,
    pub found: String,
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Install {
    /// The artifact is one executable, installed at `path` with `mode`.
    Binary { path: String, mode: u32 },
    /// The artifact is a gzip-compressed tarball unpacked into `dest`.
    /// `strip-components` leading path elements are dropped from each
    /// entry's path first; then, when `include` is not empty, only entries
    /// whose stripped path equals an `include` item, or lies under one that
    /// ends with `/`, are kept. Entries left with an empty path are skipped.
    #[serde(rename_all = "kebab-case")]
    Tarball { dest: String, strip_components: u32, include: Vec<String> },
    /// Installed by the Debian package manager as part of the base.
    Package,
}
