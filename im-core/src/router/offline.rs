//! Offline delivery: a chat or normal message no session can take is
//! stored ([`Action::StoreOffline`], see [`Router::store`]), and the stored
//! ones go to a session once it can take them: asked for
//! ([`Action::FlushOffline`]), delivered when loaded (through the session's
//! SM ledger, if any), and removed ([`Action::RemoveOffline`]) only once
//! the client acknowledged them, or, for a session without stream
//! management, once they were handed to its link (see `stored_rows`). One
//! flush per session at a time; an SM session's new messages are stored
//! behind the stored ones meanwhile, so none overtakes them.
//!
//! A message delivered live to SM sessions is stored too, as a live row
//! (see `live_rows`): it is removed like a stored one once a client
//! acknowledged it, and otherwise stays for the next flush, so a core crash
//! loses no message acknowledged to its sender.

use std::time::Instant;

use bytes::Bytes;
use cm_protocol::Frame;
use xmpp_stream::element::{Element, Node};
use xmpp_stream::ns;
use xmpp_stream::stanza::{StanzaKind, inspect};

use super::sm_sessions::{Flushed, Row};
use super::{Action, Router, contains};
use crate::routing::SessionAddr;

/// The namespace of chat state notifications (XEP-0085).
const CHAT_STATES: &str = "http://jabber.org/protocol/chatstates";

impl Router {
    /// Asks the driver to load the session's stored messages. For an SM
    /// session, new messages are stored behind them until the flush is done,
    /// so none overtakes a stored one.
    pub(super) fn request_flush(&mut self, addr: SessionAddr) {
        if !self.sessions.start_flush(addr) {
            return;
        }
        if let Some(user) = self.user_of(addr) {
            self.load_stored(user, addr);
        }
    }

    /// Asks the driver to load `user`'s stored messages for `to`, unless a
    /// load for `to` is under way (then it is asked for once that ends).
    fn load_stored(&mut self, user: String, to: SessionAddr) {
        if !self.loads.start(to) {
            return;
        }
        self.stored_rows.load_started(&user);
        self.emit(Action::FlushOffline { user, to });
    }

    /// The load for `to` of `user`'s stored messages ended (its messages
    /// were handed out): one asked for meanwhile is asked for now, for
    /// whoever has the session now, with new messages stored behind it if
    /// it has SM (it may have enabled SM since).
    fn load_ended(&mut self, user: &str, to: SessionAddr) {
        self.stored_rows.load_ended(user);
        if self.loads.end(to)
            && let Some(user) = self.user_of(to)
        {
            self.sessions.flush_again(to);
            self.load_stored(user, to);
        }
    }

    /// Stored messages loaded for `to`. The load may have read live rows
    /// whose ids have not come back yet (their writes were queued ahead of
    /// it, and the driver reports each outcome on its own): such a row is
    /// not yet known to be out with a session, so handing it out now would
    /// deliver its message twice. So while a live row of the user issued
    /// before now is being written, the loaded messages wait (see
    /// [`Router::live_written`]); every write ends within the storage
    /// deadline, so they wait boundedly.
    pub(super) fn stored_loaded(
        &mut self,
        user: String,
        to: SessionAddr,
        messages: Vec<(i64, Bytes)>,
    ) {
        let mark = self.live_rows.last_issued();
        if self.live_rows.writing_upto(&user, mark) {
            self.loads.wait(&user, to, messages, mark);
            return;
        }
        self.deliver_stored(&user, to, messages);
        self.load_ended(&user, to);
    }

    /// Delivers the loads of `user` that were waiting for live rows now
    /// written, oldest first.
    fn release_loads(&mut self, user: &str) {
        while let Some(w) = {
            let live = &self.live_rows;
            self.loads
                .next_ready(user, |mark| live.writing_upto(user, mark))
        } {
            self.deliver_stored(user, w.to, w.messages);
            self.load_ended(user, w.to);
        }
    }

