//! Scenario e of issue 7: bad inputs stop a node, loudly and cleanly.
//! Each test boots ONE etcd VM in its own cluster (network, moto, metadata
//! emulator) and stops it as soon as its console has said what went wrong:
//! - a changed byte of /usr stops the boot in the initrd (dm-verity):
//!   /usr is never mounted and keel-bootstrap never runs;
//! - user data naming another role, a missing bundle, and a bundle sealed
//!   with a KMS key the node cannot use each fail keel-bootstrap with its
//!   step line and its final line, naming what failed (roles; bucket and
//!   key; KMS key) and quoting no secret, and leave nothing half-configured:
//!   no `configured` line, and systemd reports etcd.service held back
//!   (keel-bootstrap-failed.service prints its status on the console).
//!
//! Needs root, QEMU, OVMF, moto, dnsmasq and the etcd image (built by the
//! test when missing). Run with `--test-threads=2`: two VMs at a time.

use std::path::Path;
use std::time::Duration;

use keel_bootstrap::aws::{sdk_config, Target};
use keel_contract::userdata::UserData;
use keel_contract::Role;
use keel_qemu_tests::aws::{ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY};
use keel_qemu_tests::cluster::Cluster;
use keel_qemu_tests::images::{self, Image};
use keel_qemu_tests::{keel, vm};

/// Generous: a first boot under TCG with another VM and other builds on
/// two cores.
const BOOT: Duration = Duration::from_secs(900);
/// The node in every test.
const NODE: &str = "etcd0";
/// The cluster name in every test (each test has its own account).
const CLUSTER: &str = "qe";
const FAILED: &str = "keel-bootstrap: failed: ";
const CONFIGURED: &str = "keel-bootstrap: configured";
/// What keel-bootstrap-failed.service prints for a service that systemd
/// did not start (`systemctl status`).
const HELD_BACK: &str = "Active: inactive (dead)";

fn etcd_image() -> Image {
    images::image(Role::Etcd).expect("building the etcd image")
}

/// A cluster with the etcd AMI registered and node `etcd0` added with the
/// user data `user_data` makes, metadata and DHCP served; not booted.
async fn cluster_with_node(test: &str, user_data: impl FnOnce(&Cluster) -> UserData) -> Cluster {
    let mut c = Cluster::start(test, CLUSTER).await.expect("starting the cluster");
    let ami = c.account.register_image("keel-etcd-ci", Role::Etcd).await.unwrap();
    let ud = user_data(&c);
    c.add_node_with(NODE, Role::Etcd, &ami, Some(&ud)).await.unwrap();
    c.serve_metadata().unwrap();
    c.serve_dhcp().unwrap();
    c
}

/// Boots the node until keel-bootstrap's last word and systemd's report
/// on etcd.service, then stops it. Checks that the bootstrap failed at
/// `step`, that the final line repeats the step line, that nothing says
/// `configured`, that etcd.service was held back, and that the console
/// quotes no secret of `assets`. Returns the reason the step gave.
fn boot_until_bootstrap_fails(
    c: &mut Cluster,
    image: &Path,
    step: &str,
    assets: Option<&Path>,
) -> String {
    c.boot(NODE, image).expect("booting the node");
    let which =
        c.wait_for_any(NODE, &[FAILED, CONFIGURED], BOOT).expect("keel-bootstrap's last line");
    assert_eq!(which, 0, "keel-bootstrap configured the node:\n{}", vm::tail(&c.console(NODE), 40));
    let held_back = c.wait_for(NODE, HELD_BACK, BOOT);
    c.stop(NODE).unwrap();
    let console = plain(&c.console(NODE));
    held_back.unwrap_or_else(|e| panic!("no report of etcd.service held back: {e:#}"));

    let step_prefix = format!("keel-bootstrap: {step}: failed: ");
    let why = line_after(&console, &step_prefix)
        .unwrap_or_else(|| panic!("no {step_prefix:?} line:\n{}", vm::tail(&console, 60)));
    assert_eq!(
        line_after(&console, FAILED).unwrap(),
        format!("{step}: {why}"),
        "the final line does not repeat the failed step"
    );
    assert!(!console.contains(CONFIGURED), "{console}");

    // systemd's own status of the role's service, printed after the
    // failure: Keel's unit (not a package's), and not started.
    let report = &console[console.find(FAILED).unwrap()..];
    let unit = report
        .find("etcd.service - ")
        .unwrap_or_else(|| panic!("no status of etcd.service:\n{report}"));
    assert!(report[unit..].contains(HELD_BACK), "etcd.service is not inactive:\n{report}");
    assert!(
        report.contains("etcd.service - etcd (configured by keel-bootstrap)"),
        "etcd.service is not Keel's unit:\n{report}"
    );
    assert!(
        !report.contains("Active: active"),
        "a service is running after the bootstrap failed:\n{report}"
    );

    assert_no_secret(&console, assets);
    why
}

