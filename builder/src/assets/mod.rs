//! `keel assets`: the cluster's TLS assets. `init` generates them into a
//! local directory, `publish` seals one bundle per role with KMS into S3,
//! `show` lists what is published. The bundle format itself is
//! `keel_contract::bundle`, shared with the node.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use zeroize::Zeroizing;

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
    /// decrypting anything; with --dir, every expiry in an asset directory.
    Show(ShowArgs),
    /// Reissue the leaf certificates, the admin kubeconfig and the
    /// bootstrap token from the existing CAs (never a CA); then publish.
    Renew(RenewArgs),
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
pub struct RenewArgs {
    /// Asset directory made by `keel assets init`.
    #[arg(long)]
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// S3 bucket.
    #[arg(long, required_unless_present = "dir", default_value = "")]
    pub bucket: String,
    /// Instead of S3: show every certificate's and the token's expiry in
    /// this asset directory.
    #[arg(long, conflicts_with = "bucket")]
    pub dir: Option<PathBuf>,
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
        Command::Show(args) => match &args.dir {
            Some(dir) => show::expiries(dir).context("showing asset expiries"),
            None => show::run(&args).await.context("showing published assets"),
        },
        Command::Renew(args) => renew(&args),
    }
}

fn renew(args: &RenewArgs) -> anyhow::Result<()> {
    let mut store = store::Store::open(&args.dir)?;
    let endpoints = store
        .manifest
        .api_endpoints
        .iter()
        .map(|e| pki::Endpoint::parse(e))
        .collect::<Result<Vec<_>, _>>()?;
    let text = |rel: &str| -> anyhow::Result<Zeroizing<String>> {
        let bytes = store.read(rel, rel.ends_with(".key"))?;
        Ok(Zeroizing::new(
            String::from_utf8(bytes.to_vec()).with_context(|| format!("{rel} is not text"))?,
        ))
    };
    let (ca, ca_key) = (text(pki::paths::CA_CRT)?, text(pki::paths::CA_KEY)?);
    let (etcd, etcd_key) = (text(pki::paths::ETCD_CA_CRT)?, text(pki::paths::ETCD_CA_KEY)?);
    let now = time::OffsetDateTime::now_utc();
    let renewed = pki::renew(
        &store.manifest.cluster,
        &endpoints,
        now,
        (ca.as_str(), ca_key.as_str()),
        (etcd.as_str(), etcd_key.as_str()),
    )?;
    store.replace_renewed(&renewed, pki::rfc3339(now))?;
    println!(
        "cluster {} assets in {} renewed from the existing CAs",
        store.manifest.cluster,
        args.dir.display()
    );
    for c in &renewed.certs {
        println!("  {} expires {}", c.path, pki::rfc3339(c.not_after));
    }
    println!(
        "  {} new bootstrap token id {}, expires {}",
        pki::paths::BOOTSTRAP_TOKEN,
        renewed.token_id,
        pki::rfc3339(renewed.token_expires)
    );
    println!("CAs, service-account keys and the encryption config are unchanged.");
    println!("Next: keel assets publish (no --rotate needed), then replace the nodes.");
    Ok(())
}

fn init(args: &InitArgs) -> anyhow::Result<()> {
    let endpoints = args
        .api_endpoints
        .iter()
        .map(|e| pki::Endpoint::parse(e))
        .collect::<Result<Vec<_>, _>>()?;
    let now = time::OffsetDateTime::now_utc();
    let generated = pki::generate(&args.cluster, &endpoints, now)?;
    let rfc3339 = pki::rfc3339;
    let manifest = store::Manifest {
        format: store::LAYOUT_VERSION,
        cluster: args.cluster.clone(),
        api_endpoints: endpoints.iter().map(ToString::to_string).collect(),
        created: rfc3339(now),
        bootstrap_token_id: generated.token_id.clone(),
        renewed: None,
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
    println!(
        "  {:<42} token Secret and RBAC for nodes to join (controller bundle)",
        pki::paths::JOIN_OBJECTS
    );
    for role in keel_contract::Role::ALL {
        println!("{role} bundle: {}", roles::files(role).join(", "));
    }
    Ok(())
}
