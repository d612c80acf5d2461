//! The image's software bill of materials: an SPDX 2.3 JSON document with
//! one package for the image, one per Debian package installed in it
//! (name, version, source package, the license Debian's machine-readable
//! copyright file states for `Files: *`), one per downloaded component
//! (version, URL, sha256/sha512) and one for keel-bootstrap, each
//! CONTAINED by the image.
//!
//! Deterministic: no clock (`created` is the build's SOURCE_DATE_EPOCH),
//! the namespace is derived from the build key, everything sorted. Written
//! beside the image and into its ESP, where `keel inspect --sbom` reads it.

use std::fs;
use std::path::Path;

use serde_json::{json, Value};

use super::manifest::Manifest;
use super::BuildError;

/// Where the SBOM lives in the ESP.
pub const ESP_PATH: &str = "keel/sbom.spdx.json";

/// A Debian package as the SBOM describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// The source package and its version (the binary's when dpkg gives none).
    pub source: String,
    pub source_version: String,
    /// An SPDX license expression, or `NOASSERTION`.
    pub license: String,
    /// Debian's own words for the license (`License:` of `Files: *`).
    pub debian_license: Option<String>,
}

/// The installed packages of the tree at `root` with what dpkg and
/// /usr/share/doc/<package>/copyright say about them, sorted by name.
pub fn debian_packages(root: &Path) -> Result<Vec<DebPackage>, BuildError> {
    let status = root.join("var/lib/dpkg/status");
    let text = fs::read_to_string(&status).map_err(|e| BuildError::io(&status, e))?;
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        };
        let (Some(name), Some(version), Some(state)) =
            (field("Package:"), field("Version:"), field("Status:"))
        else {
            continue;
        };
        if !state.ends_with(" installed") {
            continue;
        }
        // `Source: glibc` or `Source: gcc-14 (14.2.0-19)`.
        let (source, source_version) = match field("Source:") {
            Some(s) => match s.split_once(' ') {
                Some((src, v)) => {
                    (src.to_string(), v.trim_matches(|c| c == '(' || c == ')').to_string())
                }
                None => (s, version.clone()),
            },
            None => (name.clone(), version.clone()),
        };
        let copyright = root.join("usr/share/doc").join(&name).join("copyright");
        let debian_license =
            fs::read_to_string(&copyright).ok().and_then(|t| files_star_license(&t));
        let license =
            debian_license.as_deref().and_then(spdx_expression).unwrap_or("NOASSERTION".into());
        out.push(DebPackage {
            name,
            version,
            architecture: field("Architecture:").unwrap_or_default(),
            source,
            source_version,
            license,
            debian_license,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The `License:` of the `Files: *` paragraph of a machine-readable
/// (DEP-5) copyright file; `None` for a free-form file.
pub fn files_star_license(text: &str) -> Option<String> {
    let mut paragraphs = text.split("\n\n").map(str::trim).filter(|p| !p.is_empty());
    let header = paragraphs.next()?;
    if !header.starts_with("Format:") || !header.contains("copyright-format") {
        return None;
    }
    for p in paragraphs {
        let mut files = String::new();
        let mut license = None;
        let mut current = "";
        for line in p.lines() {
            if line.starts_with(' ') || line.starts_with('\t') {
                if current == "Files" {
                    files.push(' ');
                    files.push_str(line.trim());
                }
                continue;
            }
            let (key, value) = line.split_once(':').unwrap_or((line, ""));
            current = key;
            match key {
                "Files" => files.push_str(value.trim()),
                "License" => license = Some(value.trim().to_string()),
                _ => {}
            }
        }
        if files.split_whitespace().any(|f| f == "*") {
            return license.filter(|l| !l.is_empty());
        }
    }
    None
}

/// Debian's license short names as SPDX identifiers; an expression with a
/// name outside this table (or an exception) is not asserted.
const SPDX_NAMES: &[(&str, &str)] = &[
    ("apache-2", "Apache-2.0"),
    ("apache-2.0", "Apache-2.0"),
    ("artistic", "Artistic-1.0-Perl"),
    ("artistic-2.0", "Artistic-2.0"),
    ("bsd-2-clause", "BSD-2-Clause"),
    ("bsd-3-clause", "BSD-3-Clause"),
    ("bsd-4-clause", "BSD-4-Clause"),
    ("bsl-1.0", "BSL-1.0"),
    ("cc0", "CC0-1.0"),
    ("cc0-1.0", "CC0-1.0"),
    ("curl", "curl"),
    ("expat", "MIT"),
    ("isc", "ISC"),
    ("mit", "MIT"),
    ("mpl-1.1", "MPL-1.1"),
    ("mpl-2.0", "MPL-2.0"),
    ("openssl", "OpenSSL"),
    ("psf-2", "PSF-2.0"),
    ("unicode-dfs-2016", "Unicode-DFS-2016"),
    ("x11", "X11"),
    ("zlib", "Zlib"),
];

/// One Debian short name as an SPDX identifier: the table above, and the
/// GNU families (`GPL-2+` -> `GPL-2.0-or-later`, `LGPL-2.1` ->
/// `LGPL-2.1-only`).
fn spdx_id(name: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    if let Some((_, id)) = SPDX_NAMES.iter().find(|(d, _)| *d == lower) {
        return Some((*id).to_string());
    }
    let (base, later) = match name.strip_suffix('+') {
        Some(b) => (b, true),
        None => (name, false),
    };
    let (family, version) = base.split_once('-')?;
    let family =
        ["GPL", "LGPL", "AGPL", "GFDL"].into_iter().find(|f| f.eq_ignore_ascii_case(family))?;
    let ok = !version.is_empty()
        && version.split('.').count() <= 2
        && version.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if !ok {
        return None;
    }
    let version = if version.contains('.') { version.to_string() } else { format!("{version}.0") };
    Some(format!("{family}-{version}-{}", if later { "or-later" } else { "only" }))
}

/// A Debian license expression (`GPL-2+ or Artistic`, `BSD-3-clause and
/// Expat`, `MIT, BSD-2-clause`) as an SPDX expression.
pub fn spdx_expression(debian: &str) -> Option<String> {
    let mut out = Vec::new();
    let mut expect_name = true;
    for token in debian.replace(',', " or ").split_whitespace() {
        match token.to_ascii_lowercase().as_str() {
            "or" | "and" if !expect_name => {
                out.push(token.to_ascii_uppercase());
                expect_name = true;
            }
            _ if expect_name => {
                out.push(spdx_id(token)?);
                expect_name = false;
            }
            _ => return None,
        }
    }
    // Mixed AND and OR without parentheses: leave the reading to people.
    let mixed = out.iter().any(|t| t == "AND") && out.iter().any(|t| t == "OR");
    (!expect_name && !mixed).then(|| out.join(" "))
}

/// The build's other inputs the SBOM names.
pub struct Inputs<'a> {
    pub name: &'a str,
    pub debian: &'a [DebPackage],
    /// sha256 of the keel-bootstrap binary.
    pub bootstrap_sha256: &'a str,
    /// sha256 of the keel-init binary (the initrd's /init, in the UKI).
    pub init_sha256: &'a str,
}

/// An SPDXID-safe form of `s` (letters, digits, `.` and `-`).
fn spdx_ref(kind: &str, s: &str) -> String {
    let safe: String =
        s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' }).collect();
    format!("SPDXRef-{kind}-{safe}")
}

fn rfc3339(epoch: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(epoch as i64)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

/// The SPDX 2.3 document of the image `manifest` describes.
pub fn document(manifest: &Manifest, inputs: &Inputs) -> Value {
    let image_ref = "SPDXRef-Image".to_string();
    let mut packages = vec![json!({
        "SPDXID": image_ref,
        "name": inputs.name,
        "versionInfo": manifest.build_key,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "supplier": "NOASSERTION",
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "comment": format!(
            "Keel {} image of profile {}; kernel {}; verity root hash {}; secure boot: {}",
            manifest.role, manifest.profile, manifest.kernel, manifest.verity_root_hash,
            manifest.secure_boot
        ),
    })];
    let mut contained = Vec::new();
    for d in inputs.debian {
        let id = spdx_ref("deb", &d.name);
        let purl = format!(
            "pkg:deb/debian/{}@{}?arch={}",
            d.name,
            d.version.replace(':', "%3A").replace('+', "%2B"),
            d.architecture
        );
        let mut p = json!({
            "SPDXID": id,
            "name": d.name,
            "versionInfo": d.version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "supplier": "Organization: Debian",
            "sourceInfo": format!("built package from: {} {}", d.source, d.source_version),
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": d.license,
            "copyrightText": "NOASSERTION",
            "primaryPackagePurpose": "LIBRARY",
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": purl,
            }],
        });
        let component = manifest
            .components
            .iter()
            .find(|c| c.debian_package.as_deref() == Some(d.name.as_str()));
        if let Some(c) = component {
            p["comment"] = json!(format!("Keel component {}", c.name));
        }
        if let Some(l) = &d.debian_license {
            p["licenseComments"] = json!(format!(
                "Debian: /usr/share/doc/{}/copyright, Files: *, License: {l}",
                d.name
            ));
        }
        packages.push(p);
        contained.push(id);
    }
    for c in manifest.components.iter().filter(|c| c.source == "url") {
        let id = spdx_ref("component", &c.name);
        let mut checksums = Vec::new();
        if let Some(h) = &c.sha256 {
            checksums.push(json!({"algorithm": "SHA256", "checksumValue": h}));
        }
        if let Some(h) = &c.sha512 {
            checksums.push(json!({"algorithm": "SHA512", "checksumValue": h}));
        }
        packages.push(json!({
            "SPDXID": id,
            "name": c.name,
            "versionInfo": c.version,
            "downloadLocation": c.url.clone().unwrap_or_else(|| "NOASSERTION".into()),
            "filesAnalyzed": false,
            "checksums": checksums,
            "supplier": "NOASSERTION",
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "primaryPackagePurpose": "APPLICATION",
        }));
        contained.push(id);
    }
    for (name, sha256, comment) in [
        (
            "keel-bootstrap",
            inputs.bootstrap_sha256,
            "/usr/bin/keel-bootstrap, built from this repository (static)",
        ),
        (
            "keel-init",
            inputs.init_sha256,
            "/init of the initrd in the UKI, built from this repository (static)",
        ),
    ] {
        let id = format!("SPDXRef-{name}");
        packages.push(json!({
            "SPDXID": id,
            "name": name,
            "versionInfo": manifest.keel_version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "checksums": [{"algorithm": "SHA256", "checksumValue": sha256}],
            "supplier": "NOASSERTION",
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "Apache-2.0",
            "copyrightText": "NOASSERTION",
            "primaryPackagePurpose": "APPLICATION",
            "comment": comment,
        }));
        contained.push(id);
    }
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": image_ref,
    })];
    for id in contained {
        relationships.push(json!({
            "spdxElementId": image_ref,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
    }
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": inputs.name,
        "documentNamespace": format!("urn:keel:spdx:{}:{}", inputs.name, manifest.build_key),
        "creationInfo": {
            "created": rfc3339(manifest.source_date_epoch),
            "creators": [format!("Tool: keel-{}", manifest.keel_version)],
        },
        "documentDescribes": [image_ref],
        "packages": packages,
        "relationships": relationships,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_license_names_become_spdx_expressions() {
        for (debian, spdx) in [
            ("GPL-2+", Some("GPL-2.0-or-later")),
            ("LGPL-2.1+", Some("LGPL-2.1-or-later")),
            ("GPL-3", Some("GPL-3.0-only")),
            ("Expat", Some("MIT")),
            ("GPL-2+ or Artistic", Some("GPL-2.0-or-later OR Artistic-1.0-Perl")),
            ("BSD-3-clause and Expat", Some("BSD-3-Clause AND MIT")),
            ("MIT, BSD-2-clause", Some("MIT OR BSD-2-Clause")),
            ("GPL-2+ and MIT or ISC", None),
            ("GPL-2+ with OpenSSL exception", None),
            ("public-domain", None),
            ("GPL-2 and", None),
        ] {
            assert_eq!(spdx_expression(debian).as_deref(), spdx, "{debian}");
        }
    }

    #[test]
    fn license_of_files_star_in_a_dep5_file_only() {
        let dep5 = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
                    Upstream-Name: x\n\nFiles: debian/*\nLicense: GPL-2+\n\n\
                    Files:\n *\nCopyright: someone\nLicense: Apache-2.0\n Full text.\n";
        assert_eq!(files_star_license(dep5).as_deref(), Some("Apache-2.0"));
        assert_eq!(files_star_license("This is free software, see GPL.\n"), None);
    }
}
