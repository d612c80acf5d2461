//! keel-bootstrap writes containerd's configuration in the schema of the
//! containerd the image carries, and real containerd reads it: 2.1 (the CI
//! profile's, repacked from Debian sid into upstream's tarball layout) and
//! 1.7 (Debian trixie's). Each runs with the rendered configuration in a
//! temporary root and state directory; its CRI plugin must load (`ctr
//! plugins ls`) with the settings Keel wrote, as the plugin itself logs
//! them at start, and containerd must not have had to migrate the file.
//! Also repacks the CI profile's artifacts from the pinned Debian packages
//! when the cache lacks them, and fails naming the digest when a pin is
//! stale.
//!
//! Needs root (containerd), dpkg-deb, and the Debian mirror of the host's
//! apt sources or a warm ~/.cache/keel (run by .ci/run).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use keel_bootstrap::layout::Layout;
use keel_bootstrap::node::worker::{self, ContainerdSchema};
use keel_qemu_tests::doubles::{containerd_version, Containerd};
use keel_qemu_tests::{debian, images, repack};

/// A node root in /tmp (containerd's socket path must fit a sockaddr_un),
/// with the components file `keel build` writes naming `version`.
fn node_root(version: &str) -> (tempfile::TempDir, Layout) {
    let dir = tempfile::Builder::new().prefix("keel-ctd").tempdir_in("/tmp").unwrap();
    let file = dir.path().join(keel_contract::image::COMPONENTS_FILE);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, keel_contract::image::render([("containerd", version)])).unwrap();
    let layout = Layout::new(dir.path());
    (dir, layout)
}

/// containerd, its shim and ctr of the CI profile's containerd artifact
/// (repacked when not cached), unpacked into `dir` as its install rule
/// does (bin/ stripped).
fn ci_containerd(dir: &Path) -> PathBuf {
    let ci = images::fixtures().join(format!("profiles/{}.toml", images::PROFILE));
    let pins = repack::pinned(&ci).unwrap();
    let all = repack::ensure(&pins).unwrap_or_else(|e| panic!("{e:#}"));
    let pin = pins.iter().position(|p| p.component == "containerd").expect("containerd pin");
    let file = std::fs::File::open(&all[pin].1).unwrap();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().into_owned();
        if let Ok(rest) = path.strip_prefix("bin") {
            if !rest.as_os_str().is_empty() {
                e.unpack(dir.join(rest)).unwrap();
            }
        }
    }
    dir.join("containerd")
}

