//! The image to publish: `NAME.raw` (a raw GPT disk image written by
//! `keel build`) and `NAME.manifest.json` beside it. The manifest's
//! `image-sha256` is checked against the raw file before anything is
//! uploaded; it is also the key by which publishing finds an AMI it made
//! before.

use std::io::Read;
use std::path::{Path, PathBuf};

use keel_contract::{tags, Role};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::error::Error;

/// The build manifest as `keel publish` reads it. `keel build` writes these
/// keys (and may write more: unknown fields are ignored here, so the build
/// can add to its manifest without breaking publishing).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BuildManifest {
    /// The profile the image was built from.
    pub profile: String,
    pub role: Role,
    /// Hex sha256 of the raw image file.
    pub image_sha256: String,
    /// Every pinned component and its version.
    pub components: Vec<ComponentVersion>,
    /// dm-verity root hash of `/usr` (on the kernel command line).
    pub verity_root_hash: String,
    /// `unsigned` or the sha256 fingerprint of the db certificate that
    /// signed the UKI (absent in manifests of keel before Secure Boot).
    #[serde(default)]
    pub secure_boot: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ComponentVersion {
    pub name: String,
    pub version: String,
}

/// A raw image and its verified manifest.
#[derive(Debug, Clone)]
pub struct Image {
    pub path: PathBuf,
    pub size: u64,
    pub manifest: BuildManifest,
}

/// AMI names allow letters, digits and `()[] ./-'@_`, 3 to 128 characters.
const AMI_NAME_MAX: usize = 128;
/// RegisterImage and CopyImage descriptions are at most 255 characters.
const DESCRIPTION_MAX: usize = 255;

/// The tag naming the db certificate (sha256 fingerprint) whose key signed
/// a Secure Boot image; for people and audits (nodes never read it).
pub const SECURE_BOOT_DB_TAG: &str = "keel:secure-boot-db-sha256";

/// `image.raw` -> `image.manifest.json`.
pub fn manifest_path(raw: &Path) -> PathBuf {
    raw.with_extension("manifest.json")
}

impl Image {
    /// Reads the manifest beside `path` and checks the raw file's sha256
    /// against it (one sequential read of the image).
    pub fn open(path: &Path) -> Result<Image, Error> {
        let meta =
            std::fs::metadata(path).map_err(|source| Error::Read { path: path.into(), source })?;
        if !meta.is_file() {
            return Err(Error::Read {
                path: path.into(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
            });
        }
        let mpath = manifest_path(path);
        let text = std::fs::read_to_string(&mpath)
            .map_err(|source| Error::Read { path: mpath.clone(), source })?;
        let manifest: BuildManifest = serde_json::from_str(&text)
            .map_err(|e| Error::BuildManifest { path: mpath.clone(), message: e.to_string() })?;
        let expected = manifest.image_sha256.to_ascii_lowercase();
        if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::BuildManifest {
                path: mpath,
                message: format!("image-sha256 {expected:?} is not a hex sha256"),
            });
        }
        let actual = sha256_file(path)?;
        if actual != expected {
            return Err(Error::ImageMismatch {
                image: path.into(),
                manifest: mpath,
                expected,
                actual,
            });
        }
        let mut manifest = manifest;
        manifest.image_sha256 = expected;
        Ok(Image { path: path.into(), size: meta.len(), manifest })
    }

    /// The db certificate fingerprint of a signed image.
    pub fn secure_boot_db(&self) -> Option<&str> {
        self.manifest.secure_boot.as_deref().filter(|s| *s != "unsigned")
    }

    pub fn sha256(&self) -> &str {
        &self.manifest.image_sha256
    }

    /// The AMI name: role, profile and the start of the image's sha256, so
    /// that one image has one name in a region.
    pub fn ami_name(&self) -> String {
        let m = &self.manifest;
        let raw = format!("keel-{}-{}-{}", m.role, m.profile, &m.image_sha256[..16]);
        let clean: String = raw
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(c) { c } else { '-' })
            .collect();
        clean.chars().take(AMI_NAME_MAX).collect()
    }

    pub fn description(&self) -> String {
        let m = &self.manifest;
        let components: Vec<String> =
            m.components.iter().map(|c| format!("{} {}", c.name, c.version)).collect();
        let text =
            format!("Keel {} node image, profile {}: {}", m.role, m.profile, components.join(", "));
        text.chars().take(DESCRIPTION_MAX).collect()
    }

    /// Tags for the AMI and its snapshot: role, image sha256, profile and
    /// one per component.
    pub fn tags(&self) -> Vec<(String, String)> {
        let m = &self.manifest;
        let mut t = vec![
            (tags::ROLE.to_string(), m.role.to_string()),
            (tags::IMAGE_SHA256.to_string(), m.image_sha256.clone()),
            (tags::PROFILE.to_string(), m.profile.clone()),
        ];
        for c in &m.components {
            t.push((format!("{}{}", tags::COMPONENT_PREFIX, c.name), c.version.clone()));
        }
        if let Some(db) = self.secure_boot_db() {
            t.push((SECURE_BOOT_DB_TAG.to_string(), db.to_string()));
        }
        t
    }
}

fn sha256_file(path: &Path) -> Result<String, Error> {
    let err = |source| Error::Read { path: path.into(), source };
    let mut f = std::fs::File::open(path).map_err(err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_image(dir: &Path, data: &[u8], sha: &str) -> PathBuf {
        let raw = dir.join("etcd.raw");
        std::fs::write(&raw, data).unwrap();
        let manifest = serde_json::json!({
            "profile": "prod+1.36", "role": "etcd", "image-sha256": sha,
            "components": [{"name": "etcd", "version": "3.6.14", "sha256": "ab"}],
            "verity-root-hash": "00", "built-by": "keel build",
        });
        std::fs::write(manifest_path(&raw), manifest.to_string()).unwrap();
        raw
    }

    #[test]
    fn opens_a_matching_image_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"not really a disk";
        let raw = write_image(dir.path(), data, &hex::encode(Sha256::digest(data)));
        let image = Image::open(&raw).unwrap();
        assert_eq!(image.size, data.len() as u64);
        // `+` is not allowed in AMI names.
        assert!(image.ami_name().starts_with("keel-etcd-prod-1.36-"), "{}", image.ami_name());
        assert!(image.description().contains("etcd 3.6.14"));
        assert!(image.tags().contains(&("keel:component:etcd".into(), "3.6.14".into())));
    }

    #[test]
    fn refuses_an_image_that_does_not_match_its_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let raw = write_image(dir.path(), b"changed", &"0".repeat(64));
        let err = Image::open(&raw).unwrap_err().to_string();
        assert!(
            err.contains(&"0".repeat(64)) && err.contains("changed after it was built"),
            "{err}"
        );
    }
}
