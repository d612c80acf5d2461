//! The work directory of one test run:
//! `$CARGO_TARGET_DIR/qemu-runs/<test>-<pid>/`. Console logs, dnsmasq's log
//! and the rendered user data stay there after the run for debugging;
//! disk overlays are removed with the cluster.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The cargo target directory: `CARGO_TARGET_DIR` when set, otherwise
/// derived from the running test binary (`<target>/<profile>/deps/<bin>`).
pub fn target_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("locating the running test binary")?;
    exe.ancestors()
        .find(|a| a.file_name().is_some_and(|n| n == "deps"))
        .and_then(|deps| deps.parent())
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .with_context(|| {
            format!("{} is not under <target>/<profile>/deps: set CARGO_TARGET_DIR", exe.display())
        })
}

/// Creates (fresh) the work directory of test `test` in this process.
pub fn create(test: &str) -> Result<PathBuf> {
    let safe: String =
        test.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    let dir = target_dir()?.join("qemu-runs").join(format!("{safe}-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
