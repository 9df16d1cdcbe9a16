//! The sled implementation of [`UserStore`] and [`KeyStore`].
//!
//! Records are JSON with a `version` field, so a later release can tell old layouts apart.

use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use school_durable::{GroupCommit, OpenError};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::{KeyStore, StoredSigningKey, UserRecord, UserStore};
use crate::error::Error;
use crate::role::Role;

/// The record layout version this code writes and reads.
const RECORD_VERSION: u32 = 1;

const USERS_TREE: &str = "users";
const SIGNING_KEYS_TREE: &str = "signing_keys";

/// A sled database in `<data dir>/sled`, holding users and signing keys.
///
/// Every write returns after a group commit has flushed it to disk, so concurrent writers share
/// one flush.
///
/// sled takes an exclusive file lock, so a second process (or a second [`SledStore`] in the same
/// process) on the same directory fails with [`Error::DataDirLocked`]. Cloning shares the
/// database.
#[derive(Clone, Debug)]
pub struct SledStore {
    dir: PathBuf,
    db: sled::Db,
    committer: GroupCommit,
    users: sled::Tree,
    signing_keys: sled::Tree,
}

#[derive(Serialize, Deserialize)]
struct UserRecordV1 {
    version: u32,
    username: String,
    password_hash: String,
    role: Role,
    disabled: bool,
    created_at: i64,
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct SigningKeyRecordV1 {
    version: u32,
    key_id: String,
    created_at: i64,
    /// The PKCS#8 document in standard base64.
    pkcs8: String,
}

impl SledStore {
    /// Opens or creates the database under `dir`, creating `dir` with mode 0700 if missing.
    pub async fn open(dir: &Path) -> Result<Self, Error> {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(dir))
            .await
            .map_err(Error::Task)?
    }

    fn open_blocking(dir: PathBuf) -> Result<Self, Error> {
        // The database contains the private signing key, so only the owner may read the directory.
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| Error::OpenDataDir {
                dir: dir.clone(),
                source,
            })?;

        let db = school_durable::open(&dir.join("sled")).map_err(|error| match error {
            OpenError::Locked { .. } => Error::DataDirLocked { dir: dir.clone() },
            OpenError::Io { source, .. } => Error::OpenDataDir {
                dir: dir.clone(),
                source,
            },
            damaged @ OpenError::Damaged { .. } => Error::OpenDataDir {
                dir: dir.clone(),
                source: std::io::Error::other(damaged),
            },
        })?;
        let committer = GroupCommit::start(db.clone()).map_err(|source| Error::Io {
            operation: "start the database flush thread",
            source,
        })?;

        let users = db
            .open_tree(USERS_TREE)
            .map_err(storage("open users tree"))?;
        let signing_keys = db
            .open_tree(SIGNING_KEYS_TREE)
            .map_err(storage("open signing keys tree"))?;

        Ok(Self {
            dir,
            db,
            committer,
            users,
            signing_keys,
        })
    }

    /// Returns the database, for the account operations in `store::accounts`.
    pub(super) fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Returns the tree of users, for the account operations in `store::accounts`.
    pub(super) fn users_tree(&self) -> &sled::Tree {
        &self.users
    }

    /// Returns the data directory this store was opened in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes every pending change to disk, sharing the flush with concurrent writers.
    pub async fn flush(&self) -> Result<(), Error> {
        self.committer
            .commit()
            .await
            .map_err(|error| Error::Storage {
                operation: "flush database",
                source: error.into(),
            })
    }

    /// Returns the counters of the group commit, for metrics.
    pub fn commit_stats(&self) -> &std::sync::Arc<school_durable::CommitStats> {
        self.committer.stats()
    }

    /// Returns the size of the database files on disk in bytes, for metrics.
    pub fn size_on_disk(&self) -> Result<u64, Error> {
        self.db
            .size_on_disk()
            .map_err(storage("measure database size"))
    }
}

