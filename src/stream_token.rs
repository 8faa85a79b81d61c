//! Minting Stream Chat user tokens: HS256 JWTs signed with the Stream API secret.
//!
//! The bytes are exactly what Stream's own SDK (`StreamChat#createToken(userId, exp, iat)`)
//! produces: header `{"alg":"HS256","typ":"JWT"}`, payload `{"user_id":…,"exp":…,"iat":…}` in
//! that order. `jsonwebtoken::encode` would write the header as `{"typ":…,"alg":…}`, and it sets
//! up the HMAC key on every call; here the header is encoded once and the key is prepared once.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::config::{Secret, StreamConfig};

/// base64url of `{"alg":"HS256","typ":"JWT"}`.
const HEADER_B64: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/// A minted token and when it expires.
#[derive(Clone)]
pub struct Minted {
    pub(crate) token: Arc<str>,
    pub(crate) expires_at: u64,
}

impl fmt::Debug for Minted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Minted")
            .field("token", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

pub struct StreamMinter {
    key: ArcSwap<hmac::Key>,
    pub(crate) api_key: Arc<str>,
    ttl_secs: u64,
    reuse_margin_secs: u64,
    /// `iat` = now − this (Stream refuses an `iat` ahead of its clock).
    iat_backdate_secs: u64,
    /// user id → the last token minted for it.
    cache: quick_cache::sync::Cache<Arc<str>, Minted>,
}

impl fmt::Debug for StreamMinter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamMinter")
            .field("api_key", &self.api_key)
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

impl StreamMinter {
    pub fn new(config: &StreamConfig, secret: &Secret) -> Self {
        Self {
            key: ArcSwap::from_pointee(hmac_key(secret)),
            api_key: Arc::from(config.api_key.as_str()),
            ttl_secs: config.token_ttl.as_secs(),
            reuse_margin_secs: config.token_reuse_margin.as_secs(),
            iat_backdate_secs: config.iat_backdate.as_secs(),
            cache: quick_cache::sync::Cache::new(config.token_cache_size.max(1)),
        }
    }

    /// Signs new tokens with `secret` from now on; tokens minted with the old one are dropped.
    pub(crate) fn rotate_secret(&self, secret: &Secret) {
        self.key.store(Arc::new(hmac_key(secret)));
        self.cache.clear();
    }

    /// A token for `user_id` as of `now`: the cached one while more than the reuse margin of
    /// its life remains (`reused` is then `true`), else a fresh one.
    pub fn token_for(&self, user_id: &Arc<str>, now: u64) -> (Minted, bool) {
        if let Some(minted) = self.cache.get(user_id)
            && minted.expires_at > now.saturating_add(self.reuse_margin_secs)
        {
            return (minted, true);
        }
        let exp = now + self.ttl_secs;
        let minted = Minted {
            token: Arc::from(self.sign(user_id, exp, now.saturating_sub(self.iat_backdate_secs))),
            expires_at: exp,
        };
        self.cache.insert(user_id.clone(), minted.clone());
        (minted, false)
    }

    /// The token for exactly these claims (what `createToken(user_id, exp, iat)` returns).
    pub fn sign(&self, user_id: &str, exp: u64, iat: u64) -> String {
        // serde_json escapes the id, though verified ids are [A-Za-z0-9@_-] anyway.
        let user_json = serde_json::to_string(user_id).unwrap_or_else(|_| "\"\"".into());
        let payload = format!(r#"{{"user_id":{user_json},"exp":{exp},"iat":{iat}}}"#);
        let mut token = String::with_capacity(HEADER_B64.len() + payload.len() * 4 / 3 + 48);
        token.push_str(HEADER_B64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload.as_bytes(), &mut token);
        let signature = hmac::sign(&self.key.load(), token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut token);
        token
    }
}

fn hmac_key(secret: &Secret) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minter(margin: u64) -> StreamMinter {
        let config = StreamConfig {
            token_reuse_margin: std::time::Duration::from_secs(margin),
            ..StreamConfig::default()
        };
        StreamMinter::new(&config, &Secret::new("test-secret"))
    }

    #[test]
    fn header_constant_is_the_sdk_header() {
        let decoded = URL_SAFE_NO_PAD.decode(HEADER_B64).unwrap();
        assert_eq!(decoded, br#"{"alg":"HS256","typ":"JWT"}"#);
    }

    #[test]
    fn token_verifies_with_jsonwebtoken_and_has_exactly_the_claims() {
        let token = minter(600).sign("user_1", 2_000_000_000, 1_700_000_000);
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(b"test-secret"),
            &validation,
        )
        .unwrap();
        assert_eq!(
            data.claims,
            serde_json::json!({"user_id": "user_1", "exp": 2_000_000_000u64, "iat": 1_700_000_000u64})
        );
    }

    #[test]
    fn tokens_are_reused_until_the_margin_then_reminted() {
        let m = minter(600);
        let user: Arc<str> = Arc::from("u");
        let (first, reused) = m.token_for(&user, 1_000_000);
        assert!(!reused);
        assert_eq!(first.expires_at, 1_000_000 + 3600);
        let (again, reused) = m.token_for(&user, 1_000_000 + 2000);
        assert!(reused, "more than the margin left: reused");
        assert_eq!(again.token, first.token);
        let (fresh, reused) = m.token_for(&user, 1_000_000 + 3000);
        assert!(!reused, "within the margin: a new token");
        assert_ne!(fresh.token, first.token);
        assert!(!format!("{fresh:?}").contains(&*fresh.token));
    }

    #[test]
    fn rotation_changes_the_signature_and_drops_the_cache() {
        let m = minter(600);
        let user: Arc<str> = Arc::from("u");
        let (before, _) = m.token_for(&user, 1_000_000);
        m.rotate_secret(&Secret::new("new-secret"));
        let (after, _) = m.token_for(&user, 1_000_000);
        assert_ne!(before.token, after.token);
    }
}
