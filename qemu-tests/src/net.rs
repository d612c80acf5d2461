//! A private network for test VMs: a network namespace holding a bridge,
//! one tap device per VM, all at a VPC's MTU of 9001 ([`MTU`]), dnsmasq
//! answering DHCP with a fixed address per MAC (and that MTU) and, as the
//! VPC resolver DHCP names, DNS for the names the test gives it
//! ([`Network::answer_names`]; every other name is refused: the network
//! has no way out), and the instance metadata address 169.254.169.254 on
//! the bridge.
//! A veth pair puts the host (the test process) on the same segment, so
//! host-side clients reach the VMs and the VMs reach servers the test runs
//! on the host side (moto) without any routing or NAT.
//!
//! ```text
//!   host netns                 | keel-<pid>-<n> netns
//!   kh<id> 10.77.N.2/24 ---veth---- kn<id> ─┐
//!                              |            br0 10.77.N.1/24, 169.254.169.254/32
//!                              |  vm0 ── tap0 ─┤   dnsmasq (DHCP)
//!                              |  vm1 ── tap1 ─┘   IMDS emulator (bound in netns)
//! ```
//!
//! Everything is removed on drop (dnsmasq killed, veth and namespace
//! deleted) and on Ctrl-C/SIGTERM (`keel_testkit::teardown`); namespaces
//! left by a test run that was killed outright (SIGKILL) are swept, with
//! any process still inside them, on the next `Network::create`.

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};
use keel_testkit::process::Guard;
use keel_testkit::teardown::{self, Registration};

/// The metadata address every EC2 guest asks.
pub const METADATA_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The Amazon Time Sync Service's address (Keel's timesyncd.conf.d).
pub const TIME_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 123);
/// The network's MTU, as inside an EC2 VPC (jumbo frames), on the
/// bridge, the veth pair and every tap; DHCP offers it to the guests.
pub const MTU: u32 = 9001;
const NETNS_PREFIX: &str = "keel-";

/// A guest on the network: its MAC gets a fixed address and hostname.
#[derive(Debug, Clone)]
pub struct Host {
    pub mac: String,
    pub ip: Ipv4Addr,
    pub hostname: String,
}

