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
//! certificates and public keys). The directory itself is 0700, and is
//! complete or absent: it is built under a temporary name and renamed.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
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
    /// When `keel assets renew` last reissued the leaves (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewed: Option<String>,
}

/// An asset directory, opened for reading.
pub struct Store {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

/// Writes freshly generated assets into `dir`, which must be missing or
/// empty: existing assets (a CA above all) are never overwritten. The files
/// are written into a private temporary directory beside `dir` which is
/// then renamed into place, so `dir` never holds a partial set.
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
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    }
    let name =
        dir.file_name().with_context(|| format!("{} has no directory name", dir.display()))?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = parent.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let result = write_tree(&tmp, manifest, pki).and_then(|()| {
        // rename(2) replaces an empty directory.
        fs::rename(&tmp, dir)
            .with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
        fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", parent.display()))
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

/// Writes every file under a new private directory `root`.
fn write_tree(root: &Path, manifest: &Manifest, pki: &Pki) -> anyhow::Result<()> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(root)
        .with_context(|| format!("creating {}", root.display()))?;
    // The umask may have cleared bits; the directory must be exactly 0700.
    fs::set_permissions(root, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private (0700)", root.display()))?;

    let mut fingerprint_key = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill(&mut fingerprint_key[..]);
    atomic_file::write(&root.join(FINGERPRINT_KEY), SECRET_MODE, &fingerprint_key[..])
        .with_context(|| format!("writing {}", root.join(FINGERPRINT_KEY).display()))?;
    for f in &pki.files {
        let path = root.join(f.path);
        atomic_file::write(&path, f.mode, &f.contents)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let text = toml::to_string_pretty(manifest).context("encoding the asset manifest")?;
    atomic_file::write(&root.join(MANIFEST), 0o644, text.as_bytes())
        .with_context(|| format!("writing {}", root.join(MANIFEST).display()))?;
    Ok(())
}

impl Store {
    /// Replaces the renewed files (`keel assets renew`), each atomically
    /// with its mode, then the manifest. Only paths in `pki::RENEWED` are
    /// written: a CA is never touched.
    pub fn replace_renewed(&mut self, pki: &Pki, renewed: String) -> anyhow::Result<()> {
        for f in &pki.files {
            if !super::pki::RENEWED.contains(&f.path) {
                bail!("renewal produced {}, which it may not replace", f.path);
            }
            let path = self.dir.join(f.path);
            atomic_file::write(&path, f.mode, &f.contents)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        self.manifest.bootstrap_token_id = pki.token_id.clone();
        self.manifest.renewed = Some(renewed);
        let text = toml::to_string_pretty(&self.manifest).context("encoding the asset manifest")?;
        atomic_file::write(&self.dir.join(MANIFEST), 0o644, text.as_bytes())
            .with_context(|| format!("writing {}", self.dir.join(MANIFEST).display()))
    }

    pub fn open(dir: &Path) -> anyhow::Result<Store> {
        let path = dir.join(MANIFEST);
        let text = fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (is {} an asset directory made by keel assets init?)",
                path.display(),
                dir.display()
            )
        })?;
        let manifest: Manifest =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if manifest.format != LAYOUT_VERSION {
            bail!(
                "{} has layout format {}, this keel reads format {LAYOUT_VERSION}",
                path.display(),
                manifest.format
            );
        }
        super::pki::check_cluster_name(&manifest.cluster)
            .with_context(|| format!("in {}", path.display()))?;
        Ok(Store { dir: dir.to_path_buf(), manifest })
    }

    /// Reads one file (path relative to the directory). A secret file that
    /// others can read is refused, as ssh does with private keys.
    pub fn read(&self, rel: &str, secret: bool) -> anyhow::Result<Zeroizing<Vec<u8>>> {
        let path = self.dir.join(rel);
        let meta = fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        if secret && mode & 0o077 != 0 {
            bail!(
                "{} has mode {mode:04o}: a secret must not be readable by others (chmod 600)",
                path.display()
            );
        }
        let contents = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Zeroizing::new(contents))
    }

    pub fn fingerprint_key(&self) -> anyhow::Result<Zeroizing<Vec<u8>>> {
        let key = self.read(FINGERPRINT_KEY, true)?;
        if key.len() != 32 {
            bail!(
                "{} is {} bytes, expected 32",
                self.dir.join(FINGERPRINT_KEY).display(),
                key.len()
            );
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assets::pki::{generate, Endpoint};

    fn manifest() -> Manifest {
        Manifest {
            format: LAYOUT_VERSION,
            cluster: "c1".into(),
            api_endpoints: vec!["10.0.0.1".into()],
            created: "2026-01-01T00:00:00Z".into(),
            bootstrap_token_id: "abcdef".into(),
            renewed: None,
        }
    }

    #[test]
    fn writes_into_an_empty_dir_reads_back_and_guards_secrets() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("assets");
        fs::create_dir(&dir).unwrap();
        let pki = generate(
            "c1",
            &[Endpoint::parse("10.0.0.1").unwrap()],
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
        write(&dir, &manifest(), &pki).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        let names: Vec<_> =
            fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["assets"], "temporary directory left behind");

        let store = Store::open(&dir).unwrap();
        assert_eq!(store.manifest, manifest());
        assert_eq!(store.fingerprint_key().unwrap().len(), 32);
        let key = dir.join("etcd/pki/ca.key");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let e = store.read("etcd/pki/ca.key", true).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        assert!(store.read("etcd/pki/ca.crt", false).is_ok());

        // Never over existing assets.
        assert!(write(&dir, &manifest(), &pki).unwrap_err().to_string().contains("not empty"));
    }

    #[test]
    fn failure_leaves_no_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = generate(
            "c1",
            &[Endpoint::parse("10.0.0.1").unwrap()],
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
        // A file where the parent directory must be: refused, nothing made.
        let dir = tmp.path().join("assets");
        let blocker = tmp.path().join("blocked");
        fs::write(&blocker, b"x").unwrap();
        assert!(write(&blocker.join("assets"), &manifest(), &pki).is_err());
        assert!(!dir.exists());
        let names: Vec<_> =
            fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["blocked"]);
    }
}
