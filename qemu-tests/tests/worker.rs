//! Scenario c of the QEMU suite: a worker boots from the worker image
//! against the emulated account (moto, the metadata emulator, the VM
//! network of `keel_qemu_tests::cluster`), reaching S3 and KMS by their
//! real endpoint names over verified HTTPS: keel-bootstrap configures it,
//! containerd starts with the configuration keel-bootstrap wrote and
//! answers on its socket with the CRI plugin loaded, the CNI network list
//! is in place, the kernel holds the settings a Kubernetes node needs
//! (the image's sysctl.d file; br_netfilter's once containerd.service has
//! loaded it), and the kubelet accepts the rendered configuration and
//! certificates.
//!
//! The kubelet in this image is a TEST DOUBLE, not Kubernetes
//! (`fixtures/doubles/k8s-test-double`, installed as /usr/bin/kubelet by
//! the TEST-ONLY profile `fixtures/profiles/ci.toml`): no kubelet
//! binary can be had on these machines (Debian packages none; upstream
//! downloads are not reachable). kubelet.service starts it exactly as it
//! would start kubelet 1.36, and it rejects what kubelet 1.36 rejects at
//! start-up: it parses the flags, reads the KubeletConfiguration, the
//! client CA and the bootstrap kubeconfig, reaches containerd's CRI
//! plugin with `ctr` at the configured endpoint and checks the CNI
//! network containerd loads (tests/doubles.rs shows each refusal). There
//! is no API server here, so nothing registers: "accepted" means the node
//! is ready to join, not that it joined.
//!
//! Needs root, QEMU, OVMF, moto and the worker image (built here from the
//! Debian mirror or a warm ~/.cache/keel; scripts/setup). One VM boot.

use std::time::Duration;

use keel_contract::userdata::Kubelet;
use keel_contract::Role;
use keel_qemu_tests::aws_names::endpoint_name;
use keel_qemu_tests::cluster::Cluster;
use keel_qemu_tests::images;
use keel_qemu_tests::vm::tail;

/// A first boot under TCG on a loaded 2-core machine, to keel-bootstrap's
/// last line.
const BOOT: Duration = Duration::from_secs(900);
/// From there to the kubelet's verdict: containerd and the kubelet start.
const KUBELET: Duration = Duration::from_secs(600);
const CONFIGURED: &str = "keel-bootstrap: configured worker node";
const BOOTSTRAP_FAILED: &str = "keel-bootstrap: failed";
const ACCEPTED: &str = "kubelet-test-double: config accepted: ";
const REJECTED: &str = "kubelet-test-double: rejected: ";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_containerd_with_cri_and_the_kubelet_test_double_accepts_its_configuration() {
    let image = images::image(Role::Worker).expect("building the worker image");
    let mut c = Cluster::start("worker", "qt").await.expect("starting the cluster (needs root)");
    let assets = c.init_assets().unwrap();
    c.publish_assets(&assets).unwrap();
    c.serve_metadata().unwrap();
    let ami = c.account.register_image("keel-worker-ci", Role::Worker).await.unwrap();
    let mut ud = c.user_data(Role::Worker, 1);
    ud.kubelet = Some(Kubelet {
        max_pods: None,
        cluster_dns: None,
        cluster_domain: None,
        node_labels: vec!["keel.dev/pool=general".into()],
    });
    let node = c.add_node_with("worker0", Role::Worker, &ami, Some(&ud)).await.unwrap();
    c.serve_dhcp().unwrap();

    c.boot("worker0", &image.path).unwrap();
    let bootstrap = c.wait_for_any("worker0", &[CONFIGURED, BOOTSTRAP_FAILED], BOOT).unwrap();
    assert_eq!(
        bootstrap,
        0,
        "keel-bootstrap failed on the worker:\n{}",
        tail(&c.console("worker0"), 40)
    );
    let configured_after = c.uptime("worker0").unwrap();
    let verdict = c.wait_for_any("worker0", &[ACCEPTED, REJECTED], KUBELET).unwrap();
    let accepted_after = c.uptime("worker0").unwrap();
    let console = c.console("worker0");
    assert_eq!(
        verdict,
        0,
        "the kubelet test double refused the worker's configuration:\n{}",
        tail(&console, 40)
    );

    for step in ["containerd config", "kubelet config"] {
        assert!(
            console.contains(&format!("keel-bootstrap: {step}: ok")),
            "no {step} step:\n{}",
            tail(&console, 40)
        );
    }
    let line =
        console.lines().find_map(|l| l.split_once(ACCEPTED).map(|(_, s)| s.trim_end())).unwrap();
    for part in [
        format!("node {} ({}), taints none,", node.hostname, node.private_ip),
        // The containerd of the CI profile (2.1, repacked from Debian) read
        // the configuration keel-bootstrap wrote in its schema (version 3).
        "containerd 2.1.9+unknown at unix:///run/containerd/containerd.sock with CRI plugin ok".to_string(),
        "CNI network keel (host-local bridge portmap) from containerd's template /etc/containerd/cni.conflist.template with the Node's spec.podCIDR".to_string(),
        "client CA /etc/kubernetes/pki/ca.crt".to_string(),
        format!("request a client certificate for node {} from https://{}:6443 with the bootstrap token", node.hostname, c.api_host()),
        // The image's sysctl.d file, applied at boot, holds what the
        // kubelet needs (it is told to refuse otherwise); containerd.service
        // loaded br_netfilter and applied its setting.
        "kernel defaults protected and as kubelet needs them".to_string(),
        "pod network: ip_forward 1, bridge-nf-call-iptables 1, inotify max_user_instances 8192".to_string(),
    ] {
        assert!(line.contains(&part), "{part:?} not in the kubelet test double's line: {line}");
    }
    // Every AWS call by its real name: the bundle from the virtual-hosted
    // bucket, Decrypt from KMS, each verified against the test CA.
    let names = c.aws_names_used("worker0").unwrap();
    for want in [format!("{}.{}", c.account.bucket, endpoint_name("s3")), endpoint_name("kms")] {
        assert!(names.contains(&want), "worker0 did not reach {want}: {names:?}");
    }
    eprintln!("worker: keel-bootstrap configured after {configured_after:?}, kubelet test double accepted after {accepted_after:?} (QEMU start)");
}
