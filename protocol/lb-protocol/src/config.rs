//! QUIC-LB configurations and their validation.

use std::fmt;

use thiserror::Error;

use crate::{MAX_CONFIG_ID, MAX_PLAINTEXT_LEN, MIN_NONCE_LEN};

/// Why a QUIC-LB configuration (or a server id for it) was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// Config rotation ids are 3 bits and 0b111 is reserved for unroutable CIDs.
    #[error("config id {0} is out of range (0..=6; 7 is reserved for unroutable CIDs)")]
    InvalidConfigId(u8),
    /// The server id must be at least one octet long.
    #[error("server id length must be at least 1 octet")]
    EmptyServerId,
    /// The nonce must be at least four octets long.
    #[error("nonce length {0} is below the minimum of 4 octets")]
    NonceTooShort(usize),
    /// Server id and nonce together must fit in 19 octets (20-octet CID limit of QUIC v1).
    #[error("server id length {server_id_len} + nonce length {nonce_len} exceeds 19 octets")]
    TooLong {
        /// The configured server id length.
        server_id_len: usize,
        /// The configured nonce length.
        nonce_len: usize,
    },
    /// The server id given to an encoder does not have the configured length.
    #[error("server id is {actual} octets but the config expects {expected}")]
    ServerIdLength {
        /// The configured server id length.
        expected: usize,
        /// The length of the server id that was given.
        actual: usize,
    },
    /// Two configurations given to a decoder share a config id.
    #[error("config id {0} is configured more than once")]
    DuplicateConfigId(u8),
}

/// One QUIC-LB configuration; its `config_id` (the draft's 3-bit "config rotation"
/// codepoint, 0..=6) selects it from the first octet of a connection id.
///
/// `Debug` output never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct LbConfig {
    /// Config rotation codepoint, 0..=6, carried in the top 3 bits of the first octet.
    pub config_id: u8,
    /// Server id length in octets (>= 1).
    pub server_id_len: usize,
    /// Nonce length in octets (>= 4); server id + nonce <= 19.
    pub nonce_len: usize,
    /// AES-128 key; `None` selects the plaintext (unencrypted) algorithm.
    pub key: Option<[u8; 16]>,
}

impl LbConfig {
    /// Builds and validates a configuration: `config_id <= 6`, `server_id_len >= 1`,
    /// `nonce_len >= 4` and `server_id_len + nonce_len <= 19`.
    pub fn new(
        config_id: u8,
        server_id_len: usize,
        nonce_len: usize,
        key: Option<[u8; 16]>,
    ) -> Result<Self, ConfigError> {
        let config = Self {
            config_id,
            server_id_len,
            nonce_len,
            key,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the limits that [`LbConfig::new`] enforces (the fields are public, so a
    /// configuration built by hand is re-checked wherever it is used).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.config_id > MAX_CONFIG_ID {
            return Err(ConfigError::InvalidConfigId(self.config_id));
        }
        if self.server_id_len == 0 {
            return Err(ConfigError::EmptyServerId);
        }
        if self.nonce_len < MIN_NONCE_LEN {
            return Err(ConfigError::NonceTooShort(self.nonce_len));
        }
        if self
            .server_id_len
            .checked_add(self.nonce_len)
            .is_none_or(|sum| sum > MAX_PLAINTEXT_LEN)
        {
            return Err(ConfigError::TooLong {
                server_id_len: self.server_id_len,
                nonce_len: self.nonce_len,
            });
        }
        Ok(())
    }

    /// Length of the connection ids of this configuration: `1 + server_id_len + nonce_len`.
    pub fn cid_len(&self) -> usize {
        1 + self.plaintext_len()
    }

    /// Whether connection ids are encrypted (a key is configured).
    pub fn is_encrypted(&self) -> bool {
        self.key.is_some()
    }

    /// The first octet of every CID of this configuration: config id in the top 3 bits,
    /// length self-description (`cid_len - 1`) in the low 5 bits.
    pub fn first_octet(&self) -> u8 {
        // validate() bounds both: config_id <= 6, plaintext_len <= 19.
        (self.config_id << 5) | (self.plaintext_len() as u8 & 0x1f)
    }

    /// Server id + nonce length (the part after the first octet).
    pub(crate) fn plaintext_len(&self) -> usize {
        self.server_id_len + self.nonce_len
    }
}

impl fmt::Debug for LbConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LbConfig")
            .field("config_id", &self.config_id)
            .field("server_id_len", &self.server_id_len)
            .field("nonce_len", &self.nonce_len)
            .field("key", &self.key.map(|_| "<redacted>"))
            .finish()
    }
}
