//! The image's file tree, assembled in a work directory: the Debian base
//! unpacked (tar crate), component layers from the verified artifact cache,
//! the role's files and units, the static keel-bootstrap; then split into
//! what the image keeps: `/usr` (read-only, verified), with the base's
//! `/etc` as a factory copy in `/usr/share/factory/etc`, which the build
//! also copies into the writable root's /etc (keel-init restores an entry
//! from it when one goes missing); and the kernel and initrd.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::BuildError;

mod components;
mod dpkg;
mod etc;
mod files;
mod kernel;
mod skeleton;
mod test_layer;
mod times;
mod units;
mod unpack;
mod users;

pub use self::components::add_components;
pub use self::dpkg::Package;
pub use self::etc::{copy_etc, make_factory_etc};
pub use self::files::{add_files, hash_role_dirs};
pub use self::kernel::{kernel, modules_dir, write_static_nodes};
pub use self::skeleton::make_skeleton;
pub use self::test_layer::add_test_layer;
pub use self::times::clamp_times;
pub use self::units::add_units;
pub use self::unpack::unpack_base;
pub use self::users::add_system_users;

fn mkdir_parent(p: &Path) -> Result<(), BuildError> {
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).map_err(|e| BuildError::io(parent, e))?;
    }
    Ok(())
}

