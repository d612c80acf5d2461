//! One way to build AWS SDK clients, for the builder and the node alike:
//! standard credential and region chain, an optional endpoint override
//! (`--endpoint-url`, `AWS_ENDPOINT_URL`, or the user data's override for
//! local testing), timeouts on every call and the SDK's standard bounded
//! retries. Path-style S3 addressing is used whenever an endpoint is
//! overridden, since emulators listen on an IP address. On a node
//! ([`node_sdk_config`]) the override must be https unless the image is a
//! test image, names are resolved in-process ([`crate::dns`]) and
//! certificates are verified against the image's trust store.

use std::path::Path;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};

use crate::dns::Dns;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// Attempts per AWS call (the first one included), with the SDK's
/// exponential backoff between them.
pub const MAX_ATTEMPTS: u32 = 5;
/// Connecting to an AWS endpoint.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One attempt of one call; large enough for a 512 KiB EBS block or a
/// bundle object on a slow link.
pub(crate) const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);
/// One call, all attempts included.
pub(crate) const OPERATION_TIMEOUT: Duration = Duration::from_secs(180);

/// Where to reach AWS. Both fields default to the standard chain
/// (environment, profile, IMDS).
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
}

/// Loads the shared SDK configuration for `target`.
pub async fn sdk_config(target: &Target) -> SdkConfig {
    loader(target).load().await
}

/// Where the node's trust store is, relative to its root: the bundle
/// Debian's ca-certificates builds (and a test image's layer extends with
/// the test CA; see [`keel_contract::userdata::TEST_IMAGE_FILE`]).
pub const TRUST_STORE: &str = "etc/ssl/certs/ca-certificates.crt";

/// The node's AWS configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NodeConfigError {
    /// The metadata service URL given to [`node_sdk_config`] is not a URL.
    #[error("metadata service URL {url:?}: {source}")]
    ImdsUrl { url: String, source: Box<dyn std::error::Error + Send + Sync> },
    #[error(transparent)]
    Endpoint(#[from] EndpointRefused),
    #[error("reading the trust store {path}: {source}")]
    TrustStore { path: String, source: std::io::Error },
}

/// `aws.endpoint-url` is plain HTTP on an image that is not a test image.
#[derive(Debug, thiserror::Error)]
#[error(
    "aws.endpoint-url {url:?} refused: only https:// endpoints are accepted on this image \
     (the KMS data key and the instance's credentials would cross the network in clear); \
     plain http is for test images only, built from a profile with a [test] table \
     (this image has no /{marker})",
    marker = keel_contract::userdata::TEST_IMAGE_FILE
)]
pub struct EndpointRefused {
    pub url: String,
}

/// The endpoint override rule: https always; anything else only on a test
/// image.
pub fn check_endpoint(url: &str, test_image: bool) -> Result<(), EndpointRefused> {
    if is_https(url) || test_image {
        Ok(())
    } else {
        Err(EndpointRefused { url: url.to_string() })
    }
}

fn is_https(url: &str) -> bool {
    url.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://"))
}

/// On a node whose file system is at `root`: the same configuration, with
/// - the endpoint override checked ([`check_endpoint`]; the image is a test
///   image when `<root>/usr/lib/keel/test-image` exists),
/// - an HTTPS client that resolves names with [`Dns`] from
///   `<root>/etc/resolv.conf` (not through glibc's NSS) and verifies
///   certificates against `<root>/etc/ssl/certs/ca-certificates.crt` only,
/// - the standard credential chain reading the instance profile's
///   credentials from the metadata service at `imds_url` (injectable so
///   tests and the QEMU harness can serve it).
pub async fn node_sdk_config(
    target: &Target,
    imds_url: &str,
    root: &Path,
) -> Result<SdkConfig, NodeConfigError> {
    let plain_http = match &target.endpoint_url {
        Some(url) => {
            check_endpoint(url, keel_contract::userdata::is_test_image(root))?;
            !is_https(url)
        }
        None => false,
    };
    let trust = if plain_http {
        // A test image's http endpoint: nothing to verify.
        TrustStore::empty().with_native_roots(false)
    } else {
        let path = root.join(TRUST_STORE);
        let pem = std::fs::read(&path).map_err(|source| NodeConfigError::TrustStore {
            path: path.display().to_string(),
            source,
        })?;
        TrustStore::empty().with_native_roots(false).with_pem_certificate(pem)
    };
    let tls = TlsContext::builder().with_trust_store(trust).build().map_err(|e| {
        NodeConfigError::TrustStore {
            path: root.join(TRUST_STORE).display().to_string(),
            source: std::io::Error::other(e),
        }
    })?;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::AwsLc))
        .tls_context(tls)
        .build_with_resolver(Dns::from_root(root));
    let imds = aws_config::imds::Client::builder()
        .endpoint(imds_url)
        .map_err(|source| NodeConfigError::ImdsUrl { url: imds_url.to_string(), source })?
        .build();
    let mut chain = aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
        .imds_client(imds);
    if let Some(region) = &target.region {
        chain = chain.region(Region::new(region.clone()));
    }
    let credentials = chain.build().await;
    Ok(loader(target).http_client(http).credentials_provider(credentials).load().await)
}

