//! etcd backups in S3: a snapshot of the leader's backend, sealed with the
//! bundles' KMS envelope (`envelope`, `bundle`: one file,
//! `etcd/snapshot.db`) under the encryption context `{"keel:cluster":
//! cluster, "keel:purpose": "etcd-snapshot"}`, stored as
//! `<prefix>/etcd/snapshots/<unix seconds, 12 digits>.snap`, the newest
//! `retention` kept. A snapshot is restored with `etcdctl snapshot
//! restore` into a new data directory (a formation that finds no cluster
//! and a snapshot does this by itself; `keel etcd restore` by hand).

use std::collections::HashMap;
use std::path::Path;

use aws_sdk_s3::primitives::ByteStream;
use zeroize::Zeroizing;

use crate::aws::AwsError;
use crate::bundle::{self, Bundle, BundleError, BundleFile, Header};
use crate::envelope::{self, EnvelopeError};
use crate::{tags, Role};

/// The encryption context's second entry.
pub const PURPOSE_KEY: &str = "keel:purpose";
pub const PURPOSE: &str = "etcd-snapshot";
/// The one file in a sealed snapshot.
pub const SNAPSHOT_FILE: &str = "etcd/snapshot.db";
/// Snapshots kept when the user data says nothing.
pub const DEFAULT_RETENTION: usize = 24;
/// etcdutl restores snapshots from etcd 3.5 on (3.6 has no `etcdctl
/// snapshot restore`); Debian's etcd-client etcdctl does on 3.4 and 3.5.
pub const ETCDUTL: &str = "/usr/bin/etcdutl";
pub const ETCDCTL: &str = "/usr/bin/etcdctl";

/// The program that restores snapshots on this system.
pub fn restore_tool() -> &'static Path {
    if Path::new(ETCDUTL).exists() {
        Path::new(ETCDUTL)
    } else {
        Path::new(ETCDCTL)
    }
}
/// A sealed snapshot larger than this is refused before it is read.
pub const MAX_SNAPSHOT_BYTES: i64 = 8 * 1024 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("S3 {op} s3://{bucket}/{key}: {source}")]
    S3 { op: &'static str, bucket: String, key: String, source: AwsError },
    #[error("S3 GetObject s3://{bucket}/{key}: {size} bytes is too large")]
    TooLarge { bucket: String, key: String, size: i64 },
    #[error(
        "snapshot s3://{bucket}/{key} was sealed for cluster {found:?}, not {expected:?}: refused"
    )]
    OtherCluster { bucket: String, key: String, found: String, expected: String },
    #[error("snapshot s3://{bucket}/{key}: {source}")]
    Envelope { bucket: String, key: String, source: Box<EnvelopeError> },
    #[error("snapshot s3://{bucket}/{key} holds no {SNAPSHOT_FILE}")]
    Empty { bucket: String, key: String },
    #[error("the etcd bundle s3://{bucket}/{key} names no KMS key: {source}")]
    KeyOfBundle { bucket: String, key: String, source: Box<BundleError> },
    #[error("{what}: {message}")]
    Restore { what: String, message: String },
}

/// The KMS encryption context of a cluster's snapshots.
pub fn encryption_context(cluster: &str) -> HashMap<String, String> {
    HashMap::from([
        (tags::CLUSTER.to_string(), cluster.to_string()),
        (PURPOSE_KEY.to_string(), PURPOSE.to_string()),
    ])
}

/// One stored snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Listed {
    pub key: String,
    pub bytes: i64,
    /// When it was taken (seconds since the epoch, from its key).
    pub taken_unix: u64,
}

/// A cluster's snapshots in S3.
#[derive(Debug, Clone)]
pub struct Snapshots {
    pub s3: aws_sdk_s3::Client,
    pub kms: aws_sdk_kms::Client,
    pub bucket: String,
    pub prefix: String,
    pub cluster: String,
}

impl Snapshots {
    pub fn base(&self) -> String {
        bundle::under_prefix(&self.prefix, "etcd/snapshots/")
    }

