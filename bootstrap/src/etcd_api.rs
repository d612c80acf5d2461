//! The few calls keel-bootstrap makes to a running etcd cluster, through
//! etcd's v3 HTTP/JSON gateway on the client port (served by etcd 3.4 and
//! 3.5 alike): health, member list/add (as a learner)/promote/remove, a
//! lease-backed lock key, over HTTPS with a client certificate signed by
//! the etcd CA. Each call has a timeout and goes through the one retry
//! policy.

use std::time::Duration;

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::retry::{retry, Attempt, Policy};

/// One etcd request; a healthy member answers in milliseconds.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// A whole backend snapshot (etcd's default quota is 2 GiB).
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);

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
    /// A learner: receives the log, does not vote, until promoted.
    pub is_learner: bool,
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
    #[serde(rename = "isLearner", default)]
    is_learner: bool,
}

#[derive(Deserialize, Default)]
struct Header {
    #[serde(default)]
    cluster_id: serde_json::Value,
}

#[derive(Deserialize)]
struct Members {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    members: Vec<RawMember>,
    #[serde(default)]
    member: Option<RawMember>,
}

/// The membership as one member reports it, with the cluster's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The cluster id (uint64 as a decimal string).
    pub cluster_id: String,
    pub members: Vec<Member>,
}

