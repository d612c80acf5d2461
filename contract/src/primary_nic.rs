//! The node's primary network interface: the one systemd-networkd
//! configures once keel-bootstrap has named it.
//!
//! The image's `80-keel-dhcp.network` runs DHCP on every Ethernet
//! interface, which a node needs at first boot to reach the instance
//! metadata at all. Interfaces attached later belong to whoever attached
//! them: the Amazon VPC CNI's secondary ENIs carry pod addresses and the
//! CNI's own routes, and DHCP with a second default route on them would
//! send the node's traffic out of an ENI whose address it is not (EC2's
//! source/destination check drops it). So keel-bootstrap writes
//! [`DROP_IN`], which narrows that `.network` file to the interface whose
//! MAC address the metadata names as the instance's (`meta-data/mac`,
//! device index 0), and it stays for every later boot of the instance.
//!
//! keel-init, before the real root starts, sets [`DROP_IN`] aside
//! ([`SET_ASIDE`]) when no interface of the machine has its address: a
//! root volume moved to another instance would otherwise boot with no
//! network at all, and never reach the metadata to learn the new address.
//! Every interface is then configured until keel-bootstrap writes the file
//! again.

/// Under the root: a drop-in for the image's
/// `/usr/lib/systemd/network/80-keel-dhcp.network`.
pub const DROP_IN: &str =
    "etc/systemd/network/80-keel-dhcp.network.d/50-keel-primary-interface.conf";

/// What keel-init renames [`DROP_IN`] to (networkd reads only `*.conf`).
pub const SET_ASIDE: &str =
    "etc/systemd/network/80-keel-dhcp.network.d/50-keel-primary-interface.conf.other-instance";

/// `s` as a MAC address in networkd's and sysfs's form (six pairs of
/// lowercase hex digits with colons), or why not.
pub fn parse_mac(s: &str) -> Result<String, String> {
    let s = s.trim();
    let pairs: Vec<&str> = s.split(':').collect();
    if pairs.len() == 6
        && pairs.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!("{s:?} is not a MAC address (six hex pairs with colons)"))
    }
}

/// The drop-in for the interface with MAC address `mac` ([`parse_mac`]'s
/// form).
pub fn render(mac: &str) -> String {
    format!(
        "# Written by keel-bootstrap from the instance metadata (meta-data/mac):\n\
         # systemd-networkd configures only this instance's primary interface.\n\
         # Interfaces attached later (the Amazon VPC CNI's secondary ENIs) are\n\
         # left to whoever attached them. keel-init sets this file aside at\n\
         # boot when no interface has this address.\n\
         [Match]\n\
         PermanentMACAddress={mac}\n"
    )
}

/// The MAC address a drop-in [`render`] wrote names, if it names one.
pub fn mac_in(drop_in: &str) -> Option<String> {
    drop_in
        .lines()
        .find_map(|l| l.trim().strip_prefix("PermanentMACAddress="))
        .and_then(|m| parse_mac(m).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drop_in_names_the_address_it_was_rendered_for() {
        let mac = parse_mac("0A:1b:2c:3d:4e:5F\n").unwrap();
        assert_eq!(mac, "0a:1b:2c:3d:4e:5f");
        let text = render(&mac);
        assert!(text.contains("[Match]\nPermanentMACAddress=0a:1b:2c:3d:4e:5f\n"), "{text}");
        assert_eq!(mac_in(&text).as_deref(), Some("0a:1b:2c:3d:4e:5f"));
        assert_eq!(mac_in("[Match]\nName=eth0\n"), None);
        assert_eq!(mac_in("[Match]\nPermanentMACAddress=nope\n"), None);
        assert!(SET_ASIDE.starts_with(DROP_IN));
    }

    #[test]
    fn what_is_not_a_mac_address_is_refused() {
        for bad in
            ["", "0a:1b:2c:3d:4e", "0a:1b:2c:3d:4e:5f:60", "0a-1b-2c-3d-4e-5f", "0a:1b:2c:3d:4e:zz"]
        {
            assert!(parse_mac(bad).unwrap_err().contains("not a MAC address"), "{bad:?}");
        }
    }
}
