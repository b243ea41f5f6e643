//! Golden wire format of the CM↔core protocol: the exact bytes of one
//! instance of every frame variant (and of every optional or alternative
//! field's branches), captured from the encoder before the crate was split
//! into modules. A change here is a wire-format change: it needs a new ALPN.

use bytes::{Bytes, BytesMut};
use cm_protocol::{
    Bind2, CoreAddress, FastAuth, FastTokenGrant, Frame, FrameDecoder, Kind, Resumption,
    RouteHeader, SlotEpoch, SmRequest, SmSnapshot,
};

/// Every frame variant with its encoding: the `u32` length, the type octet,
/// then the fields (hex, spaces ignored).
fn golden() -> Vec<(Frame, &'static str)> {
    vec![
        (
            Frame::Hello {
                node: "cm-1".into(),
                client_addr: "127.0.0.1:5000".into(),
                conn_index: 3,
                pool_size: 4,
                instance: 42,
            },
            "00000018 00 04636d2d310e3132372e302e302e313a3530303003042a",
        ),
        (
            Frame::Welcome {
                domain: "example.org".into(),
                instance: u64::MAX,
                mechanisms: vec!["SCRAM-SHA-256".into(), "PLAIN".into()],
                registration: true,
                caps: "abc".into(),
                sasl2: true,
                fast: true,
            },
            "00000033 01 0b6578616d706c652e6f7267ffffffffffffffffff01020d534352414d2d5348412d32353605504c41494e01036162630101",
        ),
        (
            Frame::Welcome {
                domain: "b".into(),
                instance: 0,
                mechanisms: vec![],
                registration: false,
                caps: String::new(),
                sasl2: false,
                fast: false,
            },
            "00000009 01 0162000000000000",
        ),
        (
            Frame::Register {
                sid: 9,
                username: "Alice".into(),
                password: "pässword".into(),
            },
            "00000012 17 0905416c6963650970c3a47373776f7264",
        ),
        (
            Frame::RegisterResult {
                sid: 9,
                error: None,
            },
            "00000003 18 0900",
        ),
        (
            Frame::RegisterResult {
                sid: 9,
                error: Some("conflict".into()),
            },
            "0000000c 18 090108636f6e666c696374",
        ),
        (
            Frame::AuthStart {
                sid: 1,
                mechanism: "PLAIN".into(),
                data: Bytes::from_static(b"\0a\0b"),
                client_ip: Some(std::net::Ipv4Addr::new(127, 0, 0, 1).into()),
                fast: Box::default(),
            },
            "00000018 02 0105504c41494e0400610062 047f000001 000000000000",
        ),
        (
            Frame::AuthStart {
                sid: 1,
                mechanism: "HT-SHA-256-NONE".into(),
                data: Bytes::from_static(b"a\0h"),
                client_ip: None,
                fast: Box::new(FastAuth {
                    user_agent: Some("u1".into()),
                    request_token: Some("HT".into()),
                    count: Some(300),
                    invalidate: true,
                    tls_exporter: Some(Bytes::from_static(b"xy")),
                    early: true,
                }),
            },
            "00000028 02 010f48542d5348412d3235362d4e4f4e4503610068 00 01027531 01024854 01ac02 01 01027879 01",
        ),
        (
            Frame::AuthStart {
                sid: 1,
                mechanism: "PLAIN".into(),
                data: Bytes::from_static(b"\0a\0b"),
                client_ip: None,
                fast: Box::default(),
            },
            "00000014 02 0105504c41494e0400610062 00 000000000000",
        ),
        (
            Frame::AuthStart {
                sid: 1,
                mechanism: "PLAIN".into(),
                data: Bytes::new(),
                client_ip: Some(std::net::Ipv6Addr::LOCALHOST.into()),
                fast: Box::default(),
            },
            "00000020 02 0105504c41494e00 1000000000000000000000000000000001 000000000000",
        ),
        (
            Frame::AuthResponse {
                sid: 300,
                data: Bytes::new(),
            },
            "00000004 03 ac0200",
        ),
        (
            Frame::AuthChallenge {
                sid: 2,
                data: Bytes::from_static(b"r=x"),
            },
            "00000006 04 0203723d78",
        ),
        (
            Frame::AuthSuccess {
                sid: 2,
                data: Bytes::from_static(b"v=y"),
                user: "a@b".into(),
                token: None,
            },
            "0000000b 05 0203763d790361406200",
        ),
        (
            Frame::AuthSuccess {
                sid: 2,
                data: Bytes::new(),
                user: "a@b".into(),
                token: Some(FastTokenGrant {
                    token: "tk".into(),
                    expiry: 1,
                }),
            },
            "0000000c 05 0200036140620102746b01",
        ),
        (
            Frame::AuthFailure {
                sid: 2,
                condition: "not-authorized".into(),
            },
            "00000011 06 020e6e6f742d617574686f72697a6564",
        ),
        (
            Frame::Bind {
                sid: 9,
                user: "a@b".into(),
                iq_id: "b1".into(),
                resource: None,
                bind2: None,
            },
            "0000000b 07 09036140620262310000",
        ),
        (
            Frame::Bind {
                sid: 9,
                user: "a@b".into(),
                iq_id: "b2".into(),
                resource: Some("phone".into()),
                bind2: None,
            },
            "00000011 07 0903614062026232010570686f6e6500",
        ),
        (
            Frame::Bind {
                sid: 9,
                user: "a@b".into(),
                iq_id: "b3".into(),
                resource: None,
                bind2: Some(Bind2 {
                    tag: Some("web".into()),
                    carbons: true,
                    sm: Some(SmRequest {
                        resume: true,
                        max: 300,
                    }),
                }),
            },
            "00000015 07 0903614062026233000101037765620101 01ac02",
        ),
        (
            Frame::BindResult {
                sid: 9,
                iq_id: "b1".into(),
                result: Ok("a@b/r".into()),
            },
            "0000000c 08 0902623100056140622f72",
        ),
        (
            Frame::BindResult {
                sid: 9,
                iq_id: "b1".into(),
                result: Err("conflict".into()),
            },
            "0000000f 08 090262310108636f6e666c696374",
        ),
        (
            Frame::Announce {
                sid: 9,
                jid: "a@b/r".into(),
                available: true,
                priority: -5,
                sm: None,
            },
            "0000000b 09 09056140622f7201fb00",
        ),
        (
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
                    detached: true,
                }),
            },
            "0000001a 09 0a056140622f7300000103616263ffffffff0f070509ac0201",
        ),
        (
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
            "00000025 0a 80808080802000010463686174010363406200056140622f720a3c6d6573736167652f3e",
        ),
        (
            Frame::Stanza {
                sid: u64::MAX,
                header: RouteHeader {
                    kind: Kind::Presence,
                    stanza_type: None,
                    to: None,
                    id: Some("p1".into()),
                    from: "a@b/r".into(),
                },
                payload: Bytes::from_static(b"<presence/>"),
            },
            "00000024 0a ffffffffffffffffff0101000001027031056140622f720b3c70726573656e63652f3e",
        ),
        (
            Frame::Stanza {
                sid: 0,
                header: RouteHeader {
                    kind: Kind::Iq,
                    stanza_type: Some("get".into()),
                    to: Some("b".into()),
                    id: Some("q1".into()),
                    from: "a@b/r".into(),
                },
                payload: Bytes::from_static(b"<iq/>"),
            },
            "0000001b 0a 0002010367657401016201027131056140622f72053c69712f3e",
        ),
        (
            Frame::Deliver {
                sid: 7,
                payload: Bytes::from_static(b"<message/>"),
            },
            "0000000d 0b 070a3c6d6573736167652f3e",
        ),
        (
            Frame::DeliverMany {
                sids: vec![7, 300, 1 << 40],
                payload: Bytes::from_static(b"<message/>"),
            },
            "00000016 1c 03 07 ac02 808080808020 0a3c6d6573736167652f3e",
        ),
        (
            Frame::Bounce {
                sid: 7,
                to: "a@b/r".into(),
                payload: Bytes::from_static(b"<message/>"),
            },
            "00000013 0c 07056140622f720a3c6d6573736167652f3e",
        ),
        (
            Frame::SessionEnd {
                sid: 7,
                jid: Some("a@b/r".into()),
                clean: true,
            },
            "0000000a 0d 0701056140622f7201",
        ),
        (
            Frame::SessionEnd {
                sid: 8,
                jid: None,
                clean: false,
            },
            "00000004 0d 080000",
        ),
        (
            Frame::Kick {
                sid: 7,
                condition: "conflict".into(),
            },
            "0000000b 0e 0708636f6e666c696374",
        ),
        (
            Frame::SmEnable {
                sid: 1,
                resume: true,
                max: 0,
            },
            "00000004 0f 010100",
        ),
        (
            Frame::SmEnabled {
                sid: 1,
                id: "x".into(),
                max: 300,
            },
            "00000006 10 010178ac02",
        ),
        (Frame::AckRequest { sid: 1 }, "00000002 11 01"),
        (Frame::Handled { sid: 1, h: 5 }, "00000003 12 0105"),
        (
            Frame::Acked {
                sid: 1,
                h: u32::MAX,
            },
            "00000007 13 01ffffffff0f",
        ),
        (
            Frame::Skipped {
                sid: 1,
                seqs: vec![1, 2, 900],
            },
            "00000007 14 010301028407",
        ),
        (
            Frame::Resume {
                sid: 2,
                user: "a@b".into(),
                previd: "x".into(),
                h: 3,
            },
            "00000009 15 0203614062017803",
        ),
        (
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
            "0000000e 16 0200056140622f72090101ac02",
        ),
        (
            Frame::Resumed {
                sid: 2,
                result: Err("item-not-found".into()),
            },
            "00000012 16 02010e6974656d2d6e6f742d666f756e64",
        ),
        (
            Frame::SlotOwners {
                core: "c#1".into(),
                slot_count: 4096,
                version: 9,
                owned: vec![
                    SlotEpoch { slot: 5, epoch: 2 },
                    SlotEpoch {
                        slot: 300,
                        epoch: 1,
                    },
                ],
                cores: vec![CoreAddress {
                    core: "c#1".into(),
                    address: "h:1".into(),
                }],
            },
            "00000017 19 036323318020 09 020502 ac0201 01 03632331 03683a31",
        ),
        (
            Frame::Forward {
                seq: 7,
                header: RouteHeader {
                    kind: Kind::Message,
                    stanza_type: None,
                    to: Some("b@x".into()),
                    id: None,
                    from: "a@x/r".into(),
                },
                payload: Bytes::from_static(b"<m/>"),
            },
            "00000015 1a 07 00 00 0103624078 00 05614078 2f72 043c6d2f3e",
        ),
        (
            Frame::ForwardDone {
                seq: 7,
                accepted: false,
            },
            "00000003 1b 0700",
        ),
    ]
}

