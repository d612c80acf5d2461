//! Reads an EBS snapshot back through the EBS direct API, block by block,
//! into a raw disk file, and checks that it holds exactly a given image:
//! what an EC2 volume made from the snapshot would hold, so a test can boot
//! it.
//!
//! ListSnapshotBlocks (every page) names the blocks the snapshot holds;
//! GetSnapshotBlock fetches each with its token. Every block must be
//! `BlockSize` bytes, hash to the checksum the service sends with it, and
//! equal the image's block at that index (zero-padded past the image's
//! end); blocks not listed read as zeros on a volume, so the image must be
//! all zeros there. The file is `VolumeSize` GiB (sparse), written under a
//! temporary name and renamed once complete, then compared with the image
//! once more as written.
//!
//! Against moto 5.2.5 the snapshot must be read through
//! [`crate::fault_proxy::FaultProxy`]: moto answers `BlockSize: 512` while
//! it stores the 512 KiB blocks it was sent (AWS answers 524288), and the
//! proxy answers as AWS does. Read directly from moto, the first block's
//! length tells the mismatch and the read-back fails saying so.
//!
//! Each call has the SDK's timeouts and bounded retries (the client's
//! configuration, `keel_bootstrap::aws`), a timeout on reading the block's
//! body, and a few more rounds under [`BLOCK_RETRY`] when it failed in a
//! way worth retrying (throttling, 5xx, a reset, a body that does not hash
//! to its checksum).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use futures::stream::{self, TryStreamExt};
use keel_bootstrap::aws::{display_error, is_transient};
use keel_bootstrap::retry::{retry, Attempt, Policy};
use sha2::{Digest, Sha256};

/// GetSnapshotBlock calls in flight: moto answers from one Python process,
/// so a few keep it busy; at most this many 512 KiB blocks are in memory.
pub const READ_CONCURRENCY: usize = 8;

/// Rounds of one call beyond the SDK's own attempts.
pub const BLOCK_RETRY: Policy = Policy {
    initial: Duration::from_millis(500),
    max_delay: Duration::from_secs(8),
    deadline: Duration::from_secs(300),
    max_attempts: 4,
};

/// Reading one block's body once GetSnapshotBlock answered (the SDK's
/// timeouts end with the reply's head).
const BODY_TIMEOUT: Duration = Duration::from_secs(60);

const GIB: u64 = 1 << 30;

/// What a read-back found.
#[derive(Debug, Clone)]
pub struct ReadBack {
    pub snapshot_id: String,
    /// The raw disk file: the volume a snapshot of this size makes.
    pub path: PathBuf,
    pub volume_bytes: u64,
    pub block_size: u64,
    /// The block indices ListSnapshotBlocks named, in order.
    pub listed: Vec<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{call} of snapshot {snapshot_id}{}: {message}", block_suffix(*index))]
    Call { call: &'static str, snapshot_id: String, index: Option<u64>, message: String },

    #[error("snapshot {snapshot_id}: {message}")]
    Snapshot { snapshot_id: String, message: String },

    #[error(
        "snapshot {snapshot_id} block {index} (bytes {offset}..{end}) {source_text}: sha256 {actual}, \
         but the image's block {index} has sha256 {expected}",
        end = offset + block_size,
        source_text = if *listed { "as GetSnapshotBlock returned it" } else { "is not listed by ListSnapshotBlocks (reads as zeros)" }
    )]
    Mismatch {
        snapshot_id: String,
        index: u64,
        offset: u64,
        block_size: u64,
        listed: bool,
        expected: String,
        actual: String,
    },

    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

