//! The factory /etc: the base's /etc moved to /usr/share/factory/etc,
//! recreated on first boot by systemd-tmpfiles; units Keel does not run
//! disabled, the base's enablement hoisted into /usr.

use super::*;

/// Units Debian's packages enable that a Keel node does not run: package
/// maintenance on an immutable /usr (apt and dpkg timers), ext4 metadata
/// scrubbing of LVM snapshots (no LVM), and a login prompt on the VGA
/// console (the serial console keeps its getty). Each is one more process
/// at boot on a small instance.
const NOT_ENABLED: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "getty@tty1.service",
];

/// The tmpfiles.d file that recreates /etc from the factory copy.
pub const ETC_TMPFILES: &str = "usr/lib/tmpfiles.d/keel-etc.conf";

/// Moves the base's /etc to /usr/share/factory/etc and writes the
/// tmpfiles.d lines that copy each of its entries to /etc when missing.
/// Units the base enabled in /etc/systemd/system are enabled in /usr too.
pub fn make_factory_etc(root: &Path) -> Result<(), BuildError> {
    let etc = root.join("etc");
    disable(&etc.join("systemd/system"), NOT_ENABLED)?;
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
        "# Written by keel build: /etc is made from /usr/share/factory/etc on first boot.\n",
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
