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
