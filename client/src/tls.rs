//! TLS for calls to the school services: PEM files checked on load, and endpoints that never
//! fall back to plaintext.
//!
//! tonic connects to an `http://` URL in plaintext even when the endpoint carries a TLS
//! configuration. [`endpoint`] therefore rejects that combination, and an `https://` URL without
//! one, instead of letting a misconfigured caller send tokens in the clear.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::{self, PemObject as _};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use zeroize::Zeroizing;

/// The time allowed for a TLS handshake with a server.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A PEM file that cannot be used as a certificate or private key.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file contains no `CERTIFICATE` block.
    #[error("{} contains no PEM certificate", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The file contains no private key block.
    #[error("{} contains no PEM private key (PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// A PEM block of the file is malformed.
    #[error("{} is not valid PEM: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The parser's description of the problem.
        reason: String,
    },
}

/// Reads a PEM file of one or more certificates, such as a CA bundle or a certificate chain,
/// and checks that each block parses.
pub fn read_certificates(path: &Path) -> Result<Certificate, PemError> {
    let pem = std::fs::read(path).map_err(|source| PemError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut count = 0usize;
    for certificate in CertificateDer::pem_slice_iter(&pem) {
        certificate.map_err(|error| malformed(path, &error))?;
        count += 1;
    }
    if count == 0 {
        return Err(PemError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(Certificate::from_pem(pem))
}

/// A certificate chain or private key file that cannot be used. The two cases are separate
/// variants so that the caller can name the right setting even when both settings name one file.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The certificate file is unusable.
    #[error(transparent)]
    Certificate(PemError),
    /// The key file is unusable.
    #[error(transparent)]
    Key(PemError),
}

/// Reads a certificate chain and its private key from two PEM files. The key bytes are
/// zeroized once tonic has its copy.
///
/// Whether the key belongs to the certificate is checked only when rustls builds its
/// configuration, by [`endpoint`] or by a server's TLS setup.
pub fn read_identity(certificate: &Path, key: &Path) -> Result<Identity, IdentityError> {
    let chain = read_certificates(certificate).map_err(IdentityError::Certificate)?;
    let key_pem = read_private_key(key).map_err(IdentityError::Key)?;
    // NOTE: tonic keeps its own copy of the key in a plain `Vec`, which is not zeroized.
    Ok(Identity::from_pem(chain.into_inner(), key_pem.as_slice()))
}

/// Reads a PEM private key file and checks that it contains a key.
fn read_private_key(path: &Path) -> Result<Zeroizing<Vec<u8>>, PemError> {
    let pem = Zeroizing::new(std::fs::read(path).map_err(|source| PemError::Read {
        path: path.to_owned(),
        source,
    })?);
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(_) => Ok(pem),
        Err(pem::Error::NoItemsFound) => Err(PemError::NoPrivateKey {
            path: path.to_owned(),
        }),
        Err(error) => Err(malformed(path, &error)),
    }
}

fn malformed(path: &Path, error: &pem::Error) -> PemError {
    PemError::Malformed {
        path: path.to_owned(),
        reason: error.to_string(),
    }
}

/// The CA that a client verifies a school service against, and the client certificate it
/// presents for mutual TLS.
///
/// Only the given CA is trusted, not the system's roots, because the services are meant to run
/// with certificates from a private CA.
#[derive(Clone, Debug)]
pub struct ClientTls {
    ca: Certificate,
    identity: Option<Identity>,
    domain_name: Option<String>,
}

impl ClientTls {
    /// Trusts the CA certificates in `ca`, PEM-encoded.
    pub fn new(ca: Certificate) -> Self {
        ClientTls {
            ca,
            identity: None,
            domain_name: None,
        }
    }

    /// Trusts the CA certificates in the PEM file at `path`.
    pub fn from_ca_file(path: &Path) -> Result<Self, PemError> {
        read_certificates(path).map(Self::new)
    }

    /// Presents `identity` to servers that ask for a client certificate.
    pub fn with_identity(self, identity: Identity) -> Self {
        ClientTls {
            identity: Some(identity),
            ..self
        }
    }

    /// Verifies the server certificate against `name` instead of the host of the URL.
    pub fn with_domain_name(self, name: impl Into<String>) -> Self {
        ClientTls {
            domain_name: Some(name.into()),
            ..self
        }
    }

    /// Returns tonic's configuration: the CA, the identity if any, and a 10-second handshake
    /// timeout.
    pub fn config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(identity) = &self.identity {
            config = config.identity(identity.clone());
        }
        if let Some(name) = &self.domain_name {
            config = config.domain_name(name.clone());
        }
        config
    }
}

