//! `[upstream]` and `[forwarding]`: where the Node server is, how the proxy talks to it, and
//! which headers it sets or removes on the way.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, FieldName, PositiveDuration, UpstreamUrl, any_duration};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// The Node server, `http://host:port` (no path).
    pub url: UpstreamUrl,
    /// Connecting to the upstream must succeed within this time, or the client gets 502.
    pub connect_timeout: PositiveDuration,
    /// The upstream must send response headers within this time, or the client gets 504.
    pub response_timeout: PositiveDuration,
    /// Idle pooled connections are closed after this; keep it below the upstream's keep-alive
    /// timeout (Node: 5 s) or requests race the upstream closing the socket.
    pub pool_idle_timeout: PositiveDuration,
    /// Idle connections kept to the upstream, per worker thread.
    pub pool_max_idle: usize,
    /// Retry an idempotent, bodiless request once, on a new connection, when the upstream
    /// closed or reset its connection before answering.
    pub retry_idempotent: bool,
    /// The upstream's health check, `GET` by `/readyz` when `admin.ready_requires_upstream`
    /// (a `2xx` means ready); unset, a TCP connect is the check.
    pub health_path: Option<String>,
    /// A WebSocket tunnel with no bytes either way for this long is closed; `"0s"` = never.
    #[serde(deserialize_with = "any_duration")]
    pub tunnel_idle_timeout: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            url: UpstreamUrl::parse("http://127.0.0.1:3002").expect("valid literal"),
            connect_timeout: PositiveDuration::secs(2),
            response_timeout: PositiveDuration::secs(30),
            pool_idle_timeout: PositiveDuration::secs(4),
            pool_max_idle: 256,
            retry_idempotent: true,
            health_path: None,
            tunnel_idle_timeout: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardingConfig {
    /// Append the client address to `X-Forwarded-For`.
    pub x_forwarded_for: bool,
    /// Set `X-Forwarded-Proto` to `https` (or `http` without TLS).
    pub x_forwarded_proto: bool,
    /// Set `X-Forwarded-Host` to the `Host` (or `:authority`) the client used.
    pub x_forwarded_host: bool,
    /// Request headers removed before forwarding: the client must not choose what Node reads
    /// as its address, scheme, port or path prefix. Empty the list only behind a proxy that
    /// sets these itself.
    pub remove_request_headers: Vec<FieldName>,
}

impl Default for ForwardingConfig {
    fn default() -> Self {
        Self {
            x_forwarded_for: true,
            x_forwarded_proto: true,
            x_forwarded_host: true,
            remove_request_headers: [
                "forwarded",
                "x-real-ip",
                "x-forwarded-port",
                "x-forwarded-prefix",
            ]
            .into_iter()
            .map(|name| FieldName(http::HeaderName::from_static(name)))
            .collect(),
        }
    }
}

impl UpstreamConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        // Saturating: `Duration * 10` panics past u64::MAX seconds (fuzz/ target `config`).
        if self.pool_idle_timeout.0 >= self.response_timeout.0.saturating_mul(10) {
            return Err(ConfigError::invalid(
                "upstream.pool_idle_timeout is far longer than upstream.response_timeout; keep \
                 it below the upstream's keep-alive timeout (Node's default is 5s)",
            ));
        }
        if let Some(path) = &self.health_path
            && (!path.starts_with('/') || http::uri::PathAndQuery::try_from(path.as_str()).is_err())
        {
            return Err(ConfigError::invalid(
                "upstream.health_path must be a path starting with '/', e.g. \"/healthz\"",
            ));
        }
        Ok(())
    }
}
