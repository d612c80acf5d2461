//! `keel build` and `keel inspect`.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use keel_contract::Role;

use super::{build, manifest, Request, Scratch};
use crate::fetch::{self, command::FetchFlags};
use crate::profile::{self, command::PathArgs};

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Profile name (a file in the profiles directory) or path.
    #[arg(long, value_name = "PROFILE")]
    pub profile: String,
    /// Node role: controller, etcd or worker.
    #[arg(long)]
    pub role: Role,
    /// Output directory for keel-<role>-<profile>.raw and .manifest.json.
    #[arg(long, default_value = "out", value_name = "DIR")]
    pub out: PathBuf,
    /// Static keel-bootstrap executable [default: keel-bootstrap next to
    /// this keel executable].
    #[arg(long, value_name = "PATH")]
    pub bootstrap_bin: Option<PathBuf>,
    /// Static keel-init executable, the initrd's /init [default: keel-init
    /// next to this keel executable].
    #[arg(long, value_name = "PATH")]
    pub init_bin: Option<PathBuf>,
    /// Base, tools and work directories [default: ~/.cache/keel].
    #[arg(long, env = "KEEL_CACHE_DIR", value_name = "DIR")]
    pub build_cache: Option<PathBuf>,
    /// Rebuild even when the image is up to date.
    #[arg(long)]
    pub force: bool,
    /// Sign the UKI for UEFI Secure Boot with the db key of this key
    /// hierarchy (made by `keel keys init`). Without it the image is
    /// unsigned and its manifest says `secure-boot: unsigned`.
    #[arg(long, value_name = "DIR")]
    pub secure_boot_key: Option<PathBuf>,
    #[command(flatten)]
    pub paths: PathArgs,
    #[command(flatten)]
    pub fetch: FetchFlags,
}

pub async fn run(args: &BuildArgs) -> anyhow::Result<()> {
    let paths = args.paths.paths();
    let resolved = profile::resolve(&paths, &args.profile, args.role)?;
    let cache = args.fetch.cache()?;
    let fetched = fetch::fetch_all(&cache, &resolved.components, &args.fetch.options()?).await?;
    let beside_keel = |given: &Option<PathBuf>, name: &str| -> anyhow::Result<PathBuf> {
        Ok(match given {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .context("locating the keel executable")?
                .with_file_name(name),
        })
    };
    let bootstrap_bin = beside_keel(&args.bootstrap_bin, "keel-bootstrap")?;
    let init_bin = beside_keel(&args.init_bin, "keel-init")?;
    let cache_dir = args.build_cache.clone().unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
        home.join(".cache/keel")
    });
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let images_dir = paths.images.clone();
    let out_dir = args.out.clone();
    let force = args.force;
    let signing = args
        .secure_boot_key
        .as_deref()
        .map(crate::secureboot::SigningKey::open)
        .transpose()
        .context("reading the Secure Boot key")?;
    let started = std::time::Instant::now();

    let req_scratch = Scratch::new(&resolved, &cache_dir, &out_dir);
    let (work, image_tmp) = (req_scratch.work.clone(), req_scratch.image_tmp.clone());
    let task = tokio::task::spawn_blocking(move || {
        let req = Request {
            resolved: &resolved,
            fetched: &fetched,
            bootstrap_bin: &bootstrap_bin,
            init_bin: &init_bin,
            images_dir: &images_dir,
            cache_dir: &cache_dir,
            out_dir: &out_dir,
            force,
            progress: std::io::stderr().is_terminal(),
            secure_boot: signing.as_ref(),
        };
        build(&req, &req_scratch)
    });
    let outcome = tokio::select! {
        r = task => r.context("the build thread died")??,
        _ = tokio::signal::ctrl_c() => {
            Scratch { work, image_tmp }.remove();
            anyhow::bail!("interrupted: nothing was written under the final names");
        }
    };
    let m = &outcome.manifest;
    let verb = if outcome.up_to_date { "up to date" } else { "built" };
    println!("{verb}: {} ({} MiB)", outcome.image.display(), m.image_size >> 20);
    println!("  manifest     {}", outcome.manifest_path.display());
    println!("  sbom         {}", outcome.sbom_path.display());
    println!("  sha256       {}", m.image_sha256.as_deref().unwrap_or("-"));
    println!("  verity root  {}", m.verity_root_hash);
    println!("  secure boot  {}", m.secure_boot);
    println!("  in           {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A disk image made by keel build.
    pub image: PathBuf,
    /// Skip hashing the whole image (image-sha256 is then left out).
    #[arg(long)]
    pub no_hash: bool,
    /// Print the image's SPDX 2.3 SBOM (JSON) instead of its manifest.
    #[arg(long)]
    pub sbom: bool,
}

/// Prints the manifest stored inside the image, with the image's sha256.
pub fn inspect(args: &InspectArgs) -> anyhow::Result<()> {
    if args.sbom {
        let bytes = manifest::read_esp_file(&args.image, super::sbom::ESP_PATH)?;
        let doc: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: the SBOM is not JSON", args.image.display()))?;
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let mut m = manifest::read_from_image(&args.image)?;
    if !args.no_hash {
        let f = std::fs::File::open(&args.image)
            .with_context(|| format!("opening {}", args.image.display()))?;
        let digest = crate::fetch::hash_reader(
            std::io::BufReader::with_capacity(1 << 20, f),
            crate::profile::Algorithm::Sha256,
        )
        .with_context(|| format!("hashing {}", args.image.display()))?;
        m.image_sha256 = Some(digest.hex().to_string());
    }
    println!("{}", serde_json::to_string_pretty(&m)?);
    Ok(())
}
