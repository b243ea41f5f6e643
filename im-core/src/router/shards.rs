//! The router in a cluster of cores (issue 15): which users it serves (the
//! slots this core owns), where the others' stanzas go (their owners, as
//! peer cores say in `SlotOwners`), and the bookkeeping of stanzas
//! forwarded to peers (their senders' acknowledgements wait for the
//! peer's `ForwardDone`) and from peers (the answer waits for what the
//! stanza stored here).
//!
//! A router without a cluster ([`Ownership`] absent) serves every user, as
//! the single embedded core does.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cm_protocol::slots::{Slot, SlotMap, slot_of};
use cm_protocol::{RouteHeader, SlotEpoch};

use crate::routing::NodeId;

/// How long a forwarded stanza waits for its `ForwardDone` (an owner that
/// took it, across owner changes) before its sender is answered with an
/// error: longer than a lease (8 s) and a round, so a failover completes.
pub const FORWARD_GIVE_UP: Duration = Duration::from_secs(20);
/// How long a forward refused by a peer (not the owner, or its write was
/// fenced) waits before it is sent again to whoever owns its recipient
/// then, if no word on the slot's owner came first.
pub const FORWARD_RETRY: Duration = Duration::from_millis(500);
/// Most bytes of forwarded stanzas waiting for their answers; past it a
/// new stanza for another core's user is refused (`resource-constraint`).
pub const FORWARD_BYTES: usize = 64 * 1024 * 1024;
/// What a waiting forward is charged beyond its payload.
const FORWARD_COST: usize = 256;

/// Who serves a user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Owner<'a> {
    /// This core.
    Local,
    /// Another core (its member id).
    Peer(&'a str),
    /// Nobody known now (the slot is between owners).
    Unknown,
}

/// The slots this core owns, and who owns the others.
pub(super) struct Ownership {
    /// This core's member id.
    member: String,
    /// Epoch of each slot this core owns.
    owned: Vec<Option<u64>>,
    /// The other slots' owners as they say.
    peers: SlotMap,
}

impl Ownership {
    /// A core `member` of a cluster of `slots` slots, owning none yet.
    pub(super) fn new(member: &str, slots: u16) -> Self {
        Self {
            member: member.to_owned(),
            owned: vec![None; usize::from(slots.max(1))],
            peers: SlotMap::new(slots),
        }
    }

    /// This core's member id.
    pub(super) fn member(&self) -> &str {
        &self.member
    }

    /// The slot of `bare`.
    pub(super) fn slot(&self, bare: &str) -> Slot {
        slot_of(bare, self.owned.len() as u16)
    }

    /// Who serves `bare`.
    pub(super) fn owner(&self, bare: &str) -> Owner<'_> {
        let slot = self.slot(bare);
        if self.owns(slot) {
            return Owner::Local;
        }
        match self.peers.owner(slot) {
            Some(core) if core != self.member => Owner::Peer(core),
            _ => Owner::Unknown,
        }
    }

    /// Whether this core owns `slot`.
    pub(super) fn owns(&self, slot: Slot) -> bool {
        matches!(self.owned.get(usize::from(slot.0)), Some(Some(_)))
    }

    /// The epoch this core owns `slot` at, if it does.
    pub(super) fn epoch(&self, slot: Slot) -> Option<u64> {
        self.owned.get(usize::from(slot.0)).copied().flatten()
    }

    /// This core owns `slot` at `epoch` from now.
    pub(super) fn gain(&mut self, slot: Slot, epoch: u64) {
        if let Some(entry) = self.owned.get_mut(usize::from(slot.0)) {
            *entry = Some(epoch);
        }
    }

    /// This core no longer owns `slot`; whether it did.
    pub(super) fn lose(&mut self, slot: Slot) -> bool {
        self.owned
            .get_mut(usize::from(slot.0))
            .and_then(Option::take)
            .is_some()
    }

    /// Every slot this core owns, with its epoch, ascending.
    pub(super) fn owned(&self) -> Vec<SlotEpoch> {
        self.owned
            .iter()
            .enumerate()
            .filter_map(|(slot, e)| {
                e.map(|epoch| SlotEpoch {
                    slot: slot as u16,
                    epoch,
                })
            })
            .collect()
    }

    /// A peer says what it owns; returns whether any owner changed.
    pub(super) fn peer_says(&mut self, core: &str, owned: &[SlotEpoch]) -> bool {
        let pairs: Vec<(u16, u64)> = owned.iter().map(|o| (o.slot, o.epoch)).collect();
        !self.peers.apply(core, &pairs).is_empty()
    }

    /// A peer is gone: its slots have no known owner until claimed.
    pub(super) fn peer_gone(&mut self, core: &str) -> bool {
        !self.peers.forget(core).is_empty()
    }
}

