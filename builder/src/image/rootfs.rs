//! The image's file tree, assembled in a work directory: the Debian base
//! unpacked (tar crate), component layers from the verified artifact cache,
//! the role's files and units, the static keel-bootstrap; then split into
//! what the image keeps: `/usr` (read-only, verified), with the base's
//! `/etc` as a factory copy in `/usr/share/factory/etc` that systemd-tmpfiles
//! copies to the writable root on first boot; and the kernel and initrd.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component as PathPart, Path, PathBuf};

use flate2::read::GzDecoder;

use super::BuildError;
use crate::fetch::Fetched;
use crate::profile::{Component, Install, Source};

/// Units of the base that every image enables: DHCP on every Ethernet
/// interface, its wait-online (so network-online.target means it), DNS;
/// and growing the root file system after systemd-repart grew its
/// partition (the generated growfs unit of `rootflags=x-systemd.growfs`
/// runs in the initrd, before repart, which runs after the switch to
/// the root: it would find nothing to grow).
const ENABLE: &[(&str, &str)] = &[
    ("sysinit.target", "systemd-growfs-root.service"),
    ("multi-user.target", "systemd-networkd.service"),
    ("multi-user.target", "systemd-resolved.service"),
    ("network-online.target", "systemd-networkd-wait-online.service"),
];

/// Units Debian's packages enable that a Keel node does not run: package
/// maintenance on an immutable /usr (apt and dpkg timers), ext4 metadata
/// scrubbing of LVM snapshots (no LVM), and a login prompt on the VGA
/// console (the serial console keeps its getty). Each is one more process
/// at boot on a small instance.
const NOT_ENABLED: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "getty@tty1.service",
];

/// The tmpfiles.d file that recreates /etc from the factory copy.
pub const ETC_TMPFILES: &str = "usr/lib/tmpfiles.d/keel-etc.conf";

/// A Debian package installed in the base.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
}

/// Unpacks the base tarball into `root` (device nodes are left out: /dev
/// is a devtmpfs at boot).
pub fn unpack_base(tar_path: &Path, root: &Path) -> Result<(), BuildError> {
    let file = fs::File::open(tar_path).map_err(|e| BuildError::io(tar_path, e))?;
    let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, file));
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    let ctx = |e: std::io::Error| BuildError::io(tar_path, e);
    for entry in archive.entries().map_err(ctx)? {
        let mut entry = entry.map_err(ctx)?;
        let path = entry.path().map_err(ctx)?.into_owned();
        let kind = entry.header().entry_type();
        if path.starts_with("./dev/")
            || path.starts_with("dev/")
            || kind.is_character_special()
            || kind.is_block_special()
        {
            continue;
        }
        entry.unpack_in(root).map_err(|e| {
            BuildError::Other(format!("{}: unpacking {}: {e}", tar_path.display(), path.display()))
        })?;
    }
    Ok(())
}

/// A path in the image (absolute, under /usr) as a path under `root`.
fn image_path(root: &Path, component: &str, path: &str) -> Result<PathBuf, BuildError> {
    let p = Path::new(path);
    let ok = p.is_absolute()
        && p.starts_with("/usr/")
        && p.components().all(|c| matches!(c, PathPart::RootDir | PathPart::Normal(_)));
    if !ok {
        return Err(BuildError::Other(format!(
            "component {component}: install path {path} must be an absolute path under /usr (the rest of the image is not kept)"
        )));
    }
    Ok(root.join(p.strip_prefix("/").unwrap_or(p)))
}

/// Installs each URL component's artifact as its `install` says.
pub fn add_components(
    root: &Path,
    components: &[Component],
    fetched: &[Fetched],
) -> Result<(), BuildError> {
    for c in components {
        if !matches!(c.source, Source::Url { .. }) {
            continue;
        }
        let artifact = fetched.iter().find(|f| f.name == c.name).ok_or_else(|| {
            BuildError::Other(format!("component {}: its artifact was not fetched", c.name))
        })?;
        match &c.install {
            Install::Binary { path, mode } => {
                let dest = image_path(root, &c.name, path)?;
                mkdir_parent(&dest)?;
                fs::copy(&artifact.path, &dest).map_err(|e| BuildError::io(&dest, e))?;
                fs::set_permissions(&dest, fs::Permissions::from_mode(*mode))
                    .map_err(|e| BuildError::io(&dest, e))?;
            }
            Install::Tarball { dest, strip_components, include } => {
                let dest = image_path(root, &c.name, dest)?;
                unpack_layer(&artifact.path, &dest, *strip_components as usize, include, &c.name)?;
            }
            Install::Package => {}
        }
    }
    Ok(())
}