    /// Stored messages loaded for `to` (possibly none): deliver them
    /// (through its ledger, ahead of anything stored meanwhile). Those in
    /// its ledger stay stored until the client acknowledges them; those
    /// handed to a session without SM are removed now (nothing would ever
    /// acknowledge them). Rows out with a session already are skipped.
    fn deliver_stored(&mut self, user: &str, to: SessionAddr, messages: Vec<(i64, Bytes)>) {
        self.flush_retries.loaded(to);
        if self.table.jid_of(to.0, to.1).is_none() {
            return; // gone meanwhile: they stay stored
        }
        let total = messages.len();
        let mut delivered = 0;
        let mut written = Vec::new();
        let bare = format!("{user}@{}", self.domain);
        for (id, payload) in messages {
            if !self.stored_rows.wanted(user, id) {
                delivered += 1;
                continue;
            }
            if self.stored_from_blocked(&bare, &payload) {
                // stored before the user blocked its sender: removed, not
                // delivered (XEP-0191)
                self.stored_rows.handed(user, id);
                written.push(id);
                delivered += 1;
                continue;
            }
            let send = match self.sessions.push_flushed(to, &payload, id) {
                Flushed::Untracked => {
                    written.push(id);
                    true
                }
                Flushed::Full => break,
                Flushed::Pushed { attached } => attached,
            };
            self.stored_rows.handed(user, id);
            if send {
                self.stats.delivered += 1;
                self.send(to.0, Frame::Deliver { sid: to.1, payload });
            }
            delivered += 1;
        }
        // Without SM, handed to the link is as far as anyone can tell.
        self.stored_acked(user, &written);
        if self.sessions.finish_flush(to, delivered == total) {
            self.request_flush(to);
        }
    }

    /// The flush of `to` could not load the stored messages at `now`: the
    /// session keeps holding new messages behind them (its flush counts as
    /// under way), and the flush is asked for again after a backoff. A
    /// session gone meanwhile is not retried (a resumption flushes again).
    pub(super) fn flush_failed(&mut self, user: &str, to: SessionAddr, now: Instant) {
        self.stored_rows.load_ended(user);
        self.loads.end(to);
        if self.table.jid_of(to.0, to.1).is_none() {
            self.flush_retries.loaded(to);
            return;
        }
        tracing::warn!(
            node = to.0,
            sid = to.1,
            "loading stored messages failed: retrying"
        );
        self.flush_retries.failed(to, now);
    }

    /// A message for `user` was stored late (after its store was tried
    /// again): the user's best available session, if any, gets a flush.
    pub(super) fn stored_late(&mut self, user: &str) {
        let bare = format!("{user}@{}", self.domain);
        if let Some(&best) = self.table.best(&bare).first() {
            self.request_flush(best);
        }
    }

    /// Asks again for the failed flushes due at `now` (of sessions still
    /// there).
    pub(super) fn retry_flushes(&mut self, now: Instant) {
        while let Some(to) = self.flush_retries.take_due(now) {
            match self.user_of(to) {
                Some(user) => {
                    // (the session may have enabled SM since the load failed)
                    self.sessions.flush_again(to);
                    self.load_stored(user, to);
                }
                None => self.flush_retries.loaded(to),
            }
        }
    }

    /// Stored messages of `user` (their rows) were acknowledged: storage
    /// removes them, up to the first one still out with a session.
    pub(super) fn stored_acked(&mut self, user: &str, rows: &[i64]) {
        if let Some(removal) = self.stored_rows.acked(user, rows) {
            self.emit(Action::RemoveOffline {
                user: user.to_owned(),
                upto: removal.upto,
                rows: removal.rows,
            });
        }
    }

