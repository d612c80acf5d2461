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

use crate::{kube_names, Role};

/// The only user data version this build reads.
pub const VERSION: u32 = 1;
/// Where the image records its role (one word), relative to the root.
pub const IMAGE_ROLE_FILE: &str = "usr/lib/keel/role";
/// Present, relative to the root, only in a test image: one built from a
/// profile with a `[test]` table. It lives in the dm-verity-verified
/// `/usr`, so a node cannot be turned into a test image after the build.
/// A test image accepts a plain-http `aws.endpoint-url` and trusts the
/// test CA the profile names.
pub const TEST_IMAGE_FILE: &str = "usr/lib/keel/test-image";

/// Whether the image at `root` is a test image ([`TEST_IMAGE_FILE`]).
pub fn is_test_image(root: &Path) -> bool {
    root.join(TEST_IMAGE_FILE).exists()
}

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
    /// The KMS key the bundles are sealed under (ARN, id or alias):
    /// passed to Decrypt, which refuses a bundle sealed under another key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    /// The account that owns the bucket: passed to GetObject
    /// (ExpectedBucketOwner), which refuses a bucket of another account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_owner: Option<String>,
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
/// The longest discovery timeout: it bounds every wait of the etcd role
/// and must stay below keel-bootstrap.service's TimeoutStartSec (15 min),
/// with room for the assets and the membership calls.
pub const MAX_DISCOVERY_TIMEOUT_SECONDS: u64 = 600;
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";
pub const DEFAULT_POD_CIDR: &str = "10.244.0.0/16";
pub const DEFAULT_CLUSTER_DNS: &str = "10.96.0.10";
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
pub const DEFAULT_MAX_PODS: u32 = 110;
/// The controller manager's per-node pod range (`--node-cidr-mask-size`).
pub const NODE_CIDR_MASK: u8 = 24;
/// The smallest pod CIDR worth allocating from: 4 nodes' ranges.
pub const MAX_POD_CIDR_PREFIX: u8 = 22;
/// etcd's defaults, which keel-bootstrap renders when user data is silent.
pub const DEFAULT_HEARTBEAT_MS: u32 = 100;
pub const DEFAULT_ELECTION_MS: u32 = 1000;
/// etcd refuses an election timeout above 50 s.
pub const MAX_ELECTION_MS: u32 = 50_000;

/// S3's bucket naming rules (3-63 characters of lowercase letters, digits,
/// '-' and '.', alphanumeric at both ends).
fn s3_bucket_name(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && b.starts_with(|c: char| c.is_ascii_alphanumeric())
        && b.ends_with(|c: char| c.is_ascii_alphanumeric())
}

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

