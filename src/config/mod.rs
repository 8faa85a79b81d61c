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
pub const EMBEDDED_DEV_CONFIG: &str = include_str!("../../proxy.toml");

/// Environment variables that override single keys (the values that differ per deployment).
/// Secrets have their own variables in the sections that use them.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("PROXY_LISTEN", "server.listen"),
    ("UPSTREAM_URL", "upstream.url"),
    ("TLS_CERT", "tls.cert"),
    ("TLS_KEY", "tls.key"),
    ("LOG_FORMAT", "log.format"),
    ("ADMIN_LISTEN", "admin.listen"),
    ("CLERK_ISSUER", "auth.issuer"),
    (
        "CLERK_JWKS_URL",
        "auth.jwks_url (replaces any other key source)",
    ),
    (
        "CLERK_JWT_KEY",
        "auth.public_key_pem (replaces any other key source)",
    ),
    (
        "CLERK_AUTHORIZED_PARTIES",
        "auth.authorized_parties (comma-separated)",
    ),
    ("STREAM_API_KEY", "stream.api_key"),
    ("STREAM_API_SECRET", "the Stream API secret itself"),
    ("STREAM_API_SECRET_FILE", "stream.api_secret_file"),
];

/// The issuer of dev-token session tokens; refused on non-loopback listeners like the dev key.
pub const DEV_ISSUER: &str = "https://clerk.dev.stream-token-proxy.invalid";

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
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub stream: StreamConfig,
    #[serde(default)]
    pub cors: CorsConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub admin: AdminConfig,
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
    /// A client must send a complete HTTP/1 request head within this time (slowloris); an idle
    /// keep-alive connection is closed after it too.
    pub header_read_timeout: PositiveDuration,
    /// Open client connections at most; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Largest request head (HTTP/1 buffer, HTTP/2 header list), in bytes; over it: 431.
    pub max_header_bytes: usize,
    /// Concurrent streams one HTTP/2 connection may open. With `http2_stream_buffer` this
    /// bounds what one HTTP/2 client can make the proxy hold (README, "Resource bounds").
    pub http2_max_concurrent_streams: u32,
    /// Response bytes the proxy buffers per HTTP/2 stream for a client that does not read,
    /// however large the flow-control window the client grants.
    pub http2_stream_buffer: usize,
    /// A connection with no request in flight is closed after this (HTTP/2: GOAWAY).
    pub idle_timeout: PositiveDuration,
    /// Open connections from one client address at most (IPv6: one /64); 0 = no limit.
    pub max_connections_per_ip: usize,
    /// How often the certificate, key and secret files are checked for changes (also: SIGHUP).
    pub reload_interval: PositiveDuration,
    /// Worker threads, each a single-threaded event loop with its own upstream pool, all
    /// accepting from one listening socket (like nginx's worker processes). 0 = one per core.
    pub workers: usize,
}

impl ServerConfig {
    /// `workers`, with 0 resolved to the number of CPU cores.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 3001)),
            shutdown_grace: PositiveDuration::secs(25),
            tls_handshake_timeout: PositiveDuration::secs(10),
            header_read_timeout: PositiveDuration::secs(10),
            max_connections: 10_000,
            max_header_bytes: 16 * 1024,
            http2_max_concurrent_streams: 32,
            http2_stream_buffer: 16 * 1024,
            idle_timeout: PositiveDuration::secs(60),
            max_connections_per_ip: 0,
            reload_interval: PositiveDuration::secs(10),
            workers: 0,
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
    /// Idle connections kept to the upstream, per worker thread.
    pub pool_max_idle: usize,
    /// Retry an idempotent, bodiless request once when the upstream closed a pooled connection
    /// before answering.
    pub retry_idempotent: bool,
    /// A WebSocket tunnel with no bytes either way for this long is closed; `"0s"` = never.
    #[serde(deserialize_with = "any_duration")]
    pub tunnel_idle_timeout: Duration,
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
            tunnel_idle_timeout: Duration::from_secs(300),
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
    /// Request headers removed before forwarding: the client must not choose what Node reads
    /// as its address, scheme, port or path prefix. Empty the list only behind a proxy that
    /// sets these itself.
    pub remove_request_headers: Vec<FieldName>,
}

