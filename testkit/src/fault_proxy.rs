//! A fault-injecting HTTP/1.1 proxy in front of moto's server, for tests
//! and the publish benchmark. It is a real server on a loopback port: the
//! code under test talks HTTP to it exactly as it would to AWS.
//!
//! What it does that moto alone cannot:
//! - records every request (method, path, headers and, unless disabled,
//!   the body), so a test can check each PutSnapshotBlock's checksum
//!   header against the bytes it carries and count requests — moto checks
//!   neither per-block nor aggregate checksums;
//! - answers StartSnapshot and ListSnapshotBlocks with `BlockSize:
//!   524288`, as AWS does (moto 5.2.5 says 512 but stores and indexes the
//!   512 KiB blocks it was sent), so tools that take the block size from
//!   the reply (coldsnap, `crate::readback`) behave as they would against
//!   AWS;
//! - injects throttling (HTTP 400 `ThrottlingException`), 5xx and EC2
//!   error replies on chosen requests (PutSnapshotBlock or GetSnapshotBlock
//!   of a block, an EC2 action), consumed one per matching request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::http::{read_request, response_head, Request, Served};

/// The block size AWS announces for EBS direct API snapshots.
pub const AWS_BLOCK_SIZE: u64 = 524_288;

/// One injected reply, given instead of forwarding the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 400 with error type `ThrottlingException` (EBS, JSON).
    Throttle,
    /// This HTTP status with a JSON error body: `InternalServerException`
    /// for 500, `ValidationException` for 4xx (final, not retried),
    /// `ServiceUnavailable` otherwise.
    Status(u16),
    /// An EC2 query-API error: HTTP 400 with this error code, XML body.
    Ec2Error(String),
}

/// Which requests a fault applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Target {
    /// PutSnapshotBlock for this block index.
    PutBlock(u64),
    /// GetSnapshotBlock for this block index.
    GetBlock(u64),
    /// An EC2 query-API call with this `Action`.
    Ec2Action(String),
}

/// A request as the proxy saw it, with the status it answered.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    /// Empty when body recording is off.
    pub body: Vec<u8>,
    pub status: u16,
    /// True when the reply was an injected fault.
    pub injected: bool,
    /// When the request's head arrived and when its reply was written
    /// (the benchmark measures upload time from these).
    pub received: std::time::Instant,
    pub answered: std::time::Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    /// The block index when this is a PutSnapshotBlock call.
    pub fn put_block_index(&self) -> Option<u64> {
        if self.method != "PUT" {
            return None;
        }
        block_index(&self.path)
    }

    /// The EBS direct API's CompleteSnapshot call.
    pub fn is_complete_snapshot(&self) -> bool {
        self.method == "POST" && self.path.starts_with("/snapshots/completion/")
    }

    /// The `Action` of an EC2 query-API call.
    pub fn ec2_action(&self) -> Option<String> {
        self.form_param("Action")
    }

    /// A parameter of a form-encoded (EC2 query API) body.
    pub fn form_param(&self, key: &str) -> Option<String> {
        form_param(&self.body, key)
    }
}

/// Which request bodies the proxy keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bodies {
    All,
    /// Every body but PutSnapshotBlock's data (a whole image's worth).
    NotBlocks,
    None,
}

struct State {
    upstream: String,
    bodies: Bodies,
    faults: Mutex<HashMap<Target, Vec<Fault>>>,
    log: Mutex<Vec<Recorded>>,
    http: reqwest::Client,
}

