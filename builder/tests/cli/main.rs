//! Integration tests of the `keel` binary: one test binary, one module per
//! concern. Each test runs the real binary against files in a temp
//! directory and, for downloads, a real local HTTP server
//! (keel_testkit::http).

mod fetch;
mod golden;
mod join;
mod man;
mod pin;
mod renew;
mod resolve;
mod userdata;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256, Sha512};

/// The repository root (profiles/ and images/ live there).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("builder/ has a parent").to_path_buf()
}

/// Runs `keel` with `args` in `cwd`, with no KEEL_* variables from the
/// caller's environment.
pub fn keel(cwd: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
    cmd.args(args).current_dir(cwd);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("KEEL_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("HOME", cwd);
    cmd.output().expect("running keel")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success and returns stdout.
#[track_caller]
pub fn ok(o: &Output) -> String {
    assert!(o.status.success(), "keel failed: {}\n{}", stderr(o), stdout(o));
    stdout(o)
}

/// Asserts failure and returns stderr.
#[track_caller]
pub fn fails(o: &Output) -> String {
    assert!(!o.status.success(), "keel succeeded unexpectedly:\n{}", stdout(o));
    stderr(o)
}

pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn sha512(bytes: &[u8]) -> String {
    hex::encode(Sha512::digest(bytes))
}

/// A temp directory with `profiles/` and `images/<role>/role.toml`.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Default for Workspace {
    fn default() -> Self {
        Workspace::new()
    }
}

impl Workspace {
    pub fn new() -> Workspace {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::create_dir_all(dir.path().join("profiles")).unwrap();
        Workspace { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn profile(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join("profiles").join(format!("{name}.toml"));
        fs::write(&p, text).unwrap();
        p
    }

    pub fn role(&self, role: &str, text: &str) {
        let d = self.path().join("images").join(role);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("role.toml"), text).unwrap();
    }

    pub fn read_profile(&self, name: &str) -> String {
        fs::read_to_string(self.path().join("profiles").join(format!("{name}.toml"))).unwrap()
    }

    pub fn keel(&self, args: &[&str]) -> Output {
        keel(self.path(), args)
    }

    /// Files (not temp files) under the cache's digest directories.
    pub fn cache_entries(&self, cache: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for algo in ["sha256", "sha512"] {
            if let Ok(rd) = fs::read_dir(cache.join(algo)) {
                out.extend(rd.map(|e| e.unwrap().path()));
            }
        }
        out.sort();
        out
    }
}
