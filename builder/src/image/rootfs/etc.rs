//! /etc: the base's /etc moved to /usr/share/factory/etc (verified with
//! /usr), copied into the root file system at build time ([`copy_etc`]),
//! and restored entry by entry by systemd-tmpfiles when an entry is
//! missing; units Keel does not run disabled, the base's enablement
//! hoisted into /usr.

use std::fs;
use std::os::unix::fs::{lchown, symlink, MetadataExt, PermissionsExt};
use std::path::Path;

use super::{mkdir_parent, walk, write_file};
use crate::image::BuildError;

/// Units Debian's packages enable (in /etc or, statically, in /usr) that
/// a Keel node does not run: package maintenance on an immutable /usr (apt
/// and dpkg timers), ext4 metadata scrubbing of LVM snapshots (no LVM), a
/// login prompt on the VGA console (the serial console keeps its getty),
/// dracut's copy of the initrd into /run at every boot (only a root on
/// storage that needs the initrd to be unmounted uses it; Keel's is a plain
/// ext4 partition and a dm-verity /usr), and the kernel's debug and trace
/// file systems (an operator mounts them to debug). Each is one more process on the way to keel-bootstrap on a
/// small instance. The D-Bus socket is taken out of sockets.target: its
/// drop-in (`images/common/files/usr/lib/systemd/system/dbus.socket.d`)
/// starts it once the network is online, pulled in by logind, which turns
/// the ACPI power button, which EC2 presses to stop an instance, into a
/// clean shutdown. (A press before logind listens is lost: the QEMU
/// harness presses again until the VM is off.)
const NOT_ENABLED: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "dbus.socket",
    "dracut-shutdown.service",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "getty@tty1.service",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
];

/// Units masked (a link to /dev/null in /etc/systemd/system) because a
/// unit Keel keeps pulls them in with `Wants=` at every boot, each one
/// more `modprobe` on the way to keel-bootstrap: logind wants the DRM core
/// loaded early for a graphical seat, which a node has not (a GPU's driver
/// loads DRM itself, as a dependency); systemd-repart wants device-mapper,
/// which keel-init loaded before /usr existed, and the loop driver, which
/// growing the root partition does not use (it loads on the first open of
/// /dev/loop-control for whoever needs it). kmod-static-nodes too: the
/// build writes the same nodes into /usr (`kernel::STATIC_NODES`). And
/// what systemd starts at every boot that a node does not use: configfs
/// and its mount (no USB gadget or target), the EFI pstore backend, FUSE's
/// module and control file system (built in; nothing on a node mounts
/// FUSE), hugetlbfs on /dev/hugepages (the kubelet mounts its own for
/// pods that ask for huge pages), the root's remount (keel-init mounts it
/// read-write; the fstab is empty), the random seed (EC2 and QEMU give the
/// kernel a hardware RNG, and a new instance has no seed to load), udev
/// rules from credentials and networkd's persistent storage helper (it
/// saves nothing a node needs across reboots).
const MASKED: &[&str] = &[
    "dev-hugepages.mount",
    "kmod-static-nodes.service",
    "modprobe@configfs.service",
    "modprobe@dm_mod.service",
    "modprobe@drm.service",
    "modprobe@efi_pstore.service",
    "modprobe@fuse.service",
    "modprobe@loop.service",
    "sys-fs-fuse-connections.mount",
    "sys-kernel-config.mount",
    "systemd-networkd-persistent-storage.service",
    "systemd-random-seed.service",
    "systemd-remount-fs.service",
    "systemd-udev-load-credentials.service",
];

/// systemd generators of the base a node does not need, masked (a link to
/// /dev/null in /etc/systemd/system-generators, the only way to turn one
/// off): each is one more program systemd runs, and waits for, before it
/// starts any unit, at every boot. The root and /usr are named on the
/// command line (no partition auto-discovery: gpt-auto), nothing is
/// encrypted or integrity-protected (cryptsetup, integritysetup, tpm2),
/// there is no swap to resume from (hibernate-resume), /usr's dm-verity
/// device is set up by keel-init in the initrd, not by systemd from
/// `usrhash=` (veritysetup: in the real root it would make a unit for a
/// device that is already there), no SysV init
/// script without a unit, no rc.local, no offline update, no units from
/// the command line (run) and no SSH socket (ssh). Kept: fstab,
/// getty (the serial console) and debug
/// (`systemd.mask=` and friends on the command line).
/// keel-init needs none of them: there is no systemd in the initrd.
const NOT_GENERATED: &[&str] = &[
    "systemd-cryptsetup-generator",
    "systemd-gpt-auto-generator",
    "systemd-hibernate-resume-generator",
    "systemd-integritysetup-generator",
    "systemd-rc-local-generator",
    "systemd-run-generator",
    "systemd-ssh-generator",
    "systemd-system-update-generator",
    "systemd-sysv-generator",
    "systemd-tpm2-generator",
    "systemd-veritysetup-generator",
];

/// The tmpfiles.d file that restores missing /etc entries from the factory
/// copy.
pub const ETC_TMPFILES: &str = "usr/lib/tmpfiles.d/keel-etc.conf";

