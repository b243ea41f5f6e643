//! The router: a sans-IO state machine that owns the routing table and
//! decides, for every frame from a CM, what happens (RFC 6120 §10,
//! RFC 6121 §8.5). Inputs are events; outputs are [`Action`]s the driver
//! carries out (send a frame to a node, store or flush offline messages).
//! No sockets, no clocks, no storage: tests feed events and read actions.

use std::time::Instant;

use bytes::Bytes;
use cm_protocol::{Frame, Kind, RouteHeader, SessionId};
use jid::{BareJid, Jid};
use xmpp_stream::element::Element;
use xmpp_stream::stanza::{StanzaKind, error_reply};
use xmpp_stream::{StanzaCondition, StreamCondition, ns};

use crate::address;
use crate::storage::{ArchiveEntry, Roster, RosterItem};

mod archive;
mod archive_ids;
mod presence;
mod roster;
mod roster_cache;
mod sm_sessions;
mod stream_management;

use crate::routing::{NodeId, RoutingTable, SessionAddr};
pub use archive::Query;
pub(crate) use archive::{embeddable, wrap_forwarded};
use archive_ids::ArchiveIds;
use roster_cache::{RosterCache, roster_for};
use sm_sessions::{Incoming, SmSessions};
pub(crate) use stream_management::storable_message;

/// Something the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send a frame to a CM node (on the pooled connection for `sid`).
    Send {
        /// Target node.
        node: NodeId,
        /// The frame.
        frame: Frame,
    },
    /// Store a message for an offline user; if the user does not exist or
    /// the quota is full, call [`Router::offline_failed`] with `bounce`.
    StoreOffline {
        /// Bare username (local part).
        user: String,
        /// The stanza.
        payload: Bytes,
        /// What to tell the sender if storing fails.
        bounce: Bounce,
        /// The SM session (token, `h`) whose acknowledgement waits for this
        /// store: report [`Input::Stored`] when it is done either way.
        origin: Option<(u64, u32)>,
    },
    /// Remove a user's stored messages up to `upto` (they are now tracked
    /// by a live session).
    RemoveOffline {
        /// Username (local part).
        user: String,
        /// Highest row id delivered.
        upto: i64,
    },
    /// Deliver the user's stored messages to this session, then remove them.
    FlushOffline {
        /// Username (local part).
        user: String,
        /// Session to deliver to.
        to: SessionAddr,
    },
    /// Load a user's roster and report [`Input::RosterLoaded`].
    LoadRoster {
        /// Bare JID.
        user: String,
    },
    /// Store a roster item (added or changed).
    SaveRosterItem {
        /// Username (local part).
        user: String,
        /// The item.
        item: RosterItem,
        /// The roster's new version.
        version: u64,
    },
    /// Remove a roster item.
    RemoveRosterItem {
        /// Username (local part).
        user: String,
        /// The contact's bare JID.
        jid: String,
        /// The roster's new version.
        version: u64,
    },
    /// Archive a message (one entry per archive it goes into); stamp the
    /// entries with the time, and report [`Input::Stored`] for `origin`
    /// once committed.
    Archive {
        /// The entries.
        entries: Vec<ArchiveEntry>,
        /// The SM session (token, `h`) whose acknowledgement waits.
        origin: Option<(u64, u32)>,
    },
    /// Answer a query from storage and hand the stanzas back through
    /// [`Input::Replies`].
    Query {
        /// The asking session.
        to: SessionAddr,
        /// The query.
        query: Query,
    },
}

/// Enough of a stanza to answer it with an error later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bounce {
    /// The original sender (full JID).
    pub sender: String,
    /// The original recipient as addressed.
    pub to: String,
    /// The stanza id.
    pub id: Option<String>,
}

