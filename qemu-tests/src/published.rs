//! A built image published into the run's account by the real `keel
//! publish`, and read back from there: the disk the VMs then boot, under
//! the AMI `keel publish` registered, so what a scenario boots is what EC2
//! would boot.
//!
//! `keel publish` reaches moto through `keel_testkit::fault_proxy`, which
//! records the EC2 calls (not the block data) and answers the EBS block
//! size AWS answers. The AMI's root snapshot is the one keel's
//! RegisterImage call mapped to the AMI's root device: moto 5.2.5 ignores
//! RegisterImage's block device mappings, and DescribeImages reports a
//! root device `/dev/sda1` on a 15 GiB snapshot of moto's own that the EBS
//! direct API does not know (ListSnapshotBlocks fails on it); on AWS,
//! DescribeImages names the mapped snapshot. That snapshot is read back
//! block by block through the EBS direct API (`keel_testkit::readback`:
//! every block checked against the image, the unlisted ones zeros) into
//! `<work dir>/published/disk.raw`, removed with the cluster.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use keel_bootstrap::aws::display_error;
use keel_testkit::fault_proxy::{FaultProxy, Recorded};

use crate::aws::{test_config, REGION};
use crate::cluster::Cluster;
use crate::images::{self, Image};
use crate::keel;

/// Where a run keeps the publish manifest and the read-back disk.
const DIR: &str = "published";

/// The read-back disk of the run in `run_dir`.
pub fn disk_path(run_dir: &Path) -> PathBuf {
    run_dir.join(DIR).join("disk.raw")
}

/// An image published and read back.
#[derive(Debug, Clone)]
pub struct Published {
    /// The AMI `keel publish` registered.
    pub ami: String,
    /// Its root snapshot.
    pub snapshot_id: String,
    /// The snapshot read back: the volume an instance of the AMI gets.
    pub disk: PathBuf,
    /// Blocks the snapshot holds (the image's non-zero 512 KiB blocks).
    pub blocks: usize,
    pub publish_took: Duration,
    pub read_back_took: Duration,
}

/// Publishes `image` into `cluster`'s account with `keel publish` and
/// reads the registered AMI's root snapshot back into [`disk_path`].
pub async fn publish(cluster: &mut Cluster, image: &Image) -> Result<Published> {
    let dir = cluster.dir().join(DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let account = &cluster.account;
    let proxy = FaultProxy::start_recording_calls(account.endpoint())
        .context("starting the recording proxy in front of moto")?;
    let env: Vec<(String, String)> = account
        .env()
        .into_iter()
        .map(|(k, v)| if k == "AWS_ENDPOINT_URL" { (k, proxy.endpoint.clone()) } else { (k, v) })
        .collect();
    let manifest_path = dir.join("publish.json");
    let started = Instant::now();
    let stdout = keel::run_bin(
        &images::tools()?.keel,
        [OsStr::new("publish"), image.path.as_os_str()]
            .into_iter()
            .chain(["--regions", REGION, "--manifest-out"].map(OsStr::new))
            .chain([manifest_path.as_os_str()]),
        &env,
    )?;
    let publish_took = started.elapsed();
    let manifest: serde_json::Value = serde_json::from_str(&stdout)
        .with_context(|| format!("keel publish printed no manifest: {stdout}"))?;
    let region = &manifest["regions"][REGION];
    let ami = region["ami-id"]
        .as_str()
        .with_context(|| format!("the publish manifest has no {REGION} ami-id: {manifest}"))?
        .to_string();
    ensure!(region["reused"] == false, "keel publish reused {ami} in a fresh account: {manifest}");

    let requests = proxy.requests();
    let registered = registered_root_snapshot(&requests)?;
    let described = account
        .ec2
        .describe_images()
        .image_ids(&ami)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("DescribeImages {ami}: {}", display_error(&e)))?;
    let found = described.images().first().with_context(|| format!("no AMI {ami}"))?;
    ensure!(
        found.name() == Some(registered.name.as_str()),
        "AMI {ami} is named {:?}, but keel's RegisterImage call named {}",
        found.name(),
        registered.name
    );
    ensure!(
        found.state().map(|s| s.as_str()) == Some("available"),
        "AMI {ami} is {:?}",
        found.state()
    );
    ensure!(
        region["snapshot-id"].as_str() == Some(registered.snapshot_id.as_str()),
        "the publish manifest names snapshot {}, RegisterImage mapped {} to the root device",
        region["snapshot-id"],
        registered.snapshot_id
    );

    let ebs = aws_sdk_ebs::Client::new(&test_config(&proxy.endpoint).await);
    let disk = disk_path(cluster.dir());
    cluster.remove_with_cluster(disk.clone());
    let started = Instant::now();
    let back = keel_testkit::readback::read_back(&ebs, &registered.snapshot_id, &image.path, &disk)
        .await
        .with_context(|| format!("reading back the root snapshot of {ami}"))?;
    Ok(Published {
        ami,
        snapshot_id: registered.snapshot_id,
        disk,
        blocks: back.listed.len(),
        publish_took,
        read_back_took: started.elapsed(),
    })
}

/// What keel's RegisterImage call asked for.
#[derive(Debug)]
struct Registered {
    name: String,
    snapshot_id: String,
}

/// The one RegisterImage call among `requests`: its name and the snapshot
/// of the block device mapping for its root device.
fn registered_root_snapshot(requests: &[Recorded]) -> Result<Registered> {
    let calls: Vec<&Recorded> = requests
        .iter()
        .filter(|r| r.ec2_action().as_deref() == Some("RegisterImage") && r.status == 200)
        .collect();
    let [call] = calls.as_slice() else {
        bail!("expected one successful RegisterImage call, keel publish made {}", calls.len());
    };
    let param = |key: &str| {
        call.form_param(key).with_context(|| format!("keel's RegisterImage call has no {key}"))
    };
    let name = param("Name")?;
    let root = param("RootDeviceName")?;
    for n in 1.. {
        let Some(device) = call.form_param(&format!("BlockDeviceMapping.{n}.DeviceName")) else {
            break;
        };
        if device == root {
            let snapshot_id = param(&format!("BlockDeviceMapping.{n}.Ebs.SnapshotId"))?;
            return Ok(Registered { name, snapshot_id });
        }
    }
    bail!("keel's RegisterImage call maps no snapshot to its root device {root}")
}
