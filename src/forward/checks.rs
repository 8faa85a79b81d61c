//! What a request must be to be forwarded: one `Host` that agrees with HTTP/2's
//! `:authority`, no userinfo, transfer codings hyper can undo, and (for a tunnel) a WebSocket
//! upgrade. Refusing here keeps the proxy and Node from reading one request two ways.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Version};

use hyper::body::Incoming;

use super::headers::connection_tokens;
use crate::error::ProxyError;

/// Refuses what cannot be forwarded faithfully (before anything reaches the upstream).
pub(super) fn refuse_unforwardable(
    request: &Request<Incoming>,
    upgrade: bool,
) -> Result<(), ProxyError> {
    use http_body::Body as _;
    let codings = transfer_codings(request.headers());
    // hyper undoes only `chunked`; any other transfer coding would reach the upstream still
    // applied but no longer announced (Transfer-Encoding is hop-by-hop). RFC 9112 §6.1: 501.
    if codings.foreign {
        return Err(ProxyError::NotImplemented(
            "a transfer coding other than chunked",
        ));
    }
    // RFC 9112 §6.1: chunked is applied at most once. hyper undoes one layer; the second would
    // reach the upstream as body bytes, and what follows the first last-chunk would be read as
    // the client's next request.
    if codings.chunked > 1 {
        return Err(ProxyError::BadRequest(
            "the chunked transfer coding is applied more than once",
        ));
    }
    check_host(request).map_err(ProxyError::BadTarget)?;
    // The tunnel would start with the body's bytes already read as HTTP: refuse cleanly.
    if upgrade && !request.body().is_end_stream() {
        return Err(ProxyError::BadRequest(
            "an upgrade request must not carry a body",
        ));
    }
    Ok(())
}

/// The `Upgrade` value of an HTTP/1.1 upgrade request (`Connection: upgrade` + `Upgrade`).
///
/// Only `websocket` is tunnelled. Any other protocol (`h2c`, `TLS/1.0`, ...) is dropped with the
/// other hop-by-hop headers and the request is forwarded as a plain request: a backend that
/// speaks such a protocol would otherwise be reachable past the proxy's request parsing.
pub(super) fn requested_upgrade<B>(request: &Request<B>) -> Option<HeaderValue> {
    if request.version() != Version::HTTP_11 {
        return None;
    }
    let headers = request.headers();
    let wants = connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"));
    let protocol = headers.get(header::UPGRADE).filter(|_| wants)?;
    protocol
        .as_bytes()
        .eq_ignore_ascii_case(b"websocket")
        .then(|| protocol.clone())
}

