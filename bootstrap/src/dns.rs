//! Host names resolved in-process, from the node's `/etc/resolv.conf`.
//!
//! keel-bootstrap is a static glibc binary; glibc's `getaddrinfo` would
//! still `dlopen` the image's NSS modules, built for another glibc than the
//! one linked in. So no HTTP client here resolves through the C library:
//! the AWS SDK's client ([`crate::aws`]) and the reqwest clients take this
//! resolver (hickory-resolver), which reads the name servers, search list
//! and options from `resolv.conf` and asks them over UDP and TCP. On EC2
//! the name server is the VPC resolver (through systemd-resolved's stub,
//! 127.0.0.53, on Keel's images); under QEMU it is the test network's
//! dnsmasq.
//!
//! `resolv.conf` is read on the first lookup, not when the resolver is made:
//! a client that only ever talks to addresses (IMDS, etcd peers) never
//! needs it, and a node whose network is still coming up gets it once it is
//! there. A failed read is not kept: the next lookup reads it again.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_smithy_runtime_api::client::dns::{DnsFuture, ResolveDns, ResolveDnsError};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use tokio::sync::OnceCell;

/// The resolver configuration on a node.
pub const RESOLV_CONF: &str = "etc/resolv.conf";

/// A name could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Config { path: String, source: hickory_resolver::ResolveError },
    #[error("resolving {name} (name servers from {path}): {source}")]
    Lookup { name: String, path: String, source: hickory_resolver::ResolveError },
}

/// The in-process resolver (cheap to clone: clones share the resolver and
/// its cache).
#[derive(Clone, Debug)]
pub struct Dns {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    resolv_conf: PathBuf,
    resolver: OnceCell<TokioResolver>,
}

impl Dns {
    /// Resolves with the name servers of the running system's
    /// `/etc/resolv.conf`.
    pub fn system() -> Dns {
        Dns::from_root(Path::new("/"))
    }

    /// Resolves with the name servers of `<root>/etc/resolv.conf`.
    pub fn from_root(root: &Path) -> Dns {
        Dns::from_resolv_conf(&root.join(RESOLV_CONF))
    }

    /// Resolves with the name servers `resolv_conf` names.
    pub fn from_resolv_conf(resolv_conf: &Path) -> Dns {
        Dns {
            inner: Arc::new(Inner {
                resolv_conf: resolv_conf.to_path_buf(),
                resolver: OnceCell::new(),
            }),
        }
    }

    fn path(&self) -> String {
        self.inner.resolv_conf.display().to_string()
    }

    async fn resolver(&self) -> Result<&TokioResolver, DnsError> {
        self.inner
            .resolver
            .get_or_try_init(|| async {
                let path = self.path();
                let text = tokio::fs::read(&self.inner.resolv_conf)
                    .await
                    .map_err(|source| DnsError::Read { path: path.clone(), source })?;
                let (config, options) = hickory_resolver::system_conf::parse_resolv_conf(&text)
                    .map_err(|source| DnsError::Config { path: path.clone(), source })?;
                Ok(TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
                    .with_options(options)
                    .build())
            })
            .await
    }

    /// The addresses of `name` (A and AAAA records, after the search list).
    /// The resolver's own timeout and attempts (from `resolv.conf`'s
    /// `options`, 5 s and 2 by default) bound each lookup; the callers'
    /// retry policies decide whether to ask again.
    pub async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, DnsError> {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let resolver = self.resolver().await?;
        let found = resolver.lookup_ip(name).await.map_err(|source| DnsError::Lookup {
            name: name.to_string(),
            path: self.path(),
            source,
        })?;
        Ok(found.iter().collect())
    }
}

impl ResolveDns for Dns {
    fn resolve_dns<'a>(&'a self, name: &'a str) -> DnsFuture<'a> {
        DnsFuture::new(async move { self.lookup(name).await.map_err(ResolveDnsError::new) })
    }
}

impl reqwest::dns::Resolve for Dns {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let dns = self.clone();
        Box::pin(async move {
            let addrs = dns.lookup(name.as_str()).await?;
            let addrs: reqwest::dns::Addrs =
                Box::new(addrs.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_resolv_conf_is_named_and_read_again_later() {
        let dir = tempfile::tempdir().unwrap();
        let dns = Dns::from_root(dir.path());
        let err = dns.lookup("s3.us-east-1.amazonaws.com").await.unwrap_err().to_string();
        assert!(err.contains("etc/resolv.conf"), "{err}");
        // Not cached: once the file is there, it is read.
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join(RESOLV_CONF), "# no servers\n").unwrap();
        let err = dns.lookup("s3.us-east-1.amazonaws.com").await.unwrap_err().to_string();
        assert!(err.contains("no nameservers"), "{err}");
    }

    #[tokio::test]
    async fn addresses_need_no_resolv_conf() {
        let dir = tempfile::tempdir().unwrap();
        let dns = Dns::from_root(dir.path());
        assert_eq!(dns.lookup("10.0.0.1").await.unwrap(), vec![IpAddr::from([10, 0, 0, 1])]);
    }
}
