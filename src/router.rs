//! Which path goes where. The router owns no route logic: it picks the handler, turns a handler
//! error into its response (through [`ProxyError::to_response`]) and attaches the access log.

use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use tracing::warn;

use crate::access_log::{AccessEntry, LoggedBody};
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::forward::{ClientConn, Forwarder};

/// Everything a request may need, shared by all connections.
pub struct App {
    pub forwarder: Forwarder,
}

impl App {
    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        conn: ClientConn,
    ) -> Response<LoggedBody> {
        let started = Instant::now();
        let mut entry = AccessEntry::start(request.method(), request.uri().path(), started);

        let result = if request.method() == Method::CONNECT {
            Err(ProxyError::NotImplemented("CONNECT"))
        } else {
            self.forwarder
                .forward(request, conn)
                .await
                .map(|forwarded| {
                    if let Some(e) = entry.as_mut() {
                        e.upstream_time = Some(forwarded.upstream_time);
                    }
                    forwarded.response.map(ProxyBody::upstream)
                })
        };

        let response = match result {
            Ok(response) => response,
            Err(error) => {
                warn!(
                    error = %error,
                    code = error.code(),
                    fault = error.fault().as_str(),
                    peer = %conn.peer,
                    "request failed"
                );
                if let Some(e) = entry.as_mut() {
                    e.error = Some(error.code());
                }
                error.to_response()
            }
        };
        if let Some(e) = entry.as_mut() {
            e.status = response.status();
        }
        response.map(|body| LoggedBody::new(body, entry))
    }
}