fn loader(target: &Target) -> aws_config::ConfigLoader {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .operation_timeout(OPERATION_TIMEOUT)
                .build(),
        );
    if let Some(region) = &target.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(url) = &target.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    loader
}

/// The same configuration with another region (for copies across regions).
pub fn in_region(config: &SdkConfig, region: &str) -> SdkConfig {
    config.to_builder().region(Region::new(region.to_string())).build()
}

/// An S3 client; path-style when the endpoint is overridden.
pub fn s3_client(config: &SdkConfig) -> aws_sdk_s3::Client {
    let s3 = aws_sdk_s3::config::Builder::from(config)
        .force_path_style(config.endpoint_url().is_some())
        .build();
    aws_sdk_s3::Client::from_conf(s3)
}

/// Formats an SDK error as its chain of messages, with the service's code
/// and message (`service error: NoSuchBucket: The specified bucket does not
/// exist`), not `ServiceError { .. }` and not the raw HTTP response that
/// `DisplayErrorContext` appends. The one error-chain printer,
/// [`crate::error_chain::chain`], under the name AWS call sites use.
pub use crate::error_chain::chain as display_error;

/// An AWS call that failed: the SDK's error kept whole as the `source` of
/// the error that names the call and what it was made on (bucket and key,
/// instance, region). It reads as what the service said, its code and
/// message (`NoSuchKey: The specified key does not exist.`), when the
/// service answered with a code, and as the SDK error's chain otherwise
/// (`dispatch failure: io error: ...: Connection refused`). That text
/// already says everything its sources say, so the error-chain printer
/// ([`crate::error_chain::chain`]) stops here rather than print it again.
#[derive(Debug)]
pub struct AwsError(Box<Failure>);

/// Boxed, so that the errors holding an [`AwsError`] stay small.
#[derive(Debug)]
struct Failure {
    code: Option<String>,
    message: Option<String>,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl AwsError {
    fn new(
        code: Option<String>,
        message: Option<String>,
        source: Box<dyn std::error::Error + Send + Sync>,
    ) -> Self {
        AwsError(Box::new(Failure { code, message, source }))
    }

    /// The service's error code (`NoSuchKey`, `AccessDeniedException`),
    /// when the service answered with one.
    pub fn code(&self) -> Option<&str> {
        self.0.code.as_deref()
    }
}

impl<E, R> From<SdkError<E, R>> for AwsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    fn from(err: SdkError<E, R>) -> Self {
        let (code, message) = match err.as_service_error() {
            Some(e) => (e.code().map(str::to_string), e.message().map(str::to_string)),
            None => (None, None),
        };
        AwsError::new(code, message, Box::new(err))
    }
}

/// A response body that broke off while it was read (part of the call).
impl From<aws_smithy_types::byte_stream::error::Error> for AwsError {
    fn from(err: aws_smithy_types::byte_stream::error::Error) -> Self {
        AwsError::new(None, None, Box::new(err))
    }
}

impl std::fmt::Display for AwsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let failure = &self.0;
        match (&failure.code, &failure.message) {
            (Some(code), Some(message)) => write!(f, "{code}: {message}"),
            // A HEAD request's error has no body, so no message.
            (Some(code), None) => f.write_str(code),
            (None, _) => f.write_str(&display_error(failure.source.as_ref())),
        }
    }
}

impl std::error::Error for AwsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.source.as_ref())
    }
}

/// Throttling, 5xx, timeouts and dropped connections are worth another
/// round beyond the SDK's own retries (EBS blocks uploaded by the builder,
/// read back by the tests); anything else (validation, access denied, no
/// such snapshot) is not.
pub fn is_transient<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> bool
where
    R: std::fmt::Debug,
{
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(e) => {
            let code = e.err().code().unwrap_or_default();
            code.contains("Throttl")
                || code == "RequestLimitExceeded"
                || code == "InternalServerException"
                || code == "ServiceUnavailable"
                || code == "InternalError"
        }
        _ => false,
    }
}

/// Installs the process-wide TLS crypto provider. Called once at the top of
/// each binary's `main`, before any HTTP client is built (and again, doing
/// nothing, by library code that builds its own HTTPS clients).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Counts the HTTP requests an SDK client sends (every attempt, retries
/// included), for the status file and the benchmarks. Add it with
/// `config.to_builder().interceptor(counter.clone())`.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestCounter(std::sync::Arc<std::sync::atomic::AtomicU32>);

impl RequestCounter {
    pub fn get(&self) -> u32 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl aws_smithy_runtime_api::client::interceptors::Intercept for RequestCounter {
    fn name(&self) -> &'static str {
        "keel::RequestCounter"
    }

    fn read_before_transmit(
        &self,
        _context: &aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}
