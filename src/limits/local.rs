//! One local limiter: governor's GCRA over a bounded store. The store holds at most
//! `limits.max_keys` keys; past that, quick_cache evicts the keys seen least (new keys seen
//! once go first, keys that keep coming back stay), so a flood of distinct addresses neither
//! grows memory nor wipes the state of the key that is over its limit. A maintenance pass
//! drops keys whose bucket is full again (their state is the same as no state).

use std::hash::Hash;
use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::{Quota, RateLimiter};
use quick_cache::sync::{Cache, EntryAction, EntryResult};

use crate::config::RateConfig;

/// The GCRA parameters of one rate: what the local and the Redis limiter both compute with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gcra {
    /// Requests per window (`RateLimit-Policy`'s `q`).
    pub(crate) requests: u32,
    pub(crate) period: std::time::Duration,
    pub(crate) burst: u32,
}

impl Gcra {
    /// `None` when the limit is switched off (`requests = 0`).
    pub(crate) fn new(rate: &RateConfig) -> Option<Self> {
        (rate.requests > 0).then(|| Self {
            requests: rate.requests,
            period: rate.period.0,
            burst: rate.burst().max(1),
        })
    }

    /// The same rate for one of `replicas` replicas counting alone (at least 1 request).
    pub(crate) fn divided(self, replicas: u32) -> Self {
        let replicas = replicas.max(1);
        Self {
            requests: self.requests.div_ceil(replicas),
            period: self.period,
            burst: self.burst.div_ceil(replicas),
        }
    }

    /// One cell: the time between two requests at the sustained rate (at least 1 µs).
    pub(crate) fn emission_interval(&self) -> std::time::Duration {
        (self.period / self.requests).max(std::time::Duration::from_micros(1))
    }

    fn quota(&self) -> Option<Quota> {
        let burst = NonZeroU32::new(self.burst).unwrap_or(NonZeroU32::MIN);
        Some(Quota::with_period(self.emission_interval())?.allow_burst(burst))
    }
}

/// Governor's state for one key (its theoretical arrival time, 0 = none), bounded.
pub(crate) struct BoundedStore<K> {
    cache: Cache<K, u64>,
}

impl<K: Hash + Eq + Clone> StateStore for BoundedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut outcome = None;
        let result = self.cache.entry(key, None, |_, tat| {
            let previous = (*tat > 0).then(|| Nanos::from(*tat));
            let result = f(previous).map(|(value, next)| {
                *tat = next.as_u64().max(1);
                value
            });
            outcome = Some(result);
            EntryAction::Retain(())
        });
        match (result, outcome) {
            (EntryResult::Retained(()), Some(result)) => result,
            (EntryResult::Vacant(guard), _) => {
                let (value, next) = f(None)?;
                let _ = guard.insert(next.as_u64().max(1));
                Ok(value)
            }
            // The callback always runs for an occupied entry and returns Retain; without a
            // timeout there is no other case. Counting as a fresh key is the safe answer.
            _ => f(None).map(|(value, _)| value),
        }
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for BoundedStore<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        let drop_below = drop_below.as_u64();
        self.cache.retain(|_, tat| *tat > drop_below);
    }

    fn len(&self) -> usize {
        self.cache.len()
    }

    fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

type Inner<K, C> = RateLimiter<K, BoundedStore<K>, C, StateInformationMiddleware>;

/// One keyed limiter in this process.
pub(crate) struct LocalLimiter<K: Hash + Eq + Clone, C: Clock = DefaultClock> {
    inner: Inner<K, C>,
    clock: C,
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> LocalLimiter<K, C> {
    /// `None` when the rate cannot be expressed (a zero period is refused by the config).
    pub(crate) fn new(gcra: Gcra, max_keys: usize, clock: C) -> Option<Self> {
        let store = BoundedStore {
            cache: Cache::new(max_keys.max(1)),
        };
        Some(Self {
            inner: Inner::new(gcra.quota()?, store, clock.clone()),
            clock,
        })
    }

    /// Counts one request for `key`: `Err` carries how long until one would be allowed.
    pub(crate) fn check(&self, key: &K) -> Result<(), std::time::Duration> {
        match self.inner.check_key(key) {
            Ok(_) => Ok(()),
            Err(not_until) => Err(not_until.wait_time_from(self.clock.now())),
        }
    }

    /// Keys held now.
    pub(crate) fn len(&self) -> usize {
        self.inner.len()
    }

    /// Drops the keys whose bucket is full again.
    pub(crate) fn maintain(&self) {
        self.inner.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::time::Duration;

    use super::*;
    use crate::config::PositiveDuration;
    use governor::clock::FakeRelativeClock;

    fn gcra(requests: u32, period_secs: u64, burst: u32) -> Gcra {
        Gcra::new(&RateConfig::new(
            requests,
            PositiveDuration::secs(period_secs),
            burst,
        ))
        .unwrap()
    }

    fn ip(i: u32) -> IpAddr {
        IpAddr::from(i.to_be_bytes())
    }

    #[test]
    fn burst_then_retry_after_then_allowed_again() {
        let clock = FakeRelativeClock::default();
        let limiter = LocalLimiter::<IpAddr, _>::new(gcra(60, 60, 3), 100, clock.clone()).unwrap();
        for _ in 0..3 {
            limiter.check(&ip(1)).unwrap();
        }
        let wait = limiter.check(&ip(1)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1), "one cell per second");
        clock.advance(wait);
        assert!(limiter.check(&ip(1)).is_ok());
        assert!(Gcra::new(&RateConfig::new(0, PositiveDuration::secs(60), 3)).is_none());
        assert_eq!(gcra(20, 60, 10).divided(3), gcra(7, 60, 4));
    }

    /// Issue 18: a million distinct keys never hold more than `max_keys` entries, and the one
    /// abusive key that keeps coming back among them stays limited (issue 4's limiter started
    /// over empty past its cap, which set the abuser free too).
    #[test]
    fn a_million_key_flood_leaves_the_abusive_key_limited_in_bounded_memory() {
        let clock = FakeRelativeClock::default();
        let max_keys = 10_000;
        let limiter =
            LocalLimiter::<IpAddr, _>::new(gcra(10, 60, 5), max_keys, clock.clone()).unwrap();
        let abuser = "203.0.113.66".parse().unwrap();
        for _ in 0..5 {
            limiter.check(&abuser).unwrap();
        }
        let mut most = 0;
        for i in 0..1_000_000u32 {
            limiter.check(&ip(i)).unwrap();
            if i % 1000 == 0 {
                assert!(limiter.check(&abuser).is_err(), "abuser let through at {i}");
                clock.advance(Duration::from_millis(1));
            }
            most = most.max(limiter.len());
        }
        assert!(most <= max_keys, "peak {most} keys for a cap of {max_keys}");
        assert!(
            limiter.check(&abuser).is_err(),
            "still limited after the flood"
        );

        // Back under its limit, a key's state is dropped by maintenance like any other.
        clock.advance(Duration::from_secs(120));
        limiter.maintain();
        assert_eq!(limiter.len(), 0, "full buckets are dropped");
        assert!(limiter.check(&abuser).is_ok());
    }
}
