//! Request traces: W3C Trace Context (`traceparent`, `tracestate`) read from every request and
//! passed on to Node, and the proxy's own spans exported over OTLP.
//!
//! - A request whose `traceparent` is sampled joins that trace: a SERVER span for the request,
//!   children for the session check (and, inside it, a wait for an on-demand JWKS fetch), a
//!   Redis rate-limit call, and the upstream request (CLIENT). Node receives a `traceparent`
//!   with the same trace id and the proxy's CLIENT span as its parent (`tracestate`
//!   unchanged). Without export configured, a valid `traceparent` is passed on as it came.
//! - Without one, a trace is started for `tracing.sample_ratio` of the requests (0 by default).
//! - A malformed `traceparent` is ignored, and removed with its `tracestate`, so Node never
//!   takes it for a valid one; it is never an error for the client.
//!
//! Spans carry the method, the route's name, the status and the peer address; never tokens,
//! cookies, paths or query strings, and user ids only with `tracing.include_user_id`.
//!
//! Why not the OpenTelemetry SDK: the proxy used `opentelemetry_sdk` + `opentelemetry-otlp`
//! first, and with every request traced it cost +51 % instructions per `GET` (+29 % on the
//! token route) against a budget of +10 % (`BENCHMARKS.md`, "Tracing"): its span building
//! (contexts, `KeyValue` vectors, `SpanData`) alone was over the budget, before the exporter's
//! grouping and `prost` encoding. A span here is a plain struct of ids, two timestamps and a
//! few typed fields, recorded into a bounded queue (`export.rs`) and hand-encoded as OTLP
//! protobuf by the export task (`otlp.rs`).

mod export;
mod otlp;

use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{HeaderMap, HeaderName, HeaderValue};

use self::export::SpanQueue;
use crate::config::TracingConfig;
use crate::metrics::Metrics;

pub(crate) static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(crate) static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

tokio::task_local! {
    /// The span that code deep in a request (a JWKS wait, a Redis call) parents its spans to;
    /// set only while a traced request runs ([`scoped_await!`]), so an untraced request
    /// never pays for it.
    static CURRENT: Parent;
}

/// OTLP's `SpanKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpanKind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

type TraceId = [u8; 16];
type SpanId = [u8; 8];

/// One finished span, as the export task encodes it.
#[derive(Debug)]
struct SpanRecord {
    trace_id: TraceId,
    span_id: SpanId,
    /// All zeros for a root span.
    parent_id: SpanId,
    name: &'static str,
    kind: SpanKind,
    start_ns: u64,
    end_ns: u64,
    /// One fixed attribute of a child span (`rate_limit.policy` = `token_ip`).
    attribute: Option<(&'static str, &'static str)>,
    /// The request's fields, on its SERVER span only.
    server: Option<ServerFields>,
    /// Status ERROR with this fixed description (an error code, never input).
    error: Option<&'static str>,
}

#[derive(Debug)]
struct ServerFields {
    method: &'static str,
    peer: IpAddr,
    route: &'static str,
    status: u16,
    user_id: Option<Arc<str>>,
}

/// The proxy's tracing: off (no export), or spans recorded into the export queue.
pub(crate) struct Traces {
    queue: Option<Arc<SpanQueue>>,
    /// Root traces started for this share of requests without a `traceparent`.
    sample_ratio: f64,
    include_user_id: bool,
}

impl Drop for Traces {
    /// The export task sends what is queued and ends.
    fn drop(&mut self) {
        if let Some(queue) = &self.queue {
            queue.close();
        }
    }
}

impl Traces {
    /// No export: `traceparent`s are checked and passed on, no span is recorded.
    pub(crate) fn off() -> Self {
        Self {
            queue: None,
            sample_ratio: 0.0,
            include_user_id: false,
        }
    }

