//! The HTTP face of `POST /api/stream/token`: parse, verify the session, check the old route's
//! body, mint, answer; and CORS for browsers. Crypto lives in `auth` and `stream_token`; errors
//! are returned, and become responses in the router.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response};
use http_body::Body as _;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde::Serialize;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::{self, Session, Verifier, unix_now};
use crate::config::Config;
use crate::error::ProxyError;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::ops::access_log::AccessEntry;
use crate::ops::traces::{RequestTrace, SpanKind, scoped_await};
use crate::routes::body::ProxyBody;
use crate::routes::cors::{ALLOW, Cors};
use crate::routes::path::RoutePath;
use crate::stream_token::StreamMinter;

/// The route's path. The router also sends every other spelling of it here.
pub(crate) const TOKEN_PATH: &str = "/api/stream/token";

pub(crate) struct TokenRoute {
    pub(crate) verifier: Verifier,
    pub(crate) minter: Arc<StreamMinter>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) cors: Cors,
    pub(crate) limits: Arc<Limits>,
    session_cookie: bool,
    body_limit: usize,
    /// The whole body must arrive within this after the head (`server.header_read_timeout`).
    body_timeout: Duration,
}

/// The 200 answer.
#[derive(Serialize)]
struct TokenResponse<'a> {
    token: &'a str,
    user_id: &'a str,
    api_key: &'a str,
    expires_at: u64,
}

impl TokenRoute {
    /// The route as `config` sets it up: `[auth]`, `[cors]`, the body's size
    /// (`limits.token_body_bytes`) and time (`server.header_read_timeout`).
    pub(crate) fn new(
        config: &Config,
        verifier: Verifier,
        minter: Arc<StreamMinter>,
        limits: Arc<Limits>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            verifier,
            minter,
            metrics,
            cors: Cors::new(&config.cors),
            limits,
            session_cookie: config.auth.session_cookie,
            body_limit: config.limits.token_body_bytes,
            body_timeout: config.server.header_read_timeout.0,
        }
    }

    /// `client_ip` is the address the per-IP limit counts (see `Limits::client_ip`).
    pub(crate) async fn handle(
        &self,
        request: Request<Incoming>,
        client_ip: IpAddr,
        entry: &mut Option<AccessEntry>,
        trace: &RequestTrace,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        match *request.method() {
            Method::POST => {}
            Method::OPTIONS => return self.cors.preflight(request.headers()),
            ref other => return Err(ProxyError::MethodNotAllowed(other.clone(), ALLOW)),
        }
        // Before any parsing or crypto: the per-IP (and global) limit.
        // A Redis call inside the checks is a child of the request's span (`limits/`).
        scoped_await!(trace, self.limits.check_token_ip(client_ip))
            .map_err(ProxyError::RateLimited)?;
        let token = auth::credentials(request.headers(), self.session_cookie)?;
        let session = verify_traced(&self.verifier, token, trace).await?;
        if let Some(e) = entry.as_mut() {
            e.user_id = Some(session.user_id.clone());
        }
        scoped_await!(trace, self.limits.check_token_user(&session.user_id))
            .map_err(ProxyError::RateLimited)?;
        let body =
            tokio::time::timeout(self.body_timeout, read_json_body(request, self.body_limit))
                .await
                .map_err(|_| ProxyError::RequestTimeout(self.body_timeout))??;
        check_body_user(body.as_ref(), &session)?;

        let (minted, reused) = self.minter.token_for(&session.user_id, unix_now());
        if reused {
            self.metrics.token_reuses.inc();
        } else {
            self.metrics.token_mints.inc();
        }
        let json = serde_json::to_vec(&TokenResponse {
            token: &minted.token,
            user_id: &session.user_id,
            api_key: &self.minter.api_key,
            expires_at: minted.expires_at,
        })
        .map_err(|e| ProxyError::Internal(e.to_string()))?;
        let mut response = Response::new(ProxyBody::full(json));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(response)
    }
}

