//! An OTLP receiver: accepts `POST /v1/traces` (OTLP/HTTP, protobuf) or, started with
//! [`OtlpReceiver::start_grpc`], OTLP/gRPC's `TraceService/Export` over h2c (HTTP/2 without
//! TLS, hyper's server), decodes the spans and keeps them for the test to look at. With
//! `hang`, it accepts connections and never answers (a collector that has gone away without
//! closing).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::WithTrailers;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use tokio::net::TcpListener;

use super::STEP;

/// One received span, flattened for assertions.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub name: String,
    /// 1 internal, 2 server, 3 client (OTLP's `SpanKind`).
    pub kind: i32,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    /// Every attribute as `key=value` text.
    pub attributes: Vec<String>,
    pub service_name: String,
}

pub struct OtlpReceiver {
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OtlpReceiver {
    pub async fn start(hang: bool) -> Self {
        Self::start_with(hang, false).await
    }

    /// An OTLP/gRPC receiver (h2c).
    pub async fn start_grpc() -> Self {
        Self::start_with(false, true).await
    }

    async fn start_with(hang: bool, grpc: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let kept = spans.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                if hang {
                    held.push(stream); // never read, never answered
                    continue;
                }
                let kept = kept.clone();
                let io = TokioIo::new(stream);
                if grpc {
                    let service = service_fn(move |request| receive_grpc(request, kept.clone()));
                    tokio::spawn(
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service),
                    );
                } else {
                    let service = service_fn(move |request| receive(request, kept.clone()));
                    tokio::spawn(
                        hyper::server::conn::http1::Builder::new().serve_connection(io, service),
                    );
                }
            }
        });
        Self { addr, spans, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits (bounded) until at least `count` spans have arrived.
    pub async fn wait_for(&self, count: usize) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + STEP;
        loop {
            let spans = self.spans();
            if spans.len() >= count || Instant::now() > deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn receive(
    request: Request<Incoming>,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path_ok = request.uri().path() == "/v1/traces";
    let body = request.into_body().collect().await.map(|b| b.to_bytes());
    let decoded = body
        .ok()
        .and_then(|b| ExportTraceServiceRequest::decode(b).ok());
    let status = match (path_ok, decoded) {
        (true, Some(export)) => {
            spans.lock().unwrap().extend(flatten(export));
            StatusCode::OK
        }
        _ => StatusCode::BAD_REQUEST,
    };
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    Ok(response)
}

type GrpcBody =
    WithTrailers<Full<Bytes>, std::future::Ready<Option<Result<http::HeaderMap, Infallible>>>>;

/// gRPC: one length-prefixed, uncompressed message in; an empty `ExportTraceServiceResponse`
/// out, with `grpc-status` in the trailers (0, or 3 INVALID_ARGUMENT for what does not decode).
async fn receive_grpc(
    request: Request<Incoming>,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
) -> Result<Response<GrpcBody>, Infallible> {
    let well_formed = request.uri().path()
        == "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        && request.headers().get("content-type").map(|v| v.as_bytes()) == Some(b"application/grpc");
    let body = request.into_body().collect().await.map(|b| b.to_bytes());
    let decoded = body.ok().filter(|_| well_formed).and_then(|b| {
        let (flag, len) = (
            *b.first()?,
            u32::from_be_bytes(b.get(1..5)?.try_into().ok()?),
        );
        let message = b.get(5..)?;
        (flag == 0 && message.len() == len as usize)
            .then(|| ExportTraceServiceRequest::decode(message).ok())?
    });
    let code = match decoded {
        Some(export) => {
            spans.lock().unwrap().extend(flatten(export));
            "0"
        }
        None => "3",
    };
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static(code));
    let body = Full::new(Bytes::from_static(&[0, 0, 0, 0, 0]))
        .with_trailers(std::future::ready(Some(Ok(trailers))));
    let mut response = Response::new(body);
    response.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/grpc"),
    );
    Ok(response)
}

fn flatten(export: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let text = |kv: &opentelemetry_proto::tonic::common::v1::KeyValue| {
        format!(
            "{}={:?}",
            kv.key,
            kv.value.as_ref().and_then(|v| v.value.clone())
        )
    };
    let mut out = Vec::new();
    for resource_spans in export.resource_spans {
        let service_name = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(text)
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                out.push(ReceivedSpan {
                    name: span.name.clone(),
                    kind: span.kind,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span.attributes.iter().map(text).collect(),
                    service_name: service_name.clone(),
                });
            }
        }
    }
    out
}
