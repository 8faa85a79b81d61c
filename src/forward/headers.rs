//! The headers of a forwarded request and of its response: the hop-by-hop fields of RFC 9110
//! §7.6.1 removed both ways (with every field `Connection` names), the client's own
//! forwarding headers removed (`forwarding.remove_request_headers`), `X-Forwarded-*` set.
//! This runs on every forwarded request, so each function makes one pass over the fields.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::{Uri, Version};

use crate::config::{FieldName, ForwardingConfig};
use crate::connection::ClientConn;
use crate::fast_format::push_ip;

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded in either direction.
/// `Upgrade` is put back for upgrade requests and 101 responses.
static HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The comma-separated tokens of every `Connection` header.
pub(super) fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes the hop-by-hop headers and every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the fields finds the few present (often none; Node's responses carry
    // `Connection: keep-alive` and `Keep-Alive`): cheaper than six hashed removals, and the
    // usual `Connection` value is recognised without splitting it (bench/callgrind.sh).
    let mut present = [false; HOP_BY_HOP.len()];
    let mut names_others = false;
    for (name, value) in headers.iter() {
        if let Some(i) = hop_by_hop_index(name) {
            present[i] = true;
            names_others |= i == 0 && !names_only_listed(value);
        }
    }
    if !present.contains(&true) {
        return;
    }
    if names_others {
        // Any name but the listed ones costs a parse and a removal (`close` too: RFC 9110
        // §7.6.1 removes a field of that name).
        let named: Vec<HeaderName> = connection_tokens(headers)
            .filter(|t| !is_listed_hop_by_hop(t))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, here)| *here) {
        headers.remove(name);
    }
}

/// `true` when a `Connection` value names only headers [`HOP_BY_HOP`] removes anyway: the
/// usual single `keep-alive` or `upgrade` is matched whole, anything else token by token.
fn names_only_listed(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    bytes.eq_ignore_ascii_case(b"keep-alive")
        || bytes.eq_ignore_ascii_case(b"upgrade")
        || value.to_str().is_ok_and(|v| {
            v.split(',')
                .map(str::trim)
                .all(|t| t.is_empty() || is_listed_hop_by_hop(t))
        })
}

/// The position of `name` in [`HOP_BY_HOP`]: a `match` on the name, which compiles to a
/// switch on its length and one comparison (a search through the list costs measurably more
/// per forwarded request: BENCHMARKS.md, "The layout of issue 16").
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    match name.as_str() {
        "connection" => Some(0),
        "keep-alive" => Some(1),
        "proxy-connection" => Some(2),
        "te" => Some(3),
        "transfer-encoding" => Some(4),
        "upgrade" => Some(5),
        _ => None,
    }
}

/// `true` when a `Connection` option names a header [`HOP_BY_HOP`] removes anyway.
fn is_listed_hop_by_hop(token: &str) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|hop| token.eq_ignore_ascii_case(hop.as_str()))
}

