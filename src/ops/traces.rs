//! Request traces: W3C Trace Context (`traceparent`, `tracestate`) read from every request and
//! passed on to Node, and the proxy's own spans exported over OTLP.
//!
//! - A request whose `traceparent` is sampled joins that trace: a SERVER span for the request,
//!   children for the session check and the upstream request (CLIENT), and Node receives a
//!   `traceparent` with the same trace id and the proxy's CLIENT span as its parent
//!   (`tracestate` unchanged). Without export configured, a valid `traceparent` is passed on
//!   as it came.
//! - Without one, a trace is started for `tracing.sample_ratio` of the requests (0 by default).
//! - A malformed `traceparent` is ignored, and removed with its `tracestate`, so Node never
//!   takes it for a valid one; it is never an error for the client.
//!
//! Spans carry the method, the route's name, the status and the peer address; never tokens,
//! cookies, paths or query strings, and user ids only with `tracing.include_user_id`. Export is
//! batched from a bounded queue: when it is full (a slow or unreachable collector) spans are
//! dropped and counted, and a request never waits for the collector.

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter as _, SpanProcessor,
};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::{OtlpProtocol, TracingConfig};
use crate::fast_format::push_ip;
use crate::metrics::Metrics;

pub(crate) static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(crate) static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Spans sent to the collector in one export at most.
const BATCH: usize = 512;
/// How long the first span of a batch waits for others.
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// How long one export may take before it is given up (the queue fills meanwhile).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The proxy's tracing: off (no export) or a tracer whose spans go to the export queue.
pub(crate) struct Traces {
    tracer: Option<SdkTracer>,
    /// Kept so the pipeline lives as long as the proxy; dropping it closes the queue.
    _provider: Option<SdkTracerProvider>,
    /// Root traces started for this share of requests without a `traceparent`.
    sample_ratio: f64,
    include_user_id: bool,
}

impl Traces {
    /// No export: `traceparent`s are checked and passed on, no span is recorded.
    pub(crate) fn off() -> Self {
        Self {
            tracer: None,
            _provider: None,
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
        let resource = Resource::builder()
            .with_service_name(config.service_name.clone())
            .build();
        let mut exporter = exporter(endpoint, config.protocol)?;
        exporter.set_resource(&resource);
        let (queue, spans) = mpsc::channel(config.queue_size);
        let batch = BATCH.min(config.queue_size);
        tokio::spawn(export(exporter, spans, batch, metrics.clone()));
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Queue {
                queue,
                metrics: metrics.clone(),
            })
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(resource)
            .build();
        info!(endpoint = %endpoint, protocol = ?config.protocol, sample_ratio = config.sample_ratio,
            "exporting traces over OTLP");
        Ok(Self {
            tracer: Some(provider.tracer("stream-token-proxy")),
            _provider: Some(provider),
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
        let Some(tracer) = &self.tracer else {
            return RequestTrace::untraced();
        };
        let parent = match incoming {
            Some(parent) if parent.is_sampled() => Context::new().with_remote_span_context(parent),
            // Not sampled upstream of us: passed on as it came, nothing recorded.
            Some(_) => return RequestTrace::untraced(),
            None if self.sample_ratio > 0.0 => Context::new(),
            None => return RequestTrace::untraced(),
        };
        // Named by the method alone (OpenTelemetry's HTTP conventions allow it; the route is
        // an attribute): a static name costs no formatting per request.
        let method = static_method(method);
        let mut peer_address = Vec::with_capacity(39);
        push_ip(&mut peer_address, peer.ip().to_canonical());
        let span = tracer
            .span_builder(method)
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", method),
                KeyValue::new(
                    "network.peer.address",
                    String::from_utf8(peer_address).unwrap_or_default(),
                ),
            ])
            .start_with_context(tracer, &parent);
        if !span.span_context().is_sampled() {
            return RequestTrace::untraced();
        }
        RequestTrace {
            recording: Some(Recording {
                cx: parent.with_span(span),
                tracer: tracer.clone(),
                include_user_id: self.include_user_id,
            }),
        }
    }
}

/// One request's trace, if it is recorded.
pub(crate) struct RequestTrace {
    recording: Option<Recording>,
}

struct Recording {
    /// The context with the request's SERVER span.
    cx: Context,
    tracer: SdkTracer,
    include_user_id: bool,
}

/// A child span of the request; ends when dropped.
pub(crate) struct ChildSpan(Option<opentelemetry_sdk::trace::Span>);

impl RequestTrace {
    pub(crate) fn untraced() -> Self {
        Self { recording: None }
    }

    /// `(trace id, span id)` of the request's span, for the access log.
    pub(crate) fn ids(&self) -> Option<(String, String)> {
        let recording = self.recording.as_ref()?;
        let context = recording.cx.span().span_context().clone();
        Some((
            context.trace_id().to_string(),
            context.span_id().to_string(),
        ))
    }

    /// A child span named `name` (`verify session`), of `kind`.
    pub(crate) fn child(&self, name: &'static str, kind: SpanKind) -> ChildSpan {
        ChildSpan(self.recording.as_ref().map(|r| {
            r.tracer
                .span_builder(name)
                .with_kind(kind)
                .start_with_context(&r.tracer, &r.cx)
        }))
    }

