//! Reads a role's bundle from the asset directory. Which file goes into
//! which role's bundle, and with which mode, is the contract's
//! (`keel_contract::assets`).

use keel_contract::bundle::{Bundle, BundleFile};
use keel_contract::Role;

use super::pki::SECRET_MODE;
use super::store::Store;

pub use keel_contract::assets::{files, mode, CA_CERTS};

/// Reads `role`'s files from the asset directory into a bundle.
pub fn bundle(store: &Store, role: Role) -> anyhow::Result<Bundle> {
    let files = files(role)
        .iter()
        .map(|path| {
            let mode = mode(path);
            let contents = store.read(path, mode == SECRET_MODE)?;
            Ok(BundleFile { path: path.to_string(), mode, contents })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Bundle { cluster: store.manifest.cluster.clone(), role, files })
}
