//! IMDSv2 client: a session token first (PUT with a TTL), then GETs with the
//! token. 404 means "absent" (`Ok(None)`), 401 means the token expired: it
//! is refreshed and the request tried again. Every request has its own
//! timeout and goes through the one retry policy (`crate::retry`).
//!
//! The API version is pinned to `2021-07-15` rather than `latest`: every
//! path read here exists in that version, and a pinned date keeps the
//! answers' shape fixed if AWS ever changes `latest`. The token endpoint
//! has no dated form and is always `/latest/api/token`.

use std::time::Duration;

use tokio::sync::Mutex;

use crate::retry::{retry, Attempt, Policy};

/// The instance metadata service on EC2.
pub const DEFAULT_BASE_URL: &str = "http://169.254.169.254";
/// The pinned metadata API version (see the module docs).
pub(crate) const API_VERSION: &str = "2021-07-15";
/// Token lifetime asked for; a boot takes seconds, six hours is AWS's cap.
pub(crate) const TOKEN_TTL_SECONDS: u32 = 21_600;
/// One IMDS request; the service answers in milliseconds when healthy.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The token's header names.
pub(crate) const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
pub(crate) const TOKEN_TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("requesting {url}: {source}")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} answered with a body that is not UTF-8")]
    NotText { url: String },
    #[error("instance metadata has no {what} ({url} answered 404)")]
    Missing { what: &'static str, url: String },
    #[error("building the IMDS HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// Who this instance is, from the metadata service.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    pub instance_id: String,
    pub region: String,
    pub availability_zone: String,
    pub private_ipv4: String,
    /// The private DNS name (`ip-10-0-1-2.ec2.internal`); also the hostname.
    pub local_hostname: String,
}

pub struct Imds {
    http: reqwest::Client,
    base: String,
    policy: Policy,
    token: Mutex<Option<String>>,
}

impl Imds {
    /// A client for `base_url` (`DEFAULT_BASE_URL` on EC2) with the quick
    /// retry policy.
    pub fn new(base_url: &str) -> Result<Imds, ImdsError> {
        Self::with_policy(base_url, Policy::quick())
    }

    pub fn with_policy(base_url: &str, policy: Policy) -> Result<Imds, ImdsError> {
        crate::aws::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT)
            // IMDS must be reached directly, never through a proxy.
            .no_proxy()
            // Names (a base URL given by name) resolved in-process, never
            // by glibc's NSS (see crate::dns).
            .dns_resolver(std::sync::Arc::new(crate::dns::Dns::system()))
            .build()
            .map_err(ImdsError::Client)?;
        Ok(Imds {
            http,
            base: base_url.trim_end_matches('/').to_string(),
            policy,
            token: Mutex::new(None),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// GET `/<API_VERSION>/<path>`: `Ok(None)` on 404.
    pub async fn get(&self, path: &str) -> Result<Option<Vec<u8>>, ImdsError> {
        let url = format!("{}/{API_VERSION}/{}", self.base, path.trim_start_matches('/'));
        retry(&self.policy, |_| self.attempt(&url)).await
    }

    /// GET a text value, `Ok(None)` on 404.
    pub async fn get_text(&self, path: &str) -> Result<Option<String>, ImdsError> {
        let url = format!("{}/{API_VERSION}/{path}", self.base);
        match self.get(path).await? {
            None => Ok(None),
            Some(bytes) => String::from_utf8(bytes)
                .map(|s| Some(s.trim().to_string()))
                .map_err(|_| ImdsError::NotText { url }),
        }
    }

    async fn required(&self, what: &'static str, path: &str) -> Result<String, ImdsError> {
        self.get_text(path).await?.ok_or_else(|| ImdsError::Missing {
            what,
            url: format!("{}/{API_VERSION}/{path}", self.base),
        })
    }

    /// Instance id, region, availability zone, private IPv4 and DNS name.
    pub async fn identity(&self) -> Result<Identity, ImdsError> {
        Ok(Identity {
            instance_id: self.required("instance id", "meta-data/instance-id").await?,
            region: self.required("region", "meta-data/placement/region").await?,
            availability_zone: self
                .required("availability zone", "meta-data/placement/availability-zone")
                .await?,
            private_ipv4: self.required("private IPv4 address", "meta-data/local-ipv4").await?,
            local_hostname: self.required("local hostname", "meta-data/local-hostname").await?,
        })
    }

    /// The primary network interface's MAC address, as the metadata gives
    /// it.
    pub async fn primary_mac(&self) -> Result<String, ImdsError> {
        self.required("primary network interface's MAC address", "meta-data/mac").await
    }

    /// The instance's user data; `Ok(None)` when the launch gave none.
    pub async fn user_data(&self) -> Result<Option<Vec<u8>>, ImdsError> {
        self.get("user-data").await
    }

    /// One attempt: a token if there is none, then the GET.
    async fn attempt(&self, url: &str) -> Result<Option<Vec<u8>>, Attempt<ImdsError>> {
        let token = self.token().await?;
        let resp =
            self.http.get(url).header(TOKEN_HEADER, &token).send().await.map_err(|source| {
                Attempt::Retry(ImdsError::Request { url: url.to_string(), source })
            })?;
        let status = resp.status().as_u16();
        match status {
            200 => resp.bytes().await.map(|b| Some(b.to_vec())).map_err(|source| {
                Attempt::Retry(ImdsError::Request { url: url.to_string(), source })
            }),
            404 => Ok(None),
            401 => {
                // The token expired or the service restarted: get a new one.
                *self.token.lock().await = None;
                Err(Attempt::Retry(ImdsError::Status { url: url.to_string(), status }))
            }
            _ => Err(classify(url, status)),
        }
    }

    async fn token(&self) -> Result<String, Attempt<ImdsError>> {
        let mut slot = self.token.lock().await;
        if let Some(t) = slot.as_ref() {
            return Ok(t.clone());
        }
        let url = format!("{}/latest/api/token", self.base);
        let resp = self
            .http
            .put(&url)
            .header(TOKEN_TTL_HEADER, TOKEN_TTL_SECONDS.to_string())
            .send()
            .await
            .map_err(|source| Attempt::Retry(ImdsError::Request { url: url.clone(), source }))?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(classify(&url, status));
        }
        let body = resp
            .text()
            .await
            .map_err(|source| Attempt::Retry(ImdsError::Request { url: url.clone(), source }))?;
        let token = body.trim().to_string();
        *slot = Some(token.clone());
        Ok(token)
    }
}

/// 429 and 5xx are worth retrying; anything else is final.
fn classify(url: &str, status: u16) -> Attempt<ImdsError> {
    let err = ImdsError::Status { url: url.to_string(), status };
    if status == 429 || status >= 500 {
        Attempt::Retry(err)
    } else {
        Attempt::Fail(err)
    }
}
