//! Start-up and serving: binding the listener, the key fetch, health, reflection and shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use school_guard::keys::KeySet;
use school_guard::reload::{PolicySource, reload_on_sighup, served_methods};
use school_guard::remote::KeyFetcher;
use school_guard::revocation::{RevocationList, RevocationWatcher};
use school_guard::verify::{TokenVerifier, VerifierConfig};
use school_guard::{Guard, GuardLayer, Policy};
use school_ops::{ConcurrencyLimitLayer, MetricsEndpoint};
use school_proto::auth::v1::auth_service_client::AuthServiceClient;
use school_proto::student::v1::student_service_server::{SERVICE_NAME, StudentServiceServer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::config::{Config, Reflection};
use crate::error::Error;
use crate::operations::{ServiceMetrics, refresh_keys};
use crate::service::StudentApi;
use crate::store::{SledStore, StudentStore};

/// Name of the health service, advertised through reflection.
const HEALTH_SERVICE_NAME: &str = "grpc.health.v1.Health";

/// The largest request message accepted, in bytes; tonic's default is 4 MiB. The largest valid
/// request, a CreateStudent with every field at its limit, is well under 2 KiB.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The largest HTTP/2 header list (all metadata of one request, uncompressed, as RFC 9113
/// counts it) accepted, in bytes. An 8 KiB token and the usual gRPC headers fit; hyper's
/// default is 16 MiB.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// Maximum time to establish the connection to auth-service.
const AUTH_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The interval of HTTP/2 keep-alive pings on the revocation stream, and the time to wait for
/// each answer.
const REVOCATION_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Maximum time of one call to auth-service.
const AUTH_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A server whose configuration, policy and storage are loaded and whose listener is bound,
/// ready to [`serve`](BoundServer::serve).
pub struct BoundServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    /// The tonic server builder, set up for TLS when `--tls-cert` is given.
    transport: Server,
    tls: bool,
    store: Arc<SledStore>,
    guard: Arc<Guard>,
    policy_source: PolicySource,
    shadow_source: Option<PolicySource>,
    fetcher: Arc<KeyFetcher>,
    revocation_watcher: RevocationWatcher,
    revocations: RevocationList,
    key_refresh: Duration,
    metrics: ServiceMetrics,
    metrics_endpoint: Option<MetricsEndpoint>,
    max_concurrent_requests: usize,
    reflection: Reflection,
    /// Health `Watch` streams never end by themselves, so graceful shutdown needs a bound.
    shutdown_grace: Duration,
}

