//! Keeps a [`KeySet`] in step with the keys that auth-service publishes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use school_proto::auth::v1::ListPublicKeysRequest;
use school_proto::auth::v1::auth_service_client::AuthServiceClient;
use tonic::transport::Channel;

use crate::keys::{ALGORITHM_NAME, CURVE_NAME, KeyError, KeySet, VerificationKey};

/// The time allowed for one `ListPublicKeys` call.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The first and the longest wait between failed fetches at start-up.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);

/// The shortest time between two fetches caused by tokens with an unknown `kid`, so that tokens
/// with random key ids cannot make this service hammer auth-service.
pub const UNKNOWN_KEY_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// A failed key fetch. The old keys stay in use.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The call to auth-service failed.
    #[error("ListPublicKeys call failed: {0}")]
    Call(#[from] tonic::Status),
    /// The call took longer than the fetch timeout.
    #[error("ListPublicKeys call timed out after {0:?}")]
    TimedOut(Duration),
    /// auth-service published no usable key.
    #[error("auth-service published no usable EdDSA key")]
    NoKeys,
    /// A published key is invalid.
    #[error("auth-service published an invalid key: {0}")]
    InvalidKey(#[from] KeyError),
}

/// Fetches the public keys from auth-service into a [`KeySet`]: at start-up until it succeeds,
/// on a timer, and when a token names a key the set does not hold.
#[derive(Debug)]
pub struct KeyFetcher {
    client: AuthServiceClient<Channel>,
    keys: KeySet,
    /// When the last fetch caused by an unknown key id started.
    last_unknown_key_fetch: Mutex<Option<Instant>>,
    /// Lets one fetch run at a time, so concurrent misses share one call.
    in_flight: tokio::sync::Mutex<()>,
    /// ListPublicKeys calls made, for tests and metrics.
    calls: std::sync::atomic::AtomicU64,
}

impl KeyFetcher {
    /// Creates a fetcher that writes into `keys`.
    pub fn new(client: AuthServiceClient<Channel>, keys: KeySet) -> Self {
        KeyFetcher {
            client,
            keys,
            last_unknown_key_fetch: Mutex::new(None),
            in_flight: tokio::sync::Mutex::new(()),
            calls: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Returns how many ListPublicKeys calls this fetcher has made, successful or not.
    pub fn calls(&self) -> u64 {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Returns the key set the fetcher writes into.
    pub fn keys(&self) -> &KeySet {
        &self.keys
    }

    /// Fetches the keys once and replaces the whole set, or keeps the old set on failure.
    /// Returns the number of keys now trusted.
    pub async fn fetch(&self) -> Result<usize, FetchError> {
        let _one_at_a_time = self.in_flight.lock().await;
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut client = self.client.clone();
        let call = client.list_public_keys(ListPublicKeysRequest {});
        let response = tokio::time::timeout(FETCH_TIMEOUT, call)
            .await
            .map_err(|_| FetchError::TimedOut(FETCH_TIMEOUT))??
            .into_inner();

        let keys: Vec<VerificationKey> = response
            .keys
            .into_iter()
            .filter(|key| key.algorithm == ALGORITHM_NAME && key.curve == CURVE_NAME)
            .map(|key| VerificationKey {
                key_id: key.key_id,
                public_key: key.public_key,
            })
            .collect();
        if keys.is_empty() {
            return Err(FetchError::NoKeys);
        }
        let count = keys.len();
        self.keys.replace(keys)?;
        Ok(count)
    }

    /// Fetches the keys, retrying with exponential backoff until a fetch succeeds.
    pub async fn fetch_until_ready(&self) {
        let mut delay = FIRST_RETRY_DELAY;
        let mut attempt = 1u32;
        loop {
            match self.fetch().await {
                Ok(count) => {
                    tracing::info!(keys.count = count, attempt, "verification keys fetched");
                    return;
                }
                Err(error) => {
                    tracing::warn!(
                        %error,
                        attempt,
                        retry.delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        "fetching verification keys failed, retrying"
                    );
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_RETRY_DELAY);
            attempt = attempt.saturating_add(1);
        }
    }

    /// Starts a task that fetches the keys every `every`, keeping the old keys when a fetch
    /// fails, so that auth-service being down never stops verification.
    pub fn spawn_refresh(self: Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match self.fetch().await {
                    Ok(count) => tracing::debug!(keys.count = count, "verification keys refreshed"),
                    Err(error) => tracing::warn!(
                        %error,
                        "refreshing verification keys failed, keeping the current keys"
                    ),
                }
            }
        })
    }

    /// Fetches the keys because a token named an unknown key id, unless such a fetch started less
    /// than [`UNKNOWN_KEY_REFRESH_INTERVAL`] ago. Returns whether the key set was refreshed.
    pub async fn refresh_for_unknown_key(&self) -> bool {
        {
            let mut last = match self.last_unknown_key_fetch.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            let now = Instant::now();
            if last.is_some_and(|at| now.duration_since(at) < UNKNOWN_KEY_REFRESH_INTERVAL) {
                return false;
            }
            *last = Some(now);
        }

        match self.fetch().await {
            Ok(count) => {
                tracing::info!(
                    keys.count = count,
                    "verification keys refreshed for an unknown key id"
                );
                true
            }
            Err(error) => {
                tracing::warn!(%error, "refreshing verification keys for an unknown key id failed");
                false
            }
        }
    }
}
