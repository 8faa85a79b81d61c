//! Verification keys: a static PEM key (networkless) or Clerk's JWKS, fetched over HTTPS,
//! refreshed in the background and re-fetched for an unknown `kid` (`refetch.rs` says when).
//! The key set is swapped atomically; a failed fetch keeps the last good set. When a new set
//! lacks a key the old one had, sessions verified with that key leave the session caches.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{ACCEPT, USER_AGENT};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::Jwk;
use serde::Deserialize;
use tracing::{debug, info, warn};

use super::AuthError;
use super::cache::{KeyId, SessionCache};
use super::refetch::Refetch;
use super::signature::PublicKey;
use crate::config::AuthConfig;
use crate::metrics::Metrics;
use crate::ops::traces::{self, SpanKind};

/// A JWKS document larger than this is refused (Clerk's is about 1 KB).
const MAX_JWKS_BYTES: usize = 1024 * 1024;
const JWKS_USER_AGENT: &str = concat!("stream-token-proxy/", env!("CARGO_PKG_VERSION"));
/// `kid`s remembered as removed from the JWKS (one per rotation; Clerk rotates rarely).
const MAX_RETIRED_KIDS: usize = 32;

/// One verification key.
pub(crate) struct VerifyKey {
    /// Parsed when the set is loaded, not per token.
    pub(crate) public: PublicKey,
    /// The JWK's `alg`, when it names one: a token must then use exactly that algorithm.
    pub(crate) alg: Option<Algorithm>,
    pub(crate) id: KeyId,
}

/// The keys in force.
pub struct KeySet {
    by_kid: HashMap<String, Arc<VerifyKey>>,
    /// A static key (PEM) verifies tokens whatever `kid` they name.
    any: Option<Arc<VerifyKey>>,
    /// `kid`s that earlier sets held and this one does not: refused without a refetch (the
    /// JWKS just said they are gone).
    retired: HashSet<String>,
    /// When this set was fetched (or loaded).
    pub(crate) loaded_at: Instant,
    /// The number of the JWKS fetch that brought it (0: not fetched).
    fetch: u64,
}

impl KeySet {
    /// Whether the key `id` names is still in this set, unchanged.
    pub(crate) fn holds(&self, id: &KeyId) -> bool {
        let key = match id.kid() {
            Some(kid) => self.by_kid.get(kid),
            None => self.any.as_ref(),
        };
        key.is_some_and(|k| k.id == *id)
    }

    fn keys(&self) -> impl Iterator<Item = &Arc<VerifyKey>> {
        self.by_kid.values().chain(&self.any)
    }

    /// Remembers the `kid`s of `previous` (and those it had retired) that this set lacks.
    fn retire_missing(&mut self, previous: &KeySet) {
        let gone = previous
            .by_kid
            .keys()
            .chain(&previous.retired)
            .filter(|kid| !self.by_kid.contains_key(*kid))
            .take(MAX_RETIRED_KIDS)
            .cloned();
        self.retired.extend(gone);
    }

    fn find(&self, kid: Option<&str>) -> Option<Arc<VerifyKey>> {
        if let Some(key) = &self.any {
            return Some(key.clone());
        }
        match kid {
            Some(kid) => self.by_kid.get(kid).cloned(),
            // No `kid`: unambiguous only when the set has exactly one key.
            None if self.by_kid.len() == 1 => self.by_kid.values().next().cloned(),
            None => None,
        }
    }

    pub fn len(&self) -> usize {
        self.by_kid.len() + usize::from(self.any.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the public key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the public key is not an RSA or EC public key in PEM form")]
    BadPem,
    #[error("JWKS fetch failed: {0}")]
    Fetch(String),
}

/// The keys in force, and where they come from.
pub struct KeyStore {
    current: ArcSwapOption<KeySet>,
    jwks: Option<JwksSource>,
    metrics: Arc<Metrics>,
    /// The verifiers' session caches, told when keys leave the set.
    caches: Mutex<Vec<Weak<SessionCache>>>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field(
                "source",
                &self.jwks.as_ref().map_or("static key", |_| "JWKS"),
            )
            .field("keys", &self.current.load().as_ref().map_or(0, |s| s.len()))
            .finish_non_exhaustive()
    }
}

struct JwksSource {
    url: Uri,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    timeout: Duration,
    refresh_interval: Duration,
    refetch: Refetch,
}

impl KeyStore {
    /// A fixed key: Clerk's "JWT public key" (PEM, RSA or EC). No network.
    pub fn from_pem(pem: &[u8], metrics: Arc<Metrics>) -> Result<Self, KeyError> {
        let public = PublicKey::from_pem(pem).ok_or(KeyError::BadPem)?;
        let id = KeyId::new(None, crate::crypto::sha256(pem));
        let set = KeySet {
            by_kid: HashMap::new(),
            any: Some(Arc::new(VerifyKey {
                public,
                alg: None,
                id,
            })),
            retired: HashSet::new(),
            loaded_at: Instant::now(),
            fetch: 0,
        };
        Ok(Self::with(ArcSwapOption::from_pointee(set), None, metrics))
    }

