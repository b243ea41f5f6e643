//! Encapsulation between the balancer and the CMs.
//!
//! The balancer keeps no per-connection state, yet each CM must see the
//! real client address (for logs, limits and QUIC path validation on
//! migration). So every datagram between balancer and CM carries the client's
//! address in a small header, in both directions:
//!
//! ```text
//! "LL" | version (1) | family (4 or 6) | client IP (4 or 16 octets) | client port (2, big-endian) | QUIC datagram
//! ```
//!
//! Sans-IO: encode into a buffer, decode from a slice.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// First two octets of every encapsulated datagram.
pub const MAGIC: [u8; 2] = *b"LL";
/// Encapsulation version.
pub const VERSION: u8 = 1;
/// Largest header (IPv6).
pub const MAX_HEADER: usize = 4 + 16 + 2;

/// Why an encapsulated datagram was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncapError {
    /// Shorter than its header.
    #[error("truncated encapsulation header")]
    Truncated,
    /// Wrong magic or version.
    #[error("not an encapsulated datagram")]
    BadMagic,
    /// Unknown address family.
    #[error("unknown address family")]
    BadFamily,
}

/// Header length for a client address.
pub fn header_len(client: &SocketAddr) -> usize {
    match client {
        SocketAddr::V4(_) => 4 + 4 + 2,
        SocketAddr::V6(_) => 4 + 16 + 2,
    }
}

/// Appends the header for `client` and the payload to `out`.
pub fn encode(client: SocketAddr, payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(header_len(&client) + payload.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    match client.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&client.port().to_be_bytes());
    out.extend_from_slice(payload);
}

/// Splits an encapsulated datagram into the client address and the payload.
pub fn decode(datagram: &[u8]) -> Result<(SocketAddr, &[u8]), EncapError> {
    if datagram.len() < 4 {
        return Err(EncapError::Truncated);
    }
    if datagram[..2] != MAGIC || datagram[2] != VERSION {
        return Err(EncapError::BadMagic);
    }
    let (ip, rest): (IpAddr, &[u8]) = match datagram[3] {
        4 => {
            let b = datagram.get(4..8).ok_or(EncapError::Truncated)?;
            (Ipv4Addr::new(b[0], b[1], b[2], b[3]).into(), &datagram[8..])
        }
        6 => {
            let b: [u8; 16] = datagram
                .get(4..20)
                .and_then(|b| b.try_into().ok())
                .ok_or(EncapError::Truncated)?;
            (Ipv6Addr::from(b).into(), &datagram[20..])
        }
        _ => return Err(EncapError::BadFamily),
    };
    let port = rest.get(..2).ok_or(EncapError::Truncated)?;
    let port = u16::from_be_bytes([port[0], port[1]]);
    Ok((SocketAddr::new(ip, port), &rest[2..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_both_families() {
        for addr in ["127.0.0.2:4433", "[::1]:65535", "10.1.2.3:1"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut buf = Vec::new();
            encode(addr, b"quic bytes", &mut buf);
            assert_eq!(buf.len(), header_len(&addr) + 10);
            assert_eq!(decode(&buf).unwrap(), (addr, &b"quic bytes"[..]));
        }
    }

    #[test]
    fn refuses_garbage_without_panicking() {
        let mut buf = Vec::new();
        encode("[::1]:5".parse().unwrap(), b"x", &mut buf);
        for cut in 0..header_len(&"[::1]:5".parse().unwrap()) {
            assert!(decode(&buf[..cut]).is_err());
        }
        assert_eq!(decode(b"XX\x01\x04abcdef"), Err(EncapError::BadMagic));
        assert_eq!(decode(b"LL\x01\x05abcdef"), Err(EncapError::BadFamily));
    }
}
