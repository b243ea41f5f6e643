//! Which CMs are in the balancer's table, sans-IO.
//!
//! Inputs, each with the current time: a CM's registration was accepted on
//! a control connection ([`Membership::register`]), that connection ended
//! ([`Membership::connection_ended`]), an operator drained or undrained a
//! CM ([`Membership::set_draining`]), a deadline passed
//! ([`Membership::handle_timeout`]). Outputs: the [`Change`]s the routing
//! table must make, in order ([`Membership::poll_change`]), and the next
//! deadline ([`Membership::poll_timeout`]).
//!
//! Rules:
//! - A CM is in the table while its latest registration's connection lives.
//!   A registration under a node name already registered (the CM
//!   reconnected) replaces the old one; the old connection's end is then
//!   ignored. If it came back with another server id, its old one is
//!   treated like a CM that left (below). A server id another live CM holds
//!   is refused.
//! - A CM whose connection ended leaves the table at once (no new
//!   handshakes, its connections' packets are dropped), but it may just have
//!   blinked: only if no CM registers its server id within
//!   [`DEPARTED_GRACE`] does the server id become *departed*, and its
//!   connections' short-header packets go to the Maglev pick, whose
//!   stateless reset sends the clients to reconnect at once. At most
//!   [`MAX_DEPARTED`] departed server ids are remembered (the oldest is
//!   forgotten first); a departed server id that registers again is live.
//! - Only a CM in the table can be drained (draining an unknown name
//!   changes nothing). Drain state is kept per node name, and outlives the
//!   CM's connection, so a drained CM that reconnects is still drained
//!   (unless it is undrained while away, which removes the mark). At
//!   most [`MAX_DRAINED`] names are remembered: past that, the drain marks
//!   of CMs no longer in the table are forgotten. It lives in memory only.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a CM must stay away before its connections count as dead (a
/// control link that blinks must not get its clients reset).
pub const DEPARTED_GRACE: Duration = Duration::from_secs(3);

/// Most departed server ids remembered.
pub const MAX_DEPARTED: usize = 4096;

/// Most drained node names remembered (CMs in the table are never
/// forgotten; absent ones are once the set is this full).
pub const MAX_DRAINED: usize = 1024;

/// One accepted registration (one control connection), to tell a CM's
/// current connection from the one it replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RegistrationId(u64);

/// What the routing table must change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Put this CM in the table, or replace the entry with its node name.
    Join {
        /// Node name.
        node: String,
        /// QUIC-LB server id octets.
        server_id: Vec<u8>,
        /// Where its encapsulated datagrams go.
        addr: SocketAddr,
        /// Whether it takes no new handshakes.
        draining: bool,
    },
    /// Take this CM out of the table.
    Leave {
        /// Node name.
        node: String,
    },
    /// Mark this CM draining (no new handshakes) or not.
    Drain {
        /// Node name.
        node: String,
        /// The new state.
        draining: bool,
    },
    /// Short-header packets for this server id now go to the Maglev pick,
    /// for a stateless reset.
    Depart {
        /// The departed CM's server id.
        server_id: Vec<u8>,
    },
    /// Forget this departed server id: its packets are its own CM's again,
    /// or (when the remembered set is full) dropped again.
    Forget {
        /// The server id.
        server_id: Vec<u8>,
    },
}

/// Why a registration was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Another live CM holds this server id.
    #[error("server id taken by {by}")]
    ServerIdTaken {
        /// That CM's node name.
        by: String,
    },
}

/// A CM in the table.
#[derive(Debug)]
struct Member {
    server_id: Vec<u8>,
    registration: RegistrationId,
}

/// The balancer's membership state (see the module docs).
#[derive(Debug)]
pub struct Membership {
    members: HashMap<String, Member>,
    /// Nodes the operator drained while they were in the table (they may
    /// have left since); at most [`MAX_DRAINED`] beyond the members.
    drained: HashSet<String>,
    next_registration: u64,
    /// Server ids of CMs that left, with the end of their grace, earliest
    /// first. Each id at most once, never a live one.
    leaving: VecDeque<(Instant, Vec<u8>)>,
    /// Departed server ids, oldest first; at most [`MAX_DEPARTED`].
    departed: VecDeque<Vec<u8>>,
    /// Changes not yet polled.
    changes: VecDeque<Change>,
}

