//! keel-bootstrap against real local servers: moto's server (EC2, S3, KMS),
//! the IMDS emulator from keel-testkit (one per simulated instance), and
//! Debian's etcd (`/usr/bin/etcd`) started from the configuration the node
//! renders. Needs moto (scripts/setup) and etcd-server; run by `.ci/run`.
//!
//! Golden files: `KEEL_BLESS=1 cargo test -p keel-bootstrap --test boot golden`
//! rewrites `tests/golden/*.expected` from the current renderers.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_ec2::types::{InstanceType, ResourceType, Tag, TagSpecification};
use keel_bootstrap::etcd_api::EtcdApi;
use keel_bootstrap::imds::{Identity, Imds};
use keel_bootstrap::layout::Layout;
use keel_bootstrap::node::{self, etcd::Plan, kube};
use keel_bootstrap::pki::{self, Ca, Usage};
use keel_bootstrap::retry::Policy;
use keel_bootstrap::{aws, discovery, envelope};
use keel_contract::bundle::{self, Bundle, BundleFile};
use keel_contract::userdata::{self, UserData};
use keel_contract::{tags, Role};
use keel_testkit::api_server_double::{ApiServerDouble, Config as ApiConfig};
use keel_testkit::imds::{Credentials, Fault, ImdsEmulator, Instance};
use keel_testkit::moto::Moto;
use keel_testkit::process::Guard;
use zeroize::Zeroizing;

const REGION: &str = "us-east-1";
const BUCKET: &str = "keel-assets";
const PREFIX: &str = "test";
const TOKEN: &str = "abcdef.0123456789abcdef";

/// This run's loopback block, 127.<run>.0.0/16, of which each test takes
/// one /24 (`net(61)` is 127.<run>.61): two runs of this test binary on one
/// machine (two worktrees, two CI jobs) then never bind the same
/// addresses. `<run>` is the first octet, from one derived from the
/// process id, whose marker address 127.<run>.255.254 this process can
/// bind on `RUN_MARKER_PORT`; it stays bound until the process exits, so
/// the next run takes another.
fn net(block: u8) -> String {
    format!("127.{}.{block}", run_octet())
}

/// Host `host` of the test block `block` (see `net`).
fn ip(block: u8, host: u32) -> String {
    format!("{}.{host}", net(block))
}

/// The etcd client URL of `ip(block, host)`.
fn etcd_url(block: u8, host: u32) -> String {
    format!("https://{}:2379", ip(block, host))
}

/// The EC2 host name of `ip(block, host)` (`ip-127-<run>-<block>-<host>`).
fn host_name(block: u8, host: u32) -> String {
    format!("ip-{}", ip(block, host).replace('.', "-"))
}

/// The first octets a run may take (the tests' blocks are 61 to about 80).
const RUN_OCTETS: std::ops::RangeInclusive<u8> = 100..=249;
const RUN_MARKER_PORT: u16 = 47_999;

fn run_octet() -> u8 {
    static RUN: std::sync::OnceLock<(u8, std::net::TcpListener)> = std::sync::OnceLock::new();
    RUN.get_or_init(|| {
        let octets: Vec<u8> = RUN_OCTETS.collect();
        let first = std::process::id() as usize % octets.len();
        octets[first..]
            .iter()
            .chain(&octets[..first])
            .find_map(|&octet| {
                let marker = std::net::Ipv4Addr::new(127, octet, 255, 254);
                std::net::TcpListener::bind((marker, RUN_MARKER_PORT)).ok().map(|l| (octet, l))
            })
            .expect("every block 127.100.0.0/16 to 127.249.0.0/16 is taken by another run")
    })
    .0
}

/// Console output captured for assertions.
#[derive(Clone, Default)]
struct Console(Arc<Mutex<Vec<u8>>>);
impl Write for Console {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
impl Console {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

struct Cas {
    etcd: (String, Zeroizing<String>),
    k8s: (String, Zeroizing<String>),
    front_proxy: (String, Zeroizing<String>),
}

/// Emulated AWS with a bucket, a KMS key and the cluster's CAs.
struct Aws {
    moto: Moto,
    sdk: SdkConfig,
    key_id: String,
    ami: String,
    cas: Cas,
}

async fn aws_env() -> Aws {
    aws::install_crypto_provider();
    let moto = Moto::start().expect("moto");
    let target =
        aws::Target { region: Some(REGION.into()), endpoint_url: Some(moto.endpoint.clone()) };
    let sdk = keel_testkit::moto::with_test_keys(aws::sdk_config(&target).await);
    aws::s3_client(&sdk).create_bucket().bucket(BUCKET).send().await.expect("create bucket");
    let key = aws_sdk_kms::Client::new(&sdk).create_key().send().await.expect("create key");
    let key_id = key.key_metadata().unwrap().key_id().to_string();
    let ec2 = aws_sdk_ec2::Client::new(&sdk);
    let images = ec2.describe_images().send().await.expect("describe images");
    let ami = images.images()[0].image_id().unwrap().to_string();
    let cas = Cas {
        etcd: pki::new_ca("etcd-ca").unwrap(),
        k8s: pki::new_ca("kubernetes").unwrap(),
        front_proxy: pki::new_ca("front-proxy-ca").unwrap(),
    };
    Aws { moto, sdk, key_id, ami, cas }
}

fn file(path: &str, mode: u32, contents: &[u8]) -> BundleFile {
    BundleFile { path: path.into(), mode, contents: Zeroizing::new(contents.to_vec()) }
}

impl Aws {
    fn ec2(&self) -> aws_sdk_ec2::Client {
        aws_sdk_ec2::Client::new(&self.sdk)
    }

    fn bundle(&self, cluster: &str, role: Role) -> Bundle {
        let c = &self.cas;
        let files = match role {
            Role::Etcd => vec![
                file("etcd/pki/ca.crt", 0o644, c.etcd.0.as_bytes()),
                file("etcd/pki/ca.key", 0o600, c.etcd.1.as_bytes()),
            ],
            Role::Worker => vec![
                file("kubernetes/pki/ca.crt", 0o644, c.k8s.0.as_bytes()),
                file("kubernetes/bootstrap-token", 0o600, format!("{TOKEN}\n").as_bytes()),
            ],
            Role::Controller => {
                let etcd_ca = Ca::load("test etcd CA", &c.etcd.0, &c.etcd.1).unwrap();
                let client = etcd_ca
                    .issue(&pki::Request {
                        what: "apiserver etcd client",
                        common_name: "kube-apiserver-etcd-client",
                        organization: None,
                        dns_names: vec![],
                        ips: vec![],
                        usage: Usage::Client,
                    })
                    .unwrap();
                vec![
                    file("kubernetes/pki/ca.crt", 0o644, c.k8s.0.as_bytes()),
                    file("kubernetes/pki/ca.key", 0o600, c.k8s.1.as_bytes()),
                    file("kubernetes/pki/sa.key", 0o600, b"test service account key\n"),
                    file("kubernetes/pki/sa.pub", 0o644, b"test service account public key\n"),
                    file("kubernetes/pki/front-proxy-ca.crt", 0o644, c.front_proxy.0.as_bytes()),
                    file("kubernetes/pki/front-proxy-ca.key", 0o600, c.front_proxy.1.as_bytes()),
                    file(
                        "kubernetes/pki/apiserver-etcd-client.crt",
                        0o644,
                        client.cert_pem.as_bytes(),
                    ),
                    file(
                        "kubernetes/pki/apiserver-etcd-client.key",
                        0o600,
                        client.key_pem.as_bytes(),
                    ),
                    file("etcd/pki/ca.crt", 0o644, c.etcd.0.as_bytes()),
                    file(
                        "kubernetes/encryption-config.yaml",
                        0o600,
                        b"kind: EncryptionConfiguration\n",
                    ),
                ]
            }
        };
        Bundle { cluster: cluster.into(), role, files }
    }

    async fn put(&self, role: Role, bytes: Vec<u8>) {
        aws::s3_client(&self.sdk)
            .put_object()
            .bucket(BUCKET)
            .key(bundle::object_key(PREFIX, role))
            .body(bytes.into())
            .send()
            .await
            .expect("put bundle");
    }

    async fn publish(&self, cluster: &str, role: Role) {
        let kms = aws_sdk_kms::Client::new(&self.sdk);
        let sealed =
            envelope::seal(&kms, &self.key_id, &self.bundle(cluster, role)).await.expect("seal");
        self.put(role, sealed).await;
    }

