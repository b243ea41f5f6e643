//! Flushes whose load failed (storage refused, down or late), asked for
//! again with backoff. While one waits, its session's hold on new messages
//! stays (they are stored behind the stored ones), so nothing overtakes a
//! stored message; the retry is the only way the hold ends. Time comes in
//! from outside: [`FlushRetries::next_due`] is one of the router's
//! deadlines.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::routing::SessionAddr;

/// The pause before the first retry of a failed flush.
pub const FLUSH_RETRY_FIRST: Duration = Duration::from_millis(200);
/// The longest pause between retries of a flush (it doubles up to this).
pub const FLUSH_RETRY_MAX: Duration = Duration::from_secs(5);

/// Failed flushes waiting for their retry: one entry per session (bounded
/// by the sessions), each due at its deadline.
#[derive(Debug, Default)]
pub(crate) struct FlushRetries {
    /// Per session: when its retry is due and the pause that led there.
    waiting: HashMap<SessionAddr, (Instant, Duration)>,
    /// (due, session) of every entry; the first is due next.
    due: BTreeSet<(Instant, SessionAddr)>,
    /// The pause the next failure of a session waits, kept until its
    /// flush loads (so repeated failures back off).
    pauses: HashMap<SessionAddr, Duration>,
}

impl FlushRetries {
    /// The flush of `addr` failed at `now`: it is due again after its
    /// pause (doubling per failure in a row, up to [`FLUSH_RETRY_MAX`]).
    pub(crate) fn failed(&mut self, addr: SessionAddr, now: Instant) {
        let pause = self
            .pauses
            .get(&addr)
            .map_or(FLUSH_RETRY_FIRST, |p| (*p * 2).min(FLUSH_RETRY_MAX));
        self.pauses.insert(addr, pause);
        let at = now + pause;
        if let Some((old, _)) = self.waiting.insert(addr, (at, pause)) {
            self.due.remove(&(old, addr));
        }
        self.due.insert((at, addr));
    }

    /// The flush of `addr` loaded (or the session ended): no more backoff.
    pub(crate) fn loaded(&mut self, addr: SessionAddr) {
        self.pauses.remove(&addr);
        if let Some((at, _)) = self.waiting.remove(&addr) {
            self.due.remove(&(at, addr));
        }
    }

    /// When the next retry is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.due.first().map(|(at, _)| *at)
    }

    /// A session whose retry is due at `now` (taken off the waiting list;
    /// its backoff is kept until it loads).
    pub(crate) fn take_due(&mut self, now: Instant) -> Option<SessionAddr> {
        let &(at, addr) = self.due.first()?;
        if at > now {
            return None;
        }
        self.due.remove(&(at, addr));
        self.waiting.remove(&addr);
        Some(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_doubling_up_to_the_most_and_reset_once_loaded() {
        let t0 = Instant::now();
        let mut r = FlushRetries::default();
        let mut now = t0;
        let mut pauses = Vec::new();
        for _ in 0..8 {
            r.failed((1, 1), now);
            let due = r.next_due().expect("a retry is due");
            assert_eq!(r.take_due(due - Duration::from_millis(1)), None);
            assert_eq!(r.take_due(due), Some((1, 1)));
            pauses.push(due - now);
            now = due;
        }
        assert_eq!(pauses[0], FLUSH_RETRY_FIRST);
        assert_eq!(pauses[1], FLUSH_RETRY_FIRST * 2);
        assert_eq!(*pauses.last().expect("pauses"), FLUSH_RETRY_MAX);
        assert!(pauses.iter().all(|p| *p <= FLUSH_RETRY_MAX));
        r.loaded((1, 1));
        r.failed((1, 1), now);
        assert_eq!(r.next_due(), Some(now + FLUSH_RETRY_FIRST));
        r.loaded((1, 1));
        assert_eq!(r.next_due(), None);
        assert!(r.pauses.is_empty() && r.waiting.is_empty());
    }
}
