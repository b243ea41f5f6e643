//! The frames and the values they carry.

use std::net::IpAddr;

use bytes::Bytes;

use crate::tag::FrameTag;

/// A client session's id, unique within its CM node.
pub type SessionId = u64;

/// Stanza kinds as carried in a [`RouteHeader`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// `<message/>`
    Message = 0,
    /// `<presence/>`
    Presence = 1,
    /// `<iq/>`
    Iq = 2,
}

impl Kind {
    /// The kind sent as `octet`, if any.
    pub(crate) fn from_octet(octet: u8) -> Option<Kind> {
        match octet {
            0 => Some(Kind::Message),
            1 => Some(Kind::Presence),
            2 => Some(Kind::Iq),
            _ => None,
        }
    }
}

/// The compact routing header the CM puts in front of every stanza so the
/// core routes without parsing XML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteHeader {
    /// Stanza kind.
    pub kind: Kind,
    /// `type` attribute.
    pub stanza_type: Option<String>,
    /// `to` attribute as the client wrote it.
    pub to: Option<String>,
    /// `id` attribute.
    pub id: Option<String>,
    /// The sender's full JID, as stamped by the CM.
    pub from: String,
}

/// A session's stream-management counters, carried by [`Frame::Announce`]
/// so a restarted core can take over tracking (XEP-0198).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmSnapshot {
    /// The SM id the client holds (empty when the session is not resumable).
    pub id: String,
    /// Stanzas handled from the client so far (its outbound count).
    pub handled: u32,
    /// Stanzas written to the client so far.
    pub sent: u32,
    /// The client's last `<a h/>`.
    pub client_acked: u32,
    /// Number the CM gives the next Deliver (its count since SmEnabled or Resumed).
    pub next_seq: u32,
    /// Resumption time granted, in seconds.
    pub max: u32,
    /// The client's stream is gone: the session waits for its client to
    /// resume (a CM telling a slot's new owner of a session that closed
    /// resumably at the old one).
    pub detached: bool,
}

/// What a successful resumption hands the CM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resumption {
    /// The session's full JID.
    pub jid: String,
    /// Stanzas the server handled from the client (`h` of `<resumed/>`).
    pub h: u32,
    /// Whether the session had sent available presence.
    pub available: bool,
    /// Its presence priority.
    pub priority: i8,
    /// Resumption time granted, in seconds.
    pub max: u32,
}

/// What a Bind2 request (XEP-0386, inside a SASL2 `<authenticate/>`) asks
/// of a [`Frame::Bind`] beyond the legacy bind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bind2 {
    /// The client's tag: the core makes the resource `tag/random` (None:
    /// a random resource).
    pub tag: Option<String>,
    /// Turn message carbons (XEP-0280) on with the binding, before any
    /// stanza can reach the session.
    pub carbons: bool,
    /// Enable stream management (XEP-0198) right after binding: the core
    /// answers `SmEnabled` right behind the `BindResult`, so no delivery
    /// comes between them.
    pub sm: Option<SmRequest>,
}

/// What an authentication attempt carries for FAST (XEP-0484) beyond the
/// SASL exchange: the user agent its tokens are keyed by, a token asked
/// for, a token use's count and invalidation, and what the CM that
/// terminates TLS knows of the connection.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct FastAuth {
    /// The `<user-agent id/>` (FAST tokens are per user agent); None: absent.
    pub user_agent: Option<String>,
    /// `<request-token mechanism/>`: issue a token bound to this HT mechanism.
    pub request_token: Option<String>,
    /// `<fast count/>` of a token use.
    pub count: Option<u64>,
    /// `<fast invalidate='true'/>`: end the token after this use.
    pub invalidate: bool,
    /// The connection's `tls-exporter` channel binding (RFC 9266), if known.
    pub tls_exporter: Option<Bytes>,
    /// The authentication arrived as TLS early data (0-RTT): it may be a
    /// replay, so a token use must carry a count above the last.
    pub early: bool,
}

