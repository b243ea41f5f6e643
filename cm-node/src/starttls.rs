//! RFC 6120 §5 on a plain TCP connection, sans-IO: the stream header, then
//! features offering only `<starttls/>` (required), then `<proceed/>`.
//! Nothing else is accepted before TLS: no authentication in the clear.
//! Stream ids come from a generator the driver seeds.

use rand::RngCore;
use rand::rngs::SmallRng;
use xmpp_stream::framer::{FrameEvent, Framer, Limits};
use xmpp_stream::stanza::inspect;
use xmpp_stream::{StreamCondition, ns, stream};

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Write these bytes.
    Write(Vec<u8>),
    /// `<proceed/>` was written: start the TLS handshake now; the client
    /// opens a new stream over TLS.
    StartTls,
    /// Close the connection (after the writes).
    Close,
}

/// The pre-TLS negotiation of one connection.
pub struct StartTls {
    domain: String,
    /// Stream ids.
    rng: SmallRng,
    framer: Framer,
    opened: bool,
    done: bool,
}

impl StartTls {
    /// A negotiation for `domain`; `rng` makes the stream id.
    pub fn new(domain: &str, rng: SmallRng) -> Self {
        Self {
            domain: domain.to_owned(),
            rng,
            // nothing legitimate before TLS is large
            framer: Framer::new(Limits {
                max_stanza_bytes: 4096,
                ..Limits::default()
            }),
            opened: false,
            done: false,
        }
    }

    /// Bytes from the client.
    pub fn on_data(&mut self, data: &[u8]) -> Vec<Step> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        self.framer.push(data);
        while !self.done {
            match self.framer.next_event() {
                Ok(None) => break,
                Ok(Some(FrameEvent::Open(header))) if !self.opened => {
                    self.opened = true;
                    let id = format!("{:016x}", self.rng.next_u64());
                    let mut bytes =
                        stream::server_header(&self.domain, &id, None, header.lang.as_deref());
                    if !header
                        .to
                        .as_deref()
                        .is_some_and(|to| to.eq_ignore_ascii_case(&self.domain))
                    {
                        bytes.extend(stream::stream_error(
                            StreamCondition::HostUnknown,
                            Some("this server does not serve that domain"),
                        ));
                        return self.end(out, bytes);
                    }
                    bytes.extend(stream::features_starttls());
                    out.push(Step::Write(bytes));
                }
                Ok(Some(FrameEvent::Element(raw))) => {
                    let is_starttls =
                        inspect(&raw).is_ok_and(|top| top.ns == ns::TLS && top.name == "starttls");
                    if is_starttls {
                        self.done = true;
                        let proceed = xmpp_stream::element::Element::new("proceed", ns::TLS);
                        out.push(Step::Write(proceed.to_bytes(ns::CLIENT)));
                        out.push(Step::StartTls);
                    } else {
                        let bytes = stream::stream_error(
                            StreamCondition::PolicyViolation,
                            Some("TLS is required: send <starttls/> first"),
                        );
                        return self.end(out, bytes);
                    }
                }
                Ok(Some(FrameEvent::Open(_))) | Ok(Some(FrameEvent::Close)) => {
                    return self.end(out, stream::STREAM_CLOSE.to_vec());
                }
                Err(e) => {
                    let mut bytes = Vec::new();
                    if !self.opened {
                        let id = format!("{:016x}", self.rng.next_u64());
                        bytes = stream::server_header(&self.domain, &id, None, None);
                    }
                    bytes.extend(stream::stream_error(e.condition, Some(&e.text)));
                    return self.end(out, bytes);
                }
            }
        }
        out
    }

    fn end(&mut self, mut out: Vec<Step>, bytes: Vec<u8>) -> Vec<Step> {
        self.done = true;
        out.push(Step::Write(bytes));
        out.push(Step::Close);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn negotiation() -> StartTls {
        StartTls::new("x", SmallRng::seed_from_u64(1))
    }

    const HEADER: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='x' version='1.0' xml:lang='de'>";

    fn text(steps: &[Step]) -> String {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Write(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn offers_required_starttls_and_proceeds() {
        let mut n = negotiation();
        let steps = n.on_data(HEADER);
        let t = text(&steps);
        assert!(
            t.contains("xml:lang=\"de\"") || t.contains("xml:lang='de'"),
            "{t}"
        );
        assert!(
            t.contains(
                "<starttls xmlns=\"urn:ietf:params:xml:ns:xmpp-tls\"><required/></starttls>"
            ),
            "{t}"
        );
        assert!(!t.contains("mechanisms"), "no SASL before TLS: {t}");
        // whitespace keep-alives are fine
        assert!(n.on_data(b"  \n").is_empty());
        let steps = n.on_data(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        assert!(text(&steps).contains("<proceed"));
        assert_eq!(steps.last(), Some(&Step::StartTls));
    }

    #[test]
    fn anything_but_starttls_is_refused() {
        let mut n = negotiation();
        n.on_data(HEADER);
        let steps = n.on_data(
            b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>",
        );
        assert!(text(&steps).contains("policy-violation"));
        assert_eq!(steps.last(), Some(&Step::Close));
        let mut n = negotiation();
        let steps = n.on_data(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='other' version='1.0'>");
        assert!(text(&steps).contains("host-unknown"));
        let mut n = negotiation();
        let steps = n.on_data(b"<<<garbage");
        assert!(text(&steps).contains("<stream:error>"));
        assert_eq!(steps.last(), Some(&Step::Close));
    }

    #[test]
    fn the_same_seed_gives_the_same_stream_id() {
        let header = |seed| {
            let mut n = StartTls::new("x", SmallRng::seed_from_u64(seed));
            text(&n.on_data(HEADER))
        };
        assert_eq!(header(5), header(5));
        assert_ne!(header(5), header(6));
    }
}
