//! The on-disk form of profiles (`profiles/*.toml`) and role definitions
//! (`images/<role>/role.toml`), as written by people: every field optional
//! (a profile may take it from the one it extends), unknown keys refused,
//! values kept with their position so errors can point at them.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use keel_contract::Role;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use super::error::{Location, ProfileError};
use super::resolved::Algorithm;

/// Reads and parses a profile or role file; returns its text too, to place
/// later errors. Parse errors name the file, line and column.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<(String, T), ProfileError> {
    let text = fs::read_to_string(path)
        .map_err(|source| ProfileError::Read { path: path.to_path_buf(), source })?;
    let value = toml::from_str(&text).map_err(|e| {
        let at = Location::at(path, &text, e.span().map_or(0, |s| s.start));
        ProfileError::invalid(at, e.message().trim_end().to_string())
    })?;
    Ok((text, value))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ProfileFile {
    /// Free text for readers of the file.
    #[allow(dead_code)]
    pub description: Option<String>,
    /// Name of the profile this one extends (a file in the same directory).
    pub extends: Option<Spanned<String>>,
    pub arch: Option<Spanned<String>>,
    pub source_date_epoch: Option<Spanned<u64>>,
    /// Arguments appended to the kernel command line Keel writes (test
    /// profiles: QEMU workarounds that a shipped image must not carry).
    pub kernel_cmdline: Option<Spanned<Vec<String>>>,
    pub base: Option<Spanned<BaseTable>>,
    #[serde(default)]
    pub components: BTreeMap<Spanned<String>, Spanned<ComponentTable>>,
    /// Extra packages for one role under this profile.
    #[serde(default)]
    pub roles: BTreeMap<Spanned<Role>, Spanned<RoleExtras>>,
    /// TEST ONLY: makes every image of this profile (and of profiles that
    /// extend it) a test image. A shipped profile has no such table.
    pub test: Option<Spanned<TestTable>>,
}

/// `[test]`: what only a test image gets (the marker
/// `/usr/lib/keel/test-image` in the verified `/usr`, which lets the node
/// accept a plain-http `aws.endpoint-url`, and the test CAs in its trust
/// store). The nearest profile with a `[test]` table sets all of it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TestTable {
    /// PEM files of CA certificates the image trusts besides Debian's
    /// bundle, relative to the profile's directory (e.g. the QEMU tests'
    /// CA, whose TLS proxy answers for AWS's endpoint names).
    #[serde(default)]
    pub trust: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BaseTable {
    pub suite: Option<Spanned<String>>,
    pub mirror: Option<Spanned<String>>,
    pub packages: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ComponentTable {
    pub version: Option<Spanned<String>>,
    pub url: Option<Spanned<String>>,
    pub sha256: Option<Spanned<Sha256Hex>>,
    pub sha512: Option<Spanned<Sha512Hex>>,
    /// URL template of the checksum file upstream publishes beside the
    /// artifact (read by `keel pin`).
    pub checksum_url: Option<Spanned<String>>,
    /// Debian package that provides this component.
    pub debian: Option<Spanned<String>>,
    pub install: Option<Spanned<InstallTable>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "kebab-case",
    rename_all_fields = "kebab-case",
    tag = "kind"
)]
pub enum InstallTable {
    Binary {
        path: String,
        mode: u32,
    },
    Tarball {
        dest: String,
        #[serde(default)]
        strip_components: u32,
        #[serde(default)]
        include: Vec<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RoleExtras {
    #[serde(default)]
    pub packages: Vec<String>,
    /// Components (defined in this profile chain) the role's image gets on
    /// top of those its role.toml names.
    #[serde(default)]
    pub components: Vec<Spanned<String>>,
}

/// `images/<role>/role.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RoleFile {
    /// Free text for readers of the file.
    #[allow(dead_code)]
    pub description: Option<String>,
    /// Components (by profile name) the role's image gets.
    pub components: Vec<Spanned<String>>,
    /// Debian packages the role adds to the profile's base.
    #[serde(default)]
    pub packages: Vec<String>,
}

/// A sha256 digest in hex, checked while parsing so that a malformed one
/// is reported at its position.
#[derive(Debug, Clone)]
pub struct Sha256Hex(pub String);

/// A sha512 digest in hex (the Kubernetes changelog publishes these).
#[derive(Debug, Clone)]
pub struct Sha512Hex(pub String);

impl<'de> Deserialize<'de> for Sha256Hex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Algorithm::Sha256.parse_hex(&s).map(Sha256Hex).map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for Sha512Hex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Algorithm::Sha512.parse_hex(&s).map(Sha512Hex).map_err(serde::de::Error::custom)
    }
}
