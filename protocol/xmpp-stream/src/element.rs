//! A small, owned XML element tree for the places that must look inside a
//! stanza: server-handled IQs in the core and incoming stanzas in the SDK.
//! Routing never builds one (see [`crate::stanza`]).
//!
//! What it writes is namespace-well-formed whatever part of a tree is
//! written: an element's name is written unprefixed with its namespace as
//! the default (`xmlns`) where it differs from its parent's, and the
//! prefixes of its attribute names (`p:a`) are declared (`xmlns:p`) where no
//! ancestor written with it declared them already ([`Element::prefixes`]).

use quick_xml::NsReader;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::{QName, ResolveResult};

use crate::condition::StreamCondition;
use crate::framer::FramingError;

/// An XML element with its resolved namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Element {
    /// Local name.
    pub name: String,
    /// Namespace URI.
    pub ns: String,
    /// Attributes other than namespace declarations, qualified names as written.
    pub attrs: Vec<(String, String)>,
    /// The namespaces of the prefixes its attribute names use, as
    /// (prefix, namespace URI) (`xml:` aside, which is always bound): what
    /// the source declared, so that the element is written with them
    /// declared wherever it ends up.
    pub prefixes: Vec<(String, String)>,
    /// Child nodes in order.
    pub children: Vec<Node>,
}

/// A child node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// A child element.
    Element(Element),
    /// Character data (unescaped).
    Text(String),
}

impl Element {
    /// An element with no attributes or children.
    pub fn new(name: impl Into<String>, ns: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ns: ns.into(),
            attrs: Vec::new(),
            prefixes: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Builder: sets an attribute.
    pub fn with_attr(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.set_attr(name, value);
        self
    }

    /// Builder: appends a child element.
    pub fn with_child(mut self, child: Element) -> Self {
        self.children.push(Node::Element(child));
        self
    }

    /// Builder: appends text.
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.children.push(Node::Text(text.into()));
        self
    }

