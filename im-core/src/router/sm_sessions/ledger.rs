//! The delivery ledger of one stream-management session (XEP-0198).
//!
//! The core, not the CM, is the authority for what a client has received:
//! every stanza routed to an SM session is kept here until the client
//! acknowledges it, so a CM can die at any moment and the session resumes
//! on any other CM with nothing lost. Entries are numbered per attachment
//! (from 0 after `SmEnabled`/`Resumed`); the client's `h` counts what it
//! was written, which is every entry except those the CM reports skipped.
//! Pure data: no clocks (the detach time comes in from outside), no sockets.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Unacknowledged stanzas kept per session; beyond that (or beyond
/// [`MAX_UNACKED_BYTES`]) a message goes to offline storage and is flushed
/// to the session once it has acknowledged enough.
pub const MAX_UNACKED: usize = 2048;

/// Bytes of unacknowledged stanzas kept per session.
pub const MAX_UNACKED_BYTES: usize = 1024 * 1024;

/// Bytes of unacknowledged stanzas kept by all ledgers together; beyond it
/// messages spill to offline storage as for a full ledger.
pub const MAX_LEDGER_BYTES_TOTAL: usize = 1024 * 1024 * 1024;

/// Resumption time granted when the client names none, and the most granted.
pub const DEFAULT_MAX_RESUME_SECS: u32 = 300;

/// The offline-storage row that keeps an entry's stanza durable until the
/// client acknowledges it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Row {
    /// None: the stanza lives only in the ledger (not a chat or normal
    /// message, or its live row could not be written).
    None,
    /// Stored under this row id: loaded by a flush, or a live row whose
    /// id came back.
    Stored(i64),
    /// A live row being written; its id comes back under this ticket (see
    /// the router's `live_rows`).
    Ticket(u64),
}

/// One stanza sent to the session.
#[derive(Debug)]
struct Entry {
    payload: Bytes,
    /// The session's JID, for a stanza shared by many sessions without a
    /// `to` (a room's fan-out, which the CM addresses per copy): added
    /// only when the stanza is sent again or handed on.
    to: Option<Arc<str>>,
    /// The CM dropped it unwritten (client state indication).
    skipped: bool,
    /// The offline-storage row holding it: the row stays stored until the
    /// client acknowledges the stanza.
    row: Row,
}

impl Entry {
    /// The stanza as the session got it (addressed, if it was shared).
    fn stanza(&self) -> Bytes {
        match &self.to {
            Some(to) => xmpp_stream::stanza::stamp_to(&self.payload, to)
                .unwrap_or_else(|| self.payload.clone()),
            None => self.payload.clone(),
        }
    }

    /// What it counts for in the ledger's bytes.
    fn size(&self) -> usize {
        self.payload.len() + self.to.as_ref().map_or(0, |t| t.len())
    }
}

/// The offline-storage rows of entries a client acknowledged, or a ledger
/// held when it ended.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Rows {
    /// Rows whose ids are known.
    pub(crate) rows: Vec<i64>,
    /// Tickets of live rows whose ids have not come back yet.
    pub(crate) tickets: Vec<u64>,
}

impl Rows {
    fn add(&mut self, row: Row) {
        match row {
            Row::None => {}
            Row::Stored(id) => self.rows.push(id),
            Row::Ticket(t) => self.tickets.push(t),
        }
    }
}

/// What a ledger held unacknowledged when it ended.
#[derive(Debug, Default)]
pub(crate) struct Unacked {
    /// Stanzas routed to the session with no row, in order (to route
    /// elsewhere).
    pub(crate) payloads: Vec<Bytes>,
    /// Offline-storage rows of the messages it held (still stored: they go
    /// back to storage's care, not routed again), with the payloads of
    /// those whose ids are known, in order.
    pub(crate) rows: Vec<(i64, Bytes)>,
    /// Tickets of live rows being written, with their payloads.
    pub(crate) tickets: Vec<(u64, Bytes)>,
}

/// Counters a CM reports for a session the core does not know (after a core
/// restart).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Restored {
    /// Stanzas handled from the client.
    pub handled: u32,
    /// The client's last `<a h/>`.
    pub client_acked: u32,
    /// Stanzas written to the client.
    pub sent: u32,
    /// The CM's number for the next delivery.
    pub next_seq: u32,
}

/// Most stanzas whose fingerprints a ledger keeps for a resumption (see
/// [`Ledger::resumed_h`]): beyond, a stanza sent again is routed twice
/// (the SDK drops the duplicate by id).
pub(crate) const MAX_RECENT: usize = 4096;