/// The running proxy; stopped on drop.
pub struct FaultProxy {
    pub endpoint: String,
    state: Arc<State>,
    _served: Served,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (e.g. moto's endpoint) on a free
    /// loopback port. `record_bodies` keeps every request body (tests);
    /// the benchmark turns it off to keep memory flat.
    pub fn start(upstream: &str, record_bodies: bool) -> anyhow::Result<FaultProxy> {
        FaultProxy::start_with(upstream, if record_bodies { Bodies::All } else { Bodies::None })
    }

    /// [`FaultProxy::start`] keeping every request body except the block
    /// data of PutSnapshotBlock calls: the EC2 calls of a real image's
    /// publish (RegisterImage's parameters), without its hundreds of MiB
    /// of blocks in memory.
    pub fn start_recording_calls(upstream: &str) -> anyhow::Result<FaultProxy> {
        FaultProxy::start_with(upstream, Bodies::NotBlocks)
    }

    fn start_with(upstream: &str, bodies: Bodies) -> anyhow::Result<FaultProxy> {
        // reqwest is built without a default TLS provider; the workspace's
        // one (idempotent if already installed).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .context("building the proxy's HTTP client")?;
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_string(),
            bodies,
            faults: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            http,
        });
        let st = Arc::clone(&state);
        let served = Served::start("fault-proxy", move |stream| {
            let st = Arc::clone(&st);
            // A connection error only ends that connection; the client
            // sees it and retries.
            Box::pin(async move {
                let _ = serve(stream, st).await;
            })
        })
        .context("starting the proxy")?;
        Ok(FaultProxy { endpoint: format!("http://{}", served.addr()), state, _served: served })
    }

    /// Answers the next PutSnapshotBlock calls for `index` with `faults`,
    /// one per call, then forwards again.
    pub fn fail_block(&self, index: u64, faults: Vec<Fault>) {
        self.add(Target::PutBlock(index), faults);
    }

    /// Answers the next GetSnapshotBlock calls for `index` with `faults`,
    /// one per call, then forwards again.
    pub fn fail_get_block(&self, index: u64, faults: Vec<Fault>) {
        self.add(Target::GetBlock(index), faults);
    }

    /// Answers the next EC2 calls with this `Action` with `faults`.
    pub fn fail_ec2_action(&self, action: &str, faults: Vec<Fault>) {
        self.add(Target::Ec2Action(action.to_string()), faults);
    }

    /// Drops every fault not yet injected.
    pub fn clear_faults(&self) {
        lock(&self.state.faults).clear();
    }

    fn add(&self, target: Target, faults: Vec<Fault>) {
        lock(&self.state.faults).entry(target).or_default().extend(faults);
    }

    /// Every request so far, in the order they completed.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state.log).clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        lock(&self.state.log).clear();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn block_index(path: &str) -> Option<u64> {
    // /snapshots/{id}/blocks/{index}
    let mut parts = path.trim_start_matches('/').split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("snapshots"), Some(_), Some("blocks"), Some(i), None) => {
            i.split('?').next().and_then(|i| i.parse().ok())
        }
        _ => None,
    }
}

fn form_param(body: &[u8], key: &str) -> Option<String> {
    let body = std::str::from_utf8(body).ok()?;
    body.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn serve(mut stream: TcpStream, state: Arc<State>) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    while let Some(req) = read_request(&mut stream, &mut buf).await {
        let (status, headers, body, injected) = match injected_fault(&state, &req) {
            Some(fault) => {
                let (s, h, b) = fault_reply(&fault);
                (s, h, b, true)
            }
            None => {
                let (s, h, b) = forward(&state, &req).await?;
                (s, h, b, false)
            }
        };
        stream.write_all(&response_head(status, &headers, body.len())).await?;
        stream.write_all(&body).await?;
        stream.flush().await?;
        let close = req.close;
        let keep = match state.bodies {
            Bodies::All => true,
            Bodies::NotBlocks => !(req.method == "PUT" && block_index(&req.path).is_some()),
            Bodies::None => false,
        };
        lock(&state.log).push(Recorded {
            method: req.method,
            path: req.path,
            headers: req.headers,
            body: if keep { req.body } else { Vec::new() },
            status,
            injected,
            received: req.received,
            answered: std::time::Instant::now(),
        });
        if close {
            break;
        }
    }
    Ok(())
}

fn injected_fault(state: &State, req: &Request) -> Option<Fault> {
    let target = if req.method == "PUT" {
        Target::PutBlock(block_index(&req.path)?)
    } else if req.method == "GET" {
        Target::GetBlock(block_index(&req.path)?)
    } else {
        Target::Ec2Action(form_param(&req.body, "Action")?)
    };
    let mut faults = lock(&state.faults);
    let queue = faults.get_mut(&target)?;
    if queue.is_empty() {
        return None;
    }
    Some(queue.remove(0))
}

type Reply = (u16, Vec<(String, String)>, Vec<u8>);

