//! IPv4 CIDR arithmetic for the few addresses a node derives: the API
//! server's service IP (first host of the service CIDR) and the node's pod
//! subnet.

use std::net::Ipv4Addr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub fn parse(s: &str) -> Result<Ipv4Cidr, String> {
        let (addr, prefix) =
            s.split_once('/').ok_or_else(|| format!("{s:?} is not an IPv4 CIDR (a.b.c.d/n)"))?;
        let addr: Ipv4Addr =
            addr.parse().map_err(|_| format!("{s:?}: {addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 30)
            .ok_or_else(|| format!("{s:?}: prefix must be a number from 0 to 30"))?;
        let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
        if u32::from(addr) & !mask != 0 {
            return Err(format!("{s:?} has host bits set"));
        }
        Ok(Ipv4Cidr { network: addr, prefix })
    }

    /// The `n`th address of the range (0 is the network address).
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network).wrapping_add(n))
    }

    /// The node's /24 inside a /16 (or larger) pod range, chosen by the last
    /// octet of its private address. `None` when the range is too small.
    pub fn node_subnet(&self, node_ip: Ipv4Addr) -> Option<Ipv4Cidr> {
        if self.prefix > 16 {
            return None;
        }
        let octets = self.network.octets();
        let last = node_ip.octets()[3];
        Some(Ipv4Cidr { network: Ipv4Addr::new(octets[0], octets[1], last, 0), prefix: 24 })
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_derives() {
        let svc = Ipv4Cidr::parse("10.96.0.0/12").unwrap();
        assert_eq!(svc.nth(1), Ipv4Addr::new(10, 96, 0, 1));
        let pods = Ipv4Cidr::parse("10.244.0.0/16").unwrap();
        assert_eq!(
            pods.node_subnet(Ipv4Addr::new(10, 0, 3, 17)).unwrap().to_string(),
            "10.244.17.0/24"
        );
        assert!(Ipv4Cidr::parse("10.96.0.1/12").unwrap_err().contains("host bits"));
        assert!(Ipv4Cidr::parse("10.96.0.0").is_err());
        assert!(Ipv4Cidr::parse("10.96.0.0/33").is_err());
    }
}
