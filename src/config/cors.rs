//! `[cors]`: which browser origins may call the token route.

use serde::Deserialize;

use super::{ConfigError, PositiveDuration};

/// CORS for the token route (browsers only; the mobile app sends no `Origin`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Exact origins allowed, e.g. `https://app.example.com`. Empty: no browser origin.
    pub allowed_origins: Vec<String>,
    /// Send `Access-Control-Allow-Credentials: true` (needed for the `__session` cookie).
    pub allow_credentials: bool,
    /// How long browsers may cache a preflight answer.
    pub max_age: PositiveDuration,
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            allow_credentials: false,
            max_age: PositiveDuration::secs(600),
        }
    }
}

/// An origin is `scheme://host[:port]`, exactly as browsers send it.
fn check_origin(origin: &str) -> Result<(), &'static str> {
    if origin == "*" || origin.contains('*') {
        return Err("is a wildcard; list exact origins");
    }
    let uri: http::Uri = origin
        .parse()
        .map_err(|_| "is not an origin like https://app.example.com")?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err("is not an origin like https://app.example.com");
    }
    if origin.ends_with('/') || uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err("has a path; an origin is only scheme://host[:port], without a trailing slash");
    }
    Ok(())
}

impl CorsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for origin in &self.allowed_origins {
            if let Err(why) = check_origin(origin) {
                return Err(ConfigError::invalid(format!(
                    "cors.allowed_origins: `{origin}` {why}"
                )));
            }
        }
        Ok(())
    }
}
