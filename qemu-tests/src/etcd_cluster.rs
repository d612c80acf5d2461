//! An n-node etcd cluster of Keel VMs, as the scenarios and the demo
//! bring it up: the cluster's assets published to the emulated account,
//! the AMI `keel publish` registered (or a stand-in), n tagged instances
//! with etcd user data, the VMs booted all at once, then waits until every
//! node's keel-bootstrap says `configured` and the host's etcdctl sees
//! exactly those n members, started and healthy. Also the replacement of a
//! member (stop, terminate, boot a new instance that joins).
//!
//! Progress goes to stderr, one line per event, prefixed `cluster:`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use keel_contract::Role;

use crate::cluster::{Cluster, Node};
use crate::etcdctl::{self, Credentials, Etcdctl, Member};

/// keel-bootstrap's last line on an etcd node that configured itself.
pub const CONFIGURED: &str = "keel-bootstrap: configured etcd node";
/// keel-bootstrap's last line when a step failed (a `<step>: failed:`
/// line names the step before it).
pub const FAILED: &str = "keel-bootstrap: failed:";

/// systemd's audit record of a failed etcd.service start, on the console
/// (the unit's own messages go to the journal only).
const ETCD_UNIT_FAILED: &str = "unit=etcd comm=\"systemd\" exe=\"/usr/lib/systemd/systemd\" hostname=? addr=? terminal=? res=failed";

/// What forming (or joining) took, from the QEMU starts.
#[derive(Debug, Clone)]
pub struct Timings {
    /// Per node: from its QEMU's start to `keel-bootstrap: configured`.
    pub configured: Vec<(String, Duration)>,
    /// From the first QEMU start until etcdctl saw every member healthy.
    pub healthy: Duration,
}

/// A replaced member.
#[derive(Debug, Clone)]
pub struct Replacement {
    pub dead: Node,
    pub new: Node,
    pub timings: Timings,
}

pub struct EtcdCluster {
    /// The VMs, network and account (dropped with this: everything stops).
    pub cluster: Cluster,
    /// The disk image every member boots.
    pub image: PathBuf,
    /// The AMI the members' instances were launched from.
    pub ami: String,
    /// The asset directory (`keel assets init`) that was published.
    pub assets: PathBuf,
    /// The host's etcdctl credentials (a client certificate issued by the
    /// assets' etcd CA).
    pub credentials: Credentials,
    /// Members the cluster is made of (its user data's expected count).
    pub size: u32,
    /// Deadline for each wait (boot to configured, configured to healthy).
    pub deadline: Duration,
    next: usize,
}

/// The etcd node names: etcd0, etcd1, ...
fn node_name(i: usize) -> String {
    format!("etcd{i}")
}

fn say(msg: std::fmt::Arguments<'_>) {
    eprintln!("cluster: {msg}");
}

impl EtcdCluster {
    /// Brings up `size` etcd VMs from `image` in `cluster` (started, with
    /// nothing added yet): publishes `assets` (None: `keel assets init`
    /// into the work directory first), launches the instances from `ami`
    /// (None: a stand-in AMI registered here, with no disk behind it in
    /// moto), boots the VMs and waits, each wait up to `deadline`, until
    /// they form one healthy cluster.
    pub async fn form(
        mut cluster: Cluster,
        image: &Path,
        ami: Option<String>,
        assets: Option<&Path>,
        size: u32,
        deadline: Duration,
    ) -> Result<(EtcdCluster, Timings)> {
        let assets = match assets {
            Some(a) => a.to_path_buf(),
            None => cluster.init_assets().context("creating the cluster's assets")?,
        };
        say(format_args!(
            "publishing the assets of cluster {} to s3://{}/{}",
            cluster.name,
            cluster.account.bucket,
            cluster.assets_prefix()
        ));
        cluster.publish_assets(&assets).context("publishing the assets")?;
        cluster.serve_metadata()?;
        let ami = match ami {
            Some(ami) => ami,
            None => {
                cluster
                    .account
                    .register_image(&format!("keel-etcd-{}", cluster.name), Role::Etcd)
                    .await?
            }
        };
        let credentials = Credentials::issue(&assets, &cluster.dir.join("etcdctl"))?;
        let mut ec = EtcdCluster {
            cluster,
            image: image.to_path_buf(),
            ami,
            assets,
            credentials,
            size,
            deadline,
            next: 0,
        };
        let names: Vec<String> = (0..size as usize).map(node_name).collect();
        for name in &names {
            ec.add(name, None).await?;
        }
        ec.next = names.len();
        ec.cluster.serve_dhcp()?;
        let timings = ec.boot_and_wait(&names).await?;
        Ok((ec, timings))
    }

    /// Registers node `name` as an etcd instance of this cluster (at the
    /// address of `reuse`, a terminated node, when given).
    async fn add(&mut self, name: &str, reuse: Option<&Node>) -> Result<Node> {
        let ud = self.cluster.user_data(Role::Etcd, self.size);
        let node = self.cluster.add_node_at(name, Role::Etcd, &self.ami, Some(&ud), reuse).await?;
        say(format_args!("{name}: instance {} at {}", node.instance_id, node.private_ip));
        Ok(node)
    }

