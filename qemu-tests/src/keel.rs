//! The `keel` binary, run as a user runs it (`keel assets init/publish`,
//! `keel userdata`, ...). `cargo test --workspace` builds it into the
//! target directory; `KEEL_BIN` points elsewhere.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::rundir::target_dir;

/// Where the `keel` binary is: `KEEL_BIN`, else `<target>/debug/keel`.
pub fn bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("KEEL_BIN") {
        return Ok(PathBuf::from(p));
    }
    let path = target_dir()?.join("debug/keel");
    if !path.exists() {
        bail!(
            "{} does not exist: build it with `cargo build -p keel` or set KEEL_BIN",
            path.display()
        );
    }
    Ok(path)
}

/// Runs `keel <args>` ([`bin`]) with `env` added; returns stdout, or
/// fails with the command line and its stderr.
pub fn run<I, S>(args: I, env: &[(String, String)]) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_bin(&bin()?, args, env)
}

/// [`run`] with the `keel` binary at `bin`.
pub fn run_bin<I, S>(bin: &Path, args: I, env: &[(String, String)]) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_os_string()).collect();
    let shown =
        format!("keel {}", args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "));
    let out = Command::new(bin)
        .args(&args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!("{shown} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    String::from_utf8(out.stdout).with_context(|| format!("{shown}: output is not UTF-8"))
}
