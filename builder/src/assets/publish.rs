//! `keel assets publish`: seals each role's bundle with KMS and uploads it
//! to `s3://<bucket>/<prefix>/<role>.bundle`.
//!
//! Everything is planned before anything is uploaded: the current objects
//! are listed and their metadata read; a bundle whose content fingerprint
//! is unchanged is left alone (same version, same ETag), a bundle that
//! would replace a CA certificate is refused unless `--rotate` is given,
//! and an object of another cluster is never overwritten. Only then are
//! the new or changed bundles sealed and uploaded.

use std::collections::{BTreeSet, HashMap};

use anyhow::{bail, Context as _};
use keel_bootstrap::aws::{self, AwsError};
use keel_bootstrap::envelope;
use keel_contract::bundle::{self, Header};
use keel_contract::Role;

use super::metadata::ObjectMeta;
use super::store::Store;
use super::{fingerprint, roles, AwsArgs, PublishArgs};

/// What publish does with one role's object.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    Create,
    Unchanged {
        etag: Option<String>,
        version: Option<String>,
    },
    /// Replace the object that has this ETag (a conditional write).
    Replace {
        rotated: Vec<String>,
        etag: Option<String>,
    },
}

/// The current state of an object, from HeadObject.
struct Current {
    meta: Option<ObjectMeta>,
    etag: Option<String>,
    version: Option<String>,
}

pub async fn run(args: &PublishArgs) -> anyhow::Result<()> {
    let store = Store::open(&args.dir)?;
    let fp_key = store.fingerprint_key()?;
    let config = args.aws.sdk_config().await;
    let s3 = aws::s3_client(&config);
    let kms = aws_sdk_kms::Client::new(&config);
    let cluster = store.manifest.cluster.clone();

    let existing = list_keys(&s3, &args.bucket, &args.prefix).await?;
    let mut plans = Vec::new();
    let mut refusals = Vec::new();
    for role in Role::ALL {
        let bundle = roles::bundle(&store, role)?;
        let key = bundle::object_key(&args.prefix, role);
        let plaintext =
            bundle.encode_files().with_context(|| format!("encoding the {role} bundle"))?;
        let fingerprint = fingerprint::content(&fp_key, &args.kms_key, &plaintext);
        let new = ObjectMeta::of(&bundle, &args.kms_key, fingerprint);
        let current =
            if existing.contains(&key) { Some(head(&s3, &args.bucket, &key).await?) } else { None };
        match decide(&cluster, &new, current, args.rotate) {
            Ok(action) => plans.push((role, bundle, key, new, action)),
            Err(why) => refusals.push(format!("s3://{}/{key}: {why}", args.bucket)),
        }
    }
    if !refusals.is_empty() {
        bail!("nothing was uploaded:\n  {}", refusals.join("\n  "));
    }

    for (role, bundle, key, new, action) in plans {
        let url = format!("s3://{}/{key}", args.bucket);
        let (created, rotated, if_match) = match action {
            Action::Unchanged { etag, version } => {
                println!("{role}: {url} unchanged ({}), not uploaded", describe(&etag, &version));
                continue;
            }
            Action::Create => (true, Vec::new(), None),
            Action::Replace { rotated, etag } => (false, rotated, etag),
        };
        let sealed = envelope::seal(&kms, &args.kms_key, &bundle).await?;
        let (header, _) = Header::parse(&sealed).context("reading back the sealed header")?;
        let meta = ObjectMeta { kms_key: header.kms_key_id.clone(), ..new };
        // Conditional writes: if another publish got there between the
        // plan and now, S3 answers PreconditionFailed instead of losing
        // one of the two silently.
        let put = s3
            .put_object()
            .bucket(&args.bucket)
            .key(&key)
            .content_type("application/octet-stream")
            .set_metadata(Some(meta.to_map()))
            .set_if_none_match(created.then(|| "*".to_string()))
            .set_if_match(if_match)
            .body(sealed.into())
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "S3 PutObject {url}: {} (PreconditionFailed means the object changed since \
                     publish read it: run publish again)",
                    AwsError::from(e)
                )
            })?;
        let etag = put.e_tag().map(str::to_string);
        let version = put.version_id().map(str::to_string);
        let verb = if created { "uploaded" } else { "replaced" };
        println!(
            "{role}: {url} {verb} ({}), KMS key {}",
            describe(&etag, &version),
            header.kms_key_id
        );
        for path in rotated {
            println!("{role}: rotated CA {path}");
        }
    }
    Ok(())
}

fn describe(etag: &Option<String>, version: &Option<String>) -> String {
    format!(
        "etag {}, version {}",
        etag.as_deref().unwrap_or("-"),
        version.as_deref().unwrap_or("-")
    )
}