impl Default for Membership {
    fn default() -> Self {
        Self::new()
    }
}

impl Membership {
    /// No CM yet.
    pub fn new() -> Self {
        Self {
            members: HashMap::new(),
            drained: HashSet::new(),
            next_registration: 0,
            leaving: VecDeque::new(),
            departed: VecDeque::new(),
            changes: VecDeque::new(),
        }
    }

    /// A CM's registration arrived on a new control connection at `now`:
    /// the CM joins (or replaces its earlier registration; a server id it
    /// held before and no longer does gets the grace of a CM that left).
    /// Refused if another live CM holds `server_id`.
    pub fn register(
        &mut self,
        now: Instant,
        node: &str,
        server_id: Vec<u8>,
        addr: SocketAddr,
    ) -> Result<RegistrationId, Refused> {
        if let Some((other, _)) = self
            .members
            .iter()
            .find(|(name, m)| m.server_id == server_id && *name != node)
        {
            return Err(Refused::ServerIdTaken { by: other.clone() });
        }
        self.next_registration += 1;
        let registration = RegistrationId(self.next_registration);
        // Back within the grace, or after it: its connections are its own again.
        self.leaving.retain(|(_, id)| *id != server_id);
        if let Some(pos) = self.departed.iter().position(|id| *id == server_id) {
            self.departed.remove(pos);
            self.changes.push_back(Change::Forget {
                server_id: server_id.clone(),
            });
        }
        let replaced = self.members.insert(
            node.to_owned(),
            Member {
                server_id: server_id.clone(),
                registration,
            },
        );
        if let Some(old) = replaced
            && old.server_id != server_id
        {
            // Its connections under the old id are as good as a departed
            // CM's: dropped for the grace, then reset.
            self.leaving
                .push_back((now + DEPARTED_GRACE, old.server_id));
        }
        self.changes.push_back(Change::Join {
            node: node.to_owned(),
            server_id,
            addr,
            draining: self.drained.contains(node),
        });
        Ok(registration)
    }

    /// The control connection of `registration` ended. If it is the node's
    /// current registration, the CM leaves the table and its grace starts;
    /// returns whether it left.
    pub fn connection_ended(
        &mut self,
        now: Instant,
        node: &str,
        registration: RegistrationId,
    ) -> bool {
        if self.members.get(node).map(|m| m.registration) != Some(registration) {
            return false; // replaced by a newer registration
        }
        let Some(member) = self.members.remove(node) else {
            return false;
        };
        self.leaving
            .push_back((now + DEPARTED_GRACE, member.server_id));
        self.changes.push_back(Change::Leave {
            node: node.to_owned(),
        });
        true
    }

    /// Drains (or undrains) `node`, if it is in the table (and remembers
    /// it, so it rejoins drained after a reconnect); returns whether it is.
    /// A name not in the table changes nothing, except that undraining a
    /// drained CM that is away removes its mark (it rejoins taking new
    /// handshakes; returns true).
    pub fn set_draining(&mut self, node: &str, draining: bool) -> bool {
        if !self.members.contains_key(node) {
            return !draining && self.drained.remove(node);
        }
        if draining {
            if self.drained.len() >= MAX_DRAINED {
                let members = &self.members;
                self.drained.retain(|name| members.contains_key(name));
            }
            self.drained.insert(node.to_owned());
        } else {
            self.drained.remove(node);
        }
        self.changes.push_back(Change::Drain {
            node: node.to_owned(),
            draining,
        });
        true
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.leaving.front().map(|(deadline, _)| *deadline)
    }