    fn with(
        current: ArcSwapOption<KeySet>,
        jwks: Option<JwksSource>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            current,
            jwks,
            metrics,
            caches: Mutex::new(Vec::new()),
        }
    }

    /// A fixed key set (a JWKS document parsed with [`parse_jwks`]), never refetched: an
    /// unknown `kid` is refused without touching the network. For tests and fuzzing.
    pub fn from_key_set(set: KeySet, metrics: Arc<Metrics>) -> Self {
        Self::with(ArcSwapOption::from_pointee(set), None, metrics)
    }

    /// Keys from a JWKS URL; none until [`KeyStore::run_refresh`] fetches them. Every fetch,
    /// an unknown `kid`'s too, is made by that task: spawn it.
    pub(crate) fn from_jwks(
        url: Uri,
        config: &AuthConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, KeyError> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(crate::crypto::tls_provider())
            .map_err(|e| KeyError::Fetch(e.to_string()))?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(https);
        let source = JwksSource {
            url,
            client,
            timeout: config.jwks_timeout.0,
            refresh_interval: config.jwks_refresh_interval.0,
            refetch: Refetch::new(config.jwks_refetch_cooldown.0),
        };
        Ok(Self::with(ArcSwapOption::empty(), Some(source), metrics))
    }

    /// Registers a verifier's session cache: sessions verified with a key that leaves the set
    /// are dropped from it when the new set is stored.
    pub(super) fn watch_cache(&self, cache: &Arc<SessionCache>) {
        let mut caches = self.caches.lock().unwrap_or_else(PoisonError::into_inner);
        caches.retain(|c| c.strong_count() > 0);
        caches.push(Arc::downgrade(cache));
    }

    /// Whether the key `id` names is still in force.
    pub(crate) fn holds(&self, id: &KeyId) -> bool {
        self.current.load().as_ref().is_some_and(|s| s.holds(id))
    }

    /// `true` once there are keys to verify with.
    pub fn is_ready(&self) -> bool {
        self.current
            .load()
            .as_ref()
            .is_some_and(|set| !set.is_empty())
    }

    /// Sets the key-set gauges (called when metrics are scraped).
    pub(crate) fn export_gauges(&self) {
        let current = self.current.load();
        let (keys, age) = current
            .as_ref()
            .map_or((0, 0.0), |s| (s.len(), s.loaded_at.elapsed().as_secs_f64()));
        self.metrics.jwks_keys.set(keys as i64);
        self.metrics.jwks_age.set(age);
    }

    /// The key for a token's `kid`. For a `kid` the set lacks, waits (at most `jwks_timeout`)
    /// for a fetch that can bring it, as `refetch.rs` describes; a `kid` the JWKS has dropped
    /// is refused at once.
    pub(crate) async fn key_for(&self, kid: Option<&str>) -> Result<Arc<VerifyKey>, AuthError> {
        let set = self.current.load_full().ok_or(AuthError::KeysUnavailable)?;
        if let Some(key) = set.find(kid) {
            return Ok(key);
        }
        let (Some(source), Some(kid)) = (&self.jwks, kid) else {
            return Err(AuthError::UnknownKey);
        };
        if set.retired.contains(kid) {
            return Err(AuthError::UnknownKey);
        }
        let seen = set.fetch;
        drop(set);
        // In a traced request, the wait is a span: the time a new key cost this request.
        let mut span = traces::current_child("JWKS fetch", SpanKind::Internal);
        let deadline = tokio::time::Instant::now() + source.timeout;
        let mut ticket = source.refetch.ask(seen);
        debug!(
            fresh = ticket.is_fresh(),
            "token names an unknown kid; waiting for a JWKS fetch"
        );
        while source.refetch.wait(ticket, deadline).await {
            if let Some(key) = self.current.load().as_ref().and_then(|s| s.find(Some(kid))) {
                return Ok(key);
            }
            if ticket.is_fresh() {
                break;
            }
            ticket = source.refetch.ask_again();
        }
        span.fail("unknown_key");
        Err(AuthError::UnknownKey)
    }

    /// The one task that fetches the JWKS: now, then every `jwks_refresh_interval`, and
    /// sooner when a token names an unknown `kid` (at most once per cool-down). Until the
    /// first success, retries quickly (250 ms doubling to 10 s); after a failure with keys in
    /// hand, the old keys stay in use. Returns at once for a static key.
    pub(crate) async fn run_refresh(self: Arc<Self>) {
        let Some(source) = &self.jwks else { return };
        let mut backoff = Duration::from_millis(250);
        loop {
            let number = source.refetch.begin();
            let fetched = self.fetch_and_store(source, number).await;
            source.refetch.end(number);
            let wait = match fetched {
                Ok(()) => {
                    backoff = Duration::from_millis(250);
                    source.refresh_interval
                }
                Err(_) => {
                    let wait = backoff.min(source.refresh_interval);
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    wait
                }
            };
            source
                .refetch
                .next_fetch(tokio::time::Instant::now() + wait)
                .await;
        }
    }

