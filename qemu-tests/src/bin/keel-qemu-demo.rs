//! keel-qemu-demo: boots a Keel etcd image as an n-node cluster on this
//! machine against an emulated AWS, prints the member list and endpoint
//! health from the host's etcdctl, and tears everything down. scripts/demo
//! builds the image and the assets and runs it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use keel_qemu_tests::cluster::Cluster;
use keel_qemu_tests::etcd_cluster::EtcdCluster;
use keel_qemu_tests::{rundir, vm};

/// Boot a Keel etcd image as a cluster of QEMU VMs against an emulated AWS.
///
/// Starts a private network (network namespace, bridge, DHCP), moto's
/// server (EC2, S3, KMS) and an instance metadata emulator; publishes the
/// assets (KMS-encrypted bundles in S3); registers an AMI and one tagged
/// instance per node; boots the VMs from copy-on-write overlays of the
/// image (KVM when it works, TCG otherwise); waits until every node's
/// keel-bootstrap has configured it and the host's etcdctl sees all the
/// members healthy; prints the member list and endpoint health; then
/// stops everything (also on Ctrl-C).
///
/// The image must be a test image (built from a profile with a [test]
/// table, e.g. the ci profile, as scripts/demo does): the nodes reach the
/// emulated AWS by its real endpoint names through a TLS proxy that only
/// the test CA vouches for.
///
/// Needs root (network namespaces, tap devices), qemu-system-x86, ovmf,
/// dnsmasq-base, etcd-client and moto (scripts/setup installs them all).
/// Console logs, dnsmasq's log and each node's user data stay in --logs.
#[derive(Debug, Parser)]
#[command(name = "keel-qemu-demo", version, max_term_width = 80)]
struct Args {
    /// The keel binary (runs `keel assets publish`).
    #[arg(long, value_name = "PATH")]
    keel: PathBuf,
    /// The etcd disk image to boot (`keel build --role etcd`).
    #[arg(long, value_name = "PATH")]
    image: PathBuf,
    /// The cluster's assets (`keel assets init --cluster NAME`).
    #[arg(long, value_name = "DIR")]
    assets: PathBuf,
    /// The cluster's name: the assets' cluster and the EC2 tag value.
    #[arg(long, default_value = "demo")]
    cluster: String,
    /// How many etcd VMs to boot (each takes 1 GiB of memory).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=7))]
    nodes: u32,
    /// Where the logs go (cleared first if an earlier run left it).
    #[arg(long, value_name = "DIR")]
    logs: PathBuf,
    /// How long to wait for each stage (boot, healthy cluster), seconds.
    #[arg(long, default_value_t = 900, value_name = "SECONDS")]
    deadline: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    keel_bootstrap::aws::install_crypto_provider();
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            eprintln!("logs: {}", args.logs.display());
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<()> {
    keel_testkit::host_tools::check()?;
    for (what, path) in [("--keel", &args.keel), ("--image", &args.image)] {
        if !path.is_file() {
            bail!("{what} {}: no such file", path.display());
        }
    }
    if !args.assets.join("keel-assets.toml").is_file() {
        bail!(
            "--assets {}: not an asset directory (make one with `keel assets init`)",
            args.assets.display()
        );
    }
    // The nodes reach AWS by its names through the test CA's TLS proxy:
    // an image that does not trust that CA would fail every call.
    let manifest = args.image.with_extension("manifest.json");
    let test_image = std::fs::read(&manifest)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|m| m["test-image"] == true);
    if !test_image {
        bail!(
            "--image {}: not a test image ({} does not say \"test-image\": true); build it \
             from a profile with a [test] table, e.g. the ci profile as scripts/demo does \
             (keel-qemu-repack writes its mirrors file and the test CA beside it)",
            args.image.display(),
            manifest.display()
        );
    }
    if !rustix::process::geteuid().is_root() {
        bail!("run as root: the VMs' network needs a network namespace and tap devices");
    }
    let logs = std::path::absolute(&args.logs)
        .with_context(|| format!("resolving {}", args.logs.display()))?;
    rundir::create_at(&logs)?;
    eprintln!("cluster: accelerator {:?}; logs in {}", vm::accel(), logs.display());
    let mut cluster = Cluster::start_in(logs.clone(), &args.cluster).await?;
    cluster.use_keel(args.keel.clone());
    let deadline = Duration::from_secs(args.deadline);
    let (ec, timings) =
        EtcdCluster::form(cluster, &args.image, None, Some(&args.assets), args.nodes, deadline)
            .await?;

    let etcdctl = ec.etcdctl();
    println!("== etcd member list (etcdctl from the host, TLS with a client certificate of the cluster's etcd CA)");
    print!("{}", etcdctl.run(&["member", "list", "-w", "table"]).await?);
    println!("== endpoint health");
    print!("{}", etcdctl.run(&["endpoint", "health", "-w", "table"]).await?);
    println!("== endpoint status");
    print!("{}", etcdctl.run(&["endpoint", "status", "-w", "table"]).await?);
    println!("== timings (from each VM's QEMU start)");
    for (name, t) in &timings.configured {
        println!("{name}: keel-bootstrap configured it after {:.1} s", t.as_secs_f64());
    }
    println!("cluster healthy {:.1} s after the first VM started", timings.healthy.as_secs_f64());
    println!("== logs in {}", logs.display());
    for n in ec.cluster.nodes() {
        println!(
            "{}: {} (user data: {})",
            n.name,
            ec.cluster.console_log(&n.name).display(),
            logs.join(format!("{}.user-data.toml", n.name)).display()
        );
    }
    eprintln!("cluster: tearing down (VMs, moto, dnsmasq, network namespace)");
    drop(ec);
    eprintln!("cluster: done");
    Ok(())
}
