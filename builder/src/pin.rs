//! `keel pin COMPONENT VERSION --profile P`: bumps one pin. The new digest
//! comes from the checksum file upstream publishes beside the artifact (the
//! component's `checksum-url` template), or with `--compute` from hashing
//! the downloaded artifact. Only that component's `version` and digest in
//! the profile's file change; comments and layout stay as they are.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use toml_edit::{DocumentMut, Item, Table, TableLike, Value};

use crate::fetch::{self, command::FetchFlags};
use crate::profile::{command::ProfilesDir, load, Algorithm, Digest, SpecSource};

#[derive(Debug, Args)]
pub struct PinArgs {
    /// Component to pin (its [components.NAME] table).
    pub component: String,
    /// The new version, as it appears in the URL template's {version}.
    pub version: String,
    /// Profile name (a file in the profiles directory) or path.
    #[arg(long, value_name = "PROFILE")]
    pub profile: String,
    /// Download the artifact and hash it instead of reading the checksum
    /// file upstream publishes (the artifact then stays in the cache).
    #[arg(long)]
    pub compute: bool,
    #[command(flatten)]
    pub profiles: ProfilesDir,
    #[command(flatten)]
    pub fetch: FetchFlags,
}

pub async fn run(args: &PinArgs) -> anyhow::Result<()> {
    let profile = load::load(&args.profiles.profiles_dir, &args.profile)?;
    let name = &args.component;
    let spec = profile.components.get(name).ok_or_else(|| {
        let known: Vec<&str> = profile.components.keys().map(String::as_str).collect();
        anyhow!(
            "profile {:?} has no component {name:?} (it has: {})",
            profile.name,
            known.join(", ")
        )
    })?;
    let SpecSource::Url { url, digest, checksum_url } = &spec.source else {
        bail!("{}: component {name:?} is a Debian package: there is no URL pin to change", spec.at);
    };
    let algorithm = digest.value.algorithm();
    let artifact_url = load::expand(&url.value, &args.version, &profile.arch);
    let opts = args.fetch.options()?;
    let new = if args.compute {
        let cache = args.fetch.cache()?;
        fetch::fetch_and_hash(&cache, name, &artifact_url, algorithm, &opts).await?.digest
    } else {
        let template = checksum_url.as_ref().ok_or_else(|| {
            anyhow!(
                "{}: component {name:?} has no `checksum-url`: add one, or pass --compute",
                spec.at
            )
        })?;
        let sums_url = load::expand(&template.value, &args.version, &profile.arch);
        let text = fetch::get_text(&sums_url, &opts).await?;
        let file_name = artifact_url.rsplit('/').next().unwrap_or(&artifact_url);
        let hex = parse_checksum(&text, algorithm, file_name)
            .with_context(|| format!("reading checksum file {sums_url}"))?;
        Digest::new(algorithm, hex)
    };

    let path = &profile.path;
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let updated = rewrite(&text, name, &args.version, &new)
        .with_context(|| format!("editing {}", path.display()))?;
    let mode = fs::metadata(path).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o644);
    keel_bootstrap::atomic_file::write(path, mode, updated.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    let old = spec.version.as_ref().map_or("-", |v| v.value.as_str());
    println!("{name}: {old} -> {} ({new}) in {}", args.version, path.display());
    Ok(())
}

/// The digest for `file_name` in a checksum file: either one bare digest,
/// or `sha256sum`-style lines `<hex>  <file name>` (a `*` before the name
/// marks binary mode).
pub fn parse_checksum(text: &str, algorithm: Algorithm, file_name: &str) -> anyhow::Result<String> {
    let mut candidates = Vec::new();
    let mut named = Vec::new();
    let mut first_line = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        first_line.get_or_insert(line);
        let mut words = line.split_whitespace();
        let (Some(hex), name) = (words.next(), words.next()) else { continue };
        if algorithm.parse_hex(hex).is_err() {
            continue;
        }
        match name.map(|n| n.trim_start_matches('*')) {
            None => candidates.push(hex),
            Some(n) if n == file_name || n.ends_with(&format!("/{file_name}")) => {
                candidates.push(hex)
            }
            Some(n) => named.push(n.to_string()),
        }
    }
    candidates.dedup();
    match candidates.as_slice() {
        [hex] => Ok(algorithm.parse_hex(hex)?),
        [] if named.is_empty() => {
            bail!(
                "it holds no {algorithm} digest (first line: {:?})",
                first_line.unwrap_or_default()
            )
        }
        [] => bail!("it has no line for {file_name} (it lists {})", named.join(", ")),
        _ => bail!("it has {} different digests for {file_name}", candidates.len()),
    }
}

