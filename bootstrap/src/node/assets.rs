//! The role's assets: one S3 GetObject and one KMS Decrypt (through
//! `envelope::fetch_expecting`), then, once every file is checked to lie
//! under the role's own paths with a mode no looser than the format's
//! table (`bundle::check_role_file`), each file written atomically under
//! /etc with the mode the bundle gives it (keys 0600) before any byte is
//! written.

use std::collections::BTreeMap;

use zeroize::Zeroizing;

use crate::bundle::Bundle;
use crate::layout::Layout;

#[derive(Debug, thiserror::Error)]
pub enum AssetsError {
    #[error("writing {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("the {role} bundle has no {path}")]
    Missing { role: crate::Role, path: String },
    #[error("{path} in the bundle is not UTF-8 text")]
    NotText { path: String },
    #[error("refusing the bundle: {0}")]
    Refused(#[from] crate::bundle::BundleError),
}

/// The bundle's files by path (relative to /etc), kept in memory for the
/// role's steps (CA keys to issue certificates, the bootstrap token).
pub struct Assets {
    pub role: crate::Role,
    files: BTreeMap<String, Zeroizing<Vec<u8>>>,
}

impl Assets {
    /// Writes every file of `bundle` under the layout's /etc. `owner`
    /// chowns the files whose path starts with the given prefix (etcd's
    /// files to the etcd user).
    pub fn install(
        layout: &Layout,
        bundle: Bundle,
        owner: Option<(&str, u32, u32)>,
    ) -> Result<Assets, AssetsError> {
        for f in &bundle.files {
            crate::bundle::check_role_file(bundle.role, &f.path, f.mode)?;
        }
        let mut files = BTreeMap::new();
        for f in bundle.files {
            let path = layout.path("etc").join(&f.path);
            let err = |source| AssetsError::Write { path: path.display().to_string(), source };
            crate::atomic_file::write(&path, f.mode, &f.contents).map_err(err)?;
            if let Some((prefix, uid, gid)) = owner {
                if f.path.starts_with(prefix) {
                    std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(err)?;
                }
            }
            files.insert(f.path, f.contents);
        }
        Ok(Assets { role: bundle.role, files })
    }

    /// The contents of `path` (relative to /etc).
    pub fn get(&self, path: &str) -> Result<&[u8], AssetsError> {
        self.files
            .get(path)
            .map(|c| c.as_slice())
            .ok_or_else(|| AssetsError::Missing { role: self.role, path: path.to_string() })
    }

    pub fn text(&self, path: &str) -> Result<&str, AssetsError> {
        std::str::from_utf8(self.get(path)?)
            .map_err(|_| AssetsError::NotText { path: path.to_string() })
    }
}
