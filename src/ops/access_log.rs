//! One log line per request, written when the response body is finished (or abandoned), so it
//! carries the real byte count and total time. Never the query string, `Authorization` or
//! cookies: only the fields below.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Buf as _;
use http::{Method, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tracing::{Level, info};

/// What the router learned about a request, logged when its response ends.
#[derive(Debug)]
pub(crate) struct AccessEntry {
    pub(crate) method: Method,
    /// Path without the query.
    pub(crate) path: String,
    pub(crate) route: &'static str,
    pub(crate) status: StatusCode,
    pub(crate) upstream_time: Option<Duration>,
    /// The `error` code when the proxy answered with an error.
    pub(crate) error: Option<&'static str>,
    /// The verified user, on the token route (a user id, never a token).
    pub(crate) user_id: Option<std::sync::Arc<str>>,
    /// `X-Request-Id`, taken from the client or generated.
    pub(crate) request_id: Option<http::HeaderValue>,
    /// `(trace id, span id)` when the request is traced.
    pub(crate) trace: Option<(String, String)>,
    started: Instant,
}

impl AccessEntry {
    /// `None` when info-level logging is off for this target, so a silent proxy pays nothing.
    pub(crate) fn start(method: &Method, path: &str, started: Instant) -> Option<Self> {
        tracing::enabled!(target: "access", Level::INFO).then(|| Self {
            method: method.clone(),
            path: path.to_owned(),
            route: "forward",
            status: StatusCode::OK,
            upstream_time: None,
            error: None,
            user_id: None,
            request_id: None,
            trace: None,
            started,
        })
    }
}

/// The response body with its access-log entry; logs on drop.
#[derive(Debug)]
pub(crate) struct LoggedBody<B: Body + Unpin> {
    inner: B,
    entry: Option<AccessEntry>,
    bytes: u64,
    complete: bool,
}

impl<B: Body + Unpin> LoggedBody<B> {
    pub(crate) fn new(inner: B, entry: Option<AccessEntry>) -> Self {
        let complete = inner.is_end_stream();
        Self {
            inner,
            entry,
            bytes: 0,
            complete,
        }
    }
}

impl<B: Body + Unpin> Body for LoggedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.remaining() as u64;
                } else if frame.is_trailers() {
                    self.complete = true;
                }
            }
            Poll::Ready(None) => self.complete = true,
            _ => {}
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

impl<B: Body + Unpin> Drop for LoggedBody<B> {
    fn drop(&mut self) {
        let Some(e) = self.entry.take() else { return };
        let upstream_ms = e.upstream_time.map(|d| d.as_secs_f64() * 1e3);
        info!(
            target: "access",
            method = %e.method,
            path = %e.path,
            route = e.route,
            status = e.status.as_u16(),
            upstream_ms,
            bytes = self.bytes,
            duration_ms = e.started.elapsed().as_secs_f64() * 1e3,
            complete = self.complete || self.inner.is_end_stream(),
            error = e.error,
            user_id = e.user_id.as_deref(),
            request_id = e.request_id.as_ref().and_then(|v| v.to_str().ok()),
            trace_id = e.trace.as_ref().map(|(trace, _)| trace.as_str()),
            span_id = e.trace.as_ref().map(|(_, span)| span.as_str()),
            "request"
        );
    }
}
