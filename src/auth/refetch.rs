//! When the JWKS is fetched again for a `kid` it does not hold.
//!
//! Every fetch, periodic or on demand, is made by the one background task
//! ([`super::KeyStore::run_refresh`]), so there is never more than one in flight and a client
//! that goes away cannot cut one short. A request that meets an unknown `kid`:
//! - while a fetch is running, waits for that fetch;
//! - if a fetch began after the one that brought the set it looked in, and has ended, looks
//!   in that fetch's set first (it lost a race with the fetch: no new fetch for it);
//! - otherwise asks for one and waits for it. The task starts it at once, or when the
//!   cool-down since the last on-demand fetch ends: a flood of random `kid`s costs at most one
//!   fetch per cool-down.
//!
//! If the fetch a request joined was already running when it arrived and lacks its `kid`, the
//! key may have been published in between, so the request asks for (and, time permitting,
//! waits for) the next one. A key first named during a cool-down is therefore fetched when
//! the cool-down ends, at most one cool-down after the first token that names it. No request
//! waits longer than `jwks_timeout` in all.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

pub(super) struct Refetch {
    cooldown: Duration,
    state: Mutex<State>,
    /// Wakes the background task when a request asks for a fetch.
    wake: Notify,
    /// The number of the last fetch that finished (fetches are numbered from 1).
    finished: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    /// Fetches started so far; the running one, if any, is number `started`.
    started: u64,
    running: bool,
    /// A request asked for a fetch that has not started yet.
    wanted: bool,
    /// When the last fetch that a request asked for started.
    last_on_demand: Option<Instant>,
}

/// The fetch a request waits for.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ticket {
    fetch: u64,
    /// The fetch starts after the request arrived, so it sees whatever the JWKS held then.
    fresh: bool,
}

impl Ticket {
    pub(super) fn is_fresh(&self) -> bool {
        self.fresh
    }
}

