//! The admin listener: plain HTTP on its own address, never on the public port.
//!
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 when the public listener is up, verification keys are loaded, no
//!   shutdown has begun and, with `admin.ready_requires_upstream`, the upstream passed its
//!   check ([`UpstreamCheck`]) (with `"rate_limits":"degraded"` while the shared rate-limit
//!   backend is skipped); else 503 with the reason.
//! - `GET /metrics`: Prometheus (OpenMetrics text) exposition.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::debug;

use crate::auth::KeyStore;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::ops::upstream_check::UpstreamCheck;
use crate::tls::CertStore;

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState").finish_non_exhaustive()
    }
}

/// What the admin endpoints look at.
pub(crate) struct AdminState {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) keys: Arc<KeyStore>,
    pub(crate) limits: Arc<Limits>,
    pub(crate) certs: Option<Arc<CertStore>>,
    /// `true` once the public listener is bound and until shutdown begins.
    pub(crate) serving: AtomicBool,
    /// The upstream's check, when readiness requires it.
    upstream: Option<UpstreamCheck>,
}

impl AdminState {
    /// Serving from the start: `start` creates it once the listeners are bound.
    pub(crate) fn new(
        metrics: &Arc<Metrics>,
        keys: &Arc<KeyStore>,
        limits: &Arc<Limits>,
        certs: &Option<Arc<CertStore>>,
        upstream: Option<UpstreamCheck>,
    ) -> Self {
        Self {
            metrics: metrics.clone(),
            keys: keys.clone(),
            limits: limits.clone(),
            certs: certs.clone(),
            serving: AtomicBool::new(true),
            upstream,
        }
    }

    /// `None` when ready, else why not.
    pub(crate) async fn not_ready(&self) -> Option<&'static str> {
        if !self.serving.load(Ordering::Relaxed) {
            return Some("the public listener is not serving (starting or shutting down)");
        }
        if !self.keys.is_ready() {
            return Some("session verification keys are not loaded yet");
        }
        match &self.upstream {
            Some(check) => check.not_ready().await,
            None => None,
        }
    }

    fn export_gauges(&self) {
        self.keys.export_gauges();
        for (name, keys) in self.limits.keys_by_name() {
            self.metrics.limiter_keys(name, keys);
        }
        if let Some(expiry) = self.certs.as_ref().and_then(|c| c.not_after()) {
            self.metrics.certificate_expiry.set(expiry);
        }
    }

    async fn respond(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return json(
                StatusCode::METHOD_NOT_ALLOWED,
                r#"{"error":"method_not_allowed"}"#.into(),
            );
        }
        match request.uri().path() {
            "/healthz" => json(StatusCode::OK, r#"{"status":"ok"}"#.into()),
            "/readyz" => match self.not_ready().await {
                // Degraded rate limits do not take the pod out: `on_error` decides what a
                // request gets meanwhile, and every replica would be degraded at once.
                None if self.limits.degraded() => json(
                    StatusCode::OK,
                    r#"{"status":"ready","rate_limits":"degraded"}"#.into(),
                ),
                None => json(StatusCode::OK, r#"{"status":"ready"}"#.into()),
                Some(reason) => json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"status": "not_ready", "reason": reason}).to_string(),
                ),
            },
            "/metrics" => {
                self.export_gauges();
                let mut response = Response::new(Full::new(Bytes::from(self.metrics.encode())));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                response
            }
            _ => json(StatusCode::NOT_FOUND, r#"{"error":"not_found"}"#.into()),
        }
    }
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Serves the admin endpoints until the task is aborted.
pub(crate) async fn run(listener: TcpListener, state: Arc<AdminState>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(state.respond(&request).await) }
            });
            let result = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = result {
                debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
}
