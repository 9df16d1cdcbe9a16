//! A load benchmark of the guard layer and auth-service over loopback.
//!
//! The driver starts a server process (see [`serve`]) that runs auth-service, the guarded
//! student-service, the same student-service without its guard layer (the baseline, which only
//! this crate can build) and a bare tonic echo server. It then drives each scenario of
//! [`scenarios`], alternating reference and measured runs, and prints medians and ratios.

pub mod load;
pub mod report;
pub mod scenarios;
pub mod serve;

/// A failure of the benchmark itself, as opposed to a call that the load counts.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A file, pipe or process operation failed.
    #[error("{operation} failed")]
    Io {
        /// The operation, as in "write setup file".
        operation: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The setup file could not be written or read.
    #[error("invalid setup file")]
    Json(#[source] serde_json::Error),
    /// A connection to a server of the server process failed.
    #[error("failed to connect to a benchmark server")]
    Connect(#[source] tonic::transport::Error),
    /// A call made while preparing the servers failed.
    #[error("setup call failed: {0}")]
    Setup(tonic::Status),
    /// The baseline store could not be opened.
    #[error("failed to open the baseline store")]
    Baseline(#[source] student_service::Error),
    /// The verification keys could not be fetched from auth-service.
    #[error("failed to fetch verification keys")]
    KeyFetch(#[source] school_guard::remote::FetchError),
    /// The server process stopped before it was ready.
    #[error("the server process exited before printing `ready`")]
    ServerExited,
    /// A value the benchmark relies on is missing or invalid.
    #[error("missing {0}")]
    Missing(&'static str),
    /// `--only` names a scenario that does not exist.
    #[error(
        "unknown scenario {0:?}; expected one of reused, cold, hostile, badsig, validate, login, denial"
    )]
    UnknownScenario(String),
}

impl BenchError {
    /// Returns a function that wraps an I/O error with the `operation` that failed.
    pub fn io(operation: &'static str) -> impl FnOnce(std::io::Error) -> BenchError {
        move |source| BenchError::Io { operation, source }
    }
}
