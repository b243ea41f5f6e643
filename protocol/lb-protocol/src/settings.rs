//! The QUIC-LB settings the balancer and its CMs share (the `[quic_lb]`
//! table of both configuration files; they must match).
//!
//! ```toml
//! [quic_lb]
//! config_id = 0       # config rotation id, 0..=6
//! server_id_len = 2   # server id octets in each CID
//! nonce_len = 6       # nonce octets in each CID
//! encrypted = true    # encrypt CIDs with the key in PKI_DIR/quic-lb.key
//! ```
//!
//! The key file itself is the caller's to read: this crate does no I/O.

use serde::{Deserialize, Serialize};

use crate::{ConfigError, LbConfig};

/// QUIC-LB settings shared by the balancer and its CMs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuicLbSettings {
    /// Config rotation id (0..=6).
    #[serde(default)]
    pub config_id: u8,
    /// Server id octets.
    #[serde(default = "default_sid_len")]
    pub server_id_len: usize,
    /// Nonce octets.
    #[serde(default = "default_nonce_len")]
    pub nonce_len: usize,
    /// Encrypt CIDs with the key in `PKI_DIR/quic-lb.key` (otherwise plaintext).
    #[serde(default = "yes")]
    pub encrypted: bool,
}

fn default_sid_len() -> usize {
    2
}
fn default_nonce_len() -> usize {
    6
}
fn yes() -> bool {
    true
}

impl Default for QuicLbSettings {
    fn default() -> Self {
        Self {
            config_id: 0,
            server_id_len: default_sid_len(),
            nonce_len: default_nonce_len(),
            encrypted: true,
        }
    }
}

impl QuicLbSettings {
    /// The QUIC-LB config. `key` is the content of `quic-lb.key`, used only
    /// when the settings say [`encrypted`](Self::encrypted) (callers need not
    /// read the file otherwise).
    pub fn config(&self, key: Option<[u8; 16]>) -> Result<LbConfig, ConfigError> {
        let key = if self.encrypted { key } else { None };
        LbConfig::new(self.config_id, self.server_id_len, self.nonce_len, key)
    }

    /// A server id as the octets carried in CIDs (big-endian,
    /// `server_id_len` long); `None` if it does not fit (or the length is
    /// over 8 octets).
    pub fn server_id_bytes(&self, server_id: u64) -> Option<Vec<u8>> {
        let bytes = server_id.to_be_bytes();
        let unused = bytes.len().checked_sub(self.server_id_len)?;
        let (high, low) = bytes.split_at(unused);
        high.iter().all(|b| *b == 0).then(|| low.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_used_only_when_encrypted() {
        let on = QuicLbSettings::default();
        assert_eq!(on.config(Some([1; 16])).unwrap().key, Some([1; 16]));
        let off = QuicLbSettings {
            encrypted: false,
            ..QuicLbSettings::default()
        };
        assert_eq!(off.config(Some([1; 16])).unwrap().key, None);
        assert_eq!(off.config(None).unwrap().cid_len(), 9);
    }

    #[test]
    fn server_ids_are_big_endian_and_must_fit() {
        let s = QuicLbSettings::default();
        assert_eq!(s.server_id_bytes(0x0107), Some(vec![1, 7]));
        assert_eq!(s.server_id_bytes(0xffff), Some(vec![0xff, 0xff]));
        assert_eq!(s.server_id_bytes(0x1_0000), None);
        let full = QuicLbSettings {
            server_id_len: 8,
            ..s.clone()
        };
        assert_eq!(full.server_id_bytes(u64::MAX), Some(vec![0xff; 8]));
        assert_eq!(full.server_id_bytes(3), Some(vec![0, 0, 0, 0, 0, 0, 0, 3]));
        let wide = QuicLbSettings {
            server_id_len: 10,
            ..s.clone()
        };
        assert_eq!(wide.server_id_bytes(5), None);
    }

    #[test]
    fn missing_fields_take_the_defaults() {
        let s: QuicLbSettings = serde_json::from_str("{\"nonce_len\":8}").unwrap();
        assert_eq!(
            s,
            QuicLbSettings {
                nonce_len: 8,
                ..QuicLbSettings::default()
            }
        );
        assert!(serde_json::from_str::<QuicLbSettings>("{\"nonse_len\":8}").is_err());
    }
}
