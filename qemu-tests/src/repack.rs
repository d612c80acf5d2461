//! TEST ONLY: Debian's etcd, containerd, runc and CNI plugin binaries laid
//! out exactly as upstream's release artifacts, so that CI builds and boots
//! the production recipe (profiles/production.toml's install rules, with
//! Keel's units, users and directories) from binaries it can have here.
//! The CI profile (`fixtures/profiles/ci.toml`) pins each artifact's
//! version, `https://keel.test/repack/...` URL and sha256; the run's
//! mirrors file ([`mirrors_file`]) maps each URL to the cached file.
//!
//! Deterministic: entries sorted, fixed mode, owner 0:0 and mtime, gzip
//! without a timestamp or name, so the digest is the same on every machine
//! (for the same flate2 and tar crates). Cached as
//! `~/.cache/keel/repack/<sha256>/<file name>`: a warm run re-hashes the
//! file and does nothing else; a cold run fetches the pinned packages
//! ([`debian::fetch`]) and repacks them.
//!
//! crictl is not here: Debian has no cri-tools, so crictl stays a test
//! double (as do kubelet and the control plane).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest as _, Sha256};

use crate::debian::{self, Deb};
use crate::stock::cache_dir;

/// The URL prefix the CI profile's repacked artifacts live under
/// (keel.test is a reserved name: nothing is ever fetched from it).
pub const URL_PREFIX: &str = "https://keel.test/repack/";

/// File times inside the artifacts (2026-01-01T00:00:00Z).
const MTIME: u64 = 1_767_225_600;

const SID: &str = "sid";

pub const ETCD_SERVER: Deb = Deb {
    package: "etcd-server",
    version: "3.5.30-2",
    suite: SID,
    pool: "pool/main/e/etcd/etcd-server_3.5.30-2_amd64.deb",
    sha256: "11a4f7e350c5020b83edff5160a6063d4e56ac9cd014d21ce8916378bf96de79",
};
pub const ETCD_CLIENT: Deb = Deb {
    package: "etcd-client",
    version: "3.5.30-2",
    suite: SID,
    pool: "pool/main/e/etcd/etcd-client_3.5.30-2_amd64.deb",
    sha256: "1e66ad2aba4cba6842a1ac35d5c525e750102b8fb42748225bcb2e34d6595931",
};
pub const CONTAINERD: Deb = Deb {
    package: "containerd",
    version: "2.1.9+ds1-5",
    suite: SID,
    pool: "pool/main/c/containerd/containerd_2.1.9+ds1-5_amd64.deb",
    sha256: "2dda86ce7033fd612fc50e136679d8174ccad680eb29cd4611e0d2a1b84cf591",
};
/// containerd 1.7 (trixie): not repacked, only run by the configuration
/// test.
pub const CONTAINERD_1_7: Deb = Deb {
    package: "containerd",
    version: "1.7.24~ds1-6+deb13u1",
    suite: "trixie",
    pool: "pool/main/c/containerd/containerd_1.7.24~ds1-6+deb13u1_amd64.deb",
    sha256: "ed708deb96fe476a3bce4efa5c0538dfbcf717ab9a7c7944ba7260342c25899c",
};
pub const RUNC: Deb = Deb {
    package: "runc",
    version: "1.3.6+ds1-1",
    suite: SID,
    pool: "pool/main/r/runc/runc_1.3.6+ds1-1_amd64.deb",
    sha256: "8e95d7bdfd22242ae4d48d58e3c277ba2b69dffc4ed8e573b837e6e93925d911",
};
pub const CNI_PLUGINS: Deb = Deb {
    package: "containernetworking-plugins",
    version: "1.9.1+ds1-1",
    suite: SID,
    pool: "pool/main/g/golang-github-containernetworking-plugins/containernetworking-plugins_1.9.1+ds1-1_amd64.deb",
    sha256: "12857dd3136d61e00bffcc2c8823d14df586e94406098326e02846cfa46a058e",
};

