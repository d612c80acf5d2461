//! keel-init: the whole userspace of a Keel node's initrd, PID 1 from the
//! kernel's /init until it execs the real root's systemd. It mounts the
//! kernel's file systems, loads the drivers the builder listed (with the
//! `module.param=` values the command line gives them, as modprobe
//! would), finds the boot disk's /usr, hash and root partitions from the
//! command line (the /usr root hash names the first two), sets up /usr as
//! the dm-verity device `usr` with device-mapper's ioctls, mounts the root
//! and /usr, copies back the /etc entries missing from the root's /etc
//! from the factory copy in /usr, sets aside the primary network
//! interface's drop-in when no interface here has its address, and
//! switches to the root. Each step
//! prints one `keel-init:` line to the kernel log (and so the console) with
//! the time since keel-init started.
//!
//! On any failure it prints one line naming what failed and stays in the
//! initrd, idle, forever: a /usr that does not match the signed root hash,
//! or a disk that is not there, must not boot, and exiting would panic the
//! kernel, which reboots (`panic=30`) into the same failure in a loop.
//! Staying keeps the line last on the console for whoever looks.

mod cmdline;
mod disk;
mod dm;
mod modules;
mod nic;
mod sys;
mod verity;

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long to wait for the boot disk's partitions (systemd's default
/// device timeout).
const DISK_TIMEOUT: Duration = Duration::from_secs(90);
/// QEMU's emulation (TCG) as CPUID names the hypervisor.
const TCG: &str = "TCGTCGTCGTCG";
/// The dm-verity device's name (as systemd-veritysetup names it for
/// `usrhash=`).
const USR: &str = "usr";
const SYSROOT: &str = "/sysroot";
const INIT: &str = "/sbin/init";

/// File systems systemd mounts from units at every boot, each unit one
/// `mount` process (most of a second of CPU under QEMU's TCG, on the way
/// to keel-bootstrap): keel-init mounts them as the units would, with the
/// units' options, and systemd finds them mounted (the units show them
/// active). Where (in the real root: they are mounted once keel-init has
/// switched to it), what, type, flags, data: `dev-mqueue.mount`, Debian's
/// `run-lock.mount` and `tmp.mount`. None is needed to boot: on failure
/// the line says so and the unit mounts it.
const UNIT_MOUNTS: &[(&str, &str, &str, libc::c_ulong, &str)] = &[
    ("/dev/mqueue", "mqueue", "mqueue", sys::MS_NOSUID | sys::MS_NODEV | sys::MS_NOEXEC, ""),
    (
        "/run/lock",
        "tmpfs",
        "tmpfs",
        sys::MS_NOSUID | sys::MS_NODEV | sys::MS_NOEXEC,
        "mode=1777,size=5242880",
    ),
    (
        "/tmp",
        "tmpfs",
        "tmpfs",
        sys::MS_NOSUID | sys::MS_NODEV | sys::MS_STRICTATIME,
        "mode=1777,size=50%,nr_inodes=1m",
    ),
];

/// Lines to the kernel log.
struct Log {
    start: Instant,
    kmsg: Option<File>,
}

impl Log {
    fn line(&mut self, msg: &str) {
        let t = self.start.elapsed().as_secs_f64();
        // <5>: notice, shown on the console at the default log level.
        let text = format!("<5>keel-init: [+{t:.3}s] {msg}\n");
        let written = self.kmsg.as_mut().is_some_and(|k| k.write_all(text.as_bytes()).is_ok());
        if !written {
            eprint!("{}", &text[3..]);
        }
    }
}

fn main() {
    let mut log = Log { start: Instant::now(), kmsg: None };
    let err = match boot(&mut log) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    log.line(&format!("FAILED: {err}"));
    log.line("staying in the initrd: the real root is not started");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

enum Never {}

fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), String> {
    let _ = fs::create_dir_all(target);
    sys::mount(src, target, Some(fstype), flags, Some(data))
        .map_err(|e| format!("mounting {src} ({fstype}) on {target}: {e}"))
}