/// Events the router reacts to.
#[derive(Clone, Debug)]
pub enum Input {
    /// A routing frame from a node.
    Frame {
        /// Node.
        node: NodeId,
        /// The frame.
        frame: Frame,
    },
    /// A node's last connection is gone and its grace period passed.
    NodeGone {
        /// Node.
        node: NodeId,
    },
    /// One pooled connection of a node ended (frames in flight on it are lost).
    LinkLost {
        /// Node.
        node: NodeId,
        /// The connection's index in the node's pool.
        index: u16,
        /// The pool's size.
        pool_size: u16,
    },
    /// Time passed (the driver ticks about once a second): expires detached
    /// SM sessions.
    Tick {
        /// Now.
        now: Instant,
    },
    /// An offline store started for an SM session's stanza finished.
    Stored {
        /// (token, `h`) from [`Action::StoreOffline`]'s origin.
        origin: (u64, u32),
    },
    /// A roster asked for by [`Action::LoadRoster`] (`None`: no account).
    RosterLoaded {
        /// Bare JID.
        user: String,
        /// The roster.
        roster: Option<Roster>,
    },
    /// A roster asked for by [`Action::LoadRoster`] could not be read: the
    /// sessions whose frames waited for it are ended.
    RosterFailed {
        /// Bare JID.
        user: String,
    },
    /// The answer to an [`Action::Query`].
    Replies {
        /// The asking session.
        to: SessionAddr,
        /// Stanzas to deliver, in order.
        payloads: Vec<Bytes>,
    },
    /// A user's stored messages, loaded for a session that became available.
    Offline {
        /// Username (local part).
        user: String,
        /// The session.
        to: SessionAddr,
        /// (row id, stanza with delay stamp), oldest first.
        messages: Vec<(i64, Bytes)>,
    },
}

/// Router counters, read by the metrics endpoint.
#[derive(Clone, Copy, Debug, Default)]
pub struct RouterStats {
    /// Stanzas received from CMs.
    pub stanzas_in: u64,
    /// Deliver frames emitted.
    pub delivered: u64,
    /// Messages sent to offline storage.
    pub offline_stored: u64,
    /// Error replies generated.
    pub errors: u64,
    /// SM sessions resumed.
    pub resumed: u64,
    /// Resumptions refused.
    pub resume_failed: u64,
    /// Detached SM sessions that expired.
    pub sm_expired: u64,
}

/// The router (see the module docs).
pub struct Router {
    domain: String,
    table: RoutingTable,
    out: Vec<Action>,
    resource_counter: u64,
    resource_seed: u64,
    /// Stream-management sessions (XEP-0198).
    sessions: SmSessions,
    now: Instant,
    /// (token, h) of the SM stanza being routed, for offline stores.
    origin: Option<(u64, u32)>,
    /// Rosters in memory, and the frames waiting for one.
    rosters: RosterCache,
    /// Sessions with a storage query being answered (one at a time).
    querying: std::collections::HashSet<SessionAddr>,
    push_counter: u64,
    /// Ids of archived messages; none: messages are not archived (XEP-0313).
    archive: Option<ArchiveIds>,
    /// Counters.
    pub stats: RouterStats,
}

impl Router {
    /// A router for `domain`; `seed` varies generated resources between runs.
    pub fn new(domain: &str, seed: u64) -> Self {
        Self {
            domain: domain.to_owned(),
            table: RoutingTable::new(),
            out: Vec::new(),
            resource_counter: 0,
            resource_seed: seed,
            sessions: SmSessions::new(seed, rand::random()),
            now: Instant::now(),
            origin: None,
            rosters: RosterCache::default(),
            querying: Default::default(),
            push_counter: 0,
            archive: Some(ArchiveIds::new(seed)),
            stats: RouterStats::default(),
        }
    }

    /// Archives messages (the default) or not; `base` starts the archive
    /// ids. Give it the wall-clock time in µs times 16 at start: ids then
    /// increase across restarts unless a run averaged more than 16 million
    /// archived messages a second.
    pub fn with_archive(mut self, on: bool, base: u64) -> Self {
        self.archive = on.then(|| ArchiveIds::new(base));
        self
    }

    /// Keys SM ids with `secret` (persisted, so ids survive a core restart).
    pub fn with_sm_secret(mut self, secret: [u8; 32]) -> Self {
        self.sessions = SmSessions::new(self.resource_seed, secret);
        self
    }

    /// Whether the core tracks deliveries to this session (it keeps them
    /// until acknowledged, so a failed send loses nothing).
    pub fn is_tracked(&self, addr: SessionAddr) -> bool {
        self.sessions.is_tracked(addr)
    }

