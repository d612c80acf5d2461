//! The cluster harness without VMs: network, emulated AWS account, node
//! registration, metadata service and assets composed, checked from the
//! host and from inside the VM network (with each guest's source address),
//! and removed on drop. Needs root, moto, dnsmasq and curl.

use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;

use keel_bootstrap::envelope;
use keel_contract::userdata::UserData;
use keel_contract::Role;
use keel_qemu_tests::cluster::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_are_leased_found_by_tags_dropped_when_terminated_and_assets_open_per_role() {
    let (netns, moto_addr, dir);
    {
        let mut c = Cluster::start("harness", "kt").await.unwrap();
        netns = c.net.netns().to_string();
        dir = c.dir().to_path_buf();
        assert!(
            dir.ends_with(format!("qemu-runs/harness-{}", std::process::id())),
            "{}",
            dir.display()
        );

        let etcd_ami = c.account.register_image("keel-etcd-ci", Role::Etcd).await.unwrap();
        let worker_ami = c.account.register_image("keel-worker-ci", Role::Worker).await.unwrap();
        assert_ne!(etcd_ami, worker_ami);
        let etcd_ud = c.user_data(Role::Etcd, 3);
        for name in ["etcd0", "etcd1", "etcd2"] {
            c.add_node_with(name, Role::Etcd, &etcd_ami, Some(&etcd_ud)).await.unwrap();
        }
        let worker = c.add_node("worker0", Role::Worker, &worker_ami).await.unwrap();
        c.serve_metadata().unwrap();
        assert!(
            c.add_node("etcd0", Role::Etcd, &etcd_ami).await.is_err(),
            "duplicate node name accepted"
        );
        c.serve_dhcp().unwrap();

        // Every node has its own lease: MAC -> private IP.
        let conf = std::fs::read_to_string(dir.join(format!("{netns}-dnsmasq.conf"))).unwrap();
        for n in c.nodes() {
            assert!(
                conf.contains(&format!("dhcp-host={},{},", n.mac, n.private_ip)),
                "{}: {conf}",
                n.name
            );
            assert!(n
                .hostname
                .starts_with(&format!("ip-{}", n.private_ip.to_string().replace('.', "-"))));
        }

        // Discovery by tags sees the etcd instances with their IPs.
        let mut want: Vec<_> = c
            .nodes()
            .iter()
            .filter(|n| n.role == Role::Etcd)
            .map(|n| (n.instance_id.clone(), n.private_ip.to_string()))
            .collect();
        want.sort();
        assert_eq!(want.len(), 3);
        assert_eq!(c.account.live_members(Role::Etcd).await.unwrap(), want);
        assert_eq!(
            c.account.live_members(Role::Worker).await.unwrap(),
            vec![(worker.instance_id.clone(), worker.private_ip.to_string())]
        );

        // Terminated instances drop out of the pending/running filter.
        let gone = c.terminate("etcd1").await.unwrap();
        let left = c.account.live_members(Role::Etcd).await.unwrap();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(
            left.iter().all(|(id, _)| *id != gone.instance_id),
            "{} still listed",
            gone.instance_id
        );
        // A replacement gets a fresh address and lease; dnsmasq restarts.
        let new = c.add_node_with("etcd3", Role::Etcd, &etcd_ami, Some(&etcd_ud)).await.unwrap();
        assert!(c
            .nodes()
            .iter()
            .filter(|n| n.name != "etcd3")
            .all(|n| n.private_ip != new.private_ip));
        c.serve_dhcp().unwrap();
        assert_eq!(c.account.live_members(Role::Etcd).await.unwrap().len(), 3);

        // The asset bucket and KMS key exist.
        c.account.s3.head_bucket().bucket(&c.account.bucket).send().await.expect("asset bucket");
        let key = c.account.kms.describe_key().key_id(&c.account.kms_key_id).send().await.unwrap();
        assert!(key.key_metadata().unwrap().enabled(), "asset key disabled");

        // The assets, made and published with the keel binary, open with
        // each role's encryption context from the guests' endpoint.
        let assets = c.init_assets().unwrap();
        c.publish_assets(&assets).unwrap();
        for role in Role::ALL {
            let b = envelope::fetch(
                &c.account.s3,
                &c.account.kms,
                &c.account.bucket,
                c.assets_prefix(),
                "kt",
                role,
            )
            .await
            .unwrap_or_else(|e| panic!("{role} bundle: {e}"));
            assert_eq!(b.role, role);
            assert!(!b.files.is_empty(), "{role} bundle is empty");
        }

        // A guest on the VM network reaches moto at the same endpoint.
        let out = c
            .net
            .command("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("{}/moto-api/", c.account.endpoint()),
            ])
            .output()
            .expect("running curl in the namespace");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "200",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // One metadata service on 169.254.169.254:80 answers each guest
        // with its own identity, chosen by the source address: nodes added
        // before and after it started, none for a terminated node.
        for name in ["etcd0", "etcd3"] {
            let n = c.node(name).unwrap().clone();
            assert_eq!(
                metadata_get(&c, n.private_ip, "meta-data/instance-id"),
                (200, n.instance_id.clone())
            );
            assert_eq!(
                metadata_get(&c, n.private_ip, "meta-data/local-ipv4"),
                (200, n.private_ip.to_string())
            );
            let (code, ud) = metadata_get(&c, n.private_ip, "user-data");
            assert_eq!(code, 200, "{name} user data");
            let ud = UserData::parse(ud.as_bytes(), Role::Etcd).unwrap();
            assert_eq!(ud.aws, None, "nodes reach AWS by its endpoint names, no override");
            assert_eq!(
                (ud.assets.bucket.as_str(), ud.etcd.expected_members),
                (c.account.bucket.as_str(), 3)
            );
        }
        assert_eq!(
            metadata_get(&c, worker.private_ip, "user-data").0,
            404,
            "worker0 has no user data"
        );
        assert_eq!(
            metadata_get(&c, gone.private_ip, "meta-data/instance-id").0,
            404,
            "terminated etcd1"
        );
        moto_addr = c.account.endpoint().trim_start_matches("http://").to_string();
    }
    assert!(!Path::new(&format!("/run/netns/{netns}")).exists(), "namespace {netns} left behind");
    assert!(TcpStream::connect(&moto_addr).is_err(), "moto still answers on {moto_addr}");
    assert!(
        dir.join(format!("{netns}-dnsmasq.log")).exists(),
        "dnsmasq's log is left for debugging"
    );
}

