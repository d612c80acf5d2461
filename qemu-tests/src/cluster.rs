//! One test run's cluster: the VM network, the emulated AWS account on its
//! host address, and the nodes registered in both: each node gets a fixed
//! DHCP lease (MAC -> address, hostname) and an EC2 instance with that
//! private address and the cluster and role tags, and keeps the identity
//! the metadata emulator serves it (instance id, AZ, private IP, hostname,
//! user data rendered with `keel_contract::userdata`, role credentials):
//! one emulator bound in the namespace on 169.254.169.254:80 answers every
//! guest, choosing the identity by the request's source address. The
//! nodes reach the account by AWS's real endpoint names over verified
//! HTTPS, with no endpoint override in their user data
//! ([`crate::aws_names`]: the network's resolver and a TLS proxy in front
//! of moto; the images must be test images, which trust the test CA). The
//! run's work directory is
//! `$CARGO_TARGET_DIR/qemu-runs/<test>-<pid>/` and stays after the run.
//!
//! Teardown: fields drop in declaration order (network last, after moto
//! that listens on it), on a normal end and on a panic; Ctrl-C and SIGTERM
//! are covered by `keel_testkit::teardown`, which every process guard and
//! the network register with.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use keel_contract::userdata::{self, Assets, Etcd, UserData};
use keel_contract::Role;
use keel_testkit::imds::{Credentials, ImdsEmulator, Instance};
use keel_testkit::ntp_double::NtpDouble;

use crate::aws::{Account, AZ, REGION};
use crate::aws_names::AwsNames;
use crate::keel;
use crate::net::{Host, Network, METADATA_ADDR, TIME_ADDR};
use crate::rundir;
use crate::vm::{self, Vm};

/// Memory of each node's VM: etcd, containerd and the bootstrap fit with
/// room for the page cache.
const NODE_MEMORY_MIB: u32 = 1024;
/// Each node's disk, like an EC2 root volume larger than the image: the
/// first boot grows the root partition (/etc, /var) to fill it. The
/// image's own ~60 MiB root cannot hold etcd's write-ahead log (64 MiB
/// segments, preallocated): etcd fails with no space left.
const NODE_DISK_BYTES: u64 = 2 << 30;
/// A node's disk overlay in its state directory.
const OVERLAY: &str = "disk.qcow2";

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
    /// What the metadata service answers for `user-data` (None: 404).
    pub user_data: Option<Vec<u8>>,
}

impl Node {
    /// The identity the metadata emulator serves this node.
    fn metadata(&self) -> Instance {
        Instance {
            instance_id: self.instance_id.clone(),
            region: self.region.clone(),
            availability_zone: self.availability_zone.clone(),
            private_ipv4: self.private_ip.to_string(),
            local_hostname: self.hostname.clone(),
            mac: self.mac.clone(),
            user_data: self.user_data.clone(),
            credentials: Some(Credentials::testing()),
        }
    }
}

