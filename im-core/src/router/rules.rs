//! Where a stanza from a client goes: the server rules of RFC 6120 §10 and
//! RFC 6121 §8.5 for messages, presence and IQs addressed to local users,
//! to the server, to an external component's domain (`components`), or to
//! other domains (which are not served).

use bytes::Bytes;
use cm_protocol::{Kind, RouteHeader, SessionId};
use jid::Jid;
use xmpp_stream::StanzaCondition;
use xmpp_stream::stanza::StanzaKind;

use super::live_rows::MessageRow;
use super::subscriptions::SubType;
use super::{Bounce, Router};
use crate::address;
use crate::routing::{NodeId, SessionAddr};

impl Router {
    /// A stanza from a client: checks its `to` and routes it by kind.
    pub(super) fn stanza(
        &mut self,
        node: NodeId,
        sid: SessionId,
        header: RouteHeader,
        payload: Bytes,
    ) {
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
        if let Some(to) = &to
            && self.blocked_outbound((node, sid), &header, &to.to_string(), &sender_bare)
        {
            return;
        }
        if let Some(to) = &to
            && let Some(name) = self.component_named(to.domain().as_str())
        {
            let name = name.to_owned();
            return self.stanza_for_component((node, sid), &header, to, &name, payload);
        }
        if let Some(to) = &to
            && self.is_muc(to)
        {
            return self.route_to_muc((node, sid), &header, to, payload);
        }
        match header.kind {
            Kind::Presence => self.presence(node, sid, &header, to, payload, &sender_bare),
            Kind::Message => self.message(node, sid, &header, to, payload, &sender_bare),
            Kind::Iq => self.iq(node, sid, &header, to, payload, &sender_bare),
        }
    }

    /// Whether `jid` is of the domain this router serves.
    pub(super) fn is_local(&self, jid: &Jid) -> bool {
        jid.domain().as_str() == self.domain
    }

    /// A presence from a client (RFC 6121 §3, §4): a subscription change,
    /// a broadcast, or presence directed to a local JID.
    pub(super) fn presence(
        &mut self,
        node: NodeId,
        sid: SessionId,
        header: &RouteHeader,
        to: Option<Jid>,
        payload: Bytes,
        sender_bare: &str,
    ) {
        let stype = header.stanza_type.as_deref();
        if let Some(kind) = stype.and_then(SubType::parse) {
            if let Some(to) = to {
                // forwarded (and answered) once its roster writes commit
                self.roster_change((node, sid), header, |r| {
                    r.subscription_stanza(sender_bare, &to, kind)
                });
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

    /// A message from a client (RFC 6121 §8.5): to the addressed session or
    /// the user's best ones, archived and carbon-copied if a conversation,
    /// stored offline if nobody can take it, refused if not deliverable.
    pub(super) fn message(
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
        if bare != sender_bare && self.serves(&bare) && self.blocked_inbound(&bare, header) {
            return;
        }
        // one live row for this message (see `live_rows`)
        self.live_ticket = MessageRow::Unset;
        let conversation = matches!(mtype, "chat" | "normal");
        let (payload, carbon) = match conversation {
            true => {
                let prepared = self.prepare_conversation(sender_bare, &bare, payload);
                (prepared.payload, prepared.carbon)
            }
            false => (payload, None),
        };
        let delivered = if !self.serves(&bare) {
            // another core's user: its owner does the recipient's side
            self.forward_stanza(&bare, header, payload.clone());
            Vec::new()
        } else if let Some(res) = to.resource()
            && let Some(r) = self.table.full(&bare, res.as_str())
        {
            let target = (r.node, r.sid);
            self.deliver_message(target, payload.clone(), mtype);
            vec![target]
        } else if mtype == "error" {
            // RFC 6121 §8.5.2, §8.5.3: errors only reach the exact session; otherwise ignored.
            return;
        } else {
            self.message_to_bare(&bare, mtype, payload.clone(), Some((node, sid, header)))
        };
        self.live_ticket = MessageRow::Unset;
        if let Some(inner) = carbon {
            self.carbon_copies(Some(((node, sid), sender_bare)), &bare, &delivered, &inner);
        }
    }

    /// RFC 6121 §8.5.2: a message to a bare JID (or an offline full JID).
    pub(super) fn message_to_bare(
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
            // one live row (and one push trigger) for this message,
            // however many sessions take it
            self.live_ticket = MessageRow::Unset;
            self.push_counted = false;
            for &t in &targets {
                self.deliver_message(t, payload.clone(), mtype);
            }
            self.live_ticket = MessageRow::Unset;
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
            // (no session takes it: once stored, the user's phone may be woken)
            self.store(user, payload, bounce);
        }
        Vec::new()
    }

    /// A stanza a CM could not deliver: its session is gone or cannot keep
    /// up, so it leaves the table first (no bounce loop back to it), then the
    /// stanza is routed again as if to the bare JID.
    pub(super) fn bounced(&mut self, node: NodeId, sid: SessionId, to: &str, payload: Bytes) {
        self.session_end(node, sid);
        let Ok(jid) = Jid::new(to) else { return };
        let Ok(top) = xmpp_stream::stanza::inspect(&payload) else {
            return;
        };
        if top.stanza_kind() != Some(StanzaKind::Message) {
            return;
        }
        let mtype = top.attr("type").unwrap_or("normal").to_owned();
        let bare = jid.to_bare().to_string();
        if self.shard.is_some()
            && !self.serves(&bare)
            && let Some(header) = super::peers::message_header(&bare, &payload)
        {
            // the recipient's slot moved on: its owner routes it
            return self.forward_stanza(&bare, &header, payload);
        }
        self.message_to_bare(&bare, &mtype, payload, None);
    }

    /// An IQ from a client: to the addressed full JID's session, or answered
    /// by the server (for itself or the account, RFC 6121 §8.5.3.1).
    pub(super) fn iq(
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
        if let (Some(j), Some(upload)) = (&to, &self.upload)
            && j.node().is_none()
            && j.domain().as_str() == upload.jid
        {
            if is_request {
                self.upload_iq((node, sid), header, &payload, sender_bare);
            }
            return;
        }
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
        if let Some(to) = &to
            && to.node().is_some()
        {
            let bare = to.to_bare().to_string();
            if bare != sender_bare && self.serves(&bare) && self.blocked_inbound(&bare, header) {
                return;
            }
        }
        // Addressed to a full JID of a user: deliver to that session.
        if let Some(to) = &to
            && let Some(res) = to.resource()
            && to.node().is_some()
        {
            let bare = to.to_bare().to_string();
            let target = self
                .table
                .full(&bare, res.as_str())
                .map(|r| (r.node, r.sid));
            match target {
                Some(target) => self.deliver(target, payload),
                None if self.send_to_peer(
                    &to.to_string(),
                    Kind::Iq,
                    &header.from,
                    payload.clone(),
                ) => {}
                None if is_request => {
                    self.reply_error(node, sid, header, StanzaCondition::ServiceUnavailable)
                }
                None => {}
            }
            return;
        }
        // Otherwise the server answers (for itself or on behalf of the account).
        if is_request {
            self.server_iq((node, sid), header, to.as_ref(), &payload, sender_bare);
        } else if to.as_ref().is_none_or(|j| j.node().is_none())
            && header
                .id
                .as_deref()
                .is_some_and(|id| id.starts_with(crate::caps::ASK_ID_PREFIX))
        {
            // an answer to the server's own question (XEP-0115)
            self.caps_answer((node, sid), header, &payload);
        }
    }
}