/// RFC 9112 §3.2: exactly one `Host` in an HTTP/1.1 request, at most one otherwise; RFC 9113
/// §8.3.1: an HTTP/2 `Host` must name the same authority as `:authority`. Anything else would
/// leave the upstream and `X-Forwarded-Host` to disagree about which host was asked for.
fn check_host<B>(request: &Request<B>) -> Result<(), String> {
    // RFC 9113 §8.3.1 (`:authority` MUST NOT include userinfo) and RFC 9110 §4.2.4 (a sender
    // MUST NOT generate userinfo in an http(s) URI): refused, so `evil@host` never becomes a
    // Host header.
    if request
        .uri()
        .authority()
        .is_some_and(|a| a.as_str().contains('@'))
    {
        return Err("the request target carries userinfo (user@host)".into());
    }
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one Host header".into());
    }
    match (request.version(), host) {
        (Version::HTTP_11, None) => Err("HTTP/1.1 request without a Host header".into()),
        (Version::HTTP_2, Some(host)) => match request.uri().authority() {
            Some(authority)
                if !authority
                    .as_str()
                    .as_bytes()
                    .eq_ignore_ascii_case(host.as_bytes()) =>
            {
                Err("HTTP/2 Host header differs from :authority".into())
            }
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

/// What the `Transfer-Encoding` lines (all of them, one lookup) ask for.
struct TransferCodings {
    /// A coding other than `chunked` is named.
    foreign: bool,
    /// How many times `chunked` is named.
    chunked: usize,
}

fn transfer_codings(headers: &HeaderMap) -> TransferCodings {
    let mut codings = TransferCodings {
        foreign: false,
        chunked: 0,
    };
    let named = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|coding| coding.trim_ascii())
        .filter(|coding| !coding.is_empty());
    for coding in named {
        if coding.eq_ignore_ascii_case(b"chunked") {
            codings.chunked += 1;
        } else {
            codings.foreign = true;
        }
    }
    codings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_must_be_single_present_in_http11_and_match_h2_authority() {
        let request = |version: Version, uri: &str, hosts: &[&str]| {
            let mut r = Request::new(());
            *r.version_mut() = version;
            *r.uri_mut() = uri.parse().unwrap();
            for h in hosts {
                r.headers_mut().append("host", h.parse().unwrap());
            }
            check_host(&r)
        };
        assert!(request(Version::HTTP_11, "/", &["a.example"]).is_ok());
        assert!(request(Version::HTTP_11, "/", &[]).is_err());
        assert!(request(Version::HTTP_11, "/", &["a.example", "b.example"]).is_err());
        assert!(request(Version::HTTP_10, "/", &[]).is_ok());
        assert!(request(Version::HTTP_10, "/", &["a", "a"]).is_err());
        assert!(request(Version::HTTP_2, "https://a.example/", &[]).is_ok());
        assert!(request(Version::HTTP_2, "https://a.example/", &["A.example"]).is_ok());
        assert!(request(Version::HTTP_2, "https://a.example/", &["b.example"]).is_err());
    }

    #[test]
    fn only_chunked_transfer_coding_is_forwardable() {
        let te = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append("transfer-encoding", v.parse().unwrap());
            }
            transfer_codings(&h).foreign
        };
        assert!(!te(&[]));
        assert!(!te(&["chunked"]));
        assert!(!te(&["Chunked"]));
        assert!(te(&["gzip, chunked"]));
        assert!(te(&["gzip", "chunked"]));
        assert!(te(&["x-custom ,chunked"]));
    }

    #[test]
    fn chunked_is_counted_across_values_and_lines() {
        let count = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append("transfer-encoding", v.parse().unwrap());
            }
            transfer_codings(&h).chunked
        };
        assert_eq!(count(&[]), 0);
        assert_eq!(count(&["chunked"]), 1);
        assert_eq!(count(&["Chunked , chunked"]), 2);
        assert_eq!(count(&["chunked", "CHUNKED"]), 2);
        assert_eq!(count(&["gzip, chunked"]), 1);
    }

    #[test]
    fn only_websocket_upgrades_are_tunnelled() {
        for protocol in ["h2c", "TLS/1.0", "websocket, h2c", "foo"] {
            let mut r = Request::new(());
            r.headers_mut()
                .insert("connection", "Upgrade".parse().unwrap());
            r.headers_mut().insert("upgrade", protocol.parse().unwrap());
            assert!(requested_upgrade(&r).is_none(), "{protocol}");
        }
        let mut r = Request::new(());
        r.headers_mut()
            .insert("connection", "Upgrade".parse().unwrap());
        r.headers_mut()
            .insert("upgrade", "WebSocket".parse().unwrap());
        assert_eq!(requested_upgrade(&r).unwrap(), "WebSocket");
    }

    #[test]
    fn upgrade_needs_connection_upgrade_and_http11() {
        let mut r = Request::new(());
        r.headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        assert!(
            requested_upgrade(&r).is_none(),
            "Upgrade without Connection: upgrade"
        );
        r.headers_mut()
            .insert("connection", "keep-alive, Upgrade".parse().unwrap());
        assert_eq!(requested_upgrade(&r).unwrap(), "websocket");
        *r.version_mut() = Version::HTTP_10;
        assert!(requested_upgrade(&r).is_none());
    }
}
