//! TLS: certificate loading, the dev certificate, and the rustls server configuration.
//!
//! The certificate lives behind an [`ArcSwap`] in [`CertStore`], so a new pair can be swapped in
//! for new handshakes without touching open connections.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::warn;

/// ALPN protocols we serve, in order of preference.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];
/// TLS 1.2 sessions kept for resumption by session id (clients without ticket support), a
/// few hundred bytes each; the oldest is dropped first.
const TLS12_SESSION_CACHE_SIZE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("cannot parse {what} {path}: {message}")]
    Parse {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("the private key {key} does not belong to the certificate {cert}: {message}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The certificate and key currently served, swappable at run time.
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl fmt::Debug for CertStore {
    // The key material is never printed, only where it came from.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// Loads the pair; fails with a sentence naming the file when anything is wrong.
    pub(crate) fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let key = load_certified_key(cert_path, key_path)?;
        warn_if_others_can_read(key_path);
        Ok(Self {
            current: ArcSwap::from_pointee(key),
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
        })
    }

    /// Reads the files again and swaps the pair in; on error the old pair stays.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        let key = load_certified_key(&self.cert_path, &self.key_path)?;
        self.current.store(Arc::new(key));
        Ok(())
    }

    /// The leaf certificate now served (DER).
    pub(crate) fn leaf(&self) -> CertificateDer<'static> {
        self.current.load().cert[0].clone()
    }

    /// `notAfter` of the leaf now served, as unix seconds.
    pub(crate) fn not_after(&self) -> Option<i64> {
        let leaf = self.leaf();
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
        Some(cert.validity().not_after.timestamp())
    }

    /// The files this store loads from.
    pub(crate) fn paths(&self) -> (&Path, &Path) {
        (&self.cert_path, &self.key_path)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// rustls server configuration: TLS 1.2 and 1.3 only, ALPN `h2` and `http/1.1`.
pub(crate) fn server_config(store: Arc<CertStore>) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(crate::crypto::tls_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    // Resumption spares a returning mobile client the certificate signature. Tickets (TLS 1.3,
    // and TLS 1.2 clients that offer them) are stateless, under a ticket key that rotates every
    // 6 hours (the previous one still decrypts); the other TLS 1.2 clients resume from a
    // bounded in-memory cache. One config serves every worker, so any worker resumes.
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    config.session_storage =
        rustls::server::ServerSessionMemoryCache::new(TLS12_SESSION_CACHE_SIZE);
    Ok(config)
}

/// A private key that more people can read than need to is one mistake away from leaking:
/// say so (as OpenSSH does), but serve. Readable by others: always worth a warning. Readable
/// by the group: only when this process owns the file (the group bit then only widens who can
/// read it); reading through the group is how a Kubernetes secret volume with `fsGroup` and
/// `defaultMode: 0440` works.
fn warn_if_others_can_read(key_path: &Path) {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let Ok(meta) = std::fs::metadata(key_path) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let owned = meta.uid() == unsafe { libc::geteuid() };
    if too_readable(mode, owned) {
        warn!(
            key = %key_path.display(),
            mode = format_args!("{mode:o}"),
            "the TLS private key is readable by more than its owner; make it 0600 or 0400 \
             (or 0440 with a group only this proxy is in)"
        );
    }
}

/// Others may read, or the group may and this process (the owner) does not need it to.
fn too_readable(mode: u32, owned_by_us: bool) -> bool {
    mode & 0o007 != 0 || (owned_by_us && mode & 0o070 != 0)
}

fn load_certified_key(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_pem = std::fs::read(cert_path).map_err(|source| TlsError::Read {
        what: "the TLS certificate",
        path: cert_path.to_path_buf(),
        source,
    })?;
    let key_pem = std::fs::read(key_path).map_err(|source| TlsError::Read {
        what: "the TLS private key",
        path: key_path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Parse {
            what: "the TLS certificate",
            path: cert_path.to_path_buf(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_path_buf(),
        });
    }
    // The error text of a key parser never includes key bytes, but we say only what failed.
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::Parse {
        what: "the TLS private key",
        path: key_path.to_path_buf(),
        message: "no PKCS#8, PKCS#1 or SEC1 private key in PEM form".into(),
    })?;
    let signing_key = crate::crypto::tls_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Parse {
            what: "the TLS private key",
            path: key_path.to_path_buf(),
            message: e.to_string(),
        })?;
    let certified = CertifiedKey::new(certs, signing_key);
    certified.keys_match().map_err(|e| TlsError::Mismatch {
        cert: cert_path.to_path_buf(),
        key: key_path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(certified)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev_profile::ensure_dev_certificate;

    #[test]
    fn a_key_readable_beyond_its_owner_is_flagged() {
        for (mode, owned, flagged) in [
            (0o600, true, false),
            (0o400, true, false),
            (0o640, true, true),
            (0o644, true, true),
            (0o604, true, true),
            // Read through the group (a Kubernetes secret volume with fsGroup, 0440).
            (0o440, false, false),
            (0o444, false, true),
        ] {
            assert_eq!(too_readable(mode, owned), flagged, "{mode:o} owned={owned}");
        }
    }

    #[test]
    fn missing_garbage_and_mismatched_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let err = CertStore::load(&p("none.pem"), &p("none.key"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read the TLS certificate"), "{err}");

        std::fs::write(p("garbage.pem"), "not a pem").unwrap();
        std::fs::write(p("garbage.key"), "not a pem").unwrap();
        let err = CertStore::load(&p("garbage.pem"), &p("garbage.key"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds no PEM certificate"), "{err}");

        ensure_dev_certificate(&p("a.pem"), &p("a.key")).unwrap();
        ensure_dev_certificate(&p("b.pem"), &p("b.key")).unwrap();
        let err = CertStore::load(&p("a.pem"), &p("garbage.key"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no PKCS#8"), "{err}");
        let err = CertStore::load(&p("a.pem"), &p("b.key"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not belong"), "{err}");
    }
}
