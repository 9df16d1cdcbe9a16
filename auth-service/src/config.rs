//! Command-line flags and `AUTH_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::error::Error;
use crate::password::{DEFAULT_HASH_NICE, HashParams, MAX_MEMORY_KIB, Password};
use crate::role::Role;
use crate::sessions::DEFAULT_MAX_SESSIONS_PER_USER;
use crate::users::validate_username;
use school_guard::threads::MAX_NICE as MAX_HASH_NICE;

/// The environment variable with the bootstrap admin's password. It has no flag, so the
/// password never appears in a process listing.
pub const BOOTSTRAP_ADMIN_PASSWORD_ENV: &str = "AUTH_BOOTSTRAP_ADMIN_PASSWORD";

/// The environment variable with the admin access token that `user --server` sends. It has no
/// flag, so the token never appears in a process listing.
pub const ADMIN_TOKEN_ENV: &str = "AUTH_ADMIN_TOKEN";

/// The authorization policy used when `--policy` is not given.
pub const DEFAULT_POLICY: &str = include_str!("../policy.toml");

/// The environment variable that `user add` reads the password from before trying stdin.
pub const USER_PASSWORD_ENV: &str = "AUTH_USER_PASSWORD";

/// The longest accepted token lifetime: one day.
const MAX_TOKEN_TTL_SECS: u64 = 24 * 60 * 60;

/// The longest accepted refresh token lifetime: 90 days.
const MAX_REFRESH_TOKEN_TTL_SECS: u64 = 90 * 24 * 60 * 60;

/// The longest accepted time between purges of expired sessions: one hour.
const MAX_PURGE_INTERVAL_SECS: u64 = 60 * 60;

/// The maximum number of password hashing threads. Each keeps the Argon2 memory cost, 19 MiB
/// by default.
const MAX_HASH_CONCURRENCY: usize = 256;

/// The highest accepted limit of live sessions per user.
const MAX_SESSIONS_PER_USER: usize = 10_000;

/// The largest accepted clock skew allowance: five minutes.
const MAX_LEEWAY_SECS: u64 = 5 * 60;

/// The settings of the auth service. Every flag can also be set with the environment variable
/// named in its help; a flag on the command line wins over the variable.
#[derive(Debug, Parser)]
#[command(
    name = "auth-service",
    version,
    about = "Authenticates users and issues signed access tokens over gRPC"
)]
pub struct Config {
    /// The subcommand to run, `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address and port for the gRPC listener.
    #[arg(
        long,
        env = "AUTH_LISTEN",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    pub listen: SocketAddr,

