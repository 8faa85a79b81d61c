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
//! | `server` | accept loop, admission, first-request and idle timeouts, graceful drain |
//! | `connection` | one client connection's slot, per-IP count and requests in flight |
//! | `tunnel` | WebSocket tunnels and their idle timeout |
//! | [`path`] | how Node routers read a path (the token route's matching) |
//! | `router` | which path goes where; errors become responses there |
//! | [`forward`] | the upstream client, hop-by-hop headers, upgrades |
//! | [`auth`] | session-token verification: keys (JWKS, PEM, dev), claims, cache |
//! | [`stream_token`] | minting Stream user tokens |
//! | [`token_route`] | the HTTP face of `POST /api/stream/token`, CORS |
//! | [`limits`] | rate limits (per IP, per user, global, forwarded prefixes), client IP |
//! | [`admin`], [`metrics`] | `/healthz`, `/readyz`, `/metrics` on their own listener |
//! | [`reload`] | certificate and secret rotation without restart |
//! | [`error`] | the one mapping from errors to status + JSON |

pub mod access_log;
pub mod admin;
pub mod auth;
pub mod body;
pub mod config;
mod connection;
pub mod error;
pub mod forward;
pub mod limits;
pub mod metrics;
pub mod path;
pub mod reload;
mod router;
mod server;
pub mod stream_token;
pub mod tls;
pub mod token_route;
mod tunnel;
pub mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

pub use config::Config;

