//! One worker's pool of HTTP/1.1 connections to the Node upstream.
//!
//! Each worker thread runs its own single-threaded runtime and owns one pool, so a checkout is a
//! `pop` from a short list under a lock no other thread takes: no hashed pool keys, no channel
//! to a pool task (what hyper-util's general-purpose client does for every request, about a
//! tenth of a forwarded request's instructions; `bench/callgrind.sh`).
//!
//! The rules are the ones that keep a pool in front of Node correct:
//! - an idle connection is never used after `pool_idle_timeout`, which the config keeps below
//!   Node's 5 s keep-alive, so requests do not race the upstream closing the socket;
//! - at most `pool_max_idle` idle connections are kept; idle ones past their time are closed by
//!   a sweep, even when no request comes;
//! - a connection goes back to the pool only once hyper says it is ready for the next request
//!   (its response body fully read), never while a body or an upgrade still owns it;
//! - a request a reused connection gave back unsent (the upstream had closed it) is sent again
//!   on another connection: nothing reached the upstream, so this is safe for every method.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use crate::config::UpstreamConfig;

/// Largest read buffer per upstream connection: a streamed body moves in 64 KiB steps instead
/// of hyper's ~400 KiB default (bench/memory.sh).
const MAX_BUF_SIZE: usize = 64 * 1024;

/// The shortest interval between two sweeps of expired idle connections.
const MIN_SWEEP_PERIOD: Duration = Duration::from_millis(100);

/// How many reused connections one request may find closed before a fresh one is opened.
const MAX_STALE_CHECKOUTS: usize = 3;

/// Why a request got no response from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened (refused, unresolvable, `connect_timeout`).
    #[error("{0}")]
    Connect(#[source] io::Error),
    /// A connection was open but the exchange failed (closed early, malformed response, the
    /// request body broke).
    #[error("{0}")]
    Protocol(#[source] hyper::Error),
}

pub struct UpstreamPool<B> {
    inner: Arc<Inner<B>>,
}

struct Inner<B> {
    /// `host:port`, resolved on each connect unless it is an IP address.
    target: Target,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    /// Idle connections, oldest first: checkouts take the newest (warmest); expired ones are
    /// dropped from the front, closed ones wherever the sweep finds them.
    idle: Mutex<VecDeque<Idle<B>>>,
    /// Set once the sweeping task runs (it is started by the first check-in, from inside the
    /// worker's runtime).
    sweeper_started: AtomicBool,
}

enum Target {
    Addr(SocketAddr),
    Name(String),
}

struct Idle<B> {
    sender: SendRequest<B>,
    since: Instant,
}

impl<B> UpstreamPool<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub fn new(config: &UpstreamConfig) -> Self {
        let authority = &config.url.authority;
        let host_port = match authority.port_u16() {
            Some(_) => authority.as_str().to_owned(),
            None => format!("{}:80", authority.as_str()),
        };
        let target = match host_port.parse() {
            Ok(addr) => Target::Addr(addr),
            Err(_) => Target::Name(host_port),
        };
        Self {
            inner: Arc::new(Inner {
                target,
                connect_timeout: config.connect_timeout.0,
                idle_timeout: config.pool_idle_timeout.0,
                max_idle: config.pool_max_idle,
                idle: Mutex::new(VecDeque::new()),
                sweeper_started: AtomicBool::new(false),
            }),
        }
    }

    /// Sends `request` (origin-form URI, `Host` set) on a pooled or new connection.
    pub async fn send(&self, mut request: Request<B>) -> Result<Response<Incoming>, SendError> {
        let mut stale = 0;
        loop {
            let reused = if stale < MAX_STALE_CHECKOUTS {
                self.inner.checkout()
            } else {
                None
            };
            let is_reused = reused.is_some();
            let mut sender = match reused {
                Some(sender) => sender,
                None => self.inner.connect().await?,
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    self.inner.checkin_when_ready(sender);
                    return Ok(response);
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if is_reused => {
                        debug!(error = %e.error(), "pooled upstream connection was closed; sending on another");
                        stale += 1;
                        request = unsent;
                    }
                    _ => return Err(SendError::Protocol(e.into_error())),
                },
            }
        }
    }

    /// Idle connections now in the pool.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.inner.lock().len()
    }
}

