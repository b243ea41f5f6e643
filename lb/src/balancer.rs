//! The routing decision for one client datagram, sans-IO.
//!
//! Order (draft-ietf-quic-load-balancers §5 and Katran):
//! 1. A destination CID a CM made (as long as its config makes them, its
//!    first octet saying so) whose QUIC-LB server id names a live CM goes
//!    to that CM (draining or not: its connections continue). A client's
//!    own random CID is not read for a server id unless it is shaped like a
//!    CM's (length and first octet), even if its bytes would decode to one.
//! 2. A client Initial or 0-RTT packet (client-chosen, unroutable CID) goes to
//!    the CM the Maglev table picks for that CID, over healthy non-draining
//!    CMs, so every packet of one handshake lands on one CM.
//! 3. Other long-header packets with unroutable CIDs use the same table
//!    (the stable fallback).
//! 4. A short-header packet for a CM that left (it died or stopped, and
//!    stayed away past a grace period) goes to the CM the Maglev table picks: CMs share one stateless-reset key, so
//!    that CM answers with a stateless reset the client accepts, and the
//!    client reconnects at once instead of waiting out its idle timeout.
//! 5. Everything else is dropped with a reason: garbage, truncated headers,
//!    unknown versions, oversize datagrams, short Initials, server ids of no
//!    live CM (spoofed, or unknown since this balancer started).
//!
//! No per-connection or per-source state: memory does not grow with clients.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use lb_protocol::{CidDecoder, LbConfig, ServerId};
use prometheus_client::metrics::counter::Counter;

use crate::maglev::{DEFAULT_TABLE_SIZE, Maglev};
use crate::membership::MAX_DEPARTED;
use crate::packet::{self, LongType, PacketKind};

/// Largest datagram forwarded (an Ethernet MTU's worth of UDP payload).
pub const MAX_DATAGRAM: usize = 1500;

/// A CM behind the balancer.
#[derive(Clone, Debug)]
pub struct Backend {
    /// Node name (Maglev key).
    pub name: String,
    /// QUIC-LB server id octets.
    pub server_id: Vec<u8>,
    /// Where encapsulated datagrams for it go.
    pub addr: SocketAddr,
    /// Draining: no new handshakes, existing connections continue.
    pub draining: bool,
    /// Datagrams forwarded to it (a handle on its metric: no lookup per packet).
    pub packets: Counter,
    /// Bytes forwarded to it.
    pub bytes: Counter,
}

/// Why a datagram was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not a parsable QUIC packet.
    Malformed,
    /// A long header with a version we do not serve.
    UnknownVersion,
    /// Larger than [`MAX_DATAGRAM`].
    Oversize,
    /// A client Initial smaller than 1200 bytes.
    ShortInitial,
    /// A routable CID naming no live CM.
    UnknownServer,
    /// No CM can take new handshakes.
    NoBackend,
}

impl DropReason {
    /// Label for metrics.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::UnknownVersion => "unknown_version",
            DropReason::Oversize => "oversize",
            DropReason::ShortInitial => "short_initial",
            DropReason::UnknownServer => "unknown_server",
            DropReason::NoBackend => "no_backend",
        }
    }

    /// Every reason (for pre-registering metrics).
    pub const ALL: [DropReason; 6] = [
        DropReason::Malformed,
        DropReason::UnknownVersion,
        DropReason::Oversize,
        DropReason::ShortInitial,
        DropReason::UnknownServer,
        DropReason::NoBackend,
    ];
}

/// What to do with a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Forward to backend `index` of [`Balancer::backends`] at `addr`.
    Forward {
        /// Backend index.
        index: usize,
        /// Its encapsulation address.
        addr: SocketAddr,
    },
    /// Drop it.
    Drop(DropReason),
}

/// The routing state (see the module docs).
pub struct Balancer {
    decoder: CidDecoder,
    table_size: usize,
    backends: Vec<Backend>,
    by_server_id: HashMap<Vec<u8>, usize>,
    maglev: Maglev,
    /// Backend index for each Maglev backend position.
    maglev_index: Vec<usize>,
    /// Server ids of CMs that left for good (bounded by [`MAX_DEPARTED`];
    /// [`Membership`](crate::membership::Membership) decides which).
    departed: HashSet<Vec<u8>>,
}

