//! The few calls keel-bootstrap makes to a running etcd cluster, through
//! etcd's v3 HTTP/JSON gateway on the client port (served by etcd 3.4 and
//! 3.5 alike): health, member list, member add and member remove, over
//! HTTPS with a client certificate signed by the etcd CA. Each call has a
//! timeout and goes through the one retry policy.

use std::time::Duration;

use serde::Deserialize;

use crate::retry::{retry, Attempt, Policy};

/// One etcd request; a healthy member answers in milliseconds.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum EtcdApiError {
    #[error("building the etcd HTTPS client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("{url}: {source}")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered HTTP {status}: {body}")]
    Status { url: String, status: u16, body: String },
    #[error("{url} answered unreadable JSON: {message}")]
    Decode { url: String, message: String },
    #[error("{url} says the member is not healthy: {body}")]
    Unhealthy { url: String, body: String },
}

/// A cluster member as the gateway reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The member id (uint64; the gateway writes it as a string).
    pub id: String,
    /// Empty until a newly added member has started.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

#[derive(Deserialize)]
struct RawMember {
    #[serde(rename = "ID", default)]
    id: serde_json::Value,
    #[serde(default)]
    name: String,
    #[serde(rename = "peerURLs", default)]
    peer_urls: Vec<String>,
    #[serde(rename = "clientURLs", default)]
    client_urls: Vec<String>,
}

#[derive(Deserialize)]
struct Members {
    #[serde(default)]
    members: Vec<RawMember>,
    #[serde(default)]
    member: Option<RawMember>,
}

impl From<RawMember> for Member {
    fn from(m: RawMember) -> Member {
        let id = match m.id {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        Member { id, name: m.name, peer_urls: m.peer_urls, client_urls: m.client_urls }
    }
}

/// An HTTPS client that trusts only `ca_pem` and presents
/// `cert_pem`/`key_pem`, with `timeout` per request and per connect.
pub fn mtls_client(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    timeout: Duration,
) -> Result<reqwest::Client, reqwest::Error> {
    crate::aws::install_crypto_provider();
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes())?;
    let mut identity_pem =
        zeroize::Zeroizing::new(Vec::with_capacity(cert_pem.len() + key_pem.len() + 1));
    identity_pem.extend_from_slice(cert_pem.as_bytes());
    identity_pem.push(b'\n');
    identity_pem.extend_from_slice(key_pem.as_bytes());
    let identity = reqwest::Identity::from_pem(&identity_pem)?;
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .identity(identity)
        .timeout(timeout)
        .connect_timeout(timeout)
        .no_proxy()
        .build()
}

pub struct EtcdApi {
    http: reqwest::Client,
    policy: Policy,
}

impl EtcdApi {
    /// A client that trusts only `ca_pem` and presents `cert_pem`/`key_pem`.
    pub fn new(
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
        policy: Policy,
    ) -> Result<EtcdApi, EtcdApiError> {
        let http = mtls_client(ca_pem, cert_pem, key_pem, REQUEST_TIMEOUT)
            .map_err(EtcdApiError::Client)?;
        Ok(EtcdApi { http, policy })
    }

    /// `GET <endpoint>/health`: Ok when the member says it is healthy.
    pub async fn health(&self, endpoint: &str) -> Result<(), EtcdApiError> {
        self.health_with(endpoint, &self.policy).await
    }

    /// `health` with another retry policy (a quick probe of a peer that
    /// may not be running yet).
    pub async fn health_with(&self, endpoint: &str, policy: &Policy) -> Result<(), EtcdApiError> {
        let url = format!("{}/health", endpoint.trim_end_matches('/'));
        retry(policy, |_| async {
            let resp = self.http.get(&url).send().await.map_err(|source| {
                Attempt::Retry(EtcdApiError::Request { url: url.clone(), source })
            })?;
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            if status != 200 {
                return Err(Attempt::Retry(EtcdApiError::Status {
                    url: url.clone(),
                    status,
                    body,
                }));
            }
            let healthy = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("health").and_then(|h| h.as_str().map(|s| s == "true")))
                .unwrap_or(false);
            if healthy {
                Ok(())
            } else {
                Err(Attempt::Retry(EtcdApiError::Unhealthy { url: url.clone(), body }))
            }
        })
        .await
    }

    pub async fn member_list(&self, endpoint: &str) -> Result<Vec<Member>, EtcdApiError> {
        let m = self.post(endpoint, "member/list", serde_json::json!({})).await?;
        Ok(m.members.into_iter().map(Member::from).collect())
    }

    /// Adds a member with `peer_url`; returns the new member and the
    /// membership after the change.
    pub async fn member_add(
        &self,
        endpoint: &str,
        peer_url: &str,
    ) -> Result<(Member, Vec<Member>), EtcdApiError> {
        let url = format!("{}/v3/cluster/member/add", endpoint.trim_end_matches('/'));
        let m = self
            .post(endpoint, "member/add", serde_json::json!({ "peerURLs": [peer_url] }))
            .await?;
        let added = m
            .member
            .map(Member::from)
            .ok_or(EtcdApiError::Decode { url, message: "no `member` in the answer".into() })?;
        Ok((added, m.members.into_iter().map(Member::from).collect()))
    }

    pub async fn member_remove(&self, endpoint: &str, id: &str) -> Result<(), EtcdApiError> {
        self.post(endpoint, "member/remove", serde_json::json!({ "ID": id })).await.map(|_| ())
    }

    async fn post(
        &self,
        endpoint: &str,
        call: &str,
        body: serde_json::Value,
    ) -> Result<Members, EtcdApiError> {
        let url = format!("{}/v3/cluster/{call}", endpoint.trim_end_matches('/'));
        let body = body.to_string();
        retry(&self.policy, |_| async {
            let resp = self
                .http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .map_err(|source| {
                    Attempt::Retry(EtcdApiError::Request { url: url.clone(), source })
                })?;
            let status = resp.status().as_u16();
            let text = resp.text().await.map_err(|source| {
                Attempt::Retry(EtcdApiError::Request { url: url.clone(), source })
            })?;
            if status != 200 {
                let err = EtcdApiError::Status { url: url.clone(), status, body: text };
                return Err(if status >= 500 || status == 429 {
                    Attempt::Retry(err)
                } else {
                    Attempt::Fail(err)
                });
            }
            serde_json::from_str(&text).map_err(|e| {
                Attempt::Fail(EtcdApiError::Decode { url: url.clone(), message: e.to_string() })
            })
        })
        .await
    }
}
