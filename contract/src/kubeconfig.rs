//! The one kubeconfig renderer: the builder's admin kubeconfig (certificate
//! and key embedded) and the nodes' kubeconfigs (files named by path, or a
//! bootstrap token). JSON, which is valid YAML and which every client reads.

use base64::Engine as _;
use serde_json::{json, Value};

/// Where the cluster's CA certificate comes from.
#[derive(Debug, Clone)]
pub enum CaSource<'a> {
    /// A file, named as the reader of the kubeconfig sees it.
    File(String),
    /// The PEM itself, embedded (base64) in the kubeconfig.
    Pem(&'a str),
}

/// How a kubeconfig's user authenticates.
#[derive(Clone)]
pub enum Credential<'a> {
    /// A bootstrap token (`<id>.<secret>`): the file is a secret (0600).
    Token(&'a str),
    /// Certificate and key files (paths as the node sees them).
    Certificate { cert: String, key: String },
    /// Certificate and key PEM, embedded (base64): the file is a secret.
    EmbeddedCertificate { cert_pem: &'a str, key_pem: &'a str },
}

/// One cluster, one user, one context.
pub struct Kubeconfig<'a> {
    /// The cluster's name in the file (the Keel cluster name).
    pub cluster: &'a str,
    /// The API server URL (`https://host:port`).
    pub server: &'a str,
    pub ca: CaSource<'a>,
    pub user: &'a str,
    pub credential: Credential<'a>,
    /// The context's name, which is also the current context.
    pub context: &'a str,
}

impl Kubeconfig<'_> {
    /// Pretty JSON with a final newline. May hold secrets: write it with
    /// mode 0600.
    pub fn render(&self) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        let mut cluster = json!({ "server": self.server });
        match &self.ca {
            CaSource::File(path) => cluster["certificate-authority"] = json!(path),
            CaSource::Pem(pem) => cluster["certificate-authority-data"] = json!(b64(pem)),
        }
        let user = match &self.credential {
            Credential::Token(t) => json!({ "token": t }),
            Credential::Certificate { cert, key } => {
                json!({ "client-certificate": cert, "client-key": key })
            }
            Credential::EmbeddedCertificate { cert_pem, key_pem } => {
                json!({ "client-certificate-data": b64(cert_pem), "client-key-data": b64(key_pem) })
            }
        };
        let doc = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": self.cluster, "cluster": cluster }],
            "users": [{ "name": self.user, "user": user }],
            "contexts": [{ "name": self.context, "context": { "cluster": self.cluster, "user": self.user } }],
            "current-context": self.context,
        });
        pretty(&doc)
    }
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_embedded_data_render_as_clients_read_them() {
        let node = Kubeconfig {
            cluster: "prod",
            server: "https://127.0.0.1:6443",
            ca: CaSource::File("/etc/kubernetes/pki/ca.crt".into()),
            user: "kubelet",
            credential: Credential::Token("abcdef.0123456789abcdef"),
            context: "default",
        };
        let v: Value = serde_json::from_str(&node.render()).unwrap();
        assert_eq!(
            v["clusters"][0]["cluster"]["certificate-authority"],
            "/etc/kubernetes/pki/ca.crt"
        );
        assert_eq!(v["users"][0]["user"]["token"], "abcdef.0123456789abcdef");
        assert_eq!(v["current-context"], "default");

        let admin = Kubeconfig {
            cluster: "prod",
            server: "https://api.example:6443",
            ca: CaSource::Pem("CA PEM"),
            user: "kubernetes-admin",
            credential: Credential::EmbeddedCertificate { cert_pem: "CRT", key_pem: "KEY" },
            context: "kubernetes-admin@prod",
        };
        let v: Value = serde_json::from_str(&admin.render()).unwrap();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(v["clusters"][0]["cluster"]["certificate-authority-data"], b64("CA PEM"));
        assert_eq!(v["users"][0]["user"]["client-key-data"], b64("KEY"));
        assert_eq!(v["contexts"][0]["context"]["user"], "kubernetes-admin");
    }
}
