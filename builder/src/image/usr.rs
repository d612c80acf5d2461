//! `/usr` as a compressed erofs image and its dm-verity hash tree, both
//! made by the tools tree's mkfs.erofs and veritysetup with fixed UUIDs,
//! salt and timestamps, so that the root hash depends only on the inputs.

use std::path::Path;

use uuid::Uuid;

use super::tools::{Tools, WORK};
use super::BuildError;

pub struct Usr {
    /// 64 hex digits; its first and second halves are the usr and
    /// usr-verity partition UUIDs.
    pub root_hash: String,
}

/// Makes `work/usr.erofs` from `work/<tree>/usr` and `work/usr.verity`.
pub fn make(
    tools: &Tools,
    work: &Path,
    tree: &str,
    epoch: u64,
    fs_uuid: Uuid,
    verity_uuid: Uuid,
    salt: &[u8; 32],
) -> Result<Usr, BuildError> {
    tools.run(
        work,
        "/usr/bin/mkfs.erofs",
        &[
            "--quiet".into(),
            "-zlz4hc".into(),
            // One compression thread: erofs-utils 1.8's multi-threaded
            // compressor can deadlock (a condition-variable wait, erofs-utils
            // issue 34, fixed upstream in 2026). A build here hung in it
            // with every thread waiting, on a disk that had just filled up;
            // single-threaded, it fails with an error instead.
            "--workers=1".into(),
            format!("-T{epoch}"),
            "--ignore-mtime".into(),
            format!("-U{fs_uuid}"),
            format!("{WORK}/usr.erofs"),
            format!("{WORK}/{tree}/usr"),
        ],
        &[("SOURCE_DATE_EPOCH", epoch.to_string())],
    )?;
    let out = tools.run(
        work,
        "/usr/sbin/veritysetup",
        &[
            "format".into(),
            format!("--salt={}", hex::encode(salt)),
            format!("--uuid={verity_uuid}"),
            format!("{WORK}/usr.erofs"),
            format!("{WORK}/usr.verity"),
        ],
        &[],
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let root_hash = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:").map(|h| h.trim().to_string()))
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| BuildError::NoRootHash { stdout: stdout.to_string() })?;
    Ok(Usr { root_hash })
}

/// The partition UUIDs systemd derives from a root hash
/// ([`keel_contract::gpt::usr_partition_uuids`]).
pub fn partition_uuids(root_hash: &str) -> Result<(Uuid, Uuid), BuildError> {
    keel_contract::gpt::usr_partition_uuids(root_hash).ok_or_else(|| BuildError::BadRootHash {
        hash: root_hash.to_string(),
        source: "not 64 hex digits".into(),
    })
}