/// A URL and TLS settings that do not fit together.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The URL does not parse.
    #[error("{url:?} is not a valid URL")]
    InvalidUrl {
        /// The URL as given.
        url: String,
    },
    /// The URL has no host.
    #[error("{url:?} has no host")]
    NoHost {
        /// The URL as given.
        url: String,
    },
    /// The scheme is neither `http` nor `https`.
    #[error("{url:?} must start with http:// or https://")]
    UnsupportedScheme {
        /// The URL as given.
        url: String,
    },
    /// An `https://` URL came without a CA to verify the server against.
    #[error("{url:?} is an https:// URL, so a CA certificate to verify the server is required")]
    MissingCa {
        /// The URL as given.
        url: String,
    },
    /// TLS settings came with an `http://` URL, which tonic would use in plaintext.
    #[error("{url:?} is a plaintext http:// URL but TLS settings are given; use an https:// URL")]
    PlaintextWithTls {
        /// The URL as given.
        url: String,
    },
    /// rustls rejected the TLS settings, for example a key that does not fit its certificate.
    #[error("the TLS settings are invalid: {0}")]
    Tls(#[source] tonic::transport::Error),
}

/// Builds an endpoint for `url`: plaintext for `http://` without `tls`, TLS for `https://` with
/// it, and an error for every other combination.
pub fn endpoint(url: &str, tls: Option<&ClientTls>) -> Result<Endpoint, EndpointError> {
    let endpoint =
        Endpoint::from_shared(url.to_owned()).map_err(|_| EndpointError::InvalidUrl {
            url: url.to_owned(),
        })?;
    let uri = endpoint.uri();
    if uri.host().is_none_or(str::is_empty) {
        return Err(EndpointError::NoHost {
            url: url.to_owned(),
        });
    }
    match (uri.scheme_str(), tls) {
        (Some("http"), None) => Ok(endpoint),
        (Some("https"), Some(tls)) => endpoint
            .tls_config(tls.config())
            .map_err(EndpointError::Tls),
        (Some("http"), Some(_)) => Err(EndpointError::PlaintextWithTls {
            url: url.to_owned(),
        }),
        (Some("https"), None) => Err(EndpointError::MissingCa {
            url: url.to_owned(),
        }),
        _ => Err(EndpointError::UnsupportedScheme {
            url: url.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem()
    }

    fn some_tls() -> ClientTls {
        ClientTls::new(Certificate::from_pem(ca_pem()))
    }

    #[test]
    fn url_and_tls_must_agree() {
        let tls = some_tls();

        assert!(endpoint("http://127.0.0.1:1", None).is_ok());
        assert!(endpoint("https://127.0.0.1:1", Some(&tls)).is_ok());
        assert!(matches!(
            endpoint("http://127.0.0.1:1", Some(&tls)),
            Err(EndpointError::PlaintextWithTls { .. })
        ));
        assert!(matches!(
            endpoint("https://127.0.0.1:1", None),
            Err(EndpointError::MissingCa { .. })
        ));
        assert!(matches!(
            endpoint("ftp://127.0.0.1:1", None),
            Err(EndpointError::UnsupportedScheme { .. })
        ));
        assert!(matches!(
            endpoint("not a url", None),
            Err(EndpointError::InvalidUrl { .. })
        ));
    }

    #[test]
    fn pem_files_checked_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let ca = write(dir.path(), "ca.pem", &ca_pem());
        let empty = write(dir.path(), "empty.pem", "");
        let garbage = write(
            dir.path(),
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        );
        let key = rcgen::KeyPair::generate().unwrap();
        let key_file = write(dir.path(), "key.pem", &key.serialize_pem());

        assert!(read_certificates(&ca).is_ok());
        assert!(read_identity(&ca, &key_file).is_ok());
        assert!(matches!(
            read_certificates(&dir.path().join("missing.pem")),
            Err(PemError::Read { .. })
        ));
        assert!(matches!(
            read_certificates(&empty),
            Err(PemError::NoCertificate { .. })
        ));
        assert!(matches!(
            read_certificates(&garbage),
            Err(PemError::Malformed { .. })
        ));
        assert!(matches!(
            read_identity(&ca, &ca),
            Err(IdentityError::Key(PemError::NoPrivateKey { .. }))
        ));
        assert!(matches!(
            read_identity(&empty, &empty),
            Err(IdentityError::Certificate(PemError::NoCertificate { .. }))
        ));
        assert!(matches!(
            read_identity(&ca, &empty),
            Err(IdentityError::Key(PemError::NoPrivateKey { .. }))
        ));
    }
}
