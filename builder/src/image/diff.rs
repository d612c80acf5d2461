//! `keel diff IMAGE_A IMAGE_B`: why two images differ. First what their
//! manifests say (fields, Debian package versions, components), then their
//! SBOMs (packages whose version, license or checksum changed), then which
//! partitions differ and, when /usr does, the first differing path in it
//! (both erofs file systems extracted with the host's fsck.erofs).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use serde_json::Value;

use super::manifest::{read_esp_file, read_from_image};
use super::{rootfs, sbom, tools};

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// A disk image made by keel build.
    pub a: PathBuf,
    /// Another one.
    pub b: PathBuf,
}

/// Prints the differences; fails (exit 1) when the images differ.
pub fn run(args: &DiffArgs) -> anyhow::Result<()> {
    let (ma, mb) = (read_from_image(&args.a)?, read_from_image(&args.b)?);
    let (va, vb) = (serde_json::to_value(&ma)?, serde_json::to_value(&mb)?);
    let mut differ = false;
    println!("manifest:");
    let mut any = false;
    for key in keys(&va, &vb) {
        if matches!(key.as_str(), "debian-packages" | "components" | "partitions") {
            continue;
        }
        if va.get(&key) != vb.get(&key) {
            println!("  {key}: {} -> {}", show(va.get(&key)), show(vb.get(&key)));
            any = true;
        }
    }
    let versions = |v: &Value, list: &str, key: &str| -> BTreeMap<String, String> {
        v[list]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let digest = e["sha256"].as_str().or(e["sha512"].as_str()).unwrap_or("");
                let version = e[key].as_str().unwrap_or("").to_string();
                let shown = if digest.is_empty() { version } else { format!("{version} {digest}") };
                (e["name"].as_str().unwrap_or("").to_string(), shown)
            })
            .collect()
    };
    for (list, what) in [("components", "component"), ("debian-packages", "Debian package")] {
        any |=
            print_map_diff(what, &versions(&va, list, "version"), &versions(&vb, list, "version"));
    }
    if !any {
        println!("  same");
    }
    differ |= any;

    println!("SBOM:");
    let (sa, sb) = (sbom_packages(&args.a), sbom_packages(&args.b));
    let any = match (sa, sb) {
        (Ok(a), Ok(b)) => print_map_diff("package", &a, &b),
        (a, b) => {
            for e in [a.err(), b.err()].into_iter().flatten() {
                println!("  {e:#}");
            }
            true
        }
    };
    if !any {
        println!("  same");
    }
    differ |= any;

    println!("partitions:");
    let mut usr_differs = false;
    let parts_b: BTreeMap<_, _> = mb.partitions.iter().map(|p| (p.name.clone(), p)).collect();
    for pa in &ma.partitions {
        let Some(pb) = parts_b.get(&pa.name) else {
            println!("  {}: only in {}", pa.name, args.a.display());
            differ = true;
            continue;
        };
        let same = same_bytes(&args.a, pa.offset, pa.size, &args.b, pb.offset, pb.size)?;
        println!("  {}: {}", pa.name, if same { "same bytes" } else { "differ" });
        differ |= !same;
        usr_differs |= !same && pa.name == "usr";
    }
    if usr_differs {
        let work = tempfile::tempdir().context("making a temporary directory")?;
        let (pa, pb) = (usr_partition(&ma.partitions)?, usr_partition(&mb.partitions)?);
        let ta = extract_usr(&args.a, pa, &work.path().join("a"))?;
        let tb = extract_usr(&args.b, pb, &work.path().join("b"))?;
        match first_difference(&ta, &tb)? {
            Some((path, why)) => println!("/usr: first difference at /usr/{path}: {why}"),
            None => println!("/usr: same files (the file systems differ in layout only)"),
        }
    }
    if differ {
        bail!("{} and {} differ", args.a.display(), args.b.display());
    }
    println!("the images are the same");
    Ok(())
}

fn keys(a: &Value, b: &Value) -> Vec<String> {
    let mut k: Vec<String> =
        [a, b].iter().filter_map(|v| v.as_object()).flat_map(|o| o.keys().cloned()).collect();
    k.sort();
    k.dedup();
    k
}

