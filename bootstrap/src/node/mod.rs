//! What keel-bootstrap does at boot, in order (DESIGN.md, "Boot"):
//! image role -> IMDSv2 identity -> hostname -> primary interface -> user
//! data -> the role's
//! bundle (one S3 GetObject, one KMS Decrypt) -> the role's steps -> status
//! file and systemd readiness. Each step prints one console line.

pub mod apply;
pub mod assets;
pub mod controller;
mod error;
pub mod etcd;
pub mod kube;
mod primary_nic;
mod systemctl;
pub mod worker;

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use keel_contract::assets::paths;

use crate::discovery::{self, Counter, Peer};
use crate::etcd_api::EtcdApi;
use crate::imds::{Identity, Imds};
use crate::layout::Layout;
use crate::pki::Ca;
use crate::retry::{self, Policy};
use crate::status::Reporter;
use crate::userdata::{self, UserData};
use crate::{aws, envelope, formation, snapshot, Role};

use self::assets::Assets;
pub use self::error::NodeError;

/// Fetching the role's bundle again after transient S3 or KMS errors.
const ASSETS_POLICY: Policy = Policy {
    initial: std::time::Duration::from_secs(2),
    max_delay: std::time::Duration::from_secs(20),
    deadline: std::time::Duration::from_secs(180),
    max_attempts: 8,
};

/// How to run.
pub struct Options {
    /// Files are written under this root (`/` on a node).
    pub root: PathBuf,
    /// The metadata service (`imds::DEFAULT_BASE_URL` on EC2).
    pub imds_url: String,
    /// Retry policy for metadata requests.
    pub imds_policy: Policy,
    /// Where step lines go (the console on a node).
    pub console: Box<dyn Write + Send>,
}

/// A failed step: `<step>: <why>`, the one line printed on failure.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {message}")]
pub struct BootError {
    pub step: String,
    pub message: String,
}

/// What a successful run configured.
#[derive(Debug, Clone)]
pub struct Configured {
    pub identity: Identity,
    pub role: Role,
    /// The etcd role's membership plan.
    pub etcd_plan: Option<etcd::Plan>,
    pub status: crate::status::Status,
}

/// Runs every step. The status file is written whether it succeeds or not.
pub async fn run(opts: Options) -> Result<Configured, BootError> {
    let layout = Layout::new(&opts.root);
    let mut rep = Reporter::new(&opts.root, opts.console);
    let result = Boot {
        layout: &layout,
        imds_url: &opts.imds_url,
        imds_policy: opts.imds_policy,
        pages: Counter::default(),
    }
    .steps(&mut rep)
    .await;
    let written = rep.finish(result.as_ref().err().map(|e| e.to_string()));
    let (identity, role, etcd_plan) = result?;
    written.map_err(|e| BootError {
        step: "status".into(),
        message: format!("writing {}: {e}", opts.root.join(crate::status::STATUS_FILE).display()),
    })?;
    Ok(Configured { identity, role, etcd_plan, status: rep.status.clone() })
}

struct Boot<'a> {
    layout: &'a Layout,
    imds_url: &'a str,
    imds_policy: Policy,
    pages: Counter,
}

