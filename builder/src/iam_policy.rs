//! `keel iam-policy`: prints a role's instance profile policy, generated
//! by `keel_bootstrap::iam` from the names keel-bootstrap uses (bundle key,
//! encryption context), so the policy grants what the node asks for and
//! nothing else.

use anyhow::Context;
use keel_bootstrap::iam::{self, PolicyInput};

/// Print the IAM policy of a node role's instance profile.
#[derive(Debug, clap::Args)]
#[command(
    override_usage = "keel iam-policy --role <ROLE> --cluster <NAME> --bucket <BUCKET>\n       \
                      --prefix <PREFIX> --kms-key <ARN> [--bucket-owner <ACCOUNT>]"
)]
pub struct IamPolicyArgs {
    #[command(flatten)]
    node: crate::userdata::NodeBundleArgs,
    /// ARN of the KMS key the bundles are sealed under.
    #[arg(long)]
    kms_key: String,
}

pub fn run(args: &IamPolicyArgs) -> anyhow::Result<()> {
    let policy = iam::instance_policy(&PolicyInput {
        role: args.node.role,
        cluster: &args.node.cluster,
        bucket: &args.node.bucket,
        prefix: &args.node.prefix,
        kms_key_arn: &args.kms_key,
        bucket_owner: args.node.bucket_owner.as_deref(),
    })
    .with_context(|| format!("making the {} policy", args.node.role))?;
    println!("{}", serde_json::to_string_pretty(&policy).context("rendering the policy")?);
    Ok(())
}
