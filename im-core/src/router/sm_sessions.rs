//! Stream-management sessions at the core (XEP-0198): every session that
//! enabled SM has a delivery [`Ledger`], found by its address or by its
//! resumption token. This type owns the ledgers, the tokens, the expiry
//! deadlines of detached sessions, the addresses of sessions that ended or
//! moved, the byte budget of all ledgers together and the SM id key; the
//! router asks it questions and carries out what it answers.
//!
//! The core, not the CM, is the authority for what a client has received
//! (see [`ledger`]). Time comes in from outside: a detached session expires
//! at exactly its deadline, which [`SmSessions::next_expiry`] reports.

mod ledger;
mod sm_ids;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Instant;

use bytes::Bytes;
use cm_protocol::SmSnapshot;

#[cfg(test)]
pub(crate) use ledger::MAX_UNACKED;
use ledger::{DEFAULT_MAX_RESUME_SECS, MAX_LEDGER_BYTES_TOTAL, Restored, TooHigh};
pub(crate) use ledger::{Ledger, Row, Rows};
use sm_ids::SmIds;

use crate::routing::SessionAddr;

/// How many addresses of ended or moved SM sessions are remembered, so a
/// CM's late bounces for them are not routed a second time.
pub const RETIRED_MEMORY: usize = 65_536;

/// An SM stanza from a client: its session's token and its `h`, carried
/// by the storage actions whose commit its acknowledgement waits for.
pub type Origin = (u64, u32);

/// A stanza from a session's client, as its ledger counts it.
pub(crate) enum Incoming {
    /// Not an SM session.
    Untracked,
    /// From a stream the session has left (it resumed elsewhere): dropped.
    FromDetached,
    /// Counted; its acknowledgement waits for whatever it is routed into.
    Counted(Origin),
    /// Counted, and not to be routed: the client sent it again after a
    /// resumption, and it was routed before (its acknowledgement waits for
    /// the stores it went into then).
    Resent,
}

/// What a stanza sent to a session is, for a ledger that is full or has
/// stored messages ahead of new ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// A chat or normal message: it waits behind stored messages (stored
    /// after them), and is stored when the ledger is full.
    Storable,
    /// Anything else of the session's stream (IQ, presence, other message
    /// types): goes on past stored messages; dropped when the ledger is full.
    Other,
    /// A carbon copy or a query result, which belong to no conversation's
    /// order: goes on past stored messages; dropped when the ledger is full.
    Copy,
}

/// What happens to a stanza sent to a session.
pub(crate) enum Admission {
    /// Not an SM session: send it.
    Untracked,
    /// In the ledger; send it.
    Send,
    /// In the ledger; the client is away, so not sent now.
    Held,
    /// Not kept: a copy or a query result for a client far behind.
    Dropped,
    /// The ledger is full or behind stored messages: store the stanza
    /// offline if it is [`Delivery::Storable`] (else it is dropped);
    /// `flush`: then ask for the stored ones.
    Spill {
        /// The session caught up enough for a flush of stored messages.
        flush: bool,
    },
}

/// A stored message handed to a session during a flush.
pub(crate) enum Flushed {
    /// Not an SM session: send it.
    Untracked,
    /// The ledger is full: stop (the rest stays stored).
    Full,
    /// In the ledger; send it if the client is attached.
    Pushed {
        /// The client is attached.
        attached: bool,
    },
}

/// The client acknowledged stanzas.
pub(crate) struct Acked {
    /// It acknowledged more than it was sent.
    pub(crate) refused: bool,
    /// The ledger drained enough to flush stored messages into it.
    pub(crate) caught_up: bool,
    /// Offline-storage rows of the messages acknowledged now.
    pub(crate) rows: Rows,
}

/// What detaching a session did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Detach {
    /// Not an SM session.
    Untracked,
    /// Not resumable: the session must end.
    NotResumable,
    /// Detached (now or before): it waits for its client until it expires.
    Detached,
}

