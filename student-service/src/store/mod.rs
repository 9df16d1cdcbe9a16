//! Storage of student records behind the [`StudentStore`] interface.

mod sled_store;

use std::future::Future;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::Error;

pub use sled_store::SledStore;

/// Version of the [`StudentRecord`] layout written by this build. Readers reject other
/// versions instead of guessing at their meaning.
pub const SCHEMA_VERSION: u32 = 1;

/// One stored student.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StudentRecord {
    /// Layout version of this record, [`SCHEMA_VERSION`] when written by this build.
    pub schema_version: u32,
    /// Server-assigned random (version 4) UUID.
    pub id: Uuid,
    /// Full name, trimmed.
    pub name: String,
    /// Email address.
    pub email: String,
    /// Username of the student's own account, whose holder may read the record.
    pub account_username: Option<String>,
    /// Grade level, 1 to 13, or 0 when unknown.
    pub grade_level: i32,
    /// When the record was created.
    pub create_time: SystemTime,
    /// Username of the caller who created the record.
    pub created_by: String,
}

/// One page of records, ordered by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The records of this page.
    pub records: Vec<StudentRecord>,
    /// Whether records follow the last one of this page.
    pub has_more: bool,
}

/// Storage of student records. Every method that returns `Ok` after a write has made the
/// write durable, so a crash right after cannot lose an acknowledged change.
pub trait StudentStore: Send + Sync + 'static {
    /// Stores a new record. Fails with [`Error::AccountTaken`] when another record already
    /// has the same `account_username`.
    fn insert(&self, record: &StudentRecord) -> impl Future<Output = Result<(), Error>> + Send;

    /// Returns the record with `id`, or `None` when there is none.
    fn get(&self, id: Uuid) -> impl Future<Output = Result<Option<StudentRecord>, Error>> + Send;

    /// Returns up to `limit` records in id order, starting after `after` (or at the first
    /// record when `after` is `None`).
    fn list(
        &self,
        after: Option<Uuid>,
        limit: usize,
    ) -> impl Future<Output = Result<Page, Error>> + Send;

    /// Deletes the record with `id` and returns it, or returns `None` when there was none.
    fn delete(&self, id: Uuid)
    -> impl Future<Output = Result<Option<StudentRecord>, Error>> + Send;

    /// Writes everything buffered to durable storage.
    fn flush(&self) -> impl Future<Output = Result<(), Error>> + Send;
}