fn block_suffix(index: Option<u64>) -> String {
    index.map(|i| format!(" block {i}")).unwrap_or_default()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The blocks a snapshot holds, from every page of ListSnapshotBlocks.
struct Listing {
    volume_bytes: u64,
    block_size: u64,
    /// Block index -> block token.
    blocks: BTreeMap<u64, String>,
}

async fn list(ebs: &aws_sdk_ebs::Client, snapshot_id: &str) -> Result<Listing, Error> {
    let bad = |message: String| Error::Snapshot { snapshot_id: snapshot_id.into(), message };
    let mut blocks = BTreeMap::new();
    let mut sizes: Option<(i64, i32)> = None;
    let mut next: Option<String> = None;
    loop {
        let page = retry(&BLOCK_RETRY, |_| {
            let call =
                ebs.list_snapshot_blocks().snapshot_id(snapshot_id).set_next_token(next.clone());
            async move {
                call.send().await.map_err(|e| {
                    let err = Error::Call {
                        call: "ListSnapshotBlocks",
                        snapshot_id: snapshot_id.into(),
                        index: None,
                        message: display_error(&e),
                    };
                    if is_transient(&e) {
                        Attempt::Retry(err)
                    } else {
                        Attempt::Fail(err)
                    }
                })
            }
        })
        .await?;
        let here = (
            page.volume_size()
                .ok_or_else(|| bad("ListSnapshotBlocks gave no VolumeSize".into()))?,
            page.block_size().ok_or_else(|| bad("ListSnapshotBlocks gave no BlockSize".into()))?,
        );
        if *sizes.get_or_insert(here) != here {
            return Err(bad(format!(
                "ListSnapshotBlocks pages disagree on (VolumeSize, BlockSize): {sizes:?} and {here:?}"
            )));
        }
        for b in page.blocks() {
            let index = b.block_index().ok_or_else(|| bad("a listed block has no index".into()))?;
            let token =
                b.block_token().ok_or_else(|| bad(format!("listed block {index} has no token")))?;
            let index = u64::try_from(index)
                .map_err(|_| bad(format!("ListSnapshotBlocks listed block {index}")))?;
            if blocks.insert(index, token.to_string()).is_some() {
                return Err(bad(format!("ListSnapshotBlocks listed block {index} twice")));
            }
        }
        next = page.next_token().filter(|t| !t.is_empty()).map(str::to_string);
        if next.is_none() {
            break;
        }
    }
    let (volume_gib, block_size) = sizes.unwrap_or_default();
    if volume_gib <= 0 || block_size <= 0 {
        return Err(bad(format!("VolumeSize {volume_gib} GiB, BlockSize {block_size}")));
    }
    let (volume_bytes, block_size) = (volume_gib as u64 * GIB, block_size as u64);
    if let Some((&last, _)) = blocks.last_key_value() {
        if (last + 1) * block_size > volume_bytes {
            return Err(bad(format!(
                "block {last} of {block_size} bytes lies past the end of a {volume_gib} GiB volume"
            )));
        }
    }
    Ok(Listing { volume_bytes, block_size, blocks })
}

/// Block `index` of `data`, zero-padded to `block_size` bytes past the
/// end of `data` (as a volume reads there): what an uploader sends and a
/// read-back gets for that block.
pub fn padded_block(data: &[u8], index: u64, block_size: usize) -> Vec<u8> {
    let start = (index as usize * block_size).min(data.len());
    let mut block = data[start..(start + block_size).min(data.len())].to_vec();
    block.resize(block_size, 0);
    block
}

/// Block `index` of `image` (`image_len` bytes), zero-padded to a whole
/// block.
fn image_block(
    image: &File,
    path: &Path,
    image_len: u64,
    index: u64,
    block_size: u64,
) -> Result<Vec<u8>, Error> {
    let mut buf = vec![0u8; block_size as usize];
    let offset = index * block_size;
    if offset < image_len {
        let len = (image_len - offset).min(block_size) as usize;
        image.read_exact_at(&mut buf[..len], offset).map_err(io(path))?;
    }
    Ok(buf)
}

/// GetSnapshotBlock for one listed block: its bytes, checked against the
/// checksum the service sent with them.
async fn fetch(
    ebs: &aws_sdk_ebs::Client,
    snapshot_id: &str,
    index: u64,
    token: &str,
    block_size: u64,
) -> Result<Vec<u8>, Error> {
    let fail = |message: String| Error::Call {
        call: "GetSnapshotBlock",
        snapshot_id: snapshot_id.into(),
        index: Some(index),
        message,
    };
    let index_i32 =
        i32::try_from(index).map_err(|_| fail("the block index does not fit the API".into()))?;
    retry(&BLOCK_RETRY, |_| {
        let call = ebs
            .get_snapshot_block()
            .snapshot_id(snapshot_id)
            .block_index(index_i32)
            .block_token(token);
        async move {
            let out = call.send().await.map_err(|e| {
                let err = fail(display_error(&e));
                if is_transient(&e) {
                    Attempt::Retry(err)
                } else {
                    Attempt::Fail(err)
                }
            })?;
            let (length, checksum, algorithm) = (
                out.data_length(),
                out.checksum().map(str::to_string),
                out.checksum_algorithm().map(|a| a.as_str().to_string()),
            );
            let body = match tokio::time::timeout(BODY_TIMEOUT, out.block_data.collect()).await {
                Ok(Ok(b)) => b.into_bytes().to_vec(),
                Ok(Err(e)) => return Err(Attempt::Retry(fail(format!("reading the body: {e}")))),
                Err(_) => {
                    return Err(Attempt::Retry(fail(format!(
                        "reading the body took more than {} s",
                        BODY_TIMEOUT.as_secs()
                    ))))
                }
            };
            if body.len() as u64 != block_size || length.map(|l| l as u64) != Some(block_size) {
                // Not a transport fault: the snapshot's blocks are not
                // the size the listing announced.
                return Err(Attempt::Fail(fail(format!(
                    "{} bytes (DataLength {length:?}), but ListSnapshotBlocks announced {block_size}-byte blocks{}",
                    body.len(),
                    if block_size == 512 {
                        " (moto 5.2.5 answers BlockSize 512 while it keeps the 524288-byte blocks it was sent: read it through keel_testkit::fault_proxy, which answers 524288 as AWS does)"
                    } else {
                        ""
                    }
                ))));
            }
            if algorithm.as_deref() != Some("SHA256") {
                return Err(Attempt::Fail(fail(format!(
                    "checksum algorithm {algorithm:?}, expected SHA256"
                ))));
            }
            let digest = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&body));
            if checksum.as_deref() != Some(digest.as_str()) {
                // On AWS the service's checksum of what it sends (a
                // difference is damage on the way: try again); on moto the
                // checksum sent with the upload, which moto never checks.
                return Err(Attempt::Retry(fail(format!(
                    "the body hashes to sha256 {digest} (base64), the x-amz-Checksum it came with says {checksum:?}"
                ))));
            }
            Ok(body)
        }
    })
    .await
}

