//! The shared access token: login, single-flight renewal and the interceptor that attaches it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use school_proto::auth::v1::auth_service_client::AuthServiceClient;
use school_proto::auth::v1::{IssueServiceTokenRequest, LoginRequest, RefreshTokenRequest};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Request, Status};
use zeroize::Zeroizing;

use crate::credentials::Credentials;

/// How long before its expiry a token is renewed, unless the token lives less than twice as
/// long, in which case it is renewed halfway through its life.
pub const DEFAULT_RENEW_BEFORE: Duration = Duration::from_secs(60);

/// The first wait before a failed background renewal is tried again. It doubles after each
/// failure up to [`MAX_RETRY_DELAY`]. For this long after a failed `Login` call, callers of
/// [`TokenSource::token`] get its error without a new call.
const MIN_RETRY_DELAY: Duration = Duration::from_millis(500);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// A failure to obtain an access token.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// auth-service rejected the login, or could not be reached. The status carries the
    /// server's `ErrorInfo`, such as `INVALID_CREDENTIALS`; see [`crate::error_info`].
    #[error("login as {username:?} failed: {code:?}: {message}", code = status.code(), message = status.message())]
    Login {
        /// The account that tried to log in.
        username: String,
        /// The status of the `Login` call.
        status: Status,
    },
    /// auth-service returned a `Login` response with a token that cannot be used.
    #[error("auth-service returned an unusable access token: {0}")]
    InvalidResponse(&'static str),
}

impl Clone for ClientError {
    fn clone(&self) -> Self {
        match self {
            ClientError::Login { username, status } => ClientError::Login {
                username: username.clone(),
                status: status.clone(),
            },
            ClientError::InvalidResponse(reason) => ClientError::InvalidResponse(reason),
        }
    }
}

/// One issued token, ready to be sent.
struct CachedToken {
    /// `Bearer <token>`, marked sensitive so that `http`'s `Debug` output hides it.
    header: AsciiMetadataValue,
    renew_at: Instant,
    expires_at: Instant,
}

/// An access token shared by every task of a service, logged in and renewed on their behalf.
///
/// Created with [`TokenSource::login`], which logs in once and starts a background task that
/// renews the token before it expires. The task stops when the last handle is dropped.
/// A user's token is renewed with the refresh token of the last `Login` or `RefreshToken`
/// response, and with `Login` when there is none or auth-service rejects it.
/// Renewal is single-flight: whether the background task or any number of callers of
/// [`TokenSource::token`] find the token due, one renewal call is made and everyone else waits
/// for its result.
pub struct TokenSource {
    auth: AuthServiceClient<Channel>,
    credentials: Credentials,
    renew_before: Duration,
    current: RwLock<Option<Arc<CachedToken>>>,
    /// Held during a `Login` call, so that only one runs at a time.
    renewal: tokio::sync::Mutex<()>,
    /// The number of `Login` calls started, successful or not.
    logins: AtomicU64,
    /// The number of `RefreshToken` calls started, successful or not.
    refreshes: AtomicU64,
    /// The refresh token of the current session, taken out while it is being exchanged.
    refresh_token: std::sync::Mutex<Option<Zeroizing<String>>>,
    /// The number of `Login` calls finished, successful or not.
    finished: AtomicU64,
    /// When the last `Login` call failed and why, if it failed.
    last_error: RwLock<Option<(Instant, ClientError)>>,
    renewer: RwLock<Option<AbortHandle>>,
    /// Wakes the background renewal before the token falls due, after a rejection.
    wake_renewer: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("username", &self.credentials.username())
            .field("renew_before", &self.renew_before)
            .field("logins", &self.login_count())
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// Logs in to the auth-service at `auth` as `credentials` and starts renewing the token
    /// [`DEFAULT_RENEW_BEFORE`] its expiry. A user logs in with `Login`, and a service account
    /// ([`Credentials::service_account`]) with `IssueServiceToken`. Must be called within a
    /// Tokio runtime.
    ///
    /// Fails if this first login fails, so a wrong password shows at start-up rather than on
    /// the first call.
    pub async fn login(auth: Channel, credentials: Credentials) -> Result<Arc<Self>, ClientError> {
        Self::login_with_renewal(auth, credentials, DEFAULT_RENEW_BEFORE).await
    }

    /// Like [`TokenSource::login`], but renews each token `renew_before` its expiry, or halfway
    /// through its life if that comes later.
    pub async fn login_with_renewal(
        auth: Channel,
        credentials: Credentials,
        renew_before: Duration,
    ) -> Result<Arc<Self>, ClientError> {
        let source = Arc::new(TokenSource {
            auth: AuthServiceClient::new(auth),
            credentials,
            renew_before,
            current: RwLock::new(None),
            renewal: tokio::sync::Mutex::new(()),
            logins: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
            refresh_token: std::sync::Mutex::new(None),
            finished: AtomicU64::new(0),
            last_error: RwLock::new(None),
            renewer: RwLock::new(None),
            wake_renewer: Arc::new(tokio::sync::Notify::new()),
        });
        source.renew_if_due().await?;

        let renewer = tokio::spawn(renew_in_background(
            Arc::downgrade(&source),
            Arc::clone(&source.wake_renewer),
        ));
        if let Ok(mut slot) = source.renewer.write() {
            *slot = Some(renewer.abort_handle());
        }
        Ok(source)
    }

