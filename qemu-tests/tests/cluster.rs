//! Scenarios a, b and d of issue 7 (and b's variants of issue 14: the
//! replacement gets the dead member's IP; every member is replaced and the
//! new ones restore the newest snapshot), p of issue 13 (the published
//! AMI is what boots), t (the members keep time with the Amazon Time Sync
//! Service's address, a TEST DOUBLE here) and n (a NIC attached to a
//! running member is left alone): Keel images booted as a cluster under QEMU against
//! moto and the metadata emulator, checked from the host with Debian's
//! etcdctl over TLS. The etcd members boot what `keel publish` uploaded:
//! the image is published into the run's account and its AMI's root
//! snapshot read back block by block (`keel_qemu_tests::published`)
//! before the members are launched from that AMI. Needs root, QEMU, OVMF,
//! moto, dnsmasq and etcdctl; builds the etcd image and the controller
//! image (TEST-ONLY profile `ci`: the production recipe, a test image
//! whose nodes reach AWS by its endpoint names through the test CA's TLS
//! proxy, see `keel_qemu_tests::aws_names`) when they are missing.
//!
//! The three scenarios share one 3-node etcd cluster (forming one costs
//! minutes under TCG): `main` owns it, creates it on the first scenario
//! that runs (so one scenario can be run alone by name) and drops it
//! before the process exits, whether the scenarios pass, fail or panic;
//! Ctrl-C and SIGTERM are covered by `keel_testkit::teardown`. The
//! scenarios run one at a time, in the order below (the replacement,
//! which changes the cluster, last), whatever `--test-threads` says.
//! Console logs, user data and dnsmasq's log stay in
//! `<target>/qemu-runs/cluster-<pid>/`.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use keel_bootstrap::aws::display_error;
use keel_bootstrap::envelope;
use keel_contract::{tags, Role};
use keel_qemu_tests::aws_names::endpoint_name;
use keel_qemu_tests::cluster::Cluster;
use keel_qemu_tests::etcd_cluster::{EtcdCluster, FAILED};
use keel_qemu_tests::etcdctl::{self, Credentials, Etcdctl};
use keel_qemu_tests::{images, net, published};
use libtest_mimic::{Arguments, Failed, Trial};

/// Each wait (boot to keel-bootstrap's last line, then to a healthy
/// membership): several VMs under TCG share two cores with other builds.
const DEADLINE: Duration = Duration::from_secs(900);
const MEMBERS: u32 = 3;

/// The cluster the scenarios share: None until the first one forms it;
/// Some(Err) when forming it failed (every scenario reports that).
struct Shared {
    // Dropped first: the VMs and services go before the runtime.
    cluster: Mutex<Option<Result<EtcdCluster, String>>>,
    runtime: tokio::runtime::Runtime,
}

type Scenario = for<'a> fn(
    &'a mut EtcdCluster,
)
    -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + 'a>>;

impl Shared {
    fn run(&self, scenario: Scenario) -> Result<(), Failed> {
        // A scenario that panicked poisons the lock; the cluster itself is
        // still whole (or is what the next scenario reports on).
        let mut slot = self.cluster.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(self.runtime.block_on(form()).map_err(|e| format!("{e:#}")));
        }
        match slot.as_mut() {
            Some(Ok(c)) => {
                let dir = c.cluster.dir().to_path_buf();
                self.runtime
                    .block_on(scenario(c))
                    .map_err(|e| format!("{e:#}\n(logs in {})", dir.display()).into())
            }
            Some(Err(e)) => {
                Err(format!("forming the shared 3-node etcd cluster failed: {e}").into())
            }
            None => Err("no cluster".into()),
        }
    }
}