fn fault_reply(fault: &Fault) -> Reply {
    let json = |code: &str| {
        vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("x-amzn-errortype".to_string(), code.to_string()),
        ]
    };
    match fault {
        Fault::Throttle => (
            400,
            json("ThrottlingException"),
            br#"{"message":"Rate exceeded (injected by the test proxy)"}"#.to_vec(),
        ),
        Fault::Status(status) => {
            let code = match status {
                500 => "InternalServerException",
                400..=499 => "ValidationException",
                _ => "ServiceUnavailable",
            };
            (
                *status,
                json(code),
                format!(r#"{{"message":"injected HTTP {status} by the test proxy"}}"#).into_bytes(),
            )
        }
        Fault::Ec2Error(code) => (
            400,
            vec![("content-type".to_string(), "text/xml".to_string())],
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code>\
                 <Message>injected by the test proxy</Message></Error></Errors>\
                 <RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>"
            )
            .into_bytes(),
        ),
    }
}

async fn forward(state: &State, req: &Request) -> anyhow::Result<Reply> {
    let url = format!("{}{}", state.upstream, req.path);
    let method = reqwest::Method::from_bytes(req.method.as_bytes()).context("bad method")?;
    let mut builder = state.http.request(method, &url);
    for (k, v) in &req.headers {
        if matches!(k.as_str(), "connection" | "content-length" | "transfer-encoding" | "expect") {
            continue;
        }
        builder = builder.header(k.as_str(), v.as_str());
    }
    let resp = builder
        .body(req.body.clone())
        .send()
        .await
        .with_context(|| format!("forwarding {} {url}", req.method))?;
    let status = resp.status().as_u16();
    let headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "connection" | "content-length" | "transfer-encoding" | "keep-alive"
            )
        })
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let mut body = resp.bytes().await.context("reading the upstream reply")?.to_vec();
    // StartSnapshot answers 201 Created.
    if announces_block_size(&req.method, &req.path) && (200..300).contains(&status) {
        body = with_aws_block_size(&body);
    }
    Ok((status, headers, body))
}

/// StartSnapshot (`POST /snapshots`) and ListSnapshotBlocks (`GET
/// /snapshots/{id}/blocks`): the replies that carry `BlockSize`.
fn announces_block_size(method: &str, path: &str) -> bool {
    let path = path.split('?').next().unwrap_or_default();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    matches!(
        (method, parts.as_slice()),
        ("POST", ["snapshots"]) | ("GET", ["snapshots", _, "blocks"])
    )
}

/// A StartSnapshot or ListSnapshotBlocks reply with `BlockSize` set to
/// what AWS answers.
fn with_aws_block_size(body: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(mut v) => {
            if let Some(obj) = v.as_object_mut() {
                obj.insert("BlockSize".into(), AWS_BLOCK_SIZE.into());
            }
            serde_json::to_vec(&v).unwrap_or_else(|_| body.to_vec())
        }
        Err(_) => body.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_block_paths_and_form_bodies() {
        assert_eq!(block_index("/snapshots/snap-1/blocks/42"), Some(42));
        assert_eq!(block_index("/snapshots/snap-1/blocks"), None);
        assert_eq!(block_index("/snapshots/completion/snap-1"), None);
        let body = b"Action=RegisterImage&Name=keel%2Betcd+x&Version=2016-11-15";
        assert_eq!(form_param(body, "Action").as_deref(), Some("RegisterImage"));
        assert_eq!(form_param(body, "Name").as_deref(), Some("keel+etcd x"));
        assert_eq!(form_param(body, "Missing"), None);
    }

    #[test]
    fn knows_which_replies_carry_the_block_size() {
        assert!(announces_block_size("POST", "/snapshots"));
        assert!(announces_block_size("GET", "/snapshots/snap-1/blocks?maxResults=10"));
        assert!(!announces_block_size("GET", "/snapshots/snap-1/blocks/3"));
        assert!(!announces_block_size("POST", "/snapshots/completion/snap-1"));
        assert!(!announces_block_size("PUT", "/snapshots/snap-1/blocks/3"));
    }

    #[test]
    fn rewrites_the_block_size() {
        let out = with_aws_block_size(br#"{"SnapshotId": "snap-1", "BlockSize": 512}"#);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["BlockSize"], 524288);
        assert_eq!(v["SnapshotId"], "snap-1");
    }
}
