//! The shared backend: GCRA in Redis (`gcra.lua`), on Redis's clock, one script call per
//! round trip. Each worker thread drives its own connection. Checks of one key that arrive
//! together share calls (the script counts n requests at once); a limit with a large burst
//! reserves a few cells per call for a hot key. A check waits at most `limits.redis.timeout`
//! (plus [`ANSWER_MARGIN`]);
//! a failed or late one reports `Unavailable` and the caller applies `on_error`. Connecting is
//! never waited for on a request: a background probe connects (at start-up, and after the
//! circuit opened), with back-off, on a fresh connection each time (so a connection stuck on a
//! refused password or a dead peer is left behind). One log line per change of state.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo, RedisError, Script, TlsCertificates};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tracing::{debug, info, trace, warn};

use super::batch::{Answer, Batches, Reserved, Waiter, answer_all};
use super::breaker::{Backoff, Breaker};
use super::local::Gcra;
use crate::config::{OnError, RedisConfig};
use crate::metrics::{BackendOutcome, Metrics};

thread_local! {
    /// A worker thread's connection.
    static WORKER_CONN: RefCell<Option<WorkerConn>> = const { RefCell::new(None) };
}

/// A worker thread's own connection, for the backend and probe generation it was made for.
struct WorkerConn {
    /// [`Shared::id`] and [`Shared::generation`] when it was made.
    id: (u64, u64),
    conn: ConnectionManager,
    /// It has answered a PING: calls may go over it.
    ready: Arc<AtomicBool>,
}

/// Numbers the backends of this process (tests run several), for [`WorkerConn::id`].
static NEXT_BACKEND_ID: AtomicU64 = AtomicU64::new(0);

/// What Redis said about one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allowed,
    /// Over the limit; allowed again after this long.
    Limited(Duration),
    /// No answer in time, an error, or the circuit is open: `on_error` decides.
    Unavailable,
}

/// Why the Redis backend cannot be set up (a bad CA file, no runtime).
#[derive(Debug, thiserror::Error)]
#[error("limits.redis: {0}")]
pub struct RedisSetupError(String);

pub(crate) struct RedisBackend {
    shared: Arc<Shared>,
}

struct Shared {
    /// This backend's number in the process.
    id: u64,
    client: Client,
    conn: ArcSwapOption<ConnectionManager>,
    script: Script,
    prefix: String,
    timeout: Duration,
    connect_timeout: Duration,
    on_error: OnError,
    /// For the log lines: the URL without its password.
    shown_url: String,
    breaker: Breaker,
    backoff: (Duration, Duration),
    /// Bumped by each successful probe: the workers' connections are made again.
    generation: AtomicU64,
    /// Cells reserved in Redis for hot keys of large-burst limits.
    reserved: Reserved,
    /// Keys with script calls in flight, and the checks queued for them.
    batches: Batches,
    metrics: Arc<Metrics>,
    /// Where the probes run (the runtime `start` runs on, not a worker's).
    runtime: Handle,
}

