//! The longlink UDP load balancer for QUIC.
//!
//! Sans-IO core: [`maglev`] spreads new handshakes over the
//! connection-manager nodes with a Maglev consistent-hashing table;
//! [`packet`] classifies a datagram's QUIC header (RFC 8999 invariants,
//! RFC 9000 §17) without decrypting anything; [`balancer`] decides where each
//! datagram goes (QUIC-LB server id, Maglev, or drop); [`membership`]
//! decides which CMs are in the table (joins, leaves, the departed-CM grace,
//! drain).
//!
//! The wire formats it shares with the CMs (connection ids, encapsulation,
//! control protocol) are in the `lb-protocol` crate.
//!
//! The process ([`server`]: start, stop): [`settings`]; the data plane
//! (`data_plane`, on batched UDP I/O in `udp`); the routing table it reads
//! and the membership driver that changes it (`routing`); the control
//! endpoint CMs register on (`control`); the admin HTTP (`admin`) with
//! [`metrics`].

mod admin;
pub mod balancer;
mod control;
mod data_plane;
pub mod maglev;
pub mod membership;
pub mod metrics;
pub mod packet;
mod routing;
pub mod server;
pub mod settings;
mod udp;