/// `verifier.verify(token)` in a `verify session` span of the request's trace.
pub(crate) async fn verify_traced(
    verifier: &Verifier,
    token: &str,
    trace: &RequestTrace,
) -> Result<Session, ProxyError> {
    let mut span = trace.child("verify session", SpanKind::Internal);
    // A wait for a JWKS fetch inside it is its child (`auth/keys.rs`).
    let verified = scoped_await!(span, verifier.verify(token));
    match &verified {
        Ok(session) => trace.user(&session.user_id),
        Err(e) => span.fail(e.code()),
    }
    Ok(verified?)
}

/// The old route took `{"userId": ..., "userName": ...}`. An empty body is fine; so is a JSON
/// object. Anything else is refused before it is read in full.
async fn read_json_body(
    request: Request<Incoming>,
    limit: usize,
) -> Result<Option<serde_json::Map<String, serde_json::Value>>, ProxyError> {
    let (parts, body) = request.into_parts();
    if body.is_end_stream() {
        return Ok(None);
    }
    if let Some(length) = body.size_hint().exact() {
        if length > limit as u64 {
            return Err(ProxyError::PayloadTooLarge(limit));
        }
        if length == 0 {
            return Ok(None);
        }
    }
    if !is_json(&parts.headers) {
        return Err(ProxyError::UnsupportedMediaType);
    }
    let bytes: Bytes = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<LengthLimitError>() {
                ProxyError::PayloadTooLarge(limit)
            } else {
                ProxyError::BadRequest("the request body could not be read")
            }
        })?
        .to_bytes();
    parse_token_body(&bytes)
}

/// The body once read: nothing but whitespace is no body; otherwise it must be a JSON object.
pub fn parse_token_body(
    bytes: &[u8],
) -> Result<Option<serde_json::Map<String, serde_json::Value>>, ProxyError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    match serde_json::from_slice(bytes) {
        Ok(serde_json::Value::Object(map)) => Ok(Some(map)),
        Ok(_) => Err(ProxyError::BadRequest("the body must be a JSON object")),
        Err(_) => Err(ProxyError::BadRequest("the body is not valid JSON")),
    }
}

/// `application/json`, with or without parameters (`; charset=utf-8`).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// `userId` in the body may only repeat the verified user; `userName` and the rest are ignored.
pub fn check_body_user(
    body: Option<&serde_json::Map<String, serde_json::Value>>,
    session: &Session,
) -> Result<(), ProxyError> {
    match body.and_then(|b| b.get("userId")) {
        None | Some(serde_json::Value::Null) => Ok(()),
        Some(serde_json::Value::String(id)) if id.as_str() == &*session.user_id => Ok(()),
        Some(serde_json::Value::String(_)) => Err(ProxyError::UserMismatch {
            user_id: session.user_id.clone(),
        }),
        Some(_) => Err(ProxyError::BadRequest("userId must be a string")),
    }
}

/// Whether the proxy answers `path` as the token route: every spelling a Node router behind
/// it could take for [`TOKEN_PATH`] ([`crate::routes::path`] has the rule).
pub fn is_token_path(path: &str) -> bool {
    RoutePath::parse(path).is_ok_and(|p| p.is(TOKEN_PATH))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_body_is_nothing_or_a_json_object() {
        assert!(matches!(parse_token_body(b""), Ok(None)));
        assert!(matches!(parse_token_body(b" \r\n\t"), Ok(None)));
        assert!(matches!(
            parse_token_body(br#"{"userId":"user_7"}"#),
            Ok(Some(map)) if map.len() == 1
        ));
        for bad in [&b"[]"[..], b"null", b"\"x\"", b"{", b"\xff"] {
            assert!(
                matches!(parse_token_body(bad), Err(ProxyError::BadRequest(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn json_content_type_accepts_parameters_only() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/JSON; charset=utf-8"),
        );
        assert!(is_json(&h));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(!is_json(&h));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/jsonx"),
        );
        assert!(!is_json(&h));
    }
}