/// The values the kernel holds for the parameters `params` of module
/// `name`, read back from /sys/module (`io_timeout=4294967295`); a
/// parameter the module does not show there is named as such.
fn module_params_now(name: &str, params: &[&str]) -> String {
    let dir = format!("/sys/module/{name}/parameters");
    params
        .iter()
        .map(|p| match fs::read_to_string(format!("{dir}/{p}")) {
            Ok(v) => format!("{p}={}", v.trim()),
            Err(e) => format!("{p} (not in {dir}: {e})"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn boot(log: &mut Log) -> Result<Never, String> {
    let nosuid = sys::MS_NOSUID | sys::MS_NODEV | sys::MS_NOEXEC;
    mount("devtmpfs", "/dev", "devtmpfs", sys::MS_NOSUID, "mode=0755")?;
    log.kmsg = OpenOptions::new().write(true).open("/dev/kmsg").ok();
    mount("proc", "/proc", "proc", nosuid, "")?;
    mount("sysfs", "/sys", "sysfs", nosuid, "")?;
    mount("tmpfs", "/run", "tmpfs", sys::MS_NOSUID | sys::MS_NODEV, "mode=0755")?;
    log.line("mounted /dev, /proc, /sys, /run");

    let line = fs::read_to_string("/proc/cmdline").map_err(|e| format!("/proc/cmdline: {e}"))?;
    let cmd = cmdline::parse(&line).map_err(|e| e.to_string())?;
    let (usr_uuid, verity_uuid) = keel_contract::gpt::usr_partition_uuids(&cmd.usrhash)
        .ok_or_else(|| format!("usrhash={}: not a root hash", cmd.usrhash))?;

    let vendor = sys::hypervisor_vendor();
    let tcg = vendor == TCG;
    let skip_tcg = tcg && cmd.tcg_skip;
    let list_path = modules::list_path();
    let list = fs::read_to_string(&list_path).map_err(|e| format!("{list_path}: {e}"))?;
    let module_args = cmdline::ModuleArgs::parse(&line);
    let (mut loaded, mut here) = (0, Vec::new());
    for m in modules::parse(&list)? {
        let name = keel_contract::initrd::module_name(&m.path);
        let params = module_args.params(&name);
        match modules::load(&m, skip_tcg, &params).map_err(|e| e.to_string())? {
            modules::Outcome::Loaded => loaded += 1,
            modules::Outcome::LoadedWithoutParams(e) => {
                loaded += 1;
                log.line(&format!("{name}: the kernel refused {e}; loaded without them"));
            }
            modules::Outcome::Already => {}
            modules::Outcome::NotHere => here.push(format!("{} (no device)", m.path)),
            modules::Outcome::Skipped => here.push(format!("{} (skipped under TCG)", m.path)),
        }
    }
    log.line(&format!(
        "loaded {loaded} modules (hypervisor {:?}{}){}{}",
        vendor,
        if tcg && !cmd.tcg_skip { ", keel.tcg-skip=no" } else { "" },
        if here.is_empty() { "" } else { "; not loaded: " },
        here.join(", ")
    ));
    // What the kernel made of the command line's module parameters, for
    // the modules loaded now and those built in (nvme_core on Debian's
    // cloud kernel takes its io_timeout from the kernel itself).
    let held: Vec<String> = module_args
        .modules()
        .into_iter()
        .filter(|m| Path::new(&format!("/sys/module/{m}/parameters")).is_dir())
        .map(|m| format!("{m} {}", module_params_now(m, &module_args.names(m))))
        .collect();
    if !held.is_empty() {
        log.line(&format!("module parameters from the command line: {}", held.join(", ")));
    }

    let want = disk::Wanted { usr: usr_uuid, usr_verity: verity_uuid, root: cmd.root_partuuid };
    let parts = disk::wait(&want, DISK_TIMEOUT)
        .map_err(|e| format!("boot disk: {e} (root hash {})", cmd.usrhash))?;
    log.line(&format!(
        "found /usr {}, its hash tree {}, root {}",
        parts.usr.node.display(),
        parts.usr_verity.node.display(),
        parts.root.node.display()
    ));

    let mut sb = [0u8; verity::SUPERBLOCK_SIZE];
    File::open(&parts.usr_verity.node)
        .and_then(|mut f| f.read_exact(&mut sb))
        .map_err(|e| format!("reading {}: {e}", parts.usr_verity.node.display()))?;
    let sb = verity::parse(&sb).map_err(|e| format!("{}: {e}", parts.usr_verity.node.display()))?;
    if sb.data_bytes() > parts.usr.size {
        return Err(format!(
            "{}: the hash tree covers {} bytes, the partition has {}",
            parts.usr.node.display(),
            sb.data_bytes(),
            parts.usr.size
        ));
    }
    let table = sb.table(&parts.usr.dev, &parts.usr_verity.dev, &cmd.usrhash);
    let (_, minor) = dm::create(USR, &sb.dm_uuid(USR), sb.data_bytes() / 512, "verity", &table)
        .map_err(|e| {
            format!("dm-verity over {} (root hash {}): {e}", parts.usr.node.display(), cmd.usrhash)
        })?;
    let usr_dev = format!("/dev/dm-{minor}");
    let _ = fs::create_dir_all("/dev/mapper");
    let _ = std::os::unix::fs::symlink(format!("../dm-{minor}"), "/dev/mapper/usr");
    log.line(&format!("dm-verity device {USR} ({usr_dev}): {} {}", sb.algorithm, cmd.usrhash));

    let flags = |o: &cmdline::Options| if o.read_only { sys::MS_RDONLY } else { 0 };
    mount(
        &parts.root.node.display().to_string(),
        SYSROOT,
        &cmd.root_fstype,
        flags(&cmd.root_flags),
        &cmd.root_flags.data,
    )?;
    let usr_at = format!("{SYSROOT}/usr");
    mount(&usr_dev, &usr_at, &cmd.usr_fstype, sys::MS_RDONLY, &cmd.usr_flags.data).map_err(
        |e| {
            format!(
                "{e}: /usr on {} does not match root hash {} (or is not {})",
                parts.usr.node.display(),
                cmd.usrhash,
                cmd.usr_fstype
            )
        },
    )?;
    // The first read of /usr: the init it is about to run.
    let init_at = format!("{SYSROOT}{INIT}");
    File::open(&init_at).and_then(|mut f| f.read(&mut [0u8; 4096])).map_err(|e| {
        format!("reading {init_at}: {e} (/usr does not match root hash {})", cmd.usrhash)
    })?;
    log.line(&format!("mounted the root on {SYSROOT}, /usr ({}) on {usr_at}", cmd.usr_fstype));

    // Before anything in the real root reads users, groups or
    // configuration. A failed copy is reported, not fatal: the node may
    // well boot without the entry, and staying here would not bring it.
    let (restored, errors) = keel_contract::factory_etc::restore_missing(
        Path::new(&format!("{SYSROOT}/{}", keel_contract::factory_etc::DIR)),
        Path::new(&format!("{SYSROOT}/etc")),
    );
    if !restored.is_empty() {
        log.line(&format!("restored from the factory /etc: {}", restored.join(", ")));
    }
    for e in errors {
        log.line(&format!("could not restore from the factory /etc: {e}"));
    }
    // The NIC drivers loaded above have made their interfaces.
    if let Some(line) = nic::check(Path::new(SYSROOT), Path::new("/sys/class/net")) {
        log.line(&line);
    }

    // The initrd's files stay in memory (its rootfs cannot be unmounted):
    // the modules are most of them.
    let _ = fs::remove_dir_all("/usr/lib/modules");
    for d in ["/dev", "/proc", "/sys", "/run"] {
        sys::mount(d, &format!("{SYSROOT}{d}"), None, sys::MS_MOVE, None)
            .map_err(|e| format!("moving {d} to {SYSROOT}{d}: {e}"))?;
    }
    std::env::set_current_dir(SYSROOT).map_err(|e| format!("chdir {SYSROOT}: {e}"))?;
    sys::mount(".", "/", None, sys::MS_MOVE, None)
        .map_err(|e| format!("moving {SYSROOT} to /: {e}"))?;
    sys::chroot(".").map_err(|e| format!("chroot {SYSROOT}: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    let mut failed = Vec::new();
    for &(at, what, fstype, flags, data) in UNIT_MOUNTS {
        // A link (a /tmp that points elsewhere) is left to the units.
        if fs::symlink_metadata(at).is_ok_and(|m| m.file_type().is_symlink()) {
            continue;
        }
        if let Err(e) = mount(what, at, fstype, flags, data) {
            failed.push(e);
        }
    }
    log.line(&if failed.is_empty() {
        "mounted /dev/mqueue, /run/lock, /tmp".to_string()
    } else {
        format!("left to systemd's units: {}", failed.join("; "))
    });

    log.line(&format!("switching to the real root: {INIT}"));
    let err = std::process::Command::new(INIT).args(std::env::args_os().skip(1)).exec();
    Err(format!("exec {INIT}: {err}"))
}
