//! Access-token verification with the algorithm pinned and every required claim checked.
//!
//! Checks run cheapest first. The token's shape, header and claims are read and checked before
//! the key lookup and the Ed25519 signature check, so a flood of malformed, expired or misaddressed
//! tokens costs no signature verification. The signature check then runs through `jsonwebtoken`,
//! which validates the claims a second time.
//!
//! A token that passes is remembered in a [`TokenCache`] until its `exp`, so a client that sends
//! the same token on every call pays for one signature check, not one per call.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Validation, decode};
use school_proto::auth::v1::TokenInvalidReason;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use crate::cache::{DEFAULT_CAPACITY, TokenCache};
use crate::claims::Claims;
use crate::keys::{ALGORITHM, ALGORITHM_NAME, KeySet};
use crate::revocation::RevocationList;
use crate::threads::{self, WorkerThreads};

/// The largest token accepted, in bytes. Our tokens are about 400 bytes; the limit keeps a
/// hostile token from costing more than a few microseconds of parsing.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The largest `kid` header accepted, in bytes.
const MAX_KEY_ID_LEN: usize = 128;

/// The issuer, audience and clock skew a verifier checks tokens against.
#[derive(Clone, Debug)]
pub struct VerifierConfig {
    /// The only accepted `iss` claim.
    pub issuer: String,
    /// The audience that the `aud` claim must contain.
    pub audience: String,
    /// The clock skew tolerated when checking `exp` and `nbf`.
    pub leeway: Duration,
}

/// The reason a token was rejected.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// The token is not a well-formed JWT, or a claim has the wrong JSON type.
    #[error("access token is malformed")]
    Malformed,
    /// The `exp` claim is in the past.
    #[error("access token has expired")]
    Expired,
    /// The `nbf` claim is in the future.
    #[error("access token is not valid yet")]
    NotYetValid,
    /// The signature does not verify with the key that `kid` names.
    #[error("access token signature is invalid")]
    BadSignature,
    /// `kid` names no trusted key, or is missing.
    #[error("access token is signed with an unknown key")]
    UnknownKey,
    /// The `iss` claim is not the expected issuer.
    #[error("access token has the wrong issuer")]
    WrongIssuer,
    /// The `aud` claim does not contain the expected audience.
    #[error("access token is not meant for this service")]
    WrongAudience,
    /// The `alg` header is not EdDSA.
    #[error("access token uses an unsupported signing algorithm")]
    UnsupportedAlgorithm,
    /// A required claim is missing.
    #[error("access token lacks a required claim")]
    MissingClaim,
    /// The token is on the revocation list.
    #[error("access token has been revoked")]
    Revoked,
}

impl TokenError {
    /// Returns the wire form of the error, as `ValidateToken` reports it.
    pub fn reason(self) -> TokenInvalidReason {
        match self {
            TokenError::Malformed => TokenInvalidReason::Malformed,
            TokenError::Expired => TokenInvalidReason::Expired,
            TokenError::NotYetValid => TokenInvalidReason::NotYetValid,
            TokenError::BadSignature => TokenInvalidReason::BadSignature,
            TokenError::UnknownKey => TokenInvalidReason::UnknownKey,
            TokenError::WrongIssuer => TokenInvalidReason::WrongIssuer,
            TokenError::WrongAudience => TokenInvalidReason::WrongAudience,
            TokenError::UnsupportedAlgorithm => TokenInvalidReason::UnsupportedAlgorithm,
            TokenError::MissingClaim => TokenInvalidReason::MissingClaim,
            TokenError::Revoked => TokenInvalidReason::Revoked,
        }
    }

    /// Returns a stable lower-case name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::BadSignature => "bad_signature",
            TokenError::UnknownKey => "unknown_key",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::UnsupportedAlgorithm => "unsupported_algorithm",
            TokenError::MissingClaim => "missing_claim",
            TokenError::Revoked => "revoked",
        }
    }
}

/// The header fields a verifier reads. Unknown fields are ignored, as RFC 7515 requires, except
/// `crit`, which names extensions that must be understood, and none are.
#[derive(Deserialize)]
struct Header {
    alg: Option<Value>,
    kid: Option<Value>,
    crit: Option<Value>,
}

