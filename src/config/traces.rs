//! `[tracing]`: W3C trace context and OpenTelemetry export of the proxy's spans. Off unless an
//! OTLP endpoint is set; even then the proxy starts no traces of its own unless
//! `sample_ratio` says so, and only continues the sampled ones that arrive.

use serde::Deserialize;

use super::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// Where spans go: `http://collector:4318` (OTLP/HTTP, protobuf; `/v1/traces` is added)
    /// or `http://collector:4317` with `protocol = "grpc"`. No export when unset.
    pub otlp_endpoint: Option<String>,
    pub protocol: OtlpProtocol,
    /// The share of requests without a `traceparent` that start a trace (0.0 to 1.0).
    pub sample_ratio: f64,
    /// Spans waiting for export at most; past it, new spans are dropped (and counted).
    pub queue_size: usize,
    /// Put the verified user id on the request span (`enduser.id`).
    pub include_user_id: bool,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OtlpProtocol {
    #[default]
    Http,
    Grpc,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            protocol: OtlpProtocol::Http,
            sample_ratio: 0.0,
            queue_size: 2048,
            include_user_id: false,
            service_name: "stream-token-proxy".into(),
        }
    }
}

impl TracingConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(ConfigError::invalid(
                "tracing.sample_ratio must be between 0.0 and 1.0",
            ));
        }
        if self.queue_size == 0 {
            return Err(ConfigError::invalid(
                "tracing.queue_size must be greater than zero",
            ));
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            let uri: http::Uri = endpoint.parse().map_err(|_| {
                ConfigError::invalid(format!("tracing.otlp_endpoint `{endpoint}` is not a URL"))
            })?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(ConfigError::invalid(format!(
                    "tracing.otlp_endpoint `{endpoint}` must be http://host:port or https://..."
                )));
            }
        }
        Ok(())
    }
}
