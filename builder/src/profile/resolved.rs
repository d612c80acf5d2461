//! The fully resolved, pinned manifest for one profile and role: the single
//! source of truth for what goes into an image. `keel resolve --json` prints
//! it; `keel build` consumes it and copies it into the image's manifest.

use keel_bootstrap::Role;
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
    pub base: Base,
    /// Sorted by name.
    pub components: Vec<Component>,
}

/// The Debian base root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Base {
    /// Debian suite, e.g. `trixie`.
    pub suite: String,
    /// Packages installed by mmdebstrap, sorted, including those that
    /// Debian-sourced components need.
    pub packages: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Component {
    pub name: String,
    pub version: String,
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "algorithm", content = "hex")]
pub enum Digest {
    Sha256(String),
    Sha512(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Install {
    /// The artifact is one executable, installed at `path` with `mode`.
    Binary { path: String, mode: u32 },
    /// The artifact is a (gzip) tarball unpacked into `dest`, dropping
    /// `strip-components` leading path elements and keeping only entries
    /// matching one of `include` (all when empty).
    Tarball {
        dest: String,
        strip_components: u32,
        include: Vec<String>,
    },
    /// Installed by the Debian package manager as part of the base.
    Package,
}
