//! The verified-session cache: the SHA-256 of a token that verified, its session and the key
//! that verified it. Raw tokens are never kept. An entry is good while its token has not
//! expired and its key is still in the key set; the key store drops the entries of a key
//! when a JWKS refresh removes it.

use std::sync::Arc;

use super::Session;

/// Which key verified a session: its `kid` (none for a static PEM key) and a SHA-256 of its
/// JWK or PEM, so a key replaced under the same `kid` counts as removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyId {
    kid: Option<Arc<str>>,
    digest: [u8; 32],
}

impl KeyId {
    pub(super) fn new(kid: Option<Arc<str>>, digest: [u8; 32]) -> Self {
        Self { kid, digest }
    }

    pub(super) fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }
}

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

    /// The token `digest` as of `now` (unix seconds); expired entries, and those whose key
    /// `held` says is gone, are removed.
    pub(super) fn get(
        &self,
        digest: &[u8; 32],
        now: u64,
        leeway: u64,
        held: impl Fn(&KeyId) -> bool,
    ) -> Cached {
        let Some(entry) = self.entries.get(digest) else {
            return Cached::Unknown;
        };
        if !held(&entry.key) {
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

    /// Drops every session whose key `held` says is gone.
    pub(super) fn retain_keys(&self, held: impl Fn(&KeyId) -> bool) {
        self.entries.retain(|_, entry| held(&entry.key));
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}
