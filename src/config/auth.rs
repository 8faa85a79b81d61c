//! `[auth]`: how Clerk session tokens are verified.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{AllowedAlgorithm, ConfigError, DEV_ISSUER, JwksUrl, PositiveDuration, any_duration};

/// How Clerk session tokens are verified.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Expected `iss`: your Clerk Frontend API URL, e.g. `https://clerk.example.com`, compared
    /// byte for byte. Required outside the dev profile.
    pub issuer: Option<String>,
    /// Clerk's JWKS, `https://<frontend-api>/.well-known/jwks.json`. `http://` only on loopback.
    pub jwks_url: Option<JwksUrl>,
    /// Clerk's "JWT public key" (PEM), for networkless verification.
    pub public_key_pem: Option<String>,
    /// The same, read from a file.
    pub public_key_file: Option<PathBuf>,
    /// Dev profile only: an RSA key generated on first run; `dev-token` signs with it.
    pub dev_signing_key: Option<PathBuf>,
    /// Allowed `azp` values (your app origins). Empty: `azp` is not checked.
    pub authorized_parties: Vec<String>,
    /// Accepted signature algorithms (RS256/384/512, PS256/384/512, ES256/384).
    pub algorithms: Vec<AllowedAlgorithm>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    #[serde(deserialize_with = "any_duration")]
    pub leeway: Duration,
    /// The JWKS is fetched again this often in the background.
    pub jwks_refresh_interval: PositiveDuration,
    /// Tokens naming unknown `kid`s fetch the JWKS at most once per this period (a key Clerk
    /// has just published is fetched within it of the first token naming it).
    pub jwks_refetch_cooldown: PositiveDuration,
    /// One JWKS fetch must finish within this time.
    pub jwks_timeout: PositiveDuration,
    /// Also accept the `__session` cookie that Clerk's web apps send (when no `Authorization`).
    pub session_cookie: bool,
    /// Verified session tokens remembered (by hash) so they are not verified with RSA again.
    pub verified_cache_size: usize,
    /// Accept sessions whose `sts` is `pending` (unfinished session tasks, e.g. choosing an
    /// organization), which Clerk's SDKs treat as signed out by default.
    pub accept_pending_sessions: bool,
    /// Let the dev key or dev issuer run on a non-loopback listener (a LAN phone, say).
    pub allow_dev_on_public_listener: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuer: None,
            jwks_url: None,
            public_key_pem: None,
            public_key_file: None,
            dev_signing_key: None,
            authorized_parties: Vec::new(),
            algorithms: vec![AllowedAlgorithm(jsonwebtoken::Algorithm::RS256)],
            leeway: Duration::from_secs(5),
            jwks_refresh_interval: PositiveDuration::secs(300),
            jwks_refetch_cooldown: PositiveDuration::secs(5),
            jwks_timeout: PositiveDuration::secs(5),
            session_cookie: false,
            verified_cache_size: 10_000,
            accept_pending_sessions: false,
            allow_dev_on_public_listener: false,
        }
    }
}

impl AuthConfig {
    /// Exactly one key source; the dev key only with `dev = true`; an issuer outside dev.
    pub fn validate(&self, dev: bool) -> Result<(), ConfigError> {
        self.validate_key_source(dev)?;
        match self.issuer.as_deref() {
            None if !dev => {
                return Err(ConfigError::invalid(
                    "auth.issuer is required: your Clerk Frontend API URL, e.g. \
                     https://clerk.example.com (the `iss` of your session tokens)",
                ));
            }
            Some(i) if i.trim().is_empty() => {
                return Err(ConfigError::invalid("auth.issuer is empty"));
            }
            _ => {}
        }
        if self.algorithms.is_empty() {
            return Err(ConfigError::invalid(
                "auth.algorithms is empty: allow at least RS256",
            ));
        }
        if self.leeway > Duration::from_secs(300) {
            return Err(ConfigError::invalid(
                "auth.leeway is over 5m; clock skew that large is a broken clock",
            ));
        }
        Ok(())
    }

    fn validate_key_source(&self, dev: bool) -> Result<(), ConfigError> {
        let sources: Vec<&str> = [
            ("auth.jwks_url", self.jwks_url.is_some()),
            ("auth.public_key_pem", self.public_key_pem.is_some()),
            ("auth.public_key_file", self.public_key_file.is_some()),
            ("auth.dev_signing_key", self.dev_signing_key.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        match sources.len() {
            0 => {
                return Err(ConfigError::invalid(
                    "no session-token key source: set auth.jwks_url (Clerk's JWKS) or \
                     auth.public_key_pem / auth.public_key_file (Clerk's JWT public key)",
                ));
            }
            1 => {}
            _ => {
                return Err(ConfigError::invalid(format!(
                    "set only one key source, not {}",
                    sources.join(" and ")
                )));
            }
        }
        if self.dev_signing_key.is_some() && !dev {
            return Err(ConfigError::invalid(
                "auth.dev_signing_key is a dev-profile setting; it needs `dev = true`",
            ));
        }
        Ok(())
    }

    /// Before an environment variable names the one key source.
    pub fn clear_key_sources(&mut self) {
        self.jwks_url = None;
        self.public_key_pem = None;
        self.public_key_file = None;
        self.dev_signing_key = None;
    }

    /// Whether these settings trust the dev profile's key or issuer.
    pub fn trusts_dev_keys(&self) -> bool {
        self.dev_signing_key.is_some() || self.issuer.as_deref() == Some(DEV_ISSUER)
    }

    /// Valid but probably wrong (the issuer is compared byte for byte, so a stray `/` refuses
    /// every token).
    pub fn warnings(&self, dev: bool) -> Vec<String> {
        let mut warnings = Vec::new();
        let Some(issuer) = self.issuer.as_deref() else {
            return warnings;
        };
        if issuer.ends_with('/') {
            warnings.push(format!(
                "auth.issuer `{issuer}` ends with `/`; Clerk's `iss` has no trailing slash \
                 and is compared byte for byte, so tokens will be refused as wrong_issuer"
            ));
        }
        if !dev && !issuer.starts_with("https://") {
            warnings.push(format!(
                "auth.issuer `{issuer}` is not an https:// URL; Clerk's Frontend API URL \
                 always is"
            ));
        }
        warnings
    }
}
