//! The service's error type and its one conversion to a gRPC status.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use school_guard::policy::PolicyError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};
use uuid::Uuid;

/// The `ErrorInfo.domain` of the errors this service's handlers return. The guard layer's
/// rejections have their own domain, `school_guard::rejection::DOMAIN`.
pub const DOMAIN: &str = "student-service";

/// `ErrorInfo.reason` of an `INVALID_ARGUMENT` error; metadata `field` names the field.
pub const INVALID_ARGUMENT: &str = "INVALID_ARGUMENT";
/// `ErrorInfo.reason` when no student has the requested id; metadata `id` is that id.
pub const STUDENT_NOT_FOUND: &str = "STUDENT_NOT_FOUND";
/// `ErrorInfo.reason` when another record is linked to the account; metadata
/// `account_username` and `id`, the id of that record.
pub const ACCOUNT_ALREADY_LINKED: &str = "ACCOUNT_ALREADY_LINKED";
/// `ErrorInfo.reason` when a caller with owner-only access requests a record that is not
/// theirs, or the policy grants owner-only access to a method without an owner check.
pub const NOT_OWNER: &str = "NOT_OWNER";

/// `ResourceInfo.resource_type` of a student record.
const STUDENT_RESOURCE: &str = "school.student.v1.Student";

/// Boxed cause of a storage failure, so that any backend can report its own error type.
pub type StorageCause = Box<dyn StdError + Send + Sync + 'static>;

/// Every failure of student-service, from start-up to a single request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or environment variable has an invalid value.
    #[error("invalid {flag} (environment variable {env}): {reason}")]
    InvalidConfig {
        /// The command-line flag, such as `--leeway-secs`.
        flag: &'static str,
        /// The environment variable that sets the same value.
        env: &'static str,
        /// The problem with the value.
        reason: String,
    },

    /// An authorization policy could not be read or parsed, or does not fit the served methods.
    #[error("invalid policy {origin} (--policy, STUDENT_POLICY, or --shadow-policy)")]
    InvalidPolicy {
        /// The policy file, or "built-in policy".
        origin: String,
        /// The parser's error.
        #[source]
        source: PolicyError,
    },

    /// Another process holds the lock on the data directory.
    #[error(
        "data directory {} is locked by another process; stop that process or set --data-dir \
         (STUDENT_DATA_DIR) to another directory",
        dir.display()
    )]
    DataDirLocked {
        /// The data directory.
        dir: PathBuf,
        /// sled's error.
        #[source]
        source: sled::Error,
    },

    /// The database in the data directory could not be opened.
    #[error("failed to open the database in {}", dir.display())]
    OpenStorage {
        /// The data directory.
        dir: PathBuf,
        /// sled's error.
        #[source]
        source: sled::Error,
    },

    /// The listening socket could not be bound.
    #[error("failed to listen on {addr}")]
    Bind {
        /// The requested address.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },

    /// The gRPC server stopped with an error.
    #[error("the gRPC server failed")]
    Transport(#[source] tonic::transport::Error),

    /// The reflection service could not be built from the file descriptor sets.
    #[error("failed to build the reflection service")]
    Reflection(#[source] tonic_reflection::server::Error),

    /// A storage operation failed.
    #[error("storage failed to {operation}")]
    Storage {
        /// The operation that failed, such as "insert a student".
        operation: &'static str,
        /// The backend's error.
        #[source]
        source: StorageCause,
    },

    /// A stored record could not be decoded.
    #[error("stored record {key} is corrupt: {reason}")]
    CorruptRecord {
        /// The record's key, printed for the log.
        key: String,
        /// The reason the record cannot be used.
        reason: String,
    },

    /// A request field is invalid.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The request field.
        field: &'static str,
        /// The problem and the accepted values.
        reason: String,
    },

    /// No student has the requested id.
    #[error("student {id} not found")]
    NotFound {
        /// The requested id.
        id: Uuid,
    },

    /// Another student record is already linked to the account.
    #[error("account_username {username:?} is already linked to student {existing}")]
    AccountTaken {
        /// The account username.
        username: String,
        /// The id of the record already linked to the account.
        existing: Uuid,
    },

    /// The caller is authenticated but may not perform the call.
    #[error("permission denied")]
    PermissionDenied,

    /// A protected handler ran without the identity that the guard layer inserts, so the
    /// guard layer is missing or misconfigured.
    #[error("request reached a protected handler without an authenticated identity")]
    MissingIdentity,
}

impl Error {
    /// Whether the error comes from the configuration, so the process should exit with 64
    /// (`EX_USAGE`).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Error::InvalidConfig { .. } | Error::InvalidPolicy { .. }
        )
    }

    /// Wraps a backend error from `operation`.
    pub fn storage(operation: &'static str, source: impl Into<StorageCause>) -> Self {
        Error::Storage {
            operation,
            source: source.into(),
        }
    }
}

/// Formats an error with its whole chain of causes on one line.
pub struct ErrorChain<'a>(pub &'a (dyn StdError + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(error) = cause {
            write!(f, ": {error}")?;
            cause = error.source();
        }
        Ok(())
    }
}

