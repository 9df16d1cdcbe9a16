//! Runs both services in this process for the client tests that `scripts/test` runs with other
//! tools (`buf curl`, the README's grpcurl session, the generated Python client).
//!
//! Takes one argument, a directory, and writes two files into it:
//!
//! - `data/dev-credentials`: the accounts `admin` (role admin) and `sam` (role student) with
//!   random passwords, in the form `scripts/dev` writes, readable by the owner only;
//! - `endpoints`, written last so that its presence means both services are SERVING:
//!   `AUTH_ADDR=127.0.0.1:<port>` and `STUDENT_ADDR=127.0.0.1:<port>`.
//!
//! Both services listen on loopback ports chosen by the OS. They stop gracefully on SIGINT or
//! SIGTERM.

use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use auth_service::Role;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use integration_tests::Stack;
use tokio::signal::unix::{SignalKind, signal};

const ADMIN_USERNAME: &str = "admin";
const STUDENT_USERNAME: &str = "sam";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn random_password() -> Result<String, BoxError> {
    let mut bytes = [0_u8; 18];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Writes `contents` to `path` with mode 0600, through a temporary file and a rename so that a
/// reader never sees a partial file.
fn write_private(path: &Path, contents: &str) -> Result<(), BoxError> {
    use std::io::Write as _;

    let partial = path.with_extension("partial");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&partial, path)?;
    Ok(())
}

async fn run(dir: PathBuf) -> Result<(), BoxError> {
    let mut terminate = signal(SignalKind::terminate())?;
    let admin_password = random_password()?;
    let student_password = random_password()?;
    let accounts = [
        (ADMIN_USERNAME, admin_password.as_str(), Role::Admin),
        (STUDENT_USERNAME, student_password.as_str(), Role::Student),
    ];

    let stack = Stack::start_with_accounts(&[], &[], &accounts).await;

    std::fs::create_dir_all(dir.join("data"))?;
    write_private(
        &dir.join("data").join("dev-credentials"),
        &format!(
            "ADMIN_USERNAME={ADMIN_USERNAME}\nADMIN_PASSWORD={admin_password}\n\
             STUDENT_USERNAME={STUDENT_USERNAME}\nSTUDENT_PASSWORD={student_password}\n"
        ),
    )?;
    write_private(
        &dir.join("endpoints"),
        &format!(
            "AUTH_ADDR={}\nSTUDENT_ADDR={}\n",
            stack.auth.addr, stack.student.addr
        ),
    )?;
    println!(
        "client stack: auth-service on {}, student-service on {}",
        stack.auth.addr, stack.student.addr
    );

    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    stack.student.stop().await;
    stack.auth.stop().await;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: client_stack <directory>");
        return ExitCode::from(2);
    };

    match run(PathBuf::from(dir)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("client stack failed: {error}");
            ExitCode::FAILURE
        }
    }
}
