//! External components (XEP-0114) in the router: which domains are
//! components' and which of them are connected here
//! ([`Input::ComponentUp`](super::Input::ComponentUp),
//! [`Input::ComponentDown`](super::Input::ComponentDown)), stanzas from
//! this core's users to them ([`Action::ToComponent`]), and stanzas from
//! them ([`Input::FromComponent`](super::Input::FromComponent)), routed to
//! local users as a stanza from another server would be.
//!
//! - **To a component.** A stanza from a session to a component's domain
//!   goes to it as it came (the CM stamped its `from`). A component that is
//!   not connected here answers IQ requests and messages with
//!   `service-unavailable` (RFC 6120 §10.3: the server answers for a
//!   service it hosts that cannot take the stanza); presence is dropped.
//!   Presence to a component is directed presence: the session's
//!   unavailable presence reaches it when the session goes (RFC 6121
//!   §4.6), and rosters are not changed by it (subscription stanzas pass
//!   through both ways; no subscription state is kept for components).
//! - **From a component.** Messages go to the addressed session or the
//!   user's best ones, stored offline when none is available (with the
//!   recipient's received carbons, not archived); IQs to a full JID reach
//!   that session (its answer comes back to the component), others are
//!   `service-unavailable`; presence reaches the addressed session or the
//!   user's available ones, probes are dropped. A user's block list
//!   applies. To the server itself only pings are answered; the group
//!   chat and upload services are not offered to components.
//! - **A cluster of cores.** A component connects to one core; only that
//!   core's users reach it (the others' cores answer
//!   `service-unavailable`). Its stanzas to another core's users are
//!   forwarded there like a user's, but their answers cannot come back.

use std::collections::BTreeSet;

use bytes::Bytes;
use cm_protocol::{Kind, RouteHeader};
use jid::Jid;
use xmpp_stream::StanzaCondition;
use xmpp_stream::element::Element;
use xmpp_stream::ns;
use xmpp_stream::stanza::{StanzaKind, error_reply, inspect, stamp_to};

use super::output::stanza_kind;
use super::{Action, Router};
use crate::address;
use crate::routing::SessionAddr;

/// The components the router knows: configured, and connected here.
#[derive(Debug, Default)]
pub(super) struct Components {
    configured: BTreeSet<String>,
    connected: BTreeSet<String>,
}

/// The domain of a JID as written: after the `@` of its bare JID, if any.
fn domain_of(jid: &str) -> &str {
    let bare = address::bare(jid);
    bare.split_once('@').map_or(bare, |(_, domain)| domain)
}

impl Router {
    /// Routes stanzas for the domains `names` to the external components
    /// of those names, once they connect ([`super::Input::ComponentUp`]).
    pub fn with_components(mut self, names: impl IntoIterator<Item = String>) -> Self {
        self.components.configured = names.into_iter().collect();
        self
    }

    /// The components connected to this core now, by name.
    pub fn components_connected(&self) -> impl Iterator<Item = &str> {
        self.components.connected.iter().map(String::as_str)
    }

    /// Whether any component is configured.
    pub(super) fn components_configured(&self) -> bool {
        !self.components.configured.is_empty()
    }

    /// The configured component whose domain is `domain`, if one is.
    pub(super) fn component_named(&self, domain: &str) -> Option<&str> {
        self.components.configured.get(domain).map(String::as_str)
    }

    /// The configured component that `jid` (a JID string, normalized) is
    /// an address of, if any.
    pub(super) fn component_of(&self, jid: &str) -> Option<String> {
        self.component_named(domain_of(jid)).map(str::to_owned)
    }

    /// Component `name` connected here.
    pub(super) fn component_up(&mut self, name: String) {
        if !self.components.configured.contains(&name) {
            tracing::warn!(component = name, "a component not configured connected");
            return;
        }
        self.components.connected.insert(name);
    }

    /// Component `name` went away.
    pub(super) fn component_down(&mut self, name: &str) {
        self.components.connected.remove(name);
    }

    /// Hands `payload` to component `name`; false if it is not connected.
    pub(super) fn send_to_component(&mut self, name: &str, payload: Bytes) -> bool {
        if !self.components.connected.contains(name) {
            return false;
        }
        self.stats.delivered += 1;
        self.emit(Action::ToComponent {
            name: name.to_owned(),
            payload,
        });
        true
    }

    /// A stanza from session `addr` to component `name`'s domain (`to`).
    pub(super) fn stanza_for_component(
        &mut self,
        addr: SessionAddr,
        header: &RouteHeader,
        to: &Jid,
        name: &str,
        payload: Bytes,
    ) {
        let stype = header.stanza_type.as_deref();
        if header.kind == Kind::Presence {
            // directed presence: the component hears when the session goes
            self.remember_directed(addr, &to.to_bare().to_string(), stype);
        }
        if self.send_to_component(name, payload) {
            return;
        }
        let answered = match header.kind {
            Kind::Presence => false,
            Kind::Iq => matches!(stype, Some("get" | "set")),
            Kind::Message => stype != Some("error"),
        };
        if answered {
            self.reply_error(addr.0, addr.1, header, StanzaCondition::ServiceUnavailable);
        }
    }

    /// The presence `payload` (no `to`) of a session that goes away, for
    /// the components among its directed-presence targets.
    pub(super) fn presence_to_components(&mut self, directed: &[Box<str>], payload: &Bytes) {
        for target in directed {
            if let Some(name) = self.component_of(target)
                && let Some(copy) = stamp_to(payload, target)
            {
                self.send_to_component(&name, copy);
            }
        }
    }

