//! What the router emits, through its action queue: deliveries (recorded in
//! the session's SM ledger first, see [`Delivery`]), offline stores whose
//! commit an SM sender's acknowledgement waits for, stanza errors, kicks.

use bytes::Bytes;
use cm_protocol::{Frame, Kind, RouteHeader, SessionId};
use xmpp_stream::stanza::{StanzaKind, error_reply, inspect};
use xmpp_stream::{StanzaCondition, StreamCondition};

use super::sm_sessions::{Admission, Delivery};
use super::{Action, Bounce, Router};
use crate::address;
use crate::routing::{NodeId, SessionAddr};

impl Router {
    /// Answers the stanza `header` describes, from the sender's session,
    /// with a stanza error (from whom it was addressed to, or the server).
    pub(super) fn reply_error(
        &mut self,
        node: NodeId,
        sid: SessionId,
        header: &RouteHeader,
        condition: StanzaCondition,
    ) {
        let kind = stanza_kind(header.kind);
        let from = header.to.clone().unwrap_or_else(|| self.domain.clone());
        self.stats.errors += 1;
        let reply = error_reply(
            kind,
            header.id.as_deref(),
            &from,
            &header.from,
            condition,
            None,
        );
        self.deliver((node, sid), reply);
    }

    /// Sends a stanza error to the session of full JID `to_full`, if bound,
    /// as if from `from` (answering a stanza that turned out undeliverable).
    pub(super) fn error_to(
        &mut self,
        to_full: &str,
        kind: StanzaKind,
        id: Option<&str>,
        from: &str,
        condition: StanzaCondition,
    ) {
        if let Some(name) = self.component_of(to_full) {
            // a component's stanza: the error goes back to it
            self.stats.errors += 1;
            let reply = error_reply(kind, id, from, to_full, condition, None);
            self.send_to_component(&name, reply);
            return;
        }
        let Some((bare, res)) = address::split_full(to_full) else {
            return;
        };
        let reply = || error_reply(kind, id, from, to_full, condition, None);
        let Some(r) = self.table.full(bare, res) else {
            // the sender may be another core's user
            let header_kind = match kind {
                StanzaKind::Message => Kind::Message,
                StanzaKind::Presence => Kind::Presence,
                StanzaKind::Iq => Kind::Iq,
            };
            if !self.serves(bare) {
                self.stats.errors += 1;
                self.send_to_peer(to_full, header_kind, from, reply());
            }
            return;
        };
        let target = (r.node, r.sid);
        self.stats.errors += 1;
        self.deliver(target, reply());
    }

    /// Delivers a stanza that is not a chat or normal message (an IQ, a
    /// presence, an error).
    pub(super) fn deliver(&mut self, addr: SessionAddr, payload: Bytes) {
        self.deliver_as(addr, payload, Delivery::Other)
    }

    /// Delivers a message of type `mtype`: a chat or normal one waits
    /// behind the session's stored messages.
    pub(super) fn deliver_message(&mut self, addr: SessionAddr, payload: Bytes, mtype: &str) {
        let delivery = match mtype {
            "chat" | "normal" => Delivery::Storable,
            _ => Delivery::Other,
        };
        self.deliver_as(addr, payload, delivery)
    }

    /// Delivers a carbon copy or a query result: never queued behind stored
    /// messages (it is not part of the conversation's order).
    pub(super) fn deliver_copy(&mut self, addr: SessionAddr, payload: Bytes) {
        self.deliver_as(addr, payload, Delivery::Copy)
    }

    /// Delivers a stanza as what it is (see [`Delivery`]): through the
    /// session's SM ledger first, which may hold, store or drop it.
    pub(super) fn deliver_as(
        &mut self,
        (node, sid): SessionAddr,
        payload: Bytes,
        delivery: Delivery,
    ) {
        // A roster change's deliveries wait for its commit.
        let Some(((node, sid), payload, delivery)) =
            self.hold_for_change((node, sid), payload, delivery)
        else {
            return;
        };
        let (admission, live) = self.track((node, sid), &payload, delivery);
        // the live row (if this is the message's first) goes after the
        // delivery: the recipient does not wait for it, only the sender's
        // acknowledgement does
        let live = live.map(|(ticket, user)| (ticket, user, payload.clone()));
        match admission {
            Admission::Untracked | Admission::Send => {
                self.stats.delivered += 1;
                self.send(node, Frame::Deliver { sid, payload });
            }
            // held for a detached session: if none of the user's available
            // sessions is attached, the user's phone may be woken
            Admission::Held if delivery == Delivery::Storable => {
                self.push_if_away((node, sid), &payload);
            }
            // kept for the resumption, stored behind older stored messages,
            // or dropped (a copy for a client far behind)
            Admission::Held | Admission::Dropped | Admission::Spill { .. } => {}
        }
        if let Some((ticket, user, payload)) = live {
            self.store_live(user, payload, ticket);
        }
    }

