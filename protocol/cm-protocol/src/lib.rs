//! The CM↔core wire protocol.
//!
//! A CM keeps a small pool of QUIC connections to the core (mutual TLS, ALPN
//! [`ALPN`]). On each connection the CM opens one bidirectional stream and
//! both sides exchange length-prefixed binary [`Frame`]s on it. The first
//! frame is the CM's [`Frame::Hello`]; the core answers [`Frame::Welcome`].
//! Frames of one client session always travel on one connection, so a
//! session's order is kept; sessions are spread over the pool.
//!
//! Encoding: `u32` big-endian length of the rest, one type octet, then the
//! fields in order. Integers are LEB128 varints (`i8` as one octet), strings
//! and byte strings are a varint length then the bytes, optional values are a
//! `0`/`1` octet then the value. [`FrameDecoder`] is sans-IO: push bytes,
//! pull frames.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// ALPN of the CM↔core protocol; the version is part of it.
pub const ALPN: &[u8] = b"longlink-cm/1";

/// Largest frame accepted (a stanza plus headers).
pub const MAX_FRAME: usize = 1024 * 1024;

/// A client session's id, unique within its CM node.
pub type SessionId = u64;

/// Stanza kinds as carried in a [`RouteHeader`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `<message/>`
    Message = 0,
    /// `<presence/>`
    Presence = 1,
    /// `<iq/>`
    Iq = 2,
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
        /// Requested resource.
        resource: Option<String>,
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
}