/// Reads snapshot `snapshot_id` back through `ebs` into `out` (replaced
/// only once complete and checked) and checks that it holds `image`.
pub async fn read_back(
    ebs: &aws_sdk_ebs::Client,
    snapshot_id: &str,
    image: &Path,
    out: &Path,
) -> Result<ReadBack, Error> {
    let listing = list(ebs, snapshot_id).await?;
    let image_file = File::open(image).map_err(io(image))?;
    let image_len = image_file.metadata().map_err(io(image))?.len();
    if image_len > listing.volume_bytes {
        return Err(Error::Snapshot {
            snapshot_id: snapshot_id.into(),
            message: format!(
                "a {} GiB volume cannot hold {} ({image_len} bytes)",
                listing.volume_bytes / GIB,
                image.display()
            ),
        });
    }
    let partial = out.with_extension("partial");
    let result = write_checked(ebs, snapshot_id, &listing, &image_file, image, image_len, &partial)
        .await
        .and_then(|()| std::fs::rename(&partial, out).map_err(io(out)));
    if result.is_err() {
        // Nothing half-read stays under either name.
        let _ = std::fs::remove_file(&partial);
    }
    result?;
    Ok(ReadBack {
        snapshot_id: snapshot_id.into(),
        path: out.to_path_buf(),
        volume_bytes: listing.volume_bytes,
        block_size: listing.block_size,
        listed: listing.blocks.keys().copied().collect(),
    })
}

/// Fetches every listed block into `partial` (a sparse file of the
/// volume's size), checking each against the image, then compares the
/// whole file with the image.
async fn write_checked(
    ebs: &aws_sdk_ebs::Client,
    snapshot_id: &str,
    listing: &Listing,
    image_file: &File,
    image: &Path,
    image_len: u64,
    partial: &Path,
) -> Result<(), Error> {
    let disk = File::create(partial).map_err(io(partial))?;
    disk.set_len(listing.volume_bytes).map_err(io(partial))?;
    let block_size = listing.block_size;
    let mismatch = |index: u64, listed: bool, expected: String, actual: String| Error::Mismatch {
        snapshot_id: snapshot_id.into(),
        index,
        offset: index * block_size,
        block_size,
        listed,
        expected,
        actual,
    };
    stream::iter(listing.blocks.iter().map(Ok))
        .try_for_each_concurrent(READ_CONCURRENCY, |(&index, token)| {
            let disk = &disk;
            async move {
                let got = fetch(ebs, snapshot_id, index, token, block_size).await?;
                let want = image_block(image_file, image, image_len, index, block_size)?;
                if got != want {
                    return Err(mismatch(index, true, sha256_hex(&want), sha256_hex(&got)));
                }
                disk.write_all_at(&got, index * block_size).map_err(io(partial))
            }
        })
        .await?;
    disk.sync_all().map_err(io(partial))?;
    drop(disk);

    // The file as written, block by block against the image: this also
    // finds the image's non-zero blocks the snapshot does not hold.
    let mut written = File::open(partial).map_err(io(partial))?;
    let mut got = vec![0u8; block_size as usize];
    for index in 0..listing.volume_bytes / block_size {
        written.read_exact(&mut got).map_err(io(partial))?;
        let want = image_block(image_file, image, image_len, index, block_size)?;
        if got != want {
            let listed = listing.blocks.contains_key(&index);
            return Err(mismatch(index, listed, sha256_hex(&want), sha256_hex(&got)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::padded_block;

    #[test]
    fn blocks_past_the_data_are_zero_padded() {
        let data: Vec<u8> = (1..=10).collect();
        assert_eq!(padded_block(&data, 0, 4), vec![1, 2, 3, 4]);
        assert_eq!(padded_block(&data, 2, 4), vec![9, 10, 0, 0], "a short last block");
        assert_eq!(padded_block(&data, 3, 4), vec![0, 0, 0, 0], "past the end");
    }
}
