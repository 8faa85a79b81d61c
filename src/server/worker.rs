//! One worker thread: a single-threaded tokio runtime accepting from its duplicate of the
//! shared listening socket, with its own upstream pool (in its [`App`]).

use std::sync::Arc;

use tokio::sync::{oneshot, watch};
use tokio_rustls::TlsAcceptor;

use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::routes::App;
use crate::server::Admission;

pub(crate) struct Worker {
    pub(crate) listener: std::net::TcpListener,
    pub(crate) acceptor: Option<TlsAcceptor>,
    pub(crate) app: Arc<App>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) settings: ServerConfig,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) admission: Admission,
}

impl Worker {
    /// Starts the thread; the receiver completes when it has drained and stopped.
    pub(crate) fn spawn(self, index: usize) -> std::io::Result<oneshot::Receiver<()>> {
        let (done, finished) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("stp-worker-{index}"))
            .spawn(move || {
                self.run(index);
                let _ = done.send(());
            })?;
        Ok(finished)
    }

    fn run(self, index: usize) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                tracing::error!(error = %e, "worker {index}: cannot start its runtime");
                return;
            }
        };
        runtime.block_on(async move {
            match tokio::net::TcpListener::from_std(self.listener) {
                Ok(listener) => {
                    super::run(
                        listener,
                        self.acceptor,
                        self.app,
                        self.metrics,
                        &self.settings,
                        self.shutdown,
                        self.admission,
                    )
                    .await
                }
                Err(e) => tracing::error!(error = %e, "worker {index}: cannot use its listener"),
            }
        });
        // Connections still open after the grace period are dropped with the runtime.
        runtime.shutdown_background();
    }
}
