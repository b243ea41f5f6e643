//! Encoding routable connection ids (servers) and decoding their server ids (load
//! balancers).

use std::fmt;
use std::ops::Deref;

use rand::RngCore;
use thiserror::Error;

use crate::config::{ConfigError, LbConfig};
use crate::crypto::CidCipher;
use crate::{MAX_CID_LEN, MAX_SERVER_ID_LEN, NUM_CONFIGS, UNROUTABLE_CONFIG, config_id_of};

/// Why [`CidEncoder::encode`] refused a nonce.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// The nonce does not have the configured length.
    #[error("nonce is {actual} octets but the config expects {expected}")]
    NonceLength {
        /// The configured nonce length.
        expected: usize,
        /// The length of the nonce that was given.
        actual: usize,
    },
}

/// A decoded server id (1..=15 octets), stored inline so decoding never allocates.
///
/// Dereferences to `[u8]`; `Debug`/`Display` print lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServerId {
    len: u8,
    // Octets past `len` are always zero, so the derived Eq/Hash are by value.
    bytes: [u8; MAX_SERVER_ID_LEN],
}

impl ServerId {
    /// Copies `bytes` into a server id; `None` if empty or longer than 15 octets.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        if bytes.is_empty() || bytes.len() > MAX_SERVER_ID_LEN {
            return None;
        }
        let mut id = Self {
            len: bytes.len() as u8,
            bytes: [0; MAX_SERVER_ID_LEN],
        };
        id.bytes[..bytes.len()].copy_from_slice(bytes);
        Some(id)
    }

    /// The server id octets.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl Deref for ServerId {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<[u8]> for ServerId {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq<[u8]> for ServerId {
    fn eq(&self, other: &[u8]) -> bool {
        self.as_bytes() == other
    }
}

impl PartialEq<&[u8]> for ServerId {
    fn eq(&self, other: &&[u8]) -> bool {
        self.as_bytes() == *other
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerId({self})")
    }
}

/// A validated configuration with its key schedule.
#[derive(Clone)]
struct Prepared {
    config: LbConfig,
    cipher: Option<CidCipher>,
}

impl Prepared {
    fn new(config: LbConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let cipher = config.key.as_ref().map(CidCipher::new);
        Ok(Self { config, cipher })
    }

    /// Decodes the server id of `cid` with this configuration, ignoring the first
    /// octet's config bits (the caller selected the config). `None` if too short.
    fn decode(&self, cid: &[u8]) -> Option<ServerId> {
        let len = self.config.plaintext_len();
        let sid_len = self.config.server_id_len;
        let body = cid.get(1..=len)?;
        match &self.cipher {
            None => ServerId::from_slice(body.get(..sid_len)?),
            Some(cipher) => {
                let mut buf = [0u8; MAX_CID_LEN];
                let buf = buf.get_mut(..len)?;
                buf.copy_from_slice(body);
                cipher.decrypt(buf, sid_len);
                ServerId::from_slice(buf.get(..sid_len)?)
            }
        }
    }
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config.fmt(f)
    }
}

/// Encodes routable connection ids for one server under one configuration.
///
/// Every CID is `cid_len()` octets: the first octet carries the config id in its top
/// 3 bits and the length self-description (`cid_len - 1`) in its low 5 bits, followed
/// by the server id and nonce (encrypted when the config has a key).
#[derive(Clone, Debug)]
pub struct CidEncoder {
    prepared: Prepared,
    server_id: ServerId,
}

impl CidEncoder {
    /// Creates an encoder for `server_id`, which must be exactly `server_id_len` octets.
    pub fn new(config: LbConfig, server_id: &[u8]) -> Result<Self, ConfigError> {
        let prepared = Prepared::new(config)?;
        if server_id.len() != prepared.config.server_id_len {
            return Err(ConfigError::ServerIdLength {
                expected: prepared.config.server_id_len,
                actual: server_id.len(),
            });
        }
        let server_id = ServerId::from_slice(server_id).ok_or(ConfigError::EmptyServerId)?;
        Ok(Self {
            prepared,
            server_id,
        })
    }

    /// Encodes a CID with the given nonce (deterministic; for test vectors and for
    /// callers with their own nonce scheme). The nonce must be `nonce_len` octets.
    pub fn encode(&self, nonce: &[u8]) -> Result<Vec<u8>, EncodeError> {
        let expected = self.prepared.config.nonce_len;
        if nonce.len() != expected {
            return Err(EncodeError::NonceLength {
                expected,
                actual: nonce.len(),
            });
        }
        let mut out = [0u8; MAX_CID_LEN];
        let len = self.fill(&mut out, |n| n.copy_from_slice(nonce));
        Ok(out[..len].to_vec())
    }

