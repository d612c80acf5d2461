//! The S3 object metadata (`x-amz-meta-*`) `publish` writes on each bundle
//! and `show` reads: everything here is public (names, modes, hashes of
//! public certificates, an HMAC under a local key), never key material.

use std::collections::{BTreeMap, HashMap};

use keel_contract::bundle::{Bundle, FORMAT_VERSION};
use keel_contract::Role;

use super::{fingerprint, roles};

pub const FORMAT: &str = "keel-format";
pub const CLUSTER: &str = "keel-cluster";
pub const ROLE: &str = "keel-role";
pub const KMS_KEY: &str = "keel-kms-key";
/// Space-separated `<mode>:<path>`, e.g. `0644:etcd/pki/ca.crt`.
pub const FILES: &str = "keel-files";
/// Space-separated `<path>=<sha256>` of the CA certificates in the bundle.
pub const CA_SHA256: &str = "keel-ca-sha256";
pub const FINGERPRINT: &str = "keel-fingerprint";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub format: u32,
    pub cluster: String,
    pub role: Role,
    pub kms_key: String,
    pub files: Vec<(u32, String)>,
    pub ca_sha256: BTreeMap<String, String>,
    pub fingerprint: String,
}

impl ObjectMeta {
    /// The metadata of `bundle` sealed under `kms_key` (as KMS names it).
    pub fn of(bundle: &Bundle, kms_key: &str, fingerprint: String) -> ObjectMeta {
        let mut files: Vec<(u32, String)> =
            bundle.files.iter().map(|f| (f.mode, f.path.clone())).collect();
        files.sort_by(|a, b| a.1.cmp(&b.1));
        let ca_sha256 = bundle
            .files
            .iter()
            .filter(|f| roles::CA_CERTS.contains(&f.path.as_str()))
            .map(|f| (f.path.clone(), fingerprint::certificate(&f.contents)))
            .collect();
        ObjectMeta {
            format: FORMAT_VERSION,
            cluster: bundle.cluster.clone(),
            role: bundle.role,
            kms_key: kms_key.to_string(),
            files,
            ca_sha256,
            fingerprint,
        }
    }

    pub fn to_map(&self) -> HashMap<String, String> {
        let files =
            self.files.iter().map(|(m, p)| format!("{m:04o}:{p}")).collect::<Vec<_>>().join(" ");
        let cas =
            self.ca_sha256.iter().map(|(p, h)| format!("{p}={h}")).collect::<Vec<_>>().join(" ");
        HashMap::from([
            (FORMAT.into(), self.format.to_string()),
            (CLUSTER.into(), self.cluster.clone()),
            (ROLE.into(), self.role.to_string()),
            (KMS_KEY.into(), self.kms_key.clone()),
            (FILES.into(), files),
            (CA_SHA256.into(), cas),
            (FINGERPRINT.into(), self.fingerprint.clone()),
        ])
    }

    /// Parses an object's metadata; `None` when it was not written by keel
    /// (or is unreadable).
    pub fn from_map(map: &HashMap<String, String>) -> Option<ObjectMeta> {
        let get = |k: &str| map.get(k).map(String::as_str);
        let files = get(FILES)?
            .split_whitespace()
            .map(|item| {
                let (mode, path) = item.split_once(':')?;
                Some((u32::from_str_radix(mode, 8).ok()?, path.to_string()))
            })
            .collect::<Option<Vec<_>>>()?;
        let ca_sha256 = get(CA_SHA256)?
            .split_whitespace()
            .map(|item| item.split_once('=').map(|(p, h)| (p.to_string(), h.to_string())))
            .collect::<Option<BTreeMap<_, _>>>()?;
        Some(ObjectMeta {
            format: get(FORMAT)?.parse().ok()?,
            cluster: get(CLUSTER)?.to_string(),
            role: get(ROLE)?.parse().ok()?,
            kms_key: get(KMS_KEY)?.to_string(),
            files,
            ca_sha256,
            fingerprint: get(FINGERPRINT)?.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_contract::bundle::BundleFile;
    use zeroize::Zeroizing;

    #[test]
    fn round_trips_through_a_map() {
        let bundle = Bundle {
            cluster: "c1".into(),
            role: Role::Worker,
            files: vec![
                BundleFile {
                    path: "kubernetes/pki/ca.crt".into(),
                    mode: 0o644,
                    contents: Zeroizing::new(b"cert".to_vec()),
                },
                BundleFile {
                    path: "kubernetes/bootstrap-token".into(),
                    mode: 0o600,
                    contents: Zeroizing::new(b"t.s".to_vec()),
                },
            ],
        };
        let meta = ObjectMeta::of(&bundle, "arn:aws:kms:r:1:key/k", "hmac-sha256:00".into());
        assert_eq!(meta.ca_sha256.len(), 1);
        let map = meta.to_map();
        assert_eq!(map[FILES], "0600:kubernetes/bootstrap-token 0644:kubernetes/pki/ca.crt");
        assert_eq!(ObjectMeta::from_map(&map), Some(meta));
        assert_eq!(ObjectMeta::from_map(&HashMap::new()), None);
    }
}
