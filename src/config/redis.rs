//! `[limits.redis]`: the Redis (or Valkey) server that holds the fleet's rate-limit state, and
//! what a replica does while it cannot ask it. The password never comes from this file: it is
//! `REDIS_PASSWORD`, the password part of `REDIS_URL`, or `password_file` (a mounted Secret).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, PositiveDuration, Secret};

/// The Redis backend's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://host[:port][/db]` or `rediss://` (TLS through rustls); a user name may be in
    /// it, a password only when it comes from `REDIS_URL`.
    pub url: RedisUrl,
    /// A file holding the password (trimmed). `REDIS_PASSWORD` wins when set.
    pub password_file: Option<PathBuf>,
    /// A PEM file of the CA(s) that sign the server's certificate (`rediss://`); without it,
    /// the Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// Put before every key the limiter writes (several deployments can share one Redis).
    pub key_prefix: String,
    /// Longest wait for one check; past it, `on_error` answers.
    pub timeout: PositiveDuration,
    /// Longest wait for a (re)connection, in the background, never on a request.
    pub connect_timeout: PositiveDuration,
    /// What a check does when Redis does not answer in time or fails.
    pub on_error: OnError,
    /// The replicas sharing the limits. With `on_error = "local"`, each replica's fallback
    /// quota is the configured one divided by this, so the fleet stays near the limit.
    pub replicas_hint: Option<u32>,
    /// Failed checks in a row that open the circuit (Redis is then skipped, not waited for).
    pub circuit_failures: u32,
    /// First wait before an open circuit probes Redis again; doubled after each failed probe.
    pub circuit_backoff: PositiveDuration,
    /// The longest wait between probes.
    pub circuit_backoff_max: PositiveDuration,
    /// A limit with a burst of 1024 or more reserves 1/1024 of it per call for a hot key, so
    /// that key needs a round trip per that many requests (the fleet never exceeds the limit;
    /// a replica may leave that many unused). `false`: every request is one count in Redis.
    pub reserve: bool,
    /// From `REDIS_PASSWORD`, the `REDIS_URL` or `password_file`; never from TOML.
    #[serde(skip)]
    pub password: Option<Secret>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: RedisUrl::local(),
            password_file: None,
            ca_file: None,
            key_prefix: "stp:rl:".into(),
            timeout: PositiveDuration(Duration::from_millis(20)),
            connect_timeout: PositiveDuration::secs(1),
            on_error: OnError::Local,
            replicas_hint: None,
            circuit_failures: 3,
            circuit_backoff: PositiveDuration(Duration::from_millis(500)),
            circuit_backoff_max: PositiveDuration::secs(30),
            reserve: true,
            password: None,
        }
    }
}

impl RedisConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |message: &str| Err(ConfigError::invalid(format!("limits.redis.{message}")));
        if let Some(problem) = &self.url.problem_in_file {
            return bad(&format!("url: {problem}"));
        }
        if self.key_prefix.len() > 128 {
            return bad("key_prefix is over 128 bytes");
        }
        if self.replicas_hint == Some(0) {
            return bad("replicas_hint must be at least 1 (or left out)");
        }
        if self.circuit_failures == 0 {
            return bad("circuit_failures must be at least 1");
        }
        if self.timeout.0 > Duration::from_secs(5) {
            return bad("timeout is over 5s: every rate-limited request may wait that long");
        }
        if self.circuit_backoff.0 > self.circuit_backoff_max.0 {
            return bad("circuit_backoff must not be longer than circuit_backoff_max");
        }
        if self.ca_file.is_some() && !self.url.tls {
            return bad("ca_file is set but the url is not rediss://");
        }
        Ok(())
    }

    /// `REDIS_URL`: the URL, and its password when it has one (the environment may carry it).
    pub(crate) fn set_url_from_env(&mut self, value: &str) -> Result<(), String> {
        let (url, password) = RedisUrl::parse(value)?;
        self.url = url;
        if let Some(password) = password {
            self.password = Some(password);
        }
        Ok(())
    }
}

/// What a check does while Redis cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Count in this replica (each quota divided by `replicas_hint` when set).
    Local,
    /// Let the request through (availability over the limit).
    Allow,
    /// Refuse with 429 (the limit over availability).
    Deny,
}

impl OnError {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

/// Where Redis is: `redis://[user@]host[:port][/db]` or `rediss://` for TLS. Its `Display`
/// and `Debug` never show a password (the URL in the file may not have one at all).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct RedisUrl {
    pub tls: bool,
    /// As in a URL: an IPv6 address in brackets.
    pub host: String,
    pub port: u16,
    pub db: i64,
    pub username: Option<String>,
    /// What is wrong with the file's URL: a password in it, or a parse error. Kept for
    /// `validate` to report, because a parse error from here would make TOML quote the line,
    /// password and all.
    problem_in_file: Option<String>,
}

impl RedisUrl {
    fn local() -> Self {
        Self {
            tls: false,
            host: "127.0.0.1".into(),
            port: 6379,
            db: 0,
            username: None,
            problem_in_file: None,
        }
    }

