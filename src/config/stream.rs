//! `[stream]`: minting Stream Chat user tokens, and where the Stream secret comes from (never
//! from this file).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, PositiveDuration, Secret, any_duration};

/// Minting Stream Chat user tokens.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// The Stream API key (public), returned to the app with the token.
    pub api_key: String,
    /// A file holding the Stream API secret (a mounted Kubernetes Secret). `STREAM_API_SECRET`
    /// wins when set. There is deliberately no way to put the secret itself in this file.
    pub api_secret_file: Option<PathBuf>,
    /// Lifetime of a minted token (at most 30 days).
    pub token_ttl: PositiveDuration,
    /// A minted token is handed out again while more than this much of its life remains.
    #[serde(deserialize_with = "any_duration")]
    pub token_reuse_margin: Duration,
    /// Minted tokens remembered for reuse.
    pub token_cache_size: usize,
    /// `iat` is set this far in the past (Stream refuses tokens "used before issue at" when its
    /// clock is behind ours). At most 5 minutes.
    #[serde(deserialize_with = "any_duration")]
    pub iat_backdate: Duration,
    /// The secret, from `STREAM_API_SECRET` or `api_secret_file` (never from TOML).
    #[serde(skip)]
    pub api_secret: Option<Secret>,
    /// `true` when `STREAM_API_SECRET` gave the secret (then the file is not watched).
    #[serde(skip)]
    pub api_secret_from_env: bool,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            api_key: String::new(),
            api_secret_file: None,
            token_ttl: PositiveDuration::secs(3600),
            token_reuse_margin: Duration::from_secs(600),
            token_cache_size: 10_000,
            iat_backdate: Duration::from_secs(5),
            api_secret: None,
            api_secret_from_env: false,
        }
    }
}

impl fmt::Debug for StreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamConfig")
            .field("api_key", &self.api_key)
            .field("api_secret_file", &self.api_secret_file)
            .field("token_ttl", &self.token_ttl)
            .field("token_reuse_margin", &self.token_reuse_margin)
            .field("token_cache_size", &self.token_cache_size)
            .field("iat_backdate", &self.iat_backdate)
            .field("api_secret", &self.api_secret)
            .field("api_secret_from_env", &self.api_secret_from_env)
            .finish()
    }
}

/// Reads a secret file: surrounding whitespace (a trailing newline) is not part of the secret.
pub fn read_secret_file(path: &Path) -> std::io::Result<Secret> {
    let text = std::fs::read_to_string(path)?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the file is empty",
        ));
    }
    Ok(Secret::new(secret))
}

impl StreamConfig {
    pub fn validate(&self, dev: bool) -> Result<(), ConfigError> {
        if self.token_ttl.0 > Duration::from_secs(30 * 24 * 3600) {
            return Err(ConfigError::invalid(
                "stream.token_ttl is over 30 days; keep Stream tokens short-lived",
            ));
        }
        if self.iat_backdate > Duration::from_secs(300) {
            return Err(ConfigError::invalid("stream.iat_backdate is over 5m"));
        }
        if self.token_reuse_margin >= self.token_ttl.0 {
            return Err(ConfigError::invalid(
                "stream.token_reuse_margin must be shorter than stream.token_ttl",
            ));
        }
        if self.api_secret.is_none() && self.api_secret_file.is_none() && !dev {
            return Err(ConfigError::invalid(
                "the Stream API secret is missing: set STREAM_API_SECRET or \
                 stream.api_secret_file (a mounted secret)",
            ));
        }
        Ok(())
    }
}