/// How one component's upstream artifact is laid out.
enum Layout {
    /// A gzip tarball: directory entries first, then (package, path in the
    /// package, entry name) files.
    Tarball { dirs: Vec<String>, files: Vec<(Deb, String, String)> },
    /// The bare binary.
    Binary { deb: Deb, path: &'static str },
}

/// Upstream's layout of component `name` at `version` (the packages'
/// binaries under the names upstream's artifacts use).
fn layout(name: &str, version: &str) -> Result<(Vec<Deb>, Layout)> {
    let file = |deb: Deb, from: &str, to: String| (deb, from.to_string(), to);
    let (debs, layout) = match name {
        // etcd-v3.5.30-linux-amd64/{etcd,etcdctl,etcdutl}: Debian ships
        // etcdutl in etcd-server.
        "etcd" => {
            let dir = format!("etcd-v{version}-linux-amd64");
            let files = vec![
                file(ETCD_SERVER, "usr/bin/etcd", format!("{dir}/etcd")),
                file(ETCD_CLIENT, "usr/bin/etcdctl", format!("{dir}/etcdctl")),
                file(ETCD_SERVER, "usr/bin/etcdutl", format!("{dir}/etcdutl")),
            ];
            (
                vec![ETCD_SERVER, ETCD_CLIENT],
                Layout::Tarball { dirs: vec![format!("{dir}/")], files },
            )
        }
        // bin/{containerd,containerd-shim-runc-v2,ctr} (upstream's also has
        // containerd-stress, which Debian does not ship and Keel does not
        // install).
        "containerd" => {
            let files = ["containerd", "containerd-shim-runc-v2", "ctr"]
                .into_iter()
                .map(|b| file(CONTAINERD, &format!("usr/bin/{b}"), format!("bin/{b}")))
                .collect();
            (vec![CONTAINERD], Layout::Tarball { dirs: vec!["bin/".into()], files })
        }
        "runc" => (vec![RUNC], Layout::Binary { deb: RUNC, path: "usr/sbin/runc" }),
        // ./bridge, ./host-local, ...: every plugin Debian ships.
        "cni-plugins" => {
            (vec![CNI_PLUGINS], Layout::Tarball { dirs: vec!["./".into()], files: vec![] })
        }
        other => bail!("no repack recipe for component {other}"),
    };
    for deb in &debs {
        if deb.upstream_version() != version {
            bail!(
                "component {name}: the CI profile says version {version}, but the pinned package {} is {} (upstream {})",
                deb.package,
                deb.version,
                deb.upstream_version()
            );
        }
    }
    Ok((debs, layout))
}

/// One repacked artifact the CI profile names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    pub component: String,
    pub version: String,
    /// The `https://keel.test/repack/...` URL, templates expanded.
    pub url: String,
    pub sha256: String,
}

/// The repacked artifacts the profile at `path` names: its components
/// whose URL is under [`URL_PREFIX`].
pub fn pinned(path: &Path) -> Result<Vec<Pinned>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let doc: toml::Table = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    let mut out = Vec::new();
    let Some(components) = doc.get("components").and_then(|c| c.as_table()) else {
        return Ok(out);
    };
    for (name, table) in components {
        let field = |k: &str| table.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let Some(url) = field("url").filter(|u| u.starts_with(URL_PREFIX)) else { continue };
        let (Some(version), Some(sha256)) = (field("version"), field("sha256")) else {
            bail!(
                "{}: component {name}: a repacked artifact needs version and sha256",
                path.display()
            );
        };
        let url = url.replace("{version}", &version).replace("{arch}", "amd64");
        out.push(Pinned { component: name.clone(), version, url, sha256 });
    }
    Ok(out)
}

impl Pinned {
    /// The artifact's file name (the URL's last element).
    pub fn file_name(&self) -> &str {
        self.url.rsplit('/').next().unwrap_or(&self.url)
    }

    /// Where the artifact is cached.
    pub fn cached(&self) -> PathBuf {
        cache_dir().join("repack").join(&self.sha256).join(self.file_name())
    }
}

/// Makes every artifact of `pins` available in the cache (repacking what
/// is missing or does not match its pin); returns (URL, file) pairs.
pub fn ensure(pins: &[Pinned]) -> Result<Vec<(String, PathBuf)>> {
    pins.iter().map(|p| Ok((p.url.clone(), ensure_one(p)?))).collect()
}