impl Default for ForwardingConfig {
    fn default() -> Self {
        Self {
            x_forwarded_for: true,
            x_forwarded_proto: true,
            x_forwarded_host: true,
            remove_request_headers: [
                "forwarded",
                "x-real-ip",
                "x-forwarded-port",
                "x-forwarded-prefix",
            ]
            .into_iter()
            .map(|name| FieldName(http::HeaderName::from_static(name)))
            .collect(),
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

/// The admin listener: plain HTTP, never on the public port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// `false` runs without `/healthz`, `/readyz` and `/metrics`.
    pub enabled: bool,
    /// Where they are served. In a pod, `0.0.0.0:9090` so the kubelet and Prometheus reach it.
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
        }
    }
}

/// Rate limits and request bounds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Token route, per client IP (IPv6: per /64), checked before any JWT work.
    pub token_per_ip: RateConfig,
    /// Token route, per verified user, checked before minting.
    pub token_per_user: RateConfig,
    /// Token route, all clients together. Off unless set.
    pub token_global: Option<RateConfig>,
    /// Per-IP limits on forwarded paths, by path prefix. None by default (Node decides).
    pub forward: Vec<ForwardLimit>,
    /// Proxies (CIDRs) whose `X-Forwarded-For` is believed when finding the client's IP.
    pub trusted_proxies: Vec<CidrNet>,
    /// Keys one limiter may hold; past it, its state starts over (memory stays bounded).
    pub max_keys: usize,
    /// How often idle limiter state is pruned.
    pub prune_interval: PositiveDuration,
    /// Largest token-route body, in bytes; over it: 413, without reading the rest.
    pub token_body_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            token_per_ip: RateConfig::new(60, PositiveDuration::secs(60), 20),
            token_per_user: RateConfig::new(20, PositiveDuration::secs(60), 10),
            token_global: None,
            forward: Vec::new(),
            trusted_proxies: Vec::new(),
            max_keys: 100_000,
            prune_interval: PositiveDuration::secs(10),
            token_body_bytes: 16 * 1024,
        }
    }
}

/// `requests` per `period` (default one minute), with up to `burst` at once (default:
/// `requests`). `requests = 0` switches the limit off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateConfig {
    pub requests: u32,
    #[serde(default = "one_minute")]
    pub period: PositiveDuration,
    #[serde(default)]
    burst: Option<u32>,
}

impl RateConfig {
    pub fn new(requests: u32, period: PositiveDuration, burst: u32) -> Self {
        Self {
            requests,
            period,
            burst: Some(burst),
        }
    }

    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.requests)
    }
}

fn one_minute() -> PositiveDuration {
    PositiveDuration::secs(60)
}

/// A per-IP limit on forwarded paths starting with `prefix`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardLimit {
    pub prefix: String,
    #[serde(flatten)]
    pub rate: RateConfig,
}

/// An IP network in CIDR form (`10.0.0.0/8`, `fd00::/8`); a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct CidrNet(pub ipnet::IpNet);

impl TryFrom<String> for CidrNet {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if let Ok(net) = s.parse::<ipnet::IpNet>() {
            return Ok(Self(net.trunc()));
        }
        s.parse::<std::net::IpAddr>()
            .map(|ip| Self(ipnet::IpNet::from(ip)))
            .map_err(|_| format!("`{s}` is not an IP network like 10.0.0.0/8 or an address"))
    }
}

/// A header field name from the config (any case; stored lower-case).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct FieldName(pub http::HeaderName);

impl TryFrom<String> for FieldName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        http::HeaderName::from_bytes(s.as_bytes())
            .map(FieldName)
            .map_err(|_| format!("{s:?} is not a header field name"))
    }
}

/// A secret string: compared and used, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// A signature algorithm we accept for session tokens: asymmetric only, never `none` or HMAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct AllowedAlgorithm(pub jsonwebtoken::Algorithm);

impl TryFrom<String> for AllowedAlgorithm {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        use jsonwebtoken::Algorithm::*;
        let alg = match s.as_str() {
            "RS256" => RS256,
            "RS384" => RS384,
            "RS512" => RS512,
            "PS256" => PS256,
            "PS384" => PS384,
            "PS512" => PS512,
            "ES256" => ES256,
            "ES384" => ES384,
            _ => {
                return Err(format!(
                    "`{s}` is not allowed: use RS256, RS384, RS512, PS256, PS384, PS512, ES256 \
                     or ES384 (`none` and HMAC algorithms are always refused)"
                ));
            }
        };
        Ok(Self(alg))
    }
}

