//! Frames to bytes: the length prefix, the type octet, the fields in order.

use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::Frame;
use crate::primitive::Writer;

impl Frame {
    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_u32(0);
        let mut w = Writer::new(out);
        w.tag(self.tag());
        self.encode_fields(&mut w);
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// Encodes into a fresh buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }

    /// The fields after the type octet.
    fn encode_fields(&self, w: &mut Writer<'_>) {
        match self {
            Frame::Hello {
                node,
                client_addr,
                conn_index,
                pool_size,
                instance,
            } => {
                w.str(node);
                w.str(client_addr);
                w.varint(u64::from(*conn_index));
                w.varint(u64::from(*pool_size));
                w.varint(*instance);
            }
            Frame::Welcome {
                domain,
                instance,
                mechanisms,
                registration,
            } => {
                w.str(domain);
                w.varint(*instance);
                w.varint(mechanisms.len() as u64);
                for m in mechanisms {
                    w.str(m);
                }
                w.bool(*registration);
            }
            Frame::Register {
                sid,
                username,
                password,
            } => {
                w.varint(*sid);
                w.str(username);
                w.str(password);
            }
            Frame::RegisterResult { sid, error } => {
                w.varint(*sid);
                w.opt_str(error.as_deref());
            }
            Frame::AuthStart {
                sid,
                mechanism,
                data,
            } => {
                w.varint(*sid);
                w.str(mechanism);
                w.bytes(data);
            }
            Frame::AuthResponse { sid, data } | Frame::AuthChallenge { sid, data } => {
                w.varint(*sid);
                w.bytes(data);
            }
            Frame::AuthSuccess { sid, data, user } => {
                w.varint(*sid);
                w.bytes(data);
                w.str(user);
            }
            Frame::AuthFailure { sid, condition } | Frame::Kick { sid, condition } => {
                w.varint(*sid);
                w.str(condition);
            }
            Frame::Bind {
                sid,
                user,
                iq_id,
                resource,
            } => {
                w.varint(*sid);
                w.str(user);
                w.str(iq_id);
                w.opt_str(resource.as_deref());
            }
            Frame::BindResult { sid, iq_id, result } => {
                w.varint(*sid);
                w.str(iq_id);
                w.flag(result.is_err());
                match result {
                    Ok(jid) => w.str(jid),
                    Err(condition) => w.str(condition),
                }
            }
            Frame::Announce {
                sid,
                jid,
                available,
                priority,
                sm,
            } => {
                w.varint(*sid);
                w.str(jid);
                w.bool(*available);
                w.i8(*priority);
                w.flag(sm.is_some());
                if let Some(sm) = sm {
                    w.str(&sm.id);
                    w.varint(u64::from(sm.handled));
                    w.varint(u64::from(sm.sent));
                    w.varint(u64::from(sm.client_acked));
                    w.varint(u64::from(sm.next_seq));
                    w.varint(u64::from(sm.max));
                }
            }
            Frame::Stanza {
                sid,
                header,
                payload,
            } => {
                w.varint(*sid);
                w.u8(header.kind as u8);
                w.opt_str(header.stanza_type.as_deref());
                w.opt_str(header.to.as_deref());
                w.opt_str(header.id.as_deref());
                w.str(&header.from);
                w.bytes(payload);
            }
            Frame::Deliver { sid, payload } => {
                w.varint(*sid);
                w.bytes(payload);
            }
            Frame::Bounce { sid, to, payload } => {
                w.varint(*sid);
                w.str(to);
                w.bytes(payload);
            }
            Frame::SessionEnd { sid, jid, clean } => {
                w.varint(*sid);
                w.opt_str(jid.as_deref());
                w.bool(*clean);
            }
            Frame::SmEnable { sid, resume, max } => {
                w.varint(*sid);
                w.bool(*resume);
                w.varint(u64::from(*max));
            }
            Frame::SmEnabled { sid, id, max } => {
                w.varint(*sid);
                w.str(id);
                w.varint(u64::from(*max));
            }
            Frame::AckRequest { sid } => {
                w.varint(*sid);
            }
            Frame::Handled { sid, h } | Frame::Acked { sid, h } => {
                w.varint(*sid);
                w.varint(u64::from(*h));
            }
            Frame::Skipped { sid, seqs } => {
                w.varint(*sid);
                w.varint(seqs.len() as u64);
                for s in seqs {
                    w.varint(u64::from(*s));
                }
            }
            Frame::Resume {
                sid,
                user,
                previd,
                h,
            } => {
                w.varint(*sid);
                w.str(user);
                w.str(previd);
                w.varint(u64::from(*h));
            }
            Frame::Resumed { sid, result } => {
                w.varint(*sid);
                w.flag(result.is_err());
                match result {
                    Ok(r) => {
                        w.str(&r.jid);
                        w.varint(u64::from(r.h));
                        w.bool(r.available);
                        w.i8(r.priority);
                        w.varint(u64::from(r.max));
                    }
                    Err(condition) => w.str(condition),
                }
            }
        }
    }
}
