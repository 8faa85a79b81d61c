//! The accept loop: admission (`max_connections`, `max_connections_per_ip`), TLS handshakes,
//! HTTP/1.1 and HTTP/2 serving with per-connection timeouts (first request, idle), and the
//! graceful drain on shutdown. Routing decisions are the router's.

mod worker;

use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode, Version};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::HandshakeKind;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::StartError;
use crate::config::{Config, ServerConfig};
use crate::connection::ClientConn;
use crate::connection::{ConnectionSlot, Idleness, InFlight, PerIpConnections, TrackedBody};
use crate::metrics::Metrics;
use crate::routes::App;
use crate::routes::Shared;
use crate::server::worker::Worker;
use crate::tls::{self, CertStore};

type Builder = auto::Builder<TokioExecutor>;

/// How long an HTTP/1 connection stays open once the drain begins (see
/// [`drain_close_delay`]): long enough for a request already on its way, and for
/// a client sending steadily to send one more and be told to go.
const DRAIN_CLOSE_DELAY: Duration = Duration::from_secs(1);

/// HTTP/2 flow-control windows the proxy grants clients: what one stream (256 KiB) and one
/// connection (1 MiB) may upload before the upstream has taken it.
const H2_STREAM_WINDOW: u32 = 256 * 1024;
const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;

/// What all workers share about accepting connections.
#[derive(Clone)]
pub(crate) struct Admission {
    /// One permit per open connection, across every worker (`server.max_connections`).
    pub(crate) slots: Arc<Semaphore>,
    /// Open connections per client address (`server.max_connections_per_ip`).
    pub(crate) per_ip: Arc<PerIpConnections>,
    /// Workers whose listener is still open; the last to close logs that accepting stopped.
    pub(crate) listening: Arc<AtomicUsize>,
}

/// The per-connection timeouts.
#[derive(Clone, Copy)]
struct Timeouts {
    handshake: Duration,
    /// A new connection must send its first request within this (`header_read_timeout`).
    first_request: Duration,
    /// A connection with nothing in flight is closed after this (`idle_timeout`).
    idle: Duration,
}

/// One worker's accept loop: serves `listener` until `shutdown` flips to `true`, then drains
/// for `server.shutdown_grace`.
pub(crate) async fn run(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Arc<App>,
    metrics: Arc<Metrics>,
    settings: &ServerConfig,
    mut shutdown: watch::Receiver<bool>,
    admission: Admission,
) {
    let builder = Arc::new(http_builder(settings));
    let timeouts = Timeouts {
        handshake: settings.tls_handshake_timeout.0,
        first_request: settings.header_read_timeout.0,
        idle: settings.idle_timeout.0,
    };
    // Connections and the tunnels they become hold a token: the drain waits for all of them.
    let drain = TaskTracker::new();
    while let Some((permit, stream, peer)) = next_client(&listener, &admission, &mut shutdown).await
    {
        let Some(slot) = admit(permit, &admission, peer, &drain, &metrics) else {
            continue; // dropped: the client sees the connection closed
        };
        let _ = stream.set_nodelay(true);
        let (app, builder, tls) = (app.clone(), builder.clone(), tls.clone());
        let connection = Connection {
            slot,
            peer,
            shutdown: shutdown.clone(),
            timeouts,
        };
        tokio::spawn(connection.serve(stream, tls, app, builder));
    }
    drop(listener);
    drain_connections(drain, &admission, settings.shutdown_grace.0).await;
}

