//! The base's kernel.

use std::fs;
use std::path::{Path, PathBuf};

use crate::image::BuildError;

/// The kernel of the base (`/boot/vmlinuz-*`, the newest) and its version.
/// Its initrd is not the base's: the build makes it (`image::initrd`).
pub fn kernel(root: &Path) -> Result<(PathBuf, String), BuildError> {
    let boot = root.join("boot");
    let mut versions: Vec<String> = fs::read_dir(&boot)
        .map_err(|e| BuildError::io(&boot, e))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("vmlinuz-").map(str::to_string))
        .collect();
    versions.sort();
    let version = versions.pop().ok_or(BuildError::NoKernel)?;
    Ok((boot.join(format!("vmlinuz-{version}")), version))
}