/// A session moved by a resumption.
pub(crate) struct Resumed {
    /// Stanzas to send again, in order.
    pub(crate) replay: Vec<Bytes>,
    /// The `h` to report to the client.
    pub(crate) h: u32,
    /// The resumption time granted.
    pub(crate) max: u32,
    /// The old stream was still attached (its CM holds it: tell it `conflict`).
    pub(crate) old_attached: bool,
    /// Offline-storage rows of the messages the resumption's `h`
    /// acknowledged.
    pub(crate) rows: Rows,
    /// A flush to the old address was under way: its result finds no one
    /// there (the rows stay stored), so the session asks again at the new
    /// address.
    pub(crate) reflush: bool,
}

/// The SM sessions (see the module docs).
#[derive(Debug)]
pub(crate) struct SmSessions {
    /// Ledgers by the session's current address.
    /// (Boxed: a table of millions of 200-byte values costs twice that
    /// again in empty slots, and a growing table holds old and new at once.)
    ledgers: HashMap<SessionAddr, Box<Ledger>>,
    /// Resumption tokens to current addresses.
    tokens: HashMap<u64, SessionAddr>,
    /// (deadline, token) of every detached session; the first expires next.
    expiries: BTreeSet<(Instant, u64)>,
    ids: SmIds,
    next_token: u64,
    /// Ledgers whose client is away.
    detached: usize,
    /// Bytes in all ledgers.
    bytes: usize,
    retired: Retired,
}

impl SmSessions {
    /// No sessions; tokens follow from `token_seed`, ids are keyed with
    /// `secret` (persisted, so ids survive a core restart).
    pub(crate) fn new(token_seed: u64, secret: [u8; 32]) -> Self {
        Self {
            ledgers: HashMap::new(),
            tokens: HashMap::new(),
            expiries: BTreeSet::new(),
            ids: SmIds::new(secret),
            next_token: token_seed,
            detached: 0,
            bytes: 0,
            retired: Retired::default(),
        }
    }

    /// Whether the session enabled SM (its deliveries are kept until
    /// acknowledged).
    pub(crate) fn is_tracked(&self, addr: SessionAddr) -> bool {
        self.ledgers.contains_key(&addr)
    }

    /// Whether the session is tracked and its client attached.
    pub(crate) fn is_attached(&self, addr: SessionAddr) -> bool {
        self.ledgers
            .get(&addr)
            .is_some_and(|l| l.detached_at.is_none())
    }

    /// Whether the session is tracked and its client away.
    pub(crate) fn is_detached(&self, addr: SessionAddr) -> bool {
        self.ledgers
            .get(&addr)
            .is_some_and(|l| l.detached_at.is_some())
    }

    /// Whether the session was entered from a CM's word that it detached
    /// there, and has not been resumed since.
    pub(crate) fn is_hearsay(&self, addr: SessionAddr) -> bool {
        self.ledgers.get(&addr).is_some_and(|l| l.hearsay)
    }

    /// The session at `addr` was entered from a CM's word that it detached.
    pub(crate) fn mark_hearsay(&mut self, addr: SessionAddr) {
        if let Some(l) = self.ledgers.get_mut(&addr) {
            l.hearsay = true;
        }
    }

    /// Whether the session is tracked and may be resumed.
    pub(crate) fn is_resumable(&self, addr: SessionAddr) -> bool {
        self.ledgers.get(&addr).is_some_and(|l| l.resumable())
    }

    /// Whether an SM session ended or moved away from this address.
    pub(crate) fn is_retired(&self, addr: SessionAddr) -> bool {
        self.retired.contains(addr)
    }

    /// Sessions tracked (attached or detached) and of those detached.
    pub(crate) fn counts(&self) -> (usize, usize) {
        (self.ledgers.len(), self.detached)
    }

