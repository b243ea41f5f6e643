//! Incremental framing and policing of an inbound XMPP stream.
//!
//! [`Framer`] is sans-IO: push the bytes read from the peer, then pull
//! [`FrameEvent`]s. It never builds a tree. A cheap byte scanner finds where
//! the stream header, each complete top-level element and the stream close
//! end, enforcing on the way:
//!
//! - a maximum element size (exact: an element one byte larger is refused
//!   even when it begins and ends within one read) and nesting depth
//!   ([`Limits`]),
//! - restricted XML (RFC 6120 §11.1): no comments, DTDs, entity declarations
//!   or processing instructions (only the XML declaration before the header),
//! - only whitespace between top-level elements (keep-alives are tolerated).
//!
//! Each complete element is then checked strictly
//! ([`crate::wellformed`]) and read by quick-xml
//! ([`crate::stanza::inspect`]) before anyone uses it.

use bytes::{Buf, Bytes, BytesMut};
use quick_xml::events::Event;

use crate::condition::StreamCondition;
use crate::ns;

/// Limits applied to one inbound stream.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest top-level element, in bytes.
    pub max_stanza_bytes: usize,
    /// Deepest element nesting inside a stanza (the stanza itself is depth 1).
    pub max_depth: usize,
    /// Largest stream header (plus XML declaration), in bytes.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_stanza_bytes: 64 * 1024,
            max_depth: 24,
            max_header_bytes: 4096,
        }
    }
}

/// A stream violation: the stream must end with this stream error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{condition}: {text}")]
pub struct FramingError {
    /// The stream error condition to send.
    pub condition: StreamCondition,
    /// A human-readable explanation (also sent as the error text).
    pub text: String,
}

impl FramingError {
    /// Builds an error.
    pub fn new(condition: StreamCondition, text: impl Into<String>) -> Self {
        Self {
            condition,
            text: text.into(),
        }
    }
}

/// The attributes of a peer's `<stream:stream>` header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamHeader {
    /// `to`: the domain the peer wants.
    pub to: Option<String>,
    /// `from`: the peer's claimed address.
    pub from: Option<String>,
    /// `id`: set by the receiving entity (servers' headers).
    pub id: Option<String>,
    /// `version`.
    pub version: Option<String>,
    /// `xml:lang`.
    pub lang: Option<String>,
}

/// What the framer found in the byte stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameEvent {
    /// A stream header was opened.
    Open(StreamHeader),
    /// One complete top-level element (stanza or nonza), raw bytes, not yet validated.
    Element(Bytes),
    /// The peer closed the stream (`</stream:stream>`).
    Close,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scan {
    /// Between tags.
    Text,
    /// After `<`.
    Lt,
    /// Inside a tag; `quote` is the open quote or 0, `last` the previous byte outside quotes.
    Tag { end: bool, quote: u8, last: u8 },
    /// After `<!`: only `[CDATA[` may follow.
    Bang { matched: usize },
    /// Inside CDATA; `brackets` counts trailing `]`.
    Cdata { brackets: u8 },
    /// Inside the XML declaration.
    Decl { question: bool },
}

const CDATA_OPEN: &[u8] = b"[CDATA[";

/// Which XML streams a [`Framer`] reads: what the peer's stream header
/// must declare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// A client's stream (RFC 6120): `jabber:client`, version 1.0.
    Client,
    /// An external component's stream (XEP-0114):
    /// `jabber:component:accept`, any version or none (the protocol
    /// predates stream versions, and components send none).
    ComponentAccept,
}

/// Incremental framer for one inbound XML stream (see the module docs).
#[derive(Debug)]
pub struct Framer {
    limits: Limits,
    kind: StreamKind,
    buf: BytesMut,
    /// Bytes of `buf` already scanned.
    scanned: usize,
    state: Scan,
    /// 0 before the header, 1 between stanzas, 2+ inside a stanza.
    depth: usize,
    /// Offset of the `<` of the tag being scanned.
    tag_start: usize,
    /// Offset of the `<` of the current top-level element.
    elem_start: usize,
    closed: bool,
}

