//! Group chat (XEP-0045): the multi-user chat service at
//! `conference.DOMAIN`, a sans-IO state machine of its own. The router
//! hands it every stanza addressed to the service or its rooms
//! ([`MucService::handle`]) with the sender's full JID, and carries out
//! what it decides ([`MucService::poll_action`]): stanzas to one JID, the
//! same stanza to many sessions ([`MucAction::Fanout`]: the router turns
//! it into one frame per CM, which stamps each copy's `to`), archive and
//! room-record writes, room loads. No clocks (the Unix time comes in with
//! each input), no storage, no sockets.
//!
//! A room lives on the core that owns its slot (hashed from its bare JID,
//! like a user's); it is loaded from storage on its first stanza, and the
//! stanzas for it wait for the load. Rooms, occupants and history are in
//! memory; configuration, affiliations and subject of persistent rooms
//! are stored, messages go to the room's archive.

pub mod forms;
mod moderation;
pub mod room;
pub mod stanzas;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use cm_protocol::Kind;
use jid::Jid;
use sha2::Digest;
use xmpp_stream::element::Element;
use xmpp_stream::stanza::{StanzaKind, error_reply};
use xmpp_stream::{StanzaCondition, ns};

use crate::address;
use crate::router::ArchiveIds;
use room::{Affiliation, Occupant, Role, Room, RoomConfig, RoomRecord, Whois};
use stanzas::PresenceNote;

/// `http://jabber.org/protocol/muc`
pub const MUC: &str = "http://jabber.org/protocol/muc";
/// `http://jabber.org/protocol/muc#user`
pub const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
/// `http://jabber.org/protocol/muc#admin`
pub const MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
/// `http://jabber.org/protocol/muc#owner`
pub const MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
/// XEP-0421 occupant ids.
pub const OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";
/// XEP-0410: the service answers an occupant's self-ping itself.
pub const SELF_PING: &str = "http://jabber.org/protocol/muc#self-ping-optimization";
/// XEP-0249 direct invitations.
pub const CONFERENCE: &str = "jabber:x:conference";

/// Rooms kept in memory at most (loaded or created).
pub const MAX_ROOMS: usize = 100_000;
/// Rooms one session may be in at once.
pub const MAX_ROOMS_PER_SESSION: usize = 256;
/// Rooms being loaded at once.
pub const MAX_LOADING: usize = 1024;
/// Stanzas waiting for one room's load.
pub const MAX_WAITING: usize = 64;
/// Rooms listed in the service's disco#items.
pub const MAX_LISTED: usize = 1000;
/// Most rooms one user (bare JID) creates in [`CREATION_WINDOW_SECS`]:
/// no user fills the service's [`MAX_ROOMS`], or storage, by creating.
pub const MAX_CREATIONS_PER_WINDOW: u32 = 20;
/// The window [`MAX_CREATIONS_PER_WINDOW`] counts in, in seconds.
pub const CREATION_WINDOW_SECS: u64 = 3600;
/// Most users whose creations are counted at once (past it, the oldest
/// window is forgotten).
pub const MAX_CREATORS: usize = 10_000;
/// History messages sent on join when the client asks for no number.
pub const DEFAULT_HISTORY: usize = 20;

/// A stanza for the service or one of its rooms.
#[derive(Clone, Debug)]
pub struct Inbound {
    /// The sender's full JID.
    pub from: String,
    /// The stanza's `to`, as addressed.
    pub to: String,
    /// The stanza (its `from` stamped).
    pub payload: Bytes,
    /// The sender's acknowledgement held while the stanza waits for its
    /// room to load (the router's token; given back by
    /// [`MucAction::Release`]).
    pub hold: Option<(u64, u32)>,
}

/// A stanza error's addressing, for when a write the sender waits for fails.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sender {
    /// The sender's full JID.
    pub jid: String,
    /// Whom it addressed.
    pub to: String,
    /// Its `id`.
    pub id: Option<String>,
}

/// What the service decided (see [`MucService::poll_action`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MucAction {
    /// Deliver a stanza (with its `to`) to one JID, full or bare.
    Send {
        /// The recipient.
        to: String,
        /// The stanza's kind.
        kind: Kind,
        /// Its `from` (the room or an occupant).
        from: String,
        /// The stanza.
        payload: Bytes,
    },
    /// Deliver the same stanza (without `to`) to each of these sessions,
    /// each copy addressed to its session.
    Fanout {
        /// The sessions' full JIDs (shared: each SM session's ledger keeps
        /// one beside the shared stanza).
        to: Vec<Arc<str>>,
        /// The stanza's kind.
        kind: Kind,
        /// Its `from`.
        from: String,
        /// The stanza.
        payload: Bytes,
    },
    /// Keep a room message in the room's archive; the sender's
    /// acknowledgement waits for it.
    Archive {
        /// The room's bare JID.
        room: String,
        /// Its stanza id.
        id: String,
        /// The sender as `room/nick`.
        from: String,
        /// The message as broadcast.
        payload: Bytes,
        /// Who sent it (told if the write fails).
        sender: Sender,
        /// The acknowledgement it held while waiting for the room to load
        /// (none: the stanza being routed now).
        hold: Option<(u64, u32)>,
    },
    /// Store a persistent room's record (JSON of [`RoomRecord`]), then
    /// send `answer` (an IQ result to its asker; if the write fails, the
    /// error instead).
    Save {
        /// The room's bare JID.
        room: String,
        /// The record.
        record: Bytes,
        /// The asker, the result and the error to send once the write is
        /// done.
        answer: Option<Answer>,
    },
    /// Remove a room's record and archive.
    Delete {
        /// The room's bare JID.
        room: String,
    },
    /// Load a room's record and report [`MucService::loaded`] (or
    /// [`MucService::load_failed`]); its stanzas wait.
    Load {
        /// The room's bare JID.
        room: String,
    },
    /// A stanza that waited for its room is done with: the
    /// acknowledgement it held may go.
    Release {
        /// What [`Inbound::hold`] held.
        hold: (u64, u32),
    },
    /// Answer an archive query (XEP-0313) on a room's archive.
    Query {
        /// The asker's full JID.
        to: String,
        /// The room's bare JID.
        room: String,
        /// The IQ.
        iq: Bytes,
    },
}

/// What to tell the asker of a change once it is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The asker's full JID.
    pub to: String,
    /// The IQ result.
    pub result: Bytes,
    /// The IQ error if the write fails.
    pub error: Bytes,
}

