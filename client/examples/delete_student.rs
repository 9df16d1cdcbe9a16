//! Deletes one student record as an internal service would: logs in under its own account and
//! calls `DeleteStudent` through the bearer-token interceptor.
//!
//! ```sh
//! CLIENT_USERNAME=admin CLIENT_PASSWORD=... cargo run -p school-client --example delete_student -- <id>
//! ```
//!
//! Reads `AUTH_URL` (default `http://127.0.0.1:50051`), `STUDENT_URL` (default
//! `http://127.0.0.1:50052`), `CLIENT_USERNAME` and `CLIENT_PASSWORD` from the environment, so
//! the password never appears on a command line. Exits 0 when the record is deleted, 1 when a
//! call fails (printing the gRPC code and the `ErrorInfo` reason), and 2 on a usage error.

use std::process::ExitCode;

use school_client::{Credentials, TokenSource, error_info};
use school_proto::student::v1::DeleteStudentRequest;
use school_proto::student::v1::student_service_client::StudentServiceClient;
use tonic::transport::Channel;

/// Exit code when a call fails.
const EXIT_CALL_FAILED: u8 = 1;
/// Exit code for a missing argument or variable.
const EXIT_USAGE: u8 = 2;

fn variable(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("missing environment variable {name}"))
}

fn variable_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

async fn connect(url: String) -> Result<Channel, String> {
    Channel::from_shared(url.clone())
        .map_err(|error| format!("invalid URL {url:?}: {error}"))?
        .connect()
        .await
        .map_err(|error| format!("failed to connect to {url}: {error}"))
}

async fn delete_student(id: String) -> Result<(), (u8, String)> {
    let usage = |message: String| (EXIT_USAGE, message);
    let failed = |message: String| (EXIT_CALL_FAILED, message);
    let credentials = Credentials::new(
        variable("CLIENT_USERNAME").map_err(usage)?,
        variable("CLIENT_PASSWORD").map_err(usage)?,
    );
    let auth = connect(variable_or("AUTH_URL", "http://127.0.0.1:50051"))
        .await
        .map_err(failed)?;
    let students = connect(variable_or("STUDENT_URL", "http://127.0.0.1:50052"))
        .await
        .map_err(failed)?;

    let tokens = TokenSource::login(auth, credentials)
        .await
        .map_err(|error| failed(error.to_string()))?;
    let mut client = StudentServiceClient::with_interceptor(students, tokens.interceptor());

    match client
        .delete_student(DeleteStudentRequest { id: id.clone() })
        .await
    {
        Ok(_) => {
            println!("deleted student {id}");
            Ok(())
        }
        Err(status) => {
            let reason = error_info(&status)
                .map(|info| format!("{} ({})", info.reason, info.domain))
                .unwrap_or_else(|| "no ErrorInfo".to_owned());
            Err(failed(format!(
                "DeleteStudent failed: {:?}: {}; reason {reason}",
                status.code(),
                status.message()
            )))
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(id), None) = (args.next(), args.next()) else {
        eprintln!("usage: delete_student <student-id>");
        return ExitCode::from(EXIT_USAGE);
    };

    match delete_student(id).await {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("{message}");
            ExitCode::from(code)
        }
    }
}
