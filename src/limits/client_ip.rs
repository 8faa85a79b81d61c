//! The client address rate limits count: the TCP peer, or, behind a configured trusted proxy,
//! the right-most untrusted address of `X-Forwarded-For`. A client's own `X-Forwarded-For` is
//! ignored. IPv6 clients count by /64.

use std::net::{IpAddr, Ipv6Addr};

use http::HeaderMap;
use ipnet::IpNet;

use crate::config::CidrNet;

/// `limits.trusted_proxies`, and what they say about the client.
pub(crate) struct ClientIp {
    trusted: Vec<IpNet>,
}

impl ClientIp {
    pub(crate) fn new(trusted: &[CidrNet]) -> Self {
        Self {
            trusted: trusted.iter().map(|c| c.0).collect(),
        }
    }

    /// The peer, or, when the peer is a trusted proxy, the right-most address in
    /// `X-Forwarded-For` that is not itself trusted.
    pub(crate) fn of(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.is_trusted(peer) {
            return peer;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut nearest = peer;
        for hop in hops.iter().rev() {
            // An address we cannot parse ends the chain: trust nothing beyond it.
            let Some(ip) = parse_forwarded_ip(hop) else {
                return nearest;
            };
            if !self.is_trusted(ip) {
                return ip;
            }
            nearest = ip;
        }
        nearest
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }
}

/// IPv4 addresses count one by one; IPv6 by /64, the block one subscriber usually holds (one
/// machine can cycle through 2^64 addresses of its own /64).
pub(crate) fn limit_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// `203.0.113.7`, `2001:db8::1`, `[2001:db8::1]:443` or `203.0.113.7:5000`.
fn parse_forwarded_ip(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    hop.parse::<std::net::SocketAddr>()
        .ok()
        .map(|s| s.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_honoured_only_from_trusted_peers() {
        let limits = ClientIp::new(&[
            CidrNet("10.0.0.0/8".parse().unwrap()),
            CidrNet("::1/128".parse().unwrap()),
        ]);
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            "198.51.100.9, 203.0.113.5".parse().unwrap(),
        );
        h.append("x-forwarded-for", "10.1.1.1".parse().unwrap());
        let untrusted: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(limits.of(untrusted, &h), untrusted, "spoofed XFF ignored");
        let lb: IpAddr = "10.9.9.9".parse().unwrap();
        assert_eq!(limits.of(lb, &h), "203.0.113.5".parse::<IpAddr>().unwrap());
        assert_eq!(
            limits.of("::1".parse().unwrap(), &h),
            "203.0.113.5".parse::<IpAddr>().unwrap()
        );
        let mut garbage = HeaderMap::new();
        garbage.append(
            "x-forwarded-for",
            "203.0.113.5, not-an-ip, 10.2.2.2".parse().unwrap(),
        );
        assert_eq!(
            limits.of(lb, &garbage),
            "10.2.2.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(limits.of(lb, &HeaderMap::new()), lb);
    }

    #[test]
    fn ipv6_counts_per_64() {
        let a = limit_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = limit_key("2001:db8:1:2:bbbb::2".parse().unwrap());
        let c = limit_key("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            limit_key("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }
}
