//! TLS for the gRPC listeners: a tonic server builder set up from PEM files, with every file
//! checked before anything is bound.

use std::path::Path;
use std::time::Duration;

use school_client::tls::{IdentityError, PemError, read_certificates, read_identity};
use tonic::transport::{Server, ServerTlsConfig};

/// The time a client has to finish the TLS handshake, so that idle half-open connections
/// cannot hold server tasks.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether clients must present a certificate signed by the client CA; the value of each
/// service's `--tls-client-auth` flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientCertificates {
    /// Every client, users' tools included, needs a certificate signed by the client CA; one
    /// without is rejected during the handshake.
    Required,
    /// Clients may connect without a certificate, but one that presents a certificate the CA
    /// did not sign is rejected.
    Optional,
}

/// The PEM files of a TLS listener.
#[derive(Clone, Copy, Debug)]
pub struct ServerTlsFiles<'a> {
    /// The server's certificate chain, leaf first.
    pub certificate: &'a Path,
    /// The private key of the leaf certificate.
    pub key: &'a Path,
    /// The CA that signs client certificates, and whether clients must present one. With
    /// `None`, the server requests no client certificate.
    pub client_ca: Option<(&'a Path, ClientCertificates)>,
}

/// A TLS flag of a listener. Both services take the same flags, each with its own environment
/// variable, so errors name the flag this way and each service spells it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerFlag {
    /// `--tls-cert`.
    Cert,
    /// `--tls-key`.
    Key,
    /// `--tls-client-ca`.
    ClientCa,
    /// `--tls-client-auth`.
    ClientAuth,
}

/// The TLS flags of a gRPC listener as given on the command line.
#[derive(Clone, Copy, Debug, Default)]
pub struct ListenerTlsFlags<'a> {
    /// The server's certificate chain, leaf first.
    pub certificate: Option<&'a Path>,
    /// The private key of the leaf certificate.
    pub key: Option<&'a Path>,
    /// The CA that signs client certificates.
    pub client_ca: Option<&'a Path>,
    /// Whether clients must present a certificate; required when unset.
    pub client_auth: Option<ClientCertificates>,
}

impl ListenerTlsFlags<'_> {
    /// Checks that the flags fit together, without reading any file. An error names the flag
    /// at fault and the reason.
    pub fn check(&self) -> Result<(), (ListenerFlag, &'static str)> {
        match (self.certificate, self.key) {
            (Some(_), None) => {
                return Err((ListenerFlag::Key, "is required because --tls-cert is set"));
            }
            (None, Some(_)) => {
                return Err((ListenerFlag::Cert, "is required because --tls-key is set"));
            }
            _ => {}
        }
        if self.client_ca.is_some() && self.certificate.is_none() {
            return Err((
                ListenerFlag::ClientCa,
                "needs --tls-cert and --tls-key, because client certificates are only checked \
                 over TLS",
            ));
        }
        if self.client_auth.is_some() && self.client_ca.is_none() {
            return Err((
                ListenerFlag::ClientAuth,
                "needs --tls-client-ca, the CA that client certificates are checked against",
            ));
        }
        Ok(())
    }

    /// Reads the PEM files and returns the server builder: plaintext without a certificate,
    /// otherwise TLS only. An error names the flag whose file is unusable and the reason.
    pub fn server_builder(&self) -> Result<Server, (ListenerFlag, String)> {
        let (Some(certificate), Some(key)) = (self.certificate, self.key) else {
            return Ok(Server::builder());
        };
        let mode = self.client_auth.unwrap_or(ClientCertificates::Required);
        let files = ServerTlsFiles {
            certificate,
            key,
            client_ca: self.client_ca.map(|ca| (ca, mode)),
        };
        files.server_builder().map_err(|error| match error {
            ServerTlsError::Certificate(error) => (ListenerFlag::Cert, error.to_string()),
            ServerTlsError::Key(error) => (ListenerFlag::Key, error.to_string()),
            ServerTlsError::ClientCa(error) => (ListenerFlag::ClientCa, error.to_string()),
            // NOTE: rustls does not say which file it rejected; a key that does not belong to
            // the certificate is the usual cause.
            rejected @ ServerTlsError::Rejected(_) => (ListenerFlag::Key, rejected.to_string()),
        })
    }
}

/// A TLS setting that cannot be used. Each variant names the file it concerns, so the caller
/// can name the flag that set it.
#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    /// The certificate file is unusable.
    #[error(transparent)]
    Certificate(PemError),
    /// The key file is unusable.
    #[error(transparent)]
    Key(PemError),
    /// The client CA file is unusable.
    #[error(transparent)]
    ClientCa(PemError),
    /// rustls rejected the parsed files, for example a key that does not belong to the
    /// certificate or an algorithm it does not support.
    #[error("rustls rejected the certificate, key or client CA: {0}")]
    Rejected(String),
}

impl ServerTlsFiles<'_> {
    /// Reads and checks the files and returns a server builder that accepts only TLS
    /// connections, with HTTP/2 negotiated through ALPN and a 10-second handshake timeout.
    pub fn server_builder(&self) -> Result<Server, ServerTlsError> {
        let identity = read_identity(self.certificate, self.key).map_err(|error| match error {
            IdentityError::Certificate(error) => ServerTlsError::Certificate(error),
            IdentityError::Key(error) => ServerTlsError::Key(error),
        })?;
        let mut config = ServerTlsConfig::new()
            .identity(identity)
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some((ca, mode)) = self.client_ca {
            let ca = read_certificates(ca).map_err(ServerTlsError::ClientCa)?;
            config = config
                .client_ca_root(ca)
                .client_auth_optional(mode == ClientCertificates::Optional);
        }
        Server::builder()
            .tls_config(config)
            .map_err(|error| ServerTlsError::Rejected(error_chain(&error)))
    }
}

/// Joins an error and its sources with ": ", because tonic's own message for a rejected
/// configuration is only "transport error".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
