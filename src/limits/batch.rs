//! Fewer Redis calls for hot keys, without counting any request less. [`Batches`]: checks
//! of one key that arrive together share script calls (at most [`CALLS_PER_KEY`] in flight;
//! the rest queue and go as one call that counts each of them). [`Reserved`]: a limit with a
//! large burst takes a few cells more per call, which this replica spends on its next checks
//! of that key without asking (counted in Redis all the same: the fleet never exceeds the
//! limit; unused cells are lost, never admitted).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;
use tokio::sync::oneshot;

use super::local::Gcra;

/// Script calls one key may have in flight at once: more overlap the round trips (a check
/// waits less for its turn), fewer share more checks per call.
const CALLS_PER_KEY: usize = 4;

/// One check waiting for its call's answer.
pub(super) struct Waiter {
    pub(super) tx: oneshot::Sender<Answer>,
    pub(super) deadline: tokio::time::Instant,
}

/// What a call tells each of its checks.
#[derive(Debug, Clone, Copy)]
pub(super) enum Answer {
    Allowed,
    Limited(Duration),
    Failed,
    TimedOut,
    Skipped,
}

/// Tells every check of `batch` the same.
pub(super) fn answer_all(batch: Vec<Waiter>, answer: Answer) {
    for waiter in batch {
        let _ = waiter.tx.send(answer);
    }
}

/// A key's calls in flight and the checks waiting for the next free one.
#[derive(Default)]
struct InFlight {
    calls: usize,
    queued: Vec<Waiter>,
}

/// The keys with calls in flight.
#[derive(Default)]
pub(super) struct Batches {
    in_flight: Mutex<HashMap<String, InFlight>>,
}

impl Batches {
    /// Queues `waiter` for `key`'s next call; when a call may start now, returns the batch
    /// the caller must start.
    pub(super) fn join(&self, key: &str, waiter: Waiter) -> Option<Vec<Waiter>> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let state = in_flight.entry(key.to_string()).or_default();
        if state.calls < CALLS_PER_KEY {
            state.calls += 1;
            return Some(vec![waiter]);
        }
        state.queued.push(waiter);
        None
    }

    /// The checks that queued while one of `key`'s calls ran; `None` (and that call's place
    /// is free) if none.
    pub(super) fn next(&self, key: &str) -> Option<Vec<Waiter>> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let state = in_flight.get_mut(key)?;
        if !state.queued.is_empty() {
            return Some(std::mem::take(&mut state.queued));
        }
        state.calls = state.calls.saturating_sub(1);
        if state.calls == 0 {
            in_flight.remove(key);
        }
        None
    }

    /// A call's task ended without [`Batches::next`] (it panicked, or the runtime dropped
    /// it): frees its place, so the key is not blocked for good, and tells the checks queued
    /// behind it that Redis was skipped.
    pub(super) fn abandon(&self, key: &str) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let Some(state) = in_flight.get_mut(key) else {
            return;
        };
        answer_all(std::mem::take(&mut state.queued), Answer::Skipped);
        state.calls = state.calls.saturating_sub(1);
        if state.calls == 0 {
            in_flight.remove(key);
        }
    }
}

/// Keys with reserved cells held at once (only hot keys of large-burst limits have any).
const RESERVED_KEYS: usize = 1024;

/// How long reserved cells stay usable; unused ones are then lost.
const RESERVED_FOR: Duration = Duration::from_secs(1);

/// Cells reserved in Redis per key (`limits.redis.reserve`), and until when.
pub(super) struct Reserved {
    enabled: bool,
    cells: Cache<String, Arc<Cells>>,
}

/// One key's reserved cells: taken with an atomic decrement under the cache's read lock, so
/// the workers spending a hot key's cells never wait on each other.
struct Cells {
    left: AtomicUsize,
    until: Instant,
}

impl Reserved {
    pub(super) fn new(enabled: bool) -> Self {
        Self {
            enabled,
            cells: Cache::new(RESERVED_KEYS),
        }
    }

