//! Strict well-formedness of one complete element, as a strict parser
//! (expat, libxml2) sees it: XML 1.0 (fifth edition) and Namespaces in XML
//! 1.0, restricted as XMPP restricts it (RFC 6120 §11.1). One linear pass
//! over the bytes, no allocation.
//!
//! quick-xml, which reads the element afterwards ([`crate::stanza::inspect`],
//! [`crate::Element::parse`]), is lenient where a strict parser ends the
//! stream, so whatever the CM relays must pass this first. Checked here:
//!
//! - characters: only XML `Char`s, raw or as character references (no C0
//!   controls but tab, newline and carriage return; no U+FFFE, U+FFFF; no
//!   references to surrogates or beyond U+10FFFF);
//! - names: element and attribute names are XML `QName`s (one colon at
//!   most, not first or last), never prefixed `xmlns` or `xml` on an
//!   element; and, a policy, made of ASCII and Latin-1 letters only: beyond
//!   them strict parsers disagree (expat applies the fourth edition's name
//!   classes, where for example U+0660 cannot start a name and unassigned
//!   code points are refused; libxml2 and roxmltree the fifth's), so a name
//!   one accepts could end another's stream. No XMPP namespace uses such
//!   names; they are refused with `policy-violation`;
//! - references: only the five predefined entities and numeric character
//!   references, each closed by `;`; `&` nowhere else;
//! - `<` never in an attribute value, `]]>` never in text;
//! - tags: whitespace between attributes, `Eq`, quoted values, `/>` or
//!   `>`; end tags are a name, optional whitespace and `>`;
//! - attributes: no duplicate names as written, at most [`MAX_ATTRIBUTES`]
//!   per element (namespace declarations included: a policy, so that the
//!   duplicate checks stay cheap);
//! - namespace declarations: `xml` bound only to its namespace, `xmlns`
//!   never declared, neither namespace bound to another prefix or as the
//!   default, no prefix undeclared (`xmlns:p=''`), and no references or
//!   whitespace in namespace names (a policy, URIs have neither: the
//!   namespace names quick-xml resolves, unnormalised, are then the ones a
//!   strict parser resolves, and they can be written back as they came);
//! - no comments, processing instructions or DTDs (restricted XML); CDATA
//!   sections are well-formed XML and pass;
//! - exactly one element, whitespace around it at most.
//!
//! Left to the quick-xml pass that follows: end tags matching their start
//! tags, prefixes bound where used, and duplicate attributes after
//! namespace resolution (`a:x` and `b:x` with `a` and `b` bound to one
//! namespace), which need the namespace scopes.

use crate::condition::StreamCondition;
use crate::framer::FramingError;

/// Most attributes one element may carry, namespace declarations included.
pub const MAX_ATTRIBUTES: usize = 64;

const XML_NS: &[u8] = b"http://www.w3.org/XML/1998/namespace";
const XMLNS_NS: &[u8] = b"http://www.w3.org/2000/xmlns/";

/// Checks that `s` is one well-formed element (see the module docs).
pub fn check(s: &str) -> Result<(), FramingError> {
    Checker {
        s,
        b: s.as_bytes(),
        pos: 0,
    }
    .document()
}

fn bad(text: &'static str) -> FramingError {
    FramingError::new(StreamCondition::NotWellFormed, text)
}

fn restricted() -> FramingError {
    FramingError::new(
        StreamCondition::RestrictedXml,
        "comments, processing instructions and DTDs are not allowed",
    )
}

/// Whether `c` is an XML 1.0 `Char`.
pub(crate) fn is_xml_char(c: u32) -> bool {
    matches!(c, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// XML 1.0 `NameStartChar`, the colon aside (names are checked as `QName`s).
fn is_name_start(c: char) -> bool {
    matches!(c,
        'A'..='Z' | '_' | 'a'..='z'
        | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}' | '\u{F8}'..='\u{2FF}'
        | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}' | '\u{200C}'..='\u{200D}'
        | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}' | '\u{3001}'..='\u{D7FF}'
        | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}' | '\u{10000}'..='\u{EFFFF}')
}

