//! Start-up: opening storage, loading keys, binding the listener and serving until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use school_guard::reload::{PolicySource, reload_on_sighup, served_methods};
use school_guard::verify::{TokenVerifier, VerifierConfig};
use school_guard::{Guard, GuardLayer, Policy};
use school_ops::{ConcurrencyLimitLayer, MetricsEndpoint};
use school_proto::auth::v1::auth_service_server::AuthServiceServer;
use school_proto::auth::v1::user_service_server::UserServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::ServingStatus;

use crate::config::{Config, Reflection};
use crate::error::Error;
use crate::keys::KeyRing;
use crate::operations::ServiceMetrics;
use crate::password::PasswordHasher;
use crate::service::AuthApi;
use crate::sessions::{Revoker, Sessions};
use crate::store::SledStore;
use crate::throttle::LoginThrottle;
use crate::tokens::TokenIssuer;
use crate::user_service::UserApi;
use crate::users::Users;

/// The gRPC service name, as health checks and reflection report it.
pub const SERVICE_NAME: &str = "school.auth.v1.AuthService";

/// The name of the user management service, which health and reflection report too.
pub const USER_SERVICE_NAME: &str = "school.auth.v1.UserService";

/// The largest request message accepted, in bytes. Requests carry at most a 1 KiB password or
/// an 8 KiB token, so anything near this size is hostile.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The largest HTTP/2 header list (all metadata of one request, uncompressed, as RFC 9113
/// counts it) accepted, in bytes. An 8 KiB token and the usual gRPC headers fit; hyper's
/// default is 16 MiB, which lets one request hold that much memory.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// How long in-flight requests, such as health watch streams, may run after shutdown starts
/// before they are dropped.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// A server with storage open, keys loaded and the listener bound, not yet serving.
#[derive(Debug)]
pub struct BoundServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    /// The tonic server builder, set up for TLS when `--tls-cert` is given.
    transport: tonic::transport::Server,
    tls: bool,
    store: SledStore,
    users: Users,
    api: AuthApi,
    guard: Arc<Guard>,
    policy_source: PolicySource,
    shadow_source: Option<PolicySource>,
    throttle: LoginThrottle,
    reflection: Reflection,
    keys: Arc<KeyRing>,
    /// The rotation interval and lead time, when automatic rotation is on.
    key_rotation: Option<(std::time::Duration, std::time::Duration)>,
    revoker: Revoker,
    purge_interval: std::time::Duration,
    metrics: ServiceMetrics,
    metrics_endpoint: Option<MetricsEndpoint>,
    max_concurrent_requests: usize,
}

/// Opens the store and a password hasher with the configured parameters, for the server and
/// the offline `user` subcommands.
pub async fn open_users(config: &Config) -> Result<(SledStore, Users), Error> {
    let (store, users, _) = open_accounts(config).await?;
    Ok((store, users))
}

/// Opens the store, the user accounts and the revoker that disabling a user goes through.
async fn open_accounts(config: &Config) -> Result<(SledStore, Users, Revoker), Error> {
    let store = SledStore::open(&config.data_dir).await?;
    let hasher = PasswordHasher::with_thread_nice(
        config.hash_params(),
        config.hash_concurrency(),
        config.hash_nice,
    )
    .await?;
    let revoker =
        Revoker::load(Arc::new(store.clone()), config.token_ttl(), config.leeway()).await?;
    let users = Users::new(Arc::new(store.clone()), hasher).with_revoker(revoker.clone());
    Ok((store, users, revoker))
}