impl Refetch {
    pub(super) fn new(cooldown: Duration) -> Self {
        Self {
            cooldown,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            finished: watch::Sender::new(0),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is a few plain fields, consistent after every statement: a panic
        // elsewhere while the lock was held leaves nothing half-done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A request's `kid` is missing from the set that fetch `seen` brought: the fetch to wait
    /// for. A fetch begun since (running, or ended while the request looked) is joined, so a
    /// request that lost the race with a fetch looks in its set before asking for another.
    pub(super) fn ask(&self, seen: u64) -> Ticket {
        let state = self.state();
        if !state.running && state.started > seen {
            return Ticket {
                fetch: state.started,
                fresh: false,
            };
        }
        self.join_or_start(state)
    }

    /// After a stale ticket's fetch lacked the `kid`: anything running now started after the
    /// request arrived (the stale one has ended), and anything later does too.
    pub(super) fn ask_again(&self) -> Ticket {
        Ticket {
            fresh: true,
            ..self.join_or_start(self.state())
        }
    }

    /// The running fetch (stale: it may have begun before the request arrived), or the next.
    fn join_or_start(&self, mut state: MutexGuard<'_, State>) -> Ticket {
        if state.running {
            return Ticket {
                fetch: state.started,
                fresh: false,
            };
        }
        state.wanted = true;
        let fetch = state.started + 1;
        drop(state);
        self.wake.notify_one();
        Ticket { fetch, fresh: true }
    }

    /// Waits until the ticket's fetch has finished; `false` if `deadline` came first.
    pub(super) async fn wait(&self, ticket: Ticket, deadline: Instant) -> bool {
        let mut finished = self.finished.subscribe();
        let done = finished.wait_for(|n| *n >= ticket.fetch);
        matches!(tokio::time::timeout_at(deadline, done).await, Ok(Ok(_)))
    }

    /// For the background task: returns when the next fetch is due, the periodic one at
    /// `periodic` or, sooner, one a request asked for (once the cool-down allows it).
    pub(super) async fn next_fetch(&self, periodic: Instant) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(periodic) => return,
                _ = self.wake.notified() => {}
            }
            // The wake-up may be stale: the fetch that just ran served the request.
            if let Some(allowed) = self.on_demand_allowed_at() {
                tokio::time::sleep_until(allowed.min(periodic)).await;
                return;
            }
        }
    }

    fn on_demand_allowed_at(&self) -> Option<Instant> {
        let state = self.state();
        let now = Instant::now();
        state.wanted.then(|| {
            state
                .last_on_demand
                .map_or(now, |last| (last + self.cooldown).max(now))
        })
    }

    /// For the background task: a fetch starts now. Returns its number.
    pub(super) fn begin(&self) -> u64 {
        let mut state = self.state();
        state.started += 1;
        state.running = true;
        if std::mem::take(&mut state.wanted) {
            state.last_on_demand = Some(Instant::now());
        }
        state.started
    }

    /// For the background task: fetch `number` has finished (its keys, if any, are stored).
    pub(super) fn end(&self, number: u64) {
        self.state().running = false;
        self.finished.send_replace(number);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paused_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    }

    #[test]
    fn a_request_joins_the_running_fetch_or_waits_for_the_next() {
        let refetch = Refetch::new(Duration::from_secs(5));
        let first = refetch.ask(0);
        assert!(first.is_fresh());
        let n = refetch.begin();
        assert_eq!(n, first.fetch);
        let joined = refetch.ask(0);
        assert_eq!((joined.fetch, joined.is_fresh()), (n, false));
        refetch.end(n);
        let again = refetch.ask_again();
        assert_eq!((again.fetch, again.is_fresh()), (n + 1, true));
    }

    #[test]
    fn a_request_that_looked_before_a_fetch_ended_looks_again_first() {
        let refetch = Refetch::new(Duration::from_secs(5));
        // The request looked in the set of fetch 1 while fetch 2 ran; 2 ended before it asked.
        let n = refetch.begin();
        refetch.end(n);
        let m = refetch.begin();
        refetch.end(m);
        let ticket = refetch.ask(n);
        assert_eq!((ticket.fetch, ticket.is_fresh()), (m, false));
        assert!(!refetch.state().wanted, "no fetch asked for");
        // Fetch 2 lacked the kid too: now one is asked for.
        let again = refetch.ask_again();
        assert_eq!((again.fetch, again.is_fresh()), (m + 1, true));
    }

    #[test]
    fn on_demand_fetches_are_a_cool_down_apart_periodic_ones_are_not_delayed() {
        paused_runtime().block_on(async {
            let cooldown = Duration::from_secs(5);
            let refetch = Refetch::new(cooldown);
            let far = Instant::now() + Duration::from_secs(300);

            // No on-demand fetch yet: the first request is served at once.
            let t0 = Instant::now();
            refetch.ask(0);
            refetch.next_fetch(far).await;
            assert_eq!(Instant::now(), t0);
            let n = refetch.begin();
            refetch.end(n);

            // One second later another request asks: it waits for the cool-down to end.
            tokio::time::advance(Duration::from_secs(1)).await;
            let ticket = refetch.ask(n);
            refetch.next_fetch(far).await;
            assert_eq!(Instant::now(), t0 + cooldown);
            let n = refetch.begin();
            assert_eq!(n, ticket.fetch);
            refetch.end(n);
            assert!(refetch.wait(ticket, Instant::now()).await);

            // The periodic refresh comes when due, cool-down or not.
            let periodic = Instant::now() + Duration::from_millis(10);
            refetch.ask(n);
            refetch.next_fetch(periodic).await;
            assert_eq!(Instant::now(), periodic);
        });
    }

    #[test]
    fn a_stale_wake_up_does_not_start_a_fetch() {
        paused_runtime().block_on(async {
            let refetch = Refetch::new(Duration::from_secs(5));
            // A request asks; the fetch that serves it starts before the task looks at the
            // wake-up (a periodic fetch, say).
            refetch.ask(0);
            let n = refetch.begin();
            refetch.end(n);
            let periodic = Instant::now() + Duration::from_secs(60);
            refetch.next_fetch(periodic).await;
            assert_eq!(
                Instant::now(),
                periodic,
                "slept through to the periodic refresh"
            );
        });
    }

    #[test]
    fn waiting_is_bounded_by_the_deadline() {
        paused_runtime().block_on(async {
            let refetch = Refetch::new(Duration::from_secs(5));
            let ticket = refetch.ask(0);
            let deadline = Instant::now() + Duration::from_secs(2);
            assert!(!refetch.wait(ticket, deadline).await);
            assert_eq!(Instant::now(), deadline);
        });
    }
}
