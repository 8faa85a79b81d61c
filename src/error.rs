//! The one mapping from errors to HTTP responses: status, JSON body, auth headers, and whose
//! fault it was.
//!
//! Handlers return `Result<_, ProxyError>`; [`ProxyError::to_response`] is the only place an
//! error becomes a response. Messages sent to clients are fixed sentences: they never carry
//! tokens, secrets, upstream addresses or internal error text (those go to the log).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};

use crate::auth::AuthError;
use crate::limits::Limited;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Who caused a failure; a label for logs and metrics (after Pingora's error sources).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The client sent something we refuse.
    Client,
    /// The upstream Node server failed or was too slow.
    Upstream,
    /// The proxy itself could not do its job (or is not ready yet).
    Internal,
}

impl Fault {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Upstream => "upstream",
            Self::Internal => "internal",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot connect to the upstream: {0}")]
    UpstreamConnect(#[source] BoxError),
    #[error("the upstream sent no response within {0:?}")]
    UpstreamTimeout(Duration),
    #[error("the upstream broke the exchange: {0}")]
    UpstreamProtocol(#[source] BoxError),
    #[error("request target cannot be forwarded: {0}")]
    BadTarget(String),
    #[error("the path starts with // or /\\ (Node's URL parser reads a host there)")]
    AmbiguousPath,
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(http::Method, &'static str),
    #[error("{0} is not supported by this proxy")]
    NotImplemented(&'static str),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("the body's userId is not the verified user {user_id}")]
    UserMismatch { user_id: Arc<str> },
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("the body is not application/json")]
    UnsupportedMediaType,
    #[error("the body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("the request body did not arrive within {0:?}")]
    RequestTimeout(Duration),
    #[error("CORS preflight from an origin that is not allowed")]
    OriginNotAllowed,
    #[error("rate limited by {} for {} (retry in {:?})", .0.limiter, .0.key, .0.retry_after)]
    RateLimited(Limited),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::UpstreamConnect(_) | Self::UpstreamProtocol(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::BadTarget(_) | Self::BadRequest(_) | Self::AmbiguousPath => {
                StatusCode::BAD_REQUEST
            }
            Self::MethodNotAllowed(..) => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Self::Auth(AuthError::UnauthorizedParty { .. }) => StatusCode::FORBIDDEN,
            Self::Auth(AuthError::KeysUnavailable) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Auth(_) => StatusCode::UNAUTHORIZED,
            Self::UserMismatch { .. } | Self::OriginNotAllowed => StatusCode::FORBIDDEN,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable machine-readable code, the `error` field of the JSON body.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::UpstreamConnect(_) => "upstream_unavailable",
            Self::UpstreamTimeout(_) => "upstream_timeout",
            Self::UpstreamProtocol(_) => "bad_gateway",
            Self::BadTarget(_) | Self::BadRequest(_) | Self::AmbiguousPath => "bad_request",
            Self::MethodNotAllowed(..) => "method_not_allowed",
            Self::NotImplemented(_) => "not_implemented",
            Self::Auth(e) => e.code(),
            Self::UserMismatch { .. } => "user_mismatch",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::RequestTimeout(_) => "request_timeout",
            Self::OriginNotAllowed => "origin_not_allowed",
            Self::RateLimited(_) => "rate_limited",
            Self::Internal(_) => "internal_error",
        }
    }

    /// The sentence clients see.
    fn public_message(&self) -> &'static str {
        match self {
            Self::UpstreamConnect(_) => "The backend server is not reachable right now.",
            Self::UpstreamTimeout(_) => "The backend server did not answer in time.",
            Self::UpstreamProtocol(_) => "The backend server closed the connection unexpectedly.",
            Self::BadTarget(_) => "The request target cannot be forwarded.",
            Self::AmbiguousPath => "The request path must not start with // or /\\.",
            Self::MethodNotAllowed(..) => "This method is not allowed here.",
            Self::NotImplemented(_) => "This proxy does not support that feature of the request.",
            Self::Auth(e) => auth_message(e),
            Self::UserMismatch { .. } => {
                "userId in the body does not match the signed-in user; omit it or send your own."
            }
            Self::BadRequest(why) => why,
            Self::UnsupportedMediaType => "Send the body as application/json, or no body at all.",
            Self::PayloadTooLarge(_) => "The request body is too large.",
            Self::RequestTimeout(_) => "The request body did not arrive in time.",
            Self::OriginNotAllowed => "This origin is not allowed to call this route.",
            Self::RateLimited(_) => "Too many requests; retry after the time in Retry-After.",
            Self::Internal(_) => "The proxy failed to handle the request.",
        }
    }

    pub(crate) fn fault(&self) -> Fault {
        match self {
            Self::UpstreamConnect(_) | Self::UpstreamTimeout(_) | Self::UpstreamProtocol(_) => {
                Fault::Upstream
            }
            Self::Auth(AuthError::KeysUnavailable) | Self::Internal(_) => Fault::Internal,
            _ => Fault::Client,
        }
    }

    pub(crate) fn to_response(&self) -> Response<Bytes> {
        let mut response = json_response(self.status(), self.code(), self.public_message());
        let headers = response.headers_mut();
        match self {
            Self::MethodNotAllowed(_, allow) => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            Self::Auth(AuthError::KeysUnavailable) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            }
            Self::RateLimited(limited) => {
                // IETF draft-ietf-httpapi-ratelimit-headers: the policy and what is left of it.
                let secs = limited.retry_after_secs();
                let policy = format!(
                    "\"{}\";q={};w={}",
                    limited.limiter, limited.policy.requests, limited.policy.window_secs
                );
                let state = format!("\"{}\";r=0;t={secs}", limited.limiter);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
                for (name, value) in [("ratelimit-policy", policy), ("ratelimit", state)] {
                    if let Ok(value) = HeaderValue::from_str(&value) {
                        headers.insert(name, value);
                    }
                }
            }
            Self::Auth(e) if self.status() == StatusCode::UNAUTHORIZED => {
                headers.insert(header::WWW_AUTHENTICATE, www_authenticate(e));
            }
            _ => {}
        }
        response
    }
}

