//! The verified-session cache: the SHA-256 of a token that verified, its session and the key
//! that verified it. Raw tokens are never kept. An entry is good while its token has not
//! expired and its key is still in the key set; the key store drops the entries of a key
//! when a JWKS refresh removes it.

use super::Session;
use super::keys::{KeyId, KeySet, KeyStore};

pub(super) struct SessionCache {
    entries: quick_cache::sync::Cache<[u8; 32], Entry>,
}

#[derive(Clone)]
struct Entry {
    session: Session,
    key: KeyId,
}

/// What the cache knows of a token.
pub(super) enum Cached {
    /// Verified before, with a key still in force.
    Valid(Session),
    /// Verified before; its `exp` (+ leeway) has passed.
    Expired,
    /// Not cached, or its key has left the key set: verify it afresh.
    Unknown,
}

impl SessionCache {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            entries: quick_cache::sync::Cache::new(capacity.max(1)),
        }
    }

    /// The token `digest` as of `now` (unix seconds); expired and orphaned entries are removed.
    pub(super) fn get(&self, digest: &[u8; 32], now: u64, leeway: u64, keys: &KeyStore) -> Cached {
        let Some(entry) = self.entries.get(digest) else {
            return Cached::Unknown;
        };
        if !keys.holds(&entry.key) {
            self.entries.remove(digest);
            return Cached::Unknown;
        }
        if now > entry.session.expires_at.saturating_add(leeway) {
            self.entries.remove(digest);
            return Cached::Expired;
        }
        Cached::Valid(entry.session)
    }

    pub(super) fn insert(&self, digest: [u8; 32], session: Session, key: KeyId) {
        self.entries.insert(digest, Entry { session, key });
    }

    /// Drops every session whose key `set` no longer holds.
    pub(super) fn retain_keys(&self, set: &KeySet) {
        self.entries.retain(|_, entry| set.holds(&entry.key));
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}
