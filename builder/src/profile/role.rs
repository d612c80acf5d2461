//! Role definitions: `images/<role>/role.toml` says which components (by
//! their profile names) and which extra Debian packages a role's image
//! gets. The same folder holds the role's `units/` and `files/`.

use std::path::{Path, PathBuf};

use keel_contract::Role;

use super::error::{Location, ProfileError};
use super::schema::{self, RoleFile};

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
    let (text, file): (String, RoleFile) = schema::read(&path)?;
    let components = file
        .components
        .iter()
        .map(|c| (c.get_ref().clone(), Location::of_span(&path, &text, &c.span())))
        .collect();
    Ok(RoleDef { role, components, packages: file.packages })
}