/// Runs `fut` as the step `name`: one console line and a status entry.
async fn step<T, E: std::fmt::Display>(
    rep: &mut Reporter,
    name: &str,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, BootError> {
    let started = Instant::now();
    let result = fut.await;
    rep.step(name, started, &result);
    result.map_err(|e| BootError {
        step: name.to_string(),
        message: crate::status::one_line(&e.to_string()),
    })
}

impl Boot<'_> {
    async fn steps(
        &self,
        rep: &mut Reporter,
    ) -> Result<(Identity, Role, Option<etcd::Plan>), BootError> {
        let layout = self.layout;
        let role = step(rep, "image role", async { userdata::image_role(&layout.root) }).await?;
        rep.status.role = Some(role.to_string());
        let imds = step(rep, "metadata client", async {
            Imds::with_policy(self.imds_url, self.imds_policy)
        })
        .await?;
        let id = step(rep, "identity", imds.identity()).await?;
        rep.status.instance_id = Some(id.instance_id.clone());
        step(rep, "hostname", async { set_hostname(layout, &id.local_hostname) }).await?;
        step(rep, "primary interface", primary_nic::pin(layout, &imds)).await?;
        let ud = step(rep, "user data", async {
            let bytes = imds.user_data().await?.ok_or(NodeError::NoUserData)?;
            Ok::<_, NodeError>(UserData::parse(&bytes, role)?)
        })
        .await?;
        let sdk = step(rep, "aws config", async {
            let target = aws::Target {
                region: Some(id.region.clone()),
                endpoint_url: ud.endpoint_url().map(str::to_string),
            };
            aws::node_sdk_config(&target, self.imds_url, &layout.root).await
        })
        .await?;
        let etcd_owner = (role == Role::Etcd).then(|| etcd::etcd_owner(layout)).flatten();
        let (s3_requests, kms_requests) =
            (aws::RequestCounter::default(), aws::RequestCounter::default());
        let assets = step(rep, "assets", async {
            let s3 = aws::s3_client(&sdk);
            let s3 = aws_sdk_s3::Client::from_conf(
                s3.config().to_builder().interceptor(s3_requests.clone()).build(),
            );
            let kms_conf =
                aws_sdk_kms::config::Builder::from(&sdk).interceptor(kms_requests.clone()).build();
            let kms = aws_sdk_kms::Client::from_conf(kms_conf);
            // The SDK retried each call; a throttled or unreachable S3 or
            // KMS is tried again here for a few minutes, a final answer
            // (no such key, access denied, another context) is not.
            let expected = envelope::Expected {
                kms_key_id: ud.assets.kms_key_id.as_deref(),
                bucket_owner: ud.assets.bucket_owner.as_deref(),
            };
            let bundle = retry::retry(&ASSETS_POLICY, |_| async {
                envelope::fetch_expecting(
                    &s3,
                    &kms,
                    &ud.assets.bucket,
                    &ud.assets.prefix,
                    &ud.cluster,
                    role,
                    &expected,
                )
                .await
                .map_err(|e| {
                    if envelope::is_final(&e) {
                        retry::Attempt::Fail(e)
                    } else {
                        retry::Attempt::Retry(e)
                    }
                })
            })
            .await?;
            Ok::<_, NodeError>(Assets::install(
                layout,
                bundle,
                etcd_owner.map(|(u, g)| ("etcd/", u, g)),
            )?)
        })
        .await;
        rep.status.aws_requests.s3_get_object = s3_requests.get();
        rep.status.aws_requests.kms_decrypt = kms_requests.get();
        let assets = assets?;
        let ec2 = aws_sdk_ec2::Client::new(&sdk);
        let plan = match role {
            Role::Etcd => {
                let store = formation::Store {
                    s3: aws::s3_client(&sdk),
                    bucket: ud.assets.bucket.clone(),
                    prefix: ud.assets.prefix.clone(),
                };
                let kms = aws_sdk_kms::Client::new(&sdk);
                Some(self.etcd(rep, &ud, &id, &assets, &ec2, &store, &kms, etcd_owner).await?)
            }
            Role::Controller => {
                self.controller(rep, &ud, &id, &assets, &ec2).await?;
                None
            }
            Role::Worker => {
                self.worker(rep, &ud, &id, &assets).await?;
                None
            }
        };
        rep.status.aws_requests.ec2_describe_instances = self.pages.get();
        Ok((id, role, plan))
    }

    async fn discover(
        &self,
        rep: &mut Reporter,
        ud: &UserData,
        ec2: &aws_sdk_ec2::Client,
        name: &str,
    ) -> Result<Vec<Peer>, BootError> {
        let r = step(
            rep,
            name,
            discovery::wait_for(
                ec2,
                &ud.cluster,
                Role::Etcd,
                ud.etcd.expected_members as usize,
                ud.discovery_timeout(),
                &self.pages,
            ),
        )
        .await;
        rep.status.aws_requests.ec2_describe_instances = self.pages.get();
        r
    }

    #[allow(clippy::too_many_arguments)]
    async fn etcd(
        &self,
        rep: &mut Reporter,
        ud: &UserData,
        id: &Identity,
        assets: &Assets,
        ec2: &aws_sdk_ec2::Client,
        store: &formation::Store,
        kms: &aws_sdk_kms::Client,
        owner: Option<(u32, u32)>,
    ) -> Result<etcd::Plan, BootError> {
        let layout = self.layout;
        // One deadline for every wait of this role (peers, a cluster that
        // answers, the join lock); it stays below the unit's start timeout.
        let deadline = tokio::time::Instant::now() + ud.discovery_timeout();
        let me = Peer {
            instance_id: id.instance_id.clone(),
            private_ip: id.private_ipv4.clone(),
            private_dns: id.local_hostname.clone(),
        };
        let api = step(rep, "etcd certificates", async {
            let ca = Ca::load(
                "etcd/pki/ca.crt and etcd/pki/ca.key",
                assets.text(paths::ETCD_CA_CRT)?,
                assets.text(paths::ETCD_CA_KEY)?,
            )?;
            Ok::<_, NodeError>(etcd::issue_certificates(layout, &ca, &me, owner)?)
        })
        .await?;
        // A reboot with data present needs no waiting for peers: etcd's
        // data decides, checked against the cluster if one answers.
        if !etcd::has_data(layout) {
            self.discover(rep, ud, ec2, "etcd discovery").await?;
        }
        let snapshots = snapshot::Snapshots {
            s3: store.s3.clone(),
            kms: kms.clone(),
            bucket: ud.assets.bucket.clone(),
            prefix: ud.assets.prefix.clone(),
            cluster: ud.cluster.clone(),
        };
        let cluster = etcd::Cluster {
            name: &ud.cluster,
            ec2,
            store,
            expected: ud.etcd.expected_members as usize,
            deadline,
            pages: &self.pages,
            snapshots: &snapshots,
        };
        let decision = step(rep, "etcd membership", etcd::plan(layout, &api, &me, &cluster)).await;
        rep.status.aws_requests.ec2_describe_instances = self.pages.get();
        let decision = decision?;
        if let Some(key) = &decision.restore_from {
            // Said on the console: the cluster starts from a backup.
            let name = format!("etcd restore of s3://{}/{key}", ud.assets.bucket);
            step(rep, &name, etcd::restore(layout, &snapshots, key, &me, &decision, owner)).await?;
        }
        step(rep, "etcd config", async {
            let env = etcd::render_env(
                layout,
                ud,
                &me,
                &decision.initial,
                decision.new_cluster,
                &decision.token,
            );
            etcd::write_config(layout, &env, owner)
        })
        .await?;
        let plan = decision.plan;
        Ok(plan)
    }

    async fn controller(
        &self,
        rep: &mut Reporter,
        ud: &UserData,
        id: &Identity,
        assets: &Assets,
        ec2: &aws_sdk_ec2::Client,
    ) -> Result<(), BootError> {
        let layout = self.layout;
        let peers = self.discover(rep, ud, ec2, "etcd discovery").await?;
        step(rep, "etcd check", check_etcd(assets, &peers)).await?;
        let certs =
            step(rep, "certificates", async { controller::issue_from_assets(ud, id, assets) })
                .await?;
        step(rep, "containerd config", async { worker::write_containerd_config(layout) }).await?;
        step(rep, "control plane config", async {
            controller::write_config(layout, ud, id, &peers, &certs)
        })
        .await?;
        step(rep, "kubelet config", async { controller::write_kubelet_config(layout, ud, id) })
            .await
    }

    async fn worker(
        &self,
        rep: &mut Reporter,
        ud: &UserData,
        id: &Identity,
        assets: &Assets,
    ) -> Result<(), BootError> {
        let layout = self.layout;
        step(rep, "containerd config", async { worker::write_containerd_config(layout) }).await?;
        step(rep, "kubelet config", async {
            let token = assets.text(worker::BOOTSTRAP_TOKEN)?.trim();
            worker::write_kubelet_config(layout, ud, id, token)
        })
        .await
    }
}