impl Framer {
    /// A framer expecting a client's stream header.
    pub fn new(limits: Limits) -> Self {
        Self::for_stream(StreamKind::Client, limits)
    }

    /// A framer expecting the stream header of `kind`; the same limits and
    /// checks apply to what follows whatever the kind.
    pub fn for_stream(kind: StreamKind, limits: Limits) -> Self {
        Self {
            limits,
            kind,
            buf: BytesMut::new(),
            scanned: 0,
            state: Scan::Text,
            depth: 0,
            tag_start: 0,
            elem_start: 0,
            closed: false,
        }
    }

    /// Appends bytes read from the peer.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered but not yet returned as events.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Releases the buffer's memory when nothing is pending (idle sessions).
    pub fn shrink(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
    }

    /// Expects a new stream header (after SASL success), keeping unread bytes.
    pub fn restart(&mut self) {
        self.buf.advance(self.consumed_prefix());
        self.scanned = 0;
        self.state = Scan::Text;
        self.depth = 0;
        self.tag_start = 0;
        self.elem_start = 0;
    }

    fn consumed_prefix(&self) -> usize {
        if self.state == Scan::Text && self.depth <= 1 {
            self.scanned
        } else {
            0
        }
    }

    /// Returns the next complete event, `Ok(None)` when more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<FrameEvent>, FramingError> {
        if self.closed {
            return Ok(None);
        }
        while self.scanned < self.buf.len() {
            let b = self.buf[self.scanned];
            match self.state {
                Scan::Text => {
                    if self.depth >= 2 {
                        match memchr(b'<', &self.buf[self.scanned..]) {
                            Some(i) => {
                                self.scanned += i;
                                self.tag_start = self.scanned;
                                self.state = Scan::Lt;
                            }
                            None => {
                                self.scanned = self.buf.len();
                                continue;
                            }
                        }
                    } else if b == b'<' {
                        self.tag_start = self.scanned;
                        if self.depth == 1 {
                            self.elem_start = self.scanned;
                        }
                        self.state = Scan::Lt;
                    } else if !is_xml_space(b) {
                        return Err(FramingError::new(
                            StreamCondition::NotWellFormed,
                            "text outside of a stanza",
                        ));
                    }
                }
                Scan::Lt => match b {
                    b'/' => {
                        self.state = Scan::Tag {
                            end: true,
                            quote: 0,
                            last: b,
                        }
                    }
                    b'!' => self.state = Scan::Bang { matched: 0 },
                    b'?' if self.depth == 0 => self.state = Scan::Decl { question: false },
                    b'?' => {
                        return Err(FramingError::new(
                            StreamCondition::RestrictedXml,
                            "processing instructions are not allowed",
                        ));
                    }
                    _ => {
                        self.state = Scan::Tag {
                            end: false,
                            quote: 0,
                            last: b'<',
                        };
                        continue; // re-scan this byte as part of the tag
                    }
                },
                Scan::Tag { end, quote, last } => {
                    if quote != 0 {
                        if b == quote {
                            self.state = Scan::Tag {
                                end,
                                quote: 0,
                                last: b,
                            };
                        }
                    } else if b == b'"' || b == b'\'' {
                        self.state = Scan::Tag {
                            end,
                            quote: b,
                            last: b,
                        };
                    } else if b == b'>' {
                        self.state = Scan::Text;
                        if let Some(event) = self.tag_complete(end, last == b'/')? {
                            return Ok(Some(event));
                        }
                    } else if b == b'<' {
                        return Err(FramingError::new(
                            StreamCondition::NotWellFormed,
                            "'<' inside a tag",
                        ));
                    } else {
                        self.state = Scan::Tag {
                            end,
                            quote: 0,
                            last: b,
                        };
                    }
                }
                Scan::Bang { matched } => {
                    if b != CDATA_OPEN[matched] || self.depth < 2 {
                        return Err(FramingError::new(
                            StreamCondition::RestrictedXml,
                            "comments, DTDs and entity declarations are not allowed",
                        ));
                    }
                    self.state = if matched + 1 == CDATA_OPEN.len() {
                        Scan::Cdata { brackets: 0 }
                    } else {
                        Scan::Bang {
                            matched: matched + 1,
                        }
                    };
                }
                Scan::Cdata { brackets } => {
                    self.state = match b {
                        b']' => Scan::Cdata {
                            brackets: (brackets + 1).min(2),
                        },
                        b'>' if brackets == 2 => Scan::Text,
                        _ => Scan::Cdata { brackets: 0 },
                    };
                }
                Scan::Decl { question } => {
                    if question && b == b'>' {
                        if !self.buf[self.tag_start..].starts_with(b"<?xml") {
                            return Err(FramingError::new(
                                StreamCondition::RestrictedXml,
                                "processing instructions are not allowed",
                            ));
                        }
                        self.state = Scan::Text;
                    } else {
                        self.state = Scan::Decl {
                            question: b == b'?',
                        };
                    }
                }
            }
            self.scanned += 1;
        }
        self.check_limits()?;
        // Drop whitespace scanned between elements so keep-alives never accumulate.
        let done = self.consumed_prefix();
        if done > 0 {
            self.buf.advance(done);
            self.scanned -= done;
        }
        Ok(None)
    }

    fn check_limits(&self) -> Result<(), FramingError> {
        let in_element = self.depth >= 2 || (self.depth == 1 && self.state != Scan::Text);
        if in_element && self.buf.len() - self.elem_start > self.limits.max_stanza_bytes {
            return Err(stanza_too_large(&self.limits));
        }
        if self.depth == 0 && self.buf.len() > self.limits.max_header_bytes {
            return Err(FramingError::new(
                StreamCondition::PolicyViolation,
                "stream header too large",
            ));
        }
        Ok(())
    }

    /// A tag ended at `self.scanned` (the `>`).
    fn tag_complete(&mut self, end: bool, empty: bool) -> Result<Option<FrameEvent>, FramingError> {
        let tag_end = self.scanned + 1;
        if end {
            match self.depth {
                0 => {
                    return Err(FramingError::new(
                        StreamCondition::NotWellFormed,
                        "end tag before the stream header",
                    ));
                }
                1 => {
                    let tag = &self.buf[self.tag_start..tag_end];
                    if trim_end_tag(tag) != b"</stream:stream" {
                        return Err(FramingError::new(
                            StreamCondition::NotWellFormed,
                            "unexpected end tag at stream level",
                        ));
                    }
                    self.consume(tag_end);
                    self.depth = 0;
                    self.closed = true;
                    return Ok(Some(FrameEvent::Close));
                }
                2 => {
                    self.depth = 1;
                    return self.take_element(tag_end).map(Some);
                }
                _ => self.depth -= 1,
            }
            return Ok(None);
        }
        match self.depth {
            0 => {
                if empty {
                    return Err(FramingError::new(
                        StreamCondition::NotWellFormed,
                        "empty stream header",
                    ));
                }
                if tag_end > self.limits.max_header_bytes {
                    return Err(FramingError::new(
                        StreamCondition::PolicyViolation,
                        "stream header too large",
                    ));
                }
                let header = parse_header(&self.buf[self.tag_start..tag_end], self.kind)?;
                self.consume(tag_end);
                self.depth = 1;
                Ok(Some(FrameEvent::Open(header)))
            }
            1 if empty => self.take_element(tag_end).map(Some),
            _ if empty => Ok(None),
            _ => {
                self.depth += 1;
                if self.depth - 1 > self.limits.max_depth {
                    return Err(FramingError::new(
                        StreamCondition::PolicyViolation,
                        format!("elements nested deeper than {}", self.limits.max_depth),
                    ));
                }
                Ok(None)
            }
        }
    }

    /// The element ending at `end`, unless it is larger than allowed
    /// (checked here too: it may have begun and ended in one read).
    fn take_element(&mut self, end: usize) -> Result<FrameEvent, FramingError> {
        let start = self.elem_start;
        if end - start > self.limits.max_stanza_bytes {
            return Err(stanza_too_large(&self.limits));
        }
        let chunk = self.consume(end);
        Ok(FrameEvent::Element(chunk.slice(start..)))
    }

    fn consume(&mut self, end: usize) -> Bytes {
        let chunk = self.buf.split_to(end).freeze();
        self.scanned = 0;
        self.tag_start = 0;
        self.elem_start = 0;
        chunk
    }
}

