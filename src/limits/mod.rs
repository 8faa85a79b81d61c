//! The rate limits in force: per client IP on the token route before any JWT work, per verified
//! user before minting, an optional global ceiling, and per-IP limits on forwarded prefixes.
//! One limiter is `limiter.rs`; the client address behind trusted proxies is `client_ip.rs`.

mod client_ip;
mod limiter;

pub(crate) use client_ip::{ClientIp, limit_key};
pub(crate) use limiter::Limiter;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::DefaultClock;
use http::HeaderMap;

use crate::config::LimitsConfig;

/// What a limiter advertises (`RateLimit-Policy`): `requests` per `window_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub(crate) requests: u32,
    pub(crate) window_secs: u64,
}

/// A request over a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    /// Which limiter (`token_ip`, `token_user`, `token_global`, `forward_ip`).
    pub(crate) limiter: &'static str,
    /// The IP or user id it was counted against (logged, never a token).
    pub(crate) key: String,
    pub(crate) retry_after: Duration,
    pub(crate) policy: Policy,
}

impl Limited {
    /// `Retry-After` in whole seconds, rounded up, at least 1.
    pub(crate) fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0)
    }
}

/// The limits in force.
pub struct Limits {
    client_ip: ClientIp,
    pub(crate) token_ip: Option<Limiter<IpAddr>>,
    pub(crate) token_user: Option<Limiter<Arc<str>>>,
    pub(crate) token_global: Option<Limiter<()>>,
    /// Per-IP limits on forwarded paths, by path prefix (first match wins).
    pub(crate) forward: Vec<(String, Limiter<IpAddr>)>,
    prune_interval: Duration,
}

impl Limits {
    pub fn new(config: &LimitsConfig) -> Self {
        let clock = DefaultClock::default();
        let max = config.max_keys;
        Self {
            client_ip: ClientIp::new(&config.trusted_proxies),
            token_ip: Limiter::new("token_ip", &config.token_per_ip, max, clock.clone()),
            token_user: Limiter::new("token_user", &config.token_per_user, max, clock.clone()),
            token_global: config
                .token_global
                .as_ref()
                .and_then(|rate| Limiter::new("token_global", rate, 1, clock.clone())),
            forward: config
                .forward
                .iter()
                .filter_map(|f| {
                    Limiter::new("forward_ip", &f.rate, max, clock.clone())
                        .map(|l| (f.prefix.clone(), l))
                })
                .collect(),
            prune_interval: config.prune_interval.0,
        }
    }

    /// The address the limits count against ([`ClientIp::of`]).
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        self.client_ip.of(peer, headers)
    }

    /// Token route, before any JWT work: per IP, then the global ceiling.
    pub fn check_token_ip(&self, ip: IpAddr) -> Result<(), Limited> {
        if let Some(limiter) = &self.token_ip {
            limiter.check(&limit_key(ip), || ip.to_string())?;
        }
        if let Some(limiter) = &self.token_global {
            limiter.check(&(), || "all clients".into())?;
        }
        Ok(())
    }

    /// Token route, after verification, before minting.
    pub(crate) fn check_token_user(&self, user: &Arc<str>) -> Result<(), Limited> {
        match &self.token_user {
            Some(limiter) => limiter.check(user, || user.to_string()).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Forwarded paths under a configured prefix.
    pub(crate) fn check_forward(&self, path: &str, ip: IpAddr) -> Result<(), Limited> {
        match self
            .forward
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
        {
            Some((_, limiter)) => limiter.check(&limit_key(ip), || ip.to_string()).map(|_| ()),
            None => Ok(()),
        }
    }

    pub(crate) fn has_forward_limits(&self) -> bool {
        !self.forward.is_empty()
    }

    /// One maintenance pass over every keyed limiter.
    pub(crate) fn maintain(&self) {
        if let Some(l) = &self.token_ip {
            l.maintain();
        }
        if let Some(l) = &self.token_user {
            l.maintain();
        }
        for (_, l) in &self.forward {
            l.maintain();
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
