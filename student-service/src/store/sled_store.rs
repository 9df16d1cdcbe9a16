//! [`StudentStore`] on an embedded sled database.

use std::ops::Bound;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::Path;
use std::sync::Arc;

use school_durable::{CommitStats, GroupCommit, OpenError};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{Db, Transactional, Tree};
use uuid::Uuid;

use super::{Page, SCHEMA_VERSION, StudentRecord, StudentStore};
use crate::error::Error;

/// Tree of records: key is the 16 bytes of the id, so sled's byte order is id order; value is
/// the record as JSON.
const STUDENTS_TREE: &[u8] = b"students";

/// Tree of account links: key is an `account_username`, value is the 16-byte id of the record
/// linked to it. It enforces that one account owns at most one record.
const ACCOUNTS_TREE: &[u8] = b"students_by_account";

/// Student records in a sled database. Cloning is cheap and shares the database.
///
/// Every write returns after a group commit has flushed it to disk, so concurrent writers share
/// one flush. Each insert or delete changes the record and its account link in one sled
/// transaction, so a crash leaves both or neither.
#[derive(Clone)]
pub struct SledStore {
    db: Db,
    committer: GroupCommit,
    students: Tree,
    accounts: Tree,
}

/// Reason for aborting a transaction when storage itself did not fail.
enum Abort {
    AccountTaken { username: String, existing: Uuid },
    CorruptLink { username: String },
    DuplicateId,
}

impl SledStore {
    /// Opens or creates the database in `dir`, creating `dir` with mode 0700 if missing, because
    /// the records hold students' names and email addresses. Fails with
    /// [`Error::DataDirLocked`] when another process (or another `SledStore` in this process)
    /// has it open.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| Error::OpenStorage {
                dir: dir.to_owned(),
                source: sled::Error::Io(source),
            })?;
        let db = school_durable::open(dir).map_err(|error| open_error(dir, error))?;
        // A tree that cannot be opened means sled could not read its own metadata.
        let damaged = |source: sled::Error| {
            open_error(
                dir,
                OpenError::Damaged {
                    dir: dir.to_owned(),
                    detail: source.to_string(),
                },
            )
        };
        let students = db.open_tree(STUDENTS_TREE).map_err(damaged)?;
        let accounts = db.open_tree(ACCOUNTS_TREE).map_err(damaged)?;
        let committer = GroupCommit::start(db.clone()).map_err(|source| Error::OpenStorage {
            dir: dir.to_owned(),
            source: sled::Error::Io(source),
        })?;

        Ok(SledStore {
            db,
            committer,
            students,
            accounts,
        })
    }

    /// Returns the counters of the group commit, for metrics.
    pub fn commit_stats(&self) -> &Arc<CommitStats> {
        self.committer.stats()
    }

    /// Returns the size of the database files on disk in bytes, for metrics.
    pub fn size_on_disk(&self) -> Result<u64, Error> {
        self.db
            .size_on_disk()
            .map_err(|source| Error::storage("measure the database size", source))
    }

    async fn flush_db(&self, operation: &'static str) -> Result<(), Error> {
        self.committer
            .commit()
            .await
            .map_err(|error| Error::storage(operation, error))
    }
}

fn open_error(dir: &Path, error: OpenError) -> Error {
    match error {
        OpenError::Locked { source, .. } => Error::DataDirLocked {
            dir: dir.to_owned(),
            source,
        },
        OpenError::Io { source, .. } => Error::OpenStorage {
            dir: dir.to_owned(),
            source: sled::Error::Io(source),
        },
        // The message of `Damaged` contains the recovery step, so it travels as the source.
        damaged @ OpenError::Damaged { .. } => Error::OpenStorage {
            dir: dir.to_owned(),
            source: sled::Error::Io(std::io::Error::other(damaged)),
        },
    }
}

fn encode(record: &StudentRecord) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(record).map_err(|source| Error::storage("encode a student", source))
}

fn decode(key: &[u8], value: &[u8]) -> Result<StudentRecord, Error> {
    let key_text = match Uuid::from_slice(key) {
        Ok(id) => id.to_string(),
        Err(_) => format!("{key:02x?}"),
    };
    let corrupt = |reason: String| Error::CorruptRecord {
        key: key_text.clone(),
        reason,
    };

    let record: StudentRecord =
        serde_json::from_slice(value).map_err(|error| corrupt(error.to_string()))?;
    if record.schema_version != SCHEMA_VERSION {
        return Err(corrupt(format!(
            "schema version {} is not the supported version {SCHEMA_VERSION}",
            record.schema_version
        )));
    }
    if record.id.as_bytes().as_slice() != key {
        return Err(corrupt(format!("contains the id {}", record.id)));
    }
    Ok(record)
}

