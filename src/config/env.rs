//! The environment variables that override single settings (the values that differ per
//! deployment, and the Stream secret, which has no key in the file). This one table drives
//! [`Config::apply_env`], the `--help` text and the README's table (`tests/cli.rs` checks
//! that the README agrees).

use super::{Backend, Config, ConfigError, JwksUrl, LogFormat, Secret, UpstreamUrl};

/// One environment variable and the setting it overrides.
pub struct EnvOverride {
    pub var: &'static str,
    /// What it sets, as `--help` and the README say it.
    pub sets: &'static str,
    apply: fn(&mut Config, String) -> Result<(), String>,
}

/// In the order they are applied (a later one wins: `CLERK_JWT_KEY` over `CLERK_JWKS_URL`).
pub const ENV_OVERRIDES: &[EnvOverride] = &[
    EnvOverride {
        var: "PROXY_LISTEN",
        sets: "server.listen",
        apply: |c, v| {
            c.server.listen = parse_addr(&v, "0.0.0.0:3001")?;
            Ok(())
        },
    },
    EnvOverride {
        var: "ADMIN_LISTEN",
        sets: "admin.listen",
        apply: |c, v| {
            c.admin.listen = parse_addr(&v, "0.0.0.0:9090")?;
            Ok(())
        },
    },
    EnvOverride {
        var: "UPSTREAM_URL",
        sets: "upstream.url",
        apply: |c, v| {
            c.upstream.url = UpstreamUrl::parse(&v)?;
            Ok(())
        },
    },
    EnvOverride {
        var: "TLS_CERT",
        sets: "tls.cert",
        apply: |c, v| {
            c.tls.cert = from_working_dir(v);
            Ok(())
        },
    },
    EnvOverride {
        var: "TLS_KEY",
        sets: "tls.key",
        apply: |c, v| {
            c.tls.key = from_working_dir(v);
            Ok(())
        },
    },
    EnvOverride {
        var: "LOG_FORMAT",
        sets: "log.format",
        apply: |c, v| {
            c.log.format = match v.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => return Err(format!("`{v}`: expected `text` or `json`")),
            };
            Ok(())
        },
    },
    EnvOverride {
        var: "CLERK_ISSUER",
        sets: "auth.issuer",
        apply: |c, v| {
            c.auth.issuer = Some(v);
            Ok(())
        },
    },
    EnvOverride {
        var: "CLERK_JWKS_URL",
        sets: "auth.jwks_url (replaces any other key source)",
        apply: |c, v| {
            let url = JwksUrl::parse(&v)?;
            c.auth.clear_key_sources();
            c.auth.jwks_url = Some(url);
            Ok(())
        },
    },
    EnvOverride {
        var: "CLERK_JWT_KEY",
        sets: "auth.public_key_pem (replaces any other key source)",
        apply: |c, v| {
            c.auth.clear_key_sources();
            c.auth.public_key_pem = Some(v);
            Ok(())
        },
    },
    EnvOverride {
        var: "CLERK_AUTHORIZED_PARTIES",
        sets: "auth.authorized_parties (comma-separated)",
        apply: |c, v| {
            c.auth.authorized_parties = v
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect();
            Ok(())
        },
    },
    EnvOverride {
        var: "OTEL_EXPORTER_OTLP_ENDPOINT",
        sets: "tracing.otlp_endpoint (OpenTelemetry's standard variable)",
        apply: |c, v| {
            c.tracing.otlp_endpoint = Some(v);
            Ok(())
        },
    },
    EnvOverride {
        var: "STREAM_API_KEY",
        sets: "stream.api_key",
        apply: |c, v| {
            c.stream.api_key = v;
            Ok(())
        },
    },
    EnvOverride {
        var: "STREAM_API_SECRET",
        sets: "the Stream API secret itself",
        apply: |c, v| {
            if v.trim().is_empty() {
                return Err("is set but empty".into());
            }
            c.stream.api_secret = Some(Secret::new(v));
            c.stream.api_secret_from_env = true;
            Ok(())
        },
    },
    EnvOverride {
        var: "STREAM_API_SECRET_FILE",
        sets: "stream.api_secret_file",
        apply: |c, v| {
            c.stream.api_secret_file = Some(from_working_dir(v));
            Ok(())
        },
    },
    EnvOverride {
        var: "LIMITS_BACKEND",
        sets: "limits.backend (`local` or `redis`)",
        apply: |c, v| {
            c.limits.backend = Backend::parse(&v)?;
            Ok(())
        },
    },
    EnvOverride {
        var: "REDIS_URL",
        sets: "limits.redis.url (a password in it is used, never logged)",
        apply: |c, v| c.limits.redis.set_url_from_env(&v),
    },
    EnvOverride {
        var: "REDIS_PASSWORD",
        sets: "the Redis password itself",
        apply: |c, v| {
            if v.is_empty() {
                return Err("is set but empty".into());
            }
            c.limits.redis.password = Some(Secret::new(v));
            Ok(())
        },
    },
];

impl Config {
    /// Applies [`ENV_OVERRIDES`]; `lookup` is `std::env::var` in the binary, a map in tests.
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        for o in ENV_OVERRIDES {
            if let Some(value) = lookup(o.var) {
                (o.apply)(self, value).map_err(|message| {
                    ConfigError::new(format!("environment variable {}", o.var), message)
                })?;
            }
        }
        Ok(())
    }
}

/// The `--help` lines: each variable and what it sets.
pub fn env_help() -> String {
    let width = ENV_OVERRIDES.iter().map(|o| o.var.len()).max().unwrap_or(0);
    ENV_OVERRIDES
        .iter()
        .map(|o| format!("  {:width$}  {}\n", o.var, o.sets))
        .collect()
}

fn parse_addr(value: &str, example: &str) -> Result<std::net::SocketAddr, String> {
    value
        .parse()
        .map_err(|e| format!("`{value}` is not an address like {example} ({e})"))
}

/// Paths from the environment are taken as given (relative to the working directory), not
/// relative to the config file.
fn from_working_dir(value: String) -> std::path::PathBuf {
    std::env::current_dir().unwrap_or_default().join(value)
}
