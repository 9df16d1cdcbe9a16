//! Opening a sled database with errors an operator can act on.

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// Opening the database failed. Every message names the directory and what to do.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process, or another handle in this process, has the database open.
    #[error(
        "the database in {} is in use by another process; stop it or choose another data directory",
        dir.display()
    )]
    Locked {
        /// The database directory.
        dir: PathBuf,
        /// sled's error.
        #[source]
        source: sled::Error,
    },
    /// The files could not be read or created.
    #[error("failed to read or create the database files in {}", dir.display())]
    Io {
        /// The database directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// sled found damaged files, or failed while reading them.
    #[error(
        "the database in {} is damaged ({detail}); stop the service, move the directory aside and \
         restore the latest backup into its place, or start with an empty directory",
        dir.display()
    )]
    Damaged {
        /// The database directory.
        dir: PathBuf,
        /// sled's description of the damage.
        detail: String,
    },
}

impl OpenError {
    /// Returns whether another holder of the lock caused the failure.
    pub fn is_locked(&self) -> bool {
        matches!(self, OpenError::Locked { .. })
    }
}

/// Opens or creates the sled database in `dir`, with the page cache capped at
/// [`CACHE_CAPACITY_BYTES`] and sled's defaults otherwise.
///
/// sled 0.34 reports some damage by panicking while it recovers its log, so the panic is caught
/// here and returned as [`OpenError::Damaged`]. The default panic hook still prints it first.
///
/// NOTE: sled 0.34 treats a log segment that fails its checksum as the torn end of the log, so
/// damage inside the `db` file can open without error and lose the records after it. Only a
/// damaged `conf` file or log header is reported here.
///
/// A held lock is retried for half a second before [`OpenError::Locked`] is returned.
pub fn open(dir: &Path) -> Result<sled::Db, OpenError> {
    // A process that is just stopping, or a store dropped a moment ago in this process, can
    // hold the lock for a few milliseconds more while its last flush finishes.
    let mut attempt = 0;
    loop {
        match open_once(dir) {
            Err(OpenError::Locked { .. }) if attempt < LOCK_RETRIES => {
                attempt += 1;
                std::thread::sleep(LOCK_RETRY_DELAY);
            }
            result => return result,
        }
    }
}

/// How often [`open`] tries again when the lock is held, and how long it waits between tries:
/// half a second in all.
const LOCK_RETRIES: u32 = 25;
const LOCK_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(20);

/// The maximum memory sled's page cache of one database may use. sled's default is 1 GiB, which
/// makes a busy service's memory grow for a long time before it levels off.
pub const CACHE_CAPACITY_BYTES: u64 = 64 * 1024 * 1024;

fn open_once(dir: &Path) -> Result<sled::Db, OpenError> {
    let config = sled::Config::new()
        .path(dir)
        .cache_capacity(CACHE_CAPACITY_BYTES);
    let opened = catch_unwind(AssertUnwindSafe(|| config.open()));
    let damaged = |detail: String| OpenError::Damaged {
        dir: dir.to_owned(),
        detail,
    };
    match opened {
        Ok(Ok(db)) => Ok(db),
        // NOTE: sled 0.34 reports a held lock only as an `io::Error` of kind `Other` whose text
        // starts with "could not acquire lock", so the text is the only thing to match.
        Ok(Err(sled::Error::Io(source)))
            if source.to_string().contains("could not acquire lock") =>
        {
            Err(OpenError::Locked {
                dir: dir.to_owned(),
                source: sled::Error::Io(source),
            })
        }
        Ok(Err(sled::Error::Io(source))) if source.kind() != io::ErrorKind::UnexpectedEof => {
            Err(OpenError::Io {
                dir: dir.to_owned(),
                source,
            })
        }
        Ok(Err(error)) => Err(damaged(error.to_string())),
        Err(panic) => {
            let detail = panic
                .downcast_ref::<&str>()
                .map(|text| (*text).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "sled panicked while reading its files".to_owned());
            Err(damaged(detail))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_open_is_locked() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let _first = open(dir.path())?;

        let second = open(dir.path());

        let error = second.err().ok_or("second open succeeded")?;
        assert!(error.is_locked(), "{error:?}");
        assert!(
            error
                .to_string()
                .contains(&dir.path().display().to_string())
        );
        Ok(())
    }

    #[test]
    fn damaged_config_names_dir_and_recovery() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        drop(open(dir.path())?);
        std::fs::write(dir.path().join("conf"), b"\xff\xff not a sled config \xff")?;

        let reopened = open(dir.path());

        let error = reopened.err().ok_or("damaged database opened")?;
        let message = error.to_string();
        assert!(matches!(error, OpenError::Damaged { .. }), "{error:?}");
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
        assert!(message.contains("backup"), "{message}");
        Ok(())
    }
}
