//! What keel-bootstrap does at boot, in order (DESIGN.md, "Boot"):
//! image role -> IMDSv2 identity -> hostname -> user data -> the role's
//! bundle (one S3 GetObject, one KMS Decrypt) -> the role's steps -> status
//! file and systemd readiness. Each step prints one console line.

pub mod assets;
pub mod controller;
pub mod etcd;
pub mod kube;
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
use crate::retry::Policy;
use crate::status::Reporter;
use crate::userdata::{self, UserData};
use crate::{aws, envelope, Role};

use self::assets::Assets;

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
        let ud = step(rep, "user data", async {
            let bytes = imds.user_data().await.map_err(|e| e.to_string())?.ok_or_else(|| {
                "the instance has no user data: launch it with the output of `keel userdata`"
                    .to_string()
            })?;
            UserData::parse(&bytes, role).map_err(|e| e.to_string())
        })
        .await?;
        let sdk = step(rep, "aws config", async {
            let target = aws::Target {
                region: Some(id.region.clone()),
                endpoint_url: ud.endpoint_url().map(str::to_string),
            };
            aws::node_sdk_config(&target, self.imds_url).await
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
            let bundle =
                envelope::fetch(&s3, &kms, &ud.assets.bucket, &ud.assets.prefix, &ud.cluster, role)
                    .await
                    .map_err(|e| e.to_string())?;
            Assets::install(layout, bundle, etcd_owner.map(|(u, g)| ("etcd/", u, g)))
                .map_err(|e| e.to_string())
        })
        .await;
        rep.status.aws_requests.s3_get_object = s3_requests.get();
        rep.status.aws_requests.kms_decrypt = kms_requests.get();
        let assets = assets?;
        let ec2 = aws_sdk_ec2::Client::new(&sdk);
        let plan = match role {
            Role::Etcd => Some(self.etcd(rep, &ud, &id, &assets, &ec2, etcd_owner).await?),
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

    async fn etcd(
        &self,
        rep: &mut Reporter,
        ud: &UserData,
        id: &Identity,
        assets: &Assets,
        ec2: &aws_sdk_ec2::Client,
        owner: Option<(u32, u32)>,
    ) -> Result<etcd::Plan, BootError> {
        let layout = self.layout;
        let me = Peer {
            instance_id: id.instance_id.clone(),
            private_ip: id.private_ipv4.clone(),
            private_dns: id.local_hostname.clone(),
        };
        let api = step(rep, "etcd certificates", async {
            let ca = Ca::load(
                "etcd/pki/ca.crt and etcd/pki/ca.key",
                assets.text(paths::ETCD_CA_CRT).map_err(|e| e.to_string())?,
                assets.text(paths::ETCD_CA_KEY).map_err(|e| e.to_string())?,
            )
            .map_err(|e| e.to_string())?;
            etcd::issue_certificates(layout, &ca, &me, owner).map_err(|e| e.to_string())
        })
        .await?;
        // A reboot with data present needs no peers: etcd knows its cluster.
        let peers = if etcd::has_data(layout) {
            vec![me.clone()]
        } else {
            self.discover(rep, ud, ec2, "etcd discovery").await?
        };
        let (plan, initial, new) =
            step(rep, "etcd membership", etcd::plan(layout, &api, &me, &peers)).await?;
        step(rep, "etcd config", async {
            let env = etcd::render_env(layout, ud, &me, &initial, new);
            etcd::write_config(layout, &env, owner)
        })
        .await?;
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
        step(rep, "cni config", async { worker::write_cni_config(layout, ud, id) }).await?;
        step(rep, "kubelet config", async {
            let token = assets.text(worker::BOOTSTRAP_TOKEN).map_err(|e| e.to_string())?.trim();
            worker::write_kubelet_config(layout, ud, id, token)
        })
        .await
    }
}

/// At least a majority of the etcd members must answer, with the API
/// server's etcd client certificate, before the control plane starts.
async fn check_etcd(assets: &Assets, peers: &[Peer]) -> Result<(), String> {
    let text = |p: &str| assets.text(p).map_err(|e| e.to_string());
    let api = EtcdApi::new(
        text(paths::ETCD_CA_CRT)?,
        text(paths::APISERVER_ETCD_CLIENT_CRT)?,
        text(paths::APISERVER_ETCD_CLIENT_KEY)?,
        Policy::quick(),
    )
    .map_err(|e| e.to_string())?;
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
        Err(format!(
            "{healthy} of {} etcd members answer with the API server's client certificate: {}",
            peers.len(),
            failures.join("; ")
        ))
    }
}

fn write(layout: &Layout, rel: &str, mode: u32, bytes: &[u8]) -> Result<(), String> {
    let path = layout.path(rel);
    crate::atomic_file::write(&path, mode, bytes)
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Writes /etc/hostname and, on the running system only, sets it.
fn set_hostname(layout: &Layout, name: &str) -> Result<(), String> {
    let short = name.split('.').next().unwrap_or(name);
    if short.is_empty()
        || short.len() > 63
        || !short.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(format!("{name:?} from the metadata service is not a valid host name"));
    }
    write(layout, "etc/hostname", 0o644, format!("{short}\n").as_bytes())?;
    if layout.is_system_root() {
        rustix::system::sethostname(short.as_bytes())
            .map_err(|e| format!("sethostname({short}): {}", std::io::Error::from(e)))?;
    }
    Ok(())
}
