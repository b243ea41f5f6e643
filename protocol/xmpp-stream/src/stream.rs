//! Builders for the stream-level elements both ends write: headers,
//! features, SASL elements and stream errors.

use crate::condition::StreamCondition;
use crate::element::{Element, escape, push_attr};
use crate::ns;

/// The header a server answers with (RFC 6120 §4.7).
pub fn server_header(domain: &str, id: &str, to: Option<&str>, lang: Option<&str>) -> Vec<u8> {
    let mut out = b"<?xml version='1.0'?><stream:stream xmlns=\"jabber:client\" xmlns:stream=\"http://etherx.jabber.org/streams\"".to_vec();
    push_attr(&mut out, "id", id);
    push_attr(&mut out, "from", domain);
    if let Some(to) = to {
        push_attr(&mut out, "to", to);
    }
    push_attr(&mut out, "version", "1.0");
    push_attr(&mut out, "xml:lang", lang.unwrap_or("en"));
    out.push(b'>');
    out
}

/// The header a server answers an external component with (XEP-0114 §3):
/// the stream id the handshake hashes and, when the component's name is
/// known, that name as `from`. No version: the protocol has none.
pub fn component_header(id: &str, from: Option<&str>) -> Vec<u8> {
    let mut out = b"<?xml version='1.0'?><stream:stream xmlns=\"jabber:component:accept\" xmlns:stream=\"http://etherx.jabber.org/streams\"".to_vec();
    push_attr(&mut out, "id", id);
    if let Some(from) = from {
        push_attr(&mut out, "from", from);
    }
    out.push(b'>');
    out
}

/// The header a client opens with.
pub fn client_header(domain: &str, from: Option<&str>) -> Vec<u8> {
    let mut out = b"<?xml version='1.0'?><stream:stream xmlns=\"jabber:client\" xmlns:stream=\"http://etherx.jabber.org/streams\"".to_vec();
    push_attr(&mut out, "to", domain);
    if let Some(from) = from {
        push_attr(&mut out, "from", from);
    }
    push_attr(&mut out, "version", "1.0");
    push_attr(&mut out, "xml:lang", "en");
    out.push(b'>');
    out
}

/// Stream features before authentication: the SASL mechanisms (also as
/// SASL2 with Bind2, inline resumption and FAST if `sasl2` says so), in-band
/// registration if `register`, entity capabilities if `caps` (a `ver`).
pub fn features_sasl(
    mechanisms: &[&str],
    sasl2: Option<&crate::sasl2::FastFeature>,
    register: bool,
    caps: Option<&str>,
) -> Vec<u8> {
    let mut children = vec![mechanisms_element(mechanisms)];
    if let Some(fast) = sasl2 {
        children.push(crate::sasl2::authentication_feature(mechanisms, fast));
    }
    if register {
        // in-band registration (XEP-0077)
        children.push(Element::new("register", ns::REGISTER_FEATURE));
    }
    children.extend(caps.map(caps_element));
    features(children)
}

/// The server's entity capabilities (XEP-0115 §6.3) with `ver`.
fn caps_element(ver: &str) -> Element {
    Element::new("c", ns::CAPS)
        .with_attr("hash", "sha-1")
        .with_attr("node", CAPS_NODE)
        .with_attr("ver", ver)
}

/// The `node` of longlink's entity capabilities (XEP-0115).
pub const CAPS_NODE: &str = "https://longlink.invalid/caps";

fn mechanisms_element(mechanisms: &[&str]) -> Element {
    let mut mechs = Element::new("mechanisms", ns::SASL);
    for m in mechanisms {
        mechs = mechs.with_child(Element::new("mechanism", ns::SASL).with_text(*m));
    }
    mechs
}

/// Stream features after a SASL2 success that bound the stream (Bind2 or
/// an inline resumption): what a bound stream may still use — `<sm/>`
/// (with `sm`) while stream management is still off.
pub fn features_bound(sm: bool, caps: Option<&str>) -> Vec<u8> {
    let mut children = Vec::new();
    if sm {
        children.push(Element::new("sm", ns::SM));
    }
    children.extend([
        Element::new("csi", ns::CSI),
        Element::new("ver", ns::ROSTER_VER),
    ]);
    children.extend(caps.map(caps_element));
    features(children)
}

/// Stream features after authentication: resource binding.
pub fn features_bind(caps: Option<&str>) -> Vec<u8> {
    let mut children = vec![
        Element::new("bind", ns::BIND),
        Element::new("sm", ns::SM),
        Element::new("csi", ns::CSI),
        Element::new("ver", ns::ROSTER_VER),
    ];
    children.extend(caps.map(caps_element));
    features(children)
}

/// Stream features before TLS on a plain TCP stream: STARTTLS, required.
pub fn features_starttls() -> Vec<u8> {
    features(vec![
        Element::new("starttls", ns::TLS).with_child(Element::new("required", ns::TLS)),
    ])
}

/// A XEP-0198 nonza (`<r/>`, `<a h/>`, `<enable/>`...) with attributes.
pub fn sm_element(name: &str, attrs: &[(&str, &str)]) -> Vec<u8> {
    let mut el = Element::new(name, ns::SM);
    for (k, v) in attrs {
        el = el.with_attr(*k, *v);
    }
    el.to_bytes(ns::CLIENT)
}

