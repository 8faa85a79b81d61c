//! One worker's pool of HTTP/1.1 connections to the Node upstream.
//!
//! Each worker thread runs its own single-threaded runtime and owns one pool, so a checkout is a
//! `pop` from a short list under a lock no other thread takes: no hashed pool keys, no channel
//! to a pool task (what hyper-util's general-purpose client does for every request).
//!
//! A connection is hyper's [`http1::SendRequest`] plus its [`http1::Connection`], the state
//! machine that reads and writes the socket. hyper's usual pattern spawns the `Connection` as a
//! task of its own; then every request is a hand-off between two tasks (the request through a
//! channel, the response through a oneshot, each body chunk through another channel, each with a
//! wake-up of the other task) plus a task per request waiting to return the connection to the
//! pool. Here the `Connection` lives beside its `SendRequest` and whoever holds the pair polls it:
//! - a request without a body ([`UpstreamPool::send`], the common case) drives the connection
//!   from the client's own task, first until the response head arrives, then from the response
//!   body ([`PooledBody`]) until its last byte, which puts the connection back in the pool;
//! - a request with a body ([`UpstreamPool::send_detached`]) gets a task that drives the
//!   connection, so the upload keeps flowing even while the client is not reading the response
//!   (full duplex), and the task puts the connection back when the exchange is over;
//! - an upgrade ([`UpstreamPool::send_upgrade`]) gets a task that hands the socket to the tunnel
//!   after a `101`; that connection is never reused.
//!
//! The rules are the ones that keep a pool in front of Node correct:
//! - an idle connection is never used after `pool_idle_timeout`, which the config keeps below
//!   Node's 5 s keep-alive, so requests do not race the upstream closing the socket;
//! - at most `pool_max_idle` idle connections are kept; idle ones past their time, and ones the
//!   upstream closed, are dropped by a sweep, even when no request comes;
//! - a connection goes back to the pool only once hyper says it is ready for the next request
//!   (its response body fully read), never while a body or an upgrade still owns it;
//! - a request a reused connection gave back unsent (the upstream had closed it) is sent again
//!   on another connection: nothing reached the upstream, so this is safe for every method. The
//!   other idle connections are checked at once: the upstream closes them by idle time, or all
//!   together when it restarts, so where one is found closed, others usually are too;
//! - whether a failed exchange may be retried is the caller's call ([`closed_before_answer`]
//!   says the upstream closed the connection before any answer); a retry asks for a new
//!   connection ([`NewConnection`]), as the pooled ones idle as long may be closing too.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use crate::config::UpstreamConfig;

/// Largest read buffer per upstream connection, and so the largest response head (nginx's
/// default is one page) and body chunk: a body moves in 16 KiB steps, so what a client that
/// does not read makes the proxy hold stays near `server.http2_stream_buffer` per stream
/// (hyper's default is ~400 KiB).
const MAX_BUF_SIZE: usize = 16 * 1024;

/// The shortest interval between two sweeps of expired idle connections.
const MIN_SWEEP_PERIOD: Duration = Duration::from_millis(100);

/// How many reused connections one request may find closed before a fresh one is opened.
const MAX_STALE_CHECKOUTS: usize = 3;

/// Why a request got no response from the upstream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// No connection could be opened (refused, unresolvable, `connect_timeout`).
    #[error("{0}")]
    Connect(#[source] io::Error),
    /// A connection was open but the exchange failed (closed early, malformed response, the
    /// request body broke).
    #[error("{0}")]
    Protocol(#[source] hyper::Error),
}

/// A request extension: send this request on a new connection, never a pooled one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NewConnection;

/// `true` when the upstream closed the connection after the request was (maybe) written and
/// before any response: its end of the connection closed (`IncompleteMessage`), or reset (as
/// a keep-alive close does when the request arrives in the instant before it: the kernel
/// resets a socket closed with unread data), or the request was cancelled with it.
pub(crate) fn closed_before_answer(error: &hyper::Error) -> bool {
    let reset = std::error::Error::source(error)
        .and_then(|cause| cause.downcast_ref::<io::Error>())
        .is_some_and(|io| {
            matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionAborted
            )
        });
    error.is_incomplete_message() || error.is_canceled() || reset
}

/// The bounds hyper puts on a request body, in one place.
pub(crate) trait RequestBody: Body<Data = Bytes> + Send + Unpin + 'static {}
impl<B> RequestBody for B
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
}

