//! The offline `user` subcommands, which open the data directory directly.

use std::io::{BufRead, Write};

use zeroize::Zeroizing;

use crate::config::{Config, USER_PASSWORD_ENV, UserCommand};
use crate::error::Error;
use crate::password::Password;
use crate::server::open_users;

/// Runs a `user` subcommand against `config.data_dir`, writing results to `output`.
///
/// `user add` takes the password from [`USER_PASSWORD_ENV`] if set, otherwise from the first
/// line of `input`. Fails with [`Error::DataDirLocked`] while a server runs on the directory.
pub async fn run_user_command(
    config: &Config,
    command: UserCommand,
    input: impl BufRead,
    mut output: impl Write,
) -> Result<(), Error> {
    let (store, users) = open_users(config).await?;

    match command {
        UserCommand::Add { name, role } => {
            let password = match std::env::var(USER_PASSWORD_ENV) {
                Ok(password) => Password::new(password),
                Err(_) => read_password_line(input)?,
            };
            users.create(&name, password.expose(), role).await?;
            writeln!(output, "created user {name} with role {role}").map_err(write_failed)?;
        }
        UserCommand::List => {
            for user in users.list().await? {
                let status = if user.disabled { "disabled" } else { "enabled" };
                writeln!(output, "{}\t{}\t{status}", user.username, user.role)
                    .map_err(write_failed)?;
            }
        }
        UserCommand::Disable { name } => {
            users.set_disabled(&name, true).await?;
            writeln!(output, "disabled user {name}").map_err(write_failed)?;
        }
        UserCommand::Enable { name } => {
            users.set_disabled(&name, false).await?;
            writeln!(output, "enabled user {name}").map_err(write_failed)?;
        }
    }

    store.flush().await
}

/// Reads the first line of `input` as a password, without its line ending.
fn read_password_line(mut input: impl BufRead) -> Result<Password, Error> {
    let mut buffer = Zeroizing::new(String::new());
    input.read_line(&mut buffer).map_err(|source| Error::Io {
        operation: "read password from stdin",
        source,
    })?;

    let line = buffer.strip_suffix('\n').unwrap_or(&buffer);
    let line = line.strip_suffix('\r').unwrap_or(line);
    let password = Password::new(line.to_owned());
    password.validate()?;
    Ok(password)
}

fn write_failed(source: std::io::Error) -> Error {
    Error::Io {
        operation: "write to stdout",
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_line_drops_line_ending() -> Result<(), Error> {
        for input in ["pw with spaces\n", "pw with spaces\r\n", "pw with spaces"] {
            let password = read_password_line(input.as_bytes())?;
            assert_eq!(password.expose(), "pw with spaces");
        }
        Ok(())
    }

    #[test]
    fn password_line_reads_only_first_line() -> Result<(), Error> {
        let password = read_password_line("first\nsecond\n".as_bytes())?;

        assert_eq!(password.expose(), "first");
        Ok(())
    }

    #[test]
    fn empty_password_line_is_rejected() {
        for input in ["", "\n"] {
            let read = read_password_line(input.as_bytes());
            assert!(
                matches!(
                    read,
                    Err(Error::InvalidArgument {
                        field: "password",
                        ..
                    })
                ),
                "input {input:?} was accepted"
            );
        }
    }
}