/// The rest of the first console line containing `prefix`, after it.
fn line_after(console: &str, prefix: &str) -> Option<String> {
    console.lines().find_map(|l| l.split_once(prefix).map(|(_, rest)| rest.trim_end().to_string()))
}

/// No key material and no metadata token on the console: no PEM private
/// key, no line of any private key or token file of the cluster's assets,
/// no IMDSv2 token the emulator issued.
fn assert_no_secret(console: &str, assets: Option<&Path>) {
    assert!(!console.contains("PRIVATE KEY"), "a private key on the console");
    assert!(!console.contains("emulated-token-"), "a metadata token on the console");
    let Some(dir) = assets else { return };
    let mut secrets = 0;
    for path in walk(dir) {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !(name.ends_with(".key") || name.contains("token")) {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        // Text secrets line by line (PEM bodies, tokens); binary ones
        // (fingerprint.key) as hex.
        let needles: Vec<String> = match String::from_utf8(bytes) {
            Ok(text) => text
                .lines()
                .map(str::trim)
                .filter(|l| l.len() >= 16 && !l.starts_with("-----"))
                .map(str::to_string)
                .collect(),
            Err(e) => vec![e.into_bytes().iter().map(|b| format!("{b:02x}")).collect()],
        };
        for needle in needles {
            secrets += 1;
            assert!(!console.contains(&needle), "a line of {} on the console", path.display());
        }
    }
    assert!(secrets > 0, "no private key or token found under {}", dir.display());
}

/// `text` without terminal escape sequences (systemd colours unit names
/// in its status lines).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            chars.next();
            // Parameters, then one final byte in '@'..='~'.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A changed byte of /usr: dm-verity refuses the block, /usr is never
/// mounted, keel-init says so (naming the partition and the root hash) and
/// stays in the initrd, and keel-bootstrap never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_usr_stops_the_boot_in_the_initrd() {
    let image = etcd_image();
    let mut c = cluster_with_node("failures-tampered", |c| c.user_data(Role::Etcd, 1)).await;
    let assets = c.init_assets().unwrap();
    c.publish_assets(&assets).unwrap();
    let tampered = c.dir().join("tampered.raw");
    vm::tamper_usr(&image.path, image.usr_offset().unwrap(), &tampered)
        .expect("tampering with a copy");
    c.boot(NODE, &tampered).expect("booting the node");
    let which = c.wait_for_any(NODE, &["keel-init: ", "keel-bootstrap:"], BOOT);
    // The verdict follows keel-init's first lines within seconds.
    let _ = c.wait_for_any(NODE, &["staying in the initrd"], BOOT);
    c.stop(NODE).unwrap();
    let _ = std::fs::remove_file(&tampered);
    let console = plain(&c.console(NODE));
    assert_eq!(
        which.expect("the initrd's verdict on /usr"),
        0,
        "keel-bootstrap ran on a tampered /usr:\n{console}"
    );
    let corrupted = console
        .lines()
        .any(|l| l.contains("device-mapper: verity: ") && l.trim_end().ends_with(" is corrupted"));
    assert!(corrupted, "no dm-verity corruption report:\n{}", vm::tail(&console, 60));
    let hash = image.manifest().unwrap()["verity-root-hash"].as_str().unwrap().to_string();
    let failed = console
        .lines()
        .find(|l| l.contains("keel-init: ") && l.contains("FAILED: "))
        .unwrap_or_else(|| panic!("no keel-init failure line:\n{}", vm::tail(&console, 60)));
    for what in ["mounting /dev/dm-", "/usr on /dev/", &format!("does not match root hash {hash}")]
    {
        assert!(failed.contains(what), "{what:?} not in {failed:?}");
    }
    assert!(console.contains("staying in the initrd"), "{}", vm::tail(&console, 60));
    // The initrd never switched to the real root: systemd never greeted,
    // keel-bootstrap never printed.
    assert!(
        !console.contains("Welcome to Debian"),
        "the tampered image left the initrd:\n{console}"
    );
    assert!(!console.contains("keel-bootstrap"), "{console}");
}