/// Verifies access tokens against a [`KeySet`], remembering the tokens that passed.
///
/// Clones share the key set and the cache.
#[derive(Clone, Debug)]
pub struct TokenVerifier {
    keys: KeySet,
    config: VerifierConfig,
    validation: Validation,
    cache: TokenCache,
    /// Limits the signature checks that [`TokenVerifier::verify_async`] runs at once.
    signature_slots: Arc<Semaphore>,
    /// Tokens rejected after they verify, when set.
    revocations: Option<RevocationList>,
}

impl TokenVerifier {
    /// Creates a verifier that trusts the keys in `keys`, now and after they change.
    pub fn new(keys: KeySet, config: VerifierConfig) -> Self {
        let mut validation = Validation::new(ALGORITHM);
        validation.leeway = config.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[config.issuer.as_str()]);
        validation.set_audience(&[config.audience.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        Self {
            keys,
            config,
            validation,
            cache: TokenCache::new(DEFAULT_CAPACITY),
            signature_slots: Arc::new(Semaphore::new(signature_slots())),
            revocations: None,
        }
    }

    /// Rejects every token on `revocations` with [`TokenError::Revoked`], checked after the
    /// token verifies, whether it came from the cache or not.
    pub fn with_revocations(mut self, revocations: RevocationList) -> Self {
        self.revocations = Some(revocations);
        self
    }

    /// Replaces the cache with one of at most `capacity` tokens; 0 turns caching off.
    pub fn with_cache_capacity(mut self, capacity: u64) -> Self {
        self.cache = TokenCache::new(capacity);
        self
    }

    /// Returns the cache of verified tokens, for revocation through [`TokenCache::remove`].
    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }

    /// Returns the key set the verifier reads.
    pub fn keys(&self) -> &KeySet {
        &self.keys
    }

    /// Returns what the verifier expects of a token.
    pub fn config(&self) -> &VerifierConfig {
        &self.config
    }