    /// CMs that stayed away past their grace depart.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((deadline, _)) = self.leaving.front() {
            if *deadline > now {
                break;
            }
            let Some((_, server_id)) = self.leaving.pop_front() else {
                break;
            };
            if self.departed.len() >= MAX_DEPARTED
                && let Some(oldest) = self.departed.pop_front()
            {
                self.changes.push_back(Change::Forget { server_id: oldest });
            }
            self.departed.push_back(server_id.clone());
            self.changes.push_back(Change::Depart { server_id });
        }
    }

    /// The next change for the routing table.
    pub fn poll_change(&mut self) -> Option<Change> {
        self.changes.pop_front()
    }

    /// Whether `node` is drained (registered or not).
    pub fn is_draining(&self, node: &str) -> bool {
        self.drained.contains(node)
    }

    /// Whether `node` is in the table.
    pub fn is_member(&self, node: &str) -> bool {
        self.members.contains_key(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn sid(n: u16) -> Vec<u8> {
        n.to_be_bytes().to_vec()
    }

    fn changes(m: &mut Membership) -> Vec<Change> {
        std::iter::from_fn(|| m.poll_change()).collect()
    }

    fn join(node: &str, n: u16, port: u16, draining: bool) -> Change {
        Change::Join {
            node: node.into(),
            server_id: sid(n),
            addr: addr(port),
            draining,
        }
    }

    fn leave(node: &str) -> Change {
        Change::Leave { node: node.into() }
    }

    #[test]
    fn a_registration_joins_and_the_end_of_its_connection_leaves() {
        let t0 = Instant::now();
        let mut m = Membership::new();
        let r = m.register(t0, "cm-1", sid(1), addr(9001)).unwrap();
        assert_eq!(changes(&mut m), [join("cm-1", 1, 9001, false)]);
        assert!(m.is_member("cm-1"));
        assert_eq!(m.poll_timeout(), None);
        assert!(m.connection_ended(t0, "cm-1", r));
        assert_eq!(changes(&mut m), [leave("cm-1")]);
        assert!(!m.is_member("cm-1"));
        // a second end of the same connection changes nothing
        assert!(!m.connection_ended(t0, "cm-1", r));
        assert_eq!(changes(&mut m), []);
    }

    #[test]
    fn a_cm_back_within_the_grace_keeps_its_clients() {
        let t0 = Instant::now();
        let mut m = Membership::new();
        let r = m.register(t0, "cm-1", sid(1), addr(9001)).unwrap();
        changes(&mut m);
        m.connection_ended(t0, "cm-1", r);
        assert_eq!(m.poll_timeout(), Some(t0 + DEPARTED_GRACE));
        let back = t0 + DEPARTED_GRACE - Duration::from_millis(1);
        m.handle_timeout(back);
        m.register(back, "cm-1", sid(1), addr(9001)).unwrap();
        assert_eq!(
            changes(&mut m),
            [leave("cm-1"), join("cm-1", 1, 9001, false)]
        );
        // its grace is cancelled: no reset later, not even at the old deadline
        assert_eq!(m.poll_timeout(), None);
        m.handle_timeout(t0 + DEPARTED_GRACE * 10);
        assert_eq!(changes(&mut m), []);
    }

    #[test]
    fn a_cm_away_past_the_grace_departs_exactly_at_the_deadline() {
        let t0 = Instant::now();
        let mut m = Membership::new();
        let r = m.register(t0, "cm-1", sid(1), addr(9001)).unwrap();
        let left = t0 + Duration::from_secs(7);
        m.connection_ended(left, "cm-1", r);
        changes(&mut m);
        let deadline = left + DEPARTED_GRACE;
        assert_eq!(m.poll_timeout(), Some(deadline));
        m.handle_timeout(deadline - Duration::from_nanos(1));
        assert_eq!(changes(&mut m), []);
        m.handle_timeout(deadline);
        assert_eq!(changes(&mut m), [Change::Depart { server_id: sid(1) }]);
        assert_eq!(m.poll_timeout(), None);
        // once it registers again its connections are its own
        m.register(deadline, "cm-1", sid(1), addr(9001)).unwrap();
        assert_eq!(
            changes(&mut m),
            [
                Change::Forget { server_id: sid(1) },
                join("cm-1", 1, 9001, false)
            ]
        );
    }

    #[test]
    fn a_cm_that_blinks_twice_gets_the_full_grace_from_its_last_departure() {
        let t0 = Instant::now();
        let mut m = Membership::new();
        let r = m.register(t0, "cm-1", sid(1), addr(9001)).unwrap();
        m.connection_ended(t0, "cm-1", r);
        let t1 = t0 + Duration::from_secs(1);
        let r = m.register(t1, "cm-1", sid(1), addr(9001)).unwrap();
        let t2 = t0 + Duration::from_secs(2);
        m.connection_ended(t2, "cm-1", r);
        changes(&mut m);
        assert_eq!(m.poll_timeout(), Some(t2 + DEPARTED_GRACE));
        m.handle_timeout(t0 + DEPARTED_GRACE);
        assert_eq!(changes(&mut m), []);
        m.handle_timeout(t2 + DEPARTED_GRACE);
        assert_eq!(changes(&mut m), [Change::Depart { server_id: sid(1) }]);
    }

    #[test]
    fn departures_come_in_deadline_order() {
        let t0 = Instant::now();
        let mut m = Membership::new();
        let a = m.register(t0, "cm-1", sid(1), addr(9001)).unwrap();
        let b = m.register(t0, "cm-2", sid(2), addr(9002)).unwrap();
        m.connection_ended(t0 + Duration::from_secs(1), "cm-2", b);
        m.connection_ended(t0 + Duration::from_secs(2), "cm-1", a);
        changes(&mut m);
        m.handle_timeout(t0 + Duration::from_secs(1) + DEPARTED_GRACE);
        assert_eq!(changes(&mut m), [Change::Depart { server_id: sid(2) }]);
        assert_eq!(
            m.poll_timeout(),
            Some(t0 + Duration::from_secs(2) + DEPARTED_GRACE)
        );
        m.handle_timeout(t0 + Duration::from_secs(60));
        assert_eq!(changes(&mut m), [Change::Depart { server_id: sid(1) }]);
    }

    #[test]
    fn the_departed_set_is_bounded_and_forgets_the_oldest() {
        let t0 = Instant::now();
        let mut m = Membership::new();
        let total = MAX_DEPARTED as u16 + 2;
        for n in 0..total {
            let node = format!("cm-{n}");
            let r = m.register(t0, &node, sid(n), addr(9000)).unwrap();
            m.connection_ended(t0 + Duration::from_millis(u64::from(n)), &node, r);
        }
        changes(&mut m);
        m.handle_timeout(t0 + Duration::from_secs(3600));
        let all = changes(&mut m);
        let departed = all
            .iter()
            .filter(|c| matches!(c, Change::Depart { .. }))
            .count();
        let forgotten: Vec<&Change> = all
            .iter()
            .filter(|c| matches!(c, Change::Forget { .. }))
            .collect();
        assert_eq!(departed, usize::from(total));
        assert_eq!(
            forgotten,
            [
                &Change::Forget { server_id: sid(0) },
                &Change::Forget { server_id: sid(1) }
            ]
        );
        assert_eq!(m.departed.len(), MAX_DEPARTED);
        // each Forget comes before the Depart that overflowed the set
        let pos = |c: &Change| all.iter().position(|x| x == c).unwrap();
        assert!(
            pos(&Change::Forget { server_id: sid(0) })
                < pos(&Change::Depart {
                    server_id: sid(MAX_DEPARTED as u16)
                })
        );
    }

    #[test]
    fn a_drained_cm_takes_no_new_handshakes_until_undrained_even_across_reconnects() {
        let t0 = Instant::now();
        let mut m = Membership::new();
        let r = m.register(t0, "cm-1", sid(1), addr(9001)).unwrap();
        changes(&mut m);
        assert!(m.set_draining("cm-1", true));
        assert_eq!(
            changes(&mut m),
            [Change::Drain {
                node: "cm-1".into(),
                draining: true
            }]
        );
        // draining again is still a change the table applies
        assert!(m.set_draining("cm-1", true));
        assert_eq!(changes(&mut m).len(), 1);
        m.connection_ended(t0, "cm-1", r);
        m.register(t0, "cm-1", sid(1), addr(9001)).unwrap();
        assert_eq!(
            changes(&mut m),
            [leave("cm-1"), join("cm-1", 1, 9001, true)]
        );
        assert!(m.set_draining("cm-1", false));
        assert_eq!(
            changes(&mut m),
            [Change::Drain {
                node: "cm-1".into(),
                draining: false
            }]
        );
    }

    #[test]
    fn undraining_a_drained_cm_that_is_away_removes_its_mark_so_it_rejoins_taking_handshakes() {
        let t0 = Instant::now();
        let mut m = Membership::new();
        let r = m.register(t0, "cm-1", sid(1), addr(9001)).unwrap();
        assert!(m.set_draining("cm-1", true));
        m.connection_ended(t0, "cm-1", r);
        changes(&mut m);
        // away: the operator undrains it (nothing in the table to change)
        assert!(m.set_draining("cm-1", false));
        assert_eq!(changes(&mut m), []);
        assert!(!m.is_draining("cm-1"));
        m.register(t0, "cm-1", sid(1), addr(9001)).unwrap();
        assert_eq!(changes(&mut m), [join("cm-1", 1, 9001, false)]);
        // a name with no mark and not in the table is still unknown
        assert!(!m.set_draining("cm-1-typo", false));
    }

    #[test]
    fn draining_an_unknown_node_changes_nothing_and_is_not_remembered() {
        let t0 = Instant::now();
        let mut m = Membership::new();
        assert!(!m.set_draining("cm-9", true));
        assert_eq!(changes(&mut m), []);
        assert!(!m.is_draining("cm-9"));
        m.register(t0, "cm-9", sid(9), addr(9009)).unwrap();
        assert_eq!(changes(&mut m), [join("cm-9", 9, 9009, false)]);
        // any number of made-up names leaves no trace
        for i in 0..10_000 {
            assert!(!m.set_draining(&format!("nobody-{i}"), true));
        }
        assert!(m.drained.is_empty());
        assert_eq!(changes(&mut m), []);
    }

    #[test]
    fn the_drain_marks_of_departed_cms_are_bounded_and_members_keep_theirs() {
        let t0 = Instant::now();
        let mut m = Membership::new();
        let r = m.register(t0, "cm-0", sid(0), addr(9000)).unwrap();
        assert!(m.set_draining("cm-0", true));
        // many CMs drained and gone
        for i in 1..=(MAX_DRAINED as u16 + 10) {
            let node = format!("cm-{i}");
            let r = m.register(t0, &node, sid(i), addr(9000)).unwrap();
            assert!(m.set_draining(&node, true));
            m.connection_ended(t0, &node, r);
        }
        assert!(m.drained.len() <= MAX_DRAINED, "{}", m.drained.len());
        assert!(
            m.is_draining("cm-0"),
            "a member's drain survives the pruning"
        );
        // a drained member that reconnects is still drained
        m.connection_ended(t0, "cm-0", r);
        changes(&mut m);
        m.register(t0, "cm-0", sid(0), addr(9000)).unwrap();
        assert_eq!(changes(&mut m), [join("cm-0", 0, 9000, true)]);
    }

    #[test]
    fn a_reconnect_under_the_same_name_replaces_the_old_registration() {
        let t0 = Instant::now();
        let mut m = Membership::new();
        let old = m.register(t0, "cm-1", sid(1), addr(9001)).unwrap();
        // the CM reconnected (new address) before its old connection timed out
        let new = m.register(t0, "cm-1", sid(1), addr(9101)).unwrap();
        assert_ne!(old, new);
        assert_eq!(
            changes(&mut m),
            [join("cm-1", 1, 9001, false), join("cm-1", 1, 9101, false)]
        );
        // the old connection's end does not remove the new registration
        assert!(!m.connection_ended(t0, "cm-1", old));
        assert_eq!(changes(&mut m), []);
        assert!(m.is_member("cm-1"));
        assert_eq!(m.poll_timeout(), None);
        // the new one's does
        assert!(m.connection_ended(t0, "cm-1", new));
        assert_eq!(changes(&mut m), [leave("cm-1")]);
    }

    #[test]
    fn a_server_id_held_by_another_live_cm_is_refused_without_side_effects() {
        let t0 = Instant::now();
        let mut m = Membership::new();
        let r1 = m.register(t0, "cm-1", sid(1), addr(9001)).unwrap();
        let r2 = m.register(t0, "cm-2", sid(2), addr(9002)).unwrap();
        changes(&mut m);
        assert_eq!(
            m.register(t0, "cm-3", sid(1), addr(9003)),
            Err(Refused::ServerIdTaken { by: "cm-1".into() })
        );
        assert_eq!(
            m.register(t0, "cm-3", sid(1), addr(9003))
                .unwrap_err()
                .to_string(),
            "server id taken by cm-1"
        );
        // cm-1 reconnecting with cm-2's server id is refused too...
        assert_eq!(
            m.register(t0, "cm-1", sid(2), addr(9001)),
            Err(Refused::ServerIdTaken { by: "cm-2".into() })
        );
        assert_eq!(changes(&mut m), []);
        assert!(!m.is_member("cm-3"));
        // ...and leaves cm-1's registration untouched: its connection's end
        // still removes it
        assert!(m.connection_ended(t0, "cm-1", r1));
        assert!(m.connection_ended(t0, "cm-2", r2));
        assert_eq!(changes(&mut m), [leave("cm-1"), leave("cm-2")]);
        // once it has left, the server id is free (and its grace cancelled)
        m.register(t0, "cm-3", sid(1), addr(9003)).unwrap();
        assert_eq!(changes(&mut m), [join("cm-3", 1, 9003, false)]);
        assert_eq!(m.poll_timeout(), Some(t0 + DEPARTED_GRACE));
        m.handle_timeout(t0 + DEPARTED_GRACE);
        assert_eq!(changes(&mut m), [Change::Depart { server_id: sid(2) }]);
    }

    #[test]
    fn a_cm_registering_again_under_another_server_id_gives_the_old_one_the_grace_of_a_cm_that_left()
     {
        let t0 = Instant::now();
        let mut m = Membership::new();
        let old = m.register(t0, "cm-1", sid(1), addr(9001)).unwrap();
        changes(&mut m);
        let t1 = t0 + Duration::from_secs(5);
        m.register(t1, "cm-1", sid(7), addr(9001)).unwrap();
        assert_eq!(changes(&mut m), [join("cm-1", 7, 9001, false)]);
        assert_eq!(m.poll_timeout(), Some(t1 + DEPARTED_GRACE));
        // the old registration's end changes nothing more
        assert!(!m.connection_ended(t1, "cm-1", old));
        m.handle_timeout(t1 + DEPARTED_GRACE - Duration::from_nanos(1));
        assert_eq!(changes(&mut m), []);
        m.handle_timeout(t1 + DEPARTED_GRACE);
        assert_eq!(changes(&mut m), [Change::Depart { server_id: sid(1) }]);
        assert_eq!(m.poll_timeout(), None);
        // the old id is free for another CM, and is its own again
        m.register(t1 + DEPARTED_GRACE, "cm-2", sid(1), addr(9002))
            .unwrap();
        assert_eq!(
            changes(&mut m),
            [
                Change::Forget { server_id: sid(1) },
                join("cm-2", 1, 9002, false)
            ]
        );
    }

    #[test]
    fn a_cm_that_switches_server_ids_and_back_within_the_grace_keeps_its_clients() {
        let t0 = Instant::now();
        let mut m = Membership::new();
        m.register(t0, "cm-1", sid(1), addr(9001)).unwrap();
        m.register(t0, "cm-1", sid(7), addr(9001)).unwrap();
        m.register(t0, "cm-1", sid(1), addr(9001)).unwrap();
        changes(&mut m);
        // sid 7 was held only for a moment: it departs; sid 1 is live
        m.handle_timeout(t0 + DEPARTED_GRACE);
        assert_eq!(changes(&mut m), [Change::Depart { server_id: sid(7) }]);
        assert_eq!(m.poll_timeout(), None);
    }
}
