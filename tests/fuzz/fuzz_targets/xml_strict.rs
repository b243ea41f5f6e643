//! Differential: whatever the CM accepts from a client and relays, a strict
//! XML parser accepts.
//!
//! The input is a client's byte stream after its stream header. It goes
//! through the CM's path: the [`Framer`] cuts it into elements, each is
//! inspected ([`inspect`]) and, if it is a stanza, stamped with the bound
//! JID with forged server claims cut ([`stamp_from_unforged`]), as
//! `cm-node`'s relay does. Every element accepted, as it came and as it
//! would be relayed, must then parse with roxmltree inside a stream-like
//! root declaring `jabber:client` and the `stream:` prefix, as the
//! recipient's parser sees it. So must every accepted stanza as the core
//! rewrites it from its tree ([`Element::parse`], [`Element::to_bytes`]),
//! as it does to strip stanza-ids or store a vCard.

#![no_main]

use libfuzzer_sys::fuzz_target;
use xmpp_stream::Element;
use xmpp_stream::framer::{FrameEvent, Framer, Limits};
use xmpp_stream::stanza::{inspect, stamp_from_unforged};

const HEADER: &[u8] = b"<stream:stream xmlns='jabber:client' \
xmlns:stream='http://etherx.jabber.org/streams' to='example.org' version='1.0'>";

/// Panics unless `element` parses strictly as the child of a client stream.
fn strict(element: &[u8], what: &str) {
    let mut doc = Vec::with_capacity(element.len() + 128);
    doc.extend_from_slice(
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
    );
    doc.extend_from_slice(element);
    doc.extend_from_slice(b"</stream:stream>");
    let text = std::str::from_utf8(&doc)
        .unwrap_or_else(|e| panic!("{what} is not UTF-8 ({e}): {element:?}"));
    let options = roxmltree::ParsingOptions {
        allow_dtd: false,
        ..roxmltree::ParsingOptions::default()
    };
    if let Err(e) = roxmltree::Document::parse_with_options(text, options) {
        panic!("{what} accepted by the CM, refused by a strict parser ({e}): {text}");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut framer = Framer::new(Limits {
        max_stanza_bytes: 16 * 1024,
        ..Limits::default()
    });
    framer.push(HEADER);
    // the first byte says where to split the rest into two reads (to vary
    // the framing); the rest is the client's stream after its header
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let (a, b) = data.split_at((split as usize).min(data.len()));
    for read in [a, b] {
        framer.push(read);
        loop {
            match framer.next_event() {
                Ok(Some(FrameEvent::Element(raw))) => {
                    let Ok(top) = inspect(&raw) else { return };
                    strict(&raw, "element");
                    if let Ok(tree) = Element::parse(&raw, "jabber:client") {
                        strict(
                            &tree.to_bytes("jabber:client"),
                            "element rewritten by the core",
                        );
                    }
                    if top.header().is_some() {
                        let relayed = stamp_from_unforged(
                            &raw,
                            &top,
                            "alice@example.org/phone",
                            "example.org",
                        );
                        strict(&relayed, "relayed stanza");
                        // and what the relay wrote is read back the same
                        let again = inspect(&relayed).expect("relayed stanza inspects");
                        assert_eq!(again.name, top.name);
                        assert!(again.claims.iter().all(|c| !c.forged_for("example.org")));
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
