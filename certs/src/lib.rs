//! Private PKI for a longlink cluster.
//!
//! The [`pki`] module creates and completes a cluster PKI directory (a CA, the core
//! certificate and one certificate per CM node); the [`tls`] module turns those files
//! into rustls configurations (TLS 1.3 only, ring crypto provider) for the CM↔core
//! link and for the client-facing side of CM nodes.

pub mod cluster_key;
mod error;
pub mod pki;
pub mod tls;

pub use error::CertError;
pub use pki::{
    CORE_SERVER_NAME, InitReport, LB_SERVER_NAME, NODE_NAME_SUFFIX, PkiPaths, ensure_cm, init,
    load_cluster_key, load_quic_lb_key,
};
pub use tls::{
    client_config, client_facing_server_config, cluster_client_config, cluster_server_config,
    load_certs, load_key, load_roots, node_name_from_cert,
};

#[cfg(test)]
mod tests;
