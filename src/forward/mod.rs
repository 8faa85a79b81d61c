//! One forwarded request: hop-by-hop headers, `X-Forwarded-*`, protocol upgrades (WebSocket),
//! upstream timeouts and the retry of idempotent requests. The connections themselves come from
//! the worker's pool in [`crate::upstream`].
//!
//! A request goes out as the client sent it: same method, the path and query byte for byte,
//! end-to-end headers with duplicates in order, the body streamed. Only what RFC 9110 §7.6.1
//! calls hop-by-hop is removed, and `X-Forwarded-*` is added.

pub mod tunnel;

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use tracing::debug;

use crate::config::{FieldName, ForwardingConfig, UpstreamConfig};
use crate::error::ProxyError;
use crate::server::connection::ConnectionSlot;
use crate::upstream::{PooledBody, SendError, UpstreamPool};

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

/// The request body sent upstream: the client's streamed body, or none.
pub type UpstreamBody = Either<ProgressBody, Empty<Bytes>>;

/// The upstream's response body, streamed back to the client.
pub type UpstreamResponseBody = PooledBody<UpstreamBody>;

/// What a forwarded request came back with, for the access log.
pub struct Forwarded {
    pub response: Response<UpstreamResponseBody>,
    /// Time until the upstream's response headers arrived.
    pub upstream_time: Duration,
}

/// The connection-level facts forwarding needs about the client.
#[derive(Debug, Clone, Copy)]
pub struct ClientConn {
    pub peer: SocketAddr,
    /// `true` when the client reached us over TLS (sets `X-Forwarded-Proto`).
    pub tls: bool,
}

pub struct Forwarder {
    pool: UpstreamPool<UpstreamBody>,
    /// The upstream's `host:port`, the `Host` of a request that came without one (HTTP/1.0,
    /// or HTTP/2 without `:authority`).
    host: HeaderValue,
    response_timeout: Duration,
    retry_idempotent: bool,
    /// A tunnel with no bytes either way for this long is closed (zero: never).
    tunnel_idle_timeout: Duration,
    options: ForwardingConfig,
}

impl Forwarder {
    /// The pool is this worker's own; call once per worker.
    pub fn new(upstream: &UpstreamConfig, options: &ForwardingConfig) -> Self {
        let authority: &Authority = &upstream.url.authority;
        Self {
            // A pooled connection found closed before the request was written is retried by
            // the pool itself; the after-write case is `retry_idempotent` below.
            pool: UpstreamPool::new(upstream),
            host: HeaderValue::from_str(authority.as_str())
                .expect("an authority is a valid header value"),
            response_timeout: upstream.response_timeout.0,
            retry_idempotent: upstream.retry_idempotent,
            tunnel_idle_timeout: upstream.tunnel_idle_timeout,
            options: options.clone(),
        }
    }

