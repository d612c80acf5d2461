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
const RECIPE: &str = "keel-base-1";

/// Packages every image needs whatever the profile says: dm-verity set-up
/// in the initrd (systemd-cryptsetup), the initrd generator, partition
/// growth on first boot, DHCP and DNS.
pub const IMAGE_PACKAGES: &[&str] =
    &["dracut", "systemd", "systemd-cryptsetup", "systemd-repart", "systemd-resolved", "udev"];

/// A small host-independent initrd: systemd, udev, the veritysetup
/// generator, and only the drivers these disks need (virtio for QEMU, NVMe
/// for EC2 Nitro, Xen block for older EC2 types; erofs, ext4, dm-verity).
pub const DRACUT_CONF: &str = r#"# Written by keel build.
hostonly="no"
reproducible="yes"
compress="zstd"
dracutmodules="systemd systemd-initrd systemd-udevd systemd-veritysetup dm udev-rules base fs-lib rootfs-block"
drivers="erofs dm_verity virtio_blk virtio_pci virtio_scsi virtio_rng nvme xen_blkfront ext4 sd_mod"
"#;

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
    for part in
        [RECIPE, &base.suite, base.mirror.as_deref().unwrap_or(""), DRACUT_CONF, &epoch.to_string()]
    {
        h.update(part);
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
    let conf = dir.join(format!(".{key}.dracut.conf"));
    std::fs::write(&conf, DRACUT_CONF).map_err(|e| BuildError::io(&conf, e))?;
    // mmdebstrap picks the output format from the name: keep ".tar" last.
    let tmp = dir.join(format!(".{key}.tmp-{}.tar", std::process::id()));
    let mut cmd = Command::new(mmdebstrap);
    cmd.arg("--variant=minbase")
        .arg("--format=tar")
        .arg("--quiet")
        .arg(format!("--include={}", packages(base).join(",")))
        .arg("--setup-hook=mkdir -p \"$1/etc/dracut.conf.d\"")
        .arg(format!("--setup-hook=upload {} /etc/dracut.conf.d/50-keel.conf", conf.display()))
        .env("SOURCE_DATE_EPOCH", epoch.to_string());
    for opt in DPKG_OPTS {
        cmd.arg(format!("--dpkgopt={opt}"));
    }
    cmd.arg(&base.suite).arg(&tmp);
    if let Some(m) = &base.mirror {
        cmd.arg(m);
    }
    let result = run_checked(cmd, "mmdebstrap (base root filesystem)");
    let _ = std::fs::remove_file(&conf);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &tar).map_err(|e| BuildError::io(&tar, e))?;
    Ok(tar)
}
