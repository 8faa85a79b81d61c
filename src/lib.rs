//! stream-token-proxy: a TLS-terminating sidecar in front of a Node.js backend.
//!
//! [`start`] runs the proxy from a [`Config`] and returns a [`ProxyHandle`] with the bound
//! address and a way to shut it down; `main.rs` and the integration tests both use it.
//! `DESIGN.md`-style map of the modules:
//!
//! | module | owns |
//! | --- | --- |
//! | [`config`] | the `proxy.toml` schema, env overrides, validation |
//! | [`tls`] | certificates, the dev certificate, rustls settings |
//! | `server` | accept loop, connection timeouts, graceful drain |
//! | `router` | which path goes where; errors become responses there |
//! | [`forward`] | the upstream client, hop-by-hop headers, upgrades |
//! | [`error`] | the one mapping from errors to status + JSON |

pub mod access_log;
pub mod body;
pub mod config;
pub mod error;
pub mod forward;
mod router;
mod server;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

pub use config::Config;

use crate::forward::Forwarder;
use crate::router::App;
use crate::tls::{CertStore, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running proxy.
#[derive(Debug)]
pub struct ProxyHandle {
    local_addr: SocketAddr,
    certs: Option<Arc<CertStore>>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ProxyHandle {
    /// The public address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The certificate store, when TLS is on.
    pub fn certs(&self) -> Option<&Arc<CertStore>> {
        self.certs.as_ref()
    }

    /// Stops accepting and starts the graceful drain; returns at once.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Waits until the drain is over (all connections closed, or the grace period ran out).
    pub async fn wait(self) {
        if let Err(e) = self.task.await {
            warn!(error = %e, "server task ended abnormally");
        }
    }

    /// `shutdown` then `wait`.
    pub async fn stop(self) {
        self.shutdown();
        self.wait().await;
    }
}

/// Loads certificates, binds the listener and starts serving in the background.
pub async fn start(config: Config) -> Result<ProxyHandle, StartError> {
    let certs = if config.tls.enabled {
        let cert = config.resolve(&config.tls.cert);
        let key = config.resolve(&config.tls.key);
        if config.dev && tls::ensure_dev_certificate(&cert, &key)? {
            warn!(cert = %cert.display(), key = %key.display(),
                "generated a self-signed certificate: DEV ONLY, never use it in production");
        }
        Some(Arc::new(CertStore::load(&cert, &key)?))
    } else {
        None
    };
    let acceptor = match &certs {
        Some(store) => Some(TlsAcceptor::from(Arc::new(tls::server_config(
            store.clone(),
        )?))),
        None => None,
    };

    let addr = config.server.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;

    let app = Arc::new(App {
        forwarder: Forwarder::new(&config.upstream, &config.forwarding),
    });
    let (shutdown, shutdown_rx) = watch::channel(false);
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    info!(listen = %local_addr, upstream = %config.upstream.url, "serving {scheme}");
    let server_settings = config.server.clone();
    let task = tokio::spawn(async move {
        server::run(listener, acceptor, app, &server_settings, shutdown_rx).await;
    });
    Ok(ProxyHandle {
        local_addr,
        certs,
        shutdown,
        task,
    })
}

/// Where a config's certificate and key are, resolved (for tests and `check-config`).
pub fn tls_paths(config: &Config) -> (PathBuf, PathBuf) {
    (
        config.resolve(&config.tls.cert),
        config.resolve(&config.tls.key),
    )
}