impl std::fmt::Debug for FastAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // the exporter value is key material of the connection
        f.debug_struct("FastAuth")
            .field("user_agent", &self.user_agent)
            .field("request_token", &self.request_token)
            .field("count", &self.count)
            .field("invalidate", &self.invalidate)
            .field("tls_exporter", &self.tls_exporter.as_ref().map(|_| ".."))
            .field("early", &self.early)
            .finish()
    }
}

/// A FAST token issued to a client (XEP-0484 `<token/>`).
#[derive(Clone, PartialEq, Eq)]
pub struct FastTokenGrant {
    /// The token.
    pub token: String,
    /// When it expires, in seconds since the Unix epoch.
    pub expiry: u64,
}

impl std::fmt::Debug for FastTokenGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // a token is a credential: not for logs
        f.debug_struct("FastTokenGrant")
            .field("expiry", &self.expiry)
            .finish_non_exhaustive()
    }
}

/// A request to enable stream management, as in `<enable resume max/>`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SmRequest {
    /// Resumable.
    pub resume: bool,
    /// The resumption time asked for, seconds (0: the server's default).
    pub max: u32,
}

/// One protocol frame. "CM→core" and "core→CM" give the direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// CM→core, first frame of every pooled connection.
    Hello {
        /// Node name (must match the node's certificate).
        node: String,
        /// Address clients use to reach this CM.
        client_addr: String,
        /// This connection's index in the pool.
        conn_index: u16,
        /// Connections in the pool: session `sid` uses index `sid % pool_size`
        /// both ways, so a session's frames keep one connection and one order.
        pool_size: u16,
        /// Random id of this CM process: a new one means the CM restarted
        /// and its old sessions are gone.
        instance: u64,
    },
    /// Core→CM, answer to Hello.
    Welcome {
        /// XMPP domain served.
        domain: String,
        /// Random id of this core process instance (changes on restart).
        instance: u64,
        /// SASL mechanisms to offer, in order.
        mechanisms: Vec<String>,
        /// Offer in-band registration (XEP-0077) before authentication.
        registration: bool,
        /// The `ver` of the server's entity capabilities (XEP-0115) to
        /// show in stream features; empty: none.
        caps: String,
        /// Offer SASL2 (XEP-0388) with Bind2 and inline stream management
        /// beside SASL (new in `longlink-cm/7`).
        sasl2: bool,
        /// Offer FAST tokens (XEP-0484) inside SASL2; the CM offers the HT
        /// mechanisms each connection can bind to (new in `longlink-cm/8`).
        fast: bool,
    },
    /// CM→core: a client asks to create an account (XEP-0077, before
    /// authentication).
    Register {
        /// Session.
        sid: SessionId,
        /// The user name asked for (not yet normalized).
        username: String,
        /// The password.
        password: String,
    },
    /// Core→CM: the account was created (`None`) or not (a stanza error
    /// condition: conflict, not-acceptable, not-allowed, resource-constraint).
    RegisterResult {
        /// Session.
        sid: SessionId,
        /// Why not.
        error: Option<String>,
    },
    /// CM→core: a client chose a SASL mechanism (initial response may be empty).
    AuthStart {
        /// Session.
        sid: SessionId,
        /// Mechanism name.
        mechanism: String,
        /// Initial response (raw, base64-decoded).
        data: Bytes,
        /// The client's IP address as the CM saw it (the core throttles
        /// failed attempts per address); `None` if unknown.
        client_ip: Option<IpAddr>,
        /// What a SASL2 `<authenticate/>` said about FAST tokens, and the
        /// connection's channel binding (new in `longlink-cm/8`; default
        /// for SASL). Boxed: most frames are stanzas, and this would
        /// double the size of every queued frame.
        fast: Box<FastAuth>,
    },
    /// CM→core: a SASL response.
    AuthResponse {
        /// Session.
        sid: SessionId,
        /// Response (raw).
        data: Bytes,
    },
    /// Core→CM: a SASL challenge.
    AuthChallenge {
        /// Session.
        sid: SessionId,
        /// Challenge (raw).
        data: Bytes,
    },
    /// Core→CM: authentication succeeded.
    AuthSuccess {
        /// Session.
        sid: SessionId,
        /// Additional data with success (raw).
        data: Bytes,
        /// The authenticated bare JID.
        user: String,
        /// A FAST token issued with this success (asked for, or a
        /// rotation), for the SASL2 `<success/>` (new in `longlink-cm/8`).
        token: Option<FastTokenGrant>,
    },
    /// Core→CM: authentication failed.
    AuthFailure {
        /// Session.
        sid: SessionId,
        /// RFC 6120 §6.5 condition.
        condition: String,
    },
    /// CM→core: bind a resource (None: let the server choose).
    Bind {
        /// Session.
        sid: SessionId,
        /// The bare JID the core authenticated this session as (from AuthSuccess).
        user: String,
        /// IQ id to answer.
        iq_id: String,
        /// Requested resource (ignored with `bind2`).
        resource: Option<String>,
        /// A Bind2 binding (new in `longlink-cm/7`); None: the legacy bind IQ.
        bind2: Option<Bind2>,
    },
    /// Core→CM: the bind result.
    BindResult {
        /// Session.
        sid: SessionId,
        /// IQ id to answer.
        iq_id: String,
        /// Full JID bound, or the stanza error condition.
        result: Result<String, String>,
    },
    /// CM→core: a bound session, sent again after a (re)connection so a
    /// restarted core rebuilds its routing table.
    Announce {
        /// Session.
        sid: SessionId,
        /// Full JID.
        jid: String,
        /// Whether the session sent available presence.
        available: bool,
        /// Presence priority.
        priority: i8,
        /// Stream-management counters, when enabled.
        sm: Option<SmSnapshot>,
    },
    /// CM→core: a stanza from a bound session, `from` already stamped.
    Stanza {
        /// Session.
        sid: SessionId,
        /// Routing header.
        header: RouteHeader,
        /// The stanza bytes.
        payload: Bytes,
    },
    /// Core→CM: write this stanza to a session.
    Deliver {
        /// Session.
        sid: SessionId,
        /// The stanza bytes.
        payload: Bytes,
    },
    /// Core→CM: write one stanza to many sessions of the CM (a group chat
    /// fan-out: one frame per pooled connection instead of one per
    /// recipient). The CM writes `payload` to each session of `sids`, in
    /// that order, each copy with a `to` attribute set to that session's
    /// bound full JID (the payload carries no `to`). Each copy counts as one
    /// [`Frame::Deliver`] for its session (stream management numbers it like
    /// one); a copy for a session that is gone or not bound is dropped, not
    /// bounced. All `sids` ride the connection the frame is sent on
    /// (`sid % pool_size` is that connection's index for each), so each
    /// session's frames keep their order; [`Frame::sid`] is the first.
    /// The decoder refuses an empty list and one longer than
    /// [`MAX_FANOUT_SIDS`](crate::MAX_FANOUT_SIDS).
    DeliverMany {
        /// The sessions, in the order their copies are written.
        sids: Vec<SessionId>,
        /// The stanza bytes, without a `to` on the top element.
        payload: Bytes,
    },
    /// CM→core: a stanza for a session that is gone, to be routed again
    /// (to another resource or offline storage).
    Bounce {
        /// The session that could not take it.
        sid: SessionId,
        /// Full JID the stanza was delivered to.
        to: String,
        /// The stanza bytes.
        payload: Bytes,
    },
    /// CM→core: a session ended (after SASL or after bind).
    SessionEnd {
        /// Session.
        sid: SessionId,
        /// Its full JID if it was bound.
        jid: Option<String>,
        /// The client closed its stream itself (`</stream:stream>`): a
        /// stream-managed session ends instead of waiting for resumption.
        clean: bool,
    },
    /// Core→CM: end this session with a stream error.
    Kick {
        /// Session.
        sid: SessionId,
        /// Stream error condition.
        condition: String,
    },
    /// CM→core: the client enabled stream management. From here on the core
    /// numbers every Deliver for the session (from 0) and keeps it until the
    /// client acknowledges it.
    SmEnable {
        /// Session.
        sid: SessionId,
        /// The client asked for resumption.
        resume: bool,
        /// Resumption time the client asked for (0: server default).
        max: u32,
    },
    /// Core→CM: stream management is on; Deliver frames after this one are
    /// numbered from 0.
    SmEnabled {
        /// Session.
        sid: SessionId,
        /// SM id to give the client (empty: not resumable).
        id: String,
        /// Resumption time granted, in seconds.
        max: u32,
    },
    /// CM→core: the client asked for an acknowledgement (`<r/>`).
    AckRequest {
        /// Session.
        sid: SessionId,
    },
    /// Core→CM: stanzas from the client the core has handled (routed, or
    /// stored durably), for `<a h/>`.
    Handled {
        /// Session.
        sid: SessionId,
        /// XEP-0198 `h`.
        h: u32,
    },
    /// CM→core: the client acknowledged `h` stanzas (`<a h/>`).
    Acked {
        /// Session.
        sid: SessionId,
        /// XEP-0198 `h`.
        h: u32,
    },
    /// CM→core: Deliver frames (by number since SmEnabled/Resumed) the CM
    /// dropped without writing them (client state indication replaced an
    /// older presence); the client will not count them.
    Skipped {
        /// Session.
        sid: SessionId,
        /// Their numbers.
        seqs: Vec<u32>,
    },
    /// CM→core: an authenticated client asks to resume a session.
    Resume {
        /// The new session.
        sid: SessionId,
        /// The bare JID the core authenticated it as.
        user: String,
        /// `previd`.
        previd: String,
        /// The client's `h`.
        h: u32,
    },
    /// Core→CM: the answer to Resume. On success the unacknowledged stanzas
    /// follow as Deliver frames, numbered from 0.
    Resumed {
        /// Session.
        sid: SessionId,
        /// The resumed session, or the `<failed/>` condition.
        result: Result<Resumption, String>,
    },
    /// Core→CM and core→core: every slot the sending core owns now, with
    /// its epoch (this replaces what the core said before), and the live
    /// cores it knows. Sent after `Welcome` (or `Hello` between cores) and
    /// whenever either changes.
    SlotOwners {
        /// The sending core's member id (`core#incarnation`).
        core: String,
        /// The cluster's number of slots.
        slot_count: u16,
        /// Numbers the sender's word, rising: a receiver ignores one below
        /// the last it took from the same core (it may arrive on another
        /// connection after a newer one); the same word may come again.
        version: u64,
        /// The slots it owns, ascending.
        owned: Vec<SlotEpoch>,
        /// The live cores (the sender included) and where each is reached.
        cores: Vec<CoreAddress>,
    },
    /// Core→core: a stanza for a user of a slot the receiving core owns.
    /// The sending core did the sender's side (its archive, carbons and
    /// acknowledgement wait); the receiver does the recipient's.
    Forward {
        /// Numbers the forward for its answer (per connection).
        seq: u64,
        /// The stanza's routing header (`from` is the sender's full JID).
        header: RouteHeader,
        /// The stanza.
        payload: Bytes,
    },
    /// Core→core: the answer to `Forward`.
    ForwardDone {
        /// The forward's `seq`.
        seq: u64,
        /// Routed, and what it needed stored is committed (or its sender
        /// was answered with an error). False: the receiver does not own
        /// the recipient's slot; send it again to the owner.
        accepted: bool,
    },
}

