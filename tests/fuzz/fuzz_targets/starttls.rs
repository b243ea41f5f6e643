//! The CM's pre-TLS negotiation (sans-IO) on arbitrary client bytes, pushed
//! in chunks whose sizes come from the input's first octet. It must end in
//! a TLS start or a close (each the last step, once), say nothing after
//! that, and everything it writes must be a well-formed stream the client
//! can frame: its header, elements, and the stream's end only last.

#![no_main]

use cm_node::starttls::{StartTls, Step};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use xmpp_stream::element::Element;
use xmpp_stream::framer::{FrameEvent, Framer, Limits};

/// Most bytes the server writes before TLS (header, features or an error).
const MAX_WRITTEN: usize = 16 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let mut negotiation = StartTls::new("example.org", SmallRng::seed_from_u64(7));
    let mut written = Vec::new();
    let mut end = None;
    let mut state = u32::from(seed) | 0x100;
    let mut pos = 0;
    while pos < input.len() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = ((state % 97) as usize + 1).min(input.len() - pos);
        let steps = negotiation.on_data(&input[pos..pos + n]);
        pos += n;
        if end.is_some() {
            assert!(steps.is_empty(), "steps after the end: {steps:?}");
            continue;
        }
        let last = steps.len().saturating_sub(1);
        for (i, step) in steps.into_iter().enumerate() {
            match step {
                Step::Write(bytes) => {
                    assert!(!bytes.is_empty());
                    written.extend_from_slice(&bytes);
                }
                step @ (Step::StartTls | Step::Close) => {
                    assert_eq!(i, last, "{step:?} is not the last step");
                    end = Some(step);
                }
            }
        }
        assert!(written.len() <= MAX_WRITTEN, "the server wrote too much");
    }

    // What the server wrote frames as one stream.
    let mut framer = Framer::new(Limits::default());
    framer.push(&written);
    let mut opened = false;
    let mut closed = false;
    let mut elements = Vec::new();
    loop {
        match framer.next_event() {
            Ok(Some(FrameEvent::Open(_))) => {
                assert!(!opened, "two stream headers");
                opened = true;
            }
            Ok(Some(FrameEvent::Element(raw))) => {
                assert!(opened && !closed);
                let el = Element::parse_in_stream(&raw).unwrap_or_else(|e| {
                    panic!(
                        "unparsable element ({e}): {:?}",
                        String::from_utf8_lossy(&raw)
                    )
                });
                elements.push(el);
            }
            Ok(Some(FrameEvent::Close)) => {
                assert!(opened && !closed);
                closed = true;
            }
            Ok(None) => break,
            Err(e) => panic!(
                "the server wrote a malformed stream ({e}): {:?}",
                String::from_utf8_lossy(&written)
            ),
        }
    }
    match end {
        Some(Step::StartTls) => {
            assert!(!closed);
            let names: Vec<&str> = elements.iter().map(|e| e.name.as_str()).collect();
            assert_eq!(
                names,
                ["features", "proceed"],
                "TLS starts only after <proceed/>"
            );
        }
        Some(Step::Close) => {
            assert!(closed, "closed without ending the stream");
        }
        _ => assert!(!closed),
    }
});
