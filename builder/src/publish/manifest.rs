//! The publish manifest: what a pipeline feeds to launch templates, like
//! Packer's manifest. JSON, written atomically.
//!
//! ```json
//! {
//!   "image-sha256": "…", "role": "etcd", "profile": "prod",
//!   "verity-root-hash": "…", "secure-boot": "<db sha256> or unsigned",
//!   "versions": {"etcd": "3.6.14"},
//!   "regions": {
//!     "us-east-1": {"ami-id": "ami-…", "snapshot-id": "snap-…", "reused": false}
//!   }
//! }
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use keel_contract::Role;
use serde::{Deserialize, Serialize};

use super::image::Image;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PublishManifest {
    pub image_sha256: String,
    pub role: Role,
    pub profile: String,
    /// dm-verity root hash of the image's `/usr`.
    pub verity_root_hash: String,
    /// `unsigned`, or the sha256 fingerprint of the db certificate that
    /// signed the image and that the AMI's UEFI variables enrol.
    #[serde(default = "unsigned")]
    pub secure_boot: String,
    /// Component name -> version.
    pub versions: BTreeMap<String, String>,
    /// Region -> its AMI.
    pub regions: BTreeMap<String, RegionAmi>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RegionAmi {
    pub ami_id: String,
    /// The root snapshot, when EC2 reports it.
    pub snapshot_id: Option<String>,
    /// True when the AMI existed before this run.
    pub reused: bool,
    /// The launch template version made for this AMI, if asked for.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub launch_template_version: Option<i64>,
}

fn unsigned() -> String {
    "unsigned".into()
}

impl PublishManifest {
    pub fn new(image: &Image) -> PublishManifest {
        let m = &image.manifest;
        PublishManifest {
            image_sha256: m.image_sha256.clone(),
            role: m.role,
            profile: m.profile.clone(),
            verity_root_hash: m.verity_root_hash.clone(),
            secure_boot: image.secure_boot_db().map_or_else(unsigned, str::to_string),
            versions: m.components.iter().map(|c| (c.name.clone(), c.version.clone())).collect(),
            regions: BTreeMap::new(),
        }
    }

    pub fn to_json(&self) -> String {
        // A struct of strings and maps always serialises.
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// Writes the manifest atomically (temp file, fsync, rename).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        keel_bootstrap::atomic_file::write(path, 0o644, self.to_json().as_bytes())
    }
}
