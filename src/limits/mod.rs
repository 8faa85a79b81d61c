//! The rate limits in force, behind one seam: [`Limits::check`] counts a key against a named
//! policy. The policies are one registry (`config::LimitsConfig::policies`, plus any a caller
//! adds) that the limiters, maintenance, the admin gauges and the metrics all read. The token
//! route checks per client IP before any JWT work, per verified user before minting, and an
//! optional global ceiling; `[[limits.forward]]` prefixes and the routes' own limits are
//! policies too (the route table says which one a path meets).
//!
//! Backends: `local` counts in this process (`local.rs`, governor over a bounded store);
//! `redis` counts in Redis for the whole fleet (`redis.rs`, a GCRA script), with a local first
//! tier in front (a key Redis just refused is refused here until its retry time, without
//! asking again) and `on_error` behind (local counting with the quota divided by
//! `replicas_hint`, allow, or deny) while Redis cannot answer (`breaker.rs`); hot keys share
//! calls and large bursts reserve cells (`batch.rs`). The client
//! address behind trusted proxies is `client_ip.rs`.

mod batch;
mod breaker;
mod client_ip;
mod local;
mod redis;

pub(crate) use client_ip::{ClientIp, limit_key};
pub use redis::RedisSetupError;

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;
use quick_cache::sync::Cache;

use self::local::{Gcra, LocalLimiter};
use self::redis::{RedisBackend, Verdict};
use crate::config::{Backend, KeyedBy, LimitsConfig, OnError, PolicySpec, RedisConfig};
use crate::metrics::{BackendOutcome, Metrics};
use crate::ops::traces::{self, SpanKind};

/// What a limiter advertises (`RateLimit-Policy`): `requests` per `window_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub(crate) requests: u32,
    pub(crate) window_secs: u64,
}

/// A request over a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    /// Which policy (`token_ip`, `token_user`, `token_global`, `forward_ip`, ...).
    pub(crate) limiter: &'static str,
    /// The IP or user id it was counted against (logged, never a token).
    pub(crate) key: String,
    pub(crate) retry_after: Duration,
    pub(crate) policy: Policy,
}

impl Limited {
    /// `Retry-After` in whole seconds, rounded up, at least 1.
    pub(crate) fn retry_after_secs(&self) -> u64 {
        (self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0)).max(1)
    }
}

/// What a request is counted by: a client IP (IPv6 by /64), a user id, or nothing (one count
/// for everyone).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum LimitKey {
    Ip(IpAddr),
    User(Arc<str>),
    All,
}

impl LimitKey {
    /// The address's key: IPv6 by /64.
    pub(crate) fn ip(ip: IpAddr) -> Self {
        Self::Ip(limit_key(ip))
    }
}

impl fmt::Display for LimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(ip) => write!(f, "{ip}"),
            Self::User(user) => f.write_str(user),
            Self::All => f.write_str("all clients"),
        }
    }
}

/// A policy's place in the registry, looked up once by its id ([`Limits::policy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PolicyId(usize);

/// One named policy and its state.
struct Entry {
    name: &'static str,
    /// Unique; names the policy's keys in Redis.
    id: String,
    keyed_by: KeyedBy,
    policy: Policy,
    gcra: Gcra,
    /// The counting in this process: all of it (`local`), or the `on_error = "local"`
    /// fallback with the quota divided by `replicas_hint` (`redis`).
    local: Option<LocalLimiter<LimitKey>>,
    /// `redis`: keys Redis refused, until when (the first tier).
    refused: Option<Cache<LimitKey, Instant>>,
}

/// The limits in force.
pub struct Limits {
    client_ip: ClientIp,
    entries: Vec<Entry>,
    token_ip: Option<PolicyId>,
    token_user: Option<PolicyId>,
    token_global: Option<PolicyId>,
    /// Per-IP limits on forwarded paths, by path prefix (first match wins).
    forward: Vec<(String, PolicyId)>,
    redis: Option<RedisBackend>,
    metrics: Arc<Metrics>,
    prune_interval: Duration,
}

impl Limits {
    /// The section's limits counted in this process, whatever `backend` says (benches, fuzz
    /// targets, tests of the local limiter).
    pub fn new(config: &LimitsConfig) -> Self {
        let metrics = Arc::new(Metrics::new());
        Self::build(config, config.policies(), None, metrics)
    }

