//! The `school.auth.v1.AuthService` gRPC handlers.

use std::sync::Arc;

use school_guard::keys::{ALGORITHM_NAME, CURVE_NAME, jwks_json};
use school_guard::verify::{MAX_TOKEN_LEN, TokenVerifier};
use school_proto::auth::v1::auth_service_server::AuthService;
use school_proto::auth::v1::{
    IssueServiceTokenRequest, IssueServiceTokenResponse, ListPublicKeysRequest,
    ListPublicKeysResponse, LoginRequest, LoginResponse, PublicKey, TokenInvalidReason,
    ValidateTokenRequest, ValidateTokenResponse,
};
use tonic::{Request, Response, Status};
use tracing::field;

use crate::error::Error;
use crate::keys::KeyRing;
use crate::password::Password;
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
    public_keys: Vec<PublicKey>,
    jwks_json: String,
}

impl AuthApi {
    /// Creates the handlers. `verifier` must accept exactly the keys of `keys`, with this
    /// service's issuer and audience.
    pub fn new(
        users: Users,
        issuer: TokenIssuer,
        verifier: TokenVerifier,
        keys: &Arc<KeyRing>,
    ) -> Self {
        let public_keys = keys
            .public_keys()
            .iter()
            .map(|key| PublicKey {
                key_id: key.key_id.clone(),
                algorithm: ALGORITHM_NAME.to_owned(),
                curve: CURVE_NAME.to_owned(),
                public_key: key.public_key.clone(),
            })
            .collect();

        Self {
            users,
            issuer,
            verifier,
            public_keys,
            jwks_json: jwks_json(keys.public_keys()),
        }
    }

    async fn login_user(&self, username: &str, password: Password) -> Result<LoginResponse, Error> {
        validate_username(username)?;
        password.validate()?;
        tracing::Span::current().record("user.name", username);

        // TODO: no rate limit or lockout against password guessing.
        let role = self.users.authenticate(username, password).await?;
        let issued = self.issuer.issue(username, role)?;
        tracing::info!(token.id = %issued.token_id, "access token issued");

        Ok(LoginResponse {
            access_token: issued.access_token,
            token_type: TOKEN_TYPE.to_owned(),
            expires_in: issued.expires_in,
        })
    }

    async fn issue_for_service_account(
        &self,
        request: IssueServiceTokenRequest,
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

        // TODO: no rate limit against guessing client secrets, as for Login.
        let account = self
            .users
            .authenticate_service(&client_id, Password::new(client_secret), &audience)
            .await?;
        let issued = self
            .issuer
            .issue_for_service(&account.client_id, &audience)?;
        tracing::info!(token.id = %issued.token_id, audience, "service token issued");

        Ok(IssueServiceTokenResponse {
            access_token: issued.access_token,
            token_type: TOKEN_TYPE.to_owned(),
            expires_in: issued.expires_in,
        })
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
    /// Returns INVALID_ARGUMENT for an empty or oversized field and UNAUTHENTICATED with the
    /// same message for every credential failure.
    #[tracing::instrument(skip_all, fields(rpc.method = "Login", user.name = field::Empty))]
    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        let LoginRequest { username, password } = request.into_inner();
        let password = Password::new(password);

        let issued = self.login_user(&username, password).await?;

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
        let issued = self.issue_for_service_account(request.into_inner()).await?;

        Ok(Response::new(issued))
    }

    #[tracing::instrument(skip_all, fields(rpc.method = "ListPublicKeys"))]
    async fn list_public_keys(
        &self,
        _request: Request<ListPublicKeysRequest>,
    ) -> Result<Response<ListPublicKeysResponse>, Status> {
        Ok(Response::new(ListPublicKeysResponse {
            keys: self.public_keys.clone(),
            jwks_json: self.jwks_json.clone(),
        }))
    }
}