    /// Cells a call reserves beyond its checks: 1/1024 of the burst, so none for the bursts
    /// a per-user or per-IP limit has (counted one by one) and a few for a large one (a global
    /// ceiling of thousands a second), whose hot key then needs a round trip per that many
    /// requests. At most that many per replica may go unused.
    pub(super) fn spare(&self, gcra: Gcra) -> u32 {
        if self.enabled { gcra.burst / 1024 } else { 0 }
    }

    /// Takes one cell reserved for `key`, if this replica holds one still fresh.
    pub(super) fn take(&self, key: &str, gcra: Gcra) -> bool {
        if self.spare(gcra) == 0 {
            return false;
        }
        let Some(cells) = self.cells.get(key) else {
            return false;
        };
        cells.until > Instant::now()
            && cells
                .left
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok()
    }

    /// Keeps `cells` that Redis counted beyond a call's checks, for [`RESERVED_FOR`].
    pub(super) fn keep(&self, key: &str, cells: usize) {
        if cells > 0 {
            let cells = Cells {
                left: AtomicUsize::new(cells),
                until: Instant::now() + RESERVED_FOR,
            };
            self.cells.insert(key.to_string(), Arc::new(cells));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_abandoned_call_frees_its_place_and_answers_the_queue() {
        let batches = Batches::default();
        let waiter = || {
            let (tx, rx) = oneshot::channel();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
            (Waiter { tx, deadline }, rx)
        };
        for _ in 0..CALLS_PER_KEY {
            assert!(batches.join("k", waiter().0).is_some());
        }
        let (queued, mut answer) = waiter();
        assert!(batches.join("k", queued).is_none(), "queued");
        for _ in 0..CALLS_PER_KEY {
            batches.abandon("k");
        }
        assert!(matches!(answer.try_recv(), Ok(Answer::Skipped)));
        assert!(
            batches.join("k", waiter().0).is_some(),
            "the key is free again"
        );
    }

    fn waiter() -> (Waiter, oneshot::Receiver<Answer>) {
        let (tx, rx) = oneshot::channel();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        (Waiter { tx, deadline }, rx)
    }

    #[tokio::test]
    async fn four_calls_per_key_then_the_rest_go_together() {
        let batches = Batches::default();
        for _ in 0..CALLS_PER_KEY {
            assert!(batches.join("k", waiter().0).is_some(), "starts a call");
        }
        assert!(
            batches.join("other", waiter().0).is_some(),
            "keys are apart"
        );
        for _ in 0..3 {
            assert!(batches.join("k", waiter().0).is_none(), "queued");
        }
        assert_eq!(
            batches.next("k").map(|b| b.len()),
            Some(3),
            "one call for the three"
        );
        for _ in 0..CALLS_PER_KEY {
            assert!(batches.next("k").is_none(), "a call's place is free");
        }
        assert!(
            batches.join("k", waiter().0).is_some(),
            "the key is free again"
        );

        let (w, rx) = waiter();
        answer_all(vec![w], Answer::Skipped);
        assert!(matches!(rx.await, Ok(Answer::Skipped)));
    }

    #[test]
    fn reserved_cells_are_spent_once_and_only_for_large_bursts() {
        let gcra = |burst| Gcra {
            requests: burst,
            period: Duration::from_secs(1),
            burst,
        };
        let reserved = Reserved::new(true);
        assert_eq!(reserved.spare(gcra(20)), 0);
        assert_eq!(reserved.spare(gcra(4096)), 4);
        assert_eq!(Reserved::new(false).spare(gcra(4096)), 0);
        reserved.keep("k", 2);
        assert!(reserved.take("k", gcra(4096)) && reserved.take("k", gcra(4096)));
        assert!(!reserved.take("k", gcra(4096)), "spent");
        reserved.keep("small", 2);
        assert!(!reserved.take("small", gcra(20)), "never for a small burst");
    }
}