/// A stanza forwarded to a peer, waiting for its answer.
#[derive(Debug)]
struct Outgoing {
    /// The recipient's bare JID (its owner may change meanwhile).
    to_bare: String,
    header: RouteHeader,
    payload: Bytes,
    /// The SM sender's stanza whose acknowledgement waits.
    origin: Option<(u64, u32)>,
    /// The peer it went to; none: not sent (no owner known, or refused).
    sent_to: Option<String>,
    give_up: Instant,
}

impl Outgoing {
    fn cost(&self) -> usize {
        FORWARD_COST + self.payload.len() + self.to_bare.len()
    }
}

/// Stanzas forwarded to peers and not answered yet, bounded by
/// [`FORWARD_BYTES`].
#[derive(Debug, Default)]
pub(super) struct Forwards {
    next_seq: u64,
    waiting: HashMap<u64, Outgoing>,
    /// Sequence numbers in the order they were given (so by give-up time).
    order: VecDeque<u64>,
    /// Refused forwards by retry time (in order: the delay is fixed).
    retries: VecDeque<(Instant, u64)>,
    bytes: usize,
}

/// What to do with a forward next.
pub(super) struct Resend {
    /// Its number.
    pub seq: u64,
    /// The recipient.
    pub to_bare: String,
}

/// A forward given up on (or refused for room): answer its sender.
pub(super) struct GivenUp {
    /// The stanza's header (its `from` is the sender).
    pub header: RouteHeader,
    /// The SM origin to release.
    pub origin: Option<(u64, u32)>,
}

impl Forwards {
    /// Registers a forward of `payload` to `to_bare`; none if the waiting
    /// forwards hold their byte bound.
    pub(super) fn start(
        &mut self,
        to_bare: &str,
        header: RouteHeader,
        payload: Bytes,
        origin: Option<(u64, u32)>,
        now: Instant,
    ) -> Option<u64> {
        let entry = Outgoing {
            to_bare: to_bare.to_owned(),
            header,
            payload,
            origin,
            sent_to: None,
            give_up: now + FORWARD_GIVE_UP,
        };
        if self.bytes + entry.cost() > FORWARD_BYTES {
            return None;
        }
        self.next_seq += 1;
        let seq = self.next_seq;
        self.bytes += entry.cost();
        self.waiting.insert(seq, entry);
        self.order.push_back(seq);
        Some(seq)
    }

    /// The frame that sends forward `seq` to `core` (recording where it went).
    pub(super) fn send_to(&mut self, seq: u64, core: &str) -> Option<cm_protocol::Frame> {
        let entry = self.waiting.get_mut(&seq)?;
        entry.sent_to = Some(core.to_owned());
        Some(cm_protocol::Frame::Forward {
            seq,
            header: entry.header.clone(),
            payload: entry.payload.clone(),
        })
    }

    /// The peer took forward `seq`: its origin, to release.
    pub(super) fn done(&mut self, seq: u64) -> Option<Option<(u64, u32)>> {
        let entry = self.waiting.remove(&seq)?;
        self.bytes -= entry.cost();
        Some(entry.origin)
    }

    /// Peer `core` refused forward `seq` (not the owner): it waits to be
    /// sent again, at the latest after [`FORWARD_RETRY`]; returns its
    /// recipient. An answer from a core it is no longer sent to (it was
    /// sent again elsewhere since) changes nothing.
    pub(super) fn refused(&mut self, seq: u64, core: &str, now: Instant) -> Option<Resend> {
        let entry = self.waiting.get_mut(&seq)?;
        if entry.sent_to.as_deref() != Some(core) {
            return None;
        }
        entry.sent_to = None;
        self.retries.push_back((now + FORWARD_RETRY, seq));
        Some(Resend {
            seq,
            to_bare: entry.to_bare.clone(),
        })
    }

    /// Refused forwards whose retry time came by `now` and that still wait
    /// unsent.
    pub(super) fn due_retries(&mut self, now: Instant) -> Vec<Resend> {
        let mut out = Vec::new();
        while let Some(&(at, seq)) = self.retries.front() {
            if at > now {
                break;
            }
            self.retries.pop_front();
            if let Some(e) = self.waiting.get(&seq)
                && e.sent_to.is_none()
            {
                out.push(Resend {
                    seq,
                    to_bare: e.to_bare.clone(),
                });
            }
        }
        out
    }