    pub fn key_for(&self, taken_unix: u64) -> String {
        format!("{}{taken_unix:012}.snap", self.base())
    }

    fn s3_err(&self, op: &'static str, key: &str, source: impl Into<AwsError>) -> SnapshotError {
        s3_error(op, &self.bucket, key, source)
    }

    /// Every snapshot, oldest first.
    pub async fn list(&self) -> Result<Vec<Listed>, SnapshotError> {
        let base = self.base();
        let mut out = Vec::new();
        let mut pages =
            self.s3.list_objects_v2().bucket(&self.bucket).prefix(&base).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.s3_err("ListObjectsV2", &base, e))?;
            for o in page.contents() {
                let Some(key) = o.key() else { continue };
                let Some(taken) = key
                    .strip_prefix(&base)
                    .and_then(|r| r.strip_suffix(".snap"))
                    .and_then(|t| t.parse().ok())
                else {
                    continue;
                };
                out.push(Listed {
                    key: key.to_string(),
                    bytes: o.size().unwrap_or(0),
                    taken_unix: taken,
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Seals `db` with a fresh data key of `kms_key_id` and stores it as
    /// the snapshot taken at `taken_unix`; returns its key.
    pub async fn upload(
        &self,
        kms_key_id: &str,
        db: &[u8],
        taken_unix: u64,
    ) -> Result<String, SnapshotError> {
        let key = self.key_for(taken_unix);
        let sealed_bundle = Bundle {
            cluster: self.cluster.clone(),
            role: Role::Etcd,
            files: vec![BundleFile {
                path: SNAPSHOT_FILE.into(),
                mode: 0o600,
                contents: Zeroizing::new(db.to_vec()),
            }],
        };
        let sealed = envelope::seal_with_context(
            &self.kms,
            kms_key_id,
            &sealed_bundle,
            encryption_context(&self.cluster),
        )
        .await
        .map_err(|source| SnapshotError::Envelope {
            bucket: self.bucket.clone(),
            key: key.clone(),
            source: Box::new(source),
        })?;
        self.s3
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .body(ByteStream::from(sealed))
            .send()
            .await
            .map_err(|e| self.s3_err("PutObject", &key, e))?;
        Ok(key)
    }

    /// Deletes all but the newest `keep` snapshots; returns what went.
    pub async fn prune(&self, keep: usize) -> Result<Vec<String>, SnapshotError> {
        let all = self.list().await?;
        let old = all.len().saturating_sub(keep.max(1));
        let mut gone = Vec::new();
        for s in &all[..old] {
            self.s3
                .delete_object()
                .bucket(&self.bucket)
                .key(&s.key)
                .send()
                .await
                .map_err(|e| self.s3_err("DeleteObject", &s.key, e))?;
            gone.push(s.key.clone());
        }
        Ok(gone)
    }

    /// Fetches and opens snapshot `key`: the backend's bytes. A snapshot
    /// sealed for another cluster is refused by name.
    pub async fn fetch(&self, key: &str) -> Result<Zeroizing<Vec<u8>>, SnapshotError> {
        let reply = self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.s3_err("GetObject", key, e))?;
        if let Some(size) = reply.content_length().filter(|s| *s > MAX_SNAPSHOT_BYTES) {
            return Err(SnapshotError::TooLarge {
                bucket: self.bucket.clone(),
                key: key.to_string(),
                size,
            });
        }
        let bytes =
            reply.body.collect().await.map_err(|e| self.s3_err("GetObject", key, e))?.into_bytes();
        if let Ok((h, _)) = Header::parse(&bytes) {
            if h.cluster != self.cluster {
                return Err(SnapshotError::OtherCluster {
                    bucket: self.bucket.clone(),
                    key: key.to_string(),
                    found: h.cluster,
                    expected: self.cluster.clone(),
                });
            }
        }
        let opened = envelope::open_with_context(
            &self.kms,
            &bytes,
            &self.cluster,
            Role::Etcd,
            encryption_context(&self.cluster),
            None,
        )
        .await
        .map_err(|source| SnapshotError::Envelope {
            bucket: self.bucket.clone(),
            key: key.to_string(),
            source: Box::new(source),
        })?;
        opened
            .files
            .into_iter()
            .find(|f| f.path == SNAPSHOT_FILE)
            .map(|f| f.contents)
            .ok_or(SnapshotError::Empty { bucket: self.bucket.clone(), key: key.to_string() })
    }
}

/// A failed S3 call on `key` in `bucket`.
fn s3_error(
    op: &'static str,
    bucket: &str,
    key: &str,
    source: impl Into<AwsError>,
) -> SnapshotError {
    SnapshotError::S3 {
        op,
        bucket: bucket.to_string(),
        key: key.to_string(),
        source: source.into(),
    }
}

/// The KMS key that sealed the role's bundle under `prefix` (snapshots are
/// sealed with the same key): read from the bundle's unencrypted header.
pub async fn kms_key_of_bundle(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    role: Role,
) -> Result<String, SnapshotError> {
    let key = bundle::object_key(prefix, role);
    let reply = s3
        .get_object()
        .bucket(bucket)
        .key(&key)
        .range("bytes=0-65535")
        .send()
        .await
        .map_err(|e| s3_error("GetObject", bucket, &key, e))?;
    let bytes = reply
        .body
        .collect()
        .await
        .map_err(|e| s3_error("GetObject", bucket, &key, e))?
        .into_bytes();
    let (header, _) = Header::parse(&bytes).map_err(|source| SnapshotError::KeyOfBundle {
        bucket: bucket.to_string(),
        key: key.clone(),
        source: Box::new(source),
    })?;
    Ok(header.kms_key_id)
}

/// Restores the backend snapshot `db_file` into `data_dir` (which must
/// hold no `member/`) as member `name` of a new cluster `initial` with
/// `token`, by `<tool> snapshot restore` (`restore_tool`) into a
/// directory beside it.
pub fn restore(
    etcdctl: &Path,
    db_file: &Path,
    data_dir: &Path,
    name: &str,
    initial: &[(String, String)],
    token: &str,
    peer_url: &str,
) -> Result<(), SnapshotError> {
    let fail = |message: String| SnapshotError::Restore {
        what: format!("restoring {} into {}", db_file.display(), data_dir.display()),
        message,
    };
    let staging = data_dir.with_file_name(format!(
        "{}.restore-{}",
        data_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .map_err(|e| fail(format!("clearing {}: {e}", staging.display())))?;
    }
    let ic = initial.iter().map(|(n, u)| format!("{n}={u}")).collect::<Vec<_>>().join(",");
    let out = std::process::Command::new(etcdctl)
        .env_clear()
        .env("ETCDCTL_API", "3")
        .arg("snapshot")
        .arg("restore")
        .arg(db_file)
        .args(["--name", name, "--initial-cluster", &ic, "--initial-cluster-token", token])
        .args(["--initial-advertise-peer-urls", peer_url])
        .arg("--data-dir")
        .arg(&staging)
        .output()
        .map_err(|e| fail(format!("running {}: {e}", etcdctl.display())))?;
    if !out.status.success() {
        return Err(fail(format!(
            "{} exited with {}: {}",
            etcdctl.display(),
            out.status,
            crate::status::one_line(&String::from_utf8_lossy(&out.stderr))
        )));
    }
    std::fs::create_dir_all(data_dir)
        .map_err(|e| fail(format!("creating {}: {e}", data_dir.display())))?;
    let member = data_dir.join("member");
    std::fs::rename(staging.join("member"), &member)
        .map_err(|e| fail(format!("moving the restored member into {}: {e}", member.display())))?;
    let _ = std::fs::remove_dir(&staging);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_names_cluster_and_purpose_not_a_role() {
        let c = encryption_context("prod");
        assert_eq!(c.get(tags::CLUSTER).map(String::as_str), Some("prod"));
        assert_eq!(c.get(PURPOSE_KEY).map(String::as_str), Some("etcd-snapshot"));
        assert_ne!(c, bundle::encryption_context("prod", Role::Etcd));
    }
}
