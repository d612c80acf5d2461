//! Loading a profile: the file, the chain of profiles it `extends`, and the
//! merge of that chain (nearest file wins, field by field) into one
//! validated [`Profile`] whose every value remembers where it was written.

use std::collections::BTreeMap;
use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};

use keel_contract::Role;
use toml::Spanned;

use super::error::{Location, ProfileError};
use super::resolved::{Digest, Install, TestImage};
use super::schema::{self, ComponentTable, InstallTable, ProfileFile};

/// The only architecture Keel builds for.
pub const ARCH: &str = "amd64";

/// Placeholders a URL template may use.
const PLACEHOLDERS: [&str; 2] = ["{version}", "{arch}"];

/// A value and where it was written.
#[derive(Debug, Clone)]
pub struct At<T> {
    pub value: T,
    pub at: Location,
}

/// A profile with its `extends` chain merged and validated.
#[derive(Debug, Clone)]
pub struct Profile {
    /// File stem of the requested profile.
    pub name: String,
    pub path: PathBuf,
    /// Names of the profiles it extends, nearest first.
    pub extends: Vec<String>,
    pub arch: String,
    pub source_date_epoch: Option<u64>,
    /// Extra kernel command line arguments (`kernel-cmdline`).
    pub kernel_cmdline: Vec<String>,
    pub suite: String,
    pub mirror: Option<String>,
    pub packages: Vec<String>,
    pub components: BTreeMap<String, ComponentSpec>,
    /// Extra packages per role.
    pub role_packages: BTreeMap<Role, Vec<String>>,
    /// Extra components per role, each where the profile names it.
    pub role_components: BTreeMap<Role, Vec<(String, Location)>>,
    /// TEST ONLY: set when the profile or one it extends has a `[test]`
    /// table.
    pub test: Option<TestImage>,
}

/// One component as the profile chain defines it: complete, with templates
/// not yet expanded.
#[derive(Debug, Clone)]
pub struct ComponentSpec {
    pub name: String,
    /// Where the nearest profile that mentions the component defines it.
    pub at: Location,
    pub version: Option<At<String>>,
    pub source: SpecSource,
    pub install: Install,
}

#[derive(Debug, Clone)]
pub enum SpecSource {
    Url { url: At<String>, digest: At<Digest>, checksum_url: Option<At<String>> },
    Debian { package: At<String> },
}

/// One file of the chain, kept to turn byte offsets into lines and columns.
struct Layer {
    name: String,
    path: PathBuf,
    text: String,
    file: ProfileFile,
}

impl Layer {
    fn loc(&self, span: &Range<usize>) -> Location {
        Location::of_span(&self.path, &self.text, span)
    }

    fn at<T: Clone>(&self, s: &Spanned<T>) -> At<T> {
        At { value: s.get_ref().clone(), at: self.loc(&s.span()) }
    }
}

/// Where a profile given by name (`production`) or by path
/// (`./profiles/production.toml`) lives.
pub fn locate(profiles_dir: &Path, name_or_path: &str) -> (String, PathBuf) {
    if name_or_path.ends_with(".toml") || name_or_path.contains('/') {
        let path = PathBuf::from(name_or_path);
        let name = path
            .file_stem()
            .map_or_else(|| name_or_path.to_string(), |s| s.to_string_lossy().into_owned());
        (name, path)
    } else {
        (name_or_path.to_string(), profiles_dir.join(format!("{name_or_path}.toml")))
    }
}

/// Loads profile `name_or_path` (looked up in `profiles_dir` when it is a
/// name) with everything it extends.
pub fn load(profiles_dir: &Path, name_or_path: &str) -> Result<Profile, ProfileError> {
    let (name, path) = locate(profiles_dir, name_or_path);
    if !path.is_file() {
        return Err(ProfileError::NotFound { name, path });
    }
    let chain = read_chain(name, path)?;
    merge(&chain)
}

