//! Presence subscriptions (RFC 6121 §3) and the roster changes they make,
//! on the rosters of the [`RosterCache`](super::roster_cache::RosterCache).
//! Every change is one roster change (`roster_writes`): written to storage
//! by one [`Action::WriteRoster`](super::Action::WriteRoster), queued in
//! routing order, and pushed to the sessions that asked for the roster
//! (with the subscription stanzas it forwards) once it committed.

use bytes::Bytes;
use jid::Jid;
use xmpp_stream::element::Element;
use xmpp_stream::ns;

use super::{RosterWrite, Router};
use crate::address;
use crate::routing::SessionAddr;
use crate::storage::{RosterItem, Subscription};

/// A subscription presence type (RFC 6121 §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SubType {
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
}

impl SubType {
    /// The subscription type a presence `type` attribute names, if any.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "subscribe" => Self::Subscribe,
            "subscribed" => Self::Subscribed,
            "unsubscribe" => Self::Unsubscribe,
            "unsubscribed" => Self::Unsubscribed,
            _ => return None,
        })
    }

    /// The `type` attribute value.
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Subscribe => "subscribe",
            Self::Subscribed => "subscribed",
            Self::Unsubscribe => "unsubscribe",
            Self::Unsubscribed => "unsubscribed",
        }
    }
}

impl Router {
    /// A subscription presence from a session of `bare` to `to`.
    pub(super) fn subscription_stanza(&mut self, bare: &str, to: &Jid, kind: SubType) {
        if !self.is_local(to) || to.node().is_none() {
            return; // no server-to-server links: nothing to subscribe to
        }
        let contact = to.to_bare().to_string();
        if contact == bare {
            return;
        }
        self.subscription_out(bare, &contact, kind);
    }

    /// The user's side of a subscription change, then the contact's.
    pub(super) fn subscription_out(&mut self, bare: &str, contact: &str, kind: SubType) {
        let item = self.item(bare, contact);
        let mut changed = item.clone();
        match kind {
            SubType::Subscribe => {
                if !item.subscription.to() {
                    changed.ask = true;
                }
                changed.listed = true;
            }
            SubType::Subscribed => {
                if !item.pending_in {
                    return; // no pre-approvals: nothing was asked
                }
                changed.pending_in = false;
                changed.subscription = Subscription::with(item.subscription.to(), true);
                changed.listed = true;
            }
            SubType::Unsubscribe => {
                changed.subscription = Subscription::with(false, item.subscription.from());
                changed.ask = false;
            }
            SubType::Unsubscribed => {
                changed.subscription = Subscription::with(item.subscription.to(), false);
                changed.pending_in = false;
            }
        }
        if changed != item {
            if !self.rosters.get(bare).is_some_and(|r| r.fits(&changed)) {
                return; // the roster is full: the request goes nowhere
            }
            self.put_item(bare, changed);
        }
        self.subscription_in(contact, bare, kind);
        match kind {
            // The contact now sees the user's available resources …
            SubType::Subscribed => self.presence_of_to(bare, contact, false),
            // … or no longer does.
            SubType::Unsubscribed => self.presence_of_to(bare, contact, true),
            _ => {}
        }
    }

    /// The contact's side: `contact` receives `kind` from `from`.
    pub(super) fn subscription_in(&mut self, contact: &str, from: &str, kind: SubType) {
        if !self.serves(contact) {
            // the contact's core does its side
            // (sent again until taken: what a subscription stanza changes
            // must not be lost with a core)
            let stanza = presence_stanza(from, contact, kind.name());
            self.subscription_to_peer(contact, from, stanza);
            return;
        }
        if matches!(kind, SubType::Subscribe | SubType::Subscribed) && self.blocks(contact, from) {
            return; // (XEP-0191: dropped, as any presence from a blocked JID)
        }
        if !self.rosters.get(contact).is_some_and(|r| r.exists()) {
            // No such account: the request is refused on its behalf, so the
            // user's item does not wait forever.
            if kind == SubType::Subscribe {
                self.subscription_in(from, contact, SubType::Unsubscribed);
            }
            return;
        }
        let item = self.item(contact, from);
        let mut changed = item.clone();
        let deliver = match kind {
            SubType::Subscribe => {
                if item.subscription.from() {
                    // Already approved: answer on the contact's behalf.
                    self.subscription_in(from, contact, SubType::Subscribed);
                    self.presence_of_to(contact, from, false);
                    return;
                }
                // (a user who is away may be woken, once per request)
                if !item.pending_in
                    && self.away(contact)
                    && let Some(user) = address::local(contact)
                {
                    let user = user.to_owned();
                    if self.push_offered() {
                        self.push_subscription(&user, from);
                    }
                }
                changed.pending_in = true;
                true
            }
            SubType::Subscribed => {
                if !item.ask {
                    return;
                }
                changed.ask = false;
                changed.subscription = Subscription::with(true, item.subscription.from());
                true
            }
            SubType::Unsubscribe => {
                let had = item.subscription.from() || item.pending_in;
                changed.subscription = Subscription::with(item.subscription.to(), false);
                changed.pending_in = false;
                if item.subscription.from() {
                    self.presence_of_to(contact, from, true);
                }
                had
            }
            SubType::Unsubscribed => {
                let had = item.subscription.to() || item.ask;
                changed.subscription = Subscription::with(false, item.subscription.from());
                changed.ask = false;
                had
            }
        };
        if changed != item && !self.rosters.get(contact).is_some_and(|r| r.fits(&changed)) {
            return; // too many requests waiting for this user: dropped
        }
        if changed != item {
            if !changed.listed
                && changed
                    == (RosterItem {
                        jid: changed.jid.clone(),
                        ..Default::default()
                    })
            {
                self.remove_item(contact, from);
            } else {
                self.put_item(contact, changed);
            }
        }
        if deliver {
            let stanza = presence_stanza(from, contact, kind.name());
            for to in self.others(contact, None) {
                self.deliver(to, stanza.clone());
            }
        }
    }

