//! The Debian base root filesystem: `mmdebstrap --variant=minbase` with the
//! profile's packages (and what the image build itself needs), kept as a
//! tarball under the cache, named by the hash of its inputs, so that a
//! rebuild with the same suite, mirror and packages does not bootstrap
//! again. The kernel's initrd is made by dracut during the bootstrap, with
//! Keel's dracut configuration installed before any package.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

use super::tools::{require_host, run_checked};
use super::BuildError;
use crate::profile::Base;

/// Bump when the recipe below changes in a way the inputs do not show.
const RECIPE: &str = "keel-base-2";

/// Packages every image needs whatever the profile says: dm-verity set-up
/// in the initrd (systemd-cryptsetup), the initrd generator and its
/// compressor, partition growth on first boot, DHCP and DNS.
pub const IMAGE_PACKAGES: &[&str] = &[
    "dracut",
    "systemd",
    "systemd-cryptsetup",
    "systemd-repart",
    "systemd-resolved",
    "udev",
    "zstd",
];

/// A small host-independent initrd, the boot path of a Keel node and
/// nothing else: systemd, udev, the veritysetup generator (verified /usr
/// from `usrhash=`), systemd-modules-load, and only the drivers a node
/// needs: its disk (virtio for QEMU, NVMe for EC2 Nitro, Xen block for
/// older EC2 types), its NIC (virtio-net, ENA: present and named before
/// systemd-networkd starts in the real root, not loaded by the real root's
/// udev coldplug late in the boot), erofs, ext4, dm-verity, and sha256 with
/// SSSE3/AVX2/SHA-NI ([`VERITY_SHA256_UNIT`]). dracut's `dm` module would add
/// every device-mapper and MD RAID target (RAID 4/5/6, thin pools, cache,
/// VDO, ...): only dm-verity is kept. zstd: the smallest initrd of the
/// kernel's fast decompressors (gzip when the zstd program is missing).
pub const DRACUT_CONF: &str = r#"# Written by keel build.
hostonly="no"
reproducible="yes"
compress="zstd"
dracutmodules="systemd systemd-initrd systemd-udevd systemd-veritysetup systemd-modules-load dm udev-rules base fs-lib rootfs-block"
drivers="erofs dm_mod dm_verity virtio_blk virtio_pci virtio_scsi virtio_rng virtio_net nvme xen_blkfront ena ext4 sd_mod sha256_ssse3"
install_items+=" /usr/lib/systemd/system/keel-verity-sha256.service /usr/lib/systemd/system/sysinit.target.wants/keel-verity-sha256.service /usr/lib/modprobe.d/keel-sha256.conf "
omit_drivers="raid0 raid1 raid10 raid456 md_mod bcache dm_raid dm_cache dm_cache_smq dm_thin_pool dm_vdo dm_era dm_writecache dm_zoned dm_integrity dm_crypt dm_mirror dm_snapshot dm_multipath dm_log_userspace dm_log_writes dm_delay dm_flakey dm_switch dm_unstripe dm_zero dm_queue_length dm_round_robin dm_service_time dm_persistent_data dm_bio_prison async_tx async_pq async_xor async_memcpy async_raid6_recov raid6_pq xor"
"#;

/// Kernel modules systemd-modules-load loads at the start of the initrd,
/// before udev runs (and again, a no-op, in the real root): what every
/// boot needs for /usr, so that neither udev's coldplug nor
/// systemd-veritysetup waits for a module to be found and loaded, and the
/// QEMU disk is there when udev starts (on EC2 virtio_blk finds no device;
/// NVMe is built into the kernel).
pub const MODULES_LOAD: &str = "# Written by keel build: what /usr needs, loaded before udev.\n\
dm_mod\ndm_verity\nerofs\nvirtio_blk\n";

/// The initrd unit that loads the x86-64 sha256 (SSSE3, AVX2, SHA-NI)
/// before dm-verity is set up: dm-verity asks the kernel for "sha256" and
/// takes the best one loaded, which is the built-in generic C code unless
/// this module is there first (on a CPU without those instructions the
/// module refuses to load, and the generic code is used). Not under pure
/// emulation (QEMU's TCG: `ConditionVirtualization=!qemu`; KVM is "kvm",
/// EC2 "amazon" or "xen"), where the emulated vector instructions cost more
/// than the generic code (BENCHMARKS.md). udev does not load it by the
/// CPU's features ([`MODPROBE_CONF`]), which would race dm-verity.
pub const VERITY_SHA256_UNIT: &str = "\
# Written by keel build: sha256 with SSSE3/AVX2/SHA-NI for dm-verity.
[Unit]
Description=Keel: fast sha256 for dm-verity
DefaultDependencies=no
Wants=veritysetup-pre.target
Before=veritysetup-pre.target sysinit.target
ConditionPathExists=/etc/initrd-release
ConditionVirtualization=!qemu

[Service]
Type=oneshot
ExecStart=-/usr/sbin/modprobe sha256_ssse3
";

