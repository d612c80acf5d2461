//! The image's manifest: what went in (profile, role, components with
//! versions and digests, Debian packages with versions), how it boots
//! (kernel, command line, verity root hash) and the partition table. It is
//! written beside the image and, without the image's own sha256 (which it
//! cannot know), inside the image's ESP, where `keel inspect` reads it.

use std::fs::File;
use std::path::Path;

use keel_contract::Role;
use serde::{Deserialize, Serialize};

use super::esp::{self, Slice};
use super::gpt::{self, Table};
use super::rootfs::Package;
use crate::profile::{Component, Source};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Manifest {
    pub profile: String,
    pub role: Role,
    /// sha256 of the whole raw image; absent in the copy inside the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_sha256: Option<String>,
    pub image_size: u64,
    pub keel_version: String,
    /// Hash of every input of the build; the same key gives the same image.
    pub build_key: String,
    pub source_date_epoch: u64,
    pub kernel: String,
    pub cmdline: String,
    pub verity_root_hash: String,
    /// `unsigned`, or the sha256 fingerprint of the db certificate whose
    /// key signed the UKI (`keel build --secure-boot-key`).
    #[serde(default = "unsigned")]
    pub secure_boot: String,
    /// TEST ONLY images (built from a profile with a `[test]` table) say
    /// `"test-image": true`; the key is absent from every other manifest.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub test_image: bool,
    pub components: Vec<ComponentEntry>,
    pub debian_packages: Vec<Package>,
    pub disk_guid: uuid::Uuid,
    pub partitions: Vec<gpt::Partition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ComponentEntry {
    pub name: String,
    /// Upstream version (URL components) or installed Debian version.
    pub version: String,
    /// `url` or `debian`.
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha512: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debian_package: Option<String>,
}

/// What a manifest says of an unsigned image.
pub const UNSIGNED: &str = "unsigned";

fn unsigned() -> String {
    UNSIGNED.into()
}

/// The manifest's `secure-boot` value for a build signed with `key`.
pub fn secure_boot(key: Option<&crate::secureboot::SigningKey>) -> String {
    key.map_or_else(unsigned, |k| k.cert.fingerprint())
}

/// One entry per component, Debian ones with the version actually installed.
pub fn components(
    components: &[Component],
    packages: &[Package],
) -> Result<Vec<ComponentEntry>, super::BuildError> {
    components
        .iter()
        .map(|c| match &c.source {
            Source::Url { url, digest } => {
                let hex = Some(digest.hex().to_string());
                let sha512 = digest.algorithm().name() == "sha512";
                Ok(ComponentEntry {
                    name: c.name.clone(),
                    version: c.version.clone().unwrap_or_default(),
                    source: "url".into(),
                    url: Some(url.clone()),
                    sha256: if sha512 { None } else { hex.clone() },
                    sha512: if sha512 { hex } else { None },
                    debian_package: None,
                })
            }
            Source::Debian { package } => {
                let installed = packages.iter().find(|p| &p.name == package).ok_or_else(|| {
                    super::BuildError::PackageNotInstalled {
                        component: c.name.clone(),
                        package: package.clone(),
                    }
                })?;
                Ok(ComponentEntry {
                    name: c.name.clone(),
                    version: installed.version.clone(),
                    source: "debian".into(),
                    url: None,
                    sha256: None,
                    sha512: None,
                    debian_package: Some(package.clone()),
                })
            }
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Gpt { path: String, source: gpt::GptError },
    #[error("{path}: no EFI system partition in its partition table")]
    NoEsp { path: String },
    #[error(
        "{path}: no {name} in the EFI system partition ({source}); is it a Keel image (one built before SBOMs has no keel/sbom.spdx.json)?"
    )]
    NoManifest { path: String, name: String, source: std::io::Error },
    #[error("{path}: the manifest in the EFI system partition is not valid: {source}")]
    Invalid { path: String, source: serde_json::Error },
}

/// Reads the manifest from the ESP of the image at `path`.
pub fn read_from_image(path: &Path) -> Result<Manifest, InspectError> {
    let bytes = read_esp_file(path, esp::MANIFEST_PATH)?;
    serde_json::from_slice(&bytes)
        .map_err(|source| InspectError::Invalid { path: path.display().to_string(), source })
}

/// Reads the file `name` (`keel/...`) from the ESP of the image at `path`.
pub fn read_esp_file(path: &Path, name: &str) -> Result<Vec<u8>, InspectError> {
    let shown = path.display().to_string();
    let io = |source| InspectError::Io { path: shown.clone(), source };
    let mut file = File::open(path).map_err(io)?;
    let table = Table::read(&mut file)
        .map_err(|source| InspectError::Gpt { path: shown.clone(), source })?;
    let esp = table
        .partitions
        .iter()
        .find(|p| p.type_guid == gpt::types::ESP)
        .ok_or_else(|| InspectError::NoEsp { path: shown.clone() })?;
    esp::read_file(Slice::new(file, esp.offset, esp.size), name)
        .map_err(|source| InspectError::NoManifest { path: shown, name: name.to_string(), source })
}