    /// The pipeline `config` asks for; must be called on a tokio runtime (the export task runs
    /// there).
    pub(crate) fn start(config: &TracingConfig, metrics: &Arc<Metrics>) -> Result<Self, String> {
        let Some(endpoint) = &config.otlp_endpoint else {
            return Ok(Self::off());
        };
        let queue = export::start(endpoint, config, metrics)?;
        Ok(Self {
            queue: Some(queue),
            sample_ratio: config.sample_ratio,
            include_user_id: config.include_user_id,
        })
    }

    /// Reads the request's trace context (removing a malformed one from `headers`) and, when
    /// the request is traced, starts its SERVER span.
    pub(crate) fn begin(
        &self,
        headers: &mut HeaderMap,
        method: &http::Method,
        peer: std::net::SocketAddr,
    ) -> RequestTrace {
        let incoming = match headers.get(&TRACEPARENT) {
            None => None,
            Some(value) => match parse_traceparent(value.as_bytes()) {
                Some(parent) => Some(parent),
                None => {
                    headers.remove(&TRACEPARENT);
                    headers.remove(&TRACESTATE);
                    None
                }
            },
        };
        let Some(queue) = &self.queue else {
            return RequestTrace::untraced();
        };
        let (trace_id, parent_id) = match incoming {
            Some(parent) if parent.sampled => (parent.trace_id, parent.span_id),
            // Not sampled upstream of us: passed on as it came, nothing recorded.
            Some(_) => return RequestTrace::untraced(),
            None if self.sample_ratio > 0.0 && fastrand::f64() < self.sample_ratio => {
                (new_trace_id(), [0; 8])
            }
            None => return RequestTrace::untraced(),
        };
        RequestTrace {
            recording: Some(Recording {
                parent: Parent {
                    queue: queue.clone(),
                    trace_id,
                    span_id: new_span_id(),
                },
                parent_id,
                start_ns: unix_nanos(),
                method: static_method(method),
                peer: peer.ip().to_canonical(),
                user_id: OnceLock::new(),
                include_user_id: self.include_user_id,
            }),
        }
    }
}

/// One request's trace, if it is recorded.
pub(crate) struct RequestTrace {
    recording: Option<Recording>,
}

/// The request's SERVER span while it is open.
struct Recording {
    parent: Parent,
    /// The caller's span, or zeros for a trace the proxy started.
    parent_id: SpanId,
    start_ns: u64,
    method: &'static str,
    peer: IpAddr,
    /// Set once verification succeeds, and only with `tracing.include_user_id`.
    user_id: OnceLock<Arc<str>>,
    include_user_id: bool,
}

/// A span that children can name as their parent.
#[derive(Clone)]
pub(crate) struct Parent {
    queue: Arc<SpanQueue>,
    trace_id: TraceId,
    span_id: SpanId,
}

impl Parent {
    fn child(&self, name: &'static str, kind: SpanKind) -> ChildSpan {
        let span_id = new_span_id();
        ChildSpan(Some(OpenChild {
            parent: Parent {
                queue: self.queue.clone(),
                trace_id: self.trace_id,
                span_id,
            },
            parent_id: self.span_id,
            span_id,
            name,
            kind,
            start_ns: unix_nanos(),
            attribute: None,
            error: None,
        }))
    }
}

/// A child span of the request; ends when dropped.
pub(crate) struct ChildSpan(Option<OpenChild>);

struct OpenChild {
    /// This span, as a parent for its own children (`span_id` is its id).
    parent: Parent,
    parent_id: SpanId,
    span_id: SpanId,
    name: &'static str,
    kind: SpanKind,
    start_ns: u64,
    attribute: Option<(&'static str, &'static str)>,
    error: Option<&'static str>,
}

impl RequestTrace {
    pub(crate) fn untraced() -> Self {
        Self { recording: None }
    }

