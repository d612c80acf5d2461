//! The role's files copied onto the tree, and what the role directories
//! feed to the build key.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{copy_file, walk};
use crate::image::BuildError;

/// Copies a tree of files (`images/<role>/files`) onto `root` as laid out,
/// with modes that do not depend on the checkout ([`copy_file`]). A link
/// stays a link, except a relative one that leads out of `src`: a file one
/// role shares with another (the controller's
/// `usr/lib/sysctl.d/80-keel-kubernetes.conf ->
/// ../../../../../worker/files/usr/lib/sysctl.d/80-keel-kubernetes.conf`)
/// would dangle in the image, so the file behind it is copied.
pub fn add_files(src: &Path, root: &Path) -> Result<(), BuildError> {
    if !src.is_dir() {
        return Ok(());
    }
    let inside = fs::canonicalize(src).map_err(|e| BuildError::io(src, e))?;
    for entry in walk(src)? {
        let rel = entry.strip_prefix(src).unwrap_or(&entry);
        let dest = root.join(rel);
        let meta = fs::symlink_metadata(&entry).map_err(|e| BuildError::io(&entry, e))?;
        if meta.is_dir() {
            // A directory the tree lacks is made 0755; the base's keep theirs.
            if fs::symlink_metadata(&dest).is_err() {
                fs::create_dir_all(&dest).map_err(|e| BuildError::io(&dest, e))?;
                fs::set_permissions(&dest, fs::Permissions::from_mode(0o755))
                    .map_err(|e| BuildError::io(&dest, e))?;
            }
        } else {
            let _ = fs::remove_file(&dest);
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&entry).map_err(|e| BuildError::io(&entry, e))?;
                if target.is_relative() && !leads_into(&entry, &inside) {
                    copy_file(&entry, &dest)?;
                } else {
                    symlink(target, &dest).map_err(|e| BuildError::io(&dest, e))?;
                }
            } else {
                copy_file(&entry, &dest)?;
            }
        }
    }
    Ok(())
}

/// Whether `link` resolves to a path within `dir` (canonical). A link
/// that resolves nowhere counts as inside: it is kept as a link.
fn leads_into(link: &Path, dir: &Path) -> bool {
    fs::canonicalize(link).map_or(true, |to| to.starts_with(dir))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_out_of_the_roles_files_is_copied_and_one_within_stays_a_link() {
        let t = tempfile::tempdir().unwrap();
        let (worker, controller, root) = (
            t.path().join("worker/files"),
            t.path().join("controller/files"),
            t.path().join("root"),
        );
        fs::create_dir_all(worker.join("etc")).unwrap();
        fs::create_dir_all(controller.join("etc")).unwrap();
        fs::write(worker.join("etc/shared.conf"), b"shared\n").unwrap();
        symlink("../../../worker/files/etc/shared.conf", controller.join("etc/shared.conf"))
            .unwrap();
        fs::write(controller.join("etc/own.conf"), b"own\n").unwrap();
        symlink("own.conf", controller.join("etc/alias.conf")).unwrap();
        symlink("/dev/null", controller.join("etc/masked.conf")).unwrap();
        fs::create_dir_all(&root).unwrap();

        add_files(&controller, &root).unwrap();

        let shared = root.join("etc/shared.conf");
        assert!(!fs::symlink_metadata(&shared).unwrap().file_type().is_symlink());
        assert_eq!(fs::read(&shared).unwrap(), b"shared\n");
        assert_eq!(fs::read_link(root.join("etc/alias.conf")).unwrap(), Path::new("own.conf"));
        assert_eq!(fs::read_link(root.join("etc/masked.conf")).unwrap(), Path::new("/dev/null"));
    }
}