/// The service (see the module docs).
pub struct MucService {
    jid: String,
    rooms: HashMap<String, Room>,
    waiting: HashMap<String, Vec<Inbound>>,
    /// Rooms by the sessions in them (full JID → room bare JIDs).
    joined: HashMap<String, Vec<String>>,
    ids: ArchiveIds,
    secret: [u8; 32],
    unix: u64,
    /// The hold of the waiting stanza being handled, if any.
    current_hold: Option<(u64, u32)>,
    /// The sessions leaving now are not told (their JID is another
    /// session's already: [`MucService::session_replaced`]).
    quiet: bool,
    /// Persistent rooms keep an archive (the core's `archive` setting).
    archive: bool,
    /// Rooms created by each user in its current window: the window's
    /// start (Unix seconds) and the count.
    creations: HashMap<String, (u64, u32)>,
    out: VecDeque<MucAction>,
}

impl MucService {
    /// The service at `jid`; stanza ids start after `ids_base`; occupant
    /// ids are keyed with `secret` (the same on every core and restart).
    pub fn new(jid: &str, ids_base: u64, secret: [u8; 32]) -> Self {
        Self {
            jid: jid.to_owned(),
            rooms: HashMap::new(),
            waiting: HashMap::new(),
            joined: HashMap::new(),
            ids: ArchiveIds::new(ids_base),
            secret,
            unix: 0,
            current_hold: None,
            quiet: false,
            archive: true,
            creations: HashMap::new(),
            out: VecDeque::new(),
        }
    }

    /// Keeps rooms' archives (the default) or not.
    pub fn with_archive(mut self, on: bool) -> Self {
        self.archive = on;
        self
    }

    /// Whether a stanza to `to` would wait for its room to load (the
    /// router then holds the sender's acknowledgement in
    /// [`Inbound::hold`]).
    pub fn would_wait(&self, to: &str) -> bool {
        match Jid::new(to) {
            Ok(j) if j.node().is_some() => !self.rooms.contains_key(&j.to_bare().to_string()),
            _ => false,
        }
    }

    /// The service's JID (its domain).
    pub fn jid(&self) -> &str {
        &self.jid
    }

