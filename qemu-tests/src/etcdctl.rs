//! The host's etcd client (`etcdctl` from Debian's etcd-client) against a
//! cluster of VMs: TLS with the cluster's etcd CA and a client
//! certificate, every call with a dial timeout, a command timeout and a
//! process deadline (the process is killed when it passes), and a wait
//! that retries (`keel_bootstrap::retry`) until the cluster has exactly
//! the expected members, all started and all healthy, within a deadline.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use keel_bootstrap::atomic_file;
/// A member as `etcdctl member list -w json` shows it (the type the
/// bootstrap's etcd client uses; `id` in decimal).
pub use keel_bootstrap::etcd_api::Member;
/// The URLs a node's etcd listens on, as its bootstrap configures them.
pub use keel_bootstrap::node::etcd::{client_url, peer_url};
use keel_bootstrap::pki::{Ca, Request, Usage};
use keel_bootstrap::retry::{retry, Attempt, Policy};

const ETCDCTL: &str = "etcdctl";
/// etcdctl's own limits: connecting to an endpoint, and one request.
const DIAL_TIMEOUT: &str = "5s";
const COMMAND_TIMEOUT: &str = "15s";
/// The whole process, with room for several endpoints' dial timeouts
/// (`endpoint health` checks them one after another).
const PROCESS_DEADLINE: Duration = Duration::from_secs(60);
/// The wait for a healthy cluster: look again every few seconds (a VM
/// under TCG starts etcd in seconds to minutes).
const WAIT: Policy = Policy {
    initial: Duration::from_secs(1),
    max_delay: Duration::from_secs(5),
    deadline: Duration::from_secs(600),
    max_attempts: u32::MAX,
};

/// The bundle paths of the etcd CA and of the API server's etcd client
/// certificate (what a controller gets in its bundle).
pub use keel_contract::assets::paths::{
    APISERVER_ETCD_CLIENT_CRT, APISERVER_ETCD_CLIENT_KEY, ETCD_CA_CRT, ETCD_CA_KEY,
};

/// The files etcdctl presents: the CA that signed the servers'
/// certificates, a client certificate and its key.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Credentials {
    /// Writes `ca.crt`, `client.crt` and `client.key` (0600) into `dir`.
    pub fn write(
        dir: &Path,
        ca_pem: &[u8],
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<Credentials> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let c = Credentials {
            ca: dir.join("ca.crt"),
            cert: dir.join("client.crt"),
            key: dir.join("client.key"),
        };
        for (path, mode, bytes) in
            [(&c.key, 0o600, key_pem), (&c.cert, 0o644, cert_pem), (&c.ca, 0o644, ca_pem)]
        {
            atomic_file::write(path, mode, bytes)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(c)
    }

    /// A client certificate for the test host, issued into `dir` by the
    /// etcd CA of the asset directory `assets` (`keel assets init`): the
    /// cluster trusts it exactly when it trusts that CA.
    pub fn issue(assets: &Path, dir: &Path) -> Result<Credentials> {
        let read = |rel: &str| {
            let p = assets.join(rel);
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
        };
        let ca_pem = read(ETCD_CA_CRT)?;
        let ca = Ca::load(
            &format!("{ETCD_CA_CRT} and {ETCD_CA_KEY} in {}", assets.display()),
            &ca_pem,
            &read(ETCD_CA_KEY)?,
        )?;
        let issued = ca.issue(&Request {
            what: "etcdctl client certificate of the test host",
            common_name: "keel-qemu-tests-etcdctl",
            organization: None,
            dns_names: vec![],
            ips: vec![],
            usage: Usage::Client,
        })?;
        Credentials::write(
            dir,
            ca_pem.as_bytes(),
            issued.cert_pem.as_bytes(),
            issued.key_pem.as_bytes(),
        )
    }
}

/// One endpoint as `etcdctl endpoint health -w json` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub endpoint: String,
    pub healthy: bool,
    pub error: Option<String>,
}

/// etcdctl with fixed credentials and endpoints.
#[derive(Debug, Clone)]
pub struct Etcdctl {
    creds: Credentials,
    endpoints: Vec<String>,
}

impl Etcdctl {
    pub fn new(creds: Credentials, endpoints: Vec<String>) -> Etcdctl {
        Etcdctl { creds, endpoints }
    }

