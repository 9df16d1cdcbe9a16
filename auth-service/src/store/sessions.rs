//! Login sessions and the revocation list: the [`SessionStore`] trait and its sled implementation.
//!
//! A session is a family of refresh tokens, each one replacing the last at `RefreshToken`.
//! Refresh tokens are stored only as SHA-256 digests: they are 256-bit random values, so a
//! digest cannot be reversed by guessing, and a stolen database yields no usable token.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sled::Transactional as _;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::SledStore;
use super::sled_backend::{corrupt, storage};
use crate::error::Error;

/// The record layout version this code writes and reads.
const RECORD_VERSION: u32 = 1;

const REFRESH_TOKENS_TREE: &str = "session_refresh_tokens";
const FAMILIES_TREE: &str = "session_families";
const ACCESS_TOKENS_TREE: &str = "session_access_tokens";
const REVOKED_TOKENS_TREE: &str = "revoked_tokens";
const REVOKED_SUBJECTS_TREE: &str = "revoked_subjects";
/// The live sessions of each user, keyed by username, a zero byte and the session id. Session
/// ids are UUIDv7, which sort by creation time, so a user's sessions are listed oldest first.
/// Sessions started before this index existed are not in it; they end when they expire.
const SUBJECT_SESSIONS_TREE: &str = "session_subjects";

/// Returns the key of a session in [`SUBJECT_SESSIONS_TREE`].
fn subject_session_key(subject: &str, family_id: &str) -> Vec<u8> {
    let mut key = subject_prefix(subject);
    key.extend_from_slice(family_id.as_bytes());
    key
}

/// Returns the key prefix of a user's sessions in [`SUBJECT_SESSIONS_TREE`]. Usernames contain
/// no zero byte, so one user's prefix never starts another's keys.
fn subject_prefix(subject: &str) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(subject.len() + 1);
    prefix.extend_from_slice(subject.as_bytes());
    prefix.push(0);
    prefix
}

/// The SHA-256 digest of a refresh token, its storage key.
pub type RefreshDigest = [u8; 32];

/// An access token issued within a session, remembered so that revoking the session can revoke
/// the token too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessTokenRef {
    /// The token's `jti` claim.
    pub token_id: String,
    /// The token's `exp` claim.
    pub expires_at: i64,
}

/// A new refresh token and the access token issued with it.
#[derive(Clone, Debug)]
pub struct NewRefreshToken {
    /// The digest of the refresh token.
    pub digest: RefreshDigest,
    /// When the refresh token expires, in seconds since the Unix epoch.
    pub expires_at: i64,
    /// The access token issued with it.
    pub access_token: AccessTokenRef,
}

/// The stored state of a refresh token, as read before a rotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshTokenState {
    /// The session the token belongs to.
    pub family_id: String,
    /// The username of the session.
    pub subject: String,
    /// When the token expires, in seconds since the Unix epoch.
    pub expires_at: i64,
    /// Whether the token was already exchanged.
    pub used: bool,
}

/// The outcome of [`SessionStore::rotate_refresh_token`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rotation {
    /// The presented token is now used and the new one stored.
    Rotated,
    /// No live token has this digest: it is unknown, expired or its session ended.
    Invalid,
    /// The token was used before, so it has leaked; the caller must revoke the session.
    Reused,
}

/// A persisted revocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoredRevocation {
    /// One access token, by `jti`.
    Token {
        /// The `jti` claim.
        token_id: String,
        /// When the entry may be dropped, in seconds since the Unix epoch.
        expires_at: i64,
    },
    /// Every token of a subject issued at or before a time.
    Subject {
        /// The username.
        subject: String,
        /// The latest `iat` revoked.
        issued_at_or_before: i64,
        /// When the entry may be dropped, in seconds since the Unix epoch.
        expires_at: i64,
    },
}

/// The number of records [`SessionStore::purge_expired`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PurgeCounts {
    /// Refresh tokens, used or not.
    pub refresh_tokens: usize,
    /// Sessions.
    pub sessions: usize,
    /// Entries of the index from access token to session.
    pub access_tokens: usize,
    /// Revocation list entries.
    pub revocations: usize,
}