impl RedisBackend {
    /// Sets the backend up and starts the first probe; does not wait for Redis.
    pub(crate) fn start(
        config: &RedisConfig,
        ca_pem: Option<Vec<u8>>,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, RedisSetupError> {
        let runtime = Handle::try_current()
            .map_err(|_| RedisSetupError("needs a running tokio runtime".into()))?;
        crate::crypto::install_default_provider();
        let shared = Arc::new(Shared {
            id: NEXT_BACKEND_ID.fetch_add(1, Ordering::Relaxed),
            client: client(config, ca_pem)?,
            conn: ArcSwapOption::empty(),
            script: Script::new(include_str!("gcra.lua")),
            prefix: config.key_prefix.clone(),
            timeout: config.timeout.0,
            connect_timeout: config.connect_timeout.0,
            on_error: config.on_error,
            shown_url: config.url.to_string(),
            breaker: Breaker::new(config.circuit_failures),
            batches: Batches::default(),
            reserved: Reserved::new(config.reserve),
            generation: AtomicU64::new(0),
            backoff: (config.circuit_backoff.0, config.circuit_backoff_max.0),
            metrics: metrics.clone(),
            runtime,
        });
        shared.metrics.rate_limit_degraded.set(1);
        shared
            .runtime
            .spawn(probe_until_up(Arc::downgrade(&shared), true));
        Ok(Self { shared })
    }

    pub(crate) fn on_error(&self) -> OnError {
        self.shared.on_error
    }

    /// `true` while Redis is skipped (circuit open, or not reached yet).
    pub(crate) fn degraded(&self) -> bool {
        self.shared.breaker.is_open()
    }

    /// Counts one request for `policy`'s `key` in Redis. Concurrent checks of one key share
    /// round trips: while [`CALLS_PER_KEY`] calls are in flight the next checks queue, and go
    /// together as one script call that counts each of them (so a hot key, such as the global limit, costs
    /// Redis one call per round trip, not one per request, and the count stays exact).
    pub(crate) async fn check(&self, policy: &str, key: &str, gcra: Gcra) -> Verdict {
        let shared = &self.shared;
        if shared.breaker.is_open() || shared.conn.load().is_none() {
            shared.metrics.backend_request(BackendOutcome::Skipped);
            return Verdict::Unavailable;
        }
        let deadline = tokio::time::Instant::now() + shared.timeout;
        let (tx, rx) = oneshot::channel();
        let key = format!("{}{policy}:{key}", shared.prefix);
        if shared.reserved.take(&key, gcra) {
            shared.metrics.backend_request(BackendOutcome::Reserved);
            return Verdict::Allowed;
        }
        if let Some(batch) = shared.batches.join(&key, Waiter { tx, deadline }) {
            tokio::spawn(run_batches(shared.clone(), key, gcra, batch));
        }
        // The batch answers by the earliest deadline among its checks; the margin only
        // covers a batch task that is late to run.
        let answer = tokio::time::timeout_at(deadline + ANSWER_MARGIN, rx).await;
        let (outcome, verdict) = match answer {
            Ok(Ok(Answer::Allowed)) => (BackendOutcome::Allowed, Verdict::Allowed),
            Ok(Ok(Answer::Limited(wait))) => (BackendOutcome::Limited, Verdict::Limited(wait)),
            Ok(Ok(Answer::Failed)) | Ok(Err(_)) => (BackendOutcome::Error, Verdict::Unavailable),
            Ok(Ok(Answer::TimedOut)) | Err(_) => (BackendOutcome::Timeout, Verdict::Unavailable),
            Ok(Ok(Answer::Skipped)) => (BackendOutcome::Skipped, Verdict::Unavailable),
        };
        shared.metrics.backend_request(outcome);
        verdict
    }
}

/// How late past its timeout a check may still take its batch's answer.
const ANSWER_MARGIN: Duration = Duration::from_millis(5);

/// Runs `batch` for `key`, then whatever queued for it meanwhile, until nothing did.
async fn run_batches(shared: Arc<Shared>, key: String, gcra: Gcra, mut batch: Vec<Waiter>) {
    let mut place = CallPlace {
        shared: &shared,
        key: &key,
        held: true,
    };
    loop {
        shared.run_batch(&key, gcra, batch).await;
        match shared.batches.next(&key) {
            Some(next) => batch = next,
            None => {
                place.held = false;
                return;
            }
        }
    }
}

/// A call's place among its key's calls in flight; given back if the task ends early (a
/// panic, or the runtime dropping it at shutdown), so the key's checks never queue forever.
struct CallPlace<'a> {
    shared: &'a Shared,
    key: &'a str,
    held: bool,
}

impl Drop for CallPlace<'_> {
    fn drop(&mut self) {
        if self.held {
            self.shared.batches.abandon(self.key);
        }
    }
}

