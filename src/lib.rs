//! stream-token-proxy: a TLS-terminating sidecar in front of a Node.js backend.
//!
//! [`start`] runs the proxy from a [`Config`] and returns a [`ProxyHandle`] with the bound
//! address and a way to shut it down; `main.rs` and the integration tests both use it. The
//! folders follow a request's path (`../shared/DESIGN.md`, the README's module table):
//!
//! | module | owns |
//! | --- | --- |
//! | [`config`] | the `proxy.toml` schema by section, each section's checks, the env-override table |
//! | `server` | listener, worker threads, admission (`max_connections`, per IP), TLS handshakes, per-connection timeouts, drain |
//! | `connection` | one client connection: its facts, its slot (held by a tunnel too), requests in flight |
//! | `tls` | the served certificate (swappable), rustls settings |
//! | `routes` | the router and its per-request context, the route table (with the rate limit a path meets) and routes with a session (identity headers), the token route, CORS, how Node reads a path, request ids, the response body; errors become responses there |
//! | `auth` | session verification: key sources (JWKS, PEM), token-type rules, the refetch schedule, the verified-session cache |
//! | `stream_token` | minting Stream user tokens |
//! | `limits` | rate limits behind one seam (`Limits::check(policy, key)`): named policies, local (governor) and Redis (GCRA script) backends, the first tier, `on_error`; the client IP behind trusted proxies |
//! | `forward` | one forwarded request: headers, checks, timeouts, retry, upload progress, WebSocket tunnels |
//! | `upstream` | each worker's pool of HTTP/1.1 connections to Node |
//! | `ops` | the admin listener (and its readiness check of the upstream), the access log, certificate and secret reloads |
//! | `metrics` | the Prometheus registry |
//! | `dev_profile` | the dev certificate, signing key and Stream secret; `dev-token` |
//! | `error` | the one mapping from errors to status, JSON body and headers |
//! | `crypto` | SHA-256, random bytes, the rustls provider |
//! | `fast_format` | IPv4 addresses and hex numbers as text without `std::fmt` (hot path) |
//! | [`testing`] | what benchmarks, fuzz targets and tests reach inside the crate for |
//!
//! The `use` lines between these modules form a tree: `config`, `metrics`, `crypto` and
//! `fast_format` at the leaves, `server` and `routes` near the top, `lib.rs` above all.

mod auth;
pub mod config;
mod connection;
mod crypto;
mod dev_profile;
mod error;
mod fast_format;
mod forward;
mod limits;
mod metrics;
mod ops;
mod routes;
mod server;
mod stream_token;
pub mod testing;
mod tls;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use config::Config;
pub use dev_profile::dev_token;

