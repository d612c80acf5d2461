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
pub const BOOTSTRAP_TOKEN: &str = keel_contract::assets::paths::BOOTSTRAP_TOKEN;
/// Where Debian's containernetworking-plugins installs the plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// Where containerd reads the CNI network configuration.
pub const CNI_CONF_DIR: &str = "etc/cni/net.d";

/// containerd's configuration (version 2: containerd 1.7 reads it, and
/// 2.x migrates it on load). containerd.service starts containerd with it
/// (`--config /etc/containerd/config.toml`); it listens on the socket the
/// kubelet's configuration names.
pub fn containerd_config(layout: &Layout) -> String {
    format!(
        "# Written by keel-bootstrap at boot.\n\
         version = 2\n\
         \n\
         [grpc]\n\
         address = \"{}\"\n\
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
        layout.shown(kube::CONTAINERD_SOCKET),
        layout.shown(CNI_CONF_DIR)
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
    let cidr = Ipv4Cidr::parse(ud.pod_cidr())
        .map_err(|message| WorkerError::PodCidr { cidr: ud.pod_cidr().into(), message })?;
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

/// The "containerd config" step: /etc/containerd/config.toml.
pub fn write_containerd_config(layout: &Layout) -> Result<(), String> {
    super::write(layout, CONTAINERD_CONFIG, 0o644, containerd_config(layout).as_bytes())
}

/// The "cni config" step: the CNI network list in containerd's conf_dir.
pub fn write_cni_config(layout: &Layout, ud: &UserData, id: &Identity) -> Result<(), String> {
    let conf = cni_conflist(ud, id).map_err(|e| e.to_string())?;
    super::write(layout, CNI_CONFLIST, 0o644, conf.as_bytes())
}

/// The "kubelet config" step: the bootstrap kubeconfig with `token` (a
/// secret: 0600), the KubeletConfiguration and the kubelet's flags.
pub fn write_kubelet_config(
    layout: &Layout,
    ud: &UserData,
    id: &Identity,
    token: &str,
) -> Result<(), String> {
    check_token(token)?;
    let kubeconfig = zeroize::Zeroizing::new(kube::kubeconfig(
        layout,
        &ud.cluster,
        &ud.api_endpoint,
        "kubelet-bootstrap",
        &kube::Credential::Token(token),
    ));
    super::write(layout, BOOTSTRAP_KUBECONFIG, 0o600, kubeconfig.as_bytes())?;
    super::write(
        layout,
        kube::KUBELET_CONFIG,
        0o644,
        kube::kubelet_config(layout, ud, id).as_bytes(),
    )?;
    let env = kube::kubelet_env(
        layout,
        ud,
        id,
        Some(&layout.shown(BOOTSTRAP_KUBECONFIG)),
        &layout.shown(kube::KUBELET_KUBECONFIG),
    );
    super::write(layout, kube::KUBELET_ENV, 0o644, env.as_bytes())
}

/// A bootstrap token is `[a-z0-9]{6}.[a-z0-9]{16}`; the message never
/// quotes it.
fn check_token(token: &str) -> Result<(), String> {
    let ok = token.split_once('.').is_some_and(|(id, secret)| {
        id.len() == 6
            && secret.len() == 16
            && (id.chars().chain(secret.chars()))
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    });
    if ok {
        Ok(())
    } else {
        Err("kubernetes/bootstrap-token in the bundle is not a bootstrap token (<6 chars>.<16 chars>, lowercase letters and digits)".into())
    }
}
