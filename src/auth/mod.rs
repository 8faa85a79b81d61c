//! Clerk session-token verification: credentials, signature, claims, and a cache of sessions
//! already verified. No HTTP responses here: errors are [`AuthError`]s that `error.rs` maps.
//!
//! Order of work for a token (nothing from the token is trusted before step 4):
//! 1. the verified-session cache, keyed by the token's SHA-256;
//! 2. the JOSE header: `alg` must be on the allow-list (never `none` or HMAC);
//! 3. the key for `kid` (a JWKS refetch for an unknown `kid`, at most once per cool-down);
//! 4. the signature;
//! 5. the claims: `exp`, `nbf`, `iat` (with leeway), `iss`, `azp`, `sub`.

pub mod dev;
pub mod keys;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE};
use jsonwebtoken::Algorithm;
use serde::Deserialize;

use crate::config::AuthConfig;
pub use keys::KeyStore;

/// Longest token we look at; Clerk's are about 1 KB.
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Longest user id Stream accepts.
const MAX_USER_ID_LEN: usize = 255;

/// Why a session token was refused. `code` is the stable `error` field clients see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no session token was sent")]
    MissingCredentials,
    #[error("the Authorization header is not `Bearer <token>`: {0}")]
    InvalidAuthorization(&'static str),
    #[error("the session token is malformed: {0}")]
    Malformed(&'static str),
    #[error("the token's signature algorithm is not accepted")]
    UnsupportedAlgorithm,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token was signed with a key this proxy does not know")]
    UnknownKey,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf or iat in the future)")]
    NotYetValid,
    #[error("the token was issued by another issuer")]
    WrongIssuer,
    #[error("the token's authorized party (azp) is missing or not allowed (user {user_id})")]
    UnauthorizedParty { user_id: String },
    #[error("the token's subject is not a usable Stream user id: {0}")]
    InvalidSubject(&'static str),
    #[error("verification keys are not loaded yet")]
    KeysUnavailable,
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingCredentials => "missing_credentials",
            Self::InvalidAuthorization(_) => "invalid_authorization",
            Self::Malformed(_) => "malformed_token",
            Self::UnsupportedAlgorithm => "unsupported_algorithm",
            Self::BadSignature => "bad_signature",
            Self::UnknownKey => "unknown_key",
            Self::Expired => "token_expired",
            Self::NotYetValid => "token_not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::UnauthorizedParty { .. } => "unauthorized_party",
            Self::InvalidSubject(_) => "invalid_subject",
            Self::KeysUnavailable => "keys_unavailable",
        }
    }
}

/// A verified Clerk session.
#[derive(Debug, Clone)]
pub struct Session {
    /// The verified `sub`: the only user id a Stream token is ever minted for.
    pub user_id: Arc<str>,
    /// `exp` of the session token (unix seconds).
    pub expires_at: u64,
}

/// Finds the session token: `Authorization: Bearer <token>`, or (when enabled and there is no
/// `Authorization` header) the `__session` cookie.
pub fn credentials(headers: &HeaderMap, session_cookie: bool) -> Result<&str, AuthError> {
    let mut authorizations = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = authorizations.next() else {
        if session_cookie && let Some(token) = session_cookie_value(headers) {
            return Ok(token);
        }
        return Err(AuthError::MissingCredentials);
    };
    if authorizations.next().is_some() {
        return Err(AuthError::InvalidAuthorization(
            "more than one Authorization header",
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| AuthError::InvalidAuthorization("the header is not ASCII"))?
        .trim();
    let (scheme, token) = value
        .split_once([' ', '\t'])
        .ok_or(AuthError::InvalidAuthorization("no token after the scheme"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::InvalidAuthorization("the scheme is not Bearer"));
    }
    let token = token.trim_start_matches([' ', '\t']);
    if token.is_empty() || token.contains([' ', '\t', ',']) {
        return Err(AuthError::InvalidAuthorization(
            "expected exactly one token",
        ));
    }
    Ok(token)
}

fn session_cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == "__session")
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

/// Verifies session tokens; cheap to share (`Arc`) across requests.
pub struct Verifier {
    keys: Arc<KeyStore>,
    algorithms: Vec<Algorithm>,
    issuer: Option<String>,
    authorized_parties: Vec<String>,
    leeway: u64,
    /// SHA-256 of a verified token → its session. Raw tokens are never kept in memory.
    cache: quick_cache::sync::Cache<[u8; 32], Session>,
}

/// The JOSE header fields we read.
#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    kid: Option<String>,
}

