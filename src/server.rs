//! The accept loop: TLS handshakes, per-connection timeouts, HTTP/1.1 and HTTP/2 serving, and
//! the graceful drain on shutdown. Routing decisions are the router's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::config::ServerConfig;
use crate::forward::ClientConn;
use crate::metrics::Metrics;
use crate::router::App;

type Builder = auto::Builder<TokioExecutor>;

/// Serves `listener` until `shutdown` flips to `true`, then drains for `server.shutdown_grace`.
/// What all workers share about accepting connections.
#[derive(Clone)]
pub struct Admission {
    /// One permit per open connection, across every worker (`server.max_connections`).
    pub slots: Arc<Semaphore>,
    /// Workers whose listener is still open; the last to close logs that accepting stopped.
    pub listening: Arc<AtomicUsize>,
}

/// One worker's accept loop.
pub async fn run(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Arc<App>,
    metrics: Arc<Metrics>,
    settings: &ServerConfig,
    mut shutdown: watch::Receiver<bool>,
    admission: Admission,
) {
    let slots = admission.slots;
    let builder = Arc::new(http_builder(settings));
    let handshake_timeout = settings.tls_handshake_timeout.0;
    let first_request = settings.header_read_timeout.0;
    let graceful = GracefulShutdown::new();
    // At the connection cap we stop accepting, and new clients wait in the kernel's listen
    // backlog instead of taking the proxy down.

    loop {
        let permit = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // the semaphore is never closed
            },
        };
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let (app, builder, tls) = (app.clone(), builder.clone(), tls.clone());
        let open = OpenConnection::new(metrics.clone());
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _slot = (permit, open);
            match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let conn = ClientConn { peer, tls: true };
                            serve_connection(stream, conn, app, &builder, watcher, first_request)
                                .await;
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
                None => {
                    let conn = ClientConn { peer, tls: false };
                    serve_connection(stream, conn, app, &builder, watcher, first_request).await;
                }
            }
        });
    }

    drop(listener);
    let grace = settings.shutdown_grace.0;
    debug!(open = graceful.count(), "worker closed its listener");
    // Only once every worker's socket is closed is the port really closed to new clients.
    if admission.listening.fetch_sub(1, Ordering::AcqRel) == 1 {
        info!(?grace, "stopped accepting; draining open connections");
    }
    tokio::select! {
        _ = graceful.shutdown() => info!("all connections drained"),
        _ = tokio::time::sleep(grace) => warn!(?grace, "grace period over; closing the remaining connections"),
    }
}

/// Counts an open client connection for as long as it lives.
struct OpenConnection(Arc<Metrics>);

impl OpenConnection {
    fn new(metrics: Arc<Metrics>) -> Self {
        metrics.open_connections.inc();
        Self(metrics)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open_connections.dec();
    }
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
        // Dead peers are found by pings; a stalled one is dropped.
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// Serves one connection. A client must send its first request within `first_request`
/// (`server.header_read_timeout`): before hyper has a request to time, it has no timer of its
/// own (the HTTP/1-vs-2 sniff and the HTTP/2 preface wait forever), so a silent connection would
/// hold its slot for good.
async fn serve_connection<I>(
    io: I,
    conn: ClientConn,
    app: Arc<App>,
    builder: &Builder,
    watcher: Watcher,
    first_request: Duration,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let requested = Arc::new(AtomicBool::new(false));
    let service = service_fn({
        let requested = requested.clone();
        move |request| {
            requested.store(true, Ordering::Relaxed);
            // `handle`'s own future, not an `async` block around it: the block would hold that
            // future (several KiB) a second time, and hyper moves this one once per request.
            app.clone().handle(request, conn)
        }
    });
    let connection =
        watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(io), service));
    tokio::pin!(connection);
    let result = tokio::select! {
        result = &mut connection => result,
        _ = tokio::time::sleep(first_request) => {
            if !requested.load(Ordering::Relaxed) {
                debug!(peer = %conn.peer, "no request within the header timeout; closing");
                return;
            }
            connection.await
        }
    };
    if let Err(e) = result {
        debug!(peer = %conn.peer, error = %e, "connection ended with an error");
    }
}

/// Binds one listening socket on `addr` and hands each of `count` workers a duplicate of it.
/// Every worker polls the same accept queue, so a worker with a free connection slot takes the
/// next client (with `SO_REUSEPORT` sockets the kernel would pin each client to one worker's
/// queue, even when that worker is at its limit and another is idle).
pub fn bind_listeners(
    addr: SocketAddr,
    count: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
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