    /// The URL and the password in it, if any. The user information ends at the last `@`, so
    /// a password may hold `/`, `:` or `@` (percent-encoding them works too).
    pub fn parse(s: &str) -> Result<(Self, Option<Secret>), String> {
        // Never echo `s` or a piece of it back: any piece may be (part of) the password.
        let (tls, rest) = if let Some(rest) = s.strip_prefix("rediss://") {
            (true, rest)
        } else if let Some(rest) = s.strip_prefix("redis://") {
            (false, rest)
        } else {
            return Err("the Redis URL must start with redis:// or rediss://".into());
        };
        let (userinfo, rest) = match rest.rsplit_once('@') {
            Some((userinfo, rest)) => (Some(userinfo), rest),
            None => (None, rest),
        };
        let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (username, password) = match userinfo.map(|u| u.split_once(':').unwrap_or((u, ""))) {
            Some((user, password)) => (
                Some(percent_decode(user)?).filter(|u| !u.is_empty()),
                Some(percent_decode(password)?)
                    .filter(|p| !p.is_empty())
                    .map(Secret::new),
            ),
            None => (None, None),
        };
        let (host, port) = split_host_port(hostport)?;
        let db = match path.trim_end_matches('/') {
            "" => 0,
            db => db
                .parse::<u16>()
                .map_err(|_| "the Redis URL's path is not a database number (0, 1, ...)")?
                .into(),
        };
        let url = Self {
            tls,
            host,
            port,
            db,
            username,
            problem_in_file: None,
        };
        Ok((url, password))
    }
}

fn split_host_port(hostport: &str) -> Result<(String, u16), String> {
    let (host, port) = match hostport.rfind(':') {
        Some(i) if !hostport[i..].contains(']') => (&hostport[..i], Some(&hostport[i + 1..])),
        _ => (hostport, None),
    };
    if host.is_empty() || host.contains(['/', '?', '#', ' ']) {
        return Err("the Redis URL has no usable host".into());
    }
    let port = match port {
        None => 6379,
        Some(p) => p
            .parse()
            .map_err(|_| "the Redis URL's port is not a number")?,
    };
    Ok((host.to_string(), port))
}

/// `%XX` escapes in a URL's user name or password.
fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            out.push(hex.ok_or("the Redis URL has a bad %-escape in its user or password")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the Redis URL's user or password is not UTF-8".into())
}

impl TryFrom<String> for RedisUrl {
    type Error = String;
    /// The file's URL. Never fails: what is wrong is reported by `validate` (see
    /// `problem_in_file`).
    fn try_from(s: String) -> Result<Self, String> {
        let url = match Self::parse(&s) {
            Ok((url, None)) => url,
            Ok((url, Some(_))) => Self {
                problem_in_file: Some(
                    "holds a password, which would be committed with the file: give it in \
                     REDIS_PASSWORD, REDIS_URL or limits.redis.password_file"
                        .into(),
                ),
                ..url
            },
            Err(problem) => Self {
                problem_in_file: Some(problem),
                ..Self::local()
            },
        };
        Ok(url)
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let user = self.username.as_deref().map(|u| format!("{u}@"));
        let user = user.as_deref().unwrap_or("");
        write!(
            f,
            "{scheme}://{user}{}:{}/{}",
            self.host, self.port, self.db
        )
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_never_show_the_password() {
        let (url, password) = RedisUrl::parse("rediss://app:p%40ss@redis.example:6380/2").unwrap();
        assert!(url.tls);
        assert_eq!(
            (url.host.as_str(), url.port, url.db),
            ("redis.example", 6380, 2)
        );
        assert_eq!(url.username.as_deref(), Some("app"));
        assert_eq!(password.unwrap().expose(), "p@ss");
        assert_eq!(url.to_string(), "rediss://app@redis.example:6380/2");
        assert!(!format!("{url:?}").contains("p@ss"));

        let (url, password) = RedisUrl::parse("redis://:only-pass@[::1]").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("[::1]", 6379));
        assert_eq!(url.username, None);
        assert_eq!(password.unwrap().expose(), "only-pass");

        for (bad, want) in [
            ("http://x", "must start with redis://"),
            ("redis://", "no usable host"),
            ("redis://h:port", "not a number"),
            ("redis://h/zero", "not a database number"),
            ("redis://u:%zz@h", "%-escape"),
        ] {
            let err = RedisUrl::parse(bad).unwrap_err();
            assert!(err.contains(want), "{bad}: {err}");
        }
        let from_file = RedisUrl::try_from("redis://:hunter2@h".to_string()).unwrap();
        assert!(
            from_file
                .problem_in_file
                .unwrap()
                .contains("holds a password")
        );
    }

    #[test]
    fn a_password_may_hold_slashes_and_no_error_quotes_a_piece_of_the_url() {
        let (url, password) = RedisUrl::parse("redis://default:hun/ter:2@h@redis:6380/3").unwrap();
        assert_eq!(password.unwrap().expose(), "hun/ter:2@h");
        assert_eq!((url.host.as_str(), url.port, url.db), ("redis", 6380, 3));
        for bad in [
            "redis://u:sekrit@h:sekrit",
            "redis://sekrit:6379x",
            "redis://u:pw@h/sekrit",
            "redis://u:pw@h/-1",
        ] {
            let err = RedisUrl::parse(bad).unwrap_err();
            assert!(
                !err.contains("sekrit") && !err.contains("-1"),
                "{bad}: {err}"
            );
        }
        // From the file, a bad URL is reported by validate, not as a TOML parse error (which
        // would quote the line, password and all).
        let config: RedisConfig = toml::from_str(r#"url = "redis://u:sekrit@h:sekrit""#).unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("limits.redis.url") && !err.contains("sekrit"),
            "{err}"
        );
    }
}
