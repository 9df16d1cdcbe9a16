//! Token verification keys: the shared key set, key ids and the JWKS document.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};

/// The one signing algorithm that verifiers accept. Every other `alg` header is rejected
/// before any key is looked up, which rules out `none` and HMAC-with-the-public-key forgeries.
pub const ALGORITHM: Algorithm = Algorithm::EdDSA;

/// The JWS name of [`ALGORITHM`], as it appears in the `alg` header.
pub const ALGORITHM_NAME: &str = "EdDSA";

/// The curve name of the keys, as it appears in a JWK.
pub const CURVE_NAME: &str = "Ed25519";

/// The length in bytes of a raw Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;

/// A public key that verifies access tokens, with the id that tokens name in their `kid` header.
#[derive(Clone, PartialEq, Eq)]
pub struct VerificationKey {
    /// The key id, the RFC 7638 thumbprint of the key.
    pub key_id: String,
    /// The raw 32-byte Ed25519 public key.
    pub public_key: Vec<u8>,
}

impl fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Public keys are not secret, but the id alone is all a log reader needs.
        f.debug_struct("VerificationKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// A key that cannot join a [`KeySet`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The public key is not 32 bytes long.
    #[error("public key {key_id:?} is {len} bytes long, expected {PUBLIC_KEY_LEN}")]
    InvalidLength {
        /// The id of the rejected key.
        key_id: String,
        /// The length of the rejected key.
        len: usize,
    },
    /// The key id is empty or longer than 128 bytes.
    #[error("key id {0:?} is empty or longer than 128 bytes")]
    InvalidKeyId(String),
    /// Two keys carry the same id.
    #[error("key id {0:?} appears twice")]
    DuplicateKeyId(String),
}

/// The keys a verifier currently trusts, by key id.
///
/// Cloning is cheap and every clone reads the same keys. [`KeySet::replace`] swaps the whole set
/// at once, so a reader never gets half of an update.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: Arc<RwLock<Arc<KeyMap>>>,
}

type KeyMap = HashMap<String, Arc<DecodingKey>>;

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySet")
            .field("key_ids", &self.key_ids())
            .finish()
    }
}

impl KeySet {
    /// Creates an empty key set, which rejects every token.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces every key with `keys`, or changes nothing if any of them is invalid.
    pub fn replace(&self, keys: Vec<VerificationKey>) -> Result<(), KeyError> {
        let mut decoded = HashMap::with_capacity(keys.len());
        for key in keys {
            if key.key_id.is_empty() || key.key_id.len() > 128 {
                return Err(KeyError::InvalidKeyId(key.key_id));
            }
            if key.public_key.len() != PUBLIC_KEY_LEN {
                return Err(KeyError::InvalidLength {
                    len: key.public_key.len(),
                    key_id: key.key_id,
                });
            }
            let decoding_key = Arc::new(DecodingKey::from_ed_der(&key.public_key));
            if decoded.insert(key.key_id.clone(), decoding_key).is_some() {
                return Err(KeyError::DuplicateKeyId(key.key_id));
            }
        }

        let decoded = Arc::new(decoded);
        match self.keys.write() {
            Ok(mut guard) => *guard = decoded,
            Err(poisoned) => *poisoned.into_inner() = decoded,
        }
        Ok(())
    }

    /// Returns the key with id `key_id`, if the set contains one.
    pub fn get(&self, key_id: &str) -> Option<Arc<DecodingKey>> {
        self.snapshot().get(key_id).cloned()
    }

    /// Reports whether the set contains no key at all.
    pub fn is_empty(&self) -> bool {
        self.snapshot().is_empty()
    }

    /// Returns the ids of the keys in the set, sorted.
    pub fn key_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.snapshot().keys().cloned().collect();
        ids.sort();
        ids
    }

    fn snapshot(&self) -> Arc<KeyMap> {
        // The lock only guards a pointer swap, so a poisoned lock still holds a complete map.
        match self.keys.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }
}

/// Computes the key id of an Ed25519 public key: its JWK thumbprint as defined by RFC 7638,
/// the base64url SHA-256 of `{"crv":"Ed25519","kty":"OKP","x":"<key>"}`.
pub fn key_id_for(public_key: &[u8]) -> String {
    let canonical = format!(
        r#"{{"crv":"{CURVE_NAME}","kty":"OKP","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(public_key)
    );
    let hash = digest::digest(&digest::SHA256, canonical.as_bytes());
    URL_SAFE_NO_PAD.encode(hash.as_ref())
}

/// Renders `keys` as a JSON Web Key Set (RFC 7517), the form JOSE libraries in other languages
/// load directly.
pub fn jwks_json(keys: &[VerificationKey]) -> String {
    let keys: Vec<serde_json::Value> = keys
        .iter()
        .map(|key| {
            serde_json::json!({
                "kty": "OKP",
                "crv": CURVE_NAME,
                "x": URL_SAFE_NO_PAD.encode(&key.public_key),
                "kid": key.key_id,
                "alg": ALGORITHM_NAME,
                "use": "sig",
            })
        })
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_matches_rfc8037_thumbprint_example() {
        // RFC 8037, appendix A.3: the thumbprint of the example Ed25519 key.
        let public_key = URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap_or_default();
        assert_eq!(
            key_id_for(&public_key),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn replace_rejects_bad_keys_and_keeps_old_set() {
        let keys = KeySet::new();
        let good = VerificationKey {
            key_id: "a".into(),
            public_key: vec![7; PUBLIC_KEY_LEN],
        };
        assert_eq!(keys.replace(vec![good.clone()]), Ok(()));

        let short = VerificationKey {
            key_id: "b".into(),
            public_key: vec![7; 31],
        };
        assert!(matches!(
            keys.replace(vec![short]),
            Err(KeyError::InvalidLength { len: 31, .. })
        ));
        assert_eq!(
            keys.replace(vec![good.clone(), good.clone()]),
            Err(KeyError::DuplicateKeyId("a".into()))
        );
        let unnamed = VerificationKey {
            key_id: String::new(),
            public_key: vec![7; PUBLIC_KEY_LEN],
        };
        assert!(keys.replace(vec![unnamed]).is_err());

        assert_eq!(keys.key_ids(), vec!["a".to_string()]);
        assert!(keys.get("a").is_some());
        assert!(keys.get("b").is_none());
    }

    #[test]
    fn jwks_lists_every_key() -> Result<(), serde_json::Error> {
        let key = VerificationKey {
            key_id: "kid-1".into(),
            public_key: vec![1; PUBLIC_KEY_LEN],
        };
        let document: serde_json::Value = serde_json::from_str(&jwks_json(&[key]))?;
        assert_eq!(document["keys"][0]["kid"], "kid-1");
        assert_eq!(document["keys"][0]["alg"], "EdDSA");
        assert_eq!(document["keys"][0]["crv"], "Ed25519");
        Ok(())
    }
}
