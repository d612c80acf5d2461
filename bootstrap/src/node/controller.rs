//! The controller role: the etcd cluster found by tags and checked to
//! answer with the API server's etcd client certificate; certificates
//! issued here from the cluster CA (API server serving certificate, its
//! kubelet client, the controller manager's, scheduler's and kubelet's
//! client certificates) and from the front-proxy CA; flags for
//! kube-apiserver, kube-controller-manager and kube-scheduler;
//! containerd's configuration (the worker's: the controller runs a
//! kubelet too) and the kubelet's.

use std::net::IpAddr;

use keel_contract::assets::paths;

use crate::discovery::Peer;
use crate::etcd_api::EtcdApi;
use crate::imds::Identity;
use crate::layout::Layout;
use crate::net::Ipv4Cidr;
use crate::pki::{Ca, Issued, PkiError, Request, Usage};
use crate::userdata::UserData;

use super::{kube, NodeError};

pub const API_PORT: u16 = 6443;
const PKI: &str = "etc/kubernetes/pki";

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("{0}")]
    Pki(#[from] PkiError),
    #[error("{what} {value:?} is not an IP address")]
    BadIp { what: &'static str, value: String },
    #[error("service CIDR {0}")]
    ServiceCidr(String),
}

/// A certificate issued here: name of its files under the PKI dir.
pub struct Cert {
    pub name: &'static str,
    pub issued: Issued,
}

pub fn pki_path(name: &str, ext: &str) -> String {
    format!("{PKI}/{name}.{ext}")
}

/// Issues every certificate the control plane needs on this node.
pub fn issue(
    ud: &UserData,
    id: &Identity,
    ca: &Ca,
    front_proxy: &Ca,
) -> Result<Vec<Cert>, ControllerError> {
    let ip: IpAddr = id.private_ipv4.parse().map_err(|_| ControllerError::BadIp {
        what: "private IPv4",
        value: id.private_ipv4.clone(),
    })?;
    let svc = Ipv4Cidr::parse(ud.service_cidr()).map_err(ControllerError::ServiceCidr)?.nth(1);
    let loopback = IpAddr::from([127, 0, 0, 1]);
    let domain = ud.cluster_domain();
    let mut dns = vec![
        id.local_hostname.clone(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        format!("kubernetes.default.svc.{domain}"),
        "localhost".into(),
    ];
    let mut ips = vec![ip, IpAddr::V4(svc), loopback];
    match ud.api_host().parse::<IpAddr>() {
        Ok(a) => ips.insert(0, a),
        Err(_) => dns.insert(0, ud.api_host().to_string()),
    }
    let client = |what, cn, org| Request {
        what,
        common_name: cn,
        organization: org,
        dns_names: vec![],
        ips: vec![],
        usage: Usage::Client,
    };
    let node_cn = format!("system:node:{}", id.local_hostname);
    let mut out = vec![Cert {
        name: "apiserver",
        issued: ca.issue(&Request {
            what: "API server serving certificate",
            common_name: "kube-apiserver",
            organization: None,
            dns_names: dns,
            ips,
            usage: Usage::Server,
        })?,
    }];
    for (name, what, cn, org) in [
        (
            "apiserver-kubelet-client",
            "API server kubelet client certificate",
            "kube-apiserver-kubelet-client",
            Some("system:masters"),
        ),
        (
            "controller-manager",
            "controller manager client certificate",
            "system:kube-controller-manager",
            None,
        ),
        ("scheduler", "scheduler client certificate", "system:kube-scheduler", None),
        ("kubelet-client", "kubelet client certificate", node_cn.as_str(), Some("system:nodes")),
    ] {
        out.push(Cert { name, issued: ca.issue(&client(what, cn, org))? });
    }
    out.push(Cert {
        name: "front-proxy-client",
        issued: front_proxy.issue(&client(
            "front-proxy client certificate",
            "front-proxy-client",
            None,
        ))?,
    });
    Ok(out)
}

pub const APISERVER_ENV: &str = "etc/default/kube-apiserver";
pub const CONTROLLER_MANAGER_ENV: &str = "etc/default/kube-controller-manager";
pub const SCHEDULER_ENV: &str = "etc/default/kube-scheduler";
pub const CONTROLLER_MANAGER_KUBECONFIG: &str = "etc/kubernetes/controller-manager.kubeconfig";
pub const SCHEDULER_KUBECONFIG: &str = "etc/kubernetes/scheduler.kubeconfig";
pub const KUBELET_KUBECONFIG: &str = "etc/kubernetes/kubelet.kubeconfig";

/// The variables of kube-apiserver's, kube-controller-manager's and
/// kube-scheduler's environment files: one of split flags, one per flag
/// that carries a user data value (their units name those `${VAR}`).
pub const APISERVER_ARGS: &str = "KUBE_APISERVER_ARGS";
pub const APISERVER_SERVICE_CIDR: &str = "KUBE_APISERVER_SERVICE_CIDR";
pub const APISERVER_SA_ISSUER: &str = "KUBE_APISERVER_SA_ISSUER";
pub const CONTROLLER_MANAGER_ARGS: &str = "KUBE_CONTROLLER_MANAGER_ARGS";
pub const CONTROLLER_MANAGER_CLUSTER_NAME: &str = "KUBE_CONTROLLER_MANAGER_CLUSTER_NAME";
pub const CONTROLLER_MANAGER_CLUSTER_CIDR: &str = "KUBE_CONTROLLER_MANAGER_CLUSTER_CIDR";
pub const CONTROLLER_MANAGER_SERVICE_CIDR: &str = "KUBE_CONTROLLER_MANAGER_SERVICE_CIDR";
pub const SCHEDULER_ARGS: &str = "KUBE_SCHEDULER_ARGS";

/// kube-apiserver's flags.
pub fn apiserver_env(
    layout: &Layout,
    ud: &UserData,
    id: &Identity,
    etcd: &[Peer],
) -> Result<String, kube::FlagError> {
    let p = |n: &str, e: &str| layout.shown(&pki_path(n, e));
    let endpoints: Vec<String> =
        etcd.iter().map(|e| super::etcd::client_url(&e.private_ip)).collect();
    let args = vec![
        format!("--advertise-address={}", id.private_ipv4),
        format!("--secure-port={API_PORT}"),
        "--allow-privileged=true".into(),
        "--authorization-mode=Node,RBAC".into(),
        "--enable-admission-plugins=NodeRestriction".into(),
        "--enable-bootstrap-token-auth=true".into(),
        format!("--client-ca-file={}", p("ca", "crt")),
        format!("--tls-cert-file={}", p("apiserver", "crt")),
        format!("--tls-private-key-file={}", p("apiserver", "key")),
        format!("--kubelet-client-certificate={}", p("apiserver-kubelet-client", "crt")),
        format!("--kubelet-client-key={}", p("apiserver-kubelet-client", "key")),
        format!("--etcd-servers={}", endpoints.join(",")),
        format!("--etcd-cafile={}", layout.shown("etc/etcd/pki/ca.crt")),
        format!("--etcd-certfile={}", p("apiserver-etcd-client", "crt")),
        format!("--etcd-keyfile={}", p("apiserver-etcd-client", "key")),
        format!(
            "--encryption-provider-config={}",
            layout.shown("etc/kubernetes/encryption-config.yaml")
        ),
        format!("--service-account-key-file={}", p("sa", "pub")),
        format!("--service-account-signing-key-file={}", p("sa", "key")),
        format!("--requestheader-client-ca-file={}", p("front-proxy-ca", "crt")),
        "--requestheader-allowed-names=front-proxy-client".into(),
        "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
        "--requestheader-group-headers=X-Remote-Group".into(),
        "--requestheader-username-headers=X-Remote-User".into(),
        format!("--proxy-client-cert-file={}", p("front-proxy-client", "crt")),
        format!("--proxy-client-key-file={}", p("front-proxy-client", "key")),
    ];
    kube::Flags {
        split: (APISERVER_ARGS, args),
        single: vec![
            (APISERVER_SERVICE_CIDR, format!("--service-cluster-ip-range={}", ud.service_cidr())),
            (
                APISERVER_SA_ISSUER,
                format!(
                    "--service-account-issuer=https://kubernetes.default.svc.{}",
                    ud.cluster_domain()
                ),
            ),
        ],
    }
    .render()
}

/// kube-controller-manager's flags.
pub fn controller_manager_env(layout: &Layout, ud: &UserData) -> Result<String, kube::FlagError> {
    let p = |n: &str, e: &str| layout.shown(&pki_path(n, e));
    let kc = layout.shown(CONTROLLER_MANAGER_KUBECONFIG);
    let args = vec![
        "--bind-address=127.0.0.1".into(),
        format!("--kubeconfig={kc}"),
        format!("--authentication-kubeconfig={kc}"),
        format!("--authorization-kubeconfig={kc}"),
        format!("--cluster-signing-cert-file={}", p("ca", "crt")),
        format!("--cluster-signing-key-file={}", p("ca", "key")),
        format!("--root-ca-file={}", p("ca", "crt")),
        format!("--service-account-private-key-file={}", p("sa", "key")),
        "--use-service-account-credentials=true".into(),
        "--controllers=*,bootstrapsigner,tokencleaner".into(),
        "--allocate-node-cidrs=true".into(),
        format!("--node-cidr-mask-size={}", crate::userdata::NODE_CIDR_MASK),
        format!("--requestheader-client-ca-file={}", p("front-proxy-ca", "crt")),
        "--leader-elect=true".into(),
    ];
    kube::Flags {
        split: (CONTROLLER_MANAGER_ARGS, args),
        single: vec![
            (CONTROLLER_MANAGER_CLUSTER_NAME, format!("--cluster-name={}", ud.cluster)),
            (CONTROLLER_MANAGER_CLUSTER_CIDR, format!("--cluster-cidr={}", ud.pod_cidr())),
            (
                CONTROLLER_MANAGER_SERVICE_CIDR,
                format!("--service-cluster-ip-range={}", ud.service_cidr()),
            ),
        ],
    }
    .render()
}

/// kube-scheduler's flags.
pub fn scheduler_env(layout: &Layout) -> Result<String, kube::FlagError> {
    let kc = layout.shown(SCHEDULER_KUBECONFIG);
    let args = vec![
        "--bind-address=127.0.0.1".into(),
        format!("--kubeconfig={kc}"),
        format!("--authentication-kubeconfig={kc}"),
        format!("--authorization-kubeconfig={kc}"),
        "--leader-elect=true".into(),
    ];
    kube::Flags { split: (SCHEDULER_ARGS, args), single: vec![] }.render()
}

/// The local API server, for the components on this node.
pub fn local_server() -> String {
    format!("https://127.0.0.1:{API_PORT}")
}

/// The `--etcd-servers=` list of a kube-apiserver environment file.
pub fn etcd_servers_in(env: &str) -> Option<Vec<String>> {
    env.split(|c: char| c.is_whitespace() || c == '"')
        .find_map(|a| a.strip_prefix("--etcd-servers="))
        .map(|v| v.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect())
}

/// `env` with its `--etcd-servers=` list replaced by `servers`.
pub fn with_etcd_servers(env: &str, servers: &[String]) -> String {
    let mut out = String::with_capacity(env.len());
    let mut rest = env;
    while let Some(at) = rest.find("--etcd-servers=") {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let end = tail.find(|c: char| c.is_whitespace() || c == '"').unwrap_or(tail.len());
        out.push_str(&format!("--etcd-servers={}", servers.join(",")));
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// The client URLs of the started, voting members, as the first of
/// `candidates` that answers reports them, sorted.
pub async fn etcd_servers_now(
    api: &EtcdApi,
    candidates: &[String],
) -> Result<Vec<String>, NodeError> {
    let mut failures = Vec::new();
    for c in candidates {
        match api.member_list(c).await {
            Ok(members) => {
                let mut urls: Vec<String> = members
                    .iter()
                    .filter(|m| !m.is_learner)
                    .flat_map(|m| m.client_urls.iter().cloned())
                    .collect();
                urls.sort();
                urls.dedup();
                if urls.is_empty() {
                    return Err(NodeError::NoVotingMember { endpoint: c.clone() });
                }
                return Ok(urls);
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    Err(NodeError::NoEtcdAnswer { failures: failures.join("; ") })
}

/// The "control plane config" step: the certificates issued here, the
/// components' kubeconfigs and the flags of kube-apiserver,
/// kube-controller-manager and kube-scheduler.
pub fn write_config(
    layout: &Layout,
    ud: &UserData,
    id: &Identity,
    etcd: &[Peer],
    certs: &[Cert],
) -> Result<(), NodeError> {
    for c in certs {
        super::write(layout, &pki_path(c.name, "key"), 0o600, c.issued.key_pem.as_bytes())?;
        super::write(layout, &pki_path(c.name, "crt"), 0o644, c.issued.cert_pem.as_bytes())?;
    }
    let cert = |n: &str| kube::Credential::Certificate {
        cert: layout.shown(&pki_path(n, "crt")),
        key: layout.shown(&pki_path(n, "key")),
    };
    let server = local_server();
    for (path, user, cred) in [
        (
            CONTROLLER_MANAGER_KUBECONFIG,
            "system:kube-controller-manager",
            cert("controller-manager"),
        ),
        (SCHEDULER_KUBECONFIG, "system:kube-scheduler", cert("scheduler")),
        (KUBELET_KUBECONFIG, "kubelet", cert("kubelet-client")),
    ] {
        super::write(
            layout,
            path,
            0o600,
            kube::kubeconfig(layout, &ud.cluster, &server, user, &cred).as_bytes(),
        )?;
    }
    super::write(layout, APISERVER_ENV, 0o644, apiserver_env(layout, ud, id, etcd)?.as_bytes())?;
    super::write(
        layout,
        CONTROLLER_MANAGER_ENV,
        0o644,
        controller_manager_env(layout, ud)?.as_bytes(),
    )?;
    super::write(layout, SCHEDULER_ENV, 0o644, scheduler_env(layout)?.as_bytes())
}

/// The "kubelet config" step: the KubeletConfiguration and the kubelet's
/// flags, with the client certificate's kubeconfig.
pub fn write_kubelet_config(
    layout: &Layout,
    ud: &UserData,
    id: &Identity,
) -> Result<(), NodeError> {
    super::write(
        layout,
        kube::KUBELET_CONFIG,
        0o644,
        kube::kubelet_config(layout, ud, id).as_bytes(),
    )?;
    let env = kube::kubelet_env(layout, ud, id, None, &layout.shown(KUBELET_KUBECONFIG))?;
    super::write(layout, kube::KUBELET_ENV, 0o644, env.as_bytes())
}

/// The "certificates" step: [`issue`] with the cluster and front-proxy CAs
/// of the controller's bundle.
pub fn issue_from_assets(
    ud: &UserData,
    id: &Identity,
    assets: &super::assets::Assets,
) -> Result<Vec<Cert>, NodeError> {
    let text = |p: &str| assets.text(p);
    let ca =
        Ca::load("kubernetes/pki/ca.crt and ca.key", text(paths::CA_CRT)?, text(paths::CA_KEY)?)?;
    let fp = Ca::load(
        "kubernetes/pki/front-proxy-ca.crt and front-proxy-ca.key",
        text(paths::FRONT_PROXY_CA_CRT)?,
        text(paths::FRONT_PROXY_CA_KEY)?,
    )?;
    Ok(issue(ud, id, &ca, &fp)?)
}