pub(crate) struct UpstreamPool<B: RequestBody> {
    inner: Arc<Inner<B>>,
}

struct Inner<B: RequestBody> {
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

struct Idle<B: RequestBody> {
    conn: Box<Conn<B>>,
    since: Instant,
}

/// One open upstream connection: the handle requests are sent on, and the connection state
/// machine, which does nothing unless whoever holds the pair polls it.
struct Conn<B: RequestBody> {
    sender: SendRequest<B>,
    driver: http1::Connection<TokioIo<TcpStream>, B>,
    /// Whom the connection wakes (see [`Relay`]).
    relay: Arc<Relay>,
    /// `relay` as the waker the connection is polled with.
    waker: Waker,
}

/// The waker a connection is polled with: it passes wake-ups on to the task that last drove
/// the connection, except while that task is itself doing something that wakes the
/// connection's waker, which would only poll the whole client connection once more for
/// nothing: queueing a request (the next drive writes it) and taking a chunk of the response
/// body (which tells the connection it may read the next one; the task drives the
/// connection again before it waits). Wake-ups from the socket come while no task runs and
/// always pass.
struct Relay {
    task: Mutex<Waker>,
    quiet: AtomicBool,
}

impl Relay {
    fn register(&self, waker: &Waker) {
        let mut task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if !task.will_wake(waker) {
            task.clone_from(waker);
        }
    }

    /// Runs `f` with wake-ups dropped.
    fn quietly<T>(&self, f: impl FnOnce() -> T) -> T {
        self.quiet.store(true, Ordering::Relaxed);
        let out = f();
        self.quiet.store(false, Ordering::Relaxed);
        out
    }
}

impl std::task::Wake for Relay {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.quiet.load(Ordering::Relaxed) {
            self.task
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .wake_by_ref();
        }
    }
}

impl<B: RequestBody> Conn<B>
where
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn new(sender: SendRequest<B>, driver: http1::Connection<TokioIo<TcpStream>, B>) -> Self {
        let relay = Arc::new(Relay {
            task: Mutex::new(Waker::noop().clone()),
            quiet: AtomicBool::new(false),
        });
        Self {
            sender,
            driver,
            waker: Waker::from(relay.clone()),
            relay,
        }
    }

    /// Lets the connection read and write what it can, then wake `cx`'s task when it can do
    /// more; `true` once it has ended (closed by either side, or broken). An ended connection
    /// must be dropped: that is what hands a request it never sent back to its sender.
    fn drive(&mut self, cx: &Context<'_>) -> bool {
        self.relay.register(cx.waker());
        poll_driver(&mut self.driver, &mut Context::from_waker(&self.waker))
    }

    /// Like [`drive`](Self::drive), for nobody to wake (the connection is idle).
    fn drive_idle(&mut self) -> bool {
        poll_driver(&mut self.driver, &mut Context::from_waker(Waker::noop()))
    }

    /// `true` if the connection is open and ready for the next request. Usually the drive that
    /// read the end of the response has left it so; otherwise it gets one more poll.
    fn is_reusable(&mut self) -> bool {
        self.sender.is_ready() || (!self.drive_idle() && self.sender.is_ready())
    }
}

/// Polls a connection; `true` once it has ended.
fn poll_driver<B: RequestBody>(
    driver: &mut http1::Connection<TokioIo<TcpStream>, B>,
    cx: &mut Context<'_>,
) -> bool
where
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match Pin::new(driver).poll(cx) {
        Poll::Pending => false,
        Poll::Ready(Ok(())) => true,
        Poll::Ready(Err(e)) => {
            debug!(error = %e, "upstream connection ended with an error");
            true
        }
    }
}

/// How a request's connection is driven while the exchange lasts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// From the caller's task, then from the response body.
    InTask,
    /// By a task of its own, which returns the connection to the pool afterwards.
    Detached,
    /// By a task of its own that completes a protocol upgrade; never reused.
    Upgrade,
}

