//! Roster changes answered only once they are durable.
//!
//! A stanza that changes rosters (a roster set, a subscription presence) is
//! handled as one change: its roster writes are collected into one
//! [`Action::WriteRoster`], and everything it would deliver (the IQ result,
//! roster pushes, presence) or send to other cores (the subscription
//! stanza, as a tracked forward; presence) is held back.
//! Until the driver reports the outcome, the rosters it touched count as not
//! ready, so every frame that needs one of them (and every frame of their
//! users' sessions) waits in the [`RosterCache`](super::roster_cache::RosterCache)
//! as it does during a load. On [`Input::RosterWritten`](super::Input) the
//! held deliveries go out; on [`Input::RosterWriteFailed`](super::Input) they
//! are dropped, the rosters go back to what they were before the change (as
//! the database has them) and the sender gets a stanza error. Either way the
//! frames that waited are then handled in order.
//!
//! At most one change is in flight per roster (frames needing it wait), so
//! the changes in flight are bounded by the rosters in memory, each holding
//! at most two roster snapshots and the stanzas one stanza caused.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use cm_protocol::{Kind, RouteHeader};
use xmpp_stream::StanzaCondition;

use super::live_rows::MessageRow;
use super::roster_cache::RosterSnapshot;
use super::sm_sessions::Delivery;
use super::{Action, RosterWrite, Router};
use crate::routing::SessionAddr;

/// A roster change being built while its stanza is handled.
#[derive(Debug, Default)]
pub(super) struct Change {
    /// The writes, in order.
    writes: Vec<RosterWrite>,
    /// Each touched roster as it was before the change (bare JID).
    before: Vec<(String, RosterSnapshot)>,
    /// What the change delivers once durable, in order.
    deliveries: Vec<(SessionAddr, Bytes, Delivery)>,
    /// What the change sends to other cores once durable, in order.
    forwards: Vec<PeerStanza>,
}

/// A stanza for another core's user that a roster change sends once
/// durable.
#[derive(Debug)]
pub(super) struct PeerStanza {
    /// Its recipient (a bare JID, or a full one if not `tracked`).
    pub(super) to: String,
    /// Its kind.
    pub(super) kind: Kind,
    /// Its sender (a JID of this domain).
    pub(super) from: String,
    /// The stanza.
    pub(super) payload: Bytes,
    /// Whether its owner's answer is waited for (a subscription stanza:
    /// sent again until taken, and holding its sender's acknowledgement).
    pub(super) tracked: bool,
}

/// A change whose writes are with storage.
#[derive(Debug)]
pub(super) struct InFlight {
    /// The session whose stanza made the change.
    sender: SessionAddr,
    /// That stanza, to answer with an error.
    header: RouteHeader,
    /// The SM stanza (token, `h`) whose acknowledgement waits for it.
    origin: Option<(u64, u32)>,
    change: Change,
}

/// Roster changes: the one being built and those in flight, by id.
#[derive(Debug, Default)]
pub(super) struct RosterWrites {
    building: Option<Change>,
    in_flight: HashMap<u64, InFlight>,
    next_id: u64,
}

impl RosterWrites {
    /// Whether a roster change is being built (its deliveries are held).
    pub(super) fn building(&self) -> bool {
        self.building.is_some()
    }
}

impl Router {
    /// Handles the stanza `header` describes from `sender` with `f`, as one
    /// roster change (see the module docs).
    pub(super) fn roster_change(
        &mut self,
        sender: SessionAddr,
        header: &RouteHeader,
        f: impl FnOnce(&mut Self),
    ) {
        debug_assert!(self.roster_writes.building.is_none());
        self.roster_writes.building = Some(Change::default());
        f(self);
        let Some(change) = self.roster_writes.building.take() else {
            return;
        };
        if change.writes.is_empty() {
            // nothing to wait for
            self.release(change.deliveries);
            return self.release_forwards(change.forwards, &header.from);
        }
        let txn = self.roster_writes.next_id;
        self.roster_writes.next_id += 1;
        for (bare, _) in &change.before {
            self.rosters.write_started(bare);
        }
        let origin = self.hold_ack();
        self.emit(Action::WriteRoster {
            txn,
            writes: change.writes.clone(),
        });
        self.roster_writes.in_flight.insert(
            txn,
            InFlight {
                sender,
                header: header.clone(),
                origin,
                change,
            },
        );
    }