use crate::admin::AdminState;
use crate::auth::dev::{DevKeyError, DevSigner};
use crate::auth::keys::KeyError;
use crate::auth::{KeyStore, Verifier};
use crate::config::{ConfigError, Secret};
use crate::forward::Forwarder;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::router::{App, RequestIds};
use crate::stream_token::StreamMinter;
use crate::tls::{CertStore, TlsError};
use crate::token_route::TokenRoute;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    DevKey(#[from] DevKeyError),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// A running proxy.
#[derive(Debug)]
pub struct ProxyHandle {
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    certs: Option<Arc<CertStore>>,
    keys: Arc<KeyStore>,
    admin: Arc<AdminState>,
    reloader: Arc<Reloader>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ProxyHandle {
    /// The public address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin listener's address (`/healthz`, `/readyz`, `/metrics`), when enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.admin.metrics
    }

    /// Re-reads the certificate, key and secret file now (what SIGHUP does).
    pub fn reload(&self) {
        self.reloader.check(true);
    }

    /// The certificate store, when TLS is on.
    pub fn certs(&self) -> Option<&Arc<CertStore>> {
        self.certs.as_ref()
    }

    /// The session-token keys in force (readiness: `keys().is_ready()`).
    pub fn keys(&self) -> &Arc<KeyStore> {
        &self.keys
    }

    /// Stops accepting and starts the graceful drain (readiness turns 503); returns at once.
    pub fn shutdown(&self) {
        self.admin
            .serving
            .store(false, std::sync::atomic::Ordering::Relaxed);
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

/// Loads certificates and keys, binds the listener and starts serving in the background.
pub async fn start(mut config: Config) -> Result<ProxyHandle, StartError> {
    if config.dev {
        prepare_dev_material(&mut config)?;
    }
    let certs = if config.tls.enabled {
        let (cert, key) = tls_paths(&config);
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

    let metrics = Arc::new(Metrics::new());
    let keys = Arc::new(key_store(&config, metrics.clone())?);
    let secret = config
        .stream
        .api_secret
        .clone()
        .ok_or_else(|| ConfigError {
            origin: "configuration".into(),
            message:
                "the Stream API secret is missing: set STREAM_API_SECRET or stream.api_secret_file"
                    .into(),
        })?;
    if config.stream.api_key.is_empty() {
        warn!(
            "stream.api_key is empty; responses will carry an empty api_key (set STREAM_API_KEY)"
        );
    }
    let limits = Arc::new(Limits::new(&config.limits));
    let minter = Arc::new(StreamMinter::new(&config.stream, &secret));
    let token = TokenRoute::new(
        &config,
        Verifier::new(&config.auth, keys.clone()),
        minter.clone(),
        limits.clone(),
        metrics.clone(),
    );

    let addr = config.server.listen;
    let workers = config.server.worker_count();
    let listeners = server::bind_listeners(addr, workers)
        .map_err(|source| StartError::Bind { addr, source })?;
    let local_addr = listeners[0]
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    let admin_listener = if config.admin.enabled {
        let addr = config.admin.listen;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        Some(listener)
    } else {
        None
    };
    let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());

    let admin = Arc::new(AdminState {
        metrics: metrics.clone(),
        keys: keys.clone(),
        limits: limits.clone(),
        certs: certs.clone(),
        serving: std::sync::atomic::AtomicBool::new(true),
    });
    let secret_file = match (
        &config.stream.api_secret_file,
        config.stream.api_secret_from_env,
    ) {
        (Some(file), false) => Some(config.resolve(file)),
        _ => None,
    };
    let reloader = Arc::new(Reloader::new(
        certs.clone(),
        secret_file,
        minter,
        metrics.clone(),
    ));
    let (shutdown, shutdown_rx) = watch::channel(false);
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    info!(listen = %local_addr, admin = ?admin_addr, upstream = %config.upstream.url, workers, "serving {scheme}");
    let background = [
        tokio::spawn(keys.clone().run_refresh()),
        tokio::spawn(limits.clone().run_maintenance()),
        tokio::spawn(reloader.clone().watch(config.server.reload_interval.0)),
    ];
    let admin_task = admin_listener.map(|l| tokio::spawn(admin::run(l, admin.clone())));
    let token = Arc::new(token);
    let request_ids = Arc::new(RequestIds::default());
    let admission = server::Admission {
        slots: Arc::new(tokio::sync::Semaphore::new(config.server.max_connections)),
        per_ip: Arc::new(connection::PerIpConnections::new(
            config.server.max_connections_per_ip,
        )),
        listening: Arc::new(std::sync::atomic::AtomicUsize::new(workers)),
    };
    let mut finished = Vec::with_capacity(workers);
    for (index, listener) in listeners.into_iter().enumerate() {
        let app = Arc::new(App {
            forwarder: Forwarder::new(&config.upstream, &config.forwarding),
            token: token.clone(),
            limits: limits.clone(),
            metrics: metrics.clone(),
            request_ids: request_ids.clone(),
        });
        let worker = Worker {
            listener,
            acceptor: acceptor.clone(),
            app,
            metrics: metrics.clone(),
            settings: config.server.clone(),
            shutdown: shutdown_rx.clone(),
            admission: admission.clone(),
        };
        finished.push(
            worker
                .spawn(index)
                .map_err(|source| StartError::Bind { addr, source })?,
        );
    }
    let task = tokio::spawn(async move {
        for done in finished {
            let _ = done.await;
        }
        for task in background.iter().chain(admin_task.as_ref()) {
            task.abort();
        }
    });
    Ok(ProxyHandle {
        local_addr,
        admin_addr,
        certs,
        keys,
        admin,
        reloader,
        shutdown,
        task,
    })
}

/// One worker thread: a single-threaded runtime accepting from its copy of the shared listener.
struct Worker {
    listener: std::net::TcpListener,
    acceptor: Option<TlsAcceptor>,
    app: Arc<App>,
    metrics: Arc<Metrics>,
    settings: config::ServerConfig,
    shutdown: watch::Receiver<bool>,
    admission: server::Admission,
}

impl Worker {
    /// Starts the thread; the receiver completes when it has drained and stopped.
    fn spawn(self, index: usize) -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
        let (done, finished) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("stp-worker-{index}"))
            .spawn(move || {
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
                            server::run(
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
                        Err(e) => {
                            tracing::error!(error = %e, "worker {index}: cannot use its listener")
                        }
                    }
                });
                // Connections still open after the grace period are dropped with the runtime.
                runtime.shutdown_background();
                let _ = done.send(());
            })?;
        Ok(finished)
    }
}

/// Where a config's certificate and key are, resolved.
pub fn tls_paths(config: &Config) -> (PathBuf, PathBuf) {
    (
        config.resolve(&config.tls.cert),
        config.resolve(&config.tls.key),
    )
}

