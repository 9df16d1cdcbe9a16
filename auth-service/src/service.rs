//! The `school.auth.v1.AuthService` gRPC handlers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use school_guard::Identity;
use school_guard::bearer::bearer_token;
use school_guard::keys::{ALGORITHM_NAME, CURVE_NAME, jwks_json};
use school_guard::verify::{MAX_TOKEN_LEN, TokenVerifier};
use school_proto::auth::v1::auth_service_server::AuthService;
use school_proto::auth::v1::{
    IssueServiceTokenRequest, IssueServiceTokenResponse, ListPublicKeysRequest,
    ListPublicKeysResponse, LoginRequest, LoginResponse, LogoutRequest, LogoutResponse, PublicKey,
    RefreshTokenRequest, RefreshTokenResponse, TokenInvalidReason, ValidateTokenRequest,
    ValidateTokenResponse, WatchRevocationsRequest, WatchRevocationsResponse,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tracing::field;

use crate::error::Error;
use crate::keys::KeyRing;
use crate::password::Password;
use crate::sessions::{RefreshToken, Sessions};
use crate::throttle::{AttemptKeys, LoginThrottle};
use crate::tokens::TokenIssuer;
use crate::users::{Users, validate_username};

/// The token type of every issued token (RFC 6750).
const TOKEN_TYPE: &str = "Bearer";

/// The handlers of `school.auth.v1.AuthService`.
#[derive(Clone, Debug)]
pub struct AuthApi {
    users: Users,
    issuer: TokenIssuer,
    verifier: TokenVerifier,
    keys: Arc<KeyRing>,
    throttle: Option<LoginThrottle>,
    sessions: Sessions,
}

impl AuthApi {
    /// Creates the handlers. `verifier` must accept exactly the keys of `keys`, with this
    /// service's issuer and audience, and reject the tokens that `sessions` revokes.
    pub fn new(
        users: Users,
        issuer: TokenIssuer,
        verifier: TokenVerifier,
        keys: &Arc<KeyRing>,
        sessions: Sessions,
    ) -> Self {
        Self {
            users,
            issuer,
            verifier,
            keys: Arc::clone(keys),
            throttle: None,
            sessions,
        }
    }

    /// Counts failed logins in `throttle` and rejects logins it blocks.
    pub fn with_login_throttle(mut self, throttle: LoginThrottle) -> Self {
        self.throttle = Some(throttle);
        self
    }

    /// Runs `check` unless the throttle blocks one of `keys`, and counts its outcome. Only
    /// [`Error::InvalidCredentials`] (a wrong password or secret, an unknown or disabled
    /// account) counts as a failure.
    async fn throttled<T>(
        &self,
        keys: AttemptKeys,
        check: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let Some(throttle) = &self.throttle else {
            return check.await;
        };
        throttle.check(&keys)?;

        let outcome = check.await;
        match &outcome {
            Ok(_) => throttle.record_success(&keys).await?,
            Err(Error::InvalidCredentials) => throttle.record_failure(&keys).await?,
            Err(_) => {}
        }
        outcome
    }

    async fn login_user(
        &self,
        username: &str,
        password: Password,
        client: Option<SocketAddr>,
    ) -> Result<LoginResponse, Error> {
        validate_username(username)?;
        password.validate()?;
        tracing::Span::current().record("user.name", username);

        let started = Instant::now();
        let role = self
            .throttled(
                AttemptKeys::new(username, client),
                self.users.authenticate(username, password),
            )
            .await?;
        let issued = self.issuer.issue(username, role)?;
        let refresh = self.sessions.start(username, &issued, started).await?;
        tracing::info!(token.id = %issued.token_id, "access token issued");

        Ok(LoginResponse {
            access_token: issued.access_token,
            token_type: TOKEN_TYPE.to_owned(),
            expires_in: issued.expires_in,
            refresh_token: refresh.token.expose().to_owned(),
            refresh_expires_in: refresh.expires_in,
        })
    }

    async fn issue_for_service_account(
        &self,
        request: IssueServiceTokenRequest,
        client: Option<SocketAddr>,
    ) -> Result<IssueServiceTokenResponse, Error> {
        let IssueServiceTokenRequest {
            client_id,
            client_secret,
            audience,
        } = request;
        if audience.is_empty() {
            return Err(Error::InvalidArgument {
                field: "audience",
                reason: "must name the service the token is for",
            });
        }
        tracing::Span::current().record("client.id", client_id.as_str());

        // Failed secrets count like failed passwords: per client id and per address.
        let started = Instant::now();
        let account = self
            .throttled(
                AttemptKeys::for_service(&client_id, client),
                self.users.authenticate_service(
                    &client_id,
                    Password::new(client_secret),
                    &audience,
                ),
            )
            .await?;
        let issued = self
            .issuer
            .issue_for_service(&account.client_id, &audience)?;
        // A rotation or deletion that ran meanwhile may not cover this token; withhold it.
        if self
            .sessions
            .revoker()
            .revoked_since(&account.client_id, started)
        {
            tracing::info!(
                token.id = %issued.token_id,
                "service token withheld: the account changed while its secret was checked"
            );
            return Err(Error::AccountChanged);
        }
        tracing::info!(token.id = %issued.token_id, audience, "service token issued");

        Ok(IssueServiceTokenResponse {
            access_token: issued.access_token,
            token_type: TOKEN_TYPE.to_owned(),
            expires_in: issued.expires_in,
        })
    }

    /// Verifies the bearer token of a request to a method that the policy lists as public, so
    /// that the guard layer has not checked it.
    async fn authenticate_caller(&self, metadata: &MetadataMap) -> Result<Identity, Error> {
        let headers = metadata.clone().into_headers();
        let token = bearer_token(&headers).map_err(|error| {
            tracing::info!(
                reason = error.as_str(),
                "request rejected: not authenticated"
            );
            Error::Credential(error)
        })?;
        let claims = self.verifier.verify_async(token).await.map_err(|error| {
            tracing::info!(
                reason = error.as_str(),
                "request rejected: not authenticated"
            );
            Error::Token(error)
        })?;
        Ok(Identity::from(claims))
    }

    fn introspect(&self, token: &str) -> ValidateTokenResponse {
        // The verifier applies the same limit; checking here skips even its first steps.
        if token.len() > MAX_TOKEN_LEN {
            return rejected(TokenInvalidReason::Malformed);
        }

        match self.verifier.verify(token) {
            Ok(claims) => ValidateTokenResponse {
                valid: true,
                reason: TokenInvalidReason::Unspecified.into(),
                subject: claims.sub,
                role: claims.role,
                expires_at: claims.exp,
                issued_at: claims.iat,
                issuer: claims.iss,
                audience: claims.aud.0,
                token_id: claims.jti,
            },
            Err(error) => rejected(error.reason()),
        }
    }
}

fn rejected(reason: TokenInvalidReason) -> ValidateTokenResponse {
    tracing::debug!(token.reason = reason.as_str_name(), "token rejected");
    ValidateTokenResponse {
        valid: false,
        reason: reason.into(),
        ..ValidateTokenResponse::default()
    }
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    /// Returns INVALID_ARGUMENT for an empty or oversized field, UNAUTHENTICATED with the
    /// same message for every credential failure, and RESOURCE_EXHAUSTED with a RetryInfo
    /// detail while the login throttle blocks the username or the client address.
    #[tracing::instrument(skip_all, fields(rpc.method = "Login", user.name = field::Empty))]
    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        let client = request.remote_addr();
        let LoginRequest { username, password } = request.into_inner();
        let password = Password::new(password);

        let issued = self.login_user(&username, password, client).await?;

        Ok(Response::new(issued))
    }

    /// Never fails: an invalid token gives `valid = false` and a reason, and a token longer
    /// than 8 KiB gives reason MALFORMED.
    #[tracing::instrument(skip_all, fields(rpc.method = "ValidateToken"))]
    async fn validate_token(
        &self,
        request: Request<ValidateTokenRequest>,
    ) -> Result<Response<ValidateTokenResponse>, Status> {
        let token = request.into_inner().token;

        Ok(Response::new(self.introspect(&token)))
    }

    /// Returns INVALID_ARGUMENT for an empty or oversized field, UNAUTHENTICATED with the same
    /// message for an unknown client id and a wrong secret, and PERMISSION_DENIED for an
    /// audience the account may not use.
    #[tracing::instrument(skip_all, fields(rpc.method = "IssueServiceToken", client.id = field::Empty))]
    async fn issue_service_token(
        &self,
        request: Request<IssueServiceTokenRequest>,
    ) -> Result<Response<IssueServiceTokenResponse>, Status> {
        let client = request.remote_addr();
        let issued = self
            .issue_for_service_account(request.into_inner(), client)
            .await?;

        Ok(Response::new(issued))
    }

    /// Needs no access token. Returns UNAUTHENTICATED (reason INVALID_REFRESH_TOKEN) for every
    /// refresh token that cannot be exchanged; one used before also revokes its session.
    #[tracing::instrument(skip_all, fields(rpc.method = "RefreshToken", session.id = field::Empty))]
    async fn refresh_token(
        &self,
        request: Request<RefreshTokenRequest>,
    ) -> Result<Response<RefreshTokenResponse>, Status> {
        let presented = RefreshToken::new(request.into_inner().refresh_token);

        let refreshed = self.sessions.refresh(presented).await?;

        Ok(Response::new(refreshed))
    }

    /// Revokes the session of the caller's access token. Returns UNAUTHENTICATED, with the
    /// guard layer's reasons, when the token is missing, invalid or already revoked.
    #[tracing::instrument(skip_all, fields(rpc.method = "Logout"))]
    async fn logout(
        &self,
        request: Request<LogoutRequest>,
    ) -> Result<Response<LogoutResponse>, Status> {
        let caller = match request.extensions().get::<Identity>() {
            Some(identity) => identity.clone(),
            None => self.authenticate_caller(request.metadata()).await?,
        };

        self.sessions.logout(&caller).await?;

        Ok(Response::new(LogoutResponse {}))
    }

    type WatchRevocationsStream = ReceiverStream<Result<WatchRevocationsResponse, Status>>;

    /// Streams the revocation list. Returns RESOURCE_EXHAUSTED when too many streams are open.
    #[tracing::instrument(skip_all, fields(rpc.method = "WatchRevocations"))]
    async fn watch_revocations(
        &self,
        request: Request<WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        let peer = request.remote_addr().map(|addr| addr.ip());
        let stream = self.sessions.revoker().watch(peer)?;

        Ok(Response::new(stream))
    }

    #[tracing::instrument(skip_all, fields(rpc.method = "ListPublicKeys"))]
    async fn list_public_keys(
        &self,
        _request: Request<ListPublicKeysRequest>,
    ) -> Result<Response<ListPublicKeysResponse>, Status> {
        // Read on every call, so a rotated key is published as soon as it is stored.
        let published = self.keys.public_keys();
        let keys = published
            .iter()
            .map(|key| PublicKey {
                key_id: key.key_id.clone(),
                algorithm: ALGORITHM_NAME.to_owned(),
                curve: CURVE_NAME.to_owned(),
                public_key: key.public_key.clone(),
            })
            .collect();

        Ok(Response::new(ListPublicKeysResponse {
            keys,
            jwks_json: jwks_json(&published),
        }))
    }
}
