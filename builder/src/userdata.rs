//! `keel userdata`: renders a node's user data (the TOML that
//! keel-bootstrap reads at boot) from the same struct the node parses, and
//! checks it the same way, so a launch template never carries user data
//! the node would refuse.

use anyhow::Context;
use keel_contract::userdata::{self, Assets, Aws, Etcd, Kubelet, Kubernetes, UserData};
use keel_contract::Role;

/// Render user data for a node role's launch template.
#[derive(Debug, clap::Args)]
#[command(
    override_usage = "keel userdata --role <ROLE> --cluster <NAME> --bucket <BUCKET>\n       \
                            --api-endpoint <URL> [OPTIONS]"
)]
pub struct UserdataArgs {
    /// The node role: controller, etcd or worker.
    #[arg(long)]
    role: Role,
    /// The cluster name (the keel:cluster tag of its instances).
    #[arg(long)]
    cluster: String,
    /// The S3 bucket holding the cluster's asset bundles.
    #[arg(long)]
    bucket: String,
    /// Key prefix of the bundles in the bucket.
    #[arg(long, default_value = "")]
    prefix: String,
    /// The Kubernetes API endpoint, https://host:port.
    #[arg(long)]
    api_endpoint: String,
    /// How many etcd members the cluster has.
    #[arg(long, default_value_t = 3)]
    etcd_members: u32,
    /// Seconds to wait for the etcd members to appear.
    #[arg(long)]
    discovery_timeout: Option<u64>,
    /// Send AWS calls here (only for tests against emulated AWS).
    #[arg(long)]
    aws_endpoint_url: Option<String>,
    /// Service CIDR (default 10.96.0.0/12).
    #[arg(long)]
    service_cidr: Option<String>,
    /// Pod CIDR (default 10.244.0.0/16).
    #[arg(long)]
    pod_cidr: Option<String>,
    /// Kubelet max pods (default 110).
    #[arg(long)]
    max_pods: Option<u32>,
    /// A kubelet node label key=value (repeatable).
    #[arg(long = "node-label")]
    node_labels: Vec<String>,
    /// Print base64, as EC2's UserData field in a launch template takes.
    #[arg(long)]
    base64: bool,
}

impl UserdataArgs {
    pub fn user_data(&self) -> UserData {
        let kubernetes = (self.service_cidr.is_some() || self.pod_cidr.is_some()).then(|| {
            Kubernetes { service_cidr: self.service_cidr.clone(), pod_cidr: self.pod_cidr.clone() }
        });
        let kubelet = (self.max_pods.is_some() || !self.node_labels.is_empty()).then(|| Kubelet {
            max_pods: self.max_pods,
            cluster_dns: None,
            cluster_domain: None,
            node_labels: self.node_labels.clone(),
        });
        UserData {
            version: userdata::VERSION,
            cluster: self.cluster.clone(),
            role: self.role,
            api_endpoint: self.api_endpoint.clone(),
            assets: Assets { bucket: self.bucket.clone(), prefix: self.prefix.clone() },
            etcd: Etcd {
                expected_members: self.etcd_members,
                discovery_timeout_seconds: self.discovery_timeout,
                heartbeat_interval_ms: None,
                election_timeout_ms: None,
                quota_backend_bytes: None,
            },
            aws: self.aws_endpoint_url.clone().map(|u| Aws { endpoint_url: Some(u) }),
            kubernetes,
            kubelet,
        }
    }
}

pub fn run(args: &UserdataArgs) -> anyhow::Result<()> {
    let ud = args.user_data();
    let text = ud.to_toml().context("rendering user data")?;
    // The node's own parser is the check.
    UserData::parse(text.as_bytes(), args.role).context("checking the rendered user data")?;
    if args.base64 {
        use base64::Engine;
        println!("{}", base64::engine::general_purpose::STANDARD.encode(text.as_bytes()));
    } else {
        print!("{text}");
    }
    Ok(())
}