    /// The same credentials against other endpoints (e.g. one member).
    pub fn at(&self, endpoints: Vec<String>) -> Etcdctl {
        Etcdctl { creds: self.creds.clone(), endpoints }
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Runs `etcdctl <args>` once; returns (exit success, stdout, stderr).
    async fn exec<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<(bool, String, String)> {
        let mut cmd = tokio::process::Command::new(ETCDCTL);
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints.join(",")))
            .arg("--cacert")
            .arg(&self.creds.ca)
            .arg("--cert")
            .arg(&self.creds.cert)
            .arg("--key")
            .arg(&self.creds.key)
            .arg(format!("--dial-timeout={DIAL_TIMEOUT}"))
            .arg(format!("--command-timeout={COMMAND_TIMEOUT}"))
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let shown = self.shown(args);
        let out = tokio::time::timeout(PROCESS_DEADLINE, cmd.output())
            .await
            .map_err(|_| {
                anyhow::anyhow!("{shown}: no answer within {PROCESS_DEADLINE:?} (killed)")
            })?
            .with_context(|| {
                format!("running {ETCDCTL} (install the Debian package etcd-client)")
            })?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    fn shown<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let args: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
        format!("etcdctl --endpoints={} {}", self.endpoints.join(","), args.join(" "))
    }

    /// Runs `etcdctl <args>`; its stdout, or an error with the command
    /// and etcdctl's message.
    pub async fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<String> {
        let (ok, stdout, stderr) = self.exec(args).await?;
        if !ok {
            bail!("{} failed: {}", self.shown(args), last_error(&stderr));
        }
        Ok(stdout)
    }

    /// The cluster's members, as the first endpoint that answers sees them.
    pub async fn member_list(&self) -> Result<Vec<Member>> {
        let out = self.run(&["member", "list", "-w", "json"]).await?;
        parse_members(&out)
            .with_context(|| format!("member list from {}: {out}", self.endpoints.join(",")))
    }

    /// Each endpoint's health (an unhealthy endpoint is an entry, not an
    /// error).
    pub async fn endpoint_health(&self) -> Result<Vec<Health>> {
        let args = ["endpoint", "health", "-w", "json"];
        let (_, stdout, stderr) = self.exec(&args).await?;
        parse_health(&stdout)
            .with_context(|| format!("{}: {}", self.shown(&args), last_error(&stderr)))
    }

    pub async fn put(&self, key: &str, value: &str) -> Result<()> {
        self.run(&["put", key, value]).await.map(|_| ())
    }

    /// The value of `key` (a linearizable read), None when absent.
    pub async fn get(&self, key: &str) -> Result<Option<String>> {
        let out = self.run(&["get", key, "-w", "json"]).await?;
        parse_get(&out).with_context(|| format!("get {key}: {out}"))
    }

    /// Waits until the cluster's members are exactly those with peer URLs
    /// `peer_urls`, every one started and every endpoint healthy; retries
    /// (a few seconds apart) until `deadline`, then fails with what it saw
    /// last. Returns the members.
    pub async fn wait_healthy(
        &self,
        peer_urls: &[String],
        deadline: Duration,
    ) -> Result<Vec<Member>> {
        let policy = Policy { deadline, ..WAIT };
        retry(&policy, |_| async {
            let members = self.member_list().await.map_err(Attempt::Retry)?;
            check_membership(&members, peer_urls).map_err(Attempt::Retry)?;
            let health = self.endpoint_health().await.map_err(Attempt::Retry)?;
            check_health(&health, &self.endpoints).map_err(Attempt::Retry)?;
            Ok(members)
        })
        .await
        .with_context(|| {
            format!("waiting {deadline:?} for {} healthy etcd members", peer_urls.len())
        })
    }
}

/// etcdctl's last message line (it logs retries as JSON lines first).
fn last_error(stderr: &str) -> String {
    stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty() && !l.starts_with('{'))
        .unwrap_or(stderr.trim())
        .trim()
        .to_string()
}

fn check_membership(members: &[Member], peer_urls: &[String]) -> Result<()> {
    let mut have: Vec<&str> =
        members.iter().flat_map(|m| m.peer_urls.iter().map(String::as_str)).collect();
    let mut want: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    have.sort();
    want.sort();
    if have != want {
        bail!("members have peer URLs {have:?}, expected {want:?}");
    }
    if let Some(m) = members.iter().find(|m| m.name.is_empty()) {
        bail!("member {} ({}) has not started", m.id, m.peer_urls.join(","));
    }
    Ok(())
}