/// Reads the file and every file it extends, nearest first; refuses cycles.
fn read_chain(name: String, path: PathBuf) -> Result<Vec<Layer>, ProfileError> {
    let mut chain: Vec<Layer> = Vec::new();
    let mut seen: Vec<PathBuf> = Vec::new();
    let (mut name, mut path) = (name, path);
    loop {
        let (text, file): (String, ProfileFile) = schema::read(&path)?;
        seen.push(fs::canonicalize(&path).unwrap_or_else(|_| path.clone()));
        let layer = Layer { name, path, text, file };
        let next = match &layer.file.extends {
            None => None,
            Some(ext) => {
                let dir = layer.path.parent().unwrap_or(Path::new("."));
                let next_path = dir.join(format!("{}.toml", ext.get_ref()));
                let at = layer.loc(&ext.span());
                if !next_path.is_file() {
                    return Err(ProfileError::invalid(
                        at,
                        format!(
                            "extends profile {:?}, but there is no file {}",
                            ext.get_ref(),
                            next_path.display()
                        ),
                    ));
                }
                let canonical = fs::canonicalize(&next_path).unwrap_or_else(|_| next_path.clone());
                if let Some(i) = seen.iter().position(|p| *p == canonical) {
                    let mut names: Vec<&str> = chain.iter().map(|l| l.name.as_str()).collect();
                    names.push(&layer.name);
                    let cycle = names[i..].join(" -> ");
                    return Err(ProfileError::invalid(
                        at,
                        format!("cycle in `extends`: {cycle} -> {}", ext.get_ref()),
                    ));
                }
                Some((ext.get_ref().clone(), next_path))
            }
        };
        chain.push(layer);
        match next {
            Some((n, p)) => (name, path) = (n, p),
            None => return Ok(chain),
        }
    }
}

/// A component's fields while the chain is merged.
#[derive(Default)]
struct Entry {
    at: Option<Location>,
    version: Option<At<String>>,
    url: Option<At<String>>,
    digest: Option<At<Digest>>,
    checksum_url: Option<At<String>>,
    debian: Option<At<String>>,
    install: Option<At<InstallTable>>,
}

/// Merges the chain, root first, each file overriding single fields.
fn merge(chain: &[Layer]) -> Result<Profile, ProfileError> {
    let requested = &chain[0];
    let mut arch: Option<At<String>> = None;
    let mut sde = None;
    let mut kernel_cmdline: Option<At<Vec<String>>> = None;
    let mut suite: Option<At<String>> = None;
    let mut mirror: Option<At<String>> = None;
    let mut packages: Option<At<Vec<String>>> = None;
    let mut base_at: Option<Location> = None;
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    let mut role_packages = BTreeMap::new();
    let mut role_components = BTreeMap::new();
    let mut test = None;

    for layer in chain.iter().rev() {
        let f = &layer.file;
        if let Some(t) = &f.test {
            test = Some(test_image(layer, t.get_ref())?);
        }
        if let Some(a) = &f.arch {
            arch = Some(layer.at(a));
        }
        if let Some(s) = &f.source_date_epoch {
            sde = Some(*s.get_ref());
        }
        if let Some(k) = &f.kernel_cmdline {
            kernel_cmdline = Some(layer.at(k));
        }
        if let Some(b) = &f.base {
            base_at = Some(layer.loc(&b.span()));
            let b = b.get_ref();
            if let Some(v) = &b.suite {
                suite = Some(layer.at(v));
            }
            if let Some(v) = &b.mirror {
                mirror = Some(layer.at(v));
            }
            if let Some(v) = &b.packages {
                packages = Some(layer.at(v));
            }
        }
        for (name, table) in &f.components {
            let entry = entries.entry(name.get_ref().clone()).or_default();
            merge_component(layer, name, table, entry)?;
        }
        for (role, extras) in &f.roles {
            role_packages.insert(*role.get_ref(), extras.get_ref().packages.clone());
            let named = extras.get_ref().components.iter();
            role_components.insert(
                *role.get_ref(),
                named.map(|c| (c.get_ref().clone(), layer.loc(&c.span()))).collect(),
            );
        }
    }

    let missing_at = |what: &str| -> ProfileError {
        let at = base_at.clone().unwrap_or_else(|| requested.loc(&(0..0)));
        ProfileError::invalid(
            at,
            format!(
                "missing field `{what}`: neither profile {:?} nor a profile it extends sets it",
                requested.name
            ),
        )
    };
    let suite = suite.ok_or_else(|| missing_at("base.suite"))?.value;
    let packages = packages.ok_or_else(|| missing_at("base.packages"))?.value;
    let arch = match arch {
        None => ARCH.to_string(),
        Some(a) if a.value == ARCH => a.value,
        Some(a) => {
            return Err(ProfileError::invalid(
                a.at,
                format!("unsupported arch {:?}: Keel builds {ARCH} images only", a.value),
            ));
        }
    };
    let kernel_cmdline = match kernel_cmdline {
        None => Vec::new(),
        Some(k) => check_kernel_cmdline(k)?,
    };
    let mut components = BTreeMap::new();
    for (name, entry) in entries {
        components.insert(name.clone(), validate_component(name, entry)?);
    }
    Ok(Profile {
        name: requested.name.clone(),
        path: requested.path.clone(),
        extends: chain[1..].iter().map(|l| l.name.clone()).collect(),
        arch,
        source_date_epoch: sde,
        kernel_cmdline,
        suite,
        mirror: mirror.map(|m| m.value),
        packages,
        components,
        role_packages,
        role_components,
        test,
    })
}

