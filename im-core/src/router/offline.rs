//! Offline delivery: a chat or normal message no session can take is
//! stored ([`Action::StoreOffline`], see [`Router::store`]), and the stored
//! ones go to a session once it can take them: asked for
//! ([`Action::FlushOffline`]), delivered when loaded (through the session's
//! SM ledger, if any), and removed ([`Action::RemoveOffline`]) only once
//! the client acknowledged them, or, for a session without stream
//! management, once they were handed to its link (see `stored_rows`). One
//! flush per session at a time; an SM session's new messages are stored
//! behind the stored ones meanwhile, so none overtakes them.

use bytes::Bytes;
use cm_protocol::Frame;
use xmpp_stream::stanza::{StanzaKind, inspect};

use super::sm_sessions::Flushed;
use super::{Action, Router};
use crate::routing::SessionAddr;

impl Router {
    /// Asks the driver to load the session's stored messages. For an SM
    /// session, new messages are stored behind them until the flush is done,
    /// so none overtakes a stored one.
    pub(super) fn request_flush(&mut self, addr: SessionAddr) {
        if !self.sessions.start_flush(addr) {
            return;
        }
        if let Some(user) = self.user_of(addr) {
            self.emit(Action::FlushOffline { user, to: addr });
        }
    }

    /// Stored messages loaded for `to` (possibly none): deliver them
    /// (through its ledger, ahead of anything stored meanwhile). Those in
    /// its ledger stay stored until the client acknowledges them; those
    /// handed to a session without SM are removed now (nothing would ever
    /// acknowledge them). Rows out with a session already are skipped.
    pub(super) fn deliver_stored(
        &mut self,
        user: String,
        to: SessionAddr,
        messages: Vec<(i64, Bytes)>,
    ) {
        if self.table.jid_of(to.0, to.1).is_none() {
            return; // gone meanwhile: they stay stored
        }
        let total = messages.len();
        let mut delivered = 0;
        let mut written = Vec::new();
        for (id, payload) in messages {
            if !self.stored_rows.wanted(&user, id) {
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
            self.stored_rows.handed(&user, id);
            if send {
                self.stats.delivered += 1;
                self.send(to.0, Frame::Deliver { sid: to.1, payload });
            }
            delivered += 1;
        }
        // Without SM, handed to the link is as far as anyone can tell.
        self.stored_acked(&user, &written);
        if self.sessions.finish_flush(to, delivered == total) {
            self.request_flush(to);
        }
    }

    /// Stored messages of `user` (their rows) were acknowledged: storage
    /// removes them, up to the first one still out with a session.
    pub(super) fn stored_acked(&mut self, user: &str, rows: &[i64]) {
        if let Some(upto) = self.stored_rows.acked(user, rows) {
            self.emit(Action::RemoveOffline {
                user: user.to_owned(),
                upto,
            });
        }
    }

    /// A session of `user` ended without acknowledging these stored
    /// messages: they stay stored, and go to the user's best available
    /// session, if any, by a flush.
    pub(super) fn stored_returned(&mut self, user: &str, rows: &[i64]) {
        if rows.is_empty() {
            return;
        }
        self.stored_rows.returned(user, rows);
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
