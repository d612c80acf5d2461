//! A small HTTP/1.1 fixture server on a real loopback socket, for tests of
//! code that downloads: it serves files and scripted faults (404, 503 then
//! success, a stall past the client's timeout, a connection reset in the
//! middle of a body, wrong bytes). It is not a mock of an HTTP library: the
//! client under test opens real TCP connections to it.
//!
//! ```no_run
//! use keel_testkit::http::{FixtureServer, Reply};
//! let server = FixtureServer::start().unwrap();
//! server.serve("/kubelet", b"bytes".to_vec());
//! server.script("/flaky", vec![Reply::Status(503), Reply::Body(b"ok".to_vec())]);
//! let url = server.url("/flaky");
//! // ... run the client against `url`, then:
//! assert_eq!(server.hits("/flaky"), 2);
//! ```
//!
//! Each path has a script of replies used one per request, in order; the
//! last one repeats. Unknown paths get 404. The server runs on its own
//! thread and tokio runtime, so sync tests and child processes can use it;
//! it stops when dropped.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the server does with one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with these bytes (wrong bytes are just other bytes).
    Body(Vec<u8>),
    /// This status with a short text body.
    Status(u16),
    /// 200 with the Content-Length of `body`, sends its first half, then
    /// sends nothing more until the server stops: a client without a read
    /// timeout hangs.
    Stall(Vec<u8>),
    /// 200 with the Content-Length of `body`, sends its first half, then
    /// resets the connection (TCP RST).
    ResetMidBody(Vec<u8>),
}

#[derive(Default)]
struct Route {
    script: Vec<Reply>,
    hits: usize,
}

#[derive(Default)]
struct State {
    routes: HashMap<String, Route>,
    /// Every request path, in order.
    log: Vec<String>,
}

pub struct FixtureServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    _served: Served,
}

impl FixtureServer {
    /// Starts a server on a free port of 127.0.0.1.
    pub fn start() -> std::io::Result<FixtureServer> {
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let served =
            Served::start("fixture-http", move |stream| Box::pin(handle(stream, st.clone())))?;
        Ok(FixtureServer { addr: served.addr(), state, _served: served })
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `body` at `path` for every request.
    pub fn serve(&self, path: &str, body: Vec<u8>) {
        self.script(path, vec![Reply::Body(body)]);
    }

    /// Replies to requests for `path` with `replies` in order; the last one
    /// repeats. Resets the path's hit count.
    pub fn script(&self, path: &str, replies: Vec<Reply>) {
        assert!(!replies.is_empty(), "a script needs at least one reply");
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.routes.insert(path.to_string(), Route { script: replies, hits: 0 });
    }

    /// How many requests `path` received.
    pub fn hits(&self, path: &str) -> usize {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let from_routes = st.routes.get(path).map(|r| r.hits);
        from_routes.unwrap_or_else(|| st.log.iter().filter(|p| *p == path).count())
    }

    /// Every request path received so far, in order.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).log.clone()
    }
}

/// What a server does with each accepted connection.
pub(crate) type Handler =
    Arc<dyn Fn(TcpStream) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A test server on a free loopback port, run by its own thread and tokio
/// runtime (so sync tests, async tests and child processes can all use
/// it). Each connection is handed to the handler; everything stops when
/// this is dropped, connections in the middle of a reply included.
pub(crate) struct Served {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Served {
    pub(crate) fn start<F>(name: &str, handler: F) -> std::io::Result<Served>
    where
        F: Fn(TcpStream) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync + 'static,
    {
        Served::start_on(std::net::TcpListener::bind("127.0.0.1:0")?, name, handler)
    }

    /// [`Served::start`] on a listener the caller bound (an address in a
    /// network namespace, a fixed port).
    pub(crate) fn start_on<F>(
        std_listener: std::net::TcpListener,
        name: &str,
        handler: F,
    ) -> std::io::Result<Served>
    where
        F: Fn(TcpStream) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync + 'static,
    {
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let handler: Handler = Arc::new(handler);
        let thread = thread::Builder::new().name(name.into()).spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = TcpListener::from_std(std_listener) else { return };
                accept_loop(listener, handler, stopped).await;
            });
            runtime.shutdown_background();
        })?;
        Ok(Served { addr, stop, thread: Some(thread) })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, handler: Handler, mut stopped: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let connection = handler(stream);
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = stopped.changed() => {}
                        _ = connection => {}
                    }
                });
            }
        }
    }
}

/// Serves requests on one connection (keep-alive) until it closes.
async fn handle(mut stream: TcpStream, state: Arc<Mutex<State>>) {
    let mut buf = Vec::new();
    loop {
        let Some(Request { path, close, .. }) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        let reply = {
            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
            st.log.push(path.clone());
            match st.routes.get_mut(&path) {
                None => Reply::Status(404),
                Some(route) => {
                    let i = route.hits.min(route.script.len() - 1);
                    route.hits += 1;
                    route.script[i].clone()
                }
            }
        };
        if !send(&mut stream, reply).await || close {
            return;
        }
    }
}

/// One HTTP/1.1 request as a test server saw it.
pub(crate) struct Request {
    pub method: String,
    /// The request target (path and query).
    pub path: String,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The client asked to close the connection after this request.
    pub close: bool,
    /// When the request's head arrived.
    pub received: std::time::Instant,
}

