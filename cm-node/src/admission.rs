//! The per-address cap on client connections that have not authenticated
//! yet (every transport): a connection holds a [`PreAuthGuard`] from
//! accept until one of its streams binds a resource (or resumes a
//! session); an address (IPv4 /32, IPv6 /64: one subscriber's prefix)
//! holding `per_address` of them gets its next connection refused. The
//! table has an entry only per address with such a connection, so it is
//! bounded by the open connections, themselves bounded by `max_clients`.
//!
//! A QUIC client's source address is only claimed until it proves it
//! receives there (quinn's address validation: it echoes a Retry token),
//! so anyone could send Initials "from" a victim's address and fill its
//! slots. [`PreAuthLimit::admit_quic`] therefore asks an unvalidated
//! address that already holds a slot to validate first (the listener
//! answers with a Retry): forged Initials hold at most one slot of the
//! address they claim, while a real client's first connection costs no
//! extra round trip. The first unvalidated connection does count (else any
//! number of them arriving together would pass uncounted); it cannot hold
//! its slot longer than its handshake's idle timeout.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The part of a client address the cap counts by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressKey {
    /// An IPv4 address (also an IPv4-mapped IPv6 one).
    V4(u32),
    /// The /64 prefix of an IPv6 address.
    V6(u64),
}

