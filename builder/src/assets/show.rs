//! `keel assets show`: what is published under a prefix and what each role
//! gets, from the objects' metadata and the unencrypted bundle header (the
//! first bytes of the object): nothing is decrypted.

use std::collections::HashMap;

use keel_bootstrap::aws::{self, AwsError};
use keel_contract::bundle::{self, Header};

use super::metadata::ObjectMeta;
use super::publish::{list_keys, list_prefix};
use super::ShowArgs;

/// Bytes fetched to read a header; real headers are a few hundred bytes.
const HEADER_RANGE: &str = "bytes=0-16383";

pub async fn run(args: &ShowArgs) -> anyhow::Result<()> {
    let config = args.aws.sdk_config().await;
    let s3 = aws::s3_client(&config);
    let keys = list_keys(&s3, &args.bucket, &args.prefix).await?;
    let bundles: Vec<&String> = keys.iter().filter(|k| k.ends_with(".bundle")).collect();
    if bundles.is_empty() {
        println!("no bundles under s3://{}/{}", args.bucket, list_prefix(&args.prefix));
        return Ok(());
    }
    for key in bundles {
        let url = format!("s3://{}/{key}", args.bucket);
        let head = s3
            .head_object()
            .bucket(&args.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("S3 HeadObject {url}: {}", AwsError::from(e)))?;
        let ranged = s3
            .get_object()
            .bucket(&args.bucket)
            .key(key)
            .range(HEADER_RANGE)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!("S3 GetObject (header range) {url}: {}", AwsError::from(e))
            })?;
        let first = ranged
            .body
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the header of {url}: {e}"))?
            .into_bytes();
        println!("{url}");
        println!(
            "  size {} bytes, modified {}, etag {}, version {}",
            head.content_length().unwrap_or(0),
            head.last_modified().map(|t| t.to_string()).unwrap_or("-".into()),
            head.e_tag().unwrap_or("-"),
            head.version_id().unwrap_or("-"),
        );
        match Header::parse(&first) {
            Ok((h, _)) => {
                let context = bundle::encryption_context(&h.cluster, h.role);
                let mut context: Vec<_> = context.iter().map(|(k, v)| format!("{k}={v}")).collect();
                context.sort();
                println!("  header: format {}, cluster {}, role {}", h.version, h.cluster, h.role);
                println!("  KMS key {}, encryption context {}", h.kms_key_id, context.join(", "));
            }
            Err(e) => println!("  header: unreadable ({e})"),
        }
        let empty = HashMap::new();
        match ObjectMeta::from_map(head.metadata().unwrap_or(&empty)) {
            Some(meta) => {
                println!("  role {} of cluster {} gets:", meta.role, meta.cluster);
                for (mode, path) in &meta.files {
                    match meta.ca_sha256.get(path) {
                        Some(sha) => println!("    {mode:04o} /etc/{path}  (CA, sha256 {sha})"),
                        None => println!("    {mode:04o} /etc/{path}"),
                    }
                }
            }
            None => println!("  no keel metadata: not written by keel assets publish"),
        }
    }
    Ok(())
}

/// `keel assets show --dir`: the expiry of every certificate in an asset
/// directory and of the bootstrap token, soonest first. Reads no key.
pub fn expiries(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let store = super::store::Store::open(dir)?;
    let mut rows = Vec::new();
    let mut certs: Vec<&str> = keel_contract::assets::paths::ALL_CERTS.to_vec();
    certs.sort();
    for rel in certs {
        let pem = store.read(rel, false)?;
        let pem = std::str::from_utf8(&pem).with_context(|| format!("{rel} is not text"))?;
        let params = rcgen::CertificateParams::from_ca_cert_pem(pem)
            .with_context(|| format!("parsing {rel}"))?;
        rows.push((params.not_after, rel.to_string()));
    }
    let objects = store.read(super::pki::paths::JOIN_OBJECTS, true)?;
    let list: serde_json::Value = serde_json::from_slice(&objects)
        .with_context(|| format!("parsing {}", super::pki::paths::JOIN_OBJECTS))?;
    let expiration = list["items"][0]["stringData"]["expiration"].as_str().unwrap_or("");
    let token_expires =
        time::OffsetDateTime::parse(expiration, &time::format_description::well_known::Rfc3339)
            .with_context(|| format!("the bootstrap token's expiration {expiration:?}"))?;
    rows.push((
        token_expires,
        format!(
            "{} (id {})",
            super::pki::paths::BOOTSTRAP_TOKEN,
            store.manifest.bootstrap_token_id
        ),
    ));
    rows.sort();
    println!("cluster {} assets in {}", store.manifest.cluster, dir.display());
    let now = time::OffsetDateTime::now_utc();
    for (t, what) in rows {
        println!("  {}  {:>5} days  {what}", super::pki::rfc3339(t), (t - now).whole_days());
    }
    Ok(())
}
