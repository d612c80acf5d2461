//! The etcd cluster's formation record in S3, beside the bundles under the
//! cluster's prefix: `<prefix>/etcd/formation/<generation>.json` holds the
//! cluster token (unique per formation) and the exact initial members.
//! A formation happens only by creating the next generation's record with
//! a conditional create (`If-None-Match: *`): S3 lets exactly one writer
//! create a key, every other writer gets 412 PreconditionFailed (or 409
//! ConditionalRequestConflict while the first is in flight) and reads the
//! winner's record back. Every node, winner or not, acts on the record as
//! read back from S3, never on what it tried to write.
//!
//! Members that joined later register under
//! `<prefix>/etcd/formation/<generation>/joined/<instance-id>` before they
//! are added, so the instances that may hold the cluster's data are the
//! record's members plus the registered ones: when none of them exists in
//! EC2 any more (terminated instances take their root volume with them),
//! the cluster is known to be gone and the next generation may be formed.

use aws_sdk_s3::primitives::ByteStream;
use serde::{Deserialize, Serialize};

use crate::aws::AwsError;

/// A formation record larger than this is refused (real ones are < 4 KiB).
const MAX_RECORD_BYTES: usize = 256 * 1024;

/// One initial member: its instance id (the etcd member name) and peer URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct InitialMember {
    pub name: String,
    pub peer_url: String,
}

/// What one formation decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Record {
    /// 1 for the first formation, then one more per re-formation.
    pub generation: u64,
    /// ETCD_INITIAL_CLUSTER_TOKEN: random per formation, so a re-formation
    /// on reused addresses never reproduces old member or cluster ids.
    pub token: String,
    /// The exact initial membership, sorted by name.
    pub members: Vec<InitialMember>,
    /// The instance whose write won.
    pub formed_by: String,
    /// The snapshot object the cluster was restored from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,
}