    /// The upstream request's CLIENT span; `headers` (the request to Node) get a
    /// `traceparent` naming it as the parent. Without a recording, `headers` stay as they are.
    pub(crate) fn upstream(&self, headers: &mut HeaderMap) -> ChildSpan {
        let span = self.child("upstream request", SpanKind::Client);
        if let Some(client) = &span.0
            && let Ok(value) = HeaderValue::from_str(&traceparent(client.span_context()))
        {
            headers.insert(TRACEPARENT.clone(), value);
        }
        span
    }

    /// The verified user, when `tracing.include_user_id` allows it.
    pub(crate) fn user(&self, user_id: &str) {
        if let Some(r) = self.recording.as_ref().filter(|r| r.include_user_id) {
            r.cx.span()
                .set_attribute(KeyValue::new("enduser.id", user_id.to_owned()));
        }
    }

    /// Ends the request's span with its route and status.
    pub(crate) fn finish(&self, route: &'static str, status: http::StatusCode) {
        let Some(r) = &self.recording else {
            return;
        };
        let span = r.cx.span();
        span.set_attributes([
            KeyValue::new("http.route", route),
            KeyValue::new("http.response.status_code", i64::from(status.as_u16())),
        ]);
        if status.is_server_error() {
            span.set_status(Status::error(status.as_str().to_owned()));
        }
        span.end();
    }
}

impl ChildSpan {
    /// Marks the span failed with a fixed reason (an error code, never a token).
    pub(crate) fn fail(&mut self, code: &'static str) {
        if let Some(span) = &mut self.0 {
            span.set_status(Status::error(code));
        }
    }
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

/// `traceparent` (W3C Trace Context §3.2): `00-<trace id>-<parent id>-<flags>`, lower-case hex,
/// neither id all zeros. A later version is read by its first four fields, as the spec says.
fn parse_traceparent(value: &[u8]) -> Option<SpanContext> {
    let text = std::str::from_utf8(value).ok()?;
    let mut fields = text.split('-');
    let (version, trace, parent, flags) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(parent, 16) || !hex(flags, 2)
    {
        return None;
    }
    if version == "00" && (text.len() != 55 || fields.next().is_some()) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace)
        .ok()
        .filter(|t| *t != TraceId::INVALID)?;
    let span_id = SpanId::from_hex(parent)
        .ok()
        .filter(|s| *s != SpanId::INVALID)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags & 1),
        true,
        TraceState::default(),
    ))
}

/// The `traceparent` that names `span` as the parent.
fn traceparent(span: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        span.trace_id(),
        span.span_id(),
        span.trace_flags().to_u8()
    )
}

fn exporter(
    endpoint: &str,
    protocol: OtlpProtocol,
) -> Result<opentelemetry_otlp::SpanExporter, String> {
    use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
    let built = match protocol {
        OtlpProtocol::Http => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
            .with_timeout(EXPORT_TIMEOUT)
            .with_headers(Default::default())
            .build(),
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build(),
    };
    built.map_err(|e| format!("cannot set up the OTLP exporter for {endpoint}: {e}"))
}

/// The span processor: an ended span goes into the bounded queue, or is dropped and counted.
#[derive(Debug)]
struct Queue {
    queue: mpsc::Sender<SpanData>,
    metrics: Arc<Metrics>,
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.queue.try_send(span).is_err() {
            self.metrics.trace_spans_dropped.inc();
        }
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}

/// Sends the queued spans to the collector in batches of at most `limit` (so the spans held
/// are at most twice the queue's size), one export at a time, until the queue closes. A failing collector is logged when it starts and stops failing, not per batch.
async fn export(
    exporter: opentelemetry_otlp::SpanExporter,
    mut spans: mpsc::Receiver<SpanData>,
    limit: usize,
    metrics: Arc<Metrics>,
) {
    let mut failing = false;
    let mut batch = Vec::with_capacity(limit);
    while spans.recv_many(&mut batch, limit).await > 0 {
        // Gather for a moment: one export per span would cost more than the spans themselves.
        let gather = tokio::time::sleep(BATCH_DELAY);
        tokio::pin!(gather);
        while batch.len() < limit {
            let room = limit - batch.len();
            tokio::select! {
                _ = &mut gather => break,
                more = spans.recv_many(&mut batch, room) => if more == 0 { break },
            }
        }
        let sent = batch.len() as u64;
        let outcome =
            tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(std::mem::take(&mut batch))).await;
        match outcome {
            Ok(Ok(())) => {
                metrics.trace_spans_exported.inc_by(sent);
                if failing {
                    info!("OTLP export works again");
                    failing = false;
                }
            }
            Ok(Err(e)) if !failing => {
                warn!(error = %e, "OTLP export failed; spans are dropped until it works");
                failing = true;
            }
            Err(_) if !failing => {
                warn!("OTLP export timed out; spans are dropped until it works");
                failing = true;
            }
            _ => {}
        }
        if failing {
            metrics.trace_spans_dropped.inc_by(sent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_read_as_the_spec_says() {
        let good = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = parse_traceparent(good).unwrap();
        assert_eq!(
            context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(context.is_sampled());
        assert!(
            !parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
                .unwrap()
                .is_sampled()
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
            traceparent(&context),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
    }
}
