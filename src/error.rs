//! The one mapping from errors to HTTP responses: status, JSON body, and whose fault it was.
//!
//! Handlers return `Result<_, ProxyError>`; [`ProxyError::to_response`] is the only place an
//! error becomes a response. Messages sent to clients are fixed sentences: they never carry
//! tokens, secrets, upstream addresses or internal error text (those go to the log).

use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};

use crate::body::ProxyBody;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Who caused a failure; a label for logs and metrics (after Pingora's error sources).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client sent something we refuse.
    Client,
    /// The upstream Node server failed or was too slow.
    Upstream,
    /// The proxy itself could not do its job.
    Internal,
}

impl Fault {
    pub fn as_str(self) -> &'static str {
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
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(http::Method, &'static str),
    #[error("{0} is not supported by this proxy")]
    NotImplemented(&'static str),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UpstreamConnect(_) | Self::UpstreamProtocol(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::BadTarget(_) => StatusCode::BAD_REQUEST,
            Self::MethodNotAllowed(..) => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// Stable machine-readable code, the `error` field of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UpstreamConnect(_) => "upstream_unavailable",
            Self::UpstreamTimeout(_) => "upstream_timeout",
            Self::UpstreamProtocol(_) => "bad_gateway",
            Self::BadTarget(_) => "bad_request",
            Self::MethodNotAllowed(..) => "method_not_allowed",
            Self::NotImplemented(_) => "not_implemented",
        }
    }

    /// The sentence clients see.
    fn public_message(&self) -> &'static str {
        match self {
            Self::UpstreamConnect(_) => "The backend server is not reachable right now.",
            Self::UpstreamTimeout(_) => "The backend server did not answer in time.",
            Self::UpstreamProtocol(_) => "The backend server closed the connection unexpectedly.",
            Self::BadTarget(_) => "The request target cannot be forwarded.",
            Self::MethodNotAllowed(..) => "This method is not allowed here.",
            Self::NotImplemented(_) => "This proxy does not support that method.",
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            Self::UpstreamConnect(_) | Self::UpstreamTimeout(_) | Self::UpstreamProtocol(_) => {
                Fault::Upstream
            }
            Self::BadTarget(_) | Self::MethodNotAllowed(..) | Self::NotImplemented(_) => {
                Fault::Client
            }
        }
    }

    pub fn to_response(&self) -> Response<ProxyBody> {
        let mut response = json_response(self.status(), self.code(), self.public_message());
        if let Self::MethodNotAllowed(_, allow) = self {
            response
                .headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

/// `{"error": code, "message": message}` with `no-store`, the shape of every error we send.
pub fn json_response(status: StatusCode, code: &str, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    let mut response = Response::new(ProxyBody::full(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn error_body_is_json_with_code_and_fixed_message() {
        let err = ProxyError::UpstreamConnect("connection refused to 10.1.2.3:3002".into());
        let response = err.to_response();
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"], "upstream_unavailable");
        assert!(
            !String::from_utf8_lossy(&body).contains("10.1.2.3"),
            "no internals leak"
        );
    }
}