    /// Verifies `token` and returns its claims, from the cache when the token passed before.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        if let Some(claims) = self.cached(token) {
            return self.check_revoked(claims);
        }
        let (claims, key_id) = self.verify_at(token, unix_now())?;
        self.cache.insert(token, &key_id, &claims);
        self.check_revoked(claims)
    }

    /// Verifies `token` like [`TokenVerifier::verify`], but runs the signature check on the
    /// process's signature-checking threads, one per two available cores, at a lower scheduling
    /// priority than the async runtime.
    ///
    /// Cached tokens and tokens rejected before the signature check never leave the calling
    /// task. A flood of well-signed-looking tokens therefore queues for the signature threads
    /// instead of occupying the async workers, and the scheduler serves callers whose tokens are
    /// cached first.
    pub async fn verify_async(&self, token: &str) -> Result<Claims, TokenError> {
        if let Some(claims) = self.cached(token) {
            return self.check_revoked(claims);
        }
        let now = unix_now();
        let (header, payload) = split_token(token)?;
        let key_id = check_header(header)?;
        self.check_claims(payload, now)?;
        if self.keys.get(&key_id).is_none() {
            return Err(TokenError::UnknownKey);
        }

        // The semaphore is never closed, so acquiring cannot fail; fail closed if it does.
        let _slot = self
            .signature_slots
            .acquire()
            .await
            .map_err(|_| TokenError::BadSignature)?;
        let verifier = self.clone();
        let owned = token.to_owned();
        let check = move || verifier.verify_at(&owned, now);
        let verified = match signature_threads() {
            Some(threads) => threads
                .run(move |_: &mut ()| check())
                .await
                .map_err(|error| error.to_string()),
            None => tokio::task::spawn_blocking(check)
                .await
                .map_err(|error| error.to_string()),
        }
        .map_err(|error| {
            tracing::error!(%error, "token verification task failed");
            TokenError::BadSignature
        })?;
        let (claims, key_id) = verified?;
        self.cache.insert(token, &key_id, &claims);
        self.check_revoked(claims)
    }

    /// Fails with [`TokenError::Revoked`] if the revocation list names the token. A revoked
    /// token stays in the cache until the revocation's own removal runs, and is rejected here
    /// meanwhile.
    fn check_revoked(&self, claims: Claims) -> Result<Claims, TokenError> {
        match &self.revocations {
            Some(list) if list.is_revoked(&claims) => Err(TokenError::Revoked),
            _ => Ok(claims),
        }
    }

    /// Returns the claims of `token` if it passed before, has not expired and its signing key
    /// is still trusted. Checks nothing else, so a miss tells nothing about the token.
    pub fn cached(&self, token: &str) -> Option<Claims> {
        let (claims, key_id) = self.cache.get(token)?;
        // A key withdrawn from the set takes its tokens with it at the next call.
        self.keys.get(&key_id)?;
        Some(claims)
    }

    /// Verifies `token` as of `now`, in seconds since the Unix epoch, for everything checked
    /// before the signature, and returns its claims and key id. `jsonwebtoken` checks `exp` and
    /// `nbf` again against the system clock.
    fn verify_at(&self, token: &str, now: i64) -> Result<(Claims, String), TokenError> {
        let (header, payload) = split_token(token)?;
        let key_id = check_header(header)?;
        let claims = self.check_claims(payload, now)?;

        let key = self.keys.get(&key_id).ok_or(TokenError::UnknownKey)?;
        let verified =
            decode::<Claims>(token, &key, &self.validation).map_err(map_library_error)?;

        // Both parses read the same bytes; a mismatch would mean the checks above were bypassed.
        if verified.claims != claims {
            return Err(TokenError::Malformed);
        }
        Ok((verified.claims, key_id))
    }

    fn check_claims(&self, payload: &str, now: i64) -> Result<Claims, TokenError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        let object: Map<String, Value> =
            serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;

        for required in ["sub", "role", "iss", "aud", "exp"] {
            if !object.contains_key(required) {
                return Err(TokenError::MissingClaim);
            }
        }
        for text in ["sub", "role", "iss", "jti"] {
            if object.get(text).is_some_and(|value| !value.is_string()) {
                return Err(TokenError::Malformed);
            }
        }
        for time in ["exp", "nbf", "iat"] {
            if object.get(time).is_some_and(|value| !value.is_i64()) {
                return Err(TokenError::Malformed);
            }
        }

        let claims: Claims =
            serde_json::from_value(Value::Object(object)).map_err(|_| TokenError::Malformed)?;
        if claims.sub.is_empty() || claims.role.is_empty() {
            return Err(TokenError::MissingClaim);
        }

        let leeway = i64::try_from(self.config.leeway.as_secs()).unwrap_or(i64::MAX);
        if claims.exp.saturating_add(leeway) < now {
            return Err(TokenError::Expired);
        }
        if claims.nbf.saturating_sub(leeway) > now {
            return Err(TokenError::NotYetValid);
        }
        if claims.iss != self.config.issuer {
            return Err(TokenError::WrongIssuer);
        }
        if !claims.aud.contains(&self.config.audience) {
            return Err(TokenError::WrongAudience);
        }
        Ok(claims)
    }
}

/// Splits a compact JWS into its encoded header and payload, checking its shape: exactly three
/// non-empty base64url parts without padding, within [`MAX_TOKEN_LEN`].
fn split_token(token: &str) -> Result<(&str, &str), TokenError> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };

    let is_base64url = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
    };
    if !(is_base64url(header) && is_base64url(payload) && is_base64url(signature)) {
        return Err(TokenError::Malformed);
    }
    Ok((header, payload))
}

/// Checks the header and returns its key id.
fn check_header(encoded: &str) -> Result<String, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| TokenError::Malformed)?;
    let header: Header = serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;

    match header.alg {
        Some(Value::String(alg)) if alg == ALGORITHM_NAME => {}
        Some(Value::String(_)) => return Err(TokenError::UnsupportedAlgorithm),
        _ => return Err(TokenError::Malformed),
    }
    if header.crit.is_some() {
        return Err(TokenError::Malformed);
    }
    match header.kid {
        Some(Value::String(kid)) if !kid.is_empty() && kid.len() <= MAX_KEY_ID_LEN => Ok(kid),
        Some(Value::String(_)) | None => Err(TokenError::UnknownKey),
        Some(_) => Err(TokenError::Malformed),
    }
}

/// Maps a `jsonwebtoken` failure, which only the signature check and the repeated claim checks
/// can produce here, to a [`TokenError`].
fn map_library_error(error: jsonwebtoken::errors::Error) -> TokenError {
    match error.kind() {
        ErrorKind::InvalidSignature | ErrorKind::InvalidEddsaKey => TokenError::BadSignature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::InvalidAlgorithm | ErrorKind::UnsupportedAlgorithm => {
            TokenError::UnsupportedAlgorithm
        }
        ErrorKind::MissingRequiredClaim(_) => TokenError::MissingClaim,
        _ => TokenError::Malformed,
    }
}

