//! TLS on the gRPC listener: the `--tls-*` flags and the server builder they produce.

use std::path::PathBuf;

use school_ops::tls::{ClientCertificates, ListenerFlag, ListenerTlsFlags};
use tonic::transport::Server;

use crate::error::Error;

/// The TLS flags, flattened into [`crate::Config`]. Without `--tls-cert` and `--tls-key` the
/// listener speaks plaintext HTTP/2.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM file with the server's certificate chain, leaf first; turns on TLS for the gRPC
    /// listener and needs --tls-key.
    #[arg(long, env = "AUTH_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM file with the private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "AUTH_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// PEM file with the CA that signs client certificates; turns on mutual TLS and needs
    /// --tls-cert.
    #[arg(long, env = "AUTH_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,

    /// Whether every client must present a certificate signed by --tls-client-ca, or only
    /// clients that present one are checked [default: required].
    #[arg(long, env = "AUTH_TLS_CLIENT_AUTH", value_enum)]
    pub tls_client_auth: Option<ClientCertificates>,
}

impl TlsArgs {
    /// Checks that the flags fit together, without reading any file.
    pub fn validate(&self) -> Result<(), Error> {
        self.flags()
            .check()
            .map_err(|(flag, reason)| invalid(flag, reason))
    }

    /// Reports whether the listener speaks TLS.
    pub fn enabled(&self) -> bool {
        self.tls_cert.is_some()
    }

    /// Reads the PEM files and returns the server builder: plaintext without `--tls-cert`,
    /// otherwise TLS only. An unusable file is an [`Error::InvalidConfig`] that names its flag.
    pub fn server_builder(&self) -> Result<Server, Error> {
        self.flags()
            .server_builder()
            .map_err(|(flag, reason)| invalid(flag, reason))
    }

    fn flags(&self) -> ListenerTlsFlags<'_> {
        ListenerTlsFlags {
            certificate: self.tls_cert.as_deref(),
            key: self.tls_key.as_deref(),
            client_ca: self.tls_client_ca.as_deref(),
            client_auth: self.tls_client_auth,
        }
    }
}

/// Builds the configuration error for a listener flag, named with its environment variable.
fn invalid(flag: ListenerFlag, reason: impl Into<String>) -> Error {
    let (name, env) = match flag {
        ListenerFlag::Cert => ("tls-cert", "AUTH_TLS_CERT"),
        ListenerFlag::Key => ("tls-key", "AUTH_TLS_KEY"),
        ListenerFlag::ClientCa => ("tls-client-ca", "AUTH_TLS_CLIENT_CA"),
        ListenerFlag::ClientAuth => ("tls-client-auth", "AUTH_TLS_CLIENT_AUTH"),
    };
    Error::invalid_config(name, env, reason)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use crate::Config;

    fn rejected_setting(args: &[&str]) -> String {
        let mut argv = vec!["auth-service"];
        argv.extend_from_slice(args);
        let config = Config::try_parse_from(argv).unwrap();
        match config.tls.validate() {
            Err(crate::Error::InvalidConfig { setting, .. }) => setting,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn tls_flags_must_come_in_pairs() {
        assert_eq!(
            rejected_setting(&["--tls-cert", "c.pem"]),
            "--tls-key (AUTH_TLS_KEY)"
        );
        assert_eq!(
            rejected_setting(&["--tls-key", "k.pem"]),
            "--tls-cert (AUTH_TLS_CERT)"
        );
        assert_eq!(
            rejected_setting(&["--tls-client-ca", "ca.pem"]),
            "--tls-client-ca (AUTH_TLS_CLIENT_CA)"
        );
        assert_eq!(
            rejected_setting(&[
                "--tls-cert",
                "c.pem",
                "--tls-key",
                "k.pem",
                "--tls-client-auth",
                "optional"
            ]),
            "--tls-client-auth (AUTH_TLS_CLIENT_AUTH)"
        );
    }

    #[test]
    fn missing_files_name_their_flag() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let missing = missing.to_str().unwrap();
        let argv = ["auth-service", "--tls-cert", missing, "--tls-key", missing];
        let config = Config::try_parse_from(argv).unwrap();

        let error = config.tls.server_builder().unwrap_err();

        let message = error.to_string();
        assert!(message.contains("--tls-cert"), "{message}");
        assert!(message.contains("missing.pem"), "{message}");
    }
}