#[tonic::async_trait]
impl UserStore for SledStore {
    async fn get(&self, username: &str) -> Result<Option<UserRecord>, Error> {
        let Some(bytes) = self.users.get(username).map_err(storage("read user"))? else {
            return Ok(None);
        };
        decode_user(username, &bytes).map(Some)
    }

    async fn insert_new(&self, user: &UserRecord) -> Result<(), Error> {
        let bytes = encode_user(user)?;

        let swapped = self
            .users
            .compare_and_swap(&user.username, None::<&[u8]>, Some(bytes))
            .map_err(storage("insert user"))?;
        if swapped.is_err() {
            return Err(Error::UserExists(user.username.clone()));
        }

        self.flush().await
    }

    async fn set_disabled(&self, username: &str, disabled: bool) -> Result<(), Error> {
        // Compare-and-swap retries when another writer changed the record in between.
        loop {
            let Some(current) = self.users.get(username).map_err(storage("read user"))? else {
                return Err(Error::UserNotFound(username.to_owned()));
            };
            let mut user = decode_user(username, &current)?;
            user.disabled = disabled;
            let updated = encode_user(&user)?;

            let swapped = self
                .users
                .compare_and_swap(username, Some(&current), Some(updated))
                .map_err(storage("update user"))?;
            if swapped.is_ok() {
                break;
            }
        }

        self.flush().await
    }

    async fn list(&self) -> Result<Vec<UserRecord>, Error> {
        let mut users = Vec::new();
        for entry in self.users.iter() {
            let (key, bytes) = entry.map_err(storage("list users"))?;
            users.push(decode_user(&String::from_utf8_lossy(&key), &bytes)?);
        }
        Ok(users)
    }
}

#[tonic::async_trait]
impl KeyStore for SledStore {
    async fn signing_keys(&self) -> Result<Vec<StoredSigningKey>, Error> {
        let mut keys = Vec::new();
        for entry in self.signing_keys.iter() {
            let (key, bytes) = entry.map_err(storage("read signing keys"))?;
            keys.push(decode_signing_key(&String::from_utf8_lossy(&key), &bytes)?);
        }
        Ok(keys)
    }

    async fn insert_signing_key(&self, key: &StoredSigningKey) -> Result<(), Error> {
        let record = SigningKeyRecordV1 {
            version: RECORD_VERSION,
            key_id: key.key_id.clone(),
            created_at: key.created_at,
            pkcs8: BASE64.encode(key.pkcs8.as_slice()),
        };
        let bytes =
            Zeroizing::new(
                serde_json::to_vec(&record).map_err(|source| Error::CorruptRecord {
                    key: key.key_id.clone(),
                    source: source.into(),
                })?,
            );

        // TODO: the private key is stored unencrypted; only the 0700 data directory protects it.
        self.signing_keys
            .insert(&key.key_id, bytes.as_slice())
            .map_err(storage("insert signing key"))?;

        self.flush().await
    }
}

pub(super) fn storage(operation: &'static str) -> impl FnOnce(sled::Error) -> Error {
    move |source| Error::Storage { operation, source }
}

