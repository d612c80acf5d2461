//! The Kubernetes TEST DOUBLES (`fixtures/doubles/k8s-test-double`,
//! installed as kubelet, kube-apiserver, kube-controller-manager and
//! kube-scheduler by the TEST-ONLY profile `fixtures/profiles/ci.toml`)
//! run on the host, without a VM: against a node root that keel-bootstrap's
//! own steps filled (`keel_bootstrap::node::{worker, controller}`, rendered
//! under the root the way a node renders under `/`), with Debian's
//! containerd serving the rendered containerd configuration. The doubles
//! stand in for binaries that cannot be had on these machines; these
//! helpers let tests show that they reject what the real components would.

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use keel_bootstrap::discovery::Peer;
use keel_bootstrap::imds::Identity;
use keel_bootstrap::layout::Layout;
use keel_bootstrap::node::assets::Assets;
use keel_bootstrap::node::{controller, kube, worker, NodeError};
use keel_bootstrap::{envelope, pki};
use keel_contract::bundle::{Bundle, BundleFile};
use keel_contract::userdata::{self, UserData};
use keel_contract::Role;
use keel_testkit::process::Guard;
use tempfile::TempDir;
use zeroize::Zeroizing;

use crate::aws::{Account, AZ, REGION};
use crate::{cluster, images, keel};

/// The multi-call test double, as the test profile serves it.
pub const DOUBLE: &str = "k8s-test-double";
/// The names it is installed under.
pub const NAMES: [&str; 4] =
    ["kubelet", "kube-apiserver", "kube-controller-manager", "kube-scheduler"];
/// Where the kubelet double reads containerd's configuration (test only;
/// the default is /etc/containerd/config.toml).
pub const CONTAINERD_CONFIG_ENV: &str = "KUBELET_TEST_DOUBLE_CONTAINERD_CONFIG";
/// Where the kubelet double reads the kernel's settings (test only; the
/// default is /proc/sys).
pub const PROC_SYS_ENV: &str = "KUBELET_TEST_DOUBLE_PROC_SYS";
/// A node root's stand-in for /proc/sys: the settings the worker and
/// controller images' sysctl.d file gives the kernel ([`KERNEL_SETTINGS`]).
pub const PROC_SYS: &str = "proc/sys";
/// The images' kernel settings for Kubernetes nodes, in the workspace.
pub const KERNEL_SETTINGS: &str = "images/worker/files/usr/lib/sysctl.d/80-keel-kubernetes.conf";
/// The bootstrap token in the worker's root (a well-formed test value).
pub const TOKEN: &str = "abcdef.0123456789abcdef";
/// A double takes well under a second; this bounds a hung one.
const RUN_DEADLINE: Duration = Duration::from_secs(60);

/// The double's path in the fixtures.
pub fn path() -> PathBuf {
    images::fixtures().join("doubles").join(DOUBLE)
}

/// What a double printed and how it ended.
#[derive(Debug)]
pub struct Verdict {
    pub status: ExitStatus,
    pub stderr: String,
}

impl Verdict {
    /// The verdict line (`<name>-test-double: config accepted: ...` or
    /// `... rejected: ...`), the last such line on stderr.
    pub fn line(&self) -> &str {
        self.stderr
            .lines()
            .rev()
            .find(|l| {
                l.contains("-test-double: config accepted: ")
                    || l.contains("-test-double: rejected: ")
            })
            .unwrap_or("")
    }

    /// The summary after "config accepted: " when the double accepted and
    /// exited 0.
    pub fn accepted(&self) -> Option<&str> {
        let (_, summary) = self.line().split_once("-test-double: config accepted: ")?;
        self.status.success().then_some(summary)
    }

    /// The reason after "rejected: " when the double rejected and exited
    /// non-zero.
    pub fn rejected(&self) -> Option<&str> {
        let (_, why) = self.line().split_once("-test-double: rejected: ")?;
        (!self.status.success()).then_some(why)
    }
}

/// A directory of links to the double, one per component name.
pub struct Doubles {
    dir: TempDir,
}

impl Doubles {
    pub fn new() -> Result<Doubles> {
        let dir = tempfile::tempdir().context("creating a directory for the test doubles")?;
        let target = path();
        if !target.is_file() {
            bail!("{}: no such test double", target.display());
        }
        for name in NAMES {
            let link = dir.path().join(name);
            std::os::unix::fs::symlink(&target, &link)
                .with_context(|| format!("linking {}", link.display()))?;
        }
        Ok(Doubles { dir })
    }