/// containerd 1.7 and its ctr and shim from Debian trixie's package.
fn trixie_containerd(dir: &Path) -> PathBuf {
    let deb = repack::CONTAINERD_1_7;
    let path = debian::fetch(&deb).unwrap_or_else(|e| panic!("{e:#}"));
    let wanted = ["usr/bin/containerd", "usr/bin/ctr", "usr/bin/containerd-shim-runc-v2"];
    let files = debian::files(&deb, &path, |n| wanted.contains(&n)).unwrap();
    assert_eq!(files.len(), wanted.len(), "{} lacks one of {wanted:?}", deb.package);
    for (name, f) in files {
        let out = dir.join(Path::new(&name).file_name().unwrap());
        std::fs::write(&out, &f.bytes).unwrap();
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir.join("containerd")
}

/// What the CRI plugin says it runs with, as `key: value` facts that the
/// test compares, from its start-up log line: 2.x logs JSON
/// (`starting cri plugin" config="{...}"`), 1.7 Go's `%+v`
/// (`Start cri plugin with config {...}`). Fails on a migrated file.
fn cri_settings(log: &str) -> Result<Vec<(String, String)>, String> {
    if let Some(l) = log.lines().find(|l| l.contains("Configuration migrated")) {
        return Err(format!("containerd migrated the configuration: {l}"));
    }
    if let Some(line) = log.lines().find(|l| l.contains("starting cri plugin")) {
        let quoted = line.split_once("config=\"").map(|(_, r)| r).ok_or("no config= field")?;
        let json = quoted.rsplit_once('"').map_or(quoted, |(j, _)| j).replace("\\\"", "\"");
        let v: serde_json::Value =
            serde_json::from_str(&json).map_err(|e| format!("{e}: {json}"))?;
        let runc = &v["containerd"]["runtimes"]["runc"];
        let bins = match &v["cni"]["binDirs"] {
            serde_json::Value::Array(a) if !a.is_empty() => {
                a.iter().filter_map(|d| d.as_str()).collect::<Vec<_>>().join(",")
            }
            _ => v["cni"]["binDir"].as_str().unwrap_or_default().to_string(),
        };
        let s = |x: &serde_json::Value| x.as_str().map_or_else(|| x.to_string(), str::to_string);
        return Ok(vec![
            ("default runtime".into(), s(&v["containerd"]["defaultRuntimeName"])),
            ("runc type".into(), s(&runc["runtimeType"])),
            ("runc SystemdCgroup".into(), s(&runc["options"]["SystemdCgroup"])),
            ("cni bin dirs".into(), bins),
            ("cni conf dir".into(), s(&v["cni"]["confDir"])),
            ("cni conf template".into(), s(&v["cni"]["confTemplate"])),
        ]);
    }
    let line = log
        .lines()
        .find(|l| l.contains("Start cri plugin with config"))
        .ok_or("the CRI plugin logged no start-up configuration")?;
    let field = |key: &str, after: Option<&str>| -> String {
        let from = after.and_then(|a| line.find(a)).unwrap_or(0);
        let rest = &line[from..];
        rest.split_once(&format!("{key}:"))
            .map(|(_, r)| r.split([' ', '}', ']']).next().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    Ok(vec![
        ("default runtime".into(), field("DefaultRuntimeName", None)),
        ("runc type".into(), field("Type", Some("Runtimes:map[runc:"))),
        ("runc SystemdCgroup".into(), field("SystemdCgroup", Some("Runtimes:map[runc:"))),
        ("cni bin dirs".into(), field("NetworkPluginBinDir", Some("CniConfig:"))),
        ("cni conf dir".into(), field("NetworkPluginConfDir", Some("CniConfig:"))),
        ("cni conf template".into(), field("NetworkPluginConfTemplate", Some("CniConfig:"))),
    ])
}

/// Renders the configuration for the containerd `bin` under a fresh root,
/// starts it, and checks the CRI plugin loaded with Keel's settings.
fn reads_keels_configuration(bin: &Path, schema: ContainerdSchema) {
    let version = containerd_version(bin).unwrap();
    assert_eq!(ContainerdSchema::for_version(&version).unwrap(), schema, "containerd {version}");
    let (_dir, layout) = node_root(&version);
    worker::write_containerd_config(&layout).unwrap();
    let written = std::fs::read_to_string(layout.path(worker::CONTAINERD_CONFIG)).unwrap();
    let want_version = if schema == ContainerdSchema::V2 { 2 } else { 3 };
    assert!(written.contains(&format!("\nversion = {want_version}\n")), "{written}");

    let c = Containerd::start_in(bin, &layout, None).unwrap();
    let plugins = std::process::Command::new(&c.ctr)
        .arg("--address")
        .arg(&c.socket)
        .args(["--timeout", "10s", "plugins", "ls"])
        .output()
        .unwrap();
    let plugins = String::from_utf8_lossy(&plugins.stdout);
    let cri = plugins.lines().find(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        w.len() > 2 && w[0] == "io.containerd.grpc.v1" && w[1] == "cri"
    });
    let status = cri.and_then(|l| l.split_whitespace().last());
    assert_eq!(status, Some("ok"), "containerd {version}: CRI not ok:\n{plugins}");

    let log = std::fs::read_to_string(&c.log).unwrap();
    let got = cri_settings(&log).unwrap_or_else(|e| panic!("containerd {version}: {e}\n{log}"));
    let want: Vec<(String, String)> = [
        ("default runtime", "runc".to_string()),
        ("runc type", "io.containerd.runc.v2".into()),
        ("runc SystemdCgroup", "true".into()),
        ("cni bin dirs", worker::CNI_BIN_DIR.into()),
        ("cni conf dir", layout.shown(worker::CNI_CONF_DIR)),
        ("cni conf template", layout.shown(worker::CNI_TEMPLATE)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(got, want, "containerd {version}'s CRI plugin runs with other settings:\n{log}");
    eprintln!("containerd {version}: CRI plugin ok with {got:?}");
}

#[test]
fn containerd_2_1_reads_the_version_3_configuration_keel_bootstrap_writes() {
    let bins = tempfile::tempdir().unwrap();
    let bin = ci_containerd(bins.path());
    reads_keels_configuration(&bin, ContainerdSchema::V3 { bin_dirs: true });

    // The check can fail: the 1.7 schema on containerd 2.1 is migrated
    // (with a warning), which is what writing the pinned version's schema
    // avoids.
    let version = containerd_version(&bin).unwrap();
    let (_dir, layout) = node_root(&version);
    let old = layout.path("etc/containerd/v2.toml");
    std::fs::create_dir_all(old.parent().unwrap()).unwrap();
    std::fs::write(&old, worker::containerd_config(&layout, ContainerdSchema::V2)).unwrap();
    let c = Containerd::start_in(&bin, &layout, Some(&old)).unwrap();
    let err = cri_settings(&std::fs::read_to_string(&c.log).unwrap()).unwrap_err();
    assert!(err.contains("migrated"), "{err}");
}

#[test]
fn containerd_1_7_reads_the_version_2_configuration_keel_bootstrap_writes() {
    let bins = tempfile::tempdir().unwrap();
    let bin = trixie_containerd(bins.path());
    reads_keels_configuration(&bin, ContainerdSchema::V2);
}

#[test]
fn a_containerd_keel_has_not_been_tested_with_is_refused() {
    let (_dir, layout) = node_root("1.5.9");
    let err = worker::write_containerd_config(&layout).unwrap_err().to_string();
    assert!(err.contains("containerd 1.5.9"), "{err}");
    assert!(!layout.path(worker::CONTAINERD_CONFIG).exists());
}
