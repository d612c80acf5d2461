//! The cluster harness without VMs: network, emulated AWS account and node
//! registration composed, checked from the host and from inside the VM
//! network, and removed on drop. Needs root, moto and dnsmasq.

use std::net::TcpStream;
use std::path::Path;

use keel_bootstrap::{envelope, Role};
use keel_qemu_tests::cluster::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_are_leased_found_by_tags_dropped_when_terminated_and_assets_open_per_role() {
    let (netns, moto_addr, dir);
    {
        let mut c = Cluster::start("harness", "kt").await.unwrap();
        netns = c.net.netns().to_string();
        dir = c.dir().to_path_buf();
        assert!(dir.ends_with(format!("qemu-runs/harness-{}", std::process::id())), "{}", dir.display());

        let etcd_ami = c.account.register_image("keel-etcd-local", Role::Etcd).await.unwrap();
        let worker_ami = c.account.register_image("keel-worker-local", Role::Worker).await.unwrap();
        assert_ne!(etcd_ami, worker_ami);
        for name in ["etcd0", "etcd1", "etcd2"] {
            c.add_node(name, Role::Etcd, &etcd_ami).await.unwrap();
        }
        let worker = c.add_node("worker0", Role::Worker, &worker_ami).await.unwrap();
        assert!(c.add_node("etcd0", Role::Etcd, &etcd_ami).await.is_err(), "duplicate node name accepted");
        c.serve_dhcp().unwrap();

        // Every node has its own lease: MAC -> private IP.
        let conf = std::fs::read_to_string(dir.join(format!("{netns}-dnsmasq.conf"))).unwrap();
        for n in c.nodes() {
            assert!(conf.contains(&format!("dhcp-host={},{},", n.mac, n.private_ip)), "{}: {conf}", n.name);
            assert!(n.hostname.starts_with(&format!("ip-{}", n.private_ip.to_string().replace('.', "-"))));
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
        assert!(left.iter().all(|(id, _)| *id != gone.instance_id), "{} still listed", gone.instance_id);
        // A replacement gets a fresh address and lease; dnsmasq restarts.
        let new = c.add_node("etcd3", Role::Etcd, &etcd_ami).await.unwrap();
        assert!(c.nodes().iter().filter(|n| n.name != "etcd3").all(|n| n.private_ip != new.private_ip));
        c.serve_dhcp().unwrap();
        assert_eq!(c.account.live_members(Role::Etcd).await.unwrap().len(), 3);

        // The asset bucket and KMS key exist.
        c.account.s3.head_bucket().bucket(&c.account.bucket).send().await.expect("asset bucket");
        let key = c.account.kms.describe_key().key_id(&c.account.kms_key_id).send().await.unwrap();
        assert!(key.key_metadata().unwrap().enabled(), "asset key disabled");

        // The assets, made and published with the keel binary, open with
        // each role's encryption context from the guests' endpoint.
        let assets = c.init_assets("api.kt.internal").unwrap();
        c.publish_assets(&assets).unwrap();
        for role in Role::ALL {
            let b = envelope::fetch(&c.account.s3, &c.account.kms, &c.account.bucket, c.assets_prefix(), "kt", role)
                .await
                .unwrap_or_else(|e| panic!("{role} bundle: {e}"));
            assert_eq!(b.role, role);
            assert!(!b.files.is_empty(), "{role} bundle is empty");
        }

        // A guest on the VM network reaches moto at the same endpoint.
        let out = c
            .net
            .command("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", &format!("{}/moto-api/", c.account.endpoint())])
            .output()
            .expect("running curl in the namespace");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{}", String::from_utf8_lossy(&out.stderr));
        moto_addr = c.account.endpoint().trim_start_matches("http://").to_string();
    }
    assert!(!Path::new(&format!("/run/netns/{netns}")).exists(), "namespace {netns} left behind");
    assert!(TcpStream::connect(&moto_addr).is_err(), "moto still answers on {moto_addr}");
    assert!(dir.join(format!("{netns}-dnsmasq.log")).exists(), "dnsmasq's log is left for debugging");
}
