//! Durable sled writes shared by auth-service and student-service.
//!
//! sled 0.34 writes changes to disk on a timer (every 500 ms by default), so a change that a
//! service acknowledged could vanish in a crash. [`GroupCommit`] makes a change durable before
//! the caller acknowledges it while letting concurrent writers share one flush, and [`open`]
//! turns the ways opening a database can fail into errors that name the directory and the
//! recovery step.

mod group_commit;
mod open;

pub use group_commit::{CommitError, CommitStats, GroupCommit};
pub use open::{CACHE_CAPACITY_BYTES, OpenError, open};
