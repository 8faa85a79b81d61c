//! The `proxy.toml` schema, by section, and where the file comes from.
//!
//! Every value is checked while it is parsed (the newtypes in `types.rs`), so a bad value is
//! reported by `toml` with the file, line and column. Each section checks its own rules
//! (`ServerConfig::validate`, ...); the few rules that involve two sections are in
//! [`Config::validate`]. Environment overrides are one table (`env.rs`).

mod auth;
mod cors;
mod env;
mod limits;
mod ops;
mod redis;
mod routes;
mod server;
mod stream;
mod traces;
mod types;
mod upstream;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use auth::AuthConfig;
pub use cors::CorsConfig;
pub use env::{ENV_OVERRIDES, EnvOverride, env_help};
pub use limits::{
    Backend, ForwardLimit, KeyedBy, LimitsConfig, OnError, PolicySpec, RateConfig, RedisConfig,
    RedisUrl,
};
pub use ops::{AdminConfig, LogConfig, LogFormat, LogLevel};
pub use routes::{AuthMode, IdentityConfig, LimitPer, RouteConfig, RouteLimit};
pub use server::{ServerConfig, TlsConfig};
pub use stream::{StreamConfig, read_secret_file};
pub use traces::{OtlpProtocol, TracingConfig};
use types::any_duration;
pub use types::{
    AllowedAlgorithm, CidrNet, FieldName, JwksUrl, PositiveDuration, Secret, UpstreamUrl,
};
pub use upstream::{ForwardingConfig, UpstreamConfig};