    /// The item for `contact` in `bare`'s roster (a blank one if absent).
    fn item(&self, bare: &str, contact: &str) -> RosterItem {
        self.rosters
            .get(bare)
            .and_then(|r| r.item(contact))
            .unwrap_or(RosterItem {
                jid: contact.to_owned(),
                ..Default::default()
            })
    }

    /// Stores a changed item and pushes it to the interested sessions.
    pub(super) fn put_item(&mut self, bare: &str, item: RosterItem) {
        self.roster_changing(bare);
        let Some((version, was_listed)) = self.rosters.put_item(bare, item.clone()) else {
            return;
        };
        self.record_write(RosterWrite::Put {
            user: address::local(bare).unwrap_or_default().to_owned(),
            item: item.clone(),
            version,
        });
        if item.listed || was_listed {
            let mut el = item_element(&item);
            if !item.listed {
                el.set_attr("subscription", "remove");
            }
            self.push(bare, el, version);
        }
    }

    /// Removes `contact` from `bare`'s roster: stored, and pushed to the
    /// user's sessions if they saw the item.
    pub(super) fn remove_item(&mut self, bare: &str, contact: &str) {
        self.roster_changing(bare);
        let Some((old, version)) = self.rosters.remove_item(bare, contact) else {
            return;
        };
        self.record_write(RosterWrite::Remove {
            user: address::local(bare).unwrap_or_default().to_owned(),
            jid: contact.to_owned(),
            version,
        });
        if old.listed {
            let el = Element::new("item", ns::ROSTER)
                .with_attr("jid", contact)
                .with_attr("subscription", "remove");
            self.push(bare, el, version);
        }
    }

    /// A roster push (RFC 6121 §2.1.6) to every session that asked for the
    /// roster.
    fn push(&mut self, bare: &str, item: Element, version: u64) {
        let targets: Vec<(SessionAddr, String)> = self
            .table
            .resources(bare)
            .iter()
            .filter(|r| r.interested)
            .map(|r| ((r.node, r.sid), format!("{bare}/{}", r.resource)))
            .collect();
        if targets.is_empty() {
            return;
        }
        self.push_counter += 1;
        let query = Element::new("query", ns::ROSTER)
            .with_attr("ver", version.to_string())
            .with_child(item);
        for (addr, full) in targets {
            let iq = Element::new("iq", ns::CLIENT)
                .with_attr("type", "set")
                .with_attr("id", format!("push-{}", self.push_counter))
                .with_attr("to", full)
                .with_child(query.clone());
            self.deliver(addr, Bytes::from(iq.to_bytes(ns::CLIENT)));
        }
    }

    /// Requests the user has not answered yet, for a session that just
    /// became available (RFC 6121 §3.1.3).
    pub(super) fn pending_requests(&mut self, addr: SessionAddr, bare: &str) {
        let from: Vec<String> = self
            .rosters
            .items(bare)
            .filter(|i| i.pending_in && !self.blocks(bare, i.jid))
            .map(|i| i.jid.to_owned())
            .collect();
        for contact in from {
            self.deliver(addr, presence_stanza(&contact, bare, "subscribe"));
        }
    }
}

/// A server-generated presence stanza.
pub(super) fn presence_stanza(from: &str, to: &str, ptype: &str) -> Bytes {
    let p = Element::new("presence", ns::CLIENT)
        .with_attr("from", from)
        .with_attr("to", to)
        .with_attr("type", ptype);
    Bytes::from(p.to_bytes(ns::CLIENT))
}

/// A roster item as the roster protocol shows it (RFC 6121 §2.1.2).
pub(super) fn item_element(item: &RosterItem) -> Element {
    let mut e = Element::new("item", ns::ROSTER)
        .with_attr("jid", item.jid.clone())
        .with_attr("subscription", item.subscription.as_str());
    if let Some(name) = &item.name {
        e.set_attr("name", name.clone());
    }
    if item.ask {
        e.set_attr("ask", "subscribe");
    }
    for g in &item.groups {
        e = e.with_child(Element::new("group", ns::ROSTER).with_text(g.clone()));
    }
    e
}
