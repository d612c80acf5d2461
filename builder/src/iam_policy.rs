//! `keel iam-policy`: prints a role's instance profile policy, generated
//! by `keel_bootstrap::iam` from the names keel-bootstrap uses (bundle key,
//! encryption context), so the policy grants what the node asks for and
//! nothing else.

use anyhow::Context;
use keel_bootstrap::iam::{self, PolicyInput};
use keel_contract::Role;

/// Print the IAM policy of a node role's instance profile.
#[derive(Debug, clap::Args)]
#[command(
    override_usage = "keel iam-policy --role <ROLE> --cluster <NAME> --bucket <BUCKET>\n       \
                      --prefix <PREFIX> --kms-key <ARN> [--bucket-owner <ACCOUNT>]"
)]
pub struct IamPolicyArgs {
    /// The node role: controller, etcd or worker.
    #[arg(long)]
    role: Role,
    /// The cluster name (the encryption context of its bundles).
    #[arg(long)]
    cluster: String,
    /// The S3 bucket holding the cluster's asset bundles.
    #[arg(long)]
    bucket: String,
    /// Key prefix of the bundles in the bucket.
    #[arg(long, default_value = "")]
    prefix: String,
    /// ARN of the KMS key the bundles are sealed under.
    #[arg(long)]
    kms_key: String,
    /// The 12-digit account that owns the bucket (s3:ResourceAccount).
    #[arg(long)]
    bucket_owner: Option<String>,
}

pub fn run(args: &IamPolicyArgs) -> anyhow::Result<()> {
    let policy = iam::instance_policy(&PolicyInput {
        role: args.role,
        cluster: &args.cluster,
        bucket: &args.bucket,
        prefix: &args.prefix,
        kms_key_arn: &args.kms_key,
        bucket_owner: args.bucket_owner.as_deref(),
    })
    .with_context(|| format!("making the {} policy", args.role))?;
    println!("{}", serde_json::to_string_pretty(&policy).context("rendering the policy")?);
    Ok(())
}