impl Request {
    /// The first value of header `name` (lower case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Reads one request (head, then a Content-Length or chunked body),
/// answering `Expect: 100-continue`; `None` when the connection ends or
/// the request is malformed. `buf` keeps what was read past this request.
pub(crate) async fn read_request<S>(stream: &mut S, buf: &mut Vec<u8>) -> Option<Request>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        fill(stream, buf).await?;
    };
    let received = std::time::Instant::now();
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end + 4);
    let mut lines = head.lines();
    let mut request_line = lines.next()?.split_whitespace();
    let method = request_line.next()?.to_string();
    let path = request_line.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let has = |name: &str, value: &str| {
        headers.iter().any(|(k, v)| k == name && v.to_ascii_lowercase().contains(value))
    };
    let close = has("connection", "close");
    if has("expect", "100-continue") {
        stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.ok()?;
    }
    let body = if has("transfer-encoding", "chunked") {
        read_chunked(stream, buf).await?
    } else {
        let len: usize = match headers.iter().find(|(k, _)| k == "content-length") {
            Some((_, v)) => v.parse().ok()?,
            None => 0,
        };
        while buf.len() < len {
            fill(stream, buf).await?;
        }
        buf.drain(..len).collect()
    };
    Some(Request { method, path, headers, body, close, received })
}

/// Reads more bytes into `buf`; `None` at the end of the connection.
async fn fill<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 64 * 1024];
    let n = stream.read(&mut chunk).await.ok()?;
    if n == 0 {
        return None;
    }
    buf.extend_from_slice(&chunk[..n]);
    Some(())
}

async fn read_line<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 2);
            return Some(line);
        }
        fill(stream, buf).await?;
    }
}

async fn read_chunked<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let size_line = read_line(stream, buf).await?;
        let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            // Trailers up to the empty line.
            while !read_line(stream, buf).await?.is_empty() {}
            return Some(body);
        }
        while buf.len() < size + 2 {
            fill(stream, buf).await?;
        }
        body.extend(buf.drain(..size));
        buf.drain(..2);
    }
}

/// A response head with Content-Length `len` and these extra headers.
pub(crate) fn response_head(status: u16, headers: &[(String, String)], len: usize) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut head = format!("HTTP/1.1 {status} {reason}\r\nContent-Length: {len}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

fn head(status: u16, len: usize) -> Vec<u8> {
    response_head(status, &[("Content-Type".into(), "application/octet-stream".into())], len)
}

/// Sends a reply; false when the connection must not be reused.
async fn send(stream: &mut TcpStream, reply: Reply) -> bool {
    match reply {
        Reply::Body(body) => {
            let mut out = head(200, body.len());
            out.extend_from_slice(&body);
            stream.write_all(&out).await.is_ok()
        }
        Reply::Status(code) => {
            let body = format!("fixture status {code}\n");
            let mut out = head(code, body.len());
            out.extend_from_slice(body.as_bytes());
            stream.write_all(&out).await.is_ok()
        }
        Reply::Stall(body) => {
            let mut out = head(200, body.len());
            out.extend_from_slice(&body[..body.len() / 2]);
            let _ = stream.write_all(&out).await;
            let _ = stream.flush().await;
            // Until the server stops (the caller's select ends this).
            loop {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        }
        Reply::ResetMidBody(body) => {
            let mut out = head(200, body.len());
            out.extend_from_slice(&body[..body.len() / 2]);
            let _ = stream.write_all(&out).await;
            let _ = stream.flush().await;
            reset_on_close(stream);
            false
        }
    }
}

/// SO_LINGER with a zero timeout: closing the socket sends RST, not FIN.
fn reset_on_close(stream: &TcpStream) {
    let _ = rustix::net::sockopt::set_socket_linger(stream, Some(std::time::Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn get(server: &FixtureServer, path: &str) -> std::io::Result<Vec<u8>> {
        let mut s = std::net::TcpStream::connect(server.addr())?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn scripts_replies_in_order_and_counts_hits() {
        let server = FixtureServer::start().unwrap();
        server.script("/a", vec![Reply::Status(503), Reply::Body(b"hello".to_vec())]);
        let first = String::from_utf8(get(&server, "/a").unwrap()).unwrap();
        assert!(first.starts_with("HTTP/1.1 503"), "{first}");
        for _ in 0..2 {
            let next = String::from_utf8(get(&server, "/a").unwrap()).unwrap();
            assert!(next.starts_with("HTTP/1.1 200") && next.ends_with("hello"), "{next}");
        }
        assert_eq!(server.hits("/a"), 3);
        let missing = String::from_utf8(get(&server, "/nope").unwrap()).unwrap();
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        assert_eq!(server.requests(), ["/a", "/a", "/a", "/nope"]);
    }

    #[tokio::test]
    async fn reads_bodies_by_length_and_chunked_on_one_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"PUT /snapshots/s/blocks/3 HTTP/1.1\r\nContent-Length: 5\r\nX-Amz-Checksum: abc\r\n\r\nhello").await.unwrap();
            s.write_all(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nAct\r\n4;x=y\r\nion=\r\n0\r\n\r\n").await.unwrap();
            s
        });
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let first = read_request(&mut stream, &mut buf).await.unwrap();
        assert_eq!((first.method.as_str(), first.path.as_str()), ("PUT", "/snapshots/s/blocks/3"));
        assert_eq!(first.body, b"hello");
        assert!(first.headers.contains(&("x-amz-checksum".into(), "abc".into())));
        assert!(!first.close);
        let second = read_request(&mut stream, &mut buf).await.unwrap();
        assert_eq!(second.body, b"Action=");
        assert!(second.close);
        drop(client.await.unwrap());
        assert!(read_request(&mut stream, &mut buf).await.is_none(), "end of the connection");
    }

    #[test]
    fn reset_mid_body_sends_half_then_fails_the_read() {
        let server = FixtureServer::start().unwrap();
        server.script("/r", vec![Reply::ResetMidBody(vec![7u8; 200_000])]);
        let err = get(&server, "/r").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    }
}
