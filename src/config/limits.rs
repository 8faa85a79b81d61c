//! `[limits]`: rate limits, whose `X-Forwarded-For` to believe, and the token route's body.

use serde::Deserialize;

use super::{CidrNet, ConfigError, PositiveDuration};

/// Rate limits and request bounds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Token route, per client IP (IPv6: per /64), checked before any JWT work.
    pub token_per_ip: RateConfig,
    /// Token route, per verified user, checked before minting.
    pub token_per_user: RateConfig,
    /// Token route, all clients together. Off unless set.
    pub token_global: Option<RateConfig>,
    /// Per-IP limits on forwarded paths, by path prefix. None by default (Node decides).
    pub forward: Vec<ForwardLimit>,
    /// Proxies (CIDRs) whose `X-Forwarded-For` is believed when finding the client's IP.
    pub trusted_proxies: Vec<CidrNet>,
    /// Keys one limiter may hold; past it, its state starts over (memory stays bounded).
    pub max_keys: usize,
    /// How often idle limiter state is pruned.
    pub prune_interval: PositiveDuration,
    /// Largest token-route body, in bytes; over it: 413, without reading the rest.
    pub token_body_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            token_per_ip: RateConfig::new(60, PositiveDuration::secs(60), 20),
            token_per_user: RateConfig::new(20, PositiveDuration::secs(60), 10),
            token_global: None,
            forward: Vec::new(),
            trusted_proxies: Vec::new(),
            max_keys: 100_000,
            prune_interval: PositiveDuration::secs(10),
            token_body_bytes: 16 * 1024,
        }
    }
}

/// `requests` per `period` (default one minute), with up to `burst` at once (default:
/// `requests`). `requests = 0` switches the limit off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateConfig {
    pub requests: u32,
    #[serde(default = "one_minute")]
    pub period: PositiveDuration,
    #[serde(default)]
    burst: Option<u32>,
}

impl RateConfig {
    pub fn new(requests: u32, period: PositiveDuration, burst: u32) -> Self {
        Self {
            requests,
            period,
            burst: Some(burst),
        }
    }

    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.requests)
    }
}

fn one_minute() -> PositiveDuration {
    PositiveDuration::secs(60)
}

/// A per-IP limit on forwarded paths starting with `prefix`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardLimit {
    pub prefix: String,
    #[serde(flatten)]
    pub rate: RateConfig,
}

impl LimitsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let rates = [
            ("limits.token_per_ip", &self.token_per_ip),
            ("limits.token_per_user", &self.token_per_user),
        ];
        let global = self
            .token_global
            .as_ref()
            .map(|r| ("limits.token_global", r));
        for (name, rate) in rates.into_iter().chain(global) {
            if rate.requests > 0 && rate.burst() == 0 {
                return Err(ConfigError::invalid(format!(
                    "{name}.burst must be at least 1 (or set requests = 0 to switch it off)"
                )));
            }
        }
        for f in &self.forward {
            if !f.prefix.starts_with('/') {
                return Err(ConfigError::invalid(format!(
                    "limits.forward prefix `{}` must start with /",
                    f.prefix
                )));
            }
            if f.rate.requests > 0 && f.rate.burst() == 0 {
                return Err(ConfigError::invalid(format!(
                    "limits.forward `{}`: burst must be at least 1",
                    f.prefix
                )));
            }
        }
        if self.max_keys == 0 || self.token_body_bytes == 0 {
            return Err(ConfigError::invalid(
                "limits.max_keys and limits.token_body_bytes must be greater than zero",
            ));
        }
        Ok(())
    }
}
