//! The client side of the school services, for internal Rust services that call a protected
//! service under their own account.
//!
//! A [`TokenSource`] logs in to auth-service with the caller's [`Credentials`], keeps the access
//! token, and renews it in the background before it expires. Its [`BearerInterceptor`] attaches
//! the current token to every call of a generated client:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use school_client::{Credentials, TokenSource};
//! use school_proto::student::v1::DeleteStudentRequest;
//! use school_proto::student::v1::student_service_client::StudentServiceClient;
//! use tonic::transport::Channel;
//!
//! let auth = Channel::from_static("http://127.0.0.1:50051").connect().await?;
//! let credentials = Credentials::new("reporting", std::env::var("REPORTING_PASSWORD")?);
//! let tokens = TokenSource::login(auth, credentials).await?;
//!
//! let channel = Channel::from_static("http://127.0.0.1:50052").connect().await?;
//! let mut students = StudentServiceClient::with_interceptor(channel, tokens.interceptor());
//! let id = "8e0f5c1e-3f0a-4a8e-9d43-2a3b4c5d6e7f".to_owned();
//! students.delete_student(DeleteStudentRequest { id }).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Many tasks may share one [`TokenSource`]: renewal is single-flight, so however many tasks
//! need a new token at once, auth-service receives one `Login` call.

mod credentials;
pub mod tls;
mod token;

pub use credentials::Credentials;
pub use token::{BearerInterceptor, ClientError, DEFAULT_RENEW_BEFORE, TokenSource};

use tonic::Status;
use tonic_types::{ErrorInfo, StatusExt as _};

/// Returns the `google.rpc.ErrorInfo` detail of a status, if the server sent one.
///
/// Both services attach one to every error they return, except `INTERNAL`. Its `reason`, such as
/// `TOKEN_EXPIRED` or `PERMISSION_DENIED`, is stable and meant for branching. Its `domain` names
/// the component that rejected the call: `school-guard` for the guard layer in front of a
/// service, or the service itself.
pub fn error_info(status: &Status) -> Option<ErrorInfo> {
    status.get_error_details().error_info().cloned()
}