    /// Launches `count` instances in one reservation, tagged for `cluster`
    /// and `role`; `ip` is given when count is 1.
    async fn launch(
        &self,
        cluster: &str,
        role: Role,
        ip: Option<&str>,
        count: i32,
    ) -> Vec<(String, String, String)> {
        let tags = TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .tags(Tag::builder().key(tags::CLUSTER).value(cluster).build())
            .tags(Tag::builder().key(tags::ROLE).value(role.as_str()).build())
            .build();
        let out = self
            .ec2()
            .run_instances()
            .image_id(&self.ami)
            .instance_type(InstanceType::T3Micro)
            .min_count(count)
            .max_count(count)
            .set_private_ip_address(ip.map(str::to_string))
            .tag_specifications(tags)
            .send()
            .await
            .expect("run instances");
        out.instances()
            .iter()
            .map(|i| {
                (
                    i.instance_id().unwrap().to_string(),
                    i.private_ip_address().unwrap().to_string(),
                    i.private_dns_name().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    fn user_data(&self, cluster: &str, role: Role, expected: u32, timeout: u64) -> UserData {
        UserData {
            version: userdata::VERSION,
            cluster: cluster.into(),
            role,
            api_endpoint: "https://api.test.internal:6443".into(),
            assets: userdata::Assets {
                bucket: BUCKET.into(),
                prefix: PREFIX.into(),
                kms_key_id: None,
                bucket_owner: None,
            },
            etcd: userdata::Etcd {
                expected_members: expected,
                discovery_timeout_seconds: Some(timeout),
                heartbeat_interval_ms: None,
                election_timeout_ms: None,
                quota_backend_bytes: None,
            },
            aws: Some(userdata::Aws { endpoint_url: Some(self.moto.endpoint.clone()) }),
            kubernetes: None,
            kubelet: None,
        }
    }
}

/// The components file `keel build` writes (the versions of the CI
/// profile's containerd and runc).
fn write_components(root: &Path) {
    std::fs::create_dir_all(root.join("usr/lib/keel")).unwrap();
    let text = keel_contract::image::render([("containerd", "2.1.9"), ("runc", "1.3.6")]);
    std::fs::write(root.join(keel_contract::image::COMPONENTS_FILE), text).unwrap();
}

/// A simulated instance: its root file system and its metadata service.
struct Node {
    root: tempfile::TempDir,
    imds: ImdsEmulator,
    id: String,
    ip: String,
    console: Console,
}

/// The primary interface's MAC address the metadata gives the node at
/// `ip` (EC2's start with 0a or 02; the rest from the address).
fn mac_for(ip: &str) -> String {
    let o: Vec<u8> = ip.split('.').map(|p| p.parse().unwrap()).collect();
    format!("0a:00:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

fn node(role: Role, (id, ip, dns): &(String, String, String), user_data: Option<Vec<u8>>) -> Node {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("usr/lib/keel")).unwrap();
    std::fs::write(root.path().join(userdata::IMAGE_ROLE_FILE), format!("{role}\n")).unwrap();
    write_components(root.path());
    // A test image: these nodes reach moto over plain http through their
    // user data's endpoint override (production_image() takes it away).
    std::fs::write(root.path().join(userdata::TEST_IMAGE_FILE), "test image\n").unwrap();
    let imds = ImdsEmulator::start(Instance {
        instance_id: id.clone(),
        region: REGION.into(),
        availability_zone: format!("{REGION}a"),
        private_ipv4: ip.clone(),
        local_hostname: dns.clone(),
        mac: mac_for(ip),
        user_data,
        credentials: Some(Credentials::testing()),
    })
    .unwrap();
    Node { root, imds, id: id.clone(), ip: ip.clone(), console: Console::default() }
}

impl Node {
    /// Makes this node's root an image that is not a test image.
    fn production_image(self) -> Node {
        std::fs::remove_file(self.path(userdata::TEST_IMAGE_FILE)).unwrap();
        self
    }

    async fn boot(&self) -> Result<node::Configured, node::BootError> {
        node::run(node::Options {
            root: self.root.path().to_path_buf(),
            imds_url: self.imds.base_url(),
            imds_policy: Policy::quick(),
            console: Box::new(self.console.clone()),
        })
        .await
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.path("run/keel/status.json")).unwrap()).unwrap()
    }

    /// Starts etcd from the rendered /etc/default/etcd, as systemd would.
    fn start_etcd(&self) -> Guard {
        let env = std::fs::read_to_string(self.path("etc/default/etcd")).unwrap();
        let mut cmd = Command::new("/usr/bin/etcd");
        cmd.env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.path("etcd.log")).unwrap());
        for line in env.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            let (k, v) = line.split_once('=').unwrap();
            cmd.env(k, v.trim_matches('"'));
        }
        Guard::spawn(&format!("etcd {}", self.id), cmd).unwrap()
    }
}

fn modes_of(dir: &Path) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        out.push((
            e.file_name().to_string_lossy().into_owned(),
            e.metadata().unwrap().permissions().mode() & 0o777,
        ));
    }
    out.sort();
    out
}

/// A client for the test with its own certificate from the etcd CA.
fn etcd_client(aws: &Aws) -> EtcdApi {
    let ca = Ca::load("test etcd CA", &aws.cas.etcd.0, &aws.cas.etcd.1).unwrap();
    let c = ca
        .issue(&pki::Request {
            what: "test client",
            common_name: "test",
            organization: None,
            dns_names: vec![],
            ips: vec![],
            usage: Usage::Client,
        })
        .unwrap();
    let patient = Policy {
        initial: Duration::from_millis(200),
        max_delay: Duration::from_secs(1),
        deadline: Duration::from_secs(30),
        max_attempts: 60,
    };
    EtcdApi::new(&aws.cas.etcd.0, &c.cert_pem, &c.key_pem, patient).unwrap()
}

fn user_data_bytes(ud: &UserData) -> Option<Vec<u8>> {
    Some(ud.to_toml().unwrap().into_bytes())
}

