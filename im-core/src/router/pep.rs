//! Personal eventing (XEP-0163) in the router: who gets a notification.
//!
//! A user's nodes live in storage, reached by queries (`iq/pep.rs`). Once a
//! publish, retraction or deletion is stored, its notification goes to the
//! owner's own available sessions and to the contacts subscribed to the
//! owner's presence (if the node's access model lets them read it). Each
//! recipient's core, which holds the recipient's sessions, delivers it only
//! to those whose entity capabilities ask for the node (`+notify`, learned
//! through [`crate::caps`]). Another core's contact gets one message for
//! its bare JID; its core picks the sessions.
//!
//! When a session first says it wants a node, it gets the newest item of
//! that node from itself and from each contact it is subscribed to: one
//! query, answered from storage (shared by all cores) by the session's own
//! core.

use bytes::Bytes;
use cm_protocol::{Kind, RouteHeader};
use xmpp_stream::element::{Element, escape};
use xmpp_stream::ns;

use super::{Action, Query, Router};
use crate::address;
use crate::caps::{Lookup, Notify, Question, ShownCaps, wants};
use crate::routing::SessionAddr;
use crate::storage::PepAccess;

/// A reader's standing with a node's owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PepRelation {
    /// The owner.
    Owner,
    /// A contact subscribed to the owner's presence.
    Subscriber,
    /// Anyone else.
    Other,
}

impl PepRelation {
    /// Whether a node of `access` lets this reader read.
    pub fn may_read(self, access: PepAccess) -> bool {
        matches!(
            (self, access),
            (PepRelation::Owner, _)
                | (_, PepAccess::Open)
                | (PepRelation::Subscriber, PepAccess::Presence)
        )
    }
}

/// Which newest items a session gets when its wanted nodes are set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Newest {
    /// Of the nodes it did not want before.
    Added,
    /// Of every node it wants (it just became available).
    All,
    /// None (it had them before: an announced session).
    None,
}

impl Newest {
    fn of(fresh: bool) -> Self {
        match fresh {
            true => Newest::All,
            false => Newest::Added,
        }
    }
}

/// A change to a node, stored: what its readers are notified of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PepEvent {
    /// The owner (local part).
    pub owner: String,
    /// The node.
    pub node: String,
    /// The node's access model.
    pub access: PepAccess,
    /// The `<event/>` element, its namespace declared.
    pub body: Bytes,
}

/// A notification: `body` (an `<event/>`) in a headline message.
pub fn notification(from: &str, to: &str, id: &str, body: &[u8]) -> Bytes {
    let mut out = format!(
        "<message xmlns=\"jabber:client\" from=\"{}\" to=\"{}\" type=\"headline\" id=\"{}\">",
        escape(from),
        escape(to),
        escape(id)
    )
    .into_bytes();
    out.extend_from_slice(body);
    out.extend_from_slice(b"</message>");
    Bytes::from(out)
}

impl Router {
    /// A session's available presence: what its entity capabilities say
    /// it wants notifications of, or a question to it if unknown. `fresh`:
    /// the session just became available (it gets the newest items of
    /// every node it wants, not only of those it did not want before).
    pub(super) fn presence_caps(&mut self, addr: SessionAddr, payload: &[u8], fresh: bool) {
        let (Some(shown), Some(now)) = (ShownCaps::of_presence(payload), self.now) else {
            return;
        };
        let lookup = self.caps.lookup(&shown, addr, now);
        tracing::debug!(?addr, ver = shown.ver, ?lookup, "caps shown");
        match lookup {
            Lookup::Known(notify) => self.set_notify(addr, notify, Newest::of(fresh)),
            Lookup::Wait => {}
            Lookup::Ask(question) => self.ask_caps(question),
        }
    }

