//! Routing across cores (issue 15): what this core does for users of slots
//! it does not own (forward their stanzas to the owner) and for stanzas
//! forwarded to it (route them to its users, answer `ForwardDone` once
//! what they stored committed), and what it does when its slots or its
//! peers' change.

use std::time::Instant;

use bytes::Bytes;
use cm_protocol::slots::Slot;
use cm_protocol::{Frame, Kind, RouteHeader, SessionId, SlotEpoch};
use jid::Jid;
use xmpp_stream::StanzaCondition;
use xmpp_stream::stanza::StanzaKind;

use super::live_rows::MessageRow;
use super::output::stanza_kind;
use super::roster_writes::PeerStanza;
use super::shards::{Inbound, Owner};
use super::subscriptions::{SubType, presence_stanza};
use super::{Action, Bounce, Router};
use crate::address;
use crate::routing::NodeId;
use crate::shards::LeaseEvent;

/// The link this core's own forwards come in on when their recipient's
/// slot is (or became) its own: no CM or peer has this id.
pub(super) const HOME: NodeId = NodeId::MAX;

impl Router {
    /// Whether this core serves `bare` (always, outside a cluster).
    pub(super) fn serves(&self, bare: &str) -> bool {
        self.shard
            .as_ref()
            .is_none_or(|s| s.owner(bare) == Owner::Local)
    }

    /// The peer core that serves `bare`, if another core does (or none is
    /// known: `Some(None)`); `None` if this core serves it.
    fn peer_of(&self, bare: &str) -> Option<Option<String>> {
        match self.shard.as_ref()?.owner(bare) {
            Owner::Local => None,
            Owner::Peer(core) => Some(Some(core.to_owned())),
            Owner::Unknown => Some(None),
        }
    }

    /// Sends a stanza (not a message whose sender waits) to the core that
    /// serves `to`'s user, if another core does; false if this core serves
    /// it. Nothing tracks it: if no owner is known when it goes, it is
    /// dropped (a presence or an IQ during a fail-over). A roster change
    /// being built holds it until its writes commit.
    pub(super) fn send_to_peer(
        &mut self,
        to: &str,
        kind: Kind,
        from: &str,
        payload: Bytes,
    ) -> bool {
        let bare = address::bare(to);
        let Some(peer) = self.peer_of(bare) else {
            return false;
        };
        let stanza = PeerStanza {
            to: to.to_owned(),
            kind,
            from: from.to_owned(),
            payload,
            tracked: false,
        };
        let Some(stanza) = self.hold_forward_for_change(stanza) else {
            return true;
        };
        if let Some(core) = peer {
            let frame = Frame::Forward {
                seq: 0,
                header: peer_header(&stanza),
                payload: stanza.payload,
            };
            self.emit(Action::Forward { core, frame });
        }
        true
    }

    /// Sends a subscription stanza to the core that serves `to_bare` as a
    /// tracked forward (sent again until that core takes it, holding the
    /// acknowledgement of the stanza being handled), once the roster change
    /// being built is durable.
    pub(super) fn subscription_to_peer(&mut self, to_bare: &str, from: &str, payload: Bytes) {
        let stanza = PeerStanza {
            to: to_bare.to_owned(),
            kind: Kind::Presence,
            from: from.to_owned(),
            payload,
            tracked: true,
        };
        if let Some(stanza) = self.hold_forward_for_change(stanza) {
            self.send_held(stanza, None);
        }
    }

    /// Sends a stanza a roster change held for another core. A tracked one
    /// from the bare JID of `sender` (the full JID whose stanza made the
    /// change) names `sender` in its routing header, so that an error, if
    /// no core takes it, finds the session.
    pub(super) fn send_held(&mut self, stanza: PeerStanza, sender: Option<&str>) {
        if stanza.tracked {
            let mut header = peer_header(&stanza);
            if let Some(sender) = sender.filter(|s| address::bare(s) == stanza.from) {
                header.from = sender.to_owned();
            }
            let to = stanza.to;
            self.forward_stanza(&to, &header, stanza.payload);
        } else if !self.send_to_peer(
            &stanza.to,
            stanza.kind,
            &stanza.from,
            stanza.payload.clone(),
        ) {
            // the recipient's slot came here while the change was written
            self.deliver_to_jid(&stanza.to, &stanza.from, stanza.payload);
        }
    }

