//! `keel userdata`: what it prints is what keel-bootstrap accepts.

use keel_contract::userdata::UserData;
use keel_contract::Role;

use super::{keel, ok, repo};

#[test]
fn userdata_renders_what_the_node_parses() {
    let repo = repo();
    let args = [
        "userdata",
        "--role",
        "worker",
        "--cluster",
        "prod",
        "--bucket",
        "prod-assets",
        "--prefix",
        "prod",
        "--api-endpoint",
        "https://api.prod.example.com:6443",
        "--max-pods",
        "58",
        "--node-label",
        "tier=general",
    ];
    let text = ok(&keel(&repo, &args));
    let ud = UserData::parse(text.as_bytes(), Role::Worker).unwrap();
    assert_eq!(ud.cluster, "prod");
    assert_eq!(ud.assets.prefix, "prod");
    assert_eq!(ud.max_pods(), 58);
    assert_eq!(ud.etcd.expected_members, 3);
    assert!(text.starts_with("version = 1\n"), "{text}");

    let mut b64 = args.to_vec();
    b64.push("--base64");
    let encoded = ok(&keel(&repo, &b64));
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).unwrap();
    assert_eq!(decoded, text.as_bytes());
}

#[test]
fn userdata_refuses_values_the_node_would_refuse() {
    let repo = repo();
    let out = keel(
        &repo,
        &[
            "userdata",
            "--role",
            "etcd",
            "--cluster",
            "prod",
            "--bucket",
            "b",
            "--api-endpoint",
            "http://api:6443",
        ],
    );
    assert!(!out.status.success());
    let err = super::stderr(&out);
    assert!(err.contains("checking the rendered user data") && err.contains("https://"), "{err}");
}
