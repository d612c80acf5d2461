//! The node's user data: a versioned TOML document written into the launch
//! template by `keel userdata` and read at boot. Unknown keys and bad
//! values are errors with a line and column. The role is baked into the
//! image (`/usr/lib/keel/role`); user data naming another role is refused.
//!
//! ```toml
//! version = 1
//! cluster = "prod"
//! role = "etcd"
//! api-endpoint = "https://api.prod.example.com:6443"
//!
//! [assets]
//! bucket = "prod-keel-assets"
//! prefix = "prod"
//!
//! [etcd]
//! expected-members = 3
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::Role;

/// The only user data version this build reads.
pub const VERSION: u32 = 1;
/// Where the image records its role (one word), relative to the root.
pub const IMAGE_ROLE_FILE: &str = "usr/lib/keel/role";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct UserData {
    pub version: u32,
    pub cluster: String,
    pub role: Role,
    /// The Kubernetes API endpoint (`https://host:port`): the controllers'
    /// load balancer.
    pub api_endpoint: String,
    pub assets: Assets,
    pub etcd: Etcd,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<Aws>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<Kubernetes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubelet: Option<Kubelet>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Assets {
    pub bucket: String,
    #[serde(default)]
    pub prefix: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Etcd {
    /// How many etcd members the cluster has (the etcd ASG's size).
    pub expected_members: u32,
    /// How long to wait for them to appear in EC2 (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_timeout_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_ms: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub election_timeout_ms: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_backend_bytes: Option<u64>,
}

/// Only for tests against emulated AWS: where to send AWS calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Aws {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Kubernetes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_cidr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Kubelet {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pods: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_dns: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_labels: Vec<String>,
}

/// Defaults applied when user data leaves a setting out.
pub const DEFAULT_DISCOVERY_TIMEOUT_SECONDS: u64 = 600;
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";
pub const DEFAULT_POD_CIDR: &str = "10.244.0.0/16";
pub const DEFAULT_CLUSTER_DNS: &str = "10.96.0.10";
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
pub const DEFAULT_MAX_PODS: u32 = 110;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum UserDataError {
    #[error("user data is not UTF-8")]
    NotText,
    #[error("user data line {line}, column {column}: {message}")]
    At { line: usize, column: usize, message: String },
    #[error("user data: {0}")]
    Invalid(String),
    #[error("user data is for role {user_data} but this image is a {image} image")]
    RoleMismatch { user_data: Role, image: Role },
}

#[derive(Debug, thiserror::Error)]
pub enum ImageRoleError {
    #[error("reading the image's role from {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Bad { path: String, source: crate::role::UnknownRole },
}

/// The role baked into the image under `root`.
pub fn image_role(root: &Path) -> Result<Role, ImageRoleError> {
    let path = root.join(IMAGE_ROLE_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|source| ImageRoleError::Read { path: path.display().to_string(), source })?;
    text.trim()
        .parse()
        .map_err(|source| ImageRoleError::Bad { path: path.display().to_string(), source })
}

/// Line and column (1-based) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

impl UserData {
    /// Parses and checks user data for an image of role `image_role`.
    pub fn parse(bytes: &[u8], image_role: Role) -> Result<UserData, UserDataError> {
        let text = std::str::from_utf8(bytes).map_err(|_| UserDataError::NotText)?;
        let at = |e: toml::de::Error| {
            let (line, column) = e.span().map_or((1, 1), |s| line_column(text, s.start));
            UserDataError::At { line, column, message: e.message().trim().to_string() }
        };
        // The version first, so that a newer document gets a clear error
        // rather than complaints about keys this build does not know.
        let table: toml::Table = toml::from_str(text).map_err(at)?;
        match table.get("version") {
            Some(toml::Value::Integer(v)) if *v == i64::from(VERSION) => {}
            Some(v) => {
                return Err(UserDataError::Invalid(format!(
                "version {v} is not supported by this keel-bootstrap (it reads version {VERSION})"
            )))
            }
            None => return Err(UserDataError::Invalid(format!("missing `version = {VERSION}`"))),
        }
        let ud: UserData = toml::from_str(text).map_err(at)?;
        ud.check()?;
        if ud.role != image_role {
            return Err(UserDataError::RoleMismatch { user_data: ud.role, image: image_role });
        }
        Ok(ud)
    }

    /// Value checks that the schema alone cannot express.
    pub fn check(&self) -> Result<(), UserDataError> {
        let bad = |m: String| Err(UserDataError::Invalid(m));
        if let Err(e) = crate::names::check_cluster_name(&self.cluster) {
            return bad(e.to_string());
        }
        if !self.api_endpoint.starts_with("https://") || self.api_host().is_empty() {
            return bad(format!("api-endpoint {:?} must be an https:// URL", self.api_endpoint));
        }
        if self.assets.bucket.is_empty() {
            return bad("assets.bucket must not be empty".into());
        }
        if self.etcd.expected_members == 0 {
            return bad("etcd.expected-members must be at least 1".into());
        }
        for (name, cidr) in [
            ("kubernetes.service-cidr", self.service_cidr()),
            ("kubernetes.pod-cidr", self.pod_cidr()),
        ] {
            crate::net::Ipv4Cidr::parse(cidr)
                .map_err(|e| UserDataError::Invalid(format!("{name}: {e}")))?;
        }
        if self.cluster_dns().parse::<std::net::Ipv4Addr>().is_err() {
            return bad(format!(
                "kubelet.cluster-dns {:?} is not an IPv4 address",
                self.cluster_dns()
            ));
        }
        Ok(())
    }

    /// Renders the document (what `keel userdata` prints).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// The API endpoint's host name or address, without scheme or port.
    pub fn api_host(&self) -> &str {
        let rest = self.api_endpoint.trim_start_matches("https://");
        let host = rest.split(['/', '?']).next().unwrap_or("");
        if let Some(v6) = host.strip_prefix('[') {
            return v6.split(']').next().unwrap_or("");
        }
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    }

    pub fn discovery_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(
            self.etcd.discovery_timeout_seconds.unwrap_or(DEFAULT_DISCOVERY_TIMEOUT_SECONDS),
        )
    }
    pub fn endpoint_url(&self) -> Option<&str> {
        self.aws.as_ref().and_then(|a| a.endpoint_url.as_deref())
    }
    pub fn service_cidr(&self) -> &str {
        self.kubernetes
            .as_ref()
            .and_then(|k| k.service_cidr.as_deref())
            .unwrap_or(DEFAULT_SERVICE_CIDR)
    }
    pub fn pod_cidr(&self) -> &str {
        self.kubernetes.as_ref().and_then(|k| k.pod_cidr.as_deref()).unwrap_or(DEFAULT_POD_CIDR)
    }
    pub fn cluster_dns(&self) -> &str {
        self.kubelet.as_ref().and_then(|k| k.cluster_dns.as_deref()).unwrap_or(DEFAULT_CLUSTER_DNS)
    }
    pub fn cluster_domain(&self) -> &str {
        self.kubelet
            .as_ref()
            .and_then(|k| k.cluster_domain.as_deref())
            .unwrap_or(DEFAULT_CLUSTER_DOMAIN)
    }
    pub fn max_pods(&self) -> u32 {
        self.kubelet.as_ref().and_then(|k| k.max_pods).unwrap_or(DEFAULT_MAX_PODS)
    }
    pub fn node_labels(&self) -> &[String] {
        self.kubelet.as_ref().map_or(&[], |k| &k.node_labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"version = 1
cluster = "prod"
role = "etcd"
api-endpoint = "https://api.prod.example.com:6443"

[assets]
bucket = "prod-assets"
prefix = "prod"

[etcd]
expected-members = 3
"#;

    #[test]
    fn parses_and_round_trips() {
        let ud = UserData::parse(GOOD.as_bytes(), Role::Etcd).unwrap();
        assert_eq!(ud.cluster, "prod");
        assert_eq!(ud.etcd.expected_members, 3);
        assert_eq!(ud.api_host(), "api.prod.example.com");
        let again = UserData::parse(ud.to_toml().unwrap().as_bytes(), Role::Etcd).unwrap();
        assert_eq!(again, ud);
    }

    #[test]
    fn unknown_key_is_an_error_with_line_and_column() {
        let text =
            GOOD.replace("expected-members = 3", "expected-members = 3\nexpected-memebrs = 3");
        let err = UserData::parse(text.as_bytes(), Role::Etcd).unwrap_err();
        match err {
            UserDataError::At { line, column, ref message } => {
                assert_eq!((line, column), (12, 1), "{err}");
                assert!(message.contains("expected-memebrs"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_value_type_names_its_line() {
        let text = GOOD.replace("expected-members = 3", "expected-members = \"three\"");
        let err = UserData::parse(text.as_bytes(), Role::Etcd).unwrap_err().to_string();
        assert!(err.starts_with("user data line 11, column 20:"), "{err}");
    }

    #[test]
    fn role_mismatch_and_versions_are_refused() {
        let err = UserData::parse(GOOD.as_bytes(), Role::Worker).unwrap_err();
        assert_eq!(err, UserDataError::RoleMismatch { user_data: Role::Etcd, image: Role::Worker });
        let v2 = GOOD.replace("version = 1", "version = 2");
        let err = UserData::parse(v2.as_bytes(), Role::Etcd).unwrap_err().to_string();
        assert!(err.contains("version 2 is not supported"), "{err}");
        let bad = GOOD.replace("https://api.prod.example.com:6443", "api.prod:6443");
        assert!(UserData::parse(bad.as_bytes(), Role::Etcd)
            .unwrap_err()
            .to_string()
            .contains("https://"));
        let role = GOOD.replace("role = \"etcd\"", "role = \"master\"");
        let err = UserData::parse(role.as_bytes(), Role::Etcd).unwrap_err().to_string();
        assert!(err.starts_with("user data line 3"), "{err}");
    }

    #[test]
    fn image_role_is_read_from_the_root() {
        let dir = tempfile::tempdir().unwrap();
        assert!(image_role(dir.path()).unwrap_err().to_string().contains("usr/lib/keel/role"));
        std::fs::create_dir_all(dir.path().join("usr/lib/keel")).unwrap();
        std::fs::write(dir.path().join(IMAGE_ROLE_FILE), "worker\n").unwrap();
        assert_eq!(image_role(dir.path()).unwrap(), Role::Worker);
    }
}
