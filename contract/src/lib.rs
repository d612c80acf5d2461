//! The contract between the `keel` builder and `keel-bootstrap` on a node:
//! everything both sides must agree on, in one place, so that the builder
//! writes exactly what the node reads. Roles, EC2 tag names, the user data
//! schema, the asset bundle format and which files each role's bundle
//! holds, name rules, kubeconfig rendering, and the disk layout (GPT,
//! the /usr partitions a root hash names) that the builder writes and
//! keel-init reads in the initrd, the factory /etc both copy from, and the
//! primary network interface's drop-in keel-bootstrap writes and keel-init
//! checks.
//! Parsing, rendering and local files only: no network, no AWS (the KMS and S3 envelope is keel-bootstrap's
//! `envelope`).

pub mod assets;
pub mod bundle;
pub mod factory_etc;
pub mod gpt;
pub mod image;
pub mod initrd;
pub mod join;
pub mod kube_names;
pub mod kubeconfig;
pub mod names;
pub mod net;
pub mod primary_nic;
pub mod role;
pub mod tags;
pub mod userdata;

pub use role::Role;
