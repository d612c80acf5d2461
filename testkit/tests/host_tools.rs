//! The host tool check itself: with one tool hidden from PATH, set-up, the
//! demo and the test suite each stop before doing any work, naming the
//! tool and its Debian package; the Rust check names it too.
//!
//! The tool is hidden by running the scripts with a PATH made of one
//! directory of symbolic links to every program on the real PATH except
//! the hidden one. cargo is left out as well, so that a check that failed
//! to stop a script could not start a nested build or test run.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use keel_testkit::host_tools::{self, Tool};

const HIDDEN: &str = "qemu-img";
const HIDDEN_PACKAGE: &str = "qemu-utils";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// A directory of links to every program on PATH except `hidden`.
fn path_without(hidden: &[&str], dir: &Path) -> OsString {
    let mut seen = BTreeSet::new();
    for d in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let name = e.file_name();
            let n = name.to_string_lossy().into_owned();
            if hidden.contains(&n.as_str()) || !seen.insert(n) {
                continue;
            }
            std::os::unix::fs::symlink(e.path(), dir.join(&name)).expect("linking a program");
        }
    }
    dir.as_os_str().to_owned()
}

fn present_before() {
    let missing = host_tools::missing_in(&std::env::var_os("PATH").unwrap_or_default());
    assert!(missing.is_empty(), "run scripts/setup first; missing: {missing:?}");
}

#[test]
fn the_list_names_a_package_for_every_tool() {
    let tools = host_tools::all();
    assert!(tools.len() >= 15, "{tools:?}");
    for name in ["qemu-img", "qemu-system-x86_64", "mmdebstrap", "dnsmasq", "etcdctl"] {
        assert!(tools.iter().any(|t| t.name == name), "{name} is not in the list");
    }
    assert!(tools.iter().any(|t| t.name == "/usr/share/OVMF/OVMF_CODE_4M.fd"));
}

#[test]
fn the_rust_check_names_the_hidden_tool_and_its_package() {
    present_before();
    let dir = tempfile::tempdir().unwrap();
    let path = path_without(&[HIDDEN, "cargo"], dir.path());
    assert_eq!(host_tools::missing_in(&path), vec![Tool { name: HIDDEN, package: HIDDEN_PACKAGE }]);
}

#[test]
fn setup_demo_and_test_stop_at_once_naming_the_tool_and_package() {
    present_before();
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let path = path_without(&[HIDDEN, "cargo", "rustc"], &bin);
    let expected = format!("{HIDDEN} not found: install the Debian package {HIDDEN_PACKAGE}");
    for script in ["scripts/setup", "scripts/demo", "scripts/test"] {
        let out = Command::new(workspace().join(script))
            .current_dir(workspace())
            .env("PATH", &path)
            .env("KEEL_DEMO_DIR", dir.path().join("demo"))
            .output()
            .unwrap_or_else(|e| panic!("running {script}: {e}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{script} succeeded without {HIDDEN}:\n{stderr}");
        assert!(stderr.contains(&expected), "{script} did not say `{expected}`:\n{stderr}");
        assert!(!stderr.contains("building"), "{script} went on to build:\n{stderr}");
    }
}