/// No loading of sha256_ssse3 by alias (udev, for the CPU's features):
/// only [`VERITY_SHA256_UNIT`] loads it, by name, so which sha256
/// dm-verity uses does not depend on a race.
pub const MODPROBE_CONF: &str = "# Written by keel build: see keel-verity-sha256.service.\n\
blacklist sha256_ssse3\n";

/// Where the base's sysinit.target wants units.
const WANTS: &str = "/usr/lib/systemd/system/sysinit.target.wants";

/// Files written into the base before any package is installed (so that
/// dracut sees them when it makes the initrd): path, contents.
const BASE_FILES: &[(&str, &str)] = &[
    ("/etc/dracut.conf.d/50-keel.conf", DRACUT_CONF),
    ("/usr/lib/modules-load.d/keel-initrd.conf", MODULES_LOAD),
    ("/usr/lib/systemd/system/keel-verity-sha256.service", VERITY_SHA256_UNIT),
    ("/usr/lib/modprobe.d/keel-sha256.conf", MODPROBE_CONF),
];

/// Documentation, manual pages and translations are left out of /usr
/// (copyright files stay).
const DPKG_OPTS: &[&str] = &[
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/lintian/*",
];

/// The packages mmdebstrap installs: the profile's and [`IMAGE_PACKAGES`],
/// sorted and deduplicated (a profile's `name=version` pin wins).
pub fn packages(base: &Base) -> Vec<String> {
    let mut all: Vec<String> = base.packages.clone();
    for p in IMAGE_PACKAGES {
        if !all.iter().any(|q| q.split('=').next() == Some(p)) {
            all.push(p.to_string());
        }
    }
    all.sort();
    all.dedup();
    all
}

/// The cache key of a base: every input that changes its contents.
pub fn key(base: &Base, epoch: u64) -> String {
    let mut h = Sha256::new();
    for part in [RECIPE, &base.suite, base.mirror.as_deref().unwrap_or(""), &epoch.to_string()] {
        h.update(part);
        h.update("\0");
    }
    for (path, contents) in BASE_FILES {
        h.update(path);
        h.update("\0");
        h.update(contents);
        h.update("\0");
    }
    for p in packages(base).iter().map(String::as_str).chain(DPKG_OPTS.iter().copied()) {
        h.update(p);
        h.update("\0");
    }
    hex::encode(&h.finalize()[..16])
}

/// The base tarball for `base`, bootstrapped when not cached.
pub fn ensure(cache_dir: &Path, base: &Base, epoch: u64) -> Result<PathBuf, BuildError> {
    let dir = cache_dir.join("base");
    let key = key(base, epoch);
    let tar = dir.join(format!("{key}.tar"));
    if tar.is_file() {
        return Ok(tar);
    }
    let mmdebstrap = require_host("mmdebstrap", "mmdebstrap")?;
    std::fs::create_dir_all(&dir).map_err(|e| BuildError::io(&dir, e))?;
    // The files to upload, each under a temporary name beside the tarball.
    let remove = |uploads: &[(PathBuf, &str)]| {
        for (local, _) in uploads {
            let _ = std::fs::remove_file(local);
        }
    };
    let mut uploads = Vec::new();
    for (i, (path, contents)) in BASE_FILES.iter().enumerate() {
        let local = dir.join(format!(".{key}.file-{i}"));
        let written = std::fs::write(&local, contents);
        uploads.push((local.clone(), *path));
        if let Err(e) = written {
            remove(&uploads);
            return Err(BuildError::io(&local, e));
        }
    }
    // mmdebstrap picks the output format from the name: keep ".tar" last.
    let tmp = dir.join(format!(".{key}.tmp-{}.tar", std::process::id()));
    let mut cmd = Command::new(mmdebstrap);
    cmd.arg("--variant=minbase")
        .arg("--format=tar")
        .arg("--quiet")
        .arg(format!("--include={}", packages(base).join(",")))
        .env("SOURCE_DATE_EPOCH", epoch.to_string());
    for (local, path) in &uploads {
        let parent = Path::new(path).parent().map_or("/".into(), |p| p.display().to_string());
        cmd.arg(format!("--setup-hook=mkdir -p \"$1{parent}\""))
            .arg(format!("--setup-hook=upload {} {path}", local.display()));
    }
    // Enabled in the initrd by the link dracut copies (install_items).
    cmd.arg(format!(
        "--setup-hook=mkdir -p \"$1{WANTS}\" && ln -s ../keel-verity-sha256.service \"$1{WANTS}/keel-verity-sha256.service\""
    ));
    for opt in DPKG_OPTS {
        cmd.arg(format!("--dpkgopt={opt}"));
    }
    cmd.arg(&base.suite).arg(&tmp);
    if let Some(m) = &base.mirror {
        cmd.arg(m);
    }
    let result = run_checked(cmd, "mmdebstrap (base root filesystem)");
    remove(&uploads);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &tar).map_err(|e| BuildError::io(&tar, e))?;
    Ok(tar)
}
