//! Mirrors: a map of URL prefixes to a local directory or another base URL,
//! so that air-gapped pipelines fetch from what they have. Read from a TOML
//! file:
//!
//! ```toml
//! [mirrors]
//! "https://dl.k8s.io/" = "/srv/mirror/k8s/"              # a directory
//! "https://github.com/" = "https://artifacts.example/gh/" # another base URL
//! ```
//!
//! The longest matching prefix wins, and a mirrored URL is fetched from the
//! mirror only (never from the original as a fallback). Relative
//! directories are relative to the mirrors file.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::FetchError;

#[derive(Debug, Clone, Default)]
pub struct Mirrors {
    /// (prefix, target), longest prefix first.
    entries: Vec<(String, Target)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Dir(PathBuf),
    Url(String),
}

/// Where to get one URL's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Over HTTP(S): the original URL or a mirror's.
    Http(String),
    /// A file in a local mirror directory.
    File(PathBuf),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MirrorsFile {
    mirrors: BTreeMap<String, String>,
}

impl Mirrors {
    pub fn load(path: &Path) -> Result<Mirrors, FetchError> {
        let text = fs::read_to_string(path)
            .map_err(|source| FetchError::Io { path: path.to_path_buf(), source })?;
        let file: MirrorsFile = toml::from_str(&text).map_err(|e| FetchError::Mirrors {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Ok(Mirrors::new(file.mirrors.into_iter().map(|(prefix, target)| {
            let target = if target.starts_with("http://") || target.starts_with("https://") {
                Target::Url(target)
            } else {
                let dir = target.strip_prefix("file://").unwrap_or(&target);
                Target::Dir(base.join(dir))
            };
            (prefix, target)
        })))
    }

    fn new(entries: impl Iterator<Item = (String, Target)>) -> Mirrors {
        let mut entries: Vec<_> = entries.collect();
        entries.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Mirrors { entries }
    }

    /// Where to fetch `url` from.
    pub fn origin(&self, url: &str) -> Origin {
        for (prefix, target) in &self.entries {
            if let Some(rest) = url.strip_prefix(prefix.as_str()) {
                return match target {
                    Target::Url(base) => Origin::Http(replace(prefix, base, rest)),
                    Target::Dir(dir) => {
                        Origin::File(PathBuf::from(replace(prefix, &dir.to_string_lossy(), rest)))
                    }
                };
            }
        }
        Origin::Http(url.to_string())
    }
}

/// The URL with `prefix` replaced by `target`, textually; a prefix that
/// ends with `/` keeps its slash when the target has none.
fn replace(prefix: &str, target: &str, rest: &str) -> String {
    if prefix.ends_with('/') && !target.ends_with('/') {
        format!("{target}/{rest}")
    } else {
        format!("{target}{rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins_and_dirs_are_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mirrors.toml");
        fs::write(
            &file,
            "[mirrors]\n\"https://a.example/\" = \"http://m.example/a\"\n\"https://a.example/deep/\" = \"local\"\n",
        )
        .unwrap();
        let m = Mirrors::load(&file).unwrap();
        assert_eq!(
            m.origin("https://a.example/x/y"),
            Origin::Http("http://m.example/a/x/y".into())
        );
        assert_eq!(
            m.origin("https://a.example/deeper"),
            Origin::Http("http://m.example/a/deeper".into())
        );
        assert_eq!(m.origin("https://a.example/deep/z"), Origin::File(dir.path().join("local/z")));
        assert_eq!(m.origin("https://b.example/z"), Origin::Http("https://b.example/z".into()));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mirrors.toml");
        fs::write(&file, "[mirror]\n\"x\" = \"y\"\n").unwrap();
        let err = Mirrors::load(&file).unwrap_err().to_string();
        assert!(err.contains("mirrors.toml") && err.contains("line 1"), "{err}");
    }
}