    /// Boots `names` at once, waits for their bootstrap, then for the
    /// whole membership to be healthy.
    async fn boot_and_wait(&mut self, names: &[String]) -> Result<Timings> {
        let started = Instant::now();
        for name in names {
            self.cluster.boot(name, &self.image)?;
            say(format_args!(
                "{name}: booting (console: {})",
                self.cluster.console_log(name).display()
            ));
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let times =
            self.cluster.wait_all(&refs, CONFIGURED, &[FAILED], self.deadline, |name, t| {
                say(format_args!(
                    "{name}: keel-bootstrap configured it {:.0} s after QEMU started",
                    t.as_secs_f64()
                ))
            })?;
        say(format_args!(
            "waiting for etcd: {} members, every endpoint healthy",
            self.members().len()
        ));
        let members = self.wait_healthy().await?;
        let healthy = started.elapsed();
        say(format_args!(
            "healthy after {:.0} s: {}",
            healthy.as_secs_f64(),
            etcdctl::describe(&members)
        ));
        Ok(Timings { configured: names.iter().cloned().zip(times).collect(), healthy })
    }

    /// The live members' nodes (not terminated), in the order added.
    pub fn members(&self) -> Vec<&Node> {
        self.cluster.nodes().iter().filter(|n| n.role == Role::Etcd).collect()
    }

    /// The client URLs of the live members.
    pub fn endpoints(&self) -> Vec<String> {
        self.members().iter().map(|n| etcdctl::client_url(&n.private_ip.to_string())).collect()
    }

    /// The peer URLs of the live members.
    pub fn peer_urls(&self) -> Vec<String> {
        self.members().iter().map(|n| etcdctl::peer_url(&n.private_ip.to_string())).collect()
    }

    /// etcdctl against every live member.
    pub fn etcdctl(&self) -> Etcdctl {
        Etcdctl::new(self.credentials.clone(), self.endpoints())
    }

    /// etcdctl against node `name` only.
    pub fn etcdctl_on(&self, name: &str) -> Result<Etcdctl> {
        let node = self.cluster.node(name)?;
        Ok(self.etcdctl().at(vec![etcdctl::client_url(&node.private_ip.to_string())]))
    }

    /// Waits until the members are exactly the live nodes, all started and
    /// healthy. On failure, names the nodes whose console shows that
    /// etcd.service failed to start.
    pub async fn wait_healthy(&self) -> Result<Vec<Member>> {
        self.etcdctl().wait_healthy(&self.peer_urls(), self.deadline).await.map_err(|e| {
            let failed: Vec<String> = self
                .members()
                .iter()
                .filter(|n| self.cluster.console(&n.name).contains(ETCD_UNIT_FAILED))
                .map(|n| format!("{} ({})", n.name, self.cluster.console_log(&n.name).display()))
                .collect();
            if failed.is_empty() {
                e
            } else {
                e.context(format!("etcd.service failed to start on {}", failed.join(", ")))
            }
        })
    }

    /// Replaces member `name`: its VM is powered off and its instance
    /// terminated, a new instance (the next name, a new address) boots
    /// and joins; waits until the membership is the live nodes, healthy.
    pub async fn replace(&mut self, name: &str) -> Result<Replacement> {
        self.replace_with(name, false).await
    }

    /// [`EtcdCluster::replace`]; with `reuse_ip` the new instance gets the
    /// dead member's private IP (EC2 reuses the addresses of terminated
    /// instances).
    pub async fn replace_with(&mut self, name: &str, reuse_ip: bool) -> Result<Replacement> {
        self.cluster.stop(name)?;
        let dead = self.cluster.terminate(name).await?;
        say(format_args!("{name}: powered off, instance {} terminated", dead.instance_id));
        let new_name = node_name(self.next);
        self.next += 1;
        let new = self.add(&new_name, reuse_ip.then_some(&dead)).await?;
        self.cluster.serve_dhcp()?;
        let timings = self.boot_and_wait(std::slice::from_ref(&new_name)).await?;
        Ok(Replacement { dead, new, timings })
    }

    /// Every member powered off and terminated at once (an Auto Scaling
    /// group that lost them all), then `size` new instances booted
    /// together; waits until they form a healthy cluster. Returns the
    /// dead nodes and the timings of the new ones.
    pub async fn replace_all(&mut self) -> Result<(Vec<Node>, Timings)> {
        let old: Vec<String> = self.members().iter().map(|n| n.name.clone()).collect();
        let mut dead = Vec::new();
        for name in &old {
            self.cluster.stop(name)?;
            let node = self.cluster.terminate(name).await?;
            say(format_args!("{name}: powered off, instance {} terminated", node.instance_id));
            dead.push(node);
        }
        let mut names = Vec::new();
        for _ in 0..self.size {
            let name = node_name(self.next);
            self.next += 1;
            self.add(&name, None).await?;
            names.push(name);
        }
        self.cluster.serve_dhcp()?;
        let timings = self.boot_and_wait(&names).await?;
        Ok((dead, timings))
    }
}
