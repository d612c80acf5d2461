//! keel-bootstrap's library: what a node does at boot, and the formats that
//! the `keel` builder writes for it (roles, EC2 tag names, user data, asset
//! bundles). Keeping these in one crate means the builder writes exactly
//! what the node reads.

pub mod atomic_file;
pub mod aws;
pub mod discovery;
pub mod envelope;
pub mod etcd_api;
pub mod iam;
pub mod imds;
pub mod layout;
pub mod node;
pub mod pki;
pub mod retry;
pub mod status;

// The contract with the builder, under the names the modules here use.
pub(crate) use keel_contract::{bundle, join, net, role, tags, userdata, Role};
