//! The cluster's asset files: where each one lives (paths relative to the
//! node's `/etc`, which the builder's asset directory mirrors), which of
//! them go into which role's bundle, and the mode each gets on the node.
//!
//! Least privilege:
//!
//! - etcd: the etcd CA, certificate and key (nodes issue their own peer and
//!   server certificates at boot).
//! - controller: the cluster CA and key, the service-account key pair, the
//!   front-proxy CA and key, the API server's etcd client certificate and
//!   key, the etcd CA certificate (to verify etcd) and the encryption
//!   config for secrets at rest.
//! - worker: the cluster CA certificate and a bootstrap token, nothing else.
//!
//! Never in any bundle: the admin credentials and kubeconfig, the bootstrap
//! token's Secret manifest and the fingerprint key.

use crate::Role;

/// Asset paths, relative to the node's `/etc` and to the asset directory.
pub mod paths {
    pub const CA_CRT: &str = "kubernetes/pki/ca.crt";
    pub const CA_KEY: &str = "kubernetes/pki/ca.key";
    pub const FRONT_PROXY_CA_CRT: &str = "kubernetes/pki/front-proxy-ca.crt";
    pub const FRONT_PROXY_CA_KEY: &str = "kubernetes/pki/front-proxy-ca.key";
    pub const SA_KEY: &str = "kubernetes/pki/sa.key";
    pub const SA_PUB: &str = "kubernetes/pki/sa.pub";
    pub const APISERVER_ETCD_CLIENT_CRT: &str = "kubernetes/pki/apiserver-etcd-client.crt";
    pub const APISERVER_ETCD_CLIENT_KEY: &str = "kubernetes/pki/apiserver-etcd-client.key";
    pub const ADMIN_CRT: &str = "kubernetes/pki/admin.crt";
    pub const ADMIN_KEY: &str = "kubernetes/pki/admin.key";
    pub const ADMIN_KUBECONFIG: &str = "kubernetes/admin.conf";
    pub const ENCRYPTION_CONFIG: &str = "kubernetes/encryption-config.yaml";
    pub const BOOTSTRAP_TOKEN: &str = "kubernetes/bootstrap-token";
    pub const BOOTSTRAP_TOKEN_SECRET: &str = "kubernetes/bootstrap-token-secret.yaml";
    pub const ETCD_CA_CRT: &str = "etcd/pki/ca.crt";
    pub const ETCD_CA_KEY: &str = "etcd/pki/ca.key";
}

/// Permission bits for certificates and public keys.
pub const PUBLIC_MODE: u32 = 0o644;
/// Permission bits for keys, tokens and files that embed them.
pub const SECRET_MODE: u32 = 0o600;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_get_no_key_and_nobody_gets_admin_credentials() {
        assert!(files(Role::Worker).iter().all(|p| !p.ends_with(".key")));
        for role in Role::ALL {
            for p in files(role) {
                assert!(!p.contains("admin"), "{role} gets {p}");
                assert!(crate::bundle::check_path(p).is_ok());
            }
        }
        assert!(!files(Role::Etcd).contains(&paths::CA_KEY));
        assert_eq!(mode(paths::SA_PUB), 0o644);
        assert_eq!(mode(paths::BOOTSTRAP_TOKEN), 0o600);
    }
}
