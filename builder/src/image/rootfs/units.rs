//! The role's systemd units installed into /usr and enabled by their
//! `[Install]` section, plus the base units every image enables.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use super::{copy_file, walk};
use crate::image::BuildError;

/// Units of the base that every image enables: DHCP on every Ethernet
/// interface, its wait-online (so network-online.target means it), DNS;
/// and growing the root file system online after systemd-repart (enabled
/// by the base, in the real root) grew its partition: keel-init, the
/// initrd's /init, only mounts the root.
const ENABLE: &[(&str, &str)] = &[
    ("sysinit.target", "systemd-growfs-root.service"),
    ("multi-user.target", "systemd-networkd.service"),
    ("multi-user.target", "systemd-resolved.service"),
    ("network-online.target", "systemd-networkd-wait-online.service"),
];

/// Installs the units of `dirs` (in order; a later one replaces an earlier
/// one of the same name) into /usr/lib/systemd/system and enables each by
/// its `[Install] WantedBy=`/`RequiredBy=`, with symlinks in /usr (the
/// writable /etc does not exist yet when systemd first loads units).
pub fn add_units(dirs: &[PathBuf], root: &Path) -> Result<Vec<String>, BuildError> {
    let unit_dir = root.join("usr/lib/systemd/system");
    let mut units: BTreeMap<String, PathBuf> = BTreeMap::new();
    for d in dirs.iter().filter(|d| d.is_dir()) {
        for p in walk(d)? {
            if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
                units.insert(name.to_string(), p.clone());
            }
        }
    }
    for (name, src) in &units {
        let dest = unit_dir.join(name);
        copy_file(src, &dest)?;
        let text = fs::read_to_string(src).map_err(|e| BuildError::io(src, e))?;
        for (kind, target) in install_targets(&text) {
            enable(root, &target, kind, name)?;
        }
    }
    for (target, unit) in ENABLE {
        enable(root, target, "wants", unit)?;
    }
    Ok(units.into_keys().collect())
}

/// The `WantedBy=`/`RequiredBy=` targets of a unit's `[Install]` section.
pub(super) fn install_targets(unit: &str) -> Vec<(&'static str, String)> {
    let mut section = "";
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Install]" {
            for (key, kind) in [("WantedBy=", "wants"), ("RequiredBy=", "requires")] {
                if let Some(v) = line.strip_prefix(key) {
                    out.extend(v.split_whitespace().map(|t| (kind, t.to_string())));
                }
            }
        }
    }
    out
}

fn enable(root: &Path, target: &str, kind: &str, unit: &str) -> Result<(), BuildError> {
    let dir = root.join(format!("usr/lib/systemd/system/{target}.{kind}"));
    fs::create_dir_all(&dir).map_err(|e| BuildError::io(&dir, e))?;
    let link = dir.join(unit);
    let _ = fs::remove_file(&link);
    symlink(format!("../{unit}"), &link).map_err(|e| BuildError::io(&link, e))
}