/// A slot and the epoch its owner holds it at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotEpoch {
    /// The slot.
    pub slot: u16,
    /// Its epoch (raised by every claim).
    pub epoch: u64,
}

/// A live core and where it is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreAddress {
    /// Its member id (`core#incarnation`).
    pub core: String,
    /// The `host:port` CMs and cores connect to.
    pub address: String,
}

impl Frame {
    /// The type octet this frame is sent with.
    pub fn tag(&self) -> FrameTag {
        match self {
            Frame::Hello { .. } => FrameTag::Hello,
            Frame::Welcome { .. } => FrameTag::Welcome,
            Frame::Register { .. } => FrameTag::Register,
            Frame::RegisterResult { .. } => FrameTag::RegisterResult,
            Frame::AuthStart { .. } => FrameTag::AuthStart,
            Frame::AuthResponse { .. } => FrameTag::AuthResponse,
            Frame::AuthChallenge { .. } => FrameTag::AuthChallenge,
            Frame::AuthSuccess { .. } => FrameTag::AuthSuccess,
            Frame::AuthFailure { .. } => FrameTag::AuthFailure,
            Frame::Bind { .. } => FrameTag::Bind,
            Frame::BindResult { .. } => FrameTag::BindResult,
            Frame::Announce { .. } => FrameTag::Announce,
            Frame::Stanza { .. } => FrameTag::Stanza,
            Frame::Deliver { .. } => FrameTag::Deliver,
            Frame::DeliverMany { .. } => FrameTag::DeliverMany,
            Frame::Bounce { .. } => FrameTag::Bounce,
            Frame::SessionEnd { .. } => FrameTag::SessionEnd,
            Frame::Kick { .. } => FrameTag::Kick,
            Frame::SmEnable { .. } => FrameTag::SmEnable,
            Frame::SmEnabled { .. } => FrameTag::SmEnabled,
            Frame::AckRequest { .. } => FrameTag::AckRequest,
            Frame::Handled { .. } => FrameTag::Handled,
            Frame::Acked { .. } => FrameTag::Acked,
            Frame::Skipped { .. } => FrameTag::Skipped,
            Frame::Resume { .. } => FrameTag::Resume,
            Frame::Resumed { .. } => FrameTag::Resumed,
            Frame::SlotOwners { .. } => FrameTag::SlotOwners,
            Frame::Forward { .. } => FrameTag::Forward,
            Frame::ForwardDone { .. } => FrameTag::ForwardDone,
        }
    }

    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        self.tag().name()
    }

    /// Bytes a queued frame holds: its fixed size plus its variable-length
    /// fields. What queues of frames count against their byte budgets.
    pub fn queued_bytes(&self) -> usize {
        let variable = match self {
            Frame::Hello {
                node, client_addr, ..
            } => node.len() + client_addr.len(),
            Frame::Welcome {
                domain,
                mechanisms,
                caps,
                ..
            } => domain.len() + caps.len() + mechanisms.iter().map(|m| 24 + m.len()).sum::<usize>(),
            Frame::Register {
                username, password, ..
            } => username.len() + password.len(),
            Frame::RegisterResult { error, .. } => error.as_ref().map_or(0, String::len),
            Frame::AuthStart {
                mechanism,
                data,
                fast,
                ..
            } => {
                mechanism.len()
                    + data.len()
                    + fast.user_agent.as_ref().map_or(0, String::len)
                    + fast.request_token.as_ref().map_or(0, String::len)
                    + fast.tls_exporter.as_ref().map_or(0, Bytes::len)
            }
            Frame::AuthResponse { data, .. } | Frame::AuthChallenge { data, .. } => data.len(),
            Frame::AuthSuccess {
                data, user, token, ..
            } => data.len() + user.len() + token.as_ref().map_or(0, |t| t.token.len()),
            Frame::AuthFailure { condition, .. } | Frame::Kick { condition, .. } => condition.len(),
            Frame::Bind {
                user,
                iq_id,
                resource,
                bind2,
                ..
            } => {
                user.len()
                    + iq_id.len()
                    + resource.as_ref().map_or(0, String::len)
                    + bind2
                        .as_ref()
                        .and_then(|b| b.tag.as_ref())
                        .map_or(0, String::len)
            }
            Frame::BindResult { iq_id, result, .. } => {
                iq_id.len() + result.as_ref().map_or_else(String::len, String::len)
            }
            Frame::Announce { jid, sm, .. } => jid.len() + sm.as_ref().map_or(0, |sm| sm.id.len()),
            Frame::Stanza {
                header, payload, ..
            }
            | Frame::Forward {
                header, payload, ..
            } => {
                let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
                payload.len()
                    + header.from.len()
                    + opt(&header.stanza_type)
                    + opt(&header.to)
                    + opt(&header.id)
            }
            Frame::Deliver { payload, .. } => payload.len(),
            Frame::DeliverMany { sids, payload } => {
                payload.len() + sids.len() * std::mem::size_of::<SessionId>()
            }
            Frame::Bounce { to, payload, .. } => to.len() + payload.len(),
            Frame::SessionEnd { jid, .. } => jid.as_ref().map_or(0, String::len),
            Frame::SmEnabled { id, .. } => id.len(),
            Frame::Skipped { seqs, .. } => seqs.len() * std::mem::size_of::<u32>(),
            Frame::Resume { user, previd, .. } => user.len() + previd.len(),
            Frame::Resumed { result, .. } => match result {
                Ok(r) => r.jid.len(),
                Err(condition) => condition.len(),
            },
            Frame::SlotOwners {
                core, owned, cores, ..
            } => {
                core.len()
                    + owned.len() * std::mem::size_of::<SlotEpoch>()
                    + cores
                        .iter()
                        .map(|c| {
                            std::mem::size_of::<CoreAddress>() + c.core.len() + c.address.len()
                        })
                        .sum::<usize>()
            }
            Frame::SmEnable { .. }
            | Frame::AckRequest { .. }
            | Frame::Handled { .. }
            | Frame::Acked { .. }
            | Frame::ForwardDone { .. } => 0,
        };
        std::mem::size_of::<Frame>() + variable
    }

    /// The session a frame belongs to (None for connection-level frames).
    /// For a [`Frame::DeliverMany`], its first session: the one whose pooled
    /// connection (`sid % pool_size`) carries the frame, and every other
    /// session it lists.
    pub fn sid(&self) -> Option<SessionId> {
        match self {
            Frame::DeliverMany { sids, .. } => sids.first().copied(),
            Frame::Hello { .. }
            | Frame::Welcome { .. }
            | Frame::SlotOwners { .. }
            | Frame::Forward { .. }
            | Frame::ForwardDone { .. } => None,
            Frame::AuthStart { sid, .. }
            | Frame::AuthResponse { sid, .. }
            | Frame::AuthChallenge { sid, .. }
            | Frame::AuthSuccess { sid, .. }
            | Frame::AuthFailure { sid, .. }
            | Frame::Bind { sid, .. }
            | Frame::BindResult { sid, .. }
            | Frame::Announce { sid, .. }
            | Frame::Stanza { sid, .. }
            | Frame::Deliver { sid, .. }
            | Frame::Bounce { sid, .. }
            | Frame::SessionEnd { sid, .. }
            | Frame::Kick { sid, .. }
            | Frame::SmEnable { sid, .. }
            | Frame::SmEnabled { sid, .. }
            | Frame::AckRequest { sid }
            | Frame::Handled { sid, .. }
            | Frame::Acked { sid, .. }
            | Frame::Skipped { sid, .. }
            | Frame::Resume { sid, .. }
            | Frame::Resumed { sid, .. }
            | Frame::Register { sid, .. }
            | Frame::RegisterResult { sid, .. } => Some(*sid),
        }
    }
}
