//! The `school.auth.v1.UserService` gRPC handlers, and the audit events of every change.
//!
//! The guard layer in front of the server authenticates the caller and checks the policy before
//! a handler runs. Handlers read the caller and the rule that allowed the call from the request
//! extensions.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use school_guard::{Grant, Identity};
use school_proto::auth::v1::user_service_server::UserService;
use school_proto::auth::v1::{
    ChangePasswordRequest, ChangePasswordResponse, CreateServiceAccountRequest,
    CreateServiceAccountResponse, CreateUserRequest, CreateUserResponse,
    DeleteServiceAccountRequest, DeleteServiceAccountResponse, DeleteUserRequest,
    DeleteUserResponse, DisableUserRequest, DisableUserResponse, EnableUserRequest,
    EnableUserResponse, GetUserRequest, GetUserResponse, ListServiceAccountsRequest,
    ListServiceAccountsResponse, ListUsersRequest, ListUsersResponse, ResetPasswordRequest,
    ResetPasswordResponse, Role as ProtoRole, RotateServiceAccountSecretRequest,
    RotateServiceAccountSecretResponse, ServiceAccount, UpdateUserRoleRequest,
    UpdateUserRoleResponse, User,
};
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::password::Password;
use crate::role::Role;
use crate::throttle::{AttemptKeys, LoginThrottle};
use crate::users::{MAX_USERNAME_BYTES, UserSummary, Users};

/// The page size of `ListUsers` when the request leaves it at 0.
pub const DEFAULT_PAGE_SIZE: usize = 100;

/// The largest page size of `ListUsers`; larger requests get this many.
pub const MAX_PAGE_SIZE: usize = 1000;

/// The handlers of `school.auth.v1.UserService`.
#[derive(Clone, Debug)]
pub struct UserApi {
    users: Users,
    throttle: Option<LoginThrottle>,
}

impl UserApi {
    /// Creates the handlers over `users`.
    pub fn new(users: Users) -> Self {
        UserApi {
            users,
            throttle: None,
        }
    }

    /// Counts wrong current passwords in `ChangePassword` as failed logins of the caller in
    /// `throttle`, so a stolen token cannot be used to guess the password faster than Login
    /// allows.
    pub fn with_login_throttle(mut self, throttle: LoginThrottle) -> Self {
        self.throttle = Some(throttle);
        self
    }
}

/// The caller behind a change and the policy rule that allowed it, for the audit log.
#[derive(Clone, Debug)]
pub struct Actor {
    /// The caller's subject, or a fixed name for local tools.
    pub name: String,
    /// The caller's role.
    pub role: String,
    /// The rule that allowed the change, as `methods."<method>" <permission>`.
    pub rule: String,
}

impl Actor {
    /// Returns the actor of a request that passed the guard layer.
    fn from_request<T>(request: &Request<T>) -> Result<Actor, Error> {
        let identity = request
            .extensions()
            .get::<Identity>()
            .ok_or(Error::MissingIdentity)?;
        let grant = request
            .extensions()
            .get::<Grant>()
            .ok_or(Error::MissingIdentity)?;
        Ok(Actor {
            name: identity.subject.clone(),
            role: identity.role.clone(),
            rule: grant.to_string(),
        })
    }

    /// Returns the actor of the offline `user` subcommands, which need access to the data
    /// directory and no policy.
    pub fn offline_cli() -> Actor {
        Actor {
            name: "offline-cli".to_owned(),
            role: String::new(),
            rule: "data directory access".to_owned(),
        }
    }
}

/// Writes the audit event of one change: who, what, to which account, with which outcome and
/// under which rule. Events go to the `audit` target, so they can be routed apart from other
/// logs. No password or secret is ever a field.
pub fn audit<T>(actor: &Actor, action: &'static str, target: &str, result: &Result<T, Error>) {
    match result {
        Ok(_) => tracing::info!(
            target: "audit",
            actor = actor.name.as_str(),
            actor.role = actor.role.as_str(),
            action,
            target.user = target,
            outcome = "success",
            rule = actor.rule.as_str(),
            "account change"
        ),
        Err(error) => tracing::info!(
            target: "audit",
            actor = actor.name.as_str(),
            actor.role = actor.role.as_str(),
            action,
            target.user = target,
            outcome = "failure",
            reason = %error,
            rule = actor.rule.as_str(),
            "account change"
        ),
    }
}

