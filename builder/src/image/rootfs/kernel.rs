//! The base's kernel.

use std::fs;
use std::path::{Path, PathBuf};

use super::write_file;
use crate::image::BuildError;

/// The kernel of the base (`/boot/vmlinuz-*`, the newest) and its version.
/// Its initrd is not the base's: the build makes it (`image::initrd`).
pub fn kernel(root: &Path) -> Result<(PathBuf, String), BuildError> {
    let boot = root.join("boot");
    let mut versions: Vec<String> = fs::read_dir(&boot)
        .map_err(|e| BuildError::io(&boot, e))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("vmlinuz-").map(str::to_string))
        .collect();
    versions.sort();
    let version = versions.pop().ok_or(BuildError::NoKernel)?;
    Ok((boot.join(format!("vmlinuz-{version}")), version))
}

/// The modules directory of kernel `version` in the tree `root`.
pub fn modules_dir(root: &Path, version: &str) -> PathBuf {
    root.join("usr/lib/modules").join(version)
}

/// The tmpfiles.d file with the device nodes of modules that load on
/// first use (`/dev/fuse`, `/dev/net/tun`, `/dev/loop-control`, ...).
pub const STATIC_NODES: &str = "usr/lib/tmpfiles.d/keel-static-nodes.conf";

/// Writes [`STATIC_NODES`] from kernel `version`'s `modules.devname`, line
/// for line what `kmod static-nodes --format=tmpfiles` writes at every
/// boot (kmod-static-nodes.service, masked on a Keel node): the nodes
/// depend only on the kernel, which /usr fixes, and that unit held udev
/// back by seconds under emulation (BENCHMARKS.md, "Where the boot
/// stands").
pub fn write_static_nodes(root: &Path, version: &str) -> Result<(), BuildError> {
    let path = modules_dir(root, version).join("modules.devname");
    let devname = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(BuildError::io(&path, e)),
    };
    let conf = static_nodes(&devname).map_err(|line| {
        BuildError::io(
            &path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not `module devname {{c|b}}major:minor`: {line:?}"),
            ),
        )
    })?;
    write_file(root, STATIC_NODES, conf.as_bytes(), 0o644)
}

/// The tmpfiles.d lines of a `modules.devname`, or the line that is not
/// `module devname {c|b}major:minor`.
fn static_nodes(devname: &str) -> Result<String, String> {
    let mut out = String::from(
        "# Written by keel build from the kernel's modules.devname: what kmod static-nodes writes at boot.\n",
    );
    for line in devname.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_module, name, node] = fields[..] else {
            return Err(line.to_string());
        };
        let kind = node.chars().next().filter(|k| matches!(k, 'c' | 'b'));
        let numbers = node.get(1..).and_then(|n| n.split_once(':'));
        let (Some(kind), Some((major, minor))) = (kind, numbers) else {
            return Err(line.to_string());
        };
        let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !numeric(major) || !numeric(minor) || name.contains("..") || name.starts_with('/') {
            return Err(line.to_string());
        }
        if let Some((dir, _)) = name.rsplit_once('/') {
            out.push_str(&format!("d /dev/{dir} 0755 - - -\n"));
        }
        out.push_str(&format!("{kind}! /dev/{name} 0600 - - - {major}:{minor}\n"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::static_nodes;

    #[test]
    fn static_nodes_are_what_kmod_writes() {
        let devname = "# Device nodes to trigger on-demand module loading.\n\
                       fuse fuse c10:229\n\
                       tun net/tun c10:200\n\
                       dm_mod mapper/control c10:236\n";
        let conf = static_nodes(devname).unwrap();
        let lines: Vec<&str> = conf.lines().skip(1).collect();
        assert_eq!(
            lines,
            [
                "c! /dev/fuse 0600 - - - 10:229",
                "d /dev/net 0755 - - -",
                "c! /dev/net/tun 0600 - - - 10:200",
                "d /dev/mapper 0755 - - -",
                "c! /dev/mapper/control 0600 - - - 10:236",
            ]
        );
    }

    #[test]
    fn a_malformed_line_is_named() {
        for bad in ["fuse fuse", "fuse fuse x10:229", "fuse fuse c10", "fuse ../x c1:2", "a b c1:x"]
        {
            assert_eq!(static_nodes(bad), Err(bad.to_string()), "{bad}");
        }
    }
}
