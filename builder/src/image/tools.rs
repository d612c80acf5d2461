//! The build's tools: host programs (mmdebstrap) and a Debian trixie tools
//! tree made by mmdebstrap and cached by the hash of its inputs. The host
//! is Debian 12, whose systemd (252) has no ukify; the tools tree brings
//! systemd 257's ukify, UEFI stub and sysusers, erofs-utils 1.8,
//! veritysetup and e2fsprogs. Tools run chrooted into the tree, in a
//! private mount namespace where the build's work directory is
//! bind-mounted at /work.

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest as _, Sha256};

use super::BuildError;

/// Bump when the recipe below changes in a way the package list does not show.
const RECIPE: &str = "keel-tools-1";
const SUITE: &str = "trixie";
const PACKAGES: &[&str] = &[
    "cryptsetup-bin",
    "e2fsprogs",
    "erofs-utils",
    "python3-pefile",
    "systemd-boot-efi",
    "systemd-standalone-sysusers",
    "systemd-ukify",
];

/// Where the work directory appears inside the tools tree.
pub const WORK: &str = "/work";

/// Fails with the Debian package to install unless `program` is on PATH.
pub fn require_host(program: &str, package: &str) -> Result<PathBuf, BuildError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file()).ok_or_else(|| {
        BuildError::MissingTool { program: program.to_string(), package: package.to_string() }
    })
}

pub struct Tools {
    root: PathBuf,
}

impl Tools {
    /// The cached tools tree, made by mmdebstrap when missing.
    pub fn ensure(cache_dir: &Path, mirror: Option<&str>) -> Result<Tools, BuildError> {
        let key = {
            let mut h = Sha256::new();
            h.update(RECIPE);
            h.update(SUITE);
            h.update(mirror.unwrap_or(""));
            for p in PACKAGES {
                h.update(p);
                h.update("\n");
            }
            hex::encode(&h.finalize()[..12])
        };
        let dir = cache_dir.join("tools");
        let root = dir.join(&key);
        if root.join("usr/bin/ukify").is_file() {
            return Ok(Tools { root });
        }
        let mmdebstrap = require_host("mmdebstrap", "mmdebstrap")?;
        std::fs::create_dir_all(&dir).map_err(|e| BuildError::io(&dir, e))?;
        let tmp = dir.join(format!(".{key}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let mut cmd = Command::new(mmdebstrap);
        cmd.args([
            "--variant=apt",
            "--format=directory",
            "--quiet",
            &format!("--include={}", PACKAGES.join(",")),
        ])
        .arg(SUITE)
        .arg(&tmp);
        if let Some(m) = mirror {
            cmd.arg(m);
        }
        let result = run_checked(cmd, "mmdebstrap (tools tree)");
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let work = tmp.join(WORK.trim_start_matches('/'));
        std::fs::create_dir_all(&work).map_err(|e| BuildError::io(&work, e))?;
        std::fs::rename(&tmp, &root).map_err(|e| BuildError::io(&root, e))?;
        Ok(Tools { root })
    }

    /// Runs `program` (an absolute path inside the tools tree) with `args`,
    /// chrooted into the tree with `work` at /work, and returns its output.
    pub fn run(
        &self,
        work: &Path,
        program: &str,
        args: &[String],
        env: &[(&str, String)],
    ) -> Result<Output, BuildError> {
        let root = cstring(&self.root)?;
        let work_c = cstring(work)?;
        let target = cstring(&self.root.join(WORK.trim_start_matches('/')))?;
        let dev = cstring(&self.root.join("dev"))?;
        let proc_ = cstring(&self.root.join("proc"))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin")
            .env("LC_ALL", "C.UTF-8")
            .current_dir("/");
        for (k, v) in env {
            cmd.env(k, v);
        }
        // SAFETY: the only `unsafe` in Keel's production code, audited:
        // between fork and exec the child runs only direct system calls
        // through rustix (no allocation: every path is a CString made
        // before the fork), and unshare(CLONE_NEWNS) is the flag that
        // `unshare_unsafe` documents as sound (only CLONE_FILES is not).
        unsafe {
            cmd.pre_exec(move || {
                use rustix::mount::{
                    mount_bind, mount_bind_recursive, mount_change, MountPropagationFlags,
                };
                use rustix::thread::{unshare_unsafe, UnshareFlags};
                unshare_unsafe(UnshareFlags::NEWNS)?;
                mount_change(c"/", MountPropagationFlags::REC | MountPropagationFlags::PRIVATE)?;
                mount_bind(work_c.as_c_str(), target.as_c_str())?;
                mount_bind_recursive(c"/dev", dev.as_c_str())?;
                mount_bind_recursive(c"/proc", proc_.as_c_str())?;
                rustix::process::chroot(root.as_c_str())?;
                rustix::process::chdir(c"/work")?;
                Ok(())
            });
        }
        run_checked(cmd, program)
    }
}

fn cstring(p: &Path) -> Result<CString, BuildError> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| BuildError::NulInPath { path: p.display().to_string() })
}

/// Runs `cmd`, failing with its stderr when it exits non-zero.
pub fn run_checked(mut cmd: Command, what: &str) -> Result<Output, BuildError> {
    let out = cmd
        .output()
        .map_err(|e| BuildError::Tool { what: what.to_string(), message: e.to_string() })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(BuildError::Tool {
            what: what.to_string(),
            message: format!("{}\n{}", out.status, tail.join("\n")),
        });
    }
    Ok(out)
}
