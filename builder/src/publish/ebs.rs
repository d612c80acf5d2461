//! Uploading a raw image into an EBS snapshot with the EBS direct APIs:
//! StartSnapshot, PutSnapshotBlock for every 512 KiB block that is not all
//! zeros (with its SHA-256), CompleteSnapshot with the linear aggregate
//! checksum (SHA-256 over the per-block digests in block order, as AWS
//! documents and coldsnap does), then a wait until EC2 reports the
//! snapshot `completed`.
//!
//! The snapshot is not tagged here: the caller tags it only once it is
//! complete, so a rerun that looks snapshots up by tag never finds a half
//! upload. A failed upload is deleted (best effort) and every block that
//! failed is reported at once.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ebs::primitives::ByteStream;
use aws_sdk_ebs::types::{ChecksumAggregationMethod, ChecksumAlgorithm};
use base64::Engine;
use futures::stream::{self, StreamExt};
use indicatif::ProgressBar;
use keel_bootstrap::aws::is_transient;
use keel_bootstrap::retry::{retry, Attempt, Policy};
use sha2::{Digest, Sha256};

use super::error::{aws, BlockFailure, Error};
use super::image::Image;
use super::wait::{until_state, Seen};

/// One block's upload: its index and SHA-256 when sent, `None` when all
/// zero (skipped), or why it failed.
type BlockOutcome = Result<Option<(u64, [u8; 32])>, BlockFailure>;

/// The EBS direct APIs' block size (AWS answers StartSnapshot with it).
pub const BLOCK_SIZE: usize = 524_288;

/// PutSnapshotBlock calls in flight. 64 keeps a long, high-latency path
/// busy (at 100 ms per call, 64 × 512 KiB per 100 ms is ~320 MiB/s) while
/// holding at most 64 × 512 KiB = 32 MiB of blocks in memory. It is
/// coldsnap's default too, so the benchmark compares like with like.
pub const UPLOAD_CONCURRENCY: usize = 64;

/// Retries of one block beyond the SDK's own (which already retries
/// throttling and 5xx `MAX_ATTEMPTS` times): a block that fails a whole
/// SDK round is tried again a few times before the upload gives up.
const BLOCK_RETRY: Policy = Policy {
    initial: Duration::from_millis(500),
    max_delay: Duration::from_secs(8),
    deadline: Duration::from_secs(300),
    max_attempts: 4,
};

/// Waiting for EC2 to report the snapshot completed.
const COMPLETION_WAIT: Policy = Policy {
    initial: Duration::from_secs(1),
    max_delay: Duration::from_secs(15),
    deadline: Duration::from_secs(30 * 60),
    max_attempts: 500,
};

/// AWS cancels a started snapshot that sees no block or no completion for
/// this many minutes, so an interrupted upload does not linger.
const ABANDON_AFTER_MINUTES: i32 = 60;

const GIB: u64 = 1 << 30;

/// All zeros, to compare blocks against (a memcmp, fast in any build).
static ZEROS: [u8; BLOCK_SIZE] = [0; BLOCK_SIZE];

#[derive(Debug)]
pub struct Upload {
    pub snapshot_id: String,
    /// Blocks sent.
    pub uploaded: u64,
    /// All-zero blocks not sent.
    pub skipped: u64,
}

/// Uploads `image` into a new snapshot in `region`.
pub async fn upload(
    ebs: &aws_sdk_ebs::Client,
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    image: &Image,
    progress: &ProgressBar,
) -> Result<Upload, Error> {
    let volume_gib = image.size.div_ceil(GIB).max(1);
    let started = ebs
        .start_snapshot()
        .volume_size(volume_gib as i64)
        .description(image.description())
        .timeout(ABANDON_AFTER_MINUTES)
        .client_token(client_token())
        .send()
        .await
        .map_err(|e| aws("StartSnapshot", region, format!("{volume_gib} GiB"), e))?;
    let snapshot_id = started
        .snapshot_id()
        .ok_or_else(|| Error::Incomplete {
            call: "StartSnapshot",
            region: region.into(),
            target: format!("{volume_gib} GiB"),
            missing: "a snapshot id",
        })?
        .to_string();
    if let Some(size) = started.block_size() {
        if size as usize != BLOCK_SIZE {
            // moto answers 512; AWS answers 524288 and takes nothing else.
            progress.suspend(|| {
                eprintln!(
                    "{region}: StartSnapshot announced {size}-byte blocks; uploading {BLOCK_SIZE}-byte blocks as AWS documents"
                )
            });
        }
    }

    let file = std::fs::File::open(&image.path)
        .map_err(|source| Error::Read { path: image.path.clone(), source })?;
    let file = Arc::new(file);
    let blocks = image.size.div_ceil(BLOCK_SIZE as u64);
    let results: Vec<BlockOutcome> = stream::iter(0..blocks)
        .map(|index| {
            let file = Arc::clone(&file);
            let snapshot_id = snapshot_id.clone();
            async move {
                let r = upload_block(ebs, region, &snapshot_id, image, file, index).await;
                progress.inc((image.size - index * BLOCK_SIZE as u64).min(BLOCK_SIZE as u64));
                r
            }
        })
        .buffer_unordered(UPLOAD_CONCURRENCY)
        .collect()
        .await;

    let mut digests = Vec::new();
    let mut failures = Vec::new();
    let mut skipped = 0;
    for r in results {
        match r {
            Ok(Some(d)) => digests.push(d),
            Ok(None) => skipped += 1,
            Err(f) => failures.push(f),
        }
    }
    if !failures.is_empty() {
        failures.sort_by_key(|f| f.index);
        let cleanup = match ec2.delete_snapshot().snapshot_id(&snapshot_id).send().await {
            Ok(_) => format!("snapshot {snapshot_id} deleted"),
            Err(e) => format!(
                "{}; it is not tagged, so a rerun ignores it, and AWS cancels it after {ABANDON_AFTER_MINUTES} minutes",
                aws("DeleteSnapshot", region, snapshot_id.clone(), e)
            ),
        };
        return Err(Error::Blocks {
            region: region.into(),
            snapshot_id,
            total: digests.len() as u64 + failures.len() as u64,
            failures,
            cleanup,
        });
    }
    digests.sort_by_key(|(i, _)| *i);
    let aggregate = linear_checksum(digests.iter().map(|(_, d)| d));
    ebs.complete_snapshot()
        .snapshot_id(&snapshot_id)
        .changed_blocks_count(digests.len() as i32)
        .checksum(aggregate)
        .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
        .checksum_aggregation_method(ChecksumAggregationMethod::ChecksumAggregationLinear)
        .send()
        .await
        .map_err(|e| aws("CompleteSnapshot", region, snapshot_id.clone(), e))?;
    wait_completed(ec2, region, &snapshot_id).await?;
    Ok(Upload { snapshot_id, uploaded: digests.len() as u64, skipped })
}

