//! The tower layer that authenticates and authorizes every request before any handler runs.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use bytes::Buf;
use http::{HeaderMap, Request, Response};
use http_body::Body;
use tonic::Status;
use tower::{Layer, Service};

use crate::bearer::bearer_token;
use crate::identity::{Access, Grant, Identity};
use crate::policy::{Policy, Rule};
use crate::rejection;
use crate::remote::KeyFetcher;
use crate::revocation::RevocationList;
use crate::verify::{TokenError, TokenVerifier};

/// The maximum length of a request path written to a log, in bytes. Paths are chosen by the
/// client, so a long one must not bloat the logs.
const MAX_LOGGED_PATH_LEN: usize = 128;

/// The maximum number of bytes of a rejected request's body read before the response is sent. It matches the
/// services' message size limit, so a unary request is read whole.
const MAX_DRAINED_BYTES: usize = 64 * 1024;

/// The maximum time a rejected request waits for the rest of its body.
const MAX_DRAIN_TIME: std::time::Duration = std::time::Duration::from_millis(100);

/// Authenticates requests with a [`TokenVerifier`] and authorizes them with a [`Policy`].
///
/// The policy can be replaced while the server runs ([`Guard::replace_policy`]): each request
/// is decided by the one policy that was current when it arrived. An optional shadow policy is
/// evaluated beside it, and its decisions are logged and counted but never enforced.
pub struct Guard {
    verifier: TokenVerifier,
    policy: RwLock<Arc<Policy>>,
    shadow: RwLock<Option<Arc<Policy>>>,
    shadow_agreed: AtomicU64,
    shadow_disagreed: AtomicU64,
    reloads_succeeded: AtomicU64,
    reloads_failed: AtomicU64,
    fetcher: Option<Arc<KeyFetcher>>,
    required_revocations: Option<RevocationList>,
}

/// How often the shadow policy agreed and disagreed with the enforced one, since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShadowCounts {
    /// Requests that both policies allowed or both denied.
    pub agreed: u64,
    /// Requests that one policy allowed and the other denied.
    pub disagreed: u64,
}

/// How many policy reloads succeeded and failed, since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReloadCounts {
    /// Reloads that swapped in the new policies.
    pub succeeded: u64,
    /// Reloads that kept at least one old policy because its new version was invalid.
    pub failed: u64,
}

/// The outcome of a successful check of a protected method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorized {
    /// The verified caller.
    pub identity: Identity,
    /// How much of the method's data the caller may reach.
    pub access: Access,
    /// The rule that allowed the call.
    pub grant: Grant,
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("policy", &self.policy())
            .field("shadow_policy", &self.shadow_policy())
            .finish_non_exhaustive()
    }
}

impl Guard {
    /// Creates a guard that verifies tokens with `verifier` and decides with `policy`.
    pub fn new(verifier: TokenVerifier, policy: Policy) -> Self {
        Guard {
            verifier,
            policy: RwLock::new(Arc::new(policy)),
            shadow: RwLock::new(None),
            shadow_agreed: AtomicU64::new(0),
            shadow_disagreed: AtomicU64::new(0),
            reloads_succeeded: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            fetcher: None,
            required_revocations: None,
        }
    }

    /// Lets the guard refresh its keys through `fetcher` when a token names an unknown key id,
    /// at most once every [`crate::remote::UNKNOWN_KEY_REFRESH_INTERVAL`].
    pub fn with_key_fetcher(mut self, fetcher: Arc<KeyFetcher>) -> Self {
        self.fetcher = Some(fetcher);
        self
    }

    /// Makes the guard fail closed until `list` has received its first snapshot: until then
    /// every call to a protected method gets `UNAVAILABLE` with reason `REVOCATIONS_NOT_LOADED`,
    /// so a token revoked while this service was down is never accepted after a restart.
    pub fn require_revocation_list(mut self, list: RevocationList) -> Self {
        self.required_revocations = Some(list);
        self
    }