    /// Sends a presence from `from` (a local user's JID) to `to`: to the
    /// core that serves `to`'s user, or to its sessions here.
    pub(super) fn send_to_jid(&mut self, to: &str, from: &str, payload: Bytes) {
        if !self.send_to_peer(to, Kind::Presence, from, payload.clone()) {
            self.deliver_to_jid(to, from, payload);
        }
    }

    /// Delivers a stanza from `from` to a local JID's session (a full JID)
    /// or available sessions (a bare one), unless the recipient blocks
    /// `from` (an unavailable presence goes all the same).
    fn deliver_to_jid(&mut self, to: &str, from: &str, payload: Bytes) {
        let unavailable = xmpp_stream::stanza::inspect(&payload)
            .is_ok_and(|top| top.attr("type") == Some("unavailable"));
        if !unavailable && self.blocks(address::bare(to), from) {
            return;
        }
        let targets: Vec<(NodeId, SessionId)> = match address::split_full(to) {
            Some((bare, res)) => self
                .table
                .full(bare, res)
                .map(|r| vec![(r.node, r.sid)])
                .unwrap_or_default(),
            None => self.others(to, None),
        };
        for t in targets {
            self.deliver(t, payload.clone());
        }
    }

    /// Forwards a stanza to the core that serves `to_bare` (routed here if
    /// this core serves it by now); the SM sender's acknowledgement waits
    /// for that core's answer.
    pub(super) fn forward_stanza(&mut self, to_bare: &str, header: &RouteHeader, payload: Bytes) {
        let origin = self.hold_ack();
        let Some(now) = self.now else { return };
        let started = self
            .forwards
            .start(to_bare, header.clone(), payload, origin, now);
        match started {
            Some(seq) if self.serves(to_bare) => self.forward_home(seq),
            Some(seq) => self.send_forward(seq, to_bare),
            None => {
                // too much waits for other cores already
                self.error_to(
                    &header.from,
                    stanza_kind(header.kind),
                    header.id.as_deref(),
                    header.to.as_deref().unwrap_or(to_bare),
                    StanzaCondition::ResourceConstraint,
                );
                if let Some(origin) = origin {
                    self.stored(origin);
                }
            }
        }
    }

    /// Sends forward `seq` to `to_bare`'s owner, if one is known (else it
    /// waits for one).
    fn send_forward(&mut self, seq: u64, to_bare: &str) {
        if let Some(Some(core)) = self.peer_of(to_bare)
            && let Some(frame) = self.forwards.send_to(seq, &core)
        {
            self.emit(Action::Forward { core, frame });
        }
    }

    /// Sends again the forwards whose owner changed or was unknown; those
    /// whose recipient is now this core's user are routed here.
    fn resend_forwards(&mut self) {
        let Some(shard) = &self.shard else { return };
        let member = shard.member();
        let again = self
            .forwards
            .to_resend(|bare, core| match shard.owner(bare) {
                Owner::Peer(c) => c == core,
                // (routed home already: it waits there)
                Owner::Local => core == member,
                Owner::Unknown => false,
            });
        for r in again {
            if self.serves(&r.to_bare) {
                self.forward_home(r.seq);
            } else {
                self.send_forward(r.seq, &r.to_bare);
            }
        }
    }

    /// Routes forward `seq` here (this core took its recipient's slot):
    /// sent to this core itself, on the [`HOME`] link, so it takes the way
    /// of one from a peer (waiting for its recipient's roster if it needs
    /// it, answered once its writes commit, refused and sent again if they
    /// fail) and its answer comes back to [`Router::forward_done`].
    fn forward_home(&mut self, seq: u64) {
        let Some(member) = self.shard.as_ref().map(|s| s.member().to_owned()) else {
            return;
        };
        let Some(now) = self.now else { return };
        if let Some(frame) = self.forwards.send_to(seq, &member) {
            self.frame(HOME, frame, now);
        }
    }