    /// Rooms in memory.
    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }

    /// The next action to carry out.
    pub fn poll_action(&mut self) -> Option<MucAction> {
        self.out.pop_front()
    }

    /// A stanza for the service or a room, at Unix time `unix` (seconds).
    pub fn handle(&mut self, inbound: Inbound, unix: u64) {
        self.unix = unix;
        let Ok(to) = Jid::new(&inbound.to) else {
            return self.refuse(&inbound, StanzaCondition::JidMalformed);
        };
        if to.node().is_none() {
            return self.service_stanza(&inbound);
        }
        let room = to.to_bare().to_string();
        if self.rooms.contains_key(&room) {
            let nick = to.resource().map(|r| r.as_str().to_owned());
            return self.room_stanza(&room, nick.as_deref(), &inbound);
        }
        if let Some(waiting) = self.waiting.get_mut(&room) {
            if waiting.len() < MAX_WAITING {
                waiting.push(inbound);
            } else {
                self.refuse_waiting(&inbound, StanzaCondition::ResourceConstraint);
            }
            return;
        }
        if self.waiting.len() >= MAX_LOADING || self.rooms.len() >= MAX_ROOMS {
            return self.refuse_waiting(&inbound, StanzaCondition::ResourceConstraint);
        }
        self.waiting.insert(room.clone(), vec![inbound]);
        self.out.push_back(MucAction::Load { room });
    }

    /// A room's record was loaded (`None`: no such room), with its newest
    /// archived messages (Unix seconds, payload; oldest first) for its
    /// history; the stanzas that waited for it are handled.
    pub fn loaded(
        &mut self,
        room: &str,
        record: Option<&[u8]>,
        history: Vec<(u64, Bytes)>,
        unix: u64,
    ) {
        let Some(waiting) = self.waiting.remove(room) else {
            return;
        };
        if let Some(raw) = record {
            match serde_json::from_slice::<RoomRecord>(raw) {
                Ok(r) if !self.rooms.contains_key(room) => {
                    let mut loaded = Room::from_record(r);
                    for (at, payload) in history {
                        loaded.remember(at, payload);
                    }
                    self.rooms.insert(room.to_owned(), loaded);
                }
                Ok(_) => {}
                Err(e) => {
                    // never replaced by a new room of the same name
                    tracing::error!(room, error = %e, "a stored room's record does not parse");
                    for inbound in waiting {
                        self.refuse_waiting(&inbound, StanzaCondition::InternalServerError);
                    }
                    return;
                }
            }
        }
        self.unix = unix;
        for inbound in waiting {
            if let Ok(to) = Jid::new(&inbound.to) {
                let nick = to.resource().map(|r| r.as_str().to_owned());
                self.current_hold = inbound.hold;
                self.room_stanza(room, nick.as_deref(), &inbound);
                self.current_hold = None;
            }
            self.release(&inbound);
        }
    }

    /// Gives back the acknowledgement a waiting stanza held.
    fn release(&mut self, inbound: &Inbound) {
        if let Some(hold) = inbound.hold {
            self.out.push_back(MucAction::Release { hold });
        }
    }

    /// Refuses a stanza that waited (its sender is told, then its
    /// acknowledgement goes).
    fn refuse_waiting(&mut self, inbound: &Inbound, condition: StanzaCondition) {
        self.refuse(inbound, condition);
        self.release(inbound);
    }

    /// A room could not be loaded: the stanzas that waited get an error.
    pub fn load_failed(&mut self, room: &str) {
        for inbound in self.waiting.remove(room).unwrap_or_default() {
            self.refuse_waiting(&inbound, StanzaCondition::ResourceConstraint);
        }
    }

    /// A session went unavailable: it leaves every room it is in; a join
    /// it sent to a room still loading is void (its other stanzas there
    /// are handled in order once the room loads).
    pub fn session_unavailable(&mut self, full: &str) {
        for room in self.joined.remove(full).unwrap_or_default() {
            self.leave(&room, full, &[]);
        }
        // (a join it sent before going unavailable is void)
        if self.waiting.is_empty() {
            return;
        }
        let mut dropped = Vec::new();
        for waiting in self.waiting.values_mut() {
            waiting.retain(|i| {
                let join = i.from == full
                    && xmpp_stream::stanza::inspect(&i.payload)
                        .is_ok_and(|t| t.name == "presence" && t.attr("type").is_none());
                if join {
                    dropped.push(i.clone());
                }
                !join
            });
        }
        for inbound in dropped {
            self.release(&inbound);
        }
    }

    /// A session is gone: it leaves every room it is in, and what it sent
    /// to rooms still loading is dropped.
    pub fn session_gone(&mut self, full: &str) {
        self.session_unavailable(full);
        if self.waiting.is_empty() {
            return;
        }
        let mut dropped = Vec::new();
        for waiting in self.waiting.values_mut() {
            waiting.retain(|i| {
                let keep = i.from != full;
                if !keep {
                    dropped.push(i.clone());
                }
                keep
            });
        }
        for inbound in dropped {
            self.release(&inbound);
        }
    }

    /// A session was replaced by a new one bound to its full JID: the old
    /// one leaves its rooms as [`MucService::session_gone`] says, but what
    /// it would be told goes to nobody (the JID is the new session's,
    /// which has joined nothing yet).
    pub fn session_replaced(&mut self, full: &str) {
        self.quiet = true;
        self.session_gone(full);
        self.quiet = false;
    }

    /// Forgets the rooms `keep` says no (a cluster: their slots went to
    /// another core, which loads them from storage). Their occupants are
    /// not told: their clients' self-pings find out (XEP-0410).
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.rooms.retain(|room, _| keep(room));
        let gone: Vec<String> = self.waiting.keys().filter(|r| !keep(r)).cloned().collect();
        for room in gone {
            // (their senders try again: the room's new core takes them)
            for inbound in self.waiting.remove(&room).unwrap_or_default() {
                self.refuse_waiting(&inbound, StanzaCondition::ResourceConstraint);
            }
        }
        for rooms in self.joined.values_mut() {
            rooms.retain(|r| keep(r));
        }
        self.joined.retain(|_, rooms| !rooms.is_empty());
    }

    // ---- what arrives ----

    fn service_stanza(&mut self, inbound: &Inbound) {
        let Some(el) = self.parse(inbound) else {
            return;
        };
        if el.name != "iq" {
            if el.name == "message" {
                self.refuse_el(inbound, &el, StanzaCondition::ServiceUnavailable);
            }
            return;
        }
        let Some(child) = iq_request(&el) else {
            return self.refuse_el(inbound, &el, StanzaCondition::BadRequest);
        };
        let answer = match (child.name.as_str(), child.ns.as_str()) {
            ("query", ns::DISCO_INFO) if child.attr("node").is_none() => {
                let mut q = Element::new("query", ns::DISCO_INFO).with_child(
                    Element::new("identity", ns::DISCO_INFO)
                        .with_attr("category", "conference")
                        .with_attr("type", "text")
                        .with_attr("name", "Chatrooms"),
                );
                for f in [
                    ns::DISCO_INFO,
                    ns::DISCO_ITEMS,
                    MUC,
                    OCCUPANT_ID,
                    SELF_PING,
                    ns::PING,
                ] {
                    q = q.with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", f));
                }
                q
            }
            ("query", ns::DISCO_ITEMS) if child.attr("node").is_none() => {
                let mut listed: Vec<(&String, &Room)> = self
                    .rooms
                    .iter()
                    .filter(|(_, r)| r.config.public && !r.locked)
                    .collect();
                listed.sort_by(|a, b| a.0.cmp(b.0));
                let mut q = Element::new("query", ns::DISCO_ITEMS);
                for (jid, r) in listed.into_iter().take(MAX_LISTED) {
                    let mut item = Element::new("item", ns::DISCO_ITEMS).with_attr("jid", jid);
                    if !r.config.name.is_empty() {
                        item.set_attr("name", r.config.name.clone());
                    }
                    q = q.with_child(item);
                }
                q
            }
            ("ping", ns::PING) => return self.result(inbound, &el, None),
            _ => return self.refuse_el(inbound, &el, StanzaCondition::ServiceUnavailable),
        };
        self.result(inbound, &el, Some(answer));
    }

    fn room_stanza(&mut self, room: &str, nick: Option<&str>, inbound: &Inbound) {
        let Some(el) = self.parse(inbound) else {
            return;
        };
        if !self.rooms.contains_key(room) && el.name != "presence" {
            // no such room (XEP-0410: a self-ping to a room that is gone
            // tells its client it is not joined)
            let condition = match (el.name.as_str(), nick) {
                ("iq", Some(_)) => StanzaCondition::NotAcceptable,
                _ => StanzaCondition::ItemNotFound,
            };
            return self.refuse_el(inbound, &el, condition);
        }
        match (el.name.as_str(), nick) {
            ("presence", Some(nick)) => self.presence(room, nick, inbound, &el),
            ("presence", None) => {
                if el.attr("type") == Some("unavailable") {
                    self.leave(room, &inbound.from, &[]);
                } else if el.attr("type").is_none() {
                    self.refuse_el(inbound, &el, StanzaCondition::JidMalformed);
                }
            }
            ("message", None) => self.room_message(room, inbound, &el),
            ("message", Some(nick)) => self.private_message(room, nick, inbound, &el),
            ("iq", None) => self.room_iq(room, inbound, &el),
            ("iq", Some(nick)) => self.occupant_iq(room, nick, inbound, &el),
            _ => {}
        }
    }

    fn presence(&mut self, room: &str, nick: &str, inbound: &Inbound, el: &Element) {
        match el.attr("type") {
            None => {}
            Some("unavailable") => return self.leave(room, &inbound.from, &own_children(el)),
            _ => return,
        }
        if nick.is_empty() || nick.len() > room::MAX_NICK_BYTES {
            return self.refuse_el(inbound, el, StanzaCondition::JidMalformed);
        }
        let from = inbound.from.as_str();
        let current = self
            .rooms
            .get(room)
            .and_then(|r| r.occupant_of(from))
            .map(|(n, _)| n.to_owned());
        match current {
            // a client that lost track (a new stream bound to the same
            // resource) joins again: it gets the room's state again
            Some(current) if current == nick && el.child("x", MUC).is_some() => {
                if let Some(o) = self
                    .rooms
                    .get_mut(room)
                    .and_then(|r| r.occupants.get_mut(nick))
                {
                    o.presence = own_children(el);
                }
                self.welcome(room, nick, from, Vec::new(), el.child("x", MUC));
            }
            Some(current) if current == nick => self.presence_update(room, nick, el),
            Some(current) => self.change_nick(room, &current, nick, inbound, el),
            None => self.join(room, nick, inbound, el),
        }
    }

    fn join(&mut self, room_jid: &str, nick: &str, inbound: &Inbound, el: &Element) {
        let from = inbound.from.as_str();
        let bare = address::bare(from).to_owned();
        let muc = el.child("x", MUC);
        let mut codes = Vec::new();
        if self.joined.get(from).map_or(0, Vec::len) >= MAX_ROOMS_PER_SESSION {
            return self.refuse_el(inbound, el, StanzaCondition::ResourceConstraint);
        }
        if !self.rooms.contains_key(room_jid) {
            if self.rooms.len() >= MAX_ROOMS || !self.count_creation(&bare) {
                return self.refuse_el(inbound, el, StanzaCondition::ResourceConstraint);
            }
            let room = Room::created(&bare, RoomConfig::default());
            self.rooms.insert(room_jid.to_owned(), room);
            codes.push(201);
        } else if self
            .rooms
            .get(room_jid)
            .is_some_and(|r| r.locked && r.affiliation(&bare) == Affiliation::Owner)
        {
            // still waiting for its configuration: the owner is told again
            codes.push(201);
        }
        let occupant_id = self.occupant_id(room_jid, &bare);
        let Some(room) = self.rooms.get_mut(room_jid) else {
            return;
        };
        let affiliation = room.affiliation(&bare);
        let password = muc.and_then(|x| x.child("password", MUC)).map(|p| p.text());
        let refusal = if room.locked && affiliation != Affiliation::Owner {
            Some(StanzaCondition::ItemNotFound)
        } else if affiliation == Affiliation::Outcast {
            Some(StanzaCondition::Forbidden)
        } else if room.config.members_only && affiliation < Affiliation::Member {
            Some(StanzaCondition::RegistrationRequired)
        } else if room.config.password.is_some()
            && affiliation < Affiliation::Admin
            && password != room.config.password
        {
            Some(StanzaCondition::NotAuthorized)
        } else if room.occupants.get(nick).is_some_and(|o| o.bare != bare) {
            Some(StanzaCondition::Conflict)
        } else if !room.occupants.contains_key(nick)
            && room.occupants.len() >= room.config.max_users as usize
            && affiliation < Affiliation::Admin
        {
            Some(StanzaCondition::ServiceUnavailable)
        } else {
            None
        };
        if let Some(condition) = refusal {
            return self.refuse_el(inbound, el, condition);
        }
        let role = room.entry_role(affiliation);
        let new_occupant = !room.occupants.contains_key(nick);
        let occupant = room
            .occupants
            .entry(nick.to_owned())
            .or_insert_with(|| Occupant {
                bare: bare.clone(),
                sessions: Vec::new(),
                role,
                occupant_id,
                presence: Vec::new(),
            });
        occupant.sessions.push(from.to_owned());
        occupant.presence = own_children(el);
        room.nicks.insert(from.to_owned(), nick.to_owned());
        self.joined
            .entry(from.to_owned())
            .or_default()
            .push(room_jid.to_owned());
        // 2. the newcomer, to everyone else (a second session of an
        // occupant already there is no news to them)
        if new_occupant {
            self.broadcast_presence(room_jid, nick, &PresenceNote::default(), Some(from));
        }
        self.welcome(room_jid, nick, from, codes, muc);
    }

    /// What a session that (re)joined is sent: the occupants already
    /// there, its own presence (110 and `codes`), the history it asked
    /// for and the subject, in that order (XEP-0045 §7.2).
    fn welcome(
        &mut self,
        room_jid: &str,
        nick: &str,
        session: &str,
        mut codes: Vec<u16>,
        muc: Option<&Element>,
    ) {
        let Some(room) = self.rooms.get(room_jid) else {
            return;
        };
        let Some(role) = room.occupants.get(nick).map(|o| o.role) else {
            return;
        };
        let sees = room.config.whois == Whois::Anyone || role == Role::Moderator;
        let mut others: Vec<Bytes> = Vec::new();
        for (other_nick, o) in &room.occupants {
            if other_nick == nick || !room.config.presence_broadcast.contains(o.role) {
                continue;
            }
            let jid = sees
                .then(|| o.sessions.first().map(String::as_str))
                .flatten();
            let p = stanzas::occupant_presence(
                room_jid,
                other_nick,
                o,
                room.affiliation(&o.bare),
                o.role,
                jid,
                &PresenceNote::default(),
            );
            others.push(to_bytes(p));
        }
        if room.config.whois == Whois::Anyone {
            codes.push(100);
        }
        if room.archives() && self.archive {
            codes.push(170);
        }
        let history: Vec<(u64, Bytes)> = history_wanted(muc, room, self.unix)
            .into_iter()
            .map(|said| (said.at, said.payload.clone()))
            .collect();
        let subject = stanzas::subject_message(room_jid, &room.subject.nick, &room.subject.text);
        for p in others {
            self.send_to(session, Kind::Presence, room_jid, p);
        }
        self.self_presence(room_jid, nick, session, &codes);
        for (at, said) in history {
            if let Some(p) = stanzas::with_delay(&said, room_jid, at) {
                self.send_to(session, Kind::Message, room_jid, p);
            }
        }
        self.send_to(session, Kind::Message, room_jid, to_bytes(subject));
    }

    fn presence_update(&mut self, room_jid: &str, nick: &str, el: &Element) {
        let Some(o) = self
            .rooms
            .get_mut(room_jid)
            .and_then(|r| r.occupants.get_mut(nick))
        else {
            return;
        };
        o.presence = own_children(el);
        self.broadcast_presence(room_jid, nick, &PresenceNote::default(), None);
    }

    fn change_nick(
        &mut self,
        room_jid: &str,
        old: &str,
        new: &str,
        inbound: &Inbound,
        el: &Element,
    ) {
        let Some(room) = self.rooms.get(room_jid) else {
            return;
        };
        let bare = address::bare(&inbound.from);
        let single = room
            .occupants
            .get(old)
            .is_some_and(|o| o.sessions.len() == 1);
        if room.occupants.contains_key(new) || !single {
            let why = match single {
                true => StanzaCondition::Conflict,
                false => StanzaCondition::NotAcceptable,
            };
            return self.refuse_el(inbound, el, why);
        }
        if room.affiliation(bare) == Affiliation::Outcast {
            return self.refuse_el(inbound, el, StanzaCondition::Forbidden);
        }
        let note = PresenceNote {
            unavailable: true,
            codes: vec![303],
            new_nick: Some(new),
            ..PresenceNote::default()
        };
        self.broadcast_presence(room_jid, old, &note, None);
        let Some(room) = self.rooms.get_mut(room_jid) else {
            return;
        };
        if let Some(mut o) = room.occupants.remove(old) {
            o.presence = own_children(el);
            room.nicks.insert(inbound.from.clone(), new.to_owned());
            room.occupants.insert(new.to_owned(), o);
        }
        self.broadcast_presence(room_jid, new, &PresenceNote::default(), None);
    }

    /// Session `full` leaves `room_jid` (if in it).
    fn leave(&mut self, room_jid: &str, full: &str, status: &[Element]) {
        let Some(room) = self.rooms.get_mut(room_jid) else {
            return;
        };
        let Some(nick) = room.nicks.remove(full) else {
            return;
        };
        if let Some(rooms) = self.joined.get_mut(full) {
            rooms.retain(|r| r != room_jid);
            if rooms.is_empty() {
                self.joined.remove(full);
            }
        }
        let Some(o) = room.occupants.get_mut(&nick) else {
            return;
        };
        o.sessions.retain(|s| s != full);
        if !o.sessions.is_empty() {
            // the user is still there from another session: only this
            // one hears it left (110, with its own JID)
            let mut one = o.clone();
            one.sessions = vec![full.to_owned()];
            one.presence = status.to_vec();
            let note = PresenceNote {
                unavailable: true,
                codes: vec![110],
                ..PresenceNote::default()
            };
            let p = stanzas::occupant_presence(
                room_jid,
                &nick,
                &one,
                room.affiliation(&one.bare),
                Role::None,
                Some(full),
                &note,
            );
            let from = format!("{room_jid}/{nick}");
            if !self.quiet {
                self.send_to(full, Kind::Presence, &from, to_bytes(p));
            }
            return;
        }
        o.presence = status.to_vec();
        let note = PresenceNote {
            unavailable: true,
            ..PresenceNote::default()
        };
        self.remove_occupant(room_jid, &nick, &note, Some(full));
        self.end_if_empty(room_jid);
    }

    /// Takes `nick` out of the room and tells everyone (and its sessions,
    /// and `gone`: a session that just left).
    fn remove_occupant(
        &mut self,
        room_jid: &str,
        nick: &str,
        note: &PresenceNote<'_>,
        gone: Option<&str>,
    ) {
        let mut leaving: Vec<String> = gone.map(str::to_owned).into_iter().collect();
        if let Some(room) = self.rooms.get_mut(room_jid)
            && let Some(o) = room.occupants.get(nick)
        {
            for s in &o.sessions {
                room.nicks.remove(s);
                leaving.push(s.clone());
            }
        }
        for s in &leaving {
            if let Some(rooms) = self.joined.get_mut(s) {
                rooms.retain(|r| r != room_jid);
                if rooms.is_empty() {
                    self.joined.remove(s);
                }
            }
        }
        // everyone hears it leave; its sessions (the one that just left
        // too) with 110, and with its real JID
        if let Some(room) = self.rooms.get_mut(room_jid)
            && let Some(o) = room.occupants.get_mut(nick)
        {
            o.sessions = leaving;
        }
        self.broadcast_presence_as(room_jid, nick, note, None, Role::None);
        if let Some(room) = self.rooms.get_mut(room_jid) {
            room.occupants.remove(nick);
        }
    }

    /// Counts a room `bare` creates now; false (nothing counted) past
    /// [`MAX_CREATIONS_PER_WINDOW`]. With [`MAX_CREATORS`] windows
    /// running, the oldest is forgotten (evicting anyone's takes that
    /// many other accounts creating).
    fn count_creation(&mut self, bare: &str) -> bool {
        let now = self.unix;
        let over = |start: u64| now.saturating_sub(start) >= CREATION_WINDOW_SECS;
        if !self.creations.contains_key(bare) && self.creations.len() >= MAX_CREATORS {
            self.creations.retain(|_, (start, _)| !over(*start));
            if self.creations.len() >= MAX_CREATORS
                && let Some(oldest) = self
                    .creations
                    .iter()
                    .min_by_key(|(_, (start, _))| *start)
                    .map(|(user, _)| user.clone())
            {
                self.creations.remove(&oldest);
            }
        }
        let (start, count) = self.creations.entry(bare.to_owned()).or_insert((now, 0));
        if over(*start) {
            (*start, *count) = (now, 0);
        }
        if *count >= MAX_CREATIONS_PER_WINDOW {
            return false;
        }
        *count += 1;
        true
    }

    fn end_if_empty(&mut self, room_jid: &str) {
        let Some(room) = self.rooms.get(room_jid) else {
            return;
        };
        if room.is_empty() {
            // a temporary room ends (a locked one too: its creator left
            // before configuring it); a persistent one leaves memory (its
            // record and archive are stored: its next stanza loads it)
            self.rooms.remove(room_jid);
        }
    }

    fn room_message(&mut self, room_jid: &str, inbound: &Inbound, el: &Element) {
        let mtype = el.attr("type").unwrap_or("normal");
        if mtype == "error" {
            return;
        }
        let from = inbound.from.as_str();
        if mtype != "groupchat" {
            if let Some(x) = el.child("x", MUC_USER)
                && x.child("invite", MUC_USER).is_some()
            {
                return self.invite(room_jid, inbound, el, x);
            }
            return self.refuse_el(inbound, el, StanzaCondition::BadRequest);
        }
        let Some(room) = self.rooms.get(room_jid) else {
            return;
        };
        let Some((nick, o)) = room.occupant_of(from) else {
            return self.refuse_el(inbound, el, StanzaCondition::NotAcceptable);
        };
        let nick = nick.to_owned();
        if o.role < Role::Participant {
            return self.refuse_el(inbound, el, StanzaCondition::Forbidden);
        }
        let occupant_from = format!("{room_jid}/{nick}");
        if let Some(subject) = el.child("subject", ns::CLIENT)
            && el.child("body", ns::CLIENT).is_none()
        {
            if !(o.role == Role::Moderator || room.config.change_subject) {
                return self.refuse_el(inbound, el, StanzaCondition::Forbidden);
            }
            let text = subject.text();
            if text.len() > room::MAX_TEXT_BYTES {
                return self.refuse_el(inbound, el, StanzaCondition::NotAcceptable);
            }
            let m = stanzas::subject_message(room_jid, &nick, &text);
            if let Some(room) = self.rooms.get_mut(room_jid) {
                room.subject = room::Subject {
                    nick: nick.clone(),
                    text,
                };
            }
            self.save(room_jid);
            let all = self.sessions_of(room_jid);
            return self.fanout(all, Kind::Message, &occupant_from, to_bytes(m));
        }
        let id = self.ids.next_id();
        let m = stanzas::broadcast_message(el, &occupant_from, room_jid, &id, &o.occupant_id);
        let payload = to_bytes(m);
        // (a message without a body, a chat state or a marker, is passed
        // on but neither kept in the history nor archived)
        let said = el.child("body", ns::CLIENT).is_some();
        let archive = said && room.archives() && self.archive;
        if said && let Some(room) = self.rooms.get_mut(room_jid) {
            room.remember(self.unix, payload.clone());
        }
        if archive {
            self.out.push_back(MucAction::Archive {
                room: room_jid.to_owned(),
                id,
                from: occupant_from.clone(),
                payload: payload.clone(),
                sender: Sender {
                    jid: inbound.from.clone(),
                    to: room_jid.to_owned(),
                    id: el.attr("id").map(str::to_owned),
                },
                hold: self.current_hold,
            });
        }
        let all = self.sessions_of(room_jid);
        self.fanout(all, Kind::Message, &occupant_from, payload);
    }

    fn private_message(&mut self, room_jid: &str, nick: &str, inbound: &Inbound, el: &Element) {
        let mtype = el.attr("type").unwrap_or("normal");
        if mtype == "error" {
            return;
        }
        let Some(room) = self.rooms.get(room_jid) else {
            return;
        };
        let Some((from_nick, sender_occupant)) = room.occupant_of(&inbound.from) else {
            return self.refuse_el(inbound, el, StanzaCondition::NotAcceptable);
        };
        if mtype == "groupchat" {
            return self.refuse_el(inbound, el, StanzaCondition::BadRequest);
        }
        if !room.config.allow_pm {
            return self.refuse_el(inbound, el, StanzaCondition::Forbidden);
        }
        let Some(target) = room.occupants.get(nick) else {
            return self.refuse_el(inbound, el, StanzaCondition::ItemNotFound);
        };
        let sender = format!("{room_jid}/{from_nick}");
        let m = stanzas::private_message(el, &sender, mtype, &sender_occupant.occupant_id);
        let payload = to_bytes(m);
        let sessions = target.sessions.clone();
        for s in sessions {
            self.send_to(&s, Kind::Message, &sender, payload.clone());
        }
    }

    fn invite(&mut self, room_jid: &str, inbound: &Inbound, el: &Element, x: &Element) {
        let Some(room) = self.rooms.get(room_jid) else {
            return;
        };
        let from = inbound.from.as_str();
        let bare = address::bare(from).to_owned();
        let affiliation = room.affiliation(&bare);
        let Some((_, o)) = room.occupant_of(from) else {
            return self.refuse_el(inbound, el, StanzaCondition::NotAcceptable);
        };
        let may = affiliation >= Affiliation::Admin
            || (o.role >= Role::Participant
                && (room.config.allow_invites || !room.config.members_only));
        if !may {
            return self.refuse_el(inbound, el, StanzaCondition::Forbidden);
        }
        let password = room.config.password.clone();
        let members_only = room.config.members_only;
        let invites: Vec<(String, Option<String>)> = x
            .elements()
            .filter(|i| i.name == "invite")
            .filter_map(|i| {
                let to = Jid::new(i.attr("to")?).ok()?.to_bare().to_string();
                let reason = i.child("reason", MUC_USER).map(|r| r.text());
                Some((to, reason))
            })
            .take(16)
            .collect();
        for (to, reason) in invites {
            if members_only
                && affiliation >= Affiliation::Admin
                && let Some(room) = self.rooms.get_mut(room_jid)
                && room.affiliation(&to) == Affiliation::None
            {
                room.set_affiliation(&to, Affiliation::Member);
                self.save(room_jid);
            }
            let mut invite = Element::new("invite", MUC_USER).with_attr("from", bare.clone());
            if let Some(r) = &reason {
                invite = invite.with_child(Element::new("reason", MUC_USER).with_text(r.clone()));
            }
            let mut ux = Element::new("x", MUC_USER).with_child(invite);
            if let Some(p) = &password {
                ux = ux.with_child(Element::new("password", MUC_USER).with_text(p.clone()));
            }
            let m = Element::new("message", ns::CLIENT)
                .with_attr("from", room_jid)
                .with_attr("to", to.clone())
                .with_child(ux)
                .with_child(Element::new("x", CONFERENCE).with_attr("jid", room_jid));
            self.send_to(&to, Kind::Message, room_jid, to_bytes(m));
        }
    }

    fn room_iq(&mut self, room_jid: &str, inbound: &Inbound, el: &Element) {
        let Some(child) = iq_request(el) else {
            return self.refuse_el(inbound, el, StanzaCondition::BadRequest);
        };
        let itype = el.attr("type").unwrap_or("");
        let Some(room) = self.rooms.get(room_jid) else {
            return self.refuse_el(inbound, el, StanzaCondition::ItemNotFound);
        };
        let bare = address::bare(&inbound.from).to_owned();
        let affiliation = room.affiliation(&bare);
        if room.locked && affiliation != Affiliation::Owner {
            return self.refuse_el(inbound, el, StanzaCondition::ItemNotFound);
        }
        match (child.name.as_str(), child.ns.as_str(), itype) {
            ("query", ns::DISCO_INFO, "get") if child.attr("node").is_none() => {
                let q = room_disco_info(room_jid, room);
                self.result(inbound, el, Some(q))
            }
            ("query", ns::DISCO_ITEMS, "get") => {
                self.result(inbound, el, Some(Element::new("query", ns::DISCO_ITEMS)))
            }
            ("ping", ns::PING, "get") => self.result(inbound, el, None),
            ("query", MUC_ADMIN, _) => self.admin_iq(room_jid, inbound, el, child),
            ("query", MUC_OWNER, _) => self.owner_iq(room_jid, inbound, el, child),
            ("query", q, "set") if q.starts_with(ns::MAM_PREFIX) => {
                // members and occupants read a members-only or
                // password-protected room's archive; outcasts none
                let member =
                    affiliation >= Affiliation::Member || room.occupant_of(&inbound.from).is_some();
                let closed = room.config.members_only || room.config.password.is_some();
                if !room.archives() || !self.archive {
                    return self.refuse_el(inbound, el, StanzaCondition::ServiceUnavailable);
                }
                if affiliation == Affiliation::Outcast || (closed && !member) {
                    return self.refuse_el(inbound, el, StanzaCondition::Forbidden);
                }
                self.out.push_back(MucAction::Query {
                    to: inbound.from.clone(),
                    room: room_jid.to_owned(),
                    iq: inbound.payload.clone(),
                });
            }
            _ => self.refuse_el(inbound, el, StanzaCondition::ServiceUnavailable),
        }
    }

    fn occupant_iq(&mut self, room_jid: &str, nick: &str, inbound: &Inbound, el: &Element) {
        if !matches!(el.attr("type"), Some("get" | "set")) {
            return;
        }
        let Some(room) = self.rooms.get(room_jid) else {
            return;
        };
        let Some((own, _)) = room.occupant_of(&inbound.from) else {
            // XEP-0410: not joined (any more)
            return self.refuse_el(inbound, el, StanzaCondition::NotAcceptable);
        };
        let ping = iq_request(el).is_some_and(|c| c.name == "ping" && c.ns == ns::PING);
        if own == nick && ping {
            // XEP-0410 §3.3: the service answers its own occupant's self-ping
            return self.result(inbound, el, None);
        }
        if !room.occupants.contains_key(nick) {
            return self.refuse_el(inbound, el, StanzaCondition::ItemNotFound);
        }
        // (IQs between occupants are not relayed)
        self.refuse_el(inbound, el, StanzaCondition::ServiceUnavailable)
    }

    // ---- what goes out ----

    fn parse(&mut self, inbound: &Inbound) -> Option<Element> {
        match Element::parse(&inbound.payload, ns::CLIENT) {
            Ok(el) => Some(el),
            Err(_) => {
                self.refuse(inbound, StanzaCondition::BadRequest);
                None
            }
        }
    }

    /// Sends a stanza to one JID (addressed to it, if it is not yet).
    fn send_to(&mut self, to: &str, kind: Kind, from: &str, payload: Bytes) {
        let payload = xmpp_stream::stanza::stamp_to(&payload, to).unwrap_or(payload);
        self.out.push_back(MucAction::Send {
            to: to.to_owned(),
            kind,
            from: from.to_owned(),
            payload,
        });
    }

    fn fanout(&mut self, to: Vec<Arc<str>>, kind: Kind, from: &str, payload: Bytes) {
        if to.is_empty() {
            return;
        }
        self.out.push_back(MucAction::Fanout {
            to,
            kind,
            from: from.to_owned(),
            payload,
        });
    }

    /// Every session in the room.
    fn sessions_of(&self, room_jid: &str) -> Vec<Arc<str>> {
        self.rooms
            .get(room_jid)
            .map(|r| r.audience().map(|(s, _)| Arc::from(s)).collect())
            .unwrap_or_default()
    }

    /// `nick`'s presence as `role` (its real JID shown if `jid`).
    fn occupant_presence_for(
        &self,
        room_jid: &str,
        nick: &str,
        note: &PresenceNote<'_>,
        jid: bool,
        role: Role,
    ) -> Bytes {
        let Some(room) = self.rooms.get(room_jid) else {
            return Bytes::new();
        };
        let Some(o) = room.occupants.get(nick) else {
            return Bytes::new();
        };
        let real = jid.then(|| o.sessions.first().map(String::as_str).unwrap_or(&o.bare));
        let p = stanzas::occupant_presence(
            room_jid,
            nick,
            o,
            room.affiliation(&o.bare),
            role,
            real,
            note,
        );
        to_bytes(p)
    }

    /// `nick`'s presence to everyone in the room (each of its own
    /// sessions with 110), but `except`.
    fn broadcast_presence(
        &mut self,
        room_jid: &str,
        nick: &str,
        note: &PresenceNote<'_>,
        except: Option<&str>,
    ) {
        let Some(role) = self
            .rooms
            .get(room_jid)
            .and_then(|r| r.occupants.get(nick))
            .map(|o| o.role)
        else {
            return;
        };
        self.broadcast_presence_as(room_jid, nick, note, except, role);
    }

    fn broadcast_presence_as(
        &mut self,
        room_jid: &str,
        nick: &str,
        note: &PresenceNote<'_>,
        except: Option<&str>,
        role: Role,
    ) {
        let Some(room) = self.rooms.get(room_jid) else {
            return;
        };
        let Some(o) = room.occupants.get(nick) else {
            return;
        };
        let own: Vec<String> = o.sessions.clone();
        // (an occupant whose role is not broadcast is heard of only when
        // it leaves by force, so it is not left in anyone's list)
        let shown = room.config.presence_broadcast.contains(o.role)
            || room.config.presence_broadcast.contains(role)
            || note.codes.iter().any(|c| matches!(c, 301 | 307 | 321));
        let (mut seeing, mut blind) = (Vec::new(), Vec::new());
        for (s, sees) in room.audience() {
            if !shown || Some(s) == except || own.iter().any(|x| x == s) {
                continue;
            }
            match sees {
                true => seeing.push(Arc::from(s)),
                false => blind.push(Arc::from(s)),
            }
        }
        let from = format!("{room_jid}/{nick}");
        let with_jid = self.occupant_presence_for(room_jid, nick, note, true, role);
        let without = self.occupant_presence_for(room_jid, nick, note, false, role);
        self.fanout(seeing, Kind::Presence, &from, with_jid);
        self.fanout(blind, Kind::Presence, &from, without);
        let mut with_self = note.clone();
        with_self.codes.push(110);
        let to_self = self.occupant_presence_for(room_jid, nick, &with_self, true, role);
        if self.quiet {
            return;
        }
        for s in own.iter().filter(|s| Some(s.as_str()) != except) {
            self.send_to(s, Kind::Presence, &from, to_self.clone());
        }
    }

    /// The newcomer's own presence (110 and `codes`).
    fn self_presence(&mut self, room_jid: &str, nick: &str, session: &str, codes: &[u16]) {
        let Some(role) = self
            .rooms
            .get(room_jid)
            .and_then(|r| r.occupants.get(nick))
            .map(|o| o.role)
        else {
            return;
        };
        let mut all = codes.to_vec();
        all.push(110);
        let note = PresenceNote {
            codes: all,
            ..PresenceNote::default()
        };
        let p = self.occupant_presence_for(room_jid, nick, &note, true, role);
        self.send_to(session, Kind::Presence, &format!("{room_jid}/{nick}"), p);
    }

    /// Stores the room's record if it is persistent.
    fn save(&mut self, room_jid: &str) {
        self.save_then(room_jid, None);
    }

    /// Stores the room's record if it is persistent, then sends `answer`
    /// (its result once stored, its error if the write fails); a
    /// temporary room's answer goes at once.
    fn save_then(&mut self, room_jid: &str, answer: Option<Answer>) {
        let Some(room) = self.rooms.get(room_jid) else {
            return;
        };
        if !room.config.persistent {
            if let Some(a) = answer {
                self.send_to(&a.to, Kind::Iq, room_jid, a.result);
            }
            return;
        }
        match serde_json::to_vec(&room.record()) {
            Ok(record) => self.out.push_back(MucAction::Save {
                room: room_jid.to_owned(),
                record: Bytes::from(record),
                answer,
            }),
            Err(e) => tracing::error!(room = room_jid, error = %e, "a room's record"),
        }
    }

    /// Answers an IQ that changed the room once the change is stored.
    fn save_and_answer(&mut self, room_jid: &str, inbound: &Inbound, el: &Element) {
        let mut r = Element::new("iq", ns::CLIENT)
            .with_attr("type", "result")
            .with_attr("from", inbound.to.clone())
            .with_attr("to", inbound.from.clone());
        if let Some(id) = el.attr("id") {
            r.set_attr("id", id);
        }
        let error = error_reply(
            StanzaKind::Iq,
            el.attr("id"),
            &inbound.to,
            &inbound.from,
            StanzaCondition::InternalServerError,
            None,
        );
        let answer = Answer {
            to: inbound.from.clone(),
            result: to_bytes(r),
            error,
        };
        self.save_then(room_jid, Some(answer));
    }

    fn occupant_id(&self, room: &str, bare: &str) -> String {
        let mut h = sha2::Sha256::new();
        h.update(self.secret);
        h.update(room.as_bytes());
        h.update([0]);
        h.update(bare.as_bytes());
        let digest = h.finalize();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16])
    }

    /// Answers an IQ with a result (and a child).
    fn result(&mut self, inbound: &Inbound, el: &Element, child: Option<Element>) {
        let mut r = Element::new("iq", ns::CLIENT)
            .with_attr("type", "result")
            .with_attr("from", inbound.to.clone())
            .with_attr("to", inbound.from.clone());
        if let Some(id) = el.attr("id") {
            r.set_attr("id", id);
        }
        if let Some(c) = child {
            r = r.with_child(c);
        }
        let to = inbound.from.clone();
        let from = inbound.to.clone();
        self.send_to(&to, Kind::Iq, &from, to_bytes(r));
    }

    /// Answers a stanza with an error (never an error or a result).
    fn refuse_el(&mut self, inbound: &Inbound, el: &Element, condition: StanzaCondition) {
        if matches!(el.attr("type"), Some("error" | "result")) {
            return;
        }
        let kind = match el.name.as_str() {
            "message" => StanzaKind::Message,
            "presence" => StanzaKind::Presence,
            _ => StanzaKind::Iq,
        };
        let reply = error_reply(
            kind,
            el.attr("id"),
            &inbound.to,
            &inbound.from,
            condition,
            None,
        );
        let k = match kind {
            StanzaKind::Message => Kind::Message,
            StanzaKind::Presence => Kind::Presence,
            StanzaKind::Iq => Kind::Iq,
        };
        let (to, from) = (inbound.from.clone(), inbound.to.clone());
        self.send_to(&to, k, &from, reply);
    }

    /// As [`Self::refuse_el`] for a stanza not parsed yet.
    fn refuse(&mut self, inbound: &Inbound, condition: StanzaCondition) {
        let Ok(top) = xmpp_stream::stanza::inspect(&inbound.payload) else {
            return;
        };
        let mut el = Element::new(top.name.clone(), ns::CLIENT);
        for a in ["type", "id"] {
            if let Some(v) = top.attr(a) {
                el.set_attr(a, v);
            }
        }
        self.refuse_el(inbound, &el, condition);
    }
}

