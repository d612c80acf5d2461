//! keel-qemu-repack (TEST ONLY): makes the CI profile's repacked artifacts
//! (Debian's etcd, containerd, runc and CNI plugins in upstream's release
//! layouts; see qemu-tests/src/repack.rs) available in ~/.cache/keel and
//! writes a mirrors file that serves them, plus the entries of a fixtures
//! mirrors file (its directories made absolute), and writes the machine's
//! test CA beside the profile (its `[test]` table names it). What the
//! image tests do before `keel build --profile ci`; scripts/demo and
//! scripts/bench-build run it.
//!
//! Usage: keel-qemu-repack --out FILE [--profile CI.toml] [--mirrors MIRRORS.toml]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use keel_qemu_tests::{images, repack};

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut out = None;
    let mut profile = images::fixtures().join(format!("profiles/{}.toml", images::PROFILE));
    let mut mirrors = images::fixtures().join("mirrors.toml");
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a file"));
        match a.as_str() {
            "--out" => out = Some(PathBuf::from(value()?)),
            "--profile" => profile = PathBuf::from(value()?),
            "--mirrors" => mirrors = PathBuf::from(value()?),
            "-h" | "--help" => {
                println!(
                    "usage: keel-qemu-repack --out FILE [--profile CI.toml] [--mirrors MIRRORS.toml]"
                );
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    let out = out.context("--out FILE is required (see --help)")?;
    let repacked = repack::ensure(&repack::pinned(&profile)?)?;
    repack::mirrors_file(&mirrors, &repacked, &out)?;
    let ca = images::write_test_ca(profile.parent().unwrap_or(std::path::Path::new(".")))?;
    println!("wrote {}", ca.display());
    for (url, path) in &repacked {
        println!("{url} -> {}", path.display());
    }
    println!("wrote {}", out.display());
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel-qemu-repack: {e:#}");
            ExitCode::FAILURE
        }
    }
}
