//! Command-line and environment configuration.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use school_guard::reload::PolicySource;

use crate::error::Error;

/// The authorization policy used when `--policy` is not given.
pub const DEFAULT_POLICY: &str = include_str!("../policy.toml");

/// Maximum accepted clock leeway, so a typo cannot keep expired tokens valid for hours.
const MAX_LEEWAY_SECS: u64 = 300;

/// Maximum accepted key refresh interval: one day.
const MAX_KEY_REFRESH_SECS: u64 = 86_400;

/// Maximum accepted shutdown grace period, so a typo cannot keep a stopping process alive
/// for hours.
const MAX_SHUTDOWN_GRACE_SECS: u64 = 300;

/// Settings of one student-service process. Every flag can also be set through the
/// environment variable named in its help.
#[derive(Debug, Clone, Parser)]
#[command(name = "student-service", version, about)]
pub struct Config {
    /// Socket address to listen on for gRPC; port 0 picks a free port.
    #[arg(
        long,
        env = "STUDENT_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:50052"
    )]
    pub listen: SocketAddr,

    /// Directory of the sled database that stores the student records.
    #[arg(
        long,
        env = "STUDENT_DATA_DIR",
        value_name = "DIR",
        default_value = "./data/student"
    )]
    pub data_dir: PathBuf,

    /// URL of auth-service, from which the token verification keys are fetched: http:// for
    /// plaintext, or https:// with --auth-ca.
    #[arg(
        long,
        env = "STUDENT_AUTH_URL",
        value_name = "URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub auth_url: String,

    /// Expected `iss` claim of access tokens.
    #[arg(long, env = "STUDENT_ISSUER", default_value = "school-auth")]
    pub issuer: String,

    /// Audience that the `aud` claim of access tokens must include.
    #[arg(long, env = "STUDENT_AUDIENCE", default_value = "school")]
    pub audience: String,

    /// Clock skew in seconds tolerated when checking the `exp` and `nbf` claims (at most 300).
    #[arg(
        long,
        env = "STUDENT_LEEWAY_SECS",
        value_name = "SECONDS",
        default_value_t = 5
    )]
    pub leeway_secs: u64,

    /// Interval in seconds between fetches of the verification keys (1 to 86400).
    #[arg(
        long,
        env = "STUDENT_KEY_REFRESH_SECS",
        value_name = "SECONDS",
        default_value_t = 300
    )]
    pub key_refresh_secs: u64,

    /// Maximum time in seconds that in-flight calls, such as health watch streams, may run after
    /// SIGINT or SIGTERM before they are dropped (at most 300).
    #[arg(
        long,
        env = "STUDENT_SHUTDOWN_GRACE_SECS",
        value_name = "SECONDS",
        default_value_t = 10
    )]
    pub shutdown_grace_secs: u64,

    /// TOML file with the authorization policy; the built-in policy is used when absent.
    /// SIGHUP reloads it.
    #[arg(long, env = "STUDENT_POLICY", value_name = "FILE")]
    pub policy: Option<PathBuf>,

    /// TOML file with a policy to evaluate beside the enforced one without enforcing it: its
    /// decisions that differ are logged. SIGHUP reloads it.
    #[arg(long, env = "STUDENT_SHADOW_POLICY", value_name = "FILE")]
    pub shadow_policy: Option<PathBuf>,

    /// Whether the server reflection service is served; `off` hides the method list from
    /// unauthenticated callers.
    #[arg(long, env = "STUDENT_REFLECTION", value_enum, default_value_t = Reflection::On)]
    pub reflection: Reflection,

    /// Format of the log lines written to standard error.
    #[arg(long, env = "STUDENT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Socket address for the Prometheus metrics endpoint (`GET /metrics` over plain HTTP);
    /// off when absent. It needs no token, so bind it to loopback or a private network.
    #[arg(long, env = "STUDENT_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// Requests handled at the same time across all connections; further requests get
    /// RESOURCE_EXHAUSTED at once.
    #[arg(
        long,
        env = "STUDENT_MAX_CONCURRENT_REQUESTS",
        value_name = "COUNT",
        default_value_t = 256,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_concurrent_requests: u32,

    /// TLS on the listener and on the connection to auth-service.
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
}