    /// The link to `core` went down: what was sent on it and not answered
    /// waits to be sent again.
    pub(super) fn link_down(&mut self, core: &str) {
        for e in self.waiting.values_mut() {
            if e.sent_to.as_deref() == Some(core) {
                e.sent_to = None;
            }
        }
    }

    /// Forwards to send again: those not sent, and those sent to a core
    /// that `is_current` no longer accepts for their recipient.
    pub(super) fn to_resend(&self, is_current: impl Fn(&str, &str) -> bool) -> Vec<Resend> {
        let mut out: Vec<Resend> = self
            .waiting
            .iter()
            .filter(|(_, e)| match &e.sent_to {
                None => true,
                Some(core) => !is_current(&e.to_bare, core),
            })
            .map(|(&seq, e)| Resend {
                seq,
                to_bare: e.to_bare.clone(),
            })
            .collect();
        out.sort_unstable_by_key(|r| r.seq);
        out
    }

    /// The earliest give-up or retry time.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let give_up = self
            .order
            .iter()
            .find_map(|seq| self.waiting.get(seq).map(|e| e.give_up));
        let retry = self.retries.front().map(|&(at, _)| at);
        give_up.into_iter().chain(retry).min()
    }

    /// Forwards whose give-up time came by `now`.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<GivenUp> {
        let mut out = Vec::new();
        while let Some(&seq) = self.order.front() {
            match self.waiting.get(&seq) {
                None => {
                    self.order.pop_front();
                }
                Some(e) if e.give_up <= now => {
                    self.order.pop_front();
                    if let Some(e) = self.waiting.remove(&seq) {
                        self.bytes -= e.cost();
                        out.push(GivenUp {
                            header: e.header,
                            origin: e.origin,
                        });
                    }
                }
                Some(_) => break,
            }
        }
        out
    }

    /// Forwards waiting (for metrics and tests).
    pub(super) fn len(&self) -> usize {
        self.waiting.len()
    }
}

/// Stanzas from peers being routed here: each is answered `ForwardDone`
/// once what it stored committed. Each has a token in the SM origins'
/// space, so the storage actions that hold an acknowledgement hold it.
#[derive(Debug, Default)]
pub(super) struct Inbound {
    next_token: u64,
    /// token → the forward's state
    waiting: HashMap<u64, InboundForward>,
}

/// A forwarded stanza whose writes are outstanding.
#[derive(Debug)]
struct InboundForward {
    /// The peer link it came on.
    node: NodeId,
    /// Its seq on that link.
    seq: u64,
    /// Writes not finished.
    writes: u32,
    /// Whether a write was refused by the fence.
    refused: bool,
}

/// Inbound tokens have the top bit set; SM tokens never do, so the two
/// never collide.
use super::sm_sessions::PEER_TOKENS as INBOUND_TOKEN;

impl Inbound {
    /// A token for forward `seq` from `node`, with nothing outstanding.
    pub(super) fn begin(&mut self, node: NodeId, seq: u64) -> u64 {
        self.next_token = (self.next_token + 1) & !INBOUND_TOKEN;
        let token = INBOUND_TOKEN | self.next_token;
        self.waiting.insert(
            token,
            InboundForward {
                node,
                seq,
                writes: 0,
                refused: false,
            },
        );
        token
    }

    /// A write of the forward was refused by the fence; false if the
    /// forward is not waiting.
    pub(super) fn refuse(&mut self, token: u64) -> bool {
        let Some(entry) = self.waiting.get_mut(&token) else {
            return false;
        };
        entry.refused = true;
        true
    }

    /// Whether `token` is an inbound forward's.
    pub(super) fn is_inbound(token: u64) -> bool {
        token & INBOUND_TOKEN != 0
    }

    /// A write the forward waits for was queued.
    pub(super) fn write_started(&mut self, token: u64) {
        if let Some(entry) = self.waiting.get_mut(&token) {
            entry.writes += 1;
        }
    }

    /// A write finished (or, with `finished` false, routing ended): the
    /// forward to answer and whether it is accepted (no write refused), if
    /// nothing is outstanding any more.
    pub(super) fn settle(&mut self, token: u64, finished: bool) -> Option<(NodeId, u64, bool)> {
        let entry = self.waiting.get_mut(&token)?;
        if finished {
            entry.writes = entry.writes.saturating_sub(1);
        }
        if entry.writes > 0 {
            return None;
        }
        let f = self.waiting.remove(&token)?;
        Some((f.node, f.seq, !f.refused))
    }
}
