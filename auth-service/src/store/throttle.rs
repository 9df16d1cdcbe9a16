//! Persistent counters of failed logins, for the login throttle.
//!
//! The counters live in a sled database of their own (`<data dir>/throttle`), apart from the
//! users and keys: an attacker decides how many counters exist, so their writes must not grow
//! or slow the database that holds the accounts. The table is bounded, and a full table evicts
//! the counter that changed longest ago.

use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The record layout version this code writes and reads.
const RECORD_VERSION: u32 = 1;

/// How often sled writes pending changes to disk, in milliseconds. A crash loses at most the
/// failures counted in this window, which only gives an attacker a few free guesses.
const FLUSH_EVERY_MS: u64 = 1000;

/// The page cache of the throttle database, in bytes; sled's default is 1 GiB.
const CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// The failed logins counted under one key (a username or a client address).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottleRecord {
    /// Failed logins since the counter was last reset or forgotten.
    pub failures: u32,
    /// Time of the last failure, in seconds since the Unix epoch.
    pub last_failure: i64,
    /// Until when logins under this key are rejected without a password check, in seconds
    /// since the Unix epoch; 0 when not blocked.
    pub blocked_until: i64,
}

/// Storage for the login throttle's counters.
pub trait ThrottleStore: Send + Sync {
    /// Returns the counter stored under `key`, if any.
    fn get(&self, key: &str) -> Result<Option<ThrottleRecord>, Error>;

    /// Stores the counter under `key`. When the table is full and `key` is new, the counter
    /// with the oldest `last_failure` is removed first.
    fn put(&self, key: &str, record: ThrottleRecord) -> Result<(), Error>;

    /// Removes the counter under `key`, if any.
    fn remove(&self, key: &str) -> Result<(), Error>;

    /// Returns the number of stored counters.
    fn len(&self) -> usize;

    /// Returns whether no counter is stored.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes every pending change to disk.
    fn flush(&self) -> Result<(), Error>;
}

/// A [`ThrottleStore`] in a sled database of its own, holding at most `max_entries` counters.
///
/// Two trees are kept in step: `records` maps each key to its counter, and `by_age` maps
/// `last_failure` (big-endian, so byte order is time order) followed by the key to nothing, so
/// the oldest counter is the first entry of `by_age`.
#[derive(Debug)]
pub struct SledThrottleStore {
    db: sled::Db,
    records: sled::Tree,
    by_age: sled::Tree,
    max_entries: usize,
    /// Serializes writes, so `records` and `by_age` never disagree and the count stays exact.
    /// `sled::Tree::len` walks the whole tree, so the count is kept here.
    count: Mutex<usize>,
}

#[derive(Serialize, Deserialize)]
struct ThrottleRecordV1 {
    version: u32,
    #[serde(flatten)]
    record: ThrottleRecord,
}

impl SledThrottleStore {
    /// Opens or creates the database in `dir`, keeping at most `max_entries` counters
    /// (at least 1). Fails with [`Error::DataDirLocked`] if another process has it open.
    pub fn open(dir: &Path, max_entries: usize) -> Result<Self, Error> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            .flush_every_ms(Some(FLUSH_EVERY_MS))
            .open()
            .map_err(|error| match error {
                sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                    Error::DataDirLocked {
                        dir: dir.to_path_buf(),
                    }
                }
                other => Error::Storage {
                    operation: "open login throttle database",
                    source: other,
                },
            })?;
        let records = db
            .open_tree("records")
            .map_err(storage("open login throttle records"))?;
        let by_age = db
            .open_tree("by_age")
            .map_err(storage("open login throttle age index"))?;
        let count = records.len();

        let store = Self {
            db,
            records,
            by_age,
            max_entries: max_entries.max(1),
            count: Mutex::new(count),
        };
        // A smaller limit than the last run's takes effect at once.
        {
            let mut count = store.lock_count();
            store.evict_until_below(&mut count, store.max_entries.saturating_add(1))?;
        }
        Ok(store)
    }

    fn lock_count(&self) -> std::sync::MutexGuard<'_, usize> {
        self.count
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Removes the oldest counters until fewer than `limit` remain. The caller holds the count
    /// lock, so no other write interleaves.
    fn evict_until_below(&self, count: &mut usize, limit: usize) -> Result<(), Error> {
        while *count >= limit {
            let Some((age_key, _)) = self
                .by_age
                .pop_min()
                .map_err(storage("evict login throttle record"))?
            else {
                break;
            };
            let key = &age_key[8..];
            if self
                .records
                .remove(key)
                .map_err(storage("evict login throttle record"))?
                .is_some()
            {
                *count -= 1;
            }
        }
        Ok(())
    }
}

impl ThrottleStore for SledThrottleStore {
    fn get(&self, key: &str) -> Result<Option<ThrottleRecord>, Error> {
        let Some(bytes) = self
            .records
            .get(key.as_bytes())
            .map_err(storage("read login throttle record"))?
        else {
            return Ok(None);
        };
        decode(key, &bytes).map(Some)
    }

