//! The local asset directory written by `keel assets init` and read by
//! `keel assets publish`. It mirrors the node's /etc (`kubernetes/pki/...`,
//! `etcd/pki/...`) plus two files of its own:
//!
//! - `keel-assets.toml` (0644): format, cluster, API endpoints, creation
//!   time, bootstrap token id. Written last: a directory without it is not
//!   a complete set of assets.
//! - `fingerprint.key` (0600): a random 32-byte key for the HMAC that
//!   `publish` stores as object metadata to recognise unchanged bundles
//!   without publishing a plain hash of any secret.
//!
//! Every file is written with `keel_bootstrap::atomic_file` (mode set before
//! the first byte: 0600 for keys, tokens and configs holding them, 0644 for
//! certificates and public keys). The directory itself is 0700.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use keel_bootstrap::atomic_file;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::pki::{Pki, SECRET_MODE};

pub const MANIFEST: &str = "keel-assets.toml";
pub const FINGERPRINT_KEY: &str = "fingerprint.key";
/// The version of this directory layout.
pub const LAYOUT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Manifest {
    pub format: u32,
    pub cluster: String,
    pub api_endpoints: Vec<String>,
    /// RFC 3339.
    pub created: String,
    pub bootstrap_token_id: String,
}

/// An asset directory, opened for reading.
pub struct Store {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

/// Writes freshly generated assets into `dir`, which must be missing or
/// empty: existing assets (a CA above all) are never overwritten.
pub fn write(dir: &Path, manifest: &Manifest, pki: &Pki) -> anyhow::Result<()> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} is not empty: keel assets init never overwrites existing assets; \
                     choose a new directory (to replace a CA, publish the new one with --rotate)",
                    dir.display()
                );
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private (0700)", dir.display()))?;

    let mut fingerprint_key = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill(&mut fingerprint_key[..]);
    atomic_file::write(&dir.join(FINGERPRINT_KEY), SECRET_MODE, &fingerprint_key[..])
        .with_context(|| format!("writing {}", dir.join(FINGERPRINT_KEY).display()))?;
    for f in &pki.files {
        let path = dir.join(f.path);
        atomic_file::write(&path, f.mode, &f.contents).with_context(|| format!("writing {}", path.display()))?;
    }
    let text = toml::to_string_pretty(manifest).context("encoding the asset manifest")?;
    atomic_file::write(&dir.join(MANIFEST), 0o644, text.as_bytes())
        .with_context(|| format!("writing {}", dir.join(MANIFEST).display()))?;
    Ok(())
}

impl Store {
    pub fn open(dir: &Path) -> anyhow::Result<Store> {
        let path = dir.join(MANIFEST);
        let text = fs::read_to_string(&path).with_context(|| {
            format!("reading {} (is {} an asset directory made by keel assets init?)", path.display(), dir.display())
        })?;
        let manifest: Manifest = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if manifest.format != LAYOUT_VERSION {
            bail!(
                "{} has layout format {}, this keel reads format {LAYOUT_VERSION}",
                path.display(),
                manifest.format
            );
        }
        super::pki::check_cluster_name(&manifest.cluster).with_context(|| format!("in {}", path.display()))?;
        Ok(Store { dir: dir.to_path_buf(), manifest })
    }

    /// Reads one file (path relative to the directory). A secret file that
    /// others can read is refused, as ssh does with private keys.
    pub fn read(&self, rel: &str, secret: bool) -> anyhow::Result<Zeroizing<Vec<u8>>> {
        let path = self.dir.join(rel);
        let meta = fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        if secret && mode & 0o077 != 0 {
            bail!("{} has mode {mode:04o}: a secret must not be readable by others (chmod 600)", path.display());
        }
        let contents = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Zeroizing::new(contents))
    }

    pub fn fingerprint_key(&self) -> anyhow::Result<Zeroizing<Vec<u8>>> {
        let key = self.read(FINGERPRINT_KEY, true)?;
        if key.len() != 32 {
            bail!("{} is {} bytes, expected 32", self.dir.join(FINGERPRINT_KEY).display(), key.len());
        }
        Ok(key)
    }
}
