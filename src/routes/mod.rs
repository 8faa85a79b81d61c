//! Which path goes where. The router owns no route logic: it picks the handler, turns a handler
//! error into its response (through [`ProxyError::to_response`], the only place that happens),
//! logs it, and attaches the access log.

pub mod body;
pub mod path;
pub mod token;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use tracing::{info, warn};

use crate::auth::{KeyStore, Verifier};
use crate::config::{Config, ForwardingConfig, UpstreamConfig};
use crate::connection::{ClientConn, ConnectionSlot};
use crate::error::{Fault, ProxyError};
use crate::forward::Forwarder;
use crate::limits::{Limited, Limits};
use crate::metrics::Metrics;
use crate::ops::access_log::{AccessEntry, LoggedBody};
use crate::routes::body::ProxyBody;
use crate::routes::path::{AmbiguousPath, RoutePath};
use crate::routes::token::{TOKEN_PATH, TokenRoute};
use crate::stream_token::StreamMinter;

/// Everything a request may need, shared by all connections.
/// One per worker thread: the upstream pool is the worker's own (no cross-thread hand-offs on
/// the forwarding path); everything else is shared.
pub struct App {
    forwarder: Forwarder,
    shared: Arc<Shared>,
}

/// What every worker's [`App`] shares.
pub struct Shared {
    token: TokenRoute,
    limits: Arc<Limits>,
    metrics: Arc<Metrics>,
    request_ids: RequestIds,
    /// For each worker's own [`Forwarder`].
    upstream: UpstreamConfig,
    forwarding: ForwardingConfig,
}

impl Shared {
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn new(
        config: &Config,
        keys: &Arc<KeyStore>,
        minter: &Arc<StreamMinter>,
        limits: &Arc<Limits>,
        metrics: &Arc<Metrics>,
    ) -> Arc<Self> {
        let verifier = Verifier::new(&config.auth, keys.clone());
        Arc::new(Self {
            token: TokenRoute::new(
                config,
                verifier,
                minter.clone(),
                limits.clone(),
                metrics.clone(),
            ),
            limits: limits.clone(),
            metrics: metrics.clone(),
            request_ids: RequestIds::default(),
            upstream: config.upstream.clone(),
            forwarding: config.forwarding.clone(),
        })
    }
}

impl App {
    /// One worker's app: the shared state and the worker's own upstream pool.
    pub fn new(shared: &Arc<Shared>) -> Arc<Self> {
        Arc::new(Self {
            forwarder: Forwarder::new(&shared.upstream, &shared.forwarding),
            shared: shared.clone(),
        })
    }
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Request ids: the client's `X-Request-Id` when it is sane, else `<process prefix>-<counter>`.
pub struct RequestIds {
    prefix: String,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        let mut bytes = [0u8; 6];
        // A zero prefix (if the RNG failed) still gives ids unique within this process.
        let _ = crate::crypto::random_bytes(&mut bytes);
        Self {
            prefix: bytes.iter().map(|b| format!("{b:02x}")).collect(),
            next: AtomicU64::new(1),
        }
    }
}

impl RequestIds {
    /// The id for this request, written into its headers so the upstream sees the same one.
    fn assign(&self, headers: &mut HeaderMap) -> HeaderValue {
        // One hashed lookup whether the client sent an id or not.
        match headers.entry(&X_REQUEST_ID) {
            Entry::Occupied(mut sent) => {
                let mut values = sent.iter();
                if let (Some(id), None) = (values.next(), values.next())
                    && is_sane_request_id(id.as_bytes())
                {
                    return id.clone();
                }
                // Replaces every line the client sent.
                let id = self.generate();
                sent.insert(id.clone());
                id
            }
            Entry::Vacant(missing) => missing.insert(self.generate()).clone(),
        }
    }

