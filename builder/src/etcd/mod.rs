//! `keel etcd`: the etcd cluster's backups in S3 (made on the nodes by
//! `keel-bootstrap --etcd-snapshot`; format and keys in
//! `keel_bootstrap::snapshot`). `snapshots` lists them; `restore` makes a
//! chosen one the newest, which is what the next formation restores (when
//! no cluster and no member data exist), and can write it decrypted to a
//! local file for a restore by hand.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use keel_bootstrap::snapshot::Snapshots;

use crate::assets::AwsArgs;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the cluster's etcd snapshots, oldest first.
    Snapshots(ListArgs),
    /// Choose the snapshot the next formation restores (and optionally
    /// write it, decrypted, to a file for a restore by hand).
    Restore(RestoreArgs),
}

#[derive(Debug, Args)]
pub struct Where {
    /// Cluster name (bound into every snapshot's KMS encryption context).
    #[arg(long)]
    pub cluster: String,
    /// S3 bucket of the cluster's assets.
    #[arg(long)]
    pub bucket: String,
    /// Key prefix of the cluster's assets.
    #[arg(long, default_value = "")]
    pub prefix: String,
    #[command(flatten)]
    pub aws: AwsArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub at: Where,
    /// Print JSON (one array) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub at: Where,
    /// The snapshot's S3 key (as `keel etcd snapshots` lists it).
    #[arg(long)]
    pub snapshot: String,
    /// Also write the decrypted backend here (mode 0600), for
    /// `etcdutl snapshot restore` by hand.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Snapshots(args) => list(&args).await.context("listing etcd snapshots"),
        Command::Restore(args) => restore(&args).await.context("choosing an etcd snapshot"),
    }
}

async fn snapshots(at: &Where) -> Snapshots {
    let config = at.aws.sdk_config().await;
    Snapshots {
        s3: keel_bootstrap::aws::s3_client(&config),
        kms: aws_sdk_kms::Client::new(&config),
        bucket: at.bucket.clone(),
        prefix: at.prefix.clone(),
        cluster: at.cluster.clone(),
    }
}

async fn list(args: &ListArgs) -> anyhow::Result<()> {
    let listed = snapshots(&args.at).await.list().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&listed)?);
        return Ok(());
    }
    if listed.is_empty() {
        println!("no etcd snapshots of cluster {} in s3://{}", args.at.cluster, args.at.bucket);
    }
    for s in &listed {
        println!("{}  {:>12} bytes  {}", rfc3339(s.taken_unix), s.bytes, s.key);
    }
    Ok(())
}

async fn restore(args: &RestoreArgs) -> anyhow::Result<()> {
    let store = snapshots(&args.at).await;
    // Opening it proves it is this cluster's and intact before anything
    // depends on it.
    let db = store.fetch(&args.snapshot).await?;
    if let Some(out) = &args.out {
        keel_bootstrap::atomic_file::write(out, 0o600, &db)
            .with_context(|| format!("writing {}", out.display()))?;
        println!("wrote the decrypted backend ({} bytes) to {}", db.len(), out.display());
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let newest = store.list().await?.pop();
    let key = match newest {
        Some(n) if n.key == args.snapshot => n.key,
        _ => {
            let to = store.key_for(now.max(newest.map_or(0, |n| n.taken_unix + 1)));
            store
                .s3
                .copy_object()
                .bucket(&store.bucket)
                .copy_source(format!("{}/{}", store.bucket, args.snapshot))
                .key(&to)
                .send()
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "S3 CopyObject to s3://{}/{to}: {}",
                        store.bucket,
                        keel_bootstrap::aws::AwsError::from(e)
                    )
                })?;
            to
        }
    };
    println!(
        "s3://{}/{key} is the newest snapshot of cluster {}: a formation restores it once no \
         etcd instance of the cluster is left (terminate them or scale the group to 0, then \
         back up)",
        store.bucket, args.at.cluster
    );
    Ok(())
}

fn rfc3339(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}
