//! device-mapper through its ioctls on /dev/mapper/control (the kernel's
//! `struct dm_ioctl` interface, version 4): create a device, load its
//! table, resume it. What libdevmapper does for `dmsetup create`, without
//! udev.

use std::fs::{File, OpenOptions};
use std::io;

use crate::sys;

const CONTROL: &str = "/dev/mapper/control";
/// sizeof(struct dm_ioctl).
const HEADER: usize = 312;
/// sizeof(struct dm_target_spec).
const TARGET_SPEC: usize = 40;
const NAME_LEN: usize = 128;
const UUID_LEN: usize = 129;

const DM_READONLY_FLAG: u32 = 1 << 0;

/// The ioctl numbers: _IOWR(0xfd, nr, struct dm_ioctl).
fn request(nr: u8) -> libc::c_ulong {
    (3 << 30) | ((HEADER as libc::c_ulong) << 16) | (0xfd << 8) | libc::c_ulong::from(nr)
}
const DM_DEV_CREATE: u8 = 3;
const DM_DEV_SUSPEND: u8 = 6;
const DM_TABLE_LOAD: u8 = 9;

/// A `struct dm_ioctl` for device `name`, followed by `payload`, the whole
/// buffer padded to 8 bytes.
pub fn message(name: &str, uuid: &str, flags: u32, targets: u32, payload: &[u8]) -> Vec<u8> {
    let size = (HEADER + payload.len()).div_ceil(8) * 8 + 8;
    let mut b = vec![0u8; size];
    // version 4.0.0: any 4.x kernel takes it.
    b[0..4].copy_from_slice(&4u32.to_ne_bytes());
    b[12..16].copy_from_slice(&(size as u32).to_ne_bytes());
    b[16..20].copy_from_slice(&(HEADER as u32).to_ne_bytes());
    b[20..24].copy_from_slice(&targets.to_ne_bytes());
    b[28..32].copy_from_slice(&flags.to_ne_bytes());
    let n = name.len().min(NAME_LEN - 1);
    b[48..48 + n].copy_from_slice(&name.as_bytes()[..n]);
    let u = uuid.len().min(UUID_LEN - 1);
    b[176..176 + u].copy_from_slice(&uuid.as_bytes()[..u]);
    b[HEADER..HEADER + payload.len()].copy_from_slice(payload);
    b
}

/// One `struct dm_target_spec` and its NUL-terminated parameters, padded
/// to 8 bytes.
pub fn target(start: u64, sectors: u64, kind: &str, params: &str) -> Vec<u8> {
    let len = (TARGET_SPEC + params.len() + 1).div_ceil(8) * 8;
    let mut t = vec![0u8; len];
    t[0..8].copy_from_slice(&start.to_ne_bytes());
    t[8..16].copy_from_slice(&sectors.to_ne_bytes());
    // `next`: the offset of the next spec from this one (the last: 0 is
    // fine too, the kernel reads target_count specs).
    t[20..24].copy_from_slice(&(len as u32).to_ne_bytes());
    let k = kind.len().min(15);
    t[24..24 + k].copy_from_slice(&kind.as_bytes()[..k]);
    t[TARGET_SPEC..TARGET_SPEC + params.len()].copy_from_slice(params.as_bytes());
    t
}

/// The kernel's device number of a dm_ioctl answer (`huge_encode_dev`).
fn decode_dev(b: &[u8]) -> (u32, u32) {
    let mut d = [0u8; 8];
    d.copy_from_slice(&b[40..48]);
    let dev = u64::from_ne_bytes(d);
    let major = ((dev >> 8) & 0xfff) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32;
    (major, minor)
}

fn call(control: &File, nr: u8, what: &str, buf: &mut [u8]) -> io::Result<()> {
    sys::ioctl_buf(control, request(nr), buf)
        .map_err(|e| io::Error::new(e.kind(), format!("device-mapper {what}: {e}")))
}

/// Creates the read-only device `name` with one target and activates it;
/// returns its (major, minor) (`/dev/dm-<minor>`).
pub fn create(
    name: &str,
    uuid: &str,
    sectors: u64,
    kind: &str,
    params: &str,
) -> io::Result<(u32, u32)> {
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open(CONTROL)
        .map_err(|e| io::Error::new(e.kind(), format!("{CONTROL}: {e}")))?;
    let mut b = message(name, uuid, 0, 0, &[]);
    call(&control, DM_DEV_CREATE, &format!("create {name}"), &mut b)?;
    let dev = decode_dev(&b);
    let spec = target(0, sectors, kind, params);
    let mut b = message(name, "", DM_READONLY_FLAG, 1, &spec);
    call(&control, DM_TABLE_LOAD, &format!("load the {kind} table of {name}"), &mut b)?;
    // DM_DEV_SUSPEND without DM_SUSPEND_FLAG resumes: the loaded table
    // becomes live.
    let mut b = message(name, "", 0, 0, &[]);
    call(&control, DM_DEV_SUSPEND, &format!("resume {name}"), &mut b)?;
    Ok(dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_are_the_kernels() {
        // DM_TABLE_LOAD and DM_DEV_CREATE as <linux/dm-ioctl.h> defines them.
        assert_eq!(request(DM_TABLE_LOAD), 0xc138_fd09);
        assert_eq!(request(DM_DEV_CREATE), 0xc138_fd03);
    }

    #[test]
    fn a_table_load_message_is_laid_out_as_the_kernel_reads_it() {
        let spec = target(0, 8000, "verity", "1 254:1 254:2 4096 4096 1000 1 sha256 ab -");
        assert_eq!(spec.len() % 8, 0);
        assert_eq!(&spec[24..30], b"verity");
        assert_eq!(spec[TARGET_SPEC + 43], 0, "parameters end with NUL");
        let m = message("usr", "", DM_READONLY_FLAG, 1, &spec);
        assert_eq!(m.len() % 8, 0);
        let u32at = |o: usize| u32::from_ne_bytes(m[o..o + 4].try_into().unwrap());
        assert_eq!(u32at(12) as usize, m.len(), "data_size");
        assert_eq!(u32at(16) as usize, HEADER, "data_start");
        assert_eq!(u32at(20), 1, "target_count");
        assert_eq!(u32at(28), DM_READONLY_FLAG);
        assert_eq!(&m[48..52], b"usr\0");
        assert_eq!(&m[HEADER..HEADER + spec.len()], &spec[..]);
        // The kernel's 254:3 comes back encoded as huge_encode_dev does.
        let mut answer = m.clone();
        let dev: u64 = 3 | (254 << 8);
        answer[40..48].copy_from_slice(&dev.to_ne_bytes());
        assert_eq!(decode_dev(&answer), (254, 3));
        answer[40..48].copy_from_slice(&(0x34u64 | (254 << 8) | (0x12 << 20)).to_ne_bytes());
        assert_eq!(decode_dev(&answer), (254, 0x1234));
    }
}