pub struct Cluster {
    /// Running VMs by node name: stopped first, before the network their
    /// taps are in and the services they talk to.
    vms: HashMap<String, Vm>,
    imds: Option<ImdsEmulator>,
    /// TEST DOUBLE of the Amazon Time Sync Service, with the metadata.
    time: Option<NtpDouble>,
    /// The endpoint names' TLS proxy, stopped before moto it forwards to.
    pub aws_names: AwsNames,
    pub account: Account,
    pub net: Network,
    pub dir: PathBuf,
    pub name: String,
    nodes: Vec<Node>,
    next_index: u8,
    /// The `keel` binary for `assets init/publish` (None: [`keel::bin`]).
    keel: Option<PathBuf>,
    /// Files removed with the cluster, after its VMs stop (a disk they
    /// boot, e.g. `published::disk_path`).
    scratch: Vec<PathBuf>,
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
        Cluster::start_in(rundir::create(test)?, name).await
    }

    /// [`Cluster::start`] with `dir` (made by [`rundir::create_at`]) as
    /// the work directory, e.g. the demo's `--logs`.
    pub async fn start_in(dir: PathBuf, name: &str) -> Result<Cluster> {
        let mut net = Network::create(&dir).context("creating the VM network (needs root)")?;
        let account = Account::create(net.host_ip(), &net.cidr(), name)
            .await
            .with_context(|| format!("creating the emulated AWS account on {}", net.host_ip()))?;
        let aws_names = AwsNames::serve(&mut net, account.moto_addr()?)
            .context("serving AWS's endpoint names in the VM network")?;
        Ok(Cluster {
            vms: HashMap::new(),
            imds: None,
            time: None,
            aws_names,
            account,
            net,
            dir,
            name: name.into(),
            nodes: Vec::new(),
            next_index: 0,
            keel: None,
            scratch: Vec::new(),
        })
    }

    /// Removes `path` when the cluster is dropped, after its VMs stop.
    pub fn remove_with_cluster(&mut self, path: PathBuf) {
        self.scratch.push(path);
    }

    /// Runs `bin` as `keel` for the assets commands.
    pub fn use_keel(&mut self, bin: PathBuf) {
        self.keel = Some(bin);
    }

    fn keel(&self) -> Result<PathBuf> {
        match &self.keel {
            Some(b) => Ok(b.clone()),
            None => keel::bin(),
        }
    }

    /// Starts the metadata emulator on 169.254.169.254:80 inside the
    /// network, serving every node added so far and every node added
    /// later, and the time service's double on 169.254.169.123:123.
    pub fn serve_metadata(&mut self) -> Result<()> {
        if self.time.is_none() {
            let addr = SocketAddr::new(TIME_ADDR.into(), 123);
            let socket = self.net.bind_udp(addr)?;
            self.time = Some(NtpDouble::serve(socket).with_context(|| {
                format!("starting the time service's double on {addr} in {}", self.net.netns())
            })?);
        }
        let addr = SocketAddr::new(METADATA_ADDR.into(), 80);
        let listener = self.net.bind_tcp(addr)?;
        let nodes = self
            .nodes
            .iter()
            .map(|n| (IpAddr::V4(n.private_ip), n.metadata()))
            .collect::<HashMap<_, _>>();
        let imds = ImdsEmulator::start_by_source(listener, nodes).with_context(|| {
            format!("starting the metadata emulator on {addr} in {}", self.net.netns())
        })?;
        self.imds = Some(imds);
        Ok(())
    }

    /// The API server's name in this cluster's assets and user data.
    pub fn api_host(&self) -> String {
        format!("api.{}.internal", self.name)
    }

    /// User data for a node of `role` in a cluster of `etcd_members`
    /// etcd nodes. It has no `aws` table: the node reaches AWS (this run's
    /// moto) by the regional endpoint names, as on EC2.
    pub fn user_data(&self, role: Role, etcd_members: u32) -> UserData {
        UserData {
            version: userdata::VERSION,
            cluster: self.name.clone(),
            role,
            api_endpoint: format!("https://{}:6443", self.api_host()),
            assets: Assets {
                bucket: self.account.bucket.clone(),
                prefix: self.assets_prefix().to_string(),
                kms_key_id: Some(self.account.kms_key_id.clone()),
                bucket_owner: None,
            },
            etcd: Etcd {
                expected_members: etcd_members,
                discovery_timeout_seconds: None,
                heartbeat_interval_ms: None,
                election_timeout_ms: None,
                quota_backend_bytes: None,
            },
            aws: None,
            kubernetes: None,
            kubelet: None,
        }
    }

    /// Registers a node without user data (see [`Cluster::add_node_with`]).
    pub async fn add_node(&mut self, name: &str, role: Role, ami: &str) -> Result<Node> {
        self.add_node_with(name, role, ami, None).await
    }

    /// Registers a node: the next guest address, an instance of `ami`
    /// with this cluster's tags, and `user_data` rendered as TOML for the
    /// metadata service. Call [`Cluster::serve_dhcp`] once all nodes that
    /// boot together are added.
    pub async fn add_node_with(
        &mut self,
        name: &str,
        role: Role,
        ami: &str,
        user_data: Option<&UserData>,
    ) -> Result<Node> {
        self.add_node_at(name, role, ami, user_data, None).await
    }

    /// [`Cluster::add_node_with`] at the guest address (and MAC) of a
    /// node that was terminated, as EC2 hands a terminated instance's
    /// private IP to the next one; `None`: the next free address.
    pub async fn add_node_at(
        &mut self,
        name: &str,
        role: Role,
        ami: &str,
        user_data: Option<&UserData>,
        reuse: Option<&Node>,
    ) -> Result<Node> {
        let user_data = match user_data {
            Some(ud) => Some(
                ud.to_toml()
                    .with_context(|| format!("rendering the user data of {name}"))?
                    .into_bytes(),
            ),
            None => None,
        };
        if self.nodes.iter().any(|n| n.name == name) {
            bail!("node {name} is already in cluster {}", self.name);
        }
        let index = match reuse {
            Some(dead) => {
                if self.nodes.iter().any(|n| n.index == dead.index) {
                    bail!("{}'s address {} is still in use", dead.name, dead.private_ip);
                }
                dead.index
            }
            None => {
                let index = self.next_index;
                if index >= 200 {
                    bail!("too many nodes on one network");
                }
                self.next_index += 1;
                index
            }
        };
        let private_ip = self.net.guest_ip(index);
        let instance = match reuse {
            Some(_) => self.account.run_instance_at_reused_ip(ami, role, private_ip, name).await?,
            None => self.account.run_instance(ami, role, private_ip, name).await?,
        };
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
            user_data,
        };
        if let Some(user_data) = &node.user_data {
            let path = self.dir.join(format!("{name}.user-data.toml"));
            std::fs::write(&path, user_data)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        if let Some(imds) = &self.imds {
            imds.set_instance_for(IpAddr::V4(node.private_ip), Some(node.metadata()));
        }
        self.nodes.push(node.clone());
        Ok(node)
    }

    /// (Re)starts dnsmasq with a fixed lease for every node added so far.
    pub fn serve_dhcp(&mut self) -> Result<()> {
        let hosts: Vec<Host> = self
            .nodes
            .iter()
            .map(|n| Host {
                mac: n.mac.clone(),
                ip: n.private_ip,
                hostname: short_hostname(&n.hostname),
            })
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
        if let Some(imds) = &self.imds {
            imds.set_instance_for(IpAddr::V4(node.private_ip), None);
        }
        self.account.terminate(&node.instance_id).await?;
        Ok(node)
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .with_context(|| format!("no node {name} in cluster {}", self.name))
    }

    /// `keel assets init` for this cluster into `<work dir>/assets`.
    pub fn init_assets(&self) -> Result<PathBuf> {
        let dir = self.dir.join("assets");
        keel::run_bin(
            &self.keel()?,
            [
                "assets",
                "init",
                "--cluster",
                &self.name,
                "--api-endpoint",
                &self.api_host(),
                "--out",
            ]
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
        keel::run_bin(
            &self.keel()?,
            [OsStr::new("assets"), OsStr::new("publish"), OsStr::new("--dir"), assets.as_os_str()]
                .into_iter()
                .chain(
                    [
                        "--bucket",
                        &a.bucket,
                        "--prefix",
                        self.assets_prefix(),
                        "--kms-key",
                        &a.kms_key_id,
                    ]
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

    /// Boots node `name` from `image` (a built raw disk image) under
    /// QEMU: a copy-on-write overlay `<work dir>/<name>/disk.qcow2` over
    /// the image, [`NODE_DISK_BYTES`] large (kept across a stop and the
    /// next boot, so a second boot is a reboot with the node's disk), a
    /// new tap on the network's bridge, the node's MAC (its DHCP lease),
    /// the console in `<work dir>/<name>/console.log`.
    pub fn boot(&mut self, name: &str, image: &Path) -> Result<()> {
        let node = self.node(name)?.clone();
        if self.vms.contains_key(name) {
            bail!("node {name} is already running");
        }
        let state = self.dir.join(name);
        std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
        let overlay = state.join(OVERLAY);
        if !overlay.exists() {
            vm::create_overlay(image, &overlay, Some(NODE_DISK_BYTES))?;
        }
        let tap = self.net.add_tap()?;
        let mut cfg = vm::Config::new(&overlay, &state);
        cfg.name = format!("qemu ({name})");
        cfg.format = "qcow2";
        cfg.snapshot = false;
        cfg.memory_mib = NODE_MEMORY_MIB;
        cfg.netns = Some(self.net.netns().to_string());
        cfg.network = vec![
            "-netdev".into(),
            format!("tap,id=net0,ifname={tap},script=no,downscript=no"),
            "-device".into(),
            format!("virtio-net-pci,netdev=net0,mac={}", node.mac),
        ];
        // A port to plug a second NIC into (as the Amazon VPC CNI attaches
        // ENIs to a running instance).
        cfg.network.extend(vm::hotplug_port_args());
        let vm = Vm::start(&cfg)
            .with_context(|| format!("booting node {name} from {}", image.display()))?;
        self.vms.insert(name.to_string(), vm);
        Ok(())
    }

    /// The addresses that asked the time service's double for the time, in
    /// order.
    pub fn asked_for_time(&self) -> Vec<IpAddr> {
        self.time.as_ref().map(NtpDouble::asked).unwrap_or_default()
    }

    /// The TCP maximum segment sizes of node `name`'s connections to the
    /// metadata emulator so far ([`ImdsEmulator::mss_from`]).
    pub fn metadata_mss(&self, name: &str) -> Result<Vec<u32>> {
        let ip = IpAddr::V4(self.node(name)?.private_ip);
        Ok(self.imds.as_ref().map(|i| i.mss_from(ip)).unwrap_or_default())
    }

    /// Attaches a second NIC with MAC address `mac` to running node `name`,
    /// on the cluster's network (as an ENI attached after boot).
    pub fn plug_nic(&mut self, name: &str, mac: &str) -> Result<()> {
        let tap = self.net.add_tap()?;
        let vm = self.vms.get_mut(name).with_context(|| format!("node {name} is not running"))?;
        vm.plug_nic(&tap, mac).with_context(|| format!("plugging a NIC into node {name}"))
    }

    /// Waits until node `name`'s console shows one of `patterns`; returns
    /// its index (see [`Vm::wait_for_any`]).
    pub fn wait_for_any(
        &mut self,
        name: &str,
        patterns: &[&str],
        deadline: Duration,
    ) -> Result<usize> {
        let vm = self.vms.get_mut(name).with_context(|| format!("node {name} is not running"))?;
        vm.wait_for_any(patterns, deadline).with_context(|| format!("node {name}"))
    }

    /// Waits until node `name`'s console shows `pattern`.
    pub fn wait_for(&mut self, name: &str, pattern: &str, deadline: Duration) -> Result<()> {
        self.wait_for_any(name, &[pattern], deadline).map(|_| ())
    }

    /// Waits for all of `names` at once until each console shows `done`,
    /// calling `seen(name, uptime)` as each does (uptime: from its QEMU's
    /// start until the line was seen, within [`vm::POLL`]). Fails as soon
    /// as a node shows one of `failed` (quoting its console), its QEMU
    /// exits, or `deadline` passes. Returns the uptimes in `names` order.
    pub fn wait_all(
        &mut self,
        names: &[&str],
        done: &str,
        failed: &[&str],
        deadline: Duration,
        mut seen: impl FnMut(&str, Duration),
    ) -> Result<Vec<Duration>> {
        let patterns: Vec<&str> = std::iter::once(done).chain(failed.iter().copied()).collect();
        let until = std::time::Instant::now() + deadline;
        let mut times: Vec<Option<Duration>> = vec![None; names.len()];
        loop {
            for (i, name) in names.iter().enumerate() {
                if times[i].is_some() {
                    continue;
                }
                let vm = self
                    .vms
                    .get_mut(*name)
                    .with_context(|| format!("node {name} is not running"))?;
                match vm.poll(&patterns).with_context(|| format!("node {name}"))? {
                    None => {}
                    Some(0) => {
                        let t = vm.uptime();
                        times[i] = Some(t);
                        seen(name, t);
                    }
                    Some(p) => bail!(
                        "node {name} printed {:?} before {done:?}; console ({}):\n{}",
                        patterns[p],
                        vm.console_path().display(),
                        vm::tail(&vm.console(), 40)
                    ),
                }
            }
            if times.iter().all(Option::is_some) {
                return Ok(times.into_iter().flatten().collect());
            }
            if std::time::Instant::now() >= until {
                let done_count = times.iter().flatten().count();
                let (name, _) =
                    names.iter().zip(&times).find(|(_, t)| t.is_none()).context("no node left")?;
                let vm =
                    self.vms.get(*name).with_context(|| format!("node {name} is not running"))?;
                return Err(vm.timed_out(&patterns, deadline)).with_context(|| {
                    format!("node {name} ({done_count} of {} nodes done)", names.len())
                });
            }
            std::thread::sleep(vm::POLL);
        }
    }

    /// How long node `name`'s VM has been running.
    pub fn uptime(&self, name: &str) -> Result<Duration> {
        Ok(self.vms.get(name).with_context(|| format!("node {name} is not running"))?.uptime())
    }

    /// Stops node `name`'s VM at once (power off: no shutdown), keeping
    /// its disk overlay and console log.
    pub fn stop(&mut self, name: &str) -> Result<()> {
        self.vms.remove(name).with_context(|| format!("node {name} is not running"))?;
        Ok(())
    }

    /// Everything node `name`'s console printed (also after a stop).
    pub fn console(&self, name: &str) -> String {
        std::fs::read(self.console_log(name))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Where node `name`'s console log is written.
    pub fn console_log(&self, name: &str) -> PathBuf {
        self.dir.join(name).join(vm::CONSOLE_LOG)
    }

    /// The AWS endpoint names node `name` reached (sorted, deduplicated):
    /// each over a TLS connection whose certificate the node verified, and
    /// each resolved by the node through the network's resolver (dnsmasq's
    /// log shows the query from the node's address). An error when the
    /// node refused a handshake or used a name it did not look up there.
    pub fn aws_names_used(&self, name: &str) -> Result<Vec<String>> {
        let ip = IpAddr::V4(self.node(name)?.private_ip);
        let mut names = Vec::new();
        for c in self.aws_names.connections().into_iter().filter(|c| c.peer.ip() == ip) {
            if let Err(e) = &c.handshake {
                bail!("node {name}: a TLS handshake with the AWS endpoint proxy failed: {e}");
            }
            names.extend(c.server_name);
        }
        names.sort();
        names.dedup();
        let log = self.net.dnsmasq_log();
        for n in &names {
            if !log.contains(&format!("query[A] {n} from {ip}")) {
                bail!("node {name} reached {n} without asking the network's resolver for it");
            }
        }
        Ok(names)
    }

    /// The run's work directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Cluster {
    /// Stops the VMs first (before the network and services they use
    /// go) and removes their disk overlays and the files given to
    /// [`Cluster::remove_with_cluster`]; console logs, user data and
    /// dnsmasq's log stay in the work directory.
    fn drop(&mut self) {
        self.vms.clear();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                // Best effort: an overlay that cannot be removed is left.
                let _ = std::fs::remove_file(e.path().join(OVERLAY));
            }
        }
        for path in &self.scratch {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The first label of a DNS name (what DHCP hands out as the host name).
fn short_hostname(dns: &str) -> String {
    dns.split('.').next().unwrap_or(dns).to_string()
}