/// Why an acknowledgement was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("handled count too high")]
pub(crate) struct TooHigh;

/// The ledger of one SM session (see the module docs).
#[derive(Debug)]
pub(crate) struct Ledger {
    /// Resumption key (inside the SM id).
    pub(super) token: u64,
    /// Granted resumption time in seconds; 0: not resumable.
    pub(super) max: u32,
    /// Stanzas handled from the client (`h` we report).
    pub(super) handled: u32,
    /// `handled` values of stanzas whose offline store is still running, in
    /// the order they were counted (so the front is the oldest).
    pending: VecDeque<u32>,
    /// The `h` and fingerprint of each stanza counted and not yet durable
    /// (at most [`MAX_RECENT`]): what a resumption reporting less than
    /// `handled` expects the client to send again.
    recent: VecDeque<(u32, u64)>,
    /// After such a resumption (see [`Ledger::resumed_h`]): the stanzas,
    /// routed already, that the client is expected to send again, in
    /// order. One that comes as expected (same number, same fingerprint)
    /// is counted, not routed twice; anything else ends the expectation.
    resent: VecDeque<(u32, u64)>,
    /// Numbers of stores still running for stanzas counted before a
    /// resumption, after the client sent something new at their number:
    /// their completions are matched here first, so they never count for
    /// the new stanza with the same number (it is acknowledged no earlier
    /// than both finished).
    stale: VecDeque<u32>,
    /// An `<a/>` went out lower than `handled` because of pending stores.
    pub(super) ack_owed: bool,
    /// The client's last acknowledged `h`.
    acked: u32,
    /// Deliveries a previous core instance made that the client may still
    /// acknowledge (their payloads died with it).
    unknown: u32,
    /// The last `h` reported to the client (reports never go back).
    reported: u32,
    /// Number of the front entry within this attachment.
    first_seq: u32,
    entries: VecDeque<Entry>,
    /// Bytes in `entries`.
    bytes: usize,
    /// New messages go to offline storage (the ledger was full, or stored
    /// messages are being flushed): they must not overtake the stored ones.
    pub(super) overflowed: bool,
    /// A flush of stored messages into this ledger is under way.
    pub(super) flushing: bool,
    /// Messages were stored while the flush was under way.
    pub(super) spilled_while_flushing: bool,
    /// When the client's stream went away (None while attached).
    pub(super) detached_at: Option<Instant>,
    /// Entered from a CM's word that the session detached there (until
    /// its client resumes it): a live announcement of its SM id wins.
    pub(super) hearsay: bool,
}

impl Ledger {
    /// A ledger for a session that just enabled SM.
    pub(super) fn new(token: u64, max: u32) -> Self {
        Self::restored(token, max, Restored::default())
    }

    /// A ledger rebuilt from a CM's counters (after a core restart).
    pub(super) fn restored(token: u64, max: u32, r: Restored) -> Self {
        Self {
            token,
            max,
            handled: r.handled,
            pending: VecDeque::new(),
            recent: VecDeque::new(),
            resent: VecDeque::new(),
            stale: VecDeque::new(),
            ack_owed: false,
            acked: r.client_acked,
            unknown: r.sent.wrapping_sub(r.client_acked),
            reported: r.handled,
            first_seq: r.next_seq,
            entries: VecDeque::new(),
            bytes: 0,
            overflowed: false,
            flushing: false,
            spilled_while_flushing: false,
            detached_at: None,
            hearsay: false,
        }
    }

    /// Whether the session may be resumed.
    pub(super) fn resumable(&self) -> bool {
        self.max > 0
    }

    /// When a detached session expires (none while attached).
    pub(super) fn expiry(&self) -> Option<Instant> {
        self.detached_at
            .map(|at| at + Duration::from_secs(u64::from(self.max)))
    }

    /// Unacknowledged entries.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is unacknowledged.
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether another stanza fits.
    pub(super) fn has_room(&self) -> bool {
        self.entries.len() < MAX_UNACKED && self.bytes < MAX_UNACKED_BYTES
    }

    /// Whether the ledger has drained to half its bounds.
    pub(super) fn half_empty(&self) -> bool {
        self.entries.len() <= MAX_UNACKED / 2 && self.bytes <= MAX_UNACKED_BYTES / 2
    }

    /// Records a stanza sent to the session (`row`: the offline-storage row
    /// holding it, if any).
    pub(super) fn push(&mut self, payload: Bytes, row: Row) {
        self.bytes += payload.len();
        self.entries.push_back(Entry {
            payload,
            to: None,
            skipped: false,
            row,
        });
    }

