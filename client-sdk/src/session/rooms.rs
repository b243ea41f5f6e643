//! The rooms (XEP-0045) the app joined, as the session keeps them: which
//! JIDs are rooms (so their presence and messages become room events, not
//! a contact's), the joins and nick changes waiting for the room's answer,
//! and what a new login needs to join them again.
//!
//! Whether the app is still in each room it joined is checked by an
//! XEP-0410 self-ping of its own occupant: when the room was silent for
//! [`SessionConfig::room_ping_interval`](super::SessionConfig) (±25 %),
//! after every resumed stream (a server that restarted forgets occupants
//! while the stream survives; each room at a random moment within
//! [`RESUME_PING_SPREAD`], so a CM restart's thousands of resumptions are
//! no burst), and when the app asks. One ping per room waits at a time
//! (only a resumption supersedes one, which then stops waiting); none goes
//! to a room whose nick change is under way (XEP-0410 §4). A room that
//! says the app is not in it (`not-acceptable`, or any error but those
//! below) is joined again as after a new login, reported as
//! [`Event::RoomRejoined`] or [`Event::RoomRejoinFailed`]. A result,
//! `service-unavailable`, `feature-not-implemented` or `item-not-found`
//! (another client of the account renamed the occupant) mean still
//! joined (XEP-0410 §3.2). No answer in time, `remote-server-not-found`
//! and `remote-server-timeout` tell nothing (§3.2), nor, deliberately
//! unlike §3.2 (which would call it not joined), `resource-constraint`:
//! an overloaded room would refuse the rejoin too. The next ping goes an
//! interval later, and timeouts never lead to a rejoin however many there
//! are in a row (a dead connection is the acknowledgement timeout's to
//! find).
//!
//! A rejoin the session makes itself waits [`ROOM_TIMEOUT`] from when it
//! is written, counting only online; unanswered, the room counts as joined
//! again and is self-pinged [`REJOIN_RETRY`] later (so it is tried again
//! while the room says the app is not in it); only the room's refusal
//! forgets it. A rejoin answered with status 201 created a temporary room
//! anew: it is left at once and reported as failed (the app never asked
//! to own a new room).
//!
//! A join goes out when the connection takes writes, else at the next
//! connection (never through the outbox: the session writes a fresh join
//! for every room after a new login, and drops the copies of earlier ones
//! that stream management or the outbox would send again).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use xmpp_stream::element::Element;
use xmpp_stream::ns;

use super::requests::{IQ_TIMEOUT, Waiter};
use super::{Answer, Session};
use crate::ClientError;
use crate::event::{self, Event};
use crate::muc::{self, HistoryWanted, Occupant, RoomJoined, RoomStanza, SelfPing};
use crate::session::RequestId;
use crate::sm::Outgoing;

/// How long a join (or a nick change) waits for the room's answer.
pub(crate) const ROOM_TIMEOUT: Duration = IQ_TIMEOUT;
/// A self-ping interval is this many times the configured one, at least…
const MIN_PING_JITTER: f64 = 0.75;
/// …and less than this many times.
const MAX_PING_JITTER: f64 = 1.25;
/// The least self-ping interval (a shorter one configured is raised to it).
pub(crate) const MIN_ROOM_PING_INTERVAL: Duration = Duration::from_secs(1);
/// The greatest self-ping interval (a longer one configured is lowered to
/// it, which keeps every deadline computed from it representable).
pub(crate) const MAX_ROOM_PING_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);
/// A rejoin the session made itself that got no answer in time leaves the
/// room joined as far as the app knows, and self-pings it again this long
/// after (±25 %, whatever the interval): a rejoin is tried again if the
/// room still says the app is not in it.
pub(crate) const REJOIN_RETRY: Duration = Duration::from_secs(60);

/// How often a self-ping held back by a nick change looks again whether
/// the change is over.
const NICK_CHANGE_RECHECK: Duration = Duration::from_secs(1);
/// After a resumed stream each joined room is self-pinged at a random
/// moment within this (so a CM restart's thousands of resumptions do not
/// ping every room of every session in one burst; short, so a core
/// restart's lost occupants are back within seconds).
pub(crate) const RESUME_PING_SPREAD: Duration = Duration::from_secs(2);
/// Rooms kept at once; beyond that joins fail at once.
pub(crate) const MAX_ROOMS: usize = 1024;
/// Occupants a join's answer lists at most (all arrive as events).
pub(crate) const MAX_JOIN_OCCUPANTS: usize = 10_000;
/// A rejoin asks for the history of the time since the room was last
/// heard from, plus this (what was on its way then): messages seen twice
/// are dropped as duplicates.
pub(crate) const REJOIN_HISTORY_MARGIN_SECS: u64 = 10;

