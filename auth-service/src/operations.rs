//! The metrics of auth-service.

use prometheus_client::metrics::counter::Counter;
use school_ops::{Metrics, ValueCollector, ValueKind};

use crate::password::PasswordHasher;
use crate::store::SledStore;

/// The metrics of one auth-service process.
#[derive(Clone, Debug)]
pub struct ServiceMetrics {
    /// The registry, with the request metrics of [`Metrics::new`]. Login latency is
    /// `grpc_server_handling_seconds{method="/school.auth.v1.AuthService/Login"}`.
    pub metrics: Metrics,
    /// Requests rejected by the concurrency limit.
    pub shed: Counter,
}

impl ServiceMetrics {
    /// Creates the registry and adds the metrics of this service: requests shed, the database
    /// size and the group commit counters of `store`, and the depth of `hasher`'s queue.
    pub fn new(store: &SledStore, hasher: &PasswordHasher) -> Self {
        let metrics = Metrics::new();
        let shed = Counter::default();
        metrics.register(
            "requests_shed",
            "Requests rejected with RESOURCE_EXHAUSTED by the concurrency limit",
            shed.clone(),
        );
        let sized = store.clone();
        metrics.register_storage(store.commit_stats(), move || sized.size_on_disk().ok());
        let queue = hasher.clone();
        metrics.register_collector(ValueCollector::new(
            "argon2_queue_depth",
            "Password hash operations waiting for a hashing slot",
            ValueKind::Gauge,
            move || i64::try_from(queue.queue_depth()).unwrap_or(i64::MAX),
        ));
        ServiceMetrics { metrics, shed }
    }
}
