//! Ed25519 token signing keys: created on first start, then loaded from the key store.

use std::fmt;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use jsonwebtoken::EncodingKey;
use school_guard::keys::{KeySet, VerificationKey, key_id_for};
use zeroize::Zeroizing;

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

/// The key that signs new tokens and the public keys of every stored key.
pub struct KeyRing {
    signing: SigningKey,
    /// Newest first.
    public_keys: Vec<VerificationKey>,
}

impl KeyRing {
    /// Loads every stored key, or generates, stores and flushes one if the store has none.
    /// The newest key signs.
    // TODO: keys are never rotated; rotation needs a way to add a key and to retire one once
    // no live token can carry it.
    pub async fn load_or_create(store: &dyn KeyStore) -> Result<Self, Error> {
        let mut stored = store.signing_keys().await?;
        if stored.is_empty() {
            let key = generate()?;
            store.insert_signing_key(&key).await?;
            tracing::info!(key.id = %key.key_id, "signing key created");
            stored.push(key);
        }
        stored.sort_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then(a.key_id.cmp(&b.key_id))
        });

        let mut public_keys = Vec::with_capacity(stored.len());
        for key in &stored {
            public_keys.push(VerificationKey {
                key_id: key.key_id.clone(),
                public_key: public_key_of(key)?,
            });
        }

        let newest = &stored[0];
        let signing = SigningKey {
            key_id: newest.key_id.clone(),
            encoding_key: EncodingKey::from_ed_der(&newest.pkcs8),
        };

        Ok(Self {
            signing,
            public_keys,
        })
    }

    /// Returns the key that signs new tokens.
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    /// Returns the public key of every stored key, newest first.
    pub fn public_keys(&self) -> &[VerificationKey] {
        &self.public_keys
    }

    /// Builds the verification key set that accepts tokens signed by any stored key.
    pub fn key_set(&self) -> Result<KeySet, Error> {
        let key_set = KeySet::new();
        key_set
            .replace(self.public_keys.clone())
            .map_err(Error::VerificationKey)?;
        Ok(key_set)
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("signing", &self.signing)
            .field("public_keys", &self.public_keys)
            .finish()
    }
}

/// Generates a new Ed25519 key pair as a PKCS#8 v2 document.
fn generate() -> Result<StoredSigningKey, Error> {
    let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| Error::Crypto("generate signing key"))?;
    let pkcs8 = Zeroizing::new(document.as_ref().to_vec());
    let key_pair =
        Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| Error::Crypto("parse signing key"))?;

    Ok(StoredSigningKey {
        key_id: key_id_for(key_pair.public_key().as_ref()),
        created_at: crate::clock::unix_now(),
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
    async fn mismatched_key_id_is_rejected() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = SledStore::open(dir.path()).await?;
        let mut key = generate()?;
        key.key_id = "not-the-thumbprint".into();
        store.insert_signing_key(&key).await?;

        let loaded = KeyRing::load_or_create(&store).await;

        assert!(matches!(loaded, Err(Error::Crypto(_))));
        Ok(())
    }

    #[test]
    fn signing_key_debug_shows_only_key_id() -> Result<(), Error> {
        let stored = generate()?;
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