/// Where the JWKS lives: `https://` anywhere, `http://` only on a loopback host.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct JwksUrl(pub http::Uri);

impl JwksUrl {
    pub fn parse(s: &str) -> Result<Self, String> {
        let uri: http::Uri = s.parse().map_err(|e| format!("`{s}` is not a URL ({e})"))?;
        let host = uri.host().ok_or_else(|| format!("`{s}` has no host"))?;
        match uri.scheme_str() {
            Some("https") => Ok(Self(uri)),
            Some("http") if is_loopback_host(host) => Ok(Self(uri)),
            Some("http") => Err(format!(
                "`{s}`: keys must be fetched over https:// (plain http:// is allowed only for \
                 localhost/127.0.0.1 test servers)"
            )),
            _ => Err(format!("`{s}` must start with https://")),
        }
    }
}

impl TryFrom<String> for JwksUrl {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A duration that may be zero (`"0s"`), for leeways and margins.
fn any_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map_err(|e| serde::de::Error::custom(format!("`{s}` is not a duration like \"5s\" ({e})")))
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
        config.load_secret()?;
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
        if let Some(v) = lookup("CLERK_ISSUER") {
            self.auth.issuer = Some(v);
        }
        if let Some(v) = lookup("CLERK_JWKS_URL") {
            self.auth.jwks_url = Some(JwksUrl::parse(&v).map_err(|e| bad("CLERK_JWKS_URL", e))?);
            self.auth.public_key_pem = None;
            self.auth.public_key_file = None;
            self.auth.dev_signing_key = None;
        }
        if let Some(v) = lookup("CLERK_JWT_KEY") {
            self.auth.public_key_pem = Some(v);
            self.auth.jwks_url = None;
            self.auth.public_key_file = None;
            self.auth.dev_signing_key = None;
        }
        if let Some(v) = lookup("CLERK_AUTHORIZED_PARTIES") {
            self.auth.authorized_parties = v
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect();
        }
        if let Some(v) = lookup("STREAM_API_KEY") {
            self.stream.api_key = v;
        }
        if let Some(v) = lookup("STREAM_API_SECRET_FILE") {
            self.stream.api_secret_file = Some(std::env::current_dir().unwrap_or_default().join(v));
        }
        if let Some(v) = lookup("STREAM_API_SECRET") {
            if v.trim().is_empty() {
                return Err(bad("STREAM_API_SECRET", "is set but empty".into()));
            }
            self.stream.api_secret = Some(Secret::new(v));
            self.stream.api_secret_from_env = true;
        }
        if let Some(v) = lookup("ADMIN_LISTEN") {
            self.admin.listen = v.parse().map_err(|e| {
                bad(
                    "ADMIN_LISTEN",
                    format!("`{v}` is not an address like 0.0.0.0:9090 ({e})"),
                )
            })?;
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
        let err = |msg: String| Err(ConfigError::new("configuration", msg));
        // Saturating: `Duration * 10` panics past u64::MAX seconds (fuzz/ target `config`).
        if self.upstream.pool_idle_timeout.0 >= self.upstream.response_timeout.0.saturating_mul(10)
        {
            return err(
                "upstream.pool_idle_timeout is far longer than upstream.response_timeout; keep it \
                 below the upstream's keep-alive timeout (Node's default is 5s)"
                    .into(),
            );
        }

        let auth = &self.auth;
        let sources: Vec<&str> = [
            ("auth.jwks_url", auth.jwks_url.is_some()),
            ("auth.public_key_pem", auth.public_key_pem.is_some()),
            ("auth.public_key_file", auth.public_key_file.is_some()),
            ("auth.dev_signing_key", auth.dev_signing_key.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        match sources.len() {
            0 => {
                return err(
                    "no session-token key source: set auth.jwks_url (Clerk's JWKS) or \
                            auth.public_key_pem / auth.public_key_file (Clerk's JWT public key)"
                        .into(),
                );
            }
            1 => {}
            _ => {
                return err(format!(
                    "set only one key source, not {}",
                    sources.join(" and ")
                ));
            }
        }
        if auth.dev_signing_key.is_some() && !self.dev {
            return err(
                "auth.dev_signing_key is a dev-profile setting; it needs `dev = true`".into(),
            );
        }
        match auth.issuer.as_deref() {
            None if !self.dev => {
                return err(
                    "auth.issuer is required: your Clerk Frontend API URL, e.g. \
                            https://clerk.example.com (the `iss` of your session tokens)"
                        .into(),
                );
            }
            Some(i) if i.trim().is_empty() => return err("auth.issuer is empty".into()),
            _ => {}
        }
        let dev_trust =
            auth.dev_signing_key.is_some() || auth.issuer.as_deref() == Some(DEV_ISSUER);
        if dev_trust && !self.server.listen.ip().is_loopback() && !auth.allow_dev_on_public_listener
        {
            return err(format!(
                "the dev signing key / dev issuer must not be trusted on the non-loopback listener \
                 {}; listen on 127.0.0.1, or set auth.allow_dev_on_public_listener = true if you \
                 really mean it",
                self.server.listen
            ));
        }
        if auth.algorithms.is_empty() {
            return err("auth.algorithms is empty: allow at least RS256".into());
        }
        if auth.leeway > Duration::from_secs(300) {
            return err("auth.leeway is over 5m; clock skew that large is a broken clock".into());
        }

        let stream = &self.stream;
        if stream.token_ttl.0 > Duration::from_secs(30 * 24 * 3600) {
            return err("stream.token_ttl is over 30 days; keep Stream tokens short-lived".into());
        }
        if stream.iat_backdate > Duration::from_secs(300) {
            return err("stream.iat_backdate is over 5m".into());
        }
        if stream.token_reuse_margin >= stream.token_ttl.0 {
            return err("stream.token_reuse_margin must be shorter than stream.token_ttl".into());
        }
        if stream.api_secret.is_none() && stream.api_secret_file.is_none() && !self.dev {
            return err(
                "the Stream API secret is missing: set STREAM_API_SECRET or \
                        stream.api_secret_file (a mounted secret)"
                    .into(),
            );
        }

        if self.admin.enabled
            && self.admin.listen == self.server.listen
            && self.server.listen.port() != 0
        {
            return err(
                "admin.listen must differ from server.listen: the admin endpoints are never \
                        served on the public port"
                    .into(),
            );
        }
        let limits = &self.limits;
        let rates = [
            ("limits.token_per_ip", &limits.token_per_ip),
            ("limits.token_per_user", &limits.token_per_user),
        ];
        for (name, rate) in rates.into_iter().chain(
            limits
                .token_global
                .as_ref()
                .map(|r| ("limits.token_global", r)),
        ) {
            if rate.requests > 0 && rate.burst() == 0 {
                return err(format!(
                    "{name}.burst must be at least 1 (or set requests = 0 to switch it off)"
                ));
            }
        }
        for f in &limits.forward {
            if !f.prefix.starts_with('/') {
                return err(format!(
                    "limits.forward prefix `{}` must start with /",
                    f.prefix
                ));
            }
            if f.rate.requests > 0 && f.rate.burst() == 0 {
                return err(format!(
                    "limits.forward `{}`: burst must be at least 1",
                    f.prefix
                ));
            }
        }
        if limits.max_keys == 0 || limits.token_body_bytes == 0 {
            return err(
                "limits.max_keys and limits.token_body_bytes must be greater than zero".into(),
            );
        }
        if !(8192..=1024 * 1024).contains(&self.server.max_header_bytes) {
            return err("server.max_header_bytes must be between 8192 and 1048576".into());
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.server.http2_stream_buffer) {
            return err("server.http2_stream_buffer must be between 1024 and 16777216".into());
        }
        if self.server.max_connections == 0 || self.server.http2_max_concurrent_streams == 0 {
            return err("server.max_connections and server.http2_max_concurrent_streams must be greater than zero".into());
        }

        for origin in &self.cors.allowed_origins {
            if let Err(why) = check_origin(origin) {
                return err(format!("cors.allowed_origins: `{origin}` {why}"));
            }
        }
        Ok(())
    }

    /// Settings that are valid but probably wrong; `check-config` prints them and `serve`
    /// logs them. (The issuer is compared byte for byte, so a stray `/` refuses every token.)
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(issuer) = self.auth.issuer.as_deref() {
            if issuer.ends_with('/') {
                warnings.push(format!(
                    "auth.issuer `{issuer}` ends with `/`; Clerk's `iss` has no trailing slash \
                     and is compared byte for byte, so tokens will be refused as wrong_issuer"
                ));
            }
            if !self.dev && !issuer.starts_with("https://") {
                warnings.push(format!(
                    "auth.issuer `{issuer}` is not an https:// URL; Clerk's Frontend API URL \
                     always is"
                ));
            }
        }
        warnings
    }

    /// Reads the Stream secret from `stream.api_secret_file` unless the environment gave it.
    /// A dev config may lack the file: `start` generates one.
    pub fn load_secret(&mut self) -> Result<(), ConfigError> {
        if self.stream.api_secret.is_some() {
            return Ok(());
        }
        let Some(file) = &self.stream.api_secret_file else {
            return Ok(());
        };
        let path = self.resolve(file);
        match read_secret_file(&path) {
            Ok(secret) => {
                self.stream.api_secret = Some(secret);
                Ok(())
            }
            Err(e) if self.dev && e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ConfigError::new(
                path.display(),
                format!("cannot use the Stream API secret file: {e}"),
            )),
        }
    }

