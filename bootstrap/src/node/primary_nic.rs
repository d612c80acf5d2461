//! The "primary interface" step: systemd-networkd narrowed to the
//! instance's primary network interface ([`keel_contract::primary_nic`]),
//! so that interfaces attached later (the Amazon VPC CNI's secondary ENIs)
//! are left to whoever attached them.

use std::time::Duration;

use keel_contract::primary_nic::{parse_mac, render, DROP_IN};

use super::{write, NodeError};
use crate::imds::Imds;
use crate::layout::Layout;

/// How long systemd may take to reload systemd-networkd.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(60);
const RELOAD: &str = "systemctl try-reload-or-restart systemd-networkd.service";

/// Writes the drop-in for the primary interface's MAC address (from the
/// instance metadata) unless it already says so; on the running system,
/// then has systemd-networkd read it. Returns the address.
pub async fn pin(layout: &Layout, imds: &Imds) -> Result<String, NodeError> {
    let given = imds.primary_mac().await?;
    let mac = parse_mac(&given).map_err(|why| NodeError::PrimaryMac { why })?;
    let text = render(&mac);
    if std::fs::read_to_string(layout.path(DROP_IN)).ok().as_deref() == Some(text.as_str()) {
        return Ok(mac);
    }
    write(layout, DROP_IN, 0o644, text.as_bytes())?;
    if layout.is_system_root() {
        super::systemctl::run(RELOAD, RELOAD_TIMEOUT).await?;
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_testkit::imds::{ImdsEmulator, Instance};

    /// The metadata emulator serving `mac` as the primary interface's
    /// address, and a client of it.
    fn metadata_with_mac(mac: &str) -> (ImdsEmulator, Imds) {
        let mut instance = Instance::with_credentials_in("eu-west-1");
        instance.mac = mac.into();
        let server = ImdsEmulator::start(instance).unwrap();
        let imds = Imds::new(&server.base_url()).unwrap();
        (server, imds)
    }

    #[tokio::test]
    async fn the_drop_in_names_the_metadatas_mac_and_is_written_once() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::new(tmp.path());
        let (_server, imds) = metadata_with_mac("0A:1B:2C:3D:4E:5F");
        assert_eq!(pin(&layout, &imds).await.unwrap(), "0a:1b:2c:3d:4e:5f");
        let path = layout.path(DROP_IN);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), render("0a:1b:2c:3d:4e:5f"));
        let written = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        pin(&layout, &imds).await.unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), written, "rewritten");
    }

    #[tokio::test]
    async fn metadata_that_is_not_a_mac_address_fails_the_step() {
        let tmp = tempfile::tempdir().unwrap();
        let (_server, imds) = metadata_with_mac("not-a-mac");
        let e = pin(&Layout::new(tmp.path()), &imds).await.unwrap_err().to_string();
        assert!(e.contains("not a MAC address"), "{e}");
        assert!(!Layout::new(tmp.path()).path(DROP_IN).exists());
    }
}