/// Validates the configuration, opens storage, loads or creates the signing key, creates the
/// bootstrap admin if configured and missing, and binds the listener.
///
/// Fails with [`Error::DataDirLocked`] if another server or `user` command has the data
/// directory open, and with [`Error::InvalidConfig`] before touching anything if a setting is invalid.
pub async fn bind(config: Config) -> Result<BoundServer, Error> {
    config.validate()?;
    let (policy_source, shadow_source) = policy_sources(&config)?;
    let policy = load_policy(&policy_source)?;
    let shadow_policy = shadow_source.as_ref().map(load_policy).transpose()?;
    // Read the TLS files before opening anything, so a bad file fails start-up at once.
    let transport = config.tls.server_builder()?;

    let (store, users, revoker) = open_accounts(&config).await?;
    let keys = Arc::new(
        KeyRing::load_or_create(&store)
            .await?
            .retiring_after(config.token_ttl() + config.leeway())?,
    );
    create_bootstrap_admin(&config, &users).await?;

    let issuer = TokenIssuer::new(
        Arc::clone(&keys),
        config.issuer.clone(),
        config.audience.clone(),
        config.token_ttl(),
    );
    let verifier = TokenVerifier::new(
        keys.key_set()?,
        VerifierConfig {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway(),
        },
    )
    .with_revocations(revoker.list().clone());
    let sessions = Sessions::new(
        Arc::new(store.clone()),
        Arc::new(store.clone()),
        issuer.clone(),
        revoker.clone(),
        config.refresh_token_ttl(),
    )
    .with_max_sessions_per_user(config.max_sessions_per_user);
    let throttle = config.throttle.open(&config.data_dir)?;
    // The guard verifies with this service's own keys, so it needs no key fetch.
    let guard = Arc::new(Guard::new(verifier.clone(), policy));
    guard.set_shadow_policy(shadow_policy);
    let api = AuthApi::new(users.clone(), issuer, verifier, &keys, sessions)
        .with_login_throttle(throttle.clone());

    let metrics = ServiceMetrics::new(&store, users.hasher());
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

    Ok(BoundServer {
        listener,
        local_addr,
        transport,
        tls: config.tls.enabled(),
        store,
        users,
        api,
        guard,
        policy_source,
        shadow_source,
        throttle,
        reflection: config.reflection,
        keys,
        key_rotation: (config.keys.key_rotation_secs > 0).then(|| {
            (
                std::time::Duration::from_secs(config.keys.key_rotation_secs),
                config.keys.lead(),
            )
        }),
        revoker,
        purge_interval: config.session_purge_interval(),
        metrics,
        metrics_endpoint,
        max_concurrent_requests: usize::try_from(config.max_concurrent_requests)
            .unwrap_or(usize::MAX),
    })
}