    fn put(&self, key: &str, record: ThrottleRecord) -> Result<(), Error> {
        let encoded = serde_json::to_vec(&ThrottleRecordV1 {
            version: RECORD_VERSION,
            record,
        })
        .map_err(|error| corrupt(key, error))?;

        let mut count = self.lock_count();
        let previous = self
            .records
            .get(key.as_bytes())
            .map_err(storage("read login throttle record"))?;
        match previous {
            Some(bytes) => {
                // A record that no longer decodes is replaced; its index entry is left behind
                // and dropped when eviction reaches it.
                if let Ok(old) = decode(key, &bytes) {
                    self.by_age
                        .remove(age_key(old.last_failure, key))
                        .map_err(storage("update login throttle age index"))?;
                }
            }
            None => {
                self.evict_until_below(&mut count, self.max_entries)?;
                *count += 1;
            }
        }
        self.records
            .insert(key.as_bytes(), encoded)
            .map_err(storage("write login throttle record"))?;
        self.by_age
            .insert(age_key(record.last_failure, key), &[])
            .map_err(storage("update login throttle age index"))?;
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<(), Error> {
        let mut count = self.lock_count();
        let Some(bytes) = self
            .records
            .remove(key.as_bytes())
            .map_err(storage("remove login throttle record"))?
        else {
            return Ok(());
        };
        *count = count.saturating_sub(1);
        if let Ok(old) = decode(key, &bytes) {
            self.by_age
                .remove(age_key(old.last_failure, key))
                .map_err(storage("update login throttle age index"))?;
        }
        Ok(())
    }

    fn len(&self) -> usize {
        *self.lock_count()
    }

    fn flush(&self) -> Result<(), Error> {
        self.db
            .flush()
            .map_err(storage("flush login throttle database"))?;
        Ok(())
    }
}

fn decode(key: &str, bytes: &[u8]) -> Result<ThrottleRecord, Error> {
    let stored: ThrottleRecordV1 =
        serde_json::from_slice(bytes).map_err(|error| corrupt(key, error))?;
    if stored.version != RECORD_VERSION {
        return Err(corrupt(
            key,
            format!("unknown record version {}", stored.version),
        ));
    }
    Ok(stored.record)
}

/// Builds the `by_age` key: the time as 8 big-endian bytes, then the record key. Times before
/// 1970 sort as 0.
fn age_key(last_failure: i64, key: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(8 + key.len());
    bytes.extend_from_slice(&u64::try_from(last_failure).unwrap_or(0).to_be_bytes());
    bytes.extend_from_slice(key.as_bytes());
    bytes
}

fn storage(operation: &'static str) -> impl FnOnce(sled::Error) -> Error {
    move |source| Error::Storage { operation, source }
}

fn corrupt(key: &str, reason: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::CorruptRecord {
        key: key.to_owned(),
        source: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(last_failure: i64) -> ThrottleRecord {
        ThrottleRecord {
            failures: 1,
            last_failure,
            blocked_until: 0,
        }
    }

    /// Opens the store, waiting while the flush thread of a store dropped a moment ago still
    /// holds the lock.
    fn reopen(dir: &Path, max_entries: usize) -> Result<SledThrottleStore, Error> {
        for _ in 0..100 {
            match SledThrottleStore::open(dir, max_entries) {
                Err(Error::DataDirLocked { .. }) => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
        SledThrottleStore::open(dir, max_entries)
    }

    #[test]
    fn put_get_remove() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = SledThrottleStore::open(dir.path(), 10)?;

        store.put("user\0ann", record(5))?;
        store.put("user\0ann", record(6))?;

        assert_eq!(store.get("user\0ann")?, Some(record(6)));
        assert_eq!(store.len(), 1);
        store.remove("user\0ann")?;
        assert_eq!(store.get("user\0ann")?, None);
        assert!(store.is_empty());
        Ok(())
    }

    #[test]
    fn full_table_evicts_the_oldest() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = SledThrottleStore::open(dir.path(), 3)?;

        store.put("a", record(30))?;
        store.put("b", record(10))?;
        store.put("c", record(20))?;
        store.put("d", record(40))?;

        assert_eq!(store.len(), 3);
        assert_eq!(store.get("b")?, None, "the oldest counter goes first");
        assert!(store.get("a")?.is_some());
        assert!(store.get("d")?.is_some());
        Ok(())
    }

    #[test]
    fn counters_survive_reopen() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        {
            let store = SledThrottleStore::open(dir.path(), 10)?;
            store.put("addr\x00127.0.0.1", record(7))?;
            store.flush()?;
        }

        let store = reopen(dir.path(), 10)?;

        assert_eq!(store.get("addr\x00127.0.0.1")?, Some(record(7)));
        assert_eq!(store.len(), 1);
        Ok(())
    }

    #[test]
    fn smaller_limit_applies_on_open() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        {
            let store = SledThrottleStore::open(dir.path(), 10)?;
            for (index, key) in ["a", "b", "c", "d"].into_iter().enumerate() {
                store.put(key, record(i64::try_from(index)?))?;
            }
            store.flush()?;
        }

        let store = reopen(dir.path(), 2)?;

        assert_eq!(store.len(), 2);
        assert!(store.get("d")?.is_some());
        assert_eq!(store.get("a")?, None);
        Ok(())
    }
}
