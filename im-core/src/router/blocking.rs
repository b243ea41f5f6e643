//! What a block list (XEP-0191) does to stanzas. A user's list is in
//! memory with the user's roster (loaded while the user has a session), so
//! the core that serves the user applies it:
//!
//! - **outbound**, to what the user's sessions send: a message or IQ
//!   request to a blocked JID is answered with `not-acceptable` and
//!   `<blocked/>` (§3.5); any other stanza to it is dropped; the user's
//!   presence does not go to blocked contacts;
//! - **inbound**, to what reaches the user: from a blocked JID, a message
//!   or IQ request is answered with `service-unavailable` (as if the user
//!   did not exist), anything else dropped; a blocked contact's presence
//!   and probes are not delivered or answered.
//!
//! A message for a user with no session (roster not in memory) is checked
//! by its offline store job against the stored list instead (see the
//! driver's `StoreOffline`).
//!
//! Cancelling a subscription (`unsubscribe`, `unsubscribed`) goes through
//! a block both ways, so both rosters stay true; a user's own JIDs are
//! never blocked for the user. Messages stored before a block are dropped
//! (and removed) when they would be delivered.
//!
//! Known gaps: an IQ to a user's bare JID that the server answers for the
//! account (a vCard get) is answered without the list when the user's
//! roster is not in memory (no session here, or another core's user); in
//! a cluster the sender's core has archived a message for both users
//! before the recipient's core refuses it, so it is still in the
//! blocker's archive; and an item naming a full JID of another core's
//! user does not stop the user's presence to that resource (the sender's
//! core knows only the bare JIDs of other cores' sessions).

use bytes::Bytes;
use cm_protocol::{Kind, RouteHeader};
use xmpp_stream::element::Element;
use xmpp_stream::{StanzaCondition, ns};

use super::Router;
use super::output::stanza_kind;
use crate::routing::SessionAddr;
use crate::{address, block_list};

impl Router {
    /// Whether `user` (a bare JID this core holds the roster of) blocks
    /// `jid`; false if its roster is not in memory, and for the user's own
    /// JIDs (a block of the own domain leaves the own sessions alone).
    pub(super) fn blocks(&self, user: &str, jid: &str) -> bool {
        address::bare(jid) != user
            && self
                .rosters
                .get(user)
                .is_some_and(|r| block_list::matches(r.blocked(), jid))
    }

    /// Whether `user` (a bare JID this core holds the roster of) blocks
    /// anyone at all.
    pub(super) fn blocks_anyone(&self, user: &str) -> bool {
        self.rosters
            .get(user)
            .is_some_and(|r| !r.blocked().is_empty())
    }

    /// Whether a stored message for `user` (a bare JID) comes from a JID
    /// the user blocks (its `from`, as the CM stamped it).
    pub(super) fn stored_from_blocked(&self, user: &str, payload: &[u8]) -> bool {
        self.blocks_anyone(user)
            && xmpp_stream::stanza::inspect(payload)
                .ok()
                .and_then(|top| top.attr("from").map(|f| self.blocks(user, f)))
                .unwrap_or(false)
    }

    /// A stanza of `header` from a session of `sender_bare`, to `to`, which
    /// the sender blocks: a message or IQ request is refused with
    /// `not-acceptable` and `<blocked/>` (XEP-0191 §3.5), anything else
    /// dropped. False (nothing done) if the sender does not block `to`, or
    /// `to` is the sender's own account or the server.
    pub(super) fn blocked_outbound(
        &mut self,
        (node, sid): SessionAddr,
        header: &RouteHeader,
        to: &str,
        sender_bare: &str,
    ) -> bool {
        if to == self.domain || lets_through(header) || !self.blocks(sender_bare, to) {
            return false;
        }
        if wants_error(header) {
            let kind = stanza_kind(header.kind);
            let mut error = Element::new(kind.name(), ns::CLIENT)
                .with_attr("type", "error")
                .with_attr("from", to.to_owned())
                .with_attr("to", header.from.clone())
                .with_child(
                    Element::new("error", ns::CLIENT)
                        .with_attr("type", "cancel")
                        .with_child(Element::new("not-acceptable", ns::STANZA_ERRORS))
                        .with_child(Element::new("blocked", ns::BLOCKING_ERRORS)),
                );
            if let Some(id) = &header.id {
                error.set_attr("id", id.clone());
            }
            self.stats.errors += 1;
            self.deliver((node, sid), Bytes::from(error.to_bytes(ns::CLIENT)));
        }
        true
    }

    /// A stanza of `header` for `recipient` (a bare JID this core serves),
    /// refused if `recipient` blocks its sender: a message or IQ request is
    /// answered with `service-unavailable`, anything else dropped. False
    /// (nothing done) if not blocked.
    pub(super) fn blocked_inbound(&mut self, recipient: &str, header: &RouteHeader) -> bool {
        if lets_through(header) || !self.blocks(recipient, &header.from) {
            return false;
        }
        if wants_error(header) {
            self.error_to(
                &header.from,
                stanza_kind(header.kind),
                header.id.as_deref(),
                header.to.as_deref().unwrap_or(recipient),
                StanzaCondition::ServiceUnavailable,
            );
        }
        true
    }
}

/// Whether a stanza goes through a block either way: a cancellation of a
/// subscription (`unsubscribe`, `unsubscribed`), which only takes away
/// what the other sees, so that the rosters on both sides stay true.
fn lets_through(header: &RouteHeader) -> bool {
    header.kind == Kind::Presence
        && matches!(
            header.stanza_type.as_deref(),
            Some("unsubscribe" | "unsubscribed")
        )
}

/// Whether a refused stanza is answered with an error: a message (not an
/// error itself) or an IQ request.
fn wants_error(header: &RouteHeader) -> bool {
    let stype = header.stanza_type.as_deref();
    match header.kind {
        Kind::Message => stype != Some("error"),
        Kind::Iq => matches!(stype, Some("get" | "set")),
        Kind::Presence => false,
    }
}
