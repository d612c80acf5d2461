//! The initrd, made here rather than by dracut: keel-init as /init, the
//! kernel modules a node needs to find its disk, NIC and /usr (in the
//! order modules.dep asks, dependencies first, resolved at build time) and
//! their list, as a cpio (newc) archive written in Rust with fixed
//! metadata. Nothing in it is compressed: the modules Debian ships
//! xz-compressed are decompressed at build time, and the archive is left
//! as it is. Under QEMU's emulation the kernel's zstd (the archive) and
//! xz (each module, CONFIG_MODULE_DECOMPRESS) took a third of a second
//! each at every boot (BENCHMARKS.md); the archive is about 3.5 MiB, which
//! the firmware reads from the ESP with the kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::process::Command;

use keel_contract::initrd::{module_name, MODULE_LIST as LIST, UNLESS_TCG};

use super::tools::{require_host, run_checked, TOOL_LIMIT};
use super::BuildError;

/// The drivers a Keel node needs before its real root, by module name:
/// its disk (virtio for QEMU, NVMe for EC2 Nitro, Xen block for older
/// EC2 types), its NIC (virtio-net, ENA: named before systemd-networkd
/// starts), the RNG QEMU offers, device-mapper and dm-verity, erofs
/// (/usr), ext4 (the root). Those built into the kernel
/// (modules.builtin) are skipped; the others and their dependencies are
/// loaded.
pub const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "nvme",
    "xen_blkfront",
    "virtio_net",
    "ena",
    "virtio_rng",
    "dm_mod",
    "dm_verity",
    "erofs",
    "ext4",
];

/// sha256 with SSSE3/AVX2/SHA-NI, loaded before dm-verity is set up so
/// that dm-verity takes it rather than the built-in generic code; keel-init
/// skips it under QEMU's emulation (TCG), where the emulated vector
/// instructions cost more than the generic code (BENCHMARKS.md).
pub const ACCELERATED_SHA256: &str = "sha256_ssse3";

#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    #[error("kernel {kernel}: no module {module} (neither in modules.dep nor built in)")]
    NoModule { kernel: String, module: String },
    #[error("kernel {kernel}: modules.dep names {module}, which is not in the tree")]
    Missing { kernel: String, module: String },
}

/// The module files to load, in order, for `wanted` and then `optional`
/// (marked `true`), from modules.dep (`path: dep dep ...`) and
/// modules.builtin: each module after its dependencies, each once.
pub fn resolve(
    kernel: &str,
    dep: &str,
    builtin: &str,
    wanted: &[&str],
    optional: &[&str],
) -> Result<Vec<(String, bool)>, InitrdError> {
    let mut deps: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in dep.lines() {
        let Some((path, rest)) = line.split_once(':') else { continue };
        let list = rest.split_whitespace().map(str::to_string).collect();
        deps.insert(module_name(path), (path.to_string(), list));
    }
    let builtin: BTreeSet<String> = builtin.lines().map(module_name).collect();
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        path: &str,
        deps: &BTreeMap<String, (String, Vec<String>)>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<(String, bool)>,
        optional: bool,
    ) {
        if !seen.insert(path.to_string()) {
            return;
        }
        if let Some((_, ds)) = deps.get(&module_name(path)) {
            for d in ds {
                visit(d, deps, seen, order, optional);
            }
        }
        order.push((path.to_string(), optional));
    }
    for (names, optional) in [(wanted, false), (optional, true)] {
        for name in names {
            let name = name.replace('-', "_");
            match deps.get(&name) {
                Some((path, _)) => visit(path, &deps, &mut seen, &mut order, optional),
                None if builtin.contains(&name) => {}
                None => {
                    return Err(InitrdError::NoModule {
                        kernel: kernel.to_string(),
                        module: name.to_string(),
                    })
                }
            }
        }
    }
    Ok(order)
}

/// One cpio (newc) archive member.
enum Member<'a> {
    Dir,
    File(&'a [u8], u32),
    CharDev(u32, u32),
}