/// Persistent sessions, refresh tokens and revocations. Every write returns after it is durable.
#[tonic::async_trait]
pub trait SessionStore: Send + Sync {
    /// Stores a new session of `subject` with its first refresh token.
    async fn create_session(
        &self,
        family_id: &str,
        subject: &str,
        first: &NewRefreshToken,
    ) -> Result<(), Error>;

    /// Returns the state of the refresh token with this digest, if it is stored.
    async fn refresh_token(
        &self,
        digest: &RefreshDigest,
    ) -> Result<Option<RefreshTokenState>, Error>;

    /// Marks the token `presented` used and stores `next` in its session, atomically, so that
    /// two concurrent exchanges of one token cannot both succeed.
    async fn rotate_refresh_token(
        &self,
        presented: &RefreshDigest,
        next: &NewRefreshToken,
        now: i64,
    ) -> Result<Rotation, Error>;

    /// Returns the session an access token was issued in, if any.
    async fn session_of_access_token(&self, token_id: &str) -> Result<Option<String>, Error>;

    /// Ends a session, so that none of its refresh tokens works again, and returns the access
    /// tokens issued in it that have not expired at `now`. Ending an ended or unknown session
    /// returns no tokens.
    async fn end_session(&self, family_id: &str, now: i64) -> Result<Vec<AccessTokenRef>, Error>;

    /// Ends every session of `subject` and returns how many were live.
    async fn end_sessions_of(&self, subject: &str, now: i64) -> Result<usize, Error>;

    /// Returns the ids of `subject`'s live sessions beyond the `keep` newest ones, oldest
    /// first. The session `newest` counts as the newest whatever its id, and is never listed.
    async fn sessions_beyond(
        &self,
        subject: &str,
        keep: usize,
        newest: &str,
    ) -> Result<Vec<String>, Error>;

    /// Persists revocations, keeping the wider of two entries for one subject.
    async fn insert_revocations(&self, revocations: &[StoredRevocation]) -> Result<(), Error>;

    /// Returns every persisted revocation, expired ones not yet purged included.
    async fn revocations(&self) -> Result<Vec<StoredRevocation>, Error>;

    /// Removes refresh tokens, sessions and revocations that expired before `now`.
    async fn purge_expired(&self, now: i64) -> Result<PurgeCounts, Error>;
}

#[derive(Serialize, Deserialize)]
struct RefreshTokenRecordV1 {
    version: u32,
    family_id: String,
    subject: String,
    expires_at: i64,
    used: bool,
}

#[derive(Serialize, Deserialize)]
struct FamilyRecordV1 {
    version: u32,
    subject: String,
    /// The expiry of the newest refresh token; the session is purged after it.
    expires_at: i64,
    ended: bool,
    access_tokens: Vec<AccessTokenRef>,
}

#[derive(Serialize, Deserialize)]
struct AccessTokenRecordV1 {
    version: u32,
    family_id: String,
    expires_at: i64,
}

#[derive(Serialize, Deserialize)]
struct RevokedTokenRecordV1 {
    version: u32,
    expires_at: i64,
}

#[derive(Serialize, Deserialize)]
struct RevokedSubjectRecordV1 {
    version: u32,
    issued_at_or_before: i64,
    expires_at: i64,
}

/// The records that carry an expiry, so that one purge loop serves every tree.
trait Expiring: DeserializeOwned {
    fn version(&self) -> u32;
    fn expires_at(&self) -> i64;
}

macro_rules! expiring {
    ($($record:ty),*) => {$(
        impl Expiring for $record {
            fn version(&self) -> u32 {
                self.version
            }
            fn expires_at(&self) -> i64 {
                self.expires_at
            }
        }
    )*};
}
expiring!(
    RefreshTokenRecordV1,
    FamilyRecordV1,
    AccessTokenRecordV1,
    RevokedTokenRecordV1,
    RevokedSubjectRecordV1
);

fn encode<T: Serialize>(key: &str, record: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(record).map_err(|error| corrupt(key, error))
}

fn decode<T: Expiring>(key: &str, bytes: &[u8]) -> Result<T, Error> {
    let record: T = serde_json::from_slice(bytes).map_err(|error| corrupt(key, error))?;
    if record.version() != RECORD_VERSION {
        return Err(corrupt(
            key,
            format!("unsupported record version {}", record.version()),
        ));
    }
    Ok(record)
}