/// Unpacks a gzip tarball into `dest`, dropping `strip` leading path
/// elements and keeping entries whose remaining path is in `include`, or
/// lies under one of them (all entries when `include` is empty).
fn unpack_layer(
    tarball: &Path,
    dest: &Path,
    strip: usize,
    include: &[String],
    name: &str,
) -> Result<(), BuildError> {
    let file = fs::File::open(tarball).map_err(|e| BuildError::io(tarball, e))?;
    let mut archive =
        tar::Archive::new(GzDecoder::new(std::io::BufReader::with_capacity(1 << 20, file)));
    let ctx = |e: std::io::Error| {
        BuildError::Other(format!("component {name}: unpacking {}: {e}", tarball.display()))
    };
    let mut matched = vec![false; include.len()];
    fs::create_dir_all(dest).map_err(|e| BuildError::io(dest, e))?;
    for entry in archive.entries().map_err(ctx)? {
        let mut entry = entry.map_err(ctx)?;
        let path = entry.path().map_err(ctx)?.into_owned();
        let parts: Vec<_> =
            path.components().filter(|c| matches!(c, PathPart::Normal(_))).collect();
        if parts.len() <= strip {
            continue;
        }
        let rel: PathBuf = parts[strip..].iter().collect();
        if !include.is_empty() {
            match include.iter().position(|i| rel.starts_with(i)) {
                Some(i) => matched[i] = true,
                None => continue,
            }
        }
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
            continue;
        }
        let out = dest.join(&rel);
        mkdir_parent(&out)?;
        entry.unpack(&out).map_err(ctx)?;
    }
    if let Some(i) = matched.iter().position(|m| !m) {
        return Err(BuildError::Other(format!(
            "component {name}: {} has no entry {} after stripping {strip} path elements",
            tarball.display(),
            include[i]
        )));
    }
    Ok(())
}

fn mkdir_parent(p: &Path) -> Result<(), BuildError> {
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).map_err(|e| BuildError::io(parent, e))?;
    }
    Ok(())
}

/// Copies a tree of files (`images/<role>/files`) onto `root` as laid out.
pub fn add_files(src: &Path, root: &Path) -> Result<(), BuildError> {
    if !src.is_dir() {
        return Ok(());
    }
    for entry in walk(src)? {
        let rel = entry.strip_prefix(src).unwrap_or(&entry);
        let dest = root.join(rel);
        let meta = fs::symlink_metadata(&entry).map_err(|e| BuildError::io(&entry, e))?;
        if meta.is_dir() {
            fs::create_dir_all(&dest).map_err(|e| BuildError::io(&dest, e))?;
        } else {
            let _ = fs::remove_file(&dest);
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&entry).map_err(|e| BuildError::io(&entry, e))?;
                symlink(target, &dest).map_err(|e| BuildError::io(&dest, e))?;
            } else {
                fs::copy(&entry, &dest).map_err(|e| BuildError::io(&dest, e))?;
            }
        }
    }
    Ok(())
}

/// Every path under `dir`, sorted, parents before children.
pub fn walk(dir: &Path) -> Result<Vec<PathBuf>, BuildError> {
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| BuildError::io(dir, e))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(|e| BuildError::io(dir, e))?;
    entries.sort();
    for p in entries {
        out.push(p.clone());
        if fs::symlink_metadata(&p).map_err(|e| BuildError::io(&p, e))?.is_dir() {
            out.extend(walk(&p)?);
        }
    }
    Ok(out)
}

/// Feeds what the role directories put into an image to `field`, for the
/// build key: each path's name relative to its directory, a link's target
/// and a file's bytes. A relative link to a file (a unit the controller
/// shares with the worker: `units/kubelet.service ->
/// ../../worker/units/kubelet.service`) also feeds the bytes behind it,
/// since the build copies those: changing the shared unit rebuilds both
/// images.
pub fn hash_role_dirs(dirs: &[PathBuf], field: &mut dyn FnMut(&[u8])) -> Result<(), BuildError> {
    for d in dirs.iter().filter(|d| d.is_dir()) {
        for p in walk(d)? {
            field(p.strip_prefix(d).unwrap_or(&p).as_os_str().as_encoded_bytes());
            let meta = fs::symlink_metadata(&p).map_err(|e| BuildError::io(&p, e))?;
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&p).map_err(|e| BuildError::io(&p, e))?;
                field(target.as_os_str().as_encoded_bytes());
                if target.is_relative() && p.is_file() {
                    field(&fs::read(&p).map_err(|e| BuildError::io(&p, e))?);
                }
            } else if meta.is_file() {
                field(&fs::read(&p).map_err(|e| BuildError::io(&p, e))?);
            }
        }
    }
    Ok(())
}

