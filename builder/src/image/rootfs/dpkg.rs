//! A Debian package installed in the base, as the manifest lists it (read
//! from dpkg's status file, with what the SBOM needs, by `sbom::debian_packages`).

/// A Debian package installed in the base.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
}