impl<B: RequestBody> UpstreamPool<B>
where
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub(crate) fn new(config: &UpstreamConfig) -> Self {
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

    /// Sends a request without a body (origin-form URI, `Host` set) on a pooled or new
    /// connection driven from the caller's task. The connection returns to the pool when the
    /// response body has been read to its end; dropping the body earlier closes it.
    pub(crate) fn send(
        &self,
        request: Request<B>,
    ) -> impl Future<Output = Result<Response<PooledBody<B>>, SendError>> + '_ {
        // Not an `async fn`: a wrapper layer would move the request and the response once more.
        self.exchange(request, Mode::InTask)
    }

    /// Sends a request whose body is still streaming in; the connection is driven by a task of
    /// its own, so the upload and the response flow independently.
    pub(crate) fn send_detached(
        &self,
        request: Request<B>,
    ) -> impl Future<Output = Result<Response<PooledBody<B>>, SendError>> + '_ {
        self.exchange(request, Mode::Detached)
    }

    /// Sends an upgrade request (WebSocket); after a `101` the connection belongs to the tunnel.
    pub(crate) fn send_upgrade(
        &self,
        request: Request<B>,
    ) -> impl Future<Output = Result<Response<PooledBody<B>>, SendError>> + '_ {
        self.exchange(request, Mode::Upgrade)
    }

    async fn exchange(
        &self,
        mut request: Request<B>,
        mode: Mode,
    ) -> Result<Response<PooledBody<B>>, SendError> {
        let mut stale = 0;
        let fresh_only = request.extensions().get::<NewConnection>().is_some();
        loop {
            let reused = if stale < MAX_STALE_CHECKOUTS && !fresh_only {
                self.inner.checkout()
            } else {
                None
            };
            let is_reused = reused.is_some();
            let conn = match reused {
                Some(conn) => conn,
                // Boxed: opening a connection is rare, and its future is the largest state of
                // this one, which every request moves through the layers above.
                None => Box::pin(self.inner.connect()).await?,
            };
            let sent = match mode {
                Mode::InTask => self.in_task(conn, request).await,
                Mode::Detached => self.detached(conn, request).await,
                Mode::Upgrade => upgrade(conn, request).await,
            };
            match sent {
                Ok(response) => return Ok(response),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if is_reused => {
                        debug!(error = %e.error(), "pooled upstream connection was closed; sending on another");
                        stale += 1;
                        self.inner.drop_closed();
                        request = unsent;
                    }
                    _ => return Err(SendError::Protocol(e.into_error())),
                },
            }
        }
    }

    /// Writes the request and reads the response head, polling the connection from this task.
    async fn in_task(
        &self,
        mut conn: Box<Conn<B>>,
        request: Request<B>,
    ) -> Result<Response<PooledBody<B>>, TrySendError<Request<B>>> {
        let sender = &mut conn.sender;
        let mut response = pin!(conn.relay.quietly(|| sender.try_send_request(request)));
        let mut conn = Some(conn);
        // Only a poll of the connection can complete the response, and one always comes right
        // before: nobody needs waking for it (a wake-up would only re-poll this task).
        let head = poll_fn(|cx| {
            if let Some(c) = conn.as_mut()
                && c.drive(cx)
            {
                // Dropping the ended connection settles the response (an unsent request
                // comes back with it).
                conn = None;
            }
            response
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
        })
        .await?;
        let (parts, body) = head.into_parts();
        let lease = conn.map(|conn| Lease {
            conn,
            pool: self.inner.clone(),
        });
        let mut body = PooledBody { inner: body, lease };
        if body.inner.is_end_stream() {
            body.release();
        }
        Ok(Response::from_parts(parts, body))
    }

    /// Writes the request from a task of its own, which puts the connection back in the pool
    /// once the exchange is over.
    async fn detached(
        &self,
        mut conn: Box<Conn<B>>,
        request: Request<B>,
    ) -> Result<Response<PooledBody<B>>, TrySendError<Request<B>>> {
        // Quietly: the last task that drove this connection has nothing to do with it now.
        let sender = &mut conn.sender;
        let response = conn.relay.quietly(|| sender.try_send_request(request));
        let pool = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            // Until the connection ends or wants the next request (response body read, request
            // body written).
            let ended = poll_fn(|cx| {
                if conn.drive(cx) {
                    Poll::Ready(true)
                } else if conn.sender.is_ready() {
                    Poll::Ready(false)
                } else {
                    Poll::Pending
                }
            })
            .await;
            if !ended && let Some(pool) = pool.upgrade() {
                pool.checkin(conn);
            }
        });
        let response = response.await?;
        Ok(response.map(|inner| PooledBody { inner, lease: None }))
    }

    /// Idle connections now in the pool.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.inner.lock().len()
    }
}

