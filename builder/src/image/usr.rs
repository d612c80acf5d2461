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

/// The partition UUIDs systemd derives from a root hash: the first 128 bits
/// name the data partition, the last 128 bits the hash partition.
pub fn partition_uuids(root_hash: &str) -> Result<(Uuid, Uuid), BuildError> {
    let bad = |source: Box<dyn std::error::Error + Send + Sync>| BuildError::BadRootHash {
        hash: root_hash.to_string(),
        source,
    };
    let bytes = hex::decode(root_hash).map_err(|e| bad(e.into()))?;
    let half =
        |b: &[u8]| -> Result<Uuid, BuildError> { Uuid::from_slice(b).map_err(|e| bad(e.into())) };
    Ok((half(&bytes[..16])?, half(&bytes[bytes.len() - 16..])?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_uuids_follow_the_root_hash() {
        let h = "0123456789abcdef0123456789abcdef".to_string() + "fedcba9876543210fedcba9876543210";
        let (data, hash) = partition_uuids(&h).unwrap();
        assert_eq!(data.to_string(), "01234567-89ab-cdef-0123-456789abcdef");
        assert_eq!(hash.to_string(), "fedcba98-7654-3210-fedc-ba9876543210");
    }
}
