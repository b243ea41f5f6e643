//! The longlink UDP load balancer for QUIC.
//!
//! Sans-IO routing core: [`maglev`] spreads new handshakes over the
//! connection-manager nodes with a Maglev consistent-hashing table;
//! [`packet`] classifies a datagram's QUIC header (RFC 8999 invariants,
//! RFC 9000 §17) without decrypting anything; [`balancer`] decides where each
//! datagram goes (QUIC-LB server id, Maglev, or drop). [`encap`] is the
//! balancer↔CM encapsulation carrying the client address; [`control`] is how
//! CMs join (and how the balancer sees them die); [`server`] is the process
//! around it all, with [`metrics`].

pub mod balancer;
pub mod control;
pub mod encap;
pub mod maglev;
pub mod metrics;
pub mod packet;
pub mod server;
