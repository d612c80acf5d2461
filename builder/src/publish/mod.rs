//! `keel publish`: a built image becomes an AMI in every listed region.
//!
//! image + manifest (sha256 checked) -> in the first region: the AMI made
//! before from this image, or else a snapshot (one left by a run whose
//! registration failed, or a fresh EBS direct upload) registered as a new
//! AMI -> copies to the other regions in parallel -> launch permissions ->
//! launch template versions -> the publish manifest on stdout (and in a
//! file).

mod ami;
mod copy;
mod ebs;
mod error;
pub mod image;
mod launch_template;
pub mod manifest;
mod sharing;
mod wait;

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use keel_bootstrap::aws::{in_region, sdk_config, Target};

use self::ami::Ami;
use self::copy::Placed;
use self::image::Image;
use self::manifest::{PublishManifest, RegionAmi};

/// Publish a built image as an AMI in one or more regions.
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The raw disk image from `keel build` (NAME.raw, with
    /// NAME.manifest.json beside it).
    pub image: PathBuf,

    /// Regions, comma-separated: the image is uploaded to the first and
    /// copied to the others. Default: the region of the AWS config chain.
    #[arg(long, value_delimiter = ',', value_name = "REGION,...")]
    pub regions: Vec<String>,

    /// An AWS account allowed to launch the AMIs (repeatable).
    #[arg(long = "share-with", value_name = "ACCOUNT", value_parser = sharing::parse_account)]
    pub share_with: Vec<String>,

    /// Add a version booting the new AMI to this launch template (in
    /// every region), made from its default version.
    #[arg(long, value_name = "NAME")]
    pub launch_template: Option<String>,

    /// Make that version the launch template's default.
    #[arg(long, requires = "launch_template")]
    pub set_default: bool,

    /// Also write the publish manifest (JSON) to this file.
    #[arg(long, value_name = "FILE")]
    pub manifest_out: Option<PathBuf>,

    /// Another AWS endpoint (e.g. an emulator); AWS_ENDPOINT_URL works too.
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
}

pub async fn run(args: PublishArgs) -> anyhow::Result<()> {
    let path = args.image.clone();
    let image = tokio::task::spawn_blocking(move || Image::open(&path))
        .await
        .context("checking the image")?
        .context("reading the image")?;
    eprintln!(
        "image {} ({} MiB, {} {}, sha256 {})",
        image.path.display(),
        image.size.div_ceil(1 << 20),
        image.manifest.role,
        image.manifest.profile,
        image.sha256()
    );

    let config = sdk_config(&Target {
        region: args.regions.first().cloned(),
        endpoint_url: args.endpoint_url.clone(),
    })
    .await;
    let regions: Vec<String> = if args.regions.is_empty() {
        let region = config
            .region()
            .context("no region: pass --regions or set AWS_REGION (or a profile's region)")?;
        vec![region.to_string()]
    } else {
        let mut seen = Vec::new();
        for r in &args.regions {
            if !seen.contains(r) {
                seen.push(r.clone());
            }
        }
        seen
    };
    let home = &regions[0];

    let first = publish_home(&config, home, &image).await?;
    let mut placed = vec![first.clone()];
    match copy::copy_all(&config, home, &first.ami, &regions[1..], &image).await {
        Ok(copies) => {
            for c in &copies {
                if c.reused {
                    eprintln!("{}: reusing {} (already copied)", c.region, c.ami.image_id);
                } else {
                    eprintln!("{}: copied {} to {}", c.region, first.ami.image_id, c.ami.image_id);
                }
            }
            placed.extend(copies);
        }
        Err(errors) => {
            let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
            anyhow::bail!(
                "copying {} failed in {} region(s):\n{}",
                first.ami.image_id,
                errors.len(),
                lines.join("\n")
            );
        }
    }

    let mut out = PublishManifest::new(&image);
    for p in &placed {
        let ec2 = aws_sdk_ec2::Client::new(&in_region(&config, &p.region));
        sharing::share(&ec2, &p.region, &p.ami.image_id, &args.share_with)
            .await
            .context("sharing the AMI")?;
        if !args.share_with.is_empty() {
            eprintln!(
                "{}: {} launchable by {}",
                p.region,
                p.ami.image_id,
                args.share_with.join(", ")
            );
        }
        let mut lt_version = None;
        if let Some(name) = &args.launch_template {
            let v = launch_template::new_version(
                &ec2,
                &p.region,
                name,
                &p.ami.image_id,
                args.set_default,
            )
            .await
            .context("updating the launch template")?;
            eprintln!(
                "{}: launch template {name} ({}) version {} {} {}{}",
                p.region,
                v.template_id,
                v.number,
                if v.created { "created with" } else { "already boots" },
                p.ami.image_id,
                if v.is_default { ", default" } else { "" }
            );
            lt_version = Some(v.number);
        }
        out.regions.insert(
            p.region.clone(),
            RegionAmi {
                ami_id: p.ami.image_id.clone(),
                snapshot_id: p.ami.snapshot_id.clone(),
                reused: p.reused,
                launch_template_version: lt_version,
            },
        );
    }

    if let Some(file) = &args.manifest_out {
        out.write(file)
            .with_context(|| format!("writing the publish manifest {}", file.display()))?;
    }
    print!("{}", out.to_json());
    Ok(())
}

