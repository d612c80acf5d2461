//! The host tools Keel's build, tests and demo run, read from the one list
//! that `scripts/setup` installs and `scripts/check-tools` checks
//! (`scripts/lib/host-tools.list`), so that a test run missing a tool stops
//! at once, naming the tool and its Debian package, instead of failing
//! minutes later in the middle of a build.

use std::ffi::OsStr;
use std::fmt;
use std::path::Path;

/// `scripts/lib/host-tools.list`, compiled in.
const LIST: &str = include_str!("../../scripts/lib/host-tools.list");

/// One entry of the list: a command looked up on `PATH`, or an absolute
/// path of a file, and the Debian package that provides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tool {
    pub name: &'static str,
    pub package: &'static str,
}

impl fmt::Display for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (install the Debian package {})", self.name, self.package)
    }
}

/// Every tool in the list, in its order.
pub fn all() -> Vec<Tool> {
    LIST.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some(Tool { name: words.next()?, package: words.next()? })
        })
        .collect()
}

/// The tools that are not there, looking commands up in `path` (a
/// `PATH`-style list of directories).
pub fn missing_in(path: &OsStr) -> Vec<Tool> {
    let dirs: Vec<_> = std::env::split_paths(path).collect();
    all()
        .into_iter()
        .filter(|t| {
            if t.name.starts_with('/') {
                !Path::new(t.name).exists()
            } else {
                !dirs.iter().any(|d| is_executable(&d.join(t.name)))
            }
        })
        .collect()
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Fails naming every missing tool and its package (`scripts/setup`
/// installs them all).
pub fn check() -> anyhow::Result<()> {
    let missing = missing_in(&std::env::var_os("PATH").unwrap_or_default());
    if missing.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = missing.iter().map(Tool::to_string).collect();
    anyhow::bail!("host tools missing: {} (scripts/setup installs them all)", list.join(", "))
}
