//! Envelope encryption of asset bundles with KMS, and fetching them from
//! S3: one GenerateDataKey (AES-256) per seal, one GetObject and one
//! Decrypt per open, each with the encryption context of the cluster and
//! role (see `bundle` for the byte layout). The SDK clients carry the
//! timeouts and bounded retries of `aws::sdk_config`.

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use zeroize::Zeroizing;

use crate::aws::AwsError;
use crate::bundle::{self, Bundle, BundleError, Header};
use crate::role::Role;

/// A bundle object larger than this is refused before it is read: real
/// bundles are a few KiB.
pub(crate) const MAX_OBJECT_BYTES: i64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("KMS GenerateDataKey with key {key_id} for cluster {cluster:?} role {role}: {source}")]
    GenerateDataKey { key_id: String, cluster: String, role: Role, source: AwsError },
    #[error("KMS GenerateDataKey with key {key_id} returned no {what}")]
    IncompleteDataKey { key_id: String, what: &'static str },
    #[error("KMS Decrypt of the data key (KMS key {key_id}) with the context of cluster {cluster:?} role {role}: {source}")]
    Decrypt { key_id: String, cluster: String, role: Role, source: AwsError },
    #[error("KMS Decrypt of the data key (KMS key {key_id}) with the context of cluster {cluster:?} role {role}: KMS returned no plaintext")]
    NoPlaintext { key_id: String, cluster: String, role: Role },
    #[error("sealing the bundle of cluster {cluster:?} role {role}: {source}")]
    Seal { cluster: String, role: Role, source: BundleError },
    #[error("opening the bundle of cluster {cluster:?} role {role} (KMS key {key_id}): {source}")]
    Open { cluster: String, role: Role, key_id: String, source: BundleError },
    #[error("reading the bundle header: {0}")]
    Header(#[source] BundleError),
    #[error("S3 GetObject s3://{bucket}/{key}: {source}")]
    GetObject { bucket: String, key: String, source: AwsError },
    #[error("S3 GetObject s3://{bucket}/{key}: reading the body: {source}")]
    GetObjectBody { bucket: String, key: String, source: AwsError },
    #[error("S3 object s3://{bucket}/{key} is {size} bytes, more than a bundle may be ({MAX_OBJECT_BYTES})")]
    TooLarge { bucket: String, key: String, size: i64 },
    #[error("bundle s3://{bucket}/{key}: {source}")]
    Object { bucket: String, key: String, source: Box<EnvelopeError> },
}

/// Seals `bundle` under a fresh KMS data key of `key_id`, with the
/// encryption context of the bundle's cluster and role.
pub async fn seal(
    kms: &aws_sdk_kms::Client,
    key_id: &str,
    bundle: &Bundle,
) -> Result<Vec<u8>, EnvelopeError> {
    let context = bundle::encryption_context(&bundle.cluster, bundle.role);
    seal_with_context(kms, key_id, bundle, context).await
}

/// `seal` under another encryption context (etcd snapshots use the
/// cluster and "etcd-snapshot", so no role's bundle context opens them).
pub async fn seal_with_context(
    kms: &aws_sdk_kms::Client,
    key_id: &str,
    bundle: &Bundle,
    context: std::collections::HashMap<String, String>,
) -> Result<Vec<u8>, EnvelopeError> {
    let reply = kms
        .generate_data_key()
        .key_id(key_id)
        .key_spec(DataKeySpec::Aes256)
        .set_encryption_context(Some(context))
        .send()
        .await
        .map_err(|e| EnvelopeError::GenerateDataKey {
            key_id: key_id.to_string(),
            cluster: bundle.cluster.clone(),
            role: bundle.role,
            source: e.into(),
        })?;
    let incomplete = |what| EnvelopeError::IncompleteDataKey { key_id: key_id.to_string(), what };
    let plaintext = reply.plaintext().ok_or_else(|| incomplete("plaintext key"))?;
    let data_key = Zeroizing::new(plaintext.as_ref().to_vec());
    let encrypted = reply.ciphertext_blob().ok_or_else(|| incomplete("encrypted key"))?;
    // Record the key as KMS names it (the ARN), not an alias that may move.
    let reported_key = reply.key_id().unwrap_or(key_id);
    bundle.seal(reported_key, encrypted.as_ref(), &data_key).map_err(|source| EnvelopeError::Seal {
        cluster: bundle.cluster.clone(),
        role: bundle.role,
        source,
    })
}

/// Opens a serialised bundle expected to be for `cluster` and `role`: the
/// header must name them, and KMS must decrypt the data key with *their*
/// encryption context.
pub async fn open(
    kms: &aws_sdk_kms::Client,
    bytes: &[u8],
    cluster: &str,
    role: Role,
) -> Result<Bundle, EnvelopeError> {
    open_expecting(kms, bytes, cluster, role, None).await
}

/// [`open`], naming the KMS key the data key must have been made under.
pub async fn open_expecting(
    kms: &aws_sdk_kms::Client,
    bytes: &[u8],
    cluster: &str,
    role: Role,
    kms_key_id: Option<&str>,
) -> Result<Bundle, EnvelopeError> {
    let context = bundle::encryption_context(cluster, role);
    open_with_context(kms, bytes, cluster, role, context, kms_key_id).await
}

/// [`open_expecting`] under another encryption context (see
/// `seal_with_context`).
pub async fn open_with_context(
    kms: &aws_sdk_kms::Client,
    bytes: &[u8],
    cluster: &str,
    role: Role,
    context: std::collections::HashMap<String, String>,
    kms_key_id: Option<&str>,
) -> Result<Bundle, EnvelopeError> {
    let (header, _) = Header::parse(bytes).map_err(EnvelopeError::Header)?;
    let open_error = |source| EnvelopeError::Open {
        cluster: cluster.to_string(),
        role,
        key_id: header.kms_key_id.clone(),
        source,
    };
    header.expect(cluster, role).map_err(open_error)?;
    let reply = kms
        .decrypt()
        .ciphertext_blob(Blob::new(header.encrypted_data_key.clone()))
        .set_key_id(kms_key_id.map(str::to_string))
        .set_encryption_context(Some(context))
        .send()
        .await
        .map_err(|e| EnvelopeError::Decrypt {
            key_id: header.kms_key_id.clone(),
            cluster: cluster.to_string(),
            role,
            source: e.into(),
        })?;
    let data_key = Zeroizing::new(
        reply
            .plaintext()
            .ok_or_else(|| EnvelopeError::NoPlaintext {
                key_id: header.kms_key_id.clone(),
                cluster: cluster.to_string(),
                role,
            })?
            .as_ref()
            .to_vec(),
    );
    Bundle::open(bytes, cluster, role, &data_key).map_err(open_error)
}

/// Fetches and opens the bundle of `role` under `prefix` in `bucket`:
/// exactly one GetObject and one Decrypt.
pub async fn fetch(
    s3: &aws_sdk_s3::Client,
    kms: &aws_sdk_kms::Client,
    bucket: &str,
    prefix: &str,
    cluster: &str,
    role: Role,
) -> Result<Bundle, EnvelopeError> {
    fetch_expecting(s3, kms, bucket, prefix, cluster, role, &Expected::default()).await
}

/// What a node expects of where its bundle comes from (user data's
/// `[assets] kms-key-id` and `bucket-owner`): sent to KMS Decrypt (KeyId)
/// and S3 GetObject (ExpectedBucketOwner), which refuse a bundle sealed
/// under another key or a bucket owned by another account.
#[derive(Debug, Clone, Default)]
pub struct Expected<'a> {
    pub kms_key_id: Option<&'a str>,
    pub bucket_owner: Option<&'a str>,
}

