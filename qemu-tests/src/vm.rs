//! One QEMU virtual machine booting a Keel disk image with OVMF (UEFI),
//! its serial console written to a log file, and waits for console
//! milestones with deadlines. KVM is used when it actually works (a short
//! probe: nested KVM can hang), TCG otherwise, with one CPU (QEMU 7.2's TCG
//! with two CPUs oopses now and then in early boot) and a virtio RNG (the
//! initrd otherwise waits for entropy before dm-verity set-up).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use keel_testkit::process::Guard;

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// OVMF built with Secure Boot (and SMM, which protects its variables).
pub const OVMF_CODE_SECBOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
const QEMU: &str = "qemu-system-x86_64";
/// The console log's name in a VM's state directory.
pub const CONSOLE_LOG: &str = "console.log";
/// How often a wait looks at a console log.
pub const POLL: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

/// KVM when a probe VM under it prints firmware output within a few
/// seconds; TCG otherwise. `KEEL_QEMU_ACCEL=kvm|tcg` skips the probe.
pub fn accel() -> Accel {
    static ACCEL: OnceLock<Accel> = OnceLock::new();
    *ACCEL.get_or_init(|| match std::env::var("KEEL_QEMU_ACCEL").as_deref() {
        Ok("kvm") => Accel::Kvm,
        Ok("tcg") => Accel::Tcg,
        _ => probe_kvm(),
    })
}

fn probe_kvm() -> Accel {
    if fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
        return Accel::Tcg;
    }
    let Ok(dir) = tempfile::tempdir() else { return Accel::Tcg };
    let log = dir.path().join("probe.log");
    let vars = dir.path().join("vars.fd");
    if fs::copy(OVMF_VARS, &vars).is_err() {
        return Accel::Tcg;
    }
    let mut cmd = Command::new(QEMU);
    cmd.args([
        "-machine",
        "q35,accel=kvm",
        "-cpu",
        "host",
        "-m",
        "256",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
    ])
    .args(pflash(OVMF_CODE, &vars))
    .arg("-serial")
    .arg(format!("file:{}", log.display()))
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let Ok(_vm) = Guard::spawn("qemu (kvm probe)", cmd) else { return Accel::Tcg };
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if fs::metadata(&log).map(|m| m.len() > 0).unwrap_or(false) {
            return Accel::Kvm;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Accel::Tcg
}

fn pflash(code: &str, vars: &Path) -> Vec<String> {
    vec![
        "-drive".into(),
        format!("if=pflash,format=raw,unit=0,readonly=on,file={code}"),
        "-drive".into(),
        format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
    ]
}

/// How to start a VM.
#[derive(Debug, Clone)]
pub struct Config {
    /// What process guards and errors call this VM.
    pub name: String,
    pub disk: PathBuf,
    /// The disk file's format: `raw` (a built image) or `qcow2` (an
    /// overlay over one).
    pub format: &'static str,
    /// Directory for the console log and the firmware variables.
    pub state_dir: PathBuf,
    pub memory_mib: u32,
    /// Boot from a throw-away overlay: the disk file is not changed.
    pub snapshot: bool,
    /// Extra arguments (network devices, ...). Default: QEMU's user-mode
    /// network with a virtio NIC, restricted: the guest gets DHCP but no
    /// packet leaves for the host's network, so its requests to
    /// 169.254.169.254 reach no metadata service outside this test.
    pub network: Vec<String>,
    /// Run QEMU inside this network namespace (`ip netns exec`), where
    /// its tap device is.
    pub netns: Option<String>,
    /// Boot OVMF's Secure Boot build (with SMM) from a copy of this VARS
    /// file, which has the keys enrolled; `None`: OVMF without Secure Boot.
    pub secure_boot_vars: Option<PathBuf>,
}

