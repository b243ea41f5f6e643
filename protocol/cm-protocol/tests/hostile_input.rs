//! Property-style checks of the decoder against what a broken or hostile
//! peer may send: random frames of every type round-trip, every prefix of a
//! frame is incomplete rather than wrong, and mutated or random bytes decode
//! to frames or typed errors, never a panic. Randomness is seeded, so a
//! failure reproduces.

use bytes::{Bytes, BytesMut};
use cm_protocol::{
    CoreAddress, DecodeError, Frame, FrameDecoder, FrameTag, Kind, MAX_FRAME, Resumption,
    RouteHeader, SlotEpoch, SmSnapshot,
};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

const SEED: u64 = 0x6c6f_6e67_6c69_6e6b;

/// A `u64` of random magnitude, so varints of every length occur.
fn uint(rng: &mut StdRng) -> u64 {
    rng.next_u64() >> rng.gen_range(0..64)
}

fn u32_(rng: &mut StdRng) -> u32 {
    rng.next_u32() >> rng.gen_range(0..32)
}

fn string(rng: &mut StdRng) -> String {
    const ALPHABET: [char; 8] = ['a', 'Z', '@', '/', '\0', 'ä', '€', '😀'];
    let len = rng.gen_range(0..12);
    (0..len)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())])
        .collect()
}

fn opt_string(rng: &mut StdRng) -> Option<String> {
    rng.gen_bool(0.5).then(|| string(rng))
}

fn bytes(rng: &mut StdRng) -> Bytes {
    let mut b = vec![0; rng.gen_range(0..40)];
    rng.fill(&mut b[..]);
    Bytes::from(b)
}