impl AddressKey {
    /// The key of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => AddressKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressKey::V4(u32::from(v4)),
                None => AddressKey::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// Counts unauthenticated connections per address (see the module docs).
#[derive(Debug)]
pub struct PreAuthLimit {
    /// Most unauthenticated connections per address; 0: no cap.
    per_address: usize,
    counts: Mutex<HashMap<AddressKey, usize>>,
}

impl PreAuthLimit {
    /// A cap of `per_address` (0: none).
    pub fn new(per_address: usize) -> Self {
        Self {
            per_address,
            counts: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AddressKey, usize>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a new connection from `ip` whose address is validated (TCP's
    /// handshake validates it); `None` if its address holds the cap already
    /// (the caller refuses the connection).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<PreAuthGuard> {
        self.admit_quic(ip, true).ok()
    }

    /// Counts a new QUIC connection from `ip`, whose address quinn has
    /// validated or not (see the module docs): refused at the cap, and
    /// [`NotAdmitted::Unvalidated`] (the caller answers with a Retry) when
    /// the address is not validated and holds a slot already.
    pub fn admit_quic(
        self: &Arc<Self>,
        ip: IpAddr,
        address_validated: bool,
    ) -> Result<PreAuthGuard, NotAdmitted> {
        let key = AddressKey::of(ip);
        let mut counts = self.lock();
        let count = counts.entry(key).or_default();
        if !address_validated && *count > 0 {
            return Err(NotAdmitted::Unvalidated);
        }
        if self.per_address != 0 && *count >= self.per_address {
            if *count == 0 {
                counts.remove(&key);
            }
            return Err(NotAdmitted::AtCap);
        }
        *count += 1;
        Ok(PreAuthGuard {
            limit: self.clone(),
            key,
        })
    }

    /// Unauthenticated connections counted for `ip`'s address now.
    pub fn count(&self, ip: IpAddr) -> usize {
        self.lock().get(&AddressKey::of(ip)).copied().unwrap_or(0)
    }

    /// Addresses with an unauthenticated connection now (the table's size).
    pub fn addresses(&self) -> usize {
        self.lock().len()
    }
}

/// Why [`PreAuthLimit::admit_quic`] did not count a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotAdmitted {
    /// The address holds its cap of unauthenticated connections.
    AtCap,
    /// The address is not validated and holds a slot already: the client
    /// must prove it receives there first.
    Unvalidated,
}

/// One unauthenticated connection, counted until dropped.
#[derive(Debug)]
pub struct PreAuthGuard {
    limit: Arc<PreAuthLimit>,
    key: AddressKey,
}

impl Drop for PreAuthGuard {
    fn drop(&mut self) {
        let mut counts = self.limit.lock();
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// A connection's place under the cap, shared by its streams (a QUIC
/// connection may carry two): released when the first of them binds.
#[derive(Clone, Debug, Default)]
pub struct PreAuthSlot(Arc<Mutex<Option<PreAuthGuard>>>);

impl PreAuthSlot {
    /// A slot holding `guard`.
    pub fn new(guard: PreAuthGuard) -> Self {
        Self(Arc::new(Mutex::new(Some(guard))))
    }

    /// The connection authenticated: it no longer counts.
    pub fn release(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Whether the connection has authenticated (one of its streams bound).
    pub fn is_released(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_none()
    }
}

/// Who a session's client is, as its driver needs it.
#[derive(Clone, Debug)]
pub struct ClientPeer {
    /// The client's IP address.
    pub ip: IpAddr,
    /// Its connection's place under the pre-authentication cap.
    pub pre_auth: PreAuthSlot,
    /// The connection's `tls-exporter` channel binding (RFC 9266), once
    /// its TLS handshake is done (for FAST's `HT-SHA-256-EXPR`).
    pub tls_exporter: Option<bytes::Bytes>,
    /// Set while a QUIC connection accepted with 0-RTT has not completed
    /// its handshake: sessions opened meanwhile start early and learn the
    /// completion (and the exporter) from it.
    pub handshake: Option<crate::listener::HandshakeWatch>,
}

/// The `tls-exporter` channel binding (RFC 9266) of a TLS 1.3 connection,
/// from its exporter: 32 octets, label `EXPORTER-Channel-Binding`, no
/// context (TLS 1.3 makes an empty context the same as none, so QUIC's
/// empty-context exporter gives the same value). None if it fails.
pub fn tls_exporter(export: impl FnOnce(&mut [u8; 32], &[u8]) -> bool) -> Option<bytes::Bytes> {
    let mut out = [0u8; 32];
    export(&mut out, b"EXPORTER-Channel-Binding").then(|| bytes::Bytes::copy_from_slice(&out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_at_its_cap_is_refused_until_one_of_its_connections_authenticates() {
        let limit = Arc::new(PreAuthLimit::new(2));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let first = PreAuthSlot::new(limit.admit(ip).expect("first"));
        let _second = limit.admit(ip).expect("second");
        assert!(limit.admit(ip).is_none());
        // another address is not affected
        assert!(limit.admit("192.0.2.2".parse().unwrap()).is_some());
        first.release();
        assert_eq!(limit.count(ip), 1);
        assert!(limit.admit(ip).is_some());
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_prefix_and_mapped_ipv4_as_ipv4() {
        let limit = Arc::new(PreAuthLimit::new(1));
        let _a = limit.admit("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(
            limit
                .admit("2001:db8:1:2:ffff::9".parse().unwrap())
                .is_none()
        );
        assert!(limit.admit("2001:db8:1:3::1".parse().unwrap()).is_some());
        let _v4 = limit.admit("198.51.100.7".parse().unwrap()).unwrap();
        assert!(
            limit
                .admit("::ffff:198.51.100.7".parse().unwrap())
                .is_none()
        );
    }

    #[test]
    fn an_unvalidated_address_gets_one_slot_and_must_validate_for_more() {
        let limit = Arc::new(PreAuthLimit::new(3));
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        // forged Initials: the first counts, the rest are asked to validate
        let forged = limit.admit_quic(ip, false).expect("the first");
        for _ in 0..100 {
            assert_eq!(
                limit.admit_quic(ip, false).err(),
                Some(NotAdmitted::Unvalidated)
            );
        }
        assert_eq!(limit.count(ip), 1);
        // the real client, validated by its Retry token, gets in up to the cap
        let _a = limit.admit_quic(ip, true).expect("validated");
        let _b = limit.admit_quic(ip, true).expect("validated");
        assert_eq!(limit.admit_quic(ip, true).err(), Some(NotAdmitted::AtCap));
        // once the address holds nothing, its next first connection needs no Retry
        drop((forged, _a, _b));
        assert!(limit.admit_quic(ip, false).is_ok());
    }

    #[test]
    fn the_table_forgets_an_address_when_its_last_connection_goes() {
        let limit = Arc::new(PreAuthLimit::new(0));
        let guards: Vec<_> = (0..1000)
            .map(|_| limit.admit("203.0.113.5".parse().unwrap()).unwrap())
            .collect();
        assert_eq!(limit.addresses(), 1);
        drop(guards);
        assert_eq!(limit.addresses(), 0);
    }
}