    /// Resolves a path from the file against the file's folder.
    /// Where the certificate and key are, resolved.
    pub fn tls_paths(&self) -> (PathBuf, PathBuf) {
        (self.resolve(&self.tls.cert), self.resolve(&self.tls.key))
    }

    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
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

    const PROD: &str = r#"
        [auth]
        issuer = "https://clerk.example.com"
        jwks_url = "https://clerk.example.com/.well-known/jwks.json"
    "#;

    fn validated(text: &str) -> Result<Config, ConfigError> {
        let mut config = parse(text)?;
        config.stream.api_secret = Some(Secret::new("s"));
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn a_production_config_needs_issuer_keys_and_secret() {
        validated(PROD).expect("minimal production config");
        let err = validated("[auth]\njwks_url = \"https://c.example/jwks\"\n").unwrap_err();
        assert!(err.to_string().contains("auth.issuer is required"), "{err}");
        let err = validated("[auth]\nissuer = \"https://c.example\"\n").unwrap_err();
        assert!(
            err.to_string().contains("no session-token key source"),
            "{err}"
        );
        let both = format!("{PROD}\npublic_key_file = \"k.pem\"\n");
        let err = validated(&both).unwrap_err();
        assert!(err.to_string().contains("only one key source"), "{err}");

        let no_secret = parse(PROD).unwrap().validate().unwrap_err();
        assert!(
            no_secret.to_string().contains("STREAM_API_SECRET"),
            "{no_secret}"
        );
    }

    /// Found with the `config` fuzz target (fuzz/): a huge `upstream.response_timeout` made
    /// `validate` panic multiplying it by 10 instead of validating.
    #[test]
    fn huge_durations_validate_without_overflow() {
        let huge = "\"2000000000000000000s\"";
        let config = validated(&format!("{PROD}\n[upstream]\nresponse_timeout = {huge}\n"))
            .expect("a huge response_timeout is not an error");
        assert_eq!(
            config.upstream.response_timeout.0.as_secs(),
            2_000_000_000_000_000_000
        );
        let text =
            format!("{PROD}\n[upstream]\nresponse_timeout = \"1s\"\npool_idle_timeout = {huge}\n");
        let err = validated(&text).unwrap_err();
        assert!(err.to_string().contains("pool_idle_timeout"), "{err}");
    }

    #[test]
    fn check_config_warns_about_an_issuer_that_cannot_match() {
        assert!(validated(PROD).unwrap().warnings().is_empty());
        let slash = validated(&PROD.replace(
            "issuer = \"https://clerk.example.com\"",
            "issuer = \"https://clerk.example.com/\"",
        ))
        .unwrap();
        let warnings = slash.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("ends with `/`"), "{warnings:?}");
        let plain =
            validated(&PROD.replace("https://clerk.example.com\"", "http://clerk.example.com\""))
                .unwrap();
        assert!(plain.warnings()[0].contains("not an https:// URL"));
        let mut dev = plain;
        dev.dev = true;
        assert!(dev.warnings().is_empty(), "a dev issuer may be plain http");
        assert_eq!(
            AuthConfig::default().jwks_refetch_cooldown.0,
            Duration::from_secs(5),
            "a rotated key is fetched within 5 s"
        );
        assert!(!AuthConfig::default().accept_pending_sessions);
    }

