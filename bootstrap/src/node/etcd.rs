//! The etcd role: this node's peer and server certificates from the etcd
//! CA, then what etcd's own data, EC2, the formation record in S3 and the
//! cluster say (docs/operations/etcd.md has the operator's view):
//! - restart: the data directory holds a started member (WAL metadata and
//!   a backend) that the cluster, when one answers, still lists: start it
//!   as it is;
//! - removed: the cluster answers and does not list it (or is another
//!   cluster): move the data aside (never delete it) and join as new;
//! - form: no formation record, or none of the instances that may hold
//!   the last formation's data exists any more: exactly the expected
//!   instances form a cluster, through a conditional create in S3 that
//!   exactly one formation wins (`formation`), with a fresh token;
//! - initial member: this node is in the newest record and has no data:
//!   start with the record's membership and token;
//! - join: a healthy member answers: under a lease-backed lock key in
//!   etcd, remove dead members (by instance id) and whoever holds this
//!   node's address under another name, add this node as a learner;
//!   `promote` makes it a voter once etcd has caught up;
//! - otherwise (no answer, a member may hold data): wait and look again,
//!   until the deadline. An unreachable peer is unknown, never absent.

use std::net::IpAddr;
use std::time::Duration;

use crate::discovery::{self, Counter, DiscoveryError, Peer};
use crate::etcd_api::{EtcdApi, EtcdApiError, Member};
use crate::etcd_data::{self, DataError};
use crate::formation::{self, FormationError};
use crate::layout::{self, Layout};
use crate::pki::{self, Ca, PkiError, Usage};
use crate::retry::{retry, Attempt, Policy};
use crate::snapshot;
use crate::userdata::UserData;
use crate::Role;

use super::NodeError;

pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;
pub use crate::userdata::{DEFAULT_ELECTION_MS, DEFAULT_HEARTBEAT_MS};

