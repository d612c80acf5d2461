//! TEST ONLY: Debian packages as a source of real binaries for the tests
//! (etcd, containerd, runc and the CNI plugins that `repack` lays out as
//! upstream's release artifacts; containerd 1.7 for the configuration
//! test). Each package is pinned by its pool path and sha256 and fetched
//! from the Debian mirror the host's apt uses (no mirror host is written
//! into the repository) through Keel's verified artifact cache
//! (`keel::fetch_file`: retries, timeouts, and an error naming the URL and
//! the expected and actual sha256), so a warm run reads it from
//! `~/.cache/keel/artifacts`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::stock::cache_dir;

/// A Debian binary package, pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deb {
    pub package: &'static str,
    /// The Debian version (`3.5.30-2`).
    pub version: &'static str,
    /// The suite it was taken from (for messages).
    pub suite: &'static str,
    /// Its path under the mirror (`Filename:` in the suite's index).
    pub pool: &'static str,
    /// `SHA256:` in the suite's signed index.
    pub sha256: &'static str,
}

impl Deb {
    /// The upstream part of the version (`3.5.30` of `3.5.30-2`,
    /// `2.1.9` of `2.1.9+ds1-5`).
    pub fn upstream_version(&self) -> &'static str {
        let v = self.version.rsplit_once('-').map_or(self.version, |(v, _)| v);
        v.split(['+', '~']).next().unwrap_or(v)
    }
}

/// Environment variable that names the Debian mirror instead of the host's
/// apt sources.
pub const MIRROR_ENV: &str = "KEEL_DEBIAN_MIRROR";

/// The Debian mirror: `KEEL_DEBIAN_MIRROR`, else the host's apt sources.
pub fn mirror() -> Result<String> {
    if let Some(m) = std::env::var_os(MIRROR_ENV) {
        return Ok(m.to_string_lossy().trim_end_matches('/').to_string());
    }
    let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let codename = release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_string())
        .unwrap_or_default();
    mirror_from(Path::new("/etc/apt"), &codename)
}

/// The first `deb` source under `apt` (sources.list, sources.list.d/*.list
/// and *.sources, in apt's order) that carries the host's release
/// `codename`: that is a Debian mirror, which also carries sid and trixie.
pub fn mirror_from(apt: &Path, codename: &str) -> Result<String> {
    let mut files = vec![apt.join("sources.list")];
    let dir = apt.join("sources.list.d");
    let mut parts: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    parts.sort();
    files.extend(parts);
    for f in &files {
        let Ok(text) = std::fs::read_to_string(f) else { continue };
        let found = match f.extension().and_then(|e| e.to_str()) {
            Some("sources") => deb822_mirror(&text, codename),
            Some("list") => one_line_mirror(&text, codename),
            _ => None,
        };
        if let Some(m) = found {
            return Ok(m.trim_end_matches('/').to_string());
        }
    }
    bail!(
        "no Debian mirror: none of {} has a `deb` source for {codename:?}; set {MIRROR_ENV}",
        files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
    )
}

/// `deb [options] URI suite components...` lines.
fn one_line_mirror(text: &str, codename: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let l = l.split('#').next()?.trim();
        let rest = l.strip_prefix("deb ")?.trim_start();
        let rest = match rest.strip_prefix('[') {
            Some(r) => r.split_once(']')?.1.trim_start(),
            None => rest,
        };
        let mut words = rest.split_whitespace();
        let (uri, suite) = (words.next()?, words.next()?);
        (suite == codename).then(|| uri.to_string())
    })
}

/// deb822 stanzas: `Types: deb`, `URIs:`, `Suites:`.
fn deb822_mirror(text: &str, codename: &str) -> Option<String> {
    text.split("\n\n").find_map(|stanza| {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
        };
        let enabled = field("Enabled").is_none_or(|v| v != "no");
        let deb = field("Types")?.split_whitespace().any(|t| t == "deb");
        let suites = field("Suites")?;
        let uri = field("URIs")?.split_whitespace().next()?.to_string();
        (enabled && deb && suites.split_whitespace().any(|s| s == codename)).then_some(uri)
    })
}