/// AWS by its real names, as a node reaches it (the path every VM boot
/// takes, checked here from the host side of the VM network in seconds):
/// the network's resolver answers the regional endpoint names, virtual-
/// hosted bucket names included, with the TLS proxy's address and refuses
/// other names; keel-bootstrap's node configuration (no endpoint override,
/// names from a resolv.conf naming that resolver, the test CA as its only
/// trust) then calls S3, KMS and EC2 through the proxy, and moto answers
/// each by the request's signing scope and Host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_is_reached_by_its_endpoint_names_through_the_resolver_and_the_tls_proxy() {
    use keel_bootstrap::aws;
    use keel_bootstrap::dns::Dns;
    use keel_qemu_tests::aws::REGION;
    use keel_qemu_tests::aws_names::endpoint_name;
    use keel_testkit::imds::{ImdsEmulator, Instance};

    let mut c = Cluster::start("harness-names", "kn").await.unwrap();
    c.serve_dhcp().unwrap();
    let gw = c.net.gateway();
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc/ssl/certs")).unwrap();
    std::fs::write(root.path().join("etc/resolv.conf"), format!("nameserver {gw}\n")).unwrap();
    let ca = keel_testkit::test_ca::TestCa::machine().unwrap();
    std::fs::write(root.path().join(aws::TRUST_STORE), &ca.cert_pem).unwrap();

    let dns = Dns::from_root(root.path());
    let bucket_host = format!("{}.{}", c.account.bucket, endpoint_name("s3"));
    for name in [endpoint_name("ec2"), endpoint_name("kms"), bucket_host.clone()] {
        assert_eq!(dns.lookup(&name).await.unwrap(), vec![std::net::IpAddr::V4(gw)], "{name}");
    }
    assert!(dns.lookup("example.com").await.is_err(), "the network's resolver has no way out");

    let imds = ImdsEmulator::start(Instance::with_credentials_in(REGION)).unwrap();
    let target = aws::Target { region: Some(REGION.into()), endpoint_url: None };
    let sdk = aws::node_sdk_config(&target, &imds.base_url(), root.path()).await.unwrap();
    let s3 = aws::s3_client(&sdk);
    s3.put_object()
        .bucket(&c.account.bucket)
        .key("names/probe")
        .body(b"probe".to_vec().into())
        .send()
        .await
        .unwrap_or_else(|e| panic!("S3 PutObject: {}", aws::display_error(&e)));
    let got = s3
        .get_object()
        .bucket(&c.account.bucket)
        .key("names/probe")
        .send()
        .await
        .unwrap_or_else(|e| panic!("S3 GetObject: {}", aws::display_error(&e)));
    assert_eq!(got.body.collect().await.unwrap().into_bytes().as_ref(), b"probe");
    aws_sdk_kms::Client::new(&sdk)
        .describe_key()
        .key_id(&c.account.kms_key_id)
        .send()
        .await
        .unwrap_or_else(|e| panic!("KMS DescribeKey: {}", aws::display_error(&e)));
    aws_sdk_ec2::Client::new(&sdk)
        .describe_vpcs()
        .send()
        .await
        .unwrap_or_else(|e| panic!("EC2 DescribeVpcs: {}", aws::display_error(&e)));

    let names: Vec<String> =
        c.aws_names.connections().into_iter().filter_map(|c| c.server_name).collect();
    for want in [&bucket_host, &endpoint_name("kms"), &endpoint_name("ec2")] {
        assert!(names.contains(want), "{want} not among the proxy's TLS names {names:?}");
    }
    let log = c.net.dnsmasq_log();
    assert!(
        log.contains(&format!("query[A] {} from {}", endpoint_name("kms"), c.net.host_ip())),
        "{log}"
    );
}

/// GETs `latest/<path>` from 169.254.169.254 inside the VM network with
/// `ip` as the source address (IMDSv2: token first), as a guest would.
fn metadata_get(c: &Cluster, ip: Ipv4Addr, path: &str) -> (u16, String) {
    // Give the guest's address to the bridge for the request's source
    // (no VM runs here); it may be there from an earlier call.
    let _ = c.net.command("ip").args(["addr", "add", &format!("{ip}/32"), "dev", "br0"]).output();
    let curl = |args: &[&str]| {
        let out = c
            .net
            .command("curl")
            .args(["-sS", "--max-time", "10", "--interface", &ip.to_string()])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let token = curl(&[
        "-X",
        "PUT",
        "-H",
        "X-aws-ec2-metadata-token-ttl-seconds: 60",
        "http://169.254.169.254/latest/api/token",
    ]);
    let out = curl(&[
        "-w",
        "\\n%{http_code}",
        "-H",
        &format!("X-aws-ec2-metadata-token: {token}"),
        &format!("http://169.254.169.254/latest/{path}"),
    ]);
    let (body, code) = out.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}