/// Validates `config`, parses the policy, opens the database and binds the listener.
///
/// It does not contact auth-service: [`BoundServer::serve`] fetches the verification keys in
/// the background.
pub async fn bind(config: Config) -> Result<BoundServer, Error> {
    config.validate()?;
    let (policy_source, shadow_source) = policy_sources(&config)?;
    let policy = load_policy(&policy_source)?;
    let shadow_policy = shadow_source.as_ref().map(load_policy).transpose()?;
    // Read the TLS files before opening anything, so a bad file fails start-up at once.
    let transport = config.tls.server_builder()?;
    let endpoint = config
        .tls
        .auth_endpoint(&config.auth_url)?
        .connect_timeout(AUTH_CONNECT_TIMEOUT);

    let store = Arc::new(SledStore::open(&config.data_dir)?);
    tracing::info!(data_dir = %config.data_dir.display(), "student database opened");
    let metrics = ServiceMetrics::new(&store);
    metrics.metrics.set_known_methods(policy_source.served());
    let metrics_endpoint = match config.metrics_listen {
        Some(addr) => Some(
            MetricsEndpoint::bind(addr, metrics.metrics.clone())
                .await
                .map_err(|source| Error::Bind { addr, source })?,
        ),
        None => None,
    };

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: config.listen,
        source,
    })?;

    let channel = endpoint.clone().timeout(AUTH_CALL_TIMEOUT).connect_lazy();
    // The revocation stream stays open, so its channel has no call timeout; keep-alive pings
    // notice a connection that died without a reset, so the watcher can resubscribe.
    let revocation_channel = endpoint
        .http2_keep_alive_interval(REVOCATION_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(REVOCATION_KEEP_ALIVE_INTERVAL)
        .keep_alive_while_idle(true)
        .connect_lazy();
    let keys = KeySet::new();
    let revocations = RevocationList::new();
    let fetcher = Arc::new(KeyFetcher::new(
        AuthServiceClient::new(channel),
        keys.clone(),
    ));
    let verifier = TokenVerifier::new(
        keys,
        VerifierConfig {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway(),
        },
    )
    .with_revocations(revocations.clone());
    let lag = metrics.revocation_lag.clone();
    let revocation_watcher = RevocationWatcher::new(
        AuthServiceClient::new(revocation_channel),
        revocations.clone(),
        verifier.cache().clone(),
    )
    .with_lag_observer(move |delay| lag.observe(delay.as_secs_f64()));
    let guard = Arc::new(
        Guard::new(verifier, policy)
            .with_key_fetcher(Arc::clone(&fetcher))
            .require_revocation_list(revocations.clone()),
    );
    guard.set_shadow_policy(shadow_policy);

    Ok(BoundServer {
        listener,
        local_addr,
        transport,
        tls: config.tls.enabled(),
        store,
        guard,
        policy_source,
        shadow_source,
        fetcher,
        revocation_watcher,
        revocations: revocations.clone(),
        key_refresh: config.key_refresh_interval(),
        metrics,
        metrics_endpoint,
        max_concurrent_requests: usize::try_from(config.max_concurrent_requests)
            .unwrap_or(usize::MAX),
        reflection: config.reflection,
        shutdown_grace: config.shutdown_grace(),
    })
}

impl BoundServer {
    /// Returns the bound address of the metrics endpoint, when `--metrics-listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_endpoint
            .as_ref()
            .map(MetricsEndpoint::local_addr)
    }

    /// Reports whether the listener speaks TLS.
    pub fn tls_enabled(&self) -> bool {
        self.tls
    }

    /// Returns the address the listener is bound to, with the actual port when port 0 was
    /// requested.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves gRPC until `shutdown` completes, then finishes in-flight calls for at most the
    /// configured grace period and flushes the database.
    ///
    /// Health reports NOT_SERVING for "" and `school.student.v1.StudentService` until the
    /// first key fetch from auth-service succeeds, then SERVING until shutdown starts. The keys
    /// are refreshed at the configured interval.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let (health, health_service) = tonic_health::server::health_reporter();
        set_health(&health, ServingStatus::NotServing).await;

        let (reflection_v1, reflection_v1alpha) = match self.reflection {
            Reflection::On => (
                Some(reflection_builder().build_v1().map_err(Error::Reflection)?),
                Some(
                    reflection_builder()
                        .build_v1alpha()
                        .map_err(Error::Reflection)?,
                ),
            ),
            Reflection::Off => (None, None),
        };
        let students = StudentServiceServer::new(StudentApi::new(Arc::clone(&self.store)))
            .max_decoding_message_size(MAX_REQUEST_BYTES);

        let reload = reload_on_sighup(
            Arc::clone(&self.guard),
            self.policy_source,
            self.shadow_source,
        );
        let reload_task = match reload {
            Ok(task) => Some(AbortOnDrop(task)),
            Err(error) => {
                tracing::error!(
                    %error,
                    "failed to install the SIGHUP handler; policy reload is off"
                );
                None
            }
        };
        let revocation_task = AbortOnDrop(self.revocation_watcher.spawn());
        let keys_task = tokio::spawn(load_keys(
            Arc::clone(&self.fetcher),
            self.revocations.clone(),
            health.clone(),
            self.key_refresh,
            self.metrics.clone(),
        ));
        let metrics_task = self.metrics_endpoint.map(|endpoint| {
            tracing::info!(metrics.addr = %endpoint.local_addr(), "metrics endpoint listening");
            AbortOnDrop(tokio::spawn(async move {
                if let Err(error) = endpoint.serve(std::future::pending()).await {
                    tracing::error!(%error, "the metrics endpoint stopped");
                }
            }))
        });

        let (drain_started, drain_signal) = oneshot::channel::<()>();
        let signal = {
            let health = health.clone();
            async move {
                shutdown.await;
                tracing::info!("shutdown requested; finishing in-flight calls");
                set_health(&health, ServingStatus::NotServing).await;
                let _ = drain_started.send(());
            }
        };
        let grace = self.shutdown_grace;
        let grace_expired = async move {
            if drain_signal.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        };

        let serving = self
            .transport
            .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
            .max_concurrent_streams(Some(school_ops::MAX_STREAMS_PER_CONNECTION))
            .timeout(school_ops::REQUEST_TIMEOUT)
            // Outermost first: metrics see shed requests and guard rejections too. The guard
            // runs before the limit, so calls without a valid token never take a place in it.
            .layer(self.metrics.metrics.layer())
            .layer(GuardLayer::new(self.guard))
            .layer(ConcurrencyLimitLayer::new(
                self.max_concurrent_requests,
                self.metrics.shed.clone(),
            ))
            .add_service(health_service)
            .add_optional_service(reflection_v1)
            .add_optional_service(reflection_v1alpha)
            .add_service(students)
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.listener), signal);
        let served = tokio::select! {
            result = serving => result.map_err(Error::Transport),
            // NOTE: tonic runs each connection in its own task, so a connection still open
            // here lives on, holding the store and its directory lock, until the runtime stops.
            () = grace_expired => {
                tracing::warn!(
                    grace_secs = grace.as_secs(),
                    "in-flight calls did not finish within the grace period; dropping them"
                );
                Ok(())
            }
        };

        keys_task.abort();
        drop(revocation_task);
        drop(reload_task);
        drop(metrics_task);
        let flushed = self.store.flush().await;
        served?;
        flushed
    }
}

