//! Rate limits (governor, GCRA) keyed by client IP and by verified user, and the client IP
//! itself: the TCP peer, or, behind a configured trusted proxy, the right-most untrusted address
//! of `X-Forwarded-For`.
//!
//! Keyed state is bounded: a maintenance pass drops keys whose bucket is full again
//! (`retain_recent`) and shrinks the map; if a flood of distinct keys still leaves more than
//! `limits.max_keys`, that limiter starts over empty (logged) rather than growing without bound.

use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use http::HeaderMap;
use ipnet::IpNet;
use tracing::warn;

use crate::config::{LimitsConfig, RateConfig};

type Inner<K, C> = RateLimiter<K, DashMapStateStore<K>, C, StateInformationMiddleware>;

/// Checks between two looks at the state size on the request path.
const SIZE_CHECK_EVERY: u64 = 4096;

/// What a limiter advertises (`RateLimit-Policy`): `requests` per `window_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub requests: u32,
    pub window_secs: u64,
}

/// A request over a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    /// Which limiter (`token_ip`, `token_user`, `token_global`, `forward_ip`).
    pub limiter: &'static str,
    /// The IP or user id it was counted against (logged, never a token).
    pub key: String,
    pub retry_after: Duration,
    pub policy: Policy,
}

impl Limited {
    /// `Retry-After` in whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0)
    }
}