/// The request child of an IQ get or set.
fn iq_request(el: &Element) -> Option<&Element> {
    if !matches!(el.attr("type"), Some("get" | "set")) {
        return None;
    }
    el.elements().next()
}

/// A presence's own children (show, status, caps...), without the MUC
/// elements or anything an occupant must not forge.
fn own_children(el: &Element) -> Vec<Element> {
    el.elements()
        .filter(|c| c.ns != MUC && c.ns != MUC_USER && c.ns != OCCUPANT_ID)
        .filter(|c| c.name != "error")
        .take(16)
        .cloned()
        .collect()
}

/// The history a joining client asked for (XEP-0045 §7.2.13): at most
/// `maxstanzas` (default [`DEFAULT_HISTORY`]) and `maxchars` bytes, none
/// older than `seconds` before `now` or than `since`.
fn history_wanted<'a>(muc: Option<&Element>, room: &'a Room, now: u64) -> Vec<&'a room::Said> {
    let h = muc.and_then(|x| x.child("history", MUC));
    let number = |name: &str| {
        h.and_then(|h| h.attr(name))
            .and_then(|n| n.trim().parse::<u64>().ok())
    };
    let max = number("maxstanzas").map_or(DEFAULT_HISTORY, |n| {
        n.min(room::MAX_HISTORY as u64) as usize
    });
    let oldest = [
        number("seconds").map(|s| now.saturating_sub(s)),
        h.and_then(|h| h.attr("since")).and_then(unix_of_stamp),
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(0);
    let mut out: Vec<&room::Said> = room
        .history
        .iter()
        .rev()
        .take(max)
        .take_while(|s| s.at >= oldest)
        .collect();
    if let Some(limit) = number("maxchars") {
        let mut total = 0u64;
        out = out
            .into_iter()
            .take_while(|s| {
                total += s.payload.len() as u64;
                total <= limit
            })
            .collect();
    }
    out.reverse();
    out
}

