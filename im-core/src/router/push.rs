//! The router's side of push notifications (XEP-0357): a client's
//! `<enable/>` and `<disable/>` are stored, then answered and told to the
//! [`PushService`]; a message held for a user with no available session
//! (stored offline, or in a detached SM session's ledger) is a trigger;
//! an available session tells the service the user is back; what the
//! service decides goes out: a publish to the app server (an external
//! component, XEP-0114), a registration removed, registrations loaded.

use std::time::Instant;

use bytes::Bytes;
use cm_protocol::RouteHeader;
use xmpp_stream::element::Element;
use xmpp_stream::stanza::{StanzaKind, error_reply};
use xmpp_stream::{StanzaCondition, ns};

use super::{Action, Router};
use crate::address;
use crate::push::{self, PushAction, PushRequest, PushService, Trigger};
use crate::routing::SessionAddr;
use crate::storage::PushRegistration;

/// What a stored push registration change answers, once it committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushChange {
    /// The user (local part).
    pub user: String,
    /// The change.
    pub request: PushRequest,
    /// The asking session.
    pub to: SessionAddr,
    /// The IQ result to send once it committed.
    pub result: Bytes,
    /// The IQ error to send if it failed.
    pub error: Bytes,
}

impl Router {
    /// Offers push notifications (XEP-0357) through `service`.
    pub fn with_push(mut self, service: PushService) -> Self {
        self.push = Some(service);
        self
    }

    /// Whether push notifications are offered: the service is on and an
    /// app server can be reached (a component is configured).
    pub(super) fn push_offered(&self) -> bool {
        self.push.is_some() && self.components_configured()
    }

    /// Whether `bare` has no available session a message reaches now (none,
    /// or only detached ones).
    pub(super) fn away(&self, bare: &str) -> bool {
        !self
            .others(bare, None)
            .into_iter()
            .any(|a| !self.sessions.is_detached(a))
    }

    /// A client's `<enable/>` or `<disable/>` (to its own account).
    pub(super) fn push_iq(
        &mut self,
        addr: SessionAddr,
        header: &RouteHeader,
        child: &Element,
        sender_bare: &str,
    ) {
        if !self.push_offered() {
            return self.reply_error(addr.0, addr.1, header, StanzaCondition::ServiceUnavailable);
        }
        if header.stanza_type.as_deref() != Some("set") {
            return self.reply_error(addr.0, addr.1, header, StanzaCondition::BadRequest);
        }
        let request = match push::parse_request(child) {
            Ok(r) => r,
            Err(e) => return self.reply_error(addr.0, addr.1, header, e.condition()),
        };
        // an app server is reached as a component of this server: another
        // one could never be told (no federation)
        if let PushRequest::Enable { jid, .. } = &request
            && self.component_of(jid).is_none()
        {
            return self.reply_error(
                addr.0,
                addr.1,
                header,
                StanzaCondition::RemoteServerNotFound,
            );
        }
        let mut result = Element::new("iq", ns::CLIENT)
            .with_attr("type", "result")
            .with_attr("to", header.from.clone());
        if let Some(id) = &header.id {
            result.set_attr("id", id.clone());
        }
        let error = error_reply(
            StanzaKind::Iq,
            header.id.as_deref(),
            &self.domain,
            &header.from,
            StanzaCondition::InternalServerError,
            None,
        );
        let change = PushChange {
            user: address::local(sender_bare).unwrap_or_default().to_owned(),
            request,
            to: addr,
            result: Bytes::from(result.to_bytes(ns::CLIENT)),
            error,
        };
        self.emit(Action::WritePush { change });
    }

    /// A push registration change was stored (`ok`) or not.
    pub(super) fn push_written(&mut self, change: PushChange, ok: bool, now: Instant) {
        let PushChange {
            user,
            request,
            to,
            result,
            error,
        } = change;
        if self.table.jid_of(to.0, to.1).is_some() {
            self.deliver(to, if ok { result } else { error });
        }
        if !ok {
            return;
        }
        if let Some(service) = &mut self.push {
            match request {
                PushRequest::Enable { jid, node, options } => service.enable(
                    &user,
                    PushRegistration {
                        jid,
                        node,
                        options,
                        created: 0,
                    },
                ),
                PushRequest::Disable { jid, node } => service.disable(&user, &jid, node.as_deref()),
            }
        }
        self.push_actions(now);
    }

    /// A message for `user` (local part) from `from` was held for a user
    /// with no available session, or for a detached one: a trigger if it
    /// is one a person would be woken for (true).
    pub(super) fn push_message(&mut self, user: &str, from: &str, payload: &[u8]) -> bool {
        if !self.push_offered() {
            return false;
        }
        let (Some(now), Some(service)) = (self.now, self.push.as_mut()) else {
            return false;
        };
        // only what a person would be woken for: a message with a body, or
        // an end-to-end encrypted one (OMEMO); not chat states, receipts
        // or markers
        let Ok(message) = Element::parse(payload, ns::CLIENT) else {
            return false;
        };
        let encrypted = message.elements().any(|e| {
            e.name == "encrypted"
                && (e.ns == "eu.siacs.conversations.axolotl" || e.ns.starts_with("urn:xmpp:omemo:"))
        });
        let body = message.child("body", ns::CLIENT).map(|b| b.text());
        if body.is_none() && !encrypted {
            return false;
        }
        service.notify(
            now,
            user,
            Trigger::Message {
                from: address::bare(from).to_owned(),
                body,
            },
        );
        self.push_actions(now);
        true
    }

