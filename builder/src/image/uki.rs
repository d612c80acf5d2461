//! The unified kernel image: kernel, initrd, os-release and the kernel
//! command line (which carries the verity root hash of /usr) joined with
//! systemd's UEFI stub by the tools tree's ukify. UEFI firmware boots it
//! directly as \EFI\BOOT\BOOTX64.EFI; no boot loader, no boot menu.

use std::path::Path;

use super::tools::{Tools, WORK};
use super::BuildError;

/// The kernel command line of an image whose /usr has `root_hash` and
/// whose root partition has `root_uuid`.
pub fn cmdline(root_hash: &str, root_uuid: &uuid::Uuid) -> String {
    [
        format!("usrhash={root_hash}"),
        "mount.usrfstype=erofs".into(),
        "mount.usrflags=ro".into(),
        format!("root=PARTUUID={root_uuid}"),
        "rootfstype=ext4".into(),
        "rootflags=x-systemd.growfs".into(),
        "rw".into(),
        // EC2 and QEMU both show ttyS0 as the console log.
        "console=tty0".into(),
        "console=ttyS0,115200n8".into(),
        // Nobody answers questions on a server's console.
        "systemd.firstboot=no".into(),
        "panic=30".into(),
        // The kernel's IO-APIC timer check panics ("IO-APIC + timer doesn't
        // work!") when a busy host delays an emulated (TCG) guest's timer;
        // virtual machines, EC2's included, need no such check (cloud
        // images commonly turn it off).
        "no_timer_check".into(),
    ]
    .join(" ")
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
