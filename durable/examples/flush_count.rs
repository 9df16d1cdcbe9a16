//! Measures how many flushes concurrent writers cause, with sled's own `flush_async` per write
//! and with [`GroupCommit`]. Run it under strace to count the syncs that reach the kernel (sled
//! 0.34 syncs its log with `sync_file_range`), with a writer count as the second argument:
//!
//! ```sh
//! cargo build -p school-durable --example flush_count
//! strace -f -c -e trace=fsync,fdatasync,sync_file_range target/debug/examples/flush_count per-write 4
//! strace -f -c -e trace=fsync,fdatasync,sync_file_range target/debug/examples/flush_count group 4
//! ```
//!
//! NOTE: with 8 or more writers the `per-write` mode stops making progress on sled 0.34.7 (it
//! had not finished after 30 s on a 2-core machine), so run it under `timeout`.

use std::time::Instant;

use school_durable::GroupCommit;

const WRITES_PER_WRITER: usize = 50;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let group = match std::env::args().nth(1).as_deref() {
        Some("group") => true,
        Some("per-write") => false,
        _ => return Err("usage: flush_count per-write|group [WRITERS]".into()),
    };
    let writers: usize = match std::env::args().nth(2) {
        Some(count) => count.parse()?,
        None => 32,
    };
    let dir = tempfile::tempdir()?;
    let db = sled::Config::new().path(dir.path()).open()?;
    let committer = GroupCommit::start(db.clone())?;

    let started = Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let db = db.clone();
        let committer = committer.clone();
        tasks.push(tokio::spawn(async move {
            for write in 0..WRITES_PER_WRITER {
                db.insert(format!("{writer}-{write}"), vec![0u8; 200])?;
                if group {
                    committer.commit().await?;
                } else {
                    db.flush_async().await?;
                }
            }
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed();

    let writes = writers * WRITES_PER_WRITER;
    println!(
        "{} writes by {writers} writers in {elapsed:?} ({:.0} writes/s); group commit flushes: {}",
        writes,
        writes as f64 / elapsed.as_secs_f64(),
        committer.stats().flushes()
    );
    Ok(())
}
