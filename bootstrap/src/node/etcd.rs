//! The etcd role: this node's peer and server certificates from the etcd
//! CA, peers found by tags, then one of three plans, and etcd's
//! configuration written for systemd to start etcd with:
//! - data directory present (a reboot): start as it is, no membership
//!   change;
//! - a healthy cluster answers: remove members whose instances are gone,
//!   add this node, start with `existing`;
//! - otherwise: form a new cluster whose initial membership is every
//!   discovered instance (sorted by instance id, so every node computes the
//!   same list).

use std::net::IpAddr;
use std::time::Duration;

use crate::discovery::Peer;
use crate::etcd_api::{EtcdApi, EtcdApiError, Member};
use crate::layout::{self, Layout};
use crate::pki::{self, Ca, PkiError, Usage};
use crate::retry::Policy;
use crate::userdata::UserData;

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
}

/// What this boot did about membership.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "plan", rename_all = "kebab-case")]
pub enum Plan {
    /// The data directory exists: etcd starts with what it has.
    Restart,
    /// A new cluster of these members.
    New { members: Vec<String> },
    /// Joined the cluster answering at `via`, after removing `removed`.
    Join { via: String, removed: Vec<String> },
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

/// Whether etcd has data from an earlier boot.
pub fn has_data(layout: &Layout) -> bool {
    layout.path(layout::ETCD_DATA_DIR).join("member").is_dir()
}

/// Which members to remove (their instances are gone) and whether this
/// node still has to be added, given the cluster's membership.
pub fn reconcile(me: &Peer, peers: &[Peer], members: &[Member]) -> (Vec<Member>, bool) {
    let my_url = peer_url(&me.private_ip);
    let alive = |m: &Member| {
        peers.iter().any(|p| {
            m.name == p.instance_id || m.peer_urls.iter().any(|u| *u == peer_url(&p.private_ip))
        })
    };
    let remove = members.iter().filter(|m| !alive(m)).cloned().collect();
    let present = members.iter().any(|m| m.peer_urls.contains(&my_url));
    (remove, !present)
}

/// `name=peer-url` pairs for ETCD_INITIAL_CLUSTER from a membership; an
/// unstarted member has no name yet and gets its instance id from `peers`.
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

/// Decides and carries out the membership plan. `api` presents this
/// node's certificate.
pub async fn plan(
    layout: &Layout,
    api: &EtcdApi,
    me: &Peer,
    peers: &[Peer],
) -> Result<(Plan, Vec<(String, String)>, bool), EtcdError> {
    if has_data(layout) {
        return Ok((
            Plan::Restart,
            vec![(me.instance_id.clone(), peer_url(&me.private_ip))],
            false,
        ));
    }
    if !peers.iter().any(|p| p.instance_id == me.instance_id) {
        return Err(EtcdError::NotAPeer {
            instance_id: me.instance_id.clone(),
            ip: me.private_ip.clone(),
            found: peers.iter().map(|p| p.instance_id.as_str()).collect::<Vec<_>>().join(", "),
        });
    }
    // Does a cluster exist? A peer that answers at all (even "unhealthy")
    // means yes; only when no peer answers is a new cluster formed.
    let mut healthy = None;
    let mut answering = None;
    for p in peers.iter().filter(|p| p.instance_id != me.instance_id) {
        let endpoint = client_url(&p.private_ip);
        match api.health_with(&endpoint, &PROBE).await {
            Ok(()) => {
                healthy = Some(endpoint);
                break;
            }
            Err(EtcdApiError::Request { .. }) => {}
            Err(_) => answering = answering.or(Some(endpoint)),
        }
    }
    let endpoint = match (healthy, answering) {
        (Some(e), _) => e,
        (None, None) => {
            let initial: Vec<(String, String)> =
                peers.iter().map(|p| (p.instance_id.clone(), peer_url(&p.private_ip))).collect();
            let members = peers.iter().map(|p| p.instance_id.clone()).collect();
            return Ok((Plan::New { members }, initial, true));
        }
        (None, Some(e)) => {
            // A cluster that is still forming (waiting for us, an initial
            // member) or between leaders. An initial member starts with
            // the membership the others were started with.
            let join = |source| EtcdError::Join { endpoint: e.clone(), source };
            let members = api.member_list(&e).await.map_err(join)?;
            let (_, absent) = reconcile(me, peers, &members);
            if !absent {
                let names = initial_cluster_of(&members, peers);
                let members = names.iter().map(|(n, _)| n.clone()).collect();
                return Ok((Plan::New { members }, names, true));
            }
            // Otherwise wait for it to become healthy, then join.
            api.health(&e).await.map_err(join)?;
            e
        }
    };
    let join = |source| EtcdError::Join { endpoint: endpoint.clone(), source };
    let members = api.member_list(&endpoint).await.map_err(join)?;
    let (remove, add) = reconcile(me, peers, &members);
    // Remove first: with a dead member still counted, adding one more
    // could need a quorum the live members do not have.
    for m in &remove {
        api.member_remove(&endpoint, &m.id).await.map_err(join)?;
    }
    if add {
        if let Err(e) = api.member_add(&endpoint, &peer_url(&me.private_ip)).await {
            // An earlier attempt may have been applied before its answer
            // was lost: fine if this node is a member now.
            let now = api.member_list(&endpoint).await.map_err(join)?;
            if reconcile(me, peers, &now).1 {
                return Err(join(e));
            }
        }
    }
    let members = api.member_list(&endpoint).await.map_err(join)?;
    let removed = remove
        .iter()
        .map(|m| if m.name.is_empty() { m.id.clone() } else { m.name.clone() })
        .collect();
    Ok((Plan::Join { via: endpoint, removed }, initial_cluster_of(&members, peers), false))
}

/// The environment file Debian's etcd-server unit reads (`/etc/default/etcd`,
/// `EnvironmentFile=`); the same variables configure etcd 3.4 and 3.5.
pub fn render_env(
    layout: &Layout,
    ud: &UserData,
    me: &Peer,
    initial: &[(String, String)],
    new_cluster: bool,
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
        ("ETCD_INITIAL_CLUSTER_TOKEN", format!("keel-{}", ud.cluster)),
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
            client_urls: vec![],
        }
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
        let (remove, add) = reconcile(&me, &peers, &members);
        assert_eq!(remove.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["3"]);
        assert!(add);
        let mut with_me = members.to_vec();
        with_me.push(member("4", "", "10.0.0.4"));
        assert!(!reconcile(&me, &peers, &with_me).1);
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