    /// `(trace id, span id)` of the request's span, for the access log.
    pub(crate) fn ids(&self) -> Option<(String, String)> {
        let parent = &self.recording.as_ref()?.parent;
        Some((hex(&parent.trace_id), hex(&parent.span_id)))
    }

    /// A child span named `name` (`verify session`), of `kind`.
    pub(crate) fn child(&self, name: &'static str, kind: SpanKind) -> ChildSpan {
        match &self.recording {
            Some(r) => r.parent.child(name, kind),
            None => ChildSpan(None),
        }
    }

    /// The request's span as the parent of spans started in code it runs
    /// ([`scoped_await!`]).
    pub(crate) fn parent(&self) -> Option<Parent> {
        self.recording.as_ref().map(|r| r.parent.clone())
    }

    /// The upstream request's CLIENT span; `headers` (the request to Node) get a
    /// `traceparent` naming it as the parent. Without a recording, `headers` stay as they are.
    pub(crate) fn upstream(&self, headers: &mut HeaderMap) -> ChildSpan {
        let span = self.child("upstream request", SpanKind::Client);
        if let Some(client) = &span.0
            && let Ok(value) =
                HeaderValue::from_bytes(&traceparent(&client.parent.trace_id, &client.span_id))
        {
            headers.insert(TRACEPARENT.clone(), value);
        }
        span
    }

    /// The verified user, when `tracing.include_user_id` allows it.
    pub(crate) fn user(&self, user_id: &Arc<str>) {
        if let Some(r) = self.recording.as_ref().filter(|r| r.include_user_id) {
            let _ = r.user_id.set(user_id.clone());
        }
    }

    /// Ends the request's span with its route and status.
    pub(crate) fn finish(&mut self, route: &'static str, status: http::StatusCode) {
        let Some(r) = self.recording.take() else {
            return;
        };
        r.parent.queue.push(SpanRecord {
            trace_id: r.parent.trace_id,
            span_id: r.parent.span_id,
            parent_id: r.parent_id,
            name: r.method,
            kind: SpanKind::Server,
            start_ns: r.start_ns,
            end_ns: unix_nanos(),
            attribute: None,
            server: Some(ServerFields {
                method: r.method,
                peer: r.peer,
                route,
                status: status.as_u16(),
                user_id: r.user_id.into_inner(),
            }),
            error: status
                .is_server_error()
                .then(|| status.canonical_reason().unwrap_or("server error")),
        });
    }
}

impl ChildSpan {
    /// Marks the span failed with a fixed reason (an error code, never a token).
    pub(crate) fn fail(&mut self, code: &'static str) {
        if let Some(span) = &mut self.0 {
            span.error = Some(code);
        }
    }

    /// Adds one attribute with a fixed value (a policy name, never input).
    pub(crate) fn set(&mut self, key: &'static str, value: &'static str) {
        if let Some(span) = &mut self.0 {
            span.attribute = Some((key, value));
        }
    }

    /// This span as the parent of spans started inside it ([`scoped_await!`]).
    pub(crate) fn parent(&self) -> Option<Parent> {
        self.0.as_ref().map(|s| s.parent.clone())
    }
}

impl Drop for ChildSpan {
    fn drop(&mut self) {
        let Some(span) = self.0.take() else { return };
        span.parent.queue.push(SpanRecord {
            trace_id: span.parent.trace_id,
            span_id: span.span_id,
            parent_id: span.parent_id,
            name: span.name,
            kind: span.kind,
            start_ns: span.start_ns,
            end_ns: unix_nanos(),
            attribute: span.attribute,
            server: None,
            error: span.error,
        });
    }
}

/// A child of the span the running request set as current ([`scoped_await!`]); a span
/// that records nothing outside a traced request.
pub(crate) fn current_child(name: &'static str, kind: SpanKind) -> ChildSpan {
    CURRENT
        .try_with(|parent| parent.child(name, kind))
        .unwrap_or(ChildSpan(None))
}

