//! An EC2 instance metadata service (IMDSv2) emulator on a real loopback
//! socket, for keel-bootstrap's tests and the QEMU harness. One server
//! plays one instance (start one per simulated instance: each gets its own
//! port). It implements the token flow (PUT `/latest/api/token` with a TTL
//! header; GETs without a valid token get 401), the metadata paths
//! keel-bootstrap and the AWS SDK read (under `latest` and dated versions:
//! identity, `mac`),
//! user data, the identity document, and IAM credentials under both
//! `iam/security-credentials/` and `iam/security-credentials-extended/`.
//!
//! Faults are scripted per server: the next N GETs answer a status (401
//! also revokes the tokens, like an expiry; 503; 404), or are delayed.
//!
//! For VMs that all ask 169.254.169.254:80, one server plays every
//! instance and picks the one by the request's source address
//! ([`ImdsEmulator::start_by_source`]); a source it does not know gets 404.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::http::{read_request, response_head, Request, Served};

/// What the emulator knows about its instance.
#[derive(Debug, Clone)]
pub struct Instance {
    pub instance_id: String,
    pub region: String,
    pub availability_zone: String,
    pub private_ipv4: String,
    pub local_hostname: String,
    /// The primary network interface's MAC address (`meta-data/mac`).
    pub mac: String,
    /// `None` answers 404, as EC2 does for an instance launched without.
    pub user_data: Option<Vec<u8>>,
    /// The instance profile's role name and its credentials.
    pub credentials: Option<Credentials>,
}

#[derive(Debug, Clone)]
pub struct Credentials {
    pub role_name: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub token: String,
}

impl Instance {
    /// An instance in `region` with no user data and the testing
    /// credentials: what a client that only needs the SDK's credential
    /// chain asks for.
    pub fn with_credentials_in(region: &str) -> Instance {
        Instance {
            instance_id: "i-0credentials".into(),
            region: region.into(),
            availability_zone: format!("{region}a"),
            private_ipv4: "10.0.0.1".into(),
            local_hostname: "ip-10-0-0-1".into(),
            mac: "0a:00:00:00:00:01".into(),
            user_data: None,
            credentials: Some(Credentials::testing()),
        }
    }
}

impl Credentials {
    /// The dummy credentials moto accepts.
    pub fn testing() -> Credentials {
        Credentials {
            role_name: "keel-node".into(),
            access_key_id: "testing".into(),
            secret_access_key: "testing".into(),
            token: "testing".into(),
        }
    }
}

/// A scripted fault for the next metadata GETs (token PUTs are not affected).
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer this status; 401 also revokes every token issued so far.
    Status(u16),
    /// Wait this long, then answer normally.
    Delay(Duration),
}

#[derive(Default)]
struct State {
    instance: Option<Instance>,
    /// When serving several guests: the instance per source address.
    by_source: HashMap<IpAddr, Instance>,
    tokens: Vec<String>,
    issued: usize,
    faults: VecDeque<Fault>,
    /// Every request as "METHOD path", in order.
    log: Vec<String>,
    /// The TCP maximum segment size of each connection, by source: what
    /// the client's MTU allowed (it advertises its own in its SYN).
    mss: HashMap<IpAddr, BTreeSet<u32>>,
}

pub struct ImdsEmulator {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    _served: Served,
}

impl ImdsEmulator {
    /// Serves `instance` on a free port of 127.0.0.1.
    pub fn start(instance: Instance) -> std::io::Result<ImdsEmulator> {
        Self::start_on("127.0.0.1:0".parse().map_err(std::io::Error::other)?, instance)
    }

    /// Serves `instance` on `addr` (the QEMU harness binds the metadata
    /// address 169.254.169.254:80 inside its network namespace).
    pub fn start_on(addr: SocketAddr, instance: Instance) -> std::io::Result<ImdsEmulator> {
        let state = State { instance: Some(instance), ..State::default() };
        Self::serve_listener(std::net::TcpListener::bind(addr)?, state)
    }

    /// Serves several instances on an already bound listener (the QEMU
    /// harness binds 169.254.169.254:80 inside its network namespace),
    /// each to the guest whose source address is its key.
    pub fn start_by_source(
        listener: std::net::TcpListener,
        instances: HashMap<IpAddr, Instance>,
    ) -> std::io::Result<ImdsEmulator> {
        Self::serve_listener(listener, State { by_source: instances, ..State::default() })
    }

