//! One complete top-level element without a tree: validation, the routing
//! header the CM hands to the core, and byte-level rewriting of the start tag
//! (`from` stamping, `to` stamping of fanned-out copies, error replies, delay
//! stamps).

use std::ops::Range;

use bytes::Bytes;
use quick_xml::events::Event;

use crate::condition::StanzaCondition;
use crate::element::{
    checked_attrs, namespace_of, new_reader, not_well_formed, push_attr, push_declaration, utf8,
};
use crate::framer::FramingError;
use crate::ns;

/// The three stanza kinds (RFC 6120 §8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StanzaKind {
    /// `<message/>`.
    Message,
    /// `<presence/>`.
    Presence,
    /// `<iq/>`.
    Iq,
}

impl StanzaKind {
    /// The element name.
    pub fn name(self) -> &'static str {
        match self {
            StanzaKind::Message => "message",
            StanzaKind::Presence => "presence",
            StanzaKind::Iq => "iq",
        }
    }

    /// The kind named `name`, if it is one.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "message" => Some(StanzaKind::Message),
            "presence" => Some(StanzaKind::Presence),
            "iq" => Some(StanzaKind::Iq),
            _ => None,
        }
    }
}

/// What validation learned about a top-level element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopLevel {
    /// Local name.
    pub name: String,
    /// Name as written, prefix included (what rewriting must write back).
    pub qname: String,
    /// Resolved namespace (`jabber:client` when undeclared).
    pub ns: String,
    /// Top-level attributes (unescaped), including `xmlns:prefix`
    /// declarations but not the default `xmlns` (see `ns`).
    pub attrs: Vec<(String, String)>,
    /// The default namespace a prefixed top element declares (`xmlns`),
    /// which is not its own (`ns`) but its unprefixed children's; `None`
    /// for an unprefixed one (its `ns` is that).
    pub default_ns: Option<String>,
    /// Byte length of the start tag in the raw element.
    pub start_len: usize,
    /// Whether the element is written as `<x/>`.
    pub empty: bool,
    /// Its children that only a server writes (see [`Claim`]), in
    /// document order; empty (and unallocated) on nearly every stanza.
    pub claims: Vec<Claim>,
}

/// A child of a stanza that only a server writes: from a client, a
/// forgery when it speaks for this server ([`Claim::forged_for`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// What it claims.
    pub kind: ClaimKind,
    /// Where it is in the raw element, start tag to end tag.
    pub span: Range<usize>,
    /// Whom it speaks for: the `by` of a stanza-id, the `from` of a
    /// delay (unescaped); none for the others or when absent.
    pub entity: Option<String>,
}

/// The server assertions a client could forge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimKind {
    /// XEP-0359 `<stanza-id/>`: an archive's id for the message.
    StanzaId,
    /// XEP-0203 `<delay/>` or legacy XEP-0091 `<x xmlns='jabber:x:delay'/>`.
    Delay,
    /// XEP-0280 `<sent/>` or `<received/>` carbon wrapper.
    Carbon,
    /// XEP-0313 `<result/>` of an archive query.
    ArchiveResult,
}

impl ClaimKind {
    /// The kind of a child named `name` in `ns`, if it is a claim.
    fn of(ns: &str, name: &str) -> Option<Self> {
        match (ns, name) {
            (ns::SID, "stanza-id") => Some(ClaimKind::StanzaId),
            (ns::DELAY, "delay") | (ns::LEGACY_DELAY, "x") => Some(ClaimKind::Delay),
            (ns::CARBONS, "sent" | "received") => Some(ClaimKind::Carbon),
            (ns, "result") if ns.starts_with(ns::MAM_PREFIX) => Some(ClaimKind::ArchiveResult),
            _ => None,
        }
    }

    /// The attribute naming whom the claim speaks for.
    fn entity_attr(self) -> Option<&'static str> {
        match self {
            ClaimKind::StanzaId => Some("by"),
            ClaimKind::Delay => Some("from"),
            ClaimKind::Carbon | ClaimKind::ArchiveResult => None,
        }
    }
}

impl Claim {
    /// Whether a client that sent this claim forged it, `domain` being the
    /// one this server serves: a stanza-id with no `by` or a `by` in
    /// `domain` (XEP-0359 §3.1: only we speak for our archives), a delay
    /// from the server itself (what clients trust as the server's stamp),
    /// any carbon wrapper or archive result (XEP-0280, XEP-0313: never a
    /// client's to send).
    pub fn forged_for(&self, domain: &str) -> bool {
        let entity = self.entity.as_deref();
        match self.kind {
            ClaimKind::StanzaId => {
                entity.is_none_or(|by| jid_domain(by).eq_ignore_ascii_case(domain))
            }
            ClaimKind::Delay => entity.is_some_and(|from| {
                !from.contains('@') && jid_domain(from).eq_ignore_ascii_case(domain)
            }),
            ClaimKind::Carbon | ClaimKind::ArchiveResult => true,
        }
    }
}