    /// This core's link to `core` is up (forwards waiting go now) or down
    /// (forwards sent on it and not answered wait for it).
    pub(super) fn peer_link(&mut self, core: &str, up: bool) {
        if up {
            self.resend_forwards();
        } else {
            self.forwards.link_down(core);
        }
    }

    /// Peer `core` answered forward `seq`.
    pub(super) fn forward_done(&mut self, core: &str, seq: u64, accepted: bool, now: Instant) {
        if accepted {
            if let Some(Some(origin)) = self.forwards.done(seq) {
                self.stored(origin);
            }
        } else if let Some(again) = self.forwards.refused(seq, core, now) {
            // it waits for the next word on the slot's owner, or the retry
            tracing::debug!(seq, to = again.to_bare, "a peer refused a forward");
        }
    }

    /// Forwards nobody took within [`super::shards::FORWARD_GIVE_UP`]:
    /// their senders get an error, and their acknowledgements go on.
    /// Refused forwards due for a retry go to their recipients' owners.
    pub(super) fn expire_forwards(&mut self, now: Instant) {
        for again in self.forwards.due_retries(now) {
            if self.serves(&again.to_bare) {
                self.forward_home(again.seq);
            } else {
                self.send_forward(again.seq, &again.to_bare);
            }
        }
        for given_up in self.forwards.expire(now) {
            let h = &given_up.header;
            if h.stanza_type.as_deref() != Some("error") {
                self.error_to(
                    &h.from,
                    stanza_kind(h.kind),
                    h.id.as_deref(),
                    h.to.as_deref().unwrap_or_default(),
                    StanzaCondition::RecipientUnavailable,
                );
            }
            if let Some(origin) = given_up.origin {
                self.stored(origin);
            }
        }
    }

    /// The earliest give-up time of a forward.
    pub(super) fn next_forward_deadline(&self) -> Option<Instant> {
        self.forwards.next_deadline()
    }

    /// A peer core (on link `node`) says what it owns.
    pub(super) fn peer_slots(&mut self, node: NodeId, core: String, owned: &[SlotEpoch]) {
        let Some(shard) = &mut self.shard else { return };
        if core == shard.member() {
            return;
        }
        shard.peer_says(&core, owned);
        self.peer_links.insert(node, core);
        self.resend_forwards();
    }

    /// A peer's link is gone for good: its slots have no known owner.
    pub(super) fn peer_link_gone(&mut self, node: NodeId) -> bool {
        let Some(core) = self.peer_links.remove(&node) else {
            return false;
        };
        if let Some(shard) = &mut self.shard {
            shard.peer_gone(&core);
        }
        true
    }

    /// Ownership changed (the lease driver's events, in order).
    pub(super) fn ownership(&mut self, events: Vec<LeaseEvent>) {
        let Some(shard) = &mut self.shard else { return };
        let mut lost = Vec::new();
        let mut handed = Vec::new();
        for event in events {
            match event {
                LeaseEvent::Owned { slot, epoch } => shard.gain(slot, epoch.0 as u64),
                LeaseEvent::Lost { slot } => {
                    if shard.lose(slot) {
                        lost.push(slot);
                    }
                }
                LeaseEvent::HandOver { slot } => {
                    // Stops serving the slot now; what is under way for its
                    // users is in storage's queue, ahead of the release.
                    if shard.lose(slot) {
                        lost.push(slot);
                    }
                    handed.push(slot);
                }
            }
        }
        let owned = shard.owned();
        if !lost.is_empty() {
            self.leave_slots(&lost);
            self.rooms_moved();
            self.push_moved();
        }
        self.emit(Action::SlotsOwned { owned });
        for slot in handed {
            self.emit(Action::HandedOver { slot });
        }
        self.resend_forwards();
    }

    /// This core no longer serves `slots`: their users' sessions, ledgers
    /// and rosters are dropped without a word to anyone (their sessions
    /// live on; their CMs announce them to the new owner, which reads what
    /// they had from storage).
    fn leave_slots(&mut self, slots: &[Slot]) {
        let Some(shard) = &self.shard else { return };
        let users: Vec<String> = self
            .table
            .users()
            .filter(|u| slots.contains(&shard.slot(u)))
            .map(str::to_owned)
            .collect();
        for user in users {
            let addrs: Vec<(NodeId, SessionId)> = self
                .table
                .resources(&user)
                .iter()
                .map(|r| (r.node, r.sid))
                .collect();
            for (node, sid) in addrs {
                self.sessions.forget((node, sid));
                self.table.unbind(node, sid);
            }
            self.forget_roster_if_unused(&user);
        }
    }