/// Worker user data on an etcd image: refused at the user data step, with
/// both role names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_data_for_another_role_fails_the_bootstrap() {
    let image = etcd_image();
    let mut c = cluster_with_node("failures-wrong-role", |c| c.user_data(Role::Worker, 1)).await;
    let assets = c.init_assets().unwrap();
    c.publish_assets(&assets).unwrap();
    let why = boot_until_bootstrap_fails(&mut c, &image.path, "user data", Some(&assets));
    assert_eq!(why, "user data is for role worker but this image is a etcd image");
}

/// Nothing published under the user data's prefix: the assets step names
/// the bucket and key S3 did not have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bundle_fails_the_bootstrap() {
    let image = etcd_image();
    let mut c = cluster_with_node("failures-no-bundle", |c| c.user_data(Role::Etcd, 1)).await;
    let why = boot_until_bootstrap_fails(&mut c, &image.path, "assets", None);
    let object = format!("s3://{}/{CLUSTER}/etcd.bundle", c.account.bucket);
    assert!(why.starts_with(&format!("S3 GetObject {object}: ")), "{why}");
    assert!(why.contains("NoSuchKey"), "{why}");
}

/// The bundles sealed with a KMS key of another region (us-east-1) than
/// the node's (eu-central-1), as when the assets bucket is replicated into
/// the nodes' region but its single-Region key is not: the node's KMS has
/// no such key and refuses the Decrypt (moto enforces KMS regions as AWS
/// does). moto's S3 serves a bucket to a client of any region, so the test
/// makes that state in one step, `keel assets publish --region us-east-1`.
/// The line names the bundle and the key's ARN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_sealed_with_a_key_of_another_region_fails_the_bootstrap() {
    const KEY_REGION: &str = "us-east-1";
    let image = etcd_image();
    let mut c = cluster_with_node("failures-kms-key", |c| c.user_data(Role::Etcd, 1)).await;
    let target =
        Target { region: Some(KEY_REGION.into()), endpoint_url: Some(c.account.endpoint().into()) };
    let kms = aws_sdk_kms::Client::new(&keel_testkit::moto::with_keys(
        sdk_config(&target).await,
        ACCESS_KEY_ID,
        SECRET_ACCESS_KEY,
    ));
    let key = kms.create_key().description("keel assets, wrong region").send().await.unwrap();
    let key_arn = key.key_metadata().unwrap().arn().unwrap().to_string();
    assert!(key_arn.contains(&format!(":{KEY_REGION}:")), "{key_arn}");
    let assets = c.init_assets().unwrap();
    let a = &c.account;
    keel::run(
        [
            "assets",
            "publish",
            "--dir",
            assets.to_str().unwrap(),
            "--bucket",
            &a.bucket,
            "--prefix",
            CLUSTER,
            "--kms-key",
            &key_arn,
            "--region",
            KEY_REGION,
        ],
        &a.env(),
    )
    .expect("publishing with the us-east-1 key");
    assert_ne!(REGION, KEY_REGION);

    let why = boot_until_bootstrap_fails(&mut c, &image.path, "assets", Some(&assets));
    let object = format!("s3://{}/{CLUSTER}/etcd.bundle", c.account.bucket);
    assert!(
        why.starts_with(&format!(
            "bundle {object}: KMS Decrypt of the data key (KMS key {key_arn})"
        )),
        "{why}"
    );
    assert!(why.contains("AccessDenied"), "{why}");
}