/// The domain part of a JID as written (no normalisation).
fn jid_domain(jid: &str) -> &str {
    let bare = jid.split_once('/').map_or(jid, |(b, _)| b);
    bare.rsplit_once('@').map_or(bare, |(_, d)| d)
}

impl TopLevel {
    /// The value of a top-level attribute.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The stanza kind, if this is a `jabber:client` stanza.
    pub fn stanza_kind(&self) -> Option<StanzaKind> {
        if self.ns == ns::CLIENT {
            StanzaKind::from_name(&self.name)
        } else {
            None
        }
    }

    /// The routing header of a stanza.
    pub fn header(&self) -> Option<StanzaHeader> {
        Some(StanzaHeader {
            kind: self.stanza_kind()?,
            stanza_type: self.attr("type").map(str::to_owned),
            to: self.attr("to").map(str::to_owned),
            id: self.attr("id").map(str::to_owned),
        })
    }
}

/// The compact routing header of a stanza: enough for the core to route
/// without parsing the XML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StanzaHeader {
    /// Message, presence or IQ.
    pub kind: StanzaKind,
    /// The `type` attribute.
    pub stanza_type: Option<String>,
    /// The `to` attribute as sent.
    pub to: Option<String>,
    /// The `id` attribute.
    pub id: Option<String>,
}

/// Validates one complete element (well-formed, UTF-8, known entities, no
/// duplicate attributes, declared prefixes, restricted XML) and returns its
/// top-level information.
pub fn inspect(raw: &[u8]) -> Result<TopLevel, FramingError> {
    let mut reader = new_reader(raw)?;
    let mut top: Option<TopLevel> = None;
    let mut depth = 0usize;
    // a claim among the top element's children whose end is not read yet
    let mut open_claim: Option<Claim> = None;
    loop {
        let before = reader.buffer_position() as usize;
        let (resolved, event) = reader.read_resolved_event().map_err(not_well_formed)?;
        match &event {
            Event::Start(start) | Event::Empty(start) => {
                let ns = namespace_of(&resolved, ns::CLIENT)?;
                let attrs = checked_attrs(&reader, start, top.is_none())?;
                let empty = matches!(event, Event::Empty(_));
                if top.is_none() {
                    let qname = utf8(start.name().as_ref())?;
                    // (only a prefixed element, rare, is looked at again)
                    let default_ns = match qname.contains(':') {
                        true => start
                            .try_get_attribute("xmlns")
                            .map_err(not_well_formed)?
                            .map(|a| utf8(&a.value))
                            .transpose()?,
                        false => None,
                    };
                    top = Some(TopLevel {
                        name: utf8(start.local_name().as_ref())?,
                        qname,
                        ns,
                        attrs,
                        default_ns,
                        start_len: reader.buffer_position() as usize,
                        empty,
                        claims: Vec::new(),
                    });
                } else if depth == 0 {
                    return Err(not_well_formed("more than one element"));
                } else if depth == 1
                    && let Some(kind) = ClaimKind::of(&ns, &utf8(start.local_name().as_ref())?)
                    && let Some(top) = top.as_mut()
                {
                    let entity = kind.entity_attr().and_then(|name| {
                        attrs.into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
                    });
                    let claim = Claim {
                        kind,
                        span: before..reader.buffer_position() as usize,
                        entity,
                    };
                    match empty {
                        true => top.claims.push(claim),
                        false => open_claim = Some(claim),
                    }
                }
                if !empty {
                    depth += 1;
                }
            }
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                if depth == 1
                    && let Some(mut claim) = open_claim.take()
                    && let Some(top) = top.as_mut()
                {
                    claim.span.end = reader.buffer_position() as usize;
                    top.claims.push(claim);
                }
            }
            // checked by `wellformed::check` (characters, references, and
            // nothing but whitespace outside the element)
            Event::Text(_) | Event::CData(_) => {}
            Event::Eof => break,
            Event::Comment(_) | Event::PI(_) | Event::DocType(_) | Event::Decl(_) => {
                return Err(FramingError::new(
                    crate::StreamCondition::RestrictedXml,
                    "restricted XML",
                ));
            }
        }
    }
    if depth != 0 {
        return Err(not_well_formed("incomplete element"));
    }
    top.ok_or_else(|| not_well_formed("no element"))
}

/// Rewrites the start tag: attributes named in `set` are replaced (or
/// removed when `None`), all others kept; the rest of the element is copied.
pub fn rewrite_attrs(raw: &[u8], top: &TopLevel, set: &[(&str, Option<&str>)]) -> Bytes {
    rewrite(raw, top, set, |_| false)
}