    /// A stanza a peer forwarded (`seq` 0: no answer wanted).
    pub(super) fn forwarded_in(
        &mut self,
        node: NodeId,
        seq: u64,
        header: RouteHeader,
        payload: Bytes,
    ) {
        let Some(to) = header.to.as_deref().and_then(|t| Jid::new(t).ok()) else {
            return self.answer_forward(node, seq, true);
        };
        let bare = to.to_bare().to_string();
        if !self.serves(&bare) || to.node().is_none() {
            return self.answer_forward(node, seq, false);
        }
        let token = (seq != 0).then(|| self.inbound.begin(node, seq));
        // (a forward routed home may come while another stanza's
        // acknowledgement is being held: that one's is kept)
        let outer = std::mem::replace(&mut self.origin, token.map(|t| (t, 0)));
        match header.kind {
            // for a room of this core's
            _ if self.is_muc(&to) => self.muc_in(&header.from, &to.to_string(), payload),
            Kind::Message => self.message_in(&header, &to, &bare, payload),
            Kind::Presence => self.presence_in(node, &header, &to, &bare, payload),
            Kind::Iq => self.iq_in(&header, &to, &bare, payload),
        }
        self.origin = outer;
        if let Some(token) = token
            && let Some((node, seq, accepted)) = self.inbound.settle(token, false)
        {
            self.answer_forward(node, seq, accepted);
        }
    }

    /// Answers forward `seq` that came on link `node` (none for `seq` 0).
    pub(super) fn answer_forward(&mut self, node: NodeId, seq: u64, accepted: bool) {
        if seq == 0 {
            return;
        }
        if node == HOME {
            // one of this core's own forwards, routed home
            if let (Some(member), Some(now)) =
                (self.shard.as_ref().map(|s| s.member().to_owned()), self.now)
            {
                self.forward_done(&member, seq, accepted, now);
            }
            return;
        }
        self.send(node, Frame::ForwardDone { seq, accepted });
    }

    /// A write a forwarded stanza waited for finished: answers the peer
    /// once none is left. False if `token` is not a forward's.
    pub(super) fn inbound_stored(&mut self, token: u64) -> bool {
        if !Inbound::is_inbound(token) {
            return false;
        }
        if let Some((node, seq, accepted)) = self.inbound.settle(token, true) {
            self.answer_forward(node, seq, accepted);
        }
        true
    }

    /// A write of a message for `user` (local part) was refused by the
    /// fence, and no peer waits for it: the message goes to the user's new
    /// owner (the write's hold on its sender's acknowledgement passes to
    /// the forward), unless this core serves the user again or the payload
    /// is no message to forward, when its sender is answered.
    pub(super) fn store_fenced(
        &mut self,
        user: &str,
        bounce: Bounce,
        payload: Bytes,
        origin: Option<(u64, u32)>,
    ) {
        let bare = format!("{user}@{}", self.domain);
        let header = (!user.is_empty())
            .then(|| message_header(&bare, &payload))
            .flatten();
        match header {
            Some(header) if !self.serves(&bare) => {
                self.origin = origin;
                self.forward_stanza(&bare, &header, payload);
                self.origin = None;
                // (the forward holds the acknowledgement now)
                if let Some(origin) = origin {
                    self.stored(origin);
                }
            }
            _ => self.store_failed(
                bounce,
                &payload,
                StanzaCondition::ResourceConstraint,
                origin,
            ),
        }
    }

    /// A write a forwarded stanza waited for was refused by the fence: the
    /// forward will be refused, not accepted, once its writes are done (the
    /// caller then settles this write as for any other). False if `token`
    /// is not a forward's.
    pub(super) fn inbound_refused(&mut self, token: u64) -> bool {
        Inbound::is_inbound(token) && self.inbound.refuse(token)
    }