/// [`fetch`], sending what the node expects of the key and the bucket.
pub async fn fetch_expecting(
    s3: &aws_sdk_s3::Client,
    kms: &aws_sdk_kms::Client,
    bucket: &str,
    prefix: &str,
    cluster: &str,
    role: Role,
    expected: &Expected<'_>,
) -> Result<Bundle, EnvelopeError> {
    let key = bundle::object_key(prefix, role);
    let reply = s3
        .get_object()
        .bucket(bucket)
        .key(&key)
        .set_expected_bucket_owner(expected.bucket_owner.map(str::to_string))
        .send()
        .await
        .map_err(|e| EnvelopeError::GetObject {
            bucket: bucket.to_string(),
            key: key.clone(),
            source: e.into(),
        })?;
    if let Some(size) = reply.content_length().filter(|s| *s > MAX_OBJECT_BYTES) {
        return Err(EnvelopeError::TooLarge { bucket: bucket.to_string(), key, size });
    }
    let bytes = reply
        .body
        .collect()
        .await
        .map_err(|e| EnvelopeError::GetObjectBody {
            bucket: bucket.to_string(),
            key: key.clone(),
            source: e.into(),
        })?
        .into_bytes();
    open_expecting(kms, &bytes, cluster, role, expected.kms_key_id).await.map_err(|source| {
        EnvelopeError::Object { bucket: bucket.to_string(), key, source: Box::new(source) }
    })
}

