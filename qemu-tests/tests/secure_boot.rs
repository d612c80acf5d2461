//! Secure Boot and SBOM tests (need root, a warm ~/.cache/keel or
//! mmdebstrap's Debian mirror, sbsigntool, faketime, mtools, and for the
//! boots QEMU, OVMF's Secure Boot build and virt-firmware): one etcd image of the TEST-ONLY `ci`
//! profile, signed with a test key hierarchy made by `keel keys init`, is
//! built once per run (found up to date on the next) and shared by every
//! test here.
//!
//! The key hierarchy is TEST-ONLY: it lives in the target directory and
//! signs nothing but this image.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use sha2::Digest as _;

use keel_contract::Role;
use keel_qemu_tests::images::{self, Image};
use keel_qemu_tests::rundir::target_dir;
use keel_qemu_tests::vm::{Config, Vm};

/// Generous: a first boot under TCG (with SMM) on a loaded 2-core machine.
const BOOT_DEADLINE: Duration = Duration::from_secs(600);
/// The firmware gets to the boot option in well under this.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(300);
/// keel-bootstrap's unit ran: every line it prints starts so.
const MILESTONE: &str = "keel-bootstrap:";
/// What OVMF prints when Secure Boot refuses the UKI: `BdsDxe: failed to
/// load Boot0001 "UEFI Misc Device" from ...: Access Denied`.
const REFUSED: &str = "Access Denied";

/// Where the signed image and its keys live, across runs.
fn secure_dir() -> PathBuf {
    target_dir().expect("the target directory").join("images/secure")
}

/// Runs `keel` with `args`; returns its stdout or panics with its stderr.
fn keel(args: &[&std::ffi::OsStr]) -> String {
    let tools = images::tools().expect("building keel");
    let out = Command::new(&tools.keel).args(args).output().expect("running keel");
    assert!(out.status.success(), "keel {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("keel printed UTF-8")
}

/// A key hierarchy made by `keel keys init` under `dir`, once.
fn keys(dir: &Path) -> PathBuf {
    if !dir.join("db.crt").is_file() {
        let printed = keel(&["keys".as_ref(), "init".as_ref(), "--out".as_ref(), dir.as_os_str()]);
        for name in ["PK", "KEK", "db"] {
            assert!(printed.contains(&format!("CN=Keel {name}, expires ")), "{printed}");
        }
    }
    dir.to_path_buf()
}

/// The test hierarchy that signs the image.
fn test_keys() -> PathBuf {
    keys(&secure_dir().join("keys"))
}

/// The signed etcd image, built once per process.
fn signed() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let keys = test_keys();
        let out = secure_dir().join("out");
        let keys = keys.to_str().expect("a UTF-8 target path");
        images::build(Role::Etcd, Some(&out), &["--secure-boot-key", keys])
            .expect("building the signed etcd image")
    })
}

/// Copies one file out of the image's ESP with mtools.
fn esp_offset(image: &Image) -> u64 {
    let m = image.manifest().unwrap();
    m["partitions"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "esp"))
        .and_then(|p| p["offset"].as_u64())
        .expect("an esp partition in the manifest")
}

fn esp_file(image: &Image, path: &str, to: &Path) {
    let esp = esp_offset(image);
    let status = Command::new("mcopy")
        .arg("-n")
        .arg("-i")
        .arg(format!("{}@@{esp}", image.path.display()))
        .arg(format!("::{path}"))
        .arg(to)
        .status()
        .expect("running mcopy (install mtools)");
    assert!(status.success(), "mcopy ::{path} out of {}", image.path.display());
}

fn sbverify(cert: &Path, efi: &Path) -> (bool, String) {
    let out = Command::new("sbverify")
        .arg("--cert")
        .arg(cert)
        .arg(efi)
        .output()
        .expect("running sbverify (install sbsigntool)");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("secure").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("creating the test's directory");
    d
}

/// The UKI of a signed build verifies against db's certificate and not
/// against a certificate of another hierarchy; the manifest names db's
/// fingerprint.
#[test]
fn signed_uki_verifies_with_db_and_not_with_another_key() {
    let image = signed();
    let dir = scratch("sbverify");
    let uki = dir.join("BOOTX64.EFI");
    esp_file(image, "EFI/BOOT/BOOTX64.EFI", &uki);
    let db = test_keys().join("db.crt");
    let (ok, text) = sbverify(&db, &uki);
    assert!(ok, "sbverify refused the signed UKI with db.crt: {text}");

    let other = keys(&dir.join("other-keys"));
    let (ok, text) = sbverify(&other.join("db.crt"), &uki);
    assert!(!ok, "sbverify accepted the UKI with another hierarchy's db.crt: {text}");

    let pem = std::fs::read_to_string(&db).unwrap();
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
    let fingerprint = hex::encode(sha2::Sha256::digest(&der));
    assert_eq!(image.manifest().unwrap()["secure-boot"], fingerprint.as_str());
    assert!(image.report.contains(&format!("secure boot  {fingerprint}")), "{}", image.report);
}

