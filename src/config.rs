//! The `proxy.toml` schema, where the file comes from, environment overrides and validation.
//!
//! Every value is checked while it is parsed (through the newtypes below), so a bad value is
//! reported by `toml` with the file, line and column. Cross-field rules that no single key can
//! check are in [`Config::validate`] and name the keys involved.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The shipped `proxy.toml`, embedded so that `cargo run --release` works from anywhere.
pub const EMBEDDED_DEV_CONFIG: &str = include_str!("../proxy.toml");

/// Environment variables that override single keys (the values that differ per deployment).
/// Secrets have their own variables in the sections that use them.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("PROXY_LISTEN", "server.listen"),
    ("UPSTREAM_URL", "upstream.url"),
    ("TLS_CERT", "tls.cert"),
    ("TLS_KEY", "tls.key"),
    ("LOG_FORMAT", "log.format"),
];

#[derive(Debug, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ConfigError {
    /// The file, "embedded dev config" or the environment variable the problem came from.
    pub origin: String,
    pub message: String,
}

impl ConfigError {
    fn new(origin: impl fmt::Display, message: impl fmt::Display) -> Self {
        Self {
            origin: origin.to_string(),
            message: message.to_string(),
        }
    }
}

/// The whole configuration. Missing sections and keys take production-safe defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Dev profile: generate a self-signed certificate (and, later, a dev signing key) on first
    /// run. Never set this in a deployment.
    #[serde(default)]
    pub dev: bool,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub forwarding: ForwardingConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// Directory that relative paths in the file are resolved against (the file's own folder).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Public address (TLS unless `tls.enabled = false`).
    pub listen: SocketAddr,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    pub shutdown_grace: PositiveDuration,
    /// A client must finish the TLS handshake within this time.
    pub tls_handshake_timeout: PositiveDuration,
    /// A client must send a complete HTTP/1 request head within this time (slowloris).
    pub header_read_timeout: PositiveDuration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 3001)),
            shutdown_grace: PositiveDuration::secs(25),
            tls_handshake_timeout: PositiveDuration::secs(10),
            header_read_timeout: PositiveDuration::secs(10),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// `false` serves plain HTTP, for meshes that already terminate TLS.
    pub enabled: bool,
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            cert: PathBuf::from("certs/tls.crt"),
            key: PathBuf::from("certs/tls.key"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// The Node server, `http://host:port` (no path).
    pub url: UpstreamUrl,
    /// Connecting to the upstream must succeed within this time, or the client gets 502.
    pub connect_timeout: PositiveDuration,
    /// The upstream must send response headers within this time, or the client gets 504.
    pub response_timeout: PositiveDuration,
    /// Idle pooled connections are closed after this; keep it below the upstream's keep-alive
    /// timeout (Node: 5 s) or requests race the upstream closing the socket.
    pub pool_idle_timeout: PositiveDuration,
    /// Idle connections kept per upstream.
    pub pool_max_idle: usize,
    /// Retry an idempotent, bodiless request once when the upstream closed a pooled connection
    /// before answering.
    pub retry_idempotent: bool,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            url: UpstreamUrl::parse("http://127.0.0.1:3002").expect("valid literal"),
            connect_timeout: PositiveDuration::secs(2),
            response_timeout: PositiveDuration::secs(30),
            pool_idle_timeout: PositiveDuration::secs(4),
            pool_max_idle: 256,
            retry_idempotent: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardingConfig {
    /// Append the client address to `X-Forwarded-For`.
    pub x_forwarded_for: bool,
    /// Set `X-Forwarded-Proto` to `https` (or `http` without TLS).
    pub x_forwarded_proto: bool,
    /// Set `X-Forwarded-Host` to the `Host` (or `:authority`) the client used.
    pub x_forwarded_host: bool,
}

impl Default for ForwardingConfig {
    fn default() -> Self {
        Self {
            x_forwarded_for: true,
            x_forwarded_proto: true,
            x_forwarded_host: true,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `trace`, `debug`, `info`, `warn` or `error`; `RUST_LOG` wins when set.
    pub level: LogLevel,
    /// `text` (human) or `json` (one object per line).
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// An upstream base URL: `http://host[:port]`, nothing else.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct UpstreamUrl {
    /// `host:port` as it goes into the upstream request URI.
    pub authority: http::uri::Authority,
}

impl UpstreamUrl {
    pub fn parse(s: &str) -> Result<Self, String> {
        let uri: http::Uri = s.parse().map_err(|e| format!("`{s}` is not a URL ({e})"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "`{s}`: the upstream must be plain `http://` (the sidecar talks to the Node \
                     server over the pod's loopback; TLS is terminated here)"
                ));
            }
            _ => return Err(format!("`{s}` must start with `http://`")),
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("`{s}` has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "`{s}`: credentials in the upstream URL are not supported"
            ));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "`{s}` has a path or query; give only `http://host:port` (paths are forwarded unchanged)"
            ));
        }
        Ok(Self { authority })
    }
}

impl TryFrom<String> for UpstreamUrl {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl fmt::Debug for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.authority)
    }
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.authority)
    }
}

/// A duration that must be greater than zero (`"30s"`, `"250ms"`, `"5m"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct PositiveDuration(pub Duration);

impl PositiveDuration {
    pub const fn secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }
}

impl TryFrom<String> for PositiveDuration {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let d = humantime::parse_duration(&s)
            .map_err(|e| format!("`{s}` is not a duration like \"5s\" or \"250ms\" ({e})"))?;
        if d.is_zero() {
            return Err(format!("`{s}`: must be greater than zero"));
        }
        Ok(Self(d))
    }
}

