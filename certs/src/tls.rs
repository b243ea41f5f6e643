//! rustls configurations built from cluster PKI files (TLS 1.3 only, ring provider).

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;

use crate::CertError;
use crate::paths::{CORE_SERVER_NAME, NODE_NAME_SUFFIX, is_valid_node_name};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem_error(path: &Path, err: pem::Error) -> CertError {
    match err {
        pem::Error::Io(source) => CertError::Io {
            path: path.to_owned(),
            source,
        },
        source => CertError::Pem {
            path: path.to_owned(),
            source,
        },
    }
}

/// All certificates of a PEM file, in file order; fails if there is none.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::NoItemsFound => CertError::NoPrivateKey(path.to_owned()),
        e => pem_error(path, e),
    })
}

/// rustls RootCertStore holding the certificates of a PEM file (the cluster CA or any CA file).
pub fn load_roots(path: &Path) -> Result<RootCertStore, CertError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// Core side of the CM<->core link: TLS 1.3 server requiring a client certificate chained to the cluster CA
/// (rustls WebPkiClientVerifier built with the ring provider), ALPN set to `alpn`.
pub fn cluster_server_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
    alpn: &[u8],
) -> Result<ServerConfig, CertError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), provider.clone())
            .build()
            .map_err(|e| CertError::Verifier(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(cert)?, load_key(key)?)?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// CM side of the link: TLS 1.3 client trusting only the cluster CA and presenting the CM's cert as client cert.
///
/// Connect with server name [`CORE_SERVER_NAME`].
pub fn cluster_client_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
    alpn: &[u8],
) -> Result<ClientConfig, CertError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(load_roots(ca)?)
        .with_client_auth_cert(load_certs(cert)?, load_key(key)?)?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// Client-facing server config of a CM (no client auth), TLS 1.3 only, ALPN list given.
pub fn client_facing_server_config(
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
) -> Result<ServerConfig, CertError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(load_certs(cert)?, load_key(key)?)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Client config trusting exactly the given roots (TLS 1.3), ALPN list given.
pub fn client_config(roots: RootCertStore, alpn: &[&[u8]]) -> Result<ClientConfig, CertError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Whether `cert` is a core's (it names [`CORE_SERVER_NAME`]): a peer in
/// a cluster of cores.
pub fn is_core_cert(cert: &CertificateDer<'_>) -> bool {
    let Ok((_, x509)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return false;
    };
    let Ok(Some(san)) = x509.subject_alternative_name() else {
        return false;
    };
    san.value.general_names.iter().any(
        |name| matches!(name, GeneralName::DNSName(dns) if dns.eq_ignore_ascii_case(CORE_SERVER_NAME)),
    )
}

/// The CM node name ("cm-3") a peer certificate names in a SAN "<node>.cluster.longlink", if any.
///
/// The core's own name ([`CORE_SERVER_NAME`]) is never a node name. Only meaningful for a
/// certificate that was verified against the cluster CA.
pub fn node_name_from_cert(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = x509.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| {
        let GeneralName::DNSName(dns) = name else {
            return None;
        };
        let dns = dns.to_ascii_lowercase();
        if dns == CORE_SERVER_NAME {
            return None;
        }
        let node = dns.strip_suffix(NODE_NAME_SUFFIX)?;
        is_valid_node_name(node).then(|| node.to_owned())
    })
}