fn ensure_one(p: &Pinned) -> Result<PathBuf> {
    let path = p.cached();
    if path.is_file() && sha256_file(&path)? == p.sha256 {
        return Ok(path);
    }
    let (debs, layout) = layout(&p.component, &p.version)?;
    let mut fetched = BTreeMap::new();
    for deb in &debs {
        fetched.insert(deb.package, debian::fetch(deb)?);
    }
    let sources = || {
        debs.iter()
            .map(|d| format!("{} {} ({})", d.package, d.version, d.suite))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let bytes = match layout {
        Layout::Binary { deb, path: from } => {
            let mut files = debian::files(&deb, &fetched[deb.package], |n| n == from)?;
            files.remove(from).with_context(|| format!("{} has no {from}", sources()))?.bytes
        }
        Layout::Tarball { dirs, files } => {
            let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
            if files.is_empty() {
                // Every file of the one package's /usr/lib/cni.
                let deb = debs[0];
                let all =
                    debian::files(&deb, &fetched[deb.package], |n| n.starts_with("usr/lib/cni/"))?;
                for (name, f) in all {
                    let base = name.rsplit('/').next().unwrap_or(&name).to_string();
                    entries.push((format!("./{base}"), f.bytes));
                }
            }
            for (deb, from, to) in files {
                let mut got = debian::files(&deb, &fetched[deb.package], |n| n == from)?;
                let f = got
                    .remove(&from)
                    .with_context(|| format!("{} {} has no {from}", deb.package, deb.version))?;
                entries.push((to, f.bytes));
            }
            if entries.is_empty() {
                bail!("component {}: {} gave no files", p.component, sources());
            }
            tarball(&dirs, entries)?
        }
    };
    let actual = hex::encode(Sha256::digest(&bytes));
    if actual != p.sha256 {
        bail!(
            "component {}: the artifact repacked from {} as {} has sha256 {actual}, but the CI profile pins {} (a changed recipe, tar or flate2 crate: pin the new digest in qemu-tests/fixtures/profiles/ci.toml)",
            p.component,
            sources(),
            p.file_name(),
            p.sha256
        );
    }
    let dir = path.parent().context("cache path")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    keel_bootstrap::atomic_file::write(&path, 0o644, &bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// A gzip tarball of `dirs` then `files` (sorted by name), every entry
/// owned by 0:0 with mode 0755 and time [`MTIME`]; gzip without a name or
/// timestamp.
fn tarball(dirs: &[String], mut files: Vec<(String, Vec<u8>)>) -> Result<Vec<u8>> {
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let gz = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let header = |kind: tar::EntryType, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(MTIME);
        h
    };
    for d in dirs {
        let h = named(header(tar::EntryType::Directory, 0), d)?;
        tar.append(&h, std::io::empty()).with_context(|| format!("adding {d}"))?;
    }
    for (name, bytes) in &files {
        let h = named(header(tar::EntryType::Regular, bytes.len() as u64), name)?;
        tar.append(&h, bytes.as_slice()).with_context(|| format!("adding {name}"))?;
    }
    let gz = tar.into_inner().context("finishing the tarball")?;
    gz.finish().context("finishing the gzip stream")
}

/// `h` with its name written as given: the tar crate's `set_path` drops a
/// leading `./`, which upstream's CNI plugins tarball has (`./bridge`).
fn named(mut h: tar::Header, name: &str) -> Result<tar::Header> {
    let slot = &mut h.as_old_mut().name;
    if name.len() >= slot.len() {
        bail!("tar entry name {name:?} is longer than {} bytes", slot.len() - 1);
    }
    slot.fill(0);
    slot[..name.len()].copy_from_slice(name.as_bytes());
    h.set_cksum();
    Ok(h)
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(h.finalize()))
}

/// Writes the run's mirrors file at `out`: `fixtures/mirrors.toml`'s
/// entries (directories made absolute) and one entry per repacked
/// artifact, its URL -> its cached file.
pub fn mirrors_file(
    fixtures_mirrors: &Path,
    repacked: &[(String, PathBuf)],
    out: &Path,
) -> Result<()> {
    let text = std::fs::read_to_string(fixtures_mirrors)
        .with_context(|| format!("reading {}", fixtures_mirrors.display()))?;
    let doc: toml::Table =
        toml::from_str(&text).with_context(|| format!("{}", fixtures_mirrors.display()))?;
    let base = fixtures_mirrors.parent().unwrap_or(Path::new("."));
    let mut mirrors = toml::Table::new();
    if let Some(m) = doc.get("mirrors").and_then(|m| m.as_table()) {
        for (prefix, target) in m {
            let target = target.as_str().unwrap_or_default();
            let target = if target.contains("://") {
                target.to_string()
            } else {
                format!("{}/", base.join(target).display().to_string().trim_end_matches('/'))
            };
            mirrors.insert(prefix.clone(), toml::Value::String(target));
        }
    }
    for (url, path) in repacked {
        mirrors.insert(url.clone(), toml::Value::String(path.display().to_string()));
    }
    let mut doc = toml::Table::new();
    doc.insert("mirrors".into(), toml::Value::Table(mirrors));
    let text = format!(
        "# Written by qemu-tests for this run (TEST ONLY): {} plus the\n# repacked artifacts in the cache.\n{}",
        fixtures_mirrors.display(),
        toml::to_string(&doc).context("writing the mirrors file")?
    );
    keel_bootstrap::atomic_file::write(out, 0o644, text.as_bytes())
        .with_context(|| format!("writing {}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tarball_depends_only_on_its_entries() {
        let files = || vec![("./y".to_string(), b"y".to_vec()), ("./x".to_string(), b"x".to_vec())];
        let a = tarball(&["./".into()], files()).unwrap();
        let b = tarball(&["./".into()], files().into_iter().rev().collect()).unwrap();
        assert_eq!(a, b);
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(a.as_slice()));
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            assert_eq!((e.header().mtime().unwrap(), e.header().uid().unwrap()), (MTIME, 0));
            names.push(String::from_utf8_lossy(&e.path_bytes()).into_owned());
        }
        let raw: Vec<_> = names.iter().map(String::as_str).collect();
        assert_eq!(raw, ["./", "./x", "./y"], "names as upstream's CNI tarball writes them");
        // gzip: no timestamp (bytes 4..8), no file name flag.
        assert_eq!(&a[4..8], &[0, 0, 0, 0]);
        assert_eq!(a[3] & 0x08, 0);
    }

    #[test]
    fn a_version_that_is_not_the_packages_is_refused() {
        let err = layout("etcd", "3.6.14").err().unwrap().to_string();
        assert!(err.contains("3.5.30-2") && err.contains("3.6.14"), "{err}");
        assert!(layout("kubelet", "1.36.4").is_err());
    }
}