async fn form() -> Result<EtcdCluster> {
    let image = images::image(Role::Etcd).context("building the etcd image")?;
    let mut cluster = Cluster::start("cluster", "qt").await?;
    let dir = cluster.dir().to_path_buf();
    // The members boot what `keel publish` uploaded, read back from the
    // AMI's snapshot, and are launched from that AMI.
    let p = published::publish(&mut cluster, &image)
        .await
        .with_context(|| format!("publishing the etcd image (logs in {})", dir.display()))?;
    eprintln!(
        "timing: keel publish {:.1} s ({} MiB image, {} blocks into {}, AMI {}), read-back {:.1} s",
        p.publish_took.as_secs_f64(),
        std::fs::metadata(&image.path).map(|m| m.len() >> 20).unwrap_or_default(),
        p.blocks,
        p.snapshot_id,
        p.ami,
        p.read_back_took.as_secs_f64()
    );
    let (ec, t) = EtcdCluster::form(cluster, &p.disk, Some(p.ami), None, MEMBERS, DEADLINE)
        .await
        .with_context(|| format!("logs in {}", dir.display()))?;
    for (name, d) in &t.configured {
        eprintln!("timing: {name} configured {:.1} s after QEMU started", d.as_secs_f64());
    }
    eprintln!(
        "timing: {MEMBERS} members healthy {:.1} s after the first QEMU started",
        t.healthy.as_secs_f64()
    );
    Ok(ec)
}