    /// The value of an attribute.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets or replaces an attribute.
    pub fn set_attr(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        match self.attrs.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.attrs.push((name, value)),
        }
    }

    /// Removes an attribute.
    pub fn remove_attr(&mut self, name: &str) {
        self.attrs.retain(|(k, _)| k != name);
    }

    /// Child elements in order.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// The first child element with this name and namespace.
    pub fn child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.elements().find(|e| e.name == name && e.ns == ns)
    }

    /// The concatenated text children.
    pub fn text(&self) -> String {
        self.children
            .iter()
            .filter_map(|n| match n {
                Node::Text(t) => Some(t.as_str()),
                Node::Element(_) => None,
            })
            .collect()
    }

    /// Parses one complete element; unprefixed names without a declaration
    /// are in `default_ns` (the stream's namespace).
    pub fn parse(raw: &[u8], default_ns: &str) -> Result<Element, FramingError> {
        let mut stack: Vec<Element> = Vec::new();
        let mut reader = new_reader(raw)?;
        loop {
            let (resolved, event) = reader.read_resolved_event().map_err(not_well_formed)?;
            match event {
                Event::Start(ref start) | Event::Empty(ref start) => {
                    let empty = matches!(event, Event::Empty(_));
                    let ns = namespace_of(&resolved, default_ns)?;
                    let mut el = Element::new(utf8(start.local_name().as_ref())?, ns);
                    el.attrs = read_attrs(&reader, start, false, Some(&mut el.prefixes))?;
                    if empty {
                        if !attach(&mut stack, el.clone()) {
                            return Ok(el);
                        }
                    } else {
                        stack.push(el);
                    }
                }
                Event::End(_) => {
                    let el = stack
                        .pop()
                        .ok_or_else(|| not_well_formed("unbalanced end tag"))?;
                    if !attach(&mut stack, el.clone()) {
                        return Ok(el);
                    }
                }
                Event::Text(text) => {
                    let text = text.unescape().map_err(not_well_formed)?;
                    if let Some(top) = stack.last_mut() {
                        top.children.push(Node::Text(text.into_owned()));
                    } else if !text.trim().is_empty() {
                        return Err(not_well_formed("text outside the element"));
                    }
                }
                Event::CData(data) => {
                    let text = utf8(&data)?;
                    if let Some(top) = stack.last_mut() {
                        top.children.push(Node::Text(text));
                    }
                }
                Event::Eof => return Err(not_well_formed("incomplete element")),
                Event::Comment(_) | Event::PI(_) | Event::DocType(_) | Event::Decl(_) => {
                    return Err(FramingError::new(
                        StreamCondition::RestrictedXml,
                        "restricted XML",
                    ));
                }
            }
        }
    }

    /// Parses a top-level element read from a stream whose header declared
    /// the `stream:` prefix (so `<stream:features>` and `<stream:error>` parse).
    pub fn parse_in_stream(raw: &[u8]) -> Result<Element, FramingError> {
        if !raw.starts_with(b"<stream:") {
            return Element::parse(raw, crate::ns::CLIENT);
        }
        let mut wrapped = Vec::with_capacity(raw.len() + 80);
        wrapped.extend_from_slice(b"<w xmlns:stream='http://etherx.jabber.org/streams'>");
        wrapped.extend_from_slice(raw);
        wrapped.extend_from_slice(b"</w>");
        let outer = Element::parse(&wrapped, crate::ns::CLIENT)?;
        outer
            .elements()
            .next()
            .cloned()
            .ok_or_else(|| not_well_formed("empty element"))
    }

    /// Serializes the element; `parent_ns` is the namespace in scope (pass
    /// `jabber:client` for a stanza written into a client stream).
    pub fn write_to(&self, out: &mut Vec<u8>, parent_ns: &str) {
        self.write_in_scope(out, parent_ns, &mut Vec::new());
    }

    /// [`Element::write_to`] inside ancestors that declared the prefixes in
    /// `scope` (prefix, namespace URI; the innermost last).
    fn write_in_scope<'a>(
        &'a self,
        out: &mut Vec<u8>,
        parent_ns: &str,
        scope: &mut Vec<(&'a str, &'a str)>,
    ) {
        out.push(b'<');
        out.extend_from_slice(self.name.as_bytes());
        if self.ns != parent_ns {
            push_declaration(out, None, &self.ns);
        }
        let outer = scope.len();
        for (prefix, uri) in &self.prefixes {
            let in_scope = scope.iter().rev().find(|(p, _)| p == prefix);
            if prefix != "xml" && in_scope.is_none_or(|(_, u)| u != uri) {
                push_declaration(out, Some(prefix), uri);
                scope.push((prefix, uri));
            }
        }
        for (k, v) in &self.attrs {
            push_attr(out, k, v);
        }
        if self.children.is_empty() {
            out.extend_from_slice(b"/>");
        } else {
            out.push(b'>');
            for child in &self.children {
                match child {
                    Node::Element(e) => e.write_in_scope(out, &self.ns, scope),
                    Node::Text(t) => push_text(out, t),
                }
            }
            out.extend_from_slice(b"</");
            out.extend_from_slice(self.name.as_bytes());
            out.push(b'>');
        }
        scope.truncate(outer);
    }

    /// Serializes into a new buffer (see [`Element::write_to`]).
    pub fn to_bytes(&self, parent_ns: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.write_to(&mut out, parent_ns);
        out
    }
}

/// Escapes text or an attribute value for XML (all five special characters).
pub fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    quick_xml::escape::escape(s)
}

/// Appends `s` with each byte `special` picks replaced by what it returns.
fn push_escaped(
    out: &mut Vec<u8>,
    s: &str,
    special: impl Fn(&[u8], usize) -> Option<&'static [u8]>,
) {
    let bytes = s.as_bytes();
    let mut from = 0;
    for i in 0..bytes.len() {
        if let Some(reference) = special(bytes, i) {
            out.extend_from_slice(&bytes[from..i]);
            out.extend_from_slice(reference);
            from = i + 1;
        }
    }
    out.extend_from_slice(&bytes[from..]);
}