/// A room the app joined (or is joining, or leaving).
#[derive(Debug)]
pub(crate) struct Room {
    /// Its bare JID.
    jid: String,
    /// The app's nick there (the one the room gave).
    nick: String,
    password: Option<String>,
    /// The most history messages the app wants at a join.
    history: Option<u32>,
    phase: Phase,
    /// When the room was last heard from (the history a rejoin asks for).
    last_activity: Instant,
    nick_change: Option<NickChange>,
    /// The XEP-0410 self-ping of a joined room.
    ping: RoomPing,
}

/// Where a joined room's self-ping stands (see the module docs).
#[derive(Debug, Default)]
struct RoomPing {
    /// When the next one is due (if the room is still silent then).
    due: Option<Instant>,
    /// The id of the one waiting for its answer (an answer to an earlier
    /// one, sent before a rejoin or a newer ping, counts for nothing).
    waiting: Option<String>,
    /// The ping at `due` goes out even if the room was heard from lately
    /// (after a resumption, a timed-out rejoin, or the app asking).
    forced: bool,
}

#[derive(Debug)]
enum Phase {
    /// The join presence is on its way (or waits for a connection).
    Joining(Join),
    /// The room sent the app's own presence.
    Joined,
    /// The app left; the room's last presence is awaited.
    Leaving,
    /// The session left a room the app never asked for (its rejoin
    /// created the room anew): whatever the room still sends is dropped
    /// until its last presence to us, which forgets it.
    Abandoned,
}

#[derive(Debug)]
struct Join {
    /// The app's request (`None`: the session's rejoin).
    request: Option<RequestId>,
    /// When it gives up: an app's join counts from the request; the
    /// session's own from when it was written (re-armed at every
    /// connection, and not counting while offline).
    deadline: Instant,
    /// Written on the current connection (else at the next one).
    sent: bool,
    history: HistoryWanted,
    /// The occupants the room showed so far.
    occupants: Vec<Occupant>,
}

impl Join {
    /// The session's own join of a room it was in, asking for the history
    /// of `room` missed (see [`missed_history`]).
    fn rejoin(room: &Room, now: Instant) -> Self {
        Self {
            request: None,
            deadline: now + ROOM_TIMEOUT,
            sent: false,
            history: missed_history(room, now),
            occupants: Vec::new(),
        }
    }
}

#[derive(Debug)]
struct NickChange {
    /// The nick asked for.
    nick: String,
    request: RequestId,
    deadline: Instant,
    /// The room sent the app's presence of the old nick with code 303:
    /// the next own presence is of the new nick (the room may have
    /// changed the one asked for).
    renamed: bool,
}

/// The rooms, by their bare JID in lower case.
#[derive(Debug, Default)]
pub(crate) struct Rooms {
    map: HashMap<String, Room>,
    /// The join presences written and not acknowledged (of rooms since
    /// forgotten too): a new login drops their copies that stream
    /// management or the outbox would send again, as it writes a fresh
    /// join for each room still kept. (Without stream management nothing
    /// is acknowledged: they go at the next login, or past a bound.)
    in_flight: VecDeque<Bytes>,
    /// Self-pings superseded before their answer (newest last, at most
    /// [`MAX_ABANDONED_PINGS`]): their waiters are gone from the IQ table,
    /// and an answer that still comes (stream management resends the ping
    /// after a resumption) is dropped here instead of reaching the app.
    abandoned: VecDeque<String>,
}

/// Most superseded self-ping ids remembered (their answers dropped).
const MAX_ABANDONED_PINGS: usize = 2 * MAX_ROOMS;

fn key(jid: &str) -> String {
    event::bare(jid).to_ascii_lowercase()
}

impl Rooms {
    /// Remembers a superseded self-ping's id (see [`Rooms::abandoned`]).
    fn abandon(&mut self, id: String) {
        if self.abandoned.len() >= MAX_ABANDONED_PINGS {
            self.abandoned.pop_front();
        }
        self.abandoned.push_back(id);
    }

    /// Whether `id` is a superseded self-ping's (forgotten once answered).
    pub(super) fn take_abandoned(&mut self, id: &str) -> bool {
        let Some(at) = self.abandoned.iter().position(|a| a == id) else {
            return false;
        };
        self.abandoned.remove(at);
        true
    }

    /// The room `jid` (any JID of it) is one the session keeps.
    fn get_mut(&mut self, jid: &str) -> Option<&mut Room> {
        self.map.get_mut(&key(jid))
    }