/// At least a majority of the etcd members must answer, with the API
/// server's etcd client certificate, before the control plane starts.
async fn check_etcd(assets: &Assets, peers: &[Peer]) -> Result<(), NodeError> {
    let api = EtcdApi::new(
        assets.text(paths::ETCD_CA_CRT)?,
        assets.text(paths::APISERVER_ETCD_CLIENT_CRT)?,
        assets.text(paths::APISERVER_ETCD_CLIENT_KEY)?,
        Policy::quick(),
    )?;
    let mut failures = Vec::new();
    for p in peers {
        if let Err(e) = api.health(&etcd::client_url(&p.private_ip)).await {
            failures.push(format!("{} ({e})", p.instance_id));
        }
    }
    let healthy = peers.len() - failures.len();
    if healthy * 2 > peers.len() {
        Ok(())
    } else {
        Err(NodeError::EtcdUnhealthy {
            healthy,
            members: peers.len(),
            failures: failures.join("; "),
        })
    }
}

fn write(layout: &Layout, rel: &str, mode: u32, bytes: &[u8]) -> Result<(), NodeError> {
    let path = layout.path(rel);
    crate::atomic_file::write(&path, mode, bytes)
        .map_err(|source| NodeError::Write { path, source })
}

/// Reads a file the boot wrote.
fn read(path: PathBuf) -> Result<String, NodeError> {
    std::fs::read_to_string(&path).map_err(|source| NodeError::Read { path, source })
}