impl Balancer {
    /// A balancer decoding CIDs with `configs` (old and new during rotation).
    pub fn new(configs: Vec<LbConfig>, table_size: usize) -> Result<Self, String> {
        let decoder = CidDecoder::new(configs).map_err(|e| e.to_string())?;
        let maglev = Maglev::new(&[], table_size).map_err(|e| e.to_string())?;
        Ok(Self {
            decoder,
            table_size,
            backends: Vec::new(),
            by_server_id: HashMap::new(),
            maglev,
            maglev_index: Vec::new(),
            departed: HashSet::new(),
        })
    }

    /// A balancer with the default table size.
    pub fn with_default_table(configs: Vec<LbConfig>) -> Result<Self, String> {
        Self::new(configs, DEFAULT_TABLE_SIZE)
    }

    /// Live backends.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// Whether `addr` is a live backend's address (return traffic filter).
    pub fn is_backend_addr(&self, addr: &SocketAddr) -> bool {
        self.backends.iter().any(|b| b.addr == *addr)
    }

    /// Maglev table size.
    pub fn table_size(&self) -> usize {
        self.table_size
    }

    /// Adds or updates a backend (by name); the table is rebuilt.
    pub fn upsert(&mut self, backend: Backend) {
        self.departed.remove(&backend.server_id);
        match self.backends.iter_mut().find(|b| b.name == backend.name) {
            Some(b) => *b = backend,
            None => self.backends.push(backend),
        }
        self.rebuild();
    }

    /// Removes a backend; only its Maglev slots move. Returns its server id
    /// if it existed.
    pub fn remove(&mut self, name: &str) -> Option<Vec<u8>> {
        let pos = self.backends.iter().position(|b| b.name == name)?;
        let removed = self.backends.remove(pos);
        self.rebuild();
        Some(removed.server_id)
    }

    /// The CM with `server_id` left for good (it stayed away past a grace
    /// period): its connections' packets now go where a live CM resets them.
    /// Does nothing if it came back meanwhile, or if [`MAX_DEPARTED`] are
    /// remembered already.
    pub fn mark_departed(&mut self, server_id: &[u8]) {
        if !self.by_server_id.contains_key(server_id) && self.departed.len() < MAX_DEPARTED {
            self.departed.insert(server_id.to_vec());
        }
    }

    /// Forgets a departed server id: its packets are dropped again (unless a
    /// live CM holds it).
    pub fn forget_departed(&mut self, server_id: &[u8]) {
        self.departed.remove(server_id);
    }

    /// Marks a backend draining or not; returns whether it exists.
    pub fn set_draining(&mut self, name: &str, draining: bool) -> bool {
        let Some(b) = self.backends.iter_mut().find(|b| b.name == name) else {
            return false;
        };
        b.draining = draining;
        self.rebuild();
        true
    }