/// `<failed xmlns='urn:xmpp:sm:3'>` with a stanza error condition (and `h` if known).
pub fn sm_failed(condition: &str, h: Option<u32>) -> Vec<u8> {
    let mut el =
        Element::new("failed", ns::SM).with_child(Element::new(condition, ns::STANZA_ERRORS));
    if let Some(h) = h {
        el = el.with_attr("h", h.to_string());
    }
    el.to_bytes(ns::CLIENT)
}

fn features(children: Vec<Element>) -> Vec<u8> {
    let mut out = b"<stream:features>".to_vec();
    for c in children {
        c.write_to(&mut out, ns::CLIENT);
    }
    out.extend_from_slice(b"</stream:features>");
    out
}

/// A stream error followed by the stream close.
pub fn stream_error(condition: StreamCondition, text: Option<&str>) -> Vec<u8> {
    let mut out = stream_error_element(condition, text, false);
    out.extend_from_slice(STREAM_CLOSE);
    out
}

/// The `<stream:error/>` element alone; `declare` adds the `stream` prefix
/// declaration (RFC 7395: every WebSocket message stands alone).
pub fn stream_error_element(
    condition: StreamCondition,
    text: Option<&str>,
    declare: bool,
) -> Vec<u8> {
    let mut out = b"<stream:error".to_vec();
    if declare {
        push_attr(&mut out, "xmlns:stream", ns::STREAMS);
    }
    out.extend_from_slice(b"><");
    out.extend_from_slice(condition.name().as_bytes());
    push_attr(&mut out, "xmlns", ns::STREAM_ERRORS);
    out.extend_from_slice(b"/>");
    if let Some(text) = text {
        out.extend_from_slice(b"<text xmlns=\"urn:ietf:params:xml:ns:xmpp-streams\">");
        out.extend_from_slice(escape(text).as_bytes());
        out.extend_from_slice(b"</text>");
    }
    out.extend_from_slice(b"</stream:error>");
    out
}

/// RFC 7395 `<open/>`, the WebSocket form of the server's stream header.
pub fn ws_open(domain: &str, id: &str, lang: Option<&str>) -> Vec<u8> {
    let mut out = b"<open".to_vec();
    push_attr(&mut out, "xmlns", ns::FRAMING);
    push_attr(&mut out, "id", id);
    push_attr(&mut out, "from", domain);
    push_attr(&mut out, "version", "1.0");
    push_attr(&mut out, "xml:lang", lang.unwrap_or("en"));
    out.extend_from_slice(b"/>");
    out
}

/// RFC 7395 `<close/>`, the WebSocket form of `</stream:stream>`.
pub const WS_CLOSE: &[u8] = b"<close xmlns=\"urn:ietf:params:xml:ns:xmpp-framing\"/>";

/// The stream close tag.
pub const STREAM_CLOSE: &[u8] = b"</stream:stream>";

/// A SASL element with optional base64 content (`auth`, `challenge`,
/// `response`, `success`).
pub fn sasl_element(name: &str, mechanism: Option<&str>, base64: Option<&str>) -> Vec<u8> {
    let mut el = Element::new(name, ns::SASL);
    if let Some(m) = mechanism {
        el = el.with_attr("mechanism", m);
    }
    match base64 {
        Some("") => el = el.with_text("="),
        Some(data) => el = el.with_text(data),
        None => {}
    }
    el.to_bytes(ns::CLIENT)
}

/// A SASL `<failure/>` with its condition (RFC 6120 §6.5).
pub fn sasl_failure(condition: &str, text: Option<&str>) -> Vec<u8> {
    let mut el = Element::new("failure", ns::SASL).with_child(Element::new(condition, ns::SASL));
    if let Some(text) = text {
        el = el.with_child(Element::new("text", ns::SASL).with_text(text));
    }
    el.to_bytes(ns::CLIENT)
}

/// An IQ result binding `jid`.
pub fn bind_result(id: &str, jid: &str) -> Vec<u8> {
    Element::new("iq", ns::CLIENT)
        .with_attr("type", "result")
        .with_attr("id", id)
        .with_child(
            Element::new("bind", ns::BIND).with_child(Element::new("jid", ns::BIND).with_text(jid)),
        )
        .to_bytes(ns::CLIENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framer::{FrameEvent, Framer, Limits};
    use crate::stanza::inspect;

    #[test]
    fn server_output_parses_with_our_own_framer() {
        let mut f = Framer::new(Limits::default());
        f.push(&client_header("example.org", None));
        assert!(matches!(f.next_event(), Ok(Some(FrameEvent::Open(_)))));
        let mut stream = server_header("example.org", "abc", Some("a@example.org"), None);
        stream.extend(features_sasl(
            &["SCRAM-SHA-256", "PLAIN"],
            Some(&crate::sasl2::FastFeature::default()),
            false,
            None,
        ));
        stream.extend(sasl_failure("not-authorized", Some("bad <password>")));
        stream.extend(stream_error(
            StreamCondition::PolicyViolation,
            Some("too big"),
        ));
        let mut f = Framer::new(Limits::default());
        f.push(&stream);
        let mut names = Vec::new();
        while let Some(ev) = f.next_event().unwrap() {
            if let FrameEvent::Element(raw) = ev {
                // stream:-prefixed elements need the header's declaration
                if !raw.starts_with(b"<stream:") {
                    names.push(inspect(&raw).unwrap().name);
                } else {
                    names.push("stream".into());
                }
            }
        }
        assert_eq!(names, ["stream", "failure", "stream"]);
    }
}
