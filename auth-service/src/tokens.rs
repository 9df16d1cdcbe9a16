//! Issuing signed access tokens.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Header;
use school_guard::claims::{Audience, Claims};
use school_guard::keys::ALGORITHM;

use crate::clock::unix_now;
use crate::error::Error;
use crate::keys::KeyRing;
use crate::role::Role;

/// The `role` claim of every token issued to a service account.
pub const SERVICE_ROLE: &str = "service";

/// A freshly signed access token. `Debug` prints `[redacted]` in place of the token.
pub struct IssuedToken {
    /// The compact JWT.
    pub access_token: String,
    /// Seconds from issue until the token expires.
    pub expires_in: i64,
    /// The token's `jti` claim, safe to log.
    pub token_id: String,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("access_token", &"[redacted]")
            .field("expires_in", &self.expires_in)
            .field("token_id", &self.token_id)
            .finish()
    }
}

/// Signs EdDSA access tokens with the newest key of a [`KeyRing`].
#[derive(Clone, Debug)]
pub struct TokenIssuer {
    keys: Arc<KeyRing>,
    issuer: String,
    audience: String,
    ttl_secs: i64,
}

impl TokenIssuer {
    /// Creates an issuer whose tokens carry `iss = issuer`, `aud = audience` and live for `ttl`
    /// (whole seconds; longer than `i64::MAX` seconds saturates).
    pub fn new(keys: Arc<KeyRing>, issuer: String, audience: String, ttl: Duration) -> Self {
        Self {
            keys,
            issuer,
            audience,
            ttl_secs: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
        }
    }

    /// Issues a token for the user with `sub`, `role`, `iss`, `aud`, `iat` = `nbf` = now,
    /// `exp` = now + TTL and a random UUID v4 as `jti`.
    pub fn issue(&self, username: &str, role: Role) -> Result<IssuedToken, Error> {
        self.issue_claims(username, role.as_str(), &self.audience)
    }

    /// Issues a token for a service account: `sub` is its client id, `role` is
    /// [`SERVICE_ROLE`] and `aud` is `audience` alone, so that only the service that checks
    /// that audience accepts it.
    pub fn issue_for_service(&self, client_id: &str, audience: &str) -> Result<IssuedToken, Error> {
        self.issue_claims(client_id, SERVICE_ROLE, audience)
    }

    fn issue_claims(
        &self,
        subject: &str,
        role: &str,
        audience: &str,
    ) -> Result<IssuedToken, Error> {
        let now = unix_now();
        let claims = Claims {
            sub: subject.to_owned(),
            role: role.to_owned(),
            iss: self.issuer.clone(),
            aud: Audience::from(audience),
            iat: now,
            nbf: now,
            exp: now.saturating_add(self.ttl_secs),
            jti: uuid::Uuid::new_v4().to_string(),
        };

        let access_token = self.sign(&claims)?;

        Ok(IssuedToken {
            access_token,
            expires_in: self.ttl_secs,
            token_id: claims.jti,
        })
    }

    /// Signs arbitrary claims with the current key, setting the `alg` and `kid` headers.
    /// Tests use it to make expired or foreign-audience tokens that carry a valid signature.
    pub fn sign(&self, claims: &Claims) -> Result<String, Error> {
        let key = self.keys.signing_key();
        let mut header = Header::new(ALGORITHM);
        header.kid = Some(key.key_id().to_owned());

        jsonwebtoken::encode(&header, claims, key.encoding_key()).map_err(Error::TokenSigning)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;
    use school_guard::verify::{TokenVerifier, VerifierConfig};

    async fn issuer_and_verifier(
        dir: &std::path::Path,
    ) -> Result<(TokenIssuer, TokenVerifier), Box<dyn std::error::Error>> {
        let store = SledStore::open(dir).await?;
        let keys = Arc::new(KeyRing::load_or_create(&store).await?);
        let verifier = TokenVerifier::new(
            keys.key_set()?,
            VerifierConfig {
                issuer: "school-auth".into(),
                audience: "school".into(),
                leeway: Duration::from_secs(5),
            },
        );
        let issuer = TokenIssuer::new(
            keys,
            "school-auth".into(),
            "school".into(),
            Duration::from_secs(900),
        );
        Ok((issuer, verifier))
    }

    #[tokio::test]
    async fn issued_token_verifies() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (issuer, verifier) = issuer_and_verifier(dir.path()).await?;

        let issued = issuer.issue("alice", Role::Teacher)?;
        let claims = verifier.verify(&issued.access_token)?;

        assert_eq!(issued.expires_in, 900);
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.role, "teacher");
        assert_eq!(claims.iss, "school-auth");
        assert_eq!(claims.aud, Audience::from("school".to_owned()));
        assert_eq!(claims.exp - claims.iat, 900);
        assert_eq!(claims.nbf, claims.iat);
        assert_eq!(claims.jti, issued.token_id);
        assert!(uuid::Uuid::parse_str(&claims.jti).is_ok());
        Ok(())
    }

    #[tokio::test]
    async fn token_header_names_key() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (issuer, _) = issuer_and_verifier(dir.path()).await?;

        let issued = issuer.issue("alice", Role::Admin)?;
        let header = jsonwebtoken::decode_header(&issued.access_token)?;

        assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
        assert_eq!(
            header.kid.as_deref(),
            Some(issuer.keys.signing_key().key_id())
        );
        Ok(())
    }

    #[tokio::test]
    async fn token_ids_are_unique() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (issuer, _) = issuer_and_verifier(dir.path()).await?;

        let first = issuer.issue("alice", Role::Student)?;
        let second = issuer.issue("alice", Role::Student)?;

        assert_ne!(first.token_id, second.token_id);
        Ok(())
    }

    #[test]
    fn issued_token_debug_is_redacted() {
        let issued = IssuedToken {
            access_token: "eyJ.secret.sig".into(),
            expires_in: 900,
            token_id: "id".into(),
        };

        assert!(!format!("{issued:?}").contains("secret"));
    }
}