/// One step of a path into the document.
#[derive(Debug, Clone, PartialEq)]
pub enum Key {
    Name(&'static str),
    Index(usize),
}

/// A value that fails a check: the field's path and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {message}", path_string(path))]
pub struct FieldError {
    pub path: Vec<Key>,
    pub message: String,
}

fn path_string(path: &[Key]) -> String {
    let mut out = String::new();
    for k in path {
        match k {
            Key::Name(n) if out.is_empty() => out.push_str(n),
            Key::Name(n) => {
                out.push('.');
                out.push_str(n);
            }
            Key::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

impl FieldError {
    /// The error at the field's line and column in `text` (the innermost
    /// part of the path the document has: a defaulted key points at its
    /// table, or at the first line).
    pub fn locate(self, text: &str) -> UserDataError {
        let mut span = None;
        if let Ok(doc) = toml_edit::ImDocument::parse(text) {
            let mut item = doc.as_item();
            for k in &self.path {
                let next = match k {
                    Key::Name(n) => item.get(*n),
                    Key::Index(i) => item.get(*i),
                };
                match next {
                    Some(n) => item = n,
                    None => break,
                }
                span = item.span().or(span);
            }
        }
        let (line, column) = span.map_or((1, 1), |s| line_column(text, s.start));
        UserDataError::At { line, column, message: self.to_string() }
    }
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
        ud.check().map_err(|e| e.locate(text))?;
        if ud.role != image_role {
            return Err(UserDataError::RoleMismatch { user_data: ud.role, image: image_role });
        }
        Ok(ud)
    }

    /// Value checks that the schema alone cannot express. An error names
    /// the field (`kubelet.node-labels[1]`); [`UserData::parse`] adds its
    /// line and column.
    pub fn check(&self) -> Result<(), FieldError> {
        fn bad<T>(path: &[Key], message: String) -> Result<T, FieldError> {
            Err(FieldError { path: path.to_vec(), message })
        }
        use Key::{Index as I, Name as N};
        if let Err(e) = crate::names::check_cluster_name(&self.cluster) {
            return bad(&[N("cluster")], e.to_string());
        }
        if !self.api_endpoint.starts_with("https://") || self.api_host().is_empty() {
            return bad(
                &[N("api-endpoint")],
                format!("{:?} must be an https:// URL", self.api_endpoint),
            );
        }
        let host = self.api_host();
        if host.parse::<std::net::IpAddr>().is_err() {
            kube_names::dns_subdomain(host)
                .or_else(|e| bad(&[N("api-endpoint")], format!("host {e}")))?;
        }
        if !s3_bucket_name(&self.assets.bucket) {
            return bad(
                &[N("assets"), N("bucket")],
                format!(
                    "{:?} is not an S3 bucket name (3-63 lowercase letters, digits, '-' or '.')",
                    self.assets.bucket
                ),
            );
        }
        if !self.assets.prefix.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c)) {
            return bad(
                &[N("assets"), N("prefix")],
                format!(
                    "{:?} may hold only letters, digits, '-', '_', '.' or '/'",
                    self.assets.prefix
                ),
            );
        }
        if let Some(owner) = &self.assets.bucket_owner {
            crate::names::check_account(owner)
                .or_else(|e| bad(&[N("assets"), N("bucket-owner")], e))?;
        }
        if let Some(key) = &self.assets.kms_key_id {
            if key.is_empty()
                || !key.chars().all(|c| c.is_ascii_alphanumeric() || ":/-_".contains(c))
            {
                return bad(
                    &[N("assets"), N("kms-key-id")],
                    format!("{key:?} is not a KMS key ARN, key id or alias"),
                );
            }
        }
        if self.etcd.expected_members == 0 {
            return bad(&[N("etcd"), N("expected-members")], "must be at least 1".into());
        }
        if self.etcd.discovery_timeout_seconds.is_some_and(|s| s > MAX_DISCOVERY_TIMEOUT_SECONDS) {
            return bad(
                &[N("etcd"), N("discovery-timeout-seconds")],
                format!(
                    "must be at most {MAX_DISCOVERY_TIMEOUT_SECONDS} \
                     (keel-bootstrap.service gives the whole boot 15 minutes)"
                ),
            );
        }
        self.check_etcd_timing()?;
        if self.etcd.quota_backend_bytes == Some(0) {
            return bad(&[N("etcd"), N("quota-backend-bytes")], "must be more than 0".into());
        }
        let mut cidrs = Vec::new();
        for (table, key, cidr) in [
            ("kubernetes", "service-cidr", self.service_cidr()),
            ("kubernetes", "pod-cidr", self.pod_cidr()),
        ] {
            let c = crate::net::Ipv4Cidr::parse(cidr).or_else(|e| bad(&[N(table), N(key)], e))?;
            cidrs.push(c);
        }
        let (service, pods) = (cidrs[0], cidrs[1]);
        if pods.prefix > MAX_POD_CIDR_PREFIX {
            return bad(
                &[N("kubernetes"), N("pod-cidr")],
                format!(
                    "{pods} is too small: the controller manager gives each node a /{NODE_CIDR_MASK} \
                     of it, so it must be a /{MAX_POD_CIDR_PREFIX} or larger"
                ),
            );
        }
        if pods.overlaps(&service) {
            return bad(
                &[N("kubernetes"), N("pod-cidr")],
                format!("{pods} overlaps the service CIDR {service}"),
            );
        }
        let dns = self.cluster_dns();
        match dns.parse::<std::net::Ipv4Addr>() {
            Ok(a) if service.contains(a) => {}
            Ok(_) => {
                return bad(
                    &[N("kubelet"), N("cluster-dns")],
                    format!("{dns} is outside the service CIDR {service}"),
                )
            }
            Err(_) => {
                return bad(
                    &[N("kubelet"), N("cluster-dns")],
                    format!("{dns:?} is not an IPv4 address"),
                )
            }
        }
        kube_names::dns_subdomain(self.cluster_domain())
            .or_else(|e| bad(&[N("kubelet"), N("cluster-domain")], e))?;
        if self.max_pods() == 0 {
            return bad(&[N("kubelet"), N("max-pods")], "must be at least 1".into());
        }
        for (i, label) in self.node_labels().iter().enumerate() {
            kube_names::node_label(label)
                .or_else(|e| bad(&[N("kubelet"), N("node-labels"), I(i)], e))?;
        }
        Ok(())
    }

    /// etcd's own start-up rules: heartbeat at least 1 ms, election timeout
    /// at least five heartbeats and at most 50 s.
    fn check_etcd_timing(&self) -> Result<(), FieldError> {
        use Key::Name as N;
        let heartbeat = self.etcd.heartbeat_interval_ms.unwrap_or(DEFAULT_HEARTBEAT_MS);
        let election = self.etcd.election_timeout_ms.unwrap_or(DEFAULT_ELECTION_MS);
        let field = |key: &'static str, message: String| FieldError {
            path: vec![N("etcd"), N(key)],
            message,
        };
        if heartbeat == 0 {
            return Err(field("heartbeat-interval-ms", "must be at least 1".into()));
        }
        // Point at whichever of the two the document sets.
        let key = if self.etcd.election_timeout_ms.is_some() {
            "election-timeout-ms"
        } else {
            "heartbeat-interval-ms"
        };
        if u64::from(election) < 5 * u64::from(heartbeat) {
            return Err(field(
                key,
                format!(
                    "election timeout {election} ms must be at least 5 heartbeat intervals \
                     ({heartbeat} ms each): etcd refuses to start otherwise"
                ),
            ));
        }
        if election > MAX_ELECTION_MS {
            return Err(field(
                "election-timeout-ms",
                format!("{election} ms is more than etcd's maximum of {MAX_ELECTION_MS} ms"),
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

    /// Issue 16: a node label reached the kubelet through a variable
    /// systemd splits at spaces, so a label could add a kubelet flag.
    #[test]
    fn bug_worker_label_that_adds_a_flag_is_refused_at_parsing() {
        let text = format!(
            "{}\n[kubelet]\nnode-labels = [\"tier=general\", \"x=y --anonymous-auth=true\"]\n",
            GOOD.replace("role = \"etcd\"", "role = \"worker\"")
        );
        let err = UserData::parse(text.as_bytes(), Role::Worker).unwrap_err();
        let UserDataError::At { line, column, ref message } = err else {
            panic!("unexpected {err:?}")
        };
        assert_eq!((line, column), (14, 32), "{err}");
        assert!(message.starts_with("kubelet.node-labels[1]: label value"), "{message}");
    }

    #[test]
    fn values_kubernetes_and_etcd_refuse_are_refused_with_line_and_column() {
        let worker = GOOD.replace("role = \"etcd\"", "role = \"worker\"");
        for (extra, at, want) in [
            (
                "[kubelet]\nnode-labels = [\"node-role.kubernetes.io/control-plane=\"]\n",
                (14, 16),
                "kubelet.node-labels[0]: label key \"node-role.kubernetes.io/control-plane\" is in a namespace Kubernetes reserves",
            ),
            (
                "[kubelet]\nnode-labels = [\"k8s.io/x=y\"]\n",
                (14, 16),
                "reserves",
            ),
            (
                "[kubelet]\ncluster-domain = \"cluster.local --x\"\n",
                (14, 18),
                "kubelet.cluster-domain: \"cluster.local --x\" is not a lowercase RFC 1123 DNS name",
            ),
            (
                "[kubelet]\ncluster-dns = \"10.0.0.10\"\n",
                (14, 15),
                "kubelet.cluster-dns: 10.0.0.10 is outside the service CIDR 10.96.0.0/12",
            ),
            (
                "[kubernetes]\npod-cidr = \"10.96.0.0/16\"\n",
                (14, 12),
                "kubernetes.pod-cidr: 10.96.0.0/16 overlaps the service CIDR",
            ),
            (
                "[kubernetes]\npod-cidr = \"10.244.0.0/24\"\n",
                (14, 12),
                "kubernetes.pod-cidr: 10.244.0.0/24 is too small",
            ),
        ] {
            let text = format!("{worker}\n{extra}");
            let err = UserData::parse(text.as_bytes(), Role::Worker).unwrap_err();
            let UserDataError::At { line, column, ref message } = err else {
                panic!("{extra}: unexpected {err:?}")
            };
            assert!(message.contains(want), "{extra}: {message}");
            assert_eq!((line, column), at, "{extra}: {message}");
        }
        // etcd: the election timeout at least five heartbeats (both set,
        // or one set against the other's default).
        for (extra, at, want) in [
            (
                "heartbeat-interval-ms = 100\nelection-timeout-ms = 400\n",
                (13, 23),
                "etcd.election-timeout-ms: election timeout 400 ms must be at least 5 heartbeat intervals (100 ms each)",
            ),
            ("heartbeat-interval-ms = 300\n", (12, 25), "etcd.heartbeat-interval-ms: election timeout 1000 ms"),
            ("heartbeat-interval-ms = 0\n", (12, 25), "etcd.heartbeat-interval-ms: must be at least 1"),
            ("election-timeout-ms = 60000\n", (12, 23), "more than etcd's maximum"),
        ] {
            let text = GOOD.replace("expected-members = 3\n", &format!("expected-members = 3\n{extra}"));
            let err = UserData::parse(text.as_bytes(), Role::Etcd).unwrap_err();
            let UserDataError::At { line, column, ref message } = err else {
                panic!("{extra}: unexpected {err:?}")
            };
            assert!(message.contains(want), "{extra}: {message}");
            assert_eq!((line, column), at, "{extra}: {message}");
        }
        let ok = GOOD.replace(
            "expected-members = 3\n",
            "expected-members = 3\nheartbeat-interval-ms = 100\nelection-timeout-ms = 500\n",
        );
        UserData::parse(ok.as_bytes(), Role::Etcd).unwrap();
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
