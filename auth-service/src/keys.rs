//! Ed25519 token signing keys: created on first start, then loaded from the key store.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use jsonwebtoken::EncodingKey;
use school_guard::keys::{KeySet, VerificationKey, key_id_for};
use zeroize::Zeroizing;

use crate::clock::unix_now;
use crate::error::Error;
use crate::store::{KeyStore, StoredSigningKey};

/// The private half of the current signing key. `Debug` prints only the key id.
pub struct SigningKey {
    key_id: String,
    // NOTE: jsonwebtoken's EncodingKey keeps its own copy of the PKCS#8 bytes and does not
    // zeroize it on drop.
    encoding_key: EncodingKey,
}

impl SigningKey {
    /// Returns the key id that tokens carry in their `kid` header.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Returns the key in the form jsonwebtoken signs with.
    pub fn encoding_key(&self) -> &EncodingKey {
        &self.encoding_key
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// One stored key, parsed.
struct LoadedKey {
    /// The time from which the key signs, in seconds since the Unix epoch.
    created_at: i64,
    public: VerificationKey,
    signing: Arc<SigningKey>,
}

/// The signing keys of the service: which key signs now and which public keys are published.
///
/// A key's `created_at` is the time from which it signs, so a key stored with a future time
/// (see [`KeyRing::rotate`]) is published at once but signs only from then on; verifiers that
/// refresh their keys within that lead time know it before its first token. The newest key
/// whose time has come signs. An older key stays published until its successor has signed for
/// longer than the token lifetime plus the clock leeway, when no unexpired token can carry it.
pub struct KeyRing {
    /// Newest first.
    keys: RwLock<Vec<LoadedKey>>,
    /// The keys `ValidateToken` accepts, replaced whenever `keys` changes.
    key_set: KeySet,
    /// Seconds after a successor starts signing until a key is withdrawn.
    retire_after: i64,
}

impl KeyRing {
    /// Loads every stored key, or generates, stores and flushes one if the store has none.
    /// Keys are never withdrawn; [`KeyRing::retiring_after`] sets when they are.
    pub async fn load_or_create(store: &dyn KeyStore) -> Result<Self, Error> {
        let mut stored = store.signing_keys().await?;
        if stored.is_empty() {
            let key = generate(unix_now())?;
            store.insert_signing_key(&key).await?;
            tracing::info!(key.id = %key.key_id, "signing key created");
            stored.push(key);
        }
        let ring = Self {
            keys: RwLock::new(load(&stored)?),
            key_set: KeySet::new(),
            retire_after: i64::MAX,
        };
        ring.refresh_key_set()?;
        Ok(ring)
    }

    /// Withdraws a key once its successor has signed for `lifetime`, which must be at least the
    /// token lifetime plus the clock leeway that verifiers allow.
    pub fn retiring_after(mut self, lifetime: Duration) -> Result<Self, Error> {
        self.retire_after = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX);
        self.refresh_key_set()?;
        Ok(self)
    }

    /// Returns the key that signs new tokens now: the newest whose time has come, or the
    /// oldest if every key lies in the future (a clock set back).
    pub fn signing_key(&self) -> Arc<SigningKey> {
        let keys = self.read();
        let now = unix_now();
        let active = keys
            .iter()
            .find(|key| key.created_at <= now)
            .or_else(|| keys.last());
        match active {
            Some(key) => Arc::clone(&key.signing),
            // `load` never returns an empty list; were it empty, signing with this empty key
            // would fail with an error instead of panicking.
            None => Arc::new(SigningKey {
                key_id: String::new(),
                encoding_key: EncodingKey::from_ed_der(&[]),
            }),
        }
    }

    /// Returns the published public keys, newest first: keys that sign now or will sign, and
    /// older keys whose tokens may still be unexpired.
    pub fn public_keys(&self) -> Vec<VerificationKey> {
        let keys = self.read();
        let now = unix_now();
        let mut published = Vec::with_capacity(keys.len());
        // The time the next newer key started signing, for each key in turn.
        let mut successor_since: Option<i64> = None;
        for key in keys.iter() {
            let withdrawn = successor_since
                .is_some_and(|since| since <= now && now - since > self.retire_after);
            if !withdrawn {
                published.push(key.public.clone());
            }
            successor_since = Some(key.created_at);
        }
        published
    }

    /// Returns the verification key set that accepts tokens signed by any published key. It
    /// is shared: later changes of the ring apply to it.
    pub fn key_set(&self) -> Result<KeySet, Error> {
        Ok(self.key_set.clone())
    }

    /// Stores a new key that starts signing `lead` from now and is published at once, and
    /// returns its key id.
    pub async fn rotate(&self, store: &dyn KeyStore, lead: Duration) -> Result<String, Error> {
        let lead = i64::try_from(lead.as_secs()).unwrap_or(i64::MAX);
        let key = generate(unix_now().saturating_add(lead))?;
        store.insert_signing_key(&key).await?;
        tracing::info!(key.id = %key.key_id, key.signs_from = key.created_at, "signing key added");
        self.reload(store).await?;
        Ok(key.key_id.clone())
    }

    /// Reads the keys from `store` again and updates the published set.
    pub async fn reload(&self, store: &dyn KeyStore) -> Result<(), Error> {
        let loaded = load(&store.signing_keys().await?)?;
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = loaded;
        self.refresh_key_set()
    }

    /// Replaces the shared key set with the keys published now.
    pub fn refresh_key_set(&self) -> Result<(), Error> {
        self.key_set
            .replace(self.public_keys())
            .map_err(Error::VerificationKey)
    }

    /// Returns the time from which the newest key signs, in seconds since the Unix epoch.
    pub fn newest_key_time(&self) -> i64 {
        self.read().first().map_or(0, |key| key.created_at)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<LoadedKey>> {
        self.keys.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Parses the stored keys, newest first, checking each key id against its public key.
fn load(stored: &[StoredSigningKey]) -> Result<Vec<LoadedKey>, Error> {
    if stored.is_empty() {
        return Err(Error::Crypto("the key store has no signing key"));
    }
    let mut loaded = Vec::with_capacity(stored.len());
    for key in stored {
        loaded.push(LoadedKey {
            created_at: key.created_at,
            public: VerificationKey {
                key_id: key.key_id.clone(),
                public_key: public_key_of(key)?,
            },
            signing: Arc::new(SigningKey {
                key_id: key.key_id.clone(),
                encoding_key: EncodingKey::from_ed_der(&key.pkcs8),
            }),
        });
    }
    loaded.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then(a.public.key_id.cmp(&b.public.key_id))
    });
    Ok(loaded)
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("signing", &self.signing_key())
            .field("public_keys", &self.public_keys())
            .finish()
    }
}

/// The signing-key rotation flags, flattened into [`crate::Config`].
#[derive(Clone, Debug, clap::Args)]
pub struct KeyArgs {
    /// Seconds between automatic signing-key rotations; 0 turns automatic rotation off.
    #[arg(
        long,
        env = "AUTH_KEY_ROTATION_SECS",
        default_value_t = 0,
        global = true
    )]
    pub key_rotation_secs: u64,

    /// Seconds a new signing key is published before it signs. It must exceed the interval at
    /// which verifiers refresh their keys (student-service: --key-refresh-secs, 300 by default).
    #[arg(
        long,
        env = "AUTH_KEY_PUBLISH_LEAD_SECS",
        default_value_t = 600,
        global = true
    )]
    pub key_publish_lead_secs: u64,
}

