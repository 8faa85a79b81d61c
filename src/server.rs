//! The accept loop: TLS handshakes, per-connection timeouts, HTTP/1.1 and HTTP/2 serving, and
//! the graceful drain on shutdown. Routing decisions are the router's.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::config::ServerConfig;
use crate::forward::ClientConn;
use crate::router::App;

type Builder = auto::Builder<TokioExecutor>;

/// Serves `listener` until `shutdown` flips to `true`, then drains for `server.shutdown_grace`.
pub async fn run(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Arc<App>,
    settings: &ServerConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let builder = Arc::new(http_builder(settings));
    let handshake_timeout = settings.tls_handshake_timeout.0;
    let first_request_timeout = settings.header_read_timeout.0;
    let graceful = GracefulShutdown::new();

    loop {
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
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let conn = ClientConn { peer, tls: true };
                            serve_connection(
                                stream,
                                conn,
                                app,
                                &builder,
                                watcher,
                                first_request_timeout,
                            )
                            .await;
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                }
                None => {
                    let conn = ClientConn { peer, tls: false };
                    serve_connection(stream, conn, app, &builder, watcher, first_request_timeout)
                        .await;
                }
            }
        });
    }

    drop(listener);
    let grace = settings.shutdown_grace.0;
    info!(
        open = graceful.count(),
        ?grace,
        "stopped accepting; draining open connections"
    );
    tokio::select! {
        _ = graceful.shutdown() => info!("all connections drained"),
        _ = tokio::time::sleep(grace) => warn!(?grace, "grace period over; closing the remaining connections"),
    }
}

fn http_builder(settings: &ServerConfig) -> Builder {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout.0)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    builder
}

/// Serves one connection. The first request must arrive within `first_request_timeout`:
/// hyper's `header_read_timeout` starts only once the auto builder has told HTTP/1 from HTTP/2
/// by the first bytes, and HTTP/2 has no such timeout, so a client that completes the TLS
/// handshake and then sends nothing (or one byte) would otherwise hold the connection forever.
async fn serve_connection<I>(
    io: I,
    conn: ClientConn,
    app: Arc<App>,
    builder: &Builder,
    watcher: Watcher,
    first_request_timeout: Duration,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let requested = Arc::new(AtomicBool::new(false));
    let service = service_fn({
        let requested = requested.clone();
        move |request| {
            requested.store(true, Ordering::Relaxed);
            let app = app.clone();
            async move { Ok::<_, Infallible>(app.handle(request, conn).await) }
        }
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(watcher.watch(connection));
    let result = tokio::select! {
        result = &mut connection => result,
        _ = tokio::time::sleep(first_request_timeout) => {
            if !requested.load(Ordering::Relaxed) {
                debug!(peer = %conn.peer, "no request within the header read timeout; closing");
                return;
            }
            connection.await
        }
    };
    if let Err(e) = result {
        debug!(peer = %conn.peer, error = %e, "connection ended with an error");
    }
}
