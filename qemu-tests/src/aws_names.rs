//! AWS by its real names in the VM network (TEST ONLY): the nodes carry no
//! endpoint override, so keel-bootstrap asks for the regional endpoints
//! (`ec2.<region>.amazonaws.com`, `s3.<region>.amazonaws.com` and the
//! virtual-hosted `<bucket>.s3.<region>.amazonaws.com`,
//! `kms.<region>.amazonaws.com`, `sts.<region>.amazonaws.com`) over HTTPS
//! on port 443, exactly as on EC2. The network's resolver (dnsmasq, the
//! "VPC resolver" DHCP hands out) answers each of those names, and every
//! name under them, with the gateway's address, where a TLS-terminating
//! proxy ([`keel_testkit::tls_proxy`]) presents a certificate for them
//! signed by the machine's test CA ([`keel_testkit::test_ca`]) and passes
//! the bytes to this run's moto. Only test images trust that CA (their
//! profile's `[test]` table names it; see [`crate::images`]).
//!
//! ```text
//!   guest: keel-bootstrap -> /etc/resolv.conf (resolved's stub) -> dnsmasq
//!          -> 10.77.N.1 -> https :443 (test CA) -> TlsProxy -> moto (http)
//! ```

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{Context, Result};
use keel_testkit::test_ca::TestCa;
use keel_testkit::tls_proxy::{Connection, TlsProxy};

use crate::aws::REGION;
use crate::net::Network;

/// The AWS services keel-bootstrap calls (STS is not called today; its
/// name is served so that a credential provider that needs it finds it).
pub const SERVICES: [&str; 4] = ["ec2", "s3", "kms", "sts"];

/// The regional endpoint name of `service` in the test region.
pub fn endpoint_name(service: &str) -> String {
    format!("{service}.{REGION}.amazonaws.com")
}

/// The names the resolver answers: each endpoint and every name under it
/// (dnsmasq's `address=/<name>/` covers subdomains, so virtual-hosted
/// bucket names resolve too).
pub fn names() -> Vec<String> {
    SERVICES.iter().map(|s| endpoint_name(s)).collect()
}

/// The names the proxy's certificate is for: each endpoint, and
/// `*.s3.<region>.amazonaws.com` for virtual-hosted buckets (bucket names
/// without dots, as the test buckets are).
fn certificate_names() -> Vec<String> {
    let mut n = names();
    n.push(format!("*.{}", endpoint_name("s3")));
    n
}

/// The proxy serving the endpoint names in one network.
pub struct AwsNames {
    proxy: TlsProxy,
    /// Where the names point (the gateway, inside the network).
    pub addr: Ipv4Addr,
}

impl AwsNames {
    /// Starts the proxy on `<gateway>:443` inside `net`'s namespace in
    /// front of `moto`, and has `net`'s resolver answer the endpoint names
    /// with the gateway (takes effect when dnsmasq next starts:
    /// [`Network::serve_dhcp`]).
    pub fn serve(net: &mut Network, moto: SocketAddr) -> Result<AwsNames> {
        let ca = TestCa::machine().context("the machine's test CA")?;
        let cert = ca.issue(&certificate_names()).context("the TLS proxy's certificate")?;
        let addr = net.gateway();
        let listener = net.bind_tcp(SocketAddr::new(addr.into(), 443))?;
        let proxy = TlsProxy::start_on(listener, moto, &cert)
            .with_context(|| format!("starting the TLS proxy on {addr}:443"))?;
        net.answer_names(names().into_iter().map(|n| (n, addr)).collect());
        Ok(AwsNames { proxy, addr })
    }

    /// Every TLS connection the nodes made so far (server name, handshake).
    pub fn connections(&self) -> Vec<Connection> {
        self.proxy.connections()
    }
}