    /// Returns the policy the guard enforces now.
    pub fn policy(&self) -> Arc<Policy> {
        Arc::clone(&self.policy.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the enforced policy. Requests already being checked finish with the old one.
    pub fn replace_policy(&self, policy: Policy) {
        *self.policy.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(policy);
    }

    /// Returns the shadow policy, if one is set.
    pub fn shadow_policy(&self) -> Option<Arc<Policy>> {
        self.shadow
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Sets or removes the shadow policy, whose decisions are logged and counted beside the
    /// enforced ones but never enforced.
    pub fn set_shadow_policy(&self, policy: Option<Policy>) {
        *self.shadow.write().unwrap_or_else(PoisonError::into_inner) = policy.map(Arc::new);
    }

    /// Returns how often the shadow policy agreed with the enforced one.
    pub fn shadow_counts(&self) -> ShadowCounts {
        ShadowCounts {
            agreed: self.shadow_agreed.load(Ordering::Relaxed),
            disagreed: self.shadow_disagreed.load(Ordering::Relaxed),
        }
    }

    /// Counts one reload of the policies, successful or not.
    pub fn record_reload(&self, succeeded: bool) {
        let counter = if succeeded {
            &self.reloads_succeeded
        } else {
            &self.reloads_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Returns how many policy reloads succeeded and failed.
    pub fn reload_counts(&self) -> ReloadCounts {
        ReloadCounts {
            succeeded: self.reloads_succeeded.load(Ordering::Relaxed),
            failed: self.reloads_failed.load(Ordering::Relaxed),
        }
    }

    /// Decides whether a request for `path` with metadata `headers` may proceed.
    ///
    /// Returns `Ok(None)` for a public method, and the caller's identity, access and the rule
    /// that allowed it for an allowed call to a protected one. Fails with `UNAUTHENTICATED`
    /// when the bearer token is missing or invalid, and with `PERMISSION_DENIED` when the
    /// caller's role may not call the method or the policy does not name the method.
    pub async fn check(
        &self,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Option<Authorized>, Status> {
        let policy = self.policy();
        let (outcome, identity) = self.decide(&policy, path, headers).await;
        if let Some(shadow) = self.shadow_policy() {
            self.compare_with_shadow(&shadow, path, identity.as_ref(), outcome.is_ok());
        }
        outcome
    }

    /// Decides with `policy`, and returns the verified caller too when there is one, for the
    /// shadow policy.
    async fn decide(
        &self,
        policy: &Policy,
        path: &str,
        headers: &HeaderMap,
    ) -> (Result<Option<Authorized>, Status>, Option<Identity>) {
        let rule = policy.rule(path);
        if rule == Rule::Public {
            return (Ok(None), None);
        }
        if self
            .required_revocations
            .as_ref()
            .is_some_and(|list| !list.is_synchronized())
        {
            tracing::debug!(
                grpc.method = loggable(path),
                "request rejected: revocation list not loaded"
            );
            return (Err(rejection::revocations_not_loaded()), None);
        }

        let token = match bearer_token(headers) {
            Ok(token) => token,
            Err(error) => {
                tracing::info!(
                    grpc.method = loggable(path),
                    reason = error.as_str(),
                    "request rejected: not authenticated"
                );
                return (Err(rejection::credential_rejected(error)), None);
            }
        };

        let identity = match self.verify(token).await {
            Ok(claims) => Identity::from(claims),
            Err(error) => {
                tracing::info!(
                    grpc.method = loggable(path),
                    reason = error.as_str(),
                    "request rejected: not authenticated"
                );
                return (Err(rejection::token_rejected(error)), None);
            }
        };

        let granted = match rule {
            Rule::Protected(method_rule) => method_rule
                .access_for(&identity.role)
                .map(|access| (access, method_rule)),
            Rule::Public | Rule::Unknown => None,
        };
        let Some((access, method_rule)) = granted else {
            let (reason, permission) = match rule {
                Rule::Protected(method_rule) => ("role_not_allowed", method_rule.permission()),
                Rule::Public | Rule::Unknown => ("no_rule", ""),
            };
            // Denials go to the audit log too, with the rule that decided.
            tracing::info!(
                target: "audit",
                actor = identity.subject.as_str(),
                grpc.method = loggable(path),
                actor.role = identity.role.as_str(),
                action = "call",
                outcome = "denied",
                reason,
                rule.permission = permission,
                "request denied"
            );
            let message = denial_message(path, &identity, rule);
            let status = rejection::access_denied(path, &identity, rule, message);
            return (Err(status), Some(identity));
        };

        let permission = match access {
            Access::Full => method_rule.permission(),
            Access::OwnerOnly => method_rule
                .owner_permission()
                .unwrap_or(method_rule.permission()),
        };
        let grant = Grant {
            method: path.trim_start_matches('/').to_owned(),
            permission: permission.to_owned(),
        };
        tracing::debug!(
            grpc.method = loggable(path),
            caller = identity.subject.as_str(),
            caller.role = identity.role.as_str(),
            ?access,
            rule.permission = permission,
            "request allowed"
        );
        let authorized = Authorized {
            identity: identity.clone(),
            access,
            grant,
        };
        (Ok(Some(authorized)), Some(identity))
    }

    /// Logs and counts what `shadow` would have decided for the request.
    ///
    /// Without a verified caller, the shadow policy allows only public methods: the enforced
    /// policy either did not read the token (its method is public) or rejected it.
    fn compare_with_shadow(
        &self,
        shadow: &Policy,
        path: &str,
        identity: Option<&Identity>,
        enforced_allowed: bool,
    ) {
        let shadow_allowed = match shadow.rule(path) {
            Rule::Public => true,
            Rule::Protected(rule) => {
                identity.is_some_and(|identity| rule.access_for(&identity.role).is_some())
            }
            Rule::Unknown => false,
        };
        let decision = |allowed: bool| if allowed { "allow" } else { "deny" };
        if shadow_allowed == enforced_allowed {
            self.shadow_agreed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.shadow_disagreed.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            target: "shadow_policy",
            caller = identity.map_or("", |identity| identity.subject.as_str()),
            grpc.method = loggable(path),
            caller.role = identity.map_or("", |identity| identity.role.as_str()),
            enforced = decision(enforced_allowed),
            shadow = decision(shadow_allowed),
            "shadow policy disagrees with the enforced policy"
        );
    }

    async fn verify(&self, token: &str) -> Result<crate::claims::Claims, TokenError> {
        match self.verifier.verify_async(token).await {
            Err(TokenError::UnknownKey) => match &self.fetcher {
                Some(fetcher) if fetcher.refresh_for_unknown_key().await => {
                    self.verifier.verify_async(token).await
                }
                _ => Err(TokenError::UnknownKey),
            },
            result => result,
        }
    }
}

fn denial_message(path: &str, identity: &Identity, rule: Rule<'_>) -> String {
    match rule {
        Rule::Unknown => "permission denied: no policy rule allows this method".to_owned(),
        Rule::Public | Rule::Protected(_) => format!(
            "permission denied: role {:?} may not call {}",
            identity.role,
            path.trim_start_matches('/')
        ),
    }
}

/// Cuts a client-chosen path to a length fit for a log line, on a character boundary.
fn loggable(path: &str) -> &str {
    if path.len() <= MAX_LOGGED_PATH_LEN {
        return path;
    }
    let mut end = MAX_LOGGED_PATH_LEN;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    &path[..end]
}

/// A [`tower::Layer`] that puts a [`Guard`] in front of every service of a tonic server.
///
/// ```ignore
/// Server::builder().layer(GuardLayer::new(guard)).add_service(service)
/// ```
///
/// A rejected request gets its gRPC status at once and never reaches the service.
/// An allowed request to a protected method carries [`Identity`], [`Access`] and [`Grant`] in
/// its extensions.
#[derive(Clone, Debug)]
pub struct GuardLayer {
    guard: Arc<Guard>,
}

impl GuardLayer {
    /// Creates a layer that checks requests with `guard`.
    pub fn new(guard: Arc<Guard>) -> Self {
        GuardLayer { guard }
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = GuardService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GuardService {
            guard: Arc::clone(&self.guard),
            inner,
        }
    }
}

/// The service that [`GuardLayer`] wraps around each inner service.
#[derive(Clone, Debug)]
pub struct GuardService<S> {
    guard: Arc<Guard>,
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for GuardService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Body + Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // The clone takes the place of the service that poll_ready made ready, as tower requires.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let guard = Arc::clone(&self.guard);

        Box::pin(async move {
            let path = request.uri().path().to_owned();
            match guard.check(&path, request.headers()).await {
                Ok(Some(authorized)) => {
                    request.extensions_mut().insert(authorized.identity);
                    request.extensions_mut().insert(authorized.access);
                    request.extensions_mut().insert(authorized.grant);
                    inner.call(request).await
                }
                Ok(None) => inner.call(request).await,
                Err(status) => {
                    drain_body(request.into_body()).await;
                    Ok(status.into_http())
                }
            }
        })
    }
}

/// Reads and discards what the client sent of a rejected request's body, up to
/// [`MAX_DRAINED_BYTES`] and for at most [`MAX_DRAIN_TIME`].
///
/// Responding before the body is read makes the HTTP/2 server reset the stream, and the client's
/// DATA frames then arrive on a reset stream. At tens of thousands of rejections a second those
/// resets trip h2's protection against reset floods, which closes the whole connection and
/// fails the unrelated calls on it. A unary request's body usually arrives with its headers,
/// so reading it first costs little and lets the stream end normally.
async fn drain_body<B: Body>(body: B) {
    let mut body = std::pin::pin!(body);
    let deadline = tokio::time::Instant::now() + MAX_DRAIN_TIME;
    let mut drained = 0usize;
    while drained <= MAX_DRAINED_BYTES {
        let frame = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx));
        match tokio::time::timeout_at(deadline, frame).await {
            Ok(Some(Ok(frame))) => {
                drained = drained.saturating_add(frame.data_ref().map_or(0, Buf::remaining));
            }
            Ok(Some(Err(_)) | None) | Err(_) => return,
        }
    }
}
