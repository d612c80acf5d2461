//! Errors from loading and resolving profiles and roles. Every error about
//! the contents of a file names the file, line and column.

use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use keel_contract::Role;

/// A position in a profile or role file (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl Location {
    /// The position of byte `offset` of `text`, the contents of `file`.
    pub fn at(file: &Path, text: &str, offset: usize) -> Location {
        let offset = offset.min(text.len());
        let before = text.get(..offset).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Location { file: file.to_path_buf(), line, column }
    }

    pub fn of_span(file: &Path, text: &str, span: &Range<usize>) -> Location {
        Location::at(file, text, span.start)
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("reading {}", path.display())]
    Read { path: PathBuf, source: io::Error },

    #[error("profile {name:?} not found: no file {}", path.display())]
    NotFound { name: String, path: PathBuf },

    /// Bad contents: unknown key, malformed digest, missing field, unknown
    /// role, cycle in `extends`, ...
    #[error("{at}: {message}")]
    Invalid { at: Location, message: String },

    #[error(
        "{at}: role {role} needs {} {}, which profile {profile:?} does not \
         provide (it provides: {})",
        if missing.len() == 1 { "component" } else { "components" },
        quoted(missing),
        quoted(provided)
    )]
    MissingComponent {
        at: Location,
        role: Role,
        missing: Vec<String>,
        profile: String,
        provided: Vec<String>,
    },
}

impl ProfileError {
    pub fn invalid(at: Location, message: impl Into<String>) -> ProfileError {
        ProfileError::Invalid { at, message: message.into() }
    }
}

fn quoted(names: &[String]) -> String {
    if names.is_empty() {
        return "nothing".to_string();
    }
    names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_one_based_lines_and_character_columns() {
        let text = "a = 1\n# é\nbé = 2\n";
        let p = Path::new("f.toml");
        assert_eq!(Location::at(p, text, 0).to_string(), "f.toml:1:1");
        assert_eq!(Location::at(p, text, 6).to_string(), "f.toml:2:1");
        // "bé = 2": the '=' is the 4th character, at byte 5 of the line.
        let eq = text.find("= 2").unwrap();
        assert_eq!(Location::at(p, text, eq).to_string(), "f.toml:3:4");
        assert_eq!(Location::at(p, text, 10_000).line, 4);
    }
}