    fn contains(&self, jid: &str) -> bool {
        self.map.contains_key(&key(jid))
    }

    /// The server acknowledged `bytes`: not a join in flight any more.
    pub(crate) fn acknowledged(&mut self, bytes: &Bytes) {
        if let Some(at) = self.in_flight.iter().position(|b| b == bytes) {
            self.in_flight.remove(at);
        }
    }

    /// When the next self-ping of a joined room is due.
    pub(crate) fn next_ping(&self) -> Option<Instant> {
        self.map
            .values()
            .filter(|r| matches!(r.phase, Phase::Joined))
            .filter_map(|r| r.ping.due)
            .min()
    }

    /// When the next join or nick change gives up (the session's own joins
    /// only while `online`).
    pub(crate) fn next_deadline(&self, online: bool) -> Option<Instant> {
        self.map
            .values()
            .flat_map(|r| {
                let join = match &r.phase {
                    Phase::Joining(j) if online || j.request.is_some() => Some(j.deadline),
                    _ => None,
                };
                join.into_iter()
                    .chain(r.nick_change.as_ref().map(|n| n.deadline))
            })
            .min()
    }
}

/// What a rejoin of `room` asks for: the history since it was last heard
/// from (see [`REJOIN_HISTORY_MARGIN_SECS`]), unless the app wants none.
fn missed_history(room: &Room, now: Instant) -> HistoryWanted {
    match room.history {
        Some(0) => HistoryWanted {
            max_stanzas: Some(0),
            seconds: None,
        },
        max => HistoryWanted {
            max_stanzas: max,
            seconds: Some(
                now.saturating_duration_since(room.last_activity).as_secs()
                    + REJOIN_HISTORY_MARGIN_SECS,
            ),
        },
    }
}

impl Session {
    /// The app's full JID (its own occupant shows it where real JIDs are
    /// shown).
    fn own_full_jid(&self) -> String {
        match &self.resource {
            Some(r) => format!("{}/{r}", self.config.jid),
            None => self.config.jid.clone(),
        }
    }

    /// The app asks to join `room` as `nick`.
    pub(super) fn join_room(
        &mut self,
        now: Instant,
        id: RequestId,
        room: String,
        nick: String,
        password: Option<String>,
        history: Option<u32>,
    ) {
        let k = key(&room);
        let previous = self.rooms.map.get(&k);
        if let Some(Room {
            phase: Phase::Joining(Join {
                request: Some(_), ..
            }),
            ..
        }) = previous
        {
            return self.reply(
                id,
                Err(ClientError::Busy("a join of this room is under way".into())),
            );
        }
        if previous.is_none() && self.rooms.map.len() >= MAX_ROOMS {
            return self.reply(id, Err(ClientError::Busy("too many rooms".into())));
        }
        if let Some(old) = self.rooms.map.remove(&k)
            && let Some(n) = old.nick_change
        {
            self.reply(
                n.request,
                Err(ClientError::Protocol(
                    "the room is being joined again".into(),
                )),
            );
        }
        let join = Join {
            request: Some(id),
            deadline: now + ROOM_TIMEOUT,
            sent: false,
            history: HistoryWanted {
                max_stanzas: history,
                seconds: None,
            },
            occupants: Vec::new(),
        };
        self.rooms.map.insert(
            k.clone(),
            Room {
                jid: room,
                nick,
                password,
                history,
                phase: Phase::Joining(join),
                last_activity: now,
                nick_change: None,
                ping: RoomPing::default(),
            },
        );
        if self.writable() {
            self.send_join(now, &k);
        }
    }

    /// Writes the join presence of the room `k` (a join of the session's
    /// own has its deadline from now).
    fn send_join(&mut self, now: Instant, k: &str) {
        let caps = crate::pep::caps_element(&self.config.notify);
        let Some(room) = self.rooms.map.get_mut(k) else {
            return;
        };
        let Phase::Joining(join) = &mut room.phase else {
            return;
        };
        let occupant = format!("{}/{}", room.jid, room.nick);
        let presence = muc::join_presence(
            &occupant,
            room.password.as_deref(),
            join.history,
            Some(caps),
        );
        let bytes = Bytes::from(presence.to_bytes(ns::CLIENT));
        join.sent = true;
        if join.request.is_none() {
            join.deadline = now + ROOM_TIMEOUT;
        }
        if self.rooms.in_flight.len() >= MAX_ROOMS * 4 {
            self.rooms.in_flight.pop_front();
        }
        self.rooms.in_flight.push_back(bytes.clone());
        self.send(Outgoing { bytes, id: None });
    }