    /// Returns an interceptor that attaches the current token to every request.
    pub fn interceptor(self: &Arc<Self>) -> BearerInterceptor {
        BearerInterceptor {
            source: Arc::clone(self),
        }
    }

    /// Waits until the shared token is fresh, renewing it first if it is due, and returns the
    /// `authorization` metadata value to send, `Bearer <token>`.
    ///
    /// The interceptor does not wait, so call this before a batch of calls made after a long
    /// outage of auth-service, when the background renewal may have fallen behind.
    pub async fn token(&self) -> Result<AsciiMetadataValue, ClientError> {
        Ok(self.renew_if_due().await?.header.clone())
    }

    /// Reports that a server rejected the token `sent` with `status`, and returns whether the
    /// status rejects the token itself, so that a new one is needed.
    ///
    /// Only `UNAUTHENTICATED` with the `ErrorInfo` reason `TOKEN_EXPIRED` or `TOKEN_REVOKED`
    /// renews: the token itself is no longer accepted, for example after a logout, a password
    /// change or clocks that disagree. The renewal starts in the background at once, and the
    /// next [`TokenSource::token`] waits for it. A rejected token that is no longer the
    /// current one, because another task reported it first, renews nothing again.
    pub fn token_rejected(&self, sent: &AsciiMetadataValue, status: &Status) -> bool {
        let reason = crate::error_info(status).map(|info| info.reason);
        let renews = status.code() == tonic::Code::Unauthenticated
            && matches!(reason.as_deref(), Some("TOKEN_EXPIRED" | "TOKEN_REVOKED"));
        if !renews {
            return false;
        }
        if let Ok(mut current) = self.current.write()
            && let Some(token) = current.as_ref().filter(|token| token.header == *sent)
        {
            // Due now, but still sent by the interceptor until a new one arrives.
            *current = Some(Arc::new(CachedToken {
                header: token.header.clone(),
                renew_at: Instant::now(),
                expires_at: token.expires_at,
            }));
            self.wake_renewer.notify_one();
        }
        true
    }

    /// Returns the number of `Login` calls made so far, successful or not.
    pub fn login_count(&self) -> u64 {
        self.logins.load(Ordering::SeqCst)
    }

    /// Returns the number of `RefreshToken` calls made so far, successful or not.
    pub fn refresh_count(&self) -> u64 {
        self.refreshes.load(Ordering::SeqCst)
    }

    /// Returns the username this source logs in as.
    pub fn username(&self) -> &str {
        self.credentials.username()
    }

    fn cached(&self) -> Option<Arc<CachedToken>> {
        self.current.read().ok().and_then(|current| current.clone())
    }

    /// Returns the cached token if it is not yet due for renewal.
    fn fresh(&self) -> Option<Arc<CachedToken>> {
        self.cached()
            .filter(|token| Instant::now() < token.renew_at)
    }