    /// Keeps a delivery back while a roster change is being built; gives
    /// it back otherwise.
    pub(super) fn hold_for_change(
        &mut self,
        addr: SessionAddr,
        payload: Bytes,
        delivery: Delivery,
    ) -> Option<(SessionAddr, Bytes, Delivery)> {
        match &mut self.roster_writes.building {
            Some(change) => {
                change.deliveries.push((addr, payload, delivery));
                None
            }
            None => Some((addr, payload, delivery)),
        }
    }

    /// Keeps a stanza for another core back while a roster change is being
    /// built; gives it back otherwise.
    pub(super) fn hold_forward_for_change(&mut self, stanza: PeerStanza) -> Option<PeerStanza> {
        match &mut self.roster_writes.building {
            Some(change) => {
                change.forwards.push(stanza);
                None
            }
            None => Some(stanza),
        }
    }

    /// `bare`'s roster is about to change: remembers it as it is, once per
    /// change.
    pub(super) fn roster_changing(&mut self, bare: &str) {
        let Some(change) = &mut self.roster_writes.building else {
            return;
        };
        if change.before.iter().any(|(b, _)| b == bare) {
            return;
        }
        if let Some(roster) = self.rosters.snapshot(bare) {
            change.before.push((bare.to_owned(), roster));
        }
    }

    /// A write of the change being built.
    pub(super) fn record_write(&mut self, write: RosterWrite) {
        match &mut self.roster_writes.building {
            Some(change) => change.writes.push(write),
            None => {
                // Every roster change is made inside `roster_change`.
                tracing::error!(?write, "a roster write outside a change; written unwatched");
                let txn = self.roster_writes.next_id;
                self.roster_writes.next_id += 1;
                self.emit(Action::WriteRoster {
                    txn,
                    writes: vec![write],
                });
            }
        }
    }

    /// A change's writes committed: what it delivers goes out.
    pub(super) fn roster_written(&mut self, txn: u64, now: Instant) {
        let Some(done) = self.roster_writes.in_flight.remove(&txn) else {
            return;
        };
        self.release(done.change.deliveries);
        // (its tracked forwards hold the sender's acknowledgement in turn)
        let outer = std::mem::replace(&mut self.origin, done.origin);
        self.release_forwards(done.change.forwards, &done.header.from);
        self.origin = outer;
        if let Some(origin) = done.origin {
            self.stored(origin);
        }
        self.rosters_settled(done.change.before, now);
    }

    /// A change's writes failed: its rosters go back to how they were, its
    /// deliveries are dropped, and its sender gets `condition`.
    pub(super) fn roster_write_failed(
        &mut self,
        txn: u64,
        condition: StanzaCondition,
        now: Instant,
    ) {
        let Some(failed) = self.roster_writes.in_flight.remove(&txn) else {
            return;
        };
        tracing::warn!(sender = failed.header.from, %condition, "a roster change could not be stored; its sender is told");
        for (bare, roster) in &failed.change.before {
            self.rosters.restore(bare, roster.clone());
        }
        let (node, sid) = failed.sender;
        if self.table.jid_of(node, sid).is_some()
            && failed.header.stanza_type.as_deref() != Some("error")
        {
            self.reply_error(node, sid, &failed.header, condition);
        }
        if let Some(origin) = failed.origin {
            // a forward's change not stored here (fenced, or storage
            // failing) is refused back: its sender's core sends it again
            self.inbound_refused(origin.0);
            self.stored(origin);
        }
        self.rosters_settled(failed.change.before, now);
    }

    /// Deliveries held for a change, to the sessions still there.
    fn release(&mut self, deliveries: Vec<(SessionAddr, Bytes, Delivery)>) {
        for (addr, payload, delivery) in deliveries {
            if self.table.jid_of(addr.0, addr.1).is_some() {
                self.deliver_as(addr, payload, delivery);
                self.live_ticket = MessageRow::Unset;
            }
        }
    }

    /// Stanzas for other cores held for a change, sent (tracked ones
    /// holding the acknowledgement of the stanza being handled, if any;
    /// `sender`: that stanza's sender).
    fn release_forwards(&mut self, forwards: Vec<PeerStanza>, sender: &str) {
        for f in forwards {
            self.send_held(f, Some(sender));
        }
    }

    /// A change's rosters are no longer written: the frames that waited for
    /// them are handled, in order.
    fn rosters_settled(&mut self, rosters: Vec<(String, RosterSnapshot)>, now: Instant) {
        for (bare, _) in &rosters {
            self.rosters.write_done(bare);
        }
        for (bare, _) in rosters {
            for (node, frame) in self.rosters.settled(&bare) {
                self.frame(node, frame, now);
            }
            self.forget_roster_if_unused(&bare);
        }
    }
}