/// The key store the configuration names (exactly one source; `Config::validate` checks).
fn key_store(config: &Config, metrics: Arc<Metrics>) -> Result<KeyStore, StartError> {
    let auth = &config.auth;
    if let Some(url) = &auth.jwks_url {
        return Ok(KeyStore::from_jwks(url.0.clone(), auth, metrics)?);
    }
    if let Some(pem) = &auth.public_key_pem {
        return Ok(KeyStore::from_pem(pem.as_bytes(), metrics)?);
    }
    if let Some(file) = &auth.public_key_file {
        let path = config.resolve(file);
        let pem = std::fs::read(&path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        return Ok(KeyStore::from_pem(&pem, metrics)?);
    }
    if let Some(file) = &auth.dev_signing_key {
        return Ok(DevSigner::load(&config.resolve(file))?.key_store(metrics)?);
    }
    Err(ConfigError {
        origin: "configuration".into(),
        message: "no session-token key source (auth.jwks_url, auth.public_key_pem, ...)".into(),
    }
    .into())
}

/// Dev profile only: the self-signed certificate, the dev signing key and a random Stream
/// secret, each generated on first run (into git-ignored files) and reused after.
fn prepare_dev_material(config: &mut Config) -> Result<(), StartError> {
    if config.tls.enabled {
        let (cert, key) = tls_paths(config);
        if tls::ensure_dev_certificate(&cert, &key)? {
            warn!(cert = %cert.display(), key = %key.display(),
                "generated a self-signed TLS certificate: DEV ONLY, never use it in production");
        }
    }
    if let Some(file) = &config.auth.dev_signing_key {
        let path = config.resolve(file);
        if auth::dev::ensure_dev_signing_key(&path)? {
            warn!(path = %path.display(), "generated the dev session signing key: DEV ONLY");
        }
    }
    if config.stream.api_secret.is_none() {
        let file = config
            .stream
            .api_secret_file
            .clone()
            .ok_or_else(|| ConfigError {
                origin: "configuration".into(),
                message: "set STREAM_API_SECRET or stream.api_secret_file".into(),
            })?;
        let path = config.resolve(&file);
        if !path.exists() {
            let secret = auth::dev::random_secret()?;
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            match tls::write_private(&path, secret.as_bytes()) {
                Ok(()) => warn!(path = %path.display(),
                    "generated a random dev Stream secret: tokens work with this proxy but Stream \
                     will reject them; set STREAM_API_SECRET to your app's secret for real calls"),
                // Another instance published one first, whole: read that one below.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(ConfigError {
                        origin: path.display().to_string(),
                        message: format!("cannot write the dev Stream secret: {e}"),
                    }
                    .into());
                }
            }
        }
        let secret = config::read_secret_file(&path).map_err(|e| ConfigError {
            origin: path.display().to_string(),
            message: format!("cannot use the Stream API secret file: {e}"),
        })?;
        config.stream.api_secret = Some(secret);
    }
    Ok(())
}

/// Prints nothing, starts nothing: a Clerk-shaped session token signed with the dev key, for
/// `stream-token-proxy dev-token`. Generates the key if this is the first run.
pub fn dev_token(config: &Config, sub: &str, ttl_secs: u64) -> Result<String, StartError> {
    let file = config
        .auth
        .dev_signing_key
        .as_ref()
        .ok_or_else(|| ConfigError {
            origin: "configuration".into(),
            message: "dev-token needs a dev config (dev = true, auth.dev_signing_key)".into(),
        })?;
    let path = config.resolve(file);
    auth::dev::ensure_dev_signing_key(&path)?;
    let signer = DevSigner::load(&path)?;
    let issuer = config.auth.issuer.as_deref().unwrap_or(config::DEV_ISSUER);
    let claims = auth::dev::DevClaims {
        issuer,
        sub,
        azp: config.auth.authorized_parties.first().map(String::as_str),
        ttl_secs,
    };
    signer.session_token(&claims).map_err(|e| {
        StartError::Config(ConfigError {
            origin: "dev-token".into(),
            message: e.to_string(),
        })
    })
}

/// A secret, for tests that build configs in code.
pub fn secret(value: &str) -> Secret {
    Secret::new(value)
}