    /// Sends `request` upstream and returns the upstream's response with hop-by-hop headers
    /// removed. Upgrades (101) are tunnelled in a spawned task once both sides switch; the
    /// tunnel holds the connection's `slot` until it closes.
    pub async fn forward(
        &self,
        mut request: Request<Incoming>,
        conn: ClientConn,
        slot: Arc<ConnectionSlot>,
    ) -> Result<Forwarded, ProxyError> {
        let codings = transfer_codings(request.headers());
        // hyper undoes only `chunked`; any other transfer coding would reach the upstream still
        // applied but no longer announced (Transfer-Encoding is hop-by-hop). RFC 9112 §6.1: 501.
        if codings.foreign {
            return Err(ProxyError::NotImplemented(
                "a transfer coding other than chunked",
            ));
        }
        // RFC 9112 §6.1: chunked is applied at most once. hyper undoes one layer; the second
        // would reach the upstream as body bytes, and what follows the first last-chunk would
        // be read as the client's next request.
        if codings.chunked > 1 {
            return Err(ProxyError::BadRequest(
                "the chunked transfer coding is applied more than once",
            ));
        }
        check_host(&request).map_err(ProxyError::BadTarget)?;
        let upgrade = requested_upgrade(&request);
        // The tunnel would start with the body's bytes already read as HTTP: refuse cleanly.
        if upgrade.is_some() && !request.body().is_end_stream() {
            return Err(ProxyError::BadRequest(
                "an upgrade request must not carry a body",
            ));
        }
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
        let (mut parts, body) = request.into_parts();

        // Headers first: an HTTP/2 client's `:authority` is read from the client's URI.
        prepare_request_headers(
            &mut parts.headers,
            &parts.uri,
            parts.version,
            upgrade.as_ref(),
            conn,
            &self.options,
        )
        .map_err(ProxyError::BadTarget)?;
        parts.uri = origin_form(&parts.uri)?;
        parts.version = Version::HTTP_11;
        if !parts.headers.contains_key(header::HOST) {
            parts.headers.insert(header::HOST, self.host.clone());
        }

        let started = Instant::now();
        let mut response = if body.is_end_stream() {
            // No body: the request can be rebuilt, so a connection the upstream closed under us
            // (usually a pooled one it timed out) is retried once for idempotent methods.
            let retry = (self.retry_idempotent && is_idempotent(&parts.method)).then(|| {
                let mut copy = Request::new(Either::Right(Empty::new()));
                *copy.method_mut() = parts.method.clone();
                *copy.uri_mut() = parts.uri.clone();
                *copy.version_mut() = parts.version;
                *copy.headers_mut() = parts.headers.clone();
                copy
            });
            let first = Request::from_parts(parts, Either::Right(Empty::new()));
            let upgrading = upgrade.is_some();
            match self.send(first, upgrading).await {
                Err(e) if retry.is_some() && is_stale_connection(&e) => {
                    debug!(error = %e, "upstream connection closed before answering; retrying once");
                    self.send(retry.expect("checked is_some"), upgrading)
                        .await?
                }
                other => other?,
            }
        } else {
            let progress = Progress::new();
            let body = ProgressBody {
                inner: body,
                progress: progress.clone(),
            };
            self.send_streaming(Request::from_parts(parts, Either::Left(body)), &progress)
                .await?
        };
        let upstream_time = started.elapsed();

        match (upgrade, client_upgrade) {
            (Some(protocol), Some(client_side))
                if response.status() == StatusCode::SWITCHING_PROTOCOLS =>
            {
                let upstream_side = hyper::upgrade::on(&mut response);
                strip_hop_by_hop(response.headers_mut());
                let headers = response.headers_mut();
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                headers.insert(header::UPGRADE, protocol);
                let idle = self.tunnel_idle_timeout;
                tokio::spawn(tunnel::run(client_side, upstream_side, slot.tunnel(), idle));
            }
            _ => strip_hop_by_hop(response.headers_mut()),
        }
        Ok(Forwarded {
            response,
            upstream_time,
        })
    }

    /// Sends a request without a body (an upgrade request when `upgrade`).
    async fn send(
        &self,
        request: Request<UpstreamBody>,
        upgrade: bool,
    ) -> Result<Response<UpstreamResponseBody>, ProxyError> {
        let timeout = self.response_timeout;
        let sent = if upgrade {
            tokio::time::timeout(timeout, self.pool.send_upgrade(request)).await
        } else {
            tokio::time::timeout(timeout, self.pool.send(request)).await
        };
        match sent {
            Err(_) => Err(ProxyError::UpstreamTimeout(timeout)),
            Ok(result) => upstream_result(result),
        }
    }

    /// Like [`send`](Self::send) for a request whose body is still streaming in from the client:
    /// the upstream cannot be expected to answer before it has the body, so the response timeout
    /// counts from the later of the request's start and the last body frame forwarded. A slow
    /// uploader is not cut off; a stalled one (or an upstream that stops reading) still is.
    async fn send_streaming(
        &self,
        request: Request<UpstreamBody>,
        progress: &Progress,
    ) -> Result<Response<UpstreamResponseBody>, ProxyError> {
        let mut response = std::pin::pin!(self.pool.send_detached(request));
        let mut deadline = Instant::now() + self.response_timeout;
        loop {
            let at = tokio::time::Instant::from_std(deadline);
            match tokio::time::timeout_at(at, &mut response).await {
                // The client's body broke (bad chunked framing, the client went away): the
                // upstream request was cut short for the client's fault, not the upstream's.
                Ok(Err(_)) if progress.client_failed() => {
                    return Err(ProxyError::BadRequest(
                        "the request body is malformed or was cut off",
                    ));
                }
                Ok(result) => return upstream_result(result),
                Err(_) => {
                    let extended = progress.last() + self.response_timeout;
                    if extended <= Instant::now() {
                        return Err(ProxyError::UpstreamTimeout(self.response_timeout));
                    }
                    deadline = extended;
                }
            }
        }
    }
}