    /// Records a shared stanza sent to the session without its `to` (a
    /// room's fan-out): counted as its own copy would be, addressed to
    /// `to` only if it is ever sent again or handed on.
    pub(super) fn push_addressed(&mut self, payload: Bytes, to: Arc<str>) {
        self.bytes += payload.len() + to.len();
        self.entries.push_back(Entry {
            payload,
            to: Some(to),
            skipped: false,
            row: Row::None,
        });
    }

    /// A stanza from the client was handled; returns its `h`.
    #[cfg(test)]
    pub(super) fn count_in(&mut self) -> u32 {
        self.count_in_resent(0).0
    }

    /// A stanza from the client, whose bytes hash to `fingerprint`, was
    /// handled; returns its `h`, and whether it is one the client sent
    /// again after a resumption and that was routed before it (its store,
    /// if any, is still pending under the same `h`).
    pub(super) fn count_in_resent(&mut self, fingerprint: u64) -> (u32, bool) {
        self.handled = self.handled.wrapping_add(1);
        let h = self.handled;
        let resent = match self.resent.pop_front() {
            Some(expected) if expected == (h, fingerprint) => true,
            Some(_) => {
                // the client sends something else: from here on all is new,
                // and the old stanzas' numbers are given again
                self.resent.clear();
                let before_h = |r: u32| h.wrapping_sub(r).wrapping_sub(1) <= u32::MAX / 2;
                self.recent.retain(|&(r, _)| before_h(r));
                let (kept, stale): (VecDeque<u32>, VecDeque<u32>) =
                    self.pending.drain(..).partition(|&p| before_h(p));
                self.pending = kept;
                self.stale.extend(stale);
                false
            }
            None => false,
        };
        // what is durable is never sent again
        let durable = self.durable_h();
        while self
            .recent
            .front()
            .is_some_and(|&(r, _)| durable.wrapping_sub(r) <= u32::MAX / 2)
        {
            self.recent.pop_front();
        }
        // (full: later ones, if sent again, are routed twice; the first
        // ones, which come back first, are still known)
        if !resent && self.recent.len() < MAX_RECENT {
            self.recent.push_back((h, fingerprint));
        }
        (h, resent)
    }

    /// The stanza numbered `h` waits for an offline store.
    pub(super) fn store_started(&mut self, h: u32) {
        self.pending.push_back(h);
    }

    /// The store for `h` finished (stored or answered with an error).
    pub(super) fn store_done(&mut self, h: u32) {
        if let Some(pos) = self.stale.iter().position(|&p| p == h) {
            self.stale.remove(pos);
            return;
        }
        if let Some(pos) = self.pending.iter().position(|&p| p == h) {
            self.pending.remove(pos);
        }
    }

    /// The `h` that is safe to acknowledge: every stanza up to it is routed
    /// or durably stored.
    pub(super) fn durable_h(&self) -> u32 {
        self.pending
            .front()
            .map_or(self.handled, |p| p.wrapping_sub(1))
    }

    /// The `h` to report now: the durable one, but never lower than one
    /// reported before (a resumption reports everything handled).
    pub(super) fn report_h(&mut self) -> u32 {
        let durable = self.durable_h();
        if durable.wrapping_sub(self.reported) <= u32::MAX / 2 {
            self.reported = durable;
        }
        self.reported
    }

    /// The `h` of `<resumed/>`: what is durable. The client sends again
    /// every stanza past it, so the count restarts there (it agrees with
    /// the client's); those stanzas were routed already, so they are only
    /// counted again (see [`count_in_resent`](Self::count_in_resent)), and
    /// the stores still running for them keep their `h` and hold the
    /// acknowledgement as before.
    pub(super) fn resumed_h(&mut self) -> u32 {
        let h = self.report_h();
        // counted before, past h: expected again, in order
        self.resent = self
            .recent
            .iter()
            .filter(|&&(r, _)| r.wrapping_sub(h).wrapping_sub(1) <= u32::MAX / 2)
            .copied()
            .collect();
        self.handled = h;
        h
    }

    /// Reports everything handled (the `h` of `<resumed/>`).
    #[cfg(test)]
    pub(super) fn report_all(&mut self) -> u32 {
        self.reported = self.handled;
        self.handled
    }