/// Is a peer already serving? Two quick tries: members of a cluster that
/// is still forming do not answer, and that is the expected answer.
pub const PROBE: Policy = Policy {
    initial: Duration::from_millis(200),
    max_delay: Duration::from_millis(200),
    deadline: Duration::from_secs(10),
    max_attempts: 2,
};
/// Membership changes: etcd refuses them ("unhealthy cluster", 503) until
/// its members have been connected for a few seconds (5 s in 3.4 and
/// 3.5), e.g. right after a restart; keep trying for a minute.
pub const RECONFIG: Policy = Policy {
    initial: Duration::from_millis(250),
    max_delay: Duration::from_secs(2),
    deadline: Duration::from_secs(60),
    max_attempts: 60,
};

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("{0}")]
    Pki(#[from] PkiError),
    #[error("writing {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("this instance ({instance_id}, {ip}) is not among the discovered etcd instances ({found}): check its keel:cluster and keel:role tags")]
    NotAPeer { instance_id: String, ip: String, found: String },
    #[error("{ip:?} is not an IP address")]
    BadIp { ip: String },
    #[error("joining the cluster through {endpoint}: {source}")]
    Join { endpoint: String, source: EtcdApiError },
    #[error("{0}")]
    Api(#[from] EtcdApiError),
    #[error("{0}")]
    Discovery(#[from] DiscoveryError),
    #[error("{0}")]
    Formation(#[from] FormationError),
    #[error("etcd data: {0}")]
    Data(#[from] DataError),
    #[error("found {found} etcd instances ({ids}), a formation needs exactly {expected}")]
    NotExpected { found: usize, expected: usize, ids: String },
    #[error("formation {generation} does not include this node: waiting to join it")]
    NotInFormation { generation: u64 },
    #[error("no etcd member answers, and instances that may hold formation {generation}'s data still exist ({instances}): waiting")]
    NoAnswer { generation: u64, instances: String },
    #[error("the join lock is held by {holder}: waiting")]
    LockHeld { holder: String },
    #[error("{name} is not a member according to {endpoint}")]
    NotAMember { name: String, endpoint: String },
    #[error("no etcd endpoint to ask")]
    NoEndpoints,
    #[error("{0}")]
    Snapshot(#[from] snapshot::SnapshotError),
}

/// What this boot did about membership.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "plan", rename_all = "kebab-case")]
pub enum Plan {
    /// The data directory holds this member: etcd starts with what it has.
    Restart,
    /// A new cluster (formation `generation`) of these members.
    New {
        generation: u64,
        members: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        moved_aside: Option<String>,
    },
    /// Joined, as a learner, the cluster answering at `via`, after
    /// removing `removed`; an old member's data was moved to `moved_aside`.
    Join {
        via: String,
        removed: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        moved_aside: Option<String>,
    },
}

pub fn client_url(ip: &str) -> String {
    format!("https://{}:{CLIENT_PORT}", url_host(ip))
}
pub fn peer_url(ip: &str) -> String {
    format!("https://{}:{PEER_PORT}", url_host(ip))
}
fn url_host(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

/// Certificate paths, relative to the root.
pub const SERVER_CRT: &str = "etc/etcd/pki/server.crt";
pub const SERVER_KEY: &str = "etc/etcd/pki/server.key";
pub const PEER_CRT: &str = "etc/etcd/pki/peer.crt";
pub const PEER_KEY: &str = "etc/etcd/pki/peer.key";
pub const CA_CRT: &str = "etc/etcd/pki/ca.crt";
pub const CA_KEY: &str = "etc/etcd/pki/ca.key";

/// Issues and writes the server and peer certificates (SANs: private IP
/// and DNS name). Returns a client for the etcd API that presents the
/// server certificate (it carries client auth too).
pub fn issue_certificates(
    layout: &Layout,
    ca: &Ca,
    me: &Peer,
    owner: Option<(u32, u32)>,
) -> Result<EtcdApi, EtcdError> {
    let ip: IpAddr =
        me.private_ip.parse().map_err(|_| EtcdError::BadIp { ip: me.private_ip.clone() })?;
    let dns: Vec<String> = [me.private_dns.clone(), "localhost".into()]
        .into_iter()
        .filter(|d| !d.is_empty())
        .collect();
    let loopback: IpAddr =
        "127.0.0.1".parse().map_err(|_| EtcdError::BadIp { ip: "127.0.0.1".into() })?;
    let mut client = None;
    for (what, crt, key) in [
        ("etcd server certificate", SERVER_CRT, SERVER_KEY),
        ("etcd peer certificate", PEER_CRT, PEER_KEY),
    ] {
        let issued = ca.issue(&pki::Request {
            what,
            common_name: &me.instance_id,
            organization: None,
            dns_names: dns.clone(),
            ips: vec![ip, loopback],
            usage: Usage::Both,
        })?;
        write(layout, key, 0o600, issued.key_pem.as_bytes(), owner)?;
        write(layout, crt, 0o644, issued.cert_pem.as_bytes(), owner)?;
        if client.is_none() {
            client = Some(EtcdApi::new(&ca.pem, &issued.cert_pem, &issued.key_pem, RECONFIG)?);
        }
    }
    client.ok_or_else(|| EtcdError::BadIp { ip: me.private_ip.clone() })
}

fn write(
    layout: &Layout,
    rel: &str,
    mode: u32,
    bytes: &[u8],
    owner: Option<(u32, u32)>,
) -> Result<(), EtcdError> {
    let path = layout.path(rel);
    let err = |source| EtcdError::Write { path: path.display().to_string(), source };
    crate::atomic_file::write(&path, mode, bytes).map_err(err)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(err)?;
    }
    Ok(())
}

/// The `etcd` user's uid and gid from the image's /etc/passwd (Debian's
/// etcd-server runs etcd as that user), or None when there is none.
pub fn etcd_owner(layout: &Layout) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string(layout.path("etc/passwd")).ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == "etcd").then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// Whether etcd's data directory holds anything (a started member, or
/// what an unfinished first start left).
pub fn has_data(layout: &Layout) -> bool {
    layout.path(layout::ETCD_DATA_DIR).join("member").is_dir()
}

/// Which members to remove and whether this node is already a member (an
/// unstarted one, from an earlier run that was cut short, or an initial
/// member of the formation), given the cluster's membership and the live
/// instances `peers`. This node has no data when this is asked. A member
/// has started once it published its client URLs; initial members carry
/// their names from the start, members added later only once started.
/// Removed are:
/// - a started member whose instance is not live (found by its name, the
///   instance id, never by address: EC2 reuses addresses);
/// - a member that holds this node's peer URL under another name (the
///   address's previous owner);
/// - a started member named after this node (its data is gone);
/// - an unstarted member that is no live instance's (by name or address).
pub fn reconcile(me: &Peer, peers: &[Peer], members: &[Member]) -> (Vec<Member>, bool) {
    let my_url = peer_url(&me.private_ip);
    let live = |name: &str| peers.iter().any(|p| p.instance_id == name);
    let live_url = |u: &String| {
        peers.iter().any(|p| p.instance_id != me.instance_id && peer_url(&p.private_ip) == *u)
    };
    let mut remove = Vec::new();
    let mut present = false;
    for m in members {
        let holds_my_url = m.peer_urls.contains(&my_url);
        let named_other = !m.name.is_empty() && m.name != me.instance_id;
        if !is_started(m) {
            if holds_my_url && !named_other {
                present = true;
            } else if holds_my_url
                || !(m.peer_urls.iter().any(live_url) || (named_other && live(&m.name)))
            {
                remove.push(m.clone());
            }
        } else if m.name == me.instance_id || holds_my_url || !live(&m.name) {
            remove.push(m.clone());
        }
    }
    (remove, present)
}

/// A member has started once it has published its client URLs.
pub fn is_started(m: &Member) -> bool {
    !m.client_urls.is_empty()
}

/// `name=peer-url` pairs for ETCD_INITIAL_CLUSTER from a membership; an
/// unstarted member has no name yet: it is this node when it holds this
/// node's peer URL, otherwise the instance at that address, else its id.
pub fn initial_cluster_of(members: &[Member], peers: &[Peer]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = members
        .iter()
        .flat_map(|m| {
            let name = if m.name.is_empty() {
                peers
                    .iter()
                    .find(|p| m.peer_urls.contains(&peer_url(&p.private_ip)))
                    .map_or_else(|| m.id.clone(), |p| p.instance_id.clone())
            } else {
                m.name.clone()
            };
            m.peer_urls.iter().map(move |u| (name.clone(), u.clone()))
        })
        .collect();
    out.sort();
    out
}

/// The etcd key of the join lock: one join at a time.
pub const JOIN_LOCK: &str = "keel/etcd/join-lock";
/// The join lock's lease: long enough for the rest of the boot, etcd's
/// start, catching up and promotion; a holder that dies frees it then.
pub const JOIN_LOCK_TTL_SECONDS: u64 = 120;
/// Waiting for a cluster to answer, the join lock, or peers: every 1 s at
/// first, at most every 5 s.
const WAIT_INITIAL: Duration = Duration::from_secs(1);
const WAIT_MAX: Duration = Duration::from_secs(5);

/// What keel-bootstrap knows about the cluster it is to be part of.
pub struct Cluster<'a> {
    pub name: &'a str,
    pub ec2: &'a aws_sdk_ec2::Client,
    pub store: &'a formation::Store,
    pub expected: usize,
    /// When waiting (for peers, a cluster, the lock) must end.
    pub deadline: tokio::time::Instant,
    pub pages: &'a Counter,
    /// The cluster's snapshots: a formation restores the newest.
    pub snapshots: &'a snapshot::Snapshots,
}

/// What `plan` decided: the plan, etcd's initial cluster, whether the
/// cluster is new, and its token.
#[derive(Debug, Clone)]
pub struct Decision {
    pub plan: Plan,
    pub initial: Vec<(String, String)>,
    pub new_cluster: bool,
    pub token: String,
    /// A new cluster restored from this snapshot (an S3 key): restore it
    /// into the empty data directory before etcd starts.
    pub restore_from: Option<String>,
}

/// Decides and carries out the membership plan. `api` presents this
/// node's certificate.
pub async fn plan(
    layout: &Layout,
    api: &EtcdApi,
    me: &Peer,
    cluster: &Cluster<'_>,
) -> Result<Decision, EtcdError> {
    let data_dir = layout.path(layout::ETCD_DATA_DIR);
    let mut moved_aside = None;
    match etcd_data::state(&data_dir)? {
        etcd_data::DataState::Empty => {}
        etcd_data::DataState::Incomplete(_) => {
            moved_aside = Some(move_aside(&data_dir)?);
        }
        etcd_data::DataState::Member(local) => {
            if still_a_member(api, me, cluster, local).await {
                return Ok(Decision {
                    plan: Plan::Restart,
                    initial: vec![(me.instance_id.clone(), peer_url(&me.private_ip))],
                    new_cluster: false,
                    token: String::new(),
                    restore_from: None,
                });
            }
            moved_aside = Some(move_aside(&data_dir)?);
        }
    }
    let policy = Policy {
        initial: WAIT_INITIAL,
        max_delay: WAIT_MAX,
        deadline: cluster.deadline.saturating_duration_since(tokio::time::Instant::now()),
        max_attempts: u32::MAX,
    };
    let mut d = retry(&policy, |_| attempt(api, me, cluster)).await?;
    if let Plan::Join { moved_aside: m, .. } = &mut d.plan {
        *m = moved_aside;
    } else if let Some(m) = moved_aside {
        // A member without data that formation still counts: say what was moved.
        d.plan = match d.plan {
            Plan::New { generation, members, .. } => {
                Plan::New { generation, members, moved_aside: Some(m) }
            }
            other => other,
        };
    }
    Ok(d)
}

fn move_aside(data_dir: &std::path::Path) -> Result<String, EtcdError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(etcd_data::move_aside(data_dir, now)?.display().to_string())
}

/// With data: does a cluster that answers still count this member? Yes
/// when nobody answers (etcd's own data decides), when EC2 cannot be
/// asked, or when the answering cluster has the same id and lists the
/// member id from the WAL.
async fn still_a_member(
    api: &EtcdApi,
    me: &Peer,
    cluster: &Cluster<'_>,
    local: etcd_data::LocalMember,
) -> bool {
    let Ok(peers) = discovery::list(cluster.ec2, cluster.name, Role::Etcd, cluster.pages).await
    else {
        return true;
    };
    let Some(endpoint) = healthy_endpoint(api, me, &peers).await else {
        return true;
    };
    match api.membership(&endpoint).await {
        Ok(m) => {
            m.cluster_id == local.cluster_id.to_string()
                && m.members.iter().any(|x| x.id == local.node_id.to_string())
        }
        Err(_) => true,
    }
}

/// The client URL of another live peer that says it is healthy.
async fn healthy_endpoint(api: &EtcdApi, me: &Peer, peers: &[Peer]) -> Option<String> {
    for p in peers.iter().filter(|p| p.instance_id != me.instance_id) {
        let endpoint = client_url(&p.private_ip);
        if api.health_with(&endpoint, &PROBE).await.is_ok() {
            return Some(endpoint);
        }
    }
    None
}

type Step = Result<Decision, Attempt<EtcdError>>;

/// One look at EC2, the formation record and the cluster. Waiting
/// (`Attempt::Retry`) is the answer whenever something is unknown.
async fn attempt(api: &EtcdApi, me: &Peer, cluster: &Cluster<'_>) -> Step {
    let wait = |e: EtcdError| Attempt::Retry(e);
    let peers = discovery::list(cluster.ec2, cluster.name, Role::Etcd, cluster.pages)
        .await
        .map_err(|e| wait(e.into()))?;
    if !peers.iter().any(|p| p.instance_id == me.instance_id) {
        return Err(wait(EtcdError::NotAPeer {
            instance_id: me.instance_id.clone(),
            ip: me.private_ip.clone(),
            found: ids(peers.iter().map(|p| p.instance_id.as_str())),
        }));
    }
    let Some(record) = cluster.store.latest().await.map_err(|e| wait(e.into()))? else {
        return form(me, cluster, &peers, 1).await;
    };
    if record.member(&me.instance_id).is_some_and(|m| m.peer_url == peer_url(&me.private_ip)) {
        return initial_member(api, me, cluster, &peers, &record).await;
    }
    if let Some(endpoint) = healthy_endpoint(api, me, &peers).await {
        return join(api, me, cluster, &peers, &record, &endpoint).await;
    }
    // Nobody answers. The cluster is gone only when no instance that may
    // hold its data exists; otherwise it is unknown: wait.
    let holders = cluster.store.instances(&record).await.map_err(|e| wait(e.into()))?;
    let with_data = discovery::list_in_states(
        cluster.ec2,
        cluster.name,
        Role::Etcd,
        discovery::STATES_WITH_DATA,
        cluster.pages,
    )
    .await
    .map_err(|e| wait(e.into()))?;
    let alive: Vec<&str> = holders
        .iter()
        .map(String::as_str)
        .filter(|h| *h != me.instance_id && with_data.iter().any(|p| p.instance_id == *h))
        .collect();
    if alive.is_empty() {
        return form(me, cluster, &peers, record.generation + 1).await;
    }
    Err(wait(EtcdError::NoAnswer { generation: record.generation, instances: ids(alive) }))
}

fn ids<'a>(i: impl IntoIterator<Item = &'a str>) -> String {
    i.into_iter().collect::<Vec<_>>().join(", ")
}

/// Forms generation `generation` from exactly the expected instances, if
/// this node's conditional create wins; every node then follows the record
/// S3 holds.
async fn form(me: &Peer, cluster: &Cluster<'_>, peers: &[Peer], generation: u64) -> Step {
    if peers.len() != cluster.expected {
        return Err(Attempt::Retry(EtcdError::NotExpected {
            found: peers.len(),
            expected: cluster.expected,
            ids: ids(peers.iter().map(|p| p.instance_id.as_str())),
        }));
    }
    let mut members: Vec<formation::InitialMember> = peers
        .iter()
        .map(|p| formation::InitialMember {
            name: p.instance_id.clone(),
            peer_url: peer_url(&p.private_ip),
        })
        .collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    // No cluster exists and no member has data: the newest snapshot, if
    // there is one, is what the cluster starts from.
    let newest = cluster.snapshots.list().await.map_err(|e| Attempt::Retry(e.into()))?.pop();
    let mine = formation::Record {
        generation,
        token: formation::new_token(cluster.name),
        members,
        formed_by: me.instance_id.clone(),
        restored_from: newest.map(|s| s.key),
    };
    let record = cluster.store.create(&mine).await.map_err(|e| Attempt::Retry(e.into()))?;
    if record.member(&me.instance_id).is_some_and(|m| m.peer_url == peer_url(&me.private_ip)) {
        Ok(new_from(&record))
    } else {
        // Another formation won without this node: join it once it answers.
        Err(Attempt::Retry(EtcdError::NotInFormation { generation }))
    }
}

fn new_from(record: &formation::Record) -> Decision {
    Decision {
        plan: Plan::New {
            generation: record.generation,
            members: record.members.iter().map(|m| m.name.clone()).collect(),
            moved_aside: None,
        },
        initial: record.members.iter().map(|m| (m.name.clone(), m.peer_url.clone())).collect(),
        new_cluster: true,
        token: record.token.clone(),
        restore_from: record.restored_from.clone(),
    }
}

/// An initial member without data: start with the record's membership,
/// unless a running cluster no longer lists this node as unstarted (it
/// started before and lost its data, or was removed): then join it.
async fn initial_member(
    api: &EtcdApi,
    me: &Peer,
    cluster: &Cluster<'_>,
    peers: &[Peer],
    record: &formation::Record,
) -> Step {
    let Some(endpoint) = healthy_endpoint(api, me, peers).await else {
        return Ok(new_from(record));
    };
    let join_err = |source| Attempt::Retry(EtcdError::Join { endpoint: endpoint.clone(), source });
    let members = api.member_list(&endpoint).await.map_err(join_err)?;
    let url = peer_url(&me.private_ip);
    match members.iter().find(|m| m.peer_urls.contains(&url)) {
        Some(m) if !is_started(m) && (m.name.is_empty() || m.name == me.instance_id) => {
            Ok(new_from(record))
        }
        _ => join(api, me, cluster, peers, record, &endpoint).await,
    }
}

/// Joins through `endpoint` as a learner under the join lock.
async fn join(
    api: &EtcdApi,
    me: &Peer,
    cluster: &Cluster<'_>,
    peers: &[Peer],
    record: &formation::Record,
    endpoint: &str,
) -> Step {
    let join_err =
        |source| Attempt::Retry(EtcdError::Join { endpoint: endpoint.to_string(), source });
    let holder = api
        .lock(endpoint, JOIN_LOCK, &me.instance_id, JOIN_LOCK_TTL_SECONDS)
        .await
        .map_err(join_err)?;
    if holder != me.instance_id {
        return Err(Attempt::Retry(EtcdError::LockHeld { holder }));
    }
    let r: Step = async {
        // Registered before it is added: a member S3 does not know of could
        // hold the only copy of the data when the rest is gone.
        cluster
            .store
            .register(record.generation, &me.instance_id)
            .await
            .map_err(|e| Attempt::Retry(e.into()))?;
        let members = api.member_list(endpoint).await.map_err(join_err)?;
        let (remove, present) = reconcile(me, peers, &members);
        // Remove first: with a dead member still counted, adding one more
        // could need a quorum the live members do not have.
        for m in &remove {
            api.member_remove(endpoint, &m.id).await.map_err(join_err)?;
        }
        if !present {
            if let Err(e) = api.member_add_learner(endpoint, &peer_url(&me.private_ip)).await {
                // An earlier attempt may have been applied before its answer
                // was lost: fine if this node is a member now.
                let now = api.member_list(endpoint).await.map_err(join_err)?;
                if !reconcile(me, peers, &now).1 {
                    return Err(join_err(e));
                }
            }
        }
        let members = api.member_list(endpoint).await.map_err(join_err)?;
        let removed = remove
            .iter()
            .map(|m| if m.name.is_empty() { m.id.clone() } else { m.name.clone() })
            .collect();
        Ok(Decision {
            plan: Plan::Join { via: endpoint.to_string(), removed, moved_aside: None },
            initial: initial_cluster_of(&members, peers),
            new_cluster: false,
            token: record.token.clone(),
            restore_from: None,
        })
    }
    .await;
    if r.is_err() {
        // Best effort: the lease frees it anyway.
        let _ = api.unlock(endpoint, JOIN_LOCK, &me.instance_id).await;
    }
    r
}

/// After etcd started as a learner: promotes this member once it is in
/// sync, then frees the join lock. `endpoints` are the other members'
/// client URLs; a voting member already is done.
pub async fn promote(
    api: &EtcdApi,
    name: &str,
    my_peer_url: &str,
    endpoints: &[String],
    deadline: Duration,
) -> Result<(), EtcdError> {
    let policy = Policy {
        initial: Duration::from_millis(500),
        max_delay: Duration::from_secs(3),
        deadline,
        max_attempts: u32::MAX,
    };
    let endpoint = retry(&policy, |_| async {
        let mut last = None;
        for e in endpoints {
            let members = match api.member_list(e).await {
                Ok(m) => m,
                Err(err) => {
                    last = Some(EtcdError::Join { endpoint: e.clone(), source: err });
                    continue;
                }
            };
            let Some(m) = members.iter().find(|m| m.peer_urls.iter().any(|u| u == my_peer_url))
            else {
                return Err(Attempt::Fail(EtcdError::NotAMember {
                    name: name.to_string(),
                    endpoint: e.clone(),
                }));
            };
            if !m.is_learner {
                return Ok(e.clone());
            }
            match api.member_promote(e, &m.id).await {
                Ok(()) => return Ok(e.clone()),
                Err(err) => last = Some(EtcdError::Join { endpoint: e.clone(), source: err }),
            }
        }
        Err(Attempt::Retry(last.unwrap_or(EtcdError::NoEndpoints)))
    })
    .await?;
    let _ = api.unlock(&endpoint, JOIN_LOCK, name).await;
    Ok(())
}

/// Waits until the member at `endpoint` serves the member list (a learner
/// refuses it; a promoted member does once it applied its promotion).
pub async fn wait_voting(
    api: &EtcdApi,
    endpoint: &str,
    deadline: Duration,
) -> Result<(), EtcdError> {
    let policy = Policy {
        initial: Duration::from_millis(200),
        max_delay: Duration::from_secs(2),
        deadline,
        max_attempts: u32::MAX,
    };
    retry(&policy, |_| async {
        api.member_list(endpoint).await.map(|_| ()).map_err(|e| Attempt::Retry(e.into()))
    })
    .await
}

/// How long `promote_node` keeps trying: etcd must start and catch up
/// first (a large snapshot takes a while to send).
pub const PROMOTE_DEADLINE: Duration = Duration::from_secs(600);

/// `promote` for the node configured under `layout`, from what the boot
/// wrote: etcd's environment file (name, peer URL, initial cluster) and
/// the server certificate (it carries client auth). Run after etcd
/// started (keel-etcd-promote.service); a voting member is done at once.
pub async fn promote_node(layout: &Layout, deadline: Duration) -> Result<(), NodeError> {
    let env_path = layout.path(layout::ETCD_ENV);
    let env = super::read(env_path.clone())?;
    let var = |k: &str| {
        env.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.trim_matches('"').to_string())
            .ok_or_else(|| NodeError::Missing { path: env_path.clone(), setting: k.to_string() })
    };
    let (name, my_url) = (var("ETCD_NAME")?, var("ETCD_INITIAL_ADVERTISE_PEER_URLS")?);
    let mut endpoints: Vec<String> = var("ETCD_INITIAL_CLUSTER")?
        .split(',')
        .filter_map(|p| p.split_once('=').map(|(_, u)| u.to_string()))
        .filter(|u| *u != my_url)
        .filter_map(|u| u.strip_suffix(&format!(":{PEER_PORT}")).map(str::to_string))
        .map(|h| format!("{h}:{CLIENT_PORT}"))
        .collect();
    endpoints.push(var("ETCD_ADVERTISE_CLIENT_URLS")?);
    let api = super::api_from_files(layout, [CA_CRT, SERVER_CRT, SERVER_KEY])?;
    let started = std::time::Instant::now();
    promote(&api, &name, &my_url, &endpoints, deadline).await?;
    let mine = var("ETCD_ADVERTISE_CLIENT_URLS")?;
    Ok(wait_voting(&api, &mine, deadline.saturating_sub(started.elapsed())).await?)
}