impl Config {
    pub fn new(disk: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> Config {
        Config {
            name: "qemu".into(),
            disk: disk.into(),
            format: "raw",
            state_dir: state_dir.into(),
            memory_mib: 1024,
            snapshot: true,
            network: vec!["-nic".into(), "user,model=virtio-net-pci,restrict=on".into()],
            netns: None,
            secure_boot_vars: None,
        }
    }
}

/// A running VM; killed on drop.
pub struct Vm {
    guard: Guard,
    console: PathBuf,
    qmp: PathBuf,
    started: Instant,
}

impl Vm {
    pub fn start(cfg: &Config) -> anyhow::Result<Vm> {
        fs::create_dir_all(&cfg.state_dir)
            .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
        let vars = cfg.state_dir.join("OVMF_VARS.fd");
        let (code, template) = match &cfg.secure_boot_vars {
            Some(v) => (OVMF_CODE_SECBOOT, v.as_path()),
            None => (OVMF_CODE, Path::new(OVMF_VARS)),
        };
        fs::copy(template, &vars).with_context(|| {
            format!("copying {} (install the Debian package ovmf)", template.display())
        })?;
        let console = cfg.state_dir.join(CONSOLE_LOG);
        let _ = fs::remove_file(&console);
        let qmp = cfg.state_dir.join("qmp.sock");
        let _ = fs::remove_file(&qmp);
        let mut cmd = match &cfg.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, QEMU]);
                c
            }
            None => Command::new(QEMU),
        };
        let smm = if cfg.secure_boot_vars.is_some() { ",smm=on" } else { "" };
        match accel() {
            Accel::Kvm => cmd.args(["-machine", &format!("q35,accel=kvm{smm}"), "-cpu", "host"]),
            Accel::Tcg => cmd.args(["-machine", &format!("q35,accel=tcg{smm}"), "-cpu", "max"]),
        };
        if cfg.secure_boot_vars.is_some() {
            // Only SMM code may write the (authenticated) variable store.
            cmd.args(["-global", "driver=cfi.pflash01,property=secure,value=on"]);
        }
        let snapshot = if cfg.snapshot { ",snapshot=on" } else { "" };
        cmd.args([
            "-smp",
            "1",
            "-m",
            &cfg.memory_mib.to_string(),
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(pflash(code, &vars))
        .arg("-drive")
        .arg(format!("if=virtio,format={},file={}{snapshot}", cfg.format, cfg.disk.display()))
        .args(["-device", "virtio-rng-pci"])
        .args(&cfg.network)
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::from(fs::File::create(cfg.state_dir.join("qemu.stderr"))?));
        let guard = Guard::spawn(&cfg.name, cmd).with_context(|| {
            format!("starting {QEMU} for {} (install the Debian package qemu-system-x86)", cfg.name)
        })?;
        Ok(Vm { guard, console, qmp, started: Instant::now() })
    }

    /// Everything the console printed so far.
    pub fn console(&self) -> String {
        fs::read(&self.console)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn console_path(&self) -> &Path {
        &self.console
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// CPU time QEMU has used so far (all its threads: under TCG, the
    /// emulated CPU's work), from /proc/<pid>/stat's utime and stime. On a
    /// loaded host the wall time of a boot varies with the load; this much
    /// less. `None` when QEMU runs behind `ip netns exec` (another pid) or
    /// has exited.
    pub fn cpu_time(&self) -> Option<Duration> {
        /// Linux reports utime and stime in USER_HZ ticks, 100 a second.
        const USER_HZ: u64 = 100;
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.guard.id())).ok()?;
        // Fields after the command name (which may hold spaces), in
        // parentheses: state is field 3, utime 14 and stime 15.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(Duration::from_millis(ticks * 1000 / USER_HZ))
    }

    /// One look at the console: the index of the first of `patterns` it
    /// shows, None when it shows none yet; fails when QEMU has exited,
    /// quoting the end of the console.
    pub fn poll(&mut self, patterns: &[&str]) -> anyhow::Result<Option<usize>> {
        let text = self.console();
        if let Some(i) = patterns.iter().position(|p| text.contains(p)) {
            return Ok(Some(i));
        }
        if let Err(e) = self.guard.check_running() {
            bail!(
                "{e} before the console showed {patterns:?}; console ({}):\n{}",
                self.console.display(),
                tail(&text, 40)
            );
        }
        Ok(None)
    }

    /// The error for a wait on `patterns` that ran out of time.
    pub fn timed_out(&self, patterns: &[&str], deadline: Duration) -> anyhow::Error {
        anyhow::anyhow!(
            "no {patterns:?} on the console within {deadline:?}; console ({}):\n{}",
            self.console.display(),
            tail(&self.console(), 40)
        )
    }

    /// Waits until the console shows one of `patterns` and returns its
    /// index; fails when `deadline` passes or QEMU exits first, quoting the
    /// end of the console.
    pub fn wait_for_any(&mut self, patterns: &[&str], deadline: Duration) -> anyhow::Result<usize> {
        let until = Instant::now() + deadline;
        loop {
            if let Some(i) = self.poll(patterns)? {
                return Ok(i);
            }
            if Instant::now() >= until {
                return Err(self.timed_out(patterns, deadline));
            }
            std::thread::sleep(POLL);
        }
    }

    pub fn wait_for(&mut self, pattern: &str, deadline: Duration) -> anyhow::Result<()> {
        self.wait_for_any(&[pattern], deadline).map(|_| ())
    }

    /// Presses the ACPI power button (QMP `system_powerdown`) and waits
    /// until the guest has shut down and QEMU exited (`-no-reboot`), so
    /// that everything the guest wrote is on its disk. logind turns the
    /// button into a shutdown, and on a Keel image it starts only once the
    /// network is online: a press before it listens is lost (as on EC2,
    /// which then stops the instance by force). So the button is pressed
    /// again every [`PRESS_AGAIN`] while the guest runs. Fails when
    /// `deadline` passes first (the VM is then killed on drop).
    pub fn power_off(&mut self, deadline: Duration) -> anyhow::Result<()> {
        let mut qmp = Qmp::connect(&self.qmp)?;
        let mut qmp = |cmd: &str| qmp.execute(cmd, "{}");
        let until = Instant::now() + deadline;
        let mut next_press = Instant::now();
        while self.guard.check_running().is_ok() {
            let now = Instant::now();
            if now >= until {
                bail!(
                    "the guest did not power off within {deadline:?}; console ({}):\n{}",
                    self.console.display(),
                    tail(&self.console(), 20)
                );
            }
            if now >= next_press {
                // QEMU may exit between the check and the press (the guest
                // powered off): then the failed press is no error.
                if let Err(e) = qmp("system_powerdown") {
                    if self.guard.check_running().is_ok() {
                        return Err(e);
                    }
                    break;
                }
                next_press = now + PRESS_AGAIN;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(())
    }
}

impl Vm {
    /// Plugs a virtio NIC with MAC address `mac` into the running guest, on
    /// the spare PCIe root port [`HOTPLUG_PORT`] (the VM must have been
    /// started with [`hotplug_port_args`]), its network the host's tap
    /// device `tap` (as an ENI attached to a running instance).
    pub fn plug_nic(&mut self, tap: &str, mac: &str) -> anyhow::Result<()> {
        let mut qmp = Qmp::connect(&self.qmp)?;
        qmp.execute(
            "netdev_add",
            &format!(
                r#"{{"type": "tap", "id": "hotnet", "ifname": "{tap}", "script": "no", "downscript": "no"}}"#
            ),
        )?;
        qmp.execute(
            "device_add",
            &format!(
                r#"{{"driver": "virtio-net-pci", "netdev": "hotnet", "mac": "{mac}", "bus": "{HOTPLUG_PORT}", "id": "hotnic"}}"#
            ),
        )
    }
}

/// The id of the PCIe root port [`hotplug_port_args`] adds: q35's root bus
/// takes no hot-plugged devices, a root port does.
pub const HOTPLUG_PORT: &str = "hotplug0";

/// QEMU arguments for a spare PCIe root port to plug a NIC into later
/// ([`Vm::plug_nic`]). Put them after the boot devices, so that those keep
/// their PCI addresses (and names).
pub fn hotplug_port_args() -> Vec<String> {
    vec!["-device".into(), format!("pcie-root-port,id={HOTPLUG_PORT},chassis=9,slot=9")]
}

/// A QMP connection: greeted and out of negotiation mode.
struct Qmp {
    reader: std::io::BufReader<std::os::unix::net::UnixStream>,
    writer: std::os::unix::net::UnixStream,
    line: String,
}

impl Qmp {
    fn connect(path: &Path) -> anyhow::Result<Qmp> {
        use std::io::{BufRead, BufReader};
        let sock = std::os::unix::net::UnixStream::connect(path)
            .with_context(|| format!("connecting to QMP at {}", path.display()))?;
        sock.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut qmp =
            Qmp { reader: BufReader::new(sock.try_clone()?), writer: sock, line: String::new() };
        qmp.reader.read_line(&mut qmp.line).context("reading the QMP greeting")?;
        qmp.execute("qmp_capabilities", "{}")?;
        Ok(qmp)
    }

    /// Runs `cmd` with `arguments` (a JSON object) and waits for its
    /// answer, skipping events.
    fn execute(&mut self, cmd: &str, arguments: &str) -> anyhow::Result<()> {
        use std::io::{BufRead, Write};
        writeln!(self.writer, r#"{{"execute": "{cmd}", "arguments": {arguments}}}"#)?;
        loop {
            self.line.clear();
            if self.reader.read_line(&mut self.line).with_context(|| format!("QMP {cmd}"))? == 0 {
                bail!("QMP closed during {cmd}");
            }
            if self.line.contains("\"return\"") {
                return Ok(());
            }
            if self.line.contains("\"error\"") {
                bail!("QMP {cmd}: {}", self.line.trim());
            }
        }
    }
}

/// How long [`Vm::power_off`] waits before pressing the button again.
pub const PRESS_AGAIN: Duration = Duration::from_secs(15);

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Creates a qcow2 overlay at `overlay` backed by the raw image `base`:
/// the VM writes to the overlay, the image stays unchanged. `size`
/// (bytes) makes the virtual disk bigger than the image, as an EBS volume
/// larger than the AMI's snapshot is.
pub fn create_overlay(base: &Path, overlay: &Path, size: Option<u64>) -> anyhow::Result<()> {
    let base = base.canonicalize().with_context(|| format!("{}: no such image", base.display()))?;
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(overlay)
        .args(size.map(|s| s.to_string()))
        .stdin(Stdio::null())
        .output()
        .context("running qemu-img (install the Debian package qemu-utils)")?;
    if !out.status.success() {
        bail!(
            "qemu-img create {} over {}: {}",
            overlay.display(),
            base.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Copies `image` to `copy` with one bit of the `/usr` partition flipped
/// (inside the erofs superblock, which is read at mount), at the offset
/// the image's manifest gives (`partitions[name=usr].offset`).
pub fn tamper_usr(image: &Path, usr_offset: u64, copy: &Path) -> anyhow::Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    fs::copy(image, copy)
        .with_context(|| format!("copying {} to {}", image.display(), copy.display()))?;
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(copy)
        .with_context(|| format!("opening {}", copy.display()))?;
    let at = usr_offset + 1024 + 8;
    let mut byte = [0u8; 1];
    f.seek(SeekFrom::Start(at))?;
    f.read_exact(&mut byte).with_context(|| format!("reading byte {at} of {}", copy.display()))?;
    byte[0] ^= 0x01;
    f.seek(SeekFrom::Start(at))?;
    f.write_all(&byte)?;
    f.sync_all()?;
    Ok(())
}
