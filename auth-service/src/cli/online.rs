//! The `user --server URL` subcommands: the same operations as offline, through UserService
//! with an admin token, so they work while the server runs.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use school_client::tls::{ClientTls, endpoint, read_identity};
use school_proto::auth::v1::user_service_client::UserServiceClient;
use school_proto::auth::v1::{
    CreateUserRequest, DeleteUserRequest, DisableUserRequest, EnableUserRequest, ListUsersRequest,
    ResetPasswordRequest, UpdateUserRoleRequest, User,
};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Status};

use super::{Outcome, new_password, write_outcome};
use crate::config::{ADMIN_TOKEN_ENV, UserCommand};
use crate::error::Error;
use crate::password::Password;
use crate::user_service::{MAX_PAGE_SIZE, role_from_proto, role_to_proto};
use crate::users::UserSummary;

/// The TLS settings for calls to a running server: the CA its certificate must chain to, and a
/// client certificate and key for a server that requires mutual TLS.
#[derive(Clone, Debug, Default)]
pub struct ServerTls {
    /// PEM CA certificate of the server.
    pub ca: Option<PathBuf>,
    /// PEM client certificate.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub client_key: Option<PathBuf>,
}

impl ServerTls {
    /// Returns whether any setting is given.
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.client_cert.is_some() || self.client_key.is_some()
    }

    /// Reads the files into the client's TLS settings, or returns `None` when no CA is given.
    fn load(&self) -> Result<Option<ClientTls>, Error> {
        let invalid = |flag: &str, reason: String| {
            let env = format!("AUTH_{}", flag.to_uppercase().replace('-', "_"));
            Error::invalid_config(flag, &env, reason)
        };
        let identity = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Some(
                read_identity(cert, key)
                    .map_err(|error| invalid("server-client-cert", error.to_string()))?,
            ),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "server-client-key",
                    "must be set with --server-client-cert".to_owned(),
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "server-client-cert",
                    "must be set with --server-client-key".to_owned(),
                ));
            }
        };
        let Some(ca) = &self.ca else {
            return match identity {
                Some(_) => Err(invalid(
                    "server-ca",
                    "must be set when a client certificate is given".to_owned(),
                )),
                None => Ok(None),
            };
        };
        let tls =
            ClientTls::from_ca_file(ca).map_err(|error| invalid("server-ca", error.to_string()))?;
        Ok(Some(match identity {
            Some(identity) => tls.with_identity(identity),
            None => tls,
        }))
    }
}

/// Runs a `user` subcommand through the UserService at `server`, authenticated with
/// `admin_token`, and writes the same output as the offline command to `output`. An
/// `https://` server needs `tls` with a CA; an `http://` one must have none.
///
/// Fails with [`Error::InvalidConfig`] when the token is missing or not visible ASCII, or when
/// the URL and TLS settings do not fit. Fails with [`Error::Connect`] when the server cannot be
/// reached, and with [`Error::Remote`], carrying the server's message, when it rejects the call.
pub async fn run_user_command_online(
    server: &str,
    tls: &ServerTls,
    admin_token: Option<Password>,
    command: UserCommand,
    input: impl BufRead,
    output: impl Write,
) -> Result<(), Error> {
    let admin_token = admin_token.ok_or_else(|| Error::InvalidConfig {
        setting: ADMIN_TOKEN_ENV.to_owned(),
        reason: "must be set to an admin access token when --server is given".to_owned(),
    })?;
    let mut header: AsciiMetadataValue = format!("Bearer {}", admin_token.expose())
        .parse()
        .map_err(|_| Error::InvalidConfig {
            setting: ADMIN_TOKEN_ENV.to_owned(),
            reason: "must be an access token of visible ASCII characters".to_owned(),
        })?;
    header.set_sensitive(true);

    let tls = tls.load()?;
    let channel = endpoint(server, tls.as_ref())
        .map_err(|error| Error::invalid_config("server", "AUTH_SERVER", error.to_string()))?
        .connect()
        .await
        .map_err(|source| Error::Connect {
            url: server.to_owned(),
            source,
        })?;
    let remote = Remote {
        client: UserServiceClient::new(channel),
        header,
    };

    let outcome = remote.run(command, input).await?;
    write_outcome(output, &outcome)
}

struct Remote {
    client: UserServiceClient<Channel>,
    header: AsciiMetadataValue,
}

impl Remote {
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.header.clone());
        request
    }

    async fn run(mut self, command: UserCommand, input: impl BufRead) -> Result<Outcome, Error> {
        match command {
            UserCommand::Add { name, role } => {
                let password = new_password(input)?;
                let request = self.request(CreateUserRequest {
                    username: name.clone(),
                    password: password.expose().to_owned(),
                    role: role_to_proto(role).into(),
                });
                self.client.create_user(request).await.map_err(remote)?;
                Ok(Outcome::Created { name, role })
            }
            UserCommand::List => self.list_all().await.map(Outcome::Listed),
            UserCommand::Disable { name } => {
                let request = self.request(DisableUserRequest {
                    username: name.clone(),
                });
                self.client.disable_user(request).await.map_err(remote)?;
                Ok(Outcome::Disabled(name))
            }
            UserCommand::Enable { name } => {
                let request = self.request(EnableUserRequest {
                    username: name.clone(),
                });
                self.client.enable_user(request).await.map_err(remote)?;
                Ok(Outcome::Enabled(name))
            }
            UserCommand::SetRole { name, role } => {
                let request = self.request(UpdateUserRoleRequest {
                    username: name.clone(),
                    role: role_to_proto(role).into(),
                });
                self.client
                    .update_user_role(request)
                    .await
                    .map_err(remote)?;
                Ok(Outcome::RoleSet { name, role })
            }
            UserCommand::Delete { name } => {
                let request = self.request(DeleteUserRequest {
                    username: name.clone(),
                });
                self.client.delete_user(request).await.map_err(remote)?;
                Ok(Outcome::Deleted(name))
            }
            UserCommand::ResetPassword { name } => {
                let password = new_password(input)?;
                let request = self.request(ResetPasswordRequest {
                    username: name.clone(),
                    new_password: password.expose().to_owned(),
                });
                self.client.reset_password(request).await.map_err(remote)?;
                Ok(Outcome::PasswordReset(name))
            }
        }
    }

    /// Follows `next_page_token` until the last page.
    async fn list_all(&mut self) -> Result<Vec<UserSummary>, Error> {
        let mut users = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = self.request(ListUsersRequest {
                page_size: i32::try_from(MAX_PAGE_SIZE).unwrap_or(i32::MAX),
                page_token,
            });
            let page = self
                .client
                .list_users(request)
                .await
                .map_err(remote)?
                .into_inner();
            for user in page.users {
                users.push(summary(user)?);
            }
            if page.next_page_token.is_empty() {
                return Ok(users);
            }
            page_token = page.next_page_token;
        }
    }
}

fn summary(user: User) -> Result<UserSummary, Error> {
    Ok(UserSummary {
        role: role_from_proto(user.role)?,
        username: user.username,
        disabled: user.disabled,
        created_at: user.created_at,
    })
}

fn remote(status: Status) -> Error {
    Error::Remote {
        code: status.code(),
        message: status.message().to_owned(),
    }
}
