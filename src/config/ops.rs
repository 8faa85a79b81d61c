//! `[log]` and `[admin]`: what the proxy logs, and where its health and metrics are served.

use std::net::SocketAddr;

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `trace`, `debug`, `info`, `warn` or `error`; `RUST_LOG` wins when set.
    pub level: LogLevel,
    /// `text` (human) or `json` (one object per line).
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The admin listener: plain HTTP, never on the public port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// `false` runs without `/healthz`, `/readyz` and `/metrics`.
    pub enabled: bool,
    /// Where they are served. In a pod, `0.0.0.0:9090` so the kubelet and Prometheus reach it.
    pub listen: SocketAddr,
    /// `/readyz` also requires the upstream: a TCP connect to `upstream.url`, or a `2xx` from
    /// `upstream.health_path` when set, checked at most once a second.
    pub ready_requires_upstream: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            ready_requires_upstream: false,
        }
    }
}
