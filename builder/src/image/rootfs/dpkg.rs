//! The Debian packages installed in the base, read from dpkg's status file.

use super::*;

/// A Debian package installed in the base.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
}

/// The installed packages of the base, from dpkg's status file.
pub fn debian_packages(root: &Path) -> Result<Vec<Package>, BuildError> {
    let status = root.join("var/lib/dpkg/status");
    let text = fs::read_to_string(&status).map_err(|e| BuildError::io(&status, e))?;
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        };
        if let (Some(name), Some(version), Some(state)) =
            (field("Package:"), field("Version:"), field("Status:"))
        {
            if state.ends_with(" installed") {
                out.push(Package { name, version });
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