/// Appends ` name="value"`, escaped only as XML requires, so that a value
/// never comes out longer than any source it was read from: `&` and `<` as
/// references, `>` raw, and quoted with the quote it holds fewer of (that
/// one as a character reference, the other raw). Whitespace is written as
/// held.
pub(crate) fn push_attr(out: &mut Vec<u8>, name: &str, value: &str) {
    let doubles = value.bytes().filter(|&b| b == b'"').count();
    let quote = if doubles > 0 && doubles > value.bytes().filter(|&b| b == b'\'').count() {
        b'\''
    } else {
        b'"'
    };
    out.push(b' ');
    out.extend_from_slice(name.as_bytes());
    out.push(b'=');
    out.push(quote);
    push_escaped(out, value, |b, i| match b[i] {
        b'&' => Some(b"&amp;"),
        b'<' => Some(b"&lt;"),
        b'"' if quote == b'"' => Some(b"&#34;"),
        b'\'' if quote == b'\'' => Some(b"&#39;"),
        _ => None,
    });
    out.push(quote);
}

/// Appends a namespace declaration (` xmlns="uri"` or ` xmlns:p="uri"`) as
/// it came: a reference in a namespace name is refused by
/// [`crate::wellformed`], and one read from a stream holds no `&` or `<`
/// and only one kind of quote, so quoting with the other is enough. (A
/// namespace name a program made up that cannot be written so is escaped.)
/// `prefix` is `None` for the default namespace.
pub(crate) fn push_declaration(out: &mut Vec<u8>, prefix: Option<&str>, uri: &str) {
    let (doubles, singles) = (uri.contains('"'), uri.contains('\''));
    if uri.contains(['&', '<']) || (doubles && singles) {
        return match prefix {
            None => push_attr(out, "xmlns", uri),
            Some(p) => push_attr(out, &format!("xmlns:{p}"), uri),
        };
    }
    let quote = if doubles { b'\'' } else { b'"' };
    out.extend_from_slice(b" xmlns");
    if let Some(prefix) = prefix {
        out.push(b':');
        out.extend_from_slice(prefix.as_bytes());
    }
    out.push(b'=');
    out.push(quote);
    out.extend_from_slice(uri.as_bytes());
    out.push(quote);
}

/// Appends character data, escaped only as XML requires (so never longer
/// than its source): `&` and `<` as references, `>` only where it would
/// close a `]]>` — counting the `]` written just before this text, since
/// text and CDATA read as separate nodes (`]]<![CDATA[>]]>`) are written
/// side by side.
fn push_text(out: &mut Vec<u8>, text: &str) {
    let n = out.len();
    let before = [
        n.checked_sub(2).map(|j| out[j]),
        n.checked_sub(1).map(|j| out[j]),
    ];
    // the byte `k` places before `b[i]`, in what is written
    let back = |b: &[u8], i: usize, k: usize| match i.checked_sub(k) {
        Some(j) => Some(b[j]),
        None => before[2 - (k - i)],
    };
    push_escaped(out, text, |b, i| match b[i] {
        b'&' => Some(b"&amp;"),
        b'<' => Some(b"&lt;"),
        b'>' if back(b, i, 1) == Some(b']') && back(b, i, 2) == Some(b']') => Some(b"&gt;"),
        _ => None,
    });
}

fn attach(stack: &mut [Element], el: Element) -> bool {
    match stack.last_mut() {
        Some(parent) => {
            parent.children.push(Node::Element(el));
            true
        }
        None => false,
    }
}

pub(crate) fn new_reader(raw: &[u8]) -> Result<NsReader<&[u8]>, FramingError> {
    let s = std::str::from_utf8(raw).map_err(|_| not_well_formed("invalid UTF-8"))?;
    crate::wellformed::check(s)?;
    let mut reader = NsReader::from_reader(raw);
    let config = reader.config_mut();
    config.check_end_names = true;
    config.trim_text(false);
    Ok(reader)
}