fn main() -> ExitCode {
    keel_bootstrap::aws::install_crypto_provider();
    let mut args = Arguments::from_args();
    // One at a time, in order: they share one cluster.
    args.test_threads = Some(1);
    let shared = Arc::new(Shared {
        cluster: Mutex::new(None),
        runtime: match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("error: starting the tokio runtime: {e}");
                return ExitCode::FAILURE;
            }
        },
    });
    let scenarios: [(&str, Scenario); 8] = [
        ("a_three_etcd_vms_form_one_tls_cluster", |c| {
            Box::pin(three_etcd_vms_form_one_tls_cluster(c))
        }),
        ("p_the_published_ami_is_what_boots", |c| Box::pin(the_published_ami_is_what_boots(c))),
        ("t_members_keep_time_with_the_amazon_time_sync_service", |c| {
            Box::pin(members_keep_time_with_the_amazon_time_sync_service(c))
        }),
        ("d_a_controller_reaches_etcd_with_its_client_certificate", |c| {
            Box::pin(a_controller_reaches_etcd_with_its_client_certificate(c))
        }),
        ("n_a_nic_attached_later_is_left_to_whoever_attached_it", |c| {
            Box::pin(a_nic_attached_later_is_left_to_whoever_attached_it(c))
        }),
        ("b_a_replacement_joins_and_the_dead_member_is_removed", |c| {
            Box::pin(a_replacement_joins_and_the_dead_member_is_removed(c))
        }),
        ("b2_a_replacement_at_the_dead_members_ip_joins", |c| {
            Box::pin(a_replacement_at_the_dead_members_ip_joins(c))
        }),
        ("b3_all_members_replaced_restore_the_newest_snapshot", |c| {
            Box::pin(all_members_replaced_restore_the_newest_snapshot(c))
        }),
    ];
    let trials = scenarios
        .into_iter()
        .map(|(name, scenario)| {
            let shared = shared.clone();
            Trial::test(name, move || shared.run(scenario))
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    // The trials (and their references) are gone: this drops the cluster,
    // stopping every VM, moto, dnsmasq and the network namespace.
    drop(shared);
    conclusion.exit_code()
}

/// a. Three etcd VMs found each other by tags, opened their bundles and
/// formed one TLS-secured cluster: three members with the nodes' peer
/// URLs, every endpoint healthy, a key written through one member is read
/// through another; the cluster refuses a client without a certificate
/// its CA signed; and every member reached EC2, S3 and KMS by their real
/// endpoint names over verified HTTPS.
async fn three_etcd_vms_form_one_tls_cluster(c: &mut EtcdCluster) -> Result<()> {
    let members = c.etcdctl().member_list().await?;
    ensure!(members.len() == 3, "expected 3 members: {}", etcdctl::describe(&members));
    for n in c.members() {
        let peer = etcdctl::peer_url(&n.private_ip.to_string());
        let m = members.iter().find(|m| m.peer_urls.contains(&peer));
        let m = m.with_context(|| {
            format!("{} ({peer}) is not a member: {}", n.name, etcdctl::describe(&members))
        })?;
        ensure!(
            m.name == n.instance_id,
            "{}: member name {:?}, expected its instance id {}",
            n.name,
            m.name,
            n.instance_id
        );
    }
    let health = c.etcdctl().endpoint_health().await?;
    ensure!(
        health.len() == 3 && health.iter().all(|h| h.healthy),
        "not every endpoint is healthy: {health:?}"
    );

    let (first, last) = (c.members()[0].name.clone(), c.members()[2].name.clone());
    c.etcdctl_on(&first)?.put("keel/scenario-a", "written-through-the-first-member").await?;
    let got = c.etcdctl_on(&last)?.get("keel/scenario-a").await?;
    ensure!(
        got.as_deref() == Some("written-through-the-first-member"),
        "read through {last}: {got:?}"
    );

    // TLS with client authentication: a certificate from another CA is
    // refused.
    let other = tempfile::tempdir()?;
    let (ca_pem, ca_key) = keel_bootstrap::pki::new_ca("not the cluster's etcd CA")?;
    let stranger = keel_bootstrap::pki::Ca::load("a stranger CA", &ca_pem, &ca_key)?.issue(
        &keel_bootstrap::pki::Request {
            what: "a client certificate from another CA",
            common_name: "stranger",
            organization: None,
            dns_names: vec![],
            ips: vec![],
            usage: keel_bootstrap::pki::Usage::Client,
        },
    )?;
    let ca = std::fs::read(&c.credentials.ca)?;
    let creds = Credentials::write(
        other.path(),
        &ca,
        stranger.cert_pem.as_bytes(),
        stranger.key_pem.as_bytes(),
    )?;
    let refused = Etcdctl::new(creds, c.endpoints()[..1].to_vec()).get("keel/scenario-a").await;
    ensure!(refused.is_err(), "a client certificate from another CA read the key: {refused:?}");

    // Every member reached AWS by its real names (no endpoint override in
    // the user data): EC2 for discovery, the virtual-hosted bucket, KMS,
    // each looked up through the network's resolver and verified.
    let bucket = format!("{}.{}", c.cluster.account.bucket, endpoint_name("s3"));
    for n in c.members() {
        let names = c.cluster.aws_names_used(&n.name)?;
        for want in [&endpoint_name("ec2"), &bucket, &endpoint_name("kms")] {
            ensure!(names.contains(want), "{} did not reach {want}: {names:?}", n.name);
        }
    }
    Ok(())
}

/// p. The published AMI is what boots (issue 13): the members' instances
/// were launched from the AMI `keel publish` registered (tagged with the
/// image's sha256, which a stand-in AMI is not), their VMs boot the disk
/// read back block by block from its root snapshot (checked against the
/// image while the cluster formed), and each kernel was started with the
/// image's dm-verity root hash.
async fn the_published_ami_is_what_boots(c: &mut EtcdCluster) -> Result<()> {
    let built = images::image(Role::Etcd).context("the etcd image")?.manifest()?;
    let sha256 = built["image-sha256"].as_str().context("no image-sha256 in the build manifest")?;
    let root_hash =
        built["verity-root-hash"].as_str().context("no verity-root-hash in the build manifest")?;
    let disk = published::disk_path(c.cluster.dir());
    ensure!(c.image == disk, "the members boot {}, not {}", c.image.display(), disk.display());

    let ec2 = &c.cluster.account.ec2;
    let images = ec2
        .describe_images()
        .image_ids(&c.ami)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("DescribeImages {}: {}", c.ami, display_error(&e)))?;
    let image = images.images().first().with_context(|| format!("no AMI {}", c.ami))?;
    let tagged = image.tags().iter().find(|t| t.key() == Some(tags::IMAGE_SHA256));
    ensure!(
        tagged.and_then(|t| t.value()) == Some(sha256),
        "AMI {} carries {} {:?}, the image has sha256 {sha256}",
        c.ami,
        tags::IMAGE_SHA256,
        tagged.and_then(|t| t.value())
    );

    let ids: Vec<String> = c.members().iter().map(|n| n.instance_id.clone()).collect();
    let out = ec2
        .describe_instances()
        .set_instance_ids(Some(ids.clone()))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("DescribeInstances {ids:?}: {}", display_error(&e)))?;
    let launched: Vec<(String, String)> = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| {
            (
                i.instance_id().unwrap_or_default().to_string(),
                i.image_id().unwrap_or_default().to_string(),
            )
        })
        .collect();
    ensure!(launched.len() == ids.len(), "DescribeInstances {ids:?}: {launched:?}");
    for (id, ami) in &launched {
        ensure!(ami == &c.ami, "instance {id} was launched from {ami}, not {}", c.ami);
    }
    let usrhash = format!("usrhash={root_hash}");
    for n in c.members() {
        ensure!(
            c.cluster.console(&n.name).contains(&usrhash),
            "{}'s kernel was not started with {usrhash} ({})",
            n.name,
            c.cluster.console_log(&n.name).display()
        );
    }
    Ok(())
}