/// Whether fetching again cannot help: the object or bucket is missing,
/// access is denied, the bundle is not this node's or is damaged. Other
/// errors (throttling, timeouts, 5xx after the SDK's own retries) may pass.
pub fn is_final(e: &EnvelopeError) -> bool {
    const FINAL: [&str; 6] = [
        "NoSuchKey",
        "NoSuchBucket",
        "AccessDenied",
        "InvalidCiphertext",
        "NotFoundException",
        "DisabledException",
    ];
    match e {
        EnvelopeError::Object { source, .. } => is_final(source),
        EnvelopeError::GetObject { source, .. } | EnvelopeError::Decrypt { source, .. } => {
            source.code().is_some_and(|code| FINAL.iter().any(|f| code.contains(f)))
        }
        EnvelopeError::GetObjectBody { .. } | EnvelopeError::NoPlaintext { .. } => false,
        EnvelopeError::GenerateDataKey { .. } => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    //! Against moto's server (KMS and S3), started per test.
    use super::*;
    use crate::aws::{display_error, s3_client, sdk_config, Target};
    use crate::bundle::BundleFile;
    use keel_testkit::moto::Moto;

    async fn clients(moto: &Moto) -> (aws_sdk_s3::Client, aws_sdk_kms::Client) {
        let target =
            Target { region: Some("eu-west-1".into()), endpoint_url: Some(moto.endpoint.clone()) };
        let config = keel_testkit::moto::with_test_keys(sdk_config(&target).await);
        (s3_client(&config), aws_sdk_kms::Client::new(&config))
    }

    fn etcd_bundle() -> Bundle {
        Bundle {
            cluster: "c1".into(),
            role: Role::Etcd,
            files: vec![BundleFile {
                path: "etcd/pki/ca.key".into(),
                mode: 0o600,
                contents: Zeroizing::new(b"key material".to_vec()),
            }],
        }
    }

    #[tokio::test]
    async fn fetch_opens_with_the_right_context_only() {
        let moto = Moto::start().expect("moto (run scripts/setup)");
        let (s3, kms) = clients(&moto).await;
        let key = kms.create_key().send().await.unwrap();
        let key_id = key.key_metadata().unwrap().key_id().to_string();
        s3.create_bucket()
            .bucket("assets")
            .create_bucket_configuration(
                aws_sdk_s3::types::CreateBucketConfiguration::builder()
                    .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::EuWest1)
                    .build(),
            )
            .send()
            .await
            .unwrap();

        let sealed = seal(&kms, &key_id, &etcd_bundle()).await.unwrap();
        let (header, _) = Header::parse(&sealed).unwrap();
        assert!(header.kms_key_id.contains(&key_id), "{}", header.kms_key_id);
        s3.put_object()
            .bucket("assets")
            .key("c1/etcd.bundle")
            .body(sealed.clone().into())
            .send()
            .await
            .unwrap();
        let b = fetch(&s3, &kms, "assets", "c1", "c1", Role::Etcd).await.unwrap();
        assert_eq!(b, etcd_bundle());

        // KMS itself refuses the data key under another role's context.
        let e = kms
            .decrypt()
            .ciphertext_blob(Blob::new(header.encrypted_data_key.clone()))
            .set_encryption_context(Some(bundle::encryption_context("c1", Role::Worker)))
            .send()
            .await
            .unwrap_err();
        assert!(display_error(&e).contains("InvalidCiphertext"), "{}", display_error(&e));
        let e = AwsError::from(e);
        assert_eq!(e.code(), Some("InvalidCiphertextException"), "{e}");

        // Asking for the worker bundle at the etcd key: refused by name.
        let e = open(&kms, &sealed, "c1", Role::Worker).await.unwrap_err();
        assert!(
            matches!(e, EnvelopeError::Open { source: BundleError::WrongRecipient { .. }, .. }),
            "{e}"
        );

        // A missing object names bucket and key.
        let e = fetch(&s3, &kms, "assets", "c2", "c1", Role::Etcd).await.unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("s3://assets/c2/etcd.bundle") && msg.contains("NoSuchKey"), "{msg}");
        assert!(is_final(&e), "a missing bundle is not retried");
        let timeout = aws_sdk_s3::error::SdkError::<
            aws_sdk_s3::operation::get_object::GetObjectError,
            aws_smithy_runtime_api::http::Response,
        >::timeout_error("no answer in 60 s");
        let slow = EnvelopeError::GetObject {
            bucket: "assets".into(),
            key: "c1/etcd.bundle".into(),
            source: timeout.into(),
        };
        assert!(!is_final(&slow), "a timeout is retried");
    }
}