    /// The limits `config` and `extra` name, on the configured backend. Does not wait for
    /// Redis: until it answers, `on_error` applies.
    pub(crate) fn start(
        config: &LimitsConfig,
        extra: Vec<PolicySpec>,
        ca_pem: Option<Vec<u8>>,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, RedisSetupError> {
        let redis = match config.backend {
            Backend::Local => None,
            Backend::Redis => Some(RedisBackend::start(&config.redis, ca_pem, metrics)?),
        };
        let mut specs = config.policies();
        specs.extend(extra);
        Ok(Self::build(config, specs, redis, metrics.clone()))
    }

    /// Builds (without connecting) the Redis client `start` would: the URL and the CA (for
    /// `check-config`).
    pub(crate) fn check_redis_client(
        config: &RedisConfig,
        ca_pem: Option<Vec<u8>>,
    ) -> Result<(), RedisSetupError> {
        self::redis::client(config, ca_pem).map(drop)
    }

    fn build(
        config: &LimitsConfig,
        specs: Vec<PolicySpec>,
        redis: Option<RedisBackend>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let entries = specs
            .into_iter()
            .filter_map(|spec| Entry::new(spec, config, redis.is_some()))
            .collect();
        let mut limits = Self {
            client_ip: ClientIp::new(&config.trusted_proxies),
            entries,
            token_ip: None,
            token_user: None,
            token_global: None,
            forward: Vec::new(),
            redis,
            metrics,
            prune_interval: config.prune_interval.0,
        };
        limits.token_ip = limits.policy("token_ip");
        limits.token_user = limits.policy("token_user");
        limits.token_global = limits.policy("token_global");
        limits.forward = config
            .forward
            .iter()
            .filter_map(|f| {
                let policy = limits.policy(&format!("forward_ip:{}", f.prefix))?;
                Some((f.prefix.clone(), policy))
            })
            .collect();
        limits
    }

    /// The policy registered as `id` (a [`PolicySpec::id`]); `None` when there is none or it
    /// is switched off (`requests = 0`): then nothing is limited.
    pub(crate) fn policy(&self, id: &str) -> Option<PolicyId> {
        self.entries.iter().position(|e| e.id == id).map(PolicyId)
    }

    /// The address the limits count against ([`ClientIp::of`]).
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        self.client_ip.of(peer, headers)
    }

    /// Counts one request for `key` against `policy`: on the backend, behind the first tier,
    /// `on_error` when the backend cannot answer. Waits at most `limits.redis.timeout`
    /// (plus a 5 ms margin).
    pub(crate) async fn check(&self, policy: PolicyId, key: &LimitKey) -> Result<(), Limited> {
        let Some(entry) = self.entries.get(policy.0) else {
            return Ok(());
        };
        let Some(redis) = &self.redis else {
            return entry.check_local(key);
        };
        if let Some(wait) = entry.refused_for(key) {
            self.metrics.backend_request(BackendOutcome::FirstTier);
            return Err(entry.limited(key, wait));
        }
        // In a traced request, the Redis call is a CLIENT span (named by the policy, never
        // by the key it counts).
        let mut span = traces::current_child("rate limit check", SpanKind::Client);
        span.set("rate_limit.policy", entry.name);
        let verdict = redis.check(&entry.id, &key.to_string(), entry.gcra).await;
        if verdict == Verdict::Unavailable {
            span.fail("backend_unavailable");
        }
        drop(span);
        match verdict {
            Verdict::Allowed => Ok(()),
            Verdict::Limited(wait) => {
                entry.refuse(key, wait);
                Err(entry.limited(key, wait))
            }
            Verdict::Unavailable => match redis.on_error() {
                OnError::Local => entry.check_local(key),
                OnError::Allow => Ok(()),
                OnError::Deny => Err(entry.limited(key, Duration::from_secs(1))),
            },
        }
    }

    /// Token route, before any JWT work: per IP, then the global ceiling.
    pub async fn check_token_ip(&self, ip: IpAddr) -> Result<(), Limited> {
        if let Some(policy) = self.token_ip {
            self.check(policy, &LimitKey::ip(ip)).await?;
        }
        if let Some(policy) = self.token_global {
            self.check(policy, &LimitKey::All).await?;
        }
        Ok(())
    }

