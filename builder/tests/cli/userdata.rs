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

const KEY_ARN: &str =
    "arn:aws:kms:eu-central-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

/// A worker's `keel userdata` arguments with `extra` after them.
fn worker_userdata<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "userdata",
        "--role",
        "worker",
        "--cluster",
        "prod",
        "--bucket",
        "prod-assets",
        "--api-endpoint",
        "https://api.prod.example.com:6443",
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn userdata_carries_the_expected_kms_key_and_bucket_owner() {
    let repo = repo();
    let args = worker_userdata(&["--kms-key", KEY_ARN, "--bucket-owner", "111122223333"]);
    let text = ok(&keel(&repo, &args));
    let ud = UserData::parse(text.as_bytes(), Role::Worker).unwrap();
    assert_eq!(ud.assets.kms_key_id.as_deref(), Some(KEY_ARN));
    assert_eq!(ud.assets.bucket_owner.as_deref(), Some("111122223333"));
    let err = super::fails(&keel(&repo, &worker_userdata(&["--bucket-owner", "me"])));
    assert!(err.contains("assets.bucket-owner: bucket owner \"me\" is not a 12-digit"), "{err}");
}

/// `keel iam-policy` prints valid JSON per role: S3 read of that role's
/// bundle only, Decrypt conditioned on that cluster's and role's context,
/// DescribeInstances only for the roles that discover etcd peers.
#[test]
fn iam_policy_is_valid_json_scoped_to_each_role() {
    let repo = repo();
    for role in Role::ALL {
        let out = ok(&keel(
            &repo,
            &[
                "iam-policy",
                "--role",
                role.as_str(),
                "--cluster",
                "prod",
                "--bucket",
                "prod-assets",
                "--prefix",
                "prod",
                "--kms-key",
                KEY_ARN,
                "--bucket-owner",
                "111122223333",
            ],
        ));
        let p: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(p["Version"], "2012-10-17");
        let st = p["Statement"].as_array().unwrap();
        let actions: Vec<String> = st.iter().map(|s| s["Action"].to_string()).collect();
        let mut want = vec![r#""s3:GetObject""#, r#""kms:Decrypt""#];
        if role != Role::Worker {
            want.push(r#""ec2:DescribeInstances""#);
        }
        if role == Role::Etcd {
            // The formation record, joins and snapshots under prod/etcd/.
            want.extend([
                r#""s3:ListBucket""#,
                r#"["s3:GetObject","s3:PutObject","s3:DeleteObject"]"#,
                r#"["kms:GenerateDataKey","kms:Decrypt"]"#,
            ]);
        }
        assert_eq!(actions, want, "{role}");
        assert_eq!(st[0]["Resource"], format!("arn:aws:s3:::prod-assets/prod/{role}.bundle"));
        assert_eq!(
            st[1]["Condition"]["StringEquals"]["kms:EncryptionContext:keel:role"],
            role.as_str()
        );
        assert_eq!(
            st[1]["Condition"]["StringEquals"]["kms:EncryptionContext:keel:cluster"],
            "prod"
        );
    }
    let err = super::fails(&keel(
        &repo,
        &[
            "iam-policy",
            "--role",
            "worker",
            "--cluster",
            "prod",
            "--bucket",
            "b",
            "--kms-key",
            "1234abcd",
        ],
    ));
    assert!(err.contains("is not a key ARN"), "{err}");
}
