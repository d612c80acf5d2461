//! Getting one artifact's bytes into a cache entry: over HTTP with a read
//! timeout and retries (the one retry policy, keel_bootstrap::retry), or
//! from a local mirror directory. Every attempt starts a fresh temp file:
//! nothing half-written is resumed.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_bootstrap::error_chain::chain as error_chain;
use keel_bootstrap::retry::{retry, Attempt, Policy};

use super::cache::{Cache, Pending};
use super::mirrors::Origin;
use super::progress::Bar;
use super::{FetchError, FetchOptions};
use crate::profile::Algorithm;

/// The HTTP client every download shares: connect and read timeouts, no
/// overall timeout (artifacts are large; a stalled transfer is caught by
/// the read timeout instead).
pub fn client(timeout: Duration) -> Result<reqwest::Client, FetchError> {
    reqwest::Client::builder()
        .connect_timeout(timeout)
        .read_timeout(timeout)
        .user_agent(concat!("keel/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| FetchError::Client { message: error_chain(&e) })
}

/// The retry policy for one download.
pub fn policy(opts: &FetchOptions) -> Policy {
    Policy {
        initial: Duration::from_millis(250),
        max_delay: Duration::from_secs(4),
        deadline: Duration::from_secs(30 * 60),
        max_attempts: opts.attempts.max(1),
    }
}

/// Fills a new cache entry with the bytes of component `name`'s `url`,
/// from wherever the mirrors say; returns it uncommitted for the caller to
/// verify, with where the bytes came from (for messages).
pub async fn fetch_into(
    client: &reqwest::Client,
    cache: &Cache,
    algorithm: Algorithm,
    (name, url): (&str, &str),
    opts: &FetchOptions,
    bar: &Bar,
) -> Result<(Pending, String), FetchError> {
    match opts.mirrors.origin(url) {
        Origin::File(path) => {
            let pending = copy_file(cache, algorithm, name, url, &path, bar)?;
            Ok((pending, format!("{} (mirror of {url})", path.display())))
        }
        Origin::Http(from) => {
            if opts.offline {
                return Err(FetchError::Offline {
                    name: name.to_string(),
                    url: url.to_string(),
                    path: cache.dir().to_path_buf(),
                });
            }
            let shown = shown_url(url, &from);
            let pending = retry(&policy(opts), |_attempt| async {
                let mut pending = cache.pending(algorithm).map_err(Attempt::Fail)?;
                bar.restart();
                get(client, &from, &mut pending, bar)
                    .await
                    .map_err(|e| e.into_fetch_error(name, &shown))?;
                Ok(pending)
            })
            .await?;
            Ok((pending, shown))
        }
    }
}

/// The body of `url` as text (a checksum file), through the mirrors, with
/// the same timeouts and retries as downloads.
pub async fn get_text(
    client: &reqwest::Client,
    url: &str,
    opts: &FetchOptions,
) -> Result<String, FetchError> {
    let from = match opts.mirrors.origin(url) {
        Origin::File(path) => {
            return std::fs::read_to_string(&path).map_err(|source| FetchError::MirrorMissing {
                name: "checksum file".to_string(),
                url: url.to_string(),
                path,
                source,
            });
        }
        Origin::Http(from) => from,
    };
    let shown = shown_url(url, &from);
    if opts.offline {
        return Err(FetchError::OfflineText { url: shown });
    }
    retry(&policy(opts), |_attempt| async {
        let resp = client.get(&from).send().await.map_err(|e| {
            Failure::Transport(error_chain(&e)).into_fetch_error("checksum file", &shown)
        })?;
        check_status(resp.status()).map_err(|f| f.into_fetch_error("checksum file", &shown))?;
        resp.text().await.map_err(|e| {
            Failure::Transport(error_chain(&e)).into_fetch_error("checksum file", &shown)
        })
    })
    .await
}

fn shown_url(url: &str, from: &str) -> String {
    if url == from {
        url.to_string()
    } else {
        format!("{from} (mirror of {url})")
    }
}

/// Why one attempt failed, and whether another may succeed.
enum Failure {
    Status(u16, bool),
    Transport(String),
    Fatal(FetchError),
}

impl Failure {
    fn into_fetch_error(self, name: &str, url: &str) -> Attempt<FetchError> {
        let (name, url) = (name.to_string(), url.to_string());
        match self {
            Failure::Status(status, true) => {
                Attempt::Retry(FetchError::Status { name, url, status })
            }
            Failure::Status(status, false) => {
                Attempt::Fail(FetchError::Status { name, url, status })
            }
            Failure::Transport(message) => {
                Attempt::Retry(FetchError::Transport { name, url, message })
            }
            Failure::Fatal(e) => Attempt::Fail(e),
        }
    }
}

/// 5xx, 408 and 429 are worth another try; other failures are final.
fn check_status(status: reqwest::StatusCode) -> Result<(), Failure> {
    if status.is_success() {
        return Ok(());
    }
    let transient = status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429;
    Err(Failure::Status(status.as_u16(), transient))
}

async fn get(
    client: &reqwest::Client,
    url: &str,
    pending: &mut Pending,
    bar: &Bar,
) -> Result<(), Failure> {
    let mut resp = client.get(url).send().await.map_err(|e| Failure::Transport(error_chain(&e)))?;
    check_status(resp.status())?;
    if let Some(len) = resp.content_length() {
        bar.set_length(len);
    }
    while let Some(chunk) = resp.chunk().await.map_err(|e| Failure::Transport(error_chain(&e)))? {
        pending.write(&chunk).map_err(Failure::Fatal)?;
        bar.inc(chunk.len() as u64);
    }
    Ok(())
}

fn copy_file(
    cache: &Cache,
    algorithm: Algorithm,
    name: &str,
    url: &str,
    path: &Path,
    bar: &Bar,
) -> Result<Pending, FetchError> {
    let missing = |source| FetchError::MirrorMissing {
        name: name.to_string(),
        url: url.to_string(),
        path: PathBuf::from(path),
        source,
    };
    let mut file = File::open(path).map_err(missing)?;
    if let Ok(meta) = file.metadata() {
        bar.set_length(meta.len());
    }
    let mut pending = cache.pending(algorithm)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|source| FetchError::Io { path: path.to_path_buf(), source })?;
        if n == 0 {
            return Ok(pending);
        }
        pending.write(&buf[..n])?;
        bar.inc(n as u64);
    }
}
