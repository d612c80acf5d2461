//! The objects `keel assets init` generates for nodes to join validate
//! against Kubernetes 1.36's schemas, strictly (unknown fields refused),
//! with `kubernetes-validate` from PyPI (installed by scripts/setup into
//! the moto virtualenv). A schema check, not an API server: whether a real
//! control plane then lets a kubelet join cannot be shown here.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{keel, ok, repo};

const KUBERNETES_VERSION: &str = "1.36.0";

fn validator() -> PathBuf {
    let venv = std::env::var_os("KEEL_MOTO_VENV").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/keel/moto-venv")
    });
    let bin = venv.join("bin/kubernetes-validate");
    assert!(bin.is_file(), "{}: missing (run scripts/setup)", bin.display());
    bin
}

/// Validates each file; returns (success, output).
fn validate(files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(validator())
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .args(files)
        .output()
        .expect("running kubernetes-validate");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn write_items(dir: &Path, items: &[serde_json::Value]) -> Vec<PathBuf> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let p = dir.join(format!("{i}.json"));
            std::fs::write(&p, serde_json::to_vec_pretty(item).unwrap()).unwrap();
            p
        })
        .collect()
}

#[test]
fn join_objects_validate_against_the_1_36_schemas() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("assets");
    let o = out.to_str().unwrap();
    ok(&keel(
        &repo(),
        &["assets", "init", "--cluster", "prod", "--api-endpoint", "10.0.0.1", "--out", o],
    ));
    let list: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("kubernetes/join-objects.json")).unwrap())
            .unwrap();
    let items = list["items"].as_array().unwrap().clone();
    let kinds: Vec<&str> = items.iter().map(|i| i["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["Secret", "ClusterRoleBinding", "ClusterRoleBinding", "ClusterRoleBinding"]);
    let mut files = write_items(work.path(), &items);
    files.push(out.join("kubernetes/bootstrap-token-secret.yaml"));
    let (valid, text) = validate(&files);
    assert!(valid, "kubernetes-validate refused keel's objects:\n{text}");
    assert_eq!(text.matches(" against version 1.36\n").count(), files.len(), "{text}");

    // The check can fail: a misspelt field is refused in strict mode.
    let mut bad = items[1].clone();
    bad["subject"] = bad["subjects"].take();
    bad.as_object_mut().unwrap().remove("subjects");
    let bad_dir = work.path().join("bad");
    std::fs::create_dir(&bad_dir).unwrap();
    let (valid, text) = validate(&write_items(&bad_dir, &[bad]));
    assert!(!valid, "a misspelt field passed:\n{text}");
}
