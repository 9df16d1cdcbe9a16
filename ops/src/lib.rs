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