/// Whether server reflection is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Reflection {
    /// Serve `grpc.reflection.v1` and `v1alpha` without a token.
    On,
    /// Do not serve reflection; calls to it fail with UNIMPLEMENTED.
    Off,
}

/// Output format of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// Checks the values that clap's parsers cannot, and returns
    /// [`Error::InvalidConfig`] naming the flag and environment variable of the first invalid one.
    pub fn validate(&self) -> Result<(), Error> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid(
                "--data-dir",
                "STUDENT_DATA_DIR",
                "must not be empty",
            ));
        }
        validate_auth_url(&self.auth_url)?;
        self.tls.validate(&self.auth_url)?;
        if self.issuer.trim().is_empty() {
            return Err(invalid("--issuer", "STUDENT_ISSUER", "must not be empty"));
        }
        if self.audience.trim().is_empty() {
            return Err(invalid(
                "--audience",
                "STUDENT_AUDIENCE",
                "must not be empty",
            ));
        }
        if self.leeway_secs > MAX_LEEWAY_SECS {
            return Err(invalid(
                "--leeway-secs",
                "STUDENT_LEEWAY_SECS",
                format!(
                    "must be at most {MAX_LEEWAY_SECS}, got {}",
                    self.leeway_secs
                ),
            ));
        }
        if !(1..=MAX_KEY_REFRESH_SECS).contains(&self.key_refresh_secs) {
            return Err(invalid(
                "--key-refresh-secs",
                "STUDENT_KEY_REFRESH_SECS",
                format!(
                    "must be between 1 and {MAX_KEY_REFRESH_SECS}, got {}",
                    self.key_refresh_secs
                ),
            ));
        }
        if self.shutdown_grace_secs > MAX_SHUTDOWN_GRACE_SECS {
            return Err(invalid(
                "--shutdown-grace-secs",
                "STUDENT_SHUTDOWN_GRACE_SECS",
                format!(
                    "must be at most {MAX_SHUTDOWN_GRACE_SECS}, got {}",
                    self.shutdown_grace_secs
                ),
            ));
        }
        Ok(())
    }

    /// Returns where the enforced policy comes from: `--policy`, or the built-in policy.
    pub fn policy_source(&self, served: Arc<BTreeSet<String>>) -> PolicySource {
        match &self.policy {
            Some(path) => PolicySource::file(path.clone(), served),
            None => PolicySource::built_in(DEFAULT_POLICY, served),
        }
    }

    /// Returns where the shadow policy comes from, if `--shadow-policy` is set.
    pub fn shadow_policy_source(&self, served: Arc<BTreeSet<String>>) -> Option<PolicySource> {
        self.shadow_policy
            .as_ref()
            .map(|path| PolicySource::file(path.clone(), served))
    }

    /// Clock skew tolerated when checking token times.
    pub fn leeway(&self) -> Duration {
        Duration::from_secs(self.leeway_secs)
    }

    /// Interval between fetches of the verification keys.
    pub fn key_refresh_interval(&self) -> Duration {
        Duration::from_secs(self.key_refresh_secs)
    }

    /// Maximum time that in-flight calls may run after shutdown starts.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

/// Accepts `http://host[:port]` and `https://host[:port]` URLs; whether the TLS flags fit the
/// scheme is checked by [`crate::tls::TlsArgs::validate`].
fn validate_auth_url(url: &str) -> Result<(), Error> {
    const FLAG: &str = "--auth-url";
    const ENV: &str = "STUDENT_AUTH_URL";

    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|_| invalid(FLAG, ENV, format!("{url:?} is not a valid URL")))?;
    let uri = endpoint.uri();
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(invalid(
            FLAG,
            ENV,
            format!("{url:?} must start with http:// or https://"),
        ));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid(FLAG, ENV, format!("{url:?} has no host")));
    }
    Ok(())
}

