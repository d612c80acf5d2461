//! Checks that the keel-bootstrap and keel-init binaries baked into images
//! are static x86-64 ELF executables: the image's /usr is verified and
//! read-only, so the bootstrap must not depend on the base's shared
//! libraries, and the initrd has none.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// How to build the binary this check wants.
pub const STATIC_BUILD: &str = "RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release -p keel-bootstrap -p keel-init --target x86_64-unknown-linux-gnu";

const PT_INTERP: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not an x86-64 ELF executable")]
    NotElf { path: String },
    #[error("{path} is dynamically linked (it asks for interpreter {interp}); build a static one with:\n  {STATIC_BUILD}")]
    Dynamic { path: String, interp: String },
}

/// Fails unless the file at `path` is a static x86-64 ELF executable.
pub fn check_static(path: &Path) -> Result<(), ElfError> {
    let shown = path.display().to_string();
    let read = |source| ElfError::Read { path: shown.clone(), source };
    let mut file = std::fs::File::open(path).map_err(read)?;
    match interpreter(&mut file).map_err(read)? {
        Linking::NotElf => Err(ElfError::NotElf { path: shown }),
        Linking::Static => Ok(()),
        Linking::Dynamic(interp) => Err(ElfError::Dynamic { path: shown, interp }),
    }
}

/// The size of an ELF64 program header (`e_phentsize`).
const PHDR_SIZE: usize = 56;
/// The longest interpreter path read (PATH_MAX); a longer one is shown cut.
const MAX_INTERP: u64 = 4096;

/// What [`interpreter`] found.
#[derive(Debug, PartialEq, Eq)]
enum Linking {
    NotElf,
    Static,
    Dynamic(String),
}

/// Reads the ELF header and program headers of `r` (every offset and size
/// checked against the file's length, at most 64 KiB program headers and
/// 4 KiB of interpreter path read) and reports its PT_INTERP, if any.
fn interpreter(r: &mut (impl Read + Seek)) -> std::io::Result<Linking> {
    let len = r.seek(SeekFrom::End(0))?;
    let mut h = [0u8; 64];
    if len < h.len() as u64 {
        return Ok(Linking::NotElf);
    }
    r.seek(SeekFrom::Start(0))?;
    r.read_exact(&mut h)?;
    // ELF64, little-endian, machine x86-64 (62), 56-byte program headers.
    if &h[0..4] != b"\x7fELF"
        || h[4] != 2
        || h[5] != 1
        || u16at(&h, 18) != 62
        || usize::from(u16at(&h, 54)) != PHDR_SIZE
    {
        return Ok(Linking::NotElf);
    }
    let phoff = u64at(&h, 32);
    let phnum = usize::from(u16at(&h, 56));
    // phnum * 56 is at most 65535 * 56 bytes: bounded.
    let table = (phnum * PHDR_SIZE) as u64;
    if phoff.checked_add(table).is_none_or(|end| end > len) {
        return Ok(Linking::NotElf);
    }
    let mut phdrs = vec![0u8; phnum * PHDR_SIZE];
    r.seek(SeekFrom::Start(phoff))?;
    r.read_exact(&mut phdrs)?;
    for ph in phdrs.chunks_exact(PHDR_SIZE) {
        if u32at(ph, 0) != PT_INTERP {
            continue;
        }
        let off = u64at(ph, 8);
        let size = u64at(ph, 32);
        let interp = match off.checked_add(size) {
            Some(end) if end <= len => {
                let mut b = vec![0u8; size.min(MAX_INTERP) as usize];
                r.seek(SeekFrom::Start(off))?;
                r.read_exact(&mut b)?;
                String::from_utf8_lossy(&b).trim_end_matches('\0').to_string()
            }
            _ => String::new(),
        };
        return Ok(Linking::Dynamic(interp));
    }
    Ok(Linking::Static)
}

fn u16at(d: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([d[at], d[at + 1]])
}

fn u32at(d: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]])
}

