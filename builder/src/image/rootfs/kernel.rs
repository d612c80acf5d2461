//! The base's kernel and initrd.

use super::*;

/// The kernel and initrd of the base (`/boot/vmlinuz-*`, `/boot/initrd.img-*`)
/// and the kernel's version.
pub fn kernel(root: &Path) -> Result<(PathBuf, PathBuf, String), BuildError> {
    let boot = root.join("boot");
    let mut versions: Vec<String> = fs::read_dir(&boot)
        .map_err(|e| BuildError::io(&boot, e))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("vmlinuz-").map(str::to_string))
        .collect();
    versions.sort();
    let version = versions.pop().ok_or(BuildError::NoKernel)?;
    let initrd = boot.join(format!("initrd.img-{version}"));
    if !initrd.is_file() {
        return Err(BuildError::NoInitrd { initrd: initrd.display().to_string() });
    }
    Ok((boot.join(format!("vmlinuz-{version}")), initrd, version))
}
