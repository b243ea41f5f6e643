//! Private PKI for a longlink cluster.
//!
//! [`paths`] is the layout of a cluster PKI directory (a CA, the core and
//! balancer certificates, one certificate per CM node, the shared keys) and
//! reads the shared keys; [`tls`] turns those files into rustls
//! configurations (TLS 1.3 only, ring crypto provider) for the CM↔core and
//! CM↔balancer links and for the client-facing side of CM nodes;
//! [`cluster_key`] derives the keys every CM shares; [`secret`] keeps the
//! nodes' own secrets (admin tokens, the SM id key) in private files. Issuing certificates
//! ([`issue`], with rcgen) is behind the default feature `issue`: the nodes
//! depend on this crate without it, so none of them carries a certificate
//! authority.

pub mod cluster_key;
mod error;
#[cfg(feature = "issue")]
pub mod issue;
pub mod paths;
pub mod secret;
pub mod tls;

pub use error::CertError;
#[cfg(feature = "issue")]
pub use issue::{InitReport, ensure_cm, init};
pub use paths::{
    CORE_SERVER_NAME, LB_SERVER_NAME, NODE_NAME_SUFFIX, PkiPaths, load_cluster_key,
    load_quic_lb_key,
};
pub use tls::{
    client_config, client_facing_server_config, cluster_client_config, cluster_server_config,
    is_core_cert, load_certs, load_key, load_roots, node_name_from_cert,
};

#[cfg(all(test, feature = "issue"))]
mod tests;
