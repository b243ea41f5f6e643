//! The routing table: which CM node holds which session.
//!
//! Keyed by bare JID; each entry lists the user's resources with the CM node
//! and session that hold them and their presence. A per-node index lets a
//! CM's routes be dropped at once when the CM is gone.
//!
//! An account holds at most `max_per_account` resources
//! ([`RoutingTable::admits`]; default [`MAX_RESOURCES_PER_ACCOUNT`]), so
//! the per-account list stays short enough to scan: routing a message to a
//! bare JID is linear in that account's resources only.

use std::collections::HashMap;

use bytes::Bytes;
use cm_protocol::SessionId;
use serde::Serialize;

use crate::address;

/// A CM node's id inside the core (index in the node registry).
pub type NodeId = u32;

/// Where one resource lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Resource part of the full JID.
    pub resource: Box<str>,
    /// CM node holding the session.
    pub node: NodeId,
    /// Session id on that node.
    pub sid: SessionId,
    /// Whether the session sent available presence.
    pub available: bool,
    /// Presence priority.
    pub priority: i8,
    /// The session's last available presence, as broadcast (for probes).
    pub presence: Option<Bytes>,
    /// The session enabled Message Carbons (XEP-0280).
    pub carbons: bool,
    /// The session asked for the roster, so it gets roster pushes.
    pub interested: bool,
    /// The session asked for the block list, so it gets block pushes
    /// (XEP-0191).
    pub blocklist: bool,
    /// Bare JIDs the session sent directed available presence to, outside
    /// its subscriptions (they learn when it goes away).
    pub directed: Vec<Box<str>>,
    /// The personal eventing nodes it wants notifications of (its entity
    /// capabilities' `+notify` features, XEP-0163 §4.4), once known.
    pub notify: Option<crate::caps::Notify>,
}

impl Route {
    /// A route with no presence yet.
    pub fn new(resource: &str, node: NodeId, sid: SessionId) -> Self {
        Self {
            resource: resource.into(),
            node,
            sid,
            available: false,
            priority: 0,
            presence: None,
            carbons: false,
            interested: false,
            blocklist: false,
            directed: Vec::new(),
            notify: None,
        }
    }
}

/// A session's address (CM node, session id).
pub type SessionAddr = (NodeId, SessionId);

/// Default most resources (sessions) one account may bind at once.
pub const MAX_RESOURCES_PER_ACCOUNT: usize = 64;

/// The routing table (see the module docs).
#[derive(Debug)]
pub struct RoutingTable {
    by_bare: HashMap<Box<str>, Vec<Route>>,
    by_node: HashMap<NodeId, HashMap<SessionId, Box<str>>>,
    max_per_account: usize,
}

impl Default for RoutingTable {
    fn default() -> Self {
        Self {
            by_bare: HashMap::new(),
            by_node: HashMap::new(),
            max_per_account: MAX_RESOURCES_PER_ACCOUNT,
        }
    }
}

/// One row of the JSON routing table.
#[derive(Clone, Debug, Serialize)]
pub struct RouteRow {
    /// Full JID.
    pub jid: String,
    /// CM node id.
    pub node: NodeId,
    /// Session id.
    pub sid: SessionId,
    /// Presence available.
    pub available: bool,
    /// Priority.
    pub priority: i8,
}

