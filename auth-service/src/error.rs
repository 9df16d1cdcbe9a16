//! The service's error type and its single conversion to a gRPC status.

use std::collections::HashMap;
use std::error::Error as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

/// The message every failed login returns, whatever the cause, so that a client cannot tell
/// which usernames exist.
pub const INVALID_CREDENTIALS_MESSAGE: &str = "invalid username or password";

/// The `ErrorInfo.domain` of the errors this service returns.
pub const DOMAIN: &str = "auth-service";

/// `ErrorInfo.reason` of an `INVALID_ARGUMENT` error; metadata `field` names the field.
pub const INVALID_ARGUMENT: &str = "INVALID_ARGUMENT";
/// `ErrorInfo.reason` of every failed login.
pub const INVALID_CREDENTIALS: &str = "INVALID_CREDENTIALS";
/// `ErrorInfo.reason` when a user to be created already exists.
pub const USER_EXISTS: &str = "USER_EXISTS";
/// `ErrorInfo.reason` when the named user does not exist.
pub const USER_NOT_FOUND: &str = "USER_NOT_FOUND";
/// `ErrorInfo.reason` of a login rejected after repeated failures, before any password check.
/// A `google.rpc.RetryInfo` detail says when to retry.
pub const LOGIN_THROTTLED: &str = "LOGIN_THROTTLED";
/// `ErrorInfo.reason` when the password hashing queue is full. A `RetryInfo` detail gives the
/// delay before a retry.
pub const LOGINS_OVERLOADED: &str = "LOGINS_OVERLOADED";

/// The retry delay suggested when the password hashing queue is full. The queue has room for a
/// few hashes per thread, so it drains within a fraction of a second.
const OVERLOADED_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// `ErrorInfo.reason` of every failed `RefreshToken`: unknown, expired, used or revoked.
pub const INVALID_REFRESH_TOKEN: &str = "INVALID_REFRESH_TOKEN";
/// `ErrorInfo.reason` when `WatchRevocations` has as many streams open as it allows.
pub const TOO_MANY_WATCHERS: &str = "TOO_MANY_WATCHERS";
/// `ErrorInfo.reason` when a `WatchRevocations` stream fell behind: subscribe again.
pub const REVOCATION_STREAM_LAGGED: &str = "REVOCATION_STREAM_LAGGED";

/// `ErrorInfo.reason` when a change would leave no enabled admin.
pub const LAST_ADMIN: &str = "LAST_ADMIN";
/// `ErrorInfo.reason` when a service account to be created already exists.
pub const SERVICE_ACCOUNT_EXISTS: &str = "SERVICE_ACCOUNT_EXISTS";
/// `ErrorInfo.reason` when no service account has the client id.
pub const SERVICE_ACCOUNT_NOT_FOUND: &str = "SERVICE_ACCOUNT_NOT_FOUND";
/// `ErrorInfo.reason` when the account changed while a login checked its credentials.
pub const ACCOUNT_CHANGED: &str = "ACCOUNT_CHANGED";
/// `ErrorInfo.reason` when a service account asks for a token for an audience it may not use.
pub const AUDIENCE_NOT_ALLOWED: &str = "AUDIENCE_NOT_ALLOWED";

/// `ResourceInfo.resource_type` of a user account.
const USER_RESOURCE: &str = "user";
/// `ResourceInfo.resource_type` of a service account.
const SERVICE_ACCOUNT_RESOURCE: &str = "service_account";

/// Exit code for a configuration or usage error (`EX_USAGE` from BSD `sysexits.h`).
pub const EXIT_USAGE: u8 = 64;

/// Exit code for any other failure.
pub const EXIT_FAILURE: u8 = 1;