impl Record {
    pub fn member(&self, name: &str) -> Option<&InitialMember> {
        self.members.iter().find(|m| m.name == name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FormationError {
    #[error("S3 {op} s3://{bucket}/{key}: {source}")]
    S3 { op: &'static str, bucket: String, key: String, source: AwsError },
    #[error("S3 GetObject s3://{bucket}/{key}: the record is gone right after it was created")]
    Vanished { bucket: String, key: String },
    #[error("formation record s3://{bucket}/{key} is unreadable: {bytes} bytes")]
    TooLarge { bucket: String, key: String, bytes: usize },
    #[error("formation record s3://{bucket}/{key} is unreadable: {source}")]
    Decode { bucket: String, key: String, source: serde_json::Error },
}

/// Where the records of one cluster live.
#[derive(Debug, Clone)]
pub struct Store {
    pub s3: aws_sdk_s3::Client,
    pub bucket: String,
    /// The cluster's prefix (the bundles' prefix).
    pub prefix: String,
}

impl Store {
    fn base(&self) -> String {
        crate::bundle::under_prefix(&self.prefix, "etcd/formation/")
    }

    pub fn record_key(&self, generation: u64) -> String {
        format!("{}{generation:010}.json", self.base())
    }

    fn joined_prefix(&self, generation: u64) -> String {
        format!("{}{generation:010}/joined/", self.base())
    }

    /// A failed S3 call on `key`.
    fn err(&self, op: &'static str, key: &str, source: impl Into<AwsError>) -> FormationError {
        FormationError::S3 {
            op,
            bucket: self.bucket.clone(),
            key: key.to_string(),
            source: source.into(),
        }
    }

    /// Keys under `prefix`, every page.
    async fn keys(&self, prefix: &str) -> Result<Vec<String>, FormationError> {
        let mut out = Vec::new();
        let mut pages =
            self.s3.list_objects_v2().bucket(&self.bucket).prefix(prefix).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.err("ListObjectsV2", prefix, e))?;
            out.extend(page.contents().iter().filter_map(|o| o.key().map(str::to_string)));
        }
        Ok(out)
    }

    /// The newest formation record, None when the cluster was never formed.
    pub async fn latest(&self) -> Result<Option<Record>, FormationError> {
        let base = self.base();
        let newest = self
            .keys(&base)
            .await?
            .into_iter()
            .filter_map(|k| {
                let rest = k.strip_prefix(&base)?.strip_suffix(".json")?;
                (!rest.contains('/')).then(|| rest.parse::<u64>().ok()).flatten()
            })
            .max();
        match newest {
            None => Ok(None),
            Some(g) => self.read(g).await,
        }
    }

    /// The record of `generation`, None when there is none.
    pub async fn read(&self, generation: u64) -> Result<Option<Record>, FormationError> {
        let key = self.record_key(generation);
        let reply = match self.s3.get_object().bucket(&self.bucket).key(&key).send().await {
            Ok(r) => r,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(self.err("GetObject", &key, e)),
        };
        let bytes =
            reply.body.collect().await.map_err(|e| self.err("GetObject", &key, e))?.into_bytes();
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(FormationError::TooLarge {
                bucket: self.bucket.clone(),
                key,
                bytes: bytes.len(),
            });
        }
        serde_json::from_slice(&bytes).map(Some).map_err(|source| FormationError::Decode {
            bucket: self.bucket.clone(),
            key,
            source,
        })
    }

    /// Tries to create `record` (conditional create), then returns the
    /// record of its generation as S3 holds it: `record` itself when this
    /// write won, the winner's otherwise.
    pub async fn create(&self, record: &Record) -> Result<Record, FormationError> {
        let key = self.record_key(record.generation);
        let body = serde_json::to_vec_pretty(record).map_err(|source| FormationError::Decode {
            bucket: self.bucket.clone(),
            key: key.clone(),
            source,
        })?;
        let put = self
            .s3
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .if_none_match("*")
            .content_type("application/json")
            .body(ByteStream::from(body))
            .send()
            .await;
        if let Err(e) = put {
            let status = e.raw_response().map(|r| r.status().as_u16());
            // 412: another formation created it; 409: one is in flight.
            if !matches!(status, Some(412) | Some(409)) {
                return Err(self.err("PutObject (If-None-Match: *)", &key, e));
            }
        }
        self.read(record.generation)
            .await?
            .ok_or_else(|| FormationError::Vanished { bucket: self.bucket.clone(), key })
    }

    /// Registers `instance_id` as a member of `generation` (before it is
    /// added to the cluster).
    pub async fn register(&self, generation: u64, instance_id: &str) -> Result<(), FormationError> {
        let key = format!("{}{instance_id}", self.joined_prefix(generation));
        self.s3
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .body(ByteStream::from_static(b""))
            .send()
            .await
            .map_err(|e| self.err("PutObject", &key, e))?;
        Ok(())
    }

    /// Every instance that may hold data of `record`'s cluster: the
    /// initial members and those registered since.
    pub async fn instances(&self, record: &Record) -> Result<Vec<String>, FormationError> {
        let prefix = self.joined_prefix(record.generation);
        let mut out: Vec<String> = record.members.iter().map(|m| m.name.clone()).collect();
        out.extend(
            self.keys(&prefix).await?.into_iter().filter_map(|k| {
                k.strip_prefix(&prefix).map(str::to_string).filter(|s| !s.is_empty())
            }),
        );
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// A fresh cluster token: 128 random bits, hex.
pub fn new_token(cluster: &str) -> String {
    let bytes: [u8; 16] = rand::random();
    format!("keel-{cluster}-{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    //! Against moto's server (S3), which honours `If-None-Match: *`.
    use super::*;
    use crate::aws::{s3_client, sdk_config, Target};
    use keel_testkit::moto::Moto;

    fn record(generation: u64, by: &str) -> Record {
        Record {
            generation,
            token: new_token("c1"),
            members: vec![InitialMember {
                name: by.into(),
                peer_url: "https://10.0.0.1:2380".into(),
            }],
            formed_by: by.into(),
            restored_from: None,
        }
    }

    #[tokio::test]
    async fn exactly_one_formation_wins_and_everyone_reads_the_winner() {
        let moto = Moto::start().expect("moto (run scripts/setup)");
        let target =
            Target { region: Some("us-east-1".into()), endpoint_url: Some(moto.endpoint.clone()) };
        let s3 = s3_client(&keel_testkit::moto::with_test_keys(sdk_config(&target).await));
        s3.create_bucket().bucket("assets").send().await.unwrap();
        let store = Store { s3, bucket: "assets".into(), prefix: "/c1/".into() };
        assert_eq!(store.latest().await.unwrap(), None);

        let tries: Vec<Record> = (0..8).map(|n| record(1, &format!("i-{n}"))).collect();
        let results = futures::future::join_all(tries.iter().map(|r| store.create(r))).await;
        let won: Vec<Record> = results.into_iter().map(Result::unwrap).collect();
        assert!(won.iter().all(|r| *r == won[0]), "{won:#?}");
        assert!(tries.contains(&won[0]));
        assert_eq!(store.record_key(1), "c1/etcd/formation/0000000001.json");

        // A later create of the same generation changes nothing.
        assert_eq!(store.create(&record(1, "i-late")).await.unwrap(), won[0]);
        // The next generation is the newest; joiners are counted in.
        let second = store.create(&record(2, "i-x")).await.unwrap();
        assert_eq!(store.latest().await.unwrap(), Some(second.clone()));
        store.register(2, "i-joined").await.unwrap();
        assert_eq!(store.instances(&second).await.unwrap(), ["i-joined", "i-x"]);
        assert_eq!(store.instances(&won[0]).await.unwrap(), [won[0].formed_by.clone()]);
    }
}
