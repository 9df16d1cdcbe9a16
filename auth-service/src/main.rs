//! The `auth-service` binary: `serve` (the default) runs the gRPC server, and `user` manages
//! accounts, offline or through a running server.

use std::process::ExitCode;

use auth_service::config::{ADMIN_TOKEN_ENV, BOOTSTRAP_ADMIN_PASSWORD_ENV, Command};
use auth_service::error::EXIT_USAGE;
use auth_service::password::Password;
use auth_service::{Config, Error};
use clap::Parser as _;

#[tokio::main]
async fn main() -> ExitCode {
    let mut config = match Config::try_parse() {
        Ok(config) => config,
        Err(error) => {
            // Help and version output are not errors.
            let code = if error.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = error.print();
            return ExitCode::from(code);
        }
    };
    config.bootstrap_admin_password = std::env::var(BOOTSTRAP_ADMIN_PASSWORD_ENV)
        .ok()
        .map(Password::new);

    auth_service::telemetry::init_tracing(config.log_format);

    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("auth-service: {}", error.report());
            ExitCode::from(error.exit_code())
        }
    }
}

async fn run(mut config: Config) -> Result<(), Error> {
    config.validate()?;

    if let Some(Command::User {
        server,
        server_ca,
        server_client_cert,
        server_client_key,
        command,
    }) = config.command.take()
    {
        let stdin = std::io::stdin().lock();
        let stdout = std::io::stdout();
        let tls = auth_service::cli::ServerTls {
            ca: server_ca,
            client_cert: server_client_cert,
            client_key: server_client_key,
        };
        return match server {
            Some(url) => {
                let token = std::env::var(ADMIN_TOKEN_ENV).ok().map(Password::new);
                auth_service::cli::run_user_command_online(
                    &url, &tls, token, command, stdin, stdout,
                )
                .await
            }
            None if tls.is_set() => Err(Error::invalid_config(
                "server",
                "AUTH_SERVER",
                "must be set when --server-ca or a client certificate is given",
            )),
            None => auth_service::cli::run_user_command(&config, command, stdin, stdout).await,
        };
    }

    let shutdown = auth_service::server::shutdown_signal()?;
    let server = auth_service::bind(config).await?;
    tracing::info!(
        listen.addr = %server.local_addr(),
        tls = server.tls_enabled(),
        "auth-service listening"
    );

    server.serve(shutdown).await?;

    tracing::info!("auth-service stopped");
    Ok(())
}
