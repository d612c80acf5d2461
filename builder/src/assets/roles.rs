//! Which file goes into which role's bundle (least privilege; paths are
//! relative to the node's /etc and to the asset directory alike):
//!
//! - etcd: the etcd CA, certificate and key (nodes issue their own peer and
//!   server certificates at boot).
//! - controller: the cluster CA and key, the service-account key pair, the
//!   front-proxy CA and key, the API server's etcd client certificate and
//!   key, the etcd CA certificate (to verify etcd) and the encryption
//!   config for secrets at rest, and the objects nodes need to join (the
//!   bootstrap-token Secret and RBAC bindings, `keel_bootstrap::join`),
//!   which the first controller applies.
//! - worker: the cluster CA certificate and a bootstrap token, nothing else.
//!
//! Never in any bundle: the admin credentials and kubeconfig, the bootstrap
//! token's own Secret manifest (the controller gets it inside the join
//! objects) and the fingerprint key.

use keel_bootstrap::bundle::{Bundle, BundleFile};
use keel_bootstrap::Role;

use super::pki::{paths, PUBLIC_MODE, SECRET_MODE};
use super::store::Store;

const ETCD: &[&str] = &[paths::ETCD_CA_CRT, paths::ETCD_CA_KEY];
const CONTROLLER: &[&str] = &[
    paths::CA_CRT,
    paths::CA_KEY,
    paths::SA_KEY,
    paths::SA_PUB,
    paths::FRONT_PROXY_CA_CRT,
    paths::FRONT_PROXY_CA_KEY,
    paths::APISERVER_ETCD_CLIENT_CRT,
    paths::APISERVER_ETCD_CLIENT_KEY,
    paths::ETCD_CA_CRT,
    paths::ENCRYPTION_CONFIG,
    paths::JOIN_OBJECTS,
];
const WORKER: &[&str] = &[paths::CA_CRT, paths::BOOTSTRAP_TOKEN];

/// The CA certificates; replacing one needs `publish --rotate`.
pub const CA_CERTS: &[&str] = &[paths::CA_CRT, paths::ETCD_CA_CRT, paths::FRONT_PROXY_CA_CRT];

/// The files of `role`'s bundle.
pub fn files(role: Role) -> &'static [&'static str] {
    match role {
        Role::Etcd => ETCD,
        Role::Controller => CONTROLLER,
        Role::Worker => WORKER,
    }
}

/// The mode a file gets on the node: certificates and public keys 0644,
/// everything else (keys, tokens, the encryption config) 0600.
pub fn mode(path: &str) -> u32 {
    if path.ends_with(".crt") || path.ends_with(".pub") {
        PUBLIC_MODE
    } else {
        SECRET_MODE
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_get_no_key_and_nobody_gets_admin_credentials() {
        assert!(files(Role::Worker).iter().all(|p| !p.ends_with(".key")));
        for role in Role::ALL {
            for p in files(role) {
                assert!(!p.contains("admin"), "{role} gets {p}");
                assert!(keel_bootstrap::bundle::check_path(p).is_ok());
            }
        }
        assert!(!files(Role::Etcd).contains(&paths::CA_KEY));
        assert_eq!(mode(paths::SA_PUB), 0o644);
        assert_eq!(mode(paths::BOOTSTRAP_TOKEN), 0o600);
    }

    /// What `keel assets` puts in a bundle is what the node's table lets
    /// that role write, with modes no looser than the table's.
    #[test]
    fn every_bundle_file_is_allowed_by_the_nodes_table() {
        for role in Role::ALL {
            for p in files(role) {
                keel_bootstrap::bundle::check_role_file(role, p, mode(p))
                    .unwrap_or_else(|e| panic!("{role}: {e}"));
            }
        }
    }
}
