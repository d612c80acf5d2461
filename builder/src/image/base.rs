//! The Debian base root filesystem: `mmdebstrap --variant=minbase` with the
//! profile's packages (and what the image build itself needs), kept as a
//! tarball under the cache, named by the hash of its inputs, so that a
//! rebuild with the same suite, mirror and packages does not bootstrap
//! again. The initrd of the image is not the base's: the build makes it
//! from keel-init (`image::initrd`).

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::tools::{mmdebstrap, run_checked, MMDEBSTRAP_LIMIT};
use super::BuildError;
use crate::profile::Base;

/// Bump when the recipe below changes in a way the inputs do not show.
const RECIPE: &str = "keel-base-3";

/// Packages every image needs whatever the profile says: partition growth
/// on first boot, DHCP, DNS and the clock kept to the Amazon Time Sync
/// Service (systemd-timesyncd); and an initramfs generator, because
/// Debian's kernel package depends on one (dracut: [`DRACUT_CONF`]).
pub const IMAGE_PACKAGES: &[&str] = &[
    "dracut",
    "systemd",
    "systemd-repart",
    "systemd-resolved",
    "systemd-timesyncd",
    "udev",
    "zstd",
];

/// dracut is in the base only because Debian's kernel package depends on
/// an initramfs generator; the initrd it makes when the kernel is
/// installed is not used (the build makes the UKI's initrd from keel-init,
/// `image::initrd`). This keeps that unused initrd small and quick to make.
pub const DRACUT_CONF: &str = r#"# Written by keel build: this initrd is not used (see keel-init).
hostonly="no"
reproducible="yes"
compress="zstd"
dracutmodules="systemd systemd-initrd base fs-lib rootfs-block"
drivers="virtio_blk"
"#;

/// Files written into the base before any package is installed (so that
/// dracut sees them when it makes the initrd): path, contents.
const BASE_FILES: &[(&str, &str)] = &[("/etc/dracut.conf.d/50-keel.conf", DRACUT_CONF)];

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
    let mut cmd = mmdebstrap()?;
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
    cmd.arg("--variant=minbase")
        .arg("--format=tar")
        .arg(format!("--include={}", packages(base).join(",")))
        .env("SOURCE_DATE_EPOCH", epoch.to_string());
    for (local, path) in &uploads {
        let parent = Path::new(path).parent().map_or("/".into(), |p| p.display().to_string());
        cmd.arg(format!("--setup-hook=mkdir -p \"$1{parent}\""))
            .arg(format!("--setup-hook=upload {} {path}", local.display()));
    }
    for opt in DPKG_OPTS {
        cmd.arg(format!("--dpkgopt={opt}"));
    }
    cmd.arg(&base.suite).arg(&tmp);
    if let Some(m) = &base.mirror {
        cmd.arg(m);
    }
    let result = run_checked(cmd, "mmdebstrap (base root filesystem)", MMDEBSTRAP_LIMIT);
    remove(&uploads);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &tar).map_err(|e| BuildError::io(&tar, e))?;
    Ok(tar)
}
