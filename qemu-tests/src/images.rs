//! The images the QEMU tests and the demo boot, built once per process
//! with the real tools: `keel` (debug) and the static `keel-bootstrap`
//! (release, `+crt-static`) by a nested `cargo build` into this run's
//! target directory, then `keel build` into `<target>/images/<profile>/`.
//! A later run finds them up to date (`keel build` compares its inputs,
//! 0.1 s), so only changed inputs cost a rebuild.
//!
//! Every image here is a test image (its nodes reach AWS by the real
//! endpoint names through a TLS proxy only the test CA vouches for; see
//! [`crate::aws_names`]). The etcd image uses the TEST-ONLY profile
//! `fixtures/profiles/local-test.toml` (the shipped `local` profile plus a
//! `[test]` table naming the machine's test CA). Worker and controller use
//! `fixtures/profiles/k8s-test.toml` (`local-test` plus test doubles of
//! the Kubernetes binaries Debian does not package, served from
//! `fixtures/doubles` through `fixtures/mirrors.toml`). The profiles are
//! copied, with the CA's certificate, into `<target>/images/profiles/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, Context, Result};
use keel_contract::Role;

use crate::rundir::target_dir;

/// The built `keel` and static `keel-bootstrap` binaries.
#[derive(Debug, Clone)]
pub struct Tools {
    pub keel: PathBuf,
    pub bootstrap: PathBuf,
}

/// The workspace root (this crate's parent directory).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The qemu-tests fixtures directory.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn cargo(args: &[&str], rustflags: Option<&str>, target: &Path) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    // A test process carries the CARGO_* variables cargo set for it
    // (CARGO_MANIFEST_DIR, CARGO_PKG_*, ...). Build scripts that watch such
    // a variable (rerun-if-env-changed) would make this build differ from
    // the same command typed in a shell and rebuild ring and its
    // dependents every time: pass none of them on.
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("CARGO_") && k != "CARGO_HOME" {
            cmd.env_remove(&key);
        }
    }
    cmd.current_dir(workspace()).args(args).env("CARGO_TARGET_DIR", target);
    if let Some(f) = rustflags {
        cmd.env("RUSTFLAGS", f);
    }
    let status = cmd.status().with_context(|| format!("running {cargo}"))?;
    if !status.success() {
        bail!("cargo {} failed: {status}", args.join(" "));
    }
    Ok(())
}

/// Builds `keel` and the static `keel-bootstrap` once per process.
pub fn tools() -> Result<&'static Tools> {
    static TOOLS: OnceLock<std::result::Result<Tools, String>> = OnceLock::new();
    TOOLS
        .get_or_init(|| {
            let build = || -> Result<Tools> {
                // Before minutes of building: every tool the images and
                // the VMs need is there.
                keel_testkit::host_tools::check()?;
                let target = target_dir()?;
                cargo(&["build", "-p", "keel", "--bin", "keel"], None, &target)?;
                cargo(
                    &[
                        "build",
                        "--release",
                        "-p",
                        "keel-bootstrap",
                        "--target",
                        "x86_64-unknown-linux-gnu",
                    ],
                    Some("-C target-feature=+crt-static"),
                    &target,
                )?;
                Ok(Tools {
                    keel: target.join("debug/keel"),
                    bootstrap: target.join("x86_64-unknown-linux-gnu/release/keel-bootstrap"),
                })
            };
            build().map_err(|e| format!("{e:#}"))
        })
        .as_ref()
        .map_err(|e| anyhow::anyhow!("building keel and keel-bootstrap: {e}"))
}

/// The profile an image of `role` is built from here.
pub fn profile(role: Role) -> &'static str {
    match role {
        Role::Etcd => "local-test",
        Role::Worker | Role::Controller => "k8s-test",
    }
}

/// Writes the test profiles into `dir` with what they extend
/// (`profiles/local.toml`) and the machine's test CA certificate
/// (`keel-test-ca.crt`, named by `local-test.toml`'s `[test]` table);
/// returns `dir`.
pub fn test_profiles(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (from, name) in [
        (workspace().join("profiles/local.toml"), "local.toml"),
        (fixtures().join("profiles/local-test.toml"), "local-test.toml"),
        (fixtures().join("profiles/k8s-test.toml"), "k8s-test.toml"),
    ] {
        std::fs::copy(&from, dir.join(name))
            .with_context(|| format!("copying {}", from.display()))?;
    }
    let ca = keel_testkit::test_ca::TestCa::machine().context("the machine's test CA")?;
    let path = dir.join("keel-test-ca.crt");
    std::fs::write(&path, &ca.cert_pem).with_context(|| format!("writing {}", path.display()))?;
    Ok(dir.to_path_buf())
}

/// A built image of `role`.
#[derive(Debug, Clone)]
pub struct Image {
    pub path: PathBuf,
    pub manifest: PathBuf,
    /// What `keel build` printed (`built: ...` or `up to date: ...`).
    pub report: String,
}

impl Image {
    /// The image's manifest (what `keel build` wrote beside it).
    pub fn manifest(&self) -> Result<serde_json::Value> {
        let bytes = std::fs::read(&self.manifest)
            .with_context(|| format!("reading {}", self.manifest.display()))?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not JSON", self.manifest.display()))
    }

    /// The byte offset of the `/usr` partition in the image.
    pub fn usr_offset(&self) -> Result<u64> {
        let m = self.manifest()?;
        m["partitions"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == "usr"))
            .and_then(|p| p["offset"].as_u64())
            .with_context(|| format!("{}: no usr partition offset", self.manifest.display()))
    }
}

/// Builds (or finds up to date) the image of `role` with extra `keel
/// build` arguments `extra` (e.g. `--force`) into `out` (default
/// `<target>/images/<profile>`). Builds run one at a time: worker and
/// controller share a Debian base, which the second finds cached.
pub fn build(role: Role, out: Option<&Path>, extra: &[&str]) -> Result<Image> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tools = tools()?;
    let profile = profile(role);
    let out = match out {
        Some(o) => o.to_path_buf(),
        None => target_dir()?.join("images").join(profile),
    };
    let mut cmd = Command::new(&tools.keel);
    cmd.current_dir(workspace())
        .args(["build", "--profile", profile, "--role", role.as_str(), "--out"])
        .arg(&out)
        .arg("--bootstrap-bin")
        .arg(&tools.bootstrap)
        .args(extra);
    cmd.arg("--profiles-dir")
        .arg(test_profiles(&target_dir()?.join("images/profiles"))?)
        .arg("--mirrors")
        .arg(fixtures().join("mirrors.toml"))
        .arg("--offline");
    let output = cmd.output().with_context(|| format!("running {}", tools.keel.display()))?;
    if !output.status.success() {
        bail!(
            "keel build --profile {profile} --role {role} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stem = format!("keel-{role}-{profile}");
    Ok(Image {
        path: out.join(format!("{stem}.raw")),
        manifest: out.join(format!("{stem}.manifest.json")),
        report: String::from_utf8_lossy(&output.stdout).into_owned(),
    })
}

/// The image of `role` in `<target>/images/`, built when missing or out
/// of date.
pub fn image(role: Role) -> Result<Image> {
    build(role, None, &[])
}
