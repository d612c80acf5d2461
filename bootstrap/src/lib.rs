//! keel-bootstrap's library: what a node does at boot (`node::run`), and
//! the transport pieces the `keel` builder shares with it (one AWS client
//! configuration, one retry policy, atomic file writes, the KMS and S3
//! envelope around bundles, one error-chain printer). The formats both
//! sides must agree on (roles, tags, user data, bundles, asset paths, name
//! rules, kubeconfigs) are in the `keel-contract` crate.

pub mod atomic_file;
pub mod aws;
pub mod discovery;
pub mod dns;
pub mod envelope;
pub mod error_chain;
pub mod etcd_api;
pub mod etcd_data;
pub mod formation;
pub mod iam;
pub mod imds;
pub mod layout;
pub mod node;
pub mod pki;
pub mod retry;
pub mod snapshot;
pub mod status;

// The contract with the builder, under the names the modules here use.
pub(crate) use keel_contract::{bundle, join, net, role, tags, userdata, Role};