    /// Runs the double as `name` with `args` and `env` added, as systemd
    /// would (no stdin, not PID 1's child: it exits after its verdict).
    pub fn run(&self, name: &str, args: &[String], env: &[(&str, OsString)]) -> Result<Verdict> {
        let program = self.dir.path().join(name);
        let err_path = self.dir.path().join(format!("{name}.stderr"));
        let err = std::fs::File::create(&err_path)
            .with_context(|| format!("creating {}", err_path.display()))?;
        let mut cmd = Command::new(&program);
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err);
        let mut guard = Guard::spawn(&format!("{name} test double"), cmd)?;
        let started = Instant::now();
        let status = loop {
            if let Some(status) = guard.try_wait()? {
                break status;
            }
            if started.elapsed() > RUN_DEADLINE {
                bail!(
                    "the {name} test double did not finish within {RUN_DEADLINE:?}: {}",
                    std::fs::read_to_string(&err_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr = std::fs::read_to_string(&err_path)
            .with_context(|| format!("reading {}", err_path.display()))?;
        Ok(Verdict { status, stderr })
    }
}

/// A node's root directory as keel-bootstrap leaves it, rendered with the
/// node's own code under a temporary directory (paths in the rendered
/// files name the temporary directory, as they name `/` on a node).
pub struct NodeRoot {
    pub dir: TempDir,
    pub layout: Layout,
    pub ud: UserData,
    pub id: Identity,
    /// The role's bundle, installed as keel-bootstrap installs it.
    bundle: Bundle,
    /// The etcd members a controller found.
    etcd: Vec<Peer>,
}

/// The cluster of every node root.
const CLUSTER: &str = "dbl";

/// The node's identity: what IMDS would tell it.
fn identity(ip: Ipv4Addr) -> Identity {
    Identity {
        instance_id: "i-0123456789abcdef0".into(),
        region: REGION.into(),
        availability_zone: AZ.into(),
        private_ipv4: ip.to_string(),
        local_hostname: cluster::private_dns_name(ip),
    }
}

/// User data of a node of `role`, with a node label.
fn user_data(role: Role) -> UserData {
    UserData {
        version: userdata::VERSION,
        cluster: CLUSTER.into(),
        role,
        api_endpoint: format!("https://api.{CLUSTER}.internal:6443"),
        assets: userdata::Assets {
            bucket: format!("keel-{CLUSTER}-assets"),
            prefix: CLUSTER.into(),
            kms_key_id: None,
            bucket_owner: None,
        },
        etcd: userdata::Etcd {
            expected_members: 1,
            discovery_timeout_seconds: None,
            heartbeat_interval_ms: None,
            election_timeout_ms: None,
            quota_backend_bytes: None,
        },
        aws: None,
        kubernetes: None,
        kubelet: Some(userdata::Kubelet {
            max_pods: None,
            cluster_dns: None,
            cluster_domain: None,
            node_labels: vec!["keel.dev/pool=general".into()],
        }),
    }
}

impl NodeRoot {
    fn new(role: Role, ip: Ipv4Addr, bundle: Bundle, etcd: Vec<Peer>) -> Result<NodeRoot> {
        // Short: containerd's socket path under it must fit a sockaddr_un.
        let dir = tempfile::Builder::new()
            .prefix("keel-node")
            .tempdir_in("/tmp")
            .context("creating a node root")?;
        let layout = Layout::new(dir.path());
        // As `keel build` writes it: the version of the containerd that
        // serves this root (the host's), so keel-bootstrap renders its schema.
        let version = containerd_version(Path::new("containerd"))?;
        let components = dir.path().join(keel_contract::image::COMPONENTS_FILE);
        std::fs::create_dir_all(components.parent().unwrap_or(dir.path()))?;
        std::fs::write(&components, keel_contract::image::render([("containerd", &*version)]))
            .with_context(|| format!("writing {}", components.display()))?;
        let root = NodeRoot { layout, ud: user_data(role), id: identity(ip), dir, bundle, etcd };
        root.render()?;
        Ok(root)
    }

    /// A worker: a bundle with a new cluster CA and a bootstrap token (what
    /// `keel assets` gives a worker), then the worker's steps.
    pub fn worker() -> Result<NodeRoot> {
        let (ca, _key) = pki::new_ca("kubernetes").context("making a cluster CA")?;
        let file = |path: &str, mode, contents: &[u8]| BundleFile {
            path: path.into(),
            mode,
            contents: Zeroizing::new(contents.to_vec()),
        };
        let files = vec![
            file("kubernetes/pki/ca.crt", 0o644, ca.as_bytes()),
            file(worker::BOOTSTRAP_TOKEN, 0o600, format!("{TOKEN}\n").as_bytes()),
        ];
        NodeRoot::new(
            Role::Worker,
            Ipv4Addr::new(10, 0, 1, 5),
            Bundle { cluster: CLUSTER.into(), role: Role::Worker, files },
            Vec::new(),
        )
    }

    /// A controller: `keel assets init` and `keel assets publish` into an
    /// emulated account (moto on 127.0.0.1), the controller's bundle
    /// fetched as keel-bootstrap fetches it, then its steps with one etcd
    /// member.
    pub async fn controller() -> Result<NodeRoot> {
        let ud = user_data(Role::Controller);
        let account = Account::create(Ipv4Addr::LOCALHOST, "10.0.1.0/24", CLUSTER).await?;
        let tools = images::tools()?;
        let work = tempfile::tempdir().context("creating a directory for the assets")?;
        let dir = work.path().join("assets").display().to_string();
        // keel::run finds the binary tools() built in the target directory.
        let run = |args: &[&str], env: &[(String, String)]| {
            keel::run(args, env).with_context(|| format!("with {}", tools.keel.display()))
        };
        run(
            &[
                "assets",
                "init",
                "--cluster",
                CLUSTER,
                "--api-endpoint",
                ud.api_host(),
                "--out",
                &dir,
            ],
            &[],
        )?;
        let publish = [
            "assets",
            "publish",
            "--dir",
            &dir,
            "--bucket",
            &account.bucket,
            "--prefix",
            &ud.assets.prefix,
            "--kms-key",
            &account.kms_key_id,
        ];
        run(&publish, &account.env())?;
        let bundle = envelope::fetch(
            &account.s3,
            &account.kms,
            &account.bucket,
            &ud.assets.prefix,
            CLUSTER,
            Role::Controller,
        )
        .await
        .context("fetching the controller's bundle")?;
        let etcd_ip = Ipv4Addr::new(10, 0, 1, 11);
        let etcd = vec![Peer {
            instance_id: "i-0e7cd".into(),
            private_ip: etcd_ip.to_string(),
            private_dns: cluster::private_dns_name(etcd_ip),
        }];
        NodeRoot::new(Role::Controller, Ipv4Addr::new(10, 0, 1, 10), bundle, etcd)
    }

    /// (Re)writes the node's files as keel-bootstrap does: the bundle's,
    /// then the role's steps (undoing a test's edits; a controller gets new
    /// certificates).
    pub fn render(&self) -> Result<()> {
        let (l, ud, id) = (&self.layout, &self.ud, &self.id);
        // A fresh node has no CNI network: containerd writes one later.
        let cni = self.path(worker::CNI_CONF_DIR);
        match std::fs::remove_dir_all(&cni) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", cni.display()))
            }
            _ => {}
        }
        let assets =
            Assets::install(l, self.bundle.clone(), None).context("installing the bundle")?;
        let steps = match ud.role {
            Role::Controller => controller::issue_from_assets(ud, id, &assets).and_then(|certs| {
                worker::write_containerd_config(l)?;
                controller::write_config(l, ud, id, &self.etcd, &certs)?;
                controller::write_kubelet_config(l, ud, id)
            }),
            _ => assets.text(worker::BOOTSTRAP_TOKEN).map_err(NodeError::from).and_then(|token| {
                worker::write_containerd_config(l)?;
                worker::write_kubelet_config(l, ud, id, token.trim())
            }),
        };
        steps.map_err(|e| anyhow::anyhow!("rendering the {} configuration: {e}", ud.role))?;
        self.write_kernel_settings()
    }

    /// Writes [`PROC_SYS`] as systemd-sysctl leaves /proc/sys on a node
    /// booted from the image: each `key = value` of [`KERNEL_SETTINGS`]
    /// (a leading `-`, "ignore a failure", dropped: br_netfilter's settings
    /// as once containerd.service has loaded it).
    fn write_kernel_settings(&self) -> Result<()> {
        let file = images::workspace().join(KERNEL_SETTINGS);
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let Some((key, value)) = line.trim_start_matches('-').split_once('=') else {
                bail!("{}: not a sysctl setting: {line:?}", file.display());
            };
            let rel = format!("{PROC_SYS}/{}", key.trim().replace('.', "/"));
            self.write(&rel, format!("{}\n", value.trim()).as_bytes())?;
        }
        Ok(())
    }