/// d. A controller (TEST-ONLY ci profile) boots against the etcd
/// cluster: its bootstrap finds the members by tags and reaches them with
/// the API server's etcd client certificate from its bundle (`etcd
/// check: ok`), then configures the control plane; keel-join.service
/// applies the join objects (bootstrap-token Secret, node bootstrap RBAC)
/// by server-side apply to the API server TEST DOUBLE, which records them
/// (a real kube-apiserver's acceptance cannot be shown here). From the host, the
/// certificate the controller was given (its bundle, fetched and opened
/// with the controller's KMS context) reads and writes the cluster.
async fn a_controller_reaches_etcd_with_its_client_certificate(c: &mut EtcdCluster) -> Result<()> {
    let image = images::image(Role::Controller).context("building the controller image")?;
    let ami = c.cluster.account.register_image("keel-controller-ci", Role::Controller).await?;
    let ud = c.cluster.user_data(Role::Controller, c.size);
    c.cluster.add_node_with("controller0", Role::Controller, &ami, Some(&ud)).await?;
    c.cluster.serve_dhcp()?;
    c.cluster.boot("controller0", &image.path)?;
    let t = c.cluster.wait_all(
        &["controller0"],
        "keel-bootstrap: configured controller node",
        &[FAILED],
        DEADLINE,
        |_, _| {},
    )?;
    eprintln!("timing: controller0 configured {:.1} s after QEMU started", t[0].as_secs_f64());
    let console = c.cluster.console("controller0");
    ensure!(
        console.contains("keel-bootstrap: etcd discovery: ok"),
        "no etcd discovery line on the controller's console"
    );
    ensure!(
        console.contains("keel-bootstrap: etcd check: ok"),
        "no `etcd check: ok` on the controller's console"
    );
    // keel-join.service applies the join objects to the API server: here
    // the kube-apiserver TEST DOUBLE, which hands over to the API server
    // TEST DOUBLE binary (keel_testkit::api_server_double) once its flags
    // are checked; that double records each request on the console.
    let t = c.cluster.wait_all(
        &["controller0"],
        "keel-bootstrap: join objects applied to https://127.0.0.1:6443",
        &[
            "keel-bootstrap: failed: applying the join objects",
            "kube-apiserver-test-double: rejected",
        ],
        DEADLINE,
        |_, _| {},
    )?;
    eprintln!(
        "timing: controller0 applied the join objects {:.1} s after QEMU started",
        t[0].as_secs_f64()
    );
    let console = c.cluster.console("controller0");
    let applies: Vec<&str> =
        console.lines().filter(|l| l.contains("apiserver-double: PATCH ")).collect();
    for object in [
        "/api/v1/namespaces/kube-system/secrets/bootstrap-token-",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/keel:kubelet-bootstrap?",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/keel:node-autoapprove-bootstrap?",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/keel:node-autoapprove-certificate-rotation?",
    ] {
        ensure!(
            applies.iter().any(|l| l.contains(object)
                && l.contains("fieldManager=keel&force=true")
                && l.contains("from \"CN=keel:join-applier, O=system:masters\": 200")),
            "the API server double recorded no server-side apply of {object} by the join applier: {applies:#?}"
        );
    }
    // Its VM is not needed any more: give the CPU back.
    c.cluster.stop("controller0")?;

    let a = &c.cluster.account;
    let bundle = envelope::fetch(
        &a.s3,
        &a.kms,
        &a.bucket,
        c.cluster.assets_prefix(),
        &c.cluster.name,
        Role::Controller,
    )
    .await
    .context("fetching the controller's bundle")?;
    let file = |path: &str| {
        bundle
            .files
            .iter()
            .find(|f| f.path == path)
            .map(|f| f.contents.clone())
            .with_context(|| format!("no {path} in the controller's bundle"))
    };
    let dir = c.cluster.dir().join("controller-etcd-client");
    let creds = Credentials::write(
        &dir,
        &file(etcdctl::ETCD_CA_CRT)?,
        &file(etcdctl::APISERVER_ETCD_CLIENT_CRT)?,
        &file(etcdctl::APISERVER_ETCD_CLIENT_KEY)?,
    )?;
    let as_controller = Etcdctl::new(creds, c.endpoints());
    let health = as_controller.endpoint_health().await?;
    ensure!(
        health.len() == 3 && health.iter().all(|h| h.healthy),
        "with the controller's certificate: {health:?}"
    );
    as_controller
        .put("keel/scenario-d", "written-with-the-apiserver-etcd-client-certificate")
        .await?;
    let got = c.etcdctl().get("keel/scenario-d").await?;
    ensure!(
        got.as_deref() == Some("written-with-the-apiserver-etcd-client-certificate"),
        "read back: {got:?}"
    );
    Ok(())
}