    /// Writes the joins that wait for a connection.
    pub(super) fn send_pending_joins(&mut self, now: Instant) {
        let pending: Vec<String> = self
            .rooms
            .map
            .iter()
            .filter(|(_, r)| matches!(&r.phase, Phase::Joining(j) if !j.sent))
            .map(|(k, _)| k.clone())
            .collect();
        for k in pending {
            self.send_join(now, &k);
        }
    }

    /// A resumed stream: the session's own joins written before wait a
    /// full [`ROOM_TIMEOUT`] again (stream management sends them again),
    /// and every joined room is self-pinged within [`RESUME_PING_SPREAD`]
    /// (a ping still unanswered is given up: its answer may come from a
    /// server that restarted since).
    pub(super) fn rooms_after_resumption(&mut self, now: Instant) {
        let mut abandoned = Vec::new();
        for room in self.rooms.map.values_mut() {
            match &mut room.phase {
                Phase::Joining(join) if join.request.is_none() => {
                    join.deadline = now + ROOM_TIMEOUT;
                }
                Phase::Joined => {
                    if let Some(old) = room.ping.waiting.take() {
                        self.iqs.cancel(&old);
                        abandoned.push(old);
                    }
                    let spread = RESUME_PING_SPREAD.mul_f64(self.rng.gen_range(0.0..1.0));
                    room.ping = RoomPing {
                        due: Some(now + spread),
                        waiting: None,
                        forced: true,
                    };
                }
                _ => {}
            }
        }
        for id in abandoned {
            self.rooms.abandon(id);
        }
    }

    /// A new login (the server forgot the old session and its rooms):
    /// every room is to be joined again, asking for the history missed
    /// (see [`REJOIN_HISTORY_MARGIN_SECS`]); rooms being left are
    /// forgotten. Returns the join presences written before, whose copies
    /// must not be sent again.
    pub(super) fn rooms_after_new_login(&mut self, now: Instant) -> Vec<Bytes> {
        self.rooms
            .map
            .retain(|_, r| !matches!(r.phase, Phase::Leaving | Phase::Abandoned));
        let stale = std::mem::take(&mut self.rooms.in_flight).into();
        let mut abandoned = Vec::new();
        for room in self.rooms.map.values_mut() {
            if let Some(old) = room.ping.waiting.take() {
                // (stream management writes it again on the new stream:
                // its answer is dropped)
                self.iqs.cancel(&old);
                abandoned.push(old);
            }
            room.ping = RoomPing::default();
            match &mut room.phase {
                Phase::Joining(join) => {
                    join.sent = false;
                    join.occupants.clear();
                    if join.request.is_none() {
                        join.deadline = now + ROOM_TIMEOUT;
                    }
                }
                Phase::Joined | Phase::Leaving | Phase::Abandoned => {
                    room.phase = Phase::Joining(Join::rejoin(room, now));
                }
            }
        }
        for id in abandoned {
            self.rooms.abandon(id);
        }
        stale
    }