/// Writes an upgrade request on a connection that is then driven by its own task until the
/// upgrade (or the upstream's refusal of it) is done. The connection is closed afterwards.
async fn upgrade<B: RequestBody>(
    conn: Box<Conn<B>>,
    request: Request<B>,
) -> Result<Response<PooledBody<B>>, TrySendError<Request<B>>>
where
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Conn {
        mut sender,
        driver,
        relay,
        ..
    } = *conn;
    // Quietly: the last task that drove this connection has nothing to do with it now.
    let response = relay.quietly(|| sender.try_send_request(request));
    tokio::spawn(async move {
        // `with_upgrades`: a 101 hands the socket to the WebSocket tunnel.
        if let Err(e) = driver.with_upgrades().await {
            debug!(error = %e, "upstream connection ended with an error");
        }
    });
    let response = response.await?;
    // No further request on this connection: it closes once this exchange is done.
    drop(sender);
    Ok(response.map(|inner| PooledBody { inner, lease: None }))
}

/// A connection on loan to one exchange, and the pool it goes back to.
struct Lease<B: RequestBody> {
    conn: Box<Conn<B>>,
    pool: Arc<Inner<B>>,
}

/// An upstream response body. When its connection is driven from the client's task
/// ([`UpstreamPool::send`]), reading the body is what moves the connection; the last byte puts
/// it back in the pool, and dropping the body before then closes it.
pub(crate) struct PooledBody<B: RequestBody> {
    inner: Incoming,
    lease: Option<Lease<B>>,
}

impl<B: RequestBody> PooledBody<B>
where
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// The body is read: the connection goes back to the pool if it is ready for another
    /// request, and is closed otherwise.
    fn release(&mut self) {
        if let Some(mut lease) = self.lease.take()
            && lease.conn.is_reusable()
        {
            lease.pool.checkin(lease.conn);
        }
    }
}

impl<B: RequestBody> Body for PooledBody<B>
where
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = match this.lease.as_mut() {
            None => Pin::new(&mut this.inner).poll_frame(cx),
            Some(lease) => {
                // Data reaches `inner` only from the connection, polled right here: asking for
                // it, moving the connection, then taking what arrived needs no wake-up between.
                let conn = &mut lease.conn;
                let inner = &mut this.inner;
                let mut quiet = Context::from_waker(Waker::noop());
                match conn
                    .relay
                    .quietly(|| Pin::new(&mut *inner).poll_frame(&mut quiet))
                {
                    Poll::Pending => {
                        if conn.drive(cx) {
                            // Ended: what it read is in `inner` already, followed by the end
                            // or an error.
                            this.lease = None;
                            Pin::new(&mut this.inner).poll_frame(cx)
                        } else {
                            conn.relay
                                .quietly(|| Pin::new(&mut *inner).poll_frame(&mut quiet))
                        }
                    }
                    ready => ready,
                }
            }
        };
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.release(),
            // A broken body leaves the connection in no state for another request.
            Poll::Ready(Some(Err(_))) => this.lease = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: RequestBody> std::fmt::Debug for PooledBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody")
            .field("pooled", &self.lease.is_some())
            .finish_non_exhaustive()
    }
}