    /// A message was held for session `addr`, which is detached: if none
    /// of its user's available sessions is attached, the user is away.
    pub(super) fn push_if_away(&mut self, addr: SessionAddr, payload: &[u8]) {
        // (once per message, not again when a ledger's messages are
        // routed anew)
        if !self.push_offered() || self.push_counted || self.rerouting {
            return;
        }
        let Some(jid) = self.table.jid_of(addr.0, addr.1) else {
            return;
        };
        let bare = address::bare(jid).to_owned();
        if !self.away(&bare) {
            return;
        }
        let from = xmpp_stream::stanza::inspect(payload)
            .ok()
            .and_then(|t| t.attr("from").map(str::to_owned))
            .unwrap_or_default();
        if let Some(user) = address::local(&bare).map(str::to_owned) {
            self.push_counted = self.push_message(&user, &from, payload);
        }
    }

    /// A message for `user` (local part) that no session took is stored.
    pub(super) fn push_stored(&mut self, user: &str, payload: &[u8]) {
        // (the user may have come back while it was stored: the flush
        // delivers it)
        let bare = format!("{user}@{}", self.domain);
        if !self.serves(&bare) || !self.away(&bare) {
            return;
        }
        let from = xmpp_stream::stanza::inspect(payload)
            .ok()
            .and_then(|t| t.attr("from").map(str::to_owned))
            .unwrap_or_default();
        self.push_message(user, &from, payload);
    }

    /// A subscription request for `user` (local part) from `from` found
    /// no available session.
    pub(super) fn push_subscription(&mut self, user: &str, from: &str) {
        let (Some(now), Some(service)) = (self.now, self.push.as_mut()) else {
            return;
        };
        service.notify(
            now,
            user,
            Trigger::Subscription {
                from: address::bare(from).to_owned(),
            },
        );
        self.push_actions(now);
    }

    /// An available session of `bare`'s came (or came back).
    pub(super) fn push_user_online(&mut self, bare: &str) {
        if let (Some(service), Some(user)) = (&mut self.push, address::local(bare)) {
            service.user_online(user);
        }
    }

    /// The registrations asked for by [`Action::LoadPush`] (`None`: the
    /// load failed).
    pub(super) fn push_loaded(
        &mut self,
        user: &str,
        registrations: Option<Vec<PushRegistration>>,
        now: Instant,
    ) {
        let Some(service) = &mut self.push else {
            return;
        };
        match registrations {
            Some(r) => service.registrations_loaded(user, r),
            None => service.load_failed(user),
        }
        self.push_actions(now);
    }

    /// An IQ answer from a component to a user's bare JID: a publish's
    /// answer, if the service sent it (true).
    pub(super) fn push_answer(&mut self, header: &RouteHeader, payload: &[u8]) -> bool {
        let (Some(now), Some(service)) = (self.now, self.push.as_mut()) else {
            return false;
        };
        let Some(id) = header
            .id
            .as_deref()
            .filter(|i| i.starts_with(push::ID_PREFIX))
        else {
            return false;
        };
        let taken = match header.stanza_type.as_deref() {
            Some("result") => service.published(now, id, &header.from),
            Some("error") => match Element::parse(payload, ns::CLIENT) {
                Ok(el) => {
                    let (kind, condition) = push::publish_error(&el);
                    service.publish_failed(now, id, &header.from, kind, condition)
                }
                Err(_) => false,
            },
            _ => false,
        };
        self.push_actions(now);
        taken
    }

    /// The push service's deadlines reached `now`.
    pub(super) fn push_timeout(&mut self, now: Instant) {
        if let Some(service) = &mut self.push {
            service.handle_timeout(now);
            self.push_actions(now);
        }
    }

    /// Forgets the users of slots this core no longer owns.
    pub(super) fn push_moved(&mut self) {
        let (Some(shard), Some(service)) = (&self.shard, &mut self.push) else {
            return;
        };
        let domain = self.domain.clone();
        service
            .retain(|user| shard.owner(&format!("{user}@{domain}")) == super::shards::Owner::Local);
    }

    /// Carries out what the push service decided.
    fn push_actions(&mut self, now: Instant) {
        while let Some(action) = self.push.as_mut().and_then(PushService::poll_action) {
            match action {
                PushAction::LoadRegistrations { user } => self.emit(Action::LoadPush { user }),
                PushAction::Disable { user, jid, node } => {
                    self.emit(Action::DisablePush { user, jid, node })
                }
                PushAction::Publish {
                    id,
                    user: _,
                    to,
                    payload,
                } => {
                    // an app server is an external component of this
                    // server: one not configured is gone for good (the
                    // registration is disabled), one configured but not
                    // connected here is tried again
                    let failure = match self.component_of(&to) {
                        Some(name) if self.send_to_component(&name, payload) => None,
                        Some(_) => {
                            Some((push::ErrorType::Wait, StanzaCondition::RemoteServerNotFound))
                        }
                        None => Some((push::ErrorType::Cancel, StanzaCondition::ItemNotFound)),
                    };
                    if let (Some((kind, condition)), Some(service)) = (failure, &mut self.push) {
                        service.publish_failed(now, &id, &to, kind, condition);
                    }
                }
            }
        }
    }
}