/// Decides what to do with one object, or why it must not be touched.
fn decide(
    cluster: &str,
    new: &ObjectMeta,
    current: Option<Current>,
    rotate: bool,
) -> Result<Action, String> {
    let Some(current) = current else {
        return Ok(Action::Create);
    };
    let Some(old) = current.meta else {
        if rotate {
            return Ok(Action::Replace { rotated: Vec::new(), etag: current.etag });
        }
        return Err(
            "exists but was not written by keel (no keel metadata); pass --rotate to replace it"
                .into(),
        );
    };
    if old.cluster != cluster || old.role != new.role {
        return Err(format!(
            "holds the {} bundle of cluster {:?}, not the {} bundle of {cluster:?}; use another prefix",
            old.role, old.cluster, new.role
        ));
    }
    if old.fingerprint == new.fingerprint {
        return Ok(Action::Unchanged { etag: current.etag, version: current.version });
    }
    let paths: BTreeSet<&String> = old.ca_sha256.keys().chain(new.ca_sha256.keys()).collect();
    let rotated: Vec<String> = paths
        .into_iter()
        .filter(|p| old.ca_sha256.get(*p) != new.ca_sha256.get(*p))
        .cloned()
        .collect();
    if !rotated.is_empty() && !rotate {
        let detail = rotated
            .iter()
            .map(|p| {
                let short = |h: Option<&String>| {
                    h.map(|h| h[..12.min(h.len())].to_string()).unwrap_or("none".into())
                };
                format!(
                    "{p} (sha256 {} -> {})",
                    short(old.ca_sha256.get(p)),
                    short(new.ca_sha256.get(p))
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        return Err(format!(
            "would replace the CA certificate(s) {detail}; nodes trusting the old CA would break. \
             Pass --rotate to replace them on purpose"
        ));
    }
    Ok(Action::Replace { rotated, etag: current.etag })
}

/// The keys under `prefix` in `bucket` (one ListObjectsV2, paginated).
/// A missing bucket or a denied list fails here, before any work.
pub async fn list_keys(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> anyhow::Result<BTreeSet<String>> {
    let list_prefix = list_prefix(prefix);
    let pages = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(&list_prefix)
        .into_paginator()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .map_err(|e| {
            anyhow::anyhow!("S3 ListObjectsV2 s3://{bucket}/{list_prefix}: {}", AwsError::from(e))
        })?;
    Ok(pages
        .iter()
        .flat_map(|p| p.contents())
        .filter_map(|o| o.key().map(str::to_string))
        .collect())
}

/// The listing prefix for a bundle prefix (`p/`, or empty).
pub fn list_prefix(prefix: &str) -> String {
    keel_contract::bundle::under_prefix(prefix, "")
}

async fn head(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> anyhow::Result<Current> {
    let reply =
        s3.head_object().bucket(bucket).key(key).send().await.map_err(|e| {
            anyhow::anyhow!("S3 HeadObject s3://{bucket}/{key}: {}", AwsError::from(e))
        })?;
    let empty = HashMap::new();
    Ok(Current {
        meta: ObjectMeta::from_map(reply.metadata().unwrap_or(&empty)),
        etag: reply.e_tag().map(str::to_string),
        version: reply.version_id().map(str::to_string),
    })
}

impl AwsArgs {
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        aws::sdk_config(&aws::Target {
            region: self.region.clone(),
            endpoint_url: self.endpoint_url.clone(),
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn meta(cluster: &str, ca: &str, fp: &str) -> ObjectMeta {
        ObjectMeta {
            format: 1,
            cluster: cluster.into(),
            role: Role::Worker,
            kms_key: "k".into(),
            files: vec![(0o644, "kubernetes/pki/ca.crt".into())],
            ca_sha256: BTreeMap::from([("kubernetes/pki/ca.crt".to_string(), ca.to_string())]),
            fingerprint: fp.into(),
        }
    }

    fn current(m: Option<ObjectMeta>) -> Option<Current> {
        Some(Current { meta: m, etag: Some("\"e\"".into()), version: Some("v1".into()) })
    }

    #[test]
    fn decisions() {
        let new = meta("c1", "aaa", "f1");
        assert_eq!(decide("c1", &new, None, false), Ok(Action::Create));
        assert!(matches!(
            decide("c1", &new, current(Some(meta("c1", "aaa", "f1"))), false),
            Ok(Action::Unchanged { .. })
        ));
        assert_eq!(
            decide("c1", &new, current(Some(meta("c1", "aaa", "f0"))), false),
            Ok(Action::Replace { rotated: vec![], etag: Some("\"e\"".into()) })
        );
        let e = decide("c1", &new, current(Some(meta("c1", "bbb", "f0"))), false).unwrap_err();
        assert!(e.contains("--rotate") && e.contains("kubernetes/pki/ca.crt"), "{e}");
        assert_eq!(
            decide("c1", &new, current(Some(meta("c1", "bbb", "f0"))), true),
            Ok(Action::Replace {
                rotated: vec!["kubernetes/pki/ca.crt".into()],
                etag: Some("\"e\"".into())
            })
        );
        let e = decide("c1", &new, current(Some(meta("c2", "aaa", "f1"))), true).unwrap_err();
        assert!(e.contains("cluster \"c2\""), "{e}");
        assert!(decide("c1", &new, current(None), false).is_err());
        assert!(decide("c1", &new, current(None), true).is_ok());
    }
}
