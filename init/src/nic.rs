//! The primary network interface's drop-in
//! ([`keel_contract::primary_nic`]): kept when an interface of this machine
//! has the MAC address it names, set aside when none has (the root volume
//! came from another instance), so that the node still gets a network and
//! reaches the instance metadata.

use std::fs;
use std::path::Path;

use keel_contract::primary_nic::{mac_in, parse_mac, DROP_IN, SET_ASIDE};

/// What to do with the drop-in.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Interface `name` has the address.
    Keep { mac: String, name: String },
    /// No interface has it (or the file names none: `mac` is `None`).
    SetAside { mac: Option<String> },
}

/// The decision for drop-in text `drop_in` on a machine whose interfaces
/// are `interfaces` (name, MAC address).
pub fn decide(drop_in: &str, interfaces: &[(String, String)]) -> Decision {
    let mac = mac_in(drop_in);
    match interfaces.iter().find(|(_, m)| Some(m) == mac.as_ref()) {
        Some((name, m)) => Decision::Keep { mac: m.clone(), name: name.clone() },
        None => Decision::SetAside { mac },
    }
}

/// The network interfaces in `sys_class_net` (`/sys/class/net`) that
/// have a MAC address: name and address.
pub fn interfaces(sys_class_net: &Path) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = fs::read_dir(sys_class_net)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let address = fs::read_to_string(e.path().join("address")).ok()?;
            let mac = parse_mac(&address).ok().filter(|m| m != "00:00:00:00:00:00")?;
            Some((name, mac))
        })
        .collect();
    out.sort();
    out
}

/// Checks the drop-in under `root` against `sys_class_net`'s interfaces
/// and sets it aside when none has its address. Returns the line to print
/// (`None` when there is no drop-in: a first boot).
pub fn check(root: &Path, sys_class_net: &Path) -> Option<String> {
    let path = root.join(DROP_IN);
    let text = fs::read_to_string(&path).ok()?;
    let interfaces = interfaces(sys_class_net);
    Some(match decide(&text, &interfaces) {
        Decision::Keep { mac, name } => {
            format!("primary network interface {mac}: {name} (systemd-networkd configures only it)")
        }
        Decision::SetAside { mac } => {
            let why = match mac {
                Some(mac) => format!(
                    "primary network interface {mac} is not on this machine (the root volume \
                     came from another instance)"
                ),
                None => format!("/{DROP_IN} names no MAC address"),
            };
            match fs::rename(&path, root.join(SET_ASIDE)) {
                Ok(()) => format!(
                    "{why}: set aside as /{SET_ASIDE}; systemd-networkd configures every \
                     interface until keel-bootstrap names this instance's"
                ),
                Err(e) => format!("{why}: could not set /{DROP_IN} aside: {e}"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_contract::primary_nic::render;

    fn iface(dir: &Path, name: &str, address: &str) {
        fs::create_dir_all(dir.join(name)).unwrap();
        fs::write(dir.join(name).join("address"), format!("{address}\n")).unwrap();
    }

    #[test]
    fn the_drop_in_stays_when_an_interface_has_its_address() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, net) = (tmp.path().join("root"), tmp.path().join("net"));
        iface(&net, "lo", "00:00:00:00:00:00");
        iface(&net, "ens5", "0a:1b:2c:3d:4e:5f");
        iface(&net, "ens6", "0a:1b:2c:3d:4e:60");
        // A first boot: no drop-in, nothing to say.
        assert_eq!(check(&root, &net), None);
        let path = root.join(DROP_IN);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, render("0a:1b:2c:3d:4e:5f")).unwrap();
        let line = check(&root, &net).unwrap();
        assert!(line.contains("0a:1b:2c:3d:4e:5f: ens5"), "{line}");
        assert!(path.exists());
    }

    #[test]
    fn the_drop_in_is_set_aside_when_no_interface_has_its_address() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, net) = (tmp.path().join("root"), tmp.path().join("net"));
        iface(&net, "ens5", "0a:99:99:99:99:99");
        let path = root.join(DROP_IN);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, render("0a:1b:2c:3d:4e:5f")).unwrap();
        let line = check(&root, &net).unwrap();
        assert!(line.contains("0a:1b:2c:3d:4e:5f is not on this machine"), "{line}");
        assert!(line.contains("set aside as"), "{line}");
        assert!(!path.exists());
        assert_eq!(fs::read_to_string(root.join(SET_ASIDE)).unwrap(), render("0a:1b:2c:3d:4e:5f"));
        // Garbled: set aside too, rather than networkd matching nothing.
        fs::write(&path, "[Match]\nPermanentMACAddress=\n").unwrap();
        assert!(check(&root, &net).unwrap().contains("names no MAC address"));
        assert!(!path.exists());
    }
}
