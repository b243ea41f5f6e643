//! Loads of stored messages under way ([`super::Action::FlushOffline`]):
//! at most one per session at a time (a flush asked for while one runs is
//! made once it is done, as its load may have read before what the new one
//! was asked for), and the loaded messages that wait for live rows of their
//! user still being written (see [`super::Router::stored_loaded`]).
//!
//! Bounded: one load per session, and a user's waiting loads are loads of
//! its sessions.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use crate::routing::SessionAddr;

/// Stored messages loaded for a session, waiting until no live row of
/// their user issued up to `mark` is being written.
#[derive(Debug)]
pub(crate) struct WaitingLoad {
    /// The session they were loaded for.
    pub(crate) to: SessionAddr,
    /// (row, stanza), in row order.
    pub(crate) messages: Vec<(i64, Bytes)>,
    /// The last live-row ticket issued when they were loaded.
    mark: u64,
}

/// The loads under way (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Loads {
    /// Sessions with a load under way; true: another was asked for
    /// meanwhile.
    running: HashMap<SessionAddr, bool>,
    /// Loaded messages waiting, per user, in the order they came (so in
    /// increasing `mark`).
    waiting: HashMap<String, VecDeque<WaitingLoad>>,
}

impl Loads {
    /// A load for `to` is about to be asked for: false if one is under way
    /// already (another is then due once it ends).
    pub(crate) fn start(&mut self, to: SessionAddr) -> bool {
        match self.running.get_mut(&to) {
            Some(again) => {
                *again = true;
                false
            }
            None => {
                self.running.insert(to, false);
                true
            }
        }
    }

    /// The load for `to` ended (its messages were handed out, or it
    /// failed): whether another was asked for meanwhile.
    pub(crate) fn end(&mut self, to: SessionAddr) -> bool {
        self.running.remove(&to).unwrap_or(false)
    }

    /// Messages loaded for `to` wait for `user`'s live rows up to `mark`.
    pub(crate) fn wait(
        &mut self,
        user: &str,
        to: SessionAddr,
        messages: Vec<(i64, Bytes)>,
        mark: u64,
    ) {
        self.waiting
            .entry(user.to_owned())
            .or_default()
            .push_back(WaitingLoad { to, messages, mark });
    }

    /// The next of `user`'s waiting loads that may go on, given whether a
    /// live row of the user up to a mark is still being written (the
    /// oldest first: a later one waits for at least as much).
    pub(crate) fn next_ready(
        &mut self,
        user: &str,
        writing_upto: impl Fn(u64) -> bool,
    ) -> Option<WaitingLoad> {
        let queue = self.waiting.get_mut(user)?;
        if queue.front().is_none_or(|w| writing_upto(w.mark)) {
            return None;
        }
        let ready = queue.pop_front();
        if queue.is_empty() {
            self.waiting.remove(user);
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_load_per_session_runs_and_one_asked_for_meanwhile_is_due_after_it() {
        let mut loads = Loads::default();
        assert!(loads.start((1, 10)));
        assert!(loads.start((1, 11)), "another session's");
        assert!(!loads.start((1, 10)));
        assert!(!loads.start((1, 10)), "still one due");
        assert!(loads.end((1, 10)), "one is due");
        assert!(!loads.end((1, 11)), "none due");
        assert!(!loads.end((1, 12)), "none under way");
        assert!(loads.start((1, 10)));
    }

    #[test]
    fn waiting_loads_go_on_oldest_first_once_their_marks_are_written() {
        let mut loads = Loads::default();
        loads.wait("alice", (1, 10), Vec::new(), 5);
        loads.wait("alice", (1, 11), Vec::new(), 9);
        loads.wait("bob", (2, 20), Vec::new(), 1);
        // alice's first live row still being written is ticket 7
        let writing = |first: u64| move |mark: u64| first <= mark;
        let w = loads.next_ready("alice", writing(7)).map(|w| w.to);
        assert_eq!(w, Some((1, 10)));
        assert!(loads.next_ready("alice", writing(7)).is_none());
        let w = loads.next_ready("alice", |_| false).map(|w| w.to);
        assert_eq!(w, Some((1, 11)));
        assert!(loads.next_ready("alice", |_| false).is_none());
        assert_eq!(loads.waiting.len(), 1, "bob's waits on");
    }
}