/// The shipped `proxy.toml`, embedded so that `cargo run --release` works from anywhere.
pub const EMBEDDED_DEV_CONFIG: &str = include_str!("../../proxy.toml");

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
    /// A rule of the configuration as a whole is broken.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self {
            origin: "configuration".into(),
            message: message.into(),
        }
    }

    pub(crate) fn new(origin: impl fmt::Display, message: impl fmt::Display) -> Self {
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
    /// The route table (`[[routes]]`): forwarded paths that need a verified session.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub identity: IdentityConfig,
    #[serde(default)]
    pub tracing: TracingConfig,
    /// Directory that relative paths in the file are resolved against (the file's own folder).
    #[serde(skip)]
    pub base_dir: PathBuf,
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

    /// Each section's rules, then the ones that involve two sections.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.upstream.validate()?;
        self.auth.validate(self.dev)?;
        self.stream.validate(self.dev)?;
        self.limits.validate()?;
        self.cors.validate()?;
        routes::validate_routes(&self.routes)?;
        self.tracing.validate()?;
        let listen = self.server.listen;
        if self.auth.trusts_dev_keys()
            && !listen.ip().is_loopback()
            && !self.auth.allow_dev_on_public_listener
        {
            return Err(ConfigError::invalid(format!(
                "the dev signing key / dev issuer must not be trusted on the non-loopback \
                 listener {listen}; listen on 127.0.0.1, or set \
                 auth.allow_dev_on_public_listener = true if you really mean it"
            )));
        }
        if self.admin.enabled && self.admin.listen == listen && listen.port() != 0 {
            return Err(ConfigError::invalid(
                "admin.listen must differ from server.listen: the admin endpoints are never \
                 served on the public port",
            ));
        }
        Ok(())
    }

    /// Settings that are valid but probably wrong; `check-config` prints them and `serve`
    /// logs them.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = self.auth.warnings(self.dev);
        warnings.extend(self.limits.warnings());
        warnings
    }

    /// Reads the Stream secret from `stream.api_secret_file` unless the environment gave it
    /// (a dev config may lack the file: `start` generates one), and the Redis password from
    /// `limits.redis.password_file` unless the environment gave it.
    pub fn load_secret(&mut self) -> Result<(), ConfigError> {
        if let Some(file) = self.limits.redis_password_file() {
            let path = self.resolve(file);
            let password = read_secret_file(&path).map_err(|e| {
                ConfigError::new(
                    path.display(),
                    format!("cannot use the Redis password file: {e}"),
                )
            })?;
            self.limits.redis.password = Some(password);
        }
        self.load_stream_secret()
    }

    fn load_stream_secret(&mut self) -> Result<(), ConfigError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
    fn a_redis_fallback_without_replicas_hint_is_warned_about() {
        let warned = |text: &str| {
            parse(text)
                .unwrap()
                .warnings()
                .iter()
                .any(|w| w.contains("without replicas_hint"))
        };
        let redis = "[limits]\nbackend = \"redis\"\n[limits.redis]\n";
        assert!(warned(redis), "on_error = local is the default");
        assert!(!warned(&format!("{redis}replicas_hint = 3\n")));
        assert!(!warned(&format!("{redis}on_error = \"deny\"\n")));
        assert!(!warned("[limits]\nbackend = \"local\"\n"));
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
    fn a_forward_limit_prefix_given_twice_is_refused() {
        let limit =
            |prefix: &str| format!("[[limits.forward]]\nprefix = \"{prefix}\"\nrequests = 5\n");
        let twice = parse(&(limit("/api/upload") + &limit("/API/upload/"))).unwrap();
        let err = twice.limits.validate().unwrap_err().to_string();
        assert!(err.contains("`/API/upload/` is given twice"), "{err}");
        let distinct = parse(&(limit("/api/upload") + &limit("/api/uploads"))).unwrap();
        distinct.limits.validate().unwrap();
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
    fn an_upstream_health_path_is_a_path() {
        let with = |path: &str| format!("{PROD}\n[upstream]\nhealth_path = \"{path}\"\n");
        let config = validated(&with("/healthz?deep=1")).expect("a path and query");
        assert_eq!(
            config.upstream.health_path.as_deref(),
            Some("/healthz?deep=1")
        );
        assert!(!config.admin.ready_requires_upstream, "off by default");
        for bad in ["healthz", "http://node/healthz", "/a b"] {
            let err = validated(&with(bad)).unwrap_err();
            assert!(
                err.to_string().contains("upstream.health_path"),
                "{bad}: {err}"
            );
        }
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
    fn the_redis_backend_is_configured_without_its_password_in_the_file() {
        let config = validated(PROD).unwrap();
        assert_eq!(config.limits.backend, Backend::Local, "local by default");
        assert_eq!(config.limits.redis.timeout.0, Duration::from_millis(20));
        assert_eq!(config.limits.redis.on_error, OnError::Local);

        let mut config = validated(&format!(
            "{PROD}\n[limits]\nbackend = \"redis\"\n[limits.redis]\n\
             url = \"redis://app@redis.internal:6380/1\"\non_error = \"deny\"\n\
             replicas_hint = 3\ntimeout = \"15ms\"\n"
        ))
        .unwrap();
        assert_eq!(config.limits.backend, Backend::Redis);
        assert_eq!(
            config.limits.redis.url.to_string(),
            "redis://app@redis.internal:6380/1"
        );
        config
            .apply_env(|k| match k {
                "REDIS_URL" => Some("rediss://:url-pass-123@r.example:6390".into()),
                "LIMITS_BACKEND" => Some("local".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(config.limits.backend, Backend::Local);
        assert!(config.limits.redis.url.tls);
        let password = config.limits.redis.password.as_ref().unwrap();
        assert_eq!(password.expose(), "url-pass-123");
        config
            .apply_env(|k| (k == "REDIS_PASSWORD").then(|| "env-pass-456".to_string()))
            .unwrap();
        let debug = format!("{config:?} {}", config.limits.redis.url);
        assert!(
            !debug.contains("url-pass-123") && !debug.contains("env-pass-456"),
            "{debug}"
        );

        let cases = [
            ("url = \"redis://:hunter2@h\"", "REDIS_PASSWORD"),
            ("url = \"http://h\"", "redis://"),
            ("on_error = \"maybe\"", "unknown variant `maybe`"),
            ("timeout = \"0s\"", "greater than zero"),
            ("replicas_hint = 0", "replicas_hint must be at least 1"),
            ("timeout = \"10s\"", "timeout is over 5s"),
            ("ca_file = \"ca.pem\"", "not rediss://"),
        ];
        for (line, want) in cases {
            let err = validated(&format!("{PROD}\n[limits.redis]\n{line}\n")).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(want), "{line}: {text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
        let err = config
            .apply_env(|k| (k == "LIMITS_BACKEND").then(|| "memcached".to_string()))
            .unwrap_err();
        assert!(err.to_string().contains("`local` or `redis`"), "{err}");
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
