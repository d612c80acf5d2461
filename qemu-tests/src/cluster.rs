//! One test run's cluster: the VM network, the emulated AWS account on its
//! host address, and the nodes registered in both: each node gets a fixed
//! DHCP lease (MAC -> address, hostname) and an EC2 instance with that
//! private address and the cluster and role tags, and keeps the identity
//! the metadata emulator serves it (instance id, AZ, private IP, hostname,
//! user data). The run's work directory is
//! `$CARGO_TARGET_DIR/qemu-runs/<test>-<pid>/` and stays after the run.
//!
//! Teardown: fields drop in declaration order (network last, after moto
//! that listens on it), on a normal end and on a panic; Ctrl-C and SIGTERM
//! are covered by `keel_testkit::teardown`, which every process guard and
//! the network register with.

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use keel_bootstrap::Role;

use crate::aws::{Account, AZ, REGION};
use crate::keel;
use crate::net::{Host, Network};
use crate::rundir;

/// What the metadata emulator serves one guest, and what the test knows
/// about it.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub role: Role,
    pub index: u8,
    pub mac: String,
    pub private_ip: Ipv4Addr,
    pub hostname: String,
    pub instance_id: String,
    pub region: String,
    pub availability_zone: String,
    pub ami: String,
}

pub struct Cluster {
    pub account: Account,
    pub net: Network,
    pub dir: PathBuf,
    pub name: String,
    nodes: Vec<Node>,
    next_index: u8,
}

/// The EC2-style private DNS name for an address.
pub fn private_dns_name(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("ip-{a}-{b}-{c}-{d}.{REGION}.compute.internal")
}

impl Cluster {
    /// Creates the work directory for `test`, the network and the account
    /// (moto, VPC and subnet, asset bucket, KMS key) for cluster `name`.
    pub async fn start(test: &str, name: &str) -> Result<Cluster> {
        let dir = rundir::create(test)?;
        let net = Network::create(&dir).context("creating the VM network (needs root)")?;
        let account = Account::create(net.host_ip(), &net.cidr(), name)
            .await
            .with_context(|| format!("creating the emulated AWS account on {}", net.host_ip()))?;
        Ok(Cluster { account, net, dir, name: name.into(), nodes: Vec::new(), next_index: 0 })
    }

    /// Registers a node: the next guest address, an instance of `ami`
    /// with this cluster's tags. Call [`Cluster::serve_dhcp`] once all
    /// nodes that boot together are added.
    pub async fn add_node(&mut self, name: &str, role: Role, ami: &str) -> Result<Node> {
        if self.nodes.iter().any(|n| n.name == name) {
            bail!("node {name} is already in cluster {}", self.name);
        }
        let index = self.next_index;
        if index >= 200 {
            bail!("too many nodes on one network");
        }
        self.next_index += 1;
        let private_ip = self.net.guest_ip(index);
        let instance = self.account.run_instance(ami, role, private_ip, name).await?;
        let node = Node {
            name: name.into(),
            role,
            index,
            mac: self.net.guest_mac(index),
            private_ip,
            hostname: private_dns_name(private_ip),
            instance_id: instance.id,
            region: REGION.into(),
            availability_zone: AZ.into(),
            ami: ami.into(),
        };
        self.nodes.push(node.clone());
        Ok(node)
    }

    /// (Re)starts dnsmasq with a fixed lease for every node added so far.
    pub fn serve_dhcp(&mut self) -> Result<()> {
        let hosts: Vec<Host> = self
            .nodes
            .iter()
            .map(|n| Host { mac: n.mac.clone(), ip: n.private_ip, hostname: short_hostname(&n.hostname) })
            .collect();
        self.net.serve_dhcp(&hosts)
    }

    /// Terminates a node's instance in EC2 (its VM is stopped by the
    /// caller first): discovery no longer lists it.
    pub async fn terminate(&mut self, name: &str) -> Result<Node> {
        let pos = self
            .nodes
            .iter()
            .position(|n| n.name == name)
            .with_context(|| format!("no node {name} in cluster {}", self.name))?;
        let node = self.nodes.remove(pos);
        self.account.terminate(&node.instance_id).await?;
        Ok(node)
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Result<&Node> {
        self.nodes.iter().find(|n| n.name == name).with_context(|| format!("no node {name} in cluster {}", self.name))
    }

    /// `keel assets init` for this cluster into `<work dir>/assets`.
    pub fn init_assets(&self, api_endpoint: &str) -> Result<PathBuf> {
        let dir = self.dir.join("assets");
        keel::run(
            ["assets", "init", "--cluster", &self.name, "--api-endpoint", api_endpoint, "--out"]
                .map(OsStr::new)
                .into_iter()
                .chain([dir.as_os_str()]),
            &[],
        )?;
        Ok(dir)
    }

    /// `keel assets publish` of `assets` into the account's bucket, under
    /// the prefix [`Cluster::assets_prefix`], sealed with its KMS key.
    pub fn publish_assets(&self, assets: &Path) -> Result<()> {
        let a = &self.account;
        keel::run(
            [OsStr::new("assets"), OsStr::new("publish"), OsStr::new("--dir"), assets.as_os_str()]
                .into_iter()
                .chain(
                    ["--bucket", &a.bucket, "--prefix", self.assets_prefix(), "--kms-key", &a.kms_key_id]
                        .map(OsStr::new),
                ),
            &a.env(),
        )?;
        Ok(())
    }

    /// The S3 prefix of this cluster's bundles.
    pub fn assets_prefix(&self) -> &str {
        &self.name
    }

    /// Where a node's console log is written.
    pub fn console_log(&self, node: &Node) -> PathBuf {
        self.dir.join(format!("{}.console.log", node.name))
    }

    /// The run's work directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The first label of a DNS name (what DHCP hands out as the host name).
fn short_hostname(dns: &str) -> String {
    dns.split('.').next().unwrap_or(dns).to_string()
}