/// `keel inspect --sbom` prints the SPDX document from inside the image:
/// the same as the one beside it, valid by spdx-tools, and listing every
/// Debian package and component `keel inspect` lists (name, version,
/// source, checksums) and keel-bootstrap with the binary's sha256.
#[test]
fn sbom_validates_and_lists_what_inspect_lists() {
    let image = signed();
    let dir = scratch("sbom");
    let path = image.path.as_os_str();
    let printed = keel(&["inspect".as_ref(), "--sbom".as_ref(), path]);
    let sbom: serde_json::Value = serde_json::from_str(&printed).expect("the SBOM is JSON");
    let beside = image.path.with_extension("spdx.json");
    let beside: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&beside).expect("the SBOM beside the image"))
            .unwrap();
    assert_eq!(sbom, beside, "the SBOM inside the image differs from the one beside it");
    let file = dir.join("sbom.spdx.json");
    std::fs::write(&file, &printed).unwrap();
    let tool = keel_testkit::pytools::bin("pyspdxtools").unwrap();
    let out = Command::new(&tool).arg("-i").arg(&file).output().expect("running pyspdxtools");
    assert!(
        out.status.success(),
        "pyspdxtools refused the SBOM: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let manifest: serde_json::Value =
        serde_json::from_str(&keel(&["inspect".as_ref(), "--no-hash".as_ref(), path])).unwrap();
    let packages = sbom["packages"].as_array().expect("packages");
    let find = |name: &str| packages.iter().find(|p| p["name"] == name);
    let debian = manifest["debian-packages"].as_array().expect("debian-packages");
    assert!(debian.len() > 100, "only {} Debian packages", debian.len());
    for d in debian {
        let name = d["name"].as_str().unwrap();
        let p = find(name).unwrap_or_else(|| panic!("Debian package {name} not in the SBOM"));
        assert_eq!(p["versionInfo"], d["version"], "{name}");
        let source = p["sourceInfo"].as_str().unwrap();
        assert!(source.starts_with("built package from: "), "{name}: {source}");
    }
    // Debian states most licenses in machine-readable form.
    let licensed = packages.iter().filter(|p| p["licenseDeclared"] != "NOASSERTION").count();
    assert!(licensed * 2 > debian.len(), "{licensed} of {} packages with a license", debian.len());
    let libc = find("libc6").expect("libc6");
    assert_eq!(libc["licenseDeclared"], "LGPL-2.1-or-later");
    assert!(libc["sourceInfo"].as_str().unwrap().contains("glibc"), "{libc}");
    for c in manifest["components"].as_array().expect("components") {
        let name = c["name"].as_str().unwrap();
        match c["source"].as_str() {
            Some("url") => {
                let p = find(name).unwrap_or_else(|| panic!("component {name} not in the SBOM"));
                assert_eq!(p["versionInfo"], c["version"], "{name}");
                assert_eq!(p["downloadLocation"], c["url"], "{name}");
                let sums = p["checksums"].to_string();
                let digest = c["sha256"].as_str().or(c["sha512"].as_str()).unwrap();
                assert!(sums.contains(digest), "{name}: {sums}");
            }
            _ => {
                let deb = c["debian-package"].as_str().unwrap();
                let p = find(deb).unwrap_or_else(|| panic!("{deb} ({name}) not in the SBOM"));
                assert_eq!(p["versionInfo"], c["version"], "{name}");
            }
        }
    }
    let tools = images::tools().unwrap();
    let bin = std::fs::read(&tools.bootstrap).unwrap();
    let bootstrap = find("keel-bootstrap").expect("keel-bootstrap in the SBOM");
    assert_eq!(bootstrap["checksums"][0]["checksumValue"], hex::encode(sha2::Sha256::digest(&bin)));
    let contains = sbom["relationships"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["relationshipType"] == "CONTAINS" && r["spdxElementId"] == "SPDXRef-Image")
        .count();
    assert_eq!(contains, packages.len() - 1, "every package but the image is CONTAINED by it");
    assert_eq!(sbom["creationInfo"]["created"], "2026-01-01T00:00:00Z");
}

/// An OVMF VARS file with the hierarchy in `keys` enrolled (PK, KEK, db;
/// no Microsoft keys) and Secure Boot on, made by virt-firmware.
fn enrolled_vars(keys: &Path, out: &Path) -> PathBuf {
    let owner = std::fs::read_to_string(keys.join("owner-guid")).unwrap().trim().to_string();
    let tool = keel_testkit::pytools::bin("virt-fw-vars").unwrap();
    let cert = |n: &str| keys.join(format!("{n}.crt"));
    let out_ = Command::new(&tool)
        .arg("-i")
        .arg(keel_qemu_tests::vm::OVMF_VARS)
        .arg("-o")
        .arg(out)
        .arg("--set-pk")
        .arg(&owner)
        .arg(cert("PK"))
        .arg("--add-kek")
        .arg(&owner)
        .arg(cert("KEK"))
        .arg("--add-db")
        .arg(&owner)
        .arg(cert("db"))
        .args(["--secure-boot", "--no-microsoft"])
        .output()
        .expect("running virt-fw-vars");
    assert!(out_.status.success(), "virt-fw-vars: {}", String::from_utf8_lossy(&out_.stderr));
    out.to_path_buf()
}

