//! The IAM policy a node role's instance profile needs, generated from the
//! same names keel-bootstrap uses (bundle key, encryption context, tags),
//! so that the policy grants exactly what the node asks for:
//!
//! - `s3:GetObject` on that role's bundle object only (and, with a bucket
//!   owner, only in that account: `s3:ResourceAccount`);
//! - `kms:Decrypt` on the cluster's key, only with the encryption context
//!   of that cluster and role (`kms:EncryptionContext:keel:cluster`,
//!   `kms:EncryptionContext:keel:role`), so a worker's profile cannot
//!   decrypt the controller's bundle even if it reads it;
//! - `ec2:DescribeInstances` only for the roles that discover etcd peers
//!   (etcd, controller). EC2 does not support resource-level permissions
//!   for Describe calls: its resource is `*`;
//! - for etcd members only, the cluster's etcd state under
//!   `<prefix>/etcd/` (the formation record, joins and snapshots: list,
//!   get, put, delete) and `kms:GenerateDataKey`/`kms:Decrypt` under the
//!   snapshots' encryption context (cluster + `keel:purpose`), which no
//!   bundle's context matches.
//!
//! keel-bootstrap sends the key id and the bucket owner from user data
//! (`[assets] kms-key-id`, `bucket-owner`), so a node also refuses a
//! bundle sealed under another key or served from another account.

use serde_json::{json, Value};

use crate::{bundle, Role};

/// What a role's policy is made from.
#[derive(Debug, Clone)]
pub struct PolicyInput<'a> {
    pub role: Role,
    pub cluster: &'a str,
    pub bucket: &'a str,
    pub prefix: &'a str,
    /// The KMS key's ARN (`arn:<partition>:kms:<region>:<account>:key/<id>`).
    pub kms_key_arn: &'a str,
    /// The account that owns the bucket, when known.
    pub bucket_owner: Option<&'a str>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PolicyError {
    #[error(
        "KMS key {0:?} is not a key ARN (arn:aws:kms:<region>:<account>:key/<id>): a policy \
         names its resource by ARN; find it with `aws kms describe-key --key-id <id>`"
    )]
    KeyNotArn(String),
    #[error("bucket owner {0:?} is not a 12-digit AWS account id")]
    BucketOwner(String),
}

/// Whether the role finds etcd members through EC2 tags.
pub fn discovers_peers(role: Role) -> bool {
    matches!(role, Role::Etcd | Role::Controller)
}

/// The partition of an ARN (`aws`, `aws-cn`, `aws-us-gov`).
fn kms_key_partition(arn: &str) -> Option<&str> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    match parts.as_slice() {
        ["arn", partition, "kms", region, account, resource]
            if !partition.is_empty()
                && !region.is_empty()
                && account.len() == 12
                && account.chars().all(|c| c.is_ascii_digit())
                && resource.strip_prefix("key/").is_some_and(|id| !id.is_empty()) =>
        {
            Some(partition)
        }
        _ => None,
    }
}

/// A 12-digit account id.
pub fn check_account(owner: &str) -> Result<(), PolicyError> {
    keel_contract::names::check_account(owner)
        .map_err(|_| PolicyError::BucketOwner(owner.to_string()))
}

/// The instance profile policy of `input.role` (an IAM policy document).
pub fn instance_policy(input: &PolicyInput<'_>) -> Result<Value, PolicyError> {
    let partition = kms_key_partition(input.kms_key_arn)
        .ok_or_else(|| PolicyError::KeyNotArn(input.kms_key_arn.to_string()))?;
    let object = format!(
        "arn:{partition}:s3:::{}/{}",
        input.bucket,
        bundle::object_key(input.prefix, input.role)
    );
    let mut get = json!({
        "Sid": "ReadOwnBundle",
        "Effect": "Allow",
        "Action": "s3:GetObject",
        "Resource": object,
    });
    if let Some(owner) = input.bucket_owner {
        check_account(owner)?;
    }
    only_in_owner_account(&mut get, input.bucket_owner);
    let context = context_condition(bundle::encryption_context(input.cluster, input.role));
    let mut statements = vec![
        get,
        json!({
            "Sid": "DecryptOwnBundleKey",
            "Effect": "Allow",
            "Action": "kms:Decrypt",
            "Resource": input.kms_key_arn,
            "Condition": { "StringEquals": context },
        }),
    ];
    if discovers_peers(input.role) {
        statements.push(json!({
            "Sid": "DiscoverEtcdPeers",
            "Effect": "Allow",
            "Action": "ec2:DescribeInstances",
            "Resource": "*",
        }));
    }
    if input.role == Role::Etcd {
        statements.extend(etcd_state(input, partition));
    }
    Ok(json!({ "Version": "2012-10-17", "Statement": statements }))
}