/// Checks that no key material reached the console.
fn assert_no_secrets(console: &str) {
    assert!(!console.contains("PRIVATE KEY"), "key material on the console:\n{console}");
    assert!(!console.contains("0123456789abcdef"), "bootstrap token on the console:\n{console}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_three_nodes_form_a_cluster_then_a_replacement_joins_and_a_reboot_restarts() {
    let aws = aws_env().await;
    let cluster = "forming";
    aws.publish(cluster, Role::Etcd).await;
    let ud = user_data_bytes(&aws.user_data(cluster, Role::Etcd, 3, 60));
    let mut nodes = Vec::new();
    for n in 1..=3 {
        let inst = aws.launch(cluster, Role::Etcd, Some(&ip(61, n)), 1).await.remove(0);
        nodes.push(node(Role::Etcd, &inst, ud.clone()));
    }
    // All three boot at once: nobody answers yet, so each forms the same new cluster.
    let results = futures::future::join_all(nodes.iter().map(|n| n.boot())).await;
    let mut ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    ids.sort();
    for (n, r) in nodes.iter().zip(results) {
        let done = r.unwrap_or_else(|e| panic!("{}: {e}\n{}", n.id, n.console.text()));
        assert_eq!(
            done.etcd_plan,
            Some(Plan::New { generation: 1, members: ids.clone(), moved_aside: None })
        );
        let console = n.console.text();
        assert!(console.contains("keel-bootstrap: etcd membership: ok"), "{console}");
        assert_no_secrets(&console);
        assert_eq!(n.status()["state"], "configured");
        assert_eq!(n.status()["aws_requests"]["s3_get_object"], 1);
        assert_eq!(n.status()["aws_requests"]["kms_decrypt"], 1);
        assert_eq!(
            modes_of(&n.path("etc/etcd/pki")),
            [
                ("ca.crt".into(), 0o644),
                ("ca.key".into(), 0o600),
                ("peer.crt".into(), 0o644),
                ("peer.key".into(), 0o600),
                ("server.crt".into(), 0o644),
                ("server.key".into(), 0o600)
            ]
        );
    }
    // The certificate names the node's address and DNS name.
    let pem = std::fs::read(nodes[0].path("etc/etcd/pki/peer.crt")).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    let san =
        format!("{:?}", cert.subject_alternative_name().unwrap().unwrap().value.general_names);
    assert!(
        san.contains(&ip(61, 1)) || san.contains(&format!("[127, {}, 61, 1]", run_octet())),
        "{san}"
    );
    assert!(san.contains(&host_name(61, 1)), "{san}");

    let mut etcds: Vec<Option<Guard>> = nodes.iter().map(|n| Some(n.start_etcd())).collect();
    let client = etcd_client(&aws);
    for n in &nodes {
        client.health(&format!("https://{}:2379", n.ip)).await.unwrap_or_else(|e| {
            panic!("{e}\n{}", std::fs::read_to_string(n.path("etcd.log")).unwrap_or_default())
        });
    }
    let members = client.member_list(&etcd_url(61, 1)).await.unwrap();
    let mut names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
    names.sort();
    assert_eq!(names, ids);

    // Instance 3 dies and is replaced by a new instance at another address.
    etcds[2] = None;
    aws.ec2().terminate_instances().instance_ids(&nodes[2].id).send().await.unwrap();
    let inst = aws.launch(cluster, Role::Etcd, Some(&ip(61, 4)), 1).await.remove(0);
    let replacement = node(Role::Etcd, &inst, ud.clone());
    let done =
        replacement.boot().await.unwrap_or_else(|e| panic!("{e}\n{}", replacement.console.text()));
    match done.etcd_plan {
        Some(Plan::Join { via, removed, moved_aside: None }) => {
            assert!(via == etcd_url(61, 1) || via == etcd_url(61, 2), "joined through {via}");
            assert_eq!(removed, [nodes[2].id.clone()]);
        }
        other => panic!("expected a join, got {other:?}"),
    }
    let env = std::fs::read_to_string(replacement.path("etc/default/etcd")).unwrap();
    assert!(env.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""), "{env}");
    let _etcd4 = replacement.start_etcd();
    client.health(&etcd_url(61, 4)).await.unwrap_or_else(|e| {
        panic!("{e}\n{}", std::fs::read_to_string(replacement.path("etcd.log")).unwrap_or_default())
    });
    // It joined as a learner; keel-etcd-promote.service makes it a voter.
    let learner = client.member_list(&etcd_url(61, 1)).await.unwrap();
    assert!(learner.iter().any(|m| m.is_learner), "{learner:?}");
    node::etcd::promote_node(&Layout::new(replacement.root.path()), Duration::from_secs(60))
        .await
        .unwrap();
    let voters = client.member_list(&etcd_url(61, 1)).await.unwrap();
    assert!(voters.iter().all(|m| !m.is_learner), "{voters:?}");
    let mut names: Vec<String> =
        client.member_list(&etcd_url(61, 4)).await.unwrap().into_iter().map(|m| m.name).collect();
    names.sort();
    let mut want = vec![nodes[0].id.clone(), nodes[1].id.clone(), replacement.id.clone()];
    want.sort();
    assert_eq!(names, want);

    // A reboot of the replacement: its data names a member the cluster
    // still lists, so it just starts (one look at EC2 to ask a peer).
    let again = replacement.boot().await.unwrap();
    assert_eq!(again.etcd_plan, Some(Plan::Restart));
    assert_eq!(again.status.aws_requests.ec2_describe_instances, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_checks_etcd_with_its_client_certificate_and_configures() {
    let aws = aws_env().await;
    let cluster = "control";
    aws.publish(cluster, Role::Etcd).await;
    aws.publish(cluster, Role::Controller).await;
    let inst = aws.launch(cluster, Role::Etcd, Some(&ip(62, 1)), 1).await.remove(0);
    let etcd = node(Role::Etcd, &inst, user_data_bytes(&aws.user_data(cluster, Role::Etcd, 1, 30)));
    etcd.boot().await.unwrap_or_else(|e| panic!("{e}\n{}", etcd.console.text()));
    let _guard = etcd.start_etcd();
    etcd_client(&aws).health(&etcd_url(62, 1)).await.unwrap();

    let inst = aws.launch(cluster, Role::Controller, Some(&ip(62, 2)), 1).await.remove(0);
    let ctl = node(
        Role::Controller,
        &inst,
        user_data_bytes(&aws.user_data(cluster, Role::Controller, 1, 30)),
    );
    ctl.boot().await.unwrap_or_else(|e| panic!("{e}\n{}", ctl.console.text()));
    let console = ctl.console.text();
    assert!(console.contains("keel-bootstrap: etcd check: ok"), "{console}");
    assert_no_secrets(&console);
    let env = std::fs::read_to_string(ctl.path("etc/default/kube-apiserver")).unwrap();
    assert!(env.contains(&format!("--etcd-servers={} ", etcd_url(62, 1))), "{env}");
    let pem = std::fs::read(ctl.path("etc/kubernetes/pki/apiserver.crt")).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    let san =
        format!("{:?}", cert.subject_alternative_name().unwrap().unwrap().value.general_names);
    for want in ["api.test.internal", "kubernetes.default.svc.cluster.local", &host_name(62, 2)] {
        assert!(san.contains(want), "{want} missing from {san}");
    }
    assert_eq!(
        std::fs::metadata(ctl.path("etc/kubernetes/pki/apiserver.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::read_to_string(ctl.path("etc/hostname")).unwrap(),
        format!("{}\n", host_name(62, 2))
    );
    // systemd-networkd narrowed to the primary interface the metadata names.
    assert!(console.contains("keel-bootstrap: primary interface: ok"), "{console}");
    let drop_in = std::fs::read_to_string(ctl.path(keel_contract::primary_nic::DROP_IN)).unwrap();
    assert_eq!(keel_contract::primary_nic::mac_in(&drop_in), Some(mac_for(&ip(62, 2))));
    // The status file lists every certificate's expiry, soonest first:
    // the ones issued at boot (a year) before the CAs.
    let certs = ctl.status()["certificates"].as_array().unwrap().clone();
    let paths: Vec<&str> = certs.iter().map(|c| c["path"].as_str().unwrap()).collect();
    for want in
        ["/etc/kubernetes/pki/apiserver.crt", "/etc/kubernetes/pki/ca.crt", "/etc/etcd/pki/ca.crt"]
    {
        assert!(paths.contains(&want), "{want} not in {paths:?}");
    }
    let days: Vec<i64> = certs.iter().map(|c| c["days_left"].as_i64().unwrap()).collect();
    assert!(days.windows(2).all(|w| w[0] <= w[1]), "{days:?}");
    assert!((364..=365).contains(&days[0]), "{certs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_configures_and_refuses_missing_tampered_and_wrong_context_bundles() {
    let aws = aws_env().await;
    let cluster = "workers";
    let inst = aws.launch(cluster, Role::Worker, Some(&ip(63, 1)), 1).await.remove(0);
    let w =
        node(Role::Worker, &inst, user_data_bytes(&aws.user_data(cluster, Role::Worker, 3, 30)));

    // No bundle yet.
    let err = w.boot().await.unwrap_err().to_string();
    assert!(err.starts_with("assets: S3 GetObject s3://keel-assets/test/worker.bundle"), "{err}");
    assert_eq!(w.status()["state"], "failed");
    assert!(
        w.console.text().contains("keel-bootstrap: assets: failed: S3 GetObject"),
        "{}",
        w.console.text()
    );

    // A bundle for another cluster put at this cluster's key.
    aws.publish("other-cluster", Role::Worker).await;
    let err = w.boot().await.unwrap_err().to_string();
    assert!(err.contains("other-cluster"), "{err}");

    // Header right, but the data key was made under the controller's context.
    let kms = aws_sdk_kms::Client::new(&aws.sdk);
    let dk = kms
        .generate_data_key()
        .key_id(&aws.key_id)
        .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
        .set_encryption_context(Some(bundle::encryption_context(cluster, Role::Controller)))
        .send()
        .await
        .unwrap();
    let sealed = aws
        .bundle(cluster, Role::Worker)
        .seal(&aws.key_id, dk.ciphertext_blob().unwrap().as_ref(), dk.plaintext().unwrap().as_ref())
        .unwrap();
    aws.put(Role::Worker, sealed).await;
    let err = w.boot().await.unwrap_err().to_string();
    assert!(err.contains("KMS Decrypt") && err.contains("InvalidCiphertext"), "{err}");

    // A flipped byte in a genuine bundle.
    let mut sealed =
        envelope::seal(&kms, &aws.key_id, &aws.bundle(cluster, Role::Worker)).await.unwrap();
    let last = sealed.len() - 5;
    sealed[last] ^= 1;
    aws.put(Role::Worker, sealed).await;
    let err = w.boot().await.unwrap_err().to_string();
    assert!(err.contains("failed authentication"), "{err}");
    assert!(
        !w.path("etc/kubernetes/bootstrap-token").exists(),
        "files written from a refused bundle"
    );

    // The genuine bundle: configured.
    aws.publish(cluster, Role::Worker).await;
    let done = w.boot().await.unwrap_or_else(|e| panic!("{e}\n{}", w.console.text()));
    assert_eq!(done.role, Role::Worker);
    assert_no_secrets(&w.console.text());
    assert_eq!(w.status()["state"], "configured");
    let kubeconfig =
        std::fs::read_to_string(w.path("etc/kubernetes/bootstrap-kubelet.kubeconfig")).unwrap();
    assert!(kubeconfig.contains(TOKEN));
    assert_eq!(
        std::fs::metadata(w.path("etc/kubernetes/bootstrap-kubelet.kubeconfig"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    // The pod range is the Node's spec.podCIDR, which containerd puts into
    // the template once the kubelet passes it on: none is chosen here.
    let template = std::fs::read_to_string(w.path("etc/containerd/cni.conflist.template")).unwrap();
    assert!(template.contains("\"subnet\": \"{{.PodCIDR}}\""), "{template}");
    assert!(!w.path("etc/cni/net.d").exists());
    // Idempotent: a second run gives the same configuration.
    let before = std::fs::read(w.path("etc/kubernetes/kubelet/config.json")).unwrap();
    w.boot().await.unwrap();
    assert_eq!(std::fs::read(w.path("etc/kubernetes/kubelet/config.json")).unwrap(), before);
}

/// Issue 16: role separation rested on policies that existed only as
/// README text, and the node named neither the KMS key nor the bucket
/// owner. A worker boots through a recording proxy in front of moto; what
/// it sent (GetObject's key and ExpectedBucketOwner, Decrypt's KeyId and
/// encryption context) is exactly what `iam::instance_policy` allows, and
/// nothing it is not allowed (no EC2 call). moto enforces Decrypt's KeyId
/// (another key is refused) but not ExpectedBucketOwner: that header is
/// checked here as sent, not as enforced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_node_sends_matches_its_iam_policy() {
    use keel_bootstrap::iam::{self, PolicyInput};
    use keel_testkit::fault_proxy::FaultProxy;
    let aws = aws_env().await;
    let cluster = "least";
    aws.publish(cluster, Role::Worker).await;
    let kms = aws_sdk_kms::Client::new(&aws.sdk);
    let described = kms.describe_key().key_id(&aws.key_id).send().await.unwrap();
    let key_arn = described.key_metadata().unwrap().arn().unwrap().to_string();
    let owner = key_arn.split(':').nth(4).unwrap().to_string();
    let proxy = FaultProxy::start(&aws.moto.endpoint, true).unwrap();
    let inst = aws.launch(cluster, Role::Worker, Some(&ip(66, 1)), 1).await.remove(0);
    let mut ud = aws.user_data(cluster, Role::Worker, 3, 30);
    ud.aws = Some(userdata::Aws { endpoint_url: Some(proxy.endpoint.clone()) });
    ud.assets.kms_key_id = Some(key_arn.clone());
    ud.assets.bucket_owner = Some(owner.clone());
    let w = node(Role::Worker, &inst, user_data_bytes(&ud));
    w.boot().await.unwrap_or_else(|e| panic!("{e}\n{}", w.console.text()));

    let policy = iam::instance_policy(&PolicyInput {
        role: Role::Worker,
        cluster,
        bucket: BUCKET,
        prefix: PREFIX,
        kms_key_arn: &key_arn,
        bucket_owner: Some(&owner),
    })
    .unwrap();
    let statements = policy["Statement"].as_array().unwrap();
    let allowed = |action: &str| {
        statements.iter().find(|s| s["Action"] == action).unwrap_or_else(|| panic!("{action}"))
    };
    let requests = proxy.requests();
    // S3: one GetObject of the object the policy names, from its owner.
    let gets: Vec<_> = requests.iter().filter(|r| r.method == "GET").collect();
    assert_eq!(gets.len(), 1, "{:?}", gets.iter().map(|r| &r.path).collect::<Vec<_>>());
    let object = gets[0].path.split('?').next().unwrap().trim_start_matches('/');
    let get = allowed("s3:GetObject");
    assert_eq!(get["Resource"], format!("arn:aws:s3:::{object}"));
    assert_eq!(
        gets[0].header("x-amz-expected-bucket-owner"),
        get["Condition"]["StringEquals"]["s3:ResourceAccount"].as_str()
    );
    // KMS: one Decrypt naming the policy's key, with exactly the context
    // its conditions require.
    let decrypts: Vec<_> = requests
        .iter()
        .filter(|r| r.header("x-amz-target") == Some("TrentService.Decrypt"))
        .collect();
    assert_eq!(decrypts.len(), 1);
    let body: serde_json::Value = serde_json::from_slice(&decrypts[0].body).unwrap();
    let decrypt = allowed("kms:Decrypt");
    assert_eq!(body["KeyId"], decrypt["Resource"]);
    let conditions = decrypt["Condition"]["StringEquals"].as_object().unwrap();
    let context = body["EncryptionContext"].as_object().unwrap();
    assert_eq!(context.len(), conditions.len(), "{context:?} vs {conditions:?}");
    for (k, v) in context {
        assert_eq!(conditions.get(&format!("kms:EncryptionContext:{k}")), Some(v), "{k}");
    }
    // A worker's policy has no EC2 statement, and the worker made no call.
    assert!(statements.iter().all(|s| s["Action"] != "ec2:DescribeInstances"));
    assert!(requests.iter().all(|r| r.form_param("Action").is_none()), "an EC2 call");

    // Decrypt naming another key is refused.
    let other = kms.create_key().send().await.unwrap();
    ud.assets.kms_key_id = Some(other.key_metadata().unwrap().key_id().to_string());
    w.imds.update(|i| i.user_data = user_data_bytes(&ud));
    let err = w.boot().await.unwrap_err().to_string();
    assert!(err.contains("KMS Decrypt") && err.contains("AccessDenied"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_etcd_peers_until_the_deadline_is_a_clear_failure() {
    let aws = aws_env().await;
    let cluster = "lonely";
    aws.publish(cluster, Role::Etcd).await;
    let inst = aws.launch(cluster, Role::Etcd, Some(&ip(64, 1)), 1).await.remove(0);
    let n = node(Role::Etcd, &inst, user_data_bytes(&aws.user_data(cluster, Role::Etcd, 3, 3)));
    let err = n.boot().await.unwrap_err().to_string();
    assert!(
        err.starts_with("etcd discovery: found 1 of 3 etcd instances of cluster lonely"),
        "{err}"
    );
    assert!(err.contains(&n.id), "{err}");
    assert!(n.console.text().contains("keel-bootstrap: etcd discovery: failed: found 1 of 3"));
    assert!(!n.path("etc/default/etcd").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_pages_through_2000_instances() {
    let aws = aws_env().await;
    // 1,750 instances of another cluster in two reservations, and 250 of
    // ours in 25 reservations of 10: with 10 reservations a page, ours
    // span three pages.
    for _ in 0..2 {
        aws.launch("noise", Role::Etcd, None, 875).await;
    }
    let mut ours = Vec::new();
    for _ in 0..25 {
        ours.extend(aws.launch("big", Role::Etcd, None, 10).await.into_iter().map(|(id, ..)| id));
    }
    ours.sort();
    let pages = discovery::Counter::default();
    let found = discovery::list_paged(&aws.ec2(), "big", Role::Etcd, 10, &pages).await.unwrap();
    assert_eq!(found.iter().map(|p| p.instance_id.clone()).collect::<Vec<_>>(), ours);
    assert!(pages.get() >= 3, "only {} pages", pages.get());
}

#[tokio::test]
async fn imds_refreshes_tokens_retries_and_reports_absent_paths() {
    let inst = (
        "i-0123456789abcdef0".to_string(),
        "10.0.1.5".to_string(),
        "ip-10-0-1-5.ec2.internal".to_string(),
    );
    let n = node(Role::Worker, &inst, None);
    let imds = Imds::new(&n.imds.base_url()).unwrap();
    let want = Identity {
        instance_id: inst.0.clone(),
        region: REGION.into(),
        availability_zone: "us-east-1a".into(),
        private_ipv4: inst.1.clone(),
        local_hostname: inst.2.clone(),
    };
    assert_eq!(imds.identity().await.unwrap(), want);
    assert_eq!(n.imds.tokens_issued(), 1);
    // Token expired: 401 once, a new token, same answer.
    n.imds.inject([Fault::Status(401)]);
    assert_eq!(imds.identity().await.unwrap(), want);
    assert_eq!(n.imds.tokens_issued(), 2);
    // 503 twice, then an answer.
    n.imds.inject([Fault::Status(503), Fault::Status(503)]);
    assert_eq!(
        imds.get_text("meta-data/instance-id").await.unwrap().as_deref(),
        Some(inst.0.as_str())
    );
    // Slower than the request timeout once: retried.
    n.imds
        .inject([Fault::Delay(keel_bootstrap::imds::REQUEST_TIMEOUT + Duration::from_millis(500))]);
    assert_eq!(
        imds.get_text("meta-data/local-ipv4").await.unwrap().as_deref(),
        Some(inst.1.as_str())
    );
    // No user data: absent, not an error.
    assert_eq!(imds.user_data().await.unwrap(), None);
    // Always unavailable: an error naming the URL after bounded attempts.
    let fast = Policy {
        initial: Duration::from_millis(10),
        max_delay: Duration::from_millis(20),
        deadline: Duration::from_secs(5),
        max_attempts: 3,
    };
    let imds = Imds::with_policy(&n.imds.base_url(), fast).unwrap();
    n.imds.inject(std::iter::repeat_n(Fault::Status(503), 3));
    let err = imds.get_text("meta-data/instance-id").await.unwrap_err().to_string();
    assert!(err.contains("/2021-07-15/meta-data/instance-id answered HTTP 503"), "{err}");
    // The pinned version is what was asked for.
    assert!(n.imds.requests().iter().any(|r| r == "GET /2021-07-15/meta-data/placement/region"));
    assert!(n
        .imds
        .requests()
        .iter()
        .all(|r| r.starts_with("PUT /latest/api/token") || r.starts_with("GET /2021-07-15/")));
}

#[tokio::test]
async fn bad_user_data_is_refused_with_line_and_column_by_the_binary() {
    let inst =
        ("i-0bad".to_string(), "10.0.1.9".to_string(), "ip-10-0-1-9.ec2.internal".to_string());
    let ud = b"version = 1\ncluster = \"c\"\nrole = \"worker\"\napi-endpoint = \"https://api:6443\"\n[assets]\nbucket = \"bkt\"\n[etcd]\nexpected-members = 3\nexpected-memebrs = 3\n";
    let n = node(Role::Worker, &inst, Some(ud.to_vec()));
    let out = Command::new(env!("CARGO_BIN_EXE_keel-bootstrap"))
        .arg("--root")
        .arg(n.root.path())
        .arg("--imds-url")
        .arg(n.imds.base_url())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("keel-bootstrap: failed: user data: user data line 9, column 1: unknown field `expected-memebrs`"), "{stdout}");
    assert!(stdout.contains("keel-bootstrap: identity: ok"), "{stdout}");
    assert_eq!(n.status()["state"], "failed");

    // Another role's user data on this image.
    let etcd_ud =
        String::from_utf8_lossy(ud).replace("worker", "etcd").replace("expected-memebrs = 3\n", "");
    n.imds.update(|i| i.user_data = Some(etcd_ud.into_bytes()));
    let err = n.boot().await.unwrap_err().to_string();
    assert_eq!(err, "user data: user data is for role etcd but this image is a worker image");
    // None at all.
    n.imds.update(|i| i.user_data = None);
    let err = n.boot().await.unwrap_err().to_string();
    assert!(err.contains("has no user data"), "{err}");
}

/// The user data the golden files are rendered from.
fn user_data_for_rendering(role: Role) -> UserData {
    UserData {
        version: 1,
        cluster: "prod".into(),
        role,
        api_endpoint: "https://api.prod.example.com:6443".into(),
        assets: userdata::Assets {
            bucket: "prod-assets".into(),
            prefix: "prod".into(),
            kms_key_id: Some(
                "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
                    .into(),
            ),
            bucket_owner: Some("111122223333".into()),
        },
        etcd: userdata::Etcd {
            expected_members: 3,
            discovery_timeout_seconds: None,
            heartbeat_interval_ms: None,
            election_timeout_ms: None,
            quota_backend_bytes: Some(8_589_934_592),
        },
        aws: None,
        kubernetes: None,
        kubelet: Some(userdata::Kubelet {
            max_pods: Some(58),
            cluster_dns: None,
            cluster_domain: None,
            node_labels: vec!["tier=general".into()],
        }),
    }
}

/// The rendered configuration for every role, as a node sees it.
#[test]
fn golden_files() {
    let root = tempfile::tempdir().unwrap();
    let layout = Layout::node_view(root.path());
    let id = Identity {
        instance_id: "i-0123456789abcdef0".into(),
        region: REGION.into(),
        availability_zone: "us-east-1a".into(),
        private_ipv4: "10.0.1.5".into(),
        local_hostname: "ip-10-0-1-5.ec2.internal".into(),
    };
    let ud = user_data_for_rendering(Role::Worker);
    use keel_bootstrap::discovery::Peer;
    use keel_bootstrap::node::{controller, etcd, worker};
    let me = Peer {
        instance_id: id.instance_id.clone(),
        private_ip: id.private_ipv4.clone(),
        private_dns: id.local_hostname.clone(),
    };
    let peers = vec![
        me.clone(),
        Peer {
            instance_id: "i-0aaa".into(),
            private_ip: "10.0.2.7".into(),
            private_dns: String::new(),
        },
    ];
    let initial: Vec<(String, String)> =
        peers.iter().map(|p| (p.instance_id.clone(), etcd::peer_url(&p.private_ip))).collect();
    let cert = kube::Credential::Certificate {
        cert: layout.shown("etc/kubernetes/pki/scheduler.crt"),
        key: layout.shown("etc/kubernetes/pki/scheduler.key"),
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "etcd.env",
            etcd::render_env(&layout, &ud, &me, &initial, true, "keel-prod-0123456789abcdef"),
        ),
        ("kube-apiserver.env", controller::apiserver_env(&layout, &ud, &id, &peers).unwrap()),
        ("kube-controller-manager.env", controller::controller_manager_env(&layout, &ud).unwrap()),
        ("kube-scheduler.env", controller::scheduler_env(&layout).unwrap()),
        (
            "scheduler.kubeconfig",
            kube::kubeconfig(
                &layout,
                "prod",
                &controller::local_server(),
                "system:kube-scheduler",
                &cert,
            ),
        ),
        (
            "bootstrap-kubelet.kubeconfig",
            kube::kubeconfig(
                &layout,
                "prod",
                &ud.api_endpoint,
                "kubelet-bootstrap",
                &kube::Credential::Token(TOKEN),
            ),
        ),
        ("kubelet-config.json", kube::kubelet_config(&layout, &ud, &id)),
        (
            "kubelet-config-controller.json",
            kube::kubelet_config(&layout, &UserData { role: Role::Controller, ..ud.clone() }, &id),
        ),
        (
            "kubelet.env",
            kube::kubelet_env(
                &layout,
                &ud,
                &id,
                Some("/etc/kubernetes/bootstrap-kubelet.kubeconfig"),
                "/var/lib/kubelet/kubeconfig",
            )
            .unwrap(),
        ),
        (
            "containerd-1.7-config.toml",
            worker::containerd_config(&layout, worker::ContainerdSchema::V2),
        ),
        (
            "containerd-2.0-config.toml",
            worker::containerd_config(&layout, worker::ContainerdSchema::V3 { bin_dirs: false }),
        ),
        (
            "containerd-2.1-config.toml",
            worker::containerd_config(&layout, worker::ContainerdSchema::V3 { bin_dirs: true }),
        ),
        ("cni.conflist.template", worker::cni_template()),
        ("user-data.toml", ud.to_toml().unwrap()),
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let bless = std::env::var_os("KEEL_BLESS").is_some();
    let mut stale = Vec::new();
    for (name, got) in cases {
        let path = dir.join(format!("{name}.expected"));
        if bless {
            std::fs::write(&path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{}: {e} (run with KEEL_BLESS=1 to create it)", path.display())
        });
        if want != got {
            stale.push(format!("--- {name}: expected\n{want}\n--- got\n{got}"));
        }
    }
    assert!(
        stale.is_empty(),
        "rendered files differ (KEEL_BLESS=1 regenerates):\n{}",
        stale.join("\n")
    );
    // JSON documents parse; the user data parses back.
    let _: HashMap<String, serde_json::Value> =
        serde_json::from_str(&kube::kubelet_config(&layout, &ud, &id)).unwrap();
    assert_eq!(UserData::parse(ud.to_toml().unwrap().as_bytes(), Role::Worker).unwrap(), ud);
}

/// Issue 16: each worker's pod /24 came from the last octet of its address,
/// so 10.0.1.17 and 10.0.2.17 got the same range. Now no node derives a
/// range: the controller manager allocates one per Node (spec.podCIDR) and
/// containerd renders the CNI template with it. Two workers in different
/// subnets with the same last octet render the same network configuration,
/// and nothing they render names a pod range.
#[test]
fn bug_workers_with_the_same_last_octet_share_no_derived_pod_range() {
    use keel_bootstrap::node::worker;
    let ud = UserData {
        kubernetes: Some(userdata::Kubernetes {
            service_cidr: None,
            pod_cidr: Some("10.200.0.0/16".into()),
        }),
        ..user_data_for_rendering(Role::Worker)
    };
    let render = |ip: &str| {
        let root = tempfile::tempdir().unwrap();
        let layout = Layout::node_view(root.path());
        write_components(root.path());
        let id = Identity {
            instance_id: format!("i-{}", ip.replace('.', "")),
            region: REGION.into(),
            availability_zone: "us-east-1a".into(),
            private_ipv4: ip.into(),
            local_hostname: format!("ip-{}.ec2.internal", ip.replace('.', "-")),
        };
        worker::write_containerd_config(&layout).unwrap();
        worker::write_kubelet_config(&layout, &ud, &id, TOKEN).unwrap();
        root
    };
    let (a, b) = (render("10.0.1.17"), render("10.0.2.17"));
    let read = |root: &tempfile::TempDir, rel: &str| std::fs::read(root.path().join(rel)).unwrap();
    for rel in [worker::CONTAINERD_CONFIG, worker::CNI_TEMPLATE] {
        assert_eq!(read(&a, rel), read(&b, rel), "{rel} differs between the two workers");
    }
    for root in [&a, &b] {
        for rel in [
            worker::CONTAINERD_CONFIG,
            worker::CNI_TEMPLATE,
            kube::KUBELET_CONFIG,
            kube::KUBELET_ENV,
            worker::BOOTSTRAP_KUBECONFIG,
        ] {
            let text = String::from_utf8(read(root, rel)).unwrap();
            assert!(!text.contains("10.200."), "{rel} names a pod range:\n{text}");
        }
        assert!(!root.path().join(worker::CNI_CONF_DIR).exists());
    }
    // The controller manager allocates per-node ranges from the pod CIDR.
    let kcm = keel_bootstrap::node::controller::controller_manager_env(
        &Layout::node_view(a.path()),
        &UserData { role: Role::Controller, ..ud.clone() },
    )
    .unwrap();
    for flag in
        ["--allocate-node-cidrs=true", "--node-cidr-mask-size=24", "--cluster-cidr=10.200.0.0/16"]
    {
        assert!(kcm.contains(flag), "{flag} missing:\n{kcm}");
    }
}

/// Each unit passes its split variable as `$VAR` and every variable that
/// carries a user data value as `${VAR}` (one argument, never split), and
/// its environment file sets exactly those.
#[test]
fn units_pass_user_data_flags_as_single_arguments() {
    use keel_bootstrap::node::{controller as c, kube};
    let images = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images");
    for (unit, split, single) in [
        ("worker/units/kubelet.service", kube::KUBELET_ARGS, vec![kube::KUBELET_NODE_LABELS]),
        (
            "controller/units/kube-apiserver.service",
            c::APISERVER_ARGS,
            vec![c::APISERVER_SERVICE_CIDR, c::APISERVER_SA_ISSUER],
        ),
        (
            "controller/units/kube-controller-manager.service",
            c::CONTROLLER_MANAGER_ARGS,
            vec![
                c::CONTROLLER_MANAGER_CLUSTER_NAME,
                c::CONTROLLER_MANAGER_CLUSTER_CIDR,
                c::CONTROLLER_MANAGER_SERVICE_CIDR,
            ],
        ),
        ("controller/units/kube-scheduler.service", c::SCHEDULER_ARGS, vec![]),
    ] {
        let text = std::fs::read_to_string(images.join(unit)).unwrap();
        let exec = text.lines().find_map(|l| l.strip_prefix("ExecStart=")).unwrap();
        let words: Vec<&str> = exec.split_whitespace().skip(1).collect();
        let mut want = vec![format!("${split}")];
        want.extend(single.iter().map(|v| format!("${{{v}}}")));
        assert_eq!(words, want, "{unit}");
    }
    // A value that would split is refused when rendering, whatever checks
    // came before.
    let flags = kube::Flags {
        split: ("X_ARGS", vec!["--a=b".into()]),
        single: vec![("X_LABELS", "--node-labels=x=y --anonymous-auth=true".into())],
    };
    let err = flags.render().unwrap_err().to_string();
    assert!(
        err.starts_with(
            "X_LABELS: argument \"--node-labels=x=y --anonymous-auth=true\" holds whitespace"
        ),
        "{err}"
    );
}

/// Figures for BENCHMARKS.md (keel-bootstrap): time from start to "configured"
/// per role (peers present), and AWS requests per boot. Runs the binary
/// named by KEEL_BOOTSTRAP_BIN (e.g. the static release build) when set,
/// else the library in-process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: prints figures, asserts none"]
async fn bench_time_to_configured() {
    let aws = aws_env().await;
    let cluster = "bench";
    for role in Role::ALL {
        aws.publish(cluster, role).await;
    }
    let bin = std::env::var_os("KEEL_BOOTSTRAP_BIN");
    let run = |n: &Node| {
        if let Some(bin) = &bin {
            let out = Command::new(bin)
                .arg("--root")
                .arg(n.root.path())
                .arg("--imds-url")
                .arg(n.imds.base_url())
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        }
    };
    let mut guards = Vec::new();
    let mut nodes = Vec::new();
    for (role, host) in [(Role::Etcd, 1), (Role::Controller, 2), (Role::Worker, 3)] {
        let inst = aws.launch(cluster, role, Some(&ip(65, host)), 1).await.remove(0);
        let n = node(role, &inst, user_data_bytes(&aws.user_data(cluster, role, 1, 30)));
        if bin.is_some() {
            run(&n);
        } else {
            n.boot().await.unwrap_or_else(|e| panic!("{e}\n{}", n.console.text()));
        }
        let s = n.status();
        println!(
            "{role}: configured in {} ms; requests {}; imds requests {}",
            s["elapsed_millis"],
            s["aws_requests"],
            n.imds.requests().len()
        );
        for st in s["steps"].as_array().unwrap() {
            println!("  {:<22} {:>5} ms", st["name"].as_str().unwrap(), st["millis"]);
        }
        if role == Role::Etcd {
            guards.push(n.start_etcd());
            etcd_client(&aws).health(&etcd_url(65, 1)).await.unwrap();
        }
        // The etcd node's files must outlive its etcd.
        nodes.push(n);
    }
    drop(guards);
}

/// One simulated etcd instance of the randomized test: its node (root file
/// system, metadata service) and its etcd process while it runs.
struct Member {
    node: Node,
    etcd: Option<Guard>,
}

/// Boots `n` as keel-bootstrap.service would, starts etcd as etcd.service
/// would, then promotes it as keel-etcd-promote.service would.
async fn bring_up(n: &Node) -> Result<Guard, String> {
    n.boot().await.map_err(|e| format!("{} boot: {e}\n{}", n.id, n.console.text()))?;
    let guard = n.start_etcd();
    node::etcd::promote_node(&Layout::new(n.root.path()), Duration::from_secs(120)).await.map_err(
        |e| {
            let log = std::fs::read_to_string(n.path("etcd.log")).unwrap_or_default();
            let tail: String = log.lines().rev().take(15).collect::<Vec<_>>().join("\n");
            format!(
                "{} promote: {e}\n{}\netcd log (last lines, newest first):\n{tail}",
                n.id,
                n.console.text()
            )
        },
    )?;
    Ok(guard)
}

/// `count` etcd instances of `cluster` at `<net>.1` .. `<net>.<count>`, all
/// brought up at once; returns the nodes, their etcd processes and the
/// user data they booted with.
async fn formed(
    aws: &Aws,
    cluster: &str,
    net: &str,
    count: u32,
    timeout: u64,
) -> (Vec<Node>, Vec<Guard>, Option<Vec<u8>>) {
    aws.publish(cluster, Role::Etcd).await;
    let ud = user_data_bytes(&aws.user_data(cluster, Role::Etcd, count, timeout));
    let mut nodes = Vec::new();
    for n in 1..=count {
        let inst = aws.launch(cluster, Role::Etcd, Some(&format!("{net}.{n}")), 1).await.remove(0);
        nodes.push(node(Role::Etcd, &inst, ud.clone()));
    }
    let guards = up_all(&nodes).await;
    (nodes, guards, ud)
}

/// `bring_up` of every node at once.
async fn up_all(nodes: &[Node]) -> Vec<Guard> {
    futures::future::join_all(nodes.iter().map(bring_up))
        .await
        .into_iter()
        .map(|g| g.unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

/// The randomized test's world: emulated AWS, the instances, a writer.
struct Chaos {
    aws: Aws,
    cluster: &'static str,
    ud: Option<Vec<u8>>,
    members: Vec<Member>,
    next_ip: u32,
    endpoints: Arc<Mutex<Vec<String>>>,
    acked: Arc<std::sync::atomic::AtomicU64>,
    writer_error: Arc<Mutex<Option<String>>>,
    client: EtcdApi,
}

const CHAOS_MEMBERS: usize = 5;
const COUNTER: &str = "chaos/counter";

impl Chaos {
    fn fresh_ip(&mut self) -> String {
        self.next_ip += 1;
        ip(70 + (self.next_ip / 250) as u8, self.next_ip % 250 + 1)
    }

    async fn launch(&mut self, ip: Option<String>) -> Node {
        let ip = match ip {
            Some(ip) => ip,
            None => self.fresh_ip(),
        };
        let inst = self.aws.launch(self.cluster, Role::Etcd, Some(&ip), 1).await.remove(0);
        node(Role::Etcd, &inst, self.ud.clone())
    }

    /// Kills etcd and terminates the instance (its data goes with it).
    async fn terminate(&mut self, i: usize) -> Member {
        let mut m = self.members.remove(i);
        m.etcd = None;
        self.aws.ec2().terminate_instances().instance_ids(&m.node.id).send().await.unwrap();
        m
    }

    fn publish_endpoints(&self) {
        *self.endpoints.lock().unwrap() =
            self.members.iter().map(|m| node::etcd::client_url(&m.node.ip)).collect();
    }

    /// What is wrong with the members' views of the membership, if anything:
    /// a member that does not answer, another member list than `want`, a
    /// learner, or more than one cluster id.
    async fn membership_problem(&self, want: &[String]) -> Option<String> {
        let mut cluster_ids = std::collections::BTreeSet::new();
        for m in &self.members {
            let endpoint = node::etcd::client_url(&m.node.ip);
            let ms = match self.client.membership(&endpoint).await {
                Ok(ms) => ms,
                Err(e) => return Some(format!("{endpoint}: {e}")),
            };
            cluster_ids.insert(ms.cluster_id.clone());
            let mut names: Vec<String> = ms.members.iter().map(|m| m.name.clone()).collect();
            names.sort();
            if names != want {
                return Some(format!("members seen by {endpoint}: {names:?}, want {want:?}"));
            }
            if ms.members.iter().any(|m| m.is_learner) {
                return Some(format!("a learner is left, seen by {endpoint}: {:?}", ms.members));
            }
        }
        (cluster_ids.len() != 1).then(|| format!("cluster ids {cluster_ids:?}"))
    }

    /// Exactly one cluster id, the member list equals the live instances
    /// (all voting), and the counter never went backwards. A member answers
    /// the member list from what it has applied (etcd 3.4 has no
    /// linearizable member list): a member that has not yet applied the
    /// last promotion still shows a learner. So the views get up to
    /// `CONVERGE` to agree; what they showed then is the failure.
    async fn check(&self, event: usize, what: &str) {
        const CONVERGE: Duration = Duration::from_secs(30);
        let acked = self.acked.load(std::sync::atomic::Ordering::SeqCst);
        let mut want: Vec<String> = self.members.iter().map(|m| m.node.id.clone()).collect();
        want.sort();
        let until = std::time::Instant::now() + CONVERGE;
        loop {
            match self.membership_problem(&want).await {
                None => break,
                Some(problem) if std::time::Instant::now() >= until => {
                    panic!("event {event} ({what}): after {CONVERGE:?}: {problem}")
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        let endpoint = node::etcd::client_url(&self.members[0].node.ip);
        let value: u64 = self
            .client
            .get(&endpoint, COUNTER)
            .await
            .unwrap()
            .map(|v| v.parse().unwrap())
            .unwrap_or(0);
        assert!(value >= acked, "event {event} ({what}): counter {value} < acknowledged {acked}");
        if let Some(e) = self.writer_error.lock().unwrap().clone() {
            panic!("event {event} ({what}): writer: {e}");
        }
        let store = keel_bootstrap::formation::Store {
            s3: aws::s3_client(&self.aws.sdk),
            bucket: BUCKET.into(),
            prefix: PREFIX.into(),
        };
        let record = store.latest().await.unwrap().unwrap();
        assert_eq!(record.generation, 1, "event {event} ({what}): the cluster was re-formed");
    }
}

/// Increments the counter through any live member until stopped; records
/// the last acknowledged value, and an error if the counter ever reads
/// lower than that.
fn spawn_writer(chaos: &Chaos) -> tokio::task::JoinHandle<()> {
    let (endpoints, acked, error) =
        (chaos.endpoints.clone(), chaos.acked.clone(), chaos.writer_error.clone());
    let api = {
        let ca = Ca::load("test etcd CA", &chaos.aws.cas.etcd.0, &chaos.aws.cas.etcd.1).unwrap();
        let c = ca
            .issue(&pki::Request {
                what: "test writer",
                common_name: "writer",
                organization: None,
                dns_names: vec![],
                ips: vec![],
                usage: Usage::Client,
            })
            .unwrap();
        let quick = Policy {
            initial: Duration::from_millis(100),
            max_delay: Duration::from_millis(100),
            deadline: Duration::from_secs(2),
            max_attempts: 1,
        };
        EtcdApi::new(&chaos.aws.cas.etcd.0, &c.cert_pem, &c.key_pem, quick).unwrap()
    };
    tokio::spawn(async move {
        let mut turn = 0usize;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let list = endpoints.lock().unwrap().clone();
            if list.is_empty() {
                continue;
            }
            turn += 1;
            let endpoint = &list[turn % list.len()];
            let Ok(value) = api.get(endpoint, COUNTER).await else { continue };
            let value: u64 = value.map(|v| v.parse().unwrap_or(0)).unwrap_or(0);
            let before = acked.load(std::sync::atomic::Ordering::SeqCst);
            if value < before {
                *error.lock().unwrap() =
                    Some(format!("{endpoint} read {value} after {before} was acknowledged"));
                return;
            }
            if api.put(endpoint, COUNTER, &(value + 1).to_string()).await.is_ok() {
                acked.fetch_max(value + 1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    })
}

/// The randomized test of issue 14: a five-member etcd cluster, each member
/// a real etcd started from what keel-bootstrap wrote for it, with its own
/// loopback address (from 127.<run>.70.1, see `net`), and at least 50 random events of what an
/// Auto Scaling group does. `KEEL_CHAOS_SEED` replays a seed;
/// `KEEL_CHAOS_EVENTS` sets the number of events (default 50).
/// Runs `test` on a runtime whose threads have room for the large futures
/// of a debug build (several boots, etcd calls and promotions in one).
fn on_big_stack<F: std::future::Future<Output = ()> + 'static>(test: fn() -> F) {
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .thread_stack_size(16 << 20)
                .enable_all()
                .build()
                .unwrap()
                .block_on(test())
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn etcd_randomized_asg_events_keep_one_cluster() {
    on_big_stack(randomized_asg_events);
}

async fn randomized_asg_events() {
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("KEEL_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let events: usize =
        std::env::var("KEEL_CHAOS_EVENTS").ok().and_then(|s| s.parse().ok()).unwrap_or(50);
    println!("chaos seed {seed} (replay: KEEL_CHAOS_SEED={seed}), {events} events");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let started = std::time::Instant::now();

    let aws = aws_env().await;
    let cluster = "chaos";
    aws.publish(cluster, Role::Etcd).await;
    let ud = user_data_bytes(&aws.user_data(cluster, Role::Etcd, CHAOS_MEMBERS as u32, 300));
    let client = etcd_client(&aws);
    let mut c = Chaos {
        aws,
        cluster,
        ud,
        members: Vec::new(),
        next_ip: 0,
        endpoints: Arc::default(),
        acked: Arc::default(),
        writer_error: Arc::default(),
        client,
    };
    // Formation: all five at once.
    let mut nodes = Vec::new();
    for _ in 0..CHAOS_MEMBERS {
        nodes.push(c.launch(None).await);
    }
    let guards = futures::future::join_all(nodes.iter().map(bring_up)).await;
    for (n, g) in nodes.into_iter().zip(guards) {
        let g = g.unwrap_or_else(|e| panic!("seed {seed}: formation: {e}"));
        if std::env::var_os("KEEL_CHAOS_VERBOSE").is_some() {
            println!("{}:\n{}", n.id, n.console.text());
        }
        c.members.push(Member { node: n, etcd: Some(g) });
    }
    c.publish_endpoints();
    let writer = spawn_writer(&c);
    c.check(0, "formation").await;
    println!("formation of {CHAOS_MEMBERS} members: {} ms", started.elapsed().as_millis());

    // keel-bootstrap runs killed, and of those killed before they finished.
    let mut kills = (0, 0);
    for event in 1..=events {
        let t = std::time::Instant::now();
        let kind = rng.gen_range(0..6);
        let what = match kind {
            0 => {
                // Terminate a member; a replacement at a new address joins.
                let i = rng.gen_range(0..c.members.len());
                c.terminate(i).await;
                c.publish_endpoints();
                let n = c.launch(None).await;
                let g = bring_up(&n).await.unwrap_or_else(|e| panic!("seed {seed}: {e}"));
                c.members.push(Member { node: n, etcd: Some(g) });
                "terminate + replace"
            }
            1 => {
                // Two members terminated at once, two replacements boot together.
                let i = rng.gen_range(0..c.members.len());
                c.terminate(i).await;
                let j = rng.gen_range(0..c.members.len());
                c.terminate(j).await;
                c.publish_endpoints();
                let (a, b) = (c.launch(None).await, c.launch(None).await);
                let (ga, gb) = futures::future::join(bring_up(&a), bring_up(&b)).await;
                for (n, g) in [(a, ga), (b, gb)] {
                    let g = g.unwrap_or_else(|e| panic!("seed {seed}: {e}"));
                    c.members.push(Member { node: n, etcd: Some(g) });
                }
                "replace two at once"
            }
            2 => {
                // The replacement gets the dead member's address.
                let i = rng.gen_range(0..c.members.len());
                let dead = c.terminate(i).await;
                c.publish_endpoints();
                let n = c.launch(Some(dead.node.ip.clone())).await;
                let g = bring_up(&n).await.unwrap_or_else(|e| panic!("seed {seed}: {e}"));
                c.members.push(Member { node: n, etcd: Some(g) });
                "replacement gets the dead member's IP"
            }
            3 => {
                // One member reboots while a replacement joins.
                let i = rng.gen_range(0..c.members.len());
                c.terminate(i).await;
                let j = rng.gen_range(0..c.members.len());
                c.members[j].etcd = None;
                c.publish_endpoints();
                let n = c.launch(None).await;
                let (gr, gn) =
                    futures::future::join(bring_up(&c.members[j].node), bring_up(&n)).await;
                c.members[j].etcd = Some(gr.unwrap_or_else(|e| panic!("seed {seed}: reboot: {e}")));
                c.members.push(Member {
                    node: n,
                    etcd: Some(gn.unwrap_or_else(|e| panic!("seed {seed}: {e}"))),
                });
                "reboot a member while another joins"
            }
            4 => {
                // keel-bootstrap killed in the middle of a join, then run again.
                let i = rng.gen_range(0..c.members.len());
                c.terminate(i).await;
                c.publish_endpoints();
                let n = c.launch(None).await;
                // The real binary, killed with SIGKILL after a random time.
                let cut = Duration::from_millis(rng.gen_range(100..3000));
                let mut run = Command::new(env!("CARGO_BIN_EXE_keel-bootstrap"))
                    .arg("--root")
                    .arg(n.root.path())
                    .arg("--imds-url")
                    .arg(n.imds.base_url())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                tokio::time::sleep(cut).await;
                kills.0 += 1;
                if run.try_wait().unwrap().is_none() {
                    kills.1 += 1;
                }
                let _ = run.kill();
                let _ = run.wait();
                let g = bring_up(&n).await.unwrap_or_else(|e| panic!("seed {seed}: rerun: {e}"));
                c.members.push(Member { node: n, etcd: Some(g) });
                "kill keel-bootstrap mid-join and rerun"
            }
            _ => {
                // A member is stopped and a replacement removes it; then the
                // replacement is terminated and the stopped instance starts
                // again: it moves its data aside and joins as new (removing
                // the dead replacement).
                let i = rng.gen_range(0..c.members.len());
                let mut m = c.members.remove(i);
                m.etcd = None;
                c.aws.ec2().stop_instances().instance_ids(&m.node.id).send().await.unwrap();
                c.publish_endpoints();
                let n = c.launch(None).await;
                let g = bring_up(&n).await.unwrap_or_else(|e| panic!("seed {seed}: {e}"));
                c.members.push(Member { node: n, etcd: Some(g) });
                c.publish_endpoints();
                c.check(event, "stopped member replaced").await;
                let last = c.members.len() - 1;
                c.terminate(last).await;
                c.publish_endpoints();
                c.aws.ec2().start_instances().instance_ids(&m.node.id).send().await.unwrap();
                let g =
                    bring_up(&m.node).await.unwrap_or_else(|e| panic!("seed {seed}: removed: {e}"));
                let aside = std::fs::read_dir(m.node.path("var/lib/etcd"))
                    .unwrap()
                    .filter_map(|e| e.ok())
                    .any(|e| e.file_name().to_string_lossy().starts_with("member.removed-"));
                assert!(aside, "seed {seed}: the removed member's data was not moved aside");
                c.members.push(Member { node: m.node, etcd: Some(g) });
                "start a member after it was removed"
            }
        };
        c.publish_endpoints();
        c.check(event, what).await;
        println!(
            "event {event:2}: {what} ({} members, counter >= {}, {} ms)",
            c.members.len(),
            c.acked.load(std::sync::atomic::Ordering::SeqCst),
            t.elapsed().as_millis()
        );
    }
    writer.abort();
    assert!(
        events == 0 || c.acked.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the writer never wrote"
    );
    println!(
        "chaos seed {seed}: {events} events in {} s; keel-bootstrap killed {} times, {} of them \
         before it finished",
        started.elapsed().as_secs(),
        kills.0,
        kills.1
    );
}

#[test]
fn etcd_snapshot_is_sealed_and_restored_when_every_member_is_replaced() {
    on_big_stack(snapshot_then_restore);
}

#[test]
fn etcd_bug_unreachable_members_are_unknown_not_absent() {
    on_big_stack(unreachable_is_unknown);
}

/// Every etcd of a formed cluster is down (the instances still run): a
/// replacement must wait, not form a second cluster, and fail at its
/// deadline naming the instances that may hold the data.
async fn unreachable_is_unknown() {
    let aws = aws_env().await;
    let cluster = "unknown";
    let (nodes, guards, ud) = formed(&aws, cluster, &net(67), 3, 8).await;
    drop(guards);
    aws.ec2().terminate_instances().instance_ids(&nodes[2].id).send().await.unwrap();
    let inst = aws.launch(cluster, Role::Etcd, Some(&ip(67, 4)), 1).await.remove(0);
    let replacement = node(Role::Etcd, &inst, ud.clone());
    let err = replacement.boot().await.unwrap_err().to_string();
    assert!(err.starts_with("etcd membership: no etcd member answers"), "{err}");
    assert!(err.contains(&nodes[0].id) && err.contains(&nodes[1].id), "{err}");
    assert!(!replacement.path("etc/default/etcd").exists());
    let store = keel_bootstrap::formation::Store {
        s3: aws::s3_client(&aws.sdk),
        bucket: BUCKET.into(),
        prefix: PREFIX.into(),
    };
    assert_eq!(store.latest().await.unwrap().unwrap().generation, 1);
}

/// `KEEL_SNAPSHOT_KEYS` keys (default 200; the benchmark uses 10000) are
/// written, the leader seals a snapshot into S3, every member is
/// terminated, and three new instances form a cluster restored from it.
async fn snapshot_then_restore() {
    use keel_bootstrap::snapshot::Snapshots;
    let keys: usize =
        std::env::var("KEEL_SNAPSHOT_KEYS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    let aws = aws_env().await;
    let cluster = "backup";
    let (nodes, guards, ud) = formed(&aws, cluster, &net(66), 3, 120).await;
    let client = etcd_client(&aws);
    let endpoint = &etcd_url(66, 1);
    const MARKER: &str = "written-before-the-backup";
    client.put(endpoint, "restore/marker", MARKER).await.unwrap();
    let filler = "x".repeat(100);
    for k in 0..keys {
        client.put(endpoint, &format!("bench/{k:06}"), &filler).await.unwrap();
    }

    // Every member runs the timer; only the leader takes the snapshot.
    let mut lines = Vec::new();
    for n in &nodes {
        let opts = node::Options {
            root: n.root.path().to_path_buf(),
            imds_url: n.imds.base_url(),
            imds_policy: Policy::quick(),
            console: Box::new(std::io::sink()),
        };
        lines.push(node::etcd_snapshot(&opts).await.unwrap());
    }
    println!("{lines:#?}");
    assert_eq!(lines.iter().filter(|l| l.starts_with("etcd snapshot of")).count(), 1, "{lines:?}");
    let store = |cluster: &str| Snapshots {
        s3: aws::s3_client(&aws.sdk),
        kms: aws_sdk_kms::Client::new(&aws.sdk),
        bucket: BUCKET.into(),
        prefix: PREFIX.into(),
        cluster: cluster.into(),
    };
    let listed = store(cluster).list().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let key = listed[0].key.clone();
    assert!(key.starts_with("test/etcd/snapshots/") && key.ends_with(".snap"), "{key}");

    // The object holds no plaintext: no bbolt page magic, no key or value.
    let raw = aws::s3_client(&aws.sdk)
        .get_object()
        .bucket(BUCKET)
        .key(&key)
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    let has = |needle: &[u8]| raw.windows(needle.len()).any(|w| w == needle);
    assert!(!has(&0xED0CDAEDu32.to_le_bytes()), "bbolt magic in the sealed snapshot");
    assert!(!has(MARKER.as_bytes()) && !has(b"restore/marker"), "plaintext in the snapshot");
    let opened = store(cluster).fetch(&key).await.unwrap();
    assert!(opened.windows(4).any(|w| w == 0xED0CDAEDu32.to_le_bytes()), "not a bbolt file");
    println!("snapshot of {keys} keys: {} bytes in etcd, {} bytes sealed", opened.len(), raw.len());

    // Sealed for another cluster: refused with a clear line.
    let err = store("someone-else").fetch(&key).await.unwrap_err().to_string();
    assert!(
        err.contains("was sealed for cluster \"backup\", not \"someone-else\": refused"),
        "{err}"
    );

    // The Auto Scaling group replaces every member: the data goes with them.
    drop(guards);
    for n in &nodes {
        aws.ec2().terminate_instances().instance_ids(&n.id).send().await.unwrap();
    }
    drop(nodes);
    let mut fresh = Vec::new();
    for n in 4..=6 {
        let inst = aws.launch(cluster, Role::Etcd, Some(&ip(66, n)), 1).await.remove(0);
        fresh.push(node(Role::Etcd, &inst, ud.clone()));
    }
    let t = std::time::Instant::now();
    let _guards = up_all(&fresh).await;
    println!("three new members restored and serving in {} ms", t.elapsed().as_millis());
    for n in &fresh {
        let console = n.console.text();
        assert!(
            console.contains(&format!("keel-bootstrap: etcd restore of s3://{BUCKET}/{key}: ok")),
            "{console}"
        );
        assert_eq!(n.status()["state"], "configured");
    }
    let value = client.get(&etcd_url(66, 5), "restore/marker").await.unwrap();
    assert_eq!(value.as_deref(), Some(MARKER));
    let last = client.get(&etcd_url(66, 6), &format!("bench/{:06}", keys - 1)).await;
    assert_eq!(last.unwrap().as_deref(), Some(filler.as_str()));
}

#[test]
fn controller_etcd_servers_follow_membership_and_stay_when_unchanged() {
    on_big_stack(etcd_servers_follow_membership);
}

async fn etcd_servers_follow_membership() {
    let aws = aws_env().await;
    let cluster = "follow";
    aws.publish(cluster, Role::Etcd).await;
    aws.publish(cluster, Role::Controller).await;
    let ud = user_data_bytes(&aws.user_data(cluster, Role::Etcd, 1, 30));
    let first = node(
        Role::Etcd,
        &aws.launch(cluster, Role::Etcd, Some(&ip(68, 1)), 1).await.remove(0),
        ud.clone(),
    );
    let _g1 = bring_up(&first).await.unwrap();
    let ctl = node(
        Role::Controller,
        &aws.launch(cluster, Role::Controller, Some(&ip(68, 9)), 1).await.remove(0),
        user_data_bytes(&aws.user_data(cluster, Role::Controller, 1, 30)),
    );
    ctl.boot().await.unwrap_or_else(|e| panic!("{e}\n{}", ctl.console.text()));
    let opts = || node::Options {
        root: ctl.root.path().to_path_buf(),
        imds_url: ctl.imds.base_url(),
        imds_policy: Policy::quick(),
        console: Box::new(std::io::sink()),
    };
    let env_path = ctl.path("etc/default/kube-apiserver");
    let line = node::refresh_etcd_servers(&opts()).await.unwrap();
    assert_eq!(line, format!("etcd servers unchanged: {}", etcd_url(68, 1)));

    // A second member joins: the API server's list follows, and only that
    // flag changes.
    let second = node(
        Role::Etcd,
        &aws.launch(cluster, Role::Etcd, Some(&ip(68, 2)), 1).await.remove(0),
        ud.clone(),
    );
    let _g2 = bring_up(&second).await.unwrap();
    let before = std::fs::read_to_string(&env_path).unwrap();
    let line = node::refresh_etcd_servers(&opts()).await.unwrap();
    assert!(
        line.starts_with(&format!("etcd servers changed from {} to", etcd_url(68, 1))),
        "{line}"
    );
    let after = std::fs::read_to_string(&env_path).unwrap();
    assert!(
        after.contains(&format!("--etcd-servers={},{} ", etcd_url(68, 1), etcd_url(68, 2))),
        "{after}"
    );
    assert_eq!(
        after.replace(&format!("{},{}", etcd_url(68, 1), etcd_url(68, 2)), "X"),
        before.replace(&etcd_url(68, 1), "X")
    );
    let mtime = std::fs::metadata(&env_path).unwrap().modified().unwrap();
    let line = node::refresh_etcd_servers(&opts()).await.unwrap();
    assert!(line.starts_with("etcd servers unchanged"), "{line}");
    assert_eq!(std::fs::metadata(&env_path).unwrap().modified().unwrap(), mtime);
}

/// The API server TEST DOUBLE (`keel_testkit::api_server_double`) on
/// 127.0.0.1, serving with a certificate from the cluster CA and requiring
/// client certificates from it; `/readyz` is 503 for the first `unready`
/// requests.
fn api_server_double(ca: &Ca, ca_pem: &str, unready: usize) -> ApiServerDouble {
    let serving = ca
        .issue(&pki::Request {
            what: "API server double serving certificate",
            common_name: "kube-apiserver",
            organization: None,
            dns_names: vec!["localhost".into()],
            ips: vec![std::net::IpAddr::from([127, 0, 0, 1])],
            usage: Usage::Server,
        })
        .unwrap();
    ApiServerDouble::start(ApiConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        client_ca_pem: ca_pem.to_string(),
        serving_cert_pem: serving.cert_pem.clone(),
        serving_key_pem: serving.key_pem.to_string(),
        unready,
        log: None,
    })
    .unwrap()
}

/// Issue 16: nothing applied the bootstrap-token Secret or the RBAC that
/// lets a worker's kubelet request and get its client certificate. The
/// controller's `keel-bootstrap --apply-join` waits for its API server and
/// server-side applies each object from its bundle with a short-lived
/// certificate of its own; the API server double records what arrived.
/// This shows the requests, not that a real kube-apiserver accepts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_applies_the_join_objects_by_server_side_apply() {
    use keel_bootstrap::node::apply;
    use keel_contract::join;
    let (ca_crt, ca_key) = pki::new_ca("kubernetes").unwrap();
    let ca = Ca::load("test cluster CA", &ca_crt, &ca_key).unwrap();
    let objects = join::objects("prod", "abcdef", "0123456789abcdef", "2027-11-30T10:00:00Z");
    let list = serde_json::to_vec(&join::list(objects.clone())).unwrap();
    // The controller's bundle, installed as at boot (paths checked).
    let root = tempfile::tempdir().unwrap();
    let layout = Layout::new(root.path());
    let files = vec![
        file("kubernetes/pki/ca.crt", 0o644, ca_crt.as_bytes()),
        file("kubernetes/pki/ca.key", 0o600, ca_key.as_bytes()),
        file(join::OBJECTS, 0o600, &list),
    ];
    node::assets::Assets::install(
        &layout,
        Bundle { cluster: "prod".into(), role: Role::Controller, files },
        None,
    )
    .unwrap();
    let api = api_server_double(&ca, &ca_crt, 2);
    let url = api.url();
    let ready = Policy {
        initial: Duration::from_millis(50),
        max_delay: Duration::from_millis(100),
        deadline: Duration::from_secs(20),
        max_attempts: 20,
    };
    let applied = apply::apply_join(&layout, &url, &ready, &Policy::quick()).await.unwrap();
    assert_eq!(
        applied,
        [
            "Secret/bootstrap-token-abcdef",
            "ClusterRoleBinding/keel:kubelet-bootstrap",
            "ClusterRoleBinding/keel:node-autoapprove-bootstrap",
            "ClusterRoleBinding/keel:node-autoapprove-certificate-rotation",
        ]
    );
    let seen = api.seen();
    let readyz: Vec<_> = seen.iter().filter(|s| s.target == "/readyz").collect();
    assert_eq!(readyz.len(), 3, "waited for /readyz until it answered");
    let patches: Vec<_> = seen.iter().filter(|s| s.method == "PATCH").collect();
    assert_eq!(patches.len(), 4);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for (p, o) in patches.iter().zip(&objects) {
        assert_eq!(
            p.target,
            format!("{}?fieldManager=keel&force=true", join::apply_path(o).unwrap())
        );
        assert_eq!(p.content_type, "application/apply-patch+yaml");
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&p.body).unwrap(), *o);
        assert_eq!(p.client, "CN=keel:join-applier, O=system:masters");
        assert!(p.client_not_after <= now + 3600 + 60, "a long-lived applier certificate");
    }
    // Nothing of the applier's identity was written on the node.
    let mut written = Vec::new();
    for e in std::fs::read_dir(root.path().join("etc/kubernetes/pki")).unwrap() {
        written.push(e.unwrap().file_name().to_string_lossy().into_owned());
    }
    written.sort();
    assert_eq!(written, ["ca.crt", "ca.key"]);

    // Idempotent: a second run (another controller, a reboot) sends the
    // same applies.
    apply::apply_join(&layout, &url, &ready, &Policy::quick()).await.unwrap();
    let again: Vec<_> =
        api.seen().into_iter().filter(|s| s.method == "PATCH").skip(4).map(|s| s.body).collect();
    assert_eq!(again, patches.iter().map(|p| p.body.clone()).collect::<Vec<_>>());

    // Refused (403): a final error naming the object's URL, no retries.
    api.set_status(403);
    let before = api.seen().len();
    let err =
        apply::apply_join(&layout, &url, &ready, &Policy::quick()).await.unwrap_err().to_string();
    assert!(err.contains("/secrets/bootstrap-token-abcdef?") && err.contains("HTTP 403"), "{err}");
    assert!(!err.contains("0123456789abcdef"), "the token in an error: {err}");
    assert_eq!(api.seen().len() - before, 2, "one /readyz and one PATCH");
}

/// Issue 13, item 4: on an image that is not a test image, a plain-http
/// `aws.endpoint-url` is refused before any AWS call, with one line that
/// says why and what would be accepted.
#[tokio::test]
async fn an_http_endpoint_url_is_refused_on_a_production_image() {
    let mut ud = user_data_for_rendering(Role::Worker);
    ud.aws = Some(userdata::Aws { endpoint_url: Some("http://10.0.0.9:5000".into()) });
    let inst = ("i-0prod".to_string(), "10.0.1.5".to_string(), "ip-10-0-1-5.ec2.internal".into());
    let n = node(Role::Worker, &inst, user_data_bytes(&ud)).production_image();
    let err = n.boot().await.unwrap_err();
    assert_eq!(err.step, "aws config", "{err}");
    for part in ["\"http://10.0.0.9:5000\" refused", "https://", "test image", "[test]"] {
        assert!(err.message.contains(part), "{part:?} not in {err}");
    }
    assert!(
        n.console.text().contains("keel-bootstrap: aws config: failed: aws.endpoint-url"),
        "{}",
        n.console.text()
    );
    // The same user data on a test image gets past the check (and then
    // fails only to reach the address, which nothing serves).
    assert!(aws::check_endpoint("http://10.0.0.9:5000", true).is_ok());
    assert!(aws::check_endpoint("HTTPS://s3.example.internal", false).is_ok());
}

/// Issue 13, item 3: the node's AWS client verifies the endpoint's
/// certificate against the image's trust store (`etc/ssl/certs/
/// ca-certificates.crt` under its root) and nothing else: behind a TLS
/// proxy whose CA the store lacks, every call fails on the certificate
/// (the proxy sees the handshake refused); with the CA in the store the
/// same call reaches moto. An https override is accepted on any image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_refuses_an_endpoint_whose_certificate_its_trust_store_lacks() {
    use keel_testkit::test_ca::TestCa;
    use keel_testkit::tls_proxy::TlsProxy;
    let aws = aws_env().await;
    let moto: std::net::SocketAddr =
        aws.moto.endpoint.trim_start_matches("http://").parse().unwrap();
    let proxy_ca = TestCa::ephemeral().unwrap();
    let proxy = TlsProxy::start(moto, &proxy_ca.issue(&["127.0.0.1".into()]).unwrap()).unwrap();
    let imds = ImdsEmulator::start(Instance::with_credentials_in(REGION)).unwrap();
    let target = aws::Target {
        region: Some(REGION.into()),
        endpoint_url: Some(format!("https://{}", proxy.addr())),
    };
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join(aws::TRUST_STORE);
    std::fs::create_dir_all(store.parent().unwrap()).unwrap();
    let list = |sdk: SdkConfig| async move {
        aws::s3_client(&sdk).list_objects_v2().bucket(BUCKET).send().await
    };

    // No trust store at all: a clear error before any call.
    let err = aws::node_sdk_config(&target, &imds.base_url(), root.path()).await.unwrap_err();
    assert!(err.to_string().contains("ca-certificates.crt"), "{err}");

    // Another CA (a stand-in for Debian's bundle, which lacks it too).
    std::fs::write(&store, TestCa::ephemeral().unwrap().cert_pem).unwrap();
    let sdk = aws::node_sdk_config(&target, &imds.base_url(), root.path()).await.unwrap();
    let err = aws::display_error(&list(sdk).await.unwrap_err());
    assert!(err.contains("UnknownIssuer") || err.contains("certificate"), "{err}");
    let refused = proxy.connections();
    assert!(!refused.is_empty() && refused.iter().all(|c| c.handshake.is_err()), "{refused:?}");

    // The proxy's CA in the store: the same call goes through to moto.
    std::fs::write(&store, &proxy_ca.cert_pem).unwrap();
    let sdk = aws::node_sdk_config(&target, &imds.base_url(), root.path()).await.unwrap();
    list(sdk).await.unwrap_or_else(|e| panic!("{}", aws::display_error(&e)));
    assert!(proxy.connections().iter().any(|c| c.handshake.is_ok()));
}
