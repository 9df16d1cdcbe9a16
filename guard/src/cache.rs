//! A bounded cache of tokens whose signature and claims have been verified.
//!
//! Verifying an Ed25519 signature costs about 50 µs, several times the cost of a whole
//! cached call, and a client sends the same token on every call until it expires. The cache maps
//! the SHA-256 digest of a token to its verified claims, so a repeated token costs one hash and
//! one lookup. Only authentication is cached: the caller still asks the policy on every call.
//!
//! The key is a cryptographic digest rather than a 64-bit hash, so two distinct tokens cannot
//! share an entry, and the cache holds no token text. An entry expires at the token's `exp`
//! (without leeway), and a hit is refused past that time even if eviction has not run yet.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use moka::Expiry;
use moka::sync::Cache;

use crate::claims::Claims;
use crate::verify::unix_now;

/// The number of entries a [`TokenCache`] holds by default. At roughly 300 bytes an entry
/// (digest, claims, the cache's own bookkeeping), 10,000 entries take about 3 MiB.
pub const DEFAULT_CAPACITY: u64 = 10_000;

/// The SHA-256 digest of a token, the cache key.
type TokenDigest = [u8; 32];

/// Verified claims and the id of the key whose signature they carried.
#[derive(Clone, Debug)]
struct Entry {
    claims: Arc<Claims>,
    key_id: Arc<str>,
}

/// Expires each entry at its token's `exp`.
struct UntilTokenExpiry;

impl Expiry<TokenDigest, Entry> for UntilTokenExpiry {
    fn expire_after_create(
        &self,
        _key: &TokenDigest,
        entry: &Entry,
        _created_at: Instant,
    ) -> Option<Duration> {
        let remaining = entry.claims.exp.saturating_sub(unix_now());
        Some(Duration::from_secs(u64::try_from(remaining).unwrap_or(0)))
    }
}

/// A bounded, concurrent cache of verified tokens, shared by every clone.
#[derive(Clone)]
pub struct TokenCache {
    entries: Cache<TokenDigest, Entry>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.entries.entry_count())
            .finish()
    }
}

impl TokenCache {
    /// Creates a cache of at most `capacity` tokens. A capacity of 0 caches nothing.
    pub fn new(capacity: u64) -> Self {
        let entries = Cache::builder()
            .max_capacity(capacity)
            .expire_after(UntilTokenExpiry)
            .support_invalidation_closures()
            .build();
        TokenCache { entries }
    }

    /// Returns the claims of `token` if it was verified before and has not expired, together
    /// with the id of the key that signed it.
    pub(crate) fn get(&self, token: &str) -> Option<(Claims, Arc<str>)> {
        let entry = self.entries.get(&digest_of(token))?;
        if entry.claims.exp < unix_now() {
            return None;
        }
        Some((Claims::clone(&entry.claims), entry.key_id))
    }

    /// Remembers that `token`, signed by `key_id`, verified to `claims`.
    pub(crate) fn insert(&self, token: &str, key_id: &str, claims: &Claims) {
        if claims.exp <= unix_now() {
            return;
        }
        let entry = Entry {
            claims: Arc::new(claims.clone()),
            key_id: Arc::from(key_id),
        };
        self.entries.insert(digest_of(token), entry);
    }

    /// Removes `token`, so that its next use is verified in full. Revocation calls this.
    pub fn remove(&self, token: &str) {
        self.entries.invalidate(&digest_of(token));
    }

    /// Removes every token whose claims match `predicate`, as when a revocation arrives that
    /// names tokens by `jti` or subject rather than by their text.
    pub fn remove_where(&self, predicate: impl Fn(&Claims) -> bool + Send + Sync + 'static) {
        // The builder enables invalidation closures, so this fails only if that line is removed.
        if let Err(error) = self
            .entries
            .invalidate_entries_if(move |_, entry| predicate(&entry.claims))
        {
            tracing::error!(%error, "removing revoked tokens from the cache failed; clearing it");
            self.entries.invalidate_all();
        }
    }

    /// Removes every entry, as after a key is withdrawn.
    pub fn clear(&self) {
        self.entries.invalidate_all();
    }

    /// Returns the approximate number of entries. The count lags inserts and evictions
    /// slightly, because the cache applies them in batches.
    pub fn len(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    /// Reports whether the cache contains no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn digest_of(token: &str) -> TokenDigest {
    let mut key = [0u8; 32];
    key.copy_from_slice(digest::digest(&digest::SHA256, token.as_bytes()).as_ref());
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::Audience;

    fn claims(exp: i64) -> Claims {
        Claims {
            sub: "alice".into(),
            role: "admin".into(),
            iss: "school-auth".into(),
            aud: Audience::from("school"),
            iat: 0,
            nbf: 0,
            exp,
            jti: "id-1".into(),
        }
    }

    #[test]
    fn hit_returns_claims_and_key_id() {
        let cache = TokenCache::new(10);
        let valid = claims(unix_now() + 600);
        cache.insert("a.b.c", "kid-1", &valid);

        let (found, key_id) = cache.get("a.b.c").expect("cached");
        assert_eq!(found, valid);
        assert_eq!(&*key_id, "kid-1");
        assert!(cache.get("a.b.d").is_none());
    }

    #[test]
    fn expired_tokens_are_not_stored() {
        let cache = TokenCache::new(10);
        cache.insert("a.b.c", "kid-1", &claims(unix_now() - 1));
        assert!(cache.get("a.b.c").is_none());
    }

    #[test]
    fn remove_and_clear_drop_entries() {
        let cache = TokenCache::new(10);
        let valid = claims(unix_now() + 600);
        cache.insert("one", "kid-1", &valid);
        cache.insert("two", "kid-1", &valid);

        cache.remove("one");
        assert!(cache.get("one").is_none());
        assert!(cache.get("two").is_some());

        cache.clear();
        assert!(cache.get("two").is_none());
    }

    #[test]
    fn capacity_bounds_the_entry_count() {
        let cache = TokenCache::new(100);
        let valid = claims(unix_now() + 600);
        for index in 0..1_000 {
            cache.insert(&format!("token-{index}"), "kid-1", &valid);
        }
        assert!(cache.len() <= 100, "{} entries", cache.len());
    }
}