pub(crate) fn namespace_of(
    resolved: &ResolveResult<'_>,
    default_ns: &str,
) -> Result<String, FramingError> {
    match resolved {
        ResolveResult::Bound(ns) => utf8(ns.as_ref()),
        ResolveResult::Unbound => Ok(default_ns.to_owned()),
        ResolveResult::Unknown(_) => Err(not_well_formed("undeclared namespace prefix")),
    }
}

/// Validates and returns the attributes of a start tag (duplicates, escapes,
/// prefixes), skipping `xmlns` and, unless `keep_prefix_decls`, `xmlns:*`.
pub(crate) fn checked_attrs(
    reader: &NsReader<&[u8]>,
    start: &BytesStart<'_>,
    keep_prefix_decls: bool,
) -> Result<Vec<(String, String)>, FramingError> {
    read_attrs(reader, start, keep_prefix_decls, None)
}

/// [`checked_attrs`], also noting in `prefixes` the namespace of each prefix
/// the attribute names use (once per prefix, `xml:` aside).
fn read_attrs(
    reader: &NsReader<&[u8]>,
    start: &BytesStart<'_>,
    keep_prefix_decls: bool,
    mut prefixes: Option<&mut Vec<(String, String)>>,
) -> Result<Vec<(String, String)>, FramingError> {
    let mut attrs = Vec::new();
    for attr in start.attributes().with_checks(true) {
        let attr = attr.map_err(not_well_formed)?;
        let key = attr.key.as_ref();
        let value = attr.unescape_value().map_err(not_well_formed)?;
        if key == b"xmlns" {
            continue;
        }
        if key.starts_with(b"xmlns:") {
            if keep_prefix_decls {
                attrs.push((utf8(key)?, value.into_owned()));
            }
            continue;
        }
        match reader.resolve_attribute(attr.key) {
            (ResolveResult::Unknown(_), _) => {
                return Err(not_well_formed("undeclared attribute prefix"));
            }
            (ResolveResult::Bound(uri), _) => {
                if let Some(prefixes) = prefixes.as_deref_mut()
                    && let Some(prefix) = attr.key.prefix()
                    && prefix.as_ref() != b"xml"
                    && !prefixes
                        .iter()
                        .any(|(p, _)| p.as_bytes() == prefix.as_ref())
                {
                    prefixes.push((utf8(prefix.as_ref())?, utf8(uri.as_ref())?));
                }
            }
            (ResolveResult::Unbound, _) => {}
        }
        attrs.push((utf8(key)?, value.into_owned()));
    }
    same_expanded_names(reader, &attrs)?;
    Ok(attrs)
}

/// Rejects two prefixed attributes whose prefixes are bound to one
/// namespace and whose local names are equal (`a:x` and `b:x`): the same
/// attribute twice to a namespace-aware parser. Quadratic in the prefixed
/// attributes, of which an element has at most
/// [`crate::wellformed::MAX_ATTRIBUTES`].
fn same_expanded_names(
    reader: &NsReader<&[u8]>,
    attrs: &[(String, String)],
) -> Result<(), FramingError> {
    fn prefixed((k, _): &(String, String)) -> Option<(&str, &str)> {
        k.split_once(':')
            .filter(|(p, _)| *p != "xmlns")
            .map(|(_, local)| (k.as_str(), local))
    }
    for (i, (a, local_a)) in attrs.iter().filter_map(prefixed).enumerate() {
        for (b, local_b) in attrs.iter().filter_map(prefixed).skip(i + 1) {
            if local_a != local_b {
                continue;
            }
            let ns = |k: &str| match reader.resolve_attribute(QName(k.as_bytes())).0 {
                ResolveResult::Bound(ns) => Some(ns.as_ref().to_vec()),
                _ => None,
            };
            if ns(a) == ns(b) {
                return Err(not_well_formed("the same attribute twice"));
            }
        }
    }
    Ok(())
}

pub(crate) fn utf8(bytes: &[u8]) -> Result<String, FramingError> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| not_well_formed("invalid UTF-8"))
}