/// A uint64 the gateway writes as a string (or, rarely, a number).
fn id_text(v: serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s,
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

impl From<RawMember> for Member {
    fn from(m: RawMember) -> Member {
        Member {
            id: id_text(m.id),
            name: m.name,
            peer_urls: m.peer_urls,
            client_urls: m.client_urls,
            is_learner: m.is_learner,
        }
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
        // Names (if a URL ever holds one) resolved in-process, never by
        // glibc's NSS (see crate::dns).
        .dns_resolver(std::sync::Arc::new(crate::dns::Dns::system()))
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
        Ok(self.membership(endpoint).await?.members)
    }

    /// The member list with the id of the cluster that answered.
    pub async fn membership(&self, endpoint: &str) -> Result<Membership, EtcdApiError> {
        let m: Members = self.post(endpoint, "cluster/member/list", serde_json::json!({})).await?;
        Ok(Membership {
            cluster_id: id_text(m.header.cluster_id),
            members: m.members.into_iter().map(Member::from).collect(),
        })
    }

    /// Adds a voting member with `peer_url`; returns the new member and
    /// the membership after the change.
    pub async fn member_add(
        &self,
        endpoint: &str,
        peer_url: &str,
    ) -> Result<(Member, Vec<Member>), EtcdApiError> {
        self.add(endpoint, peer_url, false).await
    }

    /// Adds a learner with `peer_url` (it votes once promoted).
    pub async fn member_add_learner(
        &self,
        endpoint: &str,
        peer_url: &str,
    ) -> Result<(Member, Vec<Member>), EtcdApiError> {
        self.add(endpoint, peer_url, true).await
    }

    async fn add(
        &self,
        endpoint: &str,
        peer_url: &str,
        learner: bool,
    ) -> Result<(Member, Vec<Member>), EtcdApiError> {
        let url = format!("{}/v3/cluster/member/add", endpoint.trim_end_matches('/'));
        let m: Members = self
            .post(
                endpoint,
                "cluster/member/add",
                serde_json::json!({ "peerURLs": [peer_url], "isLearner": learner }),
            )
            .await?;
        let added = m
            .member
            .map(Member::from)
            .ok_or(EtcdApiError::Decode { url, message: "no `member` in the answer".into() })?;
        Ok((added, m.members.into_iter().map(Member::from).collect()))
    }

    /// Removes member `id`. A member that is no longer there (another node
    /// removed it first) counts as removed.
    pub async fn member_remove(&self, endpoint: &str, id: &str) -> Result<(), EtcdApiError> {
        let r: Result<serde_json::Value, _> =
            self.post(endpoint, "cluster/member/remove", serde_json::json!({ "ID": id })).await;
        match r {
            Ok(_) => Ok(()),
            Err(EtcdApiError::Status { status, body, .. })
                if status == 404 || body.contains("member not found") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Promotes learner `id` to a voting member. etcd refuses while the
    /// learner is not in sync with the leader (an error the caller retries).
    pub async fn member_promote(&self, endpoint: &str, id: &str) -> Result<(), EtcdApiError> {
        self.post::<serde_json::Value>(
            endpoint,
            "cluster/member/promote",
            serde_json::json!({ "ID": id }),
        )
        .await
        .map(|_| ())
    }

    /// Takes the lock `key` for `holder` when nobody holds it, under a new
    /// lease of `ttl_seconds` (so a holder that dies frees it). Returns
    /// the holder after the attempt: `holder` when this call (or an
    /// earlier run of the same holder) holds it.
    pub async fn lock(
        &self,
        endpoint: &str,
        key: &str,
        holder: &str,
        ttl_seconds: u64,
    ) -> Result<String, EtcdApiError> {
        let lease: serde_json::Value = self
            .post(endpoint, "lease/grant", serde_json::json!({ "TTL": ttl_seconds, "ID": 0 }))
            .await?;
        let lease_id = id_text(lease.get("ID").cloned().unwrap_or_default());
        let k = b64(key);
        let txn = serde_json::json!({
            "compare": [{ "key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0" }],
            "success": [{ "request_put": { "key": k, "value": b64(holder), "lease": lease_id } }],
            "failure": [{ "request_range": { "key": k } }],
        });
        let answer: serde_json::Value = self.post(endpoint, "kv/txn", txn).await?;
        if answer.get("succeeded").and_then(|v| v.as_bool()).unwrap_or(false) {
            return Ok(holder.to_string());
        }
        // Held: by whom? (The unused lease expires by itself.)
        Ok(answer
            .pointer("/responses/0/response_range/kvs/0/value")
            .and_then(|v| v.as_str())
            .and_then(unb64)
            .unwrap_or_default())
    }

    /// Releases the lock `key` if `holder` holds it.
    pub async fn unlock(
        &self,
        endpoint: &str,
        key: &str,
        holder: &str,
    ) -> Result<(), EtcdApiError> {
        let k = b64(key);
        let txn = serde_json::json!({
            "compare": [{ "key": k, "target": "VALUE", "result": "EQUAL", "value": b64(holder) }],
            "success": [{ "request_delete_range": { "key": k } }],
        });
        self.post::<serde_json::Value>(endpoint, "kv/txn", txn).await.map(|_| ())
    }

    /// Puts `value` at `key`.
    pub async fn put(&self, endpoint: &str, key: &str, value: &str) -> Result<(), EtcdApiError> {
        self.post::<serde_json::Value>(
            endpoint,
            "kv/put",
            serde_json::json!({ "key": b64(key), "value": b64(value) }),
        )
        .await
        .map(|_| ())
    }

    /// The value at `key` (a linearizable read), None when absent.
    pub async fn get(&self, endpoint: &str, key: &str) -> Result<Option<String>, EtcdApiError> {
        let answer: serde_json::Value =
            self.post(endpoint, "kv/range", serde_json::json!({ "key": b64(key) })).await?;
        Ok(answer.pointer("/kvs/0/value").and_then(|v| v.as_str()).and_then(unb64))
    }

    /// Whether the member at `endpoint` is the leader (`Maintenance/Status`).
    pub async fn is_leader(&self, endpoint: &str) -> Result<bool, EtcdApiError> {
        let st: serde_json::Value =
            self.post(endpoint, "maintenance/status", serde_json::json!({})).await?;
        let me = st.pointer("/header/member_id").cloned().map(id_text).unwrap_or_default();
        let leader = st.get("leader").cloned().map(id_text).unwrap_or_default();
        Ok(!me.is_empty() && me == leader)
    }

    /// A snapshot of the member's backend (`Maintenance/Snapshot`, which
    /// the gateway streams as one JSON object a line with a base64 blob).
    pub async fn snapshot(&self, endpoint: &str) -> Result<Zeroizing<Vec<u8>>, EtcdApiError> {
        use base64::Engine;
        let url = format!("{}/v3/maintenance/snapshot", endpoint.trim_end_matches('/'));
        let request = |source| EtcdApiError::Request { url: url.clone(), source };
        let resp = self
            .http
            .post(&url)
            .timeout(SNAPSHOT_TIMEOUT)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .map_err(request)?;
        let status = resp.status().as_u16();
        if status != 200 {
            let body = resp.text().await.unwrap_or_default();
            return Err(EtcdApiError::Status { url, status, body });
        }
        let text = Zeroizing::new(resp.text().await.map_err(request)?);
        let mut db = Zeroizing::new(Vec::new());
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| EtcdApiError::Decode { url: url.clone(), message: e.to_string() })?;
            if let Some(err) = v.get("error") {
                return Err(EtcdApiError::Decode {
                    url: url.clone(),
                    message: format!("the snapshot stream failed: {err}"),
                });
            }
            let blob = v.pointer("/result/blob").and_then(|b| b.as_str()).unwrap_or_default();
            let chunk = base64::engine::general_purpose::STANDARD.decode(blob).map_err(|e| {
                EtcdApiError::Decode { url: url.clone(), message: format!("blob: {e}") }
            })?;
            db.extend_from_slice(&chunk);
        }
        if db.is_empty() {
            return Err(EtcdApiError::Decode { url, message: "an empty snapshot".into() });
        }
        Ok(db)
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        endpoint: &str,
        call: &str,
        body: serde_json::Value,
    ) -> Result<T, EtcdApiError> {
        let url = format!("{}/v3/{call}", endpoint.trim_end_matches('/'));
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
                // A learner refuses most calls (503): asking it again will
                // not help; the caller asks another member.
                let learner = text.contains("not supported for learner");
                let err = EtcdApiError::Status { url: url.clone(), status, body: text };
                return Err(if (status >= 500 || status == 429) && !learner {
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

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn unb64(s: &str) -> Option<String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    String::from_utf8(bytes).ok()
}