pub struct Network {
    netns: String,
    veth_host: String,
    subnet: u8,
    taps: Vec<String>,
    dnsmasq: Option<Guard>,
    /// Names the resolver answers (with every name under them).
    names: Vec<(String, Ipv4Addr)>,
    workdir: PathBuf,
    _on_interrupt: Registration,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running ip {}: is iproute2 installed?", args.join(" ")))?;
    if !out.status.success() {
        bail!("ip {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Whether process `pid` exists.
pub(crate) fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Kills every process still inside namespace `name` (QEMU or dnsmasq of
/// a run that was killed), then deletes it; its veth goes with it.
fn remove_netns(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).stdin(Stdio::null()).output()
    {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Some(pid) = pid.parse::<i32>().ok().and_then(rustix::process::Pid::from_raw) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
    let _ = ip(&["netns", "del", name]);
}

/// Deletes namespaces (and their host-side veths) left by test processes
/// that no longer exist.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix(NETNS_PREFIX) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !pid_alive(pid) {
            remove_netns(&name);
        }
    }
}

impl Network {
    /// Creates the namespace, bridge, host veth and DHCP server. `hosts`
    /// are the guests that will get leases; addresses must be in
    /// `subnet_addr(..)` of this network (use [`Network::guest_ip`]).
    pub fn create(workdir: &Path) -> Result<Network> {
        sweep_stale();
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        // A /24 per network, picked from the pid so concurrent test
        // processes do not collide; 10.77.0.0/16 is reserved for this.
        let subnet = ((pid.wrapping_mul(7) + n * 13) % 240 + 10) as u8;
        let netns = format!("{NETNS_PREFIX}{pid}-{n}");
        let id = format!("{:x}{n}", pid % 0xfffff);
        let veth_host = format!("kh{id}");
        let veth_ns = format!("kn{id}");
        let net = Network {
            netns: netns.clone(),
            veth_host: veth_host.clone(),
            subnet,
            taps: Vec::new(),
            dnsmasq: None,
            names: Vec::new(),
            workdir: workdir.to_path_buf(),
            _on_interrupt: {
                let (netns, veth) = (netns.clone(), veth_host.clone());
                teardown::on_interrupt(&format!("removing network namespace {netns}"), move || {
                    let _ = ip(&["link", "del", &veth]);
                    remove_netns(&netns);
                })
            },
        };
        std::fs::create_dir_all(workdir)
            .with_context(|| format!("creating {}", workdir.display()))?;
        ip(&["netns", "add", &netns])?;
        let ns = ["-n", netns.as_str()];
        ip(&[ns[0], ns[1], "link", "set", "lo", "up"])?;
        let mtu = MTU.to_string();
        ip(&[ns[0], ns[1], "link", "add", "br0", "mtu", &mtu, "type", "bridge"])?;
        ip(&[ns[0], ns[1], "addr", "add", &format!("10.77.{subnet}.1/24"), "dev", "br0"])?;
        for local in [METADATA_ADDR, TIME_ADDR] {
            ip(&[ns[0], ns[1], "addr", "add", &format!("{local}/32"), "dev", "br0"])?;
        }
        ip(&[ns[0], ns[1], "link", "set", "br0", "up"])?;
        ip(&["link", "add", &veth_host, "mtu", &mtu, "type", "veth", "peer", "name", &veth_ns])?;
        ip(&["link", "set", &veth_ns, "netns", &netns])?;
        ip(&[ns[0], ns[1], "link", "set", &veth_ns, "mtu", &mtu, "master", "br0", "up"])?;
        ip(&["addr", "add", &format!("10.77.{subnet}.2/24"), "dev", &veth_host])?;
        ip(&["link", "set", &veth_host, "up"])?;
        Ok(net)
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The bridge's address in the namespace (guests' default gateway).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 1)
    }

    /// The host side's address: servers the test runs in the host
    /// namespace bind here to be reachable from guests.
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 2)
    }

    /// The network's /24 in CIDR notation (the VPC and subnet match it).
    pub fn cidr(&self) -> String {
        format!("10.77.{}.0/24", self.subnet)
    }

    /// The address of guest number `i` (0-based).
    pub fn guest_ip(&self, i: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 10 + i)
    }

    /// A MAC address for guest number `i`, stable within this network.
    pub fn guest_mac(&self, i: u8) -> String {
        format!("52:54:00:77:{:02x}:{:02x}", self.subnet, 10 + i)
    }

    /// Has the resolver answer each `(name, address)`: `name` and every
    /// name under it resolve to `address` (A records). Takes effect when
    /// dnsmasq next starts ([`Network::serve_dhcp`]).
    pub fn answer_names(&mut self, names: Vec<(String, Ipv4Addr)>) {
        self.names = names;
    }

    /// Starts dnsmasq in the namespace with a fixed lease per host
    /// (restarting it when it already runs, e.g. for a replacement node),
    /// handing out the bridge's address as the guests' name server when
    /// there are names to answer ([`Network::answer_names`]).
    pub fn serve_dhcp(&mut self, hosts: &[Host]) -> Result<()> {
        self.dnsmasq.take();
        let conf = self.workdir.join(format!("{}-dnsmasq.conf", self.netns));
        let mut text = format!(
            "interface=br0\nbind-interfaces\nno-resolv\nno-hosts\nleasefile-ro\n\
             dhcp-authoritative\ndhcp-range=10.77.{s}.10,static,255.255.255.0,12h\n\
             dhcp-option=option:router,10.77.{s}.1\ndhcp-option=option:mtu,{MTU}\n",
            s = self.subnet
        );
        if self.names.is_empty() {
            text.push_str("port=0\n");
        } else {
            // Every query is logged: tests read which guest asked for what.
            text.push_str(&format!(
                "log-queries\ndhcp-option=option:dns-server,{}\n",
                self.gateway()
            ));
            for (name, addr) in &self.names {
                text.push_str(&format!("address=/{name}/{addr}\n"));
            }
        }
        for h in hosts {
            text.push_str(&format!("dhcp-host={},{},{}\n", h.mac, h.ip, h.hostname));
        }
        std::fs::write(&conf, text).with_context(|| format!("writing {}", conf.display()))?;
        // Appended to: a restart (a replacement node) keeps the earlier queries.
        let log = File::options().create(true).append(true).open(self.dnsmasq_log_path())?;
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.netns,
            "dnsmasq",
            "--keep-in-foreground",
            "--log-dhcp",
            "--log-facility=-",
        ])
        .arg(format!("--conf-file={}", conf.display()))
        .arg("--pid-file")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
        let mut guard = Guard::spawn("dnsmasq", cmd)?;
        std::thread::sleep(std::time::Duration::from_millis(200));
        guard.check_running().context("dnsmasq (is dnsmasq-base installed?)")?;
        self.dnsmasq = Some(guard);
        Ok(())
    }

    /// dnsmasq's log (DHCP and, with names to answer, every DNS query:
    /// `query[A] <name> from <address>` then `config <name> is <address>`).
    pub fn dnsmasq_log(&self) -> String {
        std::fs::read(self.dnsmasq_log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn dnsmasq_log_path(&self) -> PathBuf {
        self.workdir.join(format!("{}-dnsmasq.log", self.netns))
    }

    /// Creates a tap device in the namespace, attached to the bridge, for
    /// a QEMU started with `ip netns exec <netns>` and
    /// `-netdev tap,ifname=<name>,script=no,downscript=no`.
    pub fn add_tap(&mut self) -> Result<String> {
        let name = format!("tap{}", self.taps.len());
        ip(&["-n", &self.netns, "tuntap", "add", "dev", &name, "mode", "tap"])?;
        let mtu = MTU.to_string();
        ip(&["-n", &self.netns, "link", "set", &name, "mtu", &mtu, "master", "br0", "up"])?;
        self.taps.push(name.clone());
        Ok(name)
    }

    /// Binds a TCP listener inside the namespace (e.g. the metadata
    /// emulator on 169.254.169.254:80). The socket stays in the namespace
    /// whichever thread later serves it.
    pub fn bind_tcp(&self, addr: std::net::SocketAddr) -> Result<TcpListener> {
        self.bind_in(addr, TcpListener::bind)
    }

    /// Binds a UDP socket inside the namespace (e.g. the time service's
    /// double on 169.254.169.123:123), as [`Network::bind_tcp`].
    pub fn bind_udp(&self, addr: std::net::SocketAddr) -> Result<UdpSocket> {
        self.bind_in(addr, UdpSocket::bind)
    }

    fn bind_in<S: Send>(
        &self,
        addr: std::net::SocketAddr,
        bind: fn(std::net::SocketAddr) -> std::io::Result<S>,
    ) -> Result<S> {
        let path = format!("/run/netns/{}", self.netns);
        let ns = File::open(&path).with_context(|| format!("opening {path}"))?;
        std::thread::scope(|s| {
            s.spawn(|| -> Result<S> {
                // setns on this short-lived thread only; the thread ends
                // right after binding.
                use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};
                move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network))
                    .map_err(|e| anyhow::anyhow!("entering {path}: {}", std::io::Error::from(e)))?;
                bind(addr).with_context(|| format!("binding {addr} in {path}"))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
        })
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns, program]);
        c
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.dnsmasq.take();
        let _ = ip(&["link", "del", &self.veth_host]);
        remove_netns(&self.netns);
    }
}