impl BoundServer {
    /// Returns the guard in front of every service, to read its policies and shadow counts.
    pub fn guard(&self) -> Arc<Guard> {
        Arc::clone(&self.guard)
    }
}

/// Returns the sources of the enforced and the shadow policy, checked against the methods this
/// server serves: StudentService, health and both reflection versions.
fn policy_sources(config: &Config) -> Result<(PolicySource, Option<PolicySource>), Error> {
    let served = served_methods(
        &[
            school_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ],
        &[
            SERVICE_NAME,
            HEALTH_SERVICE_NAME,
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ],
    )
    .map_err(|source| Error::InvalidPolicy {
        origin: "service descriptors".to_owned(),
        source,
    })?;
    let served = Arc::new(served);
    Ok((
        config.policy_source(Arc::clone(&served)),
        config.shadow_policy_source(served),
    ))
}

fn load_policy(source: &PolicySource) -> Result<Policy, Error> {
    source.load().map_err(|source_error| Error::InvalidPolicy {
        origin: source.describe(),
        source: source_error,
    })
}

/// Starts a reflection builder that lists only the services this server runs. The school
/// descriptor set also describes AuthService, which must not be advertised here.
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(school_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name(SERVICE_NAME)
        .with_service_name(HEALTH_SERVICE_NAME)
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(SERVICE_NAME, status).await;
}

/// Fetches the verification keys until one fetch succeeds and waits for the first revocation
/// snapshot, reports SERVING, then keeps the keys refreshed every `refresh` until this task is
/// aborted.
async fn load_keys(
    fetcher: Arc<KeyFetcher>,
    revocations: RevocationList,
    health: HealthReporter,
    refresh: Duration,
    metrics: ServiceMetrics,
) {
    fetcher.fetch_until_ready().await;
    // The watcher task fills the list; until it has, the guard rejects protected calls.
    while !revocations.is_synchronized() {
        tokio::time::sleep(REVOCATION_POLL_INTERVAL).await;
    }
    set_health(&health, ServingStatus::Serving).await;
    tracing::info!("verification keys and revocation list loaded; health is SERVING");

    refresh_keys(fetcher, refresh, metrics).await;
}

/// How often the start-up task checks whether the first revocation snapshot has arrived.
const REVOCATION_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Aborts the task when dropped, so a task spawned for the server stops with it.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