impl Shared {
    /// One script call counting every check of `batch`, answered in their order.
    async fn run_batch(self: &Arc<Self>, key: &str, gcra: Gcra, batch: Vec<Waiter>) {
        // Checks that queued behind a slow call past their own deadline time out, but Redis
        // did not fail them: no call for them, and nothing for the circuit breaker.
        let now = tokio::time::Instant::now();
        let (batch, expired): (Vec<_>, Vec<_>) = batch.into_iter().partition(|w| w.deadline > now);
        answer_all(expired, Answer::TimedOut);
        if batch.is_empty() {
            return;
        }
        let conn = self.worker_conn().filter(|_| !self.breaker.is_open());
        let (Some(conn), Some(deadline)) = (conn, batch.iter().map(|w| w.deadline).min()) else {
            return answer_all(batch, Answer::Skipped);
        };
        let spare = self.reserved.spare(gcra);
        let cells = u32::try_from(batch.len())
            .unwrap_or(u32::MAX)
            .saturating_add(spare);
        let started = Instant::now();
        let result = tokio::time::timeout_at(deadline, self.eval(&conn, key, gcra, cells)).await;
        self.metrics
            .backend_duration
            .observe(started.elapsed().as_secs_f64());
        trace!(
            key_count = batch.len(),
            ?result,
            "rate-limit check in Redis"
        );
        match result {
            Ok(Ok((allowed, wait_us))) => {
                self.breaker.success();
                let allowed = usize::try_from(allowed).unwrap_or(0);
                let wait = Duration::from_micros(wait_us.max(1).unsigned_abs());
                self.reserved.keep(key, allowed.saturating_sub(batch.len()));
                for (i, waiter) in batch.into_iter().enumerate() {
                    let answer = if i < allowed {
                        Answer::Allowed
                    } else {
                        Answer::Limited(wait)
                    };
                    let _ = waiter.tx.send(answer);
                }
            }
            Ok(Err(e)) => {
                self.failed(describe(&e));
                answer_all(batch, Answer::Failed);
            }
            Err(_) => {
                self.failed(format!("no answer within {:?}", self.timeout));
                answer_all(batch, Answer::TimedOut);
            }
        }
    }

    /// One EVALSHA counting `cells` requests (a SCRIPT LOAD and a retry after NOSCRIPT: a
    /// restart or SCRIPT FLUSH).
    async fn eval(
        &self,
        conn: &ConnectionManager,
        key: &str,
        gcra: Gcra,
        cells: u32,
    ) -> Result<(i64, i64), RedisError> {
        let t = gcra.emission_interval().as_micros();
        let tau = t.saturating_mul(u128::from(gcra.burst.saturating_sub(1)));
        let mut conn = conn.clone();
        self.script
            .key(key)
            .arg(u64::try_from(t).unwrap_or(u64::MAX))
            .arg(u64::try_from(tau).unwrap_or(u64::MAX))
            .arg(cells)
            .invoke_async(&mut conn)
            .await
    }

    /// A failed call: the circuit opens (logged once) after enough of them in a row.
    fn failed(self: &Arc<Self>, reason: String) {
        if self.breaker.failure() {
            self.metrics.rate_limit_degraded.set(1);
            warn!(redis = %self.shown_url, %reason, on_error = self.on_error.as_str(),
                "rate-limit backend failing: Redis is skipped and on_error applies until a probe gets an answer");
            self.runtime
                .spawn(probe_until_up(Arc::downgrade(self), false));
        } else {
            debug!(%reason, "rate-limit check failed; on_error applies");
        }
    }

    /// This worker thread's own connection (each worker runs its own runtime: a connection
    /// driven there costs no hop to another thread per call). Made again after each
    /// successful probe, so none stays stuck on a dead peer or a refused password. A new one
    /// connects in the background: until it has answered, the calls go over the probe's
    /// connection (connected, script loaded), so no check spends its timeout on a connect.
    fn worker_conn(self: &Arc<Self>) -> Option<ConnectionManager> {
        let probed = self.conn.load_full()?;
        let id = (self.id, self.generation.load(Ordering::Acquire));
        WORKER_CONN.with(|slot| {
            let mut slot = slot.borrow_mut();
            match slot.as_ref() {
                Some(mine) if mine.id == id && mine.ready.load(Ordering::Acquire) => {
                    return Some(mine.conn.clone());
                }
                Some(mine) if mine.id == id => return Some((*probed).clone()),
                _ => {}
            }
            let conn =
                ConnectionManager::new_lazy_with_config(self.client.clone(), self.manager_config())
                    .ok()?;
            let ready = Arc::new(AtomicBool::new(false));
            let (mut warm, warmed) = (conn.clone(), ready.clone());
            tokio::spawn(async move {
                let ping: Result<(), RedisError> = redis::cmd("PING").query_async(&mut warm).await;
                warmed.store(ping.is_ok(), Ordering::Release);
            });
            *slot = Some(WorkerConn { id, conn, ready });
            Some((*probed).clone())
        })
    }

