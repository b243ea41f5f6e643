//! The router's side of group chat: stanzas for the MUC service go to it
//! (or to the core that owns the room's slot), and what it decides is
//! carried out. A stanza for a whole room leaves as one `DeliverMany`
//! frame per CM: the CM writes the copies, each with its session's `to`,
//! so a room message costs the core one frame per CM, not one per
//! occupant. SM sessions still get their copy in their ledger (with its
//! `to`, for a resumption to replay).

use std::collections::BTreeMap;

use bytes::Bytes;
use cm_protocol::{Frame, Kind, MAX_FANOUT_SIDS, RouteHeader, SessionId};
use jid::Jid;
use xmpp_stream::element::Element;
use xmpp_stream::ns;
use xmpp_stream::stanza::stamp_to;

use super::sm_sessions::Admission;
use super::{Action, Query, Router};
use crate::address;
use crate::muc::{Inbound, MucAction, MucService};
use crate::routing::{NodeId, SessionAddr};
use crate::storage::ArchiveEntry;

impl Router {
    /// Offers the group chat service `service` (XEP-0045).
    pub fn with_muc(mut self, service: MucService) -> Self {
        self.muc = Some(service);
        self
    }

    /// Sends a room's stanza to each session in a frame of its own, as
    /// for any other stanza, instead of one `DeliverMany` per CM (for
    /// measuring what the fan-out frame saves; off by default).
    pub fn with_fanout_per_session(mut self, on: bool) -> Self {
        self.fanout_per_session = on;
        self
    }

    /// The group chat service's JID, if offered.
    pub fn muc_jid(&self) -> Option<&str> {
        self.muc.as_ref().map(MucService::jid)
    }

    /// Rooms in memory (0 without the service).
    pub fn rooms_open(&self) -> usize {
        self.muc.as_ref().map_or(0, MucService::rooms)
    }

    /// Whether `to` is the group chat service or one of its rooms.
    pub(super) fn is_muc(&self, to: &Jid) -> bool {
        self.muc_jid() == Some(to.domain().as_str())
    }

    /// A stanza from a local session for the service or a room.
    pub(super) fn route_to_muc(
        &mut self,
        addr: SessionAddr,
        header: &RouteHeader,
        to: &Jid,
        payload: Bytes,
    ) {
        let room = to.to_bare().to_string();
        if header.kind == Kind::Presence && to.node().is_some() {
            // remembered, so the room hears when the session goes
            self.remember_directed(addr, &room, header.stanza_type.as_deref());
        }
        if to.node().is_some() && !self.serves(&room) {
            // the room lives on the core that owns its slot
            match header.kind {
                // (its sender's acknowledgement waits for that core)
                Kind::Message => self.forward_stanza(&room, header, payload),
                kind => {
                    self.send_to_peer(&to.to_string(), kind, &header.from, payload);
                }
            }
            return;
        }
        self.muc_in(&header.from, &to.to_string(), payload);
    }

    /// Hands a stanza to the service (from `from`, a full JID, to `to`).
    pub(super) fn muc_in(&mut self, from: &str, to: &str, payload: Bytes) {
        let unix = self.unix_now();
        // a stanza that waits for its room to load holds its sender's
        // acknowledgement until it is handled
        let hold = match &self.muc {
            Some(muc) if muc.would_wait(to) => self.hold_ack(),
            Some(_) => None,
            None => return,
        };
        let Some(muc) = &mut self.muc else {
            return;
        };
        muc.handle(
            Inbound {
                from: from.to_owned(),
                to: to.to_owned(),
                payload,
                hold,
            },
            unix,
        );
        self.muc_actions();
    }

    /// A room asked for by [`Action::LoadRoom`] was read (`record`: none
    /// if there is no such room), or could not be (`failed`).
    pub(super) fn room_loaded(
        &mut self,
        room: &str,
        record: Option<Bytes>,
        history: Vec<(i64, Bytes)>,
        failed: bool,
    ) {
        let unix = self.unix_now();
        let Some(muc) = &mut self.muc else {
            return;
        };
        let history = history
            .into_iter()
            .map(|(micros, p)| (u64::try_from(micros / 1_000_000).unwrap_or(0), p))
            .collect();
        match failed {
            true => muc.load_failed(room),
            false => muc.loaded(room, record.as_deref(), history, unix),
        }
        self.muc_actions();
    }