impl<B> Inner<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn lock(&self) -> MutexGuard<'_, VecDeque<Idle<B>>> {
        // The list stays consistent even if a holder panicked: it holds only whole entries and
        // no operation leaves it half-changed.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The newest idle connection that is still usable. Older entries than an expired one are
    /// expired too, so the first expired entry ends the search and empties the list.
    fn checkout(&self) -> Option<SendRequest<B>> {
        let now = Instant::now();
        let mut idle = self.lock();
        while let Some(entry) = idle.pop_back() {
            if now.duration_since(entry.since) >= self.idle_timeout {
                idle.clear();
                return None;
            }
            if entry.sender.is_ready() {
                return Some(entry.sender);
            }
            // Closed by the upstream while idle: dropped here.
        }
        None
    }

    /// Returns a connection to the pool now if it is ready for another request, or once it is
    /// (after the response body has been read).
    fn checkin_when_ready(self: &Arc<Self>, mut sender: SendRequest<B>) {
        if sender.is_ready() {
            self.checkin(sender);
        } else if !sender.is_closed() {
            let pool = Arc::downgrade(self);
            tokio::spawn(async move {
                if sender.ready().await.is_ok()
                    && let Some(pool) = pool.upgrade()
                {
                    pool.checkin(sender);
                }
            });
        }
    }

    fn checkin(self: &Arc<Self>, sender: SendRequest<B>) {
        let now = Instant::now();
        {
            let mut idle = self.lock();
            self.drop_expired(&mut idle, now);
            if idle.len() >= self.max_idle {
                return;
            }
            idle.push_back(Idle { sender, since: now });
        }
        if !self.sweeper_started.swap(true, Ordering::Relaxed) {
            // At most ten sweeps a second, however short the idle timeout is configured.
            let period = self.idle_timeout.max(MIN_SWEEP_PERIOD);
            tokio::spawn(sweep(Arc::downgrade(self), period));
        }
    }

    fn drop_expired(&self, idle: &mut VecDeque<Idle<B>>, now: Instant) {
        while idle
            .front()
            .is_some_and(|e| now.duration_since(e.since) >= self.idle_timeout)
        {
            idle.pop_front();
        }
    }

    async fn connect(&self) -> Result<SendRequest<B>, SendError> {
        let stream = tokio::time::timeout(self.connect_timeout, self.open())
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {:?}", self.connect_timeout),
                )
            })
            .and_then(|opened| opened)
            .map_err(SendError::Connect)?;
        stream.set_nodelay(true).map_err(SendError::Connect)?;
        let (mut sender, connection) = http1::Builder::new()
            .max_buf_size(MAX_BUF_SIZE)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Protocol)?;
        tokio::spawn(async move {
            // `with_upgrades`: a 101 hands the socket to the WebSocket tunnel.
            if let Err(e) = connection.with_upgrades().await {
                debug!(error = %e, "upstream connection ended with an error");
            }
        });
        // A connection that dies before it can take a request never reached the upstream's
        // application: that is a connect failure (502 upstream_unavailable), not a broken exchange.
        sender
            .ready()
            .await
            .map_err(|e| SendError::Connect(io::Error::other(e)))?;
        Ok(sender)
    }

    /// A TCP connection to the first of the target's addresses that accepts.
    async fn open(&self) -> io::Result<TcpStream> {
        let name = match &self.target {
            Target::Addr(addr) => return TcpStream::connect(addr).await,
            Target::Name(name) => name,
        };
        let mut last = None;
        for addr in tokio::net::lookup_host(name.as_str()).await? {
            match TcpStream::connect(addr).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("{name} has no address"))
        }))
    }
}

