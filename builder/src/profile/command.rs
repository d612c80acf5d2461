//! `keel resolve`: prints the fully resolved manifest for a profile and
//! role.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use keel_contract::Role;

use super::{resolve, table, Paths};

/// Where profiles are read from.
#[derive(Debug, Clone, Args)]
pub struct ProfilesDir {
    /// Directory of profiles.
    #[arg(long, env = "KEEL_PROFILES_DIR", default_value = "profiles", value_name = "DIR")]
    pub profiles_dir: PathBuf,
}

/// Where profiles and role definitions are read from.
#[derive(Debug, Clone, Args)]
pub struct PathArgs {
    #[command(flatten)]
    pub profiles: ProfilesDir,
    /// Directory of role definitions (images/<role>/role.toml).
    #[arg(long, env = "KEEL_IMAGES_DIR", default_value = "images", value_name = "DIR")]
    pub images_dir: PathBuf,
}

impl PathArgs {
    pub fn paths(&self) -> Paths {
        Paths { profiles: self.profiles.profiles_dir.clone(), images: self.images_dir.clone() }
    }
}

#[derive(Debug, Args)]
pub struct ResolveArgs {
    /// Profile name (a file in the profiles directory) or path.
    #[arg(long, value_name = "PROFILE")]
    pub profile: String,
    /// Node role: controller, etcd or worker.
    #[arg(long)]
    pub role: Role,
    /// Print JSON (for pipelines) instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub paths: PathArgs,
}

pub fn run(args: &ResolveArgs) -> anyhow::Result<()> {
    let resolved = resolve(&args.paths.paths(), &args.profile, args.role)?;
    if args.json {
        let json = serde_json::to_string_pretty(&resolved).context("encoding the manifest")?;
        println!("{json}");
    } else {
        print!("{}", table::render(&resolved));
    }
    Ok(())
}