    /// A room's record asked for by [`Action::SaveRoom`] is stored (or
    /// not): its asker gets `payload` (the result, or the error).
    pub(super) fn room_saved(&mut self, to: &str, room: &str, payload: Bytes) {
        self.room_send(to, Kind::Iq, room, payload);
    }

    /// Session `full` went away or unavailable: it leaves its rooms here.
    pub(super) fn rooms_left(&mut self, full: &str) {
        if let Some(muc) = &mut self.muc {
            muc.session_gone(full);
            self.muc_actions();
        }
    }

    /// Session `full` went unavailable: it leaves its rooms here (a join
    /// it sent to a room still loading is void).
    pub(super) fn rooms_unavailable(&mut self, full: &str) {
        if let Some(muc) = &mut self.muc {
            muc.session_unavailable(full);
            self.muc_actions();
        }
    }

    /// Session `full` was replaced by a new bind of its JID: it leaves its
    /// rooms, and the new session is not told.
    pub(super) fn rooms_replaced(&mut self, full: &str) {
        if let Some(muc) = &mut self.muc {
            muc.session_replaced(full);
            self.muc_actions();
        }
    }

    /// Forgets rooms whose slots this core no longer owns.
    pub(super) fn rooms_moved(&mut self) {
        let Some(shard) = &self.shard else { return };
        if let Some(muc) = &mut self.muc {
            muc.retain(|room| shard.owner(room) == super::shards::Owner::Local);
        }
        self.muc_actions();
    }

    /// The Unix time now, from the last [`super::Input::WallClock`].
    pub(super) fn unix_now(&self) -> u64 {
        match (self.wall, self.now) {
            (Some((at, unix)), Some(now)) => unix + now.saturating_duration_since(at).as_secs(),
            (Some((_, unix)), None) => unix,
            _ => 0,
        }
    }

    fn muc_actions(&mut self) {
        while let Some(action) = self.muc.as_mut().and_then(MucService::poll_action) {
            match action {
                MucAction::Send {
                    to,
                    kind,
                    from,
                    payload,
                } => self.room_send(&to, kind, &from, payload),
                MucAction::Fanout {
                    to,
                    kind,
                    from,
                    payload,
                } => self.room_fanout(&to, kind, &from, &payload),
                MucAction::Archive {
                    room,
                    id,
                    from,
                    payload,
                    sender,
                    hold,
                } => {
                    // the sender's acknowledgement waits for the write (a
                    // stanza that waited for its room: under its hold)
                    let origin = match hold {
                        Some(hold) => {
                            let outer = self.origin.replace(hold);
                            let origin = self.hold_ack();
                            self.origin = outer;
                            origin
                        }
                        None => self.hold_ack(),
                    };
                    let entries = vec![ArchiveEntry {
                        user: room.clone(),
                        id,
                        peer: from,
                        stamp: 0,
                        payload,
                    }];
                    let bounce = super::Bounce {
                        sender: sender.jid,
                        to: sender.to,
                        id: sender.id,
                    };
                    self.emit(Action::Archive {
                        entries,
                        origin,
                        bounce,
                    });
                }
                MucAction::Release { hold } => self.stored(hold),
                MucAction::Save {
                    room,
                    record,
                    answer,
                } => self.emit(Action::SaveRoom {
                    room,
                    record,
                    answer,
                }),
                MucAction::Delete { room } => self.emit(Action::DeleteRoom { room }),
                MucAction::Load { room } => self.emit(Action::LoadRoom { room }),
                MucAction::Query { to, room, iq } => self.room_archive_query(&to, &room, &iq),
            }
        }
    }

