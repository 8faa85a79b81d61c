//! The few digests, random bytes and the TLS crypto provider that several modules need, in one
//! place: aws-lc-rs underneath all of them.

/// SHA-256 of `bytes`: cache keys for verified tokens, fingerprints of keys and watched files.
pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Fills `bytes` from the system's secure random source.
pub(crate) fn random_bytes(bytes: &mut [u8]) -> Result<(), aws_lc_rs::error::Unspecified> {
    aws_lc_rs::rand::fill(bytes)
}

/// The rustls crypto provider, for the server's TLS and the JWKS client alike.
pub(crate) fn tls_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Makes aws-lc-rs the process's default rustls provider, for clients that build their TLS
/// settings from the default (the Redis client). Another default already set is kept.
pub(crate) fn install_default_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
