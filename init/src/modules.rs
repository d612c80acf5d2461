//! Loading the kernel modules the builder listed for the initrd, in the
//! order it resolved from the kernel's modules.dep ([`MODULE_LIST`]: one path a
//! line, dependencies first; [`UNLESS_TCG`] after a path: not under QEMU's
//! emulation).

use std::fs::File;
use std::io;

use keel_contract::initrd::{MODULE_LIST, UNLESS_TCG};

use crate::sys;

/// Where the builder puts the list in the initrd.
pub fn list_path() -> String {
    format!("/{MODULE_LIST}")
}

/// One line of [`LIST`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    /// Skipped under QEMU TCG (the x86-64 sha256: BENCHMARKS.md).
    pub unless_tcg: bool,
}

pub fn parse(list: &str) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    for (i, line) in list.lines().enumerate() {
        let mut words = line.split_whitespace();
        let Some(path) = words.next().filter(|w| !w.starts_with('#')) else { continue };
        let unless_tcg = match words.next() {
            None => false,
            Some(UNLESS_TCG) => true,
            Some(w) => return Err(format!("{MODULE_LIST} line {}: unknown word {w:?}", i + 1)),
        };
        out.push(Entry { path: path.to_string(), unless_tcg });
    }
    Ok(out)
}

/// What happened to one module.
pub enum Outcome {
    Loaded,
    /// The kernel refused the command line's parameters for it (a value
    /// it cannot parse): loaded without them, so the node still boots.
    LoadedWithoutParams(io::Error),
    Already,
    /// The driver found nothing to drive here (xen-blkfront outside Xen,
    /// the x86-64 sha256 on a CPU without its instructions).
    NotHere,
    Skipped,
}

/// Loads `e` with `params` (`param=value ...`, from the command line): a
/// plain module (the builder decompresses Debian's), or a compressed one
/// (`.ko.xz`, `.ko.zst`, `.ko.gz`) the kernel decompresses.
pub fn load(e: &Entry, skip_tcg: bool, params: &str) -> io::Result<Outcome> {
    if e.unless_tcg && skip_tcg {
        return Ok(Outcome::Skipped);
    }
    let open = || {
        File::open(&e.path).map_err(|err| io::Error::new(err.kind(), format!("{}: {err}", e.path)))
    };
    let outcome = |r: io::Result<()>, loaded: Outcome| match r {
        Ok(()) => Ok(loaded),
        Err(err) if err.raw_os_error() == Some(libc::EEXIST) => Ok(Outcome::Already),
        Err(err) if err.raw_os_error() == Some(libc::ENODEV) => Ok(Outcome::NotHere),
        Err(err) => Err(io::Error::new(err.kind(), format!("loading {}: {err}", e.path))),
    };
    match sys::finit_module(&open()?, params, init_flags(&e.path)) {
        // The kernel ignores parameters it does not know; EINVAL is a value
        // it could not take.
        Err(err) if !params.is_empty() && err.raw_os_error() == Some(libc::EINVAL) => {
            let refused = io::Error::new(err.kind(), format!("{params:?}: {err}"));
            outcome(
                sys::finit_module(&open()?, "", init_flags(&e.path)),
                Outcome::LoadedWithoutParams(refused),
            )
        }
        r => outcome(r, Outcome::Loaded),
    }
}

/// `finit_module` flags for the module file `path`: the kernel
/// decompresses anything but a plain `.ko`.
fn init_flags(path: &str) -> libc::c_int {
    if path.ends_with(".ko") {
        0
    } else {
        sys::MODULE_INIT_COMPRESSED_FILE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_compressed_modules_ask_the_kernel_to_decompress() {
        assert_eq!(init_flags("/usr/lib/modules/k/kernel/fs/erofs/erofs.ko"), 0);
        assert_eq!(
            init_flags("/usr/lib/modules/k/kernel/fs/erofs/erofs.ko.xz"),
            sys::MODULE_INIT_COMPRESSED_FILE
        );
    }

    #[test]
    fn the_list_parses() {
        let l = parse("# x\n/a.ko.xz\n\n/b.ko.xz unless-tcg\n").unwrap();
        assert_eq!(
            l,
            vec![
                Entry { path: "/a.ko.xz".into(), unless_tcg: false },
                Entry { path: "/b.ko.xz".into(), unless_tcg: true }
            ]
        );
        assert!(parse("/a.ko.xz sometimes\n").unwrap_err().contains("line 1"));
    }
}