/// What an etcd member needs beyond its bundle: the formation record,
/// join markers and snapshots under `<prefix>/etcd/`, and the snapshots'
/// KMS context.
fn etcd_state(input: &PolicyInput<'_>, partition: &str) -> Vec<Value> {
    let state = bundle::under_prefix(input.prefix, "etcd/");
    let mut list = json!({
        "Sid": "ListEtcdState",
        "Effect": "Allow",
        "Action": "s3:ListBucket",
        "Resource": format!("arn:{partition}:s3:::{}", input.bucket),
        "Condition": { "StringLike": { "s3:prefix": [format!("{state}*")] } },
    });
    let mut objects = json!({
        "Sid": "ReadWriteEtcdState",
        "Effect": "Allow",
        "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
        "Resource": format!("arn:{partition}:s3:::{}/{state}*", input.bucket),
    });
    only_in_owner_account(&mut list, input.bucket_owner);
    only_in_owner_account(&mut objects, input.bucket_owner);
    let context = context_condition(crate::snapshot::encryption_context(input.cluster));
    let key = json!({
        "Sid": "SealEtcdSnapshots",
        "Effect": "Allow",
        "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
        "Resource": input.kms_key_arn,
        "Condition": { "StringEquals": context },
    });
    vec![list, objects, key]
}

/// An S3 statement limited to buckets of `owner` (when known), beside any
/// condition it already has.
fn only_in_owner_account(statement: &mut Value, owner: Option<&str>) {
    if let Some(owner) = owner {
        statement["Condition"]["StringEquals"]["s3:ResourceAccount"] = owner.into();
    }
}

/// A KMS encryption context as the `kms:EncryptionContext:<key>`
/// conditions that require it.
fn context_condition(context: std::collections::HashMap<String, String>) -> Value {
    context
        .into_iter()
        .map(|(k, v)| (format!("kms:EncryptionContext:{k}"), Value::String(v)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_members_get_their_state_and_the_snapshot_context_only() {
        let p = instance_policy(&input(Role::Etcd)).unwrap();
        let s = p["Statement"].as_array().unwrap();
        let by_sid = |sid: &str| s.iter().find(|x| x["Sid"] == sid).unwrap().clone();
        assert_eq!(
            by_sid("ListEtcdState")["Condition"]["StringLike"]["s3:prefix"][0],
            "prod/etcd/*"
        );
        assert_eq!(
            by_sid("ReadWriteEtcdState")["Resource"],
            "arn:aws:s3:::prod-assets/prod/etcd/*"
        );
        let ctx = &by_sid("SealEtcdSnapshots")["Condition"]["StringEquals"];
        assert_eq!(ctx["kms:EncryptionContext:keel:cluster"], "prod");
        assert_eq!(ctx["kms:EncryptionContext:keel:purpose"], "etcd-snapshot");
        assert!(ctx.get("kms:EncryptionContext:keel:role").is_none(), "{ctx}");
        for role in [Role::Worker, Role::Controller] {
            let p = instance_policy(&input(role)).unwrap().to_string();
            assert!(!p.contains("etcd/") && !p.contains("GenerateDataKey"), "{role}: {p}");
        }
    }

    const KEY: &str =
        "arn:aws:kms:eu-central-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

    fn input(role: Role) -> PolicyInput<'static> {
        PolicyInput {
            role,
            cluster: "prod",
            bucket: "prod-assets",
            prefix: "prod",
            kms_key_arn: KEY,
            bucket_owner: Some("111122223333"),
        }
    }

    #[test]
    fn each_role_reads_its_own_bundle_with_its_own_context() {
        for role in Role::ALL {
            let p = instance_policy(&input(role)).unwrap();
            let s = p["Statement"].as_array().unwrap();
            assert_eq!(s[0]["Resource"], format!("arn:aws:s3:::prod-assets/prod/{role}.bundle"));
            assert_eq!(s[0]["Condition"]["StringEquals"]["s3:ResourceAccount"], "111122223333");
            assert_eq!(s[1]["Resource"], KEY);
            let ctx = &s[1]["Condition"]["StringEquals"];
            assert_eq!(ctx["kms:EncryptionContext:keel:role"], role.as_str());
            assert_eq!(ctx["kms:EncryptionContext:keel:cluster"], "prod");
            let want = match role {
                Role::Worker => 2,
                Role::Controller => 3,
                Role::Etcd => 6,
            };
            assert_eq!(s.len(), want, "{role}: {p}");
            assert!(!p.to_string().contains("s3:*") && !p.to_string().contains("kms:*"));
        }
    }

    #[test]
    fn a_key_id_or_a_bad_owner_is_refused() {
        let mut i = input(Role::Worker);
        i.kms_key_arn = "1234abcd-12ab-34cd-56ef-1234567890ab";
        assert!(matches!(instance_policy(&i), Err(PolicyError::KeyNotArn(_))));
        let mut i = input(Role::Worker);
        i.bucket_owner = Some("me");
        assert_eq!(instance_policy(&i), Err(PolicyError::BucketOwner("me".into())));
    }
}
