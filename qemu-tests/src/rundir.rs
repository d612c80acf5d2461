//! The work directory of one test run:
//! `$CARGO_TARGET_DIR/qemu-runs/<test>-<pid>/`. Console logs, dnsmasq's log
//! and the rendered user data stay there after the run for debugging;
//! disk overlays are removed with the cluster.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::net::pid_alive;

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

/// Creates (fresh) the work directory of test `test` in this process,
/// and removes those of earlier runs of the same test whose process is
/// gone: the last run's logs stay, runs do not pile up.
pub fn create(test: &str) -> Result<PathBuf> {
    let safe: String = test
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect();
    let runs = target_dir()?.join("qemu-runs");
    remove_old_runs(&runs, &safe);
    let dir = runs.join(format!("{safe}-{}", std::process::id()));
    create_at(&dir)?;
    Ok(dir)
}

/// Marks a directory as a run's work directory, so that a later run may
/// clear it.
const MARKER: &str = ".keel-qemu-run";

/// Creates `dir` as a run's work directory, fresh: a directory left by an
/// earlier run is cleared; any other non-empty directory is refused, so a
/// mistyped path never loses files.
pub fn create_at(dir: &Path) -> Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_none();
        if !empty && !dir.join(MARKER).exists() {
            anyhow::bail!(
                "{} is not empty and is not a keel-qemu-tests run directory: refusing to clear it",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let marker = dir.join(MARKER);
    std::fs::write(&marker, "").with_context(|| format!("writing {}", marker.display()))?;
    Ok(())
}

/// Removes `<runs>/<test>-<pid>` directories of processes that have ended.
fn remove_old_runs(runs: &Path, test: &str) {
    let Ok(entries) = std::fs::read_dir(runs) else { return };
    let prefix = format!("{test}-");
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !pid_alive(pid) {
            // Best effort: a directory that cannot be removed is left.
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ended_runs_of_the_same_test_are_removed() {
        let runs = tempfile::tempdir().unwrap();
        // pid 1 always runs; 4194304 is above Linux's pid_max.
        let names = ["cl-1", "cl-4194304", "cl-x", "cluster-4194304", "other-4194304"];
        for n in names {
            std::fs::create_dir(runs.path().join(n)).unwrap();
        }
        remove_old_runs(runs.path(), "cl");
        let mut left: Vec<_> = std::fs::read_dir(runs.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["cl-1", "cl-x", "cluster-4194304", "other-4194304"]);
    }

    #[test]
    fn only_run_directories_are_cleared() {
        let root = tempfile::tempdir().unwrap();
        let run = root.path().join("run");
        create_at(&run).unwrap();
        std::fs::write(run.join("console.log"), "old").unwrap();
        create_at(&run).unwrap();
        assert!(!run.join("console.log").exists(), "an earlier run's files were kept");

        let other = root.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("precious"), "x").unwrap();
        let e = create_at(&other).unwrap_err().to_string();
        assert!(e.contains("refusing to clear"), "{e}");
        assert!(other.join("precious").exists());
    }
}
