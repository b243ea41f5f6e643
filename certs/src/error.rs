//! Error type of the crate.

use std::path::PathBuf;

/// Errors raised while generating, reading or using cluster certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Reading or writing a file failed.
    #[error("I/O error on {}: {source}", .path.display())]
    Io {
        /// File or directory concerned.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A PEM file could not be parsed.
    #[error("invalid PEM in {}: {source}", .path.display())]
    Pem {
        /// File concerned.
        path: PathBuf,
        /// Underlying error.
        source: rustls_pki_types::pem::Error,
    },
    /// A PEM file holds no certificate.
    #[error("no certificate found in {}", .0.display())]
    NoCertificate(PathBuf),
    /// A PEM file holds no private key.
    #[error("no private key found in {}", .0.display())]
    NoPrivateKey(PathBuf),
    /// A CA file needed to issue a certificate is missing.
    #[error("cluster CA file {} is missing (run init, or init --force to start a new CA)", .0.display())]
    MissingCa(PathBuf),
    /// An existing CA certificate or key could not be used.
    #[cfg(feature = "issue")]
    #[error("invalid CA file {}: {source}", .path.display())]
    InvalidCa {
        /// File concerned.
        path: PathBuf,
        /// Underlying error.
        source: rcgen::Error,
    },
    /// A CM node name is not a lowercase DNS label, or is reserved (`ca`, `core`).
    #[error("invalid CM node name {0:?} (expected a lowercase DNS label such as \"cm-1\")")]
    InvalidNodeName(String),
    /// The XMPP domain cannot be put in a certificate.
    #[error("invalid XMPP domain {0:?}")]
    InvalidDomain(String),
    /// Certificate generation failed.
    #[cfg(feature = "issue")]
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// rustls rejected a configuration or certificate.
    #[error("TLS error: {0}")]
    Tls(#[from] rustls::Error),
    /// The client certificate verifier could not be built.
    #[error("cannot build certificate verifier: {0}")]
    Verifier(String),
    /// The validity period of a certificate could not be computed.
    #[error("cannot compute certificate validity period")]
    Validity,
}

impl CertError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> CertError {
        let path = path.into();
        move |source| CertError::Io { path, source }
    }
}