/// Writes /etc/hostname and, on the running system only, sets it.
fn set_hostname(layout: &Layout, name: &str) -> Result<(), NodeError> {
    let short = name.split('.').next().unwrap_or(name);
    if short.is_empty()
        || short.len() > 63
        || !short.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(NodeError::HostName { name: name.to_string() });
    }
    write(layout, "etc/hostname", 0o644, format!("{short}\n").as_bytes())?;
    if layout.is_system_root() {
        rustix::system::sethostname(short.as_bytes())
            .map_err(|e| NodeError::SetHostname { name: short.to_string(), source: e.into() })?;
    }
    Ok(())
}

/// `keel-bootstrap --etcd-snapshot` (keel-etcd-snapshot.timer): on the
/// etcd leader only, a snapshot of the backend sealed into S3 with the
/// KMS key of the etcd bundle, then all but the newest
/// `snapshot::DEFAULT_RETENTION` removed. Returns the line to print.
pub async fn etcd_snapshot(opts: &Options) -> Result<String, NodeError> {
    let layout = Layout::new(&opts.root);
    let (id, ud, sdk) = running_node(opts, Role::Etcd).await?;
    let api = api_from_files(&layout, [etcd::CA_CRT, etcd::SERVER_CRT, etcd::SERVER_KEY])?;
    let endpoint = etcd::client_url(&id.private_ipv4);
    if !api.is_leader(&endpoint).await? {
        return Ok("not the leader: the leader takes the snapshots".into());
    }
    let s3 = aws::s3_client(&sdk);
    let key_id =
        snapshot::kms_key_of_bundle(&s3, &ud.assets.bucket, &ud.assets.prefix, Role::Etcd).await?;
    let started = Instant::now();
    let db = api.snapshot(&endpoint).await?;
    let snapshots = snapshot::Snapshots {
        s3,
        kms: aws_sdk_kms::Client::new(&sdk),
        bucket: ud.assets.bucket.clone(),
        prefix: ud.assets.prefix.clone(),
        cluster: ud.cluster.clone(),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let key = snapshots.upload(&key_id, &db, now).await?;
    let gone = snapshots.prune(snapshot::DEFAULT_RETENTION).await?;
    Ok(format!(
        "etcd snapshot of {} bytes sealed to s3://{}/{key} in {} ms; {} older removed",
        db.len(),
        ud.assets.bucket,
        started.elapsed().as_millis(),
        gone.len()
    ))
}

/// `keel-bootstrap --refresh-etcd-servers` (keel-etcd-servers.timer, on
/// controllers): asks etcd (through the endpoints kube-apiserver has and
/// the etcd instances EC2 lists now) for its started voting members, and
/// when their client URLs differ from kube-apiserver's `--etcd-servers`,
/// rewrites that one flag and restarts kube-apiserver (`systemctl
/// try-restart`, on a running system only). Nothing changes, and nothing
/// restarts, when the list is the same. Returns the line to print.
pub async fn refresh_etcd_servers(opts: &Options) -> Result<String, NodeError> {
    let layout = Layout::new(&opts.root);
    let env_path = layout.path(controller::APISERVER_ENV);
    let env = read(env_path.clone())?;
    let current = controller::etcd_servers_in(&env)
        .ok_or_else(|| NodeError::Missing { path: env_path, setting: "--etcd-servers".into() })?;
    let (_, ud, sdk) = running_node(opts, Role::Controller).await?;
    let peers = discovery::list(
        &aws_sdk_ec2::Client::new(&sdk),
        &ud.cluster,
        Role::Etcd,
        &Counter::default(),
    )
    .await?;
    let mut candidates = current.clone();
    candidates.extend(peers.iter().map(|p| etcd::client_url(&p.private_ip)));
    candidates.dedup();
    let (crt, key) = (
        controller::pki_path("apiserver-etcd-client", "crt"),
        controller::pki_path("apiserver-etcd-client", "key"),
    );
    let api = api_from_files(&layout, [etcd::CA_CRT, &crt, &key])?;
    let now = controller::etcd_servers_now(&api, &candidates).await?;
    let mut sorted = current.clone();
    sorted.sort();
    if sorted == now {
        return Ok(format!("etcd servers unchanged: {}", now.join(",")));
    }
    write(
        &layout,
        controller::APISERVER_ENV,
        0o644,
        controller::with_etcd_servers(&env, &now).as_bytes(),
    )?;
    if layout.is_system_root() {
        // kube-apiserver's stop and start are each bounded by systemd
        // (90 s by default); keel-etcd-servers.service by 5 minutes.
        systemctl::run(
            "systemctl try-restart kube-apiserver.service",
            std::time::Duration::from_secs(240),
        )
        .await?;
    }
    Ok(format!("etcd servers changed from {} to {}", current.join(","), now.join(",")))
}

/// On a node that booted: its identity, user data and AWS configuration,
/// for the periodic tasks (snapshots, etcd servers).
async fn running_node(
    opts: &Options,
    role: Role,
) -> Result<(Identity, UserData, aws_config::SdkConfig), NodeError> {
    let imds = Imds::with_policy(&opts.imds_url, opts.imds_policy)?;
    let id = imds.identity().await?;
    let bytes = imds.user_data().await?.ok_or(NodeError::NoUserData)?;
    let ud = UserData::parse(&bytes, role)?;
    let target = aws::Target {
        region: Some(id.region.clone()),
        endpoint_url: ud.endpoint_url().map(str::to_string),
    };
    let sdk = aws::node_sdk_config(&target, &opts.imds_url, &opts.root).await?;
    Ok((id, ud, sdk))
}

/// An etcd client from the CA, certificate and key files the boot wrote.
fn api_from_files(layout: &Layout, [ca, crt, key]: [&str; 3]) -> Result<EtcdApi, NodeError> {
    let read = |rel: &str| read(layout.path(rel));
    Ok(EtcdApi::new(&read(ca)?, &read(crt)?, &read(key)?, etcd::PROBE)?)
}