    /// A session of `user` ended holding these stored messages (rows with
    /// their payloads) and live rows still being written (tickets)
    /// unacknowledged: they stay stored for a flush, but chat states,
    /// which are removed. With live rows still being written that no
    /// other session holds, the user's best session is flushed now: its
    /// load queues behind those writes, so it reads them, and new messages
    /// wait behind them meanwhile (else a new message could reach that
    /// session ahead of them). A row another session still holds is left
    /// to it (a flush could deliver it there a second time).
    pub(super) fn stored_ended(
        &mut self,
        user: &str,
        rows: Vec<(i64, Bytes)>,
        tickets: &[(u64, Bytes)],
    ) {
        let (states, kept): (Vec<_>, Vec<_>) = rows
            .into_iter()
            .partition(|(_, payload)| chat_state_only(payload));
        let kept: Vec<i64> = kept.into_iter().map(|(row, _)| row).collect();
        self.stored_returned(user, &kept);
        let states: Vec<i64> = states.into_iter().map(|(row, _)| row).collect();
        self.stored_acked(user, &states);
        let (states, kept): (Vec<_>, Vec<_>) = tickets
            .iter()
            .partition(|(_, payload)| chat_state_only(payload));
        let states: Vec<u64> = states.into_iter().map(|(ticket, _)| *ticket).collect();
        self.live_rows.acked(&states);
        let unheld = kept.iter().any(|(ticket, _)| {
            !self
                .live_rows
                .holders(*ticket)
                .iter()
                .any(|&token| self.sessions.has_token(token))
        });
        if unheld {
            self.flush_best(user);
        }
    }

    /// The live row `ticket` was written as `row` (none: it failed). Its
    /// ledger entries hold the row now; what happened to them meanwhile is
    /// applied: acknowledged, it is removed; handed back by every session
    /// that held it, it stays stored and a flush is asked for. Loads that
    /// waited for it go on once nothing they wait for is being written.
    pub(super) fn live_written(&mut self, ticket: u64, row: Option<i64>) {
        let Some(pending) = self.live_rows.written(ticket) else {
            return;
        };
        let stored = row.map_or(Row::None, Row::Stored);
        let mut held = 0;
        for &token in &pending.holders {
            held += u32::from(self.sessions.resolve(token, ticket, stored));
        }
        let user = pending.user;
        if let Some(row) = row {
            if pending.acked {
                self.stored_rows.live(&user, row, 1);
                self.stored_acked(&user, &[row]);
            } else if held > 0 {
                self.stored_rows.live(&user, row, held);
            } else if !self.stored_rows.is_out(&user, row) {
                // no session holds it: stored, for the next flush, asked
                // for now
                self.stored_rows.live(&user, row, 1);
                self.stored_returned(&user, &[row]);
            }
        }
        self.release_loads(&user);
    }

    /// A session of `user` ended without acknowledging these stored
    /// messages: they stay stored, and go to the user's best available
    /// session, if any, by a flush.
    pub(super) fn stored_returned(&mut self, user: &str, rows: &[i64]) {
        if rows.is_empty() || self.stored_rows.returned(user, rows).is_empty() {
            return;
        }
        self.flush_best(user);
    }

    /// Flushes the stored messages of `user` to its best available
    /// session, if any.
    fn flush_best(&mut self, user: &str) {
        let bare = format!("{user}@{}", self.domain);
        if let Some(&best) = self.table.best(&bare).first() {
            self.request_flush(best);
        }
    }

    /// A stanza that could not be handed to the link of a session without
    /// SM: stored for its user if it is a chat or normal message (anything
    /// else is lost, as on a broken stream). Nobody is told if storing
    /// fails.
    pub(super) fn store_undeliverable(&mut self, addr: SessionAddr, payload: Bytes) {
        if let Some(user) = self.user_of(addr)
            && storable_message(&payload)
        {
            self.store_spilled(user, payload);
        }
    }
}

/// Whether offline storage takes this stanza (a chat or normal message).
fn storable_message(payload: &[u8]) -> bool {
    inspect(payload).is_ok_and(|top| {
        top.stanza_kind() == Some(StanzaKind::Message)
            && matches!(top.attr("type").unwrap_or("normal"), "normal" | "chat")
    })
}

/// Whether a message carries only chat state notifications (XEP-0085):
/// nothing a user would miss, so not kept for later. Its stamps (delay,
/// stanza ids) do not count.
fn chat_state_only(payload: &[u8]) -> bool {
    if !contains(payload, CHAT_STATES.as_bytes()) || contains(payload, b"<body") {
        return false;
    }
    Element::parse(payload, ns::CLIENT).is_ok_and(|m| {
        let mut states = false;
        let only = m.children.iter().all(|c| match c {
            Node::Element(e) if e.ns == CHAT_STATES => {
                states = true;
                true
            }
            Node::Element(e) => e.ns == ns::DELAY || e.ns == ns::SID,
            _ => true,
        });
        only && states
    })
}
