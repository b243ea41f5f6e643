//! The CM↔core frame decoder, fed the input in chunks whose sizes come from
//! the input's first octet: the frames (and the error) do not depend on the
//! chunking, and every decoded frame re-encodes to bytes that decode to it.

#![no_main]

use bytes::Bytes;
use cm_protocol::{DecodeError, Frame, FrameDecoder, MAX_FRAME};
use libfuzzer_sys::fuzz_target;

/// Every frame of `wire` pushed in chunks of the sizes `sizes` yields, and
/// the error that stopped decoding, if any.
fn decode_all(wire: &[u8], mut sizes: impl FnMut() -> usize) -> (Vec<Frame>, Option<DecodeError>) {
    let mut decoder = FrameDecoder::new();
    let mut frames = Vec::new();
    let mut pos = 0;
    while pos < wire.len() {
        let n = sizes().clamp(1, wire.len() - pos);
        decoder.push(&wire[pos..pos + n]);
        pos += n;
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

/// Encoding a decoded frame and decoding it again gives the same frame, and
/// nothing after it.
fn round_trip(frame: &Frame) {
    let wire = frame.to_bytes();
    assert!(
        wire.len() <= 4 + MAX_FRAME,
        "re-encoded frame grew past MAX_FRAME"
    );
    let mut decoder = FrameDecoder::new();
    decoder.push(&wire);
    assert_eq!(decoder.next_frame(), Ok(Some(frame.clone())));
    assert_eq!(decoder.next_frame(), Ok(None));
    assert_eq!(Frame::decode(wire.slice(4..)).as_ref(), Ok(frame));
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, wire)) = data.split_first() else {
        return;
    };
    // The input as one frame body.
    if let Ok(frame) = Frame::decode(Bytes::copy_from_slice(wire)) {
        round_trip(&frame);
    }
    // The input as a stream, at once and in chunks.
    let whole = decode_all(wire, || usize::MAX);
    let mut state = u32::from(seed) | 0x100;
    let chunked = decode_all(wire, || {
        // xorshift: chunk sizes 1..=64, or large ones now and then
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        if state % 8 == 0 {
            4096
        } else {
            (state % 64) as usize + 1
        }
    });
    assert_eq!(whole, chunked, "chunking changed what was decoded");
    for frame in &whole.0 {
        round_trip(frame);
    }
});