pub(crate) fn not_well_formed(e: impl std::fmt::Display) -> FramingError {
    FramingError::new(StreamCondition::NotWellFormed, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ns;

    #[test]
    fn parses_and_writes_round_trip() {
        let raw = br#"<iq type='get' id='1' xml:lang='en'><query xmlns='http://jabber.org/protocol/disco#info'/><x:y xmlns:x='urn:x' a='&lt;&amp;'>t&apos;</x:y></iq>"#;
        let el = Element::parse(raw, ns::CLIENT).unwrap();
        assert_eq!(el.name, "iq");
        assert_eq!(el.ns, ns::CLIENT);
        assert_eq!(el.attr("xml:lang"), Some("en"));
        assert!(el.child("query", ns::DISCO_INFO).is_some());
        let y = el.child("y", "urn:x").unwrap();
        assert_eq!(y.attr("a"), Some("<&"));
        assert_eq!(y.text(), "t'");
        let again = Element::parse(&el.to_bytes(ns::CLIENT), ns::CLIENT).unwrap();
        assert_eq!(again, el);
    }

    /// Writes `el` and parses it back: fails unless what was written is
    /// namespace-well-formed (every prefix declared).
    fn written_and_parsed(el: &Element) -> Element {
        let written = el.to_bytes(ns::CLIENT);
        Element::parse(&written, ns::CLIENT).unwrap_or_else(|e| {
            panic!("{e:?}: {}", String::from_utf8_lossy(&written));
        })
    }

    #[test]
    fn prefixed_attributes_of_the_root_are_written_with_their_declaration() {
        let raw = br#"<message xmlns:p='urn:p' p:a='1' type='chat'><body>x</body></message>"#;
        let el = Element::parse(raw, ns::CLIENT).unwrap();
        assert_eq!(el.attr("p:a"), Some("1"));
        assert_eq!(el.prefixes, [("p".to_owned(), "urn:p".to_owned())]);
        assert_eq!(written_and_parsed(&el), el);
    }

    #[test]
    fn prefixed_attributes_of_children_are_written_with_their_declaration() {
        let raw =
            br#"<message><x xmlns='urn:x' xmlns:q='urn:q' q:b='2'><y q:c='3'/></x></message>"#;
        let el = Element::parse(raw, ns::CLIENT).unwrap();
        assert!(el.prefixes.is_empty());
        let x = el.child("x", "urn:x").unwrap();
        assert_eq!(x.prefixes, [("q".to_owned(), "urn:q".to_owned())]);
        assert_eq!(written_and_parsed(&el), el);
        // declared once, on the outermost element that uses it
        let written = String::from_utf8(el.to_bytes(ns::CLIENT)).unwrap();
        assert_eq!(written.matches("xmlns:q=").count(), 1, "{written}");
    }

    #[test]
    fn children_in_a_default_namespace_keep_it_and_their_own_children_inherit_it() {
        let raw = br#"<message><x xmlns='urn:x'><y/></x><z/></message>"#;
        let el = Element::parse(raw, ns::CLIENT).unwrap();
        let x = el.child("x", "urn:x").unwrap();
        assert!(x.child("y", "urn:x").is_some());
        assert!(el.child("z", ns::CLIENT).is_some());
        assert_eq!(written_and_parsed(&el), el);
        assert_eq!(
            el.to_bytes(ns::CLIENT),
            br#"<message><x xmlns="urn:x"><y/></x><z/></message>"#
        );
    }

    #[test]
    fn a_prefix_declared_on_the_root_and_used_on_a_child_is_declared_wherever_the_child_is_written()
    {
        let raw = br#"<message xmlns:p='urn:p'><x xmlns='urn:x' p:a='1'/><body>b</body></message>"#;
        let el = Element::parse(raw, ns::CLIENT).unwrap();
        assert_eq!(written_and_parsed(&el), el);
        // the child alone, as a subtree handed elsewhere
        let x = el.child("x", "urn:x").unwrap();
        assert_eq!(x.prefixes, [("p".to_owned(), "urn:p".to_owned())]);
        let alone = Element::parse(&x.to_bytes(ns::CLIENT), ns::CLIENT).unwrap();
        assert_eq!(&alone, x);
        // the same prefix bound to another namespace further in: declared again
        let raw = br#"<m xmlns:p='urn:1' p:a='1'><c xmlns:p='urn:2' p:b='2'/></m>"#;
        let el = Element::parse(raw, ns::CLIENT).unwrap();
        let again = written_and_parsed(&el);
        assert_eq!(again.elements().next().unwrap().prefixes[0].1, "urn:2");
        assert_eq!(again, el);
    }

    #[test]
    fn the_xml_prefix_is_never_declared() {
        let el = Element::parse(br#"<m xml:lang='en'><c xml:lang='de'/></m>"#, ns::CLIENT).unwrap();
        assert!(el.prefixes.is_empty());
        let written = String::from_utf8(el.to_bytes(ns::CLIENT)).unwrap();
        assert!(!written.contains("xmlns:xml"), "{written}");
        assert_eq!(written_and_parsed(&el), el);
    }

    #[test]
    fn namespace_names_with_quotes_and_angle_brackets_are_written_so_they_parse_back() {
        let raw = br#"<m xmlns:p='urn:"p>' p:a='1'><x xmlns='urn:a>b'/><y xmlns="urn:it's"/></m>"#;
        let el = Element::parse(raw, ns::CLIENT).unwrap();
        assert!(el.child("x", "urn:a>b").is_some());
        assert!(el.child("y", "urn:it's").is_some());
        assert_eq!(written_and_parsed(&el), el);
        // a subtree written alone too
        let x = el.child("x", "urn:a>b").unwrap();
        assert_eq!(&written_and_parsed(x), x);
    }

    #[test]
    fn what_is_written_is_never_longer_than_its_source_and_parses_back_identically() {
        let raw = br#"<message to='b@x' a='>>"""&apos;' b="''''&quot;" c='&amp;&lt;'><body>'"&gt;>]]&gt;</body></message>"#;
        let el = Element::parse(raw, ns::CLIENT).unwrap();
        assert_eq!(el.attr("a"), Some(r#">>"""'"#));
        assert_eq!(el.child("body", ns::CLIENT).unwrap().text(), r#"'">>]]>"#);
        let written = el.to_bytes(ns::CLIENT);
        assert!(
            written.len() <= raw.len(),
            "{} > {}: {}",
            written.len(),
            raw.len(),
            String::from_utf8_lossy(&written)
        );
        assert_eq!(written_and_parsed(&el), el);
        // what a program builds, whatever it holds, is written so it parses back
        let built = Element::new("m", ns::CLIENT)
            .with_attr("q", "both ' and \" <&>")
            .with_text("]]> & <x>");
        assert_eq!(written_and_parsed(&built), built);
    }

    #[test]
    fn a_cdata_end_split_across_text_and_cdata_nodes_is_written_escaped() {
        for raw in [
            &b"<message><body>]]<![CDATA[>]]></body></message>"[..],
            b"<message><body>]<![CDATA[]>]]></body></message>",
            b"<message><body><![CDATA[]]]]><![CDATA[>]]></body></message>",
        ] {
            let el = Element::parse(raw, ns::CLIENT).unwrap();
            let written = el.to_bytes(ns::CLIENT);
            let text = String::from_utf8_lossy(&written);
            assert!(!text.contains("]]>"), "{text}");
            crate::wellformed::check(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            assert_eq!(written_and_parsed(&el).text(), el.text());
        }
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            &b"<a><b></a>"[..],
            b"<a x='1' x='2'/>",
            b"<a>&unknown;</a>",
            b"<p:a/>",
            b"<a p:x='1'/>",
            b"<a>\xff</a>",
            b"<a>",
        ] {
            assert!(Element::parse(bad, ns::CLIENT).is_err(), "{bad:?}");
        }
    }
}