    /// Bytes of unacknowledged stanzas.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The client acknowledged `h`: drops what it received; returns the
    /// offline-storage rows of the messages among them (which may now be
    /// removed from storage).
    pub(super) fn ack(&mut self, h: u32) -> Result<Rows, TooHigh> {
        let mut n = h.wrapping_sub(self.acked);
        let written = self.entries.iter().filter(|e| !e.skipped).count();
        if u64::from(n) > u64::from(self.unknown) + written as u64 {
            return Err(TooHigh);
        }
        let from_before = n.min(self.unknown);
        self.unknown -= from_before;
        n -= from_before;
        let mut rows = Rows::default();
        while let Some(front) = self.entries.front() {
            if !front.skipped {
                if n == 0 {
                    break;
                }
                n -= 1;
            }
            if let Some(e) = self.entries.pop_front() {
                self.bytes -= e.size();
                // (a skipped entry is a presence, never a stored message)
                rows.add(e.row);
            }
            self.first_seq = self.first_seq.wrapping_add(1);
        }
        self.acked = h;
        Ok(rows)
    }

    /// The CM dropped these entries unwritten.
    pub(super) fn skip(&mut self, seqs: &[u32]) {
        for seq in seqs {
            let idx = seq.wrapping_sub(self.first_seq) as usize;
            if let Some(e) = self.entries.get_mut(idx) {
                e.skipped = true;
            }
        }
    }

    /// Starts a new attachment: drops skipped entries, renumbers from 0 and
    /// returns the stanzas to send again, in order.
    pub(super) fn reattach(&mut self) -> Vec<Bytes> {
        self.entries.retain(|e| !e.skipped);
        self.bytes = self.entries.iter().map(Entry::size).sum();
        self.first_seq = 0;
        self.detached_at = None;
        self.hearsay = false;
        self.entries.iter().map(Entry::stanza).collect()
    }

    /// The live row written under `ticket` is stored as `row`: the entry
    /// waiting for it (a message enters a ledger once) holds the row now;
    /// whether there was one.
    pub(super) fn resolve(&mut self, ticket: u64, row: Row) -> bool {
        // (the newest entries first: ids come back soon after their push)
        match self
            .entries
            .iter_mut()
            .rev()
            .find(|e| e.row == Row::Ticket(ticket))
        {
            Some(e) => {
                e.row = row;
                true
            }
            None => false,
        }
    }

