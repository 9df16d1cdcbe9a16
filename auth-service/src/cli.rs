//! The `user` subcommands: offline, on the data directory directly, or online, through the
//! UserService of a running server. Both print the same output.

mod online;

use std::io::{BufRead, Write};

use zeroize::Zeroizing;

use crate::config::{Config, USER_PASSWORD_ENV, UserCommand};
use crate::error::Error;
use crate::password::Password;
use crate::role::Role;
use crate::server::open_users;
use crate::user_service::{Actor, audit};
use crate::users::{UserSummary, Users};

pub use online::{ServerTls, run_user_command_online};

/// The result of a `user` subcommand, printed the same way whether it ran offline or online.
#[derive(Debug)]
enum Outcome {
    Created { name: String, role: Role },
    Listed(Vec<UserSummary>),
    Disabled(String),
    Enabled(String),
    RoleSet { name: String, role: Role },
    Deleted(String),
    PasswordReset(String),
}

/// Runs a `user` subcommand against `config.data_dir`, writing results to `output`.
///
/// `user add` and `user reset-password` take the password from [`USER_PASSWORD_ENV`] if set,
/// otherwise from the first line of `input`. Fails with [`Error::DataDirLocked`] while a server
/// runs on the directory. Every change is an audit event with the actor `offline-cli`.
pub async fn run_user_command(
    config: &Config,
    command: UserCommand,
    input: impl BufRead,
    output: impl Write,
) -> Result<(), Error> {
    let (store, users) = open_users(config).await?;

    let outcome = run_offline(&users, command, input).await;
    let flushed = store.flush().await;
    write_outcome(output, &outcome?)?;
    flushed
}

async fn run_offline(
    users: &Users,
    command: UserCommand,
    input: impl BufRead,
) -> Result<Outcome, Error> {
    let actor = Actor::offline_cli();
    match command {
        UserCommand::Add { name, role } => {
            let password = new_password(input)?;
            let created = users.create(&name, password.expose(), role).await;
            audit(&actor, "create_user", &name, &created);
            created.map(|()| Outcome::Created { name, role })
        }
        UserCommand::List => users.list().await.map(Outcome::Listed),
        UserCommand::Disable { name } => {
            let updated = users.set_disabled(&name, true).await;
            audit(&actor, "disable_user", &name, &updated);
            updated.map(|_| Outcome::Disabled(name))
        }
        UserCommand::Enable { name } => {
            let updated = users.set_disabled(&name, false).await;
            audit(&actor, "enable_user", &name, &updated);
            updated.map(|_| Outcome::Enabled(name))
        }
        UserCommand::SetRole { name, role } => {
            let updated = users.update_role(&name, role).await;
            audit(&actor, "update_user_role", &name, &updated);
            updated.map(|_| Outcome::RoleSet { name, role })
        }
        UserCommand::Delete { name } => {
            let deleted = users.delete(&name).await;
            audit(&actor, "delete_user", &name, &deleted);
            deleted.map(|()| Outcome::Deleted(name))
        }
        UserCommand::ResetPassword { name } => {
            let password = new_password(input)?;
            let reset = users.reset_password(&name, password).await;
            audit(&actor, "reset_password", &name, &reset);
            reset.map(|()| Outcome::PasswordReset(name))
        }
    }
}

/// Returns the new password from [`USER_PASSWORD_ENV`], or else the first line of `input`.
fn new_password(input: impl BufRead) -> Result<Password, Error> {
    match std::env::var(USER_PASSWORD_ENV) {
        Ok(password) => Ok(Password::new(password)),
        Err(_) => read_password_line(input),
    }
}

fn write_outcome(mut output: impl Write, outcome: &Outcome) -> Result<(), Error> {
    match outcome {
        Outcome::Created { name, role } => writeln!(output, "created user {name} with role {role}"),
        Outcome::Listed(users) => users.iter().try_for_each(|user| {
            let status = if user.disabled { "disabled" } else { "enabled" };
            writeln!(output, "{}\t{}\t{status}", user.username, user.role)
        }),
        Outcome::Disabled(name) => writeln!(output, "disabled user {name}"),
        Outcome::Enabled(name) => writeln!(output, "enabled user {name}"),
        Outcome::RoleSet { name, role } => writeln!(output, "set role of user {name} to {role}"),
        Outcome::Deleted(name) => writeln!(output, "deleted user {name}"),
        Outcome::PasswordReset(name) => writeln!(output, "reset password of user {name}"),
    }
    .map_err(write_failed)
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
    password.validate_new("password")?;
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
        let password = read_password_line("first line\nsecond line\n".as_bytes())?;

        assert_eq!(password.expose(), "first line");
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
