//! Group commit: one flush thread per database, shared by every writer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;

use tokio::sync::oneshot;

/// A flush that failed. Every writer whose change that flush covered gets the same error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    /// sled failed to write or sync its log.
    #[error("flushing the database failed")]
    Flush(#[source] Arc<sled::Error>),
    /// The flush thread is gone, so nothing can be made durable any more.
    #[error("the database flush thread has stopped")]
    Stopped,
}

impl From<CommitError> for sled::Error {
    /// Returns sled's own error for a failed flush, so stores can keep one storage error type.
    fn from(error: CommitError) -> Self {
        match error {
            CommitError::Flush(source) => (*source).clone(),
            CommitError::Stopped => sled::Error::Io(std::io::Error::other(error)),
        }
    }
}

/// Counters of a [`GroupCommit`], for metrics and tests.
#[derive(Debug, Default)]
pub struct CommitStats {
    commits: AtomicU64,
    flushes: AtomicU64,
    max_batch: AtomicU64,
}

impl CommitStats {
    /// Returns the number of [`GroupCommit::commit`] calls completed so far.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Returns the number of flushes run so far. Each covers one or more commits.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// Returns the largest number of commits one flush has covered.
    pub fn max_batch(&self) -> u64 {
        self.max_batch.load(Ordering::Relaxed)
    }
}

type Waiter = oneshot::Sender<Result<(), CommitError>>;

/// Makes changes already applied to a sled database durable, one flush for all the writers
/// that are waiting when it starts.
///
/// A dedicated thread takes every pending request, runs one blocking `Db::flush` (which writes
/// sled's log and syncs it to disk), and completes all of them. Requests that arrive during a
/// flush wait for the next one, because their change may have missed the running flush. The
/// thread stops when the last clone of this handle is dropped, and that drop waits for it, so
/// the database lock is free once the store that owned the handle is gone.
#[derive(Clone, Debug)]
pub struct GroupCommit {
    flusher: Arc<Flusher>,
    stats: Arc<CommitStats>,
}

/// The request channel and the thread that serves it.
#[derive(Debug)]
struct Flusher {
    requests: Option<mpsc::Sender<Waiter>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Flusher {
    fn drop(&mut self) {
        // Closing the channel ends the thread after its current flush, if any; joining it
        // releases its database handle before this drop returns.
        self.requests.take();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the database flush thread panicked");
        }
    }
}

impl GroupCommit {
    /// Starts the flush thread for `db`.
    pub fn start(db: sled::Db) -> std::io::Result<Self> {
        let (requests, pending) = mpsc::channel::<Waiter>();
        let stats = Arc::new(CommitStats::default());
        let thread_stats = Arc::clone(&stats);
        let thread = thread::Builder::new()
            .name("sled-group-commit".to_owned())
            .spawn(move || run_flusher(&db, &pending, &thread_stats))?;
        Ok(GroupCommit {
            flusher: Arc::new(Flusher {
                requests: Some(requests),
                thread: Some(thread),
            }),
            stats,
        })
    }

    /// Returns once every change applied to the database before this call is on disk.
    ///
    /// NOTE: on Linux, sled 0.34 syncs its log with `sync_file_range`, which survives a killed
    /// process and an orderly OS shutdown but does not flush the drive's write cache.
    pub async fn commit(&self) -> Result<(), CommitError> {
        let (done, outcome) = oneshot::channel();
        let requests = self.flusher.requests.as_ref().ok_or(CommitError::Stopped)?;
        requests.send(done).map_err(|_| CommitError::Stopped)?;
        outcome.await.map_err(|_| CommitError::Stopped)?
    }

    /// Returns the counters of this committer.
    pub fn stats(&self) -> &Arc<CommitStats> {
        &self.stats
    }
}

fn run_flusher(db: &sled::Db, pending: &mpsc::Receiver<Waiter>, stats: &CommitStats) {
    // `recv` fails only once every sender is dropped, which ends the thread and releases the
    // database handle.
    while let Ok(first) = pending.recv() {
        let mut batch = vec![first];
        batch.extend(pending.try_iter());

        let outcome = db
            .flush()
            .map(drop)
            .map_err(|error| CommitError::Flush(Arc::new(error)));
        if let Err(error) = &outcome {
            tracing::error!(%error, cause = ?error, writers = batch.len(), "database flush failed");
        }

        let size = u64::try_from(batch.len()).unwrap_or(u64::MAX);
        stats.flushes.fetch_add(1, Ordering::Relaxed);
        stats.commits.fetch_add(size, Ordering::Relaxed);
        stats.max_batch.fetch_max(size, Ordering::Relaxed);
        for waiter in batch {
            // A writer whose request was cancelled no longer waits; its change is durable anyway.
            let _ = waiter.send(outcome.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commit_writes_change_to_files() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("db");
        {
            // No periodic flush, so only the commit can have written the change.
            let db = sled::Config::new()
                .path(&path)
                .flush_every_ms(None)
                .open()?;
            let committer = GroupCommit::start(db.clone())?;
            db.insert("key", "value")?;
            committer.commit().await?;
            // Forget the handle instead of dropping it, so sled's own flush on drop cannot hide a
            // missing commit.
            std::mem::forget(db);
        }

        let copy = dir.path().join("copy");
        copy_dir(&path, &copy)?;
        let reopened = sled::Config::new().path(&copy).open()?;

        assert_eq!(reopened.get("key")?.as_deref(), Some(&b"value"[..]));
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_share_flushes() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let db = sled::Config::new().path(dir.path()).open()?;
        let committer = GroupCommit::start(db.clone())?;
        let writers = 64;

        let mut tasks = Vec::new();
        for writer in 0..writers {
            let db = db.clone();
            let committer = committer.clone();
            tasks.push(tokio::spawn(async move {
                db.insert(format!("key-{writer}"), "value")?;
                committer.commit().await?;
                Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
            }));
        }
        for task in tasks {
            task.await?.map_err(|error| error.to_string())?;
        }

        let stats = committer.stats();
        assert_eq!(stats.commits(), writers);
        assert!(
            stats.flushes() < writers,
            "{} flushes for {writers} concurrent commits",
            stats.flushes()
        );
        assert!(stats.max_batch() > 1);
        Ok(())
    }

    #[tokio::test]
    async fn commit_after_thread_stops_fails() {
        let (requests, pending) = mpsc::channel::<Waiter>();
        drop(pending);
        let committer = GroupCommit {
            flusher: Arc::new(Flusher {
                requests: Some(requests),
                thread: None,
            }),
            stats: Arc::default(),
        };

        let outcome = committer.commit().await;

        assert!(matches!(outcome, Err(CommitError::Stopped)));
    }

    /// Copies the database files as a crash would leave them: only what reached the files.
    fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            let target = to.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                copy_dir(&entry.path(), &target)?;
            } else {
                std::fs::copy(entry.path(), target)?;
            }
        }
        Ok(())
    }
}