/// A copy of the signed image whose UKI `change` rewrote (mtools in, the
/// same bytes back at the same path).
fn with_changed_uki(image: &Image, dir: &Path, change: impl FnOnce(&Path)) -> PathBuf {
    let copy = dir.join("image.raw");
    let status = Command::new("cp")
        .arg("--sparse=always")
        .arg(&image.path)
        .arg(&copy)
        .status()
        .expect("running cp");
    assert!(status.success());
    let uki = dir.join("BOOTX64.EFI");
    esp_file(image, "EFI/BOOT/BOOTX64.EFI", &uki);
    change(&uki);
    let esp = esp_offset(image);
    let status = Command::new("mcopy")
        .arg("-o")
        .arg("-i")
        .arg(format!("{}@@{esp}", copy.display()))
        .arg(&uki)
        .arg("::EFI/BOOT/BOOTX64.EFI")
        .status()
        .expect("running mcopy");
    assert!(status.success(), "writing the changed UKI back");
    copy
}

/// Boots `disk` with OVMF's Secure Boot build and `vars`; waits for the
/// firmware's refusal, and fails if Linux starts.
fn refused(disk: &Path, vars: &Path, name: &str) {
    let state = scratch(&format!("boot-{name}"));
    let mut cfg = Config::new(disk, &state);
    cfg.name = format!("qemu ({name})");
    cfg.secure_boot_vars = Some(vars.to_path_buf());
    let mut vm = Vm::start(&cfg).expect("starting the VM");
    let seen = vm
        .wait_for_any(&[REFUSED, "Linux version", MILESTONE], REFUSAL_DEADLINE)
        .unwrap_or_else(|e| panic!("{name}: {e:#}"));
    let console = vm.console();
    assert_eq!(seen, 0, "{name}: the firmware started the UKI:\n{console}");
    let line = console.lines().find(|l| l.contains(REFUSED)).unwrap_or_default();
    eprintln!("{name}: refused after {:?}: {}", vm.uptime(), line.trim());
}

/// Under OVMF's Secure Boot build with the test hierarchy enrolled: the
/// signed image boots to keel-bootstrap; the same image is refused by
/// firmware that enrolled another hierarchy (signed with another key), and
/// so are a copy whose UKI command line carries another usrhash and a copy
/// whose UKI signature was removed. One VM at a time.
#[test]
fn secure_boot_firmware_boots_the_signed_image_and_refuses_the_rest() {
    let image = signed();
    let dir = scratch("firmware");
    let ours = enrolled_vars(&test_keys(), &dir.join("ours.fd"));
    let theirs = enrolled_vars(&keys(&dir.join("other-keys")), &dir.join("theirs.fd"));

    refused(&image.path, &theirs, "another-key");

    let tampered_dir = scratch("tampered");
    let tampered = with_changed_uki(image, &tampered_dir, |uki| {
        let mut bytes = std::fs::read(uki).unwrap();
        let at = bytes
            .windows(8)
            .position(|w| w == b"usrhash=")
            .expect("usrhash= in the UKI's command line")
            + 8;
        // Another root hash of the same length: the PE layout is unchanged.
        bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
        std::fs::write(uki, bytes).unwrap();
    });
    refused(&tampered, &ours, "changed-usrhash");
    std::fs::remove_file(&tampered).unwrap();

    let unsigned_dir = scratch("unsigned");
    let unsigned = with_changed_uki(image, &unsigned_dir, |uki| {
        let status = Command::new("sbattach")
            .arg("--remove")
            .arg(uki)
            .status()
            .expect("running sbattach (sbsigntool)");
        assert!(status.success(), "sbattach --remove");
        assert!(!sbverify(&test_keys().join("db.crt"), uki).0, "the signature is gone");
    });
    refused(&unsigned, &ours, "unsigned");
    std::fs::remove_file(&unsigned).unwrap();

    let state = scratch("boot-signed");
    let mut cfg = Config::new(&image.path, &state);
    cfg.name = "qemu (signed)".into();
    cfg.secure_boot_vars = Some(ours);
    let mut vm = Vm::start(&cfg).expect("starting the VM");
    vm.wait_for(MILESTONE, BOOT_DEADLINE).expect("Secure Boot to keel-bootstrap.service");
    let console = vm.console();
    assert!(!console.contains(REFUSED), "{console}");
    assert!(!console.contains("is corrupted"), "verity complained:\n{console}");
    eprintln!("signed image reached {MILESTONE:?} under Secure Boot after {:?}", vm.uptime());
}
