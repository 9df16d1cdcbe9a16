//! TLS flags: the service's own listener, and the connection to auth-service.

use std::path::PathBuf;

use school_client::tls::{
    ClientTls, EndpointError, IdentityError, read_certificates, read_identity,
};
use school_ops::tls::{ClientCertificates, ListenerFlag, ListenerTlsFlags};
use tonic::transport::{Endpoint, Server};

use crate::error::Error;

/// The TLS flags, flattened into [`crate::Config`].
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM file with the server's certificate chain, leaf first; turns on TLS for the gRPC
    /// listener and needs --tls-key.
    #[arg(long, env = "STUDENT_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM file with the private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "STUDENT_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// PEM file with the CA that signs client certificates; turns on mutual TLS and needs
    /// --tls-cert. Callers are still authorized by their token alone.
    #[arg(long, env = "STUDENT_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,

    /// Whether every client must present a certificate signed by --tls-client-ca, or only
    /// clients that present one are checked [default: required].
    #[arg(long, env = "STUDENT_TLS_CLIENT_AUTH", value_enum)]
    pub tls_client_auth: Option<ClientCertificates>,

    /// PEM file with the CA that auth-service's certificate must chain to; required for an
    /// https:// --auth-url. The system's roots are not trusted.
    #[arg(long, env = "STUDENT_AUTH_CA", value_name = "FILE")]
    pub auth_ca: Option<PathBuf>,

    /// PEM file with the client certificate presented to auth-service for mutual TLS; needs
    /// --auth-client-key and an https:// --auth-url.
    #[arg(long, env = "STUDENT_AUTH_CLIENT_CERT", value_name = "FILE")]
    pub auth_client_cert: Option<PathBuf>,

    /// PEM file with the private key of --auth-client-cert.
    #[arg(long, env = "STUDENT_AUTH_CLIENT_KEY", value_name = "FILE")]
    pub auth_client_key: Option<PathBuf>,
}

const AUTH_URL: (&str, &str) = ("--auth-url", "STUDENT_AUTH_URL");
const AUTH_CA: (&str, &str) = ("--auth-ca", "STUDENT_AUTH_CA");
const AUTH_CLIENT_CERT: (&str, &str) = ("--auth-client-cert", "STUDENT_AUTH_CLIENT_CERT");
const AUTH_CLIENT_KEY: (&str, &str) = ("--auth-client-key", "STUDENT_AUTH_CLIENT_KEY");
const TLS_CERT: (&str, &str) = ("--tls-cert", "STUDENT_TLS_CERT");
const TLS_KEY: (&str, &str) = ("--tls-key", "STUDENT_TLS_KEY");
const TLS_CLIENT_CA: (&str, &str) = ("--tls-client-ca", "STUDENT_TLS_CLIENT_CA");
const TLS_CLIENT_AUTH: (&str, &str) = ("--tls-client-auth", "STUDENT_TLS_CLIENT_AUTH");

impl TlsArgs {
    /// Checks that the flags fit together and with `auth_url`, without reading any file.
    pub fn validate(&self, auth_url: &str) -> Result<(), Error> {
        self.listener_flags()
            .check()
            .map_err(|(flag, reason)| invalid(listener_flag(flag), reason))?;
        both_or_neither(
            &self.auth_client_cert,
            AUTH_CLIENT_CERT,
            &self.auth_client_key,
            AUTH_CLIENT_KEY,
        )?;
        // The same test as tonic's connector, which uses TLS only for this scheme.
        let https = Endpoint::from_shared(auth_url.to_owned())
            .is_ok_and(|endpoint| endpoint.uri().scheme_str() == Some("https"));
        if https {
            if self.auth_ca.is_none() {
                return Err(invalid(
                    AUTH_CA,
                    format!("is required because --auth-url {auth_url:?} uses https://"),
                ));
            }
        } else if self.auth_ca.is_some() || self.auth_client_cert.is_some() {
            // tonic would connect to an http:// URL in plaintext despite the TLS settings.
            return Err(invalid(
                AUTH_URL,
                format!(
                    "{auth_url:?} is not an https:// URL, but --auth-ca or --auth-client-cert is \
                     set; use https:// or drop the TLS flags"
                ),
            ));
        }
        Ok(())
    }

    /// Reports whether the listener speaks TLS.
    pub fn enabled(&self) -> bool {
        self.tls_cert.is_some()
    }

    /// Reads the PEM files and returns the server builder: plaintext without `--tls-cert`,
    /// otherwise TLS only.
    pub fn server_builder(&self) -> Result<Server, Error> {
        self.listener_flags()
            .server_builder()
            .map_err(|(flag, reason)| invalid(listener_flag(flag), reason))
    }

