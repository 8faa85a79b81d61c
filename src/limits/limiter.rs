//! One keyed rate limiter (governor's GCRA), with bounded state: a maintenance pass drops keys
//! whose bucket is full again (`retain_recent`) and shrinks the map; if a flood of distinct keys
//! still leaves more than `limits.max_keys`, the limiter starts over empty (logged) rather than
//! growing without bound.

use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use tracing::warn;

use super::{Limited, Policy};
use crate::config::RateConfig;

type Inner<K, C> = RateLimiter<K, DashMapStateStore<K>, C, StateInformationMiddleware>;

/// Checks between two looks at the state size on the request path.
const SIZE_CHECK_EVERY: u64 = 4096;

/// One keyed limiter.
pub(crate) struct Limiter<K: Hash + Eq + Clone, C: Clock + Clone = DefaultClock> {
    name: &'static str,
    quota: Quota,
    clock: C,
    state: ArcSwap<Inner<K, C>>,
    policy: Policy,
    max_keys: usize,
    checks: AtomicU64,
    /// Times the state was reset for exceeding `max_keys`.
    pub(crate) resets: AtomicU64,
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> Limiter<K, C> {
    /// `None` when the limit is switched off (`requests = 0`).
    pub(crate) fn new(
        name: &'static str,
        rate: &RateConfig,
        max_keys: usize,
        clock: C,
    ) -> Option<Self> {
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

    /// Counts one request for `key`. `Ok` carries the cells left in the burst.
    pub(crate) fn check(&self, key: &K, shown: impl FnOnce() -> String) -> Result<u32, Limited> {
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
    pub(crate) fn len(&self) -> usize {
        self.state.load().len()
    }

    /// Drops keys whose bucket is full again, shrinks, and resets if still over `max_keys`.
    pub(crate) fn maintain(&self) {
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

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::time::Duration;

    use super::*;
    use crate::config::PositiveDuration;
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
}
