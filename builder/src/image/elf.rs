//! Checks that the keel-bootstrap binary baked into images is a static
//! x86-64 ELF executable: the image's /usr is verified and read-only, so
//! the bootstrap must not depend on the base's shared libraries.

use std::path::Path;

/// How to build the binary this check wants.
pub const STATIC_BUILD: &str = "RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release -p keel-bootstrap --target x86_64-unknown-linux-gnu";

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
    let data =
        std::fs::read(path).map_err(|source| ElfError::Read { path: shown.clone(), source })?;
    let not_elf = || ElfError::NotElf { path: shown.clone() };
    // ELF64, little-endian, machine x86-64 (62).
    if data.len() < 64
        || &data[0..4] != b"\x7fELF"
        || data[4] != 2
        || data[5] != 1
        || u16at(&data, 18) != 62
    {
        return Err(not_elf());
    }
    let phoff = u64at(&data, 32) as usize;
    let phentsize = u16at(&data, 54) as usize;
    let phnum = u16at(&data, 56) as usize;
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        if at + 56 > data.len() {
            return Err(not_elf());
        }
        if u32at(&data, at) == PT_INTERP {
            let off = u64at(&data, at + 8) as usize;
            let len = u64at(&data, at + 32) as usize;
            let interp = data
                .get(off..off + len)
                .map(|b| String::from_utf8_lossy(b).trim_end_matches('\0').to_string())
                .unwrap_or_default();
            return Err(ElfError::Dynamic { path: shown, interp });
        }
    }
    Ok(())
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
}