    /// The app leaves `room`.
    pub(super) fn leave_room(&mut self, room: &str, status: Option<&str>) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        let occupant = format!("{}/{}", r.jid, r.nick);
        let never_sent = matches!(&r.phase, Phase::Joining(j) if !j.sent);
        let join_request = match &r.phase {
            Phase::Joining(j) => j.request,
            _ => None,
        };
        let nick_change = r.nick_change.take();
        r.phase = Phase::Leaving;
        if never_sent {
            self.rooms.map.remove(&key(room));
        } else {
            let bytes = Bytes::from(muc::leave_presence(&occupant, status).to_bytes(ns::CLIENT));
            self.send(Outgoing { bytes, id: None });
        }
        let left = || Err(ClientError::Protocol("the app left the room".into()));
        if let Some(id) = join_request {
            self.reply(id, left());
        }
        if let Some(n) = nick_change {
            self.reply(n.request, left());
        }
    }

    /// The app asks for a new nick in `room`.
    pub(super) fn change_nick(&mut self, now: Instant, id: RequestId, room: &str, nick: String) {
        let Some(r) = self.rooms.get_mut(room) else {
            return self.reply(
                id,
                Err(ClientError::Config(format!("not in the room {room}"))),
            );
        };
        if !matches!(r.phase, Phase::Joined) {
            return self.reply(
                id,
                Err(ClientError::Config(format!("not in the room {room}"))),
            );
        }
        if r.nick_change.is_some() {
            return self.reply(
                id,
                Err(ClientError::Busy("a nick change is under way".into())),
            );
        }
        let presence = muc::nick_presence(&format!("{}/{nick}", r.jid));
        r.nick_change = Some(NickChange {
            nick,
            request: id,
            deadline: now + ROOM_TIMEOUT,
            renamed: false,
        });
        let bytes = Bytes::from(presence.to_bytes(ns::CLIENT));
        self.send(Outgoing { bytes, id: None });
    }

    /// Joins and nick changes whose time is up give up. An app's join
    /// given up fails and is left (were the room to answer late, the app
    /// would be in a room it does not know of). A rejoin of the session's
    /// own (whose time runs only online) is not given up for good: the
    /// room counts as joined again, self-pinged [`REJOIN_RETRY`] later,
    /// and joined again if it still says the app is not in it (only the
    /// room's refusal forgets it).
    pub(super) fn expire_rooms(&mut self, now: Instant) {
        let online = self.writable();
        let mut expired_joins = Vec::new();
        let mut expired_nicks = Vec::new();
        for (k, r) in self.rooms.map.iter_mut() {
            if let Phase::Joining(j) = &r.phase
                && j.deadline <= now
                && (online || j.request.is_some())
            {
                expired_joins.push(k.clone());
            }
            if r.nick_change.as_ref().is_some_and(|n| n.deadline <= now)
                && let Some(n) = r.nick_change.take()
            {
                expired_nicks.push(n.request);
            }
        }
        for id in expired_nicks {
            self.reply(id, Err(ClientError::Timeout));
        }
        for k in expired_joins {
            if let Some(r) = self.rooms.map.get_mut(&k)
                && matches!(&r.phase, Phase::Joining(j) if j.request.is_none())
            {
                tracing::info!(room = r.jid, "no answer to a rejoin: trying again later");
                r.phase = Phase::Joined;
                let retry =
                    REJOIN_RETRY.mul_f64(self.rng.gen_range(MIN_PING_JITTER..MAX_PING_JITTER));
                r.ping = RoomPing {
                    due: Some(now + retry),
                    waiting: None,
                    forced: true,
                };
                continue;
            }
            let Some(r) = self.rooms.map.remove(&k) else {
                continue;
            };
            let Phase::Joining(join) = r.phase else {
                continue;
            };
            if join.sent {
                let leave = muc::leave_presence(&format!("{}/{}", r.jid, r.nick), None);
                let bytes = Bytes::from(leave.to_bytes(ns::CLIENT));
                self.send(Outgoing { bytes, id: None });
            }
            self.join_failed(r.jid, join.request, ClientError::Timeout);
        }
    }

    /// Every room is forgotten (the session is over): what waits fails.
    pub(super) fn drop_rooms(&mut self) {
        for (_, r) in self.rooms.map.drain().collect::<Vec<_>>() {
            if let Phase::Joining(Join {
                request: Some(id), ..
            }) = r.phase
            {
                self.reply(id, Err(ClientError::Closed));
            }
            if let Some(n) = r.nick_change {
                self.reply(n.request, Err(ClientError::Closed));
            }
        }
    }

    fn join_failed(&mut self, room: String, request: Option<RequestId>, error: ClientError) {
        match request {
            Some(id) => self.reply(id, Err(error)),
            None => self.event(Event::RoomRejoinFailed { room, error }),
        }
    }

    /// What a stanza means to the rooms: a room's presence or groupchat
    /// message, an invitation, a ping of the app's occupant passed on by a
    /// room. True if it was one (the app sees nothing else of it).
    pub(super) fn room_stanza(&mut self, now: Instant, el: &Element) -> bool {
        let from = el.attr("from").unwrap_or_default();
        let tracked = !from.is_empty() && self.rooms.contains(from);
        if tracked
            && el.name != "iq"
            && let Some(room) = self.rooms.get_mut(from)
            && matches!(room.phase, Phase::Abandoned)
        {
            let own = format!("{}/{}", room.jid, room.nick);
            if el.name == "presence"
                && el.attr("type") == Some("unavailable")
                && event::bare(from) != from
                && from.eq_ignore_ascii_case(&own)
            {
                self.rooms.map.remove(&key(from));
            }
            return true;
        }
        match el.name.as_str() {
            "presence"
                if tracked && matches!(el.attr("type"), None | Some("unavailable" | "error")) =>
            {
                self.room_presence(now, el);
                true
            }
            "message" if tracked && el.attr("type") == Some("groupchat") => {
                self.room_message(now, el);
                true
            }
            "message" => match muc::invite_of(el) {
                Some(invite) => {
                    self.event(Event::RoomInvite(invite));
                    true
                }
                None => false,
            },
            // XEP-0410: the room passes a self-ping on to one of the
            // occupant's clients, this one maybe
            "iq" if tracked
                && el.attr("type") == Some("get")
                && el.child("ping", ns::PING).is_some() =>
            {
                let mut pong = Element::new("iq", ns::CLIENT)
                    .with_attr("type", "result")
                    .with_attr("to", from);
                if let Some(id) = el.attr("id") {
                    pong.set_attr("id", id);
                }
                let bytes = Bytes::from(pong.to_bytes(ns::CLIENT));
                self.send(Outgoing { bytes, id: None });
                true
            }
            _ => false,
        }
    }

    fn room_message(&mut self, now: Instant, el: &Element) {
        let from = el.attr("from").unwrap_or_default();
        let Some(room) = self.rooms.get_mut(from) else {
            return;
        };
        room.last_activity = now;
        let jid = room.jid.clone();
        match muc::room_message(el, &jid) {
            RoomStanza::Message(m) => {
                // history sent again at a rejoin, without the sender's id
                if let Some(sid) = &m.stanza_id
                    && !self.seen.first_time(&format!("stanza-id {jid}"), sid)
                {
                    tracing::debug!(room = jid, sid, "duplicate room message dropped");
                    self.duplicates += 1;
                    return;
                }
                self.event(Event::RoomMessage(m));
            }
            RoomStanza::Subject { nick, subject } => self.event(Event::RoomSubject {
                room: jid,
                nick,
                subject,
            }),
        }
    }

    fn room_presence(&mut self, now: Instant, el: &Element) {
        let from = el.attr("from").unwrap_or_default();
        let own = self.own_full_jid();
        let Some(room) = self.rooms.get_mut(from) else {
            return;
        };
        room.last_activity = now;
        let k = key(&room.jid);
        if el.attr("type") == Some("error") {
            let condition =
                event::stanza_error_condition(el).unwrap_or_else(|| "undefined-condition".into());
            return self.room_presence_error(&k, muc::resource(from), condition);
        }
        let Some(p) = muc::occupant_presence(el, &room.jid, &own) else {
            return;
        };
        let destroyed = muc::destroyed(el);
        if !p.is_self {
            if let Phase::Joining(join) = &mut room.phase {
                join.occupants.retain(|o| o.nick != p.occupant.nick);
                if p.available && join.occupants.len() < MAX_JOIN_OCCUPANTS {
                    join.occupants.push(p.occupant.clone());
                }
            }
            self.event(Event::Occupant(p));
            return;
        }
        if p.available {
            room.nick = p.occupant.nick.clone();
            let nick_change = room
                .nick_change
                .take_if(|n| n.renamed || n.nick == p.occupant.nick);
            let joined = match std::mem::replace(&mut room.phase, Phase::Joined) {
                Phase::Joining(join) => Some((
                    join.request,
                    RoomJoined {
                        room: room.jid.clone(),
                        nick: p.occupant.nick.clone(),
                        me: p.occupant.clone(),
                        occupants: join.occupants,
                        status_codes: p.status_codes.clone(),
                    },
                )),
                phase @ (Phase::Leaving | Phase::Abandoned) => {
                    room.phase = phase;
                    None
                }
                Phase::Joined => None,
            };
            let nick = p.occupant.nick.clone();
            if let Some((None, j)) = &joined
                && j.status_codes.contains(&201)
            {
                return self.rejoin_created(&k);
            }
            if joined.is_some() {
                self.schedule_ping(now, &k);
            }
            self.event(Event::Occupant(p));
            match joined {
                Some((Some(id), joined)) => self.reply(id, Ok(Answer::RoomJoined(joined))),
                Some((None, joined)) => self.event(Event::RoomRejoined(joined)),
                None => {}
            }
            if let Some(n) = nick_change {
                self.reply(n.request, Ok(Answer::NickChanged(nick)));
            }
            return;
        }
        if let Some(new_nick) = &p.new_nick {
            // renamed: the presence from the new nick follows
            room.nick = new_nick.clone();
            if let Some(n) = &mut room.nick_change {
                n.renamed = true;
            }
            self.event(Event::Occupant(p));
            return;
        }
        if matches!(room.phase, Phase::Joining(_)) && p.removal.is_none() && destroyed.is_none() {
            // the answer to a leave before this join
            self.event(Event::Occupant(p));
            return;
        }
        // the app is out of the room: left, removed, or the room is gone
        let Some(r) = self.rooms.map.remove(&k) else {
            return;
        };
        let room_jid = r.jid.clone();
        self.event(Event::Occupant(p));
        if let Some((reason, alternate)) = destroyed {
            self.event(Event::RoomDestroyed {
                room: room_jid.clone(),
                reason,
                alternate,
            });
        }
        let out = || Err(ClientError::Protocol("removed from the room".into()));
        if let Phase::Joining(join) = r.phase
            && let Some(id) = join.request
        {
            self.reply(id, out());
        }
        if let Some(n) = r.nick_change {
            self.reply(n.request, out());
        }
    }

    /// A rejoin of the session's own created the room `k` anew (status
    /// 201: it was a temporary room, gone with its occupants): the app
    /// never asked to own a new room, so it is left at once (which
    /// destroys a room still locked) and forgotten,
    /// reported as [`Event::RoomRejoinFailed`] with `item-not-found` (what
    /// a join of a locked room by anyone else gets).
    fn rejoin_created(&mut self, k: &str) {
        let Some(r) = self.rooms.map.get_mut(k) else {
            return;
        };
        tracing::info!(room = r.jid, "a rejoin created the room anew: leaving it");
        r.phase = Phase::Abandoned;
        r.ping = RoomPing::default();
        let jid = r.jid.clone();
        let leave = muc::leave_presence(&format!("{}/{}", r.jid, r.nick), None);
        let bytes = Bytes::from(leave.to_bytes(ns::CLIENT));
        self.send(Outgoing { bytes, id: None });
        self.event(Event::RoomRejoinFailed {
            room: jid,
            error: ClientError::StanzaError("item-not-found".into()),
        });
    }

    /// The room refused a presence (from the occupant JID `nick`, or the
    /// room's): a join (it fails, the room is forgotten) or a nick change.
    fn room_presence_error(&mut self, k: &str, nick: Option<&str>, condition: String) {
        let Some(room) = self.rooms.map.get_mut(k) else {
            return;
        };
        if matches!(room.phase, Phase::Joining(_)) {
            let Some(r) = self.rooms.map.remove(k) else {
                return;
            };
            if let Phase::Joining(join) = r.phase {
                self.join_failed(r.jid, join.request, ClientError::StanzaError(condition));
            }
            return;
        }
        if let Some(n) = room
            .nick_change
            .take_if(|n| nick.is_none_or(|nick| nick == n.nick))
        {
            self.reply(n.request, Err(ClientError::StanzaError(condition)));
            return;
        }
        tracing::debug!(room = room.jid, condition, "a room refused a presence");
    }
}

