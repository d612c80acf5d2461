//! `keel assets renew` reissues the leaves and the token from the existing
//! CAs and never touches a CA; `keel assets show --dir` lists every expiry.

use std::collections::BTreeMap;
use std::path::Path;

use super::{fails, keel, ok, repo};

const KEPT: &[&str] = &[
    "kubernetes/pki/ca.crt",
    "kubernetes/pki/ca.key",
    "etcd/pki/ca.crt",
    "etcd/pki/ca.key",
    "kubernetes/pki/front-proxy-ca.crt",
    "kubernetes/pki/front-proxy-ca.key",
    "kubernetes/pki/sa.key",
    "kubernetes/pki/sa.pub",
    "kubernetes/encryption-config.yaml",
];
const RENEWED: &[&str] = &[
    "kubernetes/pki/apiserver-etcd-client.crt",
    "kubernetes/pki/apiserver-etcd-client.key",
    "kubernetes/pki/admin.crt",
    "kubernetes/pki/admin.key",
    "kubernetes/admin.conf",
    "kubernetes/bootstrap-token",
    "kubernetes/bootstrap-token-secret.yaml",
    "kubernetes/join-objects.json",
];

fn snapshot(dir: &Path, paths: &[&str]) -> BTreeMap<String, Vec<u8>> {
    paths.iter().map(|p| (p.to_string(), std::fs::read(dir.join(p)).unwrap())).collect()
}

fn cert(dir: &Path, rel: &str) -> Vec<u8> {
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(&std::fs::read(dir.join(rel)).unwrap()).unwrap();
    pem.contents
}

#[test]
fn renew_keeps_the_cas_and_changes_the_leaves() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("assets");
    let d = dir.to_str().unwrap();
    ok(&keel(
        &repo(),
        &["assets", "init", "--cluster", "prod", "--api-endpoint", "10.0.0.1", "--out", d],
    ));
    let kept = snapshot(&dir, KEPT);
    let before = snapshot(&dir, RENEWED);
    let token_before = std::fs::read_to_string(dir.join("kubernetes/bootstrap-token")).unwrap();

    let out = ok(&keel(&repo(), &["assets", "renew", "--dir", d]));
    assert!(out.contains("renewed from the existing CAs"), "{out}");
    assert!(!out.contains("PRIVATE KEY"), "{out}");
    assert_eq!(snapshot(&dir, KEPT), kept, "renew changed a CA or a long-lived key");
    let after = snapshot(&dir, RENEWED);
    for p in RENEWED {
        assert_ne!(before[*p], after[*p], "{p} was not renewed");
    }
    // The new leaves chain to the same CAs.
    for (leaf, ca) in [
        ("kubernetes/pki/apiserver-etcd-client.crt", "etcd/pki/ca.crt"),
        ("kubernetes/pki/admin.crt", "kubernetes/pki/ca.crt"),
    ] {
        let (leaf_der, ca_der) = (cert(&dir, leaf), cert(&dir, ca));
        let (_, l) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
        let (_, c) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        l.verify_signature(Some(c.public_key())).unwrap_or_else(|e| panic!("{leaf}: {e}"));
        assert_eq!(l.issuer(), c.subject());
    }
    // The token is new, and everything that carries it says so.
    let token = std::fs::read_to_string(dir.join("kubernetes/bootstrap-token")).unwrap();
    assert_ne!(token, token_before);
    let id = token.split('.').next().unwrap();
    let objects = String::from_utf8(after["kubernetes/join-objects.json"].clone()).unwrap();
    assert!(objects.contains(&format!("bootstrap-token-{id}")), "{objects}");
    let manifest = std::fs::read_to_string(dir.join("keel-assets.toml")).unwrap();
    assert!(manifest.contains(&format!("bootstrap-token-id = \"{id}\"")), "{manifest}");
    assert!(manifest.contains("renewed = "), "{manifest}");
    // The admin kubeconfig names the CA as it is, byte for byte.
    use base64::Engine;
    let ca_b64 = base64::engine::general_purpose::STANDARD.encode(&kept["kubernetes/pki/ca.crt"]);
    let admin = String::from_utf8(after["kubernetes/admin.conf"].clone()).unwrap();
    assert!(admin.contains(&ca_b64), "admin.conf names another CA");

    // Every expiry, soonest first: the leaves and the token, then the CAs.
    let shown = ok(&keel(&repo(), &["assets", "show", "--dir", d]));
    let lines: Vec<&str> = shown.lines().skip(1).collect();
    assert_eq!(lines.len(), 6, "{shown}");
    for want in [
        "apiserver-etcd-client.crt",
        "admin.crt",
        "bootstrap-token (id",
        "pki/ca.crt",
        "front-proxy-ca.crt",
    ] {
        assert!(shown.contains(want), "{want} missing:\n{shown}");
    }
    assert!(lines[5].contains("ca.crt") && lines[0].contains(" 36"), "{shown}");

    let err = fails(&keel(&repo(), &["assets", "renew", "--dir", work.path().to_str().unwrap()]));
    assert!(err.contains("keel-assets.toml"), "{err}");
}