    /// `rel` (e.g. `etc/default/kubelet`) under the root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.layout.path(rel)
    }

    pub fn read(&self, rel: &str) -> Result<String> {
        let p = self.path(rel);
        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    }

    pub fn write(&self, rel: &str, contents: &[u8]) -> Result<()> {
        let p = self.path(rel);
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&p, contents).with_context(|| format!("writing {}", p.display()))
    }

    /// Replaces `from` with `to` in `rel`; fails when `from` is not there.
    pub fn replace(&self, rel: &str, from: &str, to: &str) -> Result<()> {
        let text = self.read(rel)?;
        if !text.contains(from) {
            bail!("{rel} has no {from:?}:\n{text}");
        }
        self.write(rel, text.replace(from, to).as_bytes())
    }

    /// The arguments systemd passes to `component` (its unit in the
    /// image's `units/`): the unit's `ExecStart=` with the variables of its
    /// `EnvironmentFile=` (read under the root) expanded as systemd does,
    /// `$VAR` split at whitespace, `${VAR}` as exactly one argument.
    pub fn exec_args(&self, component: &str) -> Result<Vec<String>> {
        let unit_path = images::workspace()
            .join("images")
            .join(self.ud.role.as_str())
            .join("units")
            .join(format!("{component}.service"));
        let unit = std::fs::read_to_string(&unit_path)
            .with_context(|| format!("reading {}", unit_path.display()))?;
        let setting = |key: &str| {
            unit.lines()
                .find_map(|l| l.strip_prefix(key))
                .with_context(|| format!("{} has no {key}", unit_path.display()))
        };
        let env_file = setting("EnvironmentFile=")?;
        let env = self.read(env_file.trim_start_matches('/'))?;
        let vars: Vec<(&str, &str)> = env
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        let value = |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| *v)
                .with_context(|| format!("{env_file} sets no {name}:\n{env}"))
        };
        let mut args = Vec::new();
        // Skip the program itself.
        for word in setting("ExecStart=")?.split_whitespace().skip(1) {
            if let Some(name) = word.strip_prefix("${").and_then(|w| w.strip_suffix('}')) {
                args.push(value(name)?.to_string());
            } else if let Some(name) = word.strip_prefix('$') {
                args.extend(value(name)?.split_whitespace().map(str::to_string));
            } else {
                args.push(word.to_string());
            }
        }
        Ok(args)
    }

    /// The environment the kubelet double needs besides its flags: where
    /// containerd's configuration is, and the kernel's settings.
    pub fn kubelet_env(&self) -> Vec<(&'static str, OsString)> {
        vec![
            (CONTAINERD_CONFIG_ENV, self.path(worker::CONTAINERD_CONFIG).into_os_string()),
            (PROC_SYS_ENV, self.path(PROC_SYS).into_os_string()),
        ]
    }
}