/// `deb` from the mirror, verified, in Keel's artifact cache.
pub fn fetch(deb: &Deb) -> Result<PathBuf> {
    let url = format!("{}/{}", mirror()?, deb.pool);
    let name = format!("{} {} ({})", deb.package, deb.version, deb.suite);
    let artifacts = cache_dir().join("artifacts");
    let sha256 = deb.sha256;
    // Its own runtime on its own thread: callers may or may not be inside
    // one already.
    let shown = name.clone();
    std::thread::spawn(move || -> Result<PathBuf> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a runtime for the download")?;
        Ok(rt.block_on(keel::fetch_file(&artifacts, &name, &url, sha256))?)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("fetching {shown}: the download thread panicked"))?
}

/// A file of a package's data archive.
#[derive(Debug, Clone)]
pub struct DebFile {
    pub bytes: Vec<u8>,
    pub mode: u32,
}

/// The regular files of `deb`'s data archive (`dpkg-deb --fsys-tarfile`)
/// whose paths (without the leading `./`) `keep` accepts; symbolic links
/// are skipped.
pub fn files(
    deb: &Deb,
    path: &Path,
    keep: impl Fn(&str) -> bool,
) -> Result<BTreeMap<String, DebFile>> {
    let shown = || format!("{} {} ({})", deb.package, deb.version, path.display());
    let mut child = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running dpkg-deb (install the Debian package dpkg)")?;
    let stdout = child.stdout.take().context("dpkg-deb's output")?;
    let mut out = BTreeMap::new();
    let mut archive = tar::Archive::new(stdout);
    for entry in archive.entries().with_context(|| format!("reading {}", shown()))? {
        let mut entry = entry.with_context(|| format!("reading {}", shown()))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path()?.to_string_lossy().trim_start_matches("./").to_string();
        if !keep(&name) {
            continue;
        }
        let mode = entry.header().mode()?;
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).with_context(|| format!("{}: {name}", shown()))?;
        out.insert(name, DebFile { bytes, mode });
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = child.wait().context("waiting for dpkg-deb")?;
    if !status.success() {
        bail!("dpkg-deb --fsys-tarfile {}: {status}: {}", shown(), err.trim());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mirror_is_the_source_of_the_hosts_release() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("sources.list.d");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("a-node.sources"),
            "Types: deb\nURIs: https://node.invalid/x\nSuites: nodistro\nComponents: main\n",
        )
        .unwrap();
        std::fs::write(
            d.join("debian.sources"),
            "Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\n\n\
             Types: deb deb-src\nURIs: http://mirror.invalid/debian/\nSuites: bookworm bookworm-updates\n",
        )
        .unwrap();
        assert_eq!(mirror_from(dir.path(), "bookworm").unwrap(), "http://mirror.invalid/debian");
        std::fs::write(
            dir.path().join("sources.list"),
            "# x\ndeb [arch=amd64] http://list.invalid/debian bookworm main\n",
        )
        .unwrap();
        assert_eq!(mirror_from(dir.path(), "bookworm").unwrap(), "http://list.invalid/debian");
        let err = mirror_from(dir.path(), "trixie").unwrap_err().to_string();
        assert!(err.contains(MIRROR_ENV), "{err}");
    }

    #[test]
    fn upstream_versions_drop_debian_suffixes() {
        let deb = |version| Deb { package: "p", version, suite: "sid", pool: "", sha256: "" };
        assert_eq!(deb("3.5.30-2").upstream_version(), "3.5.30");
        assert_eq!(deb("2.1.9+ds1-5").upstream_version(), "2.1.9");
        assert_eq!(deb("1.7.24~ds1-6+deb13u1").upstream_version(), "1.7.24");
    }
}