impl RoutingTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// A table whose accounts may bind at most `max` resources each (at least one).
    pub fn with_max_per_account(max: usize) -> Self {
        Self {
            max_per_account: max.max(1),
            ..Self::default()
        }
    }

    /// Whether `bare` may bind `resource` now: a resource it holds is
    /// replaced (always allowed); a new one needs room under the
    /// per-account cap.
    pub fn admits(&self, bare: &str, resource: &str) -> bool {
        let routes = self.resources(bare);
        routes.len() < self.max_per_account || routes.iter().any(|r| &*r.resource == resource)
    }

    /// The bare JIDs with a bound session.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.by_bare.keys().map(|b| &**b)
    }

    /// Number of bound sessions.
    pub fn len(&self) -> usize {
        self.by_node.values().map(HashMap::len).sum()
    }

    /// Whether no session is bound.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Binds `bare/resource` to a session; returns the session it replaced
    /// (same full JID elsewhere), which must be told `conflict`.
    pub fn bind(
        &mut self,
        bare: &str,
        resource: &str,
        node: NodeId,
        sid: SessionId,
        available: bool,
        priority: i8,
    ) -> Option<SessionAddr> {
        let mut new = Route::new(resource, node, sid);
        new.available = available;
        new.priority = priority;
        self.insert(bare, new)
    }

    /// Binds a route as it is (with its session state: a resumed session
    /// keeps its presence, carbons and roster interest); returns the session
    /// it replaced.
    pub fn insert(&mut self, bare: &str, new: Route) -> Option<SessionAddr> {
        let (resource, node, sid) = (new.resource.clone(), new.node, new.sid);
        let resource = &*resource;
        // Most accounts have one session: room for one, not the four a
        // first push would make.
        let routes = self
            .by_bare
            .entry(bare.into())
            .or_insert_with(|| Vec::with_capacity(1));
        let replaced = match routes.iter_mut().find(|r| &*r.resource == resource) {
            Some(slot) => {
                let old = (slot.node, slot.sid);
                *slot = new;
                (old != (node, sid)).then_some(old)
            }
            None => {
                routes.push(new);
                None
            }
        };
        if let Some((old_node, old_sid)) = replaced
            && let Some(sessions) = self.by_node.get_mut(&old_node)
        {
            sessions.remove(&old_sid);
        }
        self.by_node
            .entry(node)
            .or_default()
            .insert(sid, format!("{bare}/{resource}").into());
        replaced
    }

    /// Removes a session's route; returns its full JID and route if it had one.
    pub fn unbind(&mut self, node: NodeId, sid: SessionId) -> Option<(String, Route)> {
        let full = self.by_node.get_mut(&node)?.remove(&sid)?;
        let (bare, resource) = address::split_full(&full)?;
        let routes = self.by_bare.get_mut(bare)?;
        let pos = routes
            .iter()
            .position(|r| &*r.resource == resource && r.node == node && r.sid == sid)?;
        let route = routes.swap_remove(pos);
        if routes.is_empty() {
            self.by_bare.remove(bare);
        }
        Some((full.into(), route))
    }

    /// Drops every route of a node; returns their full JIDs with routes.
    pub fn drop_node(&mut self, node: NodeId) -> Vec<(String, Route)> {
        let sids: Vec<SessionId> = self
            .by_node
            .get(&node)
            .map(|s| s.keys().copied().collect())
            .unwrap_or_default();
        let dropped = sids
            .into_iter()
            .filter_map(|sid| self.unbind(node, sid))
            .collect();
        self.by_node.remove(&node);
        dropped
    }

    /// The full JID bound to a session.
    pub fn jid_of(&self, node: NodeId, sid: SessionId) -> Option<&str> {
        self.by_node.get(&node)?.get(&sid).map(|s| &**s)
    }

    /// Updates a session's presence; returns (previously available, bare JID).
    pub fn set_presence(
        &mut self,
        node: NodeId,
        sid: SessionId,
        available: bool,
        priority: i8,
    ) -> Option<bool> {
        let full = self.by_node.get(&node)?.get(&sid)?;
        let bare = address::split_full(full)?.0;
        let route = self
            .by_bare
            .get_mut(bare)?
            .iter_mut()
            .find(|r| r.node == node && r.sid == sid)?;
        let was = route.available;
        route.available = available;
        route.priority = priority;
        Some(was)
    }

    /// A session's route, to change its state.
    pub fn route_mut(&mut self, node: NodeId, sid: SessionId) -> Option<&mut Route> {
        let full = self.by_node.get(&node)?.get(&sid)?;
        let bare = address::split_full(full)?.0;
        self.by_bare
            .get_mut(bare)?
            .iter_mut()
            .find(|r| r.node == node && r.sid == sid)
    }

    /// A session's route.
    pub fn route(&self, node: NodeId, sid: SessionId) -> Option<&Route> {
        let full = self.by_node.get(&node)?.get(&sid)?;
        let bare = address::split_full(full)?.0;
        self.by_bare
            .get(bare)?
            .iter()
            .find(|r| r.node == node && r.sid == sid)
    }

    /// The route of a full JID.
    pub fn full(&self, bare: &str, resource: &str) -> Option<&Route> {
        self.by_bare
            .get(bare)?
            .iter()
            .find(|r| &*r.resource == resource)
    }

    /// Every resource of a bare JID.
    pub fn resources(&self, bare: &str) -> &[Route] {
        self.by_bare.get(bare).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Available resources with the highest non-negative priority (RFC 6121 §8.5.2.1.1).
    pub fn best(&self, bare: &str) -> Vec<SessionAddr> {
        let routes = self.resources(bare);
        let Some(top) = routes
            .iter()
            .filter(|r| r.available && r.priority >= 0)
            .map(|r| r.priority)
            .max()
        else {
            return Vec::new();
        };
        routes
            .iter()
            .filter(|r| r.available && r.priority == top)
            .map(|r| (r.node, r.sid))
            .collect()
    }

    /// The sessions routed to `node`.
    pub fn sids_of(&self, node: NodeId) -> Vec<SessionId> {
        self.by_node
            .get(&node)
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Sessions per node.
    pub fn counts(&self) -> HashMap<NodeId, usize> {
        self.by_node.iter().map(|(n, s)| (*n, s.len())).collect()
    }

    /// Every route, for the admin endpoint.
    pub fn rows(&self) -> Vec<RouteRow> {
        let mut rows: Vec<RouteRow> = self
            .by_bare
            .iter()
            .flat_map(|(bare, routes)| {
                routes.iter().map(move |r| RouteRow {
                    jid: format!("{bare}/{}", r.resource),
                    node: r.node,
                    sid: r.sid,
                    available: r.available,
                    priority: r.priority,
                })
            })
            .collect();
        rows.sort_by(|a, b| a.jid.cmp(&b.jid));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_replace_unbind_and_drop_node() {
        let mut t = RoutingTable::new();
        assert_eq!(t.bind("a@x", "phone", 1, 10, false, 0), None);
        assert_eq!(t.bind("a@x", "desk", 2, 20, false, 0), None);
        assert_eq!(t.len(), 2);
        // same full JID on another session replaces it
        assert_eq!(t.bind("a@x", "phone", 2, 21, false, 0), Some((1, 10)));
        assert_eq!(t.len(), 2);
        assert_eq!(t.full("a@x", "phone").unwrap().sid, 21);
        // the replaced session's end does not remove the new route
        assert_eq!(t.unbind(1, 10), None);
        assert!(t.full("a@x", "phone").is_some());
        t.bind("b@x", "r", 1, 11, true, 0);
        let dropped = t.drop_node(2);
        assert_eq!(dropped.len(), 2);
        assert!(t.resources("a@x").is_empty());
        assert_eq!(t.len(), 1);
        assert_eq!(t.jid_of(1, 11), Some("b@x/r"));
    }

    #[test]
    fn an_account_at_its_resource_cap_may_replace_a_resource_but_not_add_one() {
        let mut t = RoutingTable::with_max_per_account(2);
        assert!(t.admits("a@x", "1"));
        t.bind("a@x", "1", 1, 1, true, 0);
        t.bind("a@x", "2", 1, 2, true, 0);
        assert!(!t.admits("a@x", "3"));
        assert!(t.admits("a@x", "2"));
        assert!(t.admits("b@x", "3"));
        t.unbind(1, 1);
        assert!(t.admits("a@x", "3"));
    }

    #[test]
    fn best_picks_highest_non_negative_available() {
        let mut t = RoutingTable::new();
        t.bind("a@x", "1", 1, 1, true, 5);
        t.bind("a@x", "2", 1, 2, true, 5);
        t.bind("a@x", "3", 1, 3, true, 1);
        t.bind("a@x", "4", 1, 4, false, 9);
        let mut best = t.best("a@x");
        best.sort();
        assert_eq!(best, vec![(1, 1), (1, 2)]);
        t.set_presence(1, 1, true, -1);
        t.set_presence(1, 2, true, -1);
        t.set_presence(1, 3, true, -1);
        assert!(t.best("a@x").is_empty());
    }
}
