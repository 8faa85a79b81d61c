//! Clerk session-token verification: credentials, signature, claims, token-type rules, and a
//! cache of sessions already verified. No HTTP responses here: errors are [`AuthError`]s that
//! `error.rs` maps.
//!
//! Order of work for a token (nothing from the token is trusted before step 5):
//! 1. the verified-session cache, keyed by the token's SHA-256 (an entry counts while its key
//!    is in the key set);
//! 2. the JOSE header: no `crit` (RFC 7515 §4.1.11), `alg` on the allow-list (never `none`
//!    or HMAC);
//! 3. the key for `kid` (an unknown `kid` waits for a JWKS fetch; `keys.rs`, `refetch.rs`);
//! 4. the signature;
//! 5. the claims: `iss` byte for byte; the token type (`typ`, `cat`, `sid`, a user `sub`:
//!    `session_rules.rs`); `exp`, `nbf`, `iat` (with leeway); `sts`; `sub` as a Stream id;
//!    `azp`.

mod cache;
pub(crate) mod keys;
mod refetch;
mod session_rules;
mod signature;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE};
use jsonwebtoken::Algorithm;
use serde::Deserialize;

use crate::config::{AllowedAlgorithm, AuthConfig};
use crate::crypto::sha256;
use cache::KeyId;
use cache::{Cached, SessionCache};
pub use keys::KeyStore;
use session_rules::Member;

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
    #[error("the token is not a Clerk session token: {0}")]
    WrongTokenType(&'static str),
    #[error("the session is pending (sts), and pending sessions are not accepted")]
    SessionPending,
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
            Self::WrongTokenType(_) => "wrong_token_type",
            Self::SessionPending => "session_pending",
            Self::UnauthorizedParty { .. } => "unauthorized_party",
            Self::InvalidSubject(_) => "invalid_subject",
            Self::KeysUnavailable => "keys_unavailable",
        }
    }
}

/// A verified Clerk session.
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// The verified `sub`: the only user id a Stream token is ever minted for.
    pub user_id: Arc<str>,
    /// `exp` of the session token (unix seconds).
    pub expires_at: u64,
    /// `sid`: every session token names its session (`session_rules`).
    pub session_id: Arc<str>,
    /// The active organization and the user's role in it, when the session has one (v2 `o`
    /// claim, or v1 `org_id` / `org_role`).
    pub org: Option<Org>,
    /// The verified payload as sent (base64url JSON), kept only when a route hands it to Node
    /// (`identity.claims_header`).
    pub claims: Option<Arc<str>>,
}

/// An organization membership from the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Org {
    pub id: Arc<str>,
    pub role: Option<Arc<str>>,
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
    // A byte scan: `str::contains` with a set of chars decodes the ~1 KB token char by char.
    if token.is_empty() || token.bytes().any(|b| matches!(b, b' ' | b'\t' | b',')) {
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
    algorithms: Vec<AllowedAlgorithm>,
    issuer: Option<String>,
    authorized_parties: Vec<String>,
    leeway: u64,
    accept_pending_sessions: bool,
    /// Keep each session's verified payload (a route sends it to Node).
    keep_claims: bool,
    cache: Arc<SessionCache>,
}

/// The JOSE header members we read.
#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    kid: Option<String>,
    #[serde(default)]
    typ: Member,
    /// Clerk's token category.
    #[serde(default)]
    cat: Member,
    #[serde(default)]
    crit: Member,
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
    #[serde(default)]
    sid: Member,
    #[serde(default)]
    sts: Member,
    /// Clerk's v2 organization claim: `{"id": "org_...", "rol": "admin", ...}`.
    #[serde(default)]
    o: Member,
    /// v1 organization claims.
    org_id: Option<String>,
    org_role: Option<String>,
}

impl Verifier {
    pub fn new(config: &AuthConfig, keys: Arc<KeyStore>) -> Self {
        let cache = Arc::new(SessionCache::new(config.verified_cache_size));
        keys.watch_cache(&cache);
        Self {
            keys,
            algorithms: config.algorithms.clone(),
            // Compared byte for byte: `check-config` warns about a trailing `/`.
            issuer: config.issuer.clone(),
            authorized_parties: config.authorized_parties.clone(),
            leeway: config.leeway.as_secs(),
            accept_pending_sessions: config.accept_pending_sessions,
            keep_claims: false,
            cache,
        }
    }