/// The claims we check. Numbers may be integers or floats in JSON.
#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    iss: Option<String>,
    azp: Option<String>,
    exp: Option<f64>,
    nbf: Option<f64>,
    iat: Option<f64>,
}

impl Verifier {
    pub fn new(config: &AuthConfig, keys: Arc<KeyStore>) -> Self {
        Self {
            keys,
            algorithms: config.algorithms.iter().map(|a| a.0).collect(),
            issuer: config
                .issuer
                .as_deref()
                .map(|i| i.trim_end_matches('/').to_owned()),
            authorized_parties: config.authorized_parties.clone(),
            leeway: config.leeway.as_secs(),
            cache: quick_cache::sync::Cache::new(config.verified_cache_size.max(1)),
        }
    }

    pub fn keys(&self) -> &Arc<KeyStore> {
        &self.keys
    }

    /// Verifies `token` now.
    pub async fn verify(&self, token: &str) -> Result<Session, AuthError> {
        self.verify_at(token, unix_now()).await
    }

    /// Verifies `token` as of `now` (unix seconds).
    pub async fn verify_at(&self, token: &str, now: u64) -> Result<Session, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed("the token is too long"));
        }
        let digest = sha256(token.as_bytes());
        if let Some(session) = self.cache.get(&digest) {
            if now <= session.expires_at.saturating_add(self.leeway) {
                return Ok(session);
            }
            self.cache.remove(&digest);
            return Err(AuthError::Expired);
        }
        let session = self.verify_fresh(token, now).await?;
        self.cache.insert(digest, session.clone());
        Ok(session)
    }

    /// Verifies `token` as of `now` from scratch: signature and claims, no cache.
    pub async fn verify_fresh(&self, token: &str, now: u64) -> Result<Session, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed("the token is too long"));
        }
        let mut parts = token.splitn(3, '.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed("a JWT has three dot-separated parts"));
        };
        if signature_b64.contains('.') || header_b64.is_empty() || payload_b64.is_empty() {
            return Err(AuthError::Malformed("a JWT has three dot-separated parts"));
        }
        let header: JoseHeader = decode_part(header_b64, "the header is not base64url JSON")?;
        let alg = self.accepted_algorithm(&header.alg)?;
        let key = self.keys.key_for(header.kid.as_deref()).await?;
        if key.alg.is_some_and(|a| a != alg) {
            return Err(AuthError::UnsupportedAlgorithm);
        }
        let message = &token[..header_b64.len() + 1 + payload_b64.len()];
        match jsonwebtoken::crypto::verify(signature_b64, message.as_bytes(), &key.decoding, alg) {
            Ok(true) => {}
            _ => return Err(AuthError::BadSignature),
        }

        // The signature holds: from here on the claims are the issuer's words.
        let claims: Claims = decode_part(payload_b64, "the claims are not base64url JSON")?;
        self.check_claims(claims, now)
    }

    fn accepted_algorithm(&self, alg: &str) -> Result<Algorithm, AuthError> {
        // Only names we allow are parsed; `none`, `HS256`, junk all fall through.
        self.algorithms
            .iter()
            .copied()
            .find(|a| algorithm_name(*a) == alg)
            .ok_or(AuthError::UnsupportedAlgorithm)
    }

    fn check_claims(&self, claims: Claims, now: u64) -> Result<Session, AuthError> {
        let time = |v: f64| -> Result<u64, AuthError> {
            if v.is_finite() && v >= 0.0 {
                Ok(v as u64)
            } else {
                Err(AuthError::Malformed(
                    "a time claim is not a positive number",
                ))
            }
        };
        let exp = time(
            claims
                .exp
                .ok_or(AuthError::Malformed("the token has no exp claim"))?,
        )?;
        if now > exp.saturating_add(self.leeway) {
            return Err(AuthError::Expired);
        }
        let latest = now.saturating_add(self.leeway);
        if let Some(nbf) = claims.nbf
            && time(nbf)? > latest
        {
            return Err(AuthError::NotYetValid);
        }
        if let Some(iat) = claims.iat
            && time(iat)? > latest
        {
            return Err(AuthError::NotYetValid);
        }
        if let Some(expected) = &self.issuer
            && claims.iss.as_deref().map(|i| i.trim_end_matches('/')) != Some(expected.as_str())
        {
            return Err(AuthError::WrongIssuer);
        }
        let user_id = check_user_id(claims.sub.as_deref())?;
        if !self.authorized_parties.is_empty() {
            let allowed = claims
                .azp
                .as_deref()
                .is_some_and(|azp| self.authorized_parties.iter().any(|p| p == azp));
            if !allowed {
                return Err(AuthError::UnauthorizedParty {
                    user_id: user_id.to_owned(),
                });
            }
        }
        Ok(Session {
            user_id: Arc::from(user_id),
            expires_at: exp,
        })
    }
}