/// Moves the base's /etc to /usr/share/factory/etc and writes the
/// tmpfiles.d lines that copy each of its entries to /etc when missing.
/// Units the base enabled in /etc/systemd/system are enabled in /usr too.
pub fn make_factory_etc(root: &Path) -> Result<(), BuildError> {
    let etc = root.join("etc");
    disable(&etc.join("systemd/system"), NOT_ENABLED)?;
    disable(&root.join("usr/lib/systemd/system"), NOT_ENABLED)?;
    mask_generators(root, NOT_GENERATED)?;
    mask_units(root, MASKED)?;
    hoist_enablement(&etc.join("systemd/system"), &root.join("usr/lib/systemd/system"))?;
    // systemd makes the machine id on first boot.
    let _ = fs::remove_file(etc.join("machine-id"));
    let factory = root.join("usr/share/factory/etc");
    if factory.exists() {
        fs::remove_dir_all(&factory).map_err(|e| BuildError::io(&factory, e))?;
    }
    mkdir_parent(&factory)?;
    fs::rename(&etc, &factory).map_err(|e| BuildError::io(&factory, e))?;
    let mut names: Vec<String> = fs::read_dir(&factory)
        .map_err(|e| BuildError::io(&factory, e))?
        .filter_map(|e| e.ok().and_then(|e| e.file_name().to_str().map(str::to_string)))
        .collect();
    names.sort();
    let mut conf = String::from(
        "# Written by keel build: /etc entries missing from the root file system are restored from /usr/share/factory/etc.\n",
    );
    for n in names {
        let p = factory.join(&n);
        let meta = fs::symlink_metadata(&p).map_err(|e| BuildError::io(&p, e))?;
        if meta.file_type().is_symlink() {
            // `C` follows links, and relative ones dangle in the factory.
            let target = fs::read_link(&p).map_err(|e| BuildError::io(&p, e))?;
            conf.push_str(&format!("L /etc/{n} - - - - {}\n", target.display()));
        } else {
            conf.push_str(&format!("C /etc/{n} - - - -\n"));
        }
    }
    write_file(root, ETC_TMPFILES, conf.as_bytes(), 0o644)
}

/// Masks the generators `names` of `root`'s /usr in its /etc.
fn mask_generators(root: &Path, names: &[&str]) -> Result<(), BuildError> {
    let present: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| root.join("usr/lib/systemd/system-generators").join(name).exists())
        .collect();
    mask(&root.join("etc/systemd/system-generators"), &present)
}

/// Masks the units `names` in `root`'s /etc.
fn mask_units(root: &Path, names: &[&str]) -> Result<(), BuildError> {
    mask(&root.join("etc/systemd/system"), names)
}

/// Links each of `names` in `dir` to /dev/null.
fn mask(dir: &Path, names: &[&str]) -> Result<(), BuildError> {
    fs::create_dir_all(dir).map_err(|e| BuildError::io(dir, e))?;
    for name in names {
        let link = dir.join(name);
        let _ = fs::remove_file(&link);
        symlink("/dev/null", &link).map_err(|e| BuildError::io(&link, e))?;
    }
    Ok(())
}

/// Removes the enablement symlinks of `units` from `etc_units`.
fn disable(etc_units: &Path, units: &[&str]) -> Result<(), BuildError> {
    if !etc_units.is_dir() {
        return Ok(());
    }
    for p in walk(etc_units)? {
        let named = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| units.contains(&n));
        if named && fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
            fs::remove_file(&p).map_err(|e| BuildError::io(&p, e))?;
        }
    }
    Ok(())
}

/// Copies the enablement symlinks of `etc_units` (`*.wants/`, `*.requires/`,
/// aliases) into `usr_units` where missing.
fn hoist_enablement(etc_units: &Path, usr_units: &Path) -> Result<(), BuildError> {
    if !etc_units.is_dir() {
        return Ok(());
    }
    for p in walk(etc_units)? {
        let meta = fs::symlink_metadata(&p).map_err(|e| BuildError::io(&p, e))?;
        if !meta.file_type().is_symlink() {
            continue;
        }
        let rel = p.strip_prefix(etc_units).unwrap_or(&p);
        let dest = usr_units.join(rel);
        if fs::symlink_metadata(&dest).is_ok() {
            continue;
        }
        let target = fs::read_link(&p).map_err(|e| BuildError::io(&p, e))?;
        // Links to /dev/null mask units; a factory default masks nothing.
        if target == Path::new("/dev/null") {
            continue;
        }
        mkdir_parent(&dest)?;
        symlink(&target, &dest).map_err(|e| BuildError::io(&dest, e))?;
    }
    Ok(())
}

/// Copies the factory /etc (`factory`, made by [`make_factory_etc`]) to
/// `dest`, the root file system's /etc, at build time: owners, modes and
/// links as they are, so that the first boot copies nothing and finds
/// users, groups and configuration where systemd looks for them.
pub fn copy_etc(factory: &Path, dest: &Path) -> Result<(), BuildError> {
    let mut paths = vec![factory.to_path_buf()];
    paths.extend(walk(factory)?);
    for src in paths {
        let to = dest.join(src.strip_prefix(factory).unwrap_or(&src));
        let meta = fs::symlink_metadata(&src).map_err(|e| BuildError::io(&src, e))?;
        let kind = meta.file_type();
        if kind.is_dir() {
            fs::create_dir_all(&to).map_err(|e| BuildError::io(&to, e))?;
        } else if kind.is_symlink() {
            let target = fs::read_link(&src).map_err(|e| BuildError::io(&src, e))?;
            let _ = fs::remove_file(&to);
            symlink(&target, &to).map_err(|e| BuildError::io(&to, e))?;
        } else if kind.is_file() {
            fs::copy(&src, &to).map_err(|e| BuildError::io(&to, e))?;
        } else {
            return Err(BuildError::io(
                &src,
                std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "not a file, directory or symlink: /etc cannot hold it",
                ),
            ));
        }
        lchown(&to, Some(meta.uid()), Some(meta.gid())).map_err(|e| BuildError::io(&to, e))?;
        if !kind.is_symlink() {
            fs::set_permissions(&to, fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(|e| BuildError::io(&to, e))?;
        }
    }
    Ok(())
}