/// Converts a role of the proto to ours; `ROLE_UNSPECIFIED` and unknown numbers are invalid.
pub fn role_from_proto(value: i32) -> Result<Role, Error> {
    match ProtoRole::try_from(value) {
        Ok(ProtoRole::Admin) => Ok(Role::Admin),
        Ok(ProtoRole::Teacher) => Ok(Role::Teacher),
        Ok(ProtoRole::Student) => Ok(Role::Student),
        Ok(ProtoRole::Unspecified) | Err(_) => Err(Error::InvalidArgument {
            field: "role",
            reason: "must be ROLE_ADMIN, ROLE_TEACHER or ROLE_STUDENT",
        }),
    }
}

/// Converts our role to the proto's.
pub fn role_to_proto(role: Role) -> ProtoRole {
    match role {
        Role::Admin => ProtoRole::Admin,
        Role::Teacher => ProtoRole::Teacher,
        Role::Student => ProtoRole::Student,
    }
}

fn user_message(user: UserSummary) -> User {
    User {
        username: user.username,
        role: role_to_proto(user.role).into(),
        disabled: user.disabled,
        created_at: user.created_at,
    }
}

/// Decodes a page token, which is the base64url form of the last username of the page before.
fn decode_page_token(token: &str) -> Result<Option<String>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || Error::InvalidArgument {
        field: "page_token",
        reason: "is not a token from a previous ListUsers response",
    };
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    match String::from_utf8(bytes) {
        Ok(name) if !name.is_empty() && name.len() <= MAX_USERNAME_BYTES => Ok(Some(name)),
        _ => Err(invalid()),
    }
}

fn page_size(requested: i32) -> Result<usize, Error> {
    match usize::try_from(requested) {
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(size) => Ok(size.min(MAX_PAGE_SIZE)),
        Err(_) => Err(Error::InvalidArgument {
            field: "page_size",
            reason: "must not be negative",
        }),
    }
}

