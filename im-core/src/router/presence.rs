//! Presence (RFC 6121 §4): broadcast to the user's other resources and to
//! contacts subscribed to the user, probes answered from the sessions' last
//! presence when a session becomes available, directed presence, and
//! unavailable presence when a session ends.

use bytes::Bytes;
use jid::Jid;
use xmpp_stream::element::Element;
use xmpp_stream::ns;

use super::Router;
use super::subscriptions::presence_stanza;
use crate::address;
use crate::routing::{Route, SessionAddr};

/// Most directed-presence targets remembered per session.
const MAX_DIRECTED: usize = 64;

impl Router {
    /// A presence without `to` from `addr`: available (no type) or
    /// unavailable.
    pub(super) fn broadcast_presence(
        &mut self,
        addr: SessionAddr,
        stype: Option<&str>,
        payload: Bytes,
        bare: &str,
    ) {
        let (available, priority) = match stype {
            None => (true, presence_priority(&payload)),
            Some("unavailable") => (false, 0),
            _ => return, // probes and errors from clients are not broadcast
        };
        let Some(route) = self.table.route_mut(addr.0, addr.1) else {
            return;
        };
        let was = route.available;
        route.available = available;
        route.priority = priority;
        route.presence = available.then(|| payload.clone());
        let directed = if available {
            Vec::new()
        } else {
            std::mem::take(&mut route.directed)
        };
        let full = self.table.jid_of(addr.0, addr.1).unwrap_or(bare).to_owned();
        self.presence_to_peers(&full, bare, &directed, &payload);
        self.presence_to_components(&directed, &payload);
        if !available {
            self.rooms_unavailable(&full);
        }
        let mut targets = self.others(bare, Some(addr));
        targets.extend(self.subscribers(&full));
        for to in directed {
            targets.extend(self.others(&to, None));
        }
        for to in targets {
            self.deliver(to, payload.clone());
        }
        if available && !was {
            self.push_user_online(bare);
            self.probe(addr, bare);
            self.probe_peers(&full, bare);
            self.pending_requests(addr, bare);
            self.request_flush(addr);
        }
        if available {
            self.presence_caps(addr, &payload, !was);
        }
    }

    /// Directed presence from `addr` to `to` (RFC 6121 §4.6).
    pub(super) fn directed_presence(
        &mut self,
        addr: SessionAddr,
        to: &Jid,
        stype: Option<&str>,
        payload: Bytes,
        bare: &str,
    ) {
        let target_bare = to.to_bare().to_string();
        let full = self.table.jid_of(addr.0, addr.1).unwrap_or(bare).to_owned();
        if self.blocks(&target_bare, &full) {
            return; // (XEP-0191: presence from a blocked JID is dropped)
        }
        let targets: Vec<SessionAddr> = match to.resource() {
            Some(res) => self
                .table
                .full(&target_bare, res.as_str())
                .map(|r| vec![(r.node, r.sid)])
                .unwrap_or_default(),
            // RFC 6121 §8.5.2.1.1: every available resource.
            None => self
                .table
                .resources(&target_bare)
                .iter()
                .filter(|r| r.available)
                .map(|r| (r.node, r.sid))
                .collect(),
        };
        // Remember who learns of this session outside its subscriptions.
        let subscribed = self
            .rosters
            .items(bare)
            .any(|i| i.jid == target_bare && i.subscription.from());
        if !subscribed {
            self.remember_directed(addr, &target_bare, stype);
        }
        if !self.serves(&target_bare) {
            self.send_to_peer(
                &to.to_string(),
                cm_protocol::Kind::Presence,
                &full,
                payload.clone(),
            );
        }
        for t in targets {
            self.deliver(t, payload.clone());
        }
    }

    /// Remembers (available presence) or forgets (unavailable) that
    /// `target_bare` learnt of session `addr` by directed presence, so it
    /// hears when the session goes (at most [`MAX_DIRECTED`] targets).
    pub(super) fn remember_directed(
        &mut self,
        addr: SessionAddr,
        target_bare: &str,
        stype: Option<&str>,
    ) {
        let Some(route) = self.table.route_mut(addr.0, addr.1) else {
            return;
        };
        let known = route.directed.iter().position(|d| **d == *target_bare);
        match (stype, known) {
            (None, None) if route.directed.len() < MAX_DIRECTED => {
                route.directed.push(target_bare.into());
            }
            (Some("unavailable"), Some(i)) => {
                route.directed.swap_remove(i);
            }
            _ => {}
        }
    }

    /// Available sessions of the contacts subscribed to the presence of
    /// `full` (a session's full JID), but those either side blocks.
    fn subscribers(&self, full: &str) -> Vec<SessionAddr> {
        let bare = address::bare(full);
        self.rosters
            .items(bare)
            .filter(|i| i.subscription.from())
            .flat_map(|i| {
                self.table
                    .resources(i.jid)
                    .iter()
                    .filter(move |r| r.available && !self.blocked_pair(full, i.jid, r))
            })
            .map(|r| (r.node, r.sid))
            .collect()
    }

