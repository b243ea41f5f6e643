//! The XMPP stream layer's per-byte and per-stanza costs:
//! (a) `Framer` framing one buffer holding a client stream header followed by
//! 1000 concatenated ~150-byte chat messages (push it all, pull every event);
//! (b) `stanza::inspect` plus `stanza::stamp_from` on one ~150-byte message,
//! which is what the CM does to every stanza a client sends.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use xmpp_stream::framer::{FrameEvent, Framer, Limits};
use xmpp_stream::stanza::{inspect, stamp_from};

const HEADER: &[u8] = b"<stream:stream xmlns='jabber:client' \
xmlns:stream='http://etherx.jabber.org/streams' to='example.org' version='1.0'>";
const MESSAGES: usize = 1000;
const MESSAGE_LEN: usize = 150;

/// A chat message of exactly [`MESSAGE_LEN`] bytes.
fn message(i: usize) -> Vec<u8> {
    let close = b"</body></message>";
    let mut m =
        format!("<message to='bob@example.org' type='chat' id='m{i:06}'><body>").into_bytes();
    let fill = MESSAGE_LEN - m.len() - close.len();
    m.extend((0..fill).map(|j| b'a' + (j % 26) as u8));
    m.extend_from_slice(close);
    assert_eq!(m.len(), MESSAGE_LEN);
    m
}

fn framer(c: &mut Criterion) {
    let mut stream = HEADER.to_vec();
    for i in 0..MESSAGES {
        stream.extend_from_slice(&message(i));
    }

    let mut group = c.benchmark_group("xmpp_stream/framer");
    group.throughput(Throughput::Elements(MESSAGES as u64));
    group.bench_function(BenchmarkId::new("messages", MESSAGES), |b| {
        b.iter(|| {
            let mut framer = Framer::new(Limits::default());
            framer.push(black_box(&stream));
            let mut elements = 0usize;
            while let Some(event) = framer.next_event().unwrap() {
                if let FrameEvent::Element(raw) = event {
                    black_box(&raw);
                    elements += 1;
                }
            }
            assert_eq!(elements, MESSAGES);
            elements
        })
    });
    group.finish();
    eprintln!(
        "xmpp_stream/framer: {} bytes per batch ({} messages of {} bytes + header)",
        stream.len(),
        MESSAGES,
        MESSAGE_LEN
    );
}

fn stanza(c: &mut Criterion) {
    let raw = message(42);

    let mut group = c.benchmark_group("xmpp_stream/stanza");
    group.throughput(Throughput::Elements(1));
    group.bench_function("inspect+stamp_from", |b| {
        b.iter(|| {
            let top = inspect(black_box(&raw)).unwrap();
            stamp_from(&raw, &top, "alice@example.org/phone")
        })
    });
    group.bench_function("inspect", |b| b.iter(|| inspect(black_box(&raw)).unwrap()));
    group.finish();
}

criterion_group!(benches, framer, stanza);
criterion_main!(benches);
