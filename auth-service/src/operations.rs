//! The metrics of auth-service.

use prometheus_client::metrics::counter::Counter;
use school_ops::Metrics;

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
    /// size and the group commit counters of `store`.
    // TODO: export the Argon2 queue depth, which `PasswordHasher` counts but does not expose.
    // Until then `grpc_server_in_flight` for Login bounds it from above.
    pub fn new(store: &SledStore) -> Self {
        let metrics = Metrics::new();
        let shed = Counter::default();
        metrics.register(
            "requests_shed",
            "Requests rejected with RESOURCE_EXHAUSTED by the concurrency limit",
            shed.clone(),
        );
        let sized = store.clone();
        metrics.register_storage(store.commit_stats(), move || sized.size_on_disk().ok());
        ServiceMetrics { metrics, shed }
    }
}
