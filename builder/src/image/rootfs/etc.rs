//! /etc: the base's /etc moved to /usr/share/factory/etc (verified with
//! /usr), copied into the root file system at build time ([`copy_etc`]),
//! and restored entry by entry by keel-init when an entry is missing
//! (`keel_contract::factory_etc`); units Keel does not run disabled, the
//! base's enablement hoisted into /usr.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use super::{mkdir_parent, walk};
use crate::image::BuildError;

/// Units Debian's packages enable (in /etc or, statically, in /usr) that
/// a Keel node does not run: package maintenance on an immutable /usr (apt
/// and dpkg timers), ext4 metadata scrubbing of LVM snapshots (no LVM), a
/// login prompt on the VGA console (the serial console keeps its getty),
/// dracut's copy of the initrd into /run at every boot (only a root on
/// storage that needs the initrd to be unmounted uses it; Keel's is a plain
/// ext4 partition and a dm-verity /usr), and the kernel's debug and trace
/// file systems (an operator mounts them to debug). Each is one more
/// process on the way to keel-bootstrap on a small instance.
/// systemd-timesyncd is run, but not from sysinit.target, where Debian
/// enables it (its unit orders it before sysinit.target, on the way to
/// keel-bootstrap): `keel-after-bootstrap.service` starts it once
/// keel-bootstrap has ended. So too the journal's move from /run to /var
/// (`systemd-journal-flush.service`, in sysinit.target by systemd): until
/// then journald writes to memory, not to the ext4 root. The D-Bus socket
/// is taken out of sockets.target: its drop-in
/// (`images/common/files/usr/lib/systemd/system/dbus.socket.d`) starts it
/// once the network is online, pulled in by logind, which turns
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
    "systemd-journal-flush.service",
    "systemd-timesyncd.service",
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
/// saves nothing a node needs across reboots). And systemd's two passes
/// over /dev's tmpfiles.d lines (`systemd-tmpfiles-setup-dev-early` and
/// `-dev`), which run in series before udevd, on the way to keel-bootstrap:
/// `keel-tmpfiles-dev.service` applies the same lines once the network is
/// online, before the role's services (the users and groups the lines
/// name are made at build time, `users::add_system_users`).
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
    "systemd-tmpfiles-setup-dev-early.service",
    "systemd-tmpfiles-setup-dev.service",
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
/// the command line (run), no SSH socket (ssh), and no getty for each
/// console of the command line (getty): Keel's command line names the
/// serial console ttyS0 (EC2's), whose getty the build enables
/// (`units::ENABLE`). Kept: fstab and debug (`systemd.mask=` and friends
/// on the command line).
/// keel-init needs none of them: there is no systemd in the initrd.
const NOT_GENERATED: &[&str] = &[
    "systemd-cryptsetup-generator",
    "systemd-getty-generator",
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

/// Moves the base's /etc to the factory /etc
/// ([`keel_contract::factory_etc::DIR`]), whose entries keel-init copies
/// back to /etc when missing. Units the base enabled in
/// /etc/systemd/system are enabled in /usr too.
pub fn make_factory_etc(root: &Path) -> Result<(), BuildError> {
    let etc = root.join("etc");
    disable(&etc.join("systemd/system"), NOT_ENABLED)?;
    disable(&root.join("usr/lib/systemd/system"), NOT_ENABLED)?;
    mask_generators(root, NOT_GENERATED)?;
    mask_units(root, MASKED)?;
    hoist_enablement(&etc.join("systemd/system"), &root.join("usr/lib/systemd/system"))?;
    // systemd makes the machine id on first boot.
    let _ = fs::remove_file(etc.join("machine-id"));
    drop_empty_module_list(&etc)?;
    let factory = root.join(keel_contract::factory_etc::DIR);
    if factory.exists() {
        fs::remove_dir_all(&factory).map_err(|e| BuildError::io(&factory, e))?;
    }
    mkdir_parent(&factory)?;
    fs::rename(&etc, &factory).map_err(|e| BuildError::io(&factory, e))
}

/// Removes Debian's /etc/modules and its link in /etc/modules-load.d when
/// the list names no module (the base's has only comments): the link alone
/// makes systemd-modules-load.service run at every boot, to load nothing.
/// A role or an operator that lists a module in /etc/modules-load.d makes
/// it run again.
fn drop_empty_module_list(etc: &Path) -> Result<(), BuildError> {
    let list = etc.join("modules");
    let text = match fs::read_to_string(&list) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(BuildError::io(&list, e)),
    };
    let names_one = text.lines().map(str::trim).any(|l| !l.is_empty() && !l.starts_with('#'));
    if names_one {
        return Ok(());
    }
    for p in [etc.join("modules-load.d/modules.conf"), list] {
        if fs::symlink_metadata(&p).is_ok() {
            fs::remove_file(&p).map_err(|e| BuildError::io(&p, e))?;
        }
    }
    Ok(())
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
    keel_contract::factory_etc::copy_tree(factory, dest)
        .map_err(|e| BuildError::io(&e.path, e.source))
}
