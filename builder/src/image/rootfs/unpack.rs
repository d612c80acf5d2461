//! The Debian base tarball unpacked into the file tree (tar crate; device
//! nodes left out).

use super::*;

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
        entry.unpack_in(root).map_err(|source| BuildError::Unpack {
            archive: tar_path.display().to_string(),
            entry: path.display().to_string(),
            source,
        })?;
    }
    Ok(())
}
