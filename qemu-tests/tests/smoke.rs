//! Image smoke tests (need root, mmdebstrap's Debian mirror or a warm
//! ~/.cache/keel, QEMU and OVMF): `keel build` makes the etcd image of the
//! `local` profile; it boots under QEMU to keel-bootstrap.service; a copy
//! with one byte of /usr changed fails dm-verity; a second build gives the
//! same bytes; `keel inspect` reads the manifest back from the image.
//!
//! The static keel-bootstrap and keel itself are built once per run by the
//! shared set-up, into this run's target directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use keel_qemu_tests::vm::{Config, Vm};

/// Generous: a first boot under TCG on a loaded 2-core machine.
const BOOT_DEADLINE: Duration = Duration::from_secs(600);
/// keel-bootstrap's unit ran: every line it prints starts so.
const MILESTONE: &str = "keel-bootstrap:";

struct Built {
    keel: PathBuf,
    bootstrap: PathBuf,
    image: PathBuf,
    manifest: PathBuf,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// target/ of this run (the test binary lives in target/debug/deps).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors().nth(3).expect("target dir").to_path_buf()
}

fn cargo(args: &[&str], rustflags: Option<&str>) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace()).args(args).env("CARGO_TARGET_DIR", target_dir());
    if let Some(f) = rustflags {
        cmd.env("RUSTFLAGS", f);
    }
    let status = cmd.status().expect("running cargo");
    assert!(status.success(), "cargo {args:?} failed: {status}");
}

fn out_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("smoke").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("creating the test's directory");
    d
}

fn keel_build(b_keel: &Path, bootstrap: &Path, out: &Path, extra: &[&str]) -> String {
    keel_build_role(b_keel, bootstrap, "local", "etcd", out, extra)
}

fn keel_build_role(b_keel: &Path, bootstrap: &Path, profile: &str, role: &str, out: &Path, extra: &[&str]) -> String {
    let output = Command::new(b_keel)
        .current_dir(workspace())
        .args(["build", "--profile", profile, "--role", role, "--out"])
        .arg(out)
        .arg("--bootstrap-bin")
        .arg(bootstrap)
        .args(extra)
        .output()
        .expect("running keel build");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "keel build failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        cargo(&["build", "-p", "keel", "--bin", "keel"], None);
        cargo(
            &["build", "--release", "-p", "keel-bootstrap", "--target", "x86_64-unknown-linux-gnu"],
            Some("-C target-feature=+crt-static"),
        );
        let target = target_dir();
        let keel = target.join("debug/keel");
        let bootstrap = target.join("x86_64-unknown-linux-gnu/release/keel-bootstrap");
        let out = out_dir("etcd");
        keel_build(&keel, &bootstrap, &out, &[]);
        Built { keel, bootstrap, image: out.join("keel-etcd-local.raw"), manifest: out.join("keel-etcd-local.manifest.json") }
    })
}

fn manifest(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("reading the manifest")).expect("manifest is JSON")
}

fn boots_to_keel_bootstrap(image: &Path, name: &str) {
    let state = out_dir(&format!("boot-{name}"));
    let mut vm = Vm::start(&Config::new(image, &state)).expect("starting the VM");
    vm.wait_for(MILESTONE, BOOT_DEADLINE).expect("boot to keel-bootstrap.service");
    let console = vm.console();
    assert!(!console.contains("is corrupted"), "verity complained on an untouched image:\n{console}");
    eprintln!("{name} image reached {MILESTONE:?} after {:?}", vm.uptime());
}

#[test]
fn etcd_image_boots_to_keel_bootstrap() {
    boots_to_keel_bootstrap(&built().image, "etcd");
}

