//! The Python tools the Secure Boot and SBOM tests run: `pyspdxtools`
//! (spdx-tools: validates SPDX documents), `uefivars` (reads EC2's
//! UefiData back) and `virt-fw-vars` (virt-firmware: enrols keys into an
//! OVMF VARS file). `scripts/setup` installs them into a virtualenv
//! (default `~/.cache/keel/pytools-venv`, or `KEEL_PYTOOLS_VENV`); a test
//! that needs one fails with that instruction when it is missing.

use std::path::PathBuf;

/// Where `scripts/setup` installs the tools.
pub fn venv_dir() -> PathBuf {
    crate::cache_dir("KEEL_PYTOOLS_VENV", "pytools-venv")
}

/// The path of `program` in the virtualenv, or an error saying how to
/// install it.
pub fn bin(program: &str) -> anyhow::Result<PathBuf> {
    let path = venv_dir().join("bin").join(program);
    if path.is_file() {
        Ok(path)
    } else {
        anyhow::bail!("{} is missing: run scripts/setup (it installs spdx-tools, uefivars and virt-firmware there)", path.display())
    }
}