    /// Directory for the database of users and signing keys; created with mode 0700 if missing.
    #[arg(
        long,
        env = "AUTH_DATA_DIR",
        default_value = "./data/auth",
        global = true
    )]
    pub data_dir: PathBuf,

    /// Value of the `iss` claim in issued tokens, and the issuer ValidateToken accepts.
    #[arg(
        long,
        env = "AUTH_ISSUER",
        default_value = "school-auth",
        global = true
    )]
    pub issuer: String,

    /// Value of the `aud` claim in issued tokens, and the audience ValidateToken requires.
    #[arg(long, env = "AUTH_AUDIENCE", default_value = "school", global = true)]
    pub audience: String,

    /// Lifetime of issued access tokens, in seconds (1 to 86400).
    #[arg(
        long,
        env = "AUTH_TOKEN_TTL_SECS",
        default_value_t = 900,
        global = true
    )]
    pub token_ttl_secs: u64,

    /// Lifetime of refresh tokens, in seconds (1 to 7776000). Each RefreshToken call issues a
    /// new one with a full lifetime.
    #[arg(
        long,
        env = "AUTH_REFRESH_TOKEN_TTL_SECS",
        default_value_t = 7 * 24 * 60 * 60,
        global = true
    )]
    pub refresh_token_ttl_secs: u64,

    /// Time between purges of expired sessions, refresh tokens and revocations, in seconds
    /// (1 to 3600).
    #[arg(
        long,
        env = "AUTH_SESSION_PURGE_INTERVAL_SECS",
        default_value_t = 60,
        global = true
    )]
    pub session_purge_interval_secs: u64,

    /// The maximum number of live sessions per user. A login beyond it ends the user's oldest
    /// session and revokes its tokens, which keeps stored sessions bounded.
    #[arg(
        long,
        env = "AUTH_MAX_SESSIONS_PER_USER",
        default_value_t = DEFAULT_MAX_SESSIONS_PER_USER,
        global = true
    )]
    pub max_sessions_per_user: usize,

    /// Clock skew allowed when ValidateToken checks exp and nbf, in seconds (0 to 300).
    #[arg(long, env = "AUTH_LEEWAY_SECS", default_value_t = 5, global = true)]
    pub leeway_secs: u64,

    /// Argon2id memory cost for new password hashes, in KiB.
    #[arg(long, env = "AUTH_ARGON2_MEMORY_KIB", default_value_t = HashParams::default().memory_kib, global = true)]
    pub argon2_memory_kib: u32,

    /// Argon2id number of passes for new password hashes.
    #[arg(long, env = "AUTH_ARGON2_ITERATIONS", default_value_t = HashParams::default().iterations, global = true)]
    pub argon2_iterations: u32,

    /// Argon2id degree of parallelism for new password hashes.
    #[arg(long, env = "AUTH_ARGON2_PARALLELISM", default_value_t = HashParams::default().parallelism, global = true)]
    pub argon2_parallelism: u32,

    /// Password hashing threads, and so hashes computed at the same time, 1 to 256; each
    /// thread keeps the Argon2 memory cost [default: number of CPUs, at most 256].
    #[arg(long, env = "AUTH_HASH_CONCURRENCY", global = true)]
    pub hash_concurrency: Option<usize>,

    /// How many steps of niceness below the rest of the process the password hashing threads
    /// run, 0 to 19 (capped at niceness 19). Higher values let token checks run first when the
    /// CPUs are busy, at the cost of slower logins; 0 runs hashing at the process's priority.
    #[arg(
        long,
        env = "AUTH_HASH_NICE",
        default_value_t = DEFAULT_HASH_NICE,
        allow_negative_numbers = true,
        global = true
    )]
    pub hash_nice: i32,

    /// Whether the server reflection service is served; `off` hides the method list from
    /// unauthenticated callers.
    #[arg(long, env = "AUTH_REFLECTION", value_enum, default_value_t = Reflection::On, global = true)]
    pub reflection: Reflection,

    /// Signing-key rotation.
    #[command(flatten)]
    pub keys: crate::keys::KeyArgs,

    /// Failed-login throttling.
    #[command(flatten)]
    pub throttle: crate::throttle::ThrottleArgs,

    /// TLS on the gRPC listener.
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,

    /// TOML file with the authorization policy of UserService and the other methods; the
    /// built-in policy is used when absent. SIGHUP reloads it.
    #[arg(long, env = "AUTH_POLICY", value_name = "FILE")]
    pub policy: Option<PathBuf>,

    /// TOML file with a policy to evaluate beside the enforced one without enforcing it: its
    /// decisions that differ are logged. SIGHUP reloads it.
    #[arg(long, env = "AUTH_SHADOW_POLICY", value_name = "FILE")]
    pub shadow_policy: Option<PathBuf>,

    /// Log output format.
    #[arg(long, env = "AUTH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// Socket address for the Prometheus metrics endpoint (`GET /metrics` over plain HTTP);
    /// off when absent. It needs no token, so bind it to loopback or a private network.
    #[arg(long, env = "AUTH_METRICS_LISTEN", value_name = "ADDR", global = true)]
    pub metrics_listen: Option<SocketAddr>,

    /// Requests handled at the same time across all connections; further requests get
    /// RESOURCE_EXHAUSTED at once.
    #[arg(
        long,
        env = "AUTH_MAX_CONCURRENT_REQUESTS",
        value_name = "COUNT",
        default_value_t = 256,
        value_parser = clap::value_parser!(u32).range(1..),
        global = true
    )]
    pub max_concurrent_requests: u32,

    /// Username of an admin to create at start if no user has that name; needs
    /// AUTH_BOOTSTRAP_ADMIN_PASSWORD.
    #[arg(long, env = "AUTH_BOOTSTRAP_ADMIN_USERNAME", global = true)]
    pub bootstrap_admin_username: Option<String>,

    /// Password of the bootstrap admin. It has no flag: `main` reads it from
    /// [`BOOTSTRAP_ADMIN_PASSWORD_ENV`], and tests set it directly.
    #[arg(skip)]
    pub bootstrap_admin_password: Option<Password>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server (the default).
    Serve,
    /// Manage user accounts: offline in the data directory (fails while a server has it open),
    /// or online through a running server with --server.
    User {
        /// URL of a running auth-service, such as http://127.0.0.1:50051, to manage users
        /// through UserService with the admin token in AUTH_ADMIN_TOKEN. Without it the data
        /// directory is opened directly.
        #[arg(long, env = "AUTH_SERVER", value_name = "URL")]
        server: Option<String>,
        /// PEM CA certificate that an https:// --server must chain to; the system's roots are
        /// not used.
        #[arg(long, env = "AUTH_SERVER_CA", value_name = "FILE")]
        server_ca: Option<PathBuf>,
        /// PEM client certificate presented to an https:// --server that requires mutual TLS;
        /// needs --server-client-key.
        #[arg(long, env = "AUTH_SERVER_CLIENT_CERT", value_name = "FILE")]
        server_client_cert: Option<PathBuf>,
        /// PEM private key of --server-client-cert.
        #[arg(long, env = "AUTH_SERVER_CLIENT_KEY", value_name = "FILE")]
        server_client_key: Option<PathBuf>,
        /// The user operation.
        #[command(subcommand)]
        command: UserCommand,
    },
}