/// `work`, with `parent` as the current span while it runs.
pub(crate) fn with_parent<F: Future>(parent: Parent, work: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(parent, work)
}

/// `$work.await`, with `$span`'s span (a [`RequestTrace`] or [`ChildSpan`]) as the parent of
/// the spans [`current_child`] starts inside it. A macro, not a function, so that an untraced
/// request awaits `$work` where it is: a wrapper future around it would move it into a bigger
/// state on every request (measured: ~2k instructions per token request). Traced, the scoped
/// future is boxed, which keeps the callers' futures small.
macro_rules! scoped_await {
    ($span:expr, $work:expr) => {
        match $span.parent() {
            Some(parent) => Box::pin($crate::ops::traces::with_parent(parent, $work)).await,
            None => $work.await,
        }
    };
}
pub(crate) use scoped_await;

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Ids need to be unique, not secret (W3C Trace Context §3.2.2.3: random or unique): a fast
/// per-thread generator, never zero (the spec's invalid value).
fn new_trace_id() -> TraceId {
    fastrand::u128(1..).to_be_bytes()
}

fn new_span_id() -> SpanId {
    fastrand::u64(1..).to_be_bytes()
}

/// The standard methods' names as `&'static str` (a span name that costs no allocation).
fn static_method(method: &http::Method) -> &'static str {
    use http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "HTTP",
    }
}

/// A `traceparent` as it arrived.
#[derive(Debug, PartialEq, Eq)]
struct Incoming {
    trace_id: TraceId,
    span_id: SpanId,
    sampled: bool,
}

/// `traceparent` (W3C Trace Context §3.2): `00-<trace id>-<parent id>-<flags>`, lower-case hex,
/// neither id all zeros. A later version is read by its first four fields, as the spec says.
fn parse_traceparent(value: &[u8]) -> Option<Incoming> {
    let mut fields = value.split(|&b| b == b'-');
    let (version, trace, parent, flags) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    let [version] = unhex::<1>(version)?;
    let [flags] = unhex::<1>(flags)?;
    let trace_id = unhex::<16>(trace).filter(|t| *t != [0; 16])?;
    let span_id = unhex::<8>(parent).filter(|s| *s != [0; 8])?;
    if version == 0xff || (version == 0 && (value.len() != 55 || fields.next().is_some())) {
        return None;
    }
    Some(Incoming {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

/// Exactly `2 * N` lower-case hex digits.
fn unhex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0; N];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// Writes `bytes` as lower-case hex to `out` (twice as long).
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 15)];
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0; 2 * bytes.len()];
    hex_into(&mut out, bytes);
    // Only ASCII hex digits were written.
    String::from_utf8(out).unwrap_or_default()
}

/// The `traceparent` that names `span_id` as the parent (always sampled: only recorded spans
/// are ever named).
fn traceparent(trace_id: &TraceId, span_id: &SpanId) -> [u8; 55] {
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-01";
    hex_into(&mut out[3..35], trace_id);
    hex_into(&mut out[36..52], span_id);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_read_as_the_spec_says() {
        let good = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = parse_traceparent(good).unwrap();
        assert_eq!(hex(&context.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&context.span_id), "00f067aa0ba902b7");
        assert!(context.sampled);
        assert!(
            !parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
                .unwrap()
                .sampled
        );
        // A later version: its first four fields.
        assert!(
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_some()
        );
        for bad in [
            &b""[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            b"00-zzf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01".as_bytes(),
        ] {
            assert!(
                parse_traceparent(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_traceparent_sent_on_names_the_span() {
        let context =
            parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(
            &traceparent(&context.trace_id, &context.span_id),
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
    }

    #[test]
    fn ids_are_never_zero_and_differ() {
        let (a, b) = (new_span_id(), new_span_id());
        assert_ne!(a, [0; 8]);
        assert_ne!(a, b);
        assert_ne!(new_trace_id(), [0; 16]);
    }
}
