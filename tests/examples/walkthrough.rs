//! Runs the walkthrough against services that are already running, as `scripts/dev` does.
//!
//! Reads `AUTH_URL`, `STUDENT_URL`, `ADMIN_USERNAME`, `ADMIN_PASSWORD`, `STUDENT_USERNAME` and
//! `STUDENT_PASSWORD` from the environment, so no password appears on a command line.

use std::process::ExitCode;

use integration_tests::wait_until_serving;
use integration_tests::walkthrough::{Credentials, run};
use tonic::transport::Channel;

fn variable(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("missing environment variable {name}"))
}

async fn walkthrough() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let auth_url = variable("AUTH_URL")?;
    let student_url = variable("STUDENT_URL")?;
    wait_until_serving(&auth_url, "school.auth.v1.AuthService").await;
    wait_until_serving(&student_url, "school.student.v1.StudentService").await;

    let auth = Channel::from_shared(auth_url)?.connect().await?;
    let students = Channel::from_shared(student_url)?.connect().await?;
    let admin = Credentials {
        username: variable("ADMIN_USERNAME")?,
        password: variable("ADMIN_PASSWORD")?,
    };
    let student = Credentials {
        username: variable("STUDENT_USERNAME")?,
        password: variable("STUDENT_PASSWORD")?,
    };
    run(auth, students, &admin, &student, &mut std::io::stdout()).await
}

#[tokio::main]
async fn main() -> ExitCode {
    match walkthrough().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("walkthrough failed: {error}");
            ExitCode::FAILURE
        }
    }
}
