//! What the builder writes into the initrd for keel-init to read: the list
//! of kernel modules to load, one path a line in load order, each path
//! optionally followed by [`UNLESS_TCG`].

/// The module list's path in the initrd, relative to its root.
pub const MODULE_LIST: &str = "etc/keel-init/modules";

/// After a module's path: not loaded under QEMU's emulation (TCG).
pub const UNLESS_TCG: &str = "unless-tcg";
