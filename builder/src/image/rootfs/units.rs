//! The role's systemd units installed into /usr and enabled by their
//! `[Install]` section, plus the base units every image enables, and the
//! base units started only once the network is online.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use super::{copy_file, walk};
use crate::image::BuildError;

/// Units of the base that every image enables: DHCP on every Ethernet
/// interface, its wait-online (so network-online.target means it), DNS;
/// the login prompt on the serial console (`console=ttyS0` on Keel's
/// command line: systemd's getty generator, masked, would enable the same);
/// and growing the root file system online after systemd-repart (enabled
/// by the base, in the real root) grew its partition: keel-init, the
/// initrd's /init, only mounts the root.
const ENABLE: &[(&str, &str)] = &[
    ("getty.target", "serial-getty@ttyS0.service"),
    ("sysinit.target", "systemd-growfs-root.service"),
    ("multi-user.target", "systemd-networkd.service"),
    ("multi-user.target", "systemd-resolved.service"),
    ("network-online.target", "systemd-networkd-wait-online.service"),
];

/// Units of the base a node runs, but not on the way to keel-bootstrap:
/// each starts once the network is online, at the lowest CPU weight while
/// the node boots (`StartupCPUWeight=idle`), so that on an instance's few
/// CPUs, or an emulator's one, it takes nothing from the path to
/// keel-bootstrap. Once the boot is over the default weight applies again:
/// D-Bus is on the way of every container the runtime starts (runc's
/// systemd cgroup driver asks systemd for each container's scope over the
/// system bus), and must not starve behind the kubelet. D-Bus and logind
/// (logind turns the ACPI power button, which EC2 presses to stop an
/// instance, into a clean shutdown; its D-Bus socket has its own drop-in,
/// `images/common/files/usr/lib/systemd/system/dbus.socket.d`), the
/// serial console's login prompt and permitting logins, and the clock's
/// synchronisation (systemd-timesyncd: not enabled, `etc::NOT_ENABLED`;
/// `keel-after-bootstrap.service` starts it). (Growing the root
/// is not one of them: keel-bootstrap waits for it, since what it writes,
/// an etcd snapshot it restores for one, needs more than the image's
/// 64 MiB root.)
const AFTER_NETWORK: &[&str] = &[
    "dbus.service",
    "serial-getty@.service",
    "systemd-logind.service",
    "systemd-timesyncd.service",
    "systemd-user-sessions.service",
];

/// The drop-in that [`AFTER_NETWORK`]'s units get.
const AFTER_NETWORK_DROP_IN: &str = "\
# Written by keel build (builder/src/image/rootfs/units.rs, AFTER_NETWORK):
# not on the way to keel-bootstrap.
[Unit]
After=network-online.target
[Service]
StartupCPUWeight=idle
";

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
    for unit in AFTER_NETWORK {
        let path = format!("usr/lib/systemd/system/{unit}.d/keel-after-network.conf");
        super::write_file(root, &path, AFTER_NETWORK_DROP_IN.as_bytes(), 0o644)?;
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

/// Links `unit` into `target`'s `.wants` or `.requires`; an instance
/// (`serial-getty@ttyS0.service`) links to its template's file, as
/// `systemctl enable` does.
fn enable(root: &Path, target: &str, kind: &str, unit: &str) -> Result<(), BuildError> {
    let dir = root.join(format!("usr/lib/systemd/system/{target}.{kind}"));
    fs::create_dir_all(&dir).map_err(|e| BuildError::io(&dir, e))?;
    let link = dir.join(unit);
    let _ = fs::remove_file(&link);
    let file = match (unit.split_once('@'), unit.rsplit_once('.')) {
        (Some((name, _)), Some((_, suffix))) => format!("{name}@.{suffix}"),
        _ => unit.to_string(),
    };
    symlink(format!("../{file}"), &link).map_err(|e| BuildError::io(&link, e))
}