impl Session {
    /// The self-ping interval with ±25 % jitter (so the rooms of a fleet
    /// that joined together are not all pinged at once), if the periodic
    /// check is on.
    fn jittered_ping_interval(&mut self) -> Option<Duration> {
        let interval = self.config.room_ping_interval?.min(MAX_ROOM_PING_INTERVAL);
        Some(interval.mul_f64(self.rng.gen_range(MIN_PING_JITTER..MAX_PING_JITTER)))
    }

    /// The room `k`'s next self-ping is an interval after `from` (none if
    /// the periodic check is off).
    fn schedule_ping(&mut self, from: Instant, k: &str) {
        let due = self
            .jittered_ping_interval()
            .and_then(|i| from.checked_add(i));
        if let Some(r) = self.rooms.map.get_mut(k) {
            r.ping.due = due;
            r.ping.forced = false;
        }
    }

    /// Self-pings the joined rooms whose ping is due, unless heard from
    /// lately (within 3/4 of the interval; not for a forced ping): those
    /// have their ping moved to an interval after they were last heard
    /// from. A room whose nick change is under way waits for its answer
    /// (XEP-0410 §4: the nick the ping would go to is not settled).
    pub(super) fn ping_due_rooms(&mut self, now: Instant) {
        if !self.writable() {
            return;
        }
        let due: Vec<String> = self
            .rooms
            .map
            .iter()
            .filter(|(_, r)| matches!(r.phase, Phase::Joined))
            .filter(|(_, r)| r.ping.due.is_some_and(|at| at <= now))
            .map(|(k, _)| k.clone())
            .collect();
        let interval = self.config.room_ping_interval;
        for k in due {
            let Some(r) = self.rooms.map.get_mut(&k) else {
                continue;
            };
            if let Some(n) = &r.nick_change {
                // looked at again each second until the change is over
                // (at most its deadline away)
                r.ping.due = Some(n.deadline.min(now + NICK_CHANGE_RECHECK));
                continue;
            }
            let heard = r.last_activity;
            let lately = !r.ping.forced
                && interval.is_some_and(|i| {
                    heard
                        .checked_add(i.min(MAX_ROOM_PING_INTERVAL).mul_f64(MIN_PING_JITTER))
                        .is_some_and(|t| t > now)
                });
            if lately {
                // the room spoke lately: the app is in it (the next due
                // time is past `now`: the jitter is at least as much)
                self.schedule_ping(heard, &k);
            } else {
                self.send_room_ping(now, &k);
            }
        }
    }