impl Frame {
    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "hello",
            Frame::Welcome { .. } => "welcome",
            Frame::AuthStart { .. } => "auth-start",
            Frame::AuthResponse { .. } => "auth-response",
            Frame::AuthChallenge { .. } => "auth-challenge",
            Frame::AuthSuccess { .. } => "auth-success",
            Frame::AuthFailure { .. } => "auth-failure",
            Frame::Bind { .. } => "bind",
            Frame::BindResult { .. } => "bind-result",
            Frame::Announce { .. } => "announce",
            Frame::Stanza { .. } => "stanza",
            Frame::Deliver { .. } => "deliver",
            Frame::Bounce { .. } => "bounce",
            Frame::SessionEnd { .. } => "session-end",
            Frame::Kick { .. } => "kick",
            Frame::SmEnable { .. } => "sm-enable",
            Frame::SmEnabled { .. } => "sm-enabled",
            Frame::AckRequest { .. } => "ack-request",
            Frame::Handled { .. } => "handled",
            Frame::Acked { .. } => "acked",
            Frame::Skipped { .. } => "skipped",
            Frame::Resume { .. } => "resume",
            Frame::Resumed { .. } => "resumed",
            Frame::Register { .. } => "register",
            Frame::RegisterResult { .. } => "register-result",
        }
    }

    /// The session a frame belongs to (None for connection-level frames).
    pub fn sid(&self) -> Option<SessionId> {
        match self {
            Frame::Hello { .. } | Frame::Welcome { .. } => None,
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

    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_u32(0);
        let mut w = Writer(out);
        match self {
            Frame::Hello {
                node,
                client_addr,
                conn_index,
                pool_size,
                instance,
            } => {
                w.tag(0);
                w.str(node);
                w.str(client_addr);
                w.uint(u64::from(*conn_index));
                w.uint(u64::from(*pool_size));
                w.uint(*instance);
            }
            Frame::Welcome {
                domain,
                instance,
                mechanisms,
                registration,
            } => {
                w.tag(1);
                w.str(domain);
                w.uint(*instance);
                w.uint(mechanisms.len() as u64);
                for m in mechanisms {
                    w.str(m);
                }
                w.tag(u8::from(*registration));
            }
            Frame::Register {
                sid,
                username,
                password,
            } => {
                w.tag(23);
                w.uint(*sid);
                w.str(username);
                w.str(password);
            }
            Frame::RegisterResult { sid, error } => {
                w.tag(24);
                w.uint(*sid);
                match error {
                    None => w.tag(0),
                    Some(e) => {
                        w.tag(1);
                        w.str(e);
                    }
                }
            }
            Frame::AuthStart {
                sid,
                mechanism,
                data,
            } => {
                w.tag(2);
                w.uint(*sid);
                w.str(mechanism);
                w.bytes(data);
            }
            Frame::AuthResponse { sid, data } => {
                w.tag(3);
                w.uint(*sid);
                w.bytes(data);
            }
            Frame::AuthChallenge { sid, data } => {
                w.tag(4);
                w.uint(*sid);
                w.bytes(data);
            }
            Frame::AuthSuccess { sid, data, user } => {
                w.tag(5);
                w.uint(*sid);
                w.bytes(data);
                w.str(user);
            }
            Frame::AuthFailure { sid, condition } => {
                w.tag(6);
                w.uint(*sid);
                w.str(condition);
            }
            Frame::Bind {
                sid,
                user,
                iq_id,
                resource,
            } => {
                w.tag(7);
                w.uint(*sid);
                w.str(user);
                w.str(iq_id);
                w.opt(resource.as_deref());
            }
            Frame::BindResult { sid, iq_id, result } => {
                w.tag(8);
                w.uint(*sid);
                w.str(iq_id);
                match result {
                    Ok(jid) => {
                        w.tag(0);
                        w.str(jid);
                    }
                    Err(cond) => {
                        w.tag(1);
                        w.str(cond);
                    }
                }
            }
            Frame::Announce {
                sid,
                jid,
                available,
                priority,
                sm,
            } => {
                w.tag(9);
                w.uint(*sid);
                w.str(jid);
                w.tag(u8::from(*available));
                w.tag(*priority as u8);
                match sm {
                    None => w.tag(0),
                    Some(sm) => {
                        w.tag(1);
                        w.str(&sm.id);
                        w.uint(u64::from(sm.handled));
                        w.uint(u64::from(sm.sent));
                        w.uint(u64::from(sm.client_acked));
                        w.uint(u64::from(sm.next_seq));
                        w.uint(u64::from(sm.max));
                    }
                }
            }
            Frame::Stanza {
                sid,
                header,
                payload,
            } => {
                w.tag(10);
                w.uint(*sid);
                w.tag(header.kind as u8);
                w.opt(header.stanza_type.as_deref());
                w.opt(header.to.as_deref());
                w.opt(header.id.as_deref());
                w.str(&header.from);
                w.bytes(payload);
            }
            Frame::Deliver { sid, payload } => {
                w.tag(11);
                w.uint(*sid);
                w.bytes(payload);
            }
            Frame::Bounce { sid, to, payload } => {
                w.tag(12);
                w.uint(*sid);
                w.str(to);
                w.bytes(payload);
            }
            Frame::SessionEnd { sid, jid, clean } => {
                w.tag(13);
                w.uint(*sid);
                w.opt(jid.as_deref());
                w.tag(u8::from(*clean));
            }
            Frame::Kick { sid, condition } => {
                w.tag(14);
                w.uint(*sid);
                w.str(condition);
            }
            Frame::SmEnable { sid, resume, max } => {
                w.tag(15);
                w.uint(*sid);
                w.tag(u8::from(*resume));
                w.uint(u64::from(*max));
            }
            Frame::SmEnabled { sid, id, max } => {
                w.tag(16);
                w.uint(*sid);
                w.str(id);
                w.uint(u64::from(*max));
            }
            Frame::AckRequest { sid } => {
                w.tag(17);
                w.uint(*sid);
            }
            Frame::Handled { sid, h } => {
                w.tag(18);
                w.uint(*sid);
                w.uint(u64::from(*h));
            }
            Frame::Acked { sid, h } => {
                w.tag(19);
                w.uint(*sid);
                w.uint(u64::from(*h));
            }
            Frame::Skipped { sid, seqs } => {
                w.tag(20);
                w.uint(*sid);
                w.uint(seqs.len() as u64);
                for s in seqs {
                    w.uint(u64::from(*s));
                }
            }
            Frame::Resume {
                sid,
                user,
                previd,
                h,
            } => {
                w.tag(21);
                w.uint(*sid);
                w.str(user);
                w.str(previd);
                w.uint(u64::from(*h));
            }
            Frame::Resumed { sid, result } => {
                w.tag(22);
                w.uint(*sid);
                match result {
                    Ok(r) => {
                        w.tag(0);
                        w.str(&r.jid);
                        w.uint(u64::from(r.h));
                        w.tag(u8::from(r.available));
                        w.tag(r.priority as u8);
                        w.uint(u64::from(r.max));
                    }
                    Err(cond) => {
                        w.tag(1);
                        w.str(cond);
                    }
                }
            }
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// Decodes one frame body (without the length prefix).
    pub fn decode(mut body: Bytes) -> Result<Frame, DecodeError> {
        let r = &mut body;
        let tag = get_u8(r)?;
        let frame = match tag {
            0 => Frame::Hello {
                node: get_str(r)?,
                client_addr: get_str(r)?,
                conn_index: u16::try_from(get_uint(r)?).map_err(|_| DecodeError::Invalid)?,
                pool_size: u16::try_from(get_uint(r)?).map_err(|_| DecodeError::Invalid)?,
                instance: get_uint(r)?,
            },
            1 => {
                let domain = get_str(r)?;
                let instance = get_uint(r)?;
                let n = get_uint(r)?;
                if n > 16 {
                    return Err(DecodeError::Invalid);
                }
                let mechanisms = (0..n).map(|_| get_str(r)).collect::<Result<_, _>>()?;
                Frame::Welcome {
                    domain,
                    instance,
                    mechanisms,
                    registration: get_u8(r)? != 0,
                }
            }
            2 => Frame::AuthStart {
                sid: get_uint(r)?,
                mechanism: get_str(r)?,
                data: get_bytes(r)?,
            },
            3 => Frame::AuthResponse {
                sid: get_uint(r)?,
                data: get_bytes(r)?,
            },
            4 => Frame::AuthChallenge {
                sid: get_uint(r)?,
                data: get_bytes(r)?,
            },
            5 => Frame::AuthSuccess {
                sid: get_uint(r)?,
                data: get_bytes(r)?,
                user: get_str(r)?,
            },
            6 => Frame::AuthFailure {
                sid: get_uint(r)?,
                condition: get_str(r)?,
            },
            7 => Frame::Bind {
                sid: get_uint(r)?,
                user: get_str(r)?,
                iq_id: get_str(r)?,
                resource: get_opt(r)?,
            },
            8 => {
                let sid = get_uint(r)?;
                let iq_id = get_str(r)?;
                let result = match get_u8(r)? {
                    0 => Ok(get_str(r)?),
                    1 => Err(get_str(r)?),
                    _ => return Err(DecodeError::Invalid),
                };
                Frame::BindResult { sid, iq_id, result }
            }
            9 => Frame::Announce {
                sid: get_uint(r)?,
                jid: get_str(r)?,
                available: get_u8(r)? != 0,
                priority: get_u8(r)? as i8,
                sm: match get_u8(r)? {
                    0 => None,
                    1 => Some(SmSnapshot {
                        id: get_str(r)?,
                        handled: get_u32(r)?,
                        sent: get_u32(r)?,
                        client_acked: get_u32(r)?,
                        next_seq: get_u32(r)?,
                        max: get_u32(r)?,
                    }),
                    _ => return Err(DecodeError::Invalid),
                },
            },
            10 => {
                let sid = get_uint(r)?;
                let kind = match get_u8(r)? {
                    0 => Kind::Message,
                    1 => Kind::Presence,
                    2 => Kind::Iq,
                    _ => return Err(DecodeError::Invalid),
                };
                let header = RouteHeader {
                    kind,
                    stanza_type: get_opt(r)?,
                    to: get_opt(r)?,
                    id: get_opt(r)?,
                    from: get_str(r)?,
                };
                Frame::Stanza {
                    sid,
                    header,
                    payload: get_bytes(r)?,
                }
            }
            11 => Frame::Deliver {
                sid: get_uint(r)?,
                payload: get_bytes(r)?,
            },
            12 => Frame::Bounce {
                sid: get_uint(r)?,
                to: get_str(r)?,
                payload: get_bytes(r)?,
            },
            13 => Frame::SessionEnd {
                sid: get_uint(r)?,
                jid: get_opt(r)?,
                clean: get_u8(r)? != 0,
            },
            14 => Frame::Kick {
                sid: get_uint(r)?,
                condition: get_str(r)?,
            },
            15 => Frame::SmEnable {
                sid: get_uint(r)?,
                resume: get_u8(r)? != 0,
                max: get_u32(r)?,
            },
            16 => Frame::SmEnabled {
                sid: get_uint(r)?,
                id: get_str(r)?,
                max: get_u32(r)?,
            },
            17 => Frame::AckRequest { sid: get_uint(r)? },
            18 => Frame::Handled {
                sid: get_uint(r)?,
                h: get_u32(r)?,
            },
            19 => Frame::Acked {
                sid: get_uint(r)?,
                h: get_u32(r)?,
            },
            20 => {
                let sid = get_uint(r)?;
                let n = get_uint(r)?;
                if n > r.remaining() as u64 {
                    return Err(DecodeError::Truncated);
                }
                let seqs = (0..n).map(|_| get_u32(r)).collect::<Result<_, _>>()?;
                Frame::Skipped { sid, seqs }
            }
            21 => Frame::Resume {
                sid: get_uint(r)?,
                user: get_str(r)?,
                previd: get_str(r)?,
                h: get_u32(r)?,
            },
            22 => {
                let sid = get_uint(r)?;
                let result = match get_u8(r)? {
                    0 => Ok(Resumption {
                        jid: get_str(r)?,
                        h: get_u32(r)?,
                        available: get_u8(r)? != 0,
                        priority: get_u8(r)? as i8,
                        max: get_u32(r)?,
                    }),
                    1 => Err(get_str(r)?),
                    _ => return Err(DecodeError::Invalid),
                };
                Frame::Resumed { sid, result }
            }
            23 => Frame::Register {
                sid: get_uint(r)?,
                username: get_str(r)?,
                password: get_str(r)?,
            },
            24 => {
                let sid = get_uint(r)?;
                let error = match get_u8(r)? {
                    0 => None,
                    1 => Some(get_str(r)?),
                    _ => return Err(DecodeError::Invalid),
                };
                Frame::RegisterResult { sid, error }
            }
            other => return Err(DecodeError::UnknownType(other)),
        };
        if body.has_remaining() {
            return Err(DecodeError::Invalid);
        }
        Ok(frame)
    }

    /// Encodes into a fresh buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }
}

/// A frame that could not be decoded; the connection carrying it is closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fields ran past the end of the frame.
    #[error("truncated frame")]
    Truncated,
    /// A field had an impossible value.
    #[error("invalid frame")]
    Invalid,
    /// Unknown frame type.
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// Declared length above [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
}

/// Sans-IO frame decoder: push bytes as they arrive, pull whole frames.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > MAX_FRAME {
            return Err(DecodeError::TooLarge(len));
        }
        if self.buf.len() < 4 + len {
            self.buf.reserve(4 + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(4);
        let body = self.buf.split_to(len).freeze();
        Frame::decode(body).map(Some)
    }
}

