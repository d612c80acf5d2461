//! The verified artifact cache and the downloads that fill it.
//!
//! [`fetch_all`] makes every URL component of a manifest available as a
//! file whose digest matches its pin: from the cache (re-verified; a corrupt
//! entry is evicted and fetched again), from a local mirror directory, or
//! over HTTP (in parallel, with timeouts and retries). Bytes go to a temp
//! file in the cache while they are hashed; only a matching file is renamed
//! to its digest, so the cache never holds anything unverified.

mod cache;
pub mod command;
mod download;
mod hash;
mod mirrors;
mod progress;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use futures::stream::{self, StreamExt};

pub use cache::{hash_reader, Cache, Lookup};
pub use mirrors::Mirrors;

use crate::profile::{Algorithm, Component, Digest, Source};
use progress::Progress;

/// Downloads in flight at once: a handful of large files from one or two
/// hosts; four keep a link busy without hammering a mirror.
pub const CONCURRENT_DOWNLOADS: usize = 4;

#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Use only the cache and local mirror directories; never the network.
    pub offline: bool,
    pub mirrors: Mirrors,
    /// Connect and read timeout of each request (a stalled transfer fails
    /// after this long without a byte).
    pub timeout: Duration,
    /// Attempts per download (retries on 5xx, timeouts and resets).
    pub attempts: u32,
    /// Draw progress bars (only sensible on a terminal).
    pub progress: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            offline: false,
            mirrors: Mirrors::default(),
            timeout: Duration::from_secs(30),
            attempts: 5,
            progress: false,
        }
    }
}

/// A component's artifact, verified, in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub name: String,
    pub path: PathBuf,
    pub digest: Digest,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    #[error(
        "{name}: {url}: {} mismatch: expected {}, got {}; nothing was cached",
        expected.algorithm(), expected.hex(), actual.hex()
    )]
    Mismatch { name: String, url: String, expected: Digest, actual: Digest },

    #[error("{name}: GET {url}: HTTP {status}")]
    Status { name: String, url: String, status: u16 },

    #[error("{name}: GET {url}: {message}")]
    Transport { name: String, url: String, message: String },

    #[error("{name}: offline, and {url} is not in the cache ({}) nor in a local mirror directory", path.display())]
    Offline { name: String, url: String, path: PathBuf },

    #[error("offline: cannot fetch {url} (map it to a local mirror directory)")]
    OfflineText { url: String },

    #[error("{name}: the mirror has no {} (for {url})", path.display())]
    MirrorMissing { name: String, url: String, path: PathBuf, source: std::io::Error },

    #[error("mirrors file {}: {message}", path.display())]
    Mirrors { path: PathBuf, message: String },

    #[error("building the HTTP client: {message}")]
    Client { message: String },

    #[error("{} downloads failed:\n{}", .0.len(), list(.0))]
    Several(Vec<FetchError>),
}

fn list(errors: &[FetchError]) -> String {
    errors.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n")
}

/// Makes every URL component of `components` available in `cache`
/// (Debian components are the base's business and are skipped). Components
/// that share a digest share one download. All failures are reported
/// together. The result is sorted by component name.
pub async fn fetch_all(
    cache: &Cache,
    components: &[Component],
    opts: &FetchOptions,
) -> Result<Vec<Fetched>, FetchError> {
    // digest -> (url, names)
    let mut groups: BTreeMap<Digest, (String, Vec<String>)> = BTreeMap::new();
    for c in components {
        if let Source::Url { url, digest } = &c.source {
            groups
                .entry(digest.clone())
                .or_insert_with(|| (url.clone(), Vec::new()))
                .1
                .push(c.name.clone());
        }
    }
    let client = download::client(opts.timeout)?;
    let progress = Progress::new(opts.progress);
    let results: Vec<_> = stream::iter(groups)
        .map(|(digest, (url, names))| {
            let (client, progress) = (&client, &progress);
            async move {
                let r = fetch_one(client, cache, &digest, &names[0], &url, opts, progress).await;
                (digest, names, r)
            }
        })
        .buffer_unordered(CONCURRENT_DOWNLOADS)
        .collect()
        .await;

    let mut fetched = Vec::new();
    let mut errors = Vec::new();
    for (digest, names, r) in results {
        match r {
            Ok(path) => fetched.extend(names.into_iter().map(|name| Fetched {
                name,
                path: path.clone(),
                digest: digest.clone(),
            })),
            Err(e) => errors.push(e),
        }
    }
    match errors.len() {
        0 => {
            fetched.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(fetched)
        }
        1 => Err(errors.remove(0)),
        _ => Err(FetchError::Several(errors)),
    }
}

