//! `Limits::client_ip` with a fixed trusted-proxy list, over arbitrary peers and
//! `X-Forwarded-For` header bytes.
//!
//! Input: byte 0 picks the peer (0: IPv4 from the next 4 bytes, 1: IPv6 from the next 16,
//! 2: IPv4-mapped IPv6 from the next 4, 3: one of the trusted proxies, so the header is read);
//! the rest is split on `\n` into `X-Forwarded-For` values.
//!
//! Checked: no panic; the answer is canonical (never `::ffff:a.b.c.d`); it is the peer or an
//! address that appears in the header; an untrusted peer is the answer whatever the header
//! says; and it is exactly the first untrusted address of the chain peer, last hop, ..., first
//! hop (the chain ending at the first hop that is not an address), or the chain's last address
//! when all of it is trusted.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::LazyLock;

use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use stream_token_proxy::config::{CidrNet, LimitsConfig};
use stream_token_proxy::testing::Limits;

const TRUSTED: [&str; 5] = [
    "10.0.0.0/8",
    "192.168.0.0/16",
    "127.0.0.1/32",
    "fd00::/8",
    "2001:db8:1::/48",
];
const PROXIES: [&str; 6] = [
    "10.1.2.3",
    "192.168.7.7",
    "127.0.0.1",
    "::ffff:10.0.0.9",
    "fd12::1",
    "2001:db8:1::5",
];

static NETS: LazyLock<Vec<IpNet>> =
    LazyLock::new(|| TRUSTED.iter().map(|n| n.parse().unwrap()).collect());
static LIMITS: LazyLock<Limits> = LazyLock::new(|| {
    Limits::new(&LimitsConfig {
        trusted_proxies: NETS.iter().map(|n| CidrNet(*n)).collect(),
        ..LimitsConfig::default()
    })
});

fn trusted(ip: IpAddr) -> bool {
    NETS.iter().any(|n| n.contains(&ip))
}

fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let take = |n: usize| -> Option<(&[u8], &[u8])> { (rest.len() >= n).then(|| rest.split_at(n)) };
    let (peer, rest) = match kind & 3 {
        0 => {
            let Some((b, r)) = take(4) else { return };
            (
                IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(b).unwrap())),
                r,
            )
        }
        1 => {
            let Some((b, r)) = take(16) else { return };
            (
                IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap())),
                r,
            )
        }
        2 => {
            let Some((b, r)) = take(4) else { return };
            let v4 = Ipv4Addr::from(<[u8; 4]>::try_from(b).unwrap());
            (IpAddr::V6(v4.to_ipv6_mapped()), r)
        }
        _ => (
            PROXIES[usize::from(kind >> 2) % PROXIES.len()]
                .parse()
                .unwrap(),
            rest,
        ),
    };

    let mut headers = HeaderMap::new();
    for piece in rest.split(|b| *b == b'\n') {
        if let Ok(value) = HeaderValue::from_bytes(piece) {
            headers.append("x-forwarded-for", value);
        }
    }

    let got = LIMITS.client_ip(peer, &headers);
    let peer = peer.to_canonical();
    assert_eq!(got, got.to_canonical(), "not canonical");

    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    assert!(
        got == peer || hops.iter().any(|h| parse_hop(h) == Some(got)),
        "{got} is neither the peer {peer} nor in {hops:?}"
    );
    if !trusted(peer) {
        assert_eq!(got, peer, "an untrusted peer's header was believed");
    }

    // The chain: peer, then the hops right to left, up to the first one that is no address.
    let chain: Vec<IpAddr> = std::iter::once(Some(peer))
        .chain(hops.iter().rev().map(|h| parse_hop(h)))
        .map_while(|ip| ip)
        .collect();
    let expected = chain
        .iter()
        .copied()
        .find(|ip| !trusted(*ip))
        .unwrap_or(*chain.last().unwrap());
    assert_eq!(got, expected, "peer {peer}, hops {hops:?}");
});
