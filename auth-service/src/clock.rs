//! Wall-clock time in the units tokens and records use.

use std::time::{SystemTime, UNIX_EPOCH};

/// Returns the current time in whole seconds since the Unix epoch, or 0 if the clock is set
/// before 1970.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        })
}