    /// A stanza from a room to one JID.
    fn room_send(&mut self, to: &str, kind: Kind, from: &str, payload: Bytes) {
        if let Some(name) = self.component_of(to) {
            // (an invitation or an error for a component's JID)
            self.send_to_component(&name, payload);
            return;
        }
        let bare = address::bare(to);
        // (only local users: an invitation to another domain goes nowhere)
        if Jid::new(bare).map_or(true, |j| !self.is_local(&j)) {
            return;
        }
        if !self.serves(bare) {
            self.send_to_peer(to, kind, from, payload);
            return;
        }
        let mtype = match kind {
            Kind::Message => xmpp_stream::stanza::inspect(&payload)
                .ok()
                .and_then(|t| t.attr("type").map(str::to_owned))
                .unwrap_or_else(|| "normal".into()),
            _ => String::new(),
        };
        match address::split_full(to) {
            Some((bare, res)) => {
                if let Some(r) = self.table.full(bare, res) {
                    match kind {
                        // (a private message waits behind stored messages
                        // and is stored with the session's live rows)
                        Kind::Message => self.deliver_message((r.node, r.sid), payload, &mtype),
                        _ => self.deliver((r.node, r.sid), payload),
                    }
                }
            }
            // an invitation: to a local user who does not block the room,
            // at the user's best sessions or stored
            None => {
                let Ok(jid) = Jid::new(bare) else { return };
                if !self.is_local(&jid) || jid.node().is_none() {
                    return;
                }
                let bare = bare.to_owned();
                let header = RouteHeader {
                    kind: Kind::Message,
                    stanza_type: Some(mtype.clone()),
                    to: Some(bare.clone()),
                    id: None,
                    from: from.to_owned(),
                };
                if self.blocked_inbound(&bare, &header) {
                    return;
                }
                self.message_to_bare(&bare, &mtype, payload, None);
            }
        }
    }

    /// The same stanza to many sessions: one `DeliverMany` per CM for the
    /// local ones, a forward each for another core's.
    fn room_fanout(&mut self, to: &[std::sync::Arc<str>], kind: Kind, from: &str, payload: &Bytes) {
        let mut by_node: BTreeMap<NodeId, Vec<SessionId>> = BTreeMap::new();
        for full in to {
            let Some((bare, res)) = address::split_full(full) else {
                continue;
            };
            if !self.serves(bare) {
                if let Some(copy) = stamp_to(payload, full) {
                    self.send_to_peer(full, kind, from, copy);
                }
                continue;
            }
            let Some(r) = self.table.full(bare, res) else {
                continue;
            };
            let addr = (r.node, r.sid);
            if self.fanout_per_session {
                if let Some(copy) = stamp_to(payload, full) {
                    self.deliver(addr, copy);
                }
                continue;
            }
            if self.roster_writes.building() {
                // held with a roster change: a copy of its own
                if let Some(copy) = stamp_to(payload, full) {
                    self.deliver(addr, copy);
                }
                continue;
            }
            // an SM session's ledger keeps the shared stanza and its JID
            match self.sessions.admit_addressed(addr, payload, full) {
                Admission::Untracked | Admission::Send => {}
                // kept for the resumption, or dropped (far behind)
                _ => continue,
            }
            self.stats.delivered += 1;
            by_node.entry(addr.0).or_default().push(addr.1);
        }
        for (node, sids) in by_node {
            for chunk in sids.chunks(MAX_FANOUT_SIDS) {
                self.send(
                    node,
                    Frame::DeliverMany {
                        sids: chunk.to_vec(),
                        payload: payload.clone(),
                    },
                );
            }
        }
    }

    /// An archive query on a room's archive, from a local session.
    fn room_archive_query(&mut self, to: &str, room: &str, iq: &[u8]) {
        let Some((bare, res)) = address::split_full(to) else {
            return;
        };
        let Ok(el) = Element::parse(iq, ns::CLIENT) else {
            return;
        };
        let Some(r) = self.table.full(bare, res) else {
            // (a session of another core: storage queries are answered to
            // a core's own sessions only)
            let error = xmpp_stream::stanza::error_reply(
                xmpp_stream::stanza::StanzaKind::Iq,
                el.attr("id"),
                room,
                to,
                xmpp_stream::StanzaCondition::ServiceUnavailable,
                Some("archive queries on a room of another core are not served yet"),
            );
            self.send_to_peer(to, Kind::Iq, room, error);
            return;
        };
        let addr = (r.node, r.sid);
        let header = RouteHeader {
            kind: Kind::Iq,
            stanza_type: Some("set".into()),
            to: Some(room.to_owned()),
            id: el.attr("id").map(str::to_owned),
            from: to.to_owned(),
        };
        let Some(query) = el.elements().next() else {
            return;
        };
        match super::iq::parse_mam_query(query) {
            Ok((q, flip)) => {
                let query = Query::Archive {
                    user: room.to_owned(),
                    requester: to.to_owned(),
                    iq_id: header.id.clone().unwrap_or_default(),
                    query_id: query.attr("queryid").map(str::to_owned),
                    query: q,
                    flip,
                };
                self.query(addr, &header, query);
            }
            Err(condition) => self.reply_error(addr.0, addr.1, &header, condition),
        }
    }
}