/// Every failure of the auth service, from configuration to storage and crypto.
///
/// The `Display` text may name paths and usernames but never a password, a token or key
/// material. Clients never see it for internal failures: [`From<Error> for Status`] replaces it
/// with a generic message and logs the cause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is out of range or inconsistent; the message names the flag and variable.
    #[error("invalid configuration: {setting}: {reason}")]
    InvalidConfig {
        /// The flag and environment variable, as in `--token-ttl-secs (AUTH_TOKEN_TTL_SECS)`.
        setting: String,
        /// The problem and the accepted values.
        reason: String,
    },

    /// A request or command argument is invalid; the message names the field, never its value.
    #[error("{field} {reason}")]
    InvalidArgument {
        /// The field name, as in the proto or the command line.
        field: &'static str,
        /// The rule the value breaks, as in "must be 1 to 64 bytes".
        reason: &'static str,
    },

    /// The username is unknown, the password is wrong or the account is disabled.
    #[error("{INVALID_CREDENTIALS_MESSAGE}")]
    InvalidCredentials,

    /// A user with this name already exists.
    #[error("user {0:?} already exists")]
    UserExists(String),

    /// No user has this name.
    #[error("user {0:?} not found")]
    UserNotFound(String),

    /// The change would leave no enabled admin: the named user is the last one.
    #[error("user {0:?} is the last enabled admin; make another user admin first")]
    LastAdmin(String),

    /// A service account with this name or client id already exists.
    #[error("service account {0:?} already exists")]
    ServiceAccountExists(String),

    /// The account's tokens were revoked while its credentials were checked, by a change such as
    /// disabling it or a new password, so the token just issued is withheld.
    #[error("the account changed during the login; log in again")]
    AccountChanged,

    /// No service account has this client id.
    #[error("service account {0:?} not found")]
    ServiceAccountNotFound(String),

    /// A service account asked for a token for an audience it was not created with.
    #[error("service account may not request tokens for audience {audience:?}")]
    AudienceNotAllowed {
        /// The requested audience.
        audience: String,
    },

    /// The authorization policy is invalid or does not fit the served methods; the message
    /// names the line.
    #[error("invalid policy in {origin}")]
    InvalidPolicy {
        /// The policy file, or "built-in policy".
        origin: String,
        /// The problem.
        #[source]
        source: school_guard::policy::PolicyError,
    },

    /// A handler of a protected method found no caller identity in the request, which means
    /// the guard layer is missing in front of it.
    #[error("request reached a protected handler without a verified caller")]
    MissingIdentity,

    /// A running auth-service rejected a call of the `user --server` subcommands. The message is
    /// the server's, so the output matches that of the offline command.
    #[error("{message}")]
    Remote {
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },

    /// The `user --server` subcommands could not connect to the server.
    #[error("failed to connect to auth-service at {url}")]
    Connect {
        /// The server URL.
        url: String,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },

    /// Another process holds the lock on the data directory.
    #[error(
        "data directory {} is locked by another auth-service that has it open. \
         Stop that process or choose another --data-dir",
        dir.display()
    )]
    DataDirLocked {
        /// The data directory.
        dir: PathBuf,
    },

    /// The data directory could not be created or opened.
    #[error("failed to open data directory {}", dir.display())]
    OpenDataDir {
        /// The data directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// A read, write or flush of the database failed.
    #[error("storage operation failed: {operation}")]
    Storage {
        /// The operation, as in "flush database".
        operation: &'static str,
        /// The cause.
        #[source]
        source: sled::Error,
    },

    /// A stored record could not be decoded or encoded.
    #[error("stored record {key:?} is invalid")]
    CorruptRecord {
        /// The record key, a username or a key id.
        key: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// Password hashing or verification failed for a reason other than a wrong password.
    #[error("password hashing failed")]
    PasswordHash(#[source] argon2::password_hash::Error),

    /// The refresh token is unknown, expired, used before, or its session has ended.
    #[error("invalid refresh token; log in again")]
    InvalidRefreshToken,

    /// The request carries no usable bearer token where the handler checks it itself.
    #[error("{0}")]
    Credential(school_guard::bearer::CredentialError),

    /// The bearer token failed verification, or is revoked, where the handler checks it itself.
    #[error("{0}")]
    Token(school_guard::verify::TokenError),

    /// The most `WatchRevocations` streams are already open.
    #[error("too many revocation streams open; retry later")]
    TooManyWatchers,

    /// A `WatchRevocations` stream fell too far behind the revocations to catch up.
    #[error("revocation stream fell behind; subscribe again for a new snapshot")]
    RevocationStreamLagged,

    /// Too many password operations are already waiting; the client should retry later.
    #[error("too many logins in progress; retry later")]
    Overloaded,

    /// Too many recent failed logins for this username or from this client address.
    #[error("too many failed logins; retry in {}", seconds(retry_after.as_secs()))]
    LoginThrottled {
        /// How long the block lasts.
        retry_after: std::time::Duration,
    },

    /// A cryptographic operation failed: random generation, or creating, parsing or using a
    /// signing key. The text names the operation.
    #[error("cryptographic operation failed: {0}")]
    Crypto(&'static str),

    /// The verification key set rejected a public key.
    #[error("invalid verification key")]
    VerificationKey(#[source] school_guard::keys::KeyError),

    /// A token could not be signed.
    #[error("token signing failed")]
    TokenSigning(#[source] jsonwebtoken::errors::Error),

    /// A password hashing thread failed while running an operation.
    #[error("password hashing failed")]
    HashWorker,

    /// A blocking task panicked or was cancelled.
    #[error("background task failed")]
    Task(#[source] tokio::task::JoinError),

    /// The listen address could not be bound.
    #[error("failed to bind {addr}; choose another --listen address")]
    Bind {
        /// The requested address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// The reflection service rejected a file descriptor set.
    #[error("failed to build the reflection service")]
    Reflection(#[source] tonic_reflection::server::Error),

    /// The gRPC server failed while serving.
    #[error("gRPC server failed")]
    Transport(#[source] tonic::transport::Error),

    /// Reading from or writing to the terminal, a signal handler or another OS resource failed.
    #[error("{operation} failed")]
    Io {
        /// The operation, as in "read password from stdin".
        operation: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Formats a number of seconds with the right plural: "1 second", "8 seconds".
fn seconds(count: u64) -> String {
    match count {
        1 => "1 second".to_owned(),
        count => format!("{count} seconds"),
    }
}

impl Error {
    /// Builds an [`Error::InvalidConfig`] for the flag and its environment variable.
    pub fn invalid_config(flag: &str, env: &str, reason: impl Into<String>) -> Self {
        Self::InvalidConfig {
            setting: format!("--{flag} ({env})"),
            reason: reason.into(),
        }
    }

    /// Returns the process exit code for this error: [`EXIT_USAGE`] for configuration and
    /// argument errors, [`EXIT_FAILURE`] otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::InvalidConfig { .. }
            | Self::InvalidArgument { .. }
            | Self::InvalidPolicy { .. }
            | Self::Remote {
                code: tonic::Code::InvalidArgument,
                ..
            } => EXIT_USAGE,
            _ => EXIT_FAILURE,
        }
    }

    /// Formats the error and its chain of causes on one line, for logs and the command line.
    pub fn report(&self) -> String {
        let mut line = self.to_string();
        let mut cause = self.source();
        while let Some(inner) = cause {
            line.push_str(": ");
            line.push_str(&inner.to_string());
            cause = inner.source();
        }
        line
    }
}

impl From<Error> for Status {
    /// Maps each error to its gRPC code. Client errors carry a `google.rpc.ErrorInfo` in the
    /// [`DOMAIN`] domain, and an invalid field also a `google.rpc.BadRequest` that names it.
    /// Internal failures become `INTERNAL` with a generic message and no details, and their
    /// cause is logged here, once.
    fn from(error: Error) -> Self {
        match error {
            Error::InvalidArgument { field, reason } => {
                let mut details = ErrorDetails::with_bad_request_violation(field, reason);
                details.set_error_info(INVALID_ARGUMENT, DOMAIN, field_metadata(field));
                Status::with_error_details(Code::InvalidArgument, error.to_string(), details)
            }
            Error::InvalidCredentials => Status::with_error_details(
                Code::Unauthenticated,
                INVALID_CREDENTIALS_MESSAGE,
                ErrorDetails::with_error_info(INVALID_CREDENTIALS, DOMAIN, HashMap::new()),
            ),
            Error::UserExists(ref username) => {
                let mut details = ErrorDetails::with_resource_info(USER_RESOURCE, username, "", "");
                details.set_error_info(USER_EXISTS, DOMAIN, HashMap::new());
                Status::with_error_details(Code::AlreadyExists, error.to_string(), details)
            }
            Error::UserNotFound(ref username) => {
                let mut details = ErrorDetails::with_resource_info(USER_RESOURCE, username, "", "");
                details.set_error_info(USER_NOT_FOUND, DOMAIN, HashMap::new());
                Status::with_error_details(Code::NotFound, error.to_string(), details)
            }
            Error::LastAdmin(ref username) => {
                let mut details = ErrorDetails::with_precondition_failure_violation(
                    LAST_ADMIN,
                    format!("user/{username}"),
                    "at least one enabled admin must remain",
                );
                details.set_error_info(LAST_ADMIN, DOMAIN, HashMap::new());
                Status::with_error_details(Code::FailedPrecondition, error.to_string(), details)
            }
            Error::ServiceAccountExists(ref name) => {
                let mut details =
                    ErrorDetails::with_resource_info(SERVICE_ACCOUNT_RESOURCE, name, "", "");
                details.set_error_info(SERVICE_ACCOUNT_EXISTS, DOMAIN, HashMap::new());
                Status::with_error_details(Code::AlreadyExists, error.to_string(), details)
            }
            Error::AccountChanged => Status::with_error_details(
                Code::Aborted,
                error.to_string(),
                ErrorDetails::with_error_info(ACCOUNT_CHANGED, DOMAIN, HashMap::new()),
            ),
            Error::ServiceAccountNotFound(ref client_id) => {
                let mut details =
                    ErrorDetails::with_resource_info(SERVICE_ACCOUNT_RESOURCE, client_id, "", "");
                details.set_error_info(SERVICE_ACCOUNT_NOT_FOUND, DOMAIN, HashMap::new());
                Status::with_error_details(Code::NotFound, error.to_string(), details)
            }
            Error::AudienceNotAllowed { ref audience } => Status::with_error_details(
                Code::PermissionDenied,
                error.to_string(),
                ErrorDetails::with_error_info(
                    AUDIENCE_NOT_ALLOWED,
                    DOMAIN,
                    HashMap::from([("audience".to_owned(), audience.clone())]),
                ),
            ),
            Error::InvalidRefreshToken => Status::with_error_details(
                Code::Unauthenticated,
                error.to_string(),
                ErrorDetails::with_error_info(INVALID_REFRESH_TOKEN, DOMAIN, HashMap::new()),
            ),
            // The guard layer's own statuses, so a client sees one form for both checks.
            Error::Credential(error) => school_guard::rejection::credential_rejected(error),
            Error::Token(error) => school_guard::rejection::token_rejected(error),
            Error::TooManyWatchers => Status::with_error_details(
                Code::ResourceExhausted,
                error.to_string(),
                ErrorDetails::with_error_info(TOO_MANY_WATCHERS, DOMAIN, HashMap::new()),
            ),
            Error::RevocationStreamLagged => Status::with_error_details(
                Code::Aborted,
                error.to_string(),
                ErrorDetails::with_error_info(REVOCATION_STREAM_LAGGED, DOMAIN, HashMap::new()),
            ),
            Error::Overloaded => {
                let mut details = ErrorDetails::with_retry_info(Some(OVERLOADED_RETRY_AFTER));
                details.set_error_info(LOGINS_OVERLOADED, DOMAIN, HashMap::new());
                Status::with_error_details(Code::ResourceExhausted, error.to_string(), details)
            }
            Error::LoginThrottled { retry_after } => {
                let mut details = ErrorDetails::with_retry_info(Some(retry_after));
                details.set_error_info(LOGIN_THROTTLED, DOMAIN, HashMap::new());
                Status::with_error_details(Code::ResourceExhausted, error.to_string(), details)
            }
            Error::InvalidConfig { .. }
            | Error::InvalidPolicy { .. }
            | Error::MissingIdentity
            | Error::Remote { .. }
            | Error::Connect { .. }
            | Error::DataDirLocked { .. }
            | Error::OpenDataDir { .. }
            | Error::Storage { .. }
            | Error::CorruptRecord { .. }
            | Error::PasswordHash(_)
            | Error::Crypto(_)
            | Error::VerificationKey(_)
            | Error::TokenSigning(_)
            | Error::HashWorker
            | Error::Task(_)
            | Error::Bind { .. }
            | Error::Reflection(_)
            | Error::Transport(_)
            | Error::Io { .. } => {
                tracing::error!(error = %error.report(), "request failed");
                Status::internal("internal error")
            }
        }
    }
}

fn field_metadata(field: &str) -> HashMap<String, String> {
    HashMap::from([("field".to_owned(), field.to_owned())])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_hide_their_cause() {
        let error = Error::Storage {
            operation: "read user",
            source: sled::Error::Unsupported("secret detail".into()),
        };

        let status = Status::from(error);

        assert_eq!(status.code(), tonic::Code::Internal);
        assert_eq!(status.message(), "internal error");
    }

    #[test]
    fn invalid_credentials_message_is_fixed() {
        let status = Status::from(Error::InvalidCredentials);

        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(status.message(), "invalid username or password");
    }

    #[test]
    fn client_errors_carry_error_info() {
        let cases = [
            (Error::InvalidCredentials, INVALID_CREDENTIALS),
            (
                Error::InvalidArgument {
                    field: "username",
                    reason: "must be 1 to 64 bytes",
                },
                INVALID_ARGUMENT,
            ),
            (Error::UserExists("ann".to_owned()), USER_EXISTS),
            (Error::UserNotFound("ann".to_owned()), USER_NOT_FOUND),
            (Error::InvalidRefreshToken, INVALID_REFRESH_TOKEN),
            (Error::TooManyWatchers, TOO_MANY_WATCHERS),
            (Error::RevocationStreamLagged, REVOCATION_STREAM_LAGGED),
            (Error::LastAdmin("ann".to_owned()), LAST_ADMIN),
            (
                Error::ServiceAccountExists("svc".to_owned()),
                SERVICE_ACCOUNT_EXISTS,
            ),
            (
                Error::ServiceAccountNotFound("svc".to_owned()),
                SERVICE_ACCOUNT_NOT_FOUND,
            ),
            (Error::AccountChanged, ACCOUNT_CHANGED),
            (
                Error::AudienceNotAllowed {
                    audience: "x".to_owned(),
                },
                AUDIENCE_NOT_ALLOWED,
            ),
        ];
        for (error, reason) in cases {
            let status = Status::from(error);

            let details = status.get_error_details();
            let info = details.error_info().expect("ErrorInfo");
            assert_eq!(info.reason, reason);
            assert_eq!(info.domain, DOMAIN);
        }
    }

    #[test]
    fn invalid_argument_names_the_field() {
        let status = Status::from(Error::InvalidArgument {
            field: "password",
            reason: "must be 1 to 1024 bytes",
        });

        let details = status.get_error_details();
        let violations = details
            .bad_request()
            .map(|bad_request| bad_request.field_violations.clone())
            .unwrap_or_default();
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "password");
        assert_eq!(violations[0].description, "must be 1 to 1024 bytes");
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(
            info.metadata.get("field").map(String::as_str),
            Some("password")
        );
    }

    #[test]
    fn internal_errors_carry_no_details() {
        let status = Status::from(Error::Crypto("generate signing key"));

        assert!(status.details().is_empty());
    }

    #[test]
    fn throttled_login_carries_retry_info() {
        let status = Status::from(Error::LoginThrottled {
            retry_after: std::time::Duration::from_secs(8),
        });

        let details = status.get_error_details();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            details.retry_info().and_then(|info| info.retry_delay),
            Some(std::time::Duration::from_secs(8))
        );
        assert_eq!(
            details.error_info().map(|info| info.reason.as_str()),
            Some(LOGIN_THROTTLED)
        );
    }

    #[test]
    fn overload_carries_its_reason_and_retry_info() {
        let status = Status::from(Error::Overloaded);

        let details = status.get_error_details();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            details.error_info().map(|info| info.reason.as_str()),
            Some(LOGINS_OVERLOADED)
        );
        assert_eq!(
            details.retry_info().and_then(|info| info.retry_delay),
            Some(OVERLOADED_RETRY_AFTER)
        );
    }

    #[test]
    fn throttle_message_counts_seconds() {
        let message = |secs| {
            Error::LoginThrottled {
                retry_after: std::time::Duration::from_secs(secs),
            }
            .to_string()
        };

        assert_eq!(message(1), "too many failed logins; retry in 1 second");
        assert_eq!(message(8), "too many failed logins; retry in 8 seconds");
    }

    #[test]
    fn report_joins_the_cause_chain() {
        let error = Error::Io {
            operation: "read password from stdin",
            source: std::io::Error::other("closed"),
        };

        assert_eq!(error.report(), "read password from stdin failed: closed");
    }

    #[test]
    fn exit_code_separates_usage_errors() {
        let usage = Error::invalid_config("issuer", "AUTH_ISSUER", "must not be empty");
        let runtime = Error::Crypto("generate signing key");

        assert_eq!(usage.exit_code(), EXIT_USAGE);
        assert_eq!(runtime.exit_code(), EXIT_FAILURE);
        assert_eq!(
            usage.to_string(),
            "invalid configuration: --issuer (AUTH_ISSUER): must not be empty"
        );
    }
}