    /// Sessions keep their verified payload (`Session::claims`), for a route that sends it.
    pub(crate) fn keeping_claims(mut self) -> Self {
        self.keep_claims = true;
        self
    }

    /// Verifies `token` now.
    pub(crate) async fn verify(&self, token: &str) -> Result<Session, AuthError> {
        self.verify_at(token, unix_now()).await
    }

    /// Verifies `token` as of `now` (unix seconds).
    pub async fn verify_at(&self, token: &str, now: u64) -> Result<Session, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed("the token is too long"));
        }
        let digest = sha256(token.as_bytes());
        match self
            .cache
            .get(&digest, now, self.leeway, |id| self.keys.holds(id))
        {
            Cached::Valid(session) => return Ok(session),
            Cached::Expired => return Err(AuthError::Expired),
            Cached::Unknown => {}
        }
        let (session, key) = self.verify_uncached(token, now).await?;
        self.cache.insert(digest, session.clone(), key);
        Ok(session)
    }

    /// Verifies `token` as of `now` from scratch: signature and claims, no cache.
    pub async fn verify_fresh(&self, token: &str, now: u64) -> Result<Session, AuthError> {
        self.verify_uncached(token, now)
            .await
            .map(|(session, _)| session)
    }

    /// The session, and which key verified it (for the cache).
    async fn verify_uncached(&self, token: &str, now: u64) -> Result<(Session, KeyId), AuthError> {
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
        session_rules::check_crit(&header.crit)?;
        let alg = self.accepted_algorithm(&header.alg)?;
        let key = self.keys.key_for(header.kid.as_deref()).await?;
        if key.alg.is_some_and(|a| a != alg) {
            return Err(AuthError::UnsupportedAlgorithm);
        }
        let message = &token[..header_b64.len() + 1 + payload_b64.len()];
        if !key.public.verify(alg, message.as_bytes(), signature_b64) {
            return Err(AuthError::BadSignature);
        }

        // The signature holds: from here on the header and claims are the issuer's words.
        let claims: Claims = decode_part(payload_b64, "the claims are not base64url JSON")?;
        let mut session = self.check_claims(&header, claims, now)?;
        if self.keep_claims {
            session.claims = Some(Arc::from(payload_b64));
        }
        Ok((session, key.id.clone()))
    }

    fn accepted_algorithm(&self, alg: &str) -> Result<Algorithm, AuthError> {
        // Only names we allow are parsed; `none`, `HS256`, junk all fall through.
        self.algorithms
            .iter()
            .find(|a| a.name() == alg)
            .map(|a| a.0)
            .ok_or(AuthError::UnsupportedAlgorithm)
    }

    /// Whose token (`iss`), what kind (`session_rules`), still valid, a live session, for a
    /// Stream-usable user, from an allowed party; in that order, so the error names the most
    /// basic problem (a template token that has also expired is `wrong_token_type`).
    fn check_claims(
        &self,
        header: &JoseHeader,
        claims: Claims,
        now: u64,
    ) -> Result<Session, AuthError> {
        // Byte for byte (no trailing-slash or case folding): Clerk's `iss` is exactly the
        // Frontend API URL, and anything else is another issuer's token.
        if let Some(expected) = &self.issuer
            && claims.iss.as_deref() != Some(expected.as_str())
        {
            return Err(AuthError::WrongIssuer);
        }
        session_rules::check_header_type(&header.typ, &header.cat)?;
        session_rules::check_claims_type(&claims.sid, claims.sub.as_deref())?;
        let exp = self.check_times(&claims, now)?;
        session_rules::check_status(&claims.sts, self.accept_pending_sessions)?;
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
            session_id: Arc::from(claims.sid.as_str().unwrap_or_default()),
            org: organization(&claims),
            claims: None,
        })
    }

    /// `exp` (required), `nbf` and `iat` against `now` with the leeway; returns `exp`.
    fn check_times(&self, claims: &Claims, now: u64) -> Result<u64, AuthError> {
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
        Ok(exp)
    }
}