/// The client's path and query, byte for byte, as the origin-form target of the upstream request.
/// The errors never quote the target: it may carry a query with credentials in it.
fn origin_form(uri: &Uri) -> Result<Uri, ProxyError> {
    let path_and_query = match uri.path_and_query() {
        Some(pq) if pq.as_str().starts_with('/') => pq.clone(),
        // Absolute-form with an empty path ("http://host", "http://host?q") means "/"
        // (RFC 9112 §3.2.1).
        None if uri.scheme().is_some() => PathAndQuery::from_static("/"),
        Some(pq) if uri.scheme().is_some() && pq.as_str().starts_with('?') => {
            PathAndQuery::try_from(format!("/{}", pq.as_str()))
                .map_err(|_| ProxyError::BadTarget("an unusable absolute-form target".into()))?
        }
        // "*" (OPTIONS) and authority-form (CONNECT) mean nothing to the upstream application.
        _ => {
            return Err(ProxyError::BadTarget(
                "neither origin-form nor absolute-form".into(),
            ));
        }
    };
    Ok(Uri::from(path_and_query))
}

fn upstream_result(
    result: Result<Response<UpstreamResponseBody>, SendError>,
) -> Result<Response<UpstreamResponseBody>, ProxyError> {
    match result {
        Ok(response) => Ok(response),
        Err(SendError::Connect(e)) => Err(ProxyError::UpstreamConnect(e.into())),
        Err(SendError::Protocol(e)) => Err(ProxyError::UpstreamProtocol(e.into())),
    }
}

/// When a streamed request body last moved (a frame or its end was taken from the client), and
/// whether reading it from the client failed.
#[derive(Clone)]
struct Progress {
    origin: Instant,
    /// Nanoseconds after `origin`.
    last: Arc<AtomicU64>,
    client_failed: Arc<AtomicBool>,
}

impl Progress {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
            client_failed: Arc::new(AtomicBool::new(false)),
        }
    }

    fn client_failed(&self) -> bool {
        self.client_failed.load(Ordering::Relaxed)
    }

    fn touch(&self) {
        let nanos = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(nanos, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.origin + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }
}

/// The client's request body on its way upstream, recording [`Progress`].
pub struct ProgressBody {
    inner: Incoming,
    progress: Progress,
}

impl Body for ProgressBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(_)) | None) => self.progress.touch(),
            Poll::Ready(Some(Err(_))) => self.progress.client_failed.store(true, Ordering::Relaxed),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The `Upgrade` value of an HTTP/1.1 upgrade request (`Connection: upgrade` + `Upgrade`).
///
/// Only `websocket` is tunnelled. Any other protocol (`h2c`, `TLS/1.0`, ...) is dropped with the
/// other hop-by-hop headers and the request is forwarded as a plain request: a backend that
/// speaks such a protocol would otherwise be reachable past the proxy's request parsing.
fn requested_upgrade<B>(request: &Request<B>) -> Option<HeaderValue> {
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

/// The comma-separated tokens of every `Connection` header.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
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

/// The position of `name` in [`HOP_BY_HOP`]. The length picks the one candidate, so a
/// header that is not hop-by-hop costs at most two comparisons.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    let i = match name.as_str().len() {
        10 if name == header::CONNECTION => 0,
        10 => 1, // keep-alive, checked below
        16 => 2,
        2 => 3,
        17 => 4,
        7 => 5,
        _ => return None,
    };
    (HOP_BY_HOP[i] == name).then_some(i)
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
/// almost never there, and a hashed removal per listed name cost ~300 instructions each
/// (bench/callgrind.sh).
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

/// Writes `ip` as `Display` would. IPv4 digits are written directly: `to_string` goes through
/// the formatting machinery, a visible share of a forwarded request's user-space cost.
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
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

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The upstream closed the connection after we wrote the request but before any response.
fn is_stale_connection(error: &ProxyError) -> bool {
    let ProxyError::UpstreamProtocol(source) = error else {
        return false;
    };
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
    while let Some(e) = cause {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            return h.is_incomplete_message() || h.is_canceled();
        }
        cause = e.source();
    }
    false
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
