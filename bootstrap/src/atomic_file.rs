//! Writing a file so that readers see either the old contents or the new,
//! never half: a temp file in the same directory, created with its final
//! mode before any byte is written (so a key is never world-readable, not
//! even for an instant), fsynced, renamed over the target, and the
//! directory fsynced.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `contents` to `path` atomically with permission bits `mode`
/// (e.g. 0o600 for keys). Parent directories are created (0755) when
/// missing. On error the target is untouched and no temp file remains.
pub fn write(path: &Path, mode: u32, contents: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        // The umask may have cleared bits of `mode`; set it exactly.
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_with_exact_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pki/ca.key");
        write(&p, 0o600, b"one").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        write(&p, 0o644, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o644);
        let leftovers: Vec<_> =
            fs::read_dir(p.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers.len(), 1, "temp files left behind: {leftovers:?}");
    }

    #[test]
    fn failure_leaves_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write(&p, 0o600, b"old").unwrap();
        // A directory where the temp file's parent should be a directory but
        // the target name is a non-empty directory: rename fails.
        let target_dir = dir.path().join("d");
        fs::create_dir(&target_dir).unwrap();
        fs::write(target_dir.join("x"), b"x").unwrap();
        assert!(write(&target_dir, 0o600, b"new").is_err());
        assert_eq!(fs::read(&p).unwrap(), b"old");
        let names: Vec<_> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "temp file left behind: {names:?}");
    }
}
