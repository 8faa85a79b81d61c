//! The value types of the schema. Each checks its value while it is parsed, so `toml` reports a
//! bad one with the file, line and column.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

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

/// Every algorithm a session token may be signed with, by its JOSE name (RFC 7518 §3.1):
/// asymmetric only. `none` and HMAC are not here, so they are never accepted.
const ALGORITHMS: [(&str, jsonwebtoken::Algorithm); 8] = {
    use jsonwebtoken::Algorithm::*;
    [
        ("RS256", RS256),
        ("RS384", RS384),
        ("RS512", RS512),
        ("PS256", PS256),
        ("PS384", PS384),
        ("PS512", PS512),
        ("ES256", ES256),
        ("ES384", ES384),
    ]
};

impl AllowedAlgorithm {
    /// The JOSE name, as the `alg` of a token's header says it.
    pub fn name(self) -> &'static str {
        ALGORITHMS
            .iter()
            .find(|(_, alg)| *alg == self.0)
            .map_or("unsupported", |(name, _)| *name)
    }
}

impl TryFrom<String> for AllowedAlgorithm {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match ALGORITHMS.iter().find(|(name, _)| *name == s) {
            Some((_, alg)) => Ok(Self(*alg)),
            None => {
                let names: Vec<&str> = ALGORITHMS.iter().map(|(name, _)| *name).collect();
                Err(format!(
                    "`{s}` is not allowed: use one of {} (`none` and HMAC algorithms are always \
                     refused)",
                    names.join(", ")
                ))
            }
        }
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

pub(super) fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A duration that may be zero (`"0s"`), for leeways and margins.
pub(super) fn any_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
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