/// One keyed limiter.
pub struct Limiter<K: Hash + Eq + Clone, C: Clock + Clone = DefaultClock> {
    name: &'static str,
    quota: Quota,
    clock: C,
    state: ArcSwap<Inner<K, C>>,
    policy: Policy,
    max_keys: usize,
    checks: AtomicU64,
    /// Times the state was reset for exceeding `max_keys`.
    pub resets: AtomicU64,
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> Limiter<K, C> {
    /// `None` when the limit is switched off (`requests = 0`).
    pub fn new(name: &'static str, rate: &RateConfig, max_keys: usize, clock: C) -> Option<Self> {
        let requests = NonZeroU32::new(rate.requests)?;
        let burst = NonZeroU32::new(rate.burst().max(1)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(rate.period.0 / requests.get())?.allow_burst(burst);
        Some(Self {
            name,
            quota,
            state: ArcSwap::from_pointee(Self::fresh(quota, &clock)),
            clock,
            policy: Policy {
                requests: requests.get(),
                window_secs: rate.period.as_secs().max(1),
            },
            max_keys,
            checks: AtomicU64::new(0),
            resets: AtomicU64::new(0),
        })
    }

    fn fresh(quota: Quota, clock: &C) -> Inner<K, C> {
        RateLimiter::dashmap_with_clock(quota, clock.clone())
            .with_middleware::<StateInformationMiddleware>()
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Counts one request for `key`. `Ok` carries the cells left in the burst.
    pub fn check(&self, key: &K, shown: impl FnOnce() -> String) -> Result<u32, Limited> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SIZE_CHECK_EVERY == SIZE_CHECK_EVERY - 1
            && self.len() > self.max_keys.saturating_mul(2)
        {
            self.reset("on the request path");
        }
        match self.state.load().check_key(key) {
            Ok(snapshot) => Ok(snapshot.remaining_burst_capacity()),
            Err(not_until) => Err(Limited {
                limiter: self.name,
                key: shown(),
                retry_after: not_until.wait_time_from(self.clock.now()),
                policy: self.policy,
            }),
        }
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.state.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops keys whose bucket is full again, shrinks, and resets if still over `max_keys`.
    pub fn maintain(&self) {
        let state = self.state.load();
        state.retain_recent();
        state.shrink_to_fit();
        if state.len() > self.max_keys {
            self.reset("after pruning");
        }
    }

    fn reset(&self, when: &str) {
        let keys = self.len();
        self.state
            .store(Arc::new(Self::fresh(self.quota, &self.clock)));
        self.resets.fetch_add(1, Ordering::Relaxed);
        warn!(
            limiter = self.name,
            keys,
            max_keys = self.max_keys,
            "rate-limit state over its cap {when}; starting it over empty"
        );
    }
}

/// The limits in force.
pub struct Limits {
    trusted: Vec<IpNet>,
    pub token_ip: Option<Limiter<IpAddr>>,
    pub token_user: Option<Limiter<Arc<str>>>,
    pub token_global: Option<Limiter<()>>,
    /// Per-IP limits on forwarded paths, by path prefix (first match wins).
    pub forward: Vec<(String, Limiter<IpAddr>)>,
    prune_interval: Duration,
}

impl Limits {
    pub fn new(config: &LimitsConfig) -> Self {
        let clock = DefaultClock::default();
        let max = config.max_keys;
        Self {
            trusted: config.trusted_proxies.iter().map(|c| c.0).collect(),
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

    /// The address the limits count against: the peer, or, when the peer is a trusted proxy,
    /// the right-most address in `X-Forwarded-For` that is not itself trusted.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.is_trusted(peer) {
            return peer;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut nearest = peer;
        for hop in hops.iter().rev() {
            // An address we cannot parse ends the chain: trust nothing beyond it.
            let Some(ip) = parse_forwarded_ip(hop) else {
                return nearest;
            };
            if !self.is_trusted(ip) {
                return ip;
            }
            nearest = ip;
        }
        nearest
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
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
    pub fn check_token_user(&self, user: &Arc<str>) -> Result<(), Limited> {
        match &self.token_user {
            Some(limiter) => limiter.check(user, || user.to_string()).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Forwarded paths under a configured prefix.
    pub fn check_forward(&self, path: &str, ip: IpAddr) -> Result<(), Limited> {
        match self
            .forward
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
        {
            Some((_, limiter)) => limiter.check(&limit_key(ip), || ip.to_string()).map(|_| ()),
            None => Ok(()),
        }
    }

    pub fn has_forward_limits(&self) -> bool {
        !self.forward.is_empty()
    }

    /// One maintenance pass over every keyed limiter.
    pub fn maintain(&self) {
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
    pub async fn run_maintenance(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.prune_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.maintain();
        }
    }
}

/// IPv4 addresses count one by one; IPv6 by /64, the block one subscriber usually holds (one
/// machine can cycle through 2^64 addresses of its own /64).
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// `203.0.113.7`, `2001:db8::1`, `[2001:db8::1]:443` or `203.0.113.7:5000`.
fn parse_forwarded_ip(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    hop.parse::<std::net::SocketAddr>()
        .ok()
        .map(|s| s.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CidrNet, PositiveDuration};
    use governor::clock::FakeRelativeClock;

    fn rate(requests: u32, period_secs: u64, burst: u32) -> RateConfig {
        RateConfig::new(requests, PositiveDuration::secs(period_secs), burst)
    }

    #[test]
    fn burst_then_retry_after_then_allowed_again() {
        let clock = FakeRelativeClock::default();
        let limiter = Limiter::<IpAddr, _>::new("t", &rate(60, 60, 3), 100, clock.clone()).unwrap();
        let ip: IpAddr = "203.0.113.1".parse().unwrap();
        for _ in 0..3 {
            limiter.check(&ip, String::new).unwrap();
        }
        let limited = limiter.check(&ip, || ip.to_string()).unwrap_err();
        assert_eq!(limited.retry_after_secs(), 1, "one cell per second");
        assert_eq!(limited.key, "203.0.113.1");
        clock.advance(limited.retry_after);
        assert!(limiter.check(&ip, String::new).is_ok());
        assert!(Limiter::<IpAddr, _>::new("off", &rate(0, 60, 3), 100, clock).is_none());
    }

    /// Issue 4: a million distinct keys, then pruning brings the state back to nothing, and the
    /// cap holds while the flood is going on.
    #[test]
    fn a_million_keys_are_pruned_back_to_a_bounded_size() {
        let clock = FakeRelativeClock::default();
        let limiter =
            Limiter::<IpAddr, _>::new("t", &rate(10, 1, 5), 2_000_000, clock.clone()).unwrap();
        for i in 0..1_000_000u32 {
            limiter
                .check(&IpAddr::from(i.to_be_bytes()), String::new)
                .unwrap();
        }
        assert_eq!(limiter.len(), 1_000_000);
        limiter.maintain();
        assert_eq!(limiter.len(), 1_000_000, "all still recent");
        clock.advance(Duration::from_secs(2));
        limiter.maintain();
        assert_eq!(limiter.len(), 0, "full buckets are dropped");

        // With a cap of 100k, the state never holds more than twice the cap, even unpruned.
        let capped =
            Limiter::<IpAddr, _>::new("t", &rate(10, 1, 5), 100_000, clock.clone()).unwrap();
        let mut most = 0;
        for i in 0..1_000_000u32 {
            capped
                .check(&IpAddr::from(i.to_be_bytes()), String::new)
                .unwrap();
            most = most.max(capped.len());
            if i % 250_000 == 0 {
                capped.maintain();
            }
        }
        assert!(most <= 200_000 + SIZE_CHECK_EVERY as usize, "peak {most}");
        assert!(capped.resets.load(Ordering::Relaxed) >= 4);
    }

    #[test]
    fn forwarded_for_is_honoured_only_from_trusted_peers() {
        let config = LimitsConfig {
            trusted_proxies: vec![
                CidrNet("10.0.0.0/8".parse().unwrap()),
                CidrNet("::1/128".parse().unwrap()),
            ],
            ..LimitsConfig::default()
        };
        let limits = Limits::new(&config);
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            "198.51.100.9, 203.0.113.5".parse().unwrap(),
        );
        h.append("x-forwarded-for", "10.1.1.1".parse().unwrap());
        let untrusted: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            limits.client_ip(untrusted, &h),
            untrusted,
            "spoofed XFF ignored"
        );
        let lb: IpAddr = "10.9.9.9".parse().unwrap();
        assert_eq!(
            limits.client_ip(lb, &h),
            "203.0.113.5".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            limits.client_ip("::1".parse().unwrap(), &h),
            "203.0.113.5".parse::<IpAddr>().unwrap()
        );
        let mut garbage = HeaderMap::new();
        garbage.append(
            "x-forwarded-for",
            "203.0.113.5, not-an-ip, 10.2.2.2".parse().unwrap(),
        );
        assert_eq!(
            limits.client_ip(lb, &garbage),
            "10.2.2.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(limits.client_ip(lb, &HeaderMap::new()), lb);
    }

    #[test]
    fn ipv6_counts_per_64() {
        let a = limit_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = limit_key("2001:db8:1:2:bbbb::2".parse().unwrap());
        let c = limit_key("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            limit_key("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }
}
