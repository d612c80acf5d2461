//! The system calls keel-init makes that std does not offer, each a small
//! safe wrapper over libc: the one module with `unsafe` in keel-init.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

pub use libc::{MS_MOVE, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, MS_STRICTATIME};

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a string"))
}

fn check(r: libc::c_long) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// mount(2).
pub fn mount(
    source: &str,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let (source, target) = (cstr(source)?, cstr(target)?);
    let fstype = fstype.map(cstr).transpose()?;
    let data = data.filter(|d| !d.is_empty()).map(cstr).transpose()?;
    // SAFETY: every pointer is a NUL-terminated string that outlives the
    // call, or null where mount(2) allows it.
    let r = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
            flags,
            data.as_ref().map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    };
    check(r.into())
}

/// chroot(2).
pub fn chroot(path: &str) -> io::Result<()> {
    let path = cstr(path)?;
    // SAFETY: a NUL-terminated string that outlives the call.
    check(unsafe { libc::chroot(path.as_ptr()) }.into())
}

/// finit_module(2) with `params` (`param=value ...`, "" for none);
/// `flags` e.g. [`MODULE_INIT_COMPRESSED_FILE`].
pub fn finit_module(module: &File, params: &str, flags: libc::c_int) -> io::Result<()> {
    let params = cstr(params)?;
    // SAFETY: a valid descriptor and a NUL-terminated string that outlives
    // the call.
    check(unsafe {
        libc::syscall(libc::SYS_finit_module, module.as_raw_fd(), params.as_ptr(), flags)
    })
}

/// The kernel decompresses the module file itself (CONFIG_MODULE_DECOMPRESS).
pub const MODULE_INIT_COMPRESSED_FILE: libc::c_int = 4;

/// ioctl(2) with a read-write buffer argument (device-mapper's
/// `struct dm_ioctl` and what follows it). The kernel reads and writes at
/// most the size the buffer's header gives, which the caller sets to
/// `buf.len()`.
pub fn ioctl_buf(file: &File, request: libc::c_ulong, buf: &mut [u8]) -> io::Result<()> {
    // SAFETY: `buf` is valid for reads and writes of its whole length, and
    // the request's structure says no more than that.
    check(unsafe { libc::ioctl(file.as_raw_fd(), request, buf.as_mut_ptr()) }.into())
}

/// The hypervisor's CPUID vendor string (leaf 0x40000000), empty on bare
/// metal: "TCGTCGTCGTCG" under QEMU's emulation, "KVMKVMKVM\0\0\0" under
/// KVM (EC2 Nitro too), "XenVMMXenVMM" under Xen.
pub fn hypervisor_vendor() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        // SAFETY: CPUID exists on every x86-64 CPU; leaf 1 ECX bit 31 says
        // whether the 0x4000_0000 leaves are a hypervisor's.
        #[allow(unused_unsafe)]
        let (l1, hv) = unsafe { (__cpuid(1), __cpuid(0x4000_0000)) };
        if l1.ecx & (1 << 31) == 0 {
            return String::new();
        }
        let mut v = Vec::with_capacity(12);
        for r in [hv.ebx, hv.ecx, hv.edx] {
            v.extend_from_slice(&r.to_le_bytes());
        }
        String::from_utf8_lossy(&v).trim_end_matches('\0').to_string()
    }
    #[cfg(not(target_arch = "x86_64"))]
    String::new()
}
