//! The tower layer that authenticates and authorizes every request before any handler runs.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, Request, Response};
use tonic::Status;
use tower::{Layer, Service};

use crate::bearer::bearer_token;
use crate::identity::{Access, Identity};
use crate::policy::{Policy, Rule};
use crate::rejection;
use crate::remote::KeyFetcher;
use crate::verify::{TokenError, TokenVerifier};

/// The longest part of a request path written to a log, in bytes. Paths are chosen by the
/// client, so a long one must not bloat the logs.
const MAX_LOGGED_PATH_LEN: usize = 128;

/// Authenticates requests with a [`TokenVerifier`] and authorizes them with a [`Policy`].
pub struct Guard {
    verifier: TokenVerifier,
    policy: Policy,
    fetcher: Option<Arc<KeyFetcher>>,
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Guard {
    /// Creates a guard that verifies tokens with `verifier` and decides with `policy`.
    pub fn new(verifier: TokenVerifier, policy: Policy) -> Self {
        Guard {
            verifier,
            policy,
            fetcher: None,
        }
    }

    /// Lets the guard refresh its keys through `fetcher` when a token names an unknown key id,
    /// at most once every [`crate::remote::UNKNOWN_KEY_REFRESH_INTERVAL`].
    pub fn with_key_fetcher(mut self, fetcher: Arc<KeyFetcher>) -> Self {
        self.fetcher = Some(fetcher);
        self
    }

    /// Returns the policy the guard enforces.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Decides whether a request for `path` with metadata `headers` may proceed.
    ///
    /// Returns `Ok(None)` for a public method, and the caller's identity and access for an
    /// allowed call to a protected one. Fails with `UNAUTHENTICATED` when the bearer token is
    /// missing or invalid, and with `PERMISSION_DENIED` when the caller's role may not call the
    /// method or the policy does not name the method.
    pub async fn check(
        &self,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Option<(Identity, Access)>, Status> {
        let rule = self.policy.rule(path);
        if rule == Rule::Public {
            return Ok(None);
        }

        let token = bearer_token(headers).map_err(|error| {
            tracing::info!(
                grpc.method = loggable(path),
                reason = error.as_str(),
                "request rejected: not authenticated"
            );
            rejection::credential_rejected(error)
        })?;

        let identity = Identity::from(self.verify(token).await.map_err(|error| {
            tracing::info!(
                grpc.method = loggable(path),
                reason = error.as_str(),
                "request rejected: not authenticated"
            );
            rejection::token_rejected(error)
        })?);

        let access = match rule {
            Rule::Protected(method_rule) => method_rule.access_for(&identity.role),
            Rule::Public | Rule::Unknown => None,
        };
        let Some(access) = access else {
            let reason = if rule == Rule::Unknown {
                "no_rule"
            } else {
                "role_not_allowed"
            };
            tracing::info!(
                grpc.method = loggable(path),
                caller = identity.subject.as_str(),
                caller.role = identity.role.as_str(),
                reason,
                "request denied"
            );
            let message = denial_message(path, &identity, rule);
            return Err(rejection::access_denied(path, &identity, rule, message));
        };

        tracing::debug!(
            grpc.method = loggable(path),
            caller = identity.subject.as_str(),
            caller.role = identity.role.as_str(),
            ?access,
            "request allowed"
        );
        Ok(Some((identity, access)))
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
/// A rejected request is answered with its gRPC status at once and never reaches the service.
/// An allowed request to a protected method carries [`Identity`] and [`Access`] in its
/// extensions.
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
    ReqBody: Send + 'static,
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
                Ok(Some((identity, access))) => {
                    request.extensions_mut().insert(identity);
                    request.extensions_mut().insert(access);
                    inner.call(request).await
                }
                Ok(None) => inner.call(request).await,
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}