impl KeyArgs {
    /// Checks that the lead time fits within the rotation interval.
    pub fn validate(&self) -> Result<(), Error> {
        if self.key_rotation_secs > 0 && self.key_publish_lead_secs >= self.key_rotation_secs {
            return Err(Error::invalid_config(
                "key-publish-lead-secs",
                "AUTH_KEY_PUBLISH_LEAD_SECS",
                format!(
                    "must be less than --key-rotation-secs ({}), got {}",
                    self.key_rotation_secs, self.key_publish_lead_secs
                ),
            ));
        }
        Ok(())
    }

    /// Returns the lead time of new keys.
    pub fn lead(&self) -> Duration {
        Duration::from_secs(self.key_publish_lead_secs)
    }
}

/// Rotates the signing key every `every`, storing each new key `lead` before it signs, and
/// refreshes the published key set as keys come due or are withdrawn. Runs until aborted.
/// A failed rotation is logged and retried at the next check.
pub async fn rotate_periodically(
    ring: Arc<KeyRing>,
    store: Arc<dyn KeyStore>,
    every: Duration,
    lead: Duration,
) {
    let check = (every.min(lead.max(Duration::from_secs(1))) / 4)
        .clamp(Duration::from_millis(100), Duration::from_secs(60));
    let every_secs = i64::try_from(every.as_secs()).unwrap_or(i64::MAX);
    let lead_secs = i64::try_from(lead.as_secs()).unwrap_or(i64::MAX);
    loop {
        tokio::time::sleep(check).await;
        let due = ring
            .newest_key_time()
            .saturating_add(every_secs)
            .saturating_sub(lead_secs);
        if unix_now() >= due
            && let Err(error) = ring.rotate(store.as_ref(), lead).await
        {
            tracing::error!(error = %error.report(), "signing key rotation failed; retrying");
        }
        if let Err(error) = ring.refresh_key_set() {
            tracing::error!(error = %error.report(), "refreshing the published keys failed");
        }
    }
}

