//! The circuit in front of the shared backend: closed, a check goes to Redis; after
//! `circuit_failures` failed checks in a row it opens, and checks skip Redis (the failure mode
//! answers, nobody waits) until a probe in the background gets an answer and closes it. The
//! circuit starts open: start-up does not wait for Redis, and the first probe runs at once.
//! Only the state changes here; the logging, the gauge and the probing are the caller's.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

pub(crate) struct Breaker {
    threshold: u32,
    failures: AtomicU32,
    open: AtomicBool,
}

impl Breaker {
    /// Open, until the first probe answers.
    pub(crate) fn new(threshold: u32) -> Self {
        Self {
            threshold: threshold.max(1),
            failures: AtomicU32::new(0),
            open: AtomicBool::new(true),
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    /// A check that Redis answered: the failures in a row start again from zero.
    pub(crate) fn success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// A check that failed; `true` when this one opened the circuit (exactly one caller sees
    /// `true` per opening).
    pub(crate) fn failure(&self) -> bool {
        let failures = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        failures >= self.threshold
            && self
                .open
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// A probe got an answer; `true` when this closed the circuit.
    pub(crate) fn close(&self) -> bool {
        self.failures.store(0, Ordering::Relaxed);
        self.open.swap(false, Ordering::AcqRel)
    }
}

/// The waits between probes: `first`, doubled after each failed probe, at most `max`.
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(first: Duration, max: Duration) -> Self {
        Self { next: first, max }
    }

    pub(crate) fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_once_after_the_threshold_and_closes_once_on_a_probe() {
        let breaker = Breaker::new(3);
        assert!(breaker.is_open(), "open until the first probe answers");
        assert!(breaker.close());
        assert!(!breaker.close(), "already closed");
        assert!(!breaker.failure() && !breaker.failure());
        breaker.success();
        assert!(
            !breaker.failure() && !breaker.failure(),
            "a success resets the count"
        );
        assert!(breaker.failure(), "the third in a row opens it");
        assert!(breaker.is_open());
        assert!(!breaker.failure(), "only one caller sees the opening");
        assert!(breaker.close() && !breaker.is_open());

        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(2));
        let waits: Vec<u64> = (0..5)
            .map(|_| backoff.next_wait().as_millis() as u64)
            .collect();
        assert_eq!(waits, [500, 1000, 2000, 2000, 2000]);
    }
}