/// Why reading a frame from a QUIC stream failed.
#[cfg(feature = "quinn")]
#[derive(Debug, thiserror::Error)]
pub enum ReadFrameError {
    /// The stream failed.
    #[error("read: {0}")]
    Read(#[from] quinn::ReadError),
    /// The bytes were not a valid frame.
    #[error("protocol: {0}")]
    Decode(#[from] DecodeError),
}

/// Reads the next frame from a QUIC stream (the thin driver around
/// [`FrameDecoder`] both ends use); `Ok(None)` when the stream ended.
#[cfg(feature = "quinn")]
pub async fn read_frame(
    recv: &mut quinn::RecvStream,
    decoder: &mut FrameDecoder,
) -> Result<Option<Frame>, ReadFrameError> {
    loop {
        if let Some(f) = decoder.next_frame()? {
            return Ok(Some(f));
        }
        match recv.read_chunk(64 * 1024, true).await? {
            Some(chunk) => decoder.push(&chunk.bytes),
            None => return Ok(None),
        }
    }
}

struct Writer<'a>(&'a mut BytesMut);

impl Writer<'_> {
    fn tag(&mut self, t: u8) {
        self.0.put_u8(t);
    }
    fn uint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.put_u8((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.put_u8(v as u8);
    }
    fn bytes(&mut self, b: &[u8]) {
        self.uint(b.len() as u64);
        self.0.put_slice(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn opt(&mut self, s: Option<&str>) {
        match s {
            Some(s) => {
                self.tag(1);
                self.str(s);
            }
            None => self.tag(0),
        }
    }
}

fn get_u8(r: &mut Bytes) -> Result<u8, DecodeError> {
    if r.has_remaining() {
        Ok(r.get_u8())
    } else {
        Err(DecodeError::Truncated)
    }
}

fn get_uint(r: &mut Bytes) -> Result<u64, DecodeError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = get_u8(r)?;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(DecodeError::Invalid)
}

fn get_u32(r: &mut Bytes) -> Result<u32, DecodeError> {
    u32::try_from(get_uint(r)?).map_err(|_| DecodeError::Invalid)
}

fn get_bytes(r: &mut Bytes) -> Result<Bytes, DecodeError> {
    let len = usize::try_from(get_uint(r)?).map_err(|_| DecodeError::Invalid)?;
    if r.remaining() < len {
        return Err(DecodeError::Truncated);
    }
    Ok(r.split_to(len))
}

fn get_str(r: &mut Bytes) -> Result<String, DecodeError> {
    String::from_utf8(get_bytes(r)?.to_vec()).map_err(|_| DecodeError::Invalid)
}

fn get_opt(r: &mut Bytes) -> Result<Option<String>, DecodeError> {
    match get_u8(r)? {
        0 => Ok(None),
        1 => get_str(r).map(Some),
        _ => Err(DecodeError::Invalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Frame> {
        vec![
            Frame::Hello {
                node: "cm-1".into(),
                client_addr: "127.0.0.1:5000".into(),
                conn_index: 3,
                pool_size: 4,
                instance: 42,
            },
            Frame::Welcome {
                domain: "example.org".into(),
                instance: u64::MAX,
                mechanisms: vec!["SCRAM-SHA-256".into(), "PLAIN".into()],
                registration: true,
            },
            Frame::Register {
                sid: 9,
                username: "Alice".into(),
                password: "pässword".into(),
            },
            Frame::RegisterResult {
                sid: 9,
                error: None,
            },
            Frame::RegisterResult {
                sid: 9,
                error: Some("conflict".into()),
            },
            Frame::AuthStart {
                sid: 1,
                mechanism: "PLAIN".into(),
                data: Bytes::from_static(b"\0a\0b"),
            },
            Frame::AuthResponse {
                sid: 300,
                data: Bytes::new(),
            },
            Frame::AuthChallenge {
                sid: 2,
                data: Bytes::from_static(b"r=x"),
            },
            Frame::AuthSuccess {
                sid: 2,
                data: Bytes::from_static(b"v=y"),
                user: "a@b".into(),
            },
            Frame::AuthFailure {
                sid: 2,
                condition: "not-authorized".into(),
            },
            Frame::Bind {
                sid: 9,
                user: "a@b".into(),
                iq_id: "b1".into(),
                resource: None,
            },
            Frame::BindResult {
                sid: 9,
                iq_id: "b1".into(),
                result: Ok("a@b/r".into()),
            },
            Frame::BindResult {
                sid: 9,
                iq_id: "b1".into(),
                result: Err("conflict".into()),
            },
            Frame::Announce {
                sid: 9,
                jid: "a@b/r".into(),
                available: true,
                priority: -5,
                sm: None,
            },
            Frame::Announce {
                sid: 10,
                jid: "a@b/s".into(),
                available: false,
                priority: 0,
                sm: Some(SmSnapshot {
                    id: "abc".into(),
                    handled: u32::MAX,
                    sent: 7,
                    client_acked: 5,
                    next_seq: 9,
                    max: 300,
                }),
            },
            Frame::SmEnable {
                sid: 1,
                resume: true,
                max: 0,
            },
            Frame::SmEnabled {
                sid: 1,
                id: "x".into(),
                max: 300,
            },
            Frame::AckRequest { sid: 1 },
            Frame::Handled { sid: 1, h: 5 },
            Frame::Acked {
                sid: 1,
                h: u32::MAX,
            },
            Frame::Skipped {
                sid: 1,
                seqs: vec![1, 2, 900],
            },
            Frame::Resume {
                sid: 2,
                user: "a@b".into(),
                previd: "x".into(),
                h: 3,
            },
            Frame::Resumed {
                sid: 2,
                result: Ok(Resumption {
                    jid: "a@b/r".into(),
                    h: 9,
                    available: true,
                    priority: 1,
                    max: 300,
                }),
            },
            Frame::Resumed {
                sid: 2,
                result: Err("item-not-found".into()),
            },
            Frame::Stanza {
                sid: 1 << 40,
                header: RouteHeader {
                    kind: Kind::Message,
                    stanza_type: Some("chat".into()),
                    to: Some("c@b".into()),
                    id: None,
                    from: "a@b/r".into(),
                },
                payload: Bytes::from_static(b"<message/>"),
            },
            Frame::Deliver {
                sid: 7,
                payload: Bytes::from_static(b"<message/>"),
            },
            Frame::Bounce {
                sid: 7,
                to: "a@b/r".into(),
                payload: Bytes::from_static(b"<message/>"),
            },
            Frame::SessionEnd {
                sid: 7,
                jid: Some("a@b/r".into()),
                clean: true,
            },
            Frame::Kick {
                sid: 7,
                condition: "conflict".into(),
            },
        ]
    }

    #[test]
    fn round_trips_every_frame_split_anywhere() {
        let mut wire = BytesMut::new();
        for f in samples() {
            f.encode(&mut wire);
        }
        for split in [1, 2, 3, 7, 64] {
            let mut dec = FrameDecoder::new();
            let mut got = Vec::new();
            for chunk in wire.chunks(split) {
                dec.push(chunk);
                while let Some(f) = dec.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, samples());
        }
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        let mut dec = FrameDecoder::new();
        dec.push(&[0, 0, 0, 2, 99, 1]);
        assert_eq!(dec.next_frame(), Err(DecodeError::UnknownType(99)));
        let mut dec = FrameDecoder::new();
        dec.push(&[0xff, 0, 0, 0]);
        assert!(matches!(dec.next_frame(), Err(DecodeError::TooLarge(_))));
        // every truncation of every frame is an error, never a panic
        for f in samples() {
            let bytes = f.to_bytes();
            for cut in 5..bytes.len() {
                assert!(Frame::decode(bytes.slice(4..cut)).is_err());
            }
        }
    }
}
