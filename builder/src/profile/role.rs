//! Role definitions: `images/<role>/role.toml` says which components (by
//! their profile names) and which extra Debian packages a role's image
//! gets. The same folder holds the role's `units/` and `files/`.

use std::fs;
use std::path::{Path, PathBuf};

use keel_bootstrap::Role;

use super::error::{Location, ProfileError};
use super::schema::RoleFile;

/// A loaded role definition.
#[derive(Debug, Clone)]
pub struct RoleDef {
    pub role: Role,
    /// Component names with where each is named.
    pub components: Vec<(String, Location)>,
    pub packages: Vec<String>,
}

/// `images/<role>/role.toml`.
pub fn role_file(images_dir: &Path, role: Role) -> PathBuf {
    images_dir.join(role.as_str()).join("role.toml")
}

pub fn load(images_dir: &Path, role: Role) -> Result<RoleDef, ProfileError> {
    let path = role_file(images_dir, role);
    let text = fs::read_to_string(&path).map_err(|source| ProfileError::Read { path: path.clone(), source })?;
    let file: RoleFile = toml::from_str(&text).map_err(|e| {
        let at = Location::at(&path, &text, e.span().map_or(0, |s| s.start));
        ProfileError::invalid(at, e.message().trim_end().to_string())
    })?;
    let components = file
        .components
        .iter()
        .map(|c| (c.get_ref().clone(), Location::of_span(&path, &text, &c.span())))
        .collect();
    Ok(RoleDef { role, components, packages: file.packages })
}
