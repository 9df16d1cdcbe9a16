//! Operational support: the metrics of student-service and the key refresh loop that retries
//! with backoff while auth-service is unreachable.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use school_guard::remote::KeyFetcher;
use school_ops::Metrics;

use crate::store::SledStore;

/// The first wait after a failed key refresh; it doubles up to the refresh interval.
const FIRST_REFRESH_RETRY: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The metrics of one student-service process.
#[derive(Clone, Debug)]
pub struct ServiceMetrics {
    /// The registry, with the request metrics of [`Metrics::new`].
    pub metrics: Metrics,
    /// Requests rejected by the concurrency limit.
    pub shed: Counter,
    key_refreshes: Family<OutcomeLabels, Counter>,
    /// Seconds from auth-service sending a new revocation to the guard applying it.
    pub revocation_lag: Histogram,
}

impl ServiceMetrics {
    /// Creates the registry and adds the metrics of this service: key refreshes by outcome,
    /// requests shed, revocation lag, the database size and the group commit counters of
    /// `store`.
    pub fn new(store: &SledStore) -> Self {
        let metrics = Metrics::new();
        let shed = Counter::default();
        let key_refreshes = Family::<OutcomeLabels, Counter>::default();
        metrics.register(
            "requests_shed",
            "Requests rejected with RESOURCE_EXHAUSTED by the concurrency limit",
            shed.clone(),
        );
        metrics.register(
            "key_refreshes",
            "Fetches of the verification keys from auth-service, by outcome (ok or failed)",
            key_refreshes.clone(),
        );
        let revocation_lag = Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]);
        metrics.register(
            "revocation_lag_seconds",
            "Time from auth-service sending a new revocation to the guard applying it",
            revocation_lag.clone(),
        );
        let sized = store.clone();
        metrics.register_storage(store.commit_stats(), move || sized.size_on_disk().ok());
        ServiceMetrics {
            metrics,
            shed,
            key_refreshes,
            revocation_lag,
        }
    }

    fn key_refresh(&self, outcome: &'static str) {
        self.key_refreshes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }
}

/// Fetches the verification keys every `every`. After a failure it keeps the current keys,
/// so tokens signed with them still verify, and retries sooner, starting at one second and
/// doubling up to `every`, logging each retry.
pub async fn refresh_keys(fetcher: Arc<KeyFetcher>, every: Duration, metrics: ServiceMetrics) {
    let mut wait = every;
    let mut failures: u32 = 0;
    loop {
        tokio::time::sleep(wait).await;
        match fetcher.fetch().await {
            Ok(count) => {
                metrics.key_refresh("ok");
                if failures > 0 {
                    tracing::info!(
                        keys.count = count,
                        failures,
                        "verification keys refreshed again"
                    );
                } else {
                    tracing::debug!(keys.count = count, "verification keys refreshed");
                }
                failures = 0;
                wait = every;
            }
            Err(error) => {
                metrics.key_refresh("failed");
                failures = failures.saturating_add(1);
                wait = if failures == 1 {
                    FIRST_REFRESH_RETRY.min(every)
                } else {
                    (wait * 2).min(every)
                };
                tracing::warn!(
                    %error,
                    attempt = failures,
                    retry.delay_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    "refreshing verification keys failed; keeping the current keys and retrying"
                );
            }
        }
    }
}
