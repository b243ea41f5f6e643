//! Frames that wait for a roster: put aside until the driver reports the
//! roster loaded (or failed), then handled in order (see
//! [`RosterCache`](super::roster_cache::RosterCache)).

use std::time::Instant;

use cm_protocol::Frame;
use xmpp_stream::StreamCondition;

use super::roster_cache::Deferred;
use super::{Action, Router};
use crate::routing::NodeId;
use crate::storage::Roster;

impl Router {
    /// Keeps `frame` until `user`'s roster is loaded; later frames of its
    /// session wait behind it.
    pub(super) fn defer(&mut self, user: String, node: NodeId, frame: Frame) {
        let sid = frame.sid();
        match self.rosters.defer(user.clone(), node, frame) {
            Deferred::Waiting { load: true } => self.emit(Action::LoadRoster { user }),
            Deferred::Waiting { load: false } | Deferred::Dropped { kick: false } => {}
            Deferred::Dropped { kick: true } => {
                if let Some(sid) = sid {
                    self.kick((node, sid), StreamCondition::PolicyViolation);
                }
            }
        }
    }

    /// A roster could not be read: the sessions that waited for it end,
    /// and the forwards that waited for it are refused (their senders'
    /// cores send them again).
    pub(super) fn roster_failed(&mut self, user: String) {
        let mut ended = std::collections::HashSet::new();
        for (node, frame) in self.rosters.failed(&user) {
            if let Frame::Forward { seq, .. } = frame {
                self.answer_forward(node, seq, false);
            } else if let Some(sid) = frame.sid()
                && ended.insert((node, sid))
            {
                self.kick((node, sid), StreamCondition::InternalServerError);
            }
        }
    }

    /// A roster the router asked for (`None`: no such account): keep it and
    /// handle the frames that waited for it.
    pub(super) fn roster_loaded(&mut self, user: String, roster: Option<Roster>, now: Instant) {
        for (node, frame) in self.rosters.loaded(&user, roster) {
            self.frame(node, frame, now);
        }
        self.forget_roster_if_unused(&user);
    }

    /// Drops a cached roster once its user has no session and no frame
    /// waits for it.
    pub(super) fn forget_roster_if_unused(&mut self, bare: &str) {
        let in_use = !self.table.resources(bare).is_empty();
        self.rosters.forget_if_unused(bare, in_use);
    }
}