impl<B: RequestBody> Inner<B>
where
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn lock(&self) -> MutexGuard<'_, VecDeque<Idle<B>>> {
        // The list stays consistent even if a holder panicked: it holds only whole entries and
        // no operation leaves it half-changed.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The newest idle connection that is still usable. Older entries than an expired one are
    /// expired too, so the first expired entry ends the search and empties the list.
    fn checkout(&self) -> Option<Box<Conn<B>>> {
        let now = Instant::now();
        let mut idle = self.lock();
        while let Some(entry) = idle.pop_back() {
            if now.duration_since(entry.since) >= self.idle_timeout {
                idle.clear();
                return None;
            }
            if entry.conn.sender.is_ready() {
                return Some(entry.conn);
            }
        }
        None
    }

    /// Keeps a connection that is ready for its next request, up to `max_idle`.
    fn checkin(self: &Arc<Self>, conn: Box<Conn<B>>) {
        let now = Instant::now();
        {
            let mut idle = self.lock();
            self.drop_expired(&mut idle, now);
            if idle.len() >= self.max_idle {
                return;
            }
            idle.push_back(Idle { conn, since: now });
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

    /// Drops the idle connections the upstream has closed (each is polled once, with nobody
    /// to wake).
    fn drop_closed(&self) {
        self.lock()
            .retain_mut(|e| !e.conn.drive_idle() && e.conn.sender.is_ready());
    }

    async fn connect(&self) -> Result<Box<Conn<B>>, SendError> {
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
        let (sender, driver) = http1::Builder::new()
            .max_buf_size(MAX_BUF_SIZE)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Protocol)?;
        // Boxed: the pair (~700 bytes) moves in and out of the pool and with each response
        // body as a pointer.
        let mut conn = Box::new(Conn::new(sender, driver));
        // A connection that dies before it can take a request never reached the upstream's
        // application: that is a connect failure (502 upstream_unavailable), not a broken exchange.
        poll_fn(|cx| {
            if conn.drive(cx) {
                Poll::Ready(Err(SendError::Connect(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the upstream closed the connection before it was used",
                ))))
            } else if conn.sender.is_ready() {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        })
        .await?;
        Ok(conn)
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

/// Every `period`, for as long as the pool exists: drops idle connections past their time and
/// those the upstream closed (each idle connection is polled once, with nobody to wake).
async fn sweep<B: RequestBody>(pool: Weak<Inner<B>>, period: Duration)
where
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        pool.drop_expired(&mut pool.lock(), Instant::now());
        pool.drop_closed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PositiveDuration, UpstreamUrl};
    use http_body_util::{BodyExt, Full};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    type Pool = UpstreamPool<Full<Bytes>>;

    /// A keep-alive upstream, counting accepted connections and connections the client closed.
    /// It answers by path: `/chunked` with a chunked `ok`, `/empty` with a 204, `/close` with
    /// `ok` and `Connection: close` (then closes), `/big` with 1 MiB, anything else with `ok` (its
    /// headers only for `HEAD`).
    /// A request body is read by its `content-length`.
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

    fn answer(head: &str) -> Vec<u8> {
        let path = head.split(' ').nth(1).unwrap_or("/");
        match path {
            "/chunked" => {
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                    .to_vec()
            }
            "/empty" => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
            "/close" => {
                b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok".to_vec()
            }
            "/big" => {
                let mut big = b"HTTP/1.1 200 OK\r\ncontent-length: 1048576\r\n\r\n".to_vec();
                big.resize(big.len() + (1 << 20), b'x');
                big
            }
            _ if head.starts_with("HEAD ") => {
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n".to_vec()
            }
            _ => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
        }
    }

    fn content_length(head: &str) -> usize {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.trim().parse().unwrap())
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
                            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                            let length = content_length(&head);
                            if buf.len() < end + 4 + length {
                                break; // the rest of the body is still coming
                            }
                            buf.drain(..end + 4 + length);
                            if socket.write_all(&answer(&head)).await.is_err() {
                                c.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            if head.starts_with("GET /close ") {
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
        get_path(pool, "/").await
    }

    fn request(method: &str, path: &str, body: &'static str) -> Request<Full<Bytes>> {
        Request::builder()
            .method(method)
            .uri(path)
            .header("host", "upstream.test")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    }

    async fn get_path(pool: &Pool, path: &str) -> Result<String, SendError> {
        let response = pool.send(request("GET", path, "")).await?;
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

    /// Accepts `count` connections and answers one request on each with keep-alive; then,
    /// when `close` is sent, closes every socket, as a restarting upstream does.
    async fn closing_together(
        count: usize,
        close: tokio::sync::oneshot::Receiver<()>,
    ) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut sockets = Vec::new();
            for _ in 0..count {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await.unwrap();
                socket.write_all(&answer("GET / ")).await.unwrap();
                sockets.push(socket);
            }
            let _ = close.await;
            drop(sockets);
            // Later connections are answered as usual.
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await.unwrap();
                socket.write_all(&answer("GET / ")).await.unwrap();
                let _ = socket.read(&mut buf).await;
            }
        });
        (addr, server)
    }

    #[tokio::test]
    async fn one_connection_found_closed_drops_every_closed_idle_connection() {
        let (close, closed) = tokio::sync::oneshot::channel();
        let (addr, server) = closing_together(5, closed).await;
        let pool = pool(addr, Duration::from_secs(4), 8);
        let all = futures_util::future::join_all((0..5).map(|_| get(&pool))).await;
        assert!(all.iter().all(|r| r.as_deref().ok() == Some("ok")));
        settle().await;
        assert_eq!(pool.idle_count(), 5);
        // The sweep's first round (at its start) is over; the next is seconds away.
        tokio::time::sleep(Duration::from_millis(20)).await;
        close.send(()).unwrap();
        // The upstream closes all five; the runtime sees their ends.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(get(&pool).await.unwrap(), "ok");
        settle().await;
        // Only the new connection is left: the first one found closed had the rest checked.
        assert_eq!(pool.idle_count(), 1);
        server.abort();
    }

    /// Reads one request, then ends the connection without an answer: with a FIN, or with a
    /// reset (a close with unread data, as when a keep-alive close meets the request).
    async fn ends_under_the_request(reset: bool) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await.unwrap();
            if reset {
                socket2::SockRef::from(&socket)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_connection_ended_under_a_written_request_is_closed_before_answer() {
        for reset in [false, true] {
            let pool = pool(
                ends_under_the_request(reset).await,
                Duration::from_secs(4),
                8,
            );
            match get(&pool).await {
                Err(SendError::Protocol(e)) => assert!(closed_before_answer(&e), "{e:?}"),
                other => panic!("reset {reset}: {other:?}"),
            }
        }
        // A malformed answer is not a closed connection: retrying would not help.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await.unwrap();
            socket.write_all(b"NOT HTTP\r\n\r\n").await.unwrap();
        });
        match get(&pool(addr, Duration::from_secs(4), 8)).await {
            Err(SendError::Protocol(e)) => assert!(!closed_before_answer(&e), "{e:?}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_request_asking_for_a_new_connection_gets_one() {
        let up = upstream().await;
        let pool = pool(up.addr, Duration::from_secs(4), 8);
        assert_eq!(get(&pool).await.unwrap(), "ok");
        settle().await;
        let mut fresh = request("GET", "/", "");
        fresh.extensions_mut().insert(NewConnection);
        let body = pool.send(fresh).await.unwrap().into_body();
        assert_eq!(body.collect().await.unwrap().to_bytes(), "ok");
        assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
        // Both are pooled now; a plain request reuses one.
        settle().await;
        assert_eq!(get(&pool).await.unwrap(), "ok");
        assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = free.local_addr().unwrap();
        drop(free);
        let refused = get(&pool(addr, Duration::from_secs(4), 8)).await;
        assert!(matches!(refused, Err(SendError::Connect(_))), "{refused:?}");
    }

    #[tokio::test]
    async fn chunked_and_bodiless_responses_return_the_connection() {
        let up = upstream().await;
        let pool = pool(up.addr, Duration::from_secs(4), 8);
        assert_eq!(get_path(&pool, "/chunked").await.unwrap(), "ok");
        assert_eq!(get_path(&pool, "/empty").await.unwrap(), "");
        let head = pool.send(request("HEAD", "/", "")).await.unwrap();
        assert_eq!(head.into_body().collect().await.unwrap().to_bytes(), "");
        assert_eq!(get(&pool).await.unwrap(), "ok");
        assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_closes_the_connection() {
        let up = upstream().await;
        let pool = pool(up.addr, Duration::from_secs(4), 8);
        let mut body = pool
            .send(request("GET", "/big", ""))
            .await
            .unwrap()
            .into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(!first.is_empty() && first.len() < 1 << 20);
        drop(body);
        assert_eq!(wait_for(&up.closed_by_client, 1).await, 1);
        assert_eq!(pool.idle_count(), 0);
        assert_eq!(get(&pool).await.unwrap(), "ok");
        assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_big_body_read_to_its_end_returns_the_connection() {
        let up = upstream().await;
        let pool = pool(up.addr, Duration::from_secs(4), 8);
        let body = get_path(&pool, "/big").await.unwrap();
        assert_eq!(body.len(), 1 << 20);
        assert_eq!(get(&pool).await.unwrap(), "ok");
        assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn connection_close_is_honoured() {
        let up = upstream().await;
        let pool = pool(up.addr, Duration::from_secs(4), 8);
        assert_eq!(get_path(&pool, "/close").await.unwrap(), "ok");
        assert_eq!(pool.idle_count(), 0);
        assert_eq!(get(&pool).await.unwrap(), "ok");
        assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_request_with_a_body_returns_its_connection_after_the_exchange() {
        let up = upstream().await;
        let pool = pool(up.addr, Duration::from_secs(4), 8);
        for _ in 0..3 {
            let response = pool
                .send_detached(request("POST", "/", "hello"))
                .await
                .unwrap();
            assert_eq!(
                response.into_body().collect().await.unwrap().to_bytes(),
                "ok"
            );
            settle().await;
        }
        assert_eq!(get(&pool).await.unwrap(), "ok");
        assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_upgrade_connection_is_not_reused() {
        let up = upstream().await;
        let pool = pool(up.addr, Duration::from_secs(4), 8);
        // The upstream declines (200, not 101): the connection is closed, not pooled.
        let response = pool.send_upgrade(request("GET", "/", "")).await.unwrap();
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "ok"
        );
        assert_eq!(wait_for(&up.closed_by_client, 1).await, 1);
        assert_eq!(get(&pool).await.unwrap(), "ok");
        assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
    }

    // ---- hyper's behaviour the pool relies on ----
    //
    // The pool drives hyper's `http1::Connection` itself instead of spawning it. These tests
    // use hyper's API directly, without the pool, so a hyper release that changes one of these
    // behaviours fails here, by name, and not somewhere in the forwarding tests.

    /// A handshake with the test upstream, the connection left to the caller to poll.
    async fn raw_connection(
        addr: SocketAddr,
    ) -> (
        SendRequest<Full<Bytes>>,
        http1::Connection<TokioIo<TcpStream>, Full<Bytes>>,
    ) {
        let stream = TcpStream::connect(addr).await.unwrap();
        http1::handshake(TokioIo::new(stream)).await.unwrap()
    }

    /// Polls `driver` alongside `work` until `work` is done (what `Conn::drive` does).
    async fn driven<T>(
        driver: &mut http1::Connection<TokioIo<TcpStream>, Full<Bytes>>,
        work: impl Future<Output = T>,
    ) -> T {
        let mut work = pin!(work);
        poll_fn(|cx| {
            let _ = Pin::new(&mut *driver).poll(cx);
            work.as_mut().poll(cx)
        })
        .await
    }

    #[tokio::test]
    async fn hyper_answers_on_a_connection_polled_by_the_caller_and_is_ready_after_the_body() {
        let up = upstream().await;
        let (mut sender, mut driver) = raw_connection(up.addr).await;
        for _ in 0..2 {
            let asked = sender.try_send_request(request("GET", "/chunked", ""));
            let response = driven(&mut driver, asked).await.expect("a response head");
            let body = driven(&mut driver, response.into_body().collect()).await;
            assert_eq!(body.unwrap().to_bytes(), "ok");
            // The pool's check-in rule: ready once the body is read and the connection has
            // been polled again (`Conn::is_reusable`).
            let _ = poll_fn(|cx| Poll::Ready(Pin::new(&mut driver).poll(cx))).await;
            assert!(
                sender.is_ready(),
                "hyper's SendRequest is ready for the next request"
            );
        }
        assert_eq!(
            up.accepted.load(Ordering::SeqCst),
            1,
            "one connection for both"
        );
    }

    #[tokio::test]
    async fn hyper_gives_back_a_request_it_never_sent_on_a_closed_connection() {
        let up = upstream().await;
        let (mut sender, mut driver) = raw_connection(up.addr).await;
        let asked = sender.try_send_request(request("GET", "/close", ""));
        let response = driven(&mut driver, asked).await.expect("a response head");
        let _ = driven(&mut driver, response.into_body().collect()).await;
        // The upstream closed the socket: the connection ends when polled...
        let ended = poll_fn(|cx| match Pin::new(&mut driver).poll(cx) {
            Poll::Ready(result) => Poll::Ready(result.is_ok()),
            Poll::Pending => Poll::Pending,
        });
        tokio::time::timeout(Duration::from_secs(5), ended)
            .await
            .expect("the closed connection ends");
        drop(driver);
        // ...and a request sent on it now comes back whole (`exchange` resends it elsewhere).
        let refused = sender.try_send_request(request("GET", "/again", "")).await;
        let mut error = refused.expect_err("a closed connection takes no request");
        let unsent = error.take_message().expect("the request comes back unsent");
        assert_eq!(unsent.uri(), "/again");
    }
}
