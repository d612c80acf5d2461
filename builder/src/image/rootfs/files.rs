//! The role's files copied onto the tree, and what the role directories
//! feed to the build key.

use super::*;

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