/// [`rewrite_attrs`], leaving out the claims `cut` picks.
fn rewrite(
    raw: &[u8],
    top: &TopLevel,
    set: &[(&str, Option<&str>)],
    cut: impl Fn(&Claim) -> bool,
) -> Bytes {
    let mut out = Vec::with_capacity(raw.len() + 64);
    out.push(b'<');
    out.extend_from_slice(top.qname.as_bytes());
    if top.qname.contains(':') {
        // its children may be in the default namespace it declares
        if let Some(default_ns) = &top.default_ns {
            push_declaration(&mut out, None, default_ns);
        }
    } else if top.ns != ns::CLIENT {
        push_declaration(&mut out, None, &top.ns);
    }
    for (k, v) in &top.attrs {
        if set.iter().any(|(name, _)| name == k) {
            continue;
        }
        if let Some(prefix) = k.strip_prefix("xmlns:") {
            push_declaration(&mut out, Some(prefix), v);
        } else {
            push_attr(&mut out, k, v);
        }
    }
    for (k, v) in set {
        if let Some(v) = v {
            push_attr(&mut out, k, v);
        }
    }
    if top.empty {
        out.extend_from_slice(b"/>");
    } else {
        out.push(b'>');
        // claims are children of the top element, in order, apart
        let mut at = top.start_len;
        for claim in top.claims.iter().filter(|c| cut(c)) {
            out.extend_from_slice(&raw[at..claim.span.start]);
            at = claim.span.end;
        }
        out.extend_from_slice(&raw[at..]);
    }
    Bytes::from(out)
}

/// Stamps `from` on a stanza, replacing whatever the client wrote.
pub fn stamp_from(raw: &[u8], top: &TopLevel, from: &str) -> Bytes {
    rewrite_attrs(raw, top, &[("from", Some(from))])
}

/// A copy of `raw` with ` to='…'` inserted right after the top element's
/// name (`<message`, `<presence`, `<iq`, a prefixed name alike), the JID
/// `to` escaped for a single-quoted attribute: how a CM addresses each copy
/// of a stanza the core fans out to many sessions.
///
/// Only the start tag is read (the rest of the element, which the core
/// built, is copied as it is). `None` if `raw` does not start with `<` and a
/// name, its start tag cannot be read, or the top element has a `to`
/// attribute already.
pub fn stamp_to(raw: &[u8], to: &str) -> Option<Bytes> {
    let name_len = addressable_start_tag(raw)?;
    let at = 1 + name_len;
    let mut out = Vec::with_capacity(raw.len() + to.len() + 16);
    out.extend_from_slice(&raw[..at]);
    out.extend_from_slice(b" to='");
    push_single_quoted(&mut out, to);
    out.push(b'\'');
    out.extend_from_slice(&raw[at..]);
    Some(Bytes::from(out))
}

/// The byte length of the top element's name if `raw` opens with a start
/// tag that reads (name, attributes, its `>`) and has no `to` attribute.
fn addressable_start_tag(raw: &[u8]) -> Option<usize> {
    let first = *raw.get(1)?;
    if raw.first() != Some(&b'<') || !is_name_start(first) {
        return None;
    }
    let mut reader = quick_xml::Reader::from_reader(raw);
    reader.config_mut().check_end_names = false;
    let start = match reader.read_event() {
        Ok(Event::Start(start) | Event::Empty(start)) => start,
        _ => return None,
    };
    let name = start.name();
    let name = name.as_ref();
    // the name as written, right after the `<`
    if raw.get(1..1 + name.len()) != Some(name) || !name.iter().all(|&b| is_name_char(b)) {
        return None;
    }
    for attr in start.attributes().with_checks(true) {
        if attr.ok()?.key.as_ref() == b"to" {
            return None;
        }
    }
    Some(name.len())
}

/// Whether `b` may begin an XML name (ASCII letters, `_`, `:`, or the first
/// octet of a non-ASCII character; the element is the core's, not policed
/// here).
fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b == b':' || b >= 0x80
}

/// Whether `b` may be in an XML name (a name start, digits, `-` and `.`).
fn is_name_char(b: u8) -> bool {
    is_name_start(b) || b.is_ascii_digit() || b == b'-' || b == b'.'
}

/// Appends `value` escaped for an attribute in single quotes: `&`, `'`,
/// `<` and `"` as references, and the whitespace attribute-value
/// normalisation would turn into spaces (tab, line feed, carriage return)
/// as character references, so a parser reads `value` back exactly.
fn push_single_quoted(out: &mut Vec<u8>, value: &str) {
    let bytes = value.as_bytes();
    let mut from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let reference: &[u8] = match b {
            b'&' => b"&amp;",
            b'\'' => b"&apos;",
            b'<' => b"&lt;",
            b'"' => b"&quot;",
            b'\t' => b"&#9;",
            b'\n' => b"&#10;",
            b'\r' => b"&#13;",
            _ => continue,
        };
        out.extend_from_slice(&bytes[from..i]);
        out.extend_from_slice(reference);
        from = i + 1;
    }
    out.extend_from_slice(&bytes[from..]);
}