/// Returns the number of signature checks that may run at once: one per two available cores,
/// and at least one, so that the async workers keep a core for cached calls.
fn signature_slots() -> usize {
    std::thread::available_parallelism().map_or(1, |cores| (cores.get() / 2).max(1))
}

/// Returns the process's signature-checking threads, started at first use: one per signature
/// slot, at [`threads::DEFAULT_NICE`], so that callers whose tokens are cached go first when the
/// CPUs are busy. Returns `None` if the threads could not be started, and the checks then run
/// on tokio's blocking pool.
fn signature_threads() -> Option<&'static WorkerThreads<()>> {
    static THREADS: OnceLock<Option<WorkerThreads<()>>> = OnceLock::new();
    THREADS
        .get_or_init(|| {
            WorkerThreads::start("verify", signature_slots(), threads::DEFAULT_NICE, || ())
                .inspect_err(|error| {
                    tracing::error!(%error, "failed to start the signature-checking threads");
                })
                .ok()
        })
        .as_ref()
}

/// Returns the current time in seconds since the Unix epoch.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::Audience;
    use crate::keys::{VerificationKey, key_id_for};
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
    use jsonwebtoken::{EncodingKey, Header as JwtHeader, encode};

    struct Signer {
        encoding: EncodingKey,
        key_id: String,
        public_key: Vec<u8>,
    }

    fn signer() -> Signer {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
            .expect("generate key");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("parse key");
        let public_key = pair.public_key().as_ref().to_vec();
        Signer {
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
            key_id: key_id_for(&public_key),
            public_key,
        }
    }

    fn verifier(trusted: &Signer) -> TokenVerifier {
        let keys = KeySet::new();
        keys.replace(vec![VerificationKey {
            key_id: trusted.key_id.clone(),
            public_key: trusted.public_key.clone(),
        }])
        .expect("valid key");
        TokenVerifier::new(
            keys,
            VerifierConfig {
                issuer: "school-auth".into(),
                audience: "school".into(),
                leeway: Duration::from_secs(5),
            },
        )
    }

    fn claims(now: i64) -> Claims {
        Claims {
            sub: "alice".into(),
            role: "admin".into(),
            iss: "school-auth".into(),
            aud: Audience::from("school"),
            iat: now,
            nbf: now,
            exp: now + 900,
            jti: "id-1".into(),
        }
    }

    fn sign(signer: &Signer, claims: &impl serde::Serialize) -> String {
        let mut header = JwtHeader::new(ALGORITHM);
        header.kid = Some(signer.key_id.clone());
        encode(&header, claims, &signer.encoding).expect("sign")
    }

    fn encode_part(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(value.to_string())
    }

    #[test]
    fn valid_token_returns_claims() {
        let signer = signer();
        let now = unix_now();
        let token = sign(&signer, &claims(now));
        assert_eq!(verifier(&signer).verify(&token), Ok(claims(now)));
    }

    #[test]
    fn claim_failures_have_their_reason() {
        let signer = signer();
        let verifier = verifier(&signer);
        let now = unix_now();

        let mut expired = claims(now - 3600);
        expired.exp = now - 60;
        let mut future = claims(now);
        future.nbf = now + 600;
        let mut issuer = claims(now);
        issuer.iss = "someone-else".into();
        let mut audience = claims(now);
        audience.aud = Audience::from("billing");

        let cases = [
            (expired, TokenError::Expired),
            (future, TokenError::NotYetValid),
            (issuer, TokenError::WrongIssuer),
            (audience, TokenError::WrongAudience),
        ];
        for (claims, expected) in cases {
            assert_eq!(verifier.verify(&sign(&signer, &claims)), Err(expected));
        }
    }

    #[test]
    fn leeway_is_applied_both_ways() {
        let signer = signer();
        let verifier = verifier(&signer);
        let now = unix_now();

        let mut just_expired = claims(now - 900);
        just_expired.exp = now - 3;
        assert!(verifier.verify(&sign(&signer, &just_expired)).is_ok());

        let mut nearly_valid = claims(now);
        nearly_valid.nbf = now + 3;
        assert!(verifier.verify(&sign(&signer, &nearly_valid)).is_ok());
    }

    #[test]
    fn missing_or_mistyped_claims_are_rejected() {
        let signer = signer();
        let verifier = verifier(&signer);
        let now = unix_now();
        let full = serde_json::to_value(claims(now)).expect("claims");

        for name in ["sub", "role", "iss", "aud", "exp"] {
            let mut partial = full.clone();
            partial.as_object_mut().expect("object").remove(name);
            assert_eq!(
                verifier.verify(&sign(&signer, &partial)),
                Err(TokenError::MissingClaim),
                "without {name}"
            );
        }

        let mistyped = [
            ("exp", Value::from((now + 900).to_string())),
            ("exp", Value::from(1.5e12)),
            ("nbf", Value::from("0")),
            ("iat", Value::Null),
            ("sub", Value::from(42)),
            ("role", Value::from(vec!["admin"])),
            ("aud", Value::from(7)),
        ];
        for (name, value) in mistyped {
            let mut changed = full.clone();
            changed[name] = value;
            assert_eq!(
                verifier.verify(&sign(&signer, &changed)),
                Err(TokenError::Malformed),
                "mistyped {name}"
            );
        }

        let mut empty_subject = claims(now);
        empty_subject.sub = String::new();
        assert_eq!(
            verifier.verify(&sign(&signer, &empty_subject)),
            Err(TokenError::MissingClaim)
        );
    }

    #[test]
    fn forged_headers_are_rejected() {
        let signer = signer();
        let verifier = verifier(&signer);
        let genuine = sign(&signer, &claims(unix_now()));
        let parts: Vec<&str> = genuine.split('.').collect();
        let (payload, signature) = (parts[1], parts[2]);
        let kid = signer.key_id.as_str();

        let cases = [
            (
                serde_json::json!({"alg": "none", "kid": kid}),
                TokenError::UnsupportedAlgorithm,
            ),
            (
                serde_json::json!({"alg": "HS256", "kid": kid}),
                TokenError::UnsupportedAlgorithm,
            ),
            (
                serde_json::json!({"alg": "RS256", "kid": kid}),
                TokenError::UnsupportedAlgorithm,
            ),
            (
                serde_json::json!({"alg": "eddsa", "kid": kid}),
                TokenError::UnsupportedAlgorithm,
            ),
            (serde_json::json!({"kid": kid}), TokenError::Malformed),
            (
                serde_json::json!({"alg": 1, "kid": kid}),
                TokenError::Malformed,
            ),
            (serde_json::json!({"alg": "EdDSA"}), TokenError::UnknownKey),
            (
                serde_json::json!({"alg": "EdDSA", "kid": "other"}),
                TokenError::UnknownKey,
            ),
            (
                serde_json::json!({"alg": "EdDSA", "kid": 5}),
                TokenError::Malformed,
            ),
            (
                serde_json::json!({"alg": "EdDSA", "kid": kid, "crit": ["exp"]}),
                TokenError::Malformed,
            ),
        ];
        for (header, expected) in cases {
            let token = format!("{}.{payload}.{signature}", encode_part(&header));
            assert_eq!(verifier.verify(&token), Err(expected), "{header}");
        }

        // alg: none with an empty signature, the classic downgrade.
        let unsigned = format!(
            "{}.{payload}.",
            encode_part(&serde_json::json!({"alg": "none", "kid": kid}))
        );
        assert_eq!(verifier.verify(&unsigned), Err(TokenError::Malformed));
    }

    #[test]
    fn hmac_with_public_key_as_secret_is_rejected() {
        let signer = signer();
        let verifier = verifier(&signer);
        let mut header = JwtHeader::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(signer.key_id.clone());
        let secret = EncodingKey::from_secret(&signer.public_key).expect("secret");
        let token = encode(&header, &claims(unix_now()), &secret).expect("sign");
        assert_eq!(
            verifier.verify(&token),
            Err(TokenError::UnsupportedAlgorithm)
        );
    }

    #[test]
    fn tampered_and_foreign_tokens_are_rejected() {
        let signer = signer();
        let verifier = verifier(&signer);
        let now = unix_now();
        let genuine = sign(&signer, &claims(now));

        let mut promoted = claims(now);
        promoted.sub = "mallory".into();
        let forged_payload = encode_part(&serde_json::to_value(promoted).expect("claims"));
        let parts: Vec<&str> = genuine.split('.').collect();
        let tampered = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert_eq!(verifier.verify(&tampered), Err(TokenError::BadSignature));

        // Another key that claims our key id.
        let mut impostor = self::signer();
        impostor.key_id = signer.key_id.clone();
        assert_eq!(
            verifier.verify(&sign(&impostor, &claims(now))),
            Err(TokenError::BadSignature)
        );

        // Another key under its own id.
        let stranger = self::signer();
        assert_eq!(
            verifier.verify(&sign(&stranger, &claims(now))),
            Err(TokenError::UnknownKey)
        );
    }

    #[test]
    fn verified_token_is_cached_until_its_key_is_withdrawn() {
        let signer = signer();
        let verifier = verifier(&signer);
        let now = unix_now();
        let token = sign(&signer, &claims(now));
        assert_eq!(verifier.cached(&token), None);

        assert_eq!(verifier.verify(&token), Ok(claims(now)));
        assert_eq!(verifier.cached(&token), Some(claims(now)));

        verifier.keys().replace(Vec::new()).expect("empty set");
        assert_eq!(verifier.cached(&token), None);
        assert_eq!(verifier.verify(&token), Err(TokenError::UnknownKey));
    }

    #[test]
    fn removed_token_is_verified_again() {
        let signer = signer();
        let verifier = verifier(&signer);
        let token = sign(&signer, &claims(unix_now()));
        assert!(verifier.verify(&token).is_ok());

        verifier.cache().remove(&token);
        assert_eq!(verifier.cached(&token), None);
    }

    #[test]
    fn revoked_token_is_rejected_even_when_cached() {
        let signer = signer();
        let revocations = RevocationList::new();
        let verifier = verifier(&signer).with_revocations(revocations.clone());
        let now = unix_now();
        let token = sign(&signer, &claims(now));
        assert!(verifier.verify(&token).is_ok());

        revocations.insert(crate::revocation::RevokedEntry::Token {
            token_id: crate::revocation::digest_of(&claims(now).jti),
            expires_at: now + 900,
        });

        assert!(verifier.cached(&token).is_some());
        assert_eq!(verifier.verify(&token), Err(TokenError::Revoked));
        let other = sign(
            &signer,
            &Claims {
                jti: "id-2".into(),
                ..claims(now)
            },
        );
        assert!(verifier.verify(&other).is_ok());
    }

    #[test]
    fn rejected_tokens_are_not_cached() {
        let signer = signer();
        let verifier = verifier(&signer);
        let genuine = sign(&signer, &claims(unix_now()));
        let parts: Vec<&str> = genuine.split('.').collect();
        let bad_signature = format!("{}.{}.{}", parts[0], parts[1], "A".repeat(86));

        assert_eq!(
            verifier.verify(&bad_signature),
            Err(TokenError::BadSignature)
        );
        assert_eq!(verifier.cached(&bad_signature), None);
        assert!(verifier.cache().is_empty());
    }

    #[test]
    fn zero_capacity_turns_caching_off() {
        let signer = signer();
        let verifier = verifier(&signer).with_cache_capacity(0);
        let token = sign(&signer, &claims(unix_now()));
        assert!(verifier.verify(&token).is_ok());
        assert_eq!(verifier.cached(&token), None);
    }

    #[test]
    fn malformed_shapes_are_rejected() {
        let signer = signer();
        let verifier = verifier(&signer);
        let genuine = sign(&signer, &claims(unix_now()));
        let oversized = format!("{genuine}{}", "A".repeat(MAX_TOKEN_LEN));
        let inputs = [
            String::new(),
            "garbage".into(),
            "a.b".into(),
            "a.b.c.d".into(),
            format!("{genuine}."),
            format!("{genuine}="),
            format!(" {genuine}"),
            genuine.replacen('.', "..", 1),
            "e30.e30.e30".into(),
            oversized,
            "\u{e9}.\u{e9}.\u{e9}".into(),
        ];
        for input in inputs {
            assert_eq!(
                verifier.verify(&input),
                Err(TokenError::Malformed),
                "input {:?}",
                input.get(..40)
            );
        }
    }
}