    /// Answers a stanza from component `name` with a stanza error (unless
    /// it is an error or an IQ result itself).
    fn component_error(&mut self, name: &str, header: &RouteHeader, condition: StanzaCondition) {
        let stype = header.stanza_type.as_deref();
        let answered = match header.kind {
            Kind::Iq => matches!(stype, Some("get" | "set")),
            _ => stype != Some("error"),
        };
        if !answered {
            return;
        }
        self.stats.errors += 1;
        let from = header.to.clone().unwrap_or_else(|| self.domain.clone());
        let reply = error_reply(
            stanza_kind(header.kind),
            header.id.as_deref(),
            &from,
            &header.from,
            condition,
            None,
        );
        self.send_to_component(name, reply);
    }

    /// A stanza from component `name` (its stream checked that `from` is
    /// of its domain and that it has a `to`).
    pub(super) fn component_stanza(&mut self, name: &str, header: RouteHeader, payload: Bytes) {
        if !self.components.connected.contains(name) || domain_of(&header.from) != name {
            tracing::warn!(
                component = name,
                from = header.from,
                "a stanza from a component not connected, or not from its domain: dropped"
            );
            return;
        }
        self.stats.stanzas_in += 1;
        let Some(to) = header.to.as_deref().and_then(|t| Jid::new(t).ok()) else {
            // (answered from the server: the address is no one's)
            let header = RouteHeader { to: None, ..header };
            return self.component_error(name, &header, StanzaCondition::JidMalformed);
        };
        if let Some(other) = self.component_named(to.domain().as_str()) {
            // to a component (itself included)
            let other = other.to_owned();
            if !self.send_to_component(&other, payload) {
                self.component_error(name, &header, StanzaCondition::ServiceUnavailable);
            }
            return;
        }
        if !self.is_local(&to) {
            // the group chat and upload services too: not offered to components
            let condition = match self.is_muc(&to)
                || self
                    .upload
                    .as_ref()
                    .is_some_and(|u| u.jid == to.domain().as_str())
            {
                true => StanzaCondition::ServiceUnavailable,
                false => StanzaCondition::RemoteServerNotFound,
            };
            return self.component_error(name, &header, condition);
        }
        if to.node().is_none() {
            return self.component_to_server(name, &header, &payload);
        }
        let bare = to.to_bare().to_string();
        if !self.serves(&bare) {
            // another core's user: routed there as a user's stanza is
            // (a message tracked until that core takes it)
            match header.kind {
                Kind::Message => self.forward_stanza(&bare, &header, payload),
                kind => {
                    self.send_to_peer(&to.to_string(), kind, &header.from, payload);
                }
            }
            return;
        }
        // an app server's answer to a push notification (XEP-0357)
        if header.kind == Kind::Iq && to.resource().is_none() && self.push_answer(&header, &payload)
        {
            return;
        }
        match header.kind {
            Kind::Message => self.message_in(&header, &to, &bare, payload),
            Kind::Iq => self.iq_in(&header, &to, &bare, payload),
            Kind::Presence => self.presence_from_component(&header, &to, &bare, payload),
        }
    }

    /// A stanza from component `name` to the server itself: pings are
    /// answered, other requests and messages refused.
    fn component_to_server(&mut self, name: &str, header: &RouteHeader, payload: &[u8]) {
        let is_ping = header.kind == Kind::Iq
            && header.stanza_type.as_deref() == Some("get")
            && Element::parse(payload, ns::CLIENT)
                .ok()
                .is_some_and(|iq| iq.child("ping", ns::PING).is_some());
        if !is_ping {
            return self.component_error(name, header, StanzaCondition::ServiceUnavailable);
        }
        let mut result = Element::new("iq", ns::CLIENT)
            .with_attr("type", "result")
            .with_attr("from", self.domain.clone())
            .with_attr("to", header.from.clone());
        if let Some(id) = &header.id {
            result.set_attr("id", id.clone());
        }
        self.send_to_component(name, Bytes::from(result.to_bytes(ns::CLIENT)));
    }

    /// A presence from a component to a user served here: to the addressed
    /// session, or the user's available ones; rosters are not changed
    /// (see the module docs) and probes are dropped.
    fn presence_from_component(
        &mut self,
        header: &RouteHeader,
        to: &Jid,
        bare: &str,
        payload: Bytes,
    ) {
        let stype = header.stanza_type.as_deref();
        if stype == Some("probe") || self.blocked_inbound(bare, header) {
            return;
        }
        let targets: Vec<SessionAddr> = match to.resource() {
            Some(res) => self
                .table
                .full(bare, res.as_str())
                .map(|r| vec![(r.node, r.sid)])
                .unwrap_or_default(),
            None if stype == Some("error") => Vec::new(),
            None => self.others(bare, None),
        };
        for t in targets {
            self.deliver(t, payload.clone());
        }
    }

    /// A stanza for component `name` could not be queued (`condition`: it
    /// is gone, or its queue is full): its sender is told, if it waits for
    /// an answer.
    pub(super) fn component_refused(
        &mut self,
        name: &str,
        payload: &[u8],
        condition: StanzaCondition,
    ) {
        let Ok(top) = inspect(payload) else { return };
        let Some(kind) = top.stanza_kind() else {
            return;
        };
        let stype = top.attr("type");
        let answered = match kind {
            StanzaKind::Iq => matches!(stype, Some("get" | "set")),
            StanzaKind::Message => stype != Some("error"),
            StanzaKind::Presence => false,
        };
        let (Some(sender), true) = (top.attr("from"), answered) else {
            return;
        };
        tracing::debug!(component = name, %condition, "a stanza for a component was refused");
        let to = top.attr("to").unwrap_or(name).to_owned();
        let sender = sender.to_owned();
        self.error_to(&sender, kind, top.attr("id"), &to, condition);
    }
}