fn u64at(d: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[at..at + 8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_binary_is_refused_with_the_build_command() {
        // /bin/sh on the build host is dynamically linked.
        let err = check_static(Path::new("/bin/sh")).unwrap_err().to_string();
        assert!(err.contains("dynamically linked"), "{err}");
        assert!(err.contains(STATIC_BUILD), "{err}");
    }

    #[test]
    fn non_elf_is_refused() {
        let err = check_static(Path::new("/etc/os-release")).unwrap_err();
        assert!(matches!(err, ElfError::NotElf { .. }), "{err}");
    }

    /// A static x86-64 ELF: header, one PT_LOAD, and (`interp`) a
    /// PT_INTERP naming `/lib64/ld-linux-x86-64.so.2` at the end.
    fn elf(interp: bool) -> Vec<u8> {
        let mut d = vec![0u8; 64];
        d[0..4].copy_from_slice(b"\x7fELF");
        d[4] = 2;
        d[5] = 1;
        d[18..20].copy_from_slice(&62u16.to_le_bytes());
        d[32..40].copy_from_slice(&64u64.to_le_bytes());
        d[54..56].copy_from_slice(&56u16.to_le_bytes());
        let phnum: u16 = if interp { 2 } else { 1 };
        d[56..58].copy_from_slice(&phnum.to_le_bytes());
        let mut load = [0u8; 56];
        load[0..4].copy_from_slice(&1u32.to_le_bytes());
        d.extend_from_slice(&load);
        if interp {
            let path = b"/lib64/ld-linux-x86-64.so.2\0";
            let off = (d.len() + 56) as u64;
            let mut ph = [0u8; 56];
            ph[0..4].copy_from_slice(&PT_INTERP.to_le_bytes());
            ph[8..16].copy_from_slice(&off.to_le_bytes());
            ph[32..40].copy_from_slice(&(path.len() as u64).to_le_bytes());
            d.extend_from_slice(&ph);
            d.extend_from_slice(path);
        }
        d
    }

    fn check(d: &[u8]) -> Linking {
        interpreter(&mut std::io::Cursor::new(d)).unwrap()
    }

    #[test]
    fn hand_made_static_and_dynamic_headers_are_told_apart() {
        assert_eq!(check(&elf(false)), Linking::Static);
        assert_eq!(check(&elf(true)), Linking::Dynamic("/lib64/ld-linux-x86-64.so.2".into()));
    }

    #[test]
    fn truncated_input_is_not_elf_and_never_panics() {
        for full in [elf(false), elf(true)] {
            for n in 0..full.len() {
                let got = check(&full[..n]);
                // Cut inside the interpreter path, the header still says dynamic.
                assert!(matches!(got, Linking::NotElf | Linking::Dynamic(_)), "{n} bytes: {got:?}");
            }
        }
    }

    #[test]
    fn hostile_offsets_and_sizes_are_refused_without_overflow_or_huge_reads() {
        let set = |d: &mut Vec<u8>, at: usize, v: &[u8]| d[at..at + v.len()].copy_from_slice(v);
        // Program headers past the end, or at an offset that overflows.
        for phoff in [u64::MAX, u64::MAX - 10, 1 << 40] {
            let mut d = elf(false);
            set(&mut d, 32, &phoff.to_le_bytes());
            assert_eq!(check(&d), Linking::NotElf, "phoff {phoff}");
        }
        // The most program headers a header can claim, in a small file.
        let mut d = elf(false);
        set(&mut d, 56, &u16::MAX.to_le_bytes());
        assert_eq!(check(&d), Linking::NotElf);
        // Another program header size.
        let mut d = elf(false);
        set(&mut d, 54, &1u16.to_le_bytes());
        assert_eq!(check(&d), Linking::NotElf);
        // An interpreter at an overflowing offset or of an absurd size:
        // still dynamic, nothing read.
        for (off, size) in [(u64::MAX, 2), (64, u64::MAX), (u64::MAX, u64::MAX)] {
            let mut d = elf(true);
            set(&mut d, 64 + 56 + 8, &off.to_le_bytes());
            set(&mut d, 64 + 56 + 32, &size.to_le_bytes());
            assert_eq!(check(&d), Linking::Dynamic(String::new()), "{off} {size}");
        }
    }
}