fn auth_message(e: &AuthError) -> &'static str {
    match e {
        AuthError::MissingCredentials => {
            "Send the Clerk session token as Authorization: Bearer <token>."
        }
        AuthError::InvalidAuthorization(_) => {
            "The Authorization header must be exactly: Bearer <Clerk session token>."
        }
        AuthError::Malformed(_) => "The session token is not a well-formed JWT.",
        AuthError::UnsupportedAlgorithm => {
            "The session token's signature algorithm is not accepted."
        }
        AuthError::BadSignature => "The session token's signature is invalid.",
        AuthError::UnknownKey => "The session token was signed with an unknown key.",
        AuthError::Expired => "The session token has expired; get a fresh one from Clerk.",
        AuthError::NotYetValid => "The session token is not valid yet; check the device clock.",
        AuthError::WrongIssuer => "The session token comes from another Clerk instance.",
        AuthError::WrongTokenType(_) => {
            "Only a Clerk session token is accepted here, not a JWT template, machine or OAuth token."
        }
        AuthError::SessionPending => {
            "The session has pending tasks; finish signing in, then send a fresh session token."
        }
        AuthError::UnauthorizedParty { .. } => {
            "This app is not an authorized party for the session."
        }
        AuthError::InvalidSubject(_) => "The session's user id cannot be used as a Stream user id.",
        AuthError::KeysUnavailable => "Session verification keys are loading; retry shortly.",
    }
}

/// RFC 6750 §3: no error code when credentials are missing, else `invalid_request` (header
/// shape) or `invalid_token`.
fn www_authenticate(e: &AuthError) -> HeaderValue {
    let value = match e {
        AuthError::MissingCredentials => "Bearer realm=\"stream-token-proxy\"".to_string(),
        AuthError::InvalidAuthorization(_) => format!(
            "Bearer realm=\"stream-token-proxy\", error=\"invalid_request\", error_description=\"{}\"",
            auth_message(e)
        ),
        _ => format!(
            "Bearer realm=\"stream-token-proxy\", error=\"invalid_token\", error_description=\"{}\"",
            auth_message(e)
        ),
    };
    // Built from fixed ASCII sentences without quotes: always a valid header value.
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

/// `{"error": code, "message": message}` with `no-store`, the shape of every error we send.
pub(crate) fn json_response(status: StatusCode, code: &str, message: &str) -> Response<Bytes> {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    let mut response = Response::new(Bytes::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_is_json_with_code_and_fixed_message() {
        let err = ProxyError::UpstreamConnect("connection refused to 10.1.2.3:3002".into());
        let response = err.to_response();
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let body = response.into_body();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"], "upstream_unavailable");
        assert!(
            !String::from_utf8_lossy(&body).contains("10.1.2.3"),
            "no internals leak"
        );
    }

    #[test]
    fn auth_errors_carry_rfc6750_headers() {
        let missing = ProxyError::Auth(AuthError::MissingCredentials).to_response();
        assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            missing.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"stream-token-proxy\""
        );
        let expired = ProxyError::Auth(AuthError::Expired).to_response();
        let value = expired.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap();
        assert!(value.contains("error=\"invalid_token\""), "{value}");
        let azp = ProxyError::Auth(AuthError::UnauthorizedParty {
            user_id: "u".into(),
        })
        .to_response();
        assert_eq!(azp.status(), StatusCode::FORBIDDEN);
        assert!(!azp.headers().contains_key(header::WWW_AUTHENTICATE));
        let loading = ProxyError::Auth(AuthError::KeysUnavailable).to_response();
        assert_eq!(loading.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(loading.headers()[header::RETRY_AFTER], "2");
    }
}
