//! Rotation without restart: the TLS certificate and key, and the Stream secret file, are
//! re-read when their contents change (checked every `server.reload_interval`) and on SIGHUP.
//! A pair that does not load is logged and counted, and the old one stays in use.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{info, warn};

use crate::config::read_secret_file;
use crate::crypto::sha256;
use crate::metrics::Metrics;
use crate::stream_token::StreamMinter;
use crate::tls::CertStore;

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

/// SHA-256 of a file's contents, `None` when it cannot be read.
type Fingerprint = Option<[u8; 32]>;

pub(crate) struct Reloader {
    certs: Option<Arc<CertStore>>,
    /// The Stream secret file, when the secret came from it (not from `STREAM_API_SECRET`).
    secret_file: Option<PathBuf>,
    minter: Arc<StreamMinter>,
    metrics: Arc<Metrics>,
    /// Fingerprints of what was last looked at: cert + key, secret.
    seen: Mutex<(Fingerprint, Fingerprint)>,
}

impl Reloader {
    pub(crate) fn new(
        certs: Option<Arc<CertStore>>,
        secret_file: Option<PathBuf>,
        minter: Arc<StreamMinter>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let reloader = Self {
            certs,
            secret_file,
            minter,
            metrics,
            seen: Mutex::new((None, None)),
        };
        let now = (reloader.cert_fingerprint(), reloader.secret_fingerprint());
        *reloader.seen.lock().unwrap_or_else(|e| e.into_inner()) = now;
        if let Some(expiry) = reloader.certs.as_ref().and_then(|c| c.not_after()) {
            reloader.metrics.certificate_expiry.set(expiry);
        }
        reloader
    }

    fn cert_fingerprint(&self) -> Fingerprint {
        let (cert, key) = self.certs.as_ref()?.paths();
        let mut both = std::fs::read(cert).ok()?;
        both.extend(std::fs::read(key).ok()?);
        Some(sha256(&both))
    }

    fn secret_fingerprint(&self) -> Fingerprint {
        fingerprint(self.secret_file.as_deref()?)
    }

    /// Reloads whatever changed since the last look; `force` reloads all (SIGHUP).
    pub(crate) fn check(&self, force: bool) {
        let (cert_now, secret_now) = (self.cert_fingerprint(), self.secret_fingerprint());
        let (cert_changed, secret_changed) = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            let changed = (force || cert_now != seen.0, force || secret_now != seen.1);
            *seen = (cert_now, secret_now);
            changed
        };
        if cert_changed && let Some(certs) = &self.certs {
            match certs.reload() {
                Ok(()) => {
                    self.metrics.reload("certificate", "ok");
                    if let Some(expiry) = certs.not_after() {
                        self.metrics.certificate_expiry.set(expiry);
                    }
                    info!("TLS certificate reloaded; new handshakes use it");
                }
                Err(e) => {
                    self.metrics.reload("certificate", "error");
                    warn!(error = %e, "TLS certificate reload failed; keeping the one in use");
                }
            }
        }
        if secret_changed && let Some(path) = &self.secret_file {
            match read_secret_file(path) {
                Ok(secret) => {
                    self.minter.rotate_secret(&secret);
                    self.metrics.reload("stream_secret", "ok");
                    info!(path = %path.display(), "Stream secret reloaded; new tokens are signed with it");
                }
                Err(e) => {
                    self.metrics.reload("stream_secret", "error");
                    warn!(path = %path.display(), error = %e, "Stream secret reload failed; keeping the one in use");
                }
            }
        }
    }

    /// Checks for changes every `interval`, forever.
    pub(crate) async fn watch(self: Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let this = self.clone();
            // File reads and key parsing stay off the request threads.
            let _ = tokio::task::spawn_blocking(move || this.check(false)).await;
        }
    }
}

fn fingerprint(path: &Path) -> Fingerprint {
    std::fs::read(path).ok().map(|bytes| sha256(&bytes))
}
