//! The threads that run Argon2, each keeping its working memory from one hash to the next.
//!
//! Argon2id with the default parameters fills 19 MiB for every hash. When each call allocated
//! that memory on whichever blocking-pool thread ran it, the resident size of auth-service rose
//! in steps of about 19 MiB under a login load, to over 600 MiB in a 90-second soak. The likely
//! cause is that glibc keeps freed memory in the arena of the thread that freed it. Here a fixed
//! set of threads each allocates its memory at its first hash and reuses it for every later
//! one. So hashing uses at most the thread count times the memory cost, and stays there.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, mpsc};

use argon2::Block;
use tokio::sync::oneshot;

use crate::error::Error;

/// A piece of hashing work, given the running thread's memory.
type Job = Box<dyn FnOnce(&mut [Block]) + Send>;

/// A fixed set of hashing threads. The threads end when the last clone of the owning
/// [`super::PasswordHasher`] is dropped, because that closes their queue.
pub(super) struct Workers {
    jobs: mpsc::Sender<Job>,
}

impl Workers {
    /// Starts `count` threads at scheduling niceness `nice`, each of which allocates `blocks`
    /// Argon2 blocks at its first job.
    pub(super) fn start(count: usize, blocks: usize, nice: i32) -> Result<Workers, Error> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for index in 0..count {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("argon2-{index}"))
                .spawn(move || {
                    lower_priority(nice);
                    work(&queue, blocks);
                })
                .map_err(|source| Error::Io {
                    operation: "start a password hashing thread",
                    source,
                })?;
        }
        Ok(Workers { jobs })
    }

    /// Runs `job` on the next free thread, with that thread's memory, and returns its result.
    ///
    /// The job runs to the end even if the caller stops waiting; it is bounded by the Argon2
    /// cost. A job that panics gives [`Error::HashWorker`].
    pub(super) async fn run<T, F>(&self, job: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut [Block]) -> T + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        self.jobs
            .send(Box::new(move |memory: &mut [Block]| {
                // The caller may have stopped waiting; the result is then dropped.
                let _ = done.send(job(memory));
            }))
            .map_err(|_| Error::HashWorker)?;
        result.await.map_err(|_| Error::HashWorker)
    }
}

/// Sets the niceness of the calling thread, so that the scheduler prefers the runtime's threads,
/// which serve token checks, over hashing when both want a CPU. A failure is logged and the
/// thread runs at the process's priority.
#[cfg(target_os = "linux")]
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    // On Linux, niceness belongs to a thread, so this changes only the hashing thread.
    let thread = rustix::thread::gettid();
    if let Err(error) = rustix::process::setpriority_process(Some(thread), nice) {
        tracing::warn!(nice, %error, "failed to lower the priority of a hashing thread");
    }
}

/// Leaves the priority alone where niceness is not per thread.
#[cfg(not(target_os = "linux"))]
fn lower_priority(_nice: i32) {}

/// Runs the jobs of one hashing thread until the queue closes.
fn work(queue: &Mutex<mpsc::Receiver<Job>>, blocks: usize) {
    let mut memory: Vec<Block> = Vec::new();
    loop {
        // Idle threads wait here in turn; the lock is held only while one waits for a job.
        let job = match queue.lock() {
            Ok(queue) => match queue.recv() {
                Ok(job) => job,
                Err(mpsc::RecvError) => return,
            },
            Err(_poisoned) => return,
        };
        if memory.len() < blocks {
            memory = vec![Block::default(); blocks];
        }
        // A panicking job drops its result sender, so its caller gets an error, and this
        // thread goes on serving the next job.
        let _ = catch_unwind(AssertUnwindSafe(|| job(&mut memory)));
    }
}