/// Installs the units of `dirs` (in order; a later one replaces an earlier
/// one of the same name) into /usr/lib/systemd/system and enables each by
/// its `[Install] WantedBy=`/`RequiredBy=`, with symlinks in /usr (the
/// writable /etc does not exist yet when systemd first loads units).
pub fn add_units(dirs: &[PathBuf], root: &Path) -> Result<Vec<String>, BuildError> {
    let unit_dir = root.join("usr/lib/systemd/system");
    let mut units: BTreeMap<String, PathBuf> = BTreeMap::new();
    for d in dirs.iter().filter(|d| d.is_dir()) {
        for p in walk(d)? {
            if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
                units.insert(name.to_string(), p.clone());
            }
        }
    }
    for (name, src) in &units {
        let dest = unit_dir.join(name);
        fs::copy(src, &dest).map_err(|e| BuildError::io(&dest, e))?;
        let text = fs::read_to_string(src).map_err(|e| BuildError::io(src, e))?;
        for (kind, target) in install_targets(&text) {
            enable(root, &target, kind, name)?;
        }
    }
    for (target, unit) in ENABLE {
        enable(root, target, "wants", unit)?;
    }
    Ok(units.into_keys().collect())
}

/// The `WantedBy=`/`RequiredBy=` targets of a unit's `[Install]` section.
fn install_targets(unit: &str) -> Vec<(&'static str, String)> {
    let mut section = "";
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Install]" {
            for (key, kind) in [("WantedBy=", "wants"), ("RequiredBy=", "requires")] {
                if let Some(v) = line.strip_prefix(key) {
                    out.extend(v.split_whitespace().map(|t| (kind, t.to_string())));
                }
            }
        }
    }
    out
}

fn enable(root: &Path, target: &str, kind: &str, unit: &str) -> Result<(), BuildError> {
    let dir = root.join(format!("usr/lib/systemd/system/{target}.{kind}"));
    fs::create_dir_all(&dir).map_err(|e| BuildError::io(&dir, e))?;
    let link = dir.join(unit);
    let _ = fs::remove_file(&link);
    symlink(format!("../{unit}"), &link).map_err(|e| BuildError::io(&link, e))
}

/// Writes a small file into the image, creating its directory.
pub fn write_file(root: &Path, path: &str, contents: &[u8], mode: u32) -> Result<(), BuildError> {
    let dest = root.join(path);
    mkdir_parent(&dest)?;
    fs::write(&dest, contents).map_err(|e| BuildError::io(&dest, e))?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
        .map_err(|e| BuildError::io(&dest, e))
}

/// Moves the base's /etc to /usr/share/factory/etc and writes the
/// tmpfiles.d lines that copy each of its entries to /etc when missing.
/// Units the base enabled in /etc/systemd/system are enabled in /usr too.
pub fn make_factory_etc(root: &Path) -> Result<(), BuildError> {
    let etc = root.join("etc");
    disable(&etc.join("systemd/system"), NOT_ENABLED)?;
    hoist_enablement(&etc.join("systemd/system"), &root.join("usr/lib/systemd/system"))?;
    // systemd makes the machine id on first boot.
    let _ = fs::remove_file(etc.join("machine-id"));
    let factory = root.join("usr/share/factory/etc");
    if factory.exists() {
        fs::remove_dir_all(&factory).map_err(|e| BuildError::io(&factory, e))?;
    }
    mkdir_parent(&factory)?;
    fs::rename(&etc, &factory).map_err(|e| BuildError::io(&factory, e))?;
    let mut names: Vec<String> = fs::read_dir(&factory)
        .map_err(|e| BuildError::io(&factory, e))?
        .filter_map(|e| e.ok().and_then(|e| e.file_name().to_str().map(str::to_string)))
        .collect();
    names.sort();
    let mut conf = String::from(
        "# Written by keel build: /etc is made from /usr/share/factory/etc on first boot.\n",
    );
    for n in names {
        let p = factory.join(&n);
        let meta = fs::symlink_metadata(&p).map_err(|e| BuildError::io(&p, e))?;
        if meta.file_type().is_symlink() {
            // `C` follows links, and relative ones dangle in the factory.
            let target = fs::read_link(&p).map_err(|e| BuildError::io(&p, e))?;
            conf.push_str(&format!("L /etc/{n} - - - - {}\n", target.display()));
        } else {
            conf.push_str(&format!("C /etc/{n} - - - -\n"));
        }
    }
    write_file(root, ETC_TMPFILES, conf.as_bytes(), 0o644)
}

