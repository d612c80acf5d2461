//! The snapshot read-back (`keel_testkit::readback`) against moto's server
//! through the fault proxy (which answers AWS's block size): a snapshot
//! uploaded here with the EBS direct API reads back as the image it holds,
//! and each way it can differ from the image is named with the snapshot,
//! the block and both sha256s. Needs moto (`scripts/setup`).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use aws_sdk_ebs::primitives::ByteStream;
use aws_sdk_ebs::types::ChecksumAlgorithm;
use base64::Engine;
use keel_testkit::fault_proxy::{Fault, FaultProxy};
use keel_testkit::moto::Moto;
use keel_testkit::readback::{padded_block, read_back, Error};
use sha2::{Digest, Sha256};

const BLOCK: usize = 524_288;
/// Blocks 0, 2 and 5 hold data; block 5 is a short last block.
const IMAGE_LEN: usize = 5 * BLOCK + 4096;
const DATA: [u64; 3] = [0, 2, 5];

fn image_bytes() -> Vec<u8> {
    let mut data = vec![0u8; IMAGE_LEN];
    for &b in &DATA {
        let start = b as usize * BLOCK;
        let end = (start + BLOCK).min(IMAGE_LEN);
        for (i, byte) in data[start..end].iter_mut().enumerate() {
            *byte = ((i * 13 + b as usize) % 251) as u8 + 1;
        }
    }
    data
}

fn block(data: &[u8], index: u64) -> Vec<u8> {
    padded_block(data, index, BLOCK)
}

fn b64_sha256(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(data))
}

async fn ebs(endpoint: &str) -> aws_sdk_ebs::Client {
    let target = keel_bootstrap::aws::Target {
        region: Some("us-east-1".into()),
        endpoint_url: Some(endpoint.into()),
    };
    let config = keel_testkit::moto::with_test_keys(keel_bootstrap::aws::sdk_config(&target).await);
    aws_sdk_ebs::Client::new(&config)
}

/// Uploads `blocks` of `data` into a new 1 GiB snapshot; `bad_checksum`
/// sends that block with the checksum of other bytes (moto keeps it).
async fn upload(
    ebs: &aws_sdk_ebs::Client,
    data: &[u8],
    blocks: &[u64],
    bad_checksum: Option<u64>,
) -> String {
    let started = ebs.start_snapshot().volume_size(1).send().await.unwrap();
    let id = started.snapshot_id().unwrap().to_string();
    for &i in blocks {
        let bytes = block(data, i);
        let checksum =
            if bad_checksum == Some(i) { b64_sha256(b"other bytes") } else { b64_sha256(&bytes) };
        ebs.put_snapshot_block()
            .snapshot_id(&id)
            .block_index(i as i32)
            .block_data(ByteStream::from(bytes))
            .data_length(BLOCK as i32)
            .checksum(checksum)
            .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
            .send()
            .await
            .unwrap();
    }
    ebs.complete_snapshot()
        .snapshot_id(&id)
        .changed_blocks_count(blocks.len() as i32)
        .send()
        .await
        .unwrap();
    id
}

fn write_image(dir: &Path, data: &[u8]) -> PathBuf {
    let path = dir.join("image.raw");
    let f = std::fs::File::create(&path).unwrap();
    f.write_all_at(data, 0).unwrap();
    path
}

/// Nothing is left under the final or the temporary name after a failure.
fn assert_nothing_left(out: &Path) {
    assert!(!out.exists(), "{} left after a failed read-back", out.display());
    assert!(!out.with_extension("partial").exists(), "a partial read-back was left");
}

/// A moto server, the proxy in front of it, a snapshot of `uploaded`
/// blocks of [`image_bytes`] (block `bad_checksum` sent with a wrong
/// checksum), and `image` written as the image to compare with.
struct Case {
    _moto: Moto,
    proxy: FaultProxy,
    ebs: aws_sdk_ebs::Client,
    id: String,
    _dir: tempfile::TempDir,
    image: PathBuf,
    out: PathBuf,
}

impl Case {
    /// `through_proxy: false` reads straight from moto.
    async fn new(
        uploaded: &[u64],
        bad_checksum: Option<u64>,
        image: &[u8],
        through_proxy: bool,
    ) -> Case {
        let moto = Moto::start().unwrap();
        let proxy = FaultProxy::start(&moto.endpoint, false).unwrap();
        let ebs = ebs(if through_proxy { &proxy.endpoint } else { &moto.endpoint }).await;
        let id = upload(&ebs, &image_bytes(), uploaded, bad_checksum).await;
        let dir = tempfile::tempdir().unwrap();
        let image = write_image(dir.path(), image);
        let out = dir.path().join("disk.raw");
        Case { _moto: moto, proxy, ebs, id, _dir: dir, image, out }
    }