/// Builds `role` from the test-only profile qemu-tests/fixtures/profiles/
/// k8s-test.toml (local + Kubernetes test doubles from a local mirror
/// directory), with profiles/local.toml copied beside it.
fn k8s_test_image(role: &str) -> PathBuf {
    // Worker and controller share one Debian base: build them one after
    // the other so that the second finds the base cached.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let b = built();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let profiles = out_dir(&format!("profiles-{role}"));
    std::fs::copy(workspace().join("profiles/local.toml"), profiles.join("local.toml")).expect("copying local.toml");
    std::fs::copy(fixtures.join("profiles/k8s-test.toml"), profiles.join("k8s-test.toml")).expect("copying k8s-test.toml");
    let out = out_dir(&format!("image-{role}"));
    let profiles_arg = profiles.display().to_string();
    let mirrors_arg = fixtures.join("mirrors.toml").display().to_string();
    keel_build_role(
        &b.keel,
        &b.bootstrap,
        "k8s-test",
        role,
        &out,
        &["--profiles-dir", &profiles_arg, "--mirrors", &mirrors_arg, "--offline"],
    );
    let m = manifest(&out.join(format!("keel-{role}-k8s-test.manifest.json")));
    let kubelet = m["components"].as_array().unwrap().iter().find(|c| c["name"] == "kubelet").expect("kubelet component");
    assert_eq!(kubelet["version"], "0.0.0-test-double");
    out.join(format!("keel-{role}-k8s-test.raw"))
}

#[test]
fn worker_image_boots_to_keel_bootstrap() {
    boots_to_keel_bootstrap(&k8s_test_image("worker"), "worker");
}

#[test]
fn controller_image_boots_to_keel_bootstrap() {
    boots_to_keel_bootstrap(&k8s_test_image("controller"), "controller");
}

#[test]
fn changed_byte_in_usr_fails_verity() {
    let b = built();
    let m = manifest(&b.manifest);
    let usr = m["partitions"].as_array().expect("partitions").iter().find(|p| p["name"] == "usr").expect("usr partition").clone();
    let offset = usr["offset"].as_u64().expect("usr offset");
    let state = out_dir("tamper");
    let copy = state.join("tampered.raw");
    std::fs::copy(&b.image, &copy).expect("copying the image");
    // Byte 1024 of /usr is inside the erofs superblock, read at mount.
    {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&copy).unwrap();
        let at = offset + 1024 + 8;
        let mut byte = [0u8; 1];
        f.seek(SeekFrom::Start(at)).unwrap();
        f.read_exact(&mut byte).unwrap();
        byte[0] ^= 0x01;
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&byte).unwrap();
    }
    let mut vm = Vm::start(&Config::new(&copy, &state)).expect("starting the VM");
    // dm-verity reports "device-mapper: verity: 254:0: data block 0 is
    // corrupted" (or "metadata block") on the kernel console.
    let which = vm.wait_for_any(&[" is corrupted", MILESTONE], BOOT_DEADLINE);
    let console = vm.console();
    drop(vm);
    let _ = std::fs::remove_file(&copy);
    assert_eq!(which.expect("a verity error on the console"), 0, "the tampered image booted to keel-bootstrap:\n{console}");
    assert!(console.contains("device-mapper: verity"), "no verity report:\n{console}");
}

#[test]
fn two_builds_give_identical_images() {
    let b = built();
    let out = out_dir("rebuild");
    keel_build(&b.keel, &b.bootstrap, &out, &["--force"]);
    let first = manifest(&b.manifest);
    let second = manifest(&out.join("keel-etcd-local.manifest.json"));
    assert_eq!(first["image-sha256"], second["image-sha256"], "two builds of the same inputs differ");
    assert_eq!(first, second);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn inspect_reads_the_manifest_from_the_image() {
    let b = built();
    let output = Command::new(&b.keel).arg("inspect").arg(&b.image).output().expect("running keel inspect");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let inspected: serde_json::Value = serde_json::from_slice(&output.stdout).expect("inspect prints JSON");
    assert_eq!(inspected, manifest(&b.manifest));
    let m = &inspected;
    assert_eq!(m["role"], "etcd");
    assert_eq!(m["profile"], "local");
    let etcd = m["components"].as_array().unwrap().iter().find(|c| c["name"] == "etcd").expect("etcd component");
    assert_eq!(etcd["debian-package"], "etcd-server");
    assert!(m["debian-packages"].as_array().unwrap().iter().any(|p| p["name"] == "etcd-server"));
    assert_eq!(m["verity-root-hash"].as_str().unwrap().len(), 64);

    // A no-op rebuild finds the image up to date.
    let stdout = keel_build(&b.keel, &b.bootstrap, b.image.parent().unwrap(), &[]);
    assert!(stdout.starts_with("up to date:"), "{stdout}");
}