    /// Asks a session what its capabilities stand for (XEP-0115 §6.2).
    fn ask_caps(&mut self, question: Question) {
        let Some(full) = self.table.jid_of(question.to.0, question.to.1) else {
            return;
        };
        let ask = Element::new("iq", ns::CLIENT)
            .with_attr("type", "get")
            .with_attr("from", self.domain.clone())
            .with_attr("to", full)
            .with_attr("id", question.id)
            .with_child(Element::new("query", ns::DISCO_INFO).with_attr("node", question.node));
        self.deliver(question.to, Bytes::from(ask.to_bytes(ns::CLIENT)));
    }

    /// A CM announced an available session this core has not seen the
    /// presence of: it is asked what it wants notifications of (its
    /// features, no node), unless the route knows already.
    pub(super) fn caps_after_announce(&mut self, addr: SessionAddr) {
        let Some(route) = self.table.route_mut(addr.0, addr.1) else {
            return;
        };
        if !route.available || route.notify.is_some() {
            return;
        }
        let Some(now) = self.now else { return };
        let Some(id) = self.caps.ask_unshown(addr, now) else {
            return;
        };
        let Some(full) = self.table.jid_of(addr.0, addr.1) else {
            return;
        };
        let ask = Element::new("iq", ns::CLIENT)
            .with_attr("type", "get")
            .with_attr("from", self.domain.clone())
            .with_attr("to", full)
            .with_attr("id", id)
            .with_child(Element::new("query", ns::DISCO_INFO));
        self.deliver(addr, Bytes::from(ask.to_bytes(ns::CLIENT)));
    }

    /// A session answered the core's disco#info question `header.id`.
    pub(super) fn caps_answer(&mut self, addr: SessionAddr, header: &RouteHeader, payload: &[u8]) {
        let Some(now) = self.now else { return };
        let id = header.id.as_deref().unwrap_or_default();
        let info = (header.stanza_type.as_deref() == Some("result"))
            .then(|| Element::parse(payload, ns::CLIENT).ok())
            .flatten();
        let query = info
            .as_ref()
            .and_then(|iq| iq.child("query", ns::DISCO_INFO));
        if let Some(notify) = self.caps.answered_unshown(id, addr, query) {
            // (it had them from its core before: no newest items again)
            return self.set_notify(addr, notify, Newest::None);
        }
        let answered = info
            .as_ref()
            .and_then(|iq| iq.child("query", ns::DISCO_INFO))
            .map(|info| self.caps.answered(id, addr, info, now));
        let next = match answered {
            Some(Some(done)) => {
                for a in done.to {
                    self.set_notify(a, done.notify.clone(), Newest::Added);
                }
                done.ask
            }
            Some(None) => None,
            None => self.caps.refused(id, addr, now),
        };
        tracing::debug!(?addr, id, ?next, "caps answer");
        if let Some(question) = next {
            self.ask_caps(question);
        }
    }

    /// `addr` wants notifications of `notify`'s nodes: it gets the newest
    /// items of the nodes `newest` says, one such query at a time.
    fn set_notify(&mut self, addr: SessionAddr, notify: Notify, newest: Newest) {
        let Some(route) = self.table.route_mut(addr.0, addr.1) else {
            return;
        };
        let old = route.notify.replace(notify.clone());
        let old = match newest {
            Newest::None => return,
            Newest::All => None,
            Newest::Added => old,
        };
        let nodes: Vec<String> = notify
            .iter()
            .filter(|n| old.as_ref().is_none_or(|o| !wants(o, n)))
            .map(|n| n.to_string())
            .collect();
        if nodes.is_empty() || !route.available || !self.last_items.insert(addr) {
            return;
        }
        let Some(full) = self.table.jid_of(addr.0, addr.1).map(str::to_owned) else {
            return;
        };
        let bare = address::bare(&full);
        let suffix = format!("@{}", self.domain);
        let mut owners = vec![(
            address::local(bare).unwrap_or_default().to_owned(),
            PepRelation::Owner,
        )];
        // (the contacts either side blocks are left out here if served
        // here; the store checks the others' lists)
        owners.extend(
            self.rosters
                .items(bare)
                .filter(|i| i.subscription.to() && !self.blocks(bare, i.jid))
                .filter(|i| !(self.serves(i.jid) && self.blocks(i.jid, &full)))
                .filter_map(|i| i.jid.strip_suffix(suffix.as_str()))
                .map(|local| (local.to_owned(), PepRelation::Subscriber)),
        );
        let query = Query::PepLastItems {
            owners,
            nodes,
            requester: full,
        };
        self.emit(Action::Query { to: addr, query });
    }