/// Generates a new Ed25519 key pair as a PKCS#8 v2 document.
/// `created_at` is the time from which the key signs.
fn generate(created_at: i64) -> Result<StoredSigningKey, Error> {
    let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| Error::Crypto("generate signing key"))?;
    let pkcs8 = Zeroizing::new(document.as_ref().to_vec());
    let key_pair =
        Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| Error::Crypto("parse signing key"))?;

    Ok(StoredSigningKey {
        key_id: key_id_for(key_pair.public_key().as_ref()),
        created_at,
        pkcs8,
    })
}

/// Derives the raw public key and checks that the stored key id matches it.
fn public_key_of(key: &StoredSigningKey) -> Result<Vec<u8>, Error> {
    let key_pair =
        Ed25519KeyPair::from_pkcs8(&key.pkcs8).map_err(|_| Error::Crypto("parse signing key"))?;
    let public_key = key_pair.public_key().as_ref().to_vec();
    if key_id_for(&public_key) != key.key_id {
        return Err(Error::Crypto("stored key id does not match its public key"));
    }
    Ok(public_key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    #[tokio::test]
    async fn key_is_created_once_and_reloaded() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = SledStore::open(dir.path()).await?;

        let first = KeyRing::load_or_create(&store).await?;
        let second = KeyRing::load_or_create(&store).await?;

        assert_eq!(first.signing_key().key_id(), second.signing_key().key_id());
        assert_eq!(first.public_keys().len(), 1);
        assert_eq!(first.public_keys()[0].public_key.len(), 32);
        assert_eq!(
            first.public_keys()[0].key_id,
            key_id_for(&first.public_keys()[0].public_key)
        );
        Ok(())
    }

    #[tokio::test]
    async fn rotated_key_is_published_before_it_signs() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = SledStore::open(dir.path()).await?;
        let ring = KeyRing::load_or_create(&store).await?;
        let first = ring.signing_key().key_id().to_owned();

        let next = ring.rotate(&store, Duration::from_secs(3600)).await?;

        let published: Vec<String> = ring
            .public_keys()
            .into_iter()
            .map(|key| key.key_id)
            .collect();
        assert_eq!(published, [next.clone(), first.clone()]);
        assert_eq!(
            ring.signing_key().key_id(),
            first,
            "the new key waits for its lead time"
        );
        assert!(
            ring.key_set()?.get(&next).is_some(),
            "ValidateToken knows it already"
        );
        Ok(())
    }

    #[tokio::test]
    async fn old_key_is_withdrawn_after_token_lifetime() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = SledStore::open(dir.path()).await?;
        let old = generate(unix_now() - 1000)?;
        let newer = generate(unix_now() - 500)?;
        let newest = generate(unix_now() - 10)?;
        for key in [&old, &newer, &newest] {
            store.insert_signing_key(key).await?;
        }

        let ring = KeyRing::load_or_create(&store)
            .await?
            .retiring_after(Duration::from_secs(100))?;

        let published: Vec<String> = ring
            .public_keys()
            .into_iter()
            .map(|key| key.key_id)
            .collect();
        assert_eq!(published, [newest.key_id.clone(), newer.key_id.clone()]);
        assert!(ring.key_set()?.get(&old.key_id).is_none());
        assert_eq!(ring.signing_key().key_id(), newest.key_id);
        Ok(())
    }

    #[tokio::test]
    async fn mismatched_key_id_is_rejected() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = SledStore::open(dir.path()).await?;
        let mut key = generate(unix_now())?;
        key.key_id = "not-the-thumbprint".into();
        store.insert_signing_key(&key).await?;

        let loaded = KeyRing::load_or_create(&store).await;

        assert!(matches!(loaded, Err(Error::Crypto(_))));
        Ok(())
    }

    #[test]
    fn signing_key_debug_shows_only_key_id() -> Result<(), Error> {
        let stored = generate(unix_now())?;
        let key = SigningKey {
            key_id: stored.key_id.clone(),
            encoding_key: EncodingKey::from_ed_der(&stored.pkcs8),
        };

        assert_eq!(
            format!("{key:?}"),
            format!("SigningKey {{ key_id: {:?}, .. }}", stored.key_id)
        );
        Ok(())
    }
}