    fn manager_config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.connect_timeout))
            .set_number_of_retries(0)
    }

    /// A fresh connection, with the script loaded (proves the password too).
    async fn connect(&self) -> Result<ConnectionManager, String> {
        let config = self.manager_config();
        let attempt = async {
            let mut conn = ConnectionManager::new_lazy_with_config(self.client.clone(), config)?;
            self.script.load_async(&mut conn).await?;
            Ok::<_, RedisError>(conn)
        };
        match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(describe(&e)),
            Err(_) => Err(format!("no connection within {:?}", self.connect_timeout)),
        }
    }
}

/// Probes until Redis answers, then closes the circuit; ends early when the backend is gone.
async fn probe_until_up(shared: Weak<Shared>, at_start: bool) {
    let mut backoff = match shared.upgrade() {
        Some(s) => Backoff::new(s.backoff.0, s.backoff.1),
        None => return,
    };
    let mut wait = if at_start {
        Duration::ZERO
    } else {
        backoff.next_wait()
    };
    let mut said_down = !at_start;
    loop {
        tokio::time::sleep(wait).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        match shared.connect().await {
            Ok(conn) => {
                shared.conn.store(Some(Arc::new(conn)));
                shared.generation.fetch_add(1, Ordering::AcqRel);
                if shared.breaker.close() {
                    shared.metrics.rate_limit_degraded.set(0);
                    info!(redis = %shared.shown_url, "rate-limit backend answering: limits are fleet-wide");
                }
                return;
            }
            Err(reason) if !said_down => {
                warn!(redis = %shared.shown_url, %reason, on_error = shared.on_error.as_str(),
                    "rate-limit backend unreachable at start-up: on_error applies until it answers");
                said_down = true;
            }
            Err(reason) => debug!(%reason, "rate-limit backend probe failed"),
        }
        wait = backoff.next_wait();
    }
}

/// The client for `config`'s URL, with the password set apart from the URL (so no URL string
/// with the password in it ever exists).
pub(super) fn client(
    config: &RedisConfig,
    ca_pem: Option<Vec<u8>>,
) -> Result<Client, RedisSetupError> {
    let url = &config.url;
    let scheme = if url.tls { "rediss" } else { "redis" };
    let bad = |e: RedisError| RedisSetupError(describe(&e));
    let info = format!("{scheme}://{}:{}/{}", url.host, url.port, url.db)
        .into_connection_info()
        .map_err(bad)?;
    let mut settings = info.redis_settings().clone();
    if let Some(user) = &url.username {
        settings = settings.set_username(user);
    }
    if let Some(password) = &config.password {
        settings = settings.set_password(password.expose());
    }
    let info = info.set_redis_settings(settings);
    match ca_pem {
        Some(pem) => Client::build_with_tls(
            info,
            TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            },
        ),
        None => Client::open(info),
    }
    .map_err(bad)
}

/// An error as a log line says it; a refused password says what to check. Redis's errors do
/// not carry the password (the tests look for it in `trace` output).
fn describe(e: &RedisError) -> String {
    let auth = matches!(e.kind(), redis::ErrorKind::AuthenticationFailed)
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH"));
    if auth {
        format!(
            "authentication failed ({e}): check REDIS_PASSWORD, REDIS_URL or limits.redis.password_file"
        )
    } else {
        e.to_string()
    }
}