impl std::ops::Deref for PositiveDuration {
    type Target = Duration;
    fn deref(&self) -> &Duration {
        &self.0
    }
}

impl Config {
    /// Parses a TOML document. `origin` names it in errors; `base_dir` anchors relative paths.
    pub fn from_toml(text: &str, origin: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        let mut config: Config =
            toml::from_str(text).map_err(|e| ConfigError::new(origin, e.to_string().trim_end()))?;
        config.base_dir = base_dir.to_path_buf();
        Ok(config)
    }

    /// Loads the configuration the way the binary does:
    /// `explicit` path if given; else `./proxy.toml` if it exists; else the embedded dev config.
    /// Then applies the environment overrides and validates.
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        let default_path = Path::new("proxy.toml");
        let mut config = match explicit {
            Some(path) => Self::from_file(path)?,
            None if default_path.exists() => Self::from_file(default_path)?,
            None => Self::from_toml(EMBEDDED_DEV_CONFIG, "embedded dev config", Path::new("."))?,
        };
        config.apply_env(|name| std::env::var(name).ok())?;
        config.validate()?;
        Ok(config)
    }

    fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path.display(), format!("cannot read the file: {e}")))?;
        let base_dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Self::from_toml(&text, &path.display().to_string(), &base_dir)
    }

    /// Applies [`ENV_OVERRIDES`]; `lookup` is `std::env::var` in the binary, a map in tests.
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let bad =
            |var: &str, msg: String| ConfigError::new(format!("environment variable {var}"), msg);
        if let Some(v) = lookup("PROXY_LISTEN") {
            self.server.listen = v.parse().map_err(|e| {
                bad(
                    "PROXY_LISTEN",
                    format!("`{v}` is not an address like 0.0.0.0:3001 ({e})"),
                )
            })?;
        }
        if let Some(v) = lookup("UPSTREAM_URL") {
            self.upstream.url = UpstreamUrl::parse(&v).map_err(|e| bad("UPSTREAM_URL", e))?;
        }
        // Paths from the environment are taken as given (relative to the working directory).
        if let Some(v) = lookup("TLS_CERT") {
            self.tls.cert = std::env::current_dir().unwrap_or_default().join(v);
        }
        if let Some(v) = lookup("TLS_KEY") {
            self.tls.key = std::env::current_dir().unwrap_or_default().join(v);
        }
        if let Some(v) = lookup("LOG_FORMAT") {
            self.log.format = match v.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => {
                    return Err(bad(
                        "LOG_FORMAT",
                        format!("`{v}`: expected `text` or `json`"),
                    ));
                }
            };
        }
        Ok(())
    }

    /// Rules that involve more than one key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |msg: &str| Err(ConfigError::new("configuration", msg));
        if self.upstream.pool_idle_timeout.0 >= self.upstream.response_timeout.0 * 10 {
            return err(
                "upstream.pool_idle_timeout is far longer than upstream.response_timeout; keep it \
                 below the upstream's keep-alive timeout (Node's default is 5s)",
            );
        }
        Ok(())
    }

    /// Resolves a path from the file against the file's folder.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, "test.toml", Path::new("."))
    }

    #[test]
    fn embedded_dev_config_parses_and_validates() {
        let config = parse(EMBEDDED_DEV_CONFIG).expect("embedded config parses");
        config.validate().expect("embedded config validates");
        assert!(config.dev);
        assert_eq!(config.upstream.url.authority.as_str(), "127.0.0.1:3002");
    }

    #[test]
    fn empty_file_takes_defaults() {
        let config = parse("").unwrap();
        assert!(!config.dev);
        assert!(config.tls.enabled);
        assert_eq!(config.server.listen.port(), 3001);
        assert!(*config.upstream.pool_idle_timeout < Duration::from_secs(5));
    }

    #[test]
    fn unknown_key_is_refused_with_line_and_column() {
        let err = parse("[server]\nlisten = \"127.0.0.1:1\"\nlistne = 3\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("test.toml: "), "{text}");
        assert!(text.contains("line 3, column 1"), "{text}");
        assert!(text.contains("unknown field `listne`"), "{text}");
    }

    #[test]
    fn bad_values_name_the_problem() {
        let cases = [
            (
                "[upstream]\nurl = \"https://x:1\"\n",
                "must be plain `http://`",
            ),
            ("[upstream]\nurl = \"http://x:1/api\"\n", "has a path"),
            (
                "[upstream]\nurl = \"ftp://x\"\n",
                "must start with `http://`",
            ),
            (
                "[upstream]\nresponse_timeout = \"0s\"\n",
                "greater than zero",
            ),
            (
                "[upstream]\nresponse_timeout = \"5 parsecs\"\n",
                "not a duration",
            ),
            (
                "[server]\nlisten = \"localhost\"\n",
                "invalid socket address",
            ),
            ("[log]\nformat = \"xml\"\n", "unknown variant `xml`"),
            ("dev = \"yes\"\n", "invalid type"),
        ];
        for (text, want) in cases {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(want), "{text:?} gave {err}");
            assert!(err.contains("line "), "{text:?} gave no line: {err}");
        }
    }

    #[test]
    fn env_overrides_apply_and_report_bad_values() {
        let mut config = parse("").unwrap();
        config
            .apply_env(|k| match k {
                "PROXY_LISTEN" => Some("127.0.0.1:4000".into()),
                "UPSTREAM_URL" => Some("http://10.0.0.1:8080".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(config.server.listen.port(), 4000);
        assert_eq!(config.upstream.url.to_string(), "http://10.0.0.1:8080");

        let err = config
            .apply_env(|k| (k == "PROXY_LISTEN").then(|| "nope".to_string()))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("environment variable PROXY_LISTEN"),
            "{err}"
        );
    }
}
