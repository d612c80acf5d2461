//! What the builder writes into the initrd for keel-init to read: the list
//! of kernel modules to load, one path a line in load order, each path
//! optionally followed by [`UNLESS_TCG`].

/// The module list's path in the initrd, relative to its root.
pub const MODULE_LIST: &str = "etc/keel-init/modules";

/// After a module's path: not loaded under QEMU's emulation (TCG).
pub const UNLESS_TCG: &str = "unless-tcg";

/// A module's name as the kernel and modprobe know it, from its file's
/// path (in modules.dep or the initrd): the file name without `.ko` and
/// what follows, `-` as `_` (`nvme_core` for `.../nvme-core.ko.xz`).
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split_once(".ko").map_or(file, |(n, _)| n).replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_come_from_the_file_name() {
        assert_eq!(module_name("kernel/drivers/nvme/host/nvme-core.ko.xz"), "nvme_core");
        assert_eq!(module_name("/usr/lib/modules/k/kernel/fs/erofs/erofs.ko"), "erofs");
        assert_eq!(module_name("ena.ko.zst"), "ena");
    }
}
