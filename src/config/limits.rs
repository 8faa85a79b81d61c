//! `[limits]`: rate limits, where their state lives (`backend`, `[limits.redis]`), whose
//! `X-Forwarded-For` to believe, and the token route's body. [`LimitsConfig::policies`] is the
//! one list of named limits: validation here and the limiters in `limits/` both read it.

use std::borrow::Cow;
use std::path::PathBuf;

use serde::Deserialize;

pub use super::redis::{OnError, RedisConfig, RedisUrl};
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
    /// Where the limits' state lives: this pod (`local`) or Redis, shared by every replica.
    pub backend: Backend,
    /// The Redis backend's settings (read only with `backend = "redis"`).
    pub redis: RedisConfig,
    /// Keys one local limiter may hold; past it, the least recently seen go (memory stays
    /// bounded, and a key that keeps coming back stays limited).
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
            backend: Backend::Local,
            redis: RedisConfig::default(),
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

    /// As configured: `burst` left out means `requests`.
    pub(crate) fn with_optional_burst(
        requests: u32,
        period: PositiveDuration,
        burst: Option<u32>,
    ) -> Self {
        Self {
            requests,
            period,
            burst,
        }
    }

    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.requests)
    }
}

pub(super) fn one_minute() -> PositiveDuration {
    PositiveDuration::secs(60)
}

/// Where rate-limit state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// In this process: each replica counts on its own.
    Local,
    /// In Redis (or Valkey): one count for the whole fleet.
    Redis,
}

impl Backend {
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        match s {
            "local" => Ok(Self::Local),
            "redis" => Ok(Self::Redis),
            _ => Err(format!("`{s}`: expected `local` or `redis`")),
        }
    }
}

/// What a key is counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyedBy {
    /// The client IP (IPv6 by /64).
    Ip,
    /// The verified user id.
    User,
    /// One count for everyone.
    Nothing,
}

/// One named limit: the registry entry that validation, the limiters, maintenance, the admin
/// gauges and the metrics all read. `name` labels metrics and the `RateLimit` headers; `id`
/// is unique (it names the Redis key space), e.g. `forward_ip:/api/upload`.
#[derive(Debug, Clone)]
pub struct PolicySpec {
    pub name: Cow<'static, str>,
    pub id: String,
    /// Where a bad value is reported (`limits.token_per_ip`).
    pub setting: String,
    pub rate: RateConfig,
    pub keyed_by: KeyedBy,
}

impl PolicySpec {
    pub fn new(
        name: impl Into<Cow<'static, str>>,
        id: impl Into<String>,
        setting: impl Into<String>,
        rate: RateConfig,
        keyed_by: KeyedBy,
    ) -> Self {
        Self {
            name: name.into(),
            id: id.into(),
            setting: setting.into(),
            rate,
            keyed_by,
        }
    }

    /// A policy configured elsewhere (a route's own) validates itself with this too.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.rate.requests > 0 && self.rate.burst() == 0 {
            return Err(ConfigError::invalid(format!(
                "{}: burst must be at least 1 (or set requests = 0 to switch it off)",
                self.setting
            )));
        }
        Ok(())
    }
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
    /// Valid but probably not meant: said by `check-config` and at start.
    pub(super) fn warnings(&self) -> Vec<String> {
        let redis = &self.redis;
        let mut warnings = Vec::new();
        if self.backend == Backend::Redis
            && redis.on_error == super::OnError::Local
            && redis.replicas_hint.is_none()
        {
            warnings.push(
                "limits.redis.on_error = \"local\" without replicas_hint: while Redis is away \
                 every replica allows the whole limit, so the fleet allows it once per replica; \
                 set replicas_hint to the Deployment's replicas"
                    .into(),
            );
        }
        warnings
    }

    /// Every named limit this section configures, switched-off ones included (the limiters
    /// skip those). A limit configured elsewhere (a route's own) is one more [`PolicySpec`]
    /// handed to `Limits` beside these.
    pub fn policies(&self) -> Vec<PolicySpec> {
        let mut specs = vec![
            PolicySpec::new(
                "token_ip",
                "token_ip",
                "limits.token_per_ip",
                self.token_per_ip.clone(),
                KeyedBy::Ip,
            ),
            PolicySpec::new(
                "token_user",
                "token_user",
                "limits.token_per_user",
                self.token_per_user.clone(),
                KeyedBy::User,
            ),
        ];
        specs.extend(self.token_global.as_ref().map(|rate| {
            PolicySpec::new(
                "token_global",
                "token_global",
                "limits.token_global",
                rate.clone(),
                KeyedBy::Nothing,
            )
        }));
        specs.extend(self.forward.iter().map(|f| {
            PolicySpec::new(
                "forward_ip",
                format!("forward_ip:{}", f.prefix),
                format!("limits.forward `{}`", f.prefix),
                f.rate.clone(),
                KeyedBy::Ip,
            )
        }));
        specs
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for spec in self.policies() {
            spec.validate()?;
        }
        for (i, f) in self.forward.iter().enumerate() {
            if !f.prefix.starts_with('/') {
                return Err(ConfigError::invalid(format!(
                    "limits.forward prefix `{}` must start with /",
                    f.prefix
                )));
            }
            // Matched case-insensitively, segment-wise: a second spelling would never match.
            let same = |other: &ForwardLimit| {
                let plain = |p: &str| p.trim_end_matches('/').to_ascii_lowercase();
                plain(&other.prefix) == plain(&f.prefix)
            };
            if self.forward[..i].iter().any(same) {
                return Err(ConfigError::invalid(format!(
                    "limits.forward prefix `{}` is given twice (prefixes match in any case, \
                     with or without a trailing /)",
                    f.prefix
                )));
            }
        }
        if self.max_keys == 0 || self.token_body_bytes == 0 {
            return Err(ConfigError::invalid(
                "limits.max_keys and limits.token_body_bytes must be greater than zero",
            ));
        }
        self.redis.validate()
    }

    /// The Redis password file, resolved by the caller, when the environment gave none.
    pub(crate) fn redis_password_file(&self) -> Option<&PathBuf> {
        match self.redis.password {
            Some(_) => None,
            None => self.redis.password_file.as_ref(),
        }
    }
}