/// Closes idle connections past their time, every `period`, for as long as the pool exists.
async fn sweep<B>(pool: Weak<Inner<B>>, period: Duration)
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let now = Instant::now();
        let mut idle = pool.lock();
        pool.drop_expired(&mut idle, now);
        idle.retain(|e| !e.sender.is_closed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PositiveDuration, UpstreamUrl};
    use http_body_util::{BodyExt, Empty};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    type Pool = UpstreamPool<Empty<bytes::Bytes>>;

    /// A keep-alive upstream that answers every request head with `200 ok`, counting accepted
    /// connections and connections the client closed.
    struct Upstream {
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
        closed_by_client: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Upstream {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn upstream() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed_by_client = Arc::new(AtomicUsize::new(0));
        let (a, c) = (accepted.clone(), closed_by_client.clone());
        let task = tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                a.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => {
                                c.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if socket.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            accepted,
            closed_by_client,
            task,
        }
    }

    fn pool(addr: SocketAddr, idle: Duration, max_idle: usize) -> Pool {
        let config = UpstreamConfig {
            url: UpstreamUrl::parse(&format!("http://{addr}")).unwrap(),
            pool_idle_timeout: PositiveDuration(idle),
            pool_max_idle: max_idle,
            ..UpstreamConfig::default()
        };
        UpstreamPool::new(&config)
    }

    async fn get(pool: &Pool) -> Result<String, SendError> {
        let request = Request::get("/")
            .header("host", "upstream.test")
            .body(Empty::new())
            .unwrap();
        let response = pool.send(request).await?;
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Ok(String::from_utf8(body.to_vec()).unwrap())
    }

    /// Waits up to 2 s for `counter` to reach `want`; returns its last value.
    async fn wait_for(counter: &AtomicUsize, want: usize) -> usize {
        for _ in 0..100 {
            if counter.load(Ordering::SeqCst) == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        counter.load(Ordering::SeqCst)
    }

    /// Lets the connection tasks run (check-in after a read body happens on their next poll).
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn sequential_requests_share_one_connection() {
        let up = upstream().await;
        let pool = pool(up.addr, Duration::from_secs(4), 8);
        for _ in 0..5 {
            assert_eq!(get(&pool).await.unwrap(), "ok");
            settle().await;
        }
        assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_open_connections_and_keep_at_most_max_idle() {
        let up = upstream().await;
        let pool = pool(up.addr, Duration::from_secs(4), 2);
        let all = futures_util::future::join_all((0..5).map(|_| get(&pool))).await;
        assert!(all.iter().all(|r| r.as_deref().ok() == Some("ok")));
        settle().await;
        assert_eq!(up.accepted.load(Ordering::SeqCst), 5);
        assert_eq!(pool.idle_count(), 2, "max_idle caps the idle list");
        // The three connections beyond the cap were closed, not leaked.
        assert_eq!(wait_for(&up.closed_by_client, 3).await, 3);
    }

    #[tokio::test]
    async fn zero_max_idle_disables_reuse() {
        let up = upstream().await;
        let pool = pool(up.addr, Duration::from_secs(4), 0);
        for _ in 0..3 {
            assert_eq!(get(&pool).await.unwrap(), "ok");
            settle().await;
        }
        assert_eq!(up.accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn idle_connections_expire_and_are_closed_without_traffic() {
        let up = upstream().await;
        let pool = pool(up.addr, Duration::from_millis(200), 8);
        assert_eq!(get(&pool).await.unwrap(), "ok");
        settle().await;
        assert_eq!(pool.idle_count(), 1);
        // No request comes: the sweep closes the idle connection on its own.
        assert_eq!(wait_for(&up.closed_by_client, 1).await, 1);
        assert_eq!(pool.idle_count(), 0);
        // The next request opens a fresh connection.
        assert_eq!(get(&pool).await.unwrap(), "ok");
        assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_while_idle_is_not_used() {
        // Answers one request per connection with keep-alive, then closes it (as Node does
        // after its keep-alive timeout).
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for answer in ["first", "fresh"] {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await.unwrap();
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                    answer.len()
                );
                socket.write_all(head.as_bytes()).await.unwrap();
                socket.write_all(answer.as_bytes()).await.unwrap();
                socket.shutdown().await.unwrap();
            }
        });
        let pool = pool(addr, Duration::from_secs(4), 8);
        assert_eq!(get(&pool).await.unwrap(), "first");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(get(&pool).await.unwrap(), "fresh");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = free.local_addr().unwrap();
        drop(free);
        let refused = get(&pool(addr, Duration::from_secs(4), 8)).await;
        assert!(matches!(refused, Err(SendError::Connect(_))), "{refused:?}");
    }
}