/// Copies the file `src` to `dest` with a mode that does not depend on the
/// checkout: 0755 when `src` has any execute bit, 0644 otherwise (a
/// checkout made under umask 002 has 0664 files; the image must not
/// change with it).
pub fn copy_file(src: &Path, dest: &Path) -> Result<(), BuildError> {
    let executable = fs::metadata(src).map_err(|e| BuildError::io(src, e))?.mode() & 0o111 != 0;
    fs::copy(src, dest).map_err(|e| BuildError::io(dest, e))?;
    let mode = if executable { 0o755 } else { 0o644 };
    fs::set_permissions(dest, fs::Permissions::from_mode(mode)).map_err(|e| BuildError::io(dest, e))
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

/// Writes a small file into the image, creating its directory.
pub fn write_file(root: &Path, path: &str, contents: &[u8], mode: u32) -> Result<(), BuildError> {
    let dest = root.join(path);
    mkdir_parent(&dest)?;
    fs::write(&dest, contents).map_err(|e| BuildError::io(&dest, e))?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
        .map_err(|e| BuildError::io(&dest, e))
}

#[cfg(test)]
mod tests {
    use super::components::{image_path, unpack_layer};
    use std::os::unix::fs::symlink;

    use super::units::install_targets;
    use super::*;

    #[test]
    fn copied_role_files_get_modes_that_do_not_depend_on_the_checkout() {
        let dir = tempfile::tempdir().unwrap();
        let (src, root) = (dir.path().join("files"), dir.path().join("root"));
        fs::create_dir_all(src.join("etc/keel")).unwrap();
        fs::set_permissions(src.join("etc/keel"), fs::Permissions::from_mode(0o775)).unwrap();
        for (name, mode) in [("conf", 0o664), ("tool", 0o775), ("private", 0o600)] {
            fs::write(src.join("etc/keel").join(name), name).unwrap();
            fs::set_permissions(src.join("etc/keel").join(name), fs::Permissions::from_mode(mode))
                .unwrap();
        }
        add_files(&src, &root).unwrap();
        let mode = |p: &str| fs::metadata(root.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("etc/keel"), 0o755);
        assert_eq!(mode("etc/keel/conf"), 0o644);
        assert_eq!(mode("etc/keel/tool"), 0o755);
        assert_eq!(mode("etc/keel/private"), 0o644);
    }

    #[test]
    fn units_off_the_way_to_keel_bootstrap_wait_for_the_network_at_idle_weight_while_booting() {
        let dir = tempfile::tempdir().unwrap();
        add_units(&[], dir.path()).unwrap();
        let units = dir.path().join("usr/lib/systemd/system");
        for unit in ["dbus.service", "systemd-logind.service", "serial-getty@.service"] {
            let conf = units.join(format!("{unit}.d/keel-after-network.conf"));
            let text = fs::read_to_string(&conf).unwrap();
            assert!(text.contains("\nAfter=network-online.target\n"), "{unit}: {text}");
            assert!(text.contains("\nStartupCPUWeight=idle\n"), "{unit}: {text}");
            assert!(!text.contains("\nCPUWeight="), "{unit}: idle only while booting: {text}");
        }
        for unit in ["keel-bootstrap.service", "systemd-growfs-root.service"] {
            assert!(!units.join(format!("{unit}.d")).exists(), "{unit} waits for nothing");
        }
        assert_eq!(
            fs::read_link(units.join("getty.target.wants/serial-getty@ttyS0.service")).unwrap(),
            Path::new("../serial-getty@.service")
        );
    }

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
        // Debian's dracut enables its shutdown unit statically, in /usr.
        fs::create_dir_all(root.join("usr/lib/systemd/system/sysinit.target.wants")).unwrap();
        symlink(
            "../dracut-shutdown.service",
            root.join("usr/lib/systemd/system/sysinit.target.wants/dracut-shutdown.service"),
        )
        .unwrap();
        fs::create_dir_all(root.join("usr/lib/systemd/system-generators")).unwrap();
        for g in ["systemd-fstab-generator", "systemd-gpt-auto-generator"] {
            fs::write(root.join("usr/lib/systemd/system-generators").join(g), "").unwrap();
        }
        make_factory_etc(root).unwrap();
        let generators = root.join("usr/share/factory/etc/systemd/system-generators");
        assert_eq!(
            fs::read_link(generators.join("systemd-gpt-auto-generator")).unwrap(),
            Path::new("/dev/null")
        );
        assert!(fs::symlink_metadata(generators.join("systemd-fstab-generator")).is_err());
        for gone in [
            "usr/lib/systemd/system/timers.target.wants/apt-daily.timer",
            "usr/share/factory/etc/systemd/system/timers.target.wants/apt-daily.timer",
            "usr/lib/systemd/system/sysinit.target.wants/dracut-shutdown.service",
        ] {
            assert!(fs::symlink_metadata(root.join(gone)).is_err(), "{gone} is still enabled");
        }
        let factory = root.join(keel_contract::factory_etc::DIR);
        assert_eq!(fs::read_link(factory.join("mtab")).unwrap(), Path::new("../proc/self/mounts"));
        assert!(fs::symlink_metadata(factory.join("machine-id")).is_err());
        assert!(!root.join("etc").exists());
        assert!(root.join("usr/share/factory/etc/hostname").is_file());
        let hoisted = root.join("usr/lib/systemd/system/multi-user.target.wants/a.service");
        assert_eq!(fs::read_link(hoisted).unwrap(), Path::new("/usr/lib/systemd/system/a.service"));
    }

    #[test]
    fn an_empty_module_list_goes_and_a_list_that_names_one_stays() {
        for (list, kept) in [("# /etc/modules\n\n", false), ("# nvme\nena\n", true)] {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path();
            fs::create_dir_all(root.join("etc/modules-load.d")).unwrap();
            fs::create_dir_all(root.join("usr/lib/systemd/system")).unwrap();
            fs::write(root.join("etc/modules"), list).unwrap();
            symlink("../modules", root.join("etc/modules-load.d/modules.conf")).unwrap();
            make_factory_etc(root).unwrap();
            let factory = root.join("usr/share/factory/etc");
            for p in ["modules", "modules-load.d/modules.conf"] {
                let there = fs::symlink_metadata(factory.join(p)).is_ok();
                assert_eq!(there, kept, "{p} with {list:?}");
            }
        }
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
            hash_role_dirs(std::slice::from_ref(&controller), &mut |b| {
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
        add_units(std::slice::from_ref(&controller), &root).unwrap();
        let installed = root.join("usr/lib/systemd/system/kubelet.service");
        assert!(
            !fs::symlink_metadata(&installed).unwrap().file_type().is_symlink(),
            "the image gets the unit, not the link"
        );
        assert!(fs::read_to_string(installed).unwrap().contains("--v=2"));
    }
    /// Upstream's CNI plugins tarball names its entries `./bridge`: with
    /// `strip-components = 1` (as in profiles/production.toml) tar installs
    /// `bridge`; Keel used to drop the `.` first and install nothing.
    #[test]
    fn a_dot_slash_tarball_strips_like_tar() {
        let dir = tempfile::tempdir().unwrap();
        let tgz = dir.path().join("cni.tgz");
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            fs::File::create(&tgz).unwrap(),
            flate2::Compression::fast(),
        ));
        for (name, body) in [("./", &b""[..]), ("./bridge", b"b"), ("./host-local", b"h")] {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o755);
            if body.is_empty() {
                h.set_entry_type(tar::EntryType::Directory);
            }
            // Raw: the tar crate's set_path would drop the `./`.
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, body).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap();
        let dest = dir.path().join("usr/lib/cni");
        unpack_layer(&tgz, &dest, 1, &[], "cni-plugins").unwrap();
        let mut names: Vec<_> =
            fs::read_dir(&dest).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, ["bridge", "host-local"]);
    }

    #[test]
    fn component_paths_outside_usr_are_refused() {
        let root = Path::new("/r");
        assert!(image_path(root, "c", "/opt/x").is_err());
        assert!(image_path(root, "c", "/usr/../etc/x").is_err());
        assert_eq!(image_path(root, "c", "/usr/bin/x").unwrap(), PathBuf::from("/r/usr/bin/x"));
    }
}
