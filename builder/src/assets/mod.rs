//! `keel assets`: the cluster's TLS assets. `init` generates them into a
//! local directory, `publish` seals one bundle per role with KMS into S3,
//! `show` lists what is published. The bundle format itself is
//! `keel_contract::bundle`, shared with the node.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};

mod fingerprint;
mod metadata;
pub mod pki;
mod publish;
mod roles;
mod show;
mod store;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate a cluster's CAs, keys, tokens and encryption config into a
    /// new local directory. Prints a summary, never key material.
    Init(InitArgs),
    /// Seal one bundle per role with KMS and upload it to S3. Unchanged
    /// bundles are left alone; replacing a CA needs --rotate.
    Publish(PublishArgs),
    /// List the bundles under a prefix and what each role gets, without
    /// decrypting anything.
    Show(ShowArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Cluster name (lowercase letters, digits, '-'); it is bound into
    /// every bundle's KMS encryption context.
    #[arg(long)]
    pub cluster: String,
    /// Address of the Kubernetes API (IP or DNS name); repeat for several.
    /// The first is the server of the admin kubeconfig.
    #[arg(long = "api-endpoint", required = true)]
    pub api_endpoints: Vec<String>,
    /// Directory to create (must be missing or empty).
    #[arg(long)]
    pub out: PathBuf,
}

/// Where to reach AWS; credentials come from the standard chain.
#[derive(Debug, Args)]
pub struct AwsArgs {
    /// AWS endpoint override (e.g. a local emulator).
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// AWS region (default: the standard chain).
    #[arg(long)]
    pub region: Option<String>,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Asset directory made by `keel assets init`.
    #[arg(long)]
    pub dir: PathBuf,
    /// S3 bucket.
    #[arg(long)]
    pub bucket: String,
    /// Key prefix; bundles go to <prefix>/<role>.bundle.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// KMS key (id, ARN or alias/NAME) for the data keys.
    #[arg(long)]
    pub kms_key: String,
    /// Allow replacing published CA certificates.
    #[arg(long)]
    pub rotate: bool,
    #[command(flatten)]
    pub aws: AwsArgs,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// S3 bucket.
    #[arg(long)]
    pub bucket: String,
    /// Key prefix the bundles were published under.
    #[arg(long, default_value = "")]
    pub prefix: String,
    #[command(flatten)]
    pub aws: AwsArgs,
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Init(args) => init(&args),
        Command::Publish(args) => publish::run(&args).await.context("publishing assets"),
        Command::Show(args) => show::run(&args).await.context("showing published assets"),
    }
}

fn init(args: &InitArgs) -> anyhow::Result<()> {
    let endpoints = args
        .api_endpoints
        .iter()
        .map(|e| pki::Endpoint::parse(e))
        .collect::<Result<Vec<_>, _>>()?;
    let now = time::OffsetDateTime::now_utc();
    let generated = pki::generate(&args.cluster, &endpoints, now)?;
    let rfc3339 = |t: time::OffsetDateTime| {
        t.replace_nanosecond(0)
            .unwrap_or(t)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| t.to_string())
    };
    let manifest = store::Manifest {
        format: store::LAYOUT_VERSION,
        cluster: args.cluster.clone(),
        api_endpoints: endpoints.iter().map(ToString::to_string).collect(),
        created: rfc3339(now),
        bootstrap_token_id: generated.token_id.clone(),
    };
    store::write(&args.out, &manifest, &generated)?;

    println!("cluster {} assets in {}", args.cluster, args.out.display());
    println!(
        "API endpoints (SANs of the serving certificate controllers issue at boot): {}",
        manifest.api_endpoints.join(", ")
    );
    println!("keys: {} (certificates 0644, keys and tokens 0600)", pki::KEY_ALGORITHM);
    for c in &generated.certs {
        let kind = if c.is_ca { "CA" } else { "client" };
        println!("  {} ({kind})", c.path);
        println!(
            "      subject {}, issuer {}, SANs none, expires {}",
            c.subject,
            c.issuer,
            rfc3339(c.not_after)
        );
    }
    println!("  {:<42} service-account signing key pair", pki::paths::SA_KEY);
    println!(
        "  {:<42} admin kubeconfig, server {}",
        pki::paths::ADMIN_KUBECONFIG,
        endpoints[0].url()
    );
    println!("  {:<42} secrets at rest: secretbox, one key", pki::paths::ENCRYPTION_CONFIG);
    println!(
        "  {:<42} worker bootstrap token id {}, expires {}",
        pki::paths::BOOTSTRAP_TOKEN,
        generated.token_id,
        rfc3339(generated.token_expires)
    );
    println!("  {:<42} Secret for the token (kubectl apply)", pki::paths::BOOTSTRAP_TOKEN_SECRET);
    for role in keel_contract::Role::ALL {
        println!("{role} bundle: {}", roles::files(role).join(", "));
    }
    Ok(())
}
