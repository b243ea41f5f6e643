//! Live rows being written: a chat or normal message delivered live to a
//! user's stream-management sessions is also written to the user's offline
//! table (one row per message and user, however many of the user's
//! sessions took it), so that a core crash before the client's `<a h/>`
//! loses nothing: the next flush delivers it again. The row's id comes back
//! after the write commits; until then the ledger entries hold a ticket
//! this table issued, and what happened to them meanwhile (acknowledged,
//! or their session ended) is remembered here and applied when the id
//! comes ([`LiveRows::written`]).
//!
//! Bounded: an entry lives from the store action to its outcome, which
//! the driver reports exactly once, within the storage deadline; past
//! [`MAX_PENDING_TICKETS`] entries a message still goes live, but without
//! a row, so its sender is answered `resource-constraint` (as when the
//! storage queue is full) rather than acknowledged with nothing durable.

use std::collections::{BTreeSet, HashMap};

/// Most live rows being written at once; the default storage budget
/// (64 MiB at 512 bytes a job) holds at most as many jobs.
pub const MAX_PENDING_TICKETS: usize = 128 * 1024;

/// The live row of the message being routed: one per message and user,
/// however many of the user's sessions take it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum MessageRow {
    /// None asked for yet.
    #[default]
    Unset,
    /// This ticket's row.
    Issued(u64),
    /// Too many live rows are being written: none for this message.
    /// `answered`: its sender was told.
    Refused {
        /// The sender got its error.
        answered: bool,
    },
}

/// A live row whose id has not come back yet.
#[derive(Debug)]
pub(crate) struct Pending {
    /// The recipient (local part).
    pub(crate) user: String,
    /// Resumption tokens of the SM sessions whose ledgers hold it.
    pub(crate) holders: Vec<u64>,
    /// A client acknowledged it: the row is removed once its id is known.
    pub(crate) acked: bool,
}

/// The tickets of live rows being written (see the module docs).
#[derive(Debug)]
pub(crate) struct LiveRows {
    pending: HashMap<u64, Pending>,
    /// The pending tickets of each user (only users with some).
    by_user: HashMap<String, BTreeSet<u64>>,
    next: u64,
    /// Most tickets pending ([`MAX_PENDING_TICKETS`]).
    limit: usize,
}

impl Default for LiveRows {
    fn default() -> Self {
        Self {
            pending: HashMap::new(),
            by_user: HashMap::new(),
            next: 0,
            limit: MAX_PENDING_TICKETS,
        }
    }
}

impl LiveRows {
    /// At most `limit` tickets pending (tests).
    #[cfg(test)]
    pub(crate) fn with_limit(limit: usize) -> Self {
        Self {
            limit,
            ..Self::default()
        }
    }

    /// A ticket for a message about to be written for `user`; none when
    /// too many are being written.
    pub(crate) fn issue(&mut self, user: &str) -> Option<u64> {
        if self.pending.len() >= self.limit {
            return None;
        }
        self.next += 1;
        self.by_user
            .entry(user.to_owned())
            .or_default()
            .insert(self.next);
        self.pending.insert(
            self.next,
            Pending {
                user: user.to_owned(),
                holders: Vec::new(),
                acked: false,
            },
        );
        Some(self.next)
    }

    /// The session with resumption token `token` holds `ticket`'s message.
    pub(crate) fn held_by(&mut self, ticket: u64, token: u64) {
        if let Some(p) = self.pending.get_mut(&ticket) {
            p.holders.push(token);
        }
    }

    /// The resumption tokens of the sessions that took `ticket`'s message.
    pub(crate) fn holders(&self, ticket: u64) -> &[u64] {
        self.pending.get(&ticket).map_or(&[], |p| &p.holders)
    }

    /// A client acknowledged these tickets' messages.
    pub(crate) fn acked(&mut self, tickets: &[u64]) {
        for t in tickets {
            if let Some(p) = self.pending.get_mut(t) {
                p.acked = true;
            }
        }
    }

    /// The write of `ticket` ended (stored or failed): what was remembered.
    pub(crate) fn written(&mut self, ticket: u64) -> Option<Pending> {
        let pending = self.pending.remove(&ticket)?;
        if let Some(tickets) = self.by_user.get_mut(&pending.user) {
            tickets.remove(&ticket);
            if tickets.is_empty() {
                self.by_user.remove(&pending.user);
            }
        }
        Some(pending)
    }

    /// The last ticket issued (0: none yet).
    pub(crate) fn last_issued(&self) -> u64 {
        self.next
    }

    /// Whether a ticket of `user` at or below `mark` is still being
    /// written.
    pub(crate) fn writing_upto(&self, user: &str, mark: u64) -> bool {
        self.by_user
            .get(user)
            .and_then(|t| t.first())
            .is_some_and(|&first| first <= mark)
    }

    /// Live rows being written.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_remembers_its_holders_and_acks_until_written() {
        let mut live = LiveRows::default();
        let t = live.issue("bob").unwrap();
        let u = live.issue("bob").unwrap();
        assert_ne!(t, u);
        live.held_by(t, 7);
        live.held_by(t, 8);
        live.acked(&[t]);
        let p = live.written(t).unwrap();
        assert_eq!(
            (p.user.as_str(), &p.holders[..], p.acked),
            ("bob", &[7, 8][..], true)
        );
        assert!(live.written(t).is_none(), "once");
        assert!(live.writing_upto("bob", u));
        assert!(!live.writing_upto("bob", t), "t is written");
        assert!(!live.writing_upto("alice", u));
        assert!(!live.written(u).unwrap().acked);
        assert!(!live.writing_upto("bob", u));
        assert_eq!(live.len(), 0);
    }
}