/// Removes the enablement symlinks of `units` from `etc_units`.
fn disable(etc_units: &Path, units: &[&str]) -> Result<(), BuildError> {
    if !etc_units.is_dir() {
        return Ok(());
    }
    for p in walk(etc_units)? {
        let named = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| units.contains(&n));
        if named && fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
            fs::remove_file(&p).map_err(|e| BuildError::io(&p, e))?;
        }
    }
    Ok(())
}

/// Copies the enablement symlinks of `etc_units` (`*.wants/`, `*.requires/`,
/// aliases) into `usr_units` where missing.
fn hoist_enablement(etc_units: &Path, usr_units: &Path) -> Result<(), BuildError> {
    if !etc_units.is_dir() {
        return Ok(());
    }
    for p in walk(etc_units)? {
        let meta = fs::symlink_metadata(&p).map_err(|e| BuildError::io(&p, e))?;
        if !meta.file_type().is_symlink() {
            continue;
        }
        let rel = p.strip_prefix(etc_units).unwrap_or(&p);
        let dest = usr_units.join(rel);
        if fs::symlink_metadata(&dest).is_ok() {
            continue;
        }
        let target = fs::read_link(&p).map_err(|e| BuildError::io(&p, e))?;
        // Links to /dev/null mask units; a factory default masks nothing.
        if target == Path::new("/dev/null") {
            continue;
        }
        mkdir_parent(&dest)?;
        symlink(&target, &dest).map_err(|e| BuildError::io(&dest, e))?;
    }
    Ok(())
}

/// The root file system's skeleton: mount points, /etc (filled on first
/// boot) and the merged-/usr links.
pub fn make_skeleton(dir: &Path) -> Result<(), BuildError> {
    for (d, mode) in [
        ("dev", 0o755),
        ("etc", 0o755),
        ("proc", 0o555),
        ("run", 0o755),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("usr", 0o755),
        ("var", 0o755),
        ("root", 0o700),
    ] {
        let p = dir.join(d);
        fs::create_dir_all(&p).map_err(|e| BuildError::io(&p, e))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))
            .map_err(|e| BuildError::io(&p, e))?;
    }
    // /etc and /var are as new as /usr: ConditionNeedsUpdate= units
    // (ldconfig, journal catalog, ...) have nothing to do on first boot.
    for f in ["etc/.updated", "var/.updated"] {
        let p = dir.join(f);
        fs::write(&p, b"").map_err(|e| BuildError::io(&p, e))?;
    }
    for (l, t) in
        [("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")]
    {
        let p = dir.join(l);
        symlink(t, &p).map_err(|e| BuildError::io(&p, e))?;
    }
    Ok(())
}

