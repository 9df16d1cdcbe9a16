//! Storage interfaces for users and signing keys, and the sled backend.
//!
//! Handlers use only the [`UserStore`], [`AccountStore`] and [`KeyStore`] traits, so another
//! backend can be added without touching them. Every write method returns only after the write
//! is durable.

mod accounts;
mod sessions;
mod sled_backend;
mod throttle;

use std::fmt;

use zeroize::Zeroizing;

use crate::error::Error;
use crate::role::Role;

pub use accounts::{AccountStore, ServiceAccountRecord, UserChange};
pub use sessions::{
    AccessTokenRef, NewRefreshToken, PurgeCounts, RefreshDigest, RefreshTokenState, Rotation,
    SessionStore, StoredRevocation,
};
pub use sled_backend::SledStore;
pub use throttle::{SledThrottleStore, ThrottleRecord, ThrottleStore};

/// One user account.
#[derive(Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// The unique account name.
    pub username: String,
    /// The Argon2id hash of the password in PHC string form.
    pub password_hash: String,
    /// The role copied into issued tokens.
    pub role: Role,
    /// Whether login is rejected.
    pub disabled: bool,
    /// Creation time in seconds since the Unix epoch.
    pub created_at: i64,
}

impl fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserRecord")
            .field("username", &self.username)
            .field("password_hash", &"[redacted]")
            .field("role", &self.role)
            .field("disabled", &self.disabled)
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// One Ed25519 signing key pair as stored.
#[derive(Clone)]
pub struct StoredSigningKey {
    /// The RFC 7638 thumbprint of the public key, used as the `kid` header.
    pub key_id: String,
    /// Creation time in seconds since the Unix epoch; the newest key signs.
    pub created_at: i64,
    /// The key pair as a PKCS#8 v2 document (RFC 5958), zeroized on drop.
    pub pkcs8: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for StoredSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredSigningKey")
            .field("key_id", &self.key_id)
            .field("created_at", &self.created_at)
            .field("pkcs8", &"[redacted]")
            .finish()
    }
}

/// Persistent user accounts.
#[tonic::async_trait]
pub trait UserStore: Send + Sync {
    /// Returns the user with this name, if any.
    async fn get(&self, username: &str) -> Result<Option<UserRecord>, Error>;

    /// Stores a new user, failing with [`Error::UserExists`] if the name is taken.
    async fn insert_new(&self, user: &UserRecord) -> Result<(), Error>;

    /// Sets the disabled flag, failing with [`Error::UserNotFound`] for an unknown name.
    async fn set_disabled(&self, username: &str, disabled: bool) -> Result<(), Error>;

    /// Returns every user, ordered by username bytes.
    async fn list(&self) -> Result<Vec<UserRecord>, Error>;
}

/// Persistent token signing keys.
#[tonic::async_trait]
pub trait KeyStore: Send + Sync {
    /// Returns every stored signing key, in no particular order.
    async fn signing_keys(&self) -> Result<Vec<StoredSigningKey>, Error>;

    /// Stores a signing key under its key id, replacing any key with the same id.
    async fn insert_signing_key(&self, key: &StoredSigningKey) -> Result<(), Error>;
}