    /// The answer to a session's [`Query::PepLastItems`] came: it may ask
    /// again.
    pub(super) fn last_items_answered(&mut self, addr: SessionAddr) {
        self.last_items.remove(&addr);
    }

    /// A fresh notification id (unique across restarts: the router's
    /// seed starts it).
    fn event_id(&mut self) -> String {
        format!("pep-{}", self.event_ids.next_id())
    }

    /// A change to one of `event.owner`'s nodes was stored: its readers'
    /// sessions that want the node are notified.
    pub(super) fn pep_event(&mut self, event: PepEvent) {
        let owner = format!("{}@{}", event.owner, self.domain);
        self.pep_notify(&owner, &owner, &event.node, &event.body);
        if !PepRelation::Subscriber.may_read(event.access) {
            return;
        }
        let contacts: Vec<String> = self
            .rosters
            .items(&owner)
            .filter(|i| i.subscription.from() && !self.blocks(&owner, i.jid))
            .map(|i| i.jid.to_owned())
            .collect();
        tracing::debug!(
            owner,
            node = event.node,
            contacts = contacts.len(),
            "pep event"
        );
        for contact in contacts {
            if self.serves(&contact) {
                self.pep_notify(&owner, &contact, &event.node, &event.body);
            } else {
                let id = self.event_id();
                let message = notification(&owner, &contact, &id, &event.body);
                self.send_to_peer(&contact, Kind::Message, &owner, message);
            }
        }
    }

    /// A notification another core sent for one of this core's users
    /// (from a bare JID: only cores send those). False if `payload` is no
    /// notification.
    pub(super) fn pep_event_in(
        &mut self,
        header: &RouteHeader,
        bare: &str,
        payload: &[u8],
    ) -> bool {
        if address::resource(&header.from).is_some()
            || address::local(&header.from).is_none()
            || header.stanza_type.as_deref() != Some("headline")
        {
            return false;
        }
        let Ok(message) = Element::parse(payload, ns::CLIENT) else {
            return false;
        };
        let Some(event) = message.child("event", ns::PUBSUB_EVENT) else {
            return false;
        };
        let Some(node) = event
            .elements()
            .find_map(|e| e.attr("node"))
            .map(str::to_owned)
        else {
            return true;
        };
        let body = Bytes::from(event.to_bytes(ns::CLIENT));
        tracing::debug!(from = header.from, to = bare, node, "pep event from a peer");
        self.pep_notify(&header.from, bare, &node, &body);
        true
    }

    /// `owner`'s notification `body` for node `node` to the available
    /// sessions of `to` (a user served here) that want the node.
    fn pep_notify(&mut self, owner: &str, to: &str, node: &str, body: &[u8]) {
        if to != owner && self.blocks(to, owner) {
            return;
        }
        let targets: Vec<(SessionAddr, String)> = self
            .table
            .resources(to)
            .iter()
            .filter(|r| r.available && r.notify.as_ref().is_some_and(|n| wants(n, node)))
            .map(|r| ((r.node, r.sid), format!("{to}/{}", r.resource)))
            .collect();
        tracing::debug!(owner, to, node, sessions = targets.len(), "pep notify");
        for (addr, full) in targets {
            let id = self.event_id();
            self.deliver(addr, notification(owner, &full, &id, body));
        }
    }
}
