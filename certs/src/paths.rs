//! The layout of a cluster PKI directory, the names certificates carry, and
//! the shared keys stored beside them. Everything a running node needs to
//! find and read its PKI; issuing lives in [`crate::issue`].

use std::fs;
use std::path::{Path, PathBuf};

use crate::CertError;

/// Server name the CM uses to verify the core (a SAN on the core certificate).
pub const CORE_SERVER_NAME: &str = "core.cluster.longlink";
/// Server name the CMs use to verify the load balancer's control endpoint.
pub const LB_SERVER_NAME: &str = "lb.cluster.longlink";
/// SAN DNS suffix carrying a CM node's identity: node "cm-3" has SAN "cm-3.cluster.longlink".
pub const NODE_NAME_SUFFIX: &str = ".cluster.longlink";

/// File layout of a cluster PKI directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiPaths {
    /// The PKI directory.
    pub dir: PathBuf,
}

impl PkiPaths {
    /// Layout rooted at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    /// CA certificate: `DIR/ca.pem`.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    /// CA private key: `DIR/ca.key`.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    /// Core certificate: `DIR/core.pem`.
    pub fn core_cert(&self) -> PathBuf {
        self.dir.join("core.pem")
    }
    /// Core private key: `DIR/core.key`.
    pub fn core_key(&self) -> PathBuf {
        self.dir.join("core.key")
    }
    /// The load balancer's certificate (control endpoint): `DIR/lb.pem`.
    pub fn lb_cert(&self) -> PathBuf {
        self.dir.join("lb.pem")
    }

    /// The load balancer's private key: `DIR/lb.key`.
    pub fn lb_key(&self) -> PathBuf {
        self.dir.join("lb.key")
    }

    /// DIR/quic-lb.key: the QUIC-LB connection-id key shared by balancer and CMs (hex).
    pub fn quic_lb_key(&self) -> PathBuf {
        self.dir.join("quic-lb.key")
    }

    /// DIR/cluster.key: the secret every CM shares (hex), from which the TLS
    /// session-ticket key and the QUIC stateless-reset key are derived.
    pub fn cluster_key(&self) -> PathBuf {
        self.dir.join("cluster.key")
    }

    /// Certificate of CM node `node` (e.g. "cm-1"): `DIR/<node>.pem`.
    pub fn cm_cert(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.pem"))
    }
    /// Private key of CM node `node`: `DIR/<node>.key`.
    pub fn cm_key(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.key"))
    }
}

/// Whether `node` can name a CM node: a lowercase DNS label that is not a reserved file/SAN name.
pub(crate) fn is_valid_node_name(node: &str) -> bool {
    let bytes = node.as_bytes();
    !node.is_empty()
        && node.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && !node.starts_with('-')
        && !node.ends_with('-')
        && node != "ca"
        && node != "lb"
        && node != "quic-lb"
        && format!("{node}{NODE_NAME_SUFFIX}") != CORE_SERVER_NAME
}

/// Reads the shared QUIC-LB key (32 hex digits) written by `issue::init`.
pub fn load_quic_lb_key(path: &Path) -> Result<[u8; 16], CertError> {
    load_hex_key(path)
}

/// Reads the cluster key (64 hex digits) written by `issue::init`.
pub fn load_cluster_key(path: &Path) -> Result<[u8; 32], CertError> {
    load_hex_key(path)
}

fn load_hex_key<const N: usize>(path: &Path) -> Result<[u8; N], CertError> {
    let text = fs::read_to_string(path).map_err(CertError::io(path))?;
    let text = text.trim();
    let mut key = [0u8; N];
    if text.len() != 2 * N {
        return Err(CertError::Verifier(format!(
            "{}: expected {} hex digits",
            path.display(),
            2 * N
        )));
    }
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
            .map_err(|_| CertError::Verifier(format!("{}: not hex", path.display())))?;
    }
    Ok(key)
}
