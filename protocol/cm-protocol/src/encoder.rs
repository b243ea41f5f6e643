//! Frames to bytes: the length prefix, the type octet, the fields in order.

use std::net::IpAddr;

use bytes::{BufMut, Bytes, BytesMut};

use crate::decoder::MAX_FRAME;
use crate::frame::{Frame, RouteHeader};
use crate::primitive::Writer;

/// A frame longer than [`MAX_FRAME`] was not encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{frame} frame of {len} bytes is above the {MAX_FRAME}-byte frame limit")]
pub struct FrameTooLarge {
    /// The frame's name.
    pub frame: &'static str,
    /// Its encoded length (after the length prefix).
    pub len: usize,
}

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

    /// Appends the encoded frame to `out` unless it is longer than
    /// [`MAX_FRAME`], which the peer's decoder refuses (and closes the whole
    /// link for): then `out` is left as it was.
    pub fn try_encode(&self, out: &mut BytesMut) -> Result<(), FrameTooLarge> {
        let start = out.len();
        self.encode(out);
        let len = out.len() - start - 4;
        if len > MAX_FRAME {
            out.truncate(start);
            return Err(FrameTooLarge {
                frame: self.name(),
                len,
            });
        }
        Ok(())
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
                caps,
                sasl2,
                fast,
            } => {
                w.str(domain);
                w.varint(*instance);
                w.varint(mechanisms.len() as u64);
                for m in mechanisms {
                    w.str(m);
                }
                w.bool(*registration);
                w.str(caps);
                w.bool(*sasl2);
                w.bool(*fast);
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
                client_ip,
                fast,
            } => {
                w.varint(*sid);
                w.str(mechanism);
                w.bytes(data);
                // 0, 4 or 16 octets
                match client_ip {
                    None => w.bytes(&[]),
                    Some(IpAddr::V4(ip)) => w.bytes(&ip.octets()),
                    Some(IpAddr::V6(ip)) => w.bytes(&ip.octets()),
                }
                w.opt_str(fast.user_agent.as_deref());
                w.opt_str(fast.request_token.as_deref());
                w.flag(fast.count.is_some());
                if let Some(count) = fast.count {
                    w.varint(count);
                }
                w.bool(fast.invalidate);
                w.flag(fast.tls_exporter.is_some());
                if let Some(exporter) = &fast.tls_exporter {
                    w.bytes(exporter);
                }
                w.bool(fast.early);
            }
            Frame::AuthResponse { sid, data } | Frame::AuthChallenge { sid, data } => {
                w.varint(*sid);
                w.bytes(data);
            }
            Frame::AuthSuccess {
                sid,
                data,
                user,
                token,
            } => {
                w.varint(*sid);
                w.bytes(data);
                w.str(user);
                w.flag(token.is_some());
                if let Some(t) = token {
                    w.str(&t.token);
                    w.varint(t.expiry);
                }
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
                bind2,
            } => {
                w.varint(*sid);
                w.str(user);
                w.str(iq_id);
                w.opt_str(resource.as_deref());
                w.flag(bind2.is_some());
                if let Some(b) = bind2 {
                    w.opt_str(b.tag.as_deref());
                    w.bool(b.carbons);
                    w.flag(b.sm.is_some());
                    if let Some(sm) = b.sm {
                        w.bool(sm.resume);
                        w.varint(u64::from(sm.max));
                    }
                }
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
                    w.bool(sm.detached);
                }
            }
            Frame::Stanza {
                sid,
                header,
                payload,
            } => {
                w.varint(*sid);
                write_header(w, header);
                w.bytes(payload);
            }
            Frame::Deliver { sid, payload } => {
                w.varint(*sid);
                w.bytes(payload);
            }
            Frame::DeliverMany { sids, payload } => {
                w.varint(sids.len() as u64);
                for sid in sids {
                    w.varint(*sid);
                }
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
            Frame::SlotOwners {
                core,
                slot_count,
                version,
                owned,
                cores,
            } => {
                w.str(core);
                w.varint(u64::from(*slot_count));
                w.varint(*version);
                w.varint(owned.len() as u64);
                for o in owned {
                    w.varint(u64::from(o.slot));
                    w.varint(o.epoch);
                }
                w.varint(cores.len() as u64);
                for c in cores {
                    w.str(&c.core);
                    w.str(&c.address);
                }
            }
            Frame::Forward {
                seq,
                header,
                payload,
            } => {
                w.varint(*seq);
                write_header(w, header);
                w.bytes(payload);
            }
            Frame::ForwardDone { seq, accepted } => {
                w.varint(*seq);
                w.bool(*accepted);
            }
        }
    }
}

/// A stanza's routing header (`Stanza`, `Forward`).
fn write_header(w: &mut Writer<'_>, header: &RouteHeader) {
    w.u8(header.kind as u8);
    w.opt_str(header.stanza_type.as_deref());
    w.opt_str(header.to.as_deref());
    w.opt_str(header.id.as_deref());
    w.str(&header.from);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_above_max_frame_is_not_encoded_and_the_buffer_keeps_what_it_had() {
        let mut out = BytesMut::new();
        let small = Frame::AckRequest { sid: 1 };
        small.encode(&mut out);
        let before = out.clone();
        // type octet + sid varint + length varint (3 octets) + payload
        let fits = Frame::Deliver {
            sid: 1,
            payload: Bytes::from(vec![b'x'; MAX_FRAME - 5]),
        };
        assert_eq!(fits.try_encode(&mut out), Ok(()));
        assert_eq!(out.len(), before.len() + 4 + MAX_FRAME);
        out.truncate(before.len());
        let too_large = Frame::Deliver {
            sid: 1,
            payload: Bytes::from(vec![b'x'; MAX_FRAME - 4]),
        };
        assert_eq!(
            too_large.try_encode(&mut out),
            Err(FrameTooLarge {
                frame: "deliver",
                len: MAX_FRAME + 1
            })
        );
        assert_eq!(out, before);
    }

    #[test]
    fn a_stanza_of_max_stanza_bytes_fits_in_a_frame_with_its_largest_header() {
        let payload = Bytes::from(vec![b'x'; crate::MAX_STANZA]);
        // its attributes cannot be longer than the stanza; a JID is at most 3071 bytes
        let attr = Some("a".repeat(crate::MAX_STANZA / 3));
        let frame = Frame::Stanza {
            sid: u64::MAX,
            header: crate::RouteHeader {
                kind: crate::Kind::Message,
                stanza_type: attr.clone(),
                to: attr.clone(),
                id: attr,
                from: "f".repeat(3071),
            },
            payload,
        };
        assert_eq!(frame.try_encode(&mut BytesMut::new()), Ok(()));
    }
}
