//! Operations support shared by auth-service and student-service: Prometheus metrics for gRPC
//! requests, an HTTP endpoint that serves them, a limit on concurrent requests that sheds the
//! excess with `RESOURCE_EXHAUSTED`, and TLS for the gRPC listeners.

mod endpoint;
mod limit;
mod metrics;
pub mod tls;

pub use endpoint::MetricsEndpoint;
pub use limit::ConcurrencyLimitLayer;
pub use metrics::{Metrics, RequestMetricsLayer, ValueCollector, ValueKind};

/// The maximum time a request may take until its response headers are sent, whatever deadline the
/// client set. It bounds how long a client that never finishes sending its request can hold a
/// place under the concurrency limit.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The most HTTP/2 streams one connection may have open at once, so that one connection cannot
/// take the whole concurrency limit.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;