    /// Self-pings every joined room now, the app asking (not those whose
    /// ping still waits for its answer; those with a nick change under
    /// way once it is over); nothing while the connection takes no writes
    /// (the next one checks them: a resumption pings them all, a new login
    /// joins them again).
    pub(super) fn check_rooms(&mut self, now: Instant) {
        if !self.writable() {
            return;
        }
        for r in self.rooms.map.values_mut() {
            if matches!(r.phase, Phase::Joined) && r.ping.waiting.is_none() {
                r.ping.due = Some(now);
                r.ping.forced = true;
            }
        }
        self.ping_due_rooms(now);
    }

    /// Sends the XEP-0410 self-ping of the room `k` (its own occupant);
    /// the answer, or its absence after [`IQ_TIMEOUT`], comes back to
    /// [`Self::room_ping_answered`]. A ping of the room still waiting is
    /// superseded: it stops waiting (its answer counts for nothing).
    fn send_room_ping(&mut self, now: Instant, k: &str) {
        let Some(room) = self.rooms.map.get_mut(k) else {
            return;
        };
        if !matches!(room.phase, Phase::Joined) {
            return;
        }
        if let Some(old) = room.ping.waiting.take() {
            self.iqs.cancel(&old);
            self.rooms.abandon(old);
        }
        let Some(room) = self.rooms.map.get_mut(k) else {
            return;
        };
        let forced = room.ping.forced;
        let iq = muc::self_ping_iq(&format!("{}/{}", room.jid, room.nick));
        let id = self.new_id();
        let waiter = Waiter::RoomPing {
            room: k.to_owned(),
            id: id.clone(),
        };
        match self.send_iq(now, iq, id.clone(), waiter) {
            Ok(()) => {
                if let Some(r) = self.rooms.map.get_mut(k) {
                    r.ping = RoomPing {
                        due: None,
                        waiting: Some(id),
                        forced: false,
                    };
                }
            }
            Err(error) => {
                tracing::debug!(room = k, %error, "a room's self-ping could not be sent");
                self.schedule_ping(now, k);
                // a forced ping (after a resumption, or asked for) is
                // tried again even with no periodic ping
                if forced && let Some(r) = self.rooms.map.get_mut(k) {
                    let retry = now.checked_add(REJOIN_RETRY);
                    r.ping.due = r.ping.due.into_iter().chain(retry).min();
                    r.ping.forced = true;
                }
            }
        }
    }