    fn rebuild(&mut self) {
        self.by_server_id = self
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.server_id.clone(), i))
            .collect();
        let eligible: Vec<(usize, (String, u32))> = self
            .backends
            .iter()
            .enumerate()
            .filter(|(_, b)| !b.draining)
            .map(|(i, b)| (i, (b.name.clone(), 1)))
            .collect();
        let names: Vec<(String, u32)> = eligible.iter().map(|(_, n)| n.clone()).collect();
        self.maglev_index = eligible.into_iter().map(|(i, _)| i).collect();
        // The size was validated in `new`, so building cannot fail; keep the
        // old table if it somehow does.
        if let Ok(m) = Maglev::new(&names, self.table_size) {
            self.maglev = m;
        }
    }

    fn forward(&self, index: usize) -> Decision {
        Decision::Forward {
            index,
            addr: self.backends[index].addr,
        }
    }

    /// The server id in a CID a CM made: one exactly as long as its config
    /// makes them, whose first octet says that length (as every CM's does).
    /// Anything else is a client's choice (quinn's Initial DCIDs are 20
    /// random octets), whose bytes would name a CM by chance (one in
    /// 8 × 65 536 here) whatever its drain state.
    fn server_id(&self, dcid: &[u8]) -> Option<ServerId> {
        let first = *dcid.first()?;
        let len = self.decoder.cid_len_for(first)?;
        if dcid.len() != len || usize::from(first & 0x1f) + 1 != len {
            return None;
        }
        self.decoder.server_id(dcid)
    }

    fn by_cid(&self, dcid: &[u8]) -> Option<usize> {
        let sid = self.server_id(dcid)?;
        self.by_server_id.get(sid.as_ref()).copied()
    }

    /// Whether the CID names a CM that left.
    fn left(&self, dcid: &[u8]) -> bool {
        !self.departed.is_empty()
            && self
                .server_id(dcid)
                .is_some_and(|sid| self.departed.contains(sid.as_ref()))
    }

    fn new_flow(&self, dcid: &[u8]) -> Decision {
        match self.maglev.lookup_index(dcid) {
            Some(i) => self.forward(self.maglev_index[i]),
            None => Decision::Drop(DropReason::NoBackend),
        }
    }

    /// Decides where a datagram from a client goes.
    pub fn route(&self, datagram: &[u8]) -> Decision {
        if datagram.len() > MAX_DATAGRAM {
            return Decision::Drop(DropReason::Oversize);
        }
        let parsed = packet::parse(datagram, |first| self.decoder.cid_len_for(first));
        match parsed {
            Err(_) | Ok(PacketKind::VersionNegotiation { .. }) => {
                Decision::Drop(DropReason::Malformed)
            }
            Ok(PacketKind::Short { dcid, .. }) => match self.by_cid(dcid) {
                Some(i) => self.forward(i),
                None if self.left(dcid) => self.new_flow(dcid),
                None => Decision::Drop(DropReason::UnknownServer),
            },
            Ok(PacketKind::Long {
                version,
                dcid,
                long_type,
                ..
            }) => {
                if version != packet::QUIC_V1 && version != packet::QUIC_V2 {
                    return Decision::Drop(DropReason::UnknownVersion);
                }
                if let Some(i) = self.by_cid(dcid) {
                    return self.forward(i);
                }
                match long_type {
                    Some(LongType::Initial) if datagram.len() < packet::MIN_INITIAL_SIZE => {
                        Decision::Drop(DropReason::ShortInitial)
                    }
                    Some(LongType::Initial) | Some(LongType::ZeroRtt) => self.new_flow(dcid),
                    // A routable-looking CID of no live CM: spoofed or its CM is gone.
                    _ if self.server_id(dcid).is_some() => {
                        Decision::Drop(DropReason::UnknownServer)
                    }
                    _ => self.new_flow(dcid),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_protocol::CidEncoder;

    fn config() -> LbConfig {
        LbConfig::new(0, 2, 6, Some([7u8; 16])).unwrap()
    }

    fn backend(n: u16) -> Backend {
        Backend {
            name: format!("cm-{n}"),
            server_id: n.to_be_bytes().to_vec(),
            addr: SocketAddr::from(([127, 0, 0, 1], 9000 + n)),
            draining: false,
            packets: Counter::default(),
            bytes: Counter::default(),
        }
    }

    fn initial(dcid: &[u8]) -> Vec<u8> {
        let mut p = vec![0xc0, 0, 0, 0, 1, dcid.len() as u8];
        p.extend_from_slice(dcid);
        p.push(0); // empty SCID
        p.resize(1200, 0);
        p
    }

    fn short(dcid: &[u8]) -> Vec<u8> {
        let mut p = vec![0x40];
        p.extend_from_slice(dcid);
        p.extend_from_slice(&[0xaa; 40]);
        p
    }

    fn balancer(n: u16) -> Balancer {
        let mut b = Balancer::new(vec![config()], 65_537).unwrap();
        for i in 1..=n {
            b.upsert(backend(i));
        }
        b
    }

    #[test]
    fn routable_cids_go_to_their_cm_even_when_draining() {
        let mut b = balancer(3);
        let cid = CidEncoder::new(config(), &2u16.to_be_bytes())
            .unwrap()
            .generate();
        assert_eq!(
            b.route(&short(&cid)),
            Decision::Forward {
                index: 1,
                addr: backend(2).addr
            }
        );
        b.set_draining("cm-2", true);
        assert_eq!(
            b.route(&short(&cid)),
            Decision::Forward {
                index: 1,
                addr: backend(2).addr
            }
        );
        // a spoofed server id is dropped
        let spoofed = CidEncoder::new(config(), &77u16.to_be_bytes())
            .unwrap()
            .generate();
        assert_eq!(
            b.route(&short(&spoofed)),
            Decision::Drop(DropReason::UnknownServer)
        );
    }

    #[test]
    fn packets_of_a_departed_cm_go_to_a_live_one_for_a_stateless_reset() {
        let mut b = balancer(3);
        let cid = CidEncoder::new(config(), &2u16.to_be_bytes())
            .unwrap()
            .generate();
        let id = b.remove("cm-2").unwrap();
        // not at once: a CM whose control link blinked must not lose its clients
        assert_eq!(
            b.route(&short(&cid)),
            Decision::Drop(DropReason::UnknownServer)
        );
        b.mark_departed(&id);
        assert!(matches!(
            b.route(&short(&cid)),
            Decision::Forward { index: 0 | 1, .. }
        ));
        // forgotten (the remembered set was full): dropped again
        b.forget_departed(&id);
        assert_eq!(
            b.route(&short(&cid)),
            Decision::Drop(DropReason::UnknownServer)
        );
        b.mark_departed(&id);
        // it came back: its packets are its own again
        b.upsert(backend(2));
        assert_eq!(
            b.route(&short(&cid)),
            Decision::Forward {
                index: 2,
                addr: backend(2).addr
            }
        );
    }

    #[test]
    fn initials_spread_by_maglev_and_skip_draining() {
        let mut b = balancer(3);
        let mut counts = [0usize; 3];
        for i in 0..3000u32 {
            let dcid = (i.wrapping_mul(2_654_435_761)).to_be_bytes().repeat(2);
            match b.route(&initial(&dcid)) {
                Decision::Forward { index, .. } => counts[index] += 1,
                d => panic!("{d:?}"),
            }
        }
        for c in counts {
            assert!((900..=1100).contains(&c), "{counts:?}");
        }
        b.set_draining("cm-3", true);
        for i in 0..300u32 {
            let dcid = i.to_be_bytes().repeat(2);
            assert!(!matches!(
                b.route(&initial(&dcid)),
                Decision::Forward { index: 2, .. }
            ));
        }
    }

    #[test]
    fn a_client_initial_whose_random_dcid_reads_as_a_draining_cms_id_still_goes_by_maglev() {
        let mut b = balancer(3);
        b.set_draining("cm-2", true);
        let cm2 = CidEncoder::new(config(), &2u16.to_be_bytes()).unwrap();
        for i in 0..300u32 {
            // 20 octets whose first 9 read as cm-2's: a client's random
            // DCID that happens to decode to cm-2's server id
            let mut dcid = cm2.generate().to_vec();
            dcid.extend_from_slice(&i.to_be_bytes().repeat(3)[..11]);
            let decision = b.route(&initial(&dcid));
            assert!(
                matches!(decision, Decision::Forward { index, .. } if index != 1),
                "{decision:?}"
            );
            // with its first octet's length bits wrong, at cm-2's length
            let mut odd = cm2.generate().to_vec();
            odd[0] ^= 0x01;
            let decision = b.route(&initial(&odd));
            assert!(
                matches!(decision, Decision::Forward { index, .. } if index != 1),
                "{decision:?}"
            );
        }
        // cm-2's own CIDs still reach it, draining or not
        let cid = cm2.generate();
        assert!(matches!(
            b.route(&initial(&cid)),
            Decision::Forward { index: 1, .. }
        ));
    }

    #[test]
    fn bad_input_is_dropped_with_a_reason() {
        let b = balancer(2);
        assert_eq!(b.route(&[]), Decision::Drop(DropReason::Malformed));
        assert_eq!(b.route(&[0u8; 1600]), Decision::Drop(DropReason::Oversize));
        let mut p = initial(&[1; 8]);
        p[1..5].copy_from_slice(&0xbabab0bau32.to_be_bytes());
        assert_eq!(b.route(&p), Decision::Drop(DropReason::UnknownVersion));
        let small = &initial(&[1; 8])[..200];
        assert_eq!(b.route(small), Decision::Drop(DropReason::ShortInitial));
        let empty = Balancer::new(vec![config()], 65_537).unwrap();
        assert_eq!(
            empty.route(&initial(&[1; 8])),
            Decision::Drop(DropReason::NoBackend)
        );
    }
}
