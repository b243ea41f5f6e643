//! The wire between the connection managers (CMs) and the UDP load balancer:
//! everything both sides must agree on, and nothing else (no sockets, no
//! TLS, no runtime). Four formats:
//!
//! - **Connection ids** (QUIC-LB, draft-ietf-quic-load-balancers-21, the
//!   root items below): the CM encodes its server id into every connection id
//!   it issues, the balancer decodes it from each packet.
//! - [`encap`]: the header that carries the client's address on every
//!   datagram between balancer and CM, both ways.
//! - [`control`]: how a CM registers with the balancer (ALPN, the
//!   registration line and its answer, the control connections' transport
//!   settings).
//! - [`settings`]: the QUIC-LB settings both sides read from their
//!   configuration files ([`QuicLbSettings`]).
//!
//! ## Connection ids
//!
//! A CM node (QUIC server) behind a UDP load balancer issues connection ids that
//! encode its server id; the load balancer decodes the server id from the destination
//! CID of each packet and so keeps routing a connection to the same node after the
//! client's address changes (migration, NAT rebinding).
//!
//! A CID is `first octet || server id || nonce`. The first octet holds the 3-bit
//! config rotation id (0..=6; [`UNROUTABLE_CONFIG`] = 0b111 marks unroutable CIDs) and
//! the 5-bit length self-description (`cid_len - 1`). With a key, server id and nonce
//! are encrypted with AES-128-ECB: as one block when they are exactly 16 octets,
//! otherwise with the draft's four-pass Feistel network.
//!
//! - [`LbConfig`]: one configuration (config id, lengths, optional key).
//! - [`CidEncoder`]: server side, builds CIDs for one server id.
//! - [`CidDecoder`]: load balancer side, extracts server ids under up to 7 configs.
//! - [`QuicLbGenerator`]: a `quinn_proto::ConnectionIdGenerator` for quinn endpoints.
//!
//! ```
//! use lb_protocol::{CidDecoder, CidEncoder, LbConfig};
//!
//! let config = LbConfig::new(0, 2, 6, Some([0x42; 16]))?;
//! let encoder = CidEncoder::new(config.clone(), &[0x01, 0x07])?;
//! let cid = encoder.generate(); // 9 octets, random nonce
//! let decoder = CidDecoder::new([config])?;
//! assert_eq!(decoder.server_id(&cid).unwrap().as_bytes(), &[0x01, 0x07]);
//! assert_eq!(decoder.cid_len_for(cid[0]), Some(9));
//! # Ok::<(), lb_protocol::ConfigError>(())
//! ```

pub mod control;
pub mod encap;
pub mod settings;

mod codec;
mod config;
mod crypto;
mod generator;

pub use codec::{CidDecoder, CidEncoder, EncodeError, ServerId};
pub use config::{ConfigError, LbConfig};
pub use generator::QuicLbGenerator;
pub use settings::QuicLbSettings;

/// Config rotation codepoint reserved for unroutable CIDs (servers without a config).
pub const UNROUTABLE_CONFIG: u8 = 0b111;
/// Highest usable config id.
pub const MAX_CONFIG_ID: u8 = 6;
/// Number of usable config ids (0..=6).
pub const NUM_CONFIGS: usize = 7;
/// Minimum nonce length in octets.
pub const MIN_NONCE_LEN: usize = 4;
/// Maximum server id + nonce length in octets.
pub const MAX_PLAINTEXT_LEN: usize = 19;
/// Maximum server id length (19 minus the minimum nonce).
pub const MAX_SERVER_ID_LEN: usize = MAX_PLAINTEXT_LEN - MIN_NONCE_LEN;
/// Maximum CID length (QUIC v1).
pub const MAX_CID_LEN: usize = 20;

/// The config rotation id (top 3 bits) of a CID's first octet.
pub fn config_id_of(first_octet: u8) -> u8 {
    first_octet >> 5
}

#[cfg(test)]
mod tests;