/// What a server relays of a client's stanza: `from` stamped (see
/// [`stamp_from`]) and the claims the client forged for `domain` left out
/// ([`Claim::forged_for`]); all other bytes as they came.
pub fn stamp_from_unforged(raw: &[u8], top: &TopLevel, from: &str, domain: &str) -> Bytes {
    rewrite(raw, top, &[("from", Some(from))], |c| c.forged_for(domain))
}

/// Inserts a child element just before the end tag (e.g. an XEP-0203 delay).
pub fn append_child(raw: &[u8], top: &TopLevel, child: &[u8]) -> Bytes {
    if top.empty {
        let mut out = rewrite_attrs(raw, top, &[]).to_vec();
        out.truncate(out.len() - 2);
        out.push(b'>');
        out.extend_from_slice(child);
        out.extend_from_slice(b"</");
        out.extend_from_slice(top.qname.as_bytes());
        out.push(b'>');
        return Bytes::from(out);
    }
    let close = raw.iter().rposition(|&b| b == b'<').unwrap_or(raw.len());
    let mut out = Vec::with_capacity(raw.len() + child.len());
    out.extend_from_slice(&raw[..close]);
    out.extend_from_slice(child);
    out.extend_from_slice(&raw[close..]);
    Bytes::from(out)
}

/// An XEP-0203 `<delay/>` element.
pub fn delay_element(from: &str, stamp: &str) -> Vec<u8> {
    let mut out = b"<delay xmlns=\"urn:xmpp:delay\"".to_vec();
    push_attr(&mut out, "from", from);
    push_attr(&mut out, "stamp", stamp);
    out.extend_from_slice(b"/>");
    out
}