    #[test]
    fn insecure_or_loose_auth_settings_are_refused() {
        let issuer = "issuer = \"https://clerk.example.com\"";
        let jwks = "jwks_url = \"https://clerk.example.com/jwks\"";
        let cases = [
            (
                format!("[auth]\n{issuer}\njwks_url = \"http://clerk.example.com/jwks\""),
                "must be fetched over https",
            ),
            (
                format!("[auth]\n{issuer}\n{jwks}\nalgorithms = [\"HS256\"]"),
                "always refused",
            ),
            (
                format!("[auth]\n{issuer}\n{jwks}\nalgorithms = [\"none\"]"),
                "always refused",
            ),
            (
                format!("{PROD}\n[cors]\nallowed_origins = [\"*\"]"),
                "wildcard",
            ),
            (
                format!("{PROD}\n[cors]\nallowed_origins = [\"https://a.example/\"]"),
                "trailing slash",
            ),
            (
                format!("{PROD}\n[stream]\napi_secret = \"inline\""),
                "unknown field `api_secret`",
            ),
            (
                format!("{PROD}\n[stream]\ntoken_ttl = \"90days\""),
                "over 30 days",
            ),
        ];
        for (text, want) in cases {
            let err = validated(&text).expect_err(&text);
            assert!(err.to_string().contains(want), "{text:?} gave {err}");
        }
        // http:// for a loopback JWKS is fine (local test servers).
        assert!(JwksUrl::parse("http://127.0.0.1:18401/.well-known/jwks.json").is_ok());
        assert!(JwksUrl::parse("http://localhost:1/jwks").is_ok());
    }