use crate::auth::KeyStore;
use crate::auth::keys::KeyError;
use crate::config::{Backend, ConfigError, RouteConfig, Secret};
use crate::dev_profile::{DevProfileError, DevSigner};
use crate::limits::{Limits, RedisSetupError};
use crate::metrics::Metrics;
use crate::ops::admin::AdminState;
use crate::ops::reload::Reloader;
use crate::ops::traces::Traces;
use crate::routes::Shared;
use crate::routes::table::RouteTable;
use crate::stream_token::StreamMinter;
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
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    DevProfile(#[from] DevProfileError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Limits(#[from] RedisSetupError),
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

/// Loads certificates and keys, binds the listeners and starts serving in the background.
pub async fn start(mut config: Config) -> Result<ProxyHandle, StartError> {
    if config.dev {
        dev_profile::prepare(&mut config)?;
    }
    let table = RouteTable::new(&config.routes);
    let metrics = Arc::new(Metrics::with_routes(table.names()));
    let certs = match config.tls.enabled {
        true => {
            let (cert, key) = config.tls_paths();
            Some(Arc::new(CertStore::load(&cert, &key)?))
        }
        false => None,
    };
    let keys = Arc::new(key_store(&config, metrics.clone())?);
    let minter = Arc::new(StreamMinter::new(&config.stream, &stream_secret(&config)?));
    let limits = Arc::new(limits(&config, &metrics)?);
    let table = table.with_limits(&limits);
    let traces = Traces::start(&config.tracing, &metrics).map_err(|message| ConfigError {
        origin: "tracing".into(),
        message,
    })?;
    let shared = Shared::new(&config, table, traces, &keys, &minter, &limits, &metrics);
    let listeners = server::Listeners::bind(&config).await?;
    let upstream_check = (config.admin.ready_requires_upstream)
        .then(|| ops::upstream_check::UpstreamCheck::new(&config.upstream));
    let admin = Arc::new(AdminState::new(
        &metrics,
        &keys,
        &limits,
        &certs,
        upstream_check,
    ));
    let reloader = Arc::new(Reloader::new(
        certs.clone(),
        secret_file(&config),
        minter,
        metrics.clone(),
    ));
    let (shutdown, shutdown_rx) = watch::channel(false);
    info!(listen = %listeners.local_addr, admin = ?listeners.admin_addr(),
        upstream = %config.upstream.url, workers = listeners.public.len(),
        "serving {}", if certs.is_some() { "https" } else { "http" });
    let (local_addr, admin_addr) = (listeners.local_addr, listeners.admin_addr());
    let mut background = vec![
        tokio::spawn(keys.clone().run_refresh()),
        tokio::spawn(limits.clone().run_maintenance()),
        tokio::spawn(reloader.clone().watch(config.server.reload_interval.0)),
    ];
    let workers = server::spawn_workers(&config, listeners.public, &certs, &shared, shutdown_rx)?;
    if let Some(listener) = listeners.admin {
        background.push(tokio::spawn(ops::admin::run(listener, admin.clone())));
    }
    let task = tokio::spawn(async move {
        for done in workers {
            let _ = done.await;
        }
        for task in &background {
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

/// What `check-config` loads besides the configuration: the files a deployment mounts and
/// `start` reads, each as `start` reads it, so a missing or unusable one fails the check and
/// not the rollout. The TLS certificate and key (outside the dev profile),
/// `auth.public_key_file`, and on the Redis backend `limits.redis.ca_file`.
pub fn check_mounted_files(config: &Config) -> Result<(), StartError> {
    if config.tls.enabled && !config.dev {
        let (cert, key) = config.tls_paths();
        CertStore::load(&cert, &key)?;
    }
    if let Some(file) = &config.auth.public_key_file {
        public_key_file(config, file, Arc::new(Metrics::new()))?;
    }
    if config.limits.backend == Backend::Redis {
        Limits::check_redis_client(&config.limits.redis, redis_ca(config)?)?;
    }
    Ok(())
}

/// The Stream API secret (from the environment, a file, or the dev profile).
fn stream_secret(config: &Config) -> Result<Secret, ConfigError> {
    if config.stream.api_key.is_empty() {
        warn!(
            "stream.api_key is empty; responses will carry an empty api_key (set STREAM_API_KEY)"
        );
    }
    config.stream.api_secret.clone().ok_or_else(|| ConfigError {
        origin: "configuration".into(),
        message:
            "the Stream API secret is missing: set STREAM_API_SECRET or stream.api_secret_file"
                .into(),
    })
}

/// The secret file the reloader watches: none when the secret came from the environment.
fn secret_file(config: &Config) -> Option<std::path::PathBuf> {
    match (
        &config.stream.api_secret_file,
        config.stream.api_secret_from_env,
    ) {
        (Some(file), false) => Some(config.resolve(file)),
        _ => None,
    }
}

/// The rate limits on the configured backend (not waiting for Redis): `[limits]` and the
/// routes' own, with the CA file that signs a `rediss://` server read now.
fn limits(config: &Config, metrics: &Arc<Metrics>) -> Result<Limits, StartError> {
    let ca_pem = redis_ca(config)?;
    let route_policies = config
        .routes
        .iter()
        .filter_map(RouteConfig::rate_policy)
        .collect();
    Ok(Limits::start(
        &config.limits,
        route_policies,
        ca_pem,
        metrics,
    )?)
}

/// `limits.redis.ca_file`, when set: PEM holding at least one certificate (an empty trust
/// store would only show later, as every TLS connection to Redis failing).
fn redis_ca(config: &Config) -> Result<Option<Vec<u8>>, ConfigError> {
    let Some(file) = &config.limits.redis.ca_file else {
        return Ok(None);
    };
    let path = config.resolve(file);
    let bad = |message: String| ConfigError::new(path.display(), message);
    let pem =
        std::fs::read(&path).map_err(|e| bad(format!("cannot read limits.redis.ca_file: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>();
    match certs {
        Ok(certs) if !certs.is_empty() => Ok(Some(pem)),
        _ => Err(bad(
            "limits.redis.ca_file holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        )),
    }
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
        return public_key_file(config, file, metrics);
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

/// The key store of `auth.public_key_file`: one PEM public key.
fn public_key_file(
    config: &Config,
    file: &std::path::Path,
    metrics: Arc<Metrics>,
) -> Result<KeyStore, StartError> {
    let path = config.resolve(file);
    let pem = std::fs::read(&path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })?;
    Ok(KeyStore::from_pem(&pem, metrics)?)
}
