//! `keel fetch`: downloads a profile's (or one role's) URL components into
//! the verified cache.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use keel_contract::Role;

use super::{fetch_all, Cache, FetchOptions, Mirrors};
use crate::profile::{self, command::PathArgs};

/// How artifacts are fetched; shared by `fetch`, `pin` and the build.
#[derive(Debug, Clone, Args)]
pub struct FetchFlags {
    /// Artifact cache [default: ~/.cache/keel/artifacts].
    #[arg(long, env = "KEEL_ARTIFACT_CACHE", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Use only the cache and local mirror directories, never the network.
    #[arg(long)]
    pub offline: bool,
    /// TOML file mapping URL prefixes to mirror directories or base URLs.
    #[arg(long, env = "KEEL_MIRRORS", value_name = "FILE")]
    pub mirrors: Option<PathBuf>,
    /// Connect and read timeout of each request, in seconds.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub timeout: u64,
    /// Attempts per download (retries on 5xx, timeouts, resets).
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub attempts: u32,
}

impl FetchFlags {
    pub fn cache(&self) -> anyhow::Result<Cache> {
        let dir = self.cache_dir.clone().unwrap_or_else(Cache::default_dir);
        Cache::open(&dir).with_context(|| format!("opening the artifact cache {}", dir.display()))
    }

    pub fn options(&self) -> anyhow::Result<FetchOptions> {
        let mirrors = match &self.mirrors {
            Some(path) => Mirrors::load(path)?,
            None => Mirrors::default(),
        };
        Ok(FetchOptions {
            offline: self.offline,
            mirrors,
            timeout: Duration::from_secs(self.timeout.max(1)),
            attempts: self.attempts,
            progress: std::io::stderr().is_terminal(),
        })
    }
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Profile name (a file in the profiles directory) or path.
    #[arg(long, value_name = "PROFILE")]
    pub profile: String,
    /// Only the components of this role [default: every component].
    #[arg(long)]
    pub role: Option<Role>,
    /// Print JSON (name, path, digest per component) instead of lines.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub paths: PathArgs,
    #[command(flatten)]
    pub fetch: FetchFlags,
}

pub async fn run(args: &FetchArgs) -> anyhow::Result<()> {
    let paths = args.paths.paths();
    let components = match args.role {
        Some(role) => profile::resolve(&paths, &args.profile, role)?.components,
        None => profile::all_components(&profile::load::load(&paths.profiles, &args.profile)?),
    };
    let cache = args.fetch.cache()?;
    let fetched = fetch_all(&cache, &components, &args.fetch.options()?).await?;
    if args.json {
        let list: Vec<_> = fetched
            .iter()
            .map(|f| serde_json::json!({ "name": f.name, "path": f.path, "digest": f.digest }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&list).context("encoding the list")?);
    } else {
        for f in &fetched {
            println!("{}\t{}", f.name, f.path.display());
        }
    }
    Ok(())
}