    /// The answer to the self-ping `id` of the room `k` (`None`: none in
    /// time). See the module docs for what each answer means.
    pub(super) fn room_ping_answered(
        &mut self,
        now: Instant,
        k: &str,
        id: &str,
        answer: Option<&Element>,
    ) {
        let Some(room) = self.rooms.map.get_mut(k) else {
            return;
        };
        if !matches!(room.phase, Phase::Joined) || room.ping.waiting.as_deref() != Some(id) {
            // an earlier ping's: the room was joined or pinged again since
            return;
        }
        room.ping.waiting = None;
        let verdict = match answer {
            None => SelfPing::Unreachable,
            Some(iq) if iq.attr("type") == Some("result") => SelfPing::Joined,
            Some(iq) => {
                let condition = event::stanza_error_condition(iq);
                muc::self_ping_verdict(Some(condition.as_deref().unwrap_or("undefined-condition")))
            }
        };
        match verdict {
            SelfPing::NotJoined => self.rejoin(now, k),
            SelfPing::Unreachable => {
                tracing::debug!(room = room.jid, "a room's self-ping told nothing");
                self.schedule_ping(now, k);
            }
            SelfPing::Joined | SelfPing::NickChanged => self.schedule_ping(now, k),
        }
    }

    /// A self-ping found the app out of the joined room `k`: it is joined
    /// again as after a new login (the same nick and password, the history
    /// missed), reported as [`Event::RoomRejoined`] or
    /// [`Event::RoomRejoinFailed`]. A nick change under way fails.
    fn rejoin(&mut self, now: Instant, k: &str) {
        let Some(room) = self.rooms.map.get_mut(k) else {
            return;
        };
        tracing::info!(
            room = room.jid,
            "not in the room any more: joining it again"
        );
        room.phase = Phase::Joining(Join::rejoin(room, now));
        room.ping = RoomPing::default();
        if let Some(n) = room.nick_change.take() {
            self.reply(
                n.request,
                Err(ClientError::Protocol(
                    "the room is being joined again".into(),
                )),
            );
        }
        if self.writable() {
            self.send_join(now, k);
        }
    }
}