/// The version containerd `bin` reports (`containerd --version`: `containerd
/// github.com/containerd/containerd[/v2] 2.1.9+unknown ...`).
pub fn containerd_version(bin: &Path) -> Result<String> {
    let out = Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} --version", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split_whitespace().nth(2) {
        Some(v) if out.status.success() => Ok(v.to_string()),
        _ => bail!("{} --version printed no version: {text:?}", bin.display()),
    }
}

/// A real containerd serving a node root's rendered configuration (its
/// socket as rendered, state and data under the root), killed on drop.
pub struct Containerd {
    _guard: Guard,
    pub socket: PathBuf,
    /// Its log (stderr): the CRI plugin logs the configuration it runs with.
    pub log: PathBuf,
    /// Its ctr, for asking it things.
    pub ctr: PathBuf,
}

impl Containerd {
    /// Starts the host's containerd with `config` (default: the root's
    /// rendered one) and waits until it answers (`ctr plugins ls`).
    pub fn start(root: &NodeRoot, config: Option<&Path>) -> Result<Containerd> {
        Containerd::start_in(Path::new("containerd"), &root.layout, config)
    }

    /// Starts containerd `bin` (its ctr beside it) with `config` (default:
    /// the configuration rendered under `layout`).
    pub fn start_in(bin: &Path, layout: &Layout, config: Option<&Path>) -> Result<Containerd> {
        let config =
            config.map(Path::to_path_buf).unwrap_or_else(|| layout.path(worker::CONTAINERD_CONFIG));
        let socket = layout.path(kube::CONTAINERD_SOCKET);
        let log = layout.path("containerd.log");
        let ctr = bin.with_file_name("ctr");
        let mut cmd = Command::new(bin);
        cmd.arg("--config")
            .arg(&config)
            .arg("--root")
            .arg(layout.path("var/lib/containerd"))
            .arg("--state")
            .arg(layout.path("run/containerd"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(&log)
                    .with_context(|| format!("creating {}", log.display()))?,
            );
        let mut guard = Guard::spawn("containerd", cmd).with_context(|| {
            format!("starting {} (install the Debian package containerd)", bin.display())
        })?;
        let started = Instant::now();
        loop {
            let answered = socket.exists()
                && Command::new(&ctr)
                    .arg("--address")
                    .arg(&socket)
                    .args(["--timeout", "5s", "plugins", "ls"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
            if answered {
                return Ok(Containerd { _guard: guard, socket, log, ctr });
            }
            let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
            if let Err(e) = guard.check_running() {
                bail!("{e}: containerd with {}:\n{}", config.display(), log_text());
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!(
                    "containerd with {} did not answer on {} within 30 s:\n{}",
                    config.display(),
                    socket.display(),
                    log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