impl From<Error> for Status {
    /// Maps each error to the status that the client receives. Client errors carry a
    /// `google.rpc.ErrorInfo` in the [`DOMAIN`] domain, and an invalid field also a
    /// `google.rpc.BadRequest` that names it. Internal failures reach the client only as
    /// "internal error" with no details, and their cause chain is logged here.
    fn from(error: Error) -> Status {
        match error {
            Error::InvalidArgument { field, ref reason } => {
                let mut details = ErrorDetails::with_bad_request_violation(field, reason.clone());
                details.set_error_info(INVALID_ARGUMENT, DOMAIN, metadata([("field", field)]));
                Status::with_error_details(Code::InvalidArgument, error.to_string(), details)
            }
            Error::NotFound { id } => {
                let id = id.to_string();
                let mut details = ErrorDetails::with_resource_info(STUDENT_RESOURCE, &id, "", "");
                details.set_error_info(STUDENT_NOT_FOUND, DOMAIN, metadata([("id", &id)]));
                Status::with_error_details(Code::NotFound, error.to_string(), details)
            }
            Error::AccountTaken {
                ref username,
                existing,
            } => {
                let existing = existing.to_string();
                let mut details =
                    ErrorDetails::with_resource_info(STUDENT_RESOURCE, &existing, "", "");
                details.set_error_info(
                    ACCOUNT_ALREADY_LINKED,
                    DOMAIN,
                    metadata([("account_username", username.as_str()), ("id", &existing)]),
                );
                Status::with_error_details(Code::AlreadyExists, error.to_string(), details)
            }
            Error::PermissionDenied => Status::with_error_details(
                Code::PermissionDenied,
                "permission denied",
                ErrorDetails::with_error_info(NOT_OWNER, DOMAIN, HashMap::new()),
            ),
            Error::InvalidConfig { .. }
            | Error::InvalidPolicy { .. }
            | Error::DataDirLocked { .. }
            | Error::OpenStorage { .. }
            | Error::Bind { .. }
            | Error::Transport(_)
            | Error::Reflection(_)
            | Error::Storage { .. }
            | Error::CorruptRecord { .. }
            | Error::MissingIdentity => {
                tracing::error!(error = %ErrorChain(&error), "request failed");
                Status::internal("internal error")
            }
        }
    }
}

fn metadata<const N: usize>(entries: [(&str, &str); N]) -> HashMap<String, String> {
    entries
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn storage_text_hidden_from_clients() {
        let error = Error::storage(
            "insert a student",
            std::io::Error::other("disk /dev/sda1 full"),
        );

        let status = Status::from(error);

        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error");
    }

    #[test]
    fn missing_identity_is_internal() {
        let status = Status::from(Error::MissingIdentity);

        assert_eq!(status.code(), Code::Internal);
    }

    #[test]
    fn invalid_argument_names_field() {
        let error = Error::InvalidArgument {
            field: "email",
            reason: "must contain exactly one '@'".to_owned(),
        };

        let status = Status::from(error);

        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("email"), "{}", status.message());
    }

    #[test]
    fn invalid_argument_is_a_field_violation() {
        let error = Error::InvalidArgument {
            field: "email",
            reason: "must contain exactly one '@'".to_owned(),
        };

        let status = Status::from(error);

        let details = status.get_error_details();
        let violations = details
            .bad_request()
            .map(|bad_request| bad_request.field_violations.clone())
            .unwrap_or_default();
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "email");
        assert_eq!(violations[0].description, "must contain exactly one '@'");
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(info.reason, INVALID_ARGUMENT);
        assert_eq!(info.domain, DOMAIN);
    }

    #[test]
    fn client_errors_carry_error_info() {
        let id = Uuid::new_v4();
        let cases = [
            (Error::NotFound { id }, Code::NotFound, STUDENT_NOT_FOUND),
            (
                Error::AccountTaken {
                    username: "ada".to_owned(),
                    existing: id,
                },
                Code::AlreadyExists,
                ACCOUNT_ALREADY_LINKED,
            ),
            (Error::PermissionDenied, Code::PermissionDenied, NOT_OWNER),
        ];
        for (error, code, reason) in cases {
            let status = Status::from(error);

            let details = status.get_error_details();
            let info = details.error_info().expect("ErrorInfo");
            assert_eq!(status.code(), code);
            assert_eq!(info.reason, reason);
            assert_eq!(info.domain, DOMAIN);
        }
    }

    #[test]
    fn not_found_names_the_record() {
        let id = Uuid::new_v4();

        let status = Status::from(Error::NotFound { id });

        let details = status.get_error_details();
        let resource = details.resource_info().expect("ResourceInfo");
        assert_eq!(resource.resource_type, "school.student.v1.Student");
        assert_eq!(resource.resource_name, id.to_string());
    }

    #[test]
    fn internal_errors_carry_no_details() {
        let status = Status::from(Error::MissingIdentity);

        assert!(status.details().is_empty());
    }

    #[test]
    fn chain_prints_causes() {
        let error = Error::storage("flush", std::io::Error::other("disk full"));

        let printed = ErrorChain(&error).to_string();

        assert_eq!(printed, "storage failed to flush: disk full");
    }
}