/// Keys of the command line Keel itself sets: a profile may add
/// arguments, not replace how /usr and the root are found and verified.
const KEEL_CMDLINE_KEYS: [&str; 6] =
    ["usrhash", "mount.usrfstype", "mount.usrflags", "root", "rootfstype", "rootflags"];

/// `kernel-cmdline`: one argument per entry, no blanks or quotes (ukify
/// writes the line as given), none of the keys Keel sets.
fn check_kernel_cmdline(k: At<Vec<String>>) -> Result<Vec<String>, ProfileError> {
    for arg in &k.value {
        let key = arg.split('=').next().unwrap_or_default();
        let why = if arg.is_empty() {
            Some("an empty argument".to_string())
        } else if arg.chars().any(|c| c.is_whitespace() || c == '"' || !c.is_ascii_graphic()) {
            Some(format!("{arg:?} is not one argument (blanks, quotes or non-ASCII)"))
        } else if KEEL_CMDLINE_KEYS.contains(&key) {
            Some(format!("{key}= is set by keel build (from the image's /usr and root)"))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(ProfileError::invalid(k.at, format!("kernel-cmdline: {why}")));
        }
    }
    Ok(k.value)
}

/// A `[test]` table with its CA files read (relative to the profile's
/// directory) and checked to be PEM certificates.
fn test_image(layer: &Layer, t: &schema::TestTable) -> Result<TestImage, ProfileError> {
    let dir = layer.path.parent().unwrap_or(Path::new("."));
    let mut trusted_cas = Vec::new();
    for file in &t.trust {
        let at = layer.loc(&file.span());
        let path = dir.join(file.get_ref());
        let pem = fs::read_to_string(&path).map_err(|e| {
            ProfileError::invalid(
                at.clone(),
                format!("test.trust: reading {}: {e}", path.display()),
            )
        })?;
        let certs = pem.matches("-----BEGIN CERTIFICATE-----").count();
        if certs == 0 || pem.contains("PRIVATE KEY-----") {
            return Err(ProfileError::invalid(
                at,
                format!(
                    "test.trust: {} is not a PEM certificate (and must hold no private key)",
                    path.display()
                ),
            ));
        }
        trusted_cas.push(pem);
    }
    Ok(TestImage { trusted_cas })
}

fn merge_component(
    layer: &Layer,
    name: &Spanned<String>,
    table: &Spanned<ComponentTable>,
    entry: &mut Entry,
) -> Result<(), ProfileError> {
    let inherited = entry.at.is_some();
    entry.at = Some(layer.loc(&name.span()));
    let t = table.get_ref();
    if let (Some(_), Some(sha512)) = (&t.sha256, &t.sha512) {
        return Err(ProfileError::invalid(
            layer.loc(&sha512.span()),
            format!("component {:?}: give `sha256` or `sha512`, not both", name.get_ref()),
        ));
    }
    if let (Some(_), Some(debian)) = (&t.url, &t.debian) {
        return Err(ProfileError::invalid(
            layer.loc(&debian.span()),
            format!("component {:?}: give `url` or `debian`, not both", name.get_ref()),
        ));
    }
    let new_digest = match (&t.sha256, &t.sha512) {
        (Some(h), _) => {
            Some(At { value: Digest::Sha256(h.get_ref().0.clone()), at: layer.loc(&h.span()) })
        }
        (_, Some(h)) => {
            Some(At { value: Digest::Sha512(h.get_ref().0.clone()), at: layer.loc(&h.span()) })
        }
        _ => None,
    };
    // A new version of a downloaded artifact needs a new digest: the
    // inherited one belongs to the old version.
    if let (true, Some(v), None, None) = (inherited, &t.version, &new_digest, &t.debian) {
        if let (Some(old), Some(_)) = (&entry.version, &entry.url) {
            if old.value != *v.get_ref() {
                return Err(ProfileError::invalid(
                    layer.loc(&v.span()),
                    format!(
                        "component {:?}: version {:?} overrides {:?} (set at {}) without a new \
                         `sha256` or `sha512`; the inherited digest is for the old version \
                         (`keel pin` sets both)",
                        name.get_ref(),
                        v.get_ref(),
                        old.value,
                        old.at
                    ),
                ));
            }
        }
    }
    if t.debian.is_some() {
        // Switching to a Debian package drops the download fields.
        entry.url = None;
        entry.digest = None;
        entry.checksum_url = None;
        entry.install = None;
        entry.version = None;
    }
    if t.url.is_some() {
        entry.debian = None;
    }
    if let Some(d) = new_digest {
        entry.digest = Some(d);
    }
    if let Some(v) = &t.version {
        entry.version = Some(layer.at(v));
    }
    if let Some(v) = &t.url {
        entry.url = Some(layer.at(v));
    }
    if let Some(v) = &t.checksum_url {
        entry.checksum_url = Some(layer.at(v));
    }
    if let Some(v) = &t.debian {
        entry.debian = Some(layer.at(v));
    }
    if let Some(v) = &t.install {
        entry.install = Some(layer.at(v));
    }
    Ok(())
}