    /// Token route, after verification, before minting.
    pub(crate) async fn check_token_user(&self, user: &Arc<str>) -> Result<(), Limited> {
        match self.token_user {
            Some(policy) => self.check(policy, &LimitKey::User(user.clone())).await,
            None => Ok(()),
        }
    }

    /// The `[[limits.forward]]` prefixes with their policies, in config order (the route
    /// table matches them on the path, as it matches its routes).
    pub(crate) fn forward_policies(&self) -> &[(String, PolicyId)] {
        &self.forward
    }

    /// `true` while the shared backend is skipped and `on_error` applies (`/readyz` says so).
    pub(crate) fn degraded(&self) -> bool {
        self.redis.as_ref().is_some_and(RedisBackend::degraded)
    }

    /// Keys held in this process, by policy name (policies sharing a name are summed).
    pub(crate) fn keys_by_name(&self) -> Vec<(&'static str, usize)> {
        let mut out: Vec<(&'static str, usize)> = Vec::new();
        for entry in &self.entries {
            let keys = entry.keys();
            match out.iter_mut().find(|(name, _)| *name == entry.name) {
                Some((_, sum)) => *sum += keys,
                None => out.push((entry.name, keys)),
            }
        }
        out
    }

    /// One maintenance pass over every policy's state.
    pub(crate) fn maintain(&self) {
        for entry in &self.entries {
            entry.maintain();
        }
    }

    /// Runs [`Limits::maintain`] every `limits.prune_interval`, forever.
    pub(crate) async fn run_maintenance(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.prune_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.maintain();
        }
    }
}

impl Entry {
    /// `None` when the policy is switched off.
    fn new(spec: PolicySpec, config: &LimitsConfig, shared: bool) -> Option<Self> {
        let gcra = Gcra::new(&spec.rate)?;
        let clock = governor::clock::DefaultClock::default();
        let max_keys = match spec.keyed_by {
            KeyedBy::Nothing => 1,
            KeyedBy::Ip | KeyedBy::User => config.max_keys,
        };
        let local = match (shared, config.redis.on_error) {
            (false, _) => LocalLimiter::new(gcra, max_keys, clock),
            (true, OnError::Local) => {
                let replicas = config.redis.replicas_hint.unwrap_or(1);
                LocalLimiter::new(gcra.divided(replicas), max_keys, clock)
            }
            (true, OnError::Allow | OnError::Deny) => None,
        };
        Some(Self {
            name: static_name(spec.name),
            id: spec.id,
            keyed_by: spec.keyed_by,
            policy: Policy {
                requests: gcra.requests,
                window_secs: spec.rate.period.as_secs().max(1),
            },
            gcra,
            local,
            refused: shared.then(|| Cache::new(max_keys.max(1))),
        })
    }

    fn limited(&self, key: &LimitKey, wait: Duration) -> Limited {
        Limited {
            limiter: self.name,
            key: key.to_string(),
            retry_after: wait,
            policy: self.policy,
        }
    }

    fn check_local(&self, key: &LimitKey) -> Result<(), Limited> {
        match &self.local {
            Some(local) => local.check(key).map_err(|wait| self.limited(key, wait)),
            None => Ok(()),
        }
    }

    /// How long the first tier still refuses `key`, if it does.
    fn refused_for(&self, key: &LimitKey) -> Option<Duration> {
        let until = self.refused.as_ref()?.get(key)?;
        until.checked_duration_since(Instant::now())
    }

    fn refuse(&self, key: &LimitKey, wait: Duration) {
        if let Some(refused) = &self.refused {
            refused.insert(key.clone(), Instant::now() + wait);
        }
    }

    fn keys(&self) -> usize {
        let local = self.local.as_ref().map_or(0, LocalLimiter::len);
        match self.keyed_by {
            KeyedBy::Nothing => 0,
            KeyedBy::Ip | KeyedBy::User => local,
        }
    }

    fn maintain(&self) {
        if let Some(local) = &self.local {
            local.maintain();
        }
        if let Some(refused) = &self.refused {
            let now = Instant::now();
            refused.retain(|_, until| *until > now);
        }
    }
}

/// Policy names label metrics and headers as `&'static str`. Built-in names are literals; a
/// name from the configuration is leaked once at start (the set is fixed by the file).
fn static_name(name: Cow<'static, str>) -> &'static str {
    match name {
        Cow::Borrowed(name) => name,
        Cow::Owned(name) => Box::leak(name.into_boxed_str()),
    }
}
