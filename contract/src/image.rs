//! What an image tells keel-bootstrap about itself besides its role
//! (`/usr/lib/keel/role`): the version of each component it carries
//! (`/usr/lib/keel/components`, one `name version` line each, sorted;
//! written by `keel build` from the resolved profile and the installed
//! Debian packages), so that the node writes configuration in the schema
//! of the version it runs (containerd 1.7 reads config `version = 2`,
//! containerd 2.x `version = 3`).

use std::collections::BTreeMap;
use std::path::Path;

/// The components file, relative to the image's root.
pub const COMPONENTS_FILE: &str = "usr/lib/keel/components";

#[derive(Debug, thiserror::Error)]
pub enum ComponentsError {
    #[error("{path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} line {line}: expected `name version`, got {text:?}")]
    Bad { path: String, line: usize, text: String },
    #[error("{path} names no component {name} (is it in the image's role?)")]
    Missing { path: String, name: String },
}

/// The components file's text for `(name, version)` pairs.
pub fn render<'a>(components: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let sorted: BTreeMap<&str, &str> = components.into_iter().collect();
    sorted.iter().map(|(n, v)| format!("{n} {v}\n")).collect()
}

/// The components of the image under `root`, name -> version.
pub fn read(root: &Path) -> Result<Components, ComponentsError> {
    let path = root.join(COMPONENTS_FILE);
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(&path)
        .map_err(|source| ComponentsError::Read { path: shown.clone(), source })?;
    let mut versions = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some(n), Some(v), None) => {
                versions.insert(n.to_string(), v.to_string());
            }
            (None, _, _) => {}
            _ => {
                return Err(ComponentsError::Bad {
                    path: shown,
                    line: i + 1,
                    text: line.to_string(),
                })
            }
        }
    }
    Ok(Components { path: shown, versions })
}

/// An image's components file, read.
#[derive(Debug, Clone)]
pub struct Components {
    path: String,
    versions: BTreeMap<String, String>,
}

impl Components {
    /// The version of component `name`.
    pub fn version(&self, name: &str) -> Result<&str, ComponentsError> {
        self.versions.get(name).map(String::as_str).ok_or_else(|| ComponentsError::Missing {
            path: self.path.clone(),
            name: name.to_string(),
        })
    }
}

/// Major and minor of an upstream (`2.3.4`, `v2.1.9`) or Debian
/// (`1.7.24~ds1-6+deb13u1`, `1:2.1.9+ds1-5`) version.
pub fn major_minor(version: &str) -> Option<(u32, u32)> {
    let v = version.split_once(':').map_or(version, |(_, v)| v);
    let v = v.strip_prefix('v').unwrap_or(v);
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_of_both_sources_give_major_and_minor() {
        assert_eq!(major_minor("2.3.4"), Some((2, 3)));
        assert_eq!(major_minor("v2.1.9"), Some((2, 1)));
        assert_eq!(major_minor("1.7.24~ds1-6+deb13u1"), Some((1, 7)));
        assert_eq!(major_minor("1:2.1.9+ds1-5"), Some((2, 1)));
        assert_eq!(major_minor("0.0.0-test-double"), Some((0, 0)));
        assert_eq!(major_minor("latest"), None);
    }

    #[test]
    fn the_file_round_trips_and_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("usr/lib/keel")).unwrap();
        let text = render([("runc", "1.3.6"), ("containerd", "2.1.9")]);
        assert_eq!(text, "containerd 2.1.9\nrunc 1.3.6\n");
        std::fs::write(dir.path().join(COMPONENTS_FILE), &text).unwrap();
        let c = read(dir.path()).unwrap();
        assert_eq!(c.version("containerd").unwrap(), "2.1.9");
        let err = c.version("etcd").unwrap_err().to_string();
        assert!(err.contains("usr/lib/keel/components") && err.contains("etcd"), "{err}");
        std::fs::write(dir.path().join(COMPONENTS_FILE), "containerd\n").unwrap();
        assert!(read(dir.path()).unwrap_err().to_string().contains("line 1"));
    }
}