/// XML 1.0 `NameChar`, the colon aside.
fn is_name_char(c: char) -> bool {
    is_name_start(c)
        || matches!(c,
            '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

/// Whether a name character is one every strict parser takes, in every
/// edition of XML 1.0: ASCII, or a Latin-1 letter or middle dot.
fn is_portable_name_char(c: char) -> bool {
    c.is_ascii()
        || matches!(c, '\u{B7}' | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}' | '\u{F8}'..='\u{FF}')
}

struct Checker<'a> {
    s: &'a str,
    b: &'a [u8],
    pos: usize,
}

impl<'a> Checker<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn at(&self, literal: &[u8]) -> bool {
        self.b[self.pos..].starts_with(literal)
    }

    fn skip_space(&mut self) -> bool {
        let start = self.pos;
        while self.peek().is_some_and(is_space) {
            self.pos += 1;
        }
        self.pos > start
    }

    fn document(&mut self) -> Result<(), FramingError> {
        let mut depth = 0usize;
        let mut seen = false;
        while let Some(b) = self.peek() {
            match b {
                b'<' => match self.b.get(self.pos + 1) {
                    Some(b'/') if depth > 0 => {
                        self.end_tag()?;
                        depth -= 1;
                    }
                    Some(b'/') => return Err(bad("end tag outside the element")),
                    Some(b'!') if depth > 0 => self.cdata()?,
                    Some(b'!' | b'?') => return Err(restricted()),
                    _ if depth == 0 && seen => return Err(bad("more than one element")),
                    _ => {
                        seen = true;
                        if !self.start_tag()? {
                            depth += 1;
                        }
                    }
                },
                _ if depth == 0 => {
                    if !is_space(b) {
                        return Err(bad("text outside the element"));
                    }
                    self.pos += 1;
                }
                _ => self.char_data()?,
            }
        }
        if depth != 0 || !seen {
            return Err(bad("incomplete element"));
        }
        Ok(())
    }

    /// Checks one raw character at `pos` (not `<` or `&`) and steps over it.
    fn char_at(&mut self, b: u8) -> Result<(), FramingError> {
        if b < 0x20 && !is_space(b) {
            return Err(bad("character not allowed in XML"));
        }
        // U+FFFE and U+FFFF are EF BF BE and EF BF BF in UTF-8.
        if b == 0xEF
            && self.b.get(self.pos + 1) == Some(&0xBF)
            && matches!(self.b.get(self.pos + 2), Some(0xBE | 0xBF))
        {
            return Err(bad("character not allowed in XML"));
        }
        self.pos += 1;
        Ok(())
    }

    /// Character data up to the next `<`.
    fn char_data(&mut self) -> Result<(), FramingError> {
        while let Some(b) = self.peek() {
            match b {
                b'<' => return Ok(()),
                b'&' => self.reference()?,
                b']' if self.at(b"]]>") => return Err(bad("']]>' in text")),
                _ => self.char_at(b)?,
            }
        }
        Ok(())
    }

    /// `&...;` at `pos`: a predefined entity or a character reference to a
    /// `Char`.
    fn reference(&mut self) -> Result<(), FramingError> {
        self.pos += 1;
        if self.peek() == Some(b'#') {
            self.pos += 1;
            let hex = self.peek() == Some(b'x');
            if hex {
                self.pos += 1;
            }
            let radix = if hex { 16 } else { 10 };
            let (mut value, mut digits) = (0u32, 0usize);
            while let Some(d) = self.peek().and_then(|b| (b as char).to_digit(radix)) {
                // saturate past the largest code point: still invalid
                value = value.saturating_mul(radix).saturating_add(d).min(0x11_0000);
                digits += 1;
                self.pos += 1;
            }
            if digits == 0 || self.peek() != Some(b';') {
                return Err(bad("malformed character reference"));
            }
            self.pos += 1;
            return match is_xml_char(value) {
                true => Ok(()),
                false => Err(bad("character reference to a character not allowed in XML")),
            };
        }
        for name in [&b"lt;"[..], b"gt;", b"amp;", b"apos;", b"quot;"] {
            if self.at(name) {
                self.pos += name.len();
                return Ok(());
            }
        }
        Err(bad("undefined entity or unescaped '&'"))
    }

    /// An `NCName` at `pos`; false if there is none. A name character
    /// beyond the portable ones is refused (see the module docs).
    fn nc_name(&mut self) -> Result<bool, FramingError> {
        let mut first = true;
        while let Some(c) = self.s[self.pos..].chars().next() {
            let ok = if first {
                is_name_start(c)
            } else {
                is_name_char(c)
            };
            if !ok {
                break;
            }
            if !is_portable_name_char(c) {
                return Err(FramingError::new(
                    StreamCondition::PolicyViolation,
                    "names beyond ASCII and Latin-1 letters are not accepted",
                ));
            }
            first = false;
            self.pos += c.len_utf8();
        }
        Ok(!first)
    }

    /// A `QName` at `pos`: its bytes and its prefix length (0: none).
    fn qname(&mut self) -> Result<(&'a [u8], usize), FramingError> {
        let start = self.pos;
        if !self.nc_name()? {
            return Err(bad("invalid name"));
        }
        let mut prefix = 0;
        if self.peek() == Some(b':') {
            prefix = self.pos - start;
            self.pos += 1;
            if !self.nc_name()? || self.peek() == Some(b':') {
                return Err(bad("invalid qualified name"));
            }
        }
        let b: &'a [u8] = self.b;
        Ok((&b[start..self.pos], prefix))
    }

    /// A start tag at `pos` (its `<`); whether it is empty (`/>`).
    fn start_tag(&mut self) -> Result<bool, FramingError> {
        self.pos += 1;
        let (name, prefix) = self.qname()?;
        // xmlns: Namespaces in XML §3; xml: no element is in the XML
        // namespace, and strict parsers (roxmltree) refuse it
        if prefix > 0 && matches!(&name[..prefix], b"xmlns" | b"xml") {
            return Err(bad("element prefixed xmlns or xml"));
        }
        // where each attribute name is, for the duplicate check
        let mut names = [(0u32, 0u32); MAX_ATTRIBUTES];
        let mut count = 0;
        loop {
            let spaced = self.skip_space();
            match self.peek() {
                Some(b'>') => {
                    self.pos += 1;
                    return Ok(false);
                }
                Some(b'/') if self.at(b"/>") => {
                    self.pos += 2;
                    return Ok(true);
                }
                Some(_) if spaced => {
                    if count == MAX_ATTRIBUTES {
                        return Err(FramingError::new(
                            StreamCondition::PolicyViolation,
                            "too many attributes on one element",
                        ));
                    }
                    let name = self.attribute()?;
                    let this = &self.b[name.0 as usize..name.1 as usize];
                    if names[..count]
                        .iter()
                        .any(|&(s, e)| &self.b[s as usize..e as usize] == this)
                    {
                        return Err(bad("duplicate attribute"));
                    }
                    names[count] = name;
                    count += 1;
                }
                _ => return Err(bad("malformed start tag")),
            }
        }
    }

    /// `name = 'value'` at `pos`: where its name is.
    fn attribute(&mut self) -> Result<(u32, u32), FramingError> {
        let start = self.pos;
        let (name, prefix) = self.qname()?;
        let declared = match (prefix, name) {
            (0, b"xmlns") => Some(&b""[..]),
            (5, _) if name.starts_with(b"xmlns:") => Some(&name[6..]),
            _ => None,
        };
        let end = self.pos;
        self.skip_space();
        if self.peek() != Some(b'=') {
            return Err(bad("attribute without a value"));
        }
        self.pos += 1;
        self.skip_space();
        let quote = match self.peek() {
            Some(q @ (b'"' | b'\'')) => q,
            _ => return Err(bad("unquoted attribute value")),
        };
        self.pos += 1;
        let value_start = self.pos;
        loop {
            match self.peek() {
                None => return Err(bad("unterminated attribute value")),
                Some(q) if q == quote => break,
                Some(b'<') => return Err(bad("'<' in an attribute value")),
                Some(b'&' | b' ' | b'\t' | b'\n' | b'\r') if declared.is_some() => {
                    return Err(bad(
                        "references and whitespace in namespace names are not accepted",
                    ));
                }
                Some(b'&') => self.reference()?,
                Some(b) => self.char_at(b)?,
            }
        }
        let b: &'a [u8] = self.b;
        let value = &b[value_start..self.pos];
        self.pos += 1;
        if let Some(prefix) = declared {
            namespace_declaration(prefix, value)?;
        }
        // names are shorter than the stanza, which a u32 measures
        Ok((start as u32, end as u32))
    }

    /// `<![CDATA[...]]>` at `pos` (anything else after `<!` is restricted).
    fn cdata(&mut self) -> Result<(), FramingError> {
        if !self.at(b"<![CDATA[") {
            return Err(restricted());
        }
        self.pos += 9;
        while let Some(b) = self.peek() {
            if b == b']' && self.at(b"]]>") {
                self.pos += 3;
                return Ok(());
            }
            self.char_at(b)?;
        }
        Err(bad("unterminated CDATA section"))
    }

    /// An end tag at `pos` (its `<`).
    fn end_tag(&mut self) -> Result<(), FramingError> {
        self.pos += 2;
        self.qname()?;
        self.skip_space();
        if self.peek() != Some(b'>') {
            return Err(bad("malformed end tag"));
        }
        self.pos += 1;
        Ok(())
    }
}

/// Namespaces in XML 1.0 §3: what `prefix` (empty: the default namespace)
/// may be bound to.
fn namespace_declaration(prefix: &[u8], uri: &[u8]) -> Result<(), FramingError> {
    let ok = match prefix {
        b"xml" => uri == XML_NS,
        b"xmlns" => false,
        b"" => uri != XML_NS && uri != XMLNS_NS,
        _ => !uri.is_empty() && uri != XML_NS && uri != XMLNS_NS,
    };
    match ok {
        true => Ok(()),
        false => Err(bad("namespace declaration not allowed")),
    }
}
