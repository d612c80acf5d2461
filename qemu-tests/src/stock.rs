//! A stock Debian trixie disk image, the baseline of the boot-time
//! benchmark (`keel-bench-boot`): what booting "the same kernel with a
//! generic initrd" costs without Keel's image design.
//!
//! - root file system: `mmdebstrap --variant=minbase` of trixie with
//!   systemd, udev, dbus, systemd-networkd + systemd-resolved (DHCP on every
//!   Ethernet interface, as Keel's images), initramfs-tools and exactly the
//!   kernel package (and version) of the Keel image compared against; the
//!   initrd is initramfs-tools' default generic one (`MODULES=most`);
//! - a milestone unit ordered as `keel-bootstrap.service` is
//!   (`After=network-online.target`, oneshot) that prints
//!   [`MILESTONE`] on the console;
//! - a UKI (kernel, that initrd, a command line without Keel's /usr
//!   verity) made by ukify from the build's tools tree (`keel::Tools`,
//!   the one `keel build` uses), as `\EFI\BOOT\BOOTX64.EFI` on a FAT ESP;
//! - ext4 root (`mkfs.ext4 -d`), GPT written by `systemd-repart`
//!   (`CopyBlocks=`) from the two file system images.
//!
//! The image is cached as `~/.cache/keel/bench/stock-<kernel>.raw` (written
//! under a temporary name, renamed when complete).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// What the milestone unit prints (through journald, as keel-bootstrap's
/// lines reach the console).
pub const MILESTONE: &str = "keel-bench: milestone";
/// Bump when the recipe changes in a way the name does not show.
const RECIPE: &str = "r2";
/// The ext4 file system UUID of the root (the kernel finds it by it).
const ROOT_UUID: &str = "7ac0e61a-40f4-4c5f-9d0b-6a1f0e4b3c21";
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "systemd-resolved",
    "udev",
    "dbus",
    "kmod",
    "iproute2",
    "ca-certificates",
    "e2fsprogs",
    "initramfs-tools",
];

const MILESTONE_UNIT: &str = "\
# The benchmark's stand-in for keel-bootstrap.service: ordered the same way.
[Unit]
Description=Boot benchmark milestone
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
ExecStart=/bin/echo keel-bench: milestone
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
";

const DHCP_NETWORK: &str = "\
[Match]
Type=ether
Kind=!*

[Network]
DHCP=yes
";

/// The kernel package of a Keel image's manifest: (package, version),
/// e.g. `("linux-image-6.12.117+deb13-cloud-amd64", "6.12.117-1")`.
pub fn kernel_package(manifest: &serde_json::Value) -> Result<(String, String)> {
    let packages =
        manifest["debian-packages"].as_array().context("manifest has no debian-packages")?;
    packages
        .iter()
        .filter_map(|p| Some((p["name"].as_str()?, p["version"].as_str()?)))
        // The versioned package, not the metapackage linux-image-cloud-amd64.
        .find(|(n, _)| {
            n.starts_with("linux-image-") && n[12..].starts_with(|c: char| c.is_ascii_digit())
        })
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .context("manifest lists no linux-image-<version> package")
}

/// `~/.cache/keel`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from).join(".cache/keel")
}

