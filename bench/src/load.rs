//! Load generation over loopback: closed-loop workers, an open-loop flood, and the statistics
//! they produce. Every call is counted by its gRPC status, read from `grpc-status` by tonic,
//! so a failed call sent with HTTP 200 still counts as a failure.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::Code;

/// The measurements of one run.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    /// Calls completed per second.
    pub calls_per_sec: f64,
    /// Latency percentiles in microseconds.
    pub p50_us: f64,
    /// 90th percentile latency in microseconds.
    pub p90_us: f64,
    /// 99th percentile latency in microseconds.
    pub p99_us: f64,
    /// Calls by gRPC status code name.
    pub codes: BTreeMap<String, u64>,
    /// Server CPU time per call in microseconds, when the server process is known.
    pub server_cpu_us_per_call: Option<f64>,
}

impl RunStats {
    /// Returns how many calls ended with a code other than `expected`.
    pub fn unexpected(&self, expected: Code) -> u64 {
        let expected = code_name(expected);
        self.codes
            .iter()
            .filter(|(name, _)| name.as_str() != expected)
            .map(|(_, count)| count)
            .sum()
    }
}

/// Latencies and status codes recorded by the workers of one run.
#[derive(Default)]
struct Recorder {
    latencies_us: Vec<u32>,
    codes: BTreeMap<&'static str, u64>,
}

impl Recorder {
    fn record(&mut self, started: Instant, code: Code) {
        let micros = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
        self.latencies_us.push(micros);
        *self.codes.entry(code_name(code)).or_default() += 1;
    }

    fn merge(&mut self, other: Recorder) {
        self.latencies_us.extend(other.latencies_us);
        for (code, count) in other.codes {
            *self.codes.entry(code).or_default() += count;
        }
    }

    fn finish(mut self, elapsed: Duration) -> RunStats {
        self.latencies_us.sort_unstable();
        let calls = self.latencies_us.len();
        RunStats {
            calls_per_sec: calls as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
            p50_us: percentile(&self.latencies_us, 0.50),
            p90_us: percentile(&self.latencies_us, 0.90),
            p99_us: percentile(&self.latencies_us, 0.99),
            codes: self
                .codes
                .into_iter()
                .map(|(code, count)| (code.to_owned(), count))
                .collect(),
            server_cpu_us_per_call: None,
        }
    }
}

/// Runs `workers` tasks, each calling `call(worker, sequence)` back to back for `duration`.
pub async fn closed_loop<F, Fut>(workers: usize, duration: Duration, call: F) -> RunStats
where
    F: Fn(usize, usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Code> + Send,
{
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..workers.max(1))
        .map(|worker| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut recorder = Recorder::default();
                let mut sequence = worker;
                while Instant::now() < deadline {
                    let began = Instant::now();
                    let code = call(worker, sequence).await;
                    recorder.record(began, code);
                    sequence += workers;
                }
                recorder
            })
        })
        .collect();

    let mut total = Recorder::default();
    for task in tasks {
        if let Ok(recorder) = task.await {
            total.merge(recorder);
        }
    }
    total.finish(started.elapsed())
}

/// Starts `rate` calls a second for `duration` without waiting for responses. At most
/// `max_in_flight` stay outstanding, and calls beyond that are skipped and counted.
pub async fn open_loop<F, Fut>(
    rate: f64,
    max_in_flight: usize,
    duration: Duration,
    call: F,
) -> (RunStats, u64)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Code> + Send + 'static,
{
    let recorder = Arc::new(Mutex::new(Recorder::default()));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1)));
    let period = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);

    let started = Instant::now();
    let mut skipped = 0u64;
    let mut sequence = 0usize;
    while started.elapsed() < duration {
        ticker.tick().await;
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            skipped += 1;
            continue;
        };
        let call = call(sequence);
        sequence += 1;
        let recorder = Arc::clone(&recorder);
        tokio::spawn(async move {
            let began = Instant::now();
            let code = call.await;
            if let Ok(mut recorder) = recorder.lock() {
                recorder.record(began, code);
            }
            drop(permit);
        });
    }
    // Wait for the calls still in flight, so that their latencies count.
    let _all = in_flight.acquire_many(max_in_flight.max(1) as u32).await;
    let elapsed = started.elapsed();
    let recorder = match Arc::try_unwrap(recorder) {
        Ok(mutex) => mutex.into_inner().unwrap_or_default(),
        Err(shared) => shared
            .lock()
            .map(|mut recorder| std::mem::take(&mut *recorder))
            .unwrap_or_default(),
    };
    (recorder.finish(elapsed), skipped)
}

/// Returns the value below which `fraction` of the sorted `values` fall, by nearest rank.
pub fn percentile(sorted: &[u32], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Returns the gRPC name of `code`, as in `PERMISSION_DENIED`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// CPU time and memory of a process, read from `/proc`.
#[derive(Clone, Copy, Debug)]
pub struct ProcessProbe {
    pid: u32,
}

impl ProcessProbe {
    /// Watches process `pid`.
    pub fn new(pid: u32) -> Self {
        ProcessProbe { pid }
    }

    /// Returns the user plus system CPU time the process has used, or `None` off Linux.
    pub fn cpu_time(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        // The command name in field 2 may contain spaces, so count fields after its ')'.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let user: u64 = fields.get(11)?.parse().ok()?;
        let system: u64 = fields.get(12)?.parse().ok()?;
        // NOTE: assumes USER_HZ = 100, the value Linux exposes to user space on x86 and arm64.
        Some(Duration::from_millis((user + system) * 10))
    }

    /// Returns the resident set size in KiB, or `None` off Linux.
    pub fn resident_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_uses_nearest_rank() {
        let values: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&values, 0.50), 50.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&[7], 0.99), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[tokio::test]
    async fn closed_loop_counts_codes() {
        let stats = closed_loop(2, Duration::from_millis(20), |_, sequence| async move {
            tokio::task::yield_now().await;
            if sequence % 2 == 0 {
                Code::Ok
            } else {
                Code::Unauthenticated
            }
        })
        .await;
        assert!(stats.codes.contains_key("OK"));
        assert!(stats.unexpected(Code::Ok) > 0);
    }
}
