//! The worker role: containerd's configuration, a CNI network (bridge and
//! host-local on this node's pod subnet, plus portmap), the kubelet's
//! configuration and flags, and a bootstrap kubeconfig with the bootstrap
//! token from the bundle. systemd starts containerd and the kubelet after
//! keel-bootstrap.

use serde_json::json;

use crate::imds::Identity;
use crate::layout::Layout;
use crate::net::Ipv4Cidr;
use crate::userdata::UserData;

use super::kube;

pub const CONTAINERD_CONFIG: &str = "etc/containerd/config.toml";
pub const CNI_CONFLIST: &str = "etc/cni/net.d/10-keel.conflist";
pub const BOOTSTRAP_KUBECONFIG: &str = "etc/kubernetes/bootstrap-kubelet.kubeconfig";
pub const BOOTSTRAP_TOKEN: &str = "kubernetes/bootstrap-token";
/// Where Debian's containernetworking-plugins installs the plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// containerd's configuration (version 2: containerd 1.7 reads it, and
/// 2.x migrates it on load).
pub fn containerd_config(layout: &Layout) -> String {
    format!(
        "# Written by keel-bootstrap at boot.\n\
         version = 2\n\
         \n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n\
         default_runtime_name = \"runc\"\n\
         \n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n\
         runtime_type = \"io.containerd.runc.v2\"\n\
         \n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n\
         SystemdCgroup = true\n\
         \n\
         [plugins.\"io.containerd.grpc.v1.cri\".cni]\n\
         bin_dir = \"{CNI_BIN_DIR}\"\n\
         conf_dir = \"{}\"\n",
        layout.shown("etc/cni/net.d")
    )
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("pod CIDR {cidr}: {message}")]
    PodCidr { cidr: String, message: String },
    #[error("private IPv4 address {0:?} is not an IPv4 address")]
    NodeIp(String),
}

/// The CNI network list: a bridge with host-local addresses from this
/// node's /24 of the pod CIDR, and portmap.
pub fn cni_conflist(ud: &UserData, id: &Identity) -> Result<String, WorkerError> {
    let cidr = Ipv4Cidr::parse(ud.pod_cidr()).map_err(|message| WorkerError::PodCidr { cidr: ud.pod_cidr().into(), message })?;
    let ip = id.private_ipv4.parse().map_err(|_| WorkerError::NodeIp(id.private_ipv4.clone()))?;
    let subnet = cidr.node_subnet(ip).ok_or_else(|| WorkerError::PodCidr {
        cidr: ud.pod_cidr().into(),
        message: "must be a /16 or larger to give each node a /24".into(),
    })?;
    let doc = json!({
        "cniVersion": "1.0.0",
        "name": "keel",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": subnet.to_string() }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                },
            },
            { "type": "portmap", "capabilities": { "portMappings": true } },
        ],
    });
    Ok(kube::pretty(&doc))
}
