//! Timestamps clamped to the build's epoch (reproducible images).

use super::*;

/// Sets the modification time of every path under `dir` (and `dir`) to
/// `epoch`, without following symlinks.
pub fn clamp_times(dir: &Path, epoch: u64) -> Result<(), BuildError> {
    let mut paths = walk(dir)?;
    paths.push(dir.to_path_buf());
    use rustix::fs::{utimensat, AtFlags, Timespec, Timestamps, CWD};
    let ts = Timespec { tv_sec: epoch as i64, tv_nsec: 0 };
    let times = Timestamps { last_access: ts, last_modification: ts };
    for p in paths {
        utimensat(CWD, &p, &times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| BuildError::io(&p, e.into()))?;
    }
    Ok(())
}
