//! `keel assets show`: what is published under a prefix and what each role
//! gets, from the objects' metadata and the unencrypted bundle header (the
//! first bytes of the object): nothing is decrypted.

use std::collections::HashMap;

use keel_bootstrap::aws::{self, display_error};
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
            .map_err(|e| anyhow::anyhow!("S3 HeadObject {url}: {}", display_error(&e)))?;
        let ranged = s3
            .get_object()
            .bucket(&args.bucket)
            .key(key)
            .range(HEADER_RANGE)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!("S3 GetObject (header range) {url}: {}", display_error(&e))
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
