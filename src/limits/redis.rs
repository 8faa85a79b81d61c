//! The shared backend: GCRA in Redis (`gcra.lua`), one round trip per check, on one
//! multiplexed connection. A check waits at most `limits.redis.timeout`; a failed or late one
//! reports `Unavailable` and the caller applies `on_error`. Connecting never happens on a
//! request: a background probe connects (at start-up, and after the circuit opened), with
//! back-off, on a fresh connection each time (so a connection stuck on a refused password or a
//! dead peer is left behind). One log line per change of state.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo, RedisError, Script, TlsCertificates};
use tokio::runtime::Handle;
use tracing::{debug, info, trace, warn};

use super::breaker::{Backoff, Breaker};
use super::local::Gcra;
use crate::config::{OnError, RedisConfig};
use crate::metrics::{BackendOutcome, Metrics};

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
            client: client(config, ca_pem)?,
            conn: ArcSwapOption::empty(),
            script: Script::new(include_str!("gcra.lua")),
            prefix: config.key_prefix.clone(),
            timeout: config.timeout.0,
            connect_timeout: config.connect_timeout.0,
            on_error: config.on_error,
            shown_url: config.url.to_string(),
            breaker: Breaker::new(config.circuit_failures),
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

    /// Counts one request for `policy`'s `key` in Redis.
    pub(crate) async fn check(&self, policy: &str, key: &str, gcra: Gcra) -> Verdict {
        let shared = &self.shared;
        let conn = match shared.conn.load_full() {
            Some(conn) if !shared.breaker.is_open() => conn,
            _ => {
                shared.metrics.backend_request(BackendOutcome::Skipped);
                return Verdict::Unavailable;
            }
        };
        let started = Instant::now();
        let result = tokio::time::timeout(shared.timeout, shared.eval(&conn, policy, key, gcra));
        let result = result.await;
        shared
            .metrics
            .backend_duration
            .observe(started.elapsed().as_secs_f64());
        trace!(policy, ?result, "rate-limit check in Redis");
        match result {
            Ok(Ok((allowed, wait_us))) => {
                shared.breaker.success();
                if allowed == 1 {
                    shared.metrics.backend_request(BackendOutcome::Allowed);
                    Verdict::Allowed
                } else {
                    shared.metrics.backend_request(BackendOutcome::Limited);
                    Verdict::Limited(Duration::from_micros(wait_us.max(1).unsigned_abs()))
                }
            }
            Ok(Err(e)) => shared.failed(BackendOutcome::Error, describe(&e)),
            Err(_) => shared.failed(
                BackendOutcome::Timeout,
                format!("no answer within {:?}", shared.timeout),
            ),
        }
    }
}

impl Shared {
    /// One EVALSHA (a SCRIPT LOAD and a retry after NOSCRIPT: a restart or SCRIPT FLUSH).
    async fn eval(
        &self,
        conn: &ConnectionManager,
        policy: &str,
        key: &str,
        gcra: Gcra,
    ) -> Result<(i64, i64), RedisError> {
        let t = gcra.emission_interval().as_micros();
        let tau = t.saturating_mul(u128::from(gcra.burst.saturating_sub(1)));
        let mut conn = conn.clone();
        self.script
            .key(format!("{}{policy}:{key}", self.prefix))
            .arg(u64::try_from(t).unwrap_or(u64::MAX))
            .arg(u64::try_from(tau).unwrap_or(u64::MAX))
            .invoke_async(&mut conn)
            .await
    }

    /// A failed check: counted, and the circuit opened (logged once) after enough of them.
    fn failed(self: &Arc<Self>, outcome: BackendOutcome, reason: String) -> Verdict {
        self.metrics.backend_request(outcome);
        if self.breaker.failure() {
            self.metrics.rate_limit_degraded.set(1);
            warn!(redis = %self.shown_url, %reason, on_error = self.on_error.as_str(),
                "rate-limit backend failing: Redis is skipped and on_error applies until a probe gets an answer");
            self.runtime
                .spawn(probe_until_up(Arc::downgrade(self), false));
        } else {
            debug!(%reason, "rate-limit check failed; on_error applies");
        }
        Verdict::Unavailable
    }

    /// A fresh connection, with the script loaded (proves the password too).
    async fn connect(&self) -> Result<ConnectionManager, String> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.connect_timeout))
            .set_number_of_retries(0);
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
fn client(config: &RedisConfig, ca_pem: Option<Vec<u8>>) -> Result<Client, RedisSetupError> {
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