pub(super) fn corrupt(
    key: &str,
    reason: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> Error {
    Error::CorruptRecord {
        key: key.to_owned(),
        source: reason.into(),
    }
}

pub(super) fn encode_user(user: &UserRecord) -> Result<Vec<u8>, Error> {
    let record = UserRecordV1 {
        version: RECORD_VERSION,
        username: user.username.clone(),
        password_hash: user.password_hash.clone(),
        role: user.role,
        disabled: user.disabled,
        created_at: user.created_at,
    };
    serde_json::to_vec(&record).map_err(|error| corrupt(&user.username, error))
}

pub(super) fn decode_user(key: &str, bytes: &[u8]) -> Result<UserRecord, Error> {
    let record: UserRecordV1 =
        serde_json::from_slice(bytes).map_err(|error| corrupt(key, error))?;
    if record.version != RECORD_VERSION {
        return Err(corrupt(
            key,
            format!("unsupported record version {}", record.version),
        ));
    }
    Ok(UserRecord {
        username: record.username,
        password_hash: record.password_hash,
        role: record.role,
        disabled: record.disabled,
        created_at: record.created_at,
    })
}

fn decode_signing_key(key: &str, bytes: &[u8]) -> Result<StoredSigningKey, Error> {
    let record: SigningKeyRecordV1 =
        serde_json::from_slice(bytes).map_err(|error| corrupt(key, error))?;
    if record.version != RECORD_VERSION {
        return Err(corrupt(
            key,
            format!("unsupported record version {}", record.version),
        ));
    }
    let pkcs8 = BASE64
        .decode(record.pkcs8.as_bytes())
        .map_err(|error| corrupt(key, error))?;
    Ok(StoredSigningKey {
        key_id: record.key_id.clone(),
        created_at: record.created_at,
        pkcs8: Zeroizing::new(pkcs8),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> UserRecord {
        UserRecord {
            username: "alice".into(),
            password_hash: "$argon2id$placeholder".into(),
            role: Role::Teacher,
            disabled: false,
            created_at: 1_700_000_000,
        }
    }

    #[tokio::test]
    async fn insert_then_get() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = SledStore::open(dir.path()).await?;

        store.insert_new(&alice()).await?;

        assert_eq!(store.get("alice").await?, Some(alice()));
        assert_eq!(store.get("bob").await?, None);
        Ok(())
    }

    #[tokio::test]
    async fn insert_existing_name_fails() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = SledStore::open(dir.path()).await?;
        store.insert_new(&alice()).await?;

        let again = store.insert_new(&alice()).await;

        assert!(matches!(again, Err(Error::UserExists(name)) if name == "alice"));
        Ok(())
    }

    #[tokio::test]
    async fn set_disabled_updates_flag() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = SledStore::open(dir.path()).await?;
        store.insert_new(&alice()).await?;

        store.set_disabled("alice", true).await?;

        let stored = store.get("alice").await?;
        assert_eq!(stored.map(|user| user.disabled), Some(true));
        let missing = store.set_disabled("bob", true).await;
        assert!(matches!(missing, Err(Error::UserNotFound(_))));
        Ok(())
    }

    #[tokio::test]
    async fn records_survive_reopen() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let key = StoredSigningKey {
            key_id: "kid-1".into(),
            created_at: 5,
            pkcs8: Zeroizing::new(vec![1, 2, 3]),
        };
        {
            let store = SledStore::open(dir.path()).await?;
            store.insert_new(&alice()).await?;
            store.insert_signing_key(&key).await?;
        }

        let store = SledStore::open(dir.path()).await?;

        assert_eq!(store.list().await?, vec![alice()]);
        let keys = store.signing_keys().await?;
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].key_id, "kid-1");
        assert_eq!(keys[0].pkcs8.as_slice(), &[1, 2, 3]);
        Ok(())
    }

    #[tokio::test]
    async fn second_open_names_locked_dir() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let _first = SledStore::open(dir.path()).await?;

        let second = SledStore::open(dir.path()).await;

        let Err(error) = second else {
            panic!("second open of the same directory succeeded");
        };
        assert!(matches!(error, Error::DataDirLocked { .. }));
        assert!(
            error
                .to_string()
                .contains(&dir.path().display().to_string())
        );
        Ok(())
    }

    #[tokio::test]
    async fn unknown_record_version_is_corrupt() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = SledStore::open(dir.path()).await?;
        let future = br#"{"version":2,"username":"alice","password_hash":"x","role":"admin","disabled":false,"created_at":0}"#;
        store.users.insert("alice", &future[..])?;

        let read = store.get("alice").await;

        assert!(matches!(read, Err(Error::CorruptRecord { .. })));
        Ok(())
    }

    #[test]
    fn signing_key_debug_is_redacted() {
        let key = StoredSigningKey {
            key_id: "kid-1".into(),
            created_at: 0,
            pkcs8: Zeroizing::new(vec![0xAB; 8]),
        };

        let printed = format!("{key:?}");

        assert!(printed.contains("kid-1"));
        assert!(!printed.contains("171"));
        assert!(printed.contains("[redacted]"));
    }
}