/// Unix seconds of an XEP-0082 date-time.
fn unix_of_stamp(stamp: &str) -> Option<u64> {
    let t =
        time::OffsetDateTime::parse(stamp.trim(), &time::format_description::well_known::Rfc3339)
            .ok()?;
    u64::try_from(t.unix_timestamp()).ok()
}

fn room_disco_info(room_jid: &str, room: &Room) -> Element {
    let c = &room.config;
    let name = if c.name.is_empty() {
        address::local(room_jid).unwrap_or(room_jid).to_owned()
    } else {
        c.name.clone()
    };
    let mut q = Element::new("query", ns::DISCO_INFO).with_child(
        Element::new("identity", ns::DISCO_INFO)
            .with_attr("category", "conference")
            .with_attr("type", "text")
            .with_attr("name", name),
    );
    let flags = [
        MUC,
        OCCUPANT_ID,
        SELF_PING,
        if c.persistent {
            "muc_persistent"
        } else {
            "muc_temporary"
        },
        if c.members_only {
            "muc_membersonly"
        } else {
            "muc_open"
        },
        if c.moderated {
            "muc_moderated"
        } else {
            "muc_unmoderated"
        },
        if c.whois == Whois::Anyone {
            "muc_nonanonymous"
        } else {
            "muc_semianonymous"
        },
        if c.password.is_some() {
            "muc_passwordprotected"
        } else {
            "muc_unsecured"
        },
        if c.public { "muc_public" } else { "muc_hidden" },
    ];
    for f in flags {
        q = q.with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", f));
    }
    if room.archives() {
        q = q.with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::MAM));
    }
    q.with_child(forms::room_info(
        c,
        room.occupants.len(),
        &room.subject.text,
    ))
}

fn to_bytes(el: Element) -> Bytes {
    Bytes::from(el.to_bytes(ns::CLIENT))
}

#[cfg(test)]
mod tests;
