//! The router: a sans-IO state machine that owns the routing table and
//! decides, for every frame from a CM, what happens (RFC 6120 §10,
//! RFC 6121 §8.5). Inputs are events; outputs are [`Action`]s the driver
//! carries out (send a frame to a node, store or flush offline messages).
//! No sockets, no clocks, no storage: tests feed events and read actions.

use bytes::Bytes;
use cm_protocol::{Frame, Kind, RouteHeader, SessionId};
use jid::{BareJid, Jid};
use xmpp_stream::element::Element;
use xmpp_stream::stanza::{StanzaKind, error_reply};
use xmpp_stream::{StanzaCondition, StreamCondition, ns};

use crate::routing::{NodeId, RoutingTable, SessionAddr};

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
    },
    /// Deliver the user's stored messages to this session, then remove them.
    FlushOffline {
        /// Username (local part).
        user: String,
        /// Session to deliver to.
        to: SessionAddr,
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
}

/// The router (see the module docs).
pub struct Router {
    domain: String,
    table: RoutingTable,
    out: Vec<Action>,
    resource_counter: u64,
    resource_seed: u64,
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
            stats: RouterStats::default(),
        }
    }

    /// The routing table (read-only).
    pub fn table(&self) -> &RoutingTable {
        &self.table
    }

    /// Handles one event and returns the actions it produced.
    pub fn handle(&mut self, input: Input) -> Vec<Action> {
        match input {
            Input::NodeGone { node } => self.node_gone(node),
            Input::Frame { node, frame } => self.frame(node, frame),
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
            } => self.announce(node, sid, &jid, available, priority),
            Frame::Stanza {
                sid,
                header,
                payload,
            } => {
                self.stats.stanzas_in += 1;
                self.stanza(node, sid, header, payload)
            }
            Frame::Bounce { sid, to, payload } => self.bounced(node, sid, &to, payload),
            Frame::SessionEnd { sid, .. } => self.session_end(node, sid),
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
        if let Some((old_node, old_sid)) = self.table.bind(&bare, &resource, node, sid, false, 0) {
            self.send(
                old_node,
                Frame::Kick {
                    sid: old_sid,
                    condition: StreamCondition::Conflict.name().into(),
                },
            );
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
        if let Some((old_node, old_sid)) = self.table.bind(
            &bare,
            full.resource().as_str(),
            node,
            sid,
            available,
            priority,
        ) {
            self.send(
                old_node,
                Frame::Kick {
                    sid: old_sid,
                    condition: StreamCondition::Conflict.name().into(),
                },
            );
        }
    }

    fn session_end(&mut self, node: NodeId, sid: SessionId) {
        if let Some((full, route)) = self.table.unbind(node, sid)
            && route.available
        {
            self.broadcast_unavailable(&full);
        }
    }

    fn node_gone(&mut self, node: NodeId) {
        for (full, route) in self.table.drop_node(node) {
            if route.available {
                self.broadcast_unavailable(&full);
            }
        }
    }

    /// Tells a user's other available resources that `full` went away.
    fn broadcast_unavailable(&mut self, full: &str) {
        let bare = full.split_once('/').map(|(b, _)| b).unwrap_or(full);
        let mut presence = Element::new("presence", ns::CLIENT)
            .with_attr("from", full)
            .with_attr("type", "unavailable");
        for to in self.others(bare, None) {
            presence.set_attr("to", bare);
            self.deliver(to, Bytes::from(presence.to_bytes(ns::CLIENT)));
        }
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
        let sender_bare = header
            .from
            .split_once('/')
            .map(|(b, _)| b.to_owned())
            .unwrap_or_else(|| header.from.clone());
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
        let Some(to) = to else {
            // Broadcast presence: updates routing, goes to the user's other resources.
            let stype = header.stanza_type.as_deref();
            let (available, priority) = match stype {
                None => (true, presence_priority(&payload)),
                Some("unavailable") => (false, 0),
                _ => return, // subscription management comes with rosters
            };
            let was = self.table.set_presence(node, sid, available, priority);
            for other in self.others(sender_bare, Some((node, sid))) {
                self.deliver(other, payload.clone());
            }
            if available && was == Some(false) {
                let user = sender_bare.split('@').next().unwrap_or_default().to_owned();
                self.out.push(Action::FlushOffline {
                    user,
                    to: (node, sid),
                });
            }
            return;
        };
        if !self.is_local(&to) {
            return;
        }
        // Directed presence: to a full JID's session, or a bare JID's available resources.
        let targets = match to.resource() {
            Some(res) => self
                .table
                .full(&to.to_bare().to_string(), res.as_str())
                .map(|r| vec![(r.node, r.sid)])
                .unwrap_or_default(),
            None => self
                .table
                .resources(&to.to_bare().to_string())
                .iter()
                .filter(|r| r.available && r.priority >= 0)
                .map(|r| (r.node, r.sid))
                .collect(),
        };
        for t in targets {
            self.deliver(t, payload.clone());
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
        if let Some(res) = to.resource()
            && let Some(r) = self.table.full(&bare, res.as_str())
        {
            let target = (r.node, r.sid);
            self.deliver(target, payload);
            return;
        }
        if mtype == "error" {
            // RFC 6121 §8.5.2, §8.5.3: errors only reach the exact session; otherwise ignored.
            return;
        }
        self.message_to_bare(&bare, mtype, payload, Some((node, sid, header)));
    }

    /// RFC 6121 §8.5.2: a message to a bare JID (or an offline full JID).
    fn message_to_bare(
        &mut self,
        bare: &str,
        mtype: &str,
        payload: Bytes,
        sender: Option<(NodeId, SessionId, &RouteHeader)>,
    ) {
        let targets = match mtype {
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
                return;
            }
            _ => self.table.best(bare),
        };
        if !targets.is_empty() {
            for t in targets {
                self.deliver(t, payload.clone());
            }
            return;
        }
        if matches!(mtype, "normal" | "chat") {
            let user = bare.split('@').next().unwrap_or_default().to_owned();
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
            self.stats.offline_stored += 1;
            self.out.push(Action::StoreOffline {
                user,
                payload,
                bounce,
            });
        }
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
        let for_account = to.as_ref().is_some_and(|j| j.node().is_some());
        if for_account
            && to.as_ref().map(|j| j.to_bare().to_string()).as_deref() != Some(sender_bare)
        {
            self.reply_error(node, sid, header, StanzaCondition::ServiceUnavailable);
            return;
        }
        let Ok(el) = Element::parse(&payload, ns::CLIENT) else {
            self.reply_error(node, sid, header, StanzaCondition::BadRequest);
            return;
        };
        let child = el.elements().next();
        let reply_from = to
            .map(|j| j.to_string())
            .unwrap_or_else(|| self.domain.clone());
        let result = || {
            Element::new("iq", ns::CLIENT)
                .with_attr("type", "result")
                .with_attr("from", reply_from.clone())
                .with_attr("to", header.from.clone())
                .with_attr("id", header.id.clone().unwrap_or_default())
        };
        let answer = match child.map(|c| (c.name.as_str(), c.ns.as_str(), itype)) {
            Some(("ping", ns::PING, "get")) => Some(result()),
            Some(("query", ns::DISCO_INFO, "get")) if !for_account => {
                Some(result().with_child(disco_info()))
            }
            Some(("query", ns::DISCO_ITEMS, "get")) if !for_account => {
                Some(result().with_child(Element::new("query", ns::DISCO_ITEMS)))
            }
            Some(("query", "jabber:iq:roster", "get")) => {
                // Rosters come later; an empty roster keeps clients working meanwhile.
                Some(result().with_child(Element::new("query", "jabber:iq:roster")))
            }
            _ => None,
        };
        match answer {
            Some(reply) => self.deliver((node, sid), Bytes::from(reply.to_bytes(ns::CLIENT))),
            None => self.reply_error(node, sid, header, StanzaCondition::ServiceUnavailable),
        }
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
        let Some((bare, res)) = to_full.split_once('/') else {
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

    fn deliver(&mut self, (node, sid): SessionAddr, payload: Bytes) {
        self.stats.delivered += 1;
        self.send(node, Frame::Deliver { sid, payload });
    }

    fn send(&mut self, node: NodeId, frame: Frame) {
        self.out.push(Action::Send { node, frame });
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

/// The server's disco#info: exactly what is served.
fn disco_info() -> Element {
    let mut q = Element::new("query", ns::DISCO_INFO).with_child(
        Element::new("identity", ns::DISCO_INFO)
            .with_attr("category", "server")
            .with_attr("type", "im")
            .with_attr("name", "longlink"),
    );
    for var in [ns::DISCO_INFO, ns::DISCO_ITEMS, ns::PING] {
        q = q.with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", var));
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: Kind, from: &str, to: Option<&str>, stype: Option<&str>) -> RouteHeader {
        RouteHeader {
            kind,
            stanza_type: stype.map(Into::into),
            to: to.map(Into::into),
            id: Some("i1".into()),
            from: from.into(),
        }
    }

    fn bound(r: &mut Router, node: NodeId, sid: SessionId, user: &str, res: &str) -> String {
        let acts = r.handle(Input::Frame {
            node,
            frame: Frame::Bind {
                sid,
                user: user.into(),
                iq_id: "b".into(),
                resource: Some(res.into()),
            },
        });
        match &acts[..] {
            [
                Action::Send {
                    frame:
                        Frame::BindResult {
                            result: Ok(jid), ..
                        },
                    ..
                },
            ] => jid.clone(),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn stanza(
        r: &mut Router,
        node: NodeId,
        sid: SessionId,
        h: RouteHeader,
        p: &str,
    ) -> Vec<Action> {
        r.handle(Input::Frame {
            node,
            frame: Frame::Stanza {
                sid,
                header: h,
                payload: Bytes::copy_from_slice(p.as_bytes()),
            },
        })
    }

    fn delivered_to(acts: &[Action]) -> Vec<(NodeId, SessionId)> {
        acts.iter()
            .filter_map(|a| match a {
                Action::Send {
                    node,
                    frame: Frame::Deliver { sid, .. },
                } => Some((*node, *sid)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn message_to_full_and_bare_jid() {
        let mut r = Router::new("x", 1);
        let a = bound(&mut r, 1, 10, "alice@x", "phone");
        bound(&mut r, 3, 30, "carol@x", "pc");
        stanza(
            &mut r,
            3,
            30,
            header(Kind::Presence, "carol@x/pc", None, None),
            "<presence/>",
        );
        let acts = stanza(
            &mut r,
            1,
            10,
            header(Kind::Message, &a, Some("carol@x/pc"), Some("chat")),
            "<message/>",
        );
        assert_eq!(delivered_to(&acts), vec![(3, 30)]);
        let acts = stanza(
            &mut r,
            1,
            10,
            header(Kind::Message, &a, Some("carol@x"), Some("chat")),
            "<message/>",
        );
        assert_eq!(delivered_to(&acts), vec![(3, 30)]);
        // an offline full JID falls back to the bare JID
        let acts = stanza(
            &mut r,
            1,
            10,
            header(Kind::Message, &a, Some("carol@x/gone"), Some("chat")),
            "<message/>",
        );
        assert_eq!(delivered_to(&acts), vec![(3, 30)]);
    }

    #[test]
    fn offline_when_no_available_resource_and_flush_on_presence() {
        let mut r = Router::new("x", 1);
        let a = bound(&mut r, 1, 10, "alice@x", "phone");
        let acts = stanza(
            &mut r,
            1,
            10,
            header(Kind::Message, &a, Some("bob@x"), Some("chat")),
            "<message/>",
        );
        assert!(matches!(&acts[..], [Action::StoreOffline { user, .. }] if user == "bob"));
        // failure to store (unknown user) answers the sender
        let Action::StoreOffline { bounce, .. } = acts[0].clone() else {
            unreachable!()
        };
        let acts = r.offline_failed(bounce, StanzaCondition::ServiceUnavailable);
        assert_eq!(delivered_to(&acts), vec![(1, 10)]);
        // bob comes online: offline messages are flushed on initial presence
        bound(&mut r, 2, 20, "bob@x", "r");
        let acts = stanza(
            &mut r,
            2,
            20,
            header(Kind::Presence, "bob@x/r", None, None),
            "<presence/>",
        );
        assert!(acts.contains(&Action::FlushOffline {
            user: "bob".into(),
            to: (2, 20)
        }));
        // headline and error messages are never stored
        let acts = stanza(
            &mut r,
            1,
            10,
            header(Kind::Message, &a, Some("dave@x"), Some("headline")),
            "<message/>",
        );
        assert!(acts.is_empty());
    }

    #[test]
    fn conflict_kicks_the_old_session() {
        let mut r = Router::new("x", 1);
        bound(&mut r, 1, 10, "alice@x", "phone");
        let acts = r.handle(Input::Frame {
            node: 2,
            frame: Frame::Bind {
                sid: 5,
                user: "alice@x".into(),
                iq_id: "b".into(),
                resource: Some("phone".into()),
            },
        });
        assert!(acts.contains(&Action::Send {
            node: 1,
            frame: Frame::Kick {
                sid: 10,
                condition: "conflict".into()
            }
        }));
        assert_eq!(r.table().full("alice@x", "phone").unwrap().node, 2);
    }

    #[test]
    fn bind_generates_resources_and_refuses_bad_ones() {
        let mut r = Router::new("x", 1);
        let bind = |r: &mut Router, sid, resource: Option<&str>| {
            r.handle(Input::Frame {
                node: 1,
                frame: Frame::Bind {
                    sid,
                    user: "a@x".into(),
                    iq_id: "b".into(),
                    resource: resource.map(Into::into),
                },
            })
        };
        let acts = bind(&mut r, 2, None);
        assert!(
            matches!(&acts[..], [Action::Send { frame: Frame::BindResult { result: Ok(j), .. }, .. }] if j.starts_with("a@x/ll-"))
        );
        let bad = "x".repeat(2000);
        let acts = bind(&mut r, 3, Some(&bad));
        assert!(
            matches!(&acts[..], [Action::Send { frame: Frame::BindResult { result: Err(e), .. }, .. }] if e == "bad-request")
        );
        // a retry after an error can succeed
        let acts = bind(&mut r, 3, Some("ok"));
        assert!(matches!(
            &acts[..],
            [Action::Send {
                frame: Frame::BindResult { result: Ok(_), .. },
                ..
            }]
        ));
    }

    #[test]
    fn a_bounce_removes_the_session_and_goes_elsewhere_without_looping() {
        let mut r = Router::new("x", 1);
        let a = bound(&mut r, 1, 10, "alice@x", "phone");
        bound(&mut r, 2, 20, "bob@x", "one");
        bound(&mut r, 2, 21, "bob@x", "two");
        stanza(
            &mut r,
            2,
            20,
            header(Kind::Presence, "bob@x/one", None, None),
            "<presence/>",
        );
        stanza(
            &mut r,
            2,
            21,
            header(Kind::Presence, "bob@x/two", None, None),
            "<presence/>",
        );
        let _ = a;
        let payload =
            Bytes::from_static(b"<message to='bob@x/one' type='chat'><body>hi</body></message>");
        let acts = r.handle(Input::Frame {
            node: 2,
            frame: Frame::Bounce {
                sid: 20,
                to: "bob@x/one".into(),
                payload: payload.clone(),
            },
        });
        assert!(delivered_to(&acts).contains(&(2, 21)));
        assert!(!delivered_to(&acts).contains(&(2, 20)));
        let acts = r.handle(Input::Frame {
            node: 2,
            frame: Frame::Bounce {
                sid: 21,
                to: "bob@x/two".into(),
                payload,
            },
        });
        assert!(delivered_to(&acts).is_empty());
        assert!(matches!(acts.last(), Some(Action::StoreOffline { user, .. }) if user == "bob"));
    }

    #[test]
    fn server_iqs_and_errors() {
        let mut r = Router::new("x", 1);
        let a = bound(&mut r, 1, 10, "alice@x", "phone");
        let acts = stanza(
            &mut r,
            1,
            10,
            header(Kind::Iq, &a, Some("x"), Some("get")),
            "<iq type='get' id='i1'><ping xmlns='urn:xmpp:ping'/></iq>",
        );
        let Action::Send {
            frame: Frame::Deliver { payload, .. },
            ..
        } = &acts[0]
        else {
            panic!()
        };
        let el = Element::parse(payload, ns::CLIENT).unwrap();
        assert_eq!(el.attr("type"), Some("result"));
        let acts = stanza(
            &mut r,
            1,
            10,
            header(Kind::Iq, &a, None, Some("get")),
            "<iq type='get' id='i1'><query xmlns='urn:unknown'/></iq>",
        );
        let Action::Send {
            frame: Frame::Deliver { payload, .. },
            ..
        } = &acts[0]
        else {
            panic!()
        };
        let el = Element::parse(payload, ns::CLIENT).unwrap();
        assert!(
            el.child("error", ns::CLIENT)
                .unwrap()
                .child("service-unavailable", ns::STANZA_ERRORS)
                .is_some()
        );
        // remote domains are not served
        let acts = stanza(
            &mut r,
            1,
            10,
            header(Kind::Message, &a, Some("bob@elsewhere"), Some("chat")),
            "<message/>",
        );
        let Action::Send {
            frame: Frame::Deliver { payload, .. },
            ..
        } = &acts[0]
        else {
            panic!()
        };
        assert!(
            std::str::from_utf8(payload)
                .unwrap()
                .contains("remote-server-not-found")
        );
    }

    #[test]
    fn node_gone_drops_routes_and_tells_other_resources() {
        let mut r = Router::new("x", 1);
        bound(&mut r, 1, 10, "alice@x", "phone");
        bound(&mut r, 2, 20, "alice@x", "desk");
        stanza(
            &mut r,
            1,
            10,
            header(Kind::Presence, "alice@x/phone", None, None),
            "<presence/>",
        );
        stanza(
            &mut r,
            2,
            20,
            header(Kind::Presence, "alice@x/desk", None, None),
            "<presence/>",
        );
        let acts = r.handle(Input::NodeGone { node: 1 });
        assert_eq!(delivered_to(&acts), vec![(2, 20)]);
        assert_eq!(r.table().len(), 1);
    }
}