    /// Returns a token that is not due for renewal, logging in if needed. Concurrent callers
    /// share one `Login` call, and share its error too.
    async fn renew_if_due(&self) -> Result<Arc<CachedToken>, ClientError> {
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        let finished_before = self.finished.load(Ordering::SeqCst);

        let _renewal = self.renewal.lock().await;
        // The task that held the lock may have just renewed the token.
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        // It may also have just failed. Retrying at once would repeat the failure once per
        // waiting task, so waiters share the error, and so does everyone for a short while.
        let last_error = self.last_error.read().ok().and_then(|last| last.clone());
        if let Some((failed_at, error)) = last_error {
            let waited_for_it = self.finished.load(Ordering::SeqCst) != finished_before;
            if waited_for_it || failed_at.elapsed() < MIN_RETRY_DELAY {
                return Err(error);
            }
        }

        let result = match self.refresh_session().await {
            Some(token) => Ok(token),
            None => self.log_in().await,
        };
        self.finished.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut last) = self.last_error.write() {
            *last = result
                .as_ref()
                .err()
                .map(|error| (Instant::now(), error.clone()));
        }
        let token = Arc::new(result?);
        if let Ok(mut current) = self.current.write() {
            *current = Some(Arc::clone(&token));
        }
        Ok(token)
    }

    async fn log_in(&self) -> Result<CachedToken, ClientError> {
        let sent_at = Instant::now();
        self.logins.fetch_add(1, Ordering::SeqCst);
        let login_failed = |status| ClientError::Login {
            username: self.credentials.username().to_owned(),
            status,
        };
        let (access_token, expires_in) = match self.credentials.audience() {
            None => {
                let response = self
                    .auth
                    .clone()
                    .login(LoginRequest {
                        username: self.credentials.username().to_owned(),
                        password: self.credentials.password().to_owned(),
                    })
                    .await
                    .map_err(login_failed)?
                    .into_inner();
                self.keep_refresh_token(response.refresh_token);
                (response.access_token, response.expires_in)
            }
            Some(audience) => {
                let response = self
                    .auth
                    .clone()
                    .issue_service_token(IssueServiceTokenRequest {
                        client_id: self.credentials.username().to_owned(),
                        client_secret: self.credentials.password().to_owned(),
                        audience: audience.to_owned(),
                    })
                    .await
                    .map_err(login_failed)?
                    .into_inner();
                (response.access_token, response.expires_in)
            }
        };

        self.cached_token(&access_token, expires_in, sent_at)
    }

    /// Exchanges the refresh token of the last `Login`, if there is one, for a new access token
    /// and refresh token. Returns `None` when there is none or the exchange fails, so that the
    /// caller logs in instead.
    async fn refresh_session(&self) -> Option<CachedToken> {
        let refresh_token = self.refresh_token.lock().ok()?.take()?;
        let sent_at = Instant::now();
        self.refreshes.fetch_add(1, Ordering::SeqCst);
        let request = RefreshTokenRequest {
            refresh_token: refresh_token.to_string(),
        };
        let response = match self.auth.clone().refresh_token(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                tracing::info!(
                    user.name = self.credentials.username(),
                    code = ?status.code(),
                    "refresh token rejected; logging in again"
                );
                return None;
            }
        };
        self.keep_refresh_token(response.refresh_token);
        self.cached_token(&response.access_token, response.expires_in, sent_at)
            .ok()
    }

    /// Keeps a refresh token for the next renewal; an empty one, from an auth-service without
    /// sessions, is dropped.
    fn keep_refresh_token(&self, token: String) {
        if let Ok(mut slot) = self.refresh_token.lock() {
            *slot = Some(Zeroizing::new(token)).filter(|token| !token.is_empty());
        }
    }

    /// Builds the cached form of an access token that lives `expires_in` seconds from
    /// `sent_at`.
    fn cached_token(
        &self,
        access_token: &str,
        expires_in: i64,
        sent_at: Instant,
    ) -> Result<CachedToken, ClientError> {
        let lifetime = u64::try_from(expires_in)
            .ok()
            .filter(|&seconds| seconds > 0)
            .map(Duration::from_secs)
            .ok_or(ClientError::InvalidResponse("expires_in is not positive"))?;
        let mut header: AsciiMetadataValue =
            MetadataValue::try_from(format!("Bearer {access_token}"))
                .map_err(|_| ClientError::InvalidResponse("the token is not visible ASCII"))?;
        header.set_sensitive(true);

        // Measured from before the request, so the token is renewed early rather than late.
        let expires_at = sent_at + lifetime;
        let renew_at = expires_at - self.renew_before.min(lifetime / 2);
        tracing::debug!(
            user.name = self.credentials.username(),
            expires_in,
            "access token renewed"
        );
        Ok(CachedToken {
            header,
            renew_at,
            expires_at,
        })
    }
}

impl Drop for TokenSource {
    fn drop(&mut self) {
        if let Ok(mut renewer) = self.renewer.write()
            && let Some(handle) = renewer.take()
        {
            handle.abort();
        }
    }
}

/// Renews the token of `source` whenever it falls due or `wake` is notified, until the source
/// is dropped. Holds only a weak reference, so it never keeps the source alive.
async fn renew_in_background(source: Weak<TokenSource>, wake: Arc<tokio::sync::Notify>) {
    let mut retry_delay = MIN_RETRY_DELAY;
    loop {
        let due = match source.upgrade() {
            Some(source) => source.cached().map(|token| token.renew_at),
            None => return,
        };
        if let Some(due) = due {
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                () = wake.notified() => {}
            }
        }

        let Some(strong) = source.upgrade() else {
            return;
        };
        let result = strong.renew_if_due().await;
        let username = strong.username().to_owned();
        drop(strong);
        match result {
            Ok(_) => retry_delay = MIN_RETRY_DELAY,
            Err(error) => {
                tracing::warn!(
                    user.name = username,
                    error = %error,
                    retry_in_ms = retry_delay.as_millis() as u64,
                    "access token renewal failed"
                );
                tokio::time::sleep(retry_delay).await;
                retry_delay = (retry_delay * 2).min(MAX_RETRY_DELAY);
            }
        }
    }
}

/// A tonic interceptor that sends the current token of a [`TokenSource`] as
/// `authorization: Bearer <token>`, replacing any `authorization` entry already set.
///
/// It never waits for a renewal. When the source has no unexpired token, because renewal has
/// failed for long enough that the last token expired, the call fails at once with
/// `UNAUTHENTICATED` and is not sent.
#[derive(Clone, Debug)]
pub struct BearerInterceptor {
    source: Arc<TokenSource>,
}

impl Interceptor for BearerInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let token = self
            .source
            .cached()
            .filter(|token| Instant::now() < token.expires_at)
            .ok_or_else(|| {
                Status::unauthenticated(
                    "no unexpired access token: renewal from auth-service is failing; \
                     the client keeps retrying in the background",
                )
            })?;
        request
            .metadata_mut()
            .insert("authorization", token.header.clone());
        Ok(request)
    }
}