/// The AMI in the first region: reused, or registered from a reused or
/// freshly uploaded snapshot.
async fn publish_home(
    config: &aws_types::SdkConfig,
    region: &str,
    image: &Image,
) -> anyhow::Result<Placed> {
    let ec2 = aws_sdk_ec2::Client::new(config);
    if let Some(found) = ami::find(&ec2, region, image).await? {
        eprintln!("{region}: image already registered as {}: reusing it", found.image_id);
        let mut ami = ami::wait_available(&ec2, region, &found.image_id).await?;
        let mut resources = vec![ami.image_id.as_str()];
        resources.extend(ami.snapshot_id.as_deref());
        ami::tag(&ec2, region, &resources, image).await?;
        if ami.snapshot_id.is_none() {
            ami.snapshot_id = ami::find_snapshot(&ec2, region, image).await?;
        }
        return Ok(Placed { region: region.into(), ami, reused: true });
    }

    let snapshot_id = match ami::find_snapshot(&ec2, region, image).await? {
        Some(id) => {
            eprintln!("{region}: reusing snapshot {id}, uploaded by an earlier run");
            id
        }
        None => {
            let ebs = aws_sdk_ebs::Client::new(config);
            let progress = progress_bar(image.size);
            let up = ebs::upload(&ebs, &ec2, region, image, &progress).await;
            progress.finish_and_clear();
            let up = up.context("uploading the image")?;
            eprintln!(
                "{region}: uploaded {} blocks into {} ({} all-zero blocks skipped)",
                up.uploaded, up.snapshot_id, up.skipped
            );
            // Tagged only now that it is complete: see ebs.rs.
            ami::tag(&ec2, region, &[&up.snapshot_id], image).await?;
            up.snapshot_id
        }
    };
    let image_id = ami::register(&ec2, region, image, &snapshot_id)
        .await
        .context("registering the AMI (the snapshot is kept and tagged: a rerun reuses it)")?;
    // moto ignores inline tags on RegisterImage; AWS applies them. Either
    // way the AMI ends up tagged.
    ami::tag(&ec2, region, &[&image_id], image).await?;
    let mut ami: Ami = ami::wait_available(&ec2, region, &image_id).await?;
    ami.snapshot_id = Some(snapshot_id);
    eprintln!("{region}: registered {image_id}");
    Ok(Placed { region: region.into(), ami, reused: false })
}

/// A byte progress bar on a terminal; hidden otherwise (pipelines).
fn progress_bar(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "uploading {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}
