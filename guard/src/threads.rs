//! Dedicated threads for CPU-heavy work, such as signature checks and password hashing, run at
//! a lower scheduling priority than the async runtime.
//!
//! On a busy machine the scheduler then gives the runtime's threads the CPU first, so calls that
//! need no heavy work, such as those whose token is already cached, are not delayed behind a
//! flood of calls that do. Each thread keeps a state of its own from one job to the next, for
//! example the working memory of a hash, so the memory it uses is allocated once.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, mpsc};

use tokio::sync::oneshot;

/// How much lower than the rest of the process heavy work runs unless configured otherwise, in
/// steps of niceness: 0 is the process's own priority.
pub const DEFAULT_NICE: i32 = 10;

/// The highest niceness, the lowest priority the scheduler offers.
pub const MAX_NICE: i32 = 19;

/// A job failed to run, because its thread panicked or the threads stopped.
#[derive(Debug, thiserror::Error)]
#[error("worker thread failed")]
pub struct WorkerFailed;

/// A job, given the state of the thread that runs it.
type Job<S> = Box<dyn FnOnce(&mut S) + Send>;

/// A fixed set of named threads taking jobs from one queue. The threads end when the
/// `WorkerThreads` is dropped, because that closes their queue.
pub struct WorkerThreads<S> {
    jobs: mpsc::Sender<Job<S>>,
}

impl<S: 'static> WorkerThreads<S> {
    /// Starts `count` threads named `name-0`, `name-1` and so on, `nice` steps of niceness
    /// below the process (0 to [`MAX_NICE`]; the result is capped at [`MAX_NICE`]). Each thread
    /// creates its state with `state` before its first job.
    pub fn start<F>(name: &str, count: usize, nice: i32, state: F) -> std::io::Result<Self>
    where
        F: Fn() -> S + Clone + Send + 'static,
    {
        let (jobs, queue) = mpsc::channel::<Job<S>>();
        let queue = Arc::new(Mutex::new(queue));
        for index in 0..count.max(1) {
            let queue = Arc::clone(&queue);
            let state = state.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{index}"))
                .spawn(move || {
                    lower_priority(nice);
                    work(&queue, state());
                })?;
        }
        Ok(WorkerThreads { jobs })
    }

    /// Runs `job` on the next free thread with that thread's state, and returns its result.
    ///
    /// The job runs to the end even if the caller stops waiting. A job that panics gives
    /// [`WorkerFailed`], and its thread goes on with the next job.
    pub async fn run<T, F>(&self, job: F) -> Result<T, WorkerFailed>
    where
        T: Send + 'static,
        F: FnOnce(&mut S) -> T + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        self.jobs
            .send(Box::new(move |state: &mut S| {
                // The caller may have stopped waiting; the result is then dropped.
                let _ = done.send(job(state));
            }))
            .map_err(|_| WorkerFailed)?;
        result.await.map_err(|_| WorkerFailed)
    }
}

/// Runs the jobs of one thread until the queue closes.
fn work<S>(queue: &Mutex<mpsc::Receiver<Job<S>>>, mut state: S) {
    loop {
        // Idle threads wait here in turn; the lock is held only while one waits for a job.
        let job = match queue.lock() {
            Ok(queue) => match queue.recv() {
                Ok(job) => job,
                Err(mpsc::RecvError) => return,
            },
            Err(_poisoned) => return,
        };
        // A panicking job drops its result sender, so its caller gets an error.
        let _ = catch_unwind(AssertUnwindSafe(|| job(&mut state)));
    }
}

/// Lowers the priority of the calling thread by `steps` of niceness from what it inherited,
/// up to [`MAX_NICE`]. It never raises the priority, so a process started with `nice` keeps
/// its heavy work below its other threads. A failure is logged, and the thread keeps the
/// process's priority.
#[cfg(target_os = "linux")]
fn lower_priority(steps: i32) {
    if steps <= 0 {
        return;
    }
    // On Linux, niceness belongs to a thread, so this reads and changes only the calling thread.
    let thread = Some(rustix::thread::gettid());
    let lowered = rustix::process::getpriority_process(thread).and_then(|inherited| {
        let target = inherited.saturating_add(steps).min(MAX_NICE);
        rustix::process::setpriority_process(thread, target).map(|()| target)
    });
    if let Err(error) = lowered {
        tracing::warn!(steps, %error, "failed to lower the priority of a worker thread");
    }
}

/// Leaves the priority alone where niceness is not per thread.
#[cfg(not(target_os = "linux"))]
fn lower_priority(_steps: i32) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_share_the_state_of_their_thread() -> Result<(), WorkerFailed> {
        let threads = WorkerThreads::start("test", 1, 0, || 0u32).map_err(|_| WorkerFailed)?;

        for expected in 1..=3 {
            let count = threads
                .run(|count: &mut u32| {
                    *count += 1;
                    *count
                })
                .await?;
            assert_eq!(count, expected);
        }
        Ok(())
    }

    #[tokio::test]
    async fn panicking_job_fails_and_thread_survives() -> Result<(), WorkerFailed> {
        let threads = WorkerThreads::start("test", 1, 0, || ()).map_err(|_| WorkerFailed)?;

        let failed = threads
            .run(|_: &mut ()| -> u8 { panic!("job failure in a test") })
            .await;
        let next = threads.run(|_: &mut ()| 7u8).await?;

        assert!(failed.is_err());
        assert_eq!(next, 7);
        Ok(())
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn threads_run_below_their_parent() -> Result<(), WorkerFailed> {
        let niceness = || rustix::process::getpriority_process(Some(rustix::thread::gettid()));

        for steps in [7, MAX_NICE + 5] {
            // Threads inherit the niceness of the thread that starts them, this one.
            let own = niceness().map_err(|_| WorkerFailed)?;
            let threads =
                WorkerThreads::start("test", 1, steps, || ()).map_err(|_| WorkerFailed)?;

            let measured = threads.run(move |_: &mut ()| niceness()).await?;

            assert_eq!(measured.ok(), Some((own + steps).min(MAX_NICE)), "{steps}");
        }
        Ok(())
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn threads_of_a_niced_parent_stay_below_it() -> Result<(), Box<dyn std::error::Error>> {
        // A thread of its own stands for a process started with `nice -n 15`.
        let parent = std::thread::spawn(|| -> Result<i32, String> {
            let thread = Some(rustix::thread::gettid());
            let own = rustix::process::getpriority_process(thread).map_err(|e| e.to_string())?;
            rustix::process::setpriority_process(thread, (own + 15).min(MAX_NICE))
                .map_err(|e| e.to_string())?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let threads =
                    WorkerThreads::start("test", 1, 10, || ()).map_err(|e| e.to_string())?;
                threads
                    .run(|_: &mut ()| {
                        rustix::process::getpriority_process(Some(rustix::thread::gettid()))
                    })
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())
            })
        });

        let measured = parent.join().map_err(|_| "parent thread panicked")??;

        assert_eq!(measured, MAX_NICE, "never above the parent's priority");
        Ok(())
    }
}
