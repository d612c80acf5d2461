//! Where a node's files go. Everything is under a root (`/` on a node, a
//! temporary directory in tests); rendered configuration names the paths
//! as the node will see them, so golden files do not depend on the root.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Layout {
    /// The file system root files are written under.
    pub root: PathBuf,
    /// The root as named inside rendered configuration (`/` on a node).
    pub shown_root: PathBuf,
}

impl Layout {
    /// Files under `root`, named as under `root` (what tests that run real
    /// processes from the rendered files need).
    pub fn new(root: &Path) -> Layout {
        Layout { root: root.to_path_buf(), shown_root: root.to_path_buf() }
    }

    /// The node's own layout, for rendering golden files: paths shown as
    /// on a node whatever `root` is.
    pub fn node_view(root: &Path) -> Layout {
        Layout { root: root.to_path_buf(), shown_root: PathBuf::from("/") }
    }

    /// Where to write `rel` (e.g. `etc/etcd/pki/ca.crt`).
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// How configuration names `rel`.
    pub fn shown(&self, rel: &str) -> String {
        self.shown_root.join(rel).display().to_string()
    }

    /// Whether this is the running system's root (hostname may be set).
    pub(crate) fn is_system_root(&self) -> bool {
        self.root == Path::new("/")
    }
}

pub const ETCD_PKI: &str = "etc/etcd/pki";
pub const K8S_PKI: &str = "etc/kubernetes/pki";
pub(crate) const ETCD_DATA_DIR: &str = "var/lib/etcd";
/// Debian's etcd-server unit reads its environment from here.
pub(crate) const ETCD_ENV: &str = "etc/default/etcd";