/// Restores snapshot `key` into this node's empty data directory as the
/// member `decision` names, owned by etcd. The decrypted copy lives only
/// in a 0600 file beside the data directory while etcdctl reads it.
pub async fn restore(
    layout: &Layout,
    snapshots: &snapshot::Snapshots,
    key: &str,
    me: &Peer,
    decision: &Decision,
    owner: Option<(u32, u32)>,
) -> Result<(), EtcdError> {
    let db = snapshots.fetch(key).await?;
    let data = layout.path(layout::ETCD_DATA_DIR);
    let db_file = data.with_file_name("etcd.restore.db");
    let write_err = |source| EtcdError::Write { path: db_file.display().to_string(), source };
    crate::atomic_file::write(&db_file, 0o600, &db).map_err(write_err)?;
    let restored = snapshot::restore(
        snapshot::restore_tool(),
        &db_file,
        &data,
        &me.instance_id,
        &decision.initial,
        &decision.token,
        &peer_url(&me.private_ip),
    );
    let _ = std::fs::remove_file(&db_file);
    restored?;
    if let Some((uid, gid)) = owner {
        chown_tree(&data, uid, gid)
            .map_err(|source| EtcdError::Write { path: data.display().to_string(), source })?;
    }
    Ok(())
}

fn chown_tree(path: &std::path::Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    if path.is_dir() {
        for e in std::fs::read_dir(path)? {
            chown_tree(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// The environment file Debian's etcd-server unit reads (`/etc/default/etcd`,
/// `EnvironmentFile=`); the same variables configure etcd 3.4 and 3.5.
pub fn render_env(
    layout: &Layout,
    ud: &UserData,
    me: &Peer,
    initial: &[(String, String)],
    new_cluster: bool,
    token: &str,
) -> String {
    let ic = initial.iter().map(|(n, u)| format!("{n}={u}")).collect::<Vec<_>>().join(",");
    let mut vars: Vec<(&str, String)> = vec![
        ("ETCD_NAME", me.instance_id.clone()),
        ("ETCD_DATA_DIR", layout.shown(layout::ETCD_DATA_DIR)),
        ("ETCD_LISTEN_PEER_URLS", peer_url(&me.private_ip)),
        ("ETCD_LISTEN_CLIENT_URLS", client_url(&me.private_ip)),
        ("ETCD_INITIAL_ADVERTISE_PEER_URLS", peer_url(&me.private_ip)),
        ("ETCD_ADVERTISE_CLIENT_URLS", client_url(&me.private_ip)),
        ("ETCD_INITIAL_CLUSTER", ic),
        ("ETCD_INITIAL_CLUSTER_STATE", if new_cluster { "new" } else { "existing" }.into()),
        ("ETCD_INITIAL_CLUSTER_TOKEN", token.to_string()),
        ("ETCD_CLIENT_CERT_AUTH", "true".into()),
        ("ETCD_TRUSTED_CA_FILE", layout.shown(CA_CRT)),
        ("ETCD_CERT_FILE", layout.shown(SERVER_CRT)),
        ("ETCD_KEY_FILE", layout.shown(SERVER_KEY)),
        ("ETCD_PEER_CLIENT_CERT_AUTH", "true".into()),
        ("ETCD_PEER_TRUSTED_CA_FILE", layout.shown(CA_CRT)),
        ("ETCD_PEER_CERT_FILE", layout.shown(PEER_CRT)),
        ("ETCD_PEER_KEY_FILE", layout.shown(PEER_KEY)),
        (
            "ETCD_HEARTBEAT_INTERVAL",
            ud.etcd.heartbeat_interval_ms.unwrap_or(DEFAULT_HEARTBEAT_MS).to_string(),
        ),
        (
            "ETCD_ELECTION_TIMEOUT",
            ud.etcd.election_timeout_ms.unwrap_or(DEFAULT_ELECTION_MS).to_string(),
        ),
    ];
    if let Some(q) = ud.etcd.quota_backend_bytes {
        vars.push(("ETCD_QUOTA_BACKEND_BYTES", q.to_string()));
    }
    let mut out = String::from(
        "# Written by keel-bootstrap at boot. etcd.service reads it with\n\
         # EnvironmentFile=; valid for etcd 3.4 and 3.5.\n",
    );
    for (k, v) in vars {
        out.push_str(&format!("{k}=\"{v}\"\n"));
    }
    out
}

/// Creates the data directory (0700, owned by etcd) and writes the
/// environment file.
pub fn write_config(
    layout: &Layout,
    env: &str,
    owner: Option<(u32, u32)>,
) -> Result<(), EtcdError> {
    let data = layout.path(layout::ETCD_DATA_DIR);
    let err = |source| EtcdError::Write { path: data.display().to_string(), source };
    std::fs::create_dir_all(&data).map_err(err)?;
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(err)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&data, Some(uid), Some(gid)).map_err(err)?;
    }
    write(layout, layout::ETCD_ENV, 0o644, env.as_bytes(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: &str, ip: &str) -> Peer {
        Peer { instance_id: id.into(), private_ip: ip.into(), private_dns: String::new() }
    }
    fn member(id: &str, name: &str, ip: &str) -> Member {
        Member {
            id: id.into(),
            name: name.into(),
            peer_urls: vec![peer_url(ip)],
            client_urls: if name.is_empty() { vec![] } else { vec![client_url(ip)] },
            is_learner: false,
        }
    }

    #[test]
    fn reconcile_bug_ip_reuse_removes_the_old_owner_and_keeps_live_joiners() {
        // The replacement got the dead member's address.
        let me = peer("i-new", "10.0.0.3");
        let peers = [peer("i-a", "10.0.0.1"), peer("i-b", "10.0.0.2"), peer("i-c", "10.0.0.5")];
        let peers = [&peers[..], std::slice::from_ref(&me)].concat();
        let members = [
            member("1", "i-a", "10.0.0.1"),
            member("2", "i-b", "10.0.0.2"),
            member("3", "i-dead", "10.0.0.3"),
            // Another live node added but not started yet (its run was cut short).
            member("5", "", "10.0.0.5"),
            // A dead joiner that never started.
            member("6", "", "10.0.0.9"),
            // This node's own data is gone: its old self goes too.
            member("7", "i-new", "10.0.0.3"),
        ];
        let (remove, present) = reconcile(&me, &peers, &members);
        assert_eq!(remove.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["3", "6", "7"]);
        assert!(!present);
        // An unstarted member at this node's address is this node, also an
        // unstarted initial member, which carries its name from the start.
        let (remove, present) = reconcile(&me, &peers, &[member("8", "", "10.0.0.3")]);
        assert!(remove.is_empty() && present);
        let mut initial = member("9", "i-new", "10.0.0.3");
        initial.client_urls.clear();
        let (remove, present) = reconcile(&me, &peers, &[initial.clone()]);
        assert!(remove.is_empty() && present);
        // ... but an unstarted initial member of another name at this
        // address is the dead previous owner.
        initial.name = "i-dead".into();
        let (remove, present) = reconcile(&me, &peers, &[initial]);
        assert!(remove.len() == 1 && !present);
    }

    #[test]
    fn reconcile_removes_gone_instances_and_adds_self_once() {
        let me = peer("i-new", "10.0.0.4");
        let peers = [peer("i-a", "10.0.0.1"), peer("i-b", "10.0.0.2"), me.clone()];
        let members = [
            member("1", "i-a", "10.0.0.1"),
            member("2", "i-b", "10.0.0.2"),
            member("3", "i-dead", "10.0.0.3"),
        ];
        let (remove, present) = reconcile(&me, &peers, &members);
        assert_eq!(remove.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["3"]);
        assert!(!present);
        let mut with_me = members.to_vec();
        with_me.push(member("4", "", "10.0.0.4"));
        assert!(reconcile(&me, &peers, &with_me).1);
        let ic = initial_cluster_of(
            &with_me[..2].iter().cloned().chain([with_me[3].clone()]).collect::<Vec<_>>(),
            &peers,
        );
        assert_eq!(
            ic,
            [
                ("i-a".to_string(), peer_url("10.0.0.1")),
                ("i-b".to_string(), peer_url("10.0.0.2")),
                ("i-new".to_string(), peer_url("10.0.0.4"))
            ]
        );
    }

    #[test]
    fn etcd_owner_comes_from_passwd() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        assert_eq!(etcd_owner(&layout), None);
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\netcd:x:101:103::/var/lib/etcd:/usr/sbin/nologin\n",
        )
        .unwrap();
        assert_eq!(etcd_owner(&layout), Some((101, 103)));
    }
}
