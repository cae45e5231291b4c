//! The client's IP address behind reverse proxies.
//!
//! Owns the trusted-proxy list and the walk over `Forwarded` (RFC 7239) or `X-Forwarded-For`. Headers are
//! believed only as far as they were written by proxies we trust: the walk starts at the TCP peer and goes
//! right to left, and the first address that is not a trusted proxy is the client. A peer that is not trusted
//! has its headers ignored entirely, so a client cannot spoof its address. It never reads a header itself:
//! the shell passes the values in.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// The networks whose `Forwarded`/`X-Forwarded-For` headers are believed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

/// A trusted-proxy entry that is neither an IP address nor a CIDR network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedProxyError {
    pub entry: String,
}

impl fmt::Display for TrustedProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "trusted proxy {:?} is not an IP address or CIDR network (like 10.0.0.0/8)", self.entry)
    }
}

impl std::error::Error for TrustedProxyError {}

impl TrustedProxies {
    /// Trusts no one: the TCP peer is the client.
    pub fn none() -> Self {
        Self(Vec::new())
    }

    /// Parses a comma-separated list of addresses and CIDR networks.
    pub fn parse(list: &str) -> Result<Self, TrustedProxyError> {
        let mut nets = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let net = entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| TrustedProxyError { entry: entry.to_owned() })?;
            nets.push(net);
        }
        Ok(Self(nets))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// The client's address. `forwarded` and `x_forwarded_for` are every value of those headers, in order;
/// `Forwarded` wins when both are present, since it is the standard one.
pub fn resolve(peer: IpAddr, forwarded: &[&str], x_forwarded_for: &[&str], trusted: &TrustedProxies) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted.contains(peer) {
        return peer;
    }
    let hops: Vec<Option<IpAddr>> = if forwarded.iter().any(|v| !v.trim().is_empty()) {
        forwarded.iter().flat_map(|v| v.split(',')).map(forwarded_for).collect()
    } else {
        x_forwarded_for.iter().flat_map(|v| v.split(',')).map(node).collect()
    };
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        // An entry we cannot read was written by the hop before it, a trusted proxy: that proxy is the last
        // address we can vouch for.
        let Some(ip) = hop else { return client };
        client = ip.to_canonical();
        if !trusted.contains(client) {
            return client;
        }
    }
    client
}

/// The `for=` node of one `Forwarded` element.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim().eq_ignore_ascii_case("for").then(|| node(value.trim().trim_matches('"')))?
    })
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:80`.
/// `unknown` and obfuscated identifiers are not addresses.
fn node(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(|p| p.parse::<u16>().is_ok())) {
            return None;
        }
        return inner.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    let (host, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    fn trusted() -> TrustedProxies {
        TrustedProxies::parse("10.0.0.0/8, 192.168.1.1, ::1").unwrap_or_default()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        assert_eq!(resolve(ip("203.0.113.9"), &[], &["1.1.1.1"], &trusted()), ip("203.0.113.9"));
        assert_eq!(resolve(ip("203.0.113.9"), &["for=1.1.1.1"], &[], &trusted()), ip("203.0.113.9"));
    }

    #[test]
    fn the_walk_goes_right_to_left_and_stops_at_the_first_untrusted_hop() {
        // The client wrote "6.6.6.6" itself; the first proxy appended the real address.
        let xff = ["6.6.6.6, 198.51.100.7, 10.1.1.1"];
        assert_eq!(resolve(ip("10.0.0.2"), &[], &xff, &trusted()), ip("198.51.100.7"));
        let split = ["6.6.6.6", "198.51.100.7, 10.1.1.1"];
        assert_eq!(resolve(ip("10.0.0.2"), &[], &split, &trusted()), ip("198.51.100.7"));
    }

    #[test]
    fn forwarded_is_preferred_and_understands_ports_quotes_and_ipv6() {
        let fwd = [r#"for=6.6.6.6, for="[2001:db8::7]:4711";proto=https, For=10.2.2.2:80"#];
        assert_eq!(resolve(ip("::1"), &fwd, &["5.5.5.5"], &trusted()), ip("2001:db8::7"));
    }

    #[test]
    fn an_unreadable_hop_stops_the_walk_at_the_proxy_that_wrote_it() {
        assert_eq!(resolve(ip("10.0.0.2"), &["for=unknown"], &[], &trusted()), ip("10.0.0.2"));
        assert_eq!(resolve(ip("10.0.0.2"), &[], &["1.1.1.1, garbage, 10.3.3.3"], &trusted()), ip("10.3.3.3"));
        assert_eq!(resolve(ip("10.0.0.2"), &["proto=https"], &[], &trusted()), ip("10.0.0.2"));
    }

    #[test]
    fn all_trusted_hops_yield_the_leftmost() {
        assert_eq!(resolve(ip("10.0.0.2"), &[], &["10.9.9.9, 10.8.8.8"], &trusted()), ip("10.9.9.9"));
        assert_eq!(resolve(ip("10.0.0.2"), &[], &[], &trusted()), ip("10.0.0.2"));
    }

    #[test]
    fn ipv4_mapped_peers_are_canonical() {
        assert_eq!(resolve(ip("::ffff:10.0.0.2"), &[], &["198.51.100.1"], &trusted()), ip("198.51.100.1"));
    }

    #[test]
    fn a_bad_trusted_entry_is_named() {
        assert_eq!(
            TrustedProxies::parse("10.0.0.0/8, proxy.local"),
            Err(TrustedProxyError { entry: "proxy.local".into() })
        );
        assert_eq!(TrustedProxies::parse(""), Ok(TrustedProxies::none()));
    }

    #[test]
    fn a_bad_entry_is_named_in_the_error() {
        let err = TrustedProxies::parse("10.0.0.0/8, proxy.local").unwrap_err();
        assert_eq!(err, TrustedProxyError { entry: "proxy.local".into() });
        assert_eq!(
            err.to_string(),
            "trusted proxy \"proxy.local\" is not an IP address or CIDR network (like 10.0.0.0/8)"
        );
    }
}