/// The session's organization: the v2 `o` claim, else the v1 `org_id` / `org_role`.
fn organization(claims: &Claims) -> Option<Org> {
    let (id, role) = match claims.o.field("id") {
        Some(id) => (id, claims.o.field("rol")),
        None => (claims.org_id.as_deref()?, claims.org_role.as_deref()),
    };
    Some(Org {
        id: Arc::from(id),
        role: role.map(Arc::from),
    })
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

    /// An ES256 key pair generated for the test: the signing key and its public JWK.
    fn ec_key(kid: &str) -> (jsonwebtoken::EncodingKey, serde_json::Value) {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let point = pair.public_key().as_ref();
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..]),
        });
        (jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()), jwk)
    }

    fn jwks(keys: &[&serde_json::Value]) -> keys::KeySet {
        keys::parse_jwks(serde_json::json!({ "keys": keys }).to_string().as_bytes()).unwrap()
    }

    fn session_token(key: &jsonwebtoken::EncodingKey, kid: &str, sub: &str, now: u64) -> String {
        let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        let claims = serde_json::json!({
            "exp": now + 60, "iat": now, "iss": "https://clerk.test", "sid": "sess_1",
            "sts": "active", "sub": sub,
        });
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    }

    #[tokio::test]
    async fn sessions_of_a_key_that_leaves_the_jwks_leave_the_cache() {
        let (a, jwk_a) = ec_key("ins_a");
        let (b, jwk_b) = ec_key("ins_b");
        let store = Arc::new(KeyStore::from_key_set(
            jwks(&[&jwk_a, &jwk_b]),
            Default::default(),
        ));
        let config = AuthConfig {
            issuer: Some("https://clerk.test".into()),
            algorithms: vec![crate::config::AllowedAlgorithm(Algorithm::ES256)],
            ..Default::default()
        };
        let verifier = Verifier::new(&config, store.clone());
        let now = unix_now();
        let (token_a, token_b) = (
            session_token(&a, "ins_a", "user_a", now),
            session_token(&b, "ins_b", "user_b", now),
        );
        for token in [&token_a, &token_b] {
            verifier.verify_at(token, now).await.unwrap();
        }
        assert_eq!(verifier.cache.len(), 2);

        // The JWKS drops B: its session leaves the cache at once, A's stays.
        store.install(jwks(&[&jwk_a]));
        assert_eq!(verifier.cache.len(), 1);
        assert_eq!(
            verifier.verify_at(&token_b, now).await.unwrap_err(),
            AuthError::UnknownKey
        );
        assert_eq!(
            &*verifier.verify_at(&token_a, now).await.unwrap().user_id,
            "user_a"
        );

        // A key replaced under the same kid is another key: A's sessions go too.
        let (_, other_a) = ec_key("ins_a");
        store.install(jwks(&[&other_a]));
        assert_eq!(verifier.cache.len(), 0);
        assert_eq!(
            verifier.verify_at(&token_a, now).await.unwrap_err(),
            AuthError::BadSignature
        );
    }

    #[tokio::test]
    async fn a_session_cached_just_before_its_key_left_is_not_served() {
        // The race `install` cannot close: a request verified with the old key and cached
        // after the caches were swept. The hit checks the key.
        let (a, jwk_a) = ec_key("ins_a");
        let (_, jwk_b) = ec_key("ins_b");
        let store = Arc::new(KeyStore::from_key_set(jwks(&[&jwk_a]), Default::default()));
        let config = AuthConfig {
            algorithms: vec![crate::config::AllowedAlgorithm(Algorithm::ES256)],
            ..Default::default()
        };
        let verifier = Verifier::new(&config, store.clone());
        let now = unix_now();
        let token = session_token(&a, "ins_a", "user_a", now);
        let (session, key) = verifier.verify_uncached(&token, now).await.unwrap();
        store.install(jwks(&[&jwk_b]));
        verifier
            .cache
            .insert(sha256(token.as_bytes()), session, key);
        assert_eq!(
            verifier.verify_at(&token, now).await.unwrap_err(),
            AuthError::UnknownKey
        );
        assert_eq!(verifier.cache.len(), 0);
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