    /// SM sessions tracked (attached or detached) and of those detached.
    pub fn sm_counts(&self) -> (usize, usize) {
        self.sessions.counts()
    }

    /// The routing table (read-only).
    pub fn table(&self) -> &RoutingTable {
        &self.table
    }

    /// Handles one event and returns the actions it produced.
    pub fn handle(&mut self, input: Input) -> Vec<Action> {
        match input {
            Input::NodeGone { node } => self.node_gone(node),
            Input::LinkLost {
                node,
                index,
                pool_size,
            } => self.link_lost(node, index, pool_size, self.now),
            Input::Frame { node, frame } => self.frame(node, frame),
            Input::Tick { now } => {
                self.now = now;
                self.expire(now);
            }
            Input::Stored { origin } => self.stored(origin),
            Input::Offline { user, to, messages } => self.offline(user, to, messages),
            Input::RosterLoaded { user, roster } => self.roster_loaded(user, roster),
            Input::RosterFailed { user } => self.roster_failed(user),
            Input::Replies { to, payloads } => {
                self.querying.remove(&to);
                if self.table.jid_of(to.0, to.1).is_some() {
                    for p in payloads {
                        self.deliver_copy(to, p);
                    }
                }
            }
        }
        std::mem::take(&mut self.out)
    }

    /// Storing an offline message failed: answer the sender.
    pub fn offline_failed(&mut self, bounce: Bounce, condition: StanzaCondition) -> Vec<Action> {
        self.error_to(
            &bounce.sender,
            StanzaKind::Message,
            bounce.id.as_deref(),
            &bounce.to,
            condition,
        );
        std::mem::take(&mut self.out)
    }

    fn frame(&mut self, node: NodeId, frame: Frame) {
        // Frames wait, in order, for rosters not loaded yet.
        if let Some(sid) = frame.sid()
            && let Some(user) = self.rosters.waited_for((node, sid))
        {
            return self.defer(user, node, frame);
        }
        if let Some(user) = roster_for(&frame, &self.domain)
            && !self.rosters.is_loaded(&user)
        {
            return self.defer(user, node, frame);
        }
        match frame {
            Frame::Bind {
                sid,
                user,
                iq_id,
                resource,
            } => self.bind(node, sid, &user, iq_id, resource),
            Frame::Announce {
                sid,
                jid,
                available,
                priority,
                sm,
            } => self.announced((node, sid), &jid, available, priority, sm),
            Frame::Stanza {
                sid,
                header,
                payload,
            } => {
                self.stats.stanzas_in += 1;
                match self.sessions.count_in((node, sid)) {
                    // a stream the session has left (resumed elsewhere)
                    Incoming::FromDetached => return,
                    Incoming::Counted(origin) => self.origin = Some(origin),
                    Incoming::Untracked if self.table.jid_of(node, sid).is_none() => return,
                    Incoming::Untracked => {}
                }
                self.stanza(node, sid, header, payload);
                self.origin = None;
            }
            Frame::Bounce { sid, to, payload } => {
                if !self.bounce_tracked((node, sid), self.now) {
                    self.bounced(node, sid, &to, payload)
                }
            }
            Frame::SessionEnd { sid, clean, .. } => {
                if clean && self.sessions.is_tracked((node, sid)) {
                    self.end_tracked((node, sid));
                } else if self.sessions.is_tracked((node, sid)) {
                    self.detach((node, sid), self.now);
                } else {
                    self.session_end(node, sid)
                }
            }
            f @ (Frame::SmEnable { .. }
            | Frame::AckRequest { .. }
            | Frame::Acked { .. }
            | Frame::Skipped { .. }
            | Frame::Resume { .. }) => self.sm_frame(node, f),
            other => tracing::warn!(node, frame = other.name(), "unexpected frame from a CM"),
        }
    }