// TODO: sled's reads, scans and transactions are synchronous and run on the async worker
// thread. They are short for a roster that fits in sled's cache; a larger data set should move
// them to `spawn_blocking`.
impl StudentStore for SledStore {
    async fn insert(&self, record: &StudentRecord) -> Result<(), Error> {
        let key = *record.id.as_bytes();
        let value = encode(record)?;
        let account = record.account_username.as_deref();

        let outcome = (&self.students, &self.accounts).transaction(|(students, accounts)| {
            if students.get(key)?.is_some() {
                return Err(ConflictableTransactionError::Abort(Abort::DuplicateId));
            }
            if let Some(username) = account {
                if let Some(existing) = accounts.get(username)? {
                    let username = username.to_owned();
                    let abort = match Uuid::from_slice(&existing) {
                        Ok(existing) => Abort::AccountTaken { username, existing },
                        Err(_) => Abort::CorruptLink { username },
                    };
                    return Err(ConflictableTransactionError::Abort(abort));
                }
                accounts.insert(username, &key)?;
            }
            students.insert(&key, value.as_slice())?;
            Ok(())
        });

        match outcome {
            Ok(()) => {}
            Err(TransactionError::Abort(Abort::AccountTaken { username, existing })) => {
                return Err(Error::AccountTaken { username, existing });
            }
            Err(TransactionError::Abort(Abort::CorruptLink { username })) => {
                return Err(Error::CorruptRecord {
                    key: format!("account link {username:?}"),
                    reason: "the linked id is not 16 bytes".to_owned(),
                });
            }
            Err(TransactionError::Abort(Abort::DuplicateId)) => {
                return Err(Error::storage(
                    "insert a student",
                    format!("id {} is already in use", record.id),
                ));
            }
            Err(TransactionError::Storage(source)) => {
                return Err(Error::storage("insert a student", source));
            }
        }

        self.flush_db("flush a new student").await
    }

    async fn get(&self, id: Uuid) -> Result<Option<StudentRecord>, Error> {
        let key = id.as_bytes();
        let value = self
            .students
            .get(key)
            .map_err(|source| Error::storage("read a student", source))?;
        value.map(|value| decode(key, &value)).transpose()
    }

    async fn list(&self, after: Option<Uuid>, limit: usize) -> Result<Page, Error> {
        let start = match after {
            Some(id) => Bound::Excluded(id.as_bytes().to_vec()),
            None => Bound::Unbounded,
        };

        let mut records = Vec::with_capacity(limit);
        let mut has_more = false;
        for entry in self.students.range((start, Bound::Unbounded)) {
            let (key, value) = entry.map_err(|source| Error::storage("list students", source))?;
            if records.len() == limit {
                has_more = true;
                break;
            }
            records.push(decode(&key, &value)?);
        }

        Ok(Page { records, has_more })
    }

    async fn delete(&self, id: Uuid) -> Result<Option<StudentRecord>, Error> {
        let key = *id.as_bytes();

        let removed = (&self.students, &self.accounts)
            .transaction(|(students, accounts)| {
                let Some(value) = students.remove(&key)? else {
                    return Ok(None);
                };
                let record = decode(&key, &value).map_err(ConflictableTransactionError::Abort)?;
                if let Some(username) = record.account_username.as_deref() {
                    let linked = accounts.get(username)?;
                    if linked.as_deref() == Some(key.as_slice()) {
                        accounts.remove(username)?;
                    }
                }
                Ok(Some(record))
            })
            .map_err(|error| match error {
                TransactionError::Abort(error) => error,
                TransactionError::Storage(source) => Error::storage("delete a student", source),
            })?;

        if removed.is_some() {
            self.flush_db("flush a deletion").await?;
        }
        Ok(removed)
    }