    /// A message from another core's user to one of this core's (its
    /// sender's archive and sent carbons were done there; its received
    /// carbons are done here, where the recipient's sessions are), or from
    /// an external component.
    pub(super) fn message_in(
        &mut self,
        header: &RouteHeader,
        to: &Jid,
        bare: &str,
        payload: Bytes,
    ) {
        if self.blocked_inbound(bare, header) || self.pep_event_in(header, bare, &payload) {
            return;
        }
        let mtype = header.stanza_type.as_deref().unwrap_or("normal");
        let carbon = matches!(mtype, "chat" | "normal")
            .then(|| self.received_carbon(bare, &payload))
            .flatten();
        self.live_ticket = MessageRow::Unset;
        let delivered = if let Some(res) = to.resource()
            && let Some(r) = self.table.full(bare, res.as_str())
        {
            let target = (r.node, r.sid);
            self.deliver_message(target, payload, mtype);
            vec![target]
        } else if mtype != "error" {
            self.message_to_bare(bare, mtype, payload, None)
        } else {
            Vec::new()
        };
        self.live_ticket = MessageRow::Unset;
        if let Some(inner) = carbon {
            self.carbon_copies(None, bare, &delivered, &inner);
        }
    }

    /// A presence from another core's user: a subscription change on this
    /// user's side, a probe, or presence to deliver.
    fn presence_in(
        &mut self,
        node: NodeId,
        header: &RouteHeader,
        to: &Jid,
        bare: &str,
        payload: Bytes,
    ) {
        // (presence, probes and subscription stanzas alike: dropped)
        if self.blocked_inbound(bare, header) {
            return;
        }
        let from_bare = address::bare(&header.from).to_owned();
        match header.stanza_type.as_deref() {
            Some(t) if SubType::parse(t).is_some() => {
                let Some(kind) = SubType::parse(t) else {
                    return;
                };
                let bare = bare.to_owned();
                // as one roster change; its answers go through this link
                self.roster_change((node, SessionId::MAX), header, |r| {
                    r.subscription_in(&bare, &from_bare, kind)
                });
            }
            Some("probe") => self.probe_in(bare, &header.from, &from_bare),
            _ => {
                let targets: Vec<_> = match to.resource() {
                    Some(res) => self
                        .table
                        .full(bare, res.as_str())
                        .map(|r| vec![(r.node, r.sid)])
                        .unwrap_or_default(),
                    None => self
                        .table
                        .resources(bare)
                        .iter()
                        .filter(|r| r.available)
                        .map(|r| (r.node, r.sid))
                        .collect(),
                };
                for t in targets {
                    self.deliver(t, payload.clone());
                }
            }
        }
    }

    /// Another core's user `prober` (full JID) asks for `bare`'s presence
    /// (RFC 6121 §4.3.2): answered if `bare` lets it see its presence.
    fn probe_in(&mut self, bare: &str, prober: &str, prober_bare: &str) {
        let allowed = self
            .rosters
            .items(bare)
            .any(|i| i.jid == prober_bare && i.subscription.from());
        if !allowed {
            return;
        }
        let found: Vec<(String, Bytes)> = self
            .table
            .resources(bare)
            .iter()
            .filter_map(|r| {
                let p = r.presence.clone()?;
                Some((format!("{bare}/{}", r.resource), p))
            })
            .collect();
        for (from, p) in found {
            self.send_to_peer(prober, Kind::Presence, &from, p);
        }
    }

    /// An IQ from another core's user (or an external component) to a
    /// full JID here.
    pub(super) fn iq_in(&mut self, header: &RouteHeader, to: &Jid, bare: &str, payload: Bytes) {
        if self.blocked_inbound(bare, header) {
            return;
        }
        let is_request = matches!(header.stanza_type.as_deref(), Some("get" | "set"));
        let target = to
            .resource()
            .and_then(|res| self.table.full(bare, res.as_str()))
            .map(|r| (r.node, r.sid));
        match target {
            Some(t) => self.deliver(t, payload),
            None if is_request => self.error_to(
                &header.from,
                StanzaKind::Iq,
                header.id.as_deref(),
                header.to.as_deref().unwrap_or(bare),
                StanzaCondition::ServiceUnavailable,
            ),
            None => {}
        }
    }

