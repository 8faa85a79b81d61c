//! CORS for the token route and the routes that need a session: exact origins from `[cors]`,
//! no wildcard; a preflight from any other origin gets 403 without CORS headers. Requests
//! without `Origin` (the mobile app) are not affected.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

use crate::config::CorsConfig;
use crate::error::ProxyError;
use crate::routes::body::ProxyBody;

/// The methods a preflight is granted.
pub(crate) const ALLOW: &str = "POST, OPTIONS";

/// CORS for the token route: exact origins only, no wildcard.
pub(crate) struct Cors {
    origins: Vec<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

impl Cors {
    pub(crate) fn new(config: &CorsConfig) -> Self {
        Self {
            origins: config
                .allowed_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect(),
            credentials: config.allow_credentials,
            max_age: HeaderValue::from(config.max_age.as_secs()),
        }
    }

    /// The request's `Origin`, if it is one we allow.
    pub(crate) fn allowed_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        self.origins
            .iter()
            .any(|o| o == origin)
            .then(|| origin.clone())
    }

    /// Answers `OPTIONS`: a preflight from an allowed origin gets the CORS grant; from any other
    /// origin, 403 without CORS headers; without `Origin`, a plain `Allow`.
    pub(crate) fn preflight(&self, headers: &HeaderMap) -> Result<Response<ProxyBody>, ProxyError> {
        self.preflight_allowing(headers, &HeaderValue::from_static(ALLOW))
    }

    /// [`preflight`](Self::preflight) for a route that allows the methods `allow`.
    pub(crate) fn preflight_allowing(
        &self,
        headers: &HeaderMap,
        allow: &HeaderValue,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let mut response = Response::new(ProxyBody::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let out = response.headers_mut();
        out.insert(header::ALLOW, allow.clone());
        if headers.contains_key(header::ORIGIN) {
            let origin = self
                .allowed_origin(headers)
                .ok_or(ProxyError::OriginNotAllowed)?;
            out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, allow.clone());
            out.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("authorization, content-type"),
            );
            out.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
            if self.credentials {
                out.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
            out.insert(header::VARY, HeaderValue::from_static("Origin"));
        }
        Ok(response)
    }

    /// Adds the CORS grant to a (non-preflight) answer for an allowed origin; `Vary: Origin`
    /// always, since the answer depends on it.
    pub(crate) fn decorate(&self, response: &mut Response<ProxyBody>, origin: Option<HeaderValue>) {
        let out = response.headers_mut();
        out.append(header::VARY, HeaderValue::from_static("Origin"));
        if let Some(origin) = origin {
            out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            out.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static("retry-after, ratelimit, ratelimit-policy"),
            );
            if self.credentials {
                out.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
        }
    }
}
