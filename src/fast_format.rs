//! Numbers and addresses written as text without `std::fmt`, on the forwarding path (an
//! `X-Forwarded-For` and a request id per request). Through the formatting machinery the two
//! cost a forwarded request several percent more (BENCHMARKS.md, "The layout of issue 16"), so
//! they stay, here, each checked against `Display` below.

use std::net::IpAddr;

/// Writes `ip` as `Display` would (IPv6 through `Display`: rare behind the proxy).
pub(crate) fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => out.extend_from_slice(v6.to_string().as_bytes()),
    }
}

/// Writes `n` in lower-case hex without leading zeros, as `{n:x}` would.
pub(crate) fn push_hex(out: &mut Vec<u8>, n: u64) {
    let digits = (u64::BITS - n.leading_zeros()).div_ceil(4).max(1);
    for shift in (0..digits).rev() {
        out.push(b"0123456789abcdef"[(n >> (shift * 4)) as usize & 0xf]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_text_matches_display() {
        let octets = [0u8, 1, 9, 10, 42, 99, 100, 101, 199, 200, 255];
        for a in octets {
            for b in octets {
                let ip = IpAddr::from([a, b, 255 - a, 9]);
                let mut out = Vec::new();
                push_ip(&mut out, ip);
                assert_eq!(String::from_utf8(out).unwrap(), ip.to_string());
            }
        }
        let v6: IpAddr = "2001:db8::ff00:42:8329".parse().unwrap();
        let mut out = Vec::new();
        push_ip(&mut out, v6);
        assert_eq!(out, v6.to_string().as_bytes());
    }

    #[test]
    fn hex_matches_display() {
        for n in [
            0u64,
            1,
            9,
            10,
            15,
            16,
            255,
            256,
            0xabc,
            0xdead_beef,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            push_hex(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), format!("{n:x}"));
        }
    }
}
