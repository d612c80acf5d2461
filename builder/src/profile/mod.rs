//! Profiles (pinned component versions) and roles, resolved into the one
//! manifest that says what goes into an image.
//!
//! `profiles/<name>.toml` pins the Debian base and every component; a
//! profile may `extend` another and override single fields.
//! `images/<role>/role.toml` names the components a role needs. [`resolve`]
//! puts the two together into a [`Resolved`] manifest.

pub mod command;
mod error;
pub mod load;
pub mod resolved;
pub mod role;
mod schema;
mod table;

use std::path::PathBuf;

use keel_contract::Role;

pub use error::{Location, ProfileError};
pub use load::{ComponentSpec, Profile, SpecSource};
// The image build (keel build) uses all of these.
#[allow(unused_imports)]
pub use resolved::{Algorithm, Base, Component, Digest, Install, Resolved, Source, TestImage};

/// Where profiles and role definitions live.
#[derive(Debug, Clone)]
pub struct Paths {
    /// `./profiles` by default.
    pub profiles: PathBuf,
    /// `./images` by default.
    pub images: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths { profiles: PathBuf::from("profiles"), images: PathBuf::from("images") }
    }
}

/// Resolves profile `profile_name_or_path` for `role`: the fully pinned
/// manifest of what goes into that role's image.
pub fn resolve(
    paths: &Paths,
    profile_name_or_path: &str,
    role: Role,
) -> Result<Resolved, ProfileError> {
    let profile = load::load(&paths.profiles, profile_name_or_path)?;
    let role_def = role::load(&paths.images, role)?;
    resolve_loaded(&profile, &role_def)
}

/// Resolves an already loaded profile and role definition.
pub fn resolve_loaded(
    profile: &Profile,
    role_def: &role::RoleDef,
) -> Result<Resolved, ProfileError> {
    let extra = profile.role_components.get(&role_def.role).into_iter().flatten();
    let wanted: Vec<&(String, Location)> = role_def.components.iter().chain(extra).collect();
    let missing: Vec<&(String, Location)> =
        wanted.iter().copied().filter(|(c, _)| !profile.components.contains_key(c)).collect();
    if let Some((_, at)) = missing.first() {
        return Err(ProfileError::MissingComponent {
            at: at.clone(),
            role: role_def.role,
            missing: missing.iter().map(|(c, _)| c.clone()).collect(),
            profile: profile.name.clone(),
            provided: profile.components.keys().cloned().collect(),
        });
    }
    let mut names: Vec<&str> = wanted.iter().map(|(c, _)| c.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let components: Vec<Component> =
        names.iter().map(|n| component(profile, &profile.components[*n])).collect();

    let mut packages: Vec<String> = profile.packages.clone();
    packages.extend(role_def.packages.iter().cloned());
    packages.extend(profile.role_packages.get(&role_def.role).into_iter().flatten().cloned());
    for c in &components {
        if let Source::Debian { package } = &c.source {
            packages.push(match &c.version {
                Some(v) => format!("{package}={v}"),
                None => package.clone(),
            });
        }
    }
    packages.sort();
    packages.dedup();

    Ok(Resolved {
        profile: profile.name.clone(),
        extends: profile.extends.clone(),
        role: role_def.role,
        arch: profile.arch.clone(),
        source_date_epoch: profile.source_date_epoch,
        kernel_cmdline: profile.kernel_cmdline.clone(),
        base: Base { suite: profile.suite.clone(), mirror: profile.mirror.clone(), packages },
        components,
        test: profile.test.clone(),
    })
}

/// Every component of a profile, resolved (for `keel fetch` without a role:
/// filling a cache or a mirror for all roles at once).
pub fn all_components(profile: &Profile) -> Vec<Component> {
    profile.components.values().map(|spec| component(profile, spec)).collect()
}

fn component(profile: &Profile, spec: &ComponentSpec) -> Component {
    let version = spec.version.as_ref().map(|v| v.value.clone());
    let source = match &spec.source {
        SpecSource::Url { url, digest, .. } => Source::Url {
            url: load::expand(&url.value, version.as_deref().unwrap_or_default(), &profile.arch),
            digest: digest.value.clone(),
        },
        SpecSource::Debian { package } => Source::Debian { package: package.value.clone() },
    };
    Component { name: spec.name.clone(), version, source, install: spec.install.clone() }
}
