//! The export queue and the task that empties it. A request records a finished span with one
//! uncontended lock and a push; the queue is bounded (`tracing.queue_size`: past it spans are
//! dropped and counted, a request never waits), and the task wakes once per second, or when a
//! full batch is waiting, not once per span. Each batch is sent as one OTLP export over
//! HTTP (`POST /v1/traces`, protobuf) or gRPC (`TraceService/Export`, HTTP/2).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Notify;
use tracing::{info, warn};

use super::SpanRecord;
use super::otlp;
use crate::config::{OtlpProtocol, TracingConfig};
use crate::metrics::Metrics;

/// Spans sent to the collector in one export at most.
const BATCH: usize = 512;
/// How long the first span of a batch waits for others.
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// How long one export may take before it is given up (the queue fills meanwhile).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// A collector's answer is read up to this size (it is only checked for success).
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// OTLP/gRPC's method (opentelemetry-proto, `trace_service.proto`).
const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Finished spans waiting for the export task.
pub(super) struct SpanQueue {
    spans: Mutex<Vec<SpanRecord>>,
    capacity: usize,
    /// Wakes the task early when a full batch waits, or when the proxy stops.
    ready: Notify,
    batch: usize,
    closed: AtomicBool,
    metrics: Arc<Metrics>,
}

impl SpanQueue {
    /// Queues `span`, or drops and counts it when the queue is full.
    pub(super) fn push(&self, span: SpanRecord) {
        let mut spans = self.spans.lock().unwrap_or_else(PoisonError::into_inner);
        if spans.len() >= self.capacity {
            drop(spans);
            self.metrics.trace_spans_dropped.inc();
            return;
        }
        spans.push(span);
        if spans.len() == self.batch {
            self.ready.notify_one();
        }
    }

    /// The task sends what is left, then ends.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ready.notify_one();
    }

    /// Swaps the queued spans for `spare` (empty): the two vectors keep their room, so
    /// requests do not pay for the queue growing again after every export.
    fn take(&self, spare: &mut Vec<SpanRecord>) {
        spare.clear();
        std::mem::swap(
            &mut *self.spans.lock().unwrap_or_else(PoisonError::into_inner),
            spare,
        );
    }
}

/// Starts the export task for `endpoint` and returns its queue.
pub(super) fn start(
    endpoint: &str,
    config: &TracingConfig,
    metrics: &Arc<Metrics>,
) -> Result<Arc<SpanQueue>, String> {
    let collector = Collector::new(endpoint, config)?;
    let queue = Arc::new(SpanQueue {
        spans: Mutex::new(Vec::new()),
        capacity: config.queue_size,
        ready: Notify::new(),
        batch: BATCH.min(config.queue_size),
        closed: AtomicBool::new(false),
        metrics: metrics.clone(),
    });
    tokio::spawn(run(queue.clone(), collector));
    info!(endpoint = %endpoint, protocol = ?config.protocol, sample_ratio = config.sample_ratio,
        "exporting traces over OTLP");
    Ok(queue)
}

/// Sends the queued spans in batches, one export at a time (so the spans held are at most
/// twice the queue's size), until the queue closes. A failing collector is logged when it
/// starts and stops failing, not per batch.
async fn run(queue: Arc<SpanQueue>, collector: Collector) {
    let mut failing = false;
    let (mut spans, mut scratch) = (Vec::new(), Vec::new());
    loop {
        // A timeout is the usual wake-up: the batch delay has passed.
        let _ = tokio::time::timeout(BATCH_DELAY, queue.ready.notified()).await;
        let closed = queue.closed.load(Ordering::Acquire);
        queue.take(&mut spans);
        for batch in spans.chunks(queue.batch) {
            let body = collector.encode(batch, &mut scratch);
            let sent = batch.len() as u64;
            match tokio::time::timeout(EXPORT_TIMEOUT, collector.send(body)).await {
                Ok(Ok(())) => {
                    queue.metrics.trace_spans_exported.inc_by(sent);
                    if failing {
                        info!("OTLP export works again");
                        failing = false;
                    }
                }
                outcome => {
                    if !failing {
                        let error = match outcome {
                            Ok(Err(e)) => e,
                            _ => "no answer in time".to_owned(),
                        };
                        warn!(error = %error, "OTLP export failed; spans are dropped until it works");
                        failing = true;
                    }
                    queue.metrics.trace_spans_dropped.inc_by(sent);
                }
            }
        }
        if closed {
            return;
        }
    }
}

