//! The worker role: containerd's configuration with a CNI network template
//! (bridge and host-local on the pod range the controller manager gives
//! the node, plus portmap), the kubelet's
//! configuration and flags, and a bootstrap kubeconfig with the bootstrap
//! token from the bundle. systemd starts containerd and the kubelet after
//! keel-bootstrap.

use serde_json::json;

use crate::imds::Identity;
use crate::layout::Layout;
use crate::userdata::UserData;

use super::{kube, NodeError};

pub const CONTAINERD_CONFIG: &str = "etc/containerd/config.toml";
/// The CNI network template containerd renders with the node's pod range.
pub const CNI_TEMPLATE: &str = "etc/containerd/cni.conflist.template";
pub const BOOTSTRAP_KUBECONFIG: &str = "etc/kubernetes/bootstrap-kubelet.kubeconfig";
pub const BOOTSTRAP_TOKEN: &str = keel_contract::assets::paths::BOOTSTRAP_TOKEN;
/// Where the CNI plugins are: Debian's containernetworking-plugins puts
/// them there, and the profiles' install rule unpacks upstream's there.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// Where containerd reads the CNI network configuration.
pub const CNI_CONF_DIR: &str = "etc/cni/net.d";

/// The configuration schema a containerd version reads. containerd 1.7
/// (and 1.6, which the host tests run) reads `version = 2` (CRI settings under `io.containerd.grpc.v1.cri`);
/// 2.x reads `version = 3` (under `io.containerd.cri.v1.runtime`) and only
/// migrates older files with deprecation warnings; 2.1 replaced the CNI
/// `bin_dir` with the list `bin_dirs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerdSchema {
    /// containerd 1.6 and 1.7.
    V2,
    /// containerd 2.x; `bin_dirs` from 2.1 on.
    V3 { bin_dirs: bool },
}

impl ContainerdSchema {
    /// The schema containerd `version` (upstream `2.3.4` or Debian
    /// `1.7.24~ds1-6`) reads; versions Keel has not been tested with are
    /// refused rather than guessed.
    pub fn for_version(version: &str) -> Result<ContainerdSchema, NodeError> {
        match keel_contract::image::major_minor(version) {
            Some((1, 6 | 7)) => Ok(ContainerdSchema::V2),
            Some((2, 0)) => Ok(ContainerdSchema::V3 { bin_dirs: false }),
            Some((2, _)) => Ok(ContainerdSchema::V3 { bin_dirs: true }),
            _ => Err(NodeError::UnknownContainerd { version: version.to_string() }),
        }
    }
}

/// containerd's configuration in `schema`. containerd.service starts
/// containerd with it (`--config /etc/containerd/config.toml`); it listens
/// on the socket the kubelet's configuration names.
pub fn containerd_config(layout: &Layout, schema: ContainerdSchema) -> String {
    let (version, cri, bin) = match schema {
        ContainerdSchema::V2 => (2, "io.containerd.grpc.v1.cri", "bin_dir = \"{dir}\""),
        ContainerdSchema::V3 { bin_dirs: false } => {
            (3, "io.containerd.cri.v1.runtime", "bin_dir = \"{dir}\"")
        }
        ContainerdSchema::V3 { bin_dirs: true } => {
            (3, "io.containerd.cri.v1.runtime", "bin_dirs = [\"{dir}\"]")
        }
    };
    let bin = bin.replace("{dir}", CNI_BIN_DIR);
    format!(
        "# Written by keel-bootstrap at boot.\n\
         version = {version}\n\
         \n\
         [grpc]\n\
         address = \"{}\"\n\
         \n\
         [plugins.\"{cri}\".containerd]\n\
         default_runtime_name = \"runc\"\n\
         \n\
         [plugins.\"{cri}\".containerd.runtimes.runc]\n\
         runtime_type = \"io.containerd.runc.v2\"\n\
         \n\
         [plugins.\"{cri}\".containerd.runtimes.runc.options]\n\
         SystemdCgroup = true\n\
         \n\
         [plugins.\"{cri}\".cni]\n\
         {bin}\n\
         conf_dir = \"{}\"\n\
         conf_template = \"{}\"\n",
        layout.shown(kube::CONTAINERD_SOCKET),
        layout.shown(CNI_CONF_DIR),
        layout.shown(CNI_TEMPLATE)
    )
}

/// The CNI network list containerd writes into its conf_dir
/// (`10-containerd-net.conflist`) once the kubelet tells it the node's pod
/// range: a bridge with host-local addresses from `{{.PodCIDR}}` (the
/// Node's `spec.podCIDR`, which the controller manager allocates from the
/// cluster's pod CIDR, `--allocate-node-cidrs`), and portmap. No range is
/// derived on the node, so two nodes cannot collide. containerd skips the
/// template when a CNI plugin (a DaemonSet) has installed its own network.
pub fn cni_template() -> String {
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
                    "ranges": [[{ "subnet": "{{.PodCIDR}}" }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                },
            },
            { "type": "portmap", "capabilities": { "portMappings": true } },
        ],
    });
    kube::pretty(&doc)
}

/// The "containerd config" step: /etc/containerd/config.toml, in the
/// schema of the containerd the image carries (`/usr/lib/keel/components`),
/// and the CNI template it names.
pub fn write_containerd_config(layout: &Layout) -> Result<(), NodeError> {
    let components = keel_contract::image::read(&layout.root)?;
    let version = components.version("containerd")?;
    let schema = ContainerdSchema::for_version(version)?;
    super::write(layout, CNI_TEMPLATE, 0o644, cni_template().as_bytes())?;
    super::write(layout, CONTAINERD_CONFIG, 0o644, containerd_config(layout, schema).as_bytes())
}

/// The "kubelet config" step: the bootstrap kubeconfig with `token` (a
/// secret: 0600), the KubeletConfiguration and the kubelet's flags.
pub fn write_kubelet_config(
    layout: &Layout,
    ud: &UserData,
    id: &Identity,
    token: &str,
) -> Result<(), NodeError> {
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
    )?;
    super::write(layout, kube::KUBELET_ENV, 0o644, env.as_bytes())
}

/// A bootstrap token is `[a-z0-9]{6}.[a-z0-9]{16}`; the message never
/// quotes it.
fn check_token(token: &str) -> Result<(), NodeError> {
    let ok = token.split_once('.').is_some_and(|(id, secret)| {
        id.len() == 6
            && secret.len() == 16
            && (id.chars().chain(secret.chars()))
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    });
    if ok {
        Ok(())
    } else {
        Err(NodeError::NotABootstrapToken)
    }
}