    async fn fetch_and_store(&self, source: &JwksSource, number: u64) -> Result<(), KeyError> {
        let started = Instant::now();
        match source.fetch().await {
            Ok(mut set) => {
                set.fetch = number;
                self.metrics.jwks_fetch("ok");
                info!(
                    keys = set.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "JWKS loaded"
                );
                self.install(set);
                Ok(())
            }
            Err(e) => {
                self.metrics.jwks_fetch("error");
                let keeping = self.current.load().as_ref().map_or(0, |s| s.len());
                warn!(error = %e, keeping_keys = keeping, "JWKS fetch failed; keeping the last good keys");
                Err(e)
            }
        }
    }

    /// Puts `set` in force; if a key of the old set is missing from it, drops the sessions
    /// verified with that key from every cache. (A session a request is verifying with the
    /// old key right now may still be cached after this: the caches check `holds` on every
    /// hit too.)
    pub(super) fn install(&self, mut set: KeySet) {
        let previous = self.current.load_full();
        if let Some(previous) = &previous {
            set.retire_missing(previous);
        }
        let set = Arc::new(set);
        self.current.store(Some(set.clone()));
        let removed = previous
            .as_ref()
            .map_or(0, |p| p.keys().filter(|k| !set.holds(&k.id)).count());
        if removed == 0 {
            return;
        }
        info!(
            removed,
            "keys left the JWKS; dropping the sessions they verified"
        );
        let caches = self.caches.lock().unwrap_or_else(PoisonError::into_inner);
        for cache in caches.iter().filter_map(Weak::upgrade) {
            cache.retain_keys(|id| set.holds(id));
        }
    }
}

impl JwksSource {
    async fn fetch(&self) -> Result<KeySet, KeyError> {
        let request = Request::get(self.url.clone())
            .header(USER_AGENT, JWKS_USER_AGENT)
            .header(ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| KeyError::Fetch(e.to_string()))?;
        let fetch = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| KeyError::Fetch(format!("{e} ({})", error_chain(&e))))?;
            if response.status() != StatusCode::OK {
                return Err(KeyError::Fetch(format!("status {}", response.status())));
            }
            let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(|e| KeyError::Fetch(format!("reading the body: {e}")))?
                .to_bytes();
            parse_jwks(&body)
        };
        tokio::time::timeout(self.timeout, fetch)
            .await
            .map_err(|_| KeyError::Fetch(format!("no answer within {:?}", self.timeout)))?
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push(c.to_string());
        cause = c.source();
    }
    out.join(": ")
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

/// Parses a JWKS, keeping signing keys with a `kid` that `jsonwebtoken` can use. Keys of
/// other types are skipped, so one exotic key does not take the whole set down.
pub fn parse_jwks(body: &[u8]) -> Result<KeySet, KeyError> {
    let raw: RawJwks = serde_json::from_slice(body)
        .map_err(|e| KeyError::Fetch(format!("not a JWKS document: {e}")))?;
    let mut by_kid = HashMap::new();
    for value in raw.keys {
        // Over the entry as served: a change to any member makes it another key.
        let digest = crate::crypto::sha256(value.to_string().as_bytes());
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            debug!("skipping a JWKS entry this proxy cannot use");
            continue;
        };
        let is_signing = jwk
            .common
            .public_key_use
            .as_ref()
            .is_none_or(|u| matches!(u, jsonwebtoken::jwk::PublicKeyUse::Signature));
        let (Some(kid), true) = (jwk.common.key_id.clone(), is_signing) else {
            continue;
        };
        let Some(public) = PublicKey::from_jwk(&jwk) else {
            continue;
        };
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse::<Algorithm>().ok());
        let id = KeyId::new(Some(Arc::from(kid.as_str())), digest);
        by_kid.insert(kid, Arc::new(VerifyKey { public, alg, id }));
    }
    if by_kid.is_empty() {
        return Err(KeyError::Fetch(
            "the JWKS holds no usable signing key".into(),
        ));
    }
    Ok(KeySet {
        by_kid,
        any: None,
        retired: HashSet::new(),
        loaded_at: Instant::now(),
        fetch: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_parsing_skips_what_it_cannot_use() {
        let doc = br#"{"keys":[
            {"kty":"RSA","kid":"a","use":"sig","alg":"RS256","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"},
            {"kty":"RSA","kid":"enc","use":"enc","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"},
            {"kty":"weird","kid":"w"},
            {"kty":"RSA","n":"AQAB","e":"AQAB"}
        ]}"#;
        let set = parse_jwks(doc).unwrap();
        assert_eq!(set.len(), 1);
        assert!(set.find(Some("a")).is_some());
        assert!(
            set.find(Some("enc")).is_none(),
            "encryption keys are not for signatures"
        );
        assert!(set.find(None).is_some(), "one key and no kid: unambiguous");
        assert!(parse_jwks(br#"{"keys":[]}"#).is_err());
        assert!(parse_jwks(b"<html>").is_err());

        let store = KeyStore::from_key_set(set, Arc::new(Metrics::new()));
        assert!(store.is_ready());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(rt.block_on(store.key_for(Some("a"))).is_ok());
        assert!(matches!(
            rt.block_on(store.key_for(Some("other"))),
            Err(AuthError::UnknownKey)
        ));
    }
}
