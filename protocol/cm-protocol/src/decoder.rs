//! Bytes to frames: [`Frame::decode`] for one frame's body and the
//! incremental, sans-IO [`FrameDecoder`] that cuts a byte stream into frames.
//!
//! Nothing a peer sends can make decoding panic or allocate more than the
//! frame it sent: a frame's declared length is checked against [`MAX_FRAME`]
//! before the buffer grows for it, and every length or count inside a frame
//! against the bytes left in that frame.

use std::net::IpAddr;

use bytes::{Buf, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::frame::{
    Bind2, CoreAddress, FastAuth, FastTokenGrant, Frame, Kind, Resumption, RouteHeader, SessionId,
    SlotEpoch, SmRequest, SmSnapshot,
};
use crate::primitive::Reader;
use crate::tag::FrameTag;

/// Largest frame accepted (a stanza plus headers).
pub const MAX_FRAME: usize = 1024 * 1024;

/// Most SASL mechanisms a [`Frame::Welcome`] may offer.
const MAX_MECHANISMS: u64 = 16;

/// Most sessions one [`Frame::DeliverMany`] may name: the decoder refuses
/// a longer list (and an empty one). At ten octets a session id at most,
/// this many ids and a [`MAX_STANZA`](crate::MAX_STANZA) payload still fit
/// in [`MAX_FRAME`].
pub const MAX_FANOUT_SIDS: usize = 16_384;

/// Octets of the length in front of every frame.
const LENGTH_PREFIX: usize = 4;

impl Frame {
    /// Decodes one frame body (without the length prefix).
    pub fn decode(body: Bytes) -> Result<Frame, DecodeError> {
        let mut r = Reader::new(body);
        let frame = match FrameTag::try_from(r.u8()?)? {
            FrameTag::Hello => Frame::Hello {
                node: r.string()?,
                client_addr: r.string()?,
                conn_index: r.u16()?,
                pool_size: r.u16()?,
                instance: r.varint()?,
            },
            FrameTag::Welcome => {
                let domain = r.string()?;
                let instance = r.varint()?;
                let n = r.varint()?;
                if n > MAX_MECHANISMS {
                    return Err(DecodeError::Invalid);
                }
                let mechanisms = (0..n).map(|_| r.string()).collect::<Result<_, _>>()?;
                Frame::Welcome {
                    domain,
                    instance,
                    mechanisms,
                    registration: r.bool()?,
                    caps: r.string()?,
                    sasl2: r.bool()?,
                    fast: r.bool()?,
                }
            }
            FrameTag::AuthStart => Frame::AuthStart {
                sid: r.varint()?,
                mechanism: r.string()?,
                data: r.bytes()?,
                client_ip: ip_address(&r.bytes()?)?,
                fast: Box::new(FastAuth {
                    user_agent: r.opt_string()?,
                    request_token: r.opt_string()?,
                    count: if r.flag()? { Some(r.varint()?) } else { None },
                    invalidate: r.bool()?,
                    tls_exporter: if r.flag()? { Some(r.bytes()?) } else { None },
                    early: r.bool()?,
                }),
            },
            FrameTag::AuthResponse => Frame::AuthResponse {
                sid: r.varint()?,
                data: r.bytes()?,
            },
            FrameTag::AuthChallenge => Frame::AuthChallenge {
                sid: r.varint()?,
                data: r.bytes()?,
            },
            FrameTag::AuthSuccess => Frame::AuthSuccess {
                sid: r.varint()?,
                data: r.bytes()?,
                user: r.string()?,
                token: if r.flag()? {
                    Some(FastTokenGrant {
                        token: r.string()?,
                        expiry: r.varint()?,
                    })
                } else {
                    None
                },
            },
            FrameTag::AuthFailure => Frame::AuthFailure {
                sid: r.varint()?,
                condition: r.string()?,
            },
            FrameTag::Bind => Frame::Bind {
                sid: r.varint()?,
                user: r.string()?,
                iq_id: r.string()?,
                resource: r.opt_string()?,
                bind2: if r.flag()? {
                    Some(Bind2 {
                        tag: r.opt_string()?,
                        carbons: r.bool()?,
                        sm: if r.flag()? {
                            Some(SmRequest {
                                resume: r.bool()?,
                                max: r.u32()?,
                            })
                        } else {
                            None
                        },
                    })
                } else {
                    None
                },
            },
            FrameTag::BindResult => {
                let sid = r.varint()?;
                let iq_id = r.string()?;
                let result = if r.flag()? {
                    Err(r.string()?)
                } else {
                    Ok(r.string()?)
                };
                Frame::BindResult { sid, iq_id, result }
            }
            FrameTag::Announce => Frame::Announce {
                sid: r.varint()?,
                jid: r.string()?,
                available: r.bool()?,
                priority: r.i8()?,
                sm: if r.flag()? {
                    Some(SmSnapshot {
                        id: r.string()?,
                        handled: r.u32()?,
                        sent: r.u32()?,
                        client_acked: r.u32()?,
                        next_seq: r.u32()?,
                        max: r.u32()?,
                        detached: r.bool()?,
                    })
                } else {
                    None
                },
            },
            FrameTag::Stanza => Frame::Stanza {
                sid: r.varint()?,
                header: route_header(&mut r)?,
                payload: r.bytes()?,
            },
            FrameTag::Deliver => Frame::Deliver {
                sid: r.varint()?,
                payload: r.bytes()?,
            },
            FrameTag::DeliverMany => {
                let sids = session_list(&mut r)?;
                Frame::DeliverMany {
                    sids,
                    payload: r.bytes()?,
                }
            }
            FrameTag::Bounce => Frame::Bounce {
                sid: r.varint()?,
                to: r.string()?,
                payload: r.bytes()?,
            },
            FrameTag::SessionEnd => Frame::SessionEnd {
                sid: r.varint()?,
                jid: r.opt_string()?,
                clean: r.bool()?,
            },
            FrameTag::Kick => Frame::Kick {
                sid: r.varint()?,
                condition: r.string()?,
            },
            FrameTag::SmEnable => Frame::SmEnable {
                sid: r.varint()?,
                resume: r.bool()?,
                max: r.u32()?,
            },
            FrameTag::SmEnabled => Frame::SmEnabled {
                sid: r.varint()?,
                id: r.string()?,
                max: r.u32()?,
            },
            FrameTag::AckRequest => Frame::AckRequest { sid: r.varint()? },
            FrameTag::Handled => Frame::Handled {
                sid: r.varint()?,
                h: r.u32()?,
            },
            FrameTag::Acked => Frame::Acked {
                sid: r.varint()?,
                h: r.u32()?,
            },
            FrameTag::Skipped => {
                let sid = r.varint()?;
                let n = r.count()?;
                let seqs = (0..n).map(|_| r.u32()).collect::<Result<_, _>>()?;
                Frame::Skipped { sid, seqs }
            }
            FrameTag::Resume => Frame::Resume {
                sid: r.varint()?,
                user: r.string()?,
                previd: r.string()?,
                h: r.u32()?,
            },
            FrameTag::Resumed => {
                let sid = r.varint()?;
                let result = if r.flag()? {
                    Err(r.string()?)
                } else {
                    Ok(Resumption {
                        jid: r.string()?,
                        h: r.u32()?,
                        available: r.bool()?,
                        priority: r.i8()?,
                        max: r.u32()?,
                    })
                };
                Frame::Resumed { sid, result }
            }
            FrameTag::Register => Frame::Register {
                sid: r.varint()?,
                username: r.string()?,
                password: r.string()?,
            },
            FrameTag::RegisterResult => Frame::RegisterResult {
                sid: r.varint()?,
                error: r.opt_string()?,
            },
            FrameTag::SlotOwners => {
                let core = r.string()?;
                let slot_count = r.u16()?;
                let version = r.varint()?;
                let n = r.count()?;
                // grown as entries arrive, never sized by the claimed count
                let mut owned = Vec::new();
                for _ in 0..n {
                    let slot = r.u16()?;
                    if slot >= slot_count {
                        return Err(DecodeError::Invalid);
                    }
                    owned.push(SlotEpoch {
                        slot,
                        epoch: r.varint()?,
                    });
                }
                let n = r.count()?;
                let mut cores = Vec::new();
                for _ in 0..n {
                    cores.push(CoreAddress {
                        core: r.string()?,
                        address: r.string()?,
                    });
                }
                Frame::SlotOwners {
                    core,
                    slot_count,
                    version,
                    owned,
                    cores,
                }
            }
            FrameTag::Forward => Frame::Forward {
                seq: r.varint()?,
                header: route_header(&mut r)?,
                payload: r.bytes()?,
            },
            FrameTag::ForwardDone => Frame::ForwardDone {
                seq: r.varint()?,
                accepted: r.bool()?,
            },
        };
        r.finish()?;
        Ok(frame)
    }
}

/// A stanza's routing header (`Stanza`, `Forward`).
fn route_header(r: &mut Reader) -> Result<RouteHeader, DecodeError> {
    Ok(RouteHeader {
        kind: Kind::from_octet(r.u8()?).ok_or(DecodeError::Invalid)?,
        stanza_type: r.opt_string()?,
        to: r.opt_string()?,
        id: r.opt_string()?,
        from: r.string()?,
    })
}

/// The sessions of a `DeliverMany`: a count of 1 to [`MAX_FANOUT_SIDS`]
/// (else the frame is invalid, whatever its length), then that many ids.
fn session_list(r: &mut Reader) -> Result<Vec<SessionId>, DecodeError> {
    let n = r.varint()?;
    if n == 0 || n > MAX_FANOUT_SIDS as u64 {
        return Err(DecodeError::Invalid);
    }
    // each id takes an octet at least: a count beyond the bytes left is
    // cut short, and the list is sized by what the frame carries
    if n > r.remaining() as u64 {
        return Err(DecodeError::Truncated);
    }
    // n <= MAX_FANOUT_SIDS
    let mut sids = Vec::with_capacity(n as usize);
    for _ in 0..n {
        sids.push(r.varint()?);
    }
    Ok(sids)
}

/// A client address as carried in `AuthStart`: no octets, 4 or 16.
fn ip_address(octets: &[u8]) -> Result<Option<IpAddr>, DecodeError> {
    match octets.len() {
        0 => Ok(None),
        4 => Ok(<[u8; 4]>::try_from(octets).ok().map(IpAddr::from)),
        16 => Ok(<[u8; 16]>::try_from(octets).ok().map(IpAddr::from)),
        _ => Err(DecodeError::Invalid),
    }
}

/// Sans-IO frame decoder: push bytes as they arrive, pull whole frames.
///
/// It buffers what it is given; a caller that pulls every frame after each
/// push holds at most one unfinished frame (at most [`MAX_FRAME`] plus the
/// length) and the last chunk pushed.
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
    ///
    /// After an error the stream cannot be resynchronised; the connection
    /// is to be closed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        let Some(prefix) = self.buf.first_chunk::<LENGTH_PREFIX>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*prefix) as usize;
        if len > MAX_FRAME {
            return Err(DecodeError::TooLarge(len));
        }
        if self.buf.len() < LENGTH_PREFIX + len {
            self.buf.reserve(LENGTH_PREFIX + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(LENGTH_PREFIX);
        let body = self.buf.split_to(len).freeze();
        Frame::decode(body).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut wire = (body.len() as u32).to_be_bytes().to_vec();
        wire.extend_from_slice(body);
        wire
    }

    #[test]
    fn unknown_type_octet_is_an_unknown_type_error() {
        let mut dec = FrameDecoder::new();
        dec.push(&frame(&[99, 1]));
        assert_eq!(dec.next_frame(), Err(DecodeError::UnknownType(99)));
    }

    #[test]
    fn length_above_max_frame_is_too_large_before_the_body_arrives() {
        let mut dec = FrameDecoder::new();
        dec.push(&((MAX_FRAME + 1) as u32).to_be_bytes());
        assert_eq!(dec.next_frame(), Err(DecodeError::TooLarge(MAX_FRAME + 1)));
        let mut dec = FrameDecoder::new();
        dec.push(&[0xff, 0, 0, 0]);
        assert_eq!(dec.next_frame(), Err(DecodeError::TooLarge(0xff00_0000)));
    }

    #[test]
    fn frame_of_exactly_max_frame_is_accepted() {
        let payload = vec![b'x'; MAX_FRAME - 5];
        let f = Frame::Deliver {
            sid: 1,
            payload: Bytes::from(payload),
        };
        let wire = f.to_bytes();
        assert_eq!(wire.len(), LENGTH_PREFIX + MAX_FRAME);
        let mut dec = FrameDecoder::new();
        dec.push(&wire);
        assert_eq!(dec.next_frame(), Ok(Some(f)));
    }

    #[test]
    fn partial_frame_waits_for_more_bytes() {
        let wire = Frame::AckRequest { sid: 300 }.to_bytes();
        let mut dec = FrameDecoder::new();
        for &b in &wire[..wire.len() - 1] {
            dec.push(&[b]);
            assert_eq!(dec.next_frame(), Ok(None));
        }
        dec.push(&wire[wire.len() - 1..]);
        assert_eq!(dec.next_frame(), Ok(Some(Frame::AckRequest { sid: 300 })));
        assert_eq!(dec.next_frame(), Ok(None));
    }

    #[test]
    fn empty_body_is_truncated() {
        assert_eq!(Frame::decode(Bytes::new()), Err(DecodeError::Truncated));
    }

    #[test]
    fn bytes_after_the_last_field_are_invalid() {
        // AckRequest { sid: 1 } and one more octet.
        assert_eq!(
            Frame::decode(Bytes::from_static(&[17, 1, 0])),
            Err(DecodeError::Invalid)
        );
    }

    #[test]
    fn welcome_with_more_than_sixteen_mechanisms_is_invalid() {
        let mut body = vec![1, 1, b'b', 0, 17];
        body.extend_from_slice(&[0; 17]);
        body.push(0);
        assert_eq!(Frame::decode(Bytes::from(body)), Err(DecodeError::Invalid));
    }

    #[test]
    fn skipped_count_beyond_the_frame_is_truncated() {
        // sid 1, then a count of u32::MAX seqs with two bytes left.
        let body = [20, 1, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2];
        assert_eq!(
            Frame::decode(Bytes::copy_from_slice(&body)),
            Err(DecodeError::Truncated)
        );
    }

    /// The body of a `DeliverMany` of `n` sessions (ids 1) and an empty payload.
    fn deliver_many_body(n: u64) -> Vec<u8> {
        let mut body = BytesMut::new();
        let mut w = crate::primitive::Writer::new(&mut body);
        w.tag(FrameTag::DeliverMany);
        w.varint(n);
        for _ in 0..n.min(MAX_FANOUT_SIDS as u64 + 1) {
            w.varint(1);
        }
        w.bytes(&[]);
        body.to_vec()
    }

    #[test]
    fn deliver_many_names_one_to_max_fanout_sids_sessions() {
        assert_eq!(
            Frame::decode(Bytes::from(deliver_many_body(0))),
            Err(DecodeError::Invalid)
        );
        assert_eq!(
            Frame::decode(Bytes::from(deliver_many_body(1))),
            Ok(Frame::DeliverMany {
                sids: vec![1],
                payload: Bytes::new()
            })
        );
        let Ok(Frame::DeliverMany { sids, .. }) =
            Frame::decode(Bytes::from(deliver_many_body(MAX_FANOUT_SIDS as u64)))
        else {
            panic!("MAX_FANOUT_SIDS sessions refused");
        };
        assert_eq!(sids.len(), MAX_FANOUT_SIDS);
        // one more is refused even with every id there
        assert_eq!(
            Frame::decode(Bytes::from(deliver_many_body(MAX_FANOUT_SIDS as u64 + 1))),
            Err(DecodeError::Invalid)
        );
        // and a count above the limit is refused before anything is read
        let mut huge = vec![u8::from(FrameTag::DeliverMany)];
        huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert_eq!(Frame::decode(Bytes::from(huge)), Err(DecodeError::Invalid));
    }

    #[test]
    fn deliver_many_count_beyond_the_frame_is_truncated() {
        // 3 sessions, one id there
        let body = [u8::from(FrameTag::DeliverMany), 3, 1];
        assert_eq!(
            Frame::decode(Bytes::copy_from_slice(&body)),
            Err(DecodeError::Truncated)
        );
    }

    #[test]
    fn deliver_many_of_max_stanza_to_max_fanout_sids_of_the_longest_ids_fits_a_frame() {
        let frame = Frame::DeliverMany {
            sids: vec![u64::MAX; MAX_FANOUT_SIDS],
            payload: Bytes::from(vec![b'x'; crate::MAX_STANZA]),
        };
        assert_eq!(frame.try_encode(&mut BytesMut::new()), Ok(()));
    }

    #[test]
    fn deliver_many_sid_is_its_first_session() {
        let frame = Frame::DeliverMany {
            sids: vec![9, 3, 5],
            payload: Bytes::new(),
        };
        assert_eq!(frame.sid(), Some(9));
        assert_eq!(frame.name(), "deliver-many");
        assert_eq!(
            frame.queued_bytes(),
            std::mem::size_of::<Frame>() + 3 * std::mem::size_of::<crate::SessionId>()
        );
    }

    #[test]
    fn unknown_stanza_kind_is_invalid() {
        // Stanza, sid 1, kind 3.
        let body = [10, 1, 3, 0, 0, 0, 0, 0];
        assert_eq!(
            Frame::decode(Bytes::copy_from_slice(&body)),
            Err(DecodeError::Invalid)
        );
    }

    #[test]
    fn conn_index_above_u16_is_invalid() {
        // Hello, "", "", conn_index 65536.
        let body = [0, 0, 0, 0x80, 0x80, 0x04, 1, 0];
        assert_eq!(
            Frame::decode(Bytes::copy_from_slice(&body)),
            Err(DecodeError::Invalid)
        );
    }
}