/// Reads block `index` and uploads it unless it is all zeros. Returns its
/// digest when uploaded.
async fn upload_block(
    ebs: &aws_sdk_ebs::Client,
    region: &str,
    snapshot_id: &str,
    image: &Image,
    file: Arc<std::fs::File>,
    index: u64,
) -> BlockOutcome {
    let fail = |message: String| BlockFailure { index, message };
    let offset = index * BLOCK_SIZE as u64;
    let len = (image.size - offset).min(BLOCK_SIZE as u64) as usize;
    let block = tokio::task::spawn_blocking(move || {
        // The last block may be short: EBS takes whole blocks, so it is
        // padded with zeros (the volume reads zeros there anyway).
        let mut buf = vec![0u8; BLOCK_SIZE];
        file.read_exact_at(&mut buf[..len], offset).map(|()| buf)
    })
    .await
    .map_err(|e| fail(format!("reading at offset {offset}: {e}")))?
    .map_err(|e| fail(format!("reading {} at offset {offset}: {e}", image.path.display())))?;
    if block[..] == ZEROS[..] {
        return Ok(None);
    }
    let digest: [u8; 32] = Sha256::digest(&block).into();
    let checksum = base64::engine::general_purpose::STANDARD.encode(digest);
    let data = bytes::Bytes::from(block);
    retry(&BLOCK_RETRY, |_| {
        let put = ebs
            .put_snapshot_block()
            .snapshot_id(snapshot_id)
            .block_index(index as i32)
            .block_data(ByteStream::from(data.clone()))
            .data_length(BLOCK_SIZE as i32)
            .checksum(&checksum)
            .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256);
        async move {
            put.send().await.map_err(|e| {
                let transient = is_transient(&e);
                let f = fail(aws("PutSnapshotBlock", region, snapshot_id, e).to_string());
                if transient {
                    Attempt::Retry(f)
                } else {
                    Attempt::Fail(f)
                }
            })
        }
    })
    .await?;
    Ok(Some((index, digest)))
}

/// The linear aggregate checksum: base64 of SHA-256 over the per-block
/// SHA-256 digests in block order.
pub fn linear_checksum<'a>(digests: impl Iterator<Item = &'a [u8; 32]>) -> String {
    let mut h = Sha256::new();
    for d in digests {
        h.update(d);
    }
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// A fresh token per upload: a rerun must start a new snapshot, never get
/// the one an interrupted run left behind.
fn client_token() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::thread_rng().gen();
    format!("keel-{}", hex::encode(bytes))
}

async fn wait_completed(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    snapshot_id: &str,
) -> Result<(), Error> {
    let what = format!("snapshot {snapshot_id}");
    until_state(
        &COMPLETION_WAIT,
        &what,
        region,
        "completed",
        |s| s != "error",
        || async {
            let out = ec2
                .describe_snapshots()
                .snapshot_ids(snapshot_id)
                .send()
                .await
                .map_err(|e| aws("DescribeSnapshots", region, snapshot_id, e))?;
            let snap = out.snapshots().first();
            Ok(Seen {
                state: snap
                    .and_then(|s| s.state())
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
                reason: snap.and_then(|s| s.state_message()).unwrap_or("no message").to_string(),
                value: snap.map(|_| ()),
            })
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_checksum_hashes_the_digests_in_order() {
        let a: [u8; 32] = Sha256::digest(b"a").into();
        let b: [u8; 32] = Sha256::digest(b"b").into();
        let mut cat = Vec::new();
        cat.extend_from_slice(&a);
        cat.extend_from_slice(&b);
        let want = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&cat));
        assert_eq!(linear_checksum([a, b].iter()), want);
        assert_ne!(linear_checksum([b, a].iter()), want);
    }
}