/// A stanza error reply (RFC 6120 §8.3): `from`/`to` swapped from the
/// original, same kind and id, `type='error'`.
pub fn error_reply(
    kind: StanzaKind,
    id: Option<&str>,
    from: &str,
    to: &str,
    condition: StanzaCondition,
    text: Option<&str>,
) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.push(b'<');
    out.extend_from_slice(kind.name().as_bytes());
    push_attr(&mut out, "from", from);
    push_attr(&mut out, "to", to);
    push_attr(&mut out, "type", "error");
    if let Some(id) = id {
        push_attr(&mut out, "id", id);
    }
    out.extend_from_slice(b"><error");
    push_attr(&mut out, "type", condition.error_type());
    out.extend_from_slice(b"><");
    out.extend_from_slice(condition.name().as_bytes());
    push_attr(&mut out, "xmlns", ns::STANZA_ERRORS);
    out.extend_from_slice(b"/>");
    if let Some(text) = text {
        out.extend_from_slice(b"<text");
        push_attr(&mut out, "xmlns", ns::STANZA_ERRORS);
        out.push(b'>');
        out.extend_from_slice(crate::element::escape(text).as_bytes());
        out.extend_from_slice(b"</text>");
    }
    out.extend_from_slice(b"</error></");
    out.extend_from_slice(kind.name().as_bytes());
    out.push(b'>');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Element;

    #[test]
    fn control_characters_are_not_xml() {
        for bad in [
            &b"<message><body>a\x00b</body></message>"[..],
            b"<message><body>a&#0;b</body></message>",
            b"<message><body>a&#x1;b</body></message>",
            b"<message id='&#7;'/>",
            b"<message><body>&#xFFFF;</body></message>",
        ] {
            let e = inspect(bad).unwrap_err();
            assert_eq!(
                e.condition,
                crate::StreamCondition::NotWellFormed,
                "{bad:?}"
            );
            assert!(Element::parse(bad, ns::CLIENT).is_err(), "{bad:?}");
        }
        assert!(inspect(b"<message><body>tab\tnl\ncr\r&#9;</body></message>").is_ok());
    }

    #[test]
    fn inspects_header() {
        let raw = b"<message to='bob@example.org' type='chat' id='m1' from='forged@evil'><body>hi</body></message>";
        let top = inspect(raw).unwrap();
        let h = top.header().unwrap();
        assert_eq!(h.kind, StanzaKind::Message);
        assert_eq!(h.to.as_deref(), Some("bob@example.org"));
        assert_eq!(h.stanza_type.as_deref(), Some("chat"));
        assert_eq!(h.id.as_deref(), Some("m1"));
        let nonza = inspect(b"<r xmlns='urn:xmpp:sm:3'/>").unwrap();
        assert_eq!(nonza.stanza_kind(), None);
        assert_eq!(nonza.ns, "urn:xmpp:sm:3");
    }

    #[test]
    fn stamps_from_replacing_forgery() {
        let raw = b"<message to='bob@example.org' from='forged@evil' id='a&amp;b'><body>hi</body></message>";
        let top = inspect(raw).unwrap();
        let out = stamp_from(raw, &top, "alice@example.org/phone");
        let el = Element::parse(&out, ns::CLIENT).unwrap();
        assert_eq!(el.attr("from"), Some("alice@example.org/phone"));
        assert_eq!(el.attr("id"), Some("a&b"));
        assert_eq!(el.attrs.iter().filter(|(k, _)| k == "from").count(), 1);
        assert_eq!(el.child("body", ns::CLIENT).unwrap().text(), "hi");

        let raw = b"<message xmlns:e='urn:e' from='x'><e:x/></message>";
        let out = stamp_from(raw, &inspect(raw).unwrap(), "a@b/c");
        assert!(
            Element::parse(&out, ns::CLIENT)
                .unwrap()
                .child("x", "urn:e")
                .is_some()
        );

        // a prefixed stanza keeps its prefix on both tags
        let raw = b"<c:message xmlns:c='jabber:client' to='b@x'><c:body>x</c:body></c:message>";
        let out = stamp_from(raw, &inspect(raw).unwrap(), "a@x/r");
        let el = Element::parse(&out, ns::CLIENT).unwrap();
        assert_eq!(
            (el.name.as_str(), el.attr("from")),
            ("message", Some("a@x/r"))
        );
        let out = append_child(raw, &inspect(raw).unwrap(), b"<d xmlns='urn:xmpp:delay'/>");
        assert!(
            Element::parse(&out, ns::CLIENT)
                .unwrap()
                .child("d", ns::DELAY)
                .is_some()
        );

        let raw = b"<presence/>";
        let out = stamp_from(raw, &inspect(raw).unwrap(), "a@b/c");
        assert_eq!(&out[..], b"<presence from=\"a@b/c\"/>");
    }

    #[test]
    fn claims_forged_for_our_domain_are_cut_and_every_other_byte_is_kept() {
        let raw = concat!(
            "<message to='bob@example.org' from='x'><body>hi</body>",
            "<stanza-id xmlns='urn:xmpp:sid:0' by='bob@example.org' id='f1'/>",
            "<s:stanza-id xmlns:s='urn:xmpp:sid:0' by='example.org' id='f2'></s:stanza-id>",
            "<stanza-id xmlns='urn:xmpp:sid:0' id='f3'/>",
            "<stanza-id xmlns='urn:xmpp:sid:0' by='room@muc.other.net' id='kept'/>",
            "<delay xmlns='urn:xmpp:delay' from='example.org' stamp='2000-01-01T00:00:00Z'/>",
            "<delay xmlns='urn:xmpp:delay' from='alice@example.org/phone' stamp='kept'/>",
            "<x xmlns='jabber:x:delay' from='EXAMPLE.ORG' stamp='20000101T00:00:00'/>",
            "<sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>",
            "<message from='bob@example.org'><body>fake</body></message></forwarded></sent>",
            "<c:received xmlns:c='urn:xmpp:carbons:2'/>",
            "<result xmlns='urn:xmpp:mam:2' id='r'><forwarded xmlns='urn:xmpp:forward:0'/></result>",
            "<b:body xmlns:b='jabber:client'>x &amp; y</b:body>",
            "<received xmlns='urn:xmpp:receipts' id='kept'/>",
            "<private xmlns='urn:xmpp:carbons:2'/>",
            "</message>"
        )
        .as_bytes();
        let top = inspect(raw).unwrap();
        assert_eq!(top.claims.len(), 10, "{:#?}", top.claims);
        for c in &top.claims {
            assert!(raw[c.span.clone()].starts_with(b"<") && raw[c.span.clone()].ends_with(b">"));
        }
        let out = stamp_from_unforged(raw, &top, "alice@example.org/phone", "example.org");
        let kept = concat!(
            "<message to=\"bob@example.org\" from=\"alice@example.org/phone\"><body>hi</body>",
            "<stanza-id xmlns='urn:xmpp:sid:0' by='room@muc.other.net' id='kept'/>",
            "<delay xmlns='urn:xmpp:delay' from='alice@example.org/phone' stamp='kept'/>",
            "<b:body xmlns:b='jabber:client'>x &amp; y</b:body>",
            "<received xmlns='urn:xmpp:receipts' id='kept'/>",
            "<private xmlns='urn:xmpp:carbons:2'/>",
            "</message>"
        );
        assert_eq!(String::from_utf8_lossy(&out), kept);
        // nothing forged: the bytes stamp_from writes
        let plain = b"<message to='b@x'><body>hi</body></message>";
        let top = inspect(plain).unwrap();
        assert!(top.claims.is_empty());
        assert_eq!(
            stamp_from_unforged(plain, &top, "a@x/r", "x"),
            stamp_from(plain, &top, "a@x/r")
        );
    }

    /// Found by the xml_strict fuzz target: declarations written back
    /// escaped (`&gt;`, `&quot;`) no longer inspected.
    #[test]
    fn a_stamped_stanza_keeps_its_namespace_declarations_as_they_came() {
        for raw in [
            &b"<message xmlns:p='a>b' to='x'/>"[..],
            b"<message xmlns:p='a\"b'><p:x/></message>",
            b"<message xmlns:p=\"a'b\"><p:x/></message>",
        ] {
            let top = inspect(raw).unwrap();
            let out = stamp_from(raw, &top, "a@x/r");
            let again = inspect(&out).unwrap_or_else(|e| {
                panic!("{e}: {}", String::from_utf8_lossy(&out));
            });
            assert_eq!(again.attr("xmlns:p"), top.attr("xmlns:p"));
        }
        for bad in [&b"<message xmlns:p='a\rb'/>"[..], b"<message xmlns='a b'/>"] {
            assert!(inspect(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_prefixed_stanza_keeps_the_default_namespace_it_declares_for_its_children() {
        let raw = b"<c:message xmlns:c='jabber:client' xmlns='urn:x' to='b@x'><body>hi</body></c:message>";
        let top = inspect(raw).unwrap();
        assert_eq!(top.ns, ns::CLIENT);
        let out = stamp_from(raw, &top, "a@x/r");
        let el = Element::parse(&out, ns::CLIENT).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&out));
        });
        assert!(
            el.child("body", "urn:x").is_some(),
            "{}",
            String::from_utf8_lossy(&out)
        );
        assert_eq!(el.attr("from"), Some("a@x/r"));
    }

    #[test]
    fn stamping_never_grows_the_attributes_the_client_wrote() {
        // each a one-byte character the writer once escaped into four to six
        let value = ">'".repeat(1000);
        let raw = format!(
            "<message to='b@x' x=\"{value}\" y='{}'/>",
            "\"".repeat(1000)
        );
        let top = inspect(raw.as_bytes()).unwrap();
        let out = stamp_from(raw.as_bytes(), &top, "a@x/r");
        let added = " from=\"a@x/r\"".len();
        assert!(
            out.len() <= raw.len() + added,
            "{} bytes from {}",
            out.len(),
            raw.len()
        );
        let again = inspect(&out).unwrap();
        assert_eq!(again.attr("x"), Some(value.as_str()));
        assert_eq!(again.attr("y"), top.attr("y"));
    }

    #[test]
    fn appends_delay() {
        let raw = b"<message to='b@x'><body>hi</body></message>";
        let top = inspect(raw).unwrap();
        let out = append_child(raw, &top, &delay_element("x", "2026-01-01T00:00:00Z"));
        let el = Element::parse(&out, ns::CLIENT).unwrap();
        assert_eq!(
            el.child("delay", ns::DELAY).unwrap().attr("stamp"),
            Some("2026-01-01T00:00:00Z")
        );
        let raw = b"<message to='b@x'/>";
        let out = append_child(raw, &inspect(raw).unwrap(), b"<x xmlns='y'/>");
        assert!(
            Element::parse(&out, ns::CLIENT)
                .unwrap()
                .child("x", "y")
                .is_some()
        );
    }

    #[test]
    fn builds_error_reply() {
        let out = error_reply(
            StanzaKind::Message,
            Some("m1"),
            "nobody@x",
            "alice@x/phone",
            StanzaCondition::ServiceUnavailable,
            None,
        );
        let el = Element::parse(&out, ns::CLIENT).unwrap();
        assert_eq!(el.attr("type"), Some("error"));
        let error = el.child("error", ns::CLIENT).unwrap();
        assert_eq!(error.attr("type"), Some("cancel"));
        assert!(
            error
                .child("service-unavailable", ns::STANZA_ERRORS)
                .is_some()
        );
    }

    /// Poisons quick-xml alone lets through but expat and libxml2 reject
    /// (XML 1.0 fifth edition, Namespaces in XML 1.0): relayed, they end the
    /// recipient's stream.
    const POISONS: &[&[u8]] = &[
        b"<message><x xmlns='u' a='<b'/></message>",
        b"<message a='x & y'/>",
        b"<message a='&#xD800;'/>",
        b"<message><body>a]]>b</body></message>",
        b"<message><body>a & b</body></message>",
        b"<message><body>&#xD800;</body></message>",
        b"<message><body>&#x110000;</body></message>",
        b"<message><body>&#99999999999999999999;</body></message>",
        b"<message><body>&#xFFFE;</body></message>",
        b"<message><body>\xef\xbf\xbe</body></message>",
        b"<message><body>&#;</body></message>",
        b"<message><body>&#x;</body></message>",
        b"<message><body>&#12a;</body></message>",
        b"<message><body>&amp</body></message>",
        b"<message><1a/></message>",
        b"<message><a:/></message>",
        b"<message><:a/></message>",
        b"<message><a:b:c xmlns:a='u'/></message>",
        b"<message><a-b.c\xc3\x97/></message>",
        b"<message 1a='x'/>",
        b"<message a='1'b='2'/>",
        b"<message a='1' / >",
        b"< message/>",
        b"<message></message x>",
        b"<message><x xmlns:a='u' xmlns:b='u' a:y='1' b:y='2'/></message>",
        b"<message xmlns:xml='urn:other'/>",
        b"<message xmlns:xmlns='urn:other'/>",
        b"<message xmlns:p='http://www.w3.org/XML/1998/namespace'/>",
        b"<message xmlns:p='http://www.w3.org/2000/xmlns/'/>",
        b"<message xmlns='http://www.w3.org/2000/xmlns/'/>",
        b"<message xmlns:p=''/>",
        b"<message><xmlns:a/></message>",
        // found by the xml_strict fuzz target: roxmltree refuses elements
        // prefixed xml (no XMPP element is in the XML namespace)
        b"<xml:lae to='bo@b:r>>'/>",
        b"<message><xml:x/></message>",
        b"<message xmlns='jabber:client' xmlns='jabber:client'/>",
    ];

    #[test]
    fn poisons_a_strict_parser_rejects_are_not_well_formed() {
        let accepted: Vec<String> = POISONS
            .iter()
            .filter(|bad| {
                !inspect(bad).is_err_and(|e| e.condition == crate::StreamCondition::NotWellFormed)
                    || Element::parse(bad, ns::CLIENT).is_ok()
            })
            .map(|bad| String::from_utf8_lossy(bad).into_owned())
            .collect();
        assert!(accepted.is_empty(), "accepted: {accepted:#?}");
    }

    #[test]
    fn well_formed_corners_are_accepted() {
        for good in [
            &b"<message a = '1'\n\tb=\"2\" ><body>a &gt; b ]] > ]>&#x10FFFF;&#65;</body></message >"[..],
            b"<message><body><![CDATA[ <not> & ]] ]]></body></message>",
            b"<message xmlns:xml='http://www.w3.org/XML/1998/namespace' xml:lang='en'/>",
            b"<message><x xmlns:a='u' xmlns:b='v' a:y='1' b:y='2' y='3'/></message>",
            "<message><\u{e9}l\u{e8}ve \u{e9}t\u{e9}='\u{fffd}'>\u{10000}</\u{e9}l\u{e8}ve></message>".as_bytes(),
            b"<message><x xmlns=''/></message>",
        ] {
            inspect(good).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(good)));
        }
    }

    /// Names strict parsers disagree on (XML 1.0 fourth edition, which
    /// expat applies, against the fifth): each is refused as a policy,
    /// whatever the edition would say.
    #[test]
    fn names_beyond_latin1_letters_are_refused_as_a_policy() {
        for name in [
            "\u{660}",    // Arabic-Indic zero: a NameStartChar in the fifth edition only
            "a\u{37F}",   // unassigned in Unicode 2.0: expat refuses it
            "\u{10000}x", // beyond the BMP: the fourth edition has no such name characters
            "p\u{2070}",  // superscript zero
            "\u{4E00}",   // a CJK ideograph, fine in both: refused all the same (policy)
        ] {
            for stanza in [
                format!("<message><{name} xmlns='u'/></message>"),
                format!("<message {name}='1'/>"),
                format!("<message><x xmlns:{name}='u'/></message>"),
            ] {
                let e = inspect(stanza.as_bytes()).expect_err(&stanza);
                assert_eq!(
                    e.condition,
                    crate::StreamCondition::PolicyViolation,
                    "{stanza}"
                );
            }
        }
        // Latin-1 letters and the middle dot are in both editions
        inspect("<message><\u{c0}\u{b7}\u{ff} \u{f8}='1'/></message>".as_bytes()).unwrap();
    }

    #[test]
    fn attributes_per_element_are_capped() {
        let tag = |n: usize| {
            let mut s = String::from("<message><x");
            for i in 0..n {
                s.push_str(&format!(" a{i}='v'"));
            }
            s.push_str("/></message>");
            s
        };
        assert!(inspect(tag(crate::wellformed::MAX_ATTRIBUTES).as_bytes()).is_ok());
        let e = inspect(tag(crate::wellformed::MAX_ATTRIBUTES + 1).as_bytes()).unwrap_err();
        assert_eq!(e.condition, crate::StreamCondition::PolicyViolation);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            &b"<message><body>&foo;</body></message>"[..],
            b"<message a='1' a='2'/>",
            b"<message><x:y/></message>",
            b"<message>\xc3\x28</message>",
        ] {
            assert!(inspect(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn stamps_to_right_after_the_name_of_a_message() {
        let raw = b"<message type='groupchat' from='room@muc.x/nick'><body>hi</body></message>";
        let out = stamp_to(raw, "alice@x/phone").expect("stamped");
        assert_eq!(
            &out[..],
            &b"<message to='alice@x/phone' type='groupchat' from='room@muc.x/nick'><body>hi</body></message>"[..]
        );
        let top = inspect(&out).expect("still a stanza");
        assert_eq!(top.attr("to"), Some("alice@x/phone"));
        assert_eq!(top.attr("type"), Some("groupchat"));
    }

    #[test]
    fn stamps_to_on_a_self_closing_presence_and_a_prefixed_iq() {
        let out = stamp_to(b"<presence/>", "a@x/r").expect("stamped");
        assert_eq!(&out[..], b"<presence to='a@x/r'/>");
        assert_eq!(inspect(&out).unwrap().attr("to"), Some("a@x/r"));
        let out = stamp_to(b"<presence\n from='r@m/n'/>", "a@x/r").expect("stamped");
        assert_eq!(&out[..], b"<presence to='a@x/r'\n from='r@m/n'/>");
        let raw = b"<c:iq xmlns:c='jabber:client' type='get' id='1'><q xmlns='urn:x'/></c:iq>";
        let out = stamp_to(raw, "a@x/r").expect("stamped");
        assert!(out.starts_with(b"<c:iq to='a@x/r' xmlns:c="), "{out:?}");
        let top = inspect(&out).unwrap();
        assert_eq!((top.name.as_str(), top.attr("to")), ("iq", Some("a@x/r")));
    }

    #[test]
    fn stamped_to_escapes_a_resource_with_quotes_and_ampersands() {
        let jid = "a@x/it's <b>&\"c\"";
        let out = stamp_to(b"<message><body>x</body></message>", jid).expect("stamped");
        assert_eq!(
            &out[..],
            &b"<message to='a@x/it&apos;s &lt;b>&amp;&quot;c&quot;'><body>x</body></message>"[..]
        );
        assert_eq!(inspect(&out).unwrap().attr("to"), Some(jid));
    }

    #[test]
    fn a_stanza_with_a_to_already_is_not_stamped() {
        for raw in [
            &b"<message to='b@x'/>"[..],
            b"<message type='chat' to=\"b@x\"><body/></message>",
            b"<presence id='1'\tto = 'b@x'/>",
        ] {
            assert_eq!(stamp_to(raw, "a@x/r"), None, "{raw:?}");
        }
        // a `to` on a child, or a prefixed one, is not the stanza's
        let out = stamp_to(
            b"<message xmlns:p='urn:p' p:to='z'><x to='y'/></message>",
            "a@x/r",
        );
        assert_eq!(
            out.as_deref(),
            Some(&b"<message to='a@x/r' xmlns:p='urn:p' p:to='z'><x to='y'/></message>"[..])
        );
    }

    #[test]
    fn garbage_is_not_stamped() {
        for raw in [
            &b""[..],
            b"<",
            b"message/>",
            b" <message/>",
            b"</message>",
            b"<!-- x --><message/>",
            b"<?xml version='1.0'?><message/>",
            b"<1message/>",
            b"< message/>",
            b"<message",
            b"<message type='chat",
            b"<message type=chat>",
            b"<message a='1' a='2'>",
            b"<a<b>",
            b"\xff\xfe",
        ] {
            assert_eq!(stamp_to(raw, "a@x/r"), None, "{raw:?}");
        }
    }

    #[test]
    fn inspect_reads_back_every_stamped_jid() {
        const ALPHABET: [&str; 16] = [
            "a",
            "Z",
            "'",
            "&",
            "<",
            ">",
            "\"",
            " ",
            "\t",
            "\n",
            "/",
            "@",
            ";",
            "#",
            "\u{e9}",
            "\u{1f600}",
        ];
        let payloads: [&[u8]; 3] = [
            b"<message type='groupchat'><body>x</body></message>",
            b"<presence/>",
            b"<iq type='result' id='q'/>",
        ];
        // a fixed xorshift: every run checks the same resources
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for i in 0..2000 {
            let len = next() % 24;
            let resource: String = (0..len)
                .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
                .collect();
            let jid = format!("user@example.org/{resource}");
            let payload = payloads[i % payloads.len()];
            let out = stamp_to(payload, &jid).expect("stamped");
            let top = inspect(&out).unwrap_or_else(|e| panic!("{jid:?}: {e:?}"));
            assert_eq!(top.attr("to"), Some(jid.as_str()), "{out:?}");
            // and the rest of the stanza is as it was
            let again = rewrite_attrs(&out, &top, &[("to", None)]);
            let before = inspect(payload).unwrap();
            assert_eq!(inspect(&again).unwrap().attrs, before.attrs);
        }
    }
}