/// t. Every member's clock follows the Amazon Time Sync Service: its
/// systemd-timesyncd (started once keel-bootstrap has ended) asks
/// 169.254.169.123, where the harness serves a TEST DOUBLE of the service
/// (an SNTP server with the host's clock).
async fn members_keep_time_with_the_amazon_time_sync_service(c: &mut EtcdCluster) -> Result<()> {
    let until = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let asked = c.cluster.asked_for_time();
        let silent: Vec<String> = c
            .members()
            .iter()
            .filter(|m| !asked.contains(&std::net::IpAddr::V4(m.private_ip)))
            .map(|m| format!("{} ({})", m.name, m.private_ip))
            .collect();
        if silent.is_empty() {
            return Ok(());
        }
        ensure!(
            std::time::Instant::now() < until,
            "no NTP request to 169.254.169.123 from {} (asked: {asked:?})",
            silent.join(", ")
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// n. The primary interface takes the MTU DHCP gives it (9001 inside a
/// VPC, as the harness's network): every member's connections to the
/// metadata service carry segments of up to 9001 - 40 bytes, where
/// networkd's default (DHCP's MTU ignored) left 1460. And a NIC attached
/// to a running member (as the Amazon VPC CNI attaches
/// secondary ENIs) is left to whoever attached it: keel-bootstrap narrowed
/// systemd-networkd to the primary interface the metadata names, so the
/// new interface asks nobody for DHCP. Before that step networkd ran DHCP
/// on every Ethernet interface, and a second default route through the
/// new ENI would have sent the node's traffic out of an interface whose
/// address it is not.
async fn a_nic_attached_later_is_left_to_whoever_attached_it(c: &mut EtcdCluster) -> Result<()> {
    const MAC: &str = "52:54:00:ee:ee:01";
    const SETTLE: Duration = Duration::from_secs(30);
    // A segment is the MTU less 40 bytes of IPv4 and TCP headers (and 12
    // of TCP timestamps): at most 1460 on a 1500-byte link.
    for m in c.members() {
        let mss = c.cluster.metadata_mss(&m.name)?;
        ensure!(
            !mss.is_empty() && mss.iter().all(|&s| s > 1460 && s <= net::MTU - 40),
            "{}: TCP segments to the metadata service of {mss:?} bytes, not the {} of MTU {}: the primary interface did not take DHCP's MTU",
            m.name,
            net::MTU - 40,
            net::MTU
        );
        eprintln!("mtu: {} sent TCP segments of {mss:?} bytes to the metadata service", m.name);
    }
    let node = c.members()[0].clone();
    let console = c.cluster.console(&node.name);
    ensure!(
        console.contains("keel-bootstrap: primary interface: ok"),
        "{}: no primary interface step on the console",
        node.name
    );
    let renamed = |text: &str| {
        text.lines().filter(|l| l.contains("virtio_net ") && l.contains("renamed from")).count()
    };
    let before = renamed(&console);
    c.cluster.plug_nic(&node.name, MAC)?;
    // The guest has it once udev has named it (the kernel's line).
    let until = std::time::Instant::now() + Duration::from_secs(180);
    while renamed(&c.cluster.console(&node.name)) == before {
        ensure!(
            std::time::Instant::now() < until,
            "{}: the plugged NIC never appeared (no second 'renamed from' line)",
            node.name
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // networkd asks for a lease within a second or two of a link it
    // manages coming up (under TCG, a few); wait well past that.
    tokio::time::sleep(SETTLE).await;
    let log = c.cluster.net.dnsmasq_log().to_ascii_lowercase();
    ensure!(
        log.contains(&format!("dhcpack(br0) {} {}", node.private_ip, node.mac)),
        "dnsmasq's log has no lease for {}'s primary interface {}:\n{log}",
        node.name,
        node.mac
    );
    ensure!(
        !log.contains(MAC),
        "{}'s second NIC {MAC} asked for DHCP: systemd-networkd manages it:\n{log}",
        node.name
    );
    Ok(())
}

/// b. Replacement: a key is written, one member's VM is powered off and
/// its instance terminated in EC2; a new instance boots, joins as a
/// member, and the dead member is removed (the new node's bootstrap does
/// both); the key is still there, read through the new member.
async fn a_replacement_joins_and_the_dead_member_is_removed(c: &mut EtcdCluster) -> Result<()> {
    c.etcdctl().put("keel/before-replacement", "kept").await?;
    let victim = c.members()[1].name.clone();
    let r = c.replace(&victim).await?;
    eprintln!(
        "timing: replacement {} configured {:.1} s after QEMU started, healthy membership after {:.1} s",
        r.new.name,
        r.timings.configured[0].1.as_secs_f64(),
        r.timings.healthy.as_secs_f64()
    );
    let members = c.etcdctl().member_list().await?;
    let dead_peer = etcdctl::peer_url(&r.dead.private_ip.to_string());
    let new_peer = etcdctl::peer_url(&r.new.private_ip.to_string());
    ensure!(members.len() == 3, "expected 3 members: {}", etcdctl::describe(&members));
    ensure!(
        !members.iter().any(|m| m.peer_urls.contains(&dead_peer) || m.name == r.dead.instance_id),
        "the dead member {} ({dead_peer}) is still listed: {}",
        r.dead.instance_id,
        etcdctl::describe(&members)
    );
    ensure!(
        members.iter().any(|m| m.peer_urls.contains(&new_peer) && m.name == r.new.instance_id),
        "the new member {} ({new_peer}) is not listed: {}",
        r.new.instance_id,
        etcdctl::describe(&members)
    );
    let console = c.cluster.console(&r.new.name);
    ensure!(
        console.contains("keel-bootstrap: etcd membership: ok"),
        "no membership line on {}'s console",
        r.new.name
    );
    let got = c.etcdctl_on(&r.new.name)?.get("keel/before-replacement").await?;
    ensure!(got.as_deref() == Some("kept"), "read through the new member {}: {got:?}", r.new.name);
    Ok(())
}

/// b2. IP reuse: a member's VM is powered off and its instance terminated;
/// the replacement instance gets the dead member's private IP (as EC2
/// hands out terminated instances' addresses). The new node must remove
/// the member that holds its peer URL under the dead instance's name
/// before it joins; the key survives.
async fn a_replacement_at_the_dead_members_ip_joins(c: &mut EtcdCluster) -> Result<()> {
    c.etcdctl().put("keel/before-ip-reuse", "kept").await?;
    let victim = c.members()[0].name.clone();
    let r = c.replace_with(&victim, true).await?;
    ensure!(r.new.private_ip == r.dead.private_ip, "the replacement got another address");
    eprintln!(
        "timing: replacement {} at the reused address {} healthy membership after {:.1} s",
        r.new.name,
        r.new.private_ip,
        r.timings.healthy.as_secs_f64()
    );
    let members = c.etcdctl().member_list().await?;
    let peer = etcdctl::peer_url(&r.new.private_ip.to_string());
    ensure!(members.len() == 3, "expected 3 members: {}", etcdctl::describe(&members));
    ensure!(
        !members.iter().any(|m| m.name == r.dead.instance_id),
        "the dead member {} is still listed: {}",
        r.dead.instance_id,
        etcdctl::describe(&members)
    );
    let holders: Vec<_> = members.iter().filter(|m| m.peer_urls.contains(&peer)).collect();
    ensure!(
        holders.len() == 1 && holders[0].name == r.new.instance_id,
        "{peer} should be held by the new member {} alone: {}",
        r.new.instance_id,
        etcdctl::describe(&members)
    );
    let got = c.etcdctl_on(&r.new.name)?.get("keel/before-ip-reuse").await?;
    ensure!(got.as_deref() == Some("kept"), "read through the new member {}: {got:?}", r.new.name);
    Ok(())
}

/// b3. Every member lost at once: a snapshot is sealed into S3 by the code
/// the members' keel-etcd-snapshot.timer runs (`Snapshots::upload`; the
/// database itself taken here with the host's etcdctl, since the timer
/// first fires 10 minutes after boot), a key is written after it, then
/// all three instances are terminated and three new ones boot. Finding no
/// cluster, no member data and a snapshot, their formation restores the
/// newest snapshot: the key written before it is there, the one written
/// after it is not, and the consoles say so.
async fn all_members_replaced_restore_the_newest_snapshot(c: &mut EtcdCluster) -> Result<()> {
    use keel_bootstrap::snapshot;
    c.etcdctl().put("keel/in-snapshot", "restored").await?;
    let first = c.members()[0].name.clone();
    let db_path = c.cluster.dir().join("snapshot.db");
    c.etcdctl_on(&first)?
        .run(&[std::ffi::OsStr::new("snapshot"), "save".as_ref(), db_path.as_os_str()])
        .await?;
    let db = std::fs::read(&db_path).with_context(|| format!("reading {}", db_path.display()))?;
    let account = &c.cluster.account;
    let bucket = account.bucket.clone();
    let prefix = c.cluster.assets_prefix().to_string();
    let key_id = snapshot::kms_key_of_bundle(&account.s3, &account.bucket, &prefix, Role::Etcd)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let snapshots = snapshot::Snapshots {
        s3: account.s3.clone(),
        kms: account.kms.clone(),
        bucket: account.bucket.clone(),
        prefix,
        cluster: c.cluster.name.clone(),
    };
    let taken = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let key = snapshots.upload(&key_id, &db, taken).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    c.etcdctl().put("keel/after-snapshot", "lost").await?;

    let (dead, t) = c.replace_all().await?;
    eprintln!(
        "timing: {} new members restored {key} and were healthy {:.1} s after the first QEMU started",
        c.members().len(),
        t.healthy.as_secs_f64()
    );
    let members = c.etcdctl().member_list().await?;
    ensure!(members.len() == 3, "expected 3 members: {}", etcdctl::describe(&members));
    for d in &dead {
        ensure!(
            !members.iter().any(|m| m.name == d.instance_id),
            "a terminated member {} is listed: {}",
            d.instance_id,
            etcdctl::describe(&members)
        );
    }
    let restored = c.members().iter().any(|n| {
        c.cluster.console(&n.name).contains(&format!("etcd restore of s3://{bucket}/{key}"))
    });
    ensure!(restored, "no new member's console says it restored {key}");
    let got = c.etcdctl().get("keel/in-snapshot").await?;
    ensure!(got.as_deref() == Some("restored"), "the key in the snapshot: {got:?}");
    let after = c.etcdctl().get("keel/after-snapshot").await?;
    ensure!(after.is_none(), "a key written after the snapshot came back: {after:?}");
    Ok(())
}