/// Parses the golden hex (whitespace ignored).
fn unhex(hex: &str) -> Vec<u8> {
    let digits: Vec<u8> = hex.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert_eq!(digits.len() % 2, 0, "odd hex length in {hex:?}");
    digits
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).expect("ascii hex");
            u8::from_str_radix(pair, 16).expect("hex digit")
        })
        .collect()
}

/// The position of a variant in the declaration order of [`Frame`]. The match
/// is exhaustive, so a new frame variant does not compile until it is listed
/// here, and [`golden_covers_every_frame_variant`] then asks for its bytes.
fn variant_index(frame: &Frame) -> usize {
    match frame {
        Frame::Hello { .. } => 0,
        Frame::Welcome { .. } => 1,
        Frame::Register { .. } => 2,
        Frame::RegisterResult { .. } => 3,
        Frame::AuthStart { .. } => 4,
        Frame::AuthResponse { .. } => 5,
        Frame::AuthChallenge { .. } => 6,
        Frame::AuthSuccess { .. } => 7,
        Frame::AuthFailure { .. } => 8,
        Frame::Bind { .. } => 9,
        Frame::BindResult { .. } => 10,
        Frame::Announce { .. } => 11,
        Frame::Stanza { .. } => 12,
        Frame::Deliver { .. } => 13,
        Frame::Bounce { .. } => 14,
        Frame::SessionEnd { .. } => 15,
        Frame::Kick { .. } => 16,
        Frame::SmEnable { .. } => 17,
        Frame::SmEnabled { .. } => 18,
        Frame::AckRequest { .. } => 19,
        Frame::Handled { .. } => 20,
        Frame::Acked { .. } => 21,
        Frame::Skipped { .. } => 22,
        Frame::Resume { .. } => 23,
        Frame::Resumed { .. } => 24,
        Frame::SlotOwners { .. } => 25,
        Frame::Forward { .. } => 26,
        Frame::ForwardDone { .. } => 27,
        Frame::DeliverMany { .. } => 28,
    }
}