/// A random frame of type `tag`. The match is exhaustive, so a new frame
/// type does not compile until it is generated here too.
fn random_frame(rng: &mut StdRng, tag: FrameTag) -> Frame {
    let sid = uint(rng);
    match tag {
        FrameTag::Hello => Frame::Hello {
            node: string(rng),
            client_addr: string(rng),
            conn_index: rng.gen_range(0..=u16::MAX),
            pool_size: rng.gen_range(0..=u16::MAX),
            instance: uint(rng),
        },
        FrameTag::Welcome => Frame::Welcome {
            domain: string(rng),
            instance: uint(rng),
            mechanisms: (0..rng.gen_range(0..=16)).map(|_| string(rng)).collect(),
            registration: rng.gen_bool(0.5),
            caps: string(rng),
            sasl2: rng.gen_bool(0.5),
            fast: rng.gen_bool(0.5),
        },
        FrameTag::AuthStart => Frame::AuthStart {
            sid,
            mechanism: string(rng),
            data: bytes(rng),
            client_ip: match rng.gen_range(0..3) {
                0 => None,
                1 => Some(std::net::IpAddr::from(rng.r#gen::<[u8; 4]>())),
                _ => Some(std::net::IpAddr::from(rng.r#gen::<[u8; 16]>())),
            },
            fast: Box::new(cm_protocol::FastAuth {
                user_agent: opt_string(rng),
                request_token: opt_string(rng),
                count: rng.gen_bool(0.5).then(|| uint(rng)),
                invalidate: rng.gen_bool(0.5),
                tls_exporter: rng.gen_bool(0.5).then(|| bytes(rng)),
                early: rng.gen_bool(0.5),
            }),
        },
        FrameTag::AuthResponse => Frame::AuthResponse {
            sid,
            data: bytes(rng),
        },
        FrameTag::AuthChallenge => Frame::AuthChallenge {
            sid,
            data: bytes(rng),
        },
        FrameTag::AuthSuccess => Frame::AuthSuccess {
            sid,
            data: bytes(rng),
            user: string(rng),
            token: rng.gen_bool(0.5).then(|| cm_protocol::FastTokenGrant {
                token: string(rng),
                expiry: uint(rng),
            }),
        },
        FrameTag::AuthFailure => Frame::AuthFailure {
            sid,
            condition: string(rng),
        },
        FrameTag::Bind => Frame::Bind {
            sid,
            user: string(rng),
            iq_id: string(rng),
            resource: opt_string(rng),
            bind2: rng.gen_bool(0.5).then(|| cm_protocol::Bind2 {
                tag: opt_string(rng),
                carbons: rng.gen_bool(0.5),
                sm: rng.gen_bool(0.5).then(|| cm_protocol::SmRequest {
                    resume: rng.gen_bool(0.5),
                    max: rng.r#gen(),
                }),
            }),
        },
        FrameTag::BindResult => Frame::BindResult {
            sid,
            iq_id: string(rng),
            result: if rng.gen_bool(0.5) {
                Ok(string(rng))
            } else {
                Err(string(rng))
            },
        },
        FrameTag::Announce => Frame::Announce {
            sid,
            jid: string(rng),
            available: rng.gen_bool(0.5),
            priority: rng.gen_range(i8::MIN..=i8::MAX),
            sm: rng.gen_bool(0.5).then(|| SmSnapshot {
                id: string(rng),
                handled: u32_(rng),
                sent: u32_(rng),
                client_acked: u32_(rng),
                next_seq: u32_(rng),
                max: u32_(rng),
                detached: rng.gen_bool(0.5),
            }),
        },
        FrameTag::Stanza => Frame::Stanza {
            sid,
            header: RouteHeader {
                kind: [Kind::Message, Kind::Presence, Kind::Iq][rng.gen_range(0..3)],
                stanza_type: opt_string(rng),
                to: opt_string(rng),
                id: opt_string(rng),
                from: string(rng),
            },
            payload: bytes(rng),
        },
        FrameTag::Deliver => Frame::Deliver {
            sid,
            payload: bytes(rng),
        },
        FrameTag::DeliverMany => Frame::DeliverMany {
            sids: (0..rng.gen_range(1..10)).map(|_| uint(rng)).collect(),
            payload: bytes(rng),
        },
        FrameTag::Bounce => Frame::Bounce {
            sid,
            to: string(rng),
            payload: bytes(rng),
        },
        FrameTag::SessionEnd => Frame::SessionEnd {
            sid,
            jid: opt_string(rng),
            clean: rng.gen_bool(0.5),
        },
        FrameTag::Kick => Frame::Kick {
            sid,
            condition: string(rng),
        },
        FrameTag::SmEnable => Frame::SmEnable {
            sid,
            resume: rng.gen_bool(0.5),
            max: u32_(rng),
        },
        FrameTag::SmEnabled => Frame::SmEnabled {
            sid,
            id: string(rng),
            max: u32_(rng),
        },
        FrameTag::AckRequest => Frame::AckRequest { sid },
        FrameTag::Handled => Frame::Handled { sid, h: u32_(rng) },
        FrameTag::Acked => Frame::Acked { sid, h: u32_(rng) },
        FrameTag::Skipped => Frame::Skipped {
            sid,
            seqs: (0..rng.gen_range(0..10)).map(|_| u32_(rng)).collect(),
        },
        FrameTag::Resume => Frame::Resume {
            sid,
            user: string(rng),
            previd: string(rng),
            h: u32_(rng),
        },
        FrameTag::Resumed => Frame::Resumed {
            sid,
            result: if rng.gen_bool(0.5) {
                Ok(Resumption {
                    jid: string(rng),
                    h: u32_(rng),
                    available: rng.gen_bool(0.5),
                    priority: rng.gen_range(i8::MIN..=i8::MAX),
                    max: u32_(rng),
                })
            } else {
                Err(string(rng))
            },
        },
        FrameTag::Register => Frame::Register {
            sid,
            username: string(rng),
            password: string(rng),
        },
        FrameTag::RegisterResult => Frame::RegisterResult {
            sid,
            error: opt_string(rng),
        },
        FrameTag::SlotOwners => {
            let slot_count = rng.gen_range(1..=u16::MAX);
            Frame::SlotOwners {
                core: string(rng),
                slot_count,
                version: rng.next_u64(),
                owned: (0..rng.gen_range(0..10))
                    .map(|_| SlotEpoch {
                        slot: rng.gen_range(0..slot_count),
                        epoch: rng.next_u64(),
                    })
                    .collect(),
                cores: (0..rng.gen_range(0..4))
                    .map(|_| CoreAddress {
                        core: string(rng),
                        address: string(rng),
                    })
                    .collect(),
            }
        }
        FrameTag::Forward => Frame::Forward {
            seq: rng.next_u64(),
            header: RouteHeader {
                kind: Kind::Message,
                stanza_type: opt_string(rng),
                to: opt_string(rng),
                id: opt_string(rng),
                from: string(rng),
            },
            payload: Bytes::from(string(rng)),
        },
        FrameTag::ForwardDone => Frame::ForwardDone {
            seq: rng.next_u64(),
            accepted: rng.gen_bool(0.5),
        },
    }
}

fn random_any_frame(rng: &mut StdRng) -> Frame {
    let tag = FrameTag::ALL[rng.gen_range(0..FrameTag::ALL.len())];
    random_frame(rng, tag)
}

/// Pushes `wire` in random chunks and pulls frames after every push until
/// the decoder needs more bytes or fails; a panic fails the test.
fn decode_stream(rng: &mut StdRng, wire: &[u8]) -> (Vec<Frame>, Option<DecodeError>) {
    let mut decoder = FrameDecoder::new();
    let mut frames = Vec::new();
    let mut rest = wire;
    while !rest.is_empty() {
        let n = rng.gen_range(1..=rest.len().min(64));
        decoder.push(&rest[..n]);
        rest = &rest[n..];
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

/// A frame that decoded from damaged bytes is still a frame: it encodes and
/// decodes back to itself.
fn assert_reencodes_to_itself(frame: &Frame) {
    let wire = frame.to_bytes();
    assert_eq!(
        Frame::decode(wire.slice(4..)).as_ref(),
        Ok(frame),
        "{frame:?}"
    );
}

#[test]
fn random_frames_of_every_type_round_trip() {
    let mut rng = StdRng::seed_from_u64(SEED);
    for _ in 0..200 {
        for &tag in FrameTag::ALL {
            let frame = random_frame(&mut rng, tag);
            assert_eq!(frame.tag(), tag);
            let wire = frame.to_bytes();
            let len = u32::from_be_bytes([wire[0], wire[1], wire[2], wire[3]]) as usize;
            assert_eq!(len, wire.len() - 4);
            assert_eq!(wire[4], u8::from(tag));
            assert_eq!(Frame::decode(wire.slice(4..)), Ok(frame));
        }
    }
}

#[test]
fn streams_of_frames_decode_the_same_however_they_are_chunked() {
    let mut rng = StdRng::seed_from_u64(SEED);
    for _ in 0..100 {
        let frames: Vec<Frame> = (0..20).map(|_| random_any_frame(&mut rng)).collect();
        let mut wire = BytesMut::new();
        for f in &frames {
            f.encode(&mut wire);
        }
        let (got, err) = decode_stream(&mut rng, &wire);
        assert_eq!(err, None);
        assert_eq!(got, frames);
    }
}

#[test]
fn every_strict_prefix_of_a_frame_is_incomplete() {
    let mut rng = StdRng::seed_from_u64(SEED);
    for _ in 0..40 {
        for &tag in FrameTag::ALL {
            let wire = random_frame(&mut rng, tag).to_bytes();
            for cut in 0..wire.len() {
                // The framing layer waits for the rest...
                let mut decoder = FrameDecoder::new();
                decoder.push(&wire[..cut]);
                assert_eq!(decoder.next_frame(), Ok(None), "{tag:?} cut at {cut}");
                // ...and a body cut short runs out of bytes.
                if cut >= 4 {
                    assert_eq!(
                        Frame::decode(wire.slice(4..cut)),
                        Err(DecodeError::Truncated),
                        "{tag:?} cut at {cut}"
                    );
                }
            }
        }
    }
}

/// One random edit of an encoded stream.
fn mutate(rng: &mut StdRng, wire: &mut Vec<u8>) {
    if wire.is_empty() {
        wire.push(rng.next_u32() as u8);
        return;
    }
    let at = rng.gen_range(0..wire.len());
    match rng.gen_range(0..7) {
        0 => wire[at] = rng.next_u32() as u8,
        1 => wire[at] ^= 1 << rng.gen_range(0..8),
        2 => wire.insert(at, rng.next_u32() as u8),
        3 => {
            wire.remove(at);
        }
        4 => wire.truncate(at),
        // a varint continuation bit, the usual way to a huge length
        5 => wire[at] |= 0x80,
        _ => {
            // a random length prefix, up to a little over the limit
            let end = (at + 4).min(wire.len());
            let len = rng.gen_range(0..=MAX_FRAME as u32 + 16).to_be_bytes();
            wire[at..end].copy_from_slice(&len[..end - at]);
        }
    }
}

#[test]
fn mutated_streams_decode_to_frames_or_typed_errors() {
    let mut rng = StdRng::seed_from_u64(SEED);
    let (mut decoded, mut failed) = (0usize, 0usize);
    for _ in 0..3000 {
        let mut wire = BytesMut::new();
        for _ in 0..rng.gen_range(1..4) {
            random_any_frame(&mut rng).encode(&mut wire);
        }
        let mut wire = wire.to_vec();
        for _ in 0..rng.gen_range(1..4) {
            mutate(&mut rng, &mut wire);
        }
        let (frames, err) = decode_stream(&mut rng, &wire);
        for frame in &frames {
            assert_reencodes_to_itself(frame);
        }
        decoded += frames.len();
        failed += usize::from(err.is_some());
    }
    // Both outcomes were exercised.
    assert!(decoded > 1000, "{decoded} frames decoded");
    assert!(failed > 1000, "{failed} streams failed");
}

#[test]
fn random_bodies_decode_to_frames_or_typed_errors() {
    let mut rng = StdRng::seed_from_u64(SEED);
    for _ in 0..20_000 {
        let mut body = vec![0; rng.gen_range(0..48)];
        rng.fill(&mut body[..]);
        if let Some(first) = body.first_mut() {
            // mostly a known type, so the fields get parsed
            if rng.gen_bool(0.9) {
                *first = rng.gen_range(0..FrameTag::ALL.len() as u8);
            }
        }
        if let Ok(frame) = Frame::decode(Bytes::from(body)) {
            assert_reencodes_to_itself(&frame);
        }
    }
}