/// Sets the modification time of every path under `dir` (and `dir`) to
/// `epoch`, without following symlinks.
pub fn clamp_times(dir: &Path, epoch: u64) -> Result<(), BuildError> {
    let mut paths = walk(dir)?;
    paths.push(dir.to_path_buf());
    let ts = libc::timespec { tv_sec: epoch as libc::time_t, tv_nsec: 0 };
    let times = [ts, ts];
    for p in paths {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| BuildError::Other(format!("path with NUL: {}", p.display())))?;
        // SAFETY: valid C string and a two-element timespec array.
        let r = unsafe {
            libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW)
        };
        if r != 0 {
            return Err(BuildError::io(&p, std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// The kernel and initrd of the base (`/boot/vmlinuz-*`, `/boot/initrd.img-*`)
/// and the kernel's version.
pub fn kernel(root: &Path) -> Result<(PathBuf, PathBuf, String), BuildError> {
    let boot = root.join("boot");
    let mut versions: Vec<String> = fs::read_dir(&boot)
        .map_err(|e| BuildError::io(&boot, e))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("vmlinuz-").map(str::to_string))
        .collect();
    versions.sort();
    let version = versions.pop().ok_or_else(|| {
        BuildError::Other("the base has no kernel in /boot: add a kernel package (linux-image-cloud-amd64) to the profile's base packages".into())
    })?;
    let initrd = boot.join(format!("initrd.img-{version}"));
    if !initrd.is_file() {
        return Err(BuildError::Other(format!(
            "the base has no {} (is dracut in the base packages?)",
            initrd.display()
        )));
    }
    Ok((boot.join(format!("vmlinuz-{version}")), initrd, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_targets_reads_only_the_install_section() {
        let unit = "[Unit]\nWantedBy=nope.target\n[Install]\nWantedBy=multi-user.target other.target\nRequiredBy=x.target\n";
        assert_eq!(
            install_targets(unit),
            vec![
                ("wants", "multi-user.target".into()),
                ("wants", "other.target".into()),
                ("requires", "x.target".into())
            ]
        );
    }

    #[test]
    fn factory_etc_copies_files_and_recreates_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("etc/systemd/system/multi-user.target.wants")).unwrap();
        fs::create_dir_all(root.join("usr/lib/systemd/system")).unwrap();
        fs::write(root.join("etc/hostname"), "x").unwrap();
        fs::write(root.join("etc/machine-id"), "").unwrap();
        symlink("../proc/self/mounts", root.join("etc/mtab")).unwrap();
        symlink(
            "/usr/lib/systemd/system/a.service",
            root.join("etc/systemd/system/multi-user.target.wants/a.service"),
        )
        .unwrap();
        fs::create_dir_all(root.join("etc/systemd/system/timers.target.wants")).unwrap();
        symlink(
            "/usr/lib/systemd/system/apt-daily.timer",
            root.join("etc/systemd/system/timers.target.wants/apt-daily.timer"),
        )
        .unwrap();
        make_factory_etc(root).unwrap();
        for gone in [
            "usr/lib/systemd/system/timers.target.wants/apt-daily.timer",
            "usr/share/factory/etc/systemd/system/timers.target.wants/apt-daily.timer",
        ] {
            assert!(fs::symlink_metadata(root.join(gone)).is_err(), "{gone} is still enabled");
        }
        let conf = fs::read_to_string(root.join(ETC_TMPFILES)).unwrap();
        assert!(conf.contains("C /etc/hostname - - - -\n"), "{conf}");
        assert!(conf.contains("L /etc/mtab - - - - ../proc/self/mounts\n"), "{conf}");
        assert!(!conf.contains("machine-id"), "{conf}");
        assert!(!root.join("etc").exists());
        assert!(root.join("usr/share/factory/etc/hostname").is_file());
        let hoisted = root.join("usr/lib/systemd/system/multi-user.target.wants/a.service");
        assert_eq!(fs::read_link(hoisted).unwrap(), Path::new("/usr/lib/systemd/system/a.service"));
    }

    #[test]
    fn a_unit_shared_by_a_relative_link_counts_with_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let (worker, controller) =
            (dir.path().join("worker/units"), dir.path().join("controller/units"));
        fs::create_dir_all(&worker).unwrap();
        fs::create_dir_all(&controller).unwrap();
        fs::write(worker.join("kubelet.service"), "[Service]\nExecStart=/usr/bin/kubelet\n")
            .unwrap();
        symlink("../../worker/units/kubelet.service", controller.join("kubelet.service")).unwrap();
        let key = || {
            let mut all = Vec::new();
            hash_role_dirs(&[controller.clone()], &mut |b| {
                all.extend_from_slice(&(b.len() as u64).to_le_bytes());
                all.extend_from_slice(b);
            })
            .unwrap();
            all
        };
        let before = key();
        fs::write(worker.join("kubelet.service"), "[Service]\nExecStart=/usr/bin/kubelet --v=2\n")
            .unwrap();
        assert_ne!(
            key(),
            before,
            "a change behind the link must change the controller's build key"
        );
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("usr/lib/systemd/system")).unwrap();
        add_units(&[controller.clone()], &root).unwrap();
        let installed = root.join("usr/lib/systemd/system/kubelet.service");
        assert!(
            !fs::symlink_metadata(&installed).unwrap().file_type().is_symlink(),
            "the image gets the unit, not the link"
        );
        assert!(fs::read_to_string(installed).unwrap().contains("--v=2"));
    }
    #[test]
    fn component_paths_outside_usr_are_refused() {
        let root = Path::new("/r");
        assert!(image_path(root, "c", "/opt/x").is_err());
        assert!(image_path(root, "c", "/usr/../etc/x").is_err());
        assert_eq!(image_path(root, "c", "/usr/bin/x").unwrap(), PathBuf::from("/r/usr/bin/x"));
    }
}