const VARIANTS: usize = 29;

#[test]
fn golden_covers_every_frame_variant() {
    let mut seen = [false; VARIANTS];
    for (frame, _) in golden() {
        seen[variant_index(&frame)] = true;
    }
    let missing: Vec<usize> = (0..VARIANTS).filter(|&i| !seen[i]).collect();
    assert!(
        missing.is_empty(),
        "variants without golden bytes: {missing:?}"
    );
}

#[test]
fn encoder_writes_the_golden_bytes_of_every_frame() {
    for (frame, hex) in golden() {
        let mut out = BytesMut::new();
        frame.encode(&mut out);
        assert_eq!(out.as_ref(), unhex(hex).as_slice(), "{frame:?}");
        assert_eq!(
            frame.to_bytes().as_ref(),
            unhex(hex).as_slice(),
            "{frame:?}"
        );
    }
}

#[test]
fn decoder_reads_the_golden_bytes_back_as_their_frame() {
    for (frame, hex) in golden() {
        let wire = unhex(hex);
        assert_eq!(
            Frame::decode(Bytes::copy_from_slice(&wire[4..])),
            Ok(frame.clone())
        );
        let mut decoder = FrameDecoder::new();
        decoder.push(&wire);
        assert_eq!(decoder.next_frame(), Ok(Some(frame)));
        assert_eq!(decoder.next_frame(), Ok(None));
    }
}

#[test]
fn decoder_reads_all_golden_frames_back_to_back() {
    let wire: Vec<u8> = golden().iter().flat_map(|(_, hex)| unhex(hex)).collect();
    let mut decoder = FrameDecoder::new();
    decoder.push(&wire);
    for (frame, _) in golden() {
        assert_eq!(decoder.next_frame(), Ok(Some(frame)));
    }
    assert_eq!(decoder.next_frame(), Ok(None));
}