    fn serve_listener(
        std_listener: std::net::TcpListener,
        state: State,
    ) -> std::io::Result<ImdsEmulator> {
        let state = Arc::new(Mutex::new(state));
        let st = state.clone();
        let served = Served::start_on(std_listener, "imds-emulator", move |stream| {
            Box::pin(serve(stream, st.clone()))
        })?;
        Ok(ImdsEmulator { addr: served.addr(), state, _served: served })
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Queues faults for the next metadata GETs, one per request.
    pub fn inject(&self, faults: impl IntoIterator<Item = Fault>) {
        self.lock().faults.extend(faults);
    }

    /// Changes the instance (e.g. its user data) while serving.
    pub fn update(&self, f: impl FnOnce(&mut Instance)) {
        if let Some(i) = self.lock().instance.as_mut() {
            f(i)
        }
    }

    /// Adds, replaces (`Some`) or removes (`None`) the instance served to
    /// source address `ip`.
    pub fn set_instance_for(&self, ip: IpAddr, instance: Option<Instance>) {
        let mut st = self.lock();
        match instance {
            Some(i) => st.by_source.insert(ip, i),
            None => st.by_source.remove(&ip),
        };
    }

    /// Every request so far, as "METHOD /path".
    pub fn requests(&self) -> Vec<String> {
        self.lock().log.clone()
    }

    /// How many tokens were issued.
    pub fn tokens_issued(&self) -> usize {
        self.lock().issued
    }

    /// The TCP maximum segment sizes of the connections from `ip` so far
    /// (each distinct value once): on an IPv4 link, the smaller of the two
    /// ends' MTUs less 40 bytes of headers and the TCP options both use
    /// (12 with Linux's timestamps: 8949 at an MTU of 9001, 1448 at 1500).
    pub fn mss_from(&self, ip: IpAddr) -> Vec<u32> {
        self.lock().mss.get(&ip).map(|m| m.iter().copied().collect()).unwrap_or_default()
    }
}

/// The state, also after a thread that held it panicked (a test's
/// assertion): what it holds stays consistent request by request.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

async fn serve(mut stream: TcpStream, state: Arc<Mutex<State>>) {
    let Ok(peer) = stream.peer_addr() else { return };
    if let Ok(mss) = socket2::SockRef::from(&stream).tcp_mss() {
        lock(&state).mss.entry(peer.ip()).or_default().insert(mss);
    }
    let mut buf = Vec::new();
    while let Some(req) = read_request(&mut stream, &mut buf).await {
        let (status, body, delay) = answer(&state, peer.ip(), &req);
        let mut headers = vec![("Content-Type".to_string(), "text/plain".to_string())];
        // The SDK's client wants the token's TTL echoed back.
        if req.path == "/latest/api/token" && status == 200 {
            let ttl = req.header("x-aws-ec2-metadata-token-ttl-seconds").unwrap_or_default();
            headers.push(("X-aws-ec2-metadata-token-ttl-seconds".into(), ttl.into()));
        }
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let mut out = response_head(status, &headers, body.len());
        out.extend_from_slice(&body);
        if stream.write_all(&out).await.is_err() || req.close {
            return;
        }
    }
}

fn answer(state: &Mutex<State>, peer: IpAddr, req: &Request) -> (u16, Vec<u8>, Option<Duration>) {
    let mut st = lock(state);
    st.log.push(format!("{} {}", req.method, req.path));
    if req.path == "/latest/api/token" {
        if req.method != "PUT" {
            return (405, b"token requests use PUT".to_vec(), None);
        }
        let ttl_ok = req
            .header("x-aws-ec2-metadata-token-ttl-seconds")
            .and_then(|v| v.parse::<u32>().ok())
            .is_some_and(|t| (1..=21_600).contains(&t));
        if !ttl_ok {
            return (400, b"missing or bad x-aws-ec2-metadata-token-ttl-seconds".to_vec(), None);
        }
        st.issued += 1;
        let token = format!("emulated-token-{}-{}", std::process::id(), st.issued);
        st.tokens.push(token.clone());
        return (200, token.into_bytes(), None);
    }
    if req.method != "GET" {
        return (405, Vec::new(), None);
    }
    let authorised =
        req.header("x-aws-ec2-metadata-token").is_some_and(|t| st.tokens.iter().any(|k| k == t));
    if !authorised {
        return (401, Vec::new(), None);
    }
    let mut delay = None;
    match st.faults.pop_front() {
        Some(Fault::Status(code)) => {
            if code == 401 {
                st.tokens.clear();
            }
            return (code, Vec::new(), None);
        }
        Some(Fault::Delay(d)) => delay = Some(d),
        None => {}
    }
    let Some(inst) = st.by_source.get(&peer).or(st.instance.as_ref()) else {
        return (404, Vec::new(), delay);
    };
    match lookup(inst, &req.path) {
        Some(body) => (200, body, delay),
        None => (404, Vec::new(), delay),
    }
}

/// The answer for a metadata path under any API version.
fn lookup(inst: &Instance, path: &str) -> Option<Vec<u8>> {
    let path = path.split('?').next()?;
    let rest = path.strip_prefix('/')?;
    let (_version, rest) = rest.split_once('/')?;
    let text = |s: &str| Some(s.as_bytes().to_vec());
    match rest {
        "user-data" => inst.user_data.clone(),
        "meta-data/instance-id" => text(&inst.instance_id),
        "meta-data/placement/region" => text(&inst.region),
        "meta-data/placement/availability-zone" => text(&inst.availability_zone),
        "meta-data/local-ipv4" => text(&inst.private_ipv4),
        "meta-data/local-hostname" | "meta-data/hostname" => text(&inst.local_hostname),
        "meta-data/mac" => text(&inst.mac),
        "dynamic/instance-identity/document" => text(&format!(
            "{{\"instanceId\":\"{}\",\"region\":\"{}\",\"availabilityZone\":\"{}\",\"privateIp\":\"{}\"}}",
            inst.instance_id, inst.region, inst.availability_zone, inst.private_ipv4
        )),
        _ => {
            let creds = inst.credentials.as_ref()?;
            let rest = rest
                .strip_prefix("meta-data/iam/security-credentials-extended/")
                .or_else(|| rest.strip_prefix("meta-data/iam/security-credentials/"))
                .or_else(|| {
                    matches!(
                        rest,
                        "meta-data/iam/security-credentials" | "meta-data/iam/security-credentials-extended"
                    )
                    .then_some("")
                })?;
            if rest.is_empty() {
                text(&creds.role_name)
            } else if rest == creds.role_name {
                text(&format!(
                    "{{\"Code\":\"Success\",\"LastUpdated\":\"2026-01-01T00:00:00Z\",\"Type\":\"AWS-HMAC\",\
                     \"AccessKeyId\":\"{}\",\"SecretAccessKey\":\"{}\",\"Token\":\"{}\",\
                     \"Expiration\":\"2099-01-01T00:00:00Z\"}}",
                    creds.access_key_id, creds.secret_access_key, creds.token
                ))
            } else {
                None
            }
        }
    }
}