async fn create_bootstrap_admin(config: &Config, users: &Users) -> Result<(), Error> {
    let (Some(username), Some(password)) = (
        &config.bootstrap_admin_username,
        &config.bootstrap_admin_password,
    ) else {
        return Ok(());
    };
    if users.ensure_admin(username, password).await? {
        tracing::info!(user.name = ?username, "bootstrap admin created");
    }
    Ok(())
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

    /// Returns the bound address, with the real port when the configuration asked for port 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Returns the guard in front of every service, to read its policies and shadow counts.
    pub fn guard(&self) -> Arc<Guard> {
        Arc::clone(&self.guard)
    }

    /// Returns a handle to the user accounts of this server's store.
    pub fn users(&self) -> Users {
        self.users.clone()
    }

    /// Serves AuthService, health and reflection until `shutdown` completes, then stops
    /// accepting connections, lets in-flight requests finish, and flushes the database.
    ///
    /// Health reports SERVING for `""` and [`SERVICE_NAME`] while running and NOT_SERVING for
    /// both once shutdown starts.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let (health, health_service) = tonic_health::server::health_reporter();
        for name in [SERVICE_NAME, USER_SERVICE_NAME] {
            health
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }
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
        let auth = AuthServiceServer::new(self.api).max_decoding_message_size(MAX_REQUEST_BYTES);
        let user_admin = UserServiceServer::new(
            UserApi::new(self.users.clone()).with_login_throttle(self.throttle.clone()),
        )
        .max_decoding_message_size(MAX_REQUEST_BYTES);
        let reload = reload_on_sighup(
            Arc::clone(&self.guard),
            self.policy_source,
            self.shadow_source,
        )
        .map_err(|source| Error::Io {
            operation: "install SIGHUP handler",
            source,
        })?;

        let purge = self.revoker.spawn_purge(self.purge_interval);
        let rotation = self.key_rotation.map(|(every, lead)| {
            tokio::spawn(crate::keys::rotate_periodically(
                Arc::clone(&self.keys),
                Arc::new(self.store.clone()),
                every,
                lead,
            ))
        });
        let metrics_task = self.metrics_endpoint.map(|endpoint| {
            tracing::info!(metrics.addr = %endpoint.local_addr(), "metrics endpoint listening");
            tokio::spawn(async move {
                if let Err(error) = endpoint.serve(std::future::pending()).await {
                    tracing::error!(%error, "the metrics endpoint stopped");
                }
            })
        });
        let revoker = self.revoker.clone();
        let (drain_started, drain_signal) = tokio::sync::oneshot::channel::<()>();
        let grace_expired = async move {
            if drain_signal.await.is_ok() {
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let shutdown = async move {
            shutdown.await;
            let _ = drain_started.send(());
            tracing::info!("shutdown requested; finishing in-flight requests");
            // Revocation streams never end by themselves, so graceful shutdown would wait forever.
            revoker.close_streams();
            for name in ["", SERVICE_NAME, USER_SERVICE_NAME] {
                health
                    .set_service_status(name, ServingStatus::NotServing)
                    .await;
            }
        };
        let served = self
            .transport
            .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
            .max_concurrent_streams(Some(school_ops::MAX_STREAMS_PER_CONNECTION))
            .timeout(school_ops::REQUEST_TIMEOUT)
            // Outermost first: metrics see shed requests and guard rejections too. The guard
            // runs before the limit, so calls without a valid token to protected methods never
            // take a place in it.
            .layer(self.metrics.metrics.layer())
            .layer(GuardLayer::new(Arc::clone(&self.guard)))
            .layer(ConcurrencyLimitLayer::new(
                self.max_concurrent_requests,
                self.metrics.shed.clone(),
            ))
            .add_service(health_service)
            .add_optional_service(reflection_v1)
            .add_optional_service(reflection_v1alpha)
            .add_service(auth)
            .add_service(user_admin)
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.listener), shutdown);
        let served = tokio::select! {
            result = served => result.map_err(Error::Transport),
            // NOTE: tonic runs each connection in its own task, so a connection still open
            // here lives on until the process exits.
            () = grace_expired => {
                tracing::warn!(
                    grace_secs = SHUTDOWN_GRACE.as_secs(),
                    "in-flight requests did not finish within the grace period; dropping them"
                );
                Ok(())
            }
        };
        reload.abort();
        purge.abort();
        if let Some(metrics_task) = metrics_task {
            metrics_task.abort();
        }
        if let Some(rotation) = rotation {
            rotation.abort();
        }

        if let Err(error) = self.throttle.flush() {
            tracing::warn!(error = %error.report(), "flushing the login throttle counters failed");
        }
        let flushed = self.store.flush().await;
        served.and(flushed)
    }
}

/// Lists AuthService, health and both reflection versions, but not the StudentService that
/// shares the descriptor set.
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(school_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .with_service_name(SERVICE_NAME)
        .with_service_name(USER_SERVICE_NAME)
        .with_service_name("grpc.health.v1.Health")
        .with_service_name("grpc.reflection.v1.ServerReflection")
        .with_service_name("grpc.reflection.v1alpha.ServerReflection")
}

/// Returns the sources of the enforced and the shadow policy, checked against the methods this
/// server serves. Reflection counts as served even with `--reflection off`, so that one policy
/// fits both settings.
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
            USER_SERVICE_NAME,
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ],
    )
    .map_err(|source| Error::InvalidPolicy {
        origin: "service descriptors".to_owned(),
        source,
    })?;
    let served = Arc::new(served);
    let enforced = match &config.policy {
        Some(path) => PolicySource::file(path.clone(), Arc::clone(&served)),
        None => PolicySource::built_in(crate::config::DEFAULT_POLICY, Arc::clone(&served)),
    };
    let shadow = config
        .shadow_policy
        .as_ref()
        .map(|path| PolicySource::file(path.clone(), served));
    Ok((enforced, shadow))
}

fn load_policy(source: &PolicySource) -> Result<Policy, Error> {
    source.load().map_err(|error| Error::InvalidPolicy {
        origin: source.describe(),
        source: error,
    })
}

/// Returns a future that completes on the first SIGINT or SIGTERM. The handlers are installed
/// before this returns, so a signal that arrives later is not lost.
pub fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static, Error> {
    use tokio::signal::unix::{SignalKind, signal};

    let install = |kind| {
        signal(kind).map_err(|source| Error::Io {
            operation: "install signal handler",
            source,
        })
    };
    let mut interrupt = install(SignalKind::interrupt())?;
    let mut terminate = install(SignalKind::terminate())?;

    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!(signal = "SIGINT", "signal received"),
            _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
        }
    })
}