fn show(v: Option<&Value>) -> String {
    match v {
        None => "(absent)".into(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

/// Prints added, removed and changed entries; true when there were any.
fn print_map_diff(what: &str, a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> bool {
    let mut any = false;
    for (name, va) in a {
        match b.get(name) {
            None => println!("  - {what} {name} {va}"),
            Some(vb) if vb != va => println!("  ~ {what} {name}: {va} -> {vb}"),
            Some(_) => continue,
        }
        any = true;
    }
    for (name, vb) in b.iter().filter(|(n, _)| !a.contains_key(*n)) {
        println!("  + {what} {name} {vb}");
        any = true;
    }
    any
}

/// name -> "version license checksums" of the SBOM inside an image.
fn sbom_packages(image: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let bytes = read_esp_file(image, sbom::ESP_PATH)?;
    let doc: Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: the SBOM is not JSON", image.display()))?;
    Ok(doc["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["SPDXID"] != "SPDXRef-Image")
        .map(|p| {
            let sums: Vec<&str> = p["checksums"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["checksumValue"].as_str())
                .collect();
            let summary = format!(
                "{} ({}){}",
                p["versionInfo"].as_str().unwrap_or(""),
                p["licenseDeclared"].as_str().unwrap_or(""),
                if sums.is_empty() { String::new() } else { format!(" {}", sums.join(" ")) }
            );
            (p["name"].as_str().unwrap_or("").to_string(), summary)
        })
        .collect())
}

fn same_bytes(a: &Path, oa: u64, na: u64, b: &Path, ob: u64, nb: u64) -> anyhow::Result<bool> {
    if na != nb {
        return Ok(false);
    }
    let open = |p: &Path, off: u64| -> anyhow::Result<File> {
        let mut f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
        f.seek(SeekFrom::Start(off)).with_context(|| format!("seeking in {}", p.display()))?;
        Ok(f)
    };
    let (mut fa, mut fb) = (open(a, oa)?.take(na), open(b, ob)?.take(nb));
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = read_full(&mut fa, &mut ba).with_context(|| format!("reading {}", a.display()))?;
        let m = read_full(&mut fb, &mut bb).with_context(|| format!("reading {}", b.display()))?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn usr_partition(parts: &[super::gpt::Partition]) -> anyhow::Result<&super::gpt::Partition> {
    parts.iter().find(|p| p.name == "usr").context("no usr partition in the manifest")
}

/// Copies the usr partition out of `image` and extracts its erofs into `dir`.
fn extract_usr(image: &Path, p: &super::gpt::Partition, dir: &Path) -> anyhow::Result<PathBuf> {
    let fsck = tools::require_host("fsck.erofs", "erofs-utils")?;
    let part = dir.with_extension("erofs");
    {
        let mut f = File::open(image).with_context(|| format!("opening {}", image.display()))?;
        f.seek(SeekFrom::Start(p.offset))?;
        let mut out =
            File::create(&part).with_context(|| format!("creating {}", part.display()))?;
        std::io::copy(&mut f.take(p.size), &mut out)
            .with_context(|| format!("copying /usr out of {}", image.display()))?;
    }
    let mut cmd = Command::new(fsck);
    cmd.arg(format!("--extract={}", dir.display())).arg("--preserve").arg(&part);
    tools::run_checked(cmd, "fsck.erofs --extract (reading /usr)", tools::TOOL_LIMIT)?;
    fs::remove_file(&part).with_context(|| format!("removing {}", part.display()))?;
    Ok(dir.to_path_buf())
}

/// The first path (sorted, parents first) whose kind, mode, owner, link
/// target or contents differ, with what differs.
fn first_difference(a: &Path, b: &Path) -> anyhow::Result<Option<(String, String)>> {
    let list = |root: &Path| -> anyhow::Result<Vec<PathBuf>> {
        Ok(rootfs::walk(root)?
            .into_iter()
            .map(|p| p.strip_prefix(root).unwrap_or(&p).into())
            .collect())
    };
    let (la, lb) = (list(a)?, list(b)?);
    let (mut i, mut j) = (0, 0);
    while i < la.len() || j < lb.len() {
        match (la.get(i), lb.get(j)) {
            (Some(x), Some(y)) if x == y => {
                if let Some(why) = entry_difference(&a.join(x), &b.join(y))? {
                    return Ok(Some((x.display().to_string(), why)));
                }
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x < y => {
                return Ok(Some((x.display().to_string(), "only in A".into())))
            }
            (Some(_), Some(y)) | (None, Some(y)) => {
                return Ok(Some((y.display().to_string(), "only in B".into())))
            }
            (Some(x), None) => return Ok(Some((x.display().to_string(), "only in A".into()))),
            (None, None) => break,
        }
    }
    Ok(None)
}

fn entry_difference(a: &Path, b: &Path) -> anyhow::Result<Option<String>> {
    let meta =
        |p: &Path| fs::symlink_metadata(p).with_context(|| format!("reading {}", p.display()));
    let (ma, mb) = (meta(a)?, meta(b)?);
    if ma.file_type() != mb.file_type() {
        return Ok(Some("a different kind of file".into()));
    }
    if ma.mode() != mb.mode() || ma.uid() != mb.uid() || ma.gid() != mb.gid() {
        return Ok(Some(format!(
            "mode/owner {:o} {}:{} -> {:o} {}:{}",
            ma.mode(),
            ma.uid(),
            ma.gid(),
            mb.mode(),
            mb.uid(),
            mb.gid()
        )));
    }
    if ma.file_type().is_symlink() {
        let (ta, tb) = (fs::read_link(a)?, fs::read_link(b)?);
        return Ok((ta != tb).then(|| format!("link {} -> {}", ta.display(), tb.display())));
    }
    if ma.is_file() {
        if ma.len() != mb.len() {
            return Ok(Some(format!("size {} -> {} bytes", ma.len(), mb.len())));
        }
        if !same_bytes(a, 0, ma.len(), b, 0, mb.len())? {
            return Ok(Some("contents".into()));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_difference_names_the_first_changed_path() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        for d in [&a, &b] {
            fs::create_dir_all(d.join("bin")).unwrap();
            fs::write(d.join("bin/same"), b"x").unwrap();
            fs::write(d.join("lib"), b"y").unwrap();
        }
        assert_eq!(first_difference(&a, &b).unwrap(), None);
        fs::write(b.join("lib"), b"z").unwrap();
        fs::write(b.join("bin/new"), b"n").unwrap();
        let (path, why) = first_difference(&a, &b).unwrap().unwrap();
        assert_eq!((path.as_str(), why.as_str()), ("bin/new", "only in B"));
        fs::remove_file(b.join("bin/new")).unwrap();
        let (path, why) = first_difference(&a, &b).unwrap().unwrap();
        assert_eq!((path.as_str(), why.as_str()), ("lib", "contents"));
    }
}
