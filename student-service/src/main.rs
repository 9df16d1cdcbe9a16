//! Runs student-service until SIGINT or SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use student_service::error::ErrorChain;
use student_service::{Config, bind, signal, telemetry};

/// Exit status for invalid configuration (`EX_USAGE` of sysexits.h).
const EXIT_CONFIG: u8 = 64;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::try_parse() {
        Ok(config) => config,
        Err(error)
            if matches!(
                error.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) =>
        {
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            let rendered = error.render().to_string();
            let first_line = rendered.lines().next().unwrap_or("invalid arguments");
            let message = first_line.strip_prefix("error: ").unwrap_or(first_line);
            eprintln!("student-service: {message}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(error) = config.validate() {
        eprintln!("student-service: {error}");
        return ExitCode::from(EXIT_CONFIG);
    }

    telemetry::init_tracing(config.log_format);

    let server = match bind(config).await {
        Ok(server) => server,
        Err(error) if error.is_config() => {
            eprintln!("student-service: {}", ErrorChain(&error));
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(error) => {
            tracing::error!(error = %ErrorChain(&error), "failed to start");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        address = %server.local_addr(),
        tls = server.tls_enabled(),
        "student-service listening"
    );

    let result = server.serve(signal::shutdown_signal()).await;

    match result {
        Ok(()) => {
            tracing::info!("student-service stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(error = %ErrorChain(&error), "student-service stopped with an error");
            ExitCode::FAILURE
        }
    }
}
