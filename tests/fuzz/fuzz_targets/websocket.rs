//! The CM's WebSocket transport (RFC 7395) over an in-memory stream, as
//! its listener runs it after TLS: the HTTP upgrade, tungstenite's framing
//! with the listener's limits, and the translation of `<open/>` and
//! `<close/>` into the stream the session parses. The first octet picks:
//! the translation alone on one text message; a valid upgrade followed by
//! masked frames built from the input (opcode and flags octet, length
//! octet, payload); or the input as the raw client bytes.
//!
//! Checked: no message beyond the limit reaches the session; a translated
//! `<open/>` is a stream header that frames as one, attribute values and
//! all; anything else passes unchanged or is the stream's end.

#![no_main]

use std::sync::LazyLock;

use bytes::Bytes;
use cm_node::fuzzing::{ws_from_framing, ws_read_all};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xmpp_stream::framer::{FrameEvent, Framer, Limits};
use xmpp_stream::stream::STREAM_CLOSE;

/// A small stanza limit, so the fuzzer reaches it.
const MAX_STANZA: usize = 2048;

const UPGRADE: &[u8] = b"GET /xmpp HTTP/1.1\r\nHost: example.org\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: xmpp\r\n\r\n";

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
});

/// What the session gets for one text message `text`.
fn check_translation(text: &str, out: &Bytes) {
    if out[..] == text.as_bytes()[..] || out[..] == STREAM_CLOSE[..] {
        return;
    }
    assert!(
        out.starts_with(b"<stream:stream "),
        "translated into something else: {:?}",
        String::from_utf8_lossy(out)
    );
    let mut framer = Framer::new(Limits::default());
    framer.push(out);
    match framer.next_event() {
        Ok(Some(FrameEvent::Open(_))) => {}
        other => panic!(
            "translated <open/> is not a stream header ({other:?}): {:?}",
            String::from_utf8_lossy(out)
        ),
    }
    assert_eq!(framer.next_event().ok(), Some(None), "more than a header");
}

/// Masked client frames from `input`: per frame one octet of FIN, RSV and
/// opcode, one length octet (payload up to 255 octets, longer lengths
/// written with the 16-bit form), then the payload.
fn frames(mut input: &[u8]) -> Vec<u8> {
    let mut wire = Vec::with_capacity(input.len() * 2);
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    while let [head, len, rest @ ..] = input {
        let len = usize::from(*len).min(rest.len());
        let (payload, tail) = rest.split_at(len);
        wire.push(*head);
        if len < 126 {
            wire.push(0x80 | len as u8);
        } else {
            wire.push(0x80 | 126);
            wire.extend_from_slice(&(len as u16).to_be_bytes());
        }
        wire.extend_from_slice(&mask);
        wire.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        input = tail;
    }
    wire
}

/// Runs the listener's side on `client_bytes`, then the client hangs up.
fn run(client_bytes: Vec<u8>) {
    RUNTIME.block_on(async move {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let server = async move {
            let mut seen = 0usize;
            let _ = ws_read_all(server, MAX_STANZA, |chunk| {
                seen += 1;
                // (the translation may add a little to an <open/>)
                assert!(
                    chunk.len() <= MAX_STANZA + 1024 + 256,
                    "message beyond the limit"
                );
            })
            .await;
            seen
        };
        let client = async move {
            let _ = client.write_all(&client_bytes).await;
            let _ = client.shutdown().await;
            // read what the server says until it hangs up
            let mut sink = [0u8; 4096];
            while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        tokio::join!(server, client);
    });
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Ok(text) = std::str::from_utf8(input) {
                check_translation(text, &ws_from_framing(text));
            }
        }
        1 => {
            let mut bytes = UPGRADE.to_vec();
            bytes.extend(frames(input));
            run(bytes);
        }
        _ => run(input.to_vec()),
    }
});