fn check_health(health: &[Health], endpoints: &[String]) -> Result<()> {
    for e in endpoints {
        match health.iter().find(|h| h.endpoint == *e) {
            Some(h) if h.healthy => {}
            Some(h) => {
                bail!("{e} is unhealthy: {}", h.error.as_deref().unwrap_or("no reason given"))
            }
            None => bail!("no health report for {e}"),
        }
    }
    Ok(())
}

fn parse_members(json: &str) -> Result<Vec<Member>> {
    let v: serde_json::Value = serde_json::from_str(json.trim()).context("not JSON")?;
    let strings = |m: &serde_json::Value, k: &str| -> Vec<String> {
        m[k].as_array()
            .map(|a| a.iter().filter_map(|u| u.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    };
    v["members"]
        .as_array()
        .context("no members array")?
        .iter()
        .map(|m| {
            Ok(Member {
                id: m["ID"].as_u64().context("member without a numeric ID")?.to_string(),
                name: m["name"].as_str().unwrap_or_default().to_string(),
                peer_urls: strings(m, "peerURLs"),
                client_urls: strings(m, "clientURLs"),
                is_learner: m["isLearner"].as_bool().unwrap_or(false),
            })
        })
        .collect()
}

fn parse_health(json: &str) -> Result<Vec<Health>> {
    let v: serde_json::Value =
        serde_json::from_str(json.trim()).context("no JSON health report")?;
    v.as_array()
        .context("health report is not a list")?
        .iter()
        .map(|h| {
            Ok(Health {
                endpoint: h["endpoint"]
                    .as_str()
                    .context("health entry without an endpoint")?
                    .to_string(),
                healthy: h["health"].as_bool().unwrap_or(false),
                error: h["error"].as_str().map(str::to_string),
            })
        })
        .collect()
}

fn parse_get(json: &str) -> Result<Option<String>> {
    use base64::Engine as _;
    let v: serde_json::Value = serde_json::from_str(json.trim()).context("not JSON")?;
    let Some(kv) = v["kvs"].as_array().and_then(|a| a.first()) else { return Ok(None) };
    let b64 = kv["value"].as_str().context("entry without a value")?;
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(b64).context("value is not base64")?;
    Ok(Some(String::from_utf8(bytes).context("value is not UTF-8")?))
}

/// The members for messages: `name=peer URL` (the id for a member that
/// has not started).
pub fn describe(members: &[Member]) -> String {
    members
        .iter()
        .map(|m| {
            format!("{}={}", if m.name.is_empty() { &m.id } else { &m.name }, m.peer_urls.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_etcdctl_json() {
        let members = parse_members(
            r#"{"header":{"cluster_id":1},"members":[{"ID":10276657743932975437,"name":"i-1","peerURLs":["https://10.0.0.1:2380"],"clientURLs":["https://10.0.0.1:2379"]},{"ID":17,"peerURLs":["https://10.0.0.2:2380"]}]}"#,
        )
        .unwrap();
        assert_eq!(members[0].id, "10276657743932975437");
        assert_eq!(members[1].name, "");
        let want = vec![peer_url("10.0.0.1"), peer_url("10.0.0.2")];
        assert!(check_membership(&members, &want)
            .unwrap_err()
            .to_string()
            .contains("has not started"));
        assert!(check_membership(&members[..1], &want)
            .unwrap_err()
            .to_string()
            .contains("expected"));

        let health = parse_health(
            r#"[{"endpoint":"https://10.0.0.1:2379","health":true,"took":"2ms"},{"endpoint":"https://10.0.0.2:2379","health":false,"took":"5s","error":"context deadline exceeded"}]"#,
        )
        .unwrap();
        let eps = vec![client_url("10.0.0.1"), client_url("10.0.0.2")];
        assert!(check_health(&health[..1], &eps[..1]).is_ok());
        let e = check_health(&health, &eps).unwrap_err().to_string();
        assert!(e.contains("10.0.0.2:2379 is unhealthy: context deadline exceeded"), "{e}");
        assert!(check_health(&health[..1], &eps)
            .unwrap_err()
            .to_string()
            .contains("no health report"));

        assert_eq!(
            parse_get(r#"{"header":{},"kvs":[{"key":"a2V5","value":"dmFsdWU="}],"count":1}"#)
                .unwrap()
                .as_deref(),
            Some("value")
        );
        assert_eq!(parse_get(r#"{"header":{"revision":1}}"#).unwrap(), None);
    }

    #[test]
    fn last_error_skips_json_log_lines() {
        assert_eq!(
            last_error("{\"level\":\"warn\"}\nError: context deadline exceeded\n"),
            "Error: context deadline exceeded"
        );
    }
}