impl UserApi {
    async fn list_page(&self, request: ListUsersRequest) -> Result<ListUsersResponse, Error> {
        let size = page_size(request.page_size)?;
        let after = decode_page_token(&request.page_token)?;

        // One extra user tells whether another page follows.
        let mut users = self.users.list_page(after.as_deref(), size + 1).await?;
        let next_page_token = if users.len() > size {
            users.truncate(size);
            users
                .last()
                .map(|last| URL_SAFE_NO_PAD.encode(last.username.as_bytes()))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(ListUsersResponse {
            users: users.into_iter().map(user_message).collect(),
            next_page_token,
        })
    }
}

#[tonic::async_trait]
impl UserService for UserApi {
    #[tracing::instrument(skip_all, fields(rpc.method = "CreateUser"))]
    async fn create_user(
        &self,
        request: Request<CreateUserRequest>,
    ) -> Result<Response<CreateUserResponse>, Status> {
        let actor = Actor::from_request(&request)?;
        let CreateUserRequest {
            username,
            password,
            role,
        } = request.into_inner();
        let password = Password::new(password);

        let created = async {
            let role = role_from_proto(role)?;
            self.users
                .create(&username, password.expose(), role)
                .await?;
            self.users.get(&username).await
        }
        .await;
        audit(&actor, "create_user", &username, &created);

        Ok(Response::new(CreateUserResponse {
            user: Some(user_message(created?)),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc.method = "GetUser"))]
    async fn get_user(
        &self,
        request: Request<GetUserRequest>,
    ) -> Result<Response<GetUserResponse>, Status> {
        let user = self.users.get(&request.into_inner().username).await?;

        Ok(Response::new(GetUserResponse {
            user: Some(user_message(user)),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc.method = "ListUsers"))]
    async fn list_users(
        &self,
        request: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        let page = self.list_page(request.into_inner()).await?;

        Ok(Response::new(page))
    }

    /// Fails with FAILED_PRECONDITION when it would demote the last enabled admin.
    #[tracing::instrument(skip_all, fields(rpc.method = "UpdateUserRole"))]
    async fn update_user_role(
        &self,
        request: Request<UpdateUserRoleRequest>,
    ) -> Result<Response<UpdateUserRoleResponse>, Status> {
        let actor = Actor::from_request(&request)?;
        let UpdateUserRoleRequest { username, role } = request.into_inner();

        let updated = async {
            let role = role_from_proto(role)?;
            self.users.update_role(&username, role).await
        }
        .await;
        audit(&actor, "update_user_role", &username, &updated);

        Ok(Response::new(UpdateUserRoleResponse {
            user: Some(user_message(updated?)),
        }))
    }

    /// Fails with FAILED_PRECONDITION for the last enabled admin.
    #[tracing::instrument(skip_all, fields(rpc.method = "DisableUser"))]
    async fn disable_user(
        &self,
        request: Request<DisableUserRequest>,
    ) -> Result<Response<DisableUserResponse>, Status> {
        let actor = Actor::from_request(&request)?;
        let username = request.into_inner().username;

        let updated = self.users.set_disabled(&username, true).await;
        audit(&actor, "disable_user", &username, &updated);

        Ok(Response::new(DisableUserResponse {
            user: Some(user_message(updated?)),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc.method = "EnableUser"))]
    async fn enable_user(
        &self,
        request: Request<EnableUserRequest>,
    ) -> Result<Response<EnableUserResponse>, Status> {
        let actor = Actor::from_request(&request)?;
        let username = request.into_inner().username;

        let updated = self.users.set_disabled(&username, false).await;
        audit(&actor, "enable_user", &username, &updated);

        Ok(Response::new(EnableUserResponse {
            user: Some(user_message(updated?)),
        }))
    }

    /// Fails with FAILED_PRECONDITION for the last enabled admin.
    #[tracing::instrument(skip_all, fields(rpc.method = "DeleteUser"))]
    async fn delete_user(
        &self,
        request: Request<DeleteUserRequest>,
    ) -> Result<Response<DeleteUserResponse>, Status> {
        let actor = Actor::from_request(&request)?;
        let username = request.into_inner().username;

        let deleted = self.users.delete(&username).await;
        audit(&actor, "delete_user", &username, &deleted);
        deleted?;

        Ok(Response::new(DeleteUserResponse {}))
    }

    /// Changes the caller's own password; the account is the token's subject.
    #[tracing::instrument(skip_all, fields(rpc.method = "ChangePassword"))]
    async fn change_password(
        &self,
        request: Request<ChangePasswordRequest>,
    ) -> Result<Response<ChangePasswordResponse>, Status> {
        let actor = Actor::from_request(&request)?;
        let client = request.remote_addr();
        let ChangePasswordRequest {
            old_password,
            new_password,
        } = request.into_inner();

        let keys = AttemptKeys::new(&actor.name, client);
        if let Some(throttle) = &self.throttle {
            throttle.check(&keys)?;
        }
        let changed = self
            .users
            .change_password(
                &actor.name,
                Password::new(old_password),
                Password::new(new_password),
            )
            .await;
        if let Some(throttle) = &self.throttle {
            match &changed {
                Ok(()) => throttle.record_success(&keys).await?,
                Err(Error::InvalidCredentials) => throttle.record_failure(&keys).await?,
                Err(_) => {}
            }
        }
        // The token is valid and the current password is wrong, so the error names that field.
        let changed = changed.map_err(|error| match error {
            Error::InvalidCredentials => Error::InvalidArgument {
                field: "old_password",
                reason: "does not match the current password",
            },
            other => other,
        });
        audit(&actor, "change_password", &actor.name, &changed);
        changed?;

        Ok(Response::new(ChangePasswordResponse {}))
    }

    #[tracing::instrument(skip_all, fields(rpc.method = "ResetPassword"))]
    async fn reset_password(
        &self,
        request: Request<ResetPasswordRequest>,
    ) -> Result<Response<ResetPasswordResponse>, Status> {
        let actor = Actor::from_request(&request)?;
        let ResetPasswordRequest {
            username,
            new_password,
        } = request.into_inner();

        let reset = self
            .users
            .reset_password(&username, Password::new(new_password))
            .await;
        audit(&actor, "reset_password", &username, &reset);
        reset?;

        Ok(Response::new(ResetPasswordResponse {}))
    }

    /// Returns the client secret once; only its hash is stored.
    #[tracing::instrument(skip_all, fields(rpc.method = "CreateServiceAccount"))]
    async fn create_service_account(
        &self,
        request: Request<CreateServiceAccountRequest>,
    ) -> Result<Response<CreateServiceAccountResponse>, Status> {
        let actor = Actor::from_request(&request)?;
        let CreateServiceAccountRequest { name, audiences } = request.into_inner();

        let created = self.users.create_service_account(&name, audiences).await;
        let target = match &created {
            Ok(account) => format!("{name} ({})", account.client_id),
            Err(_) => name.clone(),
        };
        audit(&actor, "create_service_account", &target, &created);
        let created = created?;

        Ok(Response::new(CreateServiceAccountResponse {
            client_id: created.client_id,
            client_secret: created.client_secret.expose().to_owned(),
        }))
    }

    async fn list_service_accounts(
        &self,
        _request: Request<ListServiceAccountsRequest>,
    ) -> Result<Response<ListServiceAccountsResponse>, Status> {
        let service_accounts = self
            .users
            .service_accounts()
            .await?
            .into_iter()
            .map(|account| ServiceAccount {
                client_id: account.client_id,
                name: account.name,
                audiences: account.audiences,
                created_at: account.created_at,
            })
            .collect();

        Ok(Response::new(ListServiceAccountsResponse {
            service_accounts,
        }))
    }

    async fn rotate_service_account_secret(
        &self,
        request: Request<RotateServiceAccountSecretRequest>,
    ) -> Result<Response<RotateServiceAccountSecretResponse>, Status> {
        let actor = Actor::from_request(&request)?;
        let client_id = request.into_inner().client_id;

        let rotated = self.users.rotate_service_account_secret(&client_id).await;
        audit(
            &actor,
            "rotate_service_account_secret",
            &client_id,
            &rotated,
        );
        let secret = rotated?;

        Ok(Response::new(RotateServiceAccountSecretResponse {
            client_secret: secret.expose().to_owned(),
        }))
    }

    async fn delete_service_account(
        &self,
        request: Request<DeleteServiceAccountRequest>,
    ) -> Result<Response<DeleteServiceAccountResponse>, Status> {
        let actor = Actor::from_request(&request)?;
        let client_id = request.into_inner().client_id;

        let deleted = self.users.delete_service_account(&client_id).await;
        audit(&actor, "delete_service_account", &client_id, &deleted);
        deleted?;

        Ok(Response::new(DeleteServiceAccountResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() -> Result<(), Error> {
        let token = URL_SAFE_NO_PAD.encode("alice");

        assert_eq!(decode_page_token(&token)?, Some("alice".to_owned()));
        assert_eq!(decode_page_token("")?, None);
        for garbage in ["!!!", &URL_SAFE_NO_PAD.encode([0xff, 0xfe]), "YQ=="] {
            assert!(
                matches!(
                    decode_page_token(garbage),
                    Err(Error::InvalidArgument {
                        field: "page_token",
                        ..
                    })
                ),
                "{garbage:?} was accepted"
            );
        }
        Ok(())
    }

    /// A log writer that keeps every line in memory.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut buffer) = self.0.lock() {
                buffer.extend_from_slice(bytes);
            }
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn audit_event_names_actor_target_outcome_and_rule() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let actor = Actor {
            name: "ada".to_owned(),
            role: "admin".to_owned(),
            rule: "methods.\"school.auth.v1.UserService/DeleteUser\" users.manage".to_owned(),
        };

        tracing::subscriber::with_default(subscriber, || {
            audit(&actor, "delete_user", "sam", &Ok::<(), Error>(()));
            audit(
                &actor,
                "delete_user",
                "ada",
                &Err::<(), Error>(Error::LastAdmin("ada".to_owned())),
            );
        });

        let text = captured
            .0
            .lock()
            .map(|buffer| String::from_utf8_lossy(&buffer).into_owned())
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        for line in &lines {
            assert!(line.contains(" audit: "), "{line}");
            assert!(line.contains("actor=\"ada\""), "{line}");
            assert!(line.contains("action=\"delete_user\""), "{line}");
            assert!(line.contains("users.manage"), "{line}");
        }
        assert!(lines[0].contains("target.user=\"sam\""), "{}", lines[0]);
        assert!(lines[0].contains("outcome=\"success\""), "{}", lines[0]);
        assert!(lines[1].contains("outcome=\"failure\""), "{}", lines[1]);
        assert!(lines[1].contains("last enabled admin"), "{}", lines[1]);
    }

    #[test]
    fn page_size_defaults_and_caps() -> Result<(), Error> {
        assert_eq!(page_size(0)?, DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(5)?, 5);
        assert_eq!(page_size(i32::MAX)?, MAX_PAGE_SIZE);
        assert!(page_size(-1).is_err());
        Ok(())
    }

    #[test]
    fn unspecified_role_is_invalid() {
        assert!(role_from_proto(ProtoRole::Unspecified.into()).is_err());
        assert!(role_from_proto(99).is_err());
        for role in [Role::Admin, Role::Teacher, Role::Student] {
            assert_eq!(role_from_proto(role_to_proto(role).into()).ok(), Some(role));
        }
    }
}
