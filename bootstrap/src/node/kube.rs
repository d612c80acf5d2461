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

/// The taint a controller registers with, so that only pods that tolerate
/// it land next to the cluster CA and service-account keys.
pub const CONTROL_PLANE_TAINT: &str = "node-role.kubernetes.io/control-plane";

/// The kubelet's KubeletConfiguration. A controller's kubelet registers
/// its node with the control-plane taint (`registerWithTaints`: applied
/// only when the Node object is created, as `--register-with-taints` is).
pub fn kubelet_config(layout: &Layout, ud: &UserData, id: &Identity) -> String {
    let mut doc = json!({
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
        // The image sets the kernel settings the kubelet needs
        // (80-keel-kubernetes.conf); with this the kubelet refuses to
        // start when one differs instead of changing it (CIS Kubernetes
        // Benchmark).
        "protectKernelDefaults": true,
        "providerID": format!("aws:///{}/{}", id.availability_zone, id.instance_id),
        "rotateCertificates": true,
        // Self-made serving certificates, as kubeadm's default: nothing
        // approves kubelet-serving requests (see `crate::join`).
        "serverTLSBootstrap": false,
        "tlsMinVersion": "VersionTLS12",
    });
    if ud.role == crate::Role::Controller {
        doc["registerWithTaints"] = json!([{ "key": CONTROL_PLANE_TAINT, "effect": "NoSchedule" }]);
    }
    pretty(&doc)
}

/// The kubelet's split flags, and its single argument carrying user data.
pub const KUBELET_ARGS: &str = "KUBELET_ARGS";
pub const KUBELET_NODE_LABELS: &str = "KUBELET_NODE_LABELS";

/// The kubelet's flags (`/etc/default/kubelet`): paths and what the
/// metadata service says in `KUBELET_ARGS`, the node labels from user
/// data as one argument in `KUBELET_NODE_LABELS` (`--node-labels=` when
/// there are none).
pub fn kubelet_env(
    layout: &Layout,
    ud: &UserData,
    id: &Identity,
    bootstrap_kubeconfig: Option<&str>,
    kubeconfig: &str,
) -> Result<String, FlagError> {
    let mut args = vec![
        format!("--config={}", layout.shown(KUBELET_CONFIG)),
        format!("--kubeconfig={kubeconfig}"),
        format!("--hostname-override={}", id.local_hostname),
        format!("--node-ip={}", id.private_ipv4),
    ];
    if let Some(b) = bootstrap_kubeconfig {
        args.push(format!("--bootstrap-kubeconfig={b}"));
    }
    let labels = format!("--node-labels={}", ud.node_labels().join(","));
    Flags { split: (KUBELET_ARGS, args), single: vec![(KUBELET_NODE_LABELS, labels)] }.render()
}

/// A flag that would not reach its service as written.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{var}: argument {arg:?} {why}")]
pub struct FlagError {
    pub var: &'static str,
    pub arg: String,
    pub why: &'static str,
}

/// One service's flags as its unit passes them from an environment file.
/// systemd splits `$VAR` at whitespace, so `split` holds only flags made
/// of constants, paths and metadata-service values; every flag carrying a
/// user data value is its own variable, which the unit names as `${VAR}`
/// (exactly one argument, never split). Every argument is checked to hold
/// no whitespace, quote, backslash, `$` or control character, so each
/// reaches the service exactly as rendered.
pub struct Flags {
    pub split: (&'static str, Vec<String>),
    pub single: Vec<(&'static str, String)>,
}

impl Flags {
    pub fn render(&self) -> Result<String, FlagError> {
        let check = |var: &'static str, arg: &String| {
            let why = if arg.is_empty() {
                Some("is empty")
            } else if arg.chars().any(|c| {
                c.is_whitespace() || c.is_control() || matches!(c, '"' | '\\' | '\'' | '$')
            }) {
                Some("holds whitespace, a quote, a backslash, '$' or a control character")
            } else {
                None
            };
            why.map_or(Ok(()), |why| Err(FlagError { var, arg: arg.clone(), why }))
        };
        let (var, args) = &self.split;
        let mut out = String::from("# Written by keel-bootstrap at boot.\n");
        for a in args {
            check(var, a)?;
        }
        out.push_str(&format!("{var}=\"{}\"\n", args.join(" ")));
        for (var, arg) in &self.single {
            check(var, arg)?;
            out.push_str(&format!("{var}=\"{arg}\"\n"));
        }
        Ok(out)
    }
}
