//! Which path goes where. The router owns no route logic: it picks the handler, turns a handler
//! error into its response (through [`ProxyError::to_response`], the only place that happens),
//! logs it, and attaches the access log.

use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use tracing::{info, warn};

use crate::access_log::{AccessEntry, LoggedBody};
use crate::body::ProxyBody;
use crate::error::{Fault, ProxyError};
use crate::forward::{ClientConn, Forwarder};
use crate::limits::{Limited, Limits};
use crate::token_route::{TokenRoute, is_token_path};

/// Everything a request may need, shared by all connections.
pub struct App {
    pub forwarder: Forwarder,
    pub token: TokenRoute,
    pub limits: Arc<Limits>,
}

impl App {
    /// Per-IP limits on forwarded paths, when configured (none by default).
    fn check_forward_limit(
        &self,
        request: &Request<Incoming>,
        conn: ClientConn,
    ) -> Result<(), Limited> {
        if !self.limits.has_forward_limits() {
            return Ok(());
        }
        let ip = self.limits.client_ip(conn.peer.ip(), request.headers());
        self.limits.check_forward(request.uri().path(), ip)
    }

    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        conn: ClientConn,
    ) -> Response<LoggedBody> {
        let started = Instant::now();
        let mut entry = AccessEntry::start(request.method(), request.uri().path(), started);

        let response = if is_token_path(request.uri().path()) {
            if let Some(e) = entry.as_mut() {
                e.route = "token";
            }
            let origin = self.token.cors.allowed_origin(request.headers());
            let preflight = request.method() == Method::OPTIONS;
            let client_ip = self.limits.client_ip(conn.peer.ip(), request.headers());
            let result = self.token.handle(request, client_ip, &mut entry).await;
            let mut response = respond(result, &mut entry, conn);
            if !preflight {
                self.token.cors.decorate(&mut response, origin);
            }
            response
        } else if request.method() == Method::CONNECT {
            respond(Err(ProxyError::NotImplemented("CONNECT")), &mut entry, conn)
        } else if let Err(limited) = self.check_forward_limit(&request, conn) {
            respond(Err(ProxyError::RateLimited(limited)), &mut entry, conn)
        } else {
            let result = self
                .forwarder
                .forward(request, conn)
                .await
                .map(|forwarded| {
                    if let Some(e) = entry.as_mut() {
                        e.upstream_time = Some(forwarded.upstream_time);
                    }
                    forwarded.response.map(ProxyBody::upstream)
                });
            respond(result, &mut entry, conn)
        };

        if let Some(e) = entry.as_mut() {
            e.status = response.status();
        }
        response.map(|body| LoggedBody::new(body, entry))
    }
}

/// The response for a handler's result; errors are logged here with their reason.
fn respond(
    result: Result<Response<ProxyBody>, ProxyError>,
    entry: &mut Option<AccessEntry>,
    conn: ClientConn,
) -> Response<ProxyBody> {
    let error = match result {
        Ok(response) => return response,
        Err(error) => error,
    };
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
    error.to_response()
}