    /// Stores a chat or normal message its session cannot take (its ledger
    /// is full or behind stored messages, or its link failed); if storing
    /// fails, the sender its `from` names is answered.
    pub(super) fn store_spilled(&mut self, user: String, payload: Bytes) {
        // (its user may be away: a detached session's full ledger; once
        // per message)
        let wake =
            !self.rerouting && !self.push_counted && self.away(&format!("{user}@{}", self.domain));
        self.push_counted |= wake;
        self.store_waking(user, payload, Bounce::default(), wake);
    }

    /// A durable write of a message failed for good: its sender (from the
    /// bounce, else from the message's own `from`, stamped by the CM) gets
    /// `condition` as an error from the recipient as addressed, and only
    /// then does the stanza count as handled for an SM sender's
    /// acknowledgement, so an `<a h/>` never covers a message that was
    /// neither stored nor refused. An error is never answered.
    pub(super) fn store_failed(
        &mut self,
        bounce: Bounce,
        payload: &[u8],
        condition: StanzaCondition,
        origin: Option<(u64, u32)>,
    ) {
        let answer = if !bounce.sender.is_empty() {
            Some(bounce)
        } else {
            inspect(payload).ok().and_then(|top| {
                (top.attr("type") != Some("error")).then(|| Bounce {
                    sender: top.attr("from").unwrap_or_default().to_owned(),
                    to: top.attr("to").unwrap_or_default().to_owned(),
                    id: top.attr("id").map(str::to_owned),
                })
            })
        };
        match answer {
            Some(b) if !b.sender.is_empty() => {
                tracing::warn!(sender = b.sender, to = b.to, %condition, "a message could not be stored; its sender is told");
                self.error_to(
                    &b.sender,
                    StanzaKind::Message,
                    b.id.as_deref(),
                    &b.to,
                    condition,
                );
            }
            _ => {
                tracing::error!(%condition, "a message could not be stored and has no sender to tell")
            }
        }
        if let Some(origin) = origin {
            self.stored(origin);
        }
    }

    /// Stores a message offline. If an SM sender's stanza is being routed,
    /// its acknowledgement waits for the commit.
    pub(super) fn store(&mut self, user: String, payload: Bytes, bounce: Bounce) {
        let wake = !self.rerouting;
        self.store_waking(user, payload, bounce, wake);
    }

    /// [`Router::store`], waking the user's phone once stored if `wake`.
    fn store_waking(&mut self, user: String, payload: Bytes, bounce: Bounce, wake: bool) {
        self.stats.offline_stored += 1;
        let origin = self.hold_ack();
        self.emit(Action::StoreOffline {
            user,
            payload,
            bounce,
            origin,
            live: None,
            wake: wake && self.push_offered(),
        });
    }

    /// Writes the live row `ticket` of a message delivered live to SM
    /// sessions of `user`. If an SM sender's stanza is being routed, its
    /// acknowledgement waits for the commit; if the write fails, the sender
    /// (the message's `from`) is answered, as for any store.
    pub(super) fn store_live(&mut self, user: String, payload: Bytes, ticket: u64) {
        let origin = self.hold_ack();
        self.emit(Action::StoreOffline {
            user,
            payload,
            bounce: Bounce::default(),
            origin,
            live: Some(ticket),
            wake: false,
        });
    }

    /// The SM stanza being routed waits for a storage commit before it is
    /// acknowledged; returns the origin to report [`super::Input::Stored`] for.
    pub(super) fn hold_ack(&mut self) -> Option<(u64, u32)> {
        let origin = self.origin;
        if let Some(origin) = origin {
            if super::shards::Inbound::is_inbound(origin.0) {
                self.inbound.write_started(origin.0);
            } else {
                self.sessions.store_started(origin);
            }
        }
        origin
    }

    /// Sends a frame to a node (not recorded in any ledger).
    pub(super) fn send(&mut self, node: NodeId, frame: Frame) {
        self.emit(Action::Send { node, frame });
    }

    /// Queues an action for the driver ([`Router::poll_action`]).
    pub(super) fn emit(&mut self, action: Action) {
        self.out.push_back(action);
    }

    /// Ends a session with a stream error.
    pub(super) fn kick(&mut self, (node, sid): SessionAddr, condition: StreamCondition) {
        let condition = condition.name().into();
        self.send(node, Frame::Kick { sid, condition });
    }
}

/// The stanza kind of a routing header's kind.
pub(super) fn stanza_kind(kind: Kind) -> StanzaKind {
    match kind {
        Kind::Message => StanzaKind::Message,
        Kind::Presence => StanzaKind::Presence,
        Kind::Iq => StanzaKind::Iq,
    }
}
