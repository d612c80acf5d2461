//! Image smoke tests (need root, mmdebstrap's Debian mirror or a warm
//! ~/.cache/keel, QEMU and OVMF): `keel build` makes the etcd image of the
//! TEST-ONLY `ci` profile (the production recipe, a test image); it boots under QEMU to keel-bootstrap.service and its
//! root partition grows to fill a bigger disk; worker and controller
//! images (test profile) boot too; a copy with one byte of /usr changed
//! fails dm-verity; a second build gives the same bytes; `keel inspect`
//! reads the manifest back from the image; keel-init passes the command
//! line's module parameters to the modules it loads.
//!
//! keel, the static keel-bootstrap and the images are built once per run
//! by `keel_qemu_tests::images`, into this run's target directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use keel_contract::Role;
use keel_qemu_tests::disk;
use keel_qemu_tests::images::{self, Image};
use keel_qemu_tests::vm::{self, Config, Vm};

/// Generous: a first boot under TCG on a loaded 2-core machine.
const BOOT_DEADLINE: Duration = Duration::from_secs(600);
/// keel-bootstrap's unit ran: every line it prints starts so.
const MILESTONE: &str = "keel-bootstrap:";
/// The end of systemd's console line for systemd-growfs-root.service done.
const GROWN: &str = "Grow Root File System.\r";

fn out_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("smoke").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("creating the test's directory");
    d
}

fn etcd() -> Image {
    images::image(Role::Etcd).expect("building the etcd image")
}

fn boots_to_keel_bootstrap(image: &Path, name: &str) {
    let state = out_dir(&format!("boot-{name}"));
    let mut vm = Vm::start(&Config::new(image, &state)).expect("starting the VM");
    vm.wait_for(MILESTONE, BOOT_DEADLINE).expect("boot to keel-bootstrap.service");
    let console = vm.console();
    assert!(
        !console.contains("is corrupted"),
        "verity complained on an untouched image:\n{console}"
    );
    eprintln!("{name} image reached {MILESTONE:?} after {:?}", vm.uptime());
}

/// The etcd image boots from a disk of 2 GiB, eight times the image (as an
/// EBS volume bigger than the AMI's snapshot): it reaches keel-bootstrap,
/// and after a clean power-off the root partition and its ext4 file system
/// fill the disk (systemd-repart, then systemd-growfs-root, both in the
/// real root before keel-bootstrap: keel-init, the initrd's /init, only
/// mounts it), and the boot's journal is kept on it.
#[test]
fn etcd_image_boots_to_keel_bootstrap_and_root_grows_to_fill_the_disk() {
    const DISK: u64 = 2 << 30;
    let image = etcd();
    let state = out_dir("boot-etcd");
    let overlay = state.join("disk.qcow2");
    vm::create_overlay(&image.path, &overlay, Some(DISK)).unwrap();
    let mut cfg = Config::new(&overlay, &state);
    cfg.format = "qcow2";
    cfg.snapshot = false;
    let mut vm = Vm::start(&cfg).expect("starting the VM");
    vm.wait_for(MILESTONE, BOOT_DEADLINE).expect("boot to keel-bootstrap.service");
    let console = vm.console();
    assert!(
        !console.contains("is corrupted"),
        "verity complained on an untouched image:\n{console}"
    );
    // The command line's nvme_core.io_timeout (AWS's advice for EBS) is
    // what the kernel holds: keel-init reads it back from /sys/module.
    for step in [
        "keel-init: ",
        "module parameters from the command line: nvme_core io_timeout=4294967295",
        "dm-verity device usr",
        // Under TCG keel-init skips the x86-64 sha256 (see
        // keel_init_takes_module_parameters_and_tcg_skip_from_the_command_line);
        // the kernel's line.
        r#"verity: sha256 using shash "sha256-generic""#,
        "switching to the real root",
    ] {
        assert!(console.contains(step), "no {step:?} from keel-init:\n{}", vm::tail(&console, 80));
    }
    eprintln!("etcd image reached {MILESTONE:?} after {:?}", vm.uptime());
    // keel-bootstrap starts after growing; systemd's status line says so
    // too ("Finished systemd-growfs-root.service - Grow Root File
    // System.", the unit's name in colour; "Starting" ends in "...").
    vm.wait_for(GROWN, BOOT_DEADLINE).expect("systemd-growfs-root to finish");
    vm.power_off(BOOT_DEADLINE).expect("a clean power-off");

    let raw = state.join("disk.raw");
    disk::overlay_to_raw(&overlay, &raw).unwrap();
    let parts = disk::partitions(&raw).unwrap();
    let before = disk::partitions(&image.path).unwrap();
    let root = parts
        .iter()
        .find(|p| p.name == "root")
        .unwrap_or_else(|| panic!("no root partition: {parts:?}"));
    let root_before = before.iter().find(|p| p.name == "root").unwrap();
    // GPT keeps its backup header and entries (33 sectors) at the end.
    assert_eq!(root.offset, root_before.offset, "the root partition moved");
    assert!(
        root.offset + root.size > DISK - (1 << 20),
        "root did not grow to the end of the disk: {root:?} of {DISK}"
    );
    let fs = disk::ext4_size(&raw, root.offset).unwrap();
    assert!(
        fs > root_before.size * 4 && fs <= root.size,
        "ext4 on root is {fs} bytes in a partition of {}",
        root.size
    );
    // 1 KiB blocks would stop online growth near 64 GiB.
    assert_eq!(disk::ext4_block_size(&raw, root.offset).unwrap(), 4096, "root ext4 block size");

    // The journal is kept on the root, under the machine id systemd made
    // at this first boot and kept for the next: the boot's lines are
    // there, from the kernel's (keel-init's) to keel-bootstrap's.
    let id = disk::read_from_ext4(&raw, "root", "/etc/machine-id").unwrap();
    let id = String::from_utf8_lossy(&id).trim().to_string();
    assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "/etc/machine-id: {id:?}");
    let journal =
        disk::read_from_ext4(&raw, "root", &format!("/var/log/journal/{id}/system.journal"))
            .unwrap();
    for message in ["SYSLOG_IDENTIFIER=keel-init", "MESSAGE=keel-bootstrap: image role: ok"] {
        assert!(
            journal.windows(message.len()).any(|w| w == message.as_bytes()),
            "{message:?} not in the root's /var/log/journal/{id}/system.journal ({} bytes)",
            journal.len()
        );
    }
    let _ = std::fs::remove_file(&raw);
}