    /// Ends the ledger: what the client never acknowledged.
    pub(crate) fn into_unacked(self) -> Unacked {
        let mut unacked = Unacked::default();
        for e in self.entries {
            match (e.row, e.skipped) {
                (Row::Stored(row), _) => unacked.rows.push((row, e.stanza())),
                (Row::Ticket(t), _) => unacked.tickets.push((t, e.stanza())),
                (Row::None, false) => unacked.payloads.push(e.stanza()),
                (Row::None, true) => {}
            }
        }
        unacked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn acks_drop_received_entries_and_too_high_is_refused() {
        let mut l = Ledger::new(1, 300);
        for s in ["a", "b", "c"] {
            l.push(b(s), Row::None);
        }
        assert_eq!(l.ack(2), Ok(Rows::default()));
        assert_eq!(l.len(), 1);
        assert_eq!(l.ack(5), Err(TooHigh));
        l.ack(3).unwrap();
        assert!(l.is_empty());
    }

    #[test]
    fn acks_report_the_storage_rows_of_stored_messages_and_an_end_hands_back_the_rest() {
        let mut l = Ledger::new(1, 300);
        l.push(b("live"), Row::None);
        l.push(b("s1"), Row::Stored(11));
        l.push(b("s2"), Row::Stored(12));
        l.push(b("s3"), Row::Stored(13));
        assert_eq!(l.ack(2).map(|r| r.rows), Ok(vec![11]));
        assert_eq!(l.ack(2), Ok(Rows::default()));
        let unacked = l.into_unacked();
        let rows: Vec<i64> = unacked.rows.iter().map(|(r, _)| *r).collect();
        assert_eq!(rows, vec![12, 13]);
        assert!(unacked.payloads.is_empty());
    }

    #[test]
    fn tickets_are_reported_until_their_rows_come_and_rows_after() {
        let mut l = Ledger::new(1, 300);
        l.push(b("a"), Row::Ticket(5));
        l.push(b("b"), Row::Ticket(6));
        l.push(b("c"), Row::Ticket(7));
        assert!(l.resolve(6, Row::Stored(60)));
        assert!(!l.resolve(8, Row::Stored(80)), "not held");
        assert!(l.resolve(7, Row::None), "its write failed");
        assert_eq!(
            l.ack(2),
            Ok(Rows {
                rows: vec![60],
                tickets: vec![5]
            })
        );
        // the failed one has no row: routed on at the end, as before
        let unacked = l.into_unacked();
        assert_eq!(unacked.payloads, vec![b("c")]);
        assert!(unacked.rows.is_empty() && unacked.tickets.is_empty());
    }

    #[test]
    fn counters_wrap_at_2_pow_32() {
        let mut l = Ledger::restored(
            1,
            300,
            Restored {
                handled: u32::MAX,
                client_acked: u32::MAX - 1,
                sent: u32::MAX - 1,
                next_seq: 0,
            },
        );
        assert_eq!(l.count_in(), 0);
        for s in ["a", "b", "c"] {
            l.push(b(s), Row::None);
        }
        l.ack(u32::MAX).unwrap();
        assert_eq!(l.len(), 2);
        l.ack(1).unwrap();
        assert!(l.is_empty());
    }

    #[test]
    fn skipped_entries_are_not_counted_nor_resent() {
        let mut l = Ledger::new(1, 300);
        for s in ["p1", "m1", "p2", "m2"] {
            l.push(b(s), Row::None);
        }
        l.skip(&[0, 2]);
        // the client was written m1 and m2 only
        l.ack(1).unwrap();
        assert_eq!(l.reattach(), vec![b("m2")]);
        // renumbered: m2 is 0, the next is 1
        l.push(b("m3"), Row::None);
        l.skip(&[1]);
        assert_eq!(l.into_unacked().payloads, vec![b("m2")]);
    }

    #[test]
    fn after_a_resumption_a_new_stanza_at_an_old_number_is_never_acknowledged_by_the_old_write() {
        let mut l = Ledger::new(1, 300);
        // m1 (a write), p2 (none), m3 (a write), both writes pending
        assert_eq!(l.count_in_resent(11), (1, false));
        l.store_started(1);
        assert_eq!(l.count_in_resent(12), (2, false));
        assert_eq!(l.count_in_resent(13), (3, false));
        l.store_started(3);
        assert_eq!(l.resumed_h(), 0);
        // the client sends m1 and p2 again: known, counted, not routed
        assert_eq!(l.count_in_resent(11), (1, true));
        assert_eq!(l.count_in_resent(12), (2, true));
        // then something new where m3 was expected: routed, with a write
        assert_eq!(l.count_in_resent(99), (3, false));
        l.store_started(3);
        l.store_done(1);
        assert_eq!(l.report_h(), 2, "m1 is durable");
        // the old m3's write finishes first: it is not the new one's
        l.store_done(3);
        assert_eq!(l.report_h(), 2, "the new stanza 3 waits for its own write");
        l.store_done(3);
        assert_eq!(l.report_h(), 3);
    }

    #[test]
    fn durable_h_waits_for_pending_stores() {
        let mut l = Ledger::new(1, 300);
        let h1 = l.count_in();
        let h2 = l.count_in();
        l.store_started(h2);
        l.count_in();
        assert_eq!(l.durable_h(), h1);
        l.store_done(h2);
        assert_eq!(l.durable_h(), 3);
        // across the wrap
        let mut l = Ledger::restored(
            1,
            300,
            Restored {
                handled: u32::MAX - 1,
                ..Restored::default()
            },
        );
        let a = l.count_in();
        let b = l.count_in();
        l.count_in();
        l.store_started(b);
        assert_eq!(b, 0);
        assert_eq!(l.durable_h(), a);
    }

    #[test]
    fn a_restored_ledger_accepts_acks_for_what_the_old_core_sent() {
        // the CM wrote 10, the client acknowledged 7, then the core restarted
        let mut l = Ledger::restored(
            1,
            300,
            Restored {
                handled: 4,
                client_acked: 7,
                sent: 10,
                next_seq: 3,
            },
        );
        l.push(b("new"), Row::None);
        l.ack(9).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l.ack(12), Err(TooHigh));
        l.ack(11).unwrap();
        assert!(l.is_empty());
    }

    #[test]
    fn reported_h_never_goes_back() {
        let mut l = Ledger::new(1, 300);
        let h1 = l.count_in();
        let h2 = l.count_in();
        l.store_started(h2);
        assert_eq!(l.report_all(), 2);
        assert_eq!(l.report_h(), 2);
        l.store_done(h2);
        l.count_in();
        assert_eq!(l.report_h(), 3);
        assert_eq!(h1, 1);
    }
}