/// `text` with component `name`'s version and digest replaced (or, when
/// the component comes from a profile this one extends, a new
/// `[components.NAME]` table that overrides both).
pub fn rewrite(text: &str, name: &str, version: &str, digest: &Digest) -> anyhow::Result<String> {
    let mut doc: DocumentMut = text.parse().context("parsing TOML")?;
    let components = doc.entry("components").or_insert_with(|| {
        let mut t = Table::new();
        t.set_implicit(true);
        Item::Table(t)
    });
    let components =
        components.as_table_like_mut().ok_or_else(|| anyhow!("`components` is not a table"))?;
    let entry = components.entry(name).or_insert_with(|| Item::Table(Table::new()));
    let table =
        entry.as_table_like_mut().ok_or_else(|| anyhow!("`components.{name}` is not a table"))?;
    set_keeping_decor(table, "version", version);
    let (key, other) = match digest.algorithm() {
        Algorithm::Sha256 => ("sha256", "sha512"),
        Algorithm::Sha512 => ("sha512", "sha256"),
    };
    set_keeping_decor(table, key, digest.hex());
    table.remove(other);
    Ok(doc.to_string())
}

fn set_keeping_decor(table: &mut dyn TableLike, key: &str, value: &str) {
    if let Some(Item::Value(v)) = table.get_mut(key) {
        let decor = v.decor().clone();
        *v = Value::from(value);
        *v.decor_mut() = decor;
        return;
    }
    table.insert(key, toml_edit::value(value));
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const B: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

    #[test]
    fn checksum_files_in_both_forms() {
        assert_eq!(parse_checksum(&format!("{A}\n"), Algorithm::Sha256, "kubelet").unwrap(), A);
        let sums = format!("{B}  runc.arm64\n{A}  runc.amd64\n");
        assert_eq!(parse_checksum(&sums, Algorithm::Sha256, "runc.amd64").unwrap(), A);
        assert_eq!(
            parse_checksum(&format!("{A} *./x.tgz\n"), Algorithm::Sha256, "x.tgz").unwrap(),
            A
        );
        let err = parse_checksum(&sums, Algorithm::Sha256, "runc.s390x").unwrap_err().to_string();
        assert!(err.contains("no line for runc.s390x"), "{err}");
        let err = parse_checksum("nothex\n", Algorithm::Sha256, "x").unwrap_err().to_string();
        assert!(err.contains("holds no sha256 digest (first line: \"nothex\")"), "{err}");
        let err =
            parse_checksum(&format!("{A}\n"), Algorithm::Sha512, "x").unwrap_err().to_string();
        assert!(err.contains("holds no sha512 digest"), "{err}");
    }

    #[test]
    fn rewrite_keeps_comments_and_layout() {
        let text = format!(
            "# top\n[components.kubelet]\nversion = \"1.0\"   # pinned\nurl = \"u\"\nsha256 = \"{A}\"\n\n# next\n[components.runc]\nversion = \"2\"\n"
        );
        let out = rewrite(&text, "kubelet", "1.1", &Digest::Sha256(B.into())).unwrap();
        assert_eq!(out, text.replace("\"1.0\"", "\"1.1\"").replace(A, B));
    }

    #[test]
    fn rewrite_adds_an_override_table_for_inherited_components() {
        let text = "extends = \"production\"\n";
        let out = rewrite(text, "kubelet", "1.1", &Digest::Sha512("c".repeat(128))).unwrap();
        let doc: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(doc["components"]["kubelet"]["version"].as_str(), Some("1.1"));
        assert_eq!(doc["components"]["kubelet"]["sha512"].as_str(), Some("c".repeat(128).as_str()));
        assert!(out.starts_with(text), "{out}");
    }
}