/// Builds an [`Error::InvalidConfig`] for `flag` and its environment variable `env`.
pub(crate) fn invalid(flag: &'static str, env: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidConfig {
        flag,
        env,
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Config, clap::Error> {
        let mut args = vec!["student-service"];
        args.extend_from_slice(extra);
        Config::try_parse_from(args)
    }

    fn flag_of(error: Error) -> &'static str {
        match error {
            Error::InvalidConfig { flag, .. } => flag,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        let config = parse(&[]).unwrap();

        assert_eq!(config.listen, "127.0.0.1:50052".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("./data/student"));
        assert_eq!(config.auth_url, "http://127.0.0.1:50051");
        assert_eq!(config.issuer, "school-auth");
        assert_eq!(config.audience, "school");
        assert_eq!(config.leeway_secs, 5);
        assert_eq!(config.key_refresh_secs, 300);
        assert_eq!(config.shutdown_grace_secs, 10);
        assert_eq!(config.policy, None);
        assert_eq!(config.log_format, LogFormat::Text);
        config.validate().unwrap();
    }

    #[test]
    fn test_arguments_parse() {
        let config = parse(&[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            "/tmp/x",
            "--auth-url",
            "http://[::1]:4000",
            "--log-format",
            "json",
        ])
        .unwrap();

        assert_eq!(config.listen.port(), 0);
        assert_eq!(config.log_format, LogFormat::Json);
        config.validate().unwrap();
    }

    #[test]
    fn unparsable_listen_names_flag() {
        let error = parse(&["--listen", "localhost"]).unwrap_err();

        assert!(error.to_string().contains("--listen"), "{error}");
    }

    #[test]
    fn bad_auth_urls_rejected() {
        for url in ["", "not a url", "ftp://auth", "/just/a/path"] {
            let config = parse(&["--auth-url", url]).unwrap();

            let error = config.validate().unwrap_err();

            assert_eq!(flag_of(error), "--auth-url", "url {url:?}");
        }
    }

    #[test]
    fn out_of_range_numbers_rejected() {
        let cases = [
            (["--leeway-secs", "301"], "--leeway-secs"),
            (["--key-refresh-secs", "0"], "--key-refresh-secs"),
            (["--key-refresh-secs", "86401"], "--key-refresh-secs"),
            (["--shutdown-grace-secs", "301"], "--shutdown-grace-secs"),
        ];
        for (args, flag) in cases {
            let config = parse(&args).unwrap();

            let error = config.validate().unwrap_err();

            assert_eq!(flag_of(error), flag);
        }
    }

    #[test]
    fn empty_strings_rejected() {
        let cases = [
            (["--issuer", " "], "--issuer"),
            (["--audience", ""], "--audience"),
        ];
        for (args, flag) in cases {
            let config = parse(&args).unwrap();

            let error = config.validate().unwrap_err();

            assert_eq!(flag_of(error), flag);
        }
    }

    #[test]
    fn empty_data_dir_rejected() {
        let parse_error = parse(&["--data-dir", ""]).unwrap_err();
        let mut config = parse(&[]).unwrap();
        config.data_dir = PathBuf::new();

        let error = config.validate().unwrap_err();

        assert!(
            parse_error.to_string().contains("--data-dir"),
            "{parse_error}"
        );
        assert_eq!(flag_of(error), "--data-dir");
    }

    #[test]
    fn error_message_names_flag_and_env() {
        let config = parse(&["--leeway-secs", "1000"]).unwrap();

        let message = config.validate().unwrap_err().to_string();

        assert!(message.contains("--leeway-secs"), "{message}");
        assert!(message.contains("STUDENT_LEEWAY_SECS"), "{message}");
    }
}
