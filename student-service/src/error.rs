//! The service's error type and its one conversion to a gRPC status.

use std::error::Error as StdError;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use school_guard::policy::PolicyError;
use tonic::Status;
use uuid::Uuid;

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

    /// The authorization policy could not be read or parsed.
    #[error("invalid --policy (environment variable STUDENT_POLICY) {origin}")]
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
    /// Maps each error to the status that the client receives. Internal failures reach the
    /// client only as "internal error", and their cause chain is logged here.
    fn from(error: Error) -> Status {
        match error {
            Error::InvalidArgument { .. } => Status::invalid_argument(error.to_string()),
            Error::NotFound { .. } => Status::not_found(error.to_string()),
            Error::AccountTaken { .. } => Status::already_exists(error.to_string()),
            Error::PermissionDenied => Status::permission_denied("permission denied"),
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
    fn chain_prints_causes() {
        let error = Error::storage("flush", std::io::Error::other("disk full"));

        let printed = ErrorChain(&error).to_string();

        assert_eq!(printed, "storage failed to flush: disk full");
    }
}
