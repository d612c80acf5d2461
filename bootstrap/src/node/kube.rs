//! Kubernetes configuration shared by the controller and worker roles:
//! kubeconfigs, the kubelet's KubeletConfiguration (JSON, which is valid
//! YAML) and its flags, and systemd environment files for flags.

use keel_contract::kubeconfig::{CaSource, Kubeconfig};
use serde_json::json;

use crate::imds::Identity;
use crate::layout::Layout;
use crate::userdata::UserData;

pub use keel_contract::kubeconfig::Credential;

pub const CA_CRT: &str = "etc/kubernetes/pki/ca.crt";
pub const KUBELET_CONFIG: &str = "etc/kubernetes/kubelet/config.json";
pub const KUBELET_ENV: &str = "etc/default/kubelet";
/// Where the kubelet writes the kubeconfig it gets after bootstrapping.
pub const KUBELET_KUBECONFIG: &str = "var/lib/kubelet/kubeconfig";
/// containerd's socket: where containerd listens (its config) and where
/// the kubelet reaches it (containerRuntimeEndpoint).
pub const CONTAINERD_SOCKET: &str = "run/containerd/containerd.sock";

/// A kubeconfig (JSON) for one user against `server`, with the cluster CA
/// as the node sees it.
pub fn kubeconfig(
    layout: &Layout,
    cluster: &str,
    server: &str,
    user: &str,
    credential: &Credential<'_>,
) -> String {
    Kubeconfig {
        cluster,
        server,
        ca: CaSource::File(layout.shown(CA_CRT)),
        user,
        credential: credential.clone(),
        context: "default",
    }
    .render()
}

pub(crate) fn pretty(v: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

/// The kubelet's KubeletConfiguration.
pub fn kubelet_config(layout: &Layout, ud: &UserData, id: &Identity) -> String {
    let doc = json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "authentication": {
            "anonymous": { "enabled": false },
            "webhook": { "enabled": true },
            "x509": { "clientCAFile": layout.shown(CA_CRT) },
        },
        "authorization": { "mode": "Webhook" },
        "cgroupDriver": "systemd",
        "clusterDNS": [ud.cluster_dns()],
        "clusterDomain": ud.cluster_domain(),
        "containerRuntimeEndpoint": format!("unix://{}", layout.shown(CONTAINERD_SOCKET)),
        "maxPods": ud.max_pods(),
        "providerID": format!("aws:///{}/{}", id.availability_zone, id.instance_id),
        "rotateCertificates": true,
        "serverTLSBootstrap": true,
        "tlsMinVersion": "VersionTLS12",
    });
    pretty(&doc)
}

/// The kubelet's flags (`/etc/default/kubelet`, `KUBELET_ARGS`).
pub fn kubelet_env(
    layout: &Layout,
    ud: &UserData,
    id: &Identity,
    bootstrap_kubeconfig: Option<&str>,
    kubeconfig: &str,
) -> String {
    let mut args = vec![
        format!("--config={}", layout.shown(KUBELET_CONFIG)),
        format!("--kubeconfig={kubeconfig}"),
        format!("--hostname-override={}", id.local_hostname),
        format!("--node-ip={}", id.private_ipv4),
    ];
    if let Some(b) = bootstrap_kubeconfig {
        args.push(format!("--bootstrap-kubeconfig={b}"));
    }
    if !ud.node_labels().is_empty() {
        args.push(format!("--node-labels={}", ud.node_labels().join(",")));
    }
    env_file("KUBELET_ARGS", &args)
}

/// A systemd environment file with one variable holding flags.
pub(crate) fn env_file(var: &str, args: &[String]) -> String {
    let mut out = String::from("# Written by keel-bootstrap at boot.\n");
    out.push_str(&format!("{var}=\"{}\"\n", args.join(" ")));
    out
}
