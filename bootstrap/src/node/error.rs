//! What a node's steps and periodic tasks report when they fail: the
//! errors of the modules they call, unchanged, and their own (files,
//! the host name, what the bundle or etcd holds), each naming what was
//! being done and to what. A step's failure reaches the console as
//! `keel-bootstrap: <step>: failed: <this error>` (see `super::BootError`),
//! so the texts here are the console's.

use std::path::PathBuf;

use crate::aws::NodeConfigError;
use crate::discovery::DiscoveryError;
use crate::envelope::EnvelopeError;
use crate::etcd_api::EtcdApiError;
use crate::imds::ImdsError;
use crate::pki::PkiError;
use crate::snapshot::SnapshotError;
use crate::userdata::UserDataError;

use super::assets::AssetsError;
use super::controller::ControllerError;
use super::etcd::EtcdError;
use super::kube::FlagError;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("reading {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("writing {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    /// A file the boot wrote lacks a setting the task needs.
    #[error("{} has no {setting}", path.display())]
    Missing { path: PathBuf, setting: String },
    #[error("{name:?} from the metadata service is not a valid host name")]
    HostName { name: String },
    #[error("sethostname({name}): {source}")]
    SetHostname { name: String, source: std::io::Error },
    #[error("the instance has no user data: launch it with the output of `keel userdata`")]
    NoUserData,
    #[error(
        "kubernetes/bootstrap-token in the bundle is not a bootstrap token \
         (<6 chars>.<16 chars>, lowercase letters and digits)"
    )]
    NotABootstrapToken,
    #[error(
        "containerd {version}: keel-bootstrap writes configuration for containerd 1.6, 1.7 \
         and 2.x only"
    )]
    UnknownContainerd { version: String },
    #[error(
        "{healthy} of {members} etcd members answer with the API server's client certificate: \
         {failures}"
    )]
    EtcdUnhealthy { healthy: usize, members: usize, failures: String },
    #[error("{endpoint} lists no started voting member")]
    NoVotingMember { endpoint: String },
    #[error("no etcd member answered: {failures}")]
    NoEtcdAnswer { failures: String },
    #[error("{command}: {source}")]
    Run { command: &'static str, source: std::io::Error },
    #[error("{command}: no answer within {after:?}")]
    Timeout { command: &'static str, after: std::time::Duration },
    #[error("meta-data/mac: {why}")]
    PrimaryMac { why: String },
    #[error("{command}: {status}")]
    Exit { command: &'static str, status: std::process::ExitStatus },
    #[error(transparent)]
    Imds(#[from] ImdsError),
    #[error(transparent)]
    UserData(#[from] UserDataError),
    #[error(transparent)]
    AwsConfig(#[from] NodeConfigError),
    /// Boxed: the bundle's errors are large, and every step returns this.
    #[error(transparent)]
    Envelope(Box<EnvelopeError>),
    #[error(transparent)]
    Assets(#[from] AssetsError),
    #[error(transparent)]
    Components(#[from] keel_contract::image::ComponentsError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    EtcdApi(#[from] EtcdApiError),
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Controller(#[from] ControllerError),
    #[error(transparent)]
    Flag(#[from] FlagError),
}

impl From<EnvelopeError> for NodeError {
    fn from(e: EnvelopeError) -> Self {
        NodeError::Envelope(Box::new(e))
    }
}
