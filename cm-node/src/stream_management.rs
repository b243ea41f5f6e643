//! The CM's share of stream management (XEP-0198) and client state
//! indication (XEP-0352) for one session: counters and the presence held
//! back while the client is inactive. The core keeps what was delivered
//! until the client acknowledges it (see `im_core::ledger`); the CM counts,
//! answers `<r/>` with what the core says it handled, and numbers the
//! core's deliveries so it can report those it dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;

/// Counters the session registry reads when it re-announces a session to
/// a (possibly restarted) core.
#[derive(Debug, Default)]
pub struct SmCounters {
    handled: AtomicU32,
    sent: AtomicU32,
    /// Number of the next core delivery.
    seq: AtomicU32,
    /// The client's last `<a h/>`.
    acked: AtomicU32,
}

impl SmCounters {
    /// Stanzas handled from the client.
    pub fn handled(&self) -> u32 {
        self.handled.load(Ordering::Relaxed)
    }

    /// Stanzas written to the client.
    pub fn sent(&self) -> u32 {
        self.sent.load(Ordering::Relaxed)
    }

    /// The client's last `<a h/>`.
    pub fn client_acked(&self) -> u32 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Number the next delivery from the core gets.
    pub fn next_seq(&self) -> u32 {
        self.seq.load(Ordering::Relaxed)
    }
}

/// One session's stream-management state at the CM.
#[derive(Debug)]
pub struct SmState {
    /// SM id given to the client (empty: not resumable).
    pub id: String,
    /// Resumption time granted.
    pub max: u32,
    /// Shared with the registry.
    pub counters: Arc<SmCounters>,
    /// Numbering of core deliveries is on (after SmEnabled / Resumed).
    numbering: bool,
    /// The client's last `<a h/>`.
    acked: u32,
    /// An `<r/>` is outstanding.
    requested: bool,
}

/// Why a client's `<a h/>` was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct HandledTooHigh;

impl SmState {
    /// State after the client's `<enable/>` (numbering starts on SmEnabled).
    pub fn enabling() -> Self {
        Self {
            id: String::new(),
            max: 0,
            counters: Arc::default(),
            numbering: false,
            acked: 0,
            requested: false,
        }
    }

    /// State of a resumed session: the client acknowledged `client_h`, the
    /// server handled `handled`; replayed deliveries are numbered from 0.
    pub fn resumed(id: String, max: u32, handled: u32, client_h: u32) -> Self {
        let s = Self {
            id,
            max,
            counters: Arc::default(),
            numbering: true,
            acked: client_h,
            requested: false,
        };
        s.counters.handled.store(handled, Ordering::Relaxed);
        s.counters.sent.store(client_h, Ordering::Relaxed);
        s.counters.acked.store(client_h, Ordering::Relaxed);
        s
    }

    /// The core confirmed; deliveries are numbered from now on.
    pub fn enabled(&mut self, id: String, max: u32) {
        self.id = id;
        self.max = max;
        self.numbering = true;
    }

    /// Whether the core confirmed.
    pub fn is_enabled(&self) -> bool {
        self.numbering
    }

    /// A stanza came from the client.
    pub fn count_in(&self) {
        self.counters.handled.fetch_add(1, Ordering::Relaxed);
    }

    /// A delivery arrived from the core: its number, if numbering is on.
    pub fn next_seq(&mut self) -> Option<u32> {
        self.numbering
            .then(|| self.counters.seq.fetch_add(1, Ordering::Relaxed))
    }

    /// A stanza is written to the client.
    pub fn count_out(&self) {
        if self.numbering {
            self.counters.sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The client acknowledged `h`.
    pub fn on_ack(&mut self, h: u32) -> Result<(), HandledTooHigh> {
        let sent = self.counters.sent();
        if h.wrapping_sub(self.acked) > sent.wrapping_sub(self.acked) {
            return Err(HandledTooHigh);
        }
        self.acked = h;
        self.counters.acked.store(h, Ordering::Relaxed);
        self.requested = false;
        Ok(())
    }

    /// Whether to ask the client for an acknowledgement now (something is
    /// unacknowledged and no request is outstanding); asks at most once per
    /// write burst, so a phone's radio is not woken per stanza.
    pub fn want_ack(&mut self) -> bool {
        let due = self.numbering && !self.requested && self.counters.sent() != self.acked;
        self.requested |= due;
        due
    }
}

/// Most presence stanzas held for an inactive client; more flushes them.
pub const MAX_HELD: usize = 64;

/// Presence held back while the client is inactive (XEP-0352): only the
/// latest from each sender is kept.
#[derive(Debug, Default)]
pub struct CsiHold {
    /// The client said `<inactive/>`.
    pub inactive: bool,
    held: Vec<Held>,
}

#[derive(Debug)]
struct Held {
    seq: Option<u32>,
    from: String,
    payload: Bytes,
}

/// What holding a presence did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HoldOutcome {
    /// Number of the presence it replaced (to report as skipped).
    pub replaced: Option<u32>,
    /// The hold is full: flush it.
    pub full: bool,
}

impl CsiHold {
    /// Holds a presence from `from` (numbered `seq`).
    pub fn hold(&mut self, seq: Option<u32>, from: &str, payload: Bytes) -> HoldOutcome {
        let mut outcome = HoldOutcome::default();
        if let Some(pos) = self.held.iter().position(|h| h.from == from) {
            outcome.replaced = self.held.remove(pos).seq;
        }
        self.held.push(Held {
            seq,
            from: from.to_owned(),
            payload,
        });
        outcome.full = self.held.len() >= MAX_HELD;
        outcome
    }

    /// Everything held (with its number, if it had one), oldest first.
    pub fn take(&mut self) -> Vec<(Option<u32>, Bytes)> {
        std::mem::take(&mut self.held)
            .into_iter()
            .map(|h| (h.seq, h.payload))
            .collect()
    }

    /// Stanzas held now.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_are_checked_and_requested_once_per_burst() {
        let mut sm = SmState::enabling();
        assert_eq!(sm.next_seq(), None);
        sm.enabled("id".into(), 300);
        assert_eq!(sm.next_seq(), Some(0));
        sm.count_out();
        sm.count_out();
        assert!(sm.want_ack());
        assert!(!sm.want_ack());
        assert_eq!(sm.on_ack(3), Err(HandledTooHigh));
        sm.on_ack(2).unwrap();
        assert!(!sm.want_ack());
    }

    #[test]
    fn counters_wrap() {
        let mut sm = SmState::resumed("id".into(), 300, 7, u32::MAX);
        sm.count_out();
        sm.count_out();
        sm.on_ack(1).unwrap();
        assert_eq!(sm.counters.sent(), 1);
        assert_eq!(sm.counters.handled(), 7);
    }

    #[test]
    fn hold_keeps_the_latest_presence_per_sender() {
        let mut hold = CsiHold::default();
        let p = |s: &'static str| Bytes::from_static(s.as_bytes());
        assert_eq!(hold.hold(Some(1), "a", p("a1")), HoldOutcome::default());
        hold.hold(Some(2), "b", p("b1"));
        let o = hold.hold(Some(3), "a", p("a2"));
        assert_eq!(o.replaced, Some(1));
        assert_eq!(hold.take(), vec![(Some(2), p("b1")), (Some(3), p("a2"))]);
        for i in 0..MAX_HELD {
            let o = hold.hold(None, &i.to_string(), p("x"));
            assert_eq!(o.full, i + 1 == MAX_HELD);
        }
    }
}
