//! Hand-made tokens for hostile-input tests: foreign keys, stolen keys, forged headers.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use auth_service::store::{KeyStore as _, SledStore};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

/// Signs arbitrary JWS headers and payloads with one Ed25519 key.
pub struct Forger {
    pair: Ed25519KeyPair,
    /// The RFC 7638 thumbprint of the key, the `kid` that auth-service would give it.
    pub key_id: String,
}

impl Forger {
    /// Creates a forger with a fresh key that no service trusts.
    pub fn random() -> Forger {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("generate key");
        Self::from_pkcs8(pkcs8.as_ref())
    }

    /// Creates a forger with the newest signing key of a stopped auth-service, as an attacker
    /// who stole the data directory would.
    pub async fn from_auth_data_dir(dir: &Path) -> Forger {
        let store = crate::retry_while_locked(|| SledStore::open(dir))
            .await
            .expect("open stopped auth-service store");
        let keys = store.signing_keys().await.expect("read signing keys");
        let newest = keys
            .iter()
            .max_by_key(|key| key.created_at)
            .expect("auth-service has a signing key");
        Self::from_pkcs8(&newest.pkcs8)
    }

    fn from_pkcs8(pkcs8: &[u8]) -> Forger {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).expect("valid PKCS#8");
        let key_id = school_guard::keys::key_id_for(pair.public_key().as_ref());
        Forger { pair, key_id }
    }

    /// Signs `claims` with a correct EdDSA header naming this key.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(
            &json!({"alg": "EdDSA", "typ": "JWT", "kid": self.key_id}),
            claims,
        )
    }

    /// Signs `claims` under any `header`, whatever it claims about the algorithm.
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        self.sign_raw(&header.to_string(), &claims.to_string())
    }

    /// Signs a header and payload given as raw text, which need not be valid JSON objects.
    pub fn sign_raw(&self, header: &str, payload: &str) -> String {
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let signature = self.pair.sign(signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        )
    }
}

/// Returns the base64url form of a JSON value, as a JWS part.
pub fn encode(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// Returns the current time in seconds since the Unix epoch.
pub fn now() -> i64 {
    let elapsed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(elapsed.as_secs()).expect("time fits i64")
}

/// Returns claims that the default configuration accepts: issuer `school-auth`, audience
/// `school`, valid for ten minutes from now.
pub fn claims(subject: &str, role: &str) -> Value {
    let now = now();
    json!({
        "sub": subject,
        "role": role,
        "iss": "school-auth",
        "aud": "school",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": "forged-token",
    })
}

/// Returns an unsigned token (`alg: none`) with an empty signature part.
pub fn unsigned(claims: &Value) -> String {
    format!(
        "{}.{}.",
        encode(&json!({"alg": "none", "typ": "JWT"})),
        encode(claims)
    )
}