/// Turns the client's headers into the upstream's: hop-by-hop and `remove_request_headers`
/// removed, `Host` kept (from `:authority` for HTTP/2 clients), `X-Forwarded-*` set, upgrade
/// headers put back.
pub fn prepare_request_headers(
    headers: &mut HeaderMap,
    client_uri: &Uri,
    client_version: Version,
    upgrade: Option<&HeaderValue>,
    conn: ClientConn,
    options: &ForwardingConfig,
) -> Result<(), String> {
    strip_hop_by_hop(headers);
    remove_listed(headers, &options.remove_request_headers);
    // HTTP/2 clients send `:authority` instead of `Host`; the upstream sees it as `Host`, the
    // same as from an HTTP/1.1 client.
    if client_version == Version::HTTP_2
        && !headers.contains_key(header::HOST)
        && let Some(authority) = client_uri.authority()
    {
        let value = HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?;
        headers.insert(header::HOST, value);
    }
    if options.x_forwarded_for {
        append_forwarded_for(headers, conn.peer.ip());
    }
    if options.x_forwarded_proto {
        let proto = if conn.tls { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    if options.x_forwarded_host
        && let Some(host) = headers.get(header::HOST).cloned()
    {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol.clone());
    }
    Ok(())
}

/// Removes every header named in `names`. One pass over the request's names first: they are
/// almost never there, and a hashed removal per listed name costs more than the pass
/// (BENCHMARKS.md, "Hostile clients").
fn remove_listed(headers: &mut HeaderMap, names: &[FieldName]) {
    let listed = |name: &HeaderName| names.iter().any(|n| n.0 == name);
    if !headers.keys().any(listed) {
        return;
    }
    for name in names {
        headers.remove(&name.0);
    }
}

/// Appends the client address to `X-Forwarded-For`, folding repeated header lines into one.
fn append_forwarded_for(headers: &mut HeaderMap, ip: IpAddr) {
    let mut value = Vec::with_capacity(48);
    // One hashed lookup for reading the client's lines and replacing them.
    let entry = headers.entry(&X_FORWARDED_FOR);
    if let Entry::Occupied(sent) = &entry {
        for existing in sent.iter() {
            if let Ok(s) = existing.to_str() {
                value.extend_from_slice(s.trim().as_bytes());
                value.extend_from_slice(b", ");
            }
        }
    }
    push_ip(&mut value, ip.to_canonical());
    // Built from valid header values and an IP address: always a valid header value.
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
        match entry {
            Entry::Occupied(mut sent) => {
                sent.insert(v);
            }
            Entry::Vacant(missing) => {
                missing.insert(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> ClientConn {
        ClientConn {
            peer: "192.0.2.7:5555".parse().unwrap(),
            tls: true,
        }
    }

    #[test]
    fn connection_named_and_static_hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.append("connection", "keep-alive, X-Secret-Hop".parse().unwrap());
        h.append("connection", "close".parse().unwrap());
        h.append("x-secret-hop", "1".parse().unwrap());
        h.append("keep-alive", "timeout=5".parse().unwrap());
        h.append("te", "trailers".parse().unwrap());
        h.append("transfer-encoding", "chunked".parse().unwrap());
        h.append("proxy-connection", "keep-alive".parse().unwrap());
        h.append("x-end-to-end", "a".parse().unwrap());
        h.append("x-end-to-end", "b".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        let kept: Vec<_> = h.get_all("x-end-to-end").iter().collect();
        assert_eq!(kept, ["a", "b"]);
    }

    #[test]
    fn hop_by_hop_index_finds_exactly_the_listed_names() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        // Same lengths as listed names, but end-to-end.
        for other in [
            "x-secret-a",
            "x-transfer-encode",
            "content-location",
            "ab",
            "x-upgrd",
        ] {
            let name = HeaderName::from_static(other);
            assert_eq!(hop_by_hop_index(&name), None, "{other}");
        }
        for other in ["cookie", "content-length", "x-connection", "host"] {
            assert_eq!(hop_by_hop_index(&HeaderName::from_static(other)), None);
        }
    }

    #[test]
    fn every_connection_option_is_removed_as_a_field_name() {
        let mut h = HeaderMap::new();
        h.append("connection", "close, Keep-Alive, x-gone".parse().unwrap());
        h.append("keep-alive", "timeout=5".parse().unwrap());
        h.append("x-gone", "1".parse().unwrap());
        h.append("close", "a field really named close".parse().unwrap());
        h.append("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn a_plain_keep_alive_line_does_not_hide_a_second_connection_line() {
        // The whole-value match for `keep-alive` must not skip the other lines' options.
        let mut h = HeaderMap::new();
        h.append("connection", "Keep-Alive".parse().unwrap());
        h.append("connection", "upgrade, , TE".parse().unwrap());
        h.append("connection", "x-second".parse().unwrap());
        h.append("x-second", "1".parse().unwrap());
        h.append("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);

        let mut h = HeaderMap::new();
        h.append("connection", "keep-alive".parse().unwrap());
        h.append("keep-alive", "timeout=5".parse().unwrap());
        h.append("content-length", "2".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-length"]);
    }

    #[test]
    fn forwarded_for_folds_the_clients_lines_and_appends_the_peer() {
        let peer: IpAddr = "192.0.2.7".parse().unwrap();
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, peer);
        assert_eq!(
            h.get_all(&X_FORWARDED_FOR).iter().collect::<Vec<_>>(),
            ["192.0.2.7"]
        );

        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_FOR, " 203.0.113.9 ".parse().unwrap());
        h.append(&X_FORWARDED_FOR, "198.51.100.1, 10.0.0.1".parse().unwrap());
        append_forwarded_for(&mut h, "::ffff:192.0.2.7".parse().unwrap());
        assert_eq!(
            h.get_all(&X_FORWARDED_FOR).iter().collect::<Vec<_>>(),
            ["203.0.113.9, 198.51.100.1, 10.0.0.1, 192.0.2.7"]
        );
    }

    #[test]
    fn forwarded_headers_append_and_set() {
        let mut h = HeaderMap::new();
        h.append("host", "app.example".parse().unwrap());
        h.append("x-forwarded-for", "203.0.113.1".parse().unwrap());
        h.append("x-forwarded-for", "198.51.100.2".parse().unwrap());
        h.append("x-forwarded-proto", "http".parse().unwrap());
        let uri: Uri = "/p".parse().unwrap();
        prepare_request_headers(
            &mut h,
            &uri,
            Version::HTTP_11,
            None,
            conn(),
            &ForwardingConfig::default(),
        )
        .unwrap();
        assert_eq!(h["x-forwarded-for"], "203.0.113.1, 198.51.100.2, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "app.example");
    }

    #[test]
    fn forwarded_headers_can_be_switched_off() {
        let mut h = HeaderMap::new();
        let options = ForwardingConfig {
            x_forwarded_for: false,
            x_forwarded_proto: false,
            x_forwarded_host: false,
            remove_request_headers: Vec::new(),
        };
        let uri: Uri = "/p".parse().unwrap();
        prepare_request_headers(&mut h, &uri, Version::HTTP_11, None, conn(), &options).unwrap();
        assert!(h.is_empty());
    }

    #[test]
    fn h2_authority_becomes_host_and_mapped_ipv4_is_canonical() {
        let mut h = HeaderMap::new();
        let uri: Uri = "https://app.example:3001/p".parse().unwrap();
        let c = ClientConn {
            peer: "[::ffff:10.0.0.9]:1".parse().unwrap(),
            tls: true,
        };
        prepare_request_headers(
            &mut h,
            &uri,
            Version::HTTP_2,
            None,
            c,
            &ForwardingConfig::default(),
        )
        .unwrap();
        assert_eq!(h["host"], "app.example:3001");
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
    }
}