/// `sub` must be a user id Stream accepts: `[A-Za-z0-9@_-]{1,255}`.
fn check_user_id(sub: Option<&str>) -> Result<&str, AuthError> {
    let sub = sub.ok_or(AuthError::InvalidSubject("the token has no sub claim"))?;
    if sub.is_empty() {
        return Err(AuthError::InvalidSubject("sub is empty"));
    }
    if sub.len() > MAX_USER_ID_LEN {
        return Err(AuthError::InvalidSubject("sub is longer than 255 bytes"));
    }
    if !sub
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'@' | b'_' | b'-'))
    {
        return Err(AuthError::InvalidSubject(
            "sub may contain only letters, digits, @, _ and -",
        ));
    }
    Ok(sub)
}

fn decode_part<T: serde::de::DeserializeOwned>(
    b64: &str,
    what: &'static str,
) -> Result<T, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|_| AuthError::Malformed(what))?;
    serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed(what))
}

pub fn algorithm_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
        _ => "unsupported",
    }
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_takes_exactly_one_token() {
        assert_eq!(
            credentials(&headers(&[("authorization", "Bearer a.b.c")]), false),
            Ok("a.b.c")
        );
        assert_eq!(
            credentials(&headers(&[("authorization", "bEaReR   a.b.c ")]), false),
            Ok("a.b.c")
        );
        let bad = [
            ("Basic dXNlcjpwYXNz", "the scheme is not Bearer"),
            ("Bearer", "no token after the scheme"),
            ("Bearer a.b.c d.e.f", "expected exactly one token"),
            ("Bearer a.b.c,d.e.f", "expected exactly one token"),
        ];
        for (value, why) in bad {
            assert_eq!(
                credentials(&headers(&[("authorization", value)]), false),
                Err(AuthError::InvalidAuthorization(why)),
                "{value}"
            );
        }
        let two = headers(&[
            ("authorization", "Bearer a.b.c"),
            ("authorization", "Bearer d.e.f"),
        ]);
        assert!(matches!(
            credentials(&two, false),
            Err(AuthError::InvalidAuthorization(_))
        ));
        assert_eq!(
            credentials(&HeaderMap::new(), false),
            Err(AuthError::MissingCredentials)
        );
    }

    #[test]
    fn session_cookie_only_when_enabled_and_no_header() {
        let h = headers(&[("cookie", "theme=dark; __session=x.y.z; other=1")]);
        assert_eq!(credentials(&h, false), Err(AuthError::MissingCredentials));
        assert_eq!(credentials(&h, true), Ok("x.y.z"));
        let both = headers(&[
            ("cookie", "__session=x.y.z"),
            ("authorization", "Bearer a.b.c"),
        ]);
        assert_eq!(credentials(&both, true), Ok("a.b.c"), "the header wins");
    }

    #[test]
    fn user_ids_follow_streams_rules() {
        assert_eq!(
            check_user_id(Some("user_2abcDEF-9@x")),
            Ok("user_2abcDEF-9@x")
        );
        assert!(check_user_id(Some(&"a".repeat(255))).is_ok());
        for bad in [
            None,
            Some(""),
            Some("has space"),
            Some("ümlaut"),
            Some("a/b"),
            Some("a.b"),
        ] {
            assert!(check_user_id(bad).is_err(), "{bad:?}");
        }
        assert!(check_user_id(Some(&"a".repeat(256))).is_err());
    }
}