    /// Encodes a CID with a fresh random nonce from a CSPRNG, so that CIDs issued by
    /// this server cannot be linked to each other by observers.
    pub fn generate(&self) -> Vec<u8> {
        let mut out = [0u8; MAX_CID_LEN];
        let len = self.generate_into(&mut out);
        out[..len].to_vec()
    }

    /// Like [`CidEncoder::generate`] but writes into `out` without allocating; returns
    /// the CID length (`cid_len()`).
    pub fn generate_into(&self, out: &mut [u8; MAX_CID_LEN]) -> usize {
        self.fill(out, |n| rand::thread_rng().fill_bytes(n))
    }

    /// The configuration this encoder uses.
    pub fn config(&self) -> &LbConfig {
        &self.prepared.config
    }

    /// This server's id.
    pub fn server_id(&self) -> ServerId {
        self.server_id
    }

    /// Length of every CID this encoder produces.
    pub fn cid_len(&self) -> usize {
        self.prepared.config.cid_len()
    }

    /// Decodes `cid` with this encoder's own configuration; `None` if its config id is
    /// not ours or it is too short.
    pub fn decode(&self, cid: &[u8]) -> Option<ServerId> {
        if config_id_of(*cid.first()?) != self.prepared.config.config_id {
            return None;
        }
        self.prepared.decode(cid)
    }

    /// Writes first octet, server id and the nonce produced by `nonce` into `out`,
    /// then encrypts; returns the CID length.
    fn fill(&self, out: &mut [u8; MAX_CID_LEN], nonce: impl FnOnce(&mut [u8])) -> usize {
        let config = &self.prepared.config;
        let sid_len = config.server_id_len;
        let len = config.cid_len();
        out[0] = config.first_octet();
        out[1..=sid_len].copy_from_slice(self.server_id.as_bytes());
        nonce(&mut out[1 + sid_len..len]);
        if let Some(cipher) = &self.prepared.cipher {
            cipher.encrypt(&mut out[1..len]);
        }
        len
    }
}

/// Decodes server ids from connection ids, with up to 7 configurations active at once
/// (config rotation: CIDs of the old and the new configuration both stay routable).
#[derive(Clone, Debug, Default)]
pub struct CidDecoder {
    slots: [Option<Prepared>; NUM_CONFIGS],
}

impl CidDecoder {
    /// Creates a decoder from configurations with distinct config ids.
    pub fn new(configs: impl IntoIterator<Item = LbConfig>) -> Result<Self, ConfigError> {
        let mut decoder = Self::default();
        for config in configs {
            let id = config.config_id;
            if decoder.config(id).is_some() {
                return Err(ConfigError::DuplicateConfigId(id));
            }
            decoder.insert(config)?;
        }
        Ok(decoder)
    }

    /// Adds or replaces the configuration for its config id; returns the one replaced.
    pub fn insert(&mut self, config: LbConfig) -> Result<Option<LbConfig>, ConfigError> {
        let prepared = Prepared::new(config)?;
        let slot = self
            .slots
            .get_mut(usize::from(prepared.config.config_id))
            .ok_or(ConfigError::InvalidConfigId(prepared.config.config_id))?;
        Ok(slot.replace(prepared).map(|old| old.config))
    }

    /// Removes the configuration with `config_id` (e.g. once an old rotation is drained).
    pub fn remove(&mut self, config_id: u8) -> Option<LbConfig> {
        self.slots
            .get_mut(usize::from(config_id))?
            .take()
            .map(|p| p.config)
    }

    /// The configuration with `config_id`, if any.
    pub fn config(&self, config_id: u8) -> Option<&LbConfig> {
        self.slot(config_id).map(|p| &p.config)
    }

    /// All configured configurations, in config id order.
    pub fn configs(&self) -> impl Iterator<Item = &LbConfig> {
        self.slots.iter().flatten().map(|p| &p.config)
    }

    /// The server id encoded in a destination CID; `None` if the first octet's config
    /// id is [`UNROUTABLE_CONFIG`] or not configured, or the CID is shorter than that
    /// configuration's CID length. Octets past the configured length are ignored.
    pub fn server_id(&self, cid: &[u8]) -> Option<ServerId> {
        self.slot(config_id_of(*cid.first()?))?.decode(cid)
    }

    /// Expected CID length for a first octet (by its config id), for parsing
    /// short-header packets whose DCID length is not on the wire.
    pub fn cid_len_for(&self, first_octet: u8) -> Option<usize> {
        self.slot(config_id_of(first_octet))
            .map(|p| p.config.cid_len())
    }

    fn slot(&self, config_id: u8) -> Option<&Prepared> {
        if config_id == UNROUTABLE_CONFIG {
            return None;
        }
        self.slots.get(usize::from(config_id))?.as_ref()
    }
}