/// Appends a newc header, name and data, each padded to 4 bytes; every
/// member is owned by root with mtime `epoch` and its own inode number.
fn cpio_member(out: &mut Vec<u8>, ino: u32, name: &str, m: &Member, epoch: u64) {
    let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match m {
        Member::Dir => (0o040755, &[], (0, 0)),
        Member::File(d, perm) => (0o100000 | perm, d, (0, 0)),
        Member::CharDev(maj, min) => (0o020600, &[], (*maj, *min)),
    };
    let nlink = if matches!(m, Member::Dir) { 2 } else { 1 };
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        epoch as u32,
        data.len() as u32,
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.resize(out.len().div_ceil(4) * 4, 0);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(4) * 4, 0);
}

/// The uncompressed initrd: directories, /dev/console, /init, the module
/// list and the modules (read from `tree`, paths relative to it), sorted
/// by path.
pub fn archive(
    tree: &Path,
    init: &[u8],
    modules: &[(String, bool)],
    kernel: &str,
    epoch: u64,
) -> Result<Vec<u8>, BuildError> {
    let moddir = format!("usr/lib/modules/{kernel}");
    let mut list = String::from("# Written by keel build: loaded by keel-init in this order.\n");
    let mut files: BTreeMap<String, (Vec<u8>, u32)> = BTreeMap::new();
    for (m, optional) in modules {
        let src = tree.join(format!("{moddir}/{m}"));
        let (m, bytes) = match m.strip_suffix(".xz") {
            Some(plain) => (plain, unxz(&src)?),
            None => (m.as_str(), fs::read(&src).map_err(|e| BuildError::io(&src, e))?),
        };
        let rel = format!("{moddir}/{m}");
        let flag = if *optional { format!(" {UNLESS_TCG}") } else { String::new() };
        list.push_str(&format!("/{rel}{flag}\n"));
        files.insert(rel, (bytes, 0o644));
    }
    files.insert(LIST.to_string(), (list.into_bytes(), 0o644));
    files.insert("init".to_string(), (init.to_vec(), 0o755));
    let mut dirs: BTreeSet<String> =
        ["dev", "proc", "sys", "run", "sysroot"].iter().map(|s| s.to_string()).collect();
    for path in files.keys() {
        let mut p = Path::new(path).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.display().to_string());
            p = d.parent();
        }
    }
    let mut members: BTreeMap<String, Member> = BTreeMap::new();
    for d in &dirs {
        members.insert(d.clone(), Member::Dir);
    }
    for (p, (bytes, perm)) in &files {
        members.insert(p.clone(), Member::File(bytes, *perm));
    }
    // The kernel opens /dev/console for /init's standard streams before
    // /init mounts devtmpfs.
    members.insert("dev/console".into(), Member::CharDev(5, 1));
    let mut out = Vec::new();
    // BTreeMap order: a directory sorts before what it holds.
    for (i, (name, m)) in members.iter().enumerate() {
        cpio_member(&mut out, i as u32 + 1, name, m, epoch);
    }
    cpio_member(&mut out, 0, "TRAILER!!!", &Member::File(&[], 0), 0);
    Ok(out)
}

/// Makes `work/initrd` for the kernel `kernel` of `tree` with `init`
/// (keel-init) as /init; returns its size.
pub fn make(
    tree: &Path,
    work: &Path,
    kernel: &str,
    init: &[u8],
    epoch: u64,
) -> Result<usize, BuildError> {
    let moddir = super::rootfs::modules_dir(tree, kernel);
    let read = |name: &str| {
        let p = moddir.join(name);
        fs::read_to_string(&p).map_err(|e| BuildError::io(&p, e))
    };
    let (dep, builtin) = (read("modules.dep")?, read("modules.builtin")?);
    let modules = resolve(kernel, &dep, &builtin, MODULES, &[ACCELERATED_SHA256])?;
    for (m, _) in &modules {
        if !moddir.join(m).is_file() {
            return Err(InitrdError::Missing { kernel: kernel.into(), module: m.clone() }.into());
        }
    }
    let cpio = archive(tree, init, &modules, kernel, epoch)?;
    let out = work.join("initrd");
    fs::write(&out, &cpio).map_err(|e| BuildError::io(&out, e))?;
    Ok(cpio.len())
}

