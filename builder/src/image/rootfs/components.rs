//! Component layers: each URL component's verified artifact installed
//! under /usr as its `install` says (a binary, or a tarball's entries).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component as PathPart, Path, PathBuf};

use flate2::read::GzDecoder;

use super::mkdir_parent;
use crate::fetch::Fetched;
use crate::image::BuildError;
use crate::profile::{Component, Install, Source};

/// A path in the image (absolute, under /usr) as a path under `root`.
pub(super) fn image_path(root: &Path, component: &str, path: &str) -> Result<PathBuf, BuildError> {
    let p = Path::new(path);
    let ok = p.is_absolute()
        && p.starts_with("/usr/")
        && p.components().all(|c| matches!(c, PathPart::RootDir | PathPart::Normal(_)));
    if !ok {
        return Err(BuildError::InstallPath { component: component.into(), path: path.into() });
    }
    Ok(root.join(p.strip_prefix("/").unwrap_or(p)))
}

/// Installs each URL component's artifact as its `install` says.
pub fn add_components(
    root: &Path,
    components: &[Component],
    fetched: &[Fetched],
) -> Result<(), BuildError> {
    for c in components {
        if !matches!(c.source, Source::Url { .. }) {
            continue;
        }
        let artifact = fetched
            .iter()
            .find(|f| f.name == c.name)
            .ok_or_else(|| BuildError::NotFetched { component: c.name.clone() })?;
        match &c.install {
            Install::Binary { path, mode } => {
                let dest = image_path(root, &c.name, path)?;
                mkdir_parent(&dest)?;
                fs::copy(&artifact.path, &dest).map_err(|e| BuildError::io(&dest, e))?;
                fs::set_permissions(&dest, fs::Permissions::from_mode(*mode))
                    .map_err(|e| BuildError::io(&dest, e))?;
            }
            Install::Tarball { dest, strip_components, include } => {
                let dest = image_path(root, &c.name, dest)?;
                unpack_layer(&artifact.path, &dest, *strip_components as usize, include, &c.name)?;
            }
            Install::Package => {}
        }
    }
    Ok(())
}

/// Unpacks a gzip tarball into `dest`, dropping `strip` leading path
/// elements and keeping entries whose remaining path is in `include`, or
/// lies under one of them (all entries when `include` is empty).
pub(super) fn unpack_layer(
    tarball: &Path,
    dest: &Path,
    strip: usize,
    include: &[String],
    name: &str,
) -> Result<(), BuildError> {
    let file = fs::File::open(tarball).map_err(|e| BuildError::io(tarball, e))?;
    let mut archive =
        tar::Archive::new(GzDecoder::new(std::io::BufReader::with_capacity(1 << 20, file)));
    let ctx = |source: std::io::Error| BuildError::UnpackComponent {
        component: name.into(),
        archive: tarball.display().to_string(),
        source,
    };
    let mut matched = vec![false; include.len()];
    fs::create_dir_all(dest).map_err(|e| BuildError::io(dest, e))?;
    for entry in archive.entries().map_err(ctx)? {
        let mut entry = entry.map_err(ctx)?;
        let path = entry.path().map_err(ctx)?.into_owned();
        // Stripped like tar's --strip-components: a leading `.` counts
        // (the CNI plugins tarball's `./bridge` is `bridge` after one), and
        // only plain names are kept after it (no `..` out of `dest`).
        let parts: Vec<_> = path.components().filter(|c| !matches!(c, PathPart::RootDir)).collect();
        if parts.len() <= strip {
            continue;
        }
        if parts[strip..].iter().any(|c| !matches!(c, PathPart::Normal(_))) {
            continue;
        }
        let rel: PathBuf = parts[strip..].iter().collect();
        if !include.is_empty() {
            match include.iter().position(|i| rel.starts_with(i)) {
                Some(i) => matched[i] = true,
                None => continue,
            }
        }
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
            continue;
        }
        let out = dest.join(&rel);
        mkdir_parent(&out)?;
        entry.unpack(&out).map_err(ctx)?;
    }
    if let Some(i) = matched.iter().position(|m| !m) {
        return Err(BuildError::MissingEntry {
            component: name.into(),
            archive: tarball.display().to_string(),
            entry: include[i].to_string(),
            strip,
        });
    }
    Ok(())
}