    async fn flush(&self) -> Result<(), Error> {
        self.flush_db("flush the database").await
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn record(name: &str, account: Option<&str>) -> StudentRecord {
        StudentRecord {
            schema_version: SCHEMA_VERSION,
            id: Uuid::new_v4(),
            name: name.to_owned(),
            email: format!("{name}@school.test"),
            account_username: account.map(str::to_owned),
            grade_level: 7,
            create_time: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            created_by: "admin".to_owned(),
        }
    }

    fn open_temp() -> (tempfile::TempDir, SledStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn insert_then_get() {
        let (_dir, store) = open_temp();
        let ada = record("ada", Some("ada"));

        store.insert(&ada).await.unwrap();

        assert_eq!(store.get(ada.id).await.unwrap(), Some(ada));
    }

    #[tokio::test]
    async fn get_missing_is_none() {
        let (_dir, store) = open_temp();

        assert_eq!(store.get(Uuid::new_v4()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn delete_removes_record() {
        let (_dir, store) = open_temp();
        let ada = record("ada", None);
        store.insert(&ada).await.unwrap();

        let removed = store.delete(ada.id).await.unwrap();

        assert_eq!(removed, Some(ada.clone()));
        assert_eq!(store.get(ada.id).await.unwrap(), None);
    }

    #[tokio::test]
    async fn delete_missing_is_none() {
        let (_dir, store) = open_temp();

        assert_eq!(store.delete(Uuid::new_v4()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn account_linked_to_one_record() {
        let (_dir, store) = open_temp();
        let first = record("ada", Some("ada"));
        let second = record("ada2", Some("ada"));
        store.insert(&first).await.unwrap();

        let error = store.insert(&second).await.unwrap_err();

        assert!(
            matches!(&error, Error::AccountTaken { username, existing } if username == "ada" && *existing == first.id),
            "{error:?}"
        );
        assert_eq!(store.get(second.id).await.unwrap(), None);
    }

    #[tokio::test]
    async fn delete_frees_account() {
        let (_dir, store) = open_temp();
        let first = record("ada", Some("ada"));
        store.insert(&first).await.unwrap();
        store.delete(first.id).await.unwrap();

        let second = record("ada2", Some("ada"));

        store.insert(&second).await.unwrap();
    }

    #[tokio::test]
    async fn list_pages_in_id_order() {
        let (_dir, store) = open_temp();
        let mut ids = Vec::new();
        for i in 0..7 {
            let student = record(&format!("s{i}"), None);
            ids.push(student.id);
            store.insert(&student).await.unwrap();
        }
        ids.sort();

        let first = store.list(None, 3).await.unwrap();
        let second = store.list(Some(ids[2]), 3).await.unwrap();
        let last = store.list(Some(ids[5]), 3).await.unwrap();

        let first_ids: Vec<Uuid> = first.records.iter().map(|r| r.id).collect();
        let second_ids: Vec<Uuid> = second.records.iter().map(|r| r.id).collect();
        let last_ids: Vec<Uuid> = last.records.iter().map(|r| r.id).collect();
        assert_eq!(first_ids, ids[0..3]);
        assert!(first.has_more);
        assert_eq!(second_ids, ids[3..6]);
        assert!(second.has_more);
        assert_eq!(last_ids, ids[6..]);
        assert!(!last.has_more);
    }

    #[tokio::test]
    async fn list_exact_fit_has_no_more() {
        let (_dir, store) = open_temp();
        for i in 0..3 {
            store.insert(&record(&format!("s{i}"), None)).await.unwrap();
        }

        let page = store.list(None, 3).await.unwrap();

        assert_eq!(page.records.len(), 3);
        assert!(!page.has_more);
    }

    #[tokio::test]
    async fn list_after_deleted_id_continues() {
        let (_dir, store) = open_temp();
        let mut students: Vec<StudentRecord> =
            (0..3).map(|i| record(&format!("s{i}"), None)).collect();
        students.sort_by_key(|s| s.id);
        for student in &students {
            store.insert(student).await.unwrap();
        }
        store.delete(students[0].id).await.unwrap();

        let page = store.list(Some(students[0].id), 10).await.unwrap();

        assert_eq!(page.records, students[1..]);
    }

    #[tokio::test]
    async fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let ada = record("ada", Some("ada"));
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.insert(&ada).await.unwrap();
        }

        let store = SledStore::open(dir.path()).unwrap();

        assert_eq!(store.get(ada.id).await.unwrap(), Some(ada.clone()));
        let duplicate = record("ada again", Some("ada"));
        assert!(matches!(
            store.insert(&duplicate).await,
            Err(Error::AccountTaken { .. })
        ));
    }

    #[test]
    fn second_open_reports_locked_dir() {
        let (dir, _store) = open_temp();

        let error = SledStore::open(dir.path()).err().unwrap();

        assert!(matches!(error, Error::DataDirLocked { .. }), "{error:?}");
        let message = error.to_string();
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
    }

    #[test]
    fn unknown_schema_version_rejected() {
        let mut ada = record("ada", None);
        ada.schema_version = SCHEMA_VERSION + 1;
        let value = serde_json::to_vec(&ada).unwrap();

        let error = decode(ada.id.as_bytes(), &value).unwrap_err();

        assert!(matches!(error, Error::CorruptRecord { .. }), "{error:?}");
    }

    #[test]
    fn record_under_wrong_key_rejected() {
        let ada = record("ada", None);
        let value = serde_json::to_vec(&ada).unwrap();

        let error = decode(Uuid::new_v4().as_bytes(), &value).unwrap_err();

        assert!(matches!(error, Error::CorruptRecord { .. }), "{error:?}");
    }
}
