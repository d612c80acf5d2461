//! System users and groups, made at build time: the tools tree's
//! systemd-sysusers (systemd 257, as in the image) over the tree's
//! sysusers.d, before /etc becomes the factory copy. Components installed
//! from release artifacts (etcd) come with no package to make their users;
//! made here, they are in the image's /etc and its factory copy, and no
//! node runs sysusers at boot (systemd's own unit runs only when /etc is
//! older than /usr, which an image's never is).

use std::path::Path;

use crate::image::tools::{Tools, WORK};
use crate::image::BuildError;

/// Runs systemd-sysusers over the tree at `work/tree_dir`. Dates it writes
/// (a new user's last password change in /etc/shadow) are the build's
/// `epoch` (SOURCE_DATE_EPOCH), so that two builds write the same files.
pub fn add_system_users(
    tools: &Tools,
    work: &Path,
    tree_dir: &str,
    epoch: u64,
) -> Result<(), BuildError> {
    let root = format!("--root={WORK}/{tree_dir}");
    tools.run(
        work,
        "/usr/bin/systemd-sysusers",
        &[root],
        &[("SOURCE_DATE_EPOCH", epoch.to_string())],
    )?;
    Ok(())
}