fn stanza_too_large(limits: &Limits) -> FramingError {
    FramingError::new(
        StreamCondition::PolicyViolation,
        format!("stanza larger than {} bytes", limits.max_stanza_bytes),
    )
}

fn trim_end_tag(tag: &[u8]) -> &[u8] {
    let mut t = &tag[..tag.len() - 1];
    while let Some((last, rest)) = t.split_last() {
        if is_xml_space(*last) {
            t = rest;
        } else {
            break;
        }
    }
    t
}

fn is_xml_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

/// Parses and checks a `<stream:stream ...>` start tag of a `kind` stream.
fn parse_header(tag: &[u8], kind: StreamKind) -> Result<StreamHeader, FramingError> {
    let bad = |text: &str| FramingError::new(StreamCondition::NotWellFormed, text);
    std::str::from_utf8(tag).map_err(|_| bad("stream header is not UTF-8"))?;
    let mut reader = quick_xml::Reader::from_reader(tag);
    reader.config_mut().check_end_names = false;
    let start = match reader.read_event() {
        Ok(Event::Start(start)) => start,
        _ => return Err(bad("malformed stream header")),
    };
    if start.name().as_ref() != b"stream:stream" {
        return Err(FramingError::new(
            StreamCondition::InvalidNamespace,
            "the stream root must be stream:stream",
        ));
    }
    let mut header = StreamHeader::default();
    let (mut default_ns, mut stream_ns) = (None, None);
    for attr in start.attributes().with_checks(true) {
        let attr = attr.map_err(|_| bad("malformed attribute in stream header"))?;
        let value = attr
            .unescape_value()
            .map_err(|_| bad("malformed attribute value in stream header"))?
            .into_owned();
        match attr.key.as_ref() {
            b"to" => header.to = Some(value),
            b"from" => header.from = Some(value),
            b"id" => header.id = Some(value),
            b"version" => header.version = Some(value),
            b"xml:lang" => header.lang = Some(value),
            b"xmlns" => default_ns = Some(value),
            b"xmlns:stream" => stream_ns = Some(value),
            _ => {}
        }
    }
    let (content_ns, expected) = match kind {
        StreamKind::Client => (
            ns::CLIENT,
            "expected jabber:client and the streams namespace",
        ),
        StreamKind::ComponentAccept => (
            ns::COMPONENT_ACCEPT,
            "expected jabber:component:accept and the streams namespace",
        ),
    };
    if stream_ns.as_deref() != Some(ns::STREAMS) || default_ns.as_deref() != Some(content_ns) {
        return Err(FramingError::new(
            StreamCondition::InvalidNamespace,
            expected,
        ));
    }
    if kind == StreamKind::ComponentAccept {
        return Ok(header);
    }
    let major = header
        .version
        .as_deref()
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok());
    if major != Some(1) {
        return Err(FramingError::new(
            StreamCondition::UnsupportedVersion,
            "only XMPP version 1.0 is supported",
        ));
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' to='example.org' version='1.0' xml:lang='en'>";

    fn events(framer: &mut Framer) -> Result<Vec<FrameEvent>, FramingError> {
        let mut out = Vec::new();
        while let Some(ev) = framer.next_event()? {
            out.push(ev);
        }
        Ok(out)
    }

    fn opened() -> Framer {
        let mut f = Framer::new(Limits::default());
        f.push(HEADER.as_bytes());
        let evs = events(&mut f).unwrap();
        assert!(
            matches!(&evs[..], [FrameEvent::Open(h)] if h.to.as_deref() == Some("example.org"))
        );
        f
    }

    #[test]
    fn frames_stanzas_fed_byte_by_byte() {
        let mut f = opened();
        let input = " <message to='a@b'><body>x &amp; y &gt; <![CDATA[ <not a tag> ]]></body></message>\n<presence/><iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq></stream:stream>";
        let mut got = Vec::new();
        for b in input.as_bytes() {
            f.push(std::slice::from_ref(b));
            got.extend(events(&mut f).unwrap());
        }
        assert_eq!(
            got,
            vec![
                FrameEvent::Element(Bytes::from_static(
                    b"<message to='a@b'><body>x &amp; y &gt; <![CDATA[ <not a tag> ]]></body></message>"
                )),
                FrameEvent::Element(Bytes::from_static(b"<presence/>")),
                FrameEvent::Element(Bytes::from_static(
                    b"<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>"
                )),
                FrameEvent::Close,
            ]
        );
    }

    #[test]
    fn quoted_gt_and_slash_do_not_end_tags() {
        let mut f = opened();
        f.push(b"<message to='a/b>c' id=\"x/\"><body/></message>");
        let evs = events(&mut f).unwrap();
        assert_eq!(evs.len(), 1);
    }

    #[test]
    fn whitespace_keepalives_do_not_accumulate() {
        let mut f = opened();
        for _ in 0..10_000 {
            f.push(b" \n");
            assert!(events(&mut f).unwrap().is_empty());
        }
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn rejects_oversized_stanza() {
        let mut f = Framer::new(Limits {
            max_stanza_bytes: 100,
            ..Limits::default()
        });
        f.push(HEADER.as_bytes());
        events(&mut f).unwrap();
        f.push(b"<message><body>");
        f.push(&[b'a'; 200]);
        let err = events(&mut f).unwrap_err();
        assert_eq!(err.condition, StreamCondition::PolicyViolation);
    }

    #[test]
    fn the_stanza_size_limit_is_exact_even_when_the_element_completes_in_one_read() {
        let limit = 100;
        let framer = || {
            let mut f = Framer::new(Limits {
                max_stanza_bytes: limit,
                ..Limits::default()
            });
            f.push(HEADER.as_bytes());
            events(&mut f).unwrap();
            f
        };
        let element = |len: usize| {
            let mut e = b"<message><body>".to_vec();
            e.resize(len - b"</body></message>".len(), b'a');
            e.extend_from_slice(b"</body></message>");
            e
        };
        let mut f = framer();
        f.push(&element(limit));
        assert_eq!(
            events(&mut f).unwrap(),
            [FrameEvent::Element(Bytes::from(element(limit)))]
        );
        for chunks in [1, 2] {
            let mut f = framer();
            let big = element(limit + 1);
            let (a, b) = big.split_at(if chunks == 1 { 0 } else { 50 });
            f.push(a);
            assert_eq!(events(&mut f).unwrap(), []);
            f.push(b);
            assert_eq!(
                events(&mut f).unwrap_err().condition,
                StreamCondition::PolicyViolation,
                "in {chunks} reads"
            );
        }
    }

    #[test]
    fn the_header_size_limit_is_exact_even_when_the_header_completes_in_one_read() {
        let mut f = Framer::new(Limits {
            max_header_bytes: HEADER.len() - 1,
            ..Limits::default()
        });
        f.push(HEADER.as_bytes());
        assert_eq!(
            events(&mut f).unwrap_err().condition,
            StreamCondition::PolicyViolation
        );
        let mut f = Framer::new(Limits {
            max_header_bytes: HEADER.len(),
            ..Limits::default()
        });
        f.push(HEADER.as_bytes());
        assert!(matches!(
            &events(&mut f).unwrap()[..],
            [FrameEvent::Open(_)]
        ));
    }

    #[test]
    fn rejects_deep_nesting() {
        let mut f = opened();
        for _ in 0..30 {
            f.push(b"<a>");
        }
        let err = events(&mut f).unwrap_err();
        assert_eq!(err.condition, StreamCondition::PolicyViolation);
    }

    #[test]
    fn rejects_restricted_xml() {
        for bad in [
            "<!-- hi -->",
            "<message><!-- c --></message>",
            "<!DOCTYPE foo>",
            "<message><?pi x?></message>",
            "<!ENTITY x 'y'>",
        ] {
            let mut f = opened();
            f.push(bad.as_bytes());
            let err = events(&mut f).unwrap_err();
            assert_eq!(err.condition, StreamCondition::RestrictedXml, "{bad}");
        }
    }

    #[test]
    fn rejects_text_between_stanzas() {
        let mut f = opened();
        f.push(b"hello");
        assert_eq!(
            events(&mut f).unwrap_err().condition,
            StreamCondition::NotWellFormed
        );
    }

    #[test]
    fn checks_stream_header() {
        for (header, cond) in [
            (
                "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>",
                StreamCondition::InvalidNamespace,
            ),
            (
                "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
                StreamCondition::UnsupportedVersion,
            ),
            ("<foo>", StreamCondition::InvalidNamespace),
            ("<stream:stream/>", StreamCondition::NotWellFormed),
        ] {
            let mut f = Framer::new(Limits::default());
            f.push(header.as_bytes());
            assert_eq!(events(&mut f).unwrap_err().condition, cond, "{header}");
        }
    }

    #[test]
    fn a_component_stream_declares_its_own_namespace_and_needs_no_version() {
        let component = "<stream:stream xmlns='jabber:component:accept' \
            xmlns:stream='http://etherx.jabber.org/streams' to='push.example.org'>";
        let mut f = Framer::for_stream(StreamKind::ComponentAccept, Limits::default());
        f.push(component.as_bytes());
        f.push(b"<handshake>00</handshake>");
        let evs = events(&mut f).unwrap();
        assert!(
            matches!(&evs[..], [FrameEvent::Open(h), FrameEvent::Element(_)] if h.to.as_deref() == Some("push.example.org")),
            "{evs:?}"
        );
        // a client's header is not a component's, nor the other way round
        let mut f = Framer::for_stream(StreamKind::ComponentAccept, Limits::default());
        f.push(HEADER.as_bytes());
        assert_eq!(
            events(&mut f).unwrap_err().condition,
            StreamCondition::InvalidNamespace
        );
        let mut f = Framer::new(Limits::default());
        f.push(component.as_bytes());
        assert_eq!(
            events(&mut f).unwrap_err().condition,
            StreamCondition::InvalidNamespace
        );
    }

    #[test]
    fn restart_expects_new_header() {
        let mut f = opened();
        f.push(b"<auth/>");
        assert_eq!(events(&mut f).unwrap().len(), 1);
        f.restart();
        f.push(HEADER.as_bytes());
        f.push(b"<iq/>");
        let evs = events(&mut f).unwrap();
        assert!(matches!(evs[0], FrameEvent::Open(_)));
        assert_eq!(evs[1], FrameEvent::Element(Bytes::from_static(b"<iq/>")));
    }

    #[test]
    fn header_size_is_bounded() {
        let mut f = Framer::new(Limits::default());
        f.push(b"<stream:stream ");
        f.push(&[b'a'; 5000]);
        assert_eq!(
            events(&mut f).unwrap_err().condition,
            StreamCondition::PolicyViolation
        );
    }
}
