//! The writable root file system's skeleton.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use crate::image::BuildError;

/// The root file system's skeleton: mount points, /etc (filled by
/// [`super::copy_etc`]) and the merged-/usr links.
pub fn make_skeleton(dir: &Path) -> Result<(), BuildError> {
    for (d, mode) in [
        ("dev", 0o755),
        ("etc", 0o755),
        ("proc", 0o555),
        ("run", 0o755),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("usr", 0o755),
        ("var", 0o755),
        ("root", 0o700),
    ] {
        let p = dir.join(d);
        fs::create_dir_all(&p).map_err(|e| BuildError::io(&p, e))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))
            .map_err(|e| BuildError::io(&p, e))?;
    }
    // /etc and /var are as new as /usr: ConditionNeedsUpdate= units
    // (ldconfig, journal catalog, ...) have nothing to do on first boot.
    for f in ["etc/.updated", "var/.updated"] {
        let p = dir.join(f);
        fs::write(&p, b"").map_err(|e| BuildError::io(&p, e))?;
    }
    for (l, t) in
        [("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")]
    {
        let p = dir.join(l);
        symlink(t, &p).map_err(|e| BuildError::io(&p, e))?;
    }
    Ok(())
}
