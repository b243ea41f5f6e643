//! Encoding and decoding of CM↔core `Frame::Stanza` frames (150-byte
//! payload, full routing header), in batches of 1000 frames: `Frame::encode`
//! into one buffer, then `FrameDecoder::push` of that buffer and
//! `next_frame` until it is drained.

use bytes::{Bytes, BytesMut};
use cm_protocol::{Frame, FrameDecoder, Kind, RouteHeader};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

const BATCH: usize = 1000;
const PAYLOAD_LEN: usize = 150;

fn stanza_frame(sid: u64) -> Frame {
    let mut payload = format!(
        "<message from='alice@example.org/phone' to='bob@example.org' type='chat' id='m{sid:08}'><body>"
    )
    .into_bytes();
    payload.resize(PAYLOAD_LEN - "</body></message>".len(), b'x');
    payload.extend_from_slice(b"</body></message>");
    assert_eq!(payload.len(), PAYLOAD_LEN);
    Frame::Stanza {
        sid,
        header: RouteHeader {
            kind: Kind::Message,
            stanza_type: Some("chat".to_owned()),
            to: Some("bob@example.org".to_owned()),
            id: Some(format!("m{sid:08}")),
            from: "alice@example.org/phone".to_owned(),
        },
        payload: Bytes::from(payload),
    }
}

fn encode_all(frames: &[Frame], out: &mut BytesMut) {
    for frame in frames {
        frame.encode(out);
    }
}

fn frames(c: &mut Criterion) {
    let batch: Vec<Frame> = (0..BATCH as u64)
        .map(|sid| stanza_frame(1000 + sid))
        .collect();
    let mut wire = BytesMut::new();
    encode_all(&batch, &mut wire);
    let wire = wire.freeze();

    let mut group = c.benchmark_group("cm_protocol/stanza_frame");

    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(BenchmarkId::new("encode", BATCH), |b| {
        let mut out = BytesMut::with_capacity(wire.len());
        b.iter(|| {
            out.clear();
            encode_all(black_box(&batch), &mut out);
            black_box(out.len())
        })
    });
    group.bench_function(BenchmarkId::new("decode", BATCH), |b| {
        b.iter(|| {
            let mut decoder = FrameDecoder::new();
            decoder.push(black_box(&wire));
            let mut n = 0usize;
            while let Some(frame) = decoder.next_frame().unwrap() {
                black_box(&frame);
                n += 1;
            }
            assert_eq!(n, BATCH);
            n
        })
    });

    group.finish();
}

criterion_group!(benches, frames);
criterion_main!(benches);