    #[test]
    fn dev_key_and_dev_issuer_stay_on_loopback_unless_forced() {
        let dev = |listen: &str, force: bool| {
            let text = EMBEDDED_DEV_CONFIG
                .replace(
                    "listen = \"127.0.0.1:3001\"",
                    &format!("listen = \"{listen}\""),
                )
                .replace(
                    "allow_dev_on_public_listener = false",
                    &format!("allow_dev_on_public_listener = {force}"),
                );
            parse(&text).unwrap().validate()
        };
        dev("127.0.0.1:3001", false).expect("loopback is fine");
        dev("[::1]:3001", false).expect("IPv6 loopback is fine");
        let err = dev("0.0.0.0:3001", false).unwrap_err();
        assert!(
            err.to_string()
                .contains("must not be trusted on the non-loopback listener"),
            "{err}"
        );
        dev("0.0.0.0:3001", true).expect("explicitly forced");

        let dev_issuer_in_prod = format!("{PROD}\n").replace(
            "https://clerk.example.com\"\n",
            &format!("{DEV_ISSUER}\"\n"),
        );
        let err = validated(&dev_issuer_in_prod).unwrap_err();
        assert!(err.to_string().contains("dev issuer"), "{err}");
        let err =
            validated("[auth]\nissuer = \"https://x.example\"\ndev_signing_key = \"k.pem\"\n")
                .unwrap_err();
        assert!(err.to_string().contains("needs `dev = true`"), "{err}");
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let mut config = parse(PROD).unwrap();
        config
            .apply_env(|k| (k == "STREAM_API_SECRET").then(|| "very-secret-value-123".to_string()))
            .unwrap();
        let debug = format!("{config:?} {:#?}", config);
        assert!(!debug.contains("very-secret-value-123"), "{debug}");
        assert!(debug.contains("[redacted]"));
        let err = config
            .apply_env(|k| (k == "STREAM_API_SECRET").then(|| "  ".to_string()))
            .unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }

    #[test]
    fn the_secret_file_is_read_trimmed_and_must_not_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "s3cr3t\n").unwrap();
        std::fs::write(dir.path().join("empty"), "\n").unwrap();
        let text = format!("{PROD}\n[stream]\napi_secret_file = \"secret\"\n");
        let mut config = Config::from_toml(&text, "t", dir.path()).unwrap();
        config.load_secret().unwrap();
        assert_eq!(
            config.stream.api_secret.as_ref().unwrap().expose(),
            "s3cr3t"
        );

        let mut config =
            Config::from_toml(&text.replace("\"secret\"", "\"empty\""), "t", dir.path()).unwrap();
        let err = config.load_secret().unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        let mut config =
            Config::from_toml(&text.replace("\"secret\"", "\"missing\""), "t", dir.path()).unwrap();
        assert!(
            config.load_secret().is_err(),
            "a missing file outside dev is an error"
        );
    }
}
