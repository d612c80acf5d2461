//! The images the QEMU tests and the demo boot, built once per process
//! with the real tools: `keel` (debug) and the static `keel-bootstrap`
//! (release, `+crt-static`) by a nested `cargo build` into this run's
//! target directory, then `keel build` into `<target>/images/<profile>/`.
//! A later run finds them up to date (`keel build` compares its inputs,
//! 0.1 s), so only changed inputs cost a rebuild.
//!
//! Every image is built from the TEST-ONLY profile `fixtures/profiles/ci.toml`:
//! `production` (profiles/production.toml, the recipe users ship) with
//! Debian's etcd, containerd, runc and CNI plugins repacked into upstream's
//! release layouts ([`crate::repack`]) and test doubles of the Kubernetes
//! binaries (`fixtures/doubles`), served through the run's mirrors file.
//! Its `[test]` table makes every image here a test image: its nodes reach
//! AWS by the real endpoint names through a TLS proxy only the machine's
//! test CA vouches for (see [`crate::aws_names`]); the CA's certificate is
//! written beside the copied profiles as `keel-test-ca.crt`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, Context, Result};
use keel_contract::Role;

use crate::rundir::target_dir;

/// The built `keel` and static `keel-bootstrap` binaries, and the static
/// API server TEST DOUBLE the test profile installs on controllers.
#[derive(Debug, Clone)]
pub struct Tools {
    pub keel: PathBuf,
    pub bootstrap: PathBuf,
    /// The static keel-init (the initrd's /init).
    pub init: PathBuf,
    pub api_server_double: PathBuf,
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

/// `cargo build --release` of `args` as a static binary for
/// x86_64-unknown-linux-gnu (what goes into an image).
fn static_release(args: &[&str], target: &Path) -> Result<()> {
    let mut all = vec!["build", "--release", "--target", "x86_64-unknown-linux-gnu"];
    all.extend_from_slice(args);
    cargo(&all, Some("-C target-feature=+crt-static"), target)
}

/// Builds `keel`, the static `keel-bootstrap` and `keel-init`, and the
/// static API server TEST DOUBLE once per process.
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
                static_release(&["-p", "keel-bootstrap"], &target)?;
                // Its own build too: keel-init links only what it uses.
                static_release(&["-p", "keel-init"], &target)?;
                // Its own build: built with keel-bootstrap, feature
                // unification would change the shipped binary's dependencies.
                static_release(&["-p", "keel-testkit", "--bin", "keel-apiserver-double"], &target)?;
                let release = target.join("x86_64-unknown-linux-gnu/release");
                Ok(Tools {
                    keel: target.join("debug/keel"),
                    bootstrap: release.join("keel-bootstrap"),
                    init: release.join("keel-init"),
                    api_server_double: release.join("keel-apiserver-double"),
                })
            };
            build().map_err(|e| format!("{e:#}"))
        })
        .as_ref()
        .map_err(|e| {
            anyhow::anyhow!("building keel, keel-bootstrap and the API server double: {e}")
        })
}

/// The profile every image is built from here (TEST ONLY).
pub const PROFILE: &str = "ci";

/// The profile an image of `role` is built from here: [`PROFILE`] for
/// every role.
pub fn profile(_role: Role) -> &'static str {
    PROFILE
}

/// The profiles directory and mirrors file of this run: production.toml
/// and the fixtures' profiles (the CI profile and those that extend it)
/// side by side (`extends` looks beside the file), and the mirrors file
/// with the repacked artifacts (made when missing).
pub fn profiles() -> Result<(PathBuf, PathBuf)> {
    static DONE: OnceLock<std::result::Result<(PathBuf, PathBuf), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let make = || -> Result<(PathBuf, PathBuf)> {
            let dir = target_dir()?.join("images/profiles");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let ci = fixtures().join(format!("profiles/{PROFILE}.toml"));
            let fixture_dir = fixtures().join("profiles");
            let mut copies = vec![workspace().join("profiles/production.toml")];
            for e in std::fs::read_dir(&fixture_dir)
                .with_context(|| format!("reading {}", fixture_dir.display()))?
            {
                copies
                    .push(e.with_context(|| format!("reading {}", fixture_dir.display()))?.path());
            }
            for from in copies.iter().filter(|p| p.extension().is_some_and(|x| x == "toml")) {
                let name = from.file_name().context("a profile file has a name")?;
                std::fs::copy(from, dir.join(name))
                    .with_context(|| format!("copying {}", from.display()))?;
            }
            write_test_ca(&dir)?;
            let mut repacked = crate::repack::ensure(&crate::repack::pinned(&ci)?)
                .context("repacking Debian's binaries for the CI profile")?;
            repacked.push(with_api_server_double(&dir, &tools()?.api_server_double)?);
            let mirrors = dir.join("mirrors.toml");
            crate::repack::mirrors_file(&fixtures().join("mirrors.toml"), &repacked, &mirrors)?;
            Ok((dir, mirrors))
        };
        make().map_err(|e| format!("{e:#}"))
    })
    .clone()
    .map_err(|e| anyhow::anyhow!(e))
}

/// Writes the machine's test CA certificate (made once by
/// `keel_testkit::test_ca`) as `keel-test-ca.crt` into `dir`, where the CI
/// profile's `[test]` table names it; returns its path.
pub fn write_test_ca(dir: &Path) -> Result<PathBuf> {
    let ca = keel_testkit::test_ca::TestCa::machine().context("the machine's test CA")?;
    let path = dir.join("keel-test-ca.crt");
    std::fs::write(&path, &ca.cert_pem).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
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
    build_from(profile(role), role, out, extra)
}

/// [`build`] from another of the fixtures' profiles (TEST ONLY, each
/// extending the CI profile), e.g. `ci-module-params`.
pub fn build_from(profile: &str, role: Role, out: Option<&Path>, extra: &[&str]) -> Result<Image> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tools = tools()?;
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
        .arg("--init-bin")
        .arg(&tools.init)
        .args(extra);
    let (profiles, mirrors) = profiles()?;
    cmd.arg("--profiles-dir").arg(&profiles).arg("--mirrors").arg(&mirrors).arg("--offline");
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

/// Gives the CI profile copied into `profiles` the API server TEST DOUBLE
/// built this run, for controllers: a component pinned to the binary's
/// digest (it changes with the code, so it is pinned here, not in the
/// fixture). Returns the (URL, file) mirror entry that serves it.
fn with_api_server_double(profiles: &Path, binary: &Path) -> Result<(String, PathBuf)> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    let digest = hex::encode(Sha256::digest(&bytes));
    let name = "keel-apiserver-double";
    let url = format!("https://keel.test/built/{name}");
    let profile = profiles.join(format!("{PROFILE}.toml"));
    let mut text = std::fs::read_to_string(&profile)
        .with_context(|| format!("reading {}", profile.display()))?;
    text.push_str(&format!(
        "\n# Added by qemu-tests (images.rs): the API server TEST DOUBLE built this run.\n\
         [components.{name}]\n\
         version = \"0.0.0-test-double\"\n\
         url = \"{url}\"\n\
         sha256 = \"{digest}\"\n\
         install = {{ kind = \"binary\", path = \"/usr/bin/{name}\", mode = 0o755 }}\n\n\
         [roles.controller]\n\
         components = [\"{name}\"]\n"
    ));
    std::fs::write(&profile, text).with_context(|| format!("writing {}", profile.display()))?;
    Ok((url, binary.to_path_buf()))
}

/// The image of `role` in `<target>/images/`, built when missing or out
/// of date.
pub fn image(role: Role) -> Result<Image> {
    build(role, None, &[])
}