/// keel-init passes the command line's `module.param=` values to the
/// modules it loads (here dm-verity's prefetch_cluster, from the TEST-ONLY
/// profile `ci-module-params`, which extends `ci`), and prints what the
/// kernel then holds for them, the built-in nvme_core's io_timeout too. A
/// value the kernel refuses (virtio_net's napi_weight=lots) is reported
/// and the module loaded with its defaults: the NIC still comes up. With
/// `keel.tcg-skip=no` keel-init loads the x86-64 sha256 under TCG too, and
/// dm-verity verifies /usr with it, the code path of EC2's instances.
#[test]
fn keel_init_takes_module_parameters_and_tcg_skip_from_the_command_line() {
    let dir = out_dir("module-params");
    let image = images::build_from("ci-module-params", Role::Etcd, None, &[])
        .expect("building the etcd image of profile ci-module-params");
    let mut vm = Vm::start(&Config::new(&image.path, &dir)).expect("starting the VM");
    vm.wait_for("switching to the real root", BOOT_DEADLINE).expect("keel-init to finish");
    let console = vm.console();
    let line = console
        .lines()
        .find(|l| l.contains("module parameters from the command line:"))
        .unwrap_or_else(|| panic!("no module parameters line:\n{}", vm::tail(&console, 60)));
    // napi_weight's default (NAPI_POLL_WEIGHT): the refused value never
    // reached the module.
    for held in [
        "dm_verity prefetch_cluster=131072",
        "nvme_core io_timeout=4294967295",
        "virtio_net napi_weight=64",
    ] {
        assert!(line.contains(held), "{held:?} is not in {line:?}");
    }
    // The kernel's line: the driver sha256_ssse3 registers for the CPU's
    // best instructions (sha256-avx2 under `-cpu max`; sha256-ni on EC2's
    // newer CPUs), not sha256-generic.
    let verity = console
        .lines()
        .find(|l| l.contains("verity: sha256 using"))
        .unwrap_or_else(|| panic!("no dm-verity driver line:\n{}", vm::tail(&console, 60)));
    assert!(
        ["sha256-ni", "sha256-avx2", "sha256-avx", "sha256-ssse3"]
            .iter()
            .any(|d| verity.contains(&format!("\"{d}\""))),
        "{verity}"
    );
    assert!(!console.contains("skipped under TCG"), "{}", vm::tail(&console, 60));
    let refused: Vec<&str> =
        console.lines().filter(|l| l.contains("loaded without them")).collect();
    assert_eq!(refused.len(), 1, "{}", vm::tail(&console, 60));
    assert!(
        refused[0].contains(r#"virtio_net: the kernel refused "napi_weight=lots""#),
        "{}",
        refused[0]
    );
    // virtio_net drives the NIC (udev names it) on the way to the milestone.
    vm.wait_for(MILESTONE, BOOT_DEADLINE).expect("boot to keel-bootstrap.service");
    let console = vm.console();
    assert!(
        console
            .lines()
            .any(|l| l.contains("virtio_net virtio0 ") && l.contains("renamed from eth0")),
        "virtio_net did not take the NIC:\n{}",
        vm::tail(&console, 60)
    );
}

/// A root volume that booted on another instance before: keel-bootstrap's
/// primary interface drop-in names a MAC address no interface here has
/// (written into the root file system as that boot left it). keel-init sets
/// it aside, so systemd-networkd configures this machine's NIC:
/// wait-online finishes (with the drop-in in place it would match nothing
/// and fail after its two minutes).
#[test]
fn a_root_volume_from_another_instance_still_gets_its_network() {
    use keel_contract::primary_nic::{render, DROP_IN};
    const OTHER: &str = "0a:1b:2c:3d:4e:5f";
    let image = etcd();
    let dir = out_dir("moved-volume");
    let raw = dir.join("disk.raw");
    std::fs::copy(&image.path, &raw).unwrap();
    disk::write_into_ext4(&raw, "root", &format!("/{DROP_IN}"), render(OTHER).as_bytes())
        .expect("writing the drop-in into the root file system");
    let mut vm = Vm::start(&Config::new(&raw, &dir)).expect("starting the VM");
    vm.wait_for(MILESTONE, BOOT_DEADLINE).expect("boot to keel-bootstrap.service");
    let console = vm.console();
    let set_aside = format!("primary network interface {OTHER} is not on this machine");
    assert!(console.contains(&set_aside), "no {set_aside:?}:\n{}", vm::tail(&console, 80));
    assert!(
        console.lines().any(|l| l.contains("Finished") && l.contains("systemd-networkd-wait-onl")),
        "systemd-networkd-wait-online did not finish:\n{}",
        vm::tail(&console, 80)
    );
    drop(vm);
    let _ = std::fs::remove_file(&raw);
}

/// Worker and controller come from the test-only profile
/// qemu-tests/fixtures/profiles/ci.toml (production, Debian's binaries
/// repacked, Kubernetes test doubles from a local mirror directory).
fn k8s_test_image(role: Role) -> PathBuf {
    let image = images::image(role).expect("building the image");
    let m = image.manifest().unwrap();
    let kubelet = m["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "kubelet")
        .expect("kubelet component");
    assert_eq!(kubelet["version"], "0.0.0-test-double");
    image.path
}

#[test]
fn worker_image_boots_to_keel_bootstrap() {
    boots_to_keel_bootstrap(&k8s_test_image(Role::Worker), "worker");
}

#[test]
fn controller_image_boots_to_keel_bootstrap() {
    boots_to_keel_bootstrap(&k8s_test_image(Role::Controller), "controller");
}

#[test]
fn changed_byte_in_usr_fails_verity() {
    let b = etcd();
    let state = out_dir("tamper");
    let copy = state.join("tampered.raw");
    vm::tamper_usr(&b.path, b.usr_offset().unwrap(), &copy).expect("tampering with a copy");
    let mut vm = Vm::start(&Config::new(&copy, &state)).expect("starting the VM");
    // dm-verity reports "device-mapper: verity: 254:0: data block 0 is
    // corrupted" (or "metadata block") on the kernel console.
    let which = vm.wait_for_any(&[" is corrupted", MILESTONE], BOOT_DEADLINE);
    let console = vm.console();
    drop(vm);
    let _ = std::fs::remove_file(&copy);
    assert_eq!(
        which.expect("a verity error on the console"),
        0,
        "the tampered image booted to keel-bootstrap:\n{console}"
    );
    assert!(console.contains("device-mapper: verity"), "no verity report:\n{console}");
}

#[test]
fn two_builds_give_identical_images() {
    let b = etcd();
    let out = out_dir("rebuild");
    let again = images::build(Role::Etcd, Some(&out), &["--force"]).expect("building again");
    let first = b.manifest().unwrap();
    let second = again.manifest().unwrap();
    assert_eq!(
        first["image-sha256"], second["image-sha256"],
        "two builds of the same inputs differ"
    );
    assert_eq!(first, second);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn inspect_reads_the_manifest_from_the_image() {
    let b = etcd();
    let keel = &images::tools().unwrap().keel;
    let output =
        Command::new(keel).arg("inspect").arg(&b.path).output().expect("running keel inspect");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let inspected: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("inspect prints JSON");
    assert_eq!(inspected, b.manifest().unwrap());
    let m = &inspected;
    assert_eq!(m["role"], "etcd");
    assert_eq!(m["profile"], images::PROFILE);
    assert_eq!(m["test-image"], true, "the QEMU tests boot test images");
    let etcd = m["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "etcd")
        .expect("etcd component");
    // The production recipe: etcd from a release-layout tarball, no
    // Debian etcd package in the image.
    assert_eq!(etcd["source"], "url");
    assert_eq!(etcd["version"], "3.5.30");
    assert!(!m["debian-packages"].as_array().unwrap().iter().any(|p| p["name"] == "etcd-server"));
    assert_eq!(m["verity-root-hash"].as_str().unwrap().len(), 64);
    // The test profile's QEMU workaround is on this image's command line
    // (and only there: production.toml sets no kernel-cmdline).
    assert!(m["cmdline"].as_str().unwrap().ends_with(" no_timer_check"), "{}", m["cmdline"]);

    // A no-op rebuild finds the image up to date.
    let again = images::image(Role::Etcd).unwrap();
    assert!(again.report.starts_with("up to date:"), "{}", again.report);
}