/// Names a refresh token record in errors by the start of its digest, never the token.
fn digest_label(digest: &RefreshDigest) -> String {
    let hex: String = digest[..4]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("refresh token digest {hex}…")
}

/// Turns an error raised inside a transaction, or the transaction's own storage failure, into
/// an [`Error`].
fn transaction_error(operation: &'static str) -> impl FnOnce(TransactionError<Error>) -> Error {
    move |error| match error {
        TransactionError::Abort(error) => error,
        TransactionError::Storage(source) => Error::Storage { operation, source },
    }
}

impl SledStore {
    fn session_tree(&self, name: &'static str) -> Result<sled::Tree, Error> {
        self.db()
            .open_tree(name)
            .map_err(storage("open session tree"))
    }

    /// Removes the entries of [`SUBJECT_SESSIONS_TREE`] whose session was purged, returning how
    /// many. Ended sessions leave the index when they end.
    fn purge_subject_sessions(&self) -> Result<usize, Error> {
        let families = self.session_tree(FAMILIES_TREE)?;
        let subject_sessions = self.session_tree(SUBJECT_SESSIONS_TREE)?;
        let mut removed = 0;
        for item in subject_sessions.iter() {
            let (key, _) = item.map_err(storage("read sessions of a user"))?;
            let family_id = key.splitn(2, |byte| *byte == 0).nth(1).unwrap_or_default();
            if !families
                .contains_key(family_id)
                .map_err(storage("read session"))?
            {
                subject_sessions
                    .remove(&key)
                    .map_err(storage("purge session index entry"))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes the records of `tree` that expired before `now`, returning how many.
    fn purge_tree<T: Expiring>(&self, name: &'static str, now: i64) -> Result<usize, Error> {
        let tree = self.session_tree(name)?;
        let mut removed = 0;
        for item in tree.iter() {
            let (key, bytes) = item.map_err(storage("read session record"))?;
            let expired = match decode::<T>(&String::from_utf8_lossy(&key), &bytes) {
                Ok(record) => record.expires_at() < now,
                Err(error) => {
                    // An unreadable record can never be used again, so it is safe to drop.
                    tracing::warn!(tree = name, error = %error.report(), "dropping unreadable record");
                    true
                }
            };
            if expired {
                tree.remove(&key).map_err(storage("purge session record"))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[tonic::async_trait]
impl SessionStore for SledStore {
    async fn create_session(
        &self,
        family_id: &str,
        subject: &str,
        first: &NewRefreshToken,
    ) -> Result<(), Error> {
        let refresh = encode(
            family_id,
            &RefreshTokenRecordV1 {
                version: RECORD_VERSION,
                family_id: family_id.to_owned(),
                subject: subject.to_owned(),
                expires_at: first.expires_at,
                used: false,
            },
        )?;
        let family = encode(
            family_id,
            &FamilyRecordV1 {
                version: RECORD_VERSION,
                subject: subject.to_owned(),
                expires_at: first.expires_at,
                ended: false,
                access_tokens: vec![first.access_token.clone()],
            },
        )?;
        let access = encode(
            family_id,
            &AccessTokenRecordV1 {
                version: RECORD_VERSION,
                family_id: family_id.to_owned(),
                expires_at: first.access_token.expires_at,
            },
        )?;

        let refresh_tokens = self.session_tree(REFRESH_TOKENS_TREE)?;
        let families = self.session_tree(FAMILIES_TREE)?;
        let access_tokens = self.session_tree(ACCESS_TOKENS_TREE)?;
        let subject_sessions = self.session_tree(SUBJECT_SESSIONS_TREE)?;
        let index_key = subject_session_key(subject, family_id);
        (
            &refresh_tokens,
            &families,
            &access_tokens,
            &subject_sessions,
        )
            .transaction(
                |(refresh_tokens, families, access_tokens, subject_sessions)| {
                    refresh_tokens.insert(&first.digest[..], refresh.as_slice())?;
                    families.insert(family_id.as_bytes(), family.as_slice())?;
                    access_tokens
                        .insert(first.access_token.token_id.as_bytes(), access.as_slice())?;
                    subject_sessions.insert(index_key.as_slice(), &[])?;
                    Ok::<(), ConflictableTransactionError<Error>>(())
                },
            )
            .map_err(transaction_error("create session"))?;
        self.flush().await
    }

    async fn refresh_token(
        &self,
        digest: &RefreshDigest,
    ) -> Result<Option<RefreshTokenState>, Error> {
        let tree = self.session_tree(REFRESH_TOKENS_TREE)?;
        let Some(bytes) = tree.get(digest).map_err(storage("read refresh token"))? else {
            return Ok(None);
        };
        let record: RefreshTokenRecordV1 = decode(&digest_label(digest), &bytes)?;
        Ok(Some(RefreshTokenState {
            family_id: record.family_id,
            subject: record.subject,
            expires_at: record.expires_at,
            used: record.used,
        }))
    }

    async fn rotate_refresh_token(
        &self,
        presented: &RefreshDigest,
        next: &NewRefreshToken,
        now: i64,
    ) -> Result<Rotation, Error> {
        let refresh_tokens = self.session_tree(REFRESH_TOKENS_TREE)?;
        let families = self.session_tree(FAMILIES_TREE)?;
        let access_tokens = self.session_tree(ACCESS_TOKENS_TREE)?;
        let label = digest_label(presented);

        let rotation = (&refresh_tokens, &families, &access_tokens)
            .transaction(|(refresh_tokens, families, access_tokens)| {
                let abort = ConflictableTransactionError::Abort;
                let Some(bytes) = refresh_tokens.get(presented)? else {
                    return Ok(Rotation::Invalid);
                };
                let mut token: RefreshTokenRecordV1 = decode(&label, &bytes).map_err(abort)?;
                if token.used {
                    return Ok(Rotation::Reused);
                }
                if token.expires_at < now {
                    return Ok(Rotation::Invalid);
                }
                let Some(bytes) = families.get(token.family_id.as_bytes())? else {
                    return Ok(Rotation::Invalid);
                };
                let mut family: FamilyRecordV1 = decode(&token.family_id, &bytes).map_err(abort)?;
                if family.ended {
                    return Ok(Rotation::Invalid);
                }

                token.used = true;
                refresh_tokens.insert(&presented[..], encode(&label, &token).map_err(abort)?)?;
                let successor = RefreshTokenRecordV1 {
                    version: RECORD_VERSION,
                    family_id: token.family_id.clone(),
                    subject: token.subject.clone(),
                    expires_at: next.expires_at,
                    used: false,
                };
                refresh_tokens
                    .insert(&next.digest[..], encode(&label, &successor).map_err(abort)?)?;

                family
                    .access_tokens
                    .retain(|access| access.expires_at >= now);
                family.access_tokens.push(next.access_token.clone());
                family.expires_at = family.expires_at.max(next.expires_at);
                families.insert(
                    token.family_id.as_bytes(),
                    encode(&token.family_id, &family).map_err(abort)?,
                )?;
                let access = AccessTokenRecordV1 {
                    version: RECORD_VERSION,
                    family_id: token.family_id.clone(),
                    expires_at: next.access_token.expires_at,
                };
                access_tokens.insert(
                    next.access_token.token_id.as_bytes(),
                    encode(&token.family_id, &access).map_err(abort)?,
                )?;
                Ok(Rotation::Rotated)
            })
            .map_err(transaction_error("rotate refresh token"))?;

        if rotation == Rotation::Rotated {
            self.flush().await?;
        }
        Ok(rotation)
    }

    async fn session_of_access_token(&self, token_id: &str) -> Result<Option<String>, Error> {
        let tree = self.session_tree(ACCESS_TOKENS_TREE)?;
        let Some(bytes) = tree.get(token_id).map_err(storage("read access token"))? else {
            return Ok(None);
        };
        let record: AccessTokenRecordV1 = decode(token_id, &bytes)?;
        Ok(Some(record.family_id))
    }

    async fn end_session(&self, family_id: &str, now: i64) -> Result<Vec<AccessTokenRef>, Error> {
        let families = self.session_tree(FAMILIES_TREE)?;
        let subject_sessions = self.session_tree(SUBJECT_SESSIONS_TREE)?;
        let live = (&families, &subject_sessions)
            .transaction(|(families, subject_sessions)| {
                let abort = ConflictableTransactionError::Abort;
                let Some(bytes) = families.get(family_id.as_bytes())? else {
                    return Ok(Vec::new());
                };
                let mut family: FamilyRecordV1 = decode(family_id, &bytes).map_err(abort)?;
                if family.ended {
                    return Ok(Vec::new());
                }
                family.ended = true;
                subject_sessions.remove(subject_session_key(&family.subject, family_id))?;
                let live: Vec<AccessTokenRef> = family
                    .access_tokens
                    .iter()
                    .filter(|access| access.expires_at >= now)
                    .cloned()
                    .collect();
                families.insert(
                    family_id.as_bytes(),
                    encode(family_id, &family).map_err(abort)?,
                )?;
                Ok(live)
            })
            .map_err(transaction_error("end session"))?;
        self.flush().await?;
        Ok(live)
    }

    async fn end_sessions_of(&self, subject: &str, now: i64) -> Result<usize, Error> {
        // NOTE: a scan of every session, because sessions started before the per-user index
        // existed are not in it. Sessions are purged after their refresh token expires, which
        // bounds the scan.
        let families = self.session_tree(FAMILIES_TREE)?;
        let mut owned = Vec::new();
        for item in families.iter() {
            let (key, bytes) = item.map_err(storage("read session"))?;
            let family_id = String::from_utf8_lossy(&key).into_owned();
            let family: FamilyRecordV1 = decode(&family_id, &bytes)?;
            if family.subject == subject && !family.ended {
                owned.push(family_id);
            }
        }
        for family_id in &owned {
            self.end_session(family_id, now).await?;
        }
        Ok(owned.len())
    }

    async fn sessions_beyond(
        &self,
        subject: &str,
        keep: usize,
        newest: &str,
    ) -> Result<Vec<String>, Error> {
        let subject_sessions = self.session_tree(SUBJECT_SESSIONS_TREE)?;
        let prefix = subject_prefix(subject);
        let mut ids = Vec::new();
        let mut total = 0usize;
        for item in subject_sessions.scan_prefix(&prefix) {
            let (key, _) = item.map_err(storage("read sessions of a user"))?;
            let id = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            total += 1;
            if id != newest {
                ids.push(id);
            }
        }
        let beyond = total.saturating_sub(keep).min(ids.len());
        ids.truncate(beyond);
        Ok(ids)
    }

    async fn insert_revocations(&self, revocations: &[StoredRevocation]) -> Result<(), Error> {
        let tokens = self.session_tree(REVOKED_TOKENS_TREE)?;
        let subjects = self.session_tree(REVOKED_SUBJECTS_TREE)?;
        (&tokens, &subjects)
            .transaction(|(tokens, subjects)| {
                let abort = ConflictableTransactionError::Abort;
                for revocation in revocations {
                    match revocation {
                        StoredRevocation::Token {
                            token_id,
                            expires_at,
                        } => {
                            let record = RevokedTokenRecordV1 {
                                version: RECORD_VERSION,
                                expires_at: *expires_at,
                            };
                            tokens.insert(
                                token_id.as_bytes(),
                                encode(token_id, &record).map_err(abort)?,
                            )?;
                        }
                        StoredRevocation::Subject {
                            subject,
                            issued_at_or_before,
                            expires_at,
                        } => {
                            let mut record = RevokedSubjectRecordV1 {
                                version: RECORD_VERSION,
                                issued_at_or_before: *issued_at_or_before,
                                expires_at: *expires_at,
                            };
                            if let Some(bytes) = subjects.get(subject.as_bytes())? {
                                let old: RevokedSubjectRecordV1 =
                                    decode(subject, &bytes).map_err(abort)?;
                                record.issued_at_or_before =
                                    record.issued_at_or_before.max(old.issued_at_or_before);
                                record.expires_at = record.expires_at.max(old.expires_at);
                            }
                            subjects.insert(
                                subject.as_bytes(),
                                encode(subject, &record).map_err(abort)?,
                            )?;
                        }
                    }
                }
                Ok(())
            })
            .map_err(transaction_error("store revocations"))?;
        self.flush().await
    }

    async fn revocations(&self) -> Result<Vec<StoredRevocation>, Error> {
        let mut all = Vec::new();
        for item in self.session_tree(REVOKED_TOKENS_TREE)?.iter() {
            let (key, bytes) = item.map_err(storage("read revoked token"))?;
            let token_id = String::from_utf8_lossy(&key).into_owned();
            let record: RevokedTokenRecordV1 = decode(&token_id, &bytes)?;
            all.push(StoredRevocation::Token {
                token_id,
                expires_at: record.expires_at,
            });
        }
        for item in self.session_tree(REVOKED_SUBJECTS_TREE)?.iter() {
            let (key, bytes) = item.map_err(storage("read revoked subject"))?;
            let subject = String::from_utf8_lossy(&key).into_owned();
            let record: RevokedSubjectRecordV1 = decode(&subject, &bytes)?;
            all.push(StoredRevocation::Subject {
                subject,
                issued_at_or_before: record.issued_at_or_before,
                expires_at: record.expires_at,
            });
        }
        Ok(all)
    }

    async fn purge_expired(&self, now: i64) -> Result<PurgeCounts, Error> {
        let counts = PurgeCounts {
            refresh_tokens: self.purge_tree::<RefreshTokenRecordV1>(REFRESH_TOKENS_TREE, now)?,
            sessions: self.purge_tree::<FamilyRecordV1>(FAMILIES_TREE, now)?,
            access_tokens: self.purge_tree::<AccessTokenRecordV1>(ACCESS_TOKENS_TREE, now)?,
            revocations: self.purge_tree::<RevokedTokenRecordV1>(REVOKED_TOKENS_TREE, now)?
                + self.purge_tree::<RevokedSubjectRecordV1>(REVOKED_SUBJECTS_TREE, now)?,
        };
        let index_entries = self.purge_subject_sessions()?;
        if counts != PurgeCounts::default() || index_entries > 0 {
            self.flush().await?;
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_token(seed: u8, expires_at: i64) -> NewRefreshToken {
        NewRefreshToken {
            digest: [seed; 32],
            expires_at,
            access_token: AccessTokenRef {
                token_id: format!("token-{seed}"),
                expires_at,
            },
        }
    }

    /// Starts sessions `ids` of `subject` in order, each expiring at `expires_at`.
    async fn start(
        store: &SledStore,
        subject: &str,
        ids: &[(&str, u8)],
        expires_at: i64,
    ) -> Result<(), Error> {
        for &(id, seed) in ids {
            store
                .create_session(id, subject, &first_token(seed, expires_at))
                .await?;
        }
        Ok(())
    }

    #[tokio::test]
    async fn sessions_beyond_lists_a_users_oldest() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = SledStore::open(dir.path()).await?;
        // Ids that sort in creation order, as UUIDv7 ids do.
        start(&store, "tom", &[("s1", 1), ("s2", 2), ("s3", 3)], 100).await?;
        // A username that extends another must not be read as the same user.
        start(&store, "tomas", &[("s0", 4)], 100).await?;

        assert_eq!(store.sessions_beyond("tom", 1, "s3").await?, ["s1", "s2"]);
        assert_eq!(
            store.sessions_beyond("tom", 3, "s3").await?,
            Vec::<String>::new()
        );
        assert_eq!(store.sessions_beyond("tomas", 0, "").await?, ["s0"]);
        assert_eq!(
            store.sessions_beyond("to", 0, "").await?,
            Vec::<String>::new()
        );
        // A session whose id sorts first, after the clock was set back, is still the newest.
        assert_eq!(store.sessions_beyond("tom", 1, "s1").await?, ["s2", "s3"]);

        store.end_session("s1", 0).await?;
        assert_eq!(
            store.sessions_beyond("tom", 0, "").await?,
            ["s2", "s3"],
            "an ended session leaves the index"
        );
        Ok(())
    }

    #[tokio::test]
    async fn purge_removes_expired_sessions_from_the_index()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = SledStore::open(dir.path()).await?;
        start(&store, "tom", &[("old", 1)], 10).await?;
        start(&store, "tom", &[("new", 2)], 1_000).await?;

        let counts = store.purge_expired(500).await?;

        assert_eq!(counts.sessions, 1);
        assert_eq!(store.sessions_beyond("tom", 0, "").await?, ["new"]);
        Ok(())
    }
}