fn validate_component(name: String, e: Entry) -> Result<ComponentSpec, ProfileError> {
    let at = e.at.unwrap_or_else(|| Location { file: PathBuf::new(), line: 0, column: 0 });
    let missing = |field: &str| {
        ProfileError::invalid(at.clone(), format!("component {name:?}: missing field `{field}`"))
    };
    if let Some(package) = e.debian {
        if let Some(i) = e.install {
            return Err(ProfileError::invalid(
                i.at,
                format!("component {name:?}: `install` does not apply to a Debian package (dpkg installs it)"),
            ));
        }
        return Ok(ComponentSpec {
            name,
            at,
            version: e.version,
            source: SpecSource::Debian { package },
            install: Install::Package,
        });
    }
    let Some(url) = e.url else {
        return Err(ProfileError::invalid(
            at,
            format!(
                "component {name:?}: missing field `url` (with `sha256` or `sha512`) or `debian`"
            ),
        ));
    };
    check_template(&name, &url)?;
    if let Some(c) = &e.checksum_url {
        check_template(&name, c)?;
    }
    let version = e.version.ok_or_else(|| missing("version"))?;
    let digest = e.digest.ok_or_else(|| missing("sha256"))?;
    let install = e.install.ok_or_else(|| missing("install"))?;
    let install = match install.value {
        InstallTable::Binary { path, mode } => {
            check_absolute(&name, &path, &install.at)?;
            if mode > 0o7777 {
                return Err(ProfileError::invalid(
                    install.at,
                    format!("component {name:?}: mode {mode} is not a file mode; write it in octal, e.g. 0o755"),
                ));
            }
            Install::Binary { path, mode }
        }
        InstallTable::Tarball { dest, strip_components, include } => {
            check_absolute(&name, &dest, &install.at)?;
            Install::Tarball { dest, strip_components, include }
        }
    };
    Ok(ComponentSpec {
        name,
        at,
        version: Some(version),
        source: SpecSource::Url { url, digest, checksum_url: e.checksum_url },
        install,
    })
}

fn check_absolute(name: &str, path: &str, at: &Location) -> Result<(), ProfileError> {
    if path.starts_with('/') {
        Ok(())
    } else {
        Err(ProfileError::invalid(
            at.clone(),
            format!("component {name:?}: install path {path:?} must be absolute"),
        ))
    }
}

/// URL templates may use `{version}` and `{arch}` only.
fn check_template(name: &str, t: &At<String>) -> Result<(), ProfileError> {
    let mut rest = t.value.as_str();
    while let Some(open) = rest.find('{') {
        let after = &rest[open..];
        match PLACEHOLDERS.iter().find(|p| after.starts_with(*p)) {
            Some(p) => rest = &after[p.len()..],
            None => {
                let end = after.find('}').map_or(after.len(), |i| i + 1);
                return Err(ProfileError::invalid(
                    t.at.clone(),
                    format!(
                        "component {name:?}: unknown placeholder {:?} in {:?} (known: {{version}}, {{arch}})",
                        &after[..end],
                        t.value
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Expands `{version}` and `{arch}` in a URL template.
pub fn expand(template: &str, version: &str, arch: &str) -> String {
    template.replace("{version}", version).replace("{arch}", arch)
}
