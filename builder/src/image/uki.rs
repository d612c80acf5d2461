//! The unified kernel image: kernel, initrd, os-release and the kernel
//! command line (which carries the verity root hash of /usr) joined with
//! systemd's UEFI stub by the tools tree's ukify. UEFI firmware boots it
//! directly as \EFI\BOOT\BOOTX64.EFI; no boot loader, no boot menu (so
//! there is no systemd-boot to sign: with Secure Boot, the UKI is the only
//! EFI binary and [`sign`] signs it).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::tools::{require_host, run_checked, Tools, TOOL_LIMIT, WORK};
use super::BuildError;
use crate::secureboot::SigningKey;

/// The kernel command line of an image whose /usr has `root_hash` and
/// whose root partition has `root_uuid`, then the profile's `extra`
/// arguments (`kernel-cmdline`; only test profiles set any). keel-init
/// reads the first six (systemd's names for them); the root file system
/// grows in the real root (systemd-repart, then systemd-growfs-root).
pub fn cmdline(root_hash: &str, root_uuid: &uuid::Uuid, extra: &[String]) -> String {
    let keel = [
        format!("usrhash={root_hash}"),
        "mount.usrfstype=erofs".into(),
        "mount.usrflags=ro".into(),
        format!("root=PARTUUID={root_uuid}"),
        "rootfstype=ext4".into(),
        "rw".into(),
        // EC2 and QEMU both show ttyS0 as the console log.
        "console=tty0".into(),
        "console=ttyS0,115200n8".into(),
        // Nobody answers questions on a server's console.
        "systemd.firstboot=no".into(),
        // The build did the first boot's work: /etc is in the root file
        // system and units are enabled in /usr. Without this, systemd takes
        // the missing machine id for a first boot and runs `preset-all`
        // over every unit file (seconds on a small instance), enabling
        // what the image left disabled.
        "systemd.condition_first_boot=false".into(),
        "panic=30".into(),
        // AWS's advice for EBS volumes on Nitro: an NVMe I/O that takes
        // longer than the driver's default 30 s (a volume's rare stall) is
        // waited for rather than failed, which would remount the root
        // read-only. Debian's cloud kernel has nvme_core built in, so the
        // kernel takes it; keel-init prints the value the kernel holds.
        "nvme_core.io_timeout=4294967295".into(),
    ];
    keel.iter().chain(extra).cloned().collect::<Vec<_>>().join(" ")
}

/// Makes `work/uki.efi` from files under `work` (paths relative to it).
pub fn make(
    tools: &Tools,
    work: &Path,
    linux: &str,
    initrd: &str,
    os_release: &str,
    cmdline: &str,
    uname: &str,
) -> Result<(), BuildError> {
    let cmdline_file = work.join("cmdline");
    std::fs::write(&cmdline_file, cmdline).map_err(|e| BuildError::io(&cmdline_file, e))?;
    tools.run(
        work,
        "/usr/bin/ukify",
        &[
            "build".into(),
            format!("--linux={WORK}/{linux}"),
            format!("--initrd={WORK}/{initrd}"),
            format!("--os-release=@{WORK}/{os_release}"),
            format!("--cmdline=@{WORK}/cmdline"),
            format!("--uname={uname}"),
            format!("--output={WORK}/uki.efi"),
        ],
        &[],
    )?;
    Ok(())
}

/// Signs `work/uki.efi` for UEFI Secure Boot with `key` (db) into
/// `work/uki.signed.efi`, with the host's sbsign (Authenticode, sha256).
/// sbsign puts the clock into the signature's signingTime attribute;
/// libfaketime freezes that clock at the build's SOURCE_DATE_EPOCH so the
/// signed UKI, like the rest of the image, depends only on the inputs
/// (RSA PKCS#1 v1.5 signatures are deterministic).
pub fn sign(work: &Path, key: &SigningKey, epoch: u64) -> Result<PathBuf, BuildError> {
    let faketime = require_host("faketime", "faketime")?;
    let sbsign = require_host("sbsign", "sbsigntool")?;
    let frozen = time::OffsetDateTime::from_unix_timestamp(epoch as i64)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]"
            ))
            .ok()
        })
        .ok_or(BuildError::Epoch { epoch })?;
    let (unsigned, signed) = (work.join("uki.efi"), work.join("uki.signed.efi"));
    let mut cmd = Command::new(faketime);
    cmd.env("TZ", "UTC")
        .arg("-f")
        .arg(&frozen)
        .arg(sbsign)
        .arg("--key")
        .arg(&key.key_path)
        .arg("--cert")
        .arg(&key.cert.path)
        .arg("--output")
        .arg(&signed)
        .arg(&unsigned);
    run_checked(cmd, "sbsign (signing the UKI with db)", TOOL_LIMIT)?;
    Ok(signed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profiles_arguments_come_after_keels_and_nothing_else_is_added() {
        let uuid = uuid::Uuid::nil();
        let plain = cmdline("ab", &uuid, &[]);
        assert!(plain.starts_with("usrhash=ab "), "{plain}");
        assert!(plain.ends_with(" panic=30 nvme_core.io_timeout=4294967295"), "{plain}");
        assert!(!plain.contains("no_timer_check"), "{plain}");
        let test = cmdline("ab", &uuid, &["no_timer_check".into()]);
        assert_eq!(test, format!("{plain} no_timer_check"));
    }
}