/// The `user` subcommands.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user. The password is read from AUTH_USER_PASSWORD if set, otherwise from the
    /// first line of stdin.
    Add {
        /// The username: 1 to 64 bytes of ASCII letters, digits, '.', '_', '-' and '@'.
        name: String,
        /// The role copied into the user's tokens.
        #[arg(long, value_enum)]
        role: Role,
    },
    /// Print every user with role and status.
    List,
    /// Reject logins by a user, and revoke every token and session issued to it.
    Disable {
        /// The username.
        name: String,
    },
    /// Allow logins by a disabled user again.
    Enable {
        /// The username.
        name: String,
    },
    /// Change the role copied into the user's future tokens.
    SetRole {
        /// The username.
        name: String,
        /// The new role.
        #[arg(long, value_enum)]
        role: Role,
    },
    /// Delete a user. The last enabled admin cannot be deleted.
    Delete {
        /// The username.
        name: String,
    },
    /// Set a new password for a user, read from AUTH_USER_PASSWORD if set, otherwise from the
    /// first line of stdin.
    ResetPassword {
        /// The username.
        name: String,
    },
}

/// Whether server reflection is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Reflection {
    /// Serve `grpc.reflection.v1` and `v1alpha` without a token.
    On,
    /// Do not serve reflection; calls to it fail with UNIMPLEMENTED.
    Off,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// Checks every setting before anything is opened or bound. The error names the flag and
    /// its environment variable.
    pub fn validate(&self) -> Result<(), Error> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(Error::invalid_config(
                "data-dir",
                "AUTH_DATA_DIR",
                "must not be empty",
            ));
        }
        if self.issuer.trim().is_empty() {
            return Err(Error::invalid_config(
                "issuer",
                "AUTH_ISSUER",
                "must not be empty",
            ));
        }
        if self.audience.trim().is_empty() {
            return Err(Error::invalid_config(
                "audience",
                "AUTH_AUDIENCE",
                "must not be empty",
            ));
        }
        if !(1..=MAX_TOKEN_TTL_SECS).contains(&self.token_ttl_secs) {
            return Err(Error::invalid_config(
                "token-ttl-secs",
                "AUTH_TOKEN_TTL_SECS",
                format!(
                    "must be 1 to {MAX_TOKEN_TTL_SECS} seconds, got {}",
                    self.token_ttl_secs
                ),
            ));
        }
        if !(1..=MAX_REFRESH_TOKEN_TTL_SECS).contains(&self.refresh_token_ttl_secs) {
            return Err(Error::invalid_config(
                "refresh-token-ttl-secs",
                "AUTH_REFRESH_TOKEN_TTL_SECS",
                format!(
                    "must be 1 to {MAX_REFRESH_TOKEN_TTL_SECS} seconds, got {}",
                    self.refresh_token_ttl_secs
                ),
            ));
        }
        if !(1..=MAX_PURGE_INTERVAL_SECS).contains(&self.session_purge_interval_secs) {
            return Err(Error::invalid_config(
                "session-purge-interval-secs",
                "AUTH_SESSION_PURGE_INTERVAL_SECS",
                format!(
                    "must be 1 to {MAX_PURGE_INTERVAL_SECS} seconds, got {}",
                    self.session_purge_interval_secs
                ),
            ));
        }
        if self.leeway_secs > MAX_LEEWAY_SECS {
            return Err(Error::invalid_config(
                "leeway-secs",
                "AUTH_LEEWAY_SECS",
                format!(
                    "must be 0 to {MAX_LEEWAY_SECS} seconds, got {}",
                    self.leeway_secs
                ),
            ));
        }
        self.validate_hash_params()?;
        if let Some(threads) = self.hash_concurrency
            && !(1..=MAX_HASH_CONCURRENCY).contains(&threads)
        {
            return Err(Error::invalid_config(
                "hash-concurrency",
                "AUTH_HASH_CONCURRENCY",
                format!("must be 1 to {MAX_HASH_CONCURRENCY}, got {threads}"),
            ));
        }
        if !(1..=MAX_SESSIONS_PER_USER).contains(&self.max_sessions_per_user) {
            return Err(Error::invalid_config(
                "max-sessions-per-user",
                "AUTH_MAX_SESSIONS_PER_USER",
                format!(
                    "must be 1 to {MAX_SESSIONS_PER_USER}, got {}",
                    self.max_sessions_per_user
                ),
            ));
        }
        if !(0..=MAX_HASH_NICE).contains(&self.hash_nice) {
            return Err(Error::invalid_config(
                "hash-nice",
                "AUTH_HASH_NICE",
                format!("must be 0 to {MAX_HASH_NICE}, got {}", self.hash_nice),
            ));
        }
        self.throttle.validate()?;
        self.keys.validate()?;
        self.tls.validate()?;
        self.validate_bootstrap_admin()
    }

    /// Applies argon2's own limits, each to its flag: at least one lane and one pass, and at
    /// least 8 KiB of memory per lane.
    fn validate_hash_params(&self) -> Result<(), Error> {
        let max_lanes = argon2::Params::MAX_P_COST;
        if !(1..=max_lanes).contains(&self.argon2_parallelism) {
            return Err(Error::invalid_config(
                "argon2-parallelism",
                "AUTH_ARGON2_PARALLELISM",
                format!("must be 1 to {max_lanes}, got {}", self.argon2_parallelism),
            ));
        }
        if self.argon2_iterations < 1 {
            return Err(Error::invalid_config(
                "argon2-iterations",
                "AUTH_ARGON2_ITERATIONS",
                "must be at least 1",
            ));
        }
        let min_memory = self.argon2_parallelism.saturating_mul(8);
        if self.argon2_memory_kib < min_memory {
            return Err(Error::invalid_config(
                "argon2-memory-kib",
                "AUTH_ARGON2_MEMORY_KIB",
                format!(
                    "must be at least 8 KiB per lane ({min_memory} KiB), got {}",
                    self.argon2_memory_kib
                ),
            ));
        }
        if self.argon2_memory_kib > MAX_MEMORY_KIB {
            return Err(Error::invalid_config(
                "argon2-memory-kib",
                "AUTH_ARGON2_MEMORY_KIB",
                format!(
                    "must be at most {MAX_MEMORY_KIB} KiB (1 GiB), got {}",
                    self.argon2_memory_kib
                ),
            ));
        }
        self.hash_params().to_argon2().map_err(|error| {
            Error::invalid_config(
                "argon2-memory-kib",
                "AUTH_ARGON2_MEMORY_KIB",
                format!("rejected by argon2: {error}"),
            )
        })?;
        Ok(())
    }

    fn validate_bootstrap_admin(&self) -> Result<(), Error> {
        match (
            &self.bootstrap_admin_username,
            &self.bootstrap_admin_password,
        ) {
            (None, None) => Ok(()),
            (Some(_), None) => Err(Error::invalid_config(
                "bootstrap-admin-username",
                "AUTH_BOOTSTRAP_ADMIN_USERNAME",
                format!("is set, so {BOOTSTRAP_ADMIN_PASSWORD_ENV} must be set too"),
            )),
            (None, Some(_)) => Err(Error::invalid_config(
                "bootstrap-admin-username",
                "AUTH_BOOTSTRAP_ADMIN_USERNAME",
                format!("must be set because {BOOTSTRAP_ADMIN_PASSWORD_ENV} is set"),
            )),
            (Some(username), Some(password)) => {
                if validate_username(username).is_err() {
                    return Err(Error::invalid_config(
                        "bootstrap-admin-username",
                        "AUTH_BOOTSTRAP_ADMIN_USERNAME",
                        "must be 1 to 64 bytes",
                    ));
                }
                if let Err(Error::InvalidArgument { reason, .. }) =
                    password.validate_new("password")
                {
                    return Err(Error::InvalidConfig {
                        setting: BOOTSTRAP_ADMIN_PASSWORD_ENV.to_owned(),
                        reason: reason.to_owned(),
                    });
                }
                Ok(())
            }
        }
    }

    /// Returns the Argon2id parameters for new hashes.
    pub fn hash_params(&self) -> HashParams {
        HashParams {
            memory_kib: self.argon2_memory_kib,
            iterations: self.argon2_iterations,
            parallelism: self.argon2_parallelism,
        }
    }

    /// Returns how many password hashes may run at once: the flag, or the number of CPUs.
    pub fn hash_concurrency(&self) -> usize {
        self.hash_concurrency.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, std::num::NonZeroUsize::get)
                .min(MAX_HASH_CONCURRENCY)
        })
    }

    /// Returns the lifetime of issued tokens.
    pub fn token_ttl(&self) -> Duration {
        Duration::from_secs(self.token_ttl_secs)
    }

    /// Returns the clock skew allowed when checking `exp` and `nbf`.
    pub fn leeway(&self) -> Duration {
        Duration::from_secs(self.leeway_secs)
    }

    /// Returns the lifetime of refresh tokens.
    pub fn refresh_token_ttl(&self) -> Duration {
        Duration::from_secs(self.refresh_token_ttl_secs)
    }

    /// Returns the time between purges of expired sessions and revocations.
    pub fn session_purge_interval(&self) -> Duration {
        Duration::from_secs(self.session_purge_interval_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        let mut argv = vec!["auth-service"];
        argv.extend_from_slice(args);
        Config::try_parse_from(argv)
    }

    #[test]
    fn defaults_are_valid() -> Result<(), Box<dyn std::error::Error>> {
        let config = parse(&[])?;

        config.validate()?;
        assert_eq!(config.listen, "127.0.0.1:50051".parse::<SocketAddr>()?);
        assert_eq!(config.data_dir, PathBuf::from("./data/auth"));
        assert_eq!(config.issuer, "school-auth");
        assert_eq!(config.audience, "school");
        assert_eq!(config.token_ttl(), Duration::from_secs(900));
        assert_eq!(config.leeway(), Duration::from_secs(5));
        assert_eq!(config.hash_params(), HashParams::default());
        assert_eq!(config.log_format, LogFormat::Text);
        assert!(config.command.is_none());
        Ok(())
    }

    #[test]
    fn port_zero_and_data_dir_parse() -> Result<(), clap::Error> {
        let config = parse(&["--listen", "127.0.0.1:0", "--data-dir", "/tmp/x"])?;

        assert_eq!(config.listen.port(), 0);
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
        Ok(())
    }

    #[test]
    fn user_add_parses_role() -> Result<(), clap::Error> {
        let config = parse(&[
            "user",
            "add",
            "alice",
            "--role",
            "teacher",
            "--data-dir",
            "/d",
        ])?;

        let Some(Command::User {
            command: UserCommand::Add { name, role },
            ..
        }) = config.command
        else {
            panic!("expected user add, got {:?}", config.command);
        };
        assert_eq!(name, "alice");
        assert_eq!(role, Role::Teacher);
        assert_eq!(config.data_dir, PathBuf::from("/d"));
        Ok(())
    }

    #[test]
    fn user_add_rejects_unknown_role() {
        assert!(parse(&["user", "add", "alice", "--role", "root"]).is_err());
    }

    #[test]
    fn invalid_settings_name_flag_and_variable() -> Result<(), clap::Error> {
        let cases: [(&[&str], &str); 8] = [
            (&["--issuer", ""], "--issuer (AUTH_ISSUER)"),
            (&["--audience", " "], "--audience (AUTH_AUDIENCE)"),
            (
                &["--token-ttl-secs", "0"],
                "--token-ttl-secs (AUTH_TOKEN_TTL_SECS)",
            ),
            (
                &["--leeway-secs", "301"],
                "--leeway-secs (AUTH_LEEWAY_SECS)",
            ),
            (
                &["--argon2-memory-kib", "1"],
                "--argon2-memory-kib (AUTH_ARGON2_MEMORY_KIB)",
            ),
            (
                &["--argon2-iterations", "0"],
                "--argon2-iterations (AUTH_ARGON2_ITERATIONS)",
            ),
            (
                &["--argon2-parallelism", "0"],
                "--argon2-parallelism (AUTH_ARGON2_PARALLELISM)",
            ),
            (
                &["--hash-concurrency", "0"],
                "--hash-concurrency (AUTH_HASH_CONCURRENCY)",
            ),
        ];

        for (args, expected) in cases {
            let config = parse(args)?;
            let error = config.validate().err().map(|error| error.to_string());
            assert!(
                error.as_deref().is_some_and(|text| text.contains(expected)),
                "{args:?} gave {error:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn bootstrap_admin_needs_both_parts() -> Result<(), clap::Error> {
        let mut config = parse(&["--bootstrap-admin-username", "root"])?;
        assert!(config.validate().is_err());

        config.bootstrap_admin_password = Some(Password::new("password".into()));
        assert!(config.validate().is_err(), "a common password was accepted");

        config.bootstrap_admin_password = Some(Password::new("bootstrap-admin-pw".into()));
        assert!(config.validate().is_ok());

        config.bootstrap_admin_username = None;
        assert!(config.validate().is_err());
        Ok(())
    }

    #[test]
    fn config_debug_hides_bootstrap_password() -> Result<(), clap::Error> {
        let mut config = parse(&[])?;
        config.bootstrap_admin_password = Some(Password::new("hunter2".into()));

        assert!(!format!("{config:?}").contains("hunter2"));
        Ok(())
    }
}