    /// When the next detached session expires.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.expiries.first().map(|(deadline, _)| *deadline)
    }

    /// A detached session whose deadline is `now` or past, no longer
    /// waiting to expire (the caller ends it); one per call.
    pub(crate) fn next_expired(&mut self, now: Instant) -> Option<SessionAddr> {
        loop {
            let &(deadline, token) = self.expiries.first()?;
            if deadline > now {
                return None;
            }
            self.expiries.pop_first();
            if let Some(&addr) = self.tokens.get(&token) {
                return Some(addr);
            }
        }
    }

    /// Enables SM for a session of `bare`; `None` if it had it already.
    /// Returns the SM id (empty if not resumable) and the resumption time.
    pub(crate) fn enable(
        &mut self,
        addr: SessionAddr,
        bare: &str,
        resume: bool,
        max: u32,
    ) -> Option<(String, u32)> {
        if self.ledgers.contains_key(&addr) {
            return None;
        }
        let token = self.new_token();
        let max = match (resume, max) {
            (false, _) => 0,
            (true, 0) => DEFAULT_MAX_RESUME_SECS,
            (true, m) => m.min(DEFAULT_MAX_RESUME_SECS),
        };
        let id = if max > 0 {
            self.ids.issue(token, bare)
        } else {
            String::new()
        };
        self.insert(addr, Ledger::new(token, max));
        Some((id, max))
    }

    /// The token a genuine SM id of `bare` names (whether or not a session
    /// holds it now).
    pub(crate) fn token_of_id(&self, id: &str, bare: &str) -> Option<u64> {
        self.ids.verify(id, bare)
    }

    /// The session an SM id of `bare` belongs to now, if any.
    pub(crate) fn holder_of(&self, id: &str, bare: &str) -> Option<SessionAddr> {
        let token = self.ids.verify(id, bare)?;
        self.tokens.get(&token).copied()
    }

    /// Rebuilds the ledger of a session a restarted core did not know from
    /// its CM's counters (what the lost core held unacknowledged is gone);
    /// its resumption time is the CM's, up to this server's maximum.
    pub(crate) fn restore(&mut self, addr: SessionAddr, bare: &str, sm: &SmSnapshot) {
        let token = match self.ids.verify(&sm.id, bare) {
            Some(t) if t & PEER_TOKENS == 0 && !self.tokens.contains_key(&t) => t,
            _ => self.new_token(),
        };
        // what the CM says was granted, but never more than this server grants
        let max = if sm.id.is_empty() {
            0
        } else {
            sm.max.min(DEFAULT_MAX_RESUME_SECS)
        };
        let counters = Restored {
            handled: sm.handled,
            client_acked: sm.client_acked,
            sent: sm.sent,
            next_seq: sm.next_seq,
        };
        self.insert(addr, Ledger::restored(token, max, counters));
    }

    /// Counts a stanza (`payload`) from the session's client.
    pub(crate) fn count_in(&mut self, addr: SessionAddr, payload: &[u8]) -> Incoming {
        match self.ledgers.get_mut(&addr) {
            None => Incoming::Untracked,
            Some(l) if l.detached_at.is_some() => Incoming::FromDetached,
            Some(l) => match l.count_in_resent(fingerprint(payload)) {
                (_, true) => Incoming::Resent,
                (h, false) => Incoming::Counted((l.token, h)),
            },
        }
    }

    /// The client asked `<r/>`: the `h` to report (none if untracked).
    pub(crate) fn ack_request(&mut self, addr: SessionAddr) -> Option<u32> {
        let l = self.ledgers.get_mut(&addr)?;
        let h = l.report_h();
        l.ack_owed = h != l.handled;
        Some(h)
    }

    /// The client acknowledged `h` (none if untracked).
    pub(crate) fn acked(&mut self, addr: SessionAddr, h: u32) -> Option<Acked> {
        let l = self.ledgers.get_mut(&addr)?;
        let before = l.bytes();
        let (refused, rows) = match l.ack(h) {
            Ok(rows) => (false, rows),
            Err(TooHigh) => (true, Rows::default()),
        };
        self.bytes -= before - l.bytes();
        let caught_up = l.overflowed && !l.flushing && l.half_empty();
        Some(Acked {
            refused,
            caught_up,
            rows,
        })
    }

    /// The CM dropped these deliveries unwritten.
    pub(crate) fn skipped(&mut self, addr: SessionAddr, seqs: &[u32]) {
        if let Some(l) = self.ledgers.get_mut(&addr) {
            l.skip(seqs);
        }
    }

    /// Records a stanza for a session before it is sent (`row`: the
    /// offline-storage row that will hold it, for a
    /// [`Delivery::Storable`] one).
    pub(crate) fn admit(
        &mut self,
        addr: SessionAddr,
        payload: &Bytes,
        delivery: Delivery,
        row: Row,
    ) -> Admission {
        let total = self.bytes;
        let Some(l) = self.ledgers.get_mut(&addr) else {
            return Admission::Untracked;
        };
        let full = !l.has_room() || total >= MAX_LEDGER_BYTES_TOTAL;
        if full && delivery == Delivery::Copy {
            // A copy or a query result for a client far behind: dropped,
            // never stored offline as if it were a message to it.
            return Admission::Dropped;
        }
        // While stored messages are flushed, a new message waits behind them;
        // anything else (IQ answers, presence) goes on.
        if full || (delivery == Delivery::Storable && l.overflowed) {
            // Far behind, or behind stored messages: stored too (after
            // them; it is flushed to the session in order).
            l.overflowed = true;
            l.spilled_while_flushing |= l.flushing;
            // e.g. the global budget was hit with this ledger nearly empty
            let flush = !l.flushing && l.half_empty();
            return Admission::Spill { flush };
        }
        self.bytes += payload.len();
        l.push(payload.clone(), row);
        match l.detached_at {
            None => Admission::Send,
            Some(_) => Admission::Held,
        }
    }

    /// Records a shared stanza (a room's fan-out, no `to`) for session
    /// `addr` addressed to `to` (see [`Ledger`]); as [`SmSessions::admit`]
    /// for anything but a chat or normal message.
    pub(crate) fn admit_addressed(
        &mut self,
        addr: SessionAddr,
        payload: &Bytes,
        to: &std::sync::Arc<str>,
    ) -> Admission {
        let total = self.bytes;
        let Some(l) = self.ledgers.get_mut(&addr) else {
            return Admission::Untracked;
        };
        if !l.has_room() || total >= MAX_LEDGER_BYTES_TOTAL {
            // (a room's copy for a client far behind is dropped, as any
            // stanza but a chat or normal message: the room's archive has it)
            return Admission::Dropped;
        }
        self.bytes += payload.len() + to.len();
        l.push_addressed(payload.clone(), to.clone());
        match l.detached_at {
            None => Admission::Send,
            Some(_) => Admission::Held,
        }
    }

    /// A flush of stored messages to the session is about to be asked for:
    /// false if one is under way already (that one then flushes again when
    /// done: its load may have read before what this one was asked for).
    /// While it runs, new messages are stored behind the stored ones, so
    /// none overtakes them.
    pub(crate) fn start_flush(&mut self, addr: SessionAddr) -> bool {
        let Some(l) = self.ledgers.get_mut(&addr) else {
            return true;
        };
        if l.flushing {
            // its load may have read already: flush again once it is done
            l.spilled_while_flushing = true;
            return false;
        }
        l.flushing = true;
        l.overflowed = true;
        true
    }

    /// A flush of stored messages to the session is under way (asked for
    /// again after one that ended): new messages are stored behind it.
    pub(crate) fn flush_again(&mut self, addr: SessionAddr) {
        if let Some(l) = self.ledgers.get_mut(&addr) {
            l.flushing = true;
            l.overflowed = true;
        }
    }

    /// A stored message (from offline-storage row `row`) for the session,
    /// during a flush: it stays stored until the client acknowledges it.
    pub(crate) fn push_flushed(&mut self, addr: SessionAddr, payload: &Bytes, row: i64) -> Flushed {
        let total = self.bytes;
        match self.ledgers.get_mut(&addr) {
            None => Flushed::Untracked,
            Some(l) if !l.has_room() || total >= MAX_LEDGER_BYTES_TOTAL => Flushed::Full,
            Some(l) => {
                self.bytes += payload.len();
                l.push(payload.clone(), Row::Stored(row));
                Flushed::Pushed {
                    attached: l.detached_at.is_none(),
                }
            }
        }
    }

    /// A flush ended (`complete`: every stored message fitted); returns
    /// whether to flush again for what was stored meanwhile.
    pub(crate) fn finish_flush(&mut self, addr: SessionAddr, complete: bool) -> bool {
        let Some(l) = self.ledgers.get_mut(&addr) else {
            return false;
        };
        l.flushing = false;
        if !complete {
            // full again: the next acknowledgement that drains it flushes the rest
            false
        } else if std::mem::take(&mut l.spilled_while_flushing) {
            true
        } else {
            l.overflowed = false;
            false
        }
    }

    /// The live row `ticket` of the session with resumption token `token`
    /// is stored as `row` (or, [`Row::None`], could not be): its entries
    /// hold that now; whether the session still held any.
    pub(crate) fn resolve(&mut self, token: u64, ticket: u64, row: Row) -> bool {
        self.ledger_of_token(token)
            .is_some_and(|l| l.resolve(ticket, row))
    }

    /// Whether a tracked session has resumption token `token`.
    pub(crate) fn has_token(&self, token: u64) -> bool {
        self.tokens.contains_key(&token)
    }

    /// The resumption token of a tracked session.
    pub(crate) fn token_of(&self, addr: SessionAddr) -> Option<u64> {
        self.ledgers.get(&addr).map(|l| l.token)
    }

    /// The stanza `origin` waits for a storage commit before it is
    /// acknowledged.
    pub(crate) fn store_started(&mut self, (token, h): Origin) {
        if let Some(l) = self.ledger_of_token(token) {
            l.store_started(h);
        }
    }

    /// The commit `origin` waited for is done (either way). Returns the
    /// session and the `h` to report if an acknowledgement was held back
    /// for it.
    pub(crate) fn store_done(&mut self, (token, h): Origin) -> Option<(SessionAddr, u32)> {
        let addr = *self.tokens.get(&token)?;
        let l = self.ledgers.get_mut(&addr)?;
        l.store_done(h);
        if l.ack_owed && l.detached_at.is_none() && l.durable_h() == l.handled {
            l.ack_owed = false;
            return Some((addr, l.report_h()));
        }
        None
    }

    /// The client's stream (or its CM) went away at `now`: a resumable
    /// session waits for its client until its deadline.
    pub(crate) fn detach(&mut self, addr: SessionAddr, now: Instant) -> Detach {
        let Some(l) = self.ledgers.get_mut(&addr) else {
            return Detach::Untracked;
        };
        if !l.resumable() {
            return Detach::NotResumable;
        }
        if l.detached_at.is_none() {
            l.detached_at = Some(now);
            self.detached += 1;
            if let Some(deadline) = l.expiry() {
                self.expiries.insert((deadline, l.token));
            }
            tracing::debug!(node = addr.0, sid = addr.1, "SM session detached");
        }
        Detach::Detached
    }

    /// Moves a session from `old` to `new` for a resumption whose client
    /// received `h`. A client that claims more than it was sent leaves the
    /// session where it was (unusable: end it).
    pub(crate) fn resume(
        &mut self,
        old: SessionAddr,
        new: SessionAddr,
        h: u32,
    ) -> Option<Result<Resumed, TooHigh>> {
        let mut ledger = self.remove(old)?;
        let old_attached = ledger.detached_at.is_none();
        let rows = match ledger.ack(h) {
            Ok(rows) => rows,
            Err(e) => {
                self.retired.remove(old);
                self.insert(old, ledger);
                return Some(Err(e));
            }
        };
        let replay = ledger.reattach();
        // The flush in flight was for `old`: it is abandoned, and the
        // ledger keeps holding new messages back until the next one is done.
        let reflush = std::mem::take(&mut ledger.flushing);
        let resumed = Resumed {
            replay,
            // Only what is durable: a stanza whose archive or offline
            // store is still pending is sent again by the client (and
            // dropped as a duplicate by id at the recipient), never lost;
            // the count restarts there, as the client's does.
            h: ledger.resumed_h(),
            max: ledger.max,
            old_attached,
            rows,
            reflush,
        };
        self.retired.remove(new);
        self.insert(new, ledger);
        Some(Ok(resumed))
    }

    /// Ends a session's tracking: its ledger (with what its client never
    /// acknowledged); the address is remembered as retired.
    pub(crate) fn remove(&mut self, addr: SessionAddr) -> Option<Ledger> {
        let ledger = self.ledgers.remove(&addr)?;
        self.tokens.remove(&ledger.token);
        if let Some(deadline) = ledger.expiry() {
            self.detached -= 1;
            self.expiries.remove(&(deadline, ledger.token));
        }
        self.bytes -= ledger.bytes();
        self.retired.insert(addr);
        Some(*ledger)
    }

    /// Forgets the session at `addr` without remembering it as retired:
    /// it lives on at another core (its slot moved), and may be announced
    /// here again when the slot comes back.
    pub(crate) fn forget(&mut self, addr: SessionAddr) {
        if self.remove(addr).is_some() {
            self.retired.remove(addr);
        }
    }

    /// Tracks a ledger at `addr`, keeping the counts, the token and the
    /// expiry right.
    fn insert(&mut self, addr: SessionAddr, ledger: Ledger) {
        if let Some(deadline) = ledger.expiry() {
            self.detached += 1;
            self.expiries.insert((deadline, ledger.token));
        }
        self.bytes += ledger.bytes();
        self.tokens.insert(ledger.token, addr);
        self.ledgers.insert(addr, Box::new(ledger));
    }

    /// The ledger with this resumption token, wherever it is now.
    fn ledger_of_token(&mut self, token: u64) -> Option<&mut Ledger> {
        let addr = self.tokens.get(&token)?;
        self.ledgers.get_mut(addr).map(|l| &mut **l)
    }

    /// A resumption token no session has (the next of a seeded LCG),
    /// with the top bit clear: tokens with it set stand for stanzas
    /// forwarded from peer cores (`router/shards.rs`).
    fn new_token(&mut self) -> u64 {
        loop {
            self.next_token = self
                .next_token
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let token = self.next_token & !PEER_TOKENS;
            if !self.tokens.contains_key(&token) {
                return token;
            }
        }
    }
}

/// The bit of resumption tokens reserved for stanzas from peer cores.
pub(crate) const PEER_TOKENS: u64 = 1 << 63;

/// Addresses of SM sessions that ended or moved, the latest
/// [`RETIRED_MEMORY`] of them.
#[derive(Debug, Default)]
struct Retired {
    set: HashSet<SessionAddr>,
    order: VecDeque<SessionAddr>,
}

impl Retired {
    /// Whether `addr` is remembered.
    fn contains(&self, addr: SessionAddr) -> bool {
        self.set.contains(&addr)
    }

    /// Remembers `addr`, forgetting the oldest past [`RETIRED_MEMORY`].
    fn insert(&mut self, addr: SessionAddr) {
        if self.set.insert(addr) {
            self.order.push_back(addr);
            if self.order.len() > RETIRED_MEMORY
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }

    /// Forgets `addr` (a session lives there again); its place in the
    /// order stays until it comes up.
    fn remove(&mut self, addr: SessionAddr) {
        self.set.remove(&addr);
    }
}

/// A stanza's fingerprint: a hash of its bytes (as the CM relayed them),
/// to know a stanza the client sends again after a resumption.
fn fingerprint(payload: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    payload.hash(&mut hasher);
    hasher.finish()
}
