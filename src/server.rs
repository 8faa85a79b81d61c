//! The accept loop: TLS handshakes, per-connection timeouts, HTTP/1.1 and HTTP/2 serving, and
//! the graceful drain on shutdown. Routing decisions are the router's.

use std::convert::Infallible;
use std::sync::Arc;
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
                            serve_connection(stream, conn, app, &builder, watcher).await;
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                }
                None => {
                    let conn = ClientConn { peer, tls: false };
                    serve_connection(stream, conn, app, &builder, watcher).await;
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

async fn serve_connection<I>(
    io: I,
    conn: ClientConn,
    app: Arc<App>,
    builder: &Builder,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let app = app.clone();
        async move { Ok::<_, Infallible>(app.handle(request, conn).await) }
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(connection).await {
        debug!(peer = %conn.peer, error = %e, "connection ended with an error");
    }
}