    /// `bare`'s presence probe for each contact served by another core
    /// that it is subscribed to (sent when a session becomes available).
    pub(super) fn probe_peers(&mut self, full: &str, bare: &str) {
        if self.shard.is_none() {
            return;
        }
        let contacts: Vec<String> = self
            .rosters
            .items(bare)
            .filter(|i| i.subscription.to())
            .map(|i| i.jid.to_owned())
            .filter(|c| !self.serves(c) && !self.blocks(bare, c))
            .collect();
        for c in contacts {
            let probe = presence_stanza(full, &c, "probe");
            self.send_to_peer(&c, Kind::Presence, full, probe);
        }
    }

    /// `payload` (a presence of `full`) for each contact served by another
    /// core that is subscribed to `bare`, and each of `directed`.
    pub(super) fn presence_to_peers(
        &mut self,
        full: &str,
        bare: &str,
        directed: &[Box<str>],
        payload: &Bytes,
    ) {
        if self.shard.is_none() {
            return;
        }
        let mut targets: Vec<String> = self
            .rosters
            .items(bare)
            .filter(|i| i.subscription.from())
            .map(|i| i.jid.to_owned())
            .filter(|c| !self.serves(c) && !self.blocks(bare, c))
            .collect();
        targets.extend(
            directed
                .iter()
                .filter(|d| !self.serves(address::bare(d)) && self.component_of(d).is_none())
                .map(|d| d.to_string()),
        );
        for t in targets {
            self.send_to_peer(&t, Kind::Presence, full, payload.clone());
        }
    }

    /// A session frame for a user this core does not serve (its CM's map
    /// is behind): refused so the client goes elsewhere. True if refused.
    pub(super) fn refuse_unserved(&mut self, node: NodeId, frame: &Frame) -> bool {
        if self.shard.is_none() {
            return false;
        }
        match frame {
            Frame::Bind {
                sid, user, iq_id, ..
            } if !self.serves(user) => {
                self.send(
                    node,
                    Frame::BindResult {
                        sid: *sid,
                        iq_id: iq_id.clone(),
                        result: Err("service-unavailable".into()),
                    },
                );
                true
            }
            Frame::Announce {
                sm: Some(sm), jid, ..
            } if sm.detached && !self.serves(address::bare(jid)) => {
                // a CM's word about a session whose client is away: not
                // ours (the CM's map is behind); its owner hears of it
                true
            }
            Frame::Announce { sid, jid, .. } if !self.serves(address::bare(jid)) => {
                self.kick(
                    (node, *sid),
                    xmpp_stream::StreamCondition::ConnectionTimeout,
                );
                true
            }
            Frame::Resume { sid, user, .. } if !self.serves(user) => {
                self.send(
                    node,
                    Frame::Resumed {
                        sid: *sid,
                        result: Err("item-not-found".into()),
                    },
                );
                true
            }
            _ => false,
        }
    }
}

/// The routing header of a message stanza `payload` for `bare`, as a
/// forward carries it (none if `payload` is not a message).
pub(super) fn message_header(bare: &str, payload: &[u8]) -> Option<RouteHeader> {
    let top = xmpp_stream::stanza::inspect(payload).ok()?;
    if top.stanza_kind() != Some(StanzaKind::Message) {
        return None;
    }
    Some(RouteHeader {
        kind: cm_protocol::Kind::Message,
        stanza_type: Some(top.attr("type").unwrap_or("normal").to_owned()),
        to: Some(bare.to_owned()),
        id: top.attr("id").map(str::to_owned),
        from: top.attr("from").unwrap_or_default().to_owned(),
    })
}

/// The routing header of a stanza for another core's user.
fn peer_header(stanza: &PeerStanza) -> RouteHeader {
    RouteHeader {
        kind: stanza.kind,
        stanza_type: xmpp_stream::stanza::inspect(&stanza.payload)
            .ok()
            .and_then(|top| top.attr("type").map(str::to_owned)),
        to: Some(stanza.to.clone()),
        id: None,
        from: stanza.from.clone(),
    }
}