    /// Binds a resource for a session the core authenticated as `user`
    /// (the CM, a trusted cluster member, carries the user from AuthSuccess).
    fn bind(
        &mut self,
        node: NodeId,
        sid: SessionId,
        user: &str,
        iq_id: String,
        resource: Option<String>,
    ) {
        let resource = match resource.filter(|r| !r.is_empty()) {
            Some(r) => r,
            None => self.generate_resource(),
        };
        let full = BareJid::new(user)
            .ok()
            .and_then(|b| b.with_resource_str(&resource).ok());
        let Some(full) = full else {
            self.send(
                node,
                Frame::BindResult {
                    sid,
                    iq_id,
                    result: Err("bad-request".into()),
                },
            );
            return;
        };
        let bare = full.to_bare().to_string();
        let resource = full.resource().to_string();
        if let Some(old) = self.table.bind(&bare, &resource, node, sid, false, 0) {
            self.replaced(old, &full.to_string());
        }
        self.send(
            node,
            Frame::BindResult {
                sid,
                iq_id,
                result: Ok(full.to_string()),
            },
        );
    }

    /// A session was replaced by a new one with its full JID (`conflict`):
    /// kick it and hand what it never acknowledged to the user's sessions.
    fn replaced(&mut self, (old_node, old_sid): SessionAddr, full: &str) {
        self.kick((old_node, old_sid), StreamCondition::Conflict);
        if let Some(ledger) = self.sessions.remove((old_node, old_sid)) {
            self.reroute_unacked(full, ledger);
        }
    }