    /// Whether `full` (a session of a user served here) and the session
    /// `r` of `contact` block each other either way.
    pub(super) fn blocked_pair(&self, full: &str, contact: &str, r: &Route) -> bool {
        let bare = address::bare(full);
        // (no allocation unless the user blocks someone: a hot path)
        self.blocks(contact, full)
            || (self.blocks_anyone(bare) && self.blocks(bare, &format!("{contact}/{}", r.resource)))
    }

    /// A session became available: it gets the presence of the contacts it
    /// is subscribed to and of the user's other resources.
    fn probe(&mut self, addr: SessionAddr, bare: &str) {
        let full = self.table.jid_of(addr.0, addr.1).unwrap_or(bare).to_owned();
        let this = &*self;
        let mut found: Vec<Bytes> = this
            .rosters
            .items(bare)
            .filter(|i| i.subscription.to())
            .flat_map(|i| {
                let full = full.as_str();
                this.table
                    .resources(i.jid)
                    .iter()
                    .filter(move |r| !this.blocked_pair(full, i.jid, r))
            })
            .filter_map(|r| r.presence.clone())
            .collect();
        found.extend(
            self.table
                .resources(bare)
                .iter()
                .filter(|r| (r.node, r.sid) != addr)
                .filter_map(|r| r.presence.clone()),
        );
        for p in found {
            self.deliver(addr, p);
        }
    }

    /// `bare`'s available resources present themselves to `contact`'s
    /// available sessions (a new subscription), or say they are unavailable
    /// (a cancelled one).
    /// Nothing is sent where either side blocks the other (XEP-0191).
    pub(super) fn presence_of_to(&mut self, bare: &str, contact: &str, unavailable: bool) {
        self.presence_of_to_as(bare, contact, unavailable, false);
    }

    /// `bare`'s available resources say they are unavailable to `contact`,
    /// whom `bare` has just blocked (the last word the contact gets).
    pub(super) fn unavailable_at_block(&mut self, bare: &str, contact: &str) {
        self.presence_of_to_as(bare, contact, true, true);
    }

    /// [`Router::presence_of_to`], blocks or not (`despite_blocks`).
    fn presence_of_to_as(
        &mut self,
        bare: &str,
        contact: &str,
        unavailable: bool,
        despite_blocks: bool,
    ) {
        if !despite_blocks && self.blocks(bare, contact) {
            return;
        }
        let stanzas: Vec<(String, Bytes)> = self
            .table
            .resources(bare)
            .iter()
            .filter(|r| r.available)
            .filter_map(|r| {
                let full = format!("{bare}/{}", r.resource);
                let stanza = match unavailable {
                    true => Some(presence_stanza(&full, contact, "unavailable")),
                    false => r.presence.clone(),
                }?;
                Some((full, stanza))
            })
            .collect();
        if !self.serves(contact) {
            for (full, s) in stanzas {
                self.send_to_peer(contact, cm_protocol::Kind::Presence, &full, s);
            }
            return;
        }
        let targets: Vec<&Route> = self
            .table
            .resources(contact)
            .iter()
            .filter(|r| r.available)
            .collect();
        let mut out = Vec::new();
        for r in targets {
            for (full, s) in &stanzas {
                // (the block's own unavailable goes despite the user's
                // new block, not to a session that blocks the user)
                let skip = match despite_blocks {
                    true => self.blocks(contact, full),
                    false => self.blocked_pair(full, contact, r),
                };
                if !skip {
                    out.push(((r.node, r.sid), s.clone()));
                }
            }
        }
        for (to, s) in out {
            self.deliver(to, s);
        }
    }

    /// Tells everyone who saw `full` available that it went away: the
    /// user's other resources, subscribed contacts, directed targets.
    pub(super) fn broadcast_unavailable(&mut self, full: &str, directed: &[Box<str>]) {
        let bare = address::bare(full);
        let mut targets = self.others(bare, None);
        targets.extend(self.subscribers(full));
        for to in directed {
            targets.extend(self.others(to, None));
        }
        let presence = Element::new("presence", ns::CLIENT)
            .with_attr("from", full)
            .with_attr("type", "unavailable");
        let presence = Bytes::from(presence.to_bytes(ns::CLIENT));
        self.presence_to_peers(full, bare, directed, &presence);
        self.presence_to_components(directed, &presence);
        for to in targets {
            self.deliver(to, presence.clone());
        }
    }
}

/// The `<priority/>` of an available presence (RFC 6121 §4.7.2.3), default 0.
fn presence_priority(payload: &[u8]) -> i8 {
    Element::parse(payload, ns::CLIENT)
        .ok()
        .and_then(|p| p.child("priority", ns::CLIENT).map(|c| c.text()))
        .and_then(|t| t.trim().parse::<i8>().ok())
        .unwrap_or(0)
}