/// The decompressed bytes of the xz file `src` (the host's `xz`).
fn unxz(src: &Path) -> Result<Vec<u8>, BuildError> {
    let xz = require_host("xz", "xz-utils")?;
    let mut cmd = Command::new(xz);
    cmd.args(["-d", "-c", "-q", "--"]).arg(src);
    Ok(run_checked(cmd, &format!("xz -d {}", src.display()), TOOL_LIMIT)?.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::process::Stdio;

    const DEP: &str = "kernel/drivers/md/dm-mod.ko.xz:\n\
kernel/drivers/md/dm-bufio.ko.xz: kernel/drivers/md/dm-mod.ko.xz\n\
kernel/drivers/md/dm-verity.ko.xz: kernel/drivers/md/dm-bufio.ko.xz kernel/drivers/md/dm-mod.ko.xz kernel/lib/reed_solomon/reed_solomon.ko.xz\n\
kernel/lib/reed_solomon/reed_solomon.ko.xz:\n\
kernel/arch/x86/crypto/sha256-ssse3.ko.xz:\n";
    const BUILTIN: &str = "kernel/fs/ext4/ext4.ko\nkernel/drivers/nvme/host/nvme.ko\n";

    #[test]
    fn modules_come_after_their_dependencies_once_and_builtins_are_skipped() {
        let order =
            resolve("k", DEP, BUILTIN, &["dm_verity", "ext4", "dm-mod", "nvme"], &["sha256_ssse3"])
                .unwrap();
        let names: Vec<String> = order.iter().map(|(p, _)| module_name(p)).collect();
        assert_eq!(names, ["dm_mod", "dm_bufio", "reed_solomon", "dm_verity", "sha256_ssse3"]);
        assert_eq!(order.iter().filter(|(_, o)| *o).count(), 1);
        let e = resolve("k", DEP, BUILTIN, &["ena"], &[]).unwrap_err().to_string();
        assert!(e.contains("no module ena"), "{e}");
    }

    #[test]
    fn the_archive_is_newc_in_path_order_and_the_same_every_time() {
        let tmp = tempfile::tempdir().unwrap();
        // Debian's modules are xz-compressed; the archive holds them plain.
        let m = "kernel/drivers/md/dm-mod.ko.xz";
        let plain = "kernel/drivers/md/dm-mod.ko";
        let p = tmp.path().join("usr/lib/modules/k").join(m);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        let mut xz = Command::new("xz")
            .args(["-z", "-c"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the host's xz (xz-utils)");
        xz.stdin.take().unwrap().write_all(b"a module's bytes").unwrap();
        let out = xz.wait_with_output().unwrap();
        fs::write(&p, out.stdout).unwrap();
        let mods = vec![(m.to_string(), false)];
        let a = archive(tmp.path(), b"\x7fELF", &mods, "k", 1_767_225_600).unwrap();
        assert_eq!(a, archive(tmp.path(), b"\x7fELF", &mods, "k", 1_767_225_600).unwrap());
        assert!(a.starts_with(b"070701"));
        assert_eq!(a.len() % 4, 0);
        // Members in order, by the names after each header.
        let mut names = Vec::new();
        let mut at = 0;
        while at < a.len() {
            let field = |i: usize| {
                let s = std::str::from_utf8(&a[at + 6 + 8 * i..at + 14 + 8 * i]).unwrap();
                usize::from_str_radix(s, 16).unwrap()
            };
            let (size, namesize) = (field(6), field(11));
            let name = std::str::from_utf8(&a[at + 110..at + 110 + namesize - 1]).unwrap();
            names.push(name.to_string());
            at = (at + 110 + namesize).div_ceil(4) * 4;
            at = (at + size).div_ceil(4) * 4;
            if name == "TRAILER!!!" {
                break;
            }
        }
        assert_eq!(at, a.len());
        assert!(names.iter().any(|n| n == "dev/console"));
        assert!(names.iter().any(|n| n == "init"));
        assert!(names.iter().any(|n| n == "etc/keel-init/modules"));
        let pos = |n: &str| names.iter().position(|x| x == n).unwrap();
        assert!(
            pos("usr/lib/modules/k/kernel/drivers/md") < pos(&format!("usr/lib/modules/k/{plain}"))
        );
        assert!(!names.iter().any(|n| n.ends_with(".xz")), "{names:?}");
        let text = String::from_utf8_lossy(&a);
        assert!(text.contains("a module's bytes"), "the module is in the archive, decompressed");
        assert!(
            text.contains(&format!("/usr/lib/modules/k/{plain}\n")),
            "the list names the module"
        );
    }
}