    /// `<prefix>-<n in hex>`, written without the formatting machinery (per request).
    fn generate(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut text = Vec::with_capacity(self.prefix.len() + 17);
        text.extend_from_slice(self.prefix.as_bytes());
        text.push(b'-');
        let digits = (u64::BITS - n.leading_zeros()).div_ceil(4).max(1);
        for shift in (0..digits).rev() {
            text.push(b"0123456789abcdef"[(n >> (shift * 4)) as usize & 0xf]);
        }
        HeaderValue::from_maybe_shared(Bytes::from(text))
            .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
    }
}

/// At most 128 bytes of `[A-Za-z0-9._:-]`: safe to log and to pass on.
fn is_sane_request_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

impl App {
    /// Per-IP limits on forwarded paths, when configured (none by default).
    fn check_forward_limit(
        &self,
        request: &Request<Incoming>,
        conn: ClientConn,
    ) -> Result<(), Limited> {
        if !self.shared.limits.has_forward_limits() {
            return Ok(());
        }
        let ip = self
            .shared
            .limits
            .client_ip(conn.peer.ip(), request.headers());
        self.shared.limits.check_forward(request.uri().path(), ip)
    }

    /// Answers one request. Never fails: every error is a response (the `Result` is the shape
    /// hyper's service wants).
    pub async fn handle(
        self: Arc<Self>,
        mut request: Request<Incoming>,
        conn: ClientConn,
        slot: Arc<ConnectionSlot>,
    ) -> Result<Response<LoggedBody<ProxyBody>>, Infallible> {
        let started = Instant::now();
        let request_id = self.shared.request_ids.assign(request.headers_mut());
        let mut entry = AccessEntry::start(request.method(), request.uri().path(), started);
        if let Some(e) = entry.as_mut() {
            e.request_id = Some(request_id.clone());
        }
        let (route, refused) = match RoutePath::parse(request.uri().path()) {
            Ok(path) if path.is(TOKEN_PATH) => (0, None),
            Ok(_) => (1, None),
            Err(AmbiguousPath) => (1, Some(ProxyError::AmbiguousPath)),
        };

        let metrics = &self.shared.metrics;
        let mut response = if let Some(error) = refused {
            respond(Err(error), &mut entry, conn, metrics)
        } else if route == 0 {
            if let Some(e) = entry.as_mut() {
                e.route = "token";
            }
            let origin = self.shared.token.cors.allowed_origin(request.headers());
            let preflight = request.method() == Method::OPTIONS;
            let http1 = request.version() < Version::HTTP_2;
            let client_ip = self
                .shared
                .limits
                .client_ip(conn.peer.ip(), request.headers());
            let result = self
                .shared
                .token
                .handle(request, client_ip, &mut entry)
                .await;
            let mut response = respond(result, &mut entry, conn, metrics);
            if !preflight {
                self.shared.token.cors.decorate(&mut response, origin);
            }
            // What is left of a body that never came cannot be told from the next request.
            if http1 && response.status() == StatusCode::REQUEST_TIMEOUT {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response
        } else if request.method() == Method::CONNECT {
            respond(
                Err(ProxyError::NotImplemented("CONNECT")),
                &mut entry,
                conn,
                metrics,
            )
        } else if let Err(limited) = self.check_forward_limit(&request, conn) {
            respond(
                Err(ProxyError::RateLimited(limited)),
                &mut entry,
                conn,
                metrics,
            )
        } else {
            // A refused HTTP/1 request may leave body bytes unread, framed in a way the proxy
            // just refused (a transfer coding it cannot undo, a broken chunk): they must never
            // be read as the client's next request, so the connection closes after the answer.
            let close_if_refused =
                request.version() < Version::HTTP_2 && !request.body().is_end_stream();
            let result = self
                .forwarder
                .forward(request, conn, slot)
                .await
                .map(|forwarded| {
                    metrics
                        .upstream_duration
                        .observe(forwarded.upstream_time.as_secs_f64());
                    if let Some(e) = entry.as_mut() {
                        e.upstream_time = Some(forwarded.upstream_time);
                    }
                    forwarded.response.map(ProxyBody::upstream)
                });
            let refused = result.is_err();
            let mut response = respond(result, &mut entry, conn, metrics);
            if refused && close_if_refused {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response
        };

        metrics.request(route, response.status());
        response
            .headers_mut()
            .insert(X_REQUEST_ID.clone(), request_id);
        if let Some(e) = entry.as_mut() {
            e.status = response.status();
        }
        Ok(response.map(|body| LoggedBody::new(body, entry)))
    }
}

/// The response for a handler's result; errors are logged here with their reason.
fn respond(
    result: Result<Response<ProxyBody>, ProxyError>,
    entry: &mut Option<AccessEntry>,
    conn: ClientConn,
    metrics: &Metrics,
) -> Response<ProxyBody> {
    let error = match result {
        Ok(response) => return response,
        Err(error) => error,
    };
    match &error {
        ProxyError::Auth(e) => metrics.verification_failure(e.code()),
        ProxyError::RateLimited(limited) => metrics.rate_limited(limited.limiter),
        ProxyError::UpstreamConnect(_) => metrics.upstream_error("connect"),
        ProxyError::UpstreamTimeout(_) => metrics.upstream_error("timeout"),
        ProxyError::UpstreamProtocol(_) => metrics.upstream_error("protocol"),
        _ => {}
    }
    let user_id = entry.as_ref().and_then(|e| e.user_id.clone());
    let user_id = user_id.as_deref().or(match &error {
        ProxyError::Auth(crate::auth::AuthError::UnauthorizedParty { user_id }) => {
            Some(user_id.as_str())
        }
        _ => None,
    });
    // Refusing a client is routine (info); the upstream or the proxy failing is not (warn).
    if error.fault() == Fault::Client {
        info!(code = error.code(), reason = %error, peer = %conn.peer, user_id, "request refused");
    } else {
        warn!(code = error.code(), reason = %error, fault = error.fault().as_str(), peer = %conn.peer, "request failed");
    }
    if let Some(e) = entry.as_mut() {
        e.error = Some(error.code());
    }
    error.to_response().map(ProxyBody::full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_request_ids_are_prefix_dash_hex_counter() {
        let ids = RequestIds {
            prefix: "0a1b2c3d4e5f".into(),
            next: AtomicU64::new(0),
        };
        for expected in ["0", "1", "2"] {
            let mut headers = HeaderMap::new();
            let id = ids.assign(&mut headers);
            assert_eq!(id, format!("0a1b2c3d4e5f-{expected}").as_str());
            assert_eq!(headers[&X_REQUEST_ID], id);
        }
        for n in [15u64, 16, 0xabc, u64::MAX] {
            ids.next.store(n, Ordering::Relaxed);
            let id = ids.assign(&mut HeaderMap::new());
            assert_eq!(id, format!("0a1b2c3d4e5f-{n:x}").as_str());
        }
    }

    #[test]
    fn a_sane_client_id_is_kept_and_anything_else_replaced_by_one_line() {
        let ids = RequestIds {
            prefix: "p".into(),
            next: AtomicU64::new(7),
        };
        let mut headers = HeaderMap::new();
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("client-id.1:a_b"));
        assert_eq!(ids.assign(&mut headers), "client-id.1:a_b");
        assert_eq!(headers.get_all(&X_REQUEST_ID).iter().count(), 1);

        for sent in [&["two", "lines"][..], &["spaces are not sane"], &[""]] {
            let mut headers = HeaderMap::new();
            for value in sent {
                headers.append(&X_REQUEST_ID, HeaderValue::from_static(value));
            }
            let id = ids.assign(&mut headers);
            assert!(id.to_str().unwrap().starts_with("p-"), "{sent:?}: {id:?}");
            let lines: Vec<_> = headers.get_all(&X_REQUEST_ID).iter().collect();
            assert_eq!(lines, [id], "{sent:?}");
        }
    }
}