    async fn read_back(&self) -> Result<keel_testkit::readback::ReadBack, Error> {
        read_back(&self.ebs, &self.id, &self.image, &self.out).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_back_the_image_a_snapshot_holds() {
    let data = image_bytes();
    let c = Case::new(&DATA, None, &data, true).await;
    let r = c.read_back().await.unwrap();
    assert_eq!(r.listed, DATA);
    assert_eq!(r.block_size, BLOCK as u64);
    assert_eq!(r.volume_bytes, 1 << 30);
    let disk = std::fs::read(&c.out).unwrap();
    assert_eq!(disk.len(), 1 << 30, "the disk is the volume's size");
    assert!(disk[..IMAGE_LEN] == data[..], "the disk starts with the image");
    assert!(disk[IMAGE_LEN..].iter().all(|&b| b == 0), "and is zeros after it");
    assert!(!c.out.with_extension("partial").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_that_differs_is_named_with_both_sha256s() {
    let data = image_bytes();
    let mut changed = data.clone();
    changed[2 * BLOCK + 100] ^= 1;
    let c = Case::new(&DATA, None, &changed, true).await;
    let err = c.read_back().await.unwrap_err();
    let text = err.to_string();
    match &err {
        Error::Mismatch { snapshot_id, index, listed, expected, actual, .. } => {
            assert_eq!((snapshot_id.as_str(), *index, *listed), (c.id.as_str(), 2, true));
            assert_eq!(expected, &hex::encode(Sha256::digest(block(&changed, 2))));
            assert_eq!(actual, &hex::encode(Sha256::digest(block(&data, 2))));
        }
        other => panic!("expected a mismatch of block 2: {other}"),
    }
    assert!(text.contains(&c.id) && text.contains("block 2"), "{text}");
    assert_nothing_left(&c.out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_data_the_snapshot_does_not_hold_is_named() {
    // Block 2 never uploaded: a volume reads zeros there.
    let c = Case::new(&[0, 5], None, &image_bytes(), true).await;
    let err = c.read_back().await.unwrap_err();
    match &err {
        Error::Mismatch { index: 2, listed: false, actual, .. } => {
            assert_eq!(actual, &hex::encode(Sha256::digest(vec![0u8; BLOCK])));
        }
        other => panic!("expected unlisted block 2: {other}"),
    }
    assert!(err.to_string().contains("not listed by ListSnapshotBlocks"), "{err}");
    assert_nothing_left(&c.out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_that_does_not_match_its_checksum_is_refused() {
    // moto keeps whatever checksum the upload sent and returns it with the
    // block: a wrong one is what an uploader's checksum bug looks like.
    let data = image_bytes();
    let c = Case::new(&DATA, Some(5), &data, true).await;
    let err = c.read_back().await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Call { call: "GetSnapshotBlock", index: Some(5), .. }), "{text}");
    assert!(text.contains(&c.id) && text.contains(&b64_sha256(&block(&data, 5))), "{text}");
    // Retried a bounded number of times, then given up.
    let attempts = keel_testkit::readback::BLOCK_RETRY.max_attempts as usize;
    assert_eq!(gets_of_block(&c, 5, attempts).await, attempts, "GETs of block 5");
    assert_nothing_left(&c.out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn straight_from_moto_the_wrong_block_size_is_named() {
    // moto 5.2.5 answers BlockSize 512 for 524288-byte blocks.
    let c = Case::new(&DATA, None, &image_bytes(), false).await;
    let err = c.read_back().await.unwrap_err().to_string();
    assert!(err.contains("512-byte blocks") && err.contains("fault_proxy"), "{err}");
    assert_nothing_left(&c.out);
}

/// The GETs of block `index` the proxy logged (it logs a request once its
/// reply is written, so the last may be logged just after the client saw
/// it: waits up to a few seconds for `at_least`).
async fn gets_of_block(c: &Case, index: u64, at_least: usize) -> usize {
    let path = format!("/snapshots/{}/blocks/{index}", c.id);
    let gets = || {
        c.proxy.requests().iter().filter(|r| r.method == "GET" && r.path.starts_with(&path)).count()
    };
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while gets() < at_least && std::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    gets()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_5xx_on_a_block_are_retried() {
    let data = image_bytes();
    let c = Case::new(&DATA, None, &data, true).await;
    c.proxy.fail_get_block(2, vec![Fault::Throttle, Fault::Status(503)]);
    let r = c.read_back().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.listed, DATA);
    assert_eq!(gets_of_block(&c, 2, 3).await, 3, "two faults, then the block");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_error_on_a_block_is_not_retried_and_names_it() {
    let c = Case::new(&DATA, None, &image_bytes(), true).await;
    c.proxy.fail_get_block(5, vec![Fault::Status(400)]);
    let err = c.read_back().await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Call { call: "GetSnapshotBlock", index: Some(5), .. }), "{text}");
    assert!(text.contains(&c.id) && text.contains("ValidationException"), "{text}");
    assert_eq!(gets_of_block(&c, 5, 1).await, 1, "a 400 is final");
    assert_nothing_left(&c.out);
}