/// Where exports go, and how.
struct Collector {
    uri: Uri,
    protocol: OtlpProtocol,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    service_name: String,
}

impl Collector {
    fn new(endpoint: &str, config: &TracingConfig) -> Result<Self, String> {
        let base = endpoint.trim_end_matches('/');
        let path = match config.protocol {
            OtlpProtocol::Http => "/v1/traces",
            OtlpProtocol::Grpc => GRPC_PATH,
        };
        let uri: Uri = format!("{base}{path}")
            .parse()
            .map_err(|e| format!("tracing.otlp_endpoint `{endpoint}`: {e}"))?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(crate::crypto::tls_provider())
            .map_err(|e| format!("cannot set up TLS for the OTLP exporter: {e}"))?
            .https_or_http()
            .enable_all_versions()
            .build();
        let mut client = Client::builder(TokioExecutor::new());
        // gRPC is HTTP/2 only; over plain http that is h2c with prior knowledge.
        client.http2_only(config.protocol == OtlpProtocol::Grpc);
        Ok(Self {
            uri,
            protocol: config.protocol,
            client: client.build(https),
            service_name: config.service_name.clone(),
        })
    }

    /// The request body for `spans`: the `ExportTraceServiceRequest`, for gRPC as a
    /// length-prefixed message (a compression flag, 0: none, and the length, big-endian).
    fn encode(&self, spans: &[SpanRecord], scratch: &mut Vec<u8>) -> Bytes {
        let grpc = self.protocol == OtlpProtocol::Grpc;
        let prefix = if grpc { 5 } else { 0 };
        let mut body = vec![0; prefix];
        otlp::encode_export(&self.service_name, spans, scratch, &mut body);
        if grpc {
            let len = u32::try_from(body.len() - prefix).unwrap_or(u32::MAX);
            body[1..5].copy_from_slice(&len.to_be_bytes());
        }
        body.into()
    }

    /// One export.
    async fn send(&self, body: Bytes) -> Result<(), String> {
        let content_type = match self.protocol {
            OtlpProtocol::Http => "application/x-protobuf",
            OtlpProtocol::Grpc => "application/grpc",
        };
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if self.protocol == OtlpProtocol::Grpc {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let grpc_status = response.headers().get("grpc-status").cloned();
        let answer = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        match self.protocol {
            OtlpProtocol::Http if status.is_success() => Ok(()),
            OtlpProtocol::Http => Err(format!("status {status}")),
            OtlpProtocol::Grpc => {
                // In the trailers, or in the headers of a trailers-only answer.
                let grpc_status = answer
                    .trailers()
                    .and_then(|t| t.get("grpc-status").cloned())
                    .or(grpc_status);
                grpc_outcome(status, grpc_status.as_ref())
            }
        }
    }
}

fn grpc_outcome(status: StatusCode, grpc_status: Option<&HeaderValue>) -> Result<(), String> {
    match grpc_status.map(HeaderValue::as_bytes) {
        _ if status != StatusCode::OK => Err(format!("status {status}")),
        Some(b"0") => Ok(()),
        Some(code) => Err(format!("grpc-status {}", String::from_utf8_lossy(code))),
        None => Err("no grpc-status".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_grpc_message_is_length_prefixed() {
        let config = TracingConfig {
            protocol: OtlpProtocol::Grpc,
            ..TracingConfig::default()
        };
        let collector = Collector::new("http://127.0.0.1:4317", &config).unwrap();
        assert_eq!(collector.uri.path(), GRPC_PATH);
        let body = collector.encode(&[], &mut Vec::new());
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap());
        assert_eq!((body[0], len as usize), (0, body.len() - 5));
    }

    #[test]
    fn only_grpc_status_zero_is_success() {
        let zero = HeaderValue::from_static("0");
        let unavailable = HeaderValue::from_static("14");
        assert!(grpc_outcome(StatusCode::OK, Some(&zero)).is_ok());
        assert!(grpc_outcome(StatusCode::OK, Some(&unavailable)).is_err());
        assert!(grpc_outcome(StatusCode::OK, None).is_err());
        assert!(grpc_outcome(StatusCode::BAD_GATEWAY, Some(&zero)).is_err());
    }
}
