//! `keel-bootstrap --apply-join` (keel-join.service, on controllers, after
//! kube-apiserver): applies the objects nodes need to join
//! (`crate::join`, from the controller's bundle) to the local API server
//! once it answers, by server-side apply (idempotent: every controller may
//! run it, on every boot). It authenticates with a client certificate it
//! issues itself from the cluster CA for this task only: in memory, never
//! written, valid for [`APPLIER_LIFETIME`], in `system:masters` (the only
//! group that can create the first RBAC bindings of a new cluster).

use std::time::Duration;

use serde_json::Value;

use crate::layout::Layout;
use crate::pki::{Ca, Request, Usage};
use crate::retry::{retry, Attempt, Policy};

/// The applier's certificate lives just long enough for one run.
pub const APPLIER_LIFETIME: time::Duration = time::Duration::hours(1);
/// The applier's identity, as the API server's audit log shows it.
pub const APPLIER_NAME: &str = "keel:join-applier";
/// The field manager of every object Keel applies.
pub const FIELD_MANAGER: &str = "keel";
/// One API request; a local API server answers in milliseconds.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the API server to answer after boot.
pub const READY_POLICY: Policy = Policy {
    initial: Duration::from_secs(1),
    max_delay: Duration::from_secs(10),
    deadline: Duration::from_secs(900),
    max_attempts: 200,
};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Objects { path: String, message: String },
    #[error("issuing the applier's certificate: {0}")]
    Certificate(String),
    #[error("building the API client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("{url}: {message}")]
    Request { url: String, message: String },
    #[error("{url} answered HTTP {status}: {body}")]
    Status { url: String, status: u16, body: String },
}

/// What was applied: `<kind>/<name>` per object, in order.
pub type Applied = Vec<String>;

/// Reads the CA and the objects under `layout`, waits for `server`
/// (`https://127.0.0.1:6443`) to answer `/readyz`, and applies each object.
pub async fn apply_join(
    layout: &Layout,
    server: &str,
    ready: &Policy,
    apply: &Policy,
) -> Result<Applied, ApplyError> {
    let read = |rel: &str| {
        let path = layout.path(rel);
        std::fs::read_to_string(&path)
            .map(zeroize::Zeroizing::new)
            .map_err(|source| ApplyError::Read { path: path.display().to_string(), source })
    };
    let objects_path = layout.path(&format!("etc/{}", crate::join::OBJECTS));
    let objects = read(&format!("etc/{}", crate::join::OBJECTS))?;
    let list: Value = serde_json::from_str(&objects).map_err(|e| ApplyError::Objects {
        path: objects_path.display().to_string(),
        message: e.to_string(),
    })?;
    let items = list["items"].as_array().ok_or_else(|| ApplyError::Objects {
        path: objects_path.display().to_string(),
        message: "not a List with items".into(),
    })?;
    let ca_crt = read("etc/kubernetes/pki/ca.crt")?;
    let ca = Ca::load("the cluster CA", &ca_crt, &read("etc/kubernetes/pki/ca.key")?)
        .map_err(|e| ApplyError::Certificate(e.to_string()))?;
    let me = ca
        .issue_for(
            &Request {
                what: "join applier client certificate",
                common_name: APPLIER_NAME,
                organization: Some("system:masters"),
                dns_names: vec![],
                ips: vec![],
                usage: Usage::Client,
            },
            APPLIER_LIFETIME,
        )
        .map_err(|e| ApplyError::Certificate(e.to_string()))?;
    let http = crate::etcd_api::mtls_client(&ca_crt, &me.cert_pem, &me.key_pem, REQUEST_TIMEOUT)
        .map_err(ApplyError::Client)?;
    wait_ready(&http, server, ready).await?;
    let mut applied = Vec::new();
    for object in items {
        let path = crate::join::apply_path(object).ok_or_else(|| ApplyError::Objects {
            path: objects_path.display().to_string(),
            message: format!(
                "an object Keel does not apply: {}/{}",
                object["apiVersion"], object["kind"]
            ),
        })?;
        server_side_apply(&http, server, &path, object, apply).await?;
        applied.push(format!(
            "{}/{}",
            object["kind"].as_str().unwrap_or("?"),
            object["metadata"]["name"].as_str().unwrap_or("?")
        ));
    }
    Ok(applied)
}

fn send_error(url: &str, e: &reqwest::Error) -> Attempt<ApplyError> {
    Attempt::Retry(ApplyError::Request { url: url.to_string(), message: e.to_string() })
}

/// `GET /readyz` until it answers 200.
async fn wait_ready(
    http: &reqwest::Client,
    server: &str,
    policy: &Policy,
) -> Result<(), ApplyError> {
    let url = format!("{server}/readyz");
    retry(policy, |_| async {
        let resp = http.get(&url).send().await.map_err(|e| send_error(&url, &e))?;
        let status = resp.status().as_u16();
        if status == 200 {
            return Ok(());
        }
        let body = resp.text().await.unwrap_or_default();
        Err(Attempt::Retry(ApplyError::Status { url: url.clone(), status, body }))
    })
    .await
}

/// One server-side apply: `PATCH <path>?fieldManager=keel&force=true` with
/// `application/apply-patch+yaml` (JSON is YAML). 4xx is final (the object
/// or the permission is wrong), 5xx and connection errors are retried.
async fn server_side_apply(
    http: &reqwest::Client,
    server: &str,
    path: &str,
    object: &Value,
    policy: &Policy,
) -> Result<(), ApplyError> {
    let url = format!("{server}{path}?fieldManager={FIELD_MANAGER}&force=true");
    let body = zeroize::Zeroizing::new(object.to_string());
    retry(policy, |_| async {
        let resp = http
            .patch(&url)
            .header("Content-Type", "application/apply-patch+yaml")
            .header("Accept", "application/json")
            .body(body.as_bytes().to_vec())
            .send()
            .await
            .map_err(|e| send_error(&url, &e))?;
        let status = resp.status().as_u16();
        if status == 200 || status == 201 {
            return Ok(());
        }
        // The reply names the object, never its data: keep it short.
        let text: String = resp.text().await.unwrap_or_default().chars().take(300).collect();
        let err = ApplyError::Status { url: url.clone(), status, body: text };
        Err(if status >= 500 || status == 429 { Attempt::Retry(err) } else { Attempt::Fail(err) })
    })
    .await
}