async fn fetch_one(
    client: &reqwest::Client,
    cache: &Cache,
    digest: &Digest,
    name: &str,
    url: &str,
    opts: &FetchOptions,
    progress: &Progress,
) -> Result<PathBuf, FetchError> {
    let lookup = {
        let (cache, digest) = (cache.clone(), digest.clone());
        blocking(move || cache.lookup(&digest)).await?
    };
    match lookup {
        Lookup::Hit(path) => return Ok(path),
        Lookup::Evicted { actual } => eprintln!(
            "warning: {name}: cache entry {} was corrupt (its {} is {}); evicted it, fetching again",
            cache.path(digest).display(),
            actual.algorithm(),
            actual.hex()
        ),
        Lookup::Miss => {}
    }
    let bar = progress.bar(name);
    let (pending, source) =
        download::fetch_into(client, cache, digest.algorithm(), (name, url), opts, &bar).await?;
    let expected = digest.clone();
    match blocking(move || pending.commit(&expected)).await? {
        Ok(path) => Ok(path),
        Err(actual) => Err(FetchError::Mismatch {
            name: name.to_string(),
            url: source,
            expected: digest.clone(),
            actual,
        }),
    }
}

/// One file at `url`, verified against its `sha256` pin, through the
/// artifact cache in `cache_dir` (a hit is re-verified; a miss is
/// downloaded with [`FetchOptions::default`]'s timeouts and retries). For
/// test fixture steps that fetch inputs other than a profile's components
/// (the Debian packages qemu-tests repacks): the same cache, retry policy
/// and errors (URL, expected and actual digest) as `keel fetch`.
pub async fn fetch_file(
    cache_dir: &std::path::Path,
    name: &str,
    url: &str,
    sha256: &str,
) -> Result<PathBuf, FetchError> {
    // A library caller has no `keel` main to install TLS's provider.
    keel_bootstrap::aws::install_crypto_provider();
    let cache = Cache::open(cache_dir)?;
    let hex = Algorithm::Sha256.parse_hex(sha256).map_err(|e| FetchError::Transport {
        name: name.to_string(),
        url: url.to_string(),
        message: format!("pinned sha256 {sha256:?}: {e}"),
    })?;
    let digest = Digest::new(Algorithm::Sha256, hex);
    let client = download::client(FetchOptions::default().timeout)?;
    let progress = Progress::new(false);
    fetch_one(&client, &cache, &digest, name, url, &FetchOptions::default(), &progress).await
}

/// Downloads `url` (through mirrors, with retries) into the cache without
/// an expected digest, and returns the file and its `algorithm` digest
/// (`keel pin --compute`).
pub async fn fetch_and_hash(
    cache: &Cache,
    name: &str,
    url: &str,
    algorithm: Algorithm,
    opts: &FetchOptions,
) -> Result<Fetched, FetchError> {
    let client = download::client(opts.timeout)?;
    let progress = Progress::new(opts.progress);
    let bar = progress.bar(name);
    let (pending, _) =
        download::fetch_into(&client, cache, algorithm, (name, url), opts, &bar).await?;
    let (path, digest) = blocking(move || pending.commit_any()).await?;
    Ok(Fetched { name: name.to_string(), path, digest })
}

/// The text at `url` (through mirrors, with retries): a checksum file.
pub async fn get_text(url: &str, opts: &FetchOptions) -> Result<String, FetchError> {
    let client = download::client(opts.timeout)?;
    download::get_text(&client, url, opts).await
}

/// Runs blocking file work (hashing, fsync) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FetchError> + Send + 'static,
) -> Result<T, FetchError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(FetchError::Io {
            path: PathBuf::new(),
            source: std::io::Error::other(format!("file task failed: {e}")),
        })
    })
}