    fn generate_resource(&mut self) -> String {
        self.resource_counter += 1;
        let x = self
            .resource_seed
            .wrapping_add(self.resource_counter.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        format!("ll-{:016x}", x ^ (x >> 29))
    }

    fn announce(&mut self, node: NodeId, sid: SessionId, jid: &str, available: bool, priority: i8) {
        let Ok(full) = jid::FullJid::new(jid) else {
            tracing::warn!(node, jid, "announce with an invalid JID");
            return;
        };
        let bare = full.to_bare().to_string();
        if let Some(old) = self.table.bind(
            &bare,
            full.resource().as_str(),
            node,
            sid,
            available,
            priority,
        ) {
            self.replaced(old, jid);
        }
    }

    fn session_end(&mut self, node: NodeId, sid: SessionId) {
        if let Some((full, route)) = self.table.unbind(node, sid) {
            if route.available {
                self.broadcast_unavailable(&full, &route.directed);
            }
            self.forget_roster_if_unused(address::bare(&full));
        }
    }

    fn node_gone(&mut self, node: NodeId) {
        for (full, route) in self.table.drop_node(node) {
            let addr = (node, route.sid);
            if self.sessions.is_resumable(addr) {
                // The session waits for its client to resume on another CM.
                if let Some((bare, _)) = address::split_full(&full) {
                    self.table.insert(bare, route);
                }
                self.detach(addr, self.now);
                continue;
            }
            if let Some(ledger) = self.sessions.remove(addr) {
                self.reroute_unacked(&full, ledger);
            }
            if route.available {
                self.broadcast_unavailable(&full, &route.directed);
            }
            self.forget_roster_if_unused(address::bare(&full));
        }
        self.rosters.forget_node(node);
    }

    /// Available sessions of `bare` other than `except`.
    fn others(&self, bare: &str, except: Option<SessionAddr>) -> Vec<SessionAddr> {
        self.table
            .resources(bare)
            .iter()
            .filter(|r| r.available && Some((r.node, r.sid)) != except)
            .map(|r| (r.node, r.sid))
            .collect()
    }

    fn stanza(&mut self, node: NodeId, sid: SessionId, header: RouteHeader, payload: Bytes) {
        let sender_bare = address::bare(&header.from).to_owned();
        let to = match header.to.as_deref() {
            None => None,
            Some(raw) => match Jid::new(raw) {
                Ok(jid) => Some(jid),
                Err(_) => {
                    self.reply_error(node, sid, &header, StanzaCondition::JidMalformed);
                    return;
                }
            },
        };
        match header.kind {
            Kind::Presence => self.presence(node, sid, &header, to, payload, &sender_bare),
            Kind::Message => self.message(node, sid, &header, to, payload, &sender_bare),
            Kind::Iq => self.iq(node, sid, &header, to, payload, &sender_bare),
        }
    }

    fn is_local(&self, jid: &Jid) -> bool {
        jid.domain().as_str() == self.domain
    }

    fn presence(
        &mut self,
        node: NodeId,
        sid: SessionId,
        header: &RouteHeader,
        to: Option<Jid>,
        payload: Bytes,
        sender_bare: &str,
    ) {
        let stype = header.stanza_type.as_deref();
        if let Some(kind) = stype.and_then(roster::SubType::parse) {
            if let Some(to) = to {
                self.subscription_stanza(sender_bare, &to, kind);
            }
            return;
        }
        match to {
            None => self.broadcast_presence((node, sid), stype, payload, sender_bare),
            Some(to) if self.is_local(&to) && stype != Some("probe") => {
                self.directed_presence((node, sid), &to, stype, payload, sender_bare)
            }
            Some(_) => {}
        }
    }

    fn message(
        &mut self,
        node: NodeId,
        sid: SessionId,
        header: &RouteHeader,
        to: Option<Jid>,
        payload: Bytes,
        sender_bare: &str,
    ) {
        let to = match to {
            Some(to) => to,
            None => match Jid::new(sender_bare) {
                Ok(j) => j,
                Err(_) => return,
            },
        };
        let mtype = header.stanza_type.as_deref().unwrap_or("normal");
        if !self.is_local(&to) {
            if mtype != "error" {
                self.reply_error(node, sid, header, StanzaCondition::RemoteServerNotFound);
            }
            return;
        }
        if to.node().is_none() {
            // To the server itself: nothing handles messages here.
            if mtype != "error" {
                self.reply_error(node, sid, header, StanzaCondition::ServiceUnavailable);
            }
            return;
        }
        let bare = to.to_bare().to_string();
        let conversation = matches!(mtype, "chat" | "normal");
        let payload = match conversation {
            true => self.archive_message(sender_bare, &bare, payload),
            false => payload,
        };
        let delivered = if let Some(res) = to.resource()
            && let Some(r) = self.table.full(&bare, res.as_str())
        {
            let target = (r.node, r.sid);
            self.deliver(target, payload.clone());
            vec![target]
        } else if mtype == "error" {
            // RFC 6121 §8.5.2, §8.5.3: errors only reach the exact session; otherwise ignored.
            return;
        } else {
            self.message_to_bare(&bare, mtype, payload.clone(), Some((node, sid, header)))
        };
        if conversation {
            self.carbon_copies((node, sid), sender_bare, &bare, &delivered, &payload);
        }
    }

    /// RFC 6121 §8.5.2: a message to a bare JID (or an offline full JID).
    fn message_to_bare(
        &mut self,
        bare: &str,
        mtype: &str,
        payload: Bytes,
        sender: Option<(NodeId, SessionId, &RouteHeader)>,
    ) -> Vec<SessionAddr> {
        let targets: Vec<SessionAddr> = match mtype {
            "headline" => self
                .table
                .resources(bare)
                .iter()
                .filter(|r| r.available && r.priority >= 0)
                .map(|r| (r.node, r.sid))
                .collect(),
            "groupchat" => {
                if let Some((n, s, h)) = sender {
                    self.reply_error(n, s, h, StanzaCondition::ServiceUnavailable);
                }
                return Vec::new();
            }
            _ => self.table.best(bare),
        };
        if !targets.is_empty() {
            for &t in &targets {
                self.deliver(t, payload.clone());
            }
            return targets;
        }
        if matches!(mtype, "normal" | "chat") {
            let user = address::local(bare).unwrap_or_default().to_owned();
            let bounce = match sender {
                Some((_, _, h)) => Bounce {
                    sender: h.from.clone(),
                    to: h.to.clone().unwrap_or_else(|| bare.to_owned()),
                    id: h.id.clone(),
                },
                None => Bounce {
                    sender: String::new(),
                    to: bare.to_owned(),
                    id: None,
                },
            };
            self.store(user, payload, bounce);
        }
        Vec::new()
    }

    /// A stanza a CM could not deliver: its session is gone or cannot keep
    /// up, so it leaves the table first (no bounce loop back to it), then the
    /// stanza is routed again as if to the bare JID.
    fn bounced(&mut self, node: NodeId, sid: SessionId, to: &str, payload: Bytes) {
        self.session_end(node, sid);
        let Ok(jid) = Jid::new(to) else { return };
        let Ok(top) = xmpp_stream::stanza::inspect(&payload) else {
            return;
        };
        if top.stanza_kind() != Some(StanzaKind::Message) {
            return;
        }
        let mtype = top.attr("type").unwrap_or("normal").to_owned();
        self.message_to_bare(&jid.to_bare().to_string(), &mtype, payload, None);
    }

    fn iq(
        &mut self,
        node: NodeId,
        sid: SessionId,
        header: &RouteHeader,
        to: Option<Jid>,
        payload: Bytes,
        sender_bare: &str,
    ) {
        let itype = header.stanza_type.as_deref().unwrap_or("");
        let is_request = matches!(itype, "get" | "set");
        let to = match to {
            None => None,
            Some(j) if !self.is_local(&j) => {
                if is_request {
                    self.reply_error(node, sid, header, StanzaCondition::RemoteServerNotFound);
                }
                return;
            }
            Some(j) => Some(j),
        };
        // Addressed to a full JID of a user: deliver to that session.
        if let Some(to) = &to
            && let Some(res) = to.resource()
            && to.node().is_some()
        {
            let bare = to.to_bare().to_string();
            match self.table.full(&bare, res.as_str()) {
                Some(r) => {
                    let target = (r.node, r.sid);
                    self.deliver(target, payload);
                }
                None if is_request => {
                    self.reply_error(node, sid, header, StanzaCondition::ServiceUnavailable)
                }
                None => {}
            }
            return;
        }
        // Otherwise the server answers (for itself or on behalf of the account).
        if !is_request {
            return;
        }
        let Ok(el) = Element::parse(&payload, ns::CLIENT) else {
            self.reply_error(node, sid, header, StanzaCondition::BadRequest);
            return;
        };
        let Some(child) = el.elements().next() else {
            self.reply_error(node, sid, header, StanzaCondition::BadRequest);
            return;
        };
        let own = to
            .as_ref()
            .is_none_or(|j| j.to_bare().to_string() == sender_bare);
        let for_account = to.as_ref().is_some_and(|j| j.node().is_some());
        let addr = (node, sid);
        let result = || {
            let mut r = roster::iq_result(header);
            if let Some(j) = &to {
                r.set_attr("from", j.to_string());
            }
            r
        };
        let reply = match (child.name.as_str(), child.ns.as_str(), itype) {
            // Anyone's vCard can be read; everything else is one's own.
            ("vCard", ns::VCARD, _) if own || itype == "get" => {
                return self.vcard_iq(
                    addr,
                    header,
                    child,
                    to.as_ref().filter(|_| !own),
                    sender_bare,
                );
            }
            _ if !own && for_account => {
                return self.reply_error(node, sid, header, StanzaCondition::ServiceUnavailable);
            }
            ("ping", ns::PING, "get") => result(),
            ("query", ns::DISCO_INFO, "get") => result().with_child(match for_account {
                true => account_info(self.archive.is_some()),
                false => disco_info(),
            }),
            ("query", ns::DISCO_ITEMS, "get") => {
                result().with_child(Element::new("query", ns::DISCO_ITEMS))
            }
            ("query", ns::ROSTER, _) => return self.roster_iq(addr, header, child, sender_bare),
            ("query", ns::MAM, _) if self.archive.is_some() => {
                return self.mam_iq(addr, header, child, sender_bare);
            }
            ("enable", ns::CARBONS, "set") => return self.carbons_iq(addr, header, true),
            ("disable", ns::CARBONS, "set") => return self.carbons_iq(addr, header, false),
            _ => {
                return self.reply_error(node, sid, header, StanzaCondition::ServiceUnavailable);
            }
        };
        self.deliver(addr, Bytes::from(reply.to_bytes(ns::CLIENT)));
    }

    fn reply_error(
        &mut self,
        node: NodeId,
        sid: SessionId,
        header: &RouteHeader,
        condition: StanzaCondition,
    ) {
        let kind = match header.kind {
            Kind::Message => StanzaKind::Message,
            Kind::Presence => StanzaKind::Presence,
            Kind::Iq => StanzaKind::Iq,
        };
        let from = header.to.clone().unwrap_or_else(|| self.domain.clone());
        self.stats.errors += 1;
        let reply = error_reply(
            kind,
            header.id.as_deref(),
            &from,
            &header.from,
            condition,
            None,
        );
        self.deliver((node, sid), reply);
    }

    fn error_to(
        &mut self,
        to_full: &str,
        kind: StanzaKind,
        id: Option<&str>,
        from: &str,
        condition: StanzaCondition,
    ) {
        let Some((bare, res)) = address::split_full(to_full) else {
            return;
        };
        let Some(r) = self.table.full(bare, res) else {
            return;
        };
        let target = (r.node, r.sid);
        self.stats.errors += 1;
        let reply = error_reply(kind, id, from, to_full, condition, None);
        self.deliver(target, reply);
    }

    fn deliver(&mut self, addr: SessionAddr, payload: Bytes) {
        self.deliver_as(addr, payload, true)
    }

    /// Delivers a carbon copy or a query result: never queued behind stored
    /// messages (it is not part of the conversation's order).
    fn deliver_copy(&mut self, addr: SessionAddr, payload: Bytes) {
        self.deliver_as(addr, payload, false)
    }

    fn deliver_as(&mut self, (node, sid): SessionAddr, payload: Bytes, queue: bool) {
        match self.track((node, sid), &payload, queue) {
            stream_management::Tracking::Send => {
                self.stats.delivered += 1;
                self.send(node, Frame::Deliver { sid, payload });
            }
            // kept for the resumption, or stored behind older stored messages
            stream_management::Tracking::Held | stream_management::Tracking::Spilled => {}
        }
    }

    /// Stores a message that no session can take, if it is worth storing.
    fn store_undeliverable(&mut self, user: String, payload: Bytes) {
        if stream_management::storable_message(&payload) {
            let bounce = Bounce {
                sender: String::new(),
                to: String::new(),
                id: None,
            };
            self.store(user, payload, bounce);
        }
    }

    /// Stores a message offline. If an SM sender's stanza is being routed,
    /// its acknowledgement waits for the commit.
    fn store(&mut self, user: String, payload: Bytes, bounce: Bounce) {
        self.stats.offline_stored += 1;
        let origin = self.hold_ack();
        self.out.push(Action::StoreOffline {
            user,
            payload,
            bounce,
            origin,
        });
    }

    /// The SM stanza being routed waits for a storage commit before it is
    /// acknowledged; returns the origin to report [`Input::Stored`] for.
    fn hold_ack(&mut self) -> Option<(u64, u32)> {
        let origin = self.origin;
        if let Some(origin) = origin {
            self.sessions.store_started(origin);
        }
        origin
    }

    fn send(&mut self, node: NodeId, frame: Frame) {
        self.out.push(Action::Send { node, frame });
    }

    /// Ends a session with a stream error.
    fn kick(&mut self, (node, sid): SessionAddr, condition: StreamCondition) {
        let condition = condition.name().into();
        self.send(node, Frame::Kick { sid, condition });
    }

    /// The local part of a session's JID (its account).
    fn user_of(&self, (node, sid): SessionAddr) -> Option<String> {
        let jid = self.table.jid_of(node, sid)?;
        address::local(jid).map(str::to_owned)
    }
}

/// The server's disco#info (XEP-0030): exactly what is served.
fn disco_info() -> Element {
    features(
        Element::new("identity", ns::DISCO_INFO)
            .with_attr("category", "server")
            .with_attr("type", "im")
            .with_attr("name", "longlink"),
        &[
            ns::DISCO_INFO,
            ns::DISCO_ITEMS,
            ns::PING,
            ns::ROSTER,
            ns::CARBONS,
            ns::VCARD,
            "msgoffline",
        ],
    )
}

/// An account's disco#info: its archive and stable ids (XEP-0313 §6).
fn account_info(archive: bool) -> Element {
    features(
        Element::new("identity", ns::DISCO_INFO)
            .with_attr("category", "account")
            .with_attr("type", "registered"),
        match archive {
            true => &[ns::DISCO_INFO, ns::MAM, ns::SID],
            false => &[ns::DISCO_INFO],
        },
    )
}

fn features(identity: Element, vars: &[&str]) -> Element {
    let mut q = Element::new("query", ns::DISCO_INFO).with_child(identity);
    for var in vars {
        q = q.with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", *var));
    }
    q
}

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
