//! One forwarded request: hop-by-hop headers, `X-Forwarded-*`, protocol upgrades (WebSocket),
//! upstream timeouts and the retry of idempotent requests. The connections themselves come from
//! the worker's pool in [`crate::upstream`].
//!
//! A request goes out as the client sent it: same method, the path and query byte for byte,
//! end-to-end headers with duplicates in order, the body streamed. Only what RFC 9110 §7.6.1
//! calls hop-by-hop is removed, and `X-Forwarded-*` is added.

mod checks;
mod headers;
mod progress;
pub(crate) mod tunnel;

pub use headers::{prepare_request_headers, strip_hop_by_hop};
pub(crate) use progress::ProgressBody;

use checks::{refuse_unforwardable, requested_upgrade};
use progress::Progress;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use tracing::debug;

use crate::config::{ForwardingConfig, UpstreamConfig};
use crate::connection::{ClientConn, ConnectionSlot};
use crate::error::ProxyError;
use crate::upstream::{NewConnection, PooledBody, SendError, UpstreamPool, closed_before_answer};

/// The request body sent upstream: the client's streamed body, or none.
pub(crate) type UpstreamBody = Either<ProgressBody, Empty<Bytes>>;

/// The upstream's response body, streamed back to the client.
pub(crate) type UpstreamResponseBody = PooledBody<UpstreamBody>;

/// What a forwarded request came back with, for the access log.
pub(crate) struct Forwarded {
    pub(crate) response: Response<UpstreamResponseBody>,
    /// Time until the upstream's response headers arrived.
    pub(crate) upstream_time: Duration,
}

pub(crate) struct Forwarder {
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
    pub(crate) fn new(upstream: &UpstreamConfig, options: &ForwardingConfig) -> Self {
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
    pub(crate) async fn forward(
        &self,
        mut request: Request<Incoming>,
        conn: ClientConn,
        slot: Arc<ConnectionSlot>,
        identity: &[(HeaderName, HeaderValue)],
    ) -> Result<Forwarded, ProxyError> {
        let upgrade = requested_upgrade(&request);
        refuse_unforwardable(&request, upgrade.is_some())?;
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
        let (mut parts, body) = request.into_parts();
        self.rewrite_for_upstream(&mut parts, upgrade.as_ref(), conn)?;
        // After the client's copies of these names were removed (`remove_request_headers`).
        for (name, value) in identity {
            parts.headers.insert(name.clone(), value.clone());
        }

        let started = Instant::now();
        let mut response = if body.is_end_stream() {
            let retry = self.retry_copy(&parts);
            let first = Request::from_parts(parts, Either::Right(Empty::new()));
            let upgrading = upgrade.is_some();
            match (self.send(first, upgrading).await, retry) {
                (Err(e), Some(retry)) if is_stale_connection(&e) => {
                    debug!(error = %e, "upstream connection closed before answering; retrying once");
                    self.send(retry, upgrading).await?
                }
                (other, _) => other?,
            }
        } else {
            let progress = Progress::new();
            let body = ProgressBody::new(body, progress.clone());
            self.send_streaming(Request::from_parts(parts, Either::Left(body)), &progress)
                .await?
        };
        let upstream_time = started.elapsed();
        match (upgrade, client_upgrade) {
            (Some(protocol), Some(client_side))
                if response.status() == StatusCode::SWITCHING_PROTOCOLS =>
            {
                self.open_tunnel(&mut response, protocol, client_side, slot);
            }
            _ => strip_hop_by_hop(response.headers_mut()),
        }
        Ok(Forwarded {
            response,
            upstream_time,
        })
    }

    /// The client's request as the upstream gets it: its headers (`headers.rs`; an HTTP/2
    /// client's `:authority` is read from its URI first), origin-form, HTTP/1.1, a `Host`.
    fn rewrite_for_upstream(
        &self,
        parts: &mut http::request::Parts,
        upgrade: Option<&HeaderValue>,
        conn: ClientConn,
    ) -> Result<(), ProxyError> {
        prepare_request_headers(
            &mut parts.headers,
            &parts.uri,
            parts.version,
            upgrade,
            conn,
            &self.options,
        )
        .map_err(ProxyError::BadTarget)?;
        parts.uri = origin_form(&parts.uri)?;
        parts.version = Version::HTTP_11;
        if !parts.headers.contains_key(header::HOST) {
            parts.headers.insert(header::HOST, self.host.clone());
        }
        Ok(())
    }

    /// A bodiless request can be rebuilt, so a connection the upstream closed under us
    /// (usually a pooled one it timed out) is retried once, for idempotent methods, on a new
    /// connection.
    fn retry_copy(&self, parts: &http::request::Parts) -> Option<Request<UpstreamBody>> {
        (self.retry_idempotent && is_idempotent(&parts.method)).then(|| {
            let mut copy = Request::new(Either::Right(Empty::new()));
            *copy.method_mut() = parts.method.clone();
            *copy.uri_mut() = parts.uri.clone();
            *copy.version_mut() = parts.version;
            *copy.headers_mut() = parts.headers.clone();
            copy.extensions_mut().insert(NewConnection);
            copy
        })
    }

    /// Both sides agreed to switch (101): the response keeps its `Upgrade` and the bytes are
    /// tunnelled in a task of their own, which holds the connection's `slot` until it closes.
    fn open_tunnel(
        &self,
        response: &mut Response<UpstreamResponseBody>,
        protocol: HeaderValue,
        client_side: hyper::upgrade::OnUpgrade,
        slot: Arc<ConnectionSlot>,
    ) {
        let upstream_side = hyper::upgrade::on(&mut *response);
        strip_hop_by_hop(response.headers_mut());
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
        let idle = self.tunnel_idle_timeout;
        tokio::spawn(tunnel::run(client_side, upstream_side, slot.tunnel(), idle));
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
            return closed_before_answer(h);
        }
        cause = e.source();
    }
    false
}
