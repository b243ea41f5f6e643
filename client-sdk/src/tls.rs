//! TLS for clients: trusted roots from a PEM file and the rustls client
//! configuration (TLS 1.3, ring). Only what a client needs: issuing
//! certificates is the cluster's business (`certs`), not an app's.
//!
//! The policy here (TLS 1.3 only, the ring provider) must stay in step with
//! the servers' in `certs/src/tls.rs` (`client_facing_server_config`):
//! this crate does not link `certs`, so nothing checks that they agree, and
//! a change on one side alone leaves clients unable to connect.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

use crate::{ClientError, Trust};

/// A root store holding every certificate of a PEM file (a cluster CA, or a
/// system bundle such as `/etc/ssl/certs/ca-certificates.crt`); fails if the
/// file holds none or one is not a usable CA certificate.
pub fn load_roots(path: &Path) -> Result<RootCertStore, ClientError> {
    let config = |what: String| ClientError::Config(format!("{}: {what}", path.display()));
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| config(e.to_string()))? {
        let cert = cert.map_err(|e| config(e.to_string()))?;
        roots.add(cert).map_err(|e| config(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(config("no certificate found".into()));
    }
    Ok(roots)
}

/// The roots [`Trust`] names.
pub(crate) fn roots(trust: &Trust) -> Result<RootCertStore, ClientError> {
    match trust {
        Trust::CaFile(path) => load_roots(path),
        Trust::Roots(roots) => Ok((**roots).clone()),
    }
}

/// A TLS 1.3 client configuration trusting `roots`, offering `alpn`.
pub(crate) fn client_config(
    roots: RootCertStore,
    alpn: &[&[u8]],
) -> Result<ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("client-sdk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_cluster_ca_file_becomes_one_root() {
        let dir = scratch("ca");
        certs::init(&dir, "example.org", 1, false).unwrap();
        let roots = load_roots(&dir.join("ca.pem")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(roots.len(), 1);
        assert!(client_config(roots, &[b"xmpp-client"]).is_ok());
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let dir = scratch("empty");
        let path = dir.join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = load_roots(&path).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            matches!(&err, ClientError::Config(m) if m.contains("no certificate")),
            "{err}"
        );
    }

    #[test]
    fn a_missing_file_is_a_configuration_error() {
        let err = load_roots(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(matches!(err, ClientError::Config(_)));
    }
}