    fn listener_flags(&self) -> ListenerTlsFlags<'_> {
        ListenerTlsFlags {
            certificate: self.tls_cert.as_deref(),
            key: self.tls_key.as_deref(),
            client_ca: self.tls_client_ca.as_deref(),
            client_auth: self.tls_client_auth,
        }
    }

    /// Reads the PEM files for the connection to auth-service and returns its endpoint,
    /// TLS for an https:// `auth_url`.
    pub fn auth_endpoint(&self, auth_url: &str) -> Result<Endpoint, Error> {
        let tls = match &self.auth_ca {
            None => None,
            Some(ca) => {
                let ca =
                    read_certificates(ca).map_err(|error| invalid(AUTH_CA, error.to_string()))?;
                let mut tls = ClientTls::new(ca);
                if let (Some(certificate), Some(key)) =
                    (&self.auth_client_cert, &self.auth_client_key)
                {
                    let identity =
                        read_identity(certificate, key).map_err(|error| match error {
                            IdentityError::Certificate(error) => {
                                invalid(AUTH_CLIENT_CERT, error.to_string())
                            }
                            IdentityError::Key(error) => {
                                invalid(AUTH_CLIENT_KEY, error.to_string())
                            }
                        })?;
                    tls = tls.with_identity(identity);
                }
                Some(tls)
            }
        };
        school_client::tls::endpoint(auth_url, tls.as_ref()).map_err(|error| match error {
            EndpointError::MissingCa { .. } => invalid(AUTH_CA, error.to_string()),
            EndpointError::Tls(_) => invalid(AUTH_CLIENT_KEY, error.to_string()),
            _ => invalid(AUTH_URL, error.to_string()),
        })
    }
}

fn both_or_neither(
    first: &Option<PathBuf>,
    first_flag: (&'static str, &'static str),
    second: &Option<PathBuf>,
    second_flag: (&'static str, &'static str),
) -> Result<(), Error> {
    match (first, second) {
        (Some(_), None) => Err(invalid(
            second_flag,
            format!("is required because {} is set", first_flag.0),
        )),
        (None, Some(_)) => Err(invalid(
            first_flag,
            format!("is required because {} is set", second_flag.0),
        )),
        _ => Ok(()),
    }
}

/// Returns the name and environment variable of a listener flag.
fn listener_flag(flag: ListenerFlag) -> (&'static str, &'static str) {
    match flag {
        ListenerFlag::Cert => TLS_CERT,
        ListenerFlag::Key => TLS_KEY,
        ListenerFlag::ClientCa => TLS_CLIENT_CA,
        ListenerFlag::ClientAuth => TLS_CLIENT_AUTH,
    }
}

fn invalid((flag, env): (&'static str, &'static str), reason: impl Into<String>) -> Error {
    crate::config::invalid(flag, env, reason)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use crate::Config;
    use crate::error::Error;

    fn rejected_flag(args: &[&str]) -> &'static str {
        let mut argv = vec!["student-service"];
        argv.extend_from_slice(args);
        let config = Config::try_parse_from(argv).unwrap();
        match config.validate() {
            Err(Error::InvalidConfig { flag, .. }) => flag,
            other => panic!("expected InvalidConfig for {args:?}, got {other:?}"),
        }
    }

    #[test]
    fn tls_flags_must_fit_together() {
        let cases: [(&[&str], &str); 9] = [
            (&["--tls-cert", "c.pem"], "--tls-key"),
            (&["--tls-client-ca", "ca.pem"], "--tls-client-ca"),
            (
                &[
                    "--tls-cert",
                    "c.pem",
                    "--tls-key",
                    "k.pem",
                    "--tls-client-auth",
                    "optional",
                ],
                "--tls-client-auth",
            ),
            (&["--tls-key", "k.pem"], "--tls-cert"),
            (&["--auth-url", "https://auth:1"], "--auth-ca"),
            (&["--auth-ca", "ca.pem"], "--auth-url"),
            (
                &["--auth-client-cert", "c.pem", "--auth-client-key", "k.pem"],
                "--auth-url",
            ),
            (
                &[
                    "--auth-url",
                    "https://auth:1",
                    "--auth-ca",
                    "ca.pem",
                    "--auth-client-cert",
                    "c.pem",
                ],
                "--auth-client-key",
            ),
            (
                &[
                    "--auth-url",
                    "https://auth:1",
                    "--auth-ca",
                    "ca.pem",
                    "--auth-client-key",
                    "k.pem",
                ],
                "--auth-client-cert",
            ),
        ];
        for (args, flag) in cases {
            assert_eq!(rejected_flag(args), flag, "{args:?}");
        }
    }

    #[test]
    fn https_with_ca_is_valid() {
        let config = Config::try_parse_from([
            "student-service",
            "--auth-url",
            "https://auth:1",
            "--auth-ca",
            "ca.pem",
        ])
        .unwrap();

        config.validate().unwrap();
    }
}