/// The next client, with a connection slot for it; `None` once shutdown begins. At the
/// connection cap we stop accepting, and new clients wait in the kernel's listen backlog
/// instead of taking the proxy down.
async fn next_client(
    listener: &TcpListener,
    admission: &Admission,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<(OwnedSemaphorePermit, TcpStream, SocketAddr)> {
    loop {
        let permit = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => return None,
            permit = admission.slots.clone().acquire_owned() => permit.ok()?, // never closed
        };
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => return Some((permit, stream, peer)),
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// After the listener closed: waits for this worker's connections (and tunnels) to end, for
/// at most `grace`.
async fn drain_connections(drain: TaskTracker, admission: &Admission, grace: Duration) {
    debug!(open = drain.len(), "worker closed its listener");
    // Only once every worker's socket is closed is the port really closed to new clients.
    if admission.listening.fetch_sub(1, Ordering::AcqRel) == 1 {
        info!(?grace, "stopped accepting; draining open connections");
    }
    drain.close();
    tokio::select! {
        _ = drain.wait() => info!("all connections drained"),
        _ = tokio::time::sleep(grace) => warn!(?grace, "grace period over; closing the remaining connections"),
    }
}

/// The slot for a new connection from `peer`, or `None` when its address is at its cap.
fn admit(
    permit: OwnedSemaphorePermit,
    admission: &Admission,
    peer: SocketAddr,
    drain: &TaskTracker,
    metrics: &Arc<Metrics>,
) -> Option<Arc<ConnectionSlot>> {
    let Some(per_ip) = admission.per_ip.admit(peer.ip()) else {
        metrics.connection_closed("per_ip_limit");
        debug!(%peer, "connection refused: its address is at server.max_connections_per_ip");
        return None;
    };
    Some(Arc::new(ConnectionSlot::new(
        permit,
        per_ip,
        drain.token(),
        metrics.clone(),
    )))
}

fn http_builder(settings: &ServerConfig) -> Builder {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Also closes idle keep-alive connections: the timer runs while waiting for a head.
        .header_read_timeout(settings.header_read_timeout.0)
        .max_buf_size(settings.max_header_bytes)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.http2_max_concurrent_streams)
        .max_header_list_size(settings.max_header_bytes as u32)
        // Rapid-reset floods (CVE-2023-44487): few pending resets allowed, then GOAWAY.
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(256))
        // What a client that never reads can make us hold: this much per stream, whatever
        // window it grants (hyper's default is 400 KiB per stream).
        .max_send_buf_size(settings.http2_stream_buffer)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        // Dead peers are found by pings; a stalled one is dropped.
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// One accepted client connection, from the TLS handshake to its close.
struct Connection {
    slot: Arc<ConnectionSlot>,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
    timeouts: Timeouts,
}

impl Connection {
    async fn serve(
        self,
        stream: TcpStream,
        tls: Option<TlsAcceptor>,
        app: Arc<App>,
        builder: Arc<Builder>,
    ) {
        let Some(acceptor) = tls else {
            let conn = ClientConn {
                peer: self.peer,
                tls: false,
            };
            return self.serve_http(stream, conn, app, &builder).await;
        };
        let metrics = self.slot.metrics().clone();
        let peer = self.peer;
        match tokio::time::timeout(self.timeouts.handshake, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => {
                let resumed = stream.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
                metrics.tls_handshake(resumed);
                let conn = ClientConn { peer, tls: true };
                self.serve_http(stream, conn, app, &builder).await;
            }
            Ok(Err(e)) => {
                metrics.tls_handshake_failures.inc();
                debug!(%peer, error = %e, "TLS handshake failed");
            }
            Err(_) => {
                metrics.tls_handshake_failures.inc();
                debug!(%peer, "TLS handshake timed out");
            }
        }
    }

    /// Serves HTTP until the connection ends, closing it when it stays quiet too long: no
    /// first request within `first_request` (before hyper has a request to time, it has no
    /// timer of its own: the HTTP/1-vs-2 sniff and the HTTP/2 preface would wait forever), or
    /// nothing in flight for `idle` (HTTP/2 then gets a GOAWAY; hyper itself closes idle
    /// HTTP/1 keep-alive connections after `header_read_timeout`). On shutdown it closes as
    /// [`drain_close_delay`] says.
    async fn serve_http<I>(mut self, io: I, conn: ClientConn, app: Arc<App>, builder: &Builder)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let slot = self.slot.clone();
        let service = service_fn(move |request| {
            let http1 = request.version() < Version::HTTP_2;
            let in_flight = slot.request_started(request.version());
            // `handle`'s own future, boxed, then mapped (not an `async` block around it: the
            // block would hold that future, several KiB, a second time). hyper moves the
            // service's future into its dispatcher, and over HTTP/2 into a task it spawns per
            // stream: boxed, it moves as a pointer; boxed before the `map`, it is copied into
            // the box once (GET 45,548 -> 45,355 instructions per request, HTTP/2 59,904 ->
            // 59,700, against boxing the mapped future).
            Box::pin(app.clone().handle(request, conn, slot.clone()))
                .map(move |answered| answered.map(|r| tracked(r, http1, in_flight)))
        });
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(connection);
        let (peer, t) = (self.peer, self.timeouts);
        let mut closing = false;
        // When the drain closes this connection (set once it begins).
        let mut close_at: Option<Instant> = None;
        loop {
            let (idleness, check_again) = self.slot.idleness(t.first_request, t.idle);
            match idleness {
                Idleness::Busy => {}
                Idleness::NeverRequested => {
                    self.slot.metrics().connection_closed("no_request");
                    debug!(%peer, "no request within the header timeout; closing");
                    return;
                }
                // Still idle a whole period after the GOAWAY: the client never finished it.
                Idleness::Idle if closing => return,
                Idleness::Idle => {
                    self.slot.metrics().connection_closed("idle");
                    debug!(%peer, "idle connection; closing");
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        debug!(%peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = self.shutdown.wait_for(|stop| *stop), if !closing && close_at.is_none() => {
                    close_at = Some(Instant::now() + drain_close_delay(&self.slot));
                }
                _ = sleep_for(close_at.map(|at| at.saturating_duration_since(Instant::now()))), if !closing => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = check_after(check_again, &self.slot) => {}
            }
        }
    }
}

/// The drain began: how long until it closes this connection. HTTP/2 at once (GOAWAY:
/// the client knows which requests were not taken). An HTTP/1 connection after
/// [`DRAIN_CLOSE_DELAY`], its responses meanwhile saying `Connection: close`: closed at
/// once, an idle one would reset a request already on its way (or sent in that instant),
/// which the client cannot tell from a failure; this way such a request is answered and
/// the client told to go.
fn drain_close_delay(slot: &ConnectionSlot) -> Duration {
    match slot.start_draining() {
        true => Duration::ZERO,
        false => DRAIN_CLOSE_DELAY,
    }
}

/// The response with its body tracked (in flight until the body is done); during the drain an
/// HTTP/1 response also says its connection closes after it.
fn tracked<B>(response: Response<B>, http1: bool, in_flight: InFlight) -> Response<TrackedBody<B>> {
    let closes = http1 && in_flight.draining();
    let mut response = response.map(|body| TrackedBody::new(body, in_flight));
    if closes && response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let close = HeaderValue::from_static("close");
        response.headers_mut().insert(header::CONNECTION, close);
    }
    response
}

/// Sleeps for `duration`, or forever for `None`.
async fn sleep_for(duration: Option<Duration>) {
    match duration {
        Some(duration) => tokio::time::sleep(duration).await,
        None => std::future::pending().await,
    }
}

/// Sleeps until the connection's timeouts are worth judging again: after `duration` (never for
/// `None`), or as soon as it is polled after hyper took over the connection's timing (its
/// first HTTP/1 request), so that the loop drops the timer instead of polling it on every
/// wake-up until it fires.
async fn check_after(duration: Option<Duration>, slot: &ConnectionSlot) {
    let Some(duration) = duration else {
        return std::future::pending().await;
    };
    let mut sleep = pin!(tokio::time::sleep(duration));
    poll_fn(|cx| match slot.timed_by_hyper() {
        true => Poll::Ready(()),
        false => sleep.as_mut().poll(cx),
    })
    .await
}

/// The bound listeners: one public socket shared by every worker (each holds a duplicate),
/// and the admin listener when it is enabled.
pub(crate) struct Listeners {
    pub(crate) public: Vec<std::net::TcpListener>,
    pub(crate) local_addr: SocketAddr,
    pub(crate) admin: Option<TcpListener>,
}

impl Listeners {
    pub(crate) async fn bind(config: &Config) -> Result<Self, StartError> {
        let addr = config.server.listen;
        let bind_error = |source| StartError::Bind { addr, source };
        let public = bind_shared(addr, config.server.worker_count()).map_err(bind_error)?;
        let local_addr = public[0].local_addr().map_err(bind_error)?;
        let admin = match config.admin.enabled {
            true => {
                let addr = config.admin.listen;
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?;
                Some(listener)
            }
            false => None,
        };
        Ok(Self {
            public,
            local_addr,
            admin,
        })
    }

    pub(crate) fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// Starts one worker thread per public listener; each receiver completes when its worker has
/// drained and stopped.
pub(crate) fn spawn_workers(
    config: &Config,
    listeners: Vec<std::net::TcpListener>,
    certs: &Option<Arc<CertStore>>,
    shared: &Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> Result<Vec<oneshot::Receiver<()>>, StartError> {
    let acceptor = match certs {
        Some(store) => Some(TlsAcceptor::from(Arc::new(tls::server_config(
            store.clone(),
        )?))),
        None => None,
    };
    let admission = Admission {
        slots: Arc::new(Semaphore::new(config.server.max_connections)),
        per_ip: Arc::new(PerIpConnections::new(config.server.max_connections_per_ip)),
        listening: Arc::new(AtomicUsize::new(listeners.len())),
    };
    let mut finished = Vec::with_capacity(listeners.len());
    for (index, listener) in listeners.into_iter().enumerate() {
        let worker = Worker {
            listener,
            acceptor: acceptor.clone(),
            app: App::new(shared),
            metrics: shared.metrics().clone(),
            settings: config.server.clone(),
            shutdown: shutdown.clone(),
            admission: admission.clone(),
        };
        let addr = config.server.listen;
        finished.push(
            worker
                .spawn(index)
                .map_err(|source| StartError::Bind { addr, source })?,
        );
    }
    Ok(finished)
}

/// Binds one listening socket on `addr` and hands each of `count` workers a duplicate of it.
/// Every worker polls the same accept queue, so a worker with a free connection slot takes the
/// next client (with `SO_REUSEPORT` sockets the kernel would pin each client to one worker's
/// queue, even when that worker is at its limit and another is idle).
fn bind_shared(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    let listener: std::net::TcpListener = socket.into();
    let mut listeners = Vec::with_capacity(count.max(1));
    for _ in 1..count.max(1) {
        listeners.push(listener.try_clone()?);
    }
    listeners.push(listener);
    Ok(listeners)
}
