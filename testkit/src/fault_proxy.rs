//! A fault-injecting HTTP/1.1 proxy in front of moto's server, for tests
//! and the publish benchmark. It is a real server on a loopback port: the
//! code under test talks HTTP to it exactly as it would to AWS.
//!
//! What it does that moto alone cannot:
//! - records every request (method, path, headers and, unless disabled,
//!   the body), so a test can check each PutSnapshotBlock's checksum
//!   header against the bytes it carries and count requests — moto checks
//!   neither per-block nor aggregate checksums;
//! - answers StartSnapshot with `BlockSize: 524288`, as AWS does (moto
//!   says 512), so tools that take the block size from the reply (coldsnap)
//!   behave as they would against AWS;
//! - injects throttling (HTTP 400 `ThrottlingException`), 5xx and EC2
//!   error replies on chosen requests, consumed one per matching request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

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

struct State {
    upstream: String,
    record_bodies: bool,
    faults: Mutex<HashMap<Target, Vec<Fault>>>,
    log: Mutex<Vec<Recorded>>,
    http: reqwest::Client,
}

/// The running proxy; stopped on drop.
pub struct FaultProxy {
    pub endpoint: String,
    state: Arc<State>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (e.g. moto's endpoint) on a free
    /// loopback port. `record_bodies` keeps every request body (tests);
    /// the benchmark turns it off to keep memory flat.
    pub fn start(upstream: &str, record_bodies: bool) -> anyhow::Result<FaultProxy> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("fault-proxy")
            .build()
            .context("starting the proxy's runtime")?;
        // reqwest is built without a default TLS provider; the workspace's
        // one (idempotent if already installed).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .context("building the proxy's HTTP client")?;
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_string(),
            record_bodies,
            faults: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            http,
        });
        // Bound here (not with block_on) so that a test may start the
        // proxy from inside its own runtime.
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the proxy's port")?;
        std_listener.set_nonblocking(true)?;
        let addr: SocketAddr = std_listener.local_addr()?;
        let accept_state = Arc::clone(&state);
        runtime.spawn(async move {
            let Ok(listener) = TcpListener::from_std(std_listener) else {
                return;
            };
            while let Ok((stream, _)) = listener.accept().await {
                let state = Arc::clone(&accept_state);
                tokio::spawn(async move {
                    // A connection error only ends that connection; the
                    // client sees it and retries.
                    let _ = serve(stream, state).await;
                });
            }
        });
        Ok(FaultProxy { endpoint: format!("http://{addr}"), state, runtime: Some(runtime) })
    }

    /// Answers the next PutSnapshotBlock calls for `index` with `faults`,
    /// one per call, then forwards again.
    pub fn fail_block(&self, index: u64, faults: Vec<Fault>) {
        self.add(Target::PutBlock(index), faults);
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

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
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
                match std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
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

struct Request {
    received: std::time::Instant,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

async fn serve(stream: TcpStream, state: Arc<State>) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::with_capacity(1 << 20, read);
    loop {
        let Some(req) = read_request(&mut reader, &mut write).await? else {
            return Ok(());
        };
        let close = req
            .headers
            .iter()
            .any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close"));
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
        let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
        for (k, v) in &headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
        write.write_all(head.as_bytes()).await?;
        write.write_all(&body).await?;
        write.flush().await?;
        lock(&state.log).push(Recorded {
            method: req.method,
            path: req.path,
            headers: req.headers,
            body: if state.record_bodies { req.body } else { Vec::new() },
            status,
            injected,
            received: req.received,
            answered: std::time::Instant::now(),
        });
        if close {
            return Ok(());
        }
    }
}

/// Reads one request; `None` at a clean end of the connection.
async fn read_request<R, W>(reader: &mut BufReader<R>, write: &mut W) -> anyhow::Result<Option<Request>>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    let received = std::time::Instant::now();
    let mut parts = line.split_whitespace();
    let method = parts.next().context("empty request line")?.to_string();
    let path = parts.next().context("request line without a path")?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).await? == 0 {
            anyhow::bail!("connection closed inside the headers");
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    if get("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        write.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        write.flush().await?;
    }
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).await?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .context("bad chunk size")?;
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    let mut t = String::new();
                    if reader.read_line(&mut t).await? == 0 || t.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..]).await?;
            let mut crlf = [0u8; 2];
            reader.read_exact(&mut crlf).await?;
        }
    } else if let Some(len) = get("content-length") {
        let len: usize = len.parse().context("bad content-length")?;
        body.resize(len, 0);
        reader.read_exact(&mut body).await?;
    }
    Ok(Some(Request { received, method, path, headers, body }))
}

fn injected_fault(state: &State, req: &Request) -> Option<Fault> {
    let target = if req.method == "PUT" {
        Target::PutBlock(block_index(&req.path)?)
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
            !matches!(k.as_str(), "connection" | "content-length" | "transfer-encoding" | "keep-alive")
        })
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let mut body = resp.bytes().await.context("reading the upstream reply")?.to_vec();
    if req.method == "POST" && req.path.split('?').next() == Some("/snapshots") && status == 200 {
        body = with_aws_block_size(&body);
    }
    Ok((status, headers, body))
}

/// StartSnapshot's reply with `BlockSize` set to what AWS answers.
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

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
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
    fn rewrites_the_block_size() {
        let out = with_aws_block_size(br#"{"SnapshotId": "snap-1", "BlockSize": 512}"#);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["BlockSize"], 524288);
        assert_eq!(v["SnapshotId"], "snap-1");
    }
}
