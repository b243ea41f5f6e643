//! The balancer's configuration (`longlink lb --config FILE`).

use std::net::SocketAddr;
use std::path::PathBuf;

use lb_protocol::{LbConfig, QuicLbSettings};
use serde::Deserialize;

use crate::server::LbError;

/// Balancer configuration (`longlink lb --config FILE`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbSettings {
    /// Public UDP addresses clients send to (IPv4 and/or IPv6).
    pub listen: Vec<SocketAddr>,
    /// UDP address CMs exchange encapsulated datagrams with.
    pub backend_listen: SocketAddr,
    /// QUIC control endpoint CMs register on (mutual TLS).
    pub control_listen: SocketAddr,
    /// Admin HTTP (metrics, backends, drain); keep it on loopback.
    pub admin_listen: SocketAddr,
    /// File holding the admin bearer token (created, mode 0600, with a
    /// random token if missing). Default: `PKI_DIR/lb-admin.token`.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// Cluster PKI directory (ca.pem, lb.pem, lb.key, quic-lb.key).
    pub pki_dir: PathBuf,
    /// QUIC-LB connection-id settings.
    #[serde(default)]
    pub quic_lb: QuicLbSettings,
    /// Maglev table size (prime).
    #[serde(default = "default_table")]
    pub table_size: usize,
}

fn default_table() -> usize {
    crate::maglev::DEFAULT_TABLE_SIZE
}

impl LbSettings {
    /// Settings with every address on loopback with ephemeral ports.
    pub fn local(pki_dir: PathBuf) -> Self {
        let any: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            listen: vec![any],
            backend_listen: any,
            control_listen: any,
            admin_listen: any,
            admin_token_file: None,
            pki_dir,
            quic_lb: QuicLbSettings::default(),
            table_size: default_table(),
        }
    }

    /// The file the admin token is kept in.
    pub fn admin_token_path(&self) -> PathBuf {
        self.admin_token_file
            .clone()
            .unwrap_or_else(|| self.pki_dir.join("lb-admin.token"))
    }

    /// The QUIC-LB config, reading the key from the PKI directory when the
    /// connection ids are encrypted.
    pub fn quic_lb_config(&self) -> Result<LbConfig, LbError> {
        let key = if self.quic_lb.encrypted {
            Some(certs::load_quic_lb_key(
                &certs::PkiPaths::new(&self.pki_dir).quic_lb_key(),
            )?)
        } else {
            None
        };
        self.quic_lb
            .config(key)
            .map_err(|e| LbError::Config(e.to_string()))
    }
}