/// The stock image for `kernel` = (package, version), built when missing.
pub fn ensure(kernel: &(String, String), rebuild: bool) -> Result<PathBuf> {
    let (package, version) = kernel;
    let dir = cache_dir().join("bench");
    let name: String = format!("stock-trixie-{package}_{version}-{RECIPE}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' })
        .collect();
    let image = dir.join(format!("{name}.raw"));
    if image.is_file() && !rebuild {
        return Ok(image);
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let work = dir.join(format!(".{name}.work-{}", std::process::id()));
    let result = build(&work, package, version, &image);
    let _ = fs::remove_dir_all(&work);
    result?;
    Ok(image)
}

fn build(work: &Path, package: &str, version: &str, image: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(work);
    let root = work.join("root");
    let uki = work.join("uki");
    fs::create_dir_all(&uki).with_context(|| format!("creating {}", uki.display()))?;

    eprintln!("stock image: mmdebstrap trixie with {package}={version} (a few minutes)");
    let mut include: Vec<String> = PACKAGES.iter().map(|p| p.to_string()).collect();
    include.push(format!("{package}={version}"));
    run(
        Command::new("mmdebstrap")
            .args(["--variant=minbase", "--format=directory", "--quiet"])
            .arg(format!("--include={}", include.join(",")))
            .arg("trixie")
            .arg(&root),
        "mmdebstrap (install the Debian package mmdebstrap)",
    )?;

    write(&root.join("etc/systemd/system/keel-bench-milestone.service"), MILESTONE_UNIT)?;
    write(&root.join("etc/systemd/network/80-dhcp.network"), DHCP_NETWORK)?;
    write(&root.join("etc/hostname"), "debian\n")?;
    write(&root.join("etc/fstab"), &format!("UUID={ROOT_UUID} / ext4 rw,errors=remount-ro 0 1\n"))?;
    run(
        Command::new("chroot").arg(&root).args([
            "systemctl",
            "enable",
            "systemd-networkd.service",
            "keel-bench-milestone.service",
        ]),
        "systemctl enable in the stock root",
    )?;

    // Kernel and initramfs-tools' initrd, as the kernel package made them.
    let uname = package.strip_prefix("linux-image-").unwrap_or(package);
    let (vmlinuz, initrd) =
        (root.join(format!("boot/vmlinuz-{uname}")), root.join(format!("boot/initrd.img-{uname}")));
    for f in [&vmlinuz, &initrd] {
        if !f.is_file() {
            bail!("the stock root has no {} (did the kernel package install?)", f.display());
        }
    }
    fs::copy(&vmlinuz, uki.join("vmlinuz")).context("copying the kernel")?;
    fs::copy(&initrd, uki.join("initrd")).context("copying the initrd")?;
    fs::copy(root.join("usr/lib/os-release"), uki.join("os-release"))
        .context("copying os-release")?;
    let cmdline = format!(
        "root=UUID={ROOT_UUID} rootfstype=ext4 rw console=tty0 console=ttyS0,115200n8 systemd.firstboot=no panic=30 no_timer_check"
    );
    write(&uki.join("cmdline"), &cmdline)?;
    ukify(&uki, uname)?;

    // ESP: the UKI as the default boot loader path.
    let uki_size = fs::metadata(uki.join("uki.efi")).context("ukify wrote no uki.efi")?.len();
    let esp = work.join("esp.img");
    let esp_kib = (uki_size / 1024 + 16 * 1024).div_ceil(1024) * 1024;
    run(
        Command::new("mkfs.vfat")
            .args(["-S", "512", "-n", "ESP", "-C"])
            .arg(&esp)
            .arg(esp_kib.to_string()),
        "mkfs.vfat (dosfstools)",
    )?;
    run(Command::new("mmd").arg("-i").arg(&esp).args(["::/EFI", "::/EFI/BOOT"]), "mmd (mtools)")?;
    run(
        Command::new("mcopy")
            .arg("-i")
            .arg(&esp)
            .arg(uki.join("uki.efi"))
            .arg("::/EFI/BOOT/BOOTX64.EFI"),
        "mcopy (mtools)",
    )?;

    // Root: ext4 made from the tree, with room to spare.
    let used_mib = du_mib(&root)?;
    let root_img = work.join("root.img");
    run(
        Command::new("mkfs.ext4")
            .args(["-q", "-L", "root", "-U", ROOT_UUID, "-d"])
            .arg(&root)
            .arg(&root_img)
            .arg(format!("{}M", used_mib + used_mib / 2 + 256)),
        "mkfs.ext4 (e2fsprogs)",
    )?;

    // GPT: ESP + root, copied block by block.
    let defs = work.join("repart.d");
    write(
        &defs.join("10-esp.conf"),
        &format!("[Partition]\nType=esp\nCopyBlocks={}\n", esp.display()),
    )?;
    write(
        &defs.join("20-root.conf"),
        &format!("[Partition]\nType=root\nCopyBlocks={}\n", root_img.display()),
    )?;
    let tmp = image.with_extension(format!("raw.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let assembled = run(
        Command::new("systemd-repart")
            .args([
                "--empty=create",
                "--size=auto",
                "--dry-run=no",
                "--seed=5d2f6c1e-8a8b-4f3e-9c55-0b7c1f4a2e90",
                "--no-pager",
            ])
            .arg(format!("--definitions={}", defs.display()))
            .arg(&tmp),
        "systemd-repart (systemd)",
    );
    if let Err(e) = assembled.and_then(|_| {
        fs::rename(&tmp, image).with_context(|| format!("renaming to {}", image.display()))
    }) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    eprintln!("stock image: {}", image.display());
    Ok(())
}

/// Runs ukify from Keel's tools tree (trixie's systemd-ukify; the host's
/// systemd 252 has none), chrooted with `dir` at /work, as `keel build`
/// does (the tree is made when missing).
fn ukify(dir: &Path, uname: &str) -> Result<()> {
    let tools = keel::Tools::ensure(&cache_dir(), None).context("the build's tools tree")?;
    let args: Vec<String> = [
        "build",
        "--linux=/work/vmlinuz",
        "--initrd=/work/initrd",
        "--os-release=@/work/os-release",
        "--cmdline=@/work/cmdline",
        &format!("--uname={uname}"),
        "--output=/work/uki.efi",
    ]
    .map(str::to_string)
    .to_vec();
    tools.run(dir, "/usr/bin/ukify", &args, &[]).context("ukify in the tools tree")?;
    Ok(())
}

fn du_mib(dir: &Path) -> Result<u64> {
    let out = run(Command::new("du").args(["-sxm"]).arg(dir), "du")?;
    let text = String::from_utf8_lossy(&out);
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("du -sxm {}: {text:?}", dir.display()))
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(d) = path.parent() {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Runs `cmd`; fails with `what` and its stderr. Returns stdout.
fn run(cmd: &mut Command, what: &str) -> Result<Vec<u8>> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_versioned_kernel_package_is_picked() {
        let m = serde_json::json!({"debian-packages": [
            {"name": "linux-base", "version": "4.12.1"},
            {"name": "linux-image-cloud-amd64", "version": "6.12.117-1"},
            {"name": "linux-image-6.12.117+deb13-cloud-amd64", "version": "6.12.117-1"},
        ]});
        assert_eq!(
            kernel_package(&m).unwrap(),
            ("linux-image-6.12.117+deb13-cloud-amd64".to_string(), "6.12.117-1".to_string())
        );
        assert!(kernel_package(&serde_json::json!({"debian-packages": []})).is_err());
    }
}
