//! The factory /etc: the image's /etc as the build made it, kept in /usr
//! (read-only, verified with it). The builder copies it into the root file
//! system's /etc ([`copy_tree`]); at every boot keel-init, before the real
//! root's systemd starts, copies back each top-level entry of it that has
//! gone missing from /etc ([`restore_missing`]). Entries that are there are
//! left as they are: /etc is the node's to change.

use std::fs;
use std::io;
use std::os::unix::fs::{lchown, symlink, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Where the factory /etc is, under the image's root.
pub const DIR: &str = "usr/share/factory/etc";

/// A copy that failed: the path and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct CopyError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> CopyError + '_ {
    move |source| CopyError { path: path.to_path_buf(), source }
}

/// Copies `src` (a file, a symlink or a directory, recursively) to `dest`:
/// owners, modes and links as they are (a link is made again, never
/// followed). Directories that exist are merged into; files and links
/// replace what is there. Anything else (a device, a socket, a FIFO) is an
/// error: /etc holds none.
pub fn copy_tree(src: &Path, dest: &Path) -> Result<(), CopyError> {
    let meta = fs::symlink_metadata(src).map_err(at(src))?;
    let kind = meta.file_type();
    if kind.is_dir() {
        fs::create_dir_all(dest).map_err(at(dest))?;
        let mut names: Vec<_> = fs::read_dir(src)
            .map_err(at(src))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(at(src))?;
        names.sort();
        for name in names {
            copy_tree(&src.join(&name), &dest.join(&name))?;
        }
    } else if kind.is_symlink() {
        let target = fs::read_link(src).map_err(at(src))?;
        match fs::remove_file(dest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(at(dest)(e)),
        }
        symlink(&target, dest).map_err(at(dest))?;
    } else if kind.is_file() {
        fs::copy(src, dest).map_err(at(dest))?;
    } else {
        let why = "not a file, directory or symlink: /etc holds none";
        return Err(at(src)(io::Error::new(io::ErrorKind::Unsupported, why)));
    }
    lchown(dest, Some(meta.uid()), Some(meta.gid())).map_err(at(dest))?;
    if !kind.is_symlink() {
        fs::set_permissions(dest, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(at(dest))?;
    }
    Ok(())
}

/// Copies each top-level entry of `factory` that `etc` lacks (no file,
/// directory or link of that name, not even a dangling link) from
/// `factory` into `etc`, and returns the names it copied, sorted. An entry
/// that fails to copy does not stop the others: the errors come back with
/// the names that were copied.
pub fn restore_missing(factory: &Path, etc: &Path) -> (Vec<String>, Vec<CopyError>) {
    let (mut restored, mut errors) = (Vec::new(), Vec::new());
    let entries = match fs::read_dir(factory) {
        Ok(e) => e,
        Err(e) => return (restored, vec![at(factory)(e)]),
    };
    let mut names: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.file_name())).collect();
    names.sort();
    if let Err(e) = fs::create_dir_all(etc) {
        return (restored, vec![at(etc)(e)]);
    }
    for name in names {
        let to = etc.join(&name);
        if fs::symlink_metadata(&to).is_ok() {
            continue;
        }
        match copy_tree(&factory.join(&name), &to) {
            Ok(()) => restored.push(name.to_string_lossy().into_owned()),
            Err(e) => errors.push(e),
        }
    }
    (restored, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn factory(dir: &Path) -> PathBuf {
        let f = dir.join("factory");
        fs::create_dir_all(f.join("ssl/private")).unwrap();
        fs::set_permissions(f.join("ssl/private"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(f.join("ssl/private/key"), "k").unwrap();
        fs::write(f.join("shadow"), "root:*:1::::::\n").unwrap();
        fs::set_permissions(f.join("shadow"), fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::chown(f.join("shadow"), Some(0), Some(42)).unwrap();
        symlink("../run/systemd/resolve/stub-resolv.conf", f.join("resolv.conf")).unwrap();
        fs::write(f.join("hostname"), "factory\n").unwrap();
        f
    }

    #[test]
    fn a_copy_keeps_owners_modes_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let (f, etc) = (factory(dir.path()), dir.path().join("root/etc"));
        fs::create_dir_all(&etc).unwrap();
        fs::write(etc.join(".updated"), "").unwrap();
        copy_tree(&f, &etc).unwrap();
        let meta = |p: &str| fs::symlink_metadata(etc.join(p)).unwrap();
        assert_eq!(meta("ssl/private").mode() & 0o7777, 0o700);
        assert_eq!((meta("shadow").mode() & 0o7777, meta("shadow").gid()), (0o640, 42));
        assert_eq!(fs::read_to_string(etc.join("ssl/private/key")).unwrap(), "k");
        assert_eq!(
            fs::read_link(etc.join("resolv.conf")).unwrap(),
            Path::new("../run/systemd/resolve/stub-resolv.conf")
        );
        assert!(etc.join(".updated").is_file(), "what was there stays");
    }

    #[test]
    fn only_missing_entries_are_restored_and_changed_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let (f, etc) = (factory(dir.path()), dir.path().join("etc"));
        copy_tree(&f, &etc).unwrap();
        fs::write(etc.join("hostname"), "changed\n").unwrap();
        fs::remove_file(etc.join("shadow")).unwrap();
        fs::remove_dir_all(etc.join("ssl")).unwrap();
        // A dangling link is an entry the node made: it stays.
        fs::remove_file(etc.join("resolv.conf")).unwrap();
        symlink("/nowhere", etc.join("resolv.conf")).unwrap();
        let (restored, errors) = restore_missing(&f, &etc);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(restored, ["shadow", "ssl"]);
        assert_eq!(fs::read_to_string(etc.join("hostname")).unwrap(), "changed\n");
        assert_eq!(fs::symlink_metadata(etc.join("shadow")).unwrap().gid(), 42);
        assert!(etc.join("ssl/private/key").is_file());
        assert_eq!(fs::read_link(etc.join("resolv.conf")).unwrap(), Path::new("/nowhere"));
        assert_eq!(restore_missing(&f, &etc).0, Vec::<String>::new());
    }

    #[test]
    fn a_missing_factory_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let (restored, errors) = restore_missing(&dir.path().join("nope"), &dir.path().join("etc"));
        assert!(restored.is_empty());
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("nope"), "{}", errors[0]);
    }
}
