//! SASL2 (XEP-0388) with Bind2 (XEP-0386) and inline XEP-0198 stream
//! management, both ways: the stream feature, the client's
//! `<authenticate/>` with its inline requests, and the server's
//! `<success/>` / `<failure/>` / `<challenge/>`. Sans-IO: elements in,
//! values out, and back.
//!
//! Wire choices (see docs/design/sasl2-fast.md §2): the success names the
//! identity `<authorization-identifier>` (what every example, Prosody and
//! @xmpp/client use); empty additional data is an absent element; there is
//! no stream restart after success.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::element::Element;
use crate::ns;

/// Most bytes of a Bind2 `<tag/>` (it becomes the first part of the resource).
pub const MAX_TAG_BYTES: usize = 64;
/// Most bytes of a `<user-agent id/>`.
pub const MAX_USER_AGENT_ID_BYTES: usize = 64;

/// Why an `<authenticate/>` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Sasl2Error {
    /// It names no mechanism.
    #[error("no mechanism")]
    NoMechanism,
    /// The initial response or a response is not base64.
    #[error("incorrect encoding")]
    IncorrectEncoding,
    /// An inline `<resume/>` lacks `previd` or a numeric `h`.
    #[error("bad inline resume")]
    BadResume,
}

/// What a SASL2 feature offers of FAST (XEP-0484): the HT mechanisms this
/// connection can use (none: FAST is not offered) and whether a token may
/// be used in TLS early data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FastFeature {
    /// HT mechanisms, in preference order.
    pub mechanisms: Vec<&'static str>,
    /// `tls-0rtt='true'`: the server accepts a token use in 0-RTT data.
    pub tls_0rtt: bool,
}

/// The SASL2 stream feature the server offers: `mechanisms` (in order), with
/// Bind2 (carbons, CSI and SM enable inline), inline SM resumption and
/// `fast`'s mechanisms for FAST tokens (never among the SASL mechanisms,
/// so never in a SCRAM downgrade-protection hash: ejabberd #4331).
pub fn authentication_feature(mechanisms: &[&str], fast: &FastFeature) -> Element {
    let mut auth = Element::new("authentication", ns::SASL2);
    for m in mechanisms {
        auth = auth.with_child(Element::new("mechanism", ns::SASL2).with_text(*m));
    }
    let mut bind_inline = Element::new("inline", ns::BIND2);
    for var in [ns::CARBONS, ns::CSI, ns::SM] {
        bind_inline =
            bind_inline.with_child(Element::new("feature", ns::BIND2).with_attr("var", var));
    }
    let mut inline = Element::new("inline", ns::SASL2)
        .with_child(Element::new("bind", ns::BIND2).with_child(bind_inline))
        .with_child(Element::new("sm", ns::SM));
    if !fast.mechanisms.is_empty() {
        let mut el = Element::new("fast", ns::FAST);
        if fast.tls_0rtt {
            el = el.with_attr("tls-0rtt", "true");
        }
        for m in &fast.mechanisms {
            el = el.with_child(Element::new("mechanism", ns::FAST).with_text(*m));
        }
        inline = inline.with_child(el);
    }
    auth.with_child(inline)
}

/// What a server's SASL2 feature offers, as a client reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Offer {
    /// Mechanisms, in order.
    pub mechanisms: Vec<String>,
    /// Bind2 is offered inline.
    pub bind2: bool,
    /// The `var`s Bind2 takes inline (SM enable, carbons, CSI...).
    pub bind2_features: Vec<String>,
    /// Inline SM resumption is offered.
    pub sm: bool,
    /// The FAST (XEP-0484) HT mechanisms offered, in order.
    pub fast: Vec<String>,
    /// A FAST token may be used in TLS early data.
    pub fast_0rtt: bool,
}

impl Offer {
    /// Whether an `<authenticate/>` built from `earlier` (with its
    /// mechanism, chosen from this offer's) is served by this offer:
    /// every inline feature it may use is still offered.
    pub fn serves(&self, earlier: &Offer) -> bool {
        (!earlier.sm || self.sm)
            && (!earlier.bind2 || self.bind2)
            && earlier
                .bind2_features
                .iter()
                .all(|f| self.bind2_features.contains(f))
    }

    /// The SASL2 offer in a `<stream:features/>`, if there is one.
    pub fn from_features(features: &Element) -> Option<Offer> {
        let auth = features.child("authentication", ns::SASL2)?;
        let mechanisms = auth
            .elements()
            .filter(|e| e.name == "mechanism" && e.ns == ns::SASL2)
            .map(|e| e.text().trim().to_owned())
            .collect();
        let inline = auth.child("inline", ns::SASL2);
        let bind = inline.and_then(|i| i.child("bind", ns::BIND2));
        let bind2_features = bind
            .and_then(|b| b.child("inline", ns::BIND2))
            .map(|i| {
                i.elements()
                    .filter(|f| f.name == "feature")
                    .filter_map(|f| f.attr("var").map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let fast = inline.and_then(|i| i.child("fast", ns::FAST));
        Some(Offer {
            mechanisms,
            bind2: bind.is_some(),
            bind2_features,
            sm: inline.is_some_and(|i| i.child("sm", ns::SM).is_some()),
            fast: fast
                .map(|f| {
                    f.elements()
                        .filter(|e| e.name == "mechanism" && e.ns == ns::FAST)
                        .map(|e| e.text().trim().to_owned())
                        .collect()
                })
                .unwrap_or_default(),
            fast_0rtt: fast.is_some_and(|f| matches!(f.attr("tls-0rtt"), Some("true" | "1"))),
        })
    }

    /// Whether Bind2 takes `var` inline.
    pub fn bind2_offers(&self, var: &str) -> bool {
        self.bind2 && self.bind2_features.iter().any(|f| f == var)
    }
}

/// XEP-0388 `<user-agent/>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserAgent {
    /// Its stable id (a UUID; opaque to the server).
    pub id: Option<String>,
    /// The client software.
    pub software: Option<String>,
    /// The device.
    pub device: Option<String>,
}

/// XEP-0198 `<enable/>` inside a Bind2 request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SmEnable {
    /// `resume='true'`.
    pub resume: bool,
    /// The resumption time asked for (0: the server's default).
    pub max: u32,
}

/// A Bind2 `<bind/>` request (XEP-0386).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BindRequest {
    /// The client's tag: the resource becomes `tag/random`.
    pub tag: Option<String>,
    /// Enable stream management with the binding.
    pub sm: Option<SmEnable>,
    /// Enable message carbons with the binding.
    pub carbons: bool,
    /// Start inactive (XEP-0352).
    pub inactive: bool,
}

/// An inline XEP-0198 `<resume/>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resume {
    /// The SM id to resume.
    pub previd: String,
    /// What the client received of it.
    pub h: u32,
}

/// A FAST token use's `<fast/>` (XEP-0484) in an `<authenticate/>`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastUse {
    /// `count`: one more on every attempt with the token (replay guard).
    pub count: Option<u64>,
    /// `invalidate='true'`: end the token after this authentication.
    pub invalidate: bool,
}

/// A FAST token as the server grants it in a `<success/>` (XEP-0484 `<token/>`).
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// The token.
    pub token: String,
    /// When it expires, in seconds since the Unix epoch.
    pub expiry: i64,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // a token is a credential: not for logs
        f.debug_struct("Token")
            .field("expiry", &self.expiry)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// The `<token xmlns='urn:xmpp:fast:0' token expiry/>` element (the
    /// expiry an XEP-0082 date-time in UTC).
    pub fn to_element(&self) -> Element {
        let expiry = time::OffsetDateTime::from_unix_timestamp(self.expiry)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| "1970-01-01T00:00:00Z".into());
        Element::new("token", ns::FAST)
            .with_attr("token", &self.token)
            .with_attr("expiry", expiry)
    }

    /// Reads a `<token/>`; None if it lacks a token or a valid expiry.
    pub fn parse(el: &Element) -> Option<Token> {
        let token = el.attr("token").filter(|t| !t.is_empty())?.to_owned();
        let expiry = time::OffsetDateTime::parse(
            el.attr("expiry")?,
            &time::format_description::well_known::Rfc3339,
        )
        .ok()?
        .unix_timestamp();
        Some(Token { token, expiry })
    }
}

/// A client's `<authenticate/>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Authenticate {
    /// The SASL mechanism.
    pub mechanism: String,
    /// The initial response (None: absent; the server asks with an empty
    /// challenge).
    pub initial_response: Option<Vec<u8>>,
    /// The client's user agent.
    pub user_agent: Option<UserAgent>,
    /// A Bind2 request.
    pub bind: Option<BindRequest>,
    /// An inline resumption, tried before binding.
    pub resume: Option<Resume>,
    /// A FAST token use's `<fast/>`.
    pub fast: Option<FastUse>,
    /// `<request-token mechanism/>`: a FAST token for this HT mechanism.
    pub request_token: Option<String>,
}

impl Authenticate {
    /// Reads an `<authenticate xmlns='urn:xmpp:sasl:2'/>`; unknown inline
    /// requests are ignored (XEP-0388: the server ignores what it did not offer).
    pub fn parse(el: &Element) -> Result<Authenticate, Sasl2Error> {
        let mechanism = el
            .attr("mechanism")
            .filter(|m| !m.is_empty())
            .ok_or(Sasl2Error::NoMechanism)?
            .to_owned();
        let initial_response = el
            .child("initial-response", ns::SASL2)
            .map(|r| decode(&r.text()))
            .transpose()?;
        // (an id longer than any UUID is not one: ignored, as an absent
        // id is, rather than refusing the login over it)
        let user_agent = el.child("user-agent", ns::SASL2).map(|ua| UserAgent {
            id: ua
                .attr("id")
                .filter(|id| id.len() <= MAX_USER_AGENT_ID_BYTES)
                .map(str::to_owned),
            software: ua.child("software", ns::SASL2).map(|e| e.text()),
            device: ua.child("device", ns::SASL2).map(|e| e.text()),
        });
        let bind = el
            .child("bind", ns::BIND2)
            .map(|b| {
                // (a longer tag is cut to its first MAX_TAG_BYTES bytes'
                // characters: it only names the client in the resource)
                let tag = b
                    .child("tag", ns::BIND2)
                    .map(|t| truncated(t.text().trim(), MAX_TAG_BYTES).to_owned())
                    .filter(|t| !t.is_empty());
                let sm = b.child("enable", ns::SM).map(|e| SmEnable {
                    resume: matches!(e.attr("resume"), Some("true" | "1")),
                    max: e.attr("max").and_then(|m| m.parse().ok()).unwrap_or(0),
                });
                Ok(BindRequest {
                    tag,
                    sm,
                    carbons: b.child("enable", ns::CARBONS).is_some(),
                    inactive: b.child("inactive", ns::CSI).is_some(),
                })
            })
            .transpose()?;
        let resume = el
            .child("resume", ns::SM)
            .map(|r| {
                let previd = r.attr("previd").filter(|p| !p.is_empty());
                let h = r.attr("h").and_then(|h| h.parse::<u32>().ok());
                match (previd, h) {
                    (Some(previd), Some(h)) => Ok(Resume {
                        previd: previd.to_owned(),
                        h,
                    }),
                    _ => Err(Sasl2Error::BadResume),
                }
            })
            .transpose()?;
        let fast = el.child("fast", ns::FAST).map(|f| FastUse {
            count: f.attr("count").and_then(|c| c.parse().ok()),
            invalidate: matches!(f.attr("invalidate"), Some("true" | "1")),
        });
        let request_token = el
            .child("request-token", ns::FAST)
            .and_then(|r| r.attr("mechanism"))
            .filter(|m| !m.is_empty())
            .map(str::to_owned);
        Ok(Authenticate {
            mechanism,
            initial_response,
            user_agent,
            bind,
            resume,
            fast,
            request_token,
        })
    }

    /// The element, as a client writes it.
    pub fn to_element(&self) -> Element {
        let mut el =
            Element::new("authenticate", ns::SASL2).with_attr("mechanism", &self.mechanism);
        if let Some(data) = &self.initial_response {
            el = el.with_child(Element::new("initial-response", ns::SASL2).with_text(encode(data)));
        }
        if let Some(ua) = &self.user_agent {
            let mut u = Element::new("user-agent", ns::SASL2);
            if let Some(id) = &ua.id {
                u = u.with_attr("id", id);
            }
            if let Some(s) = &ua.software {
                u = u.with_child(Element::new("software", ns::SASL2).with_text(s));
            }
            if let Some(d) = &ua.device {
                u = u.with_child(Element::new("device", ns::SASL2).with_text(d));
            }
            el = el.with_child(u);
        }
        if let Some(f) = &self.fast {
            let mut e = Element::new("fast", ns::FAST);
            if let Some(count) = f.count {
                e = e.with_attr("count", count.to_string());
            }
            if f.invalidate {
                e = e.with_attr("invalidate", "true");
            }
            el = el.with_child(e);
        }
        if let Some(m) = &self.request_token {
            el = el.with_child(Element::new("request-token", ns::FAST).with_attr("mechanism", m));
        }
        if let Some(r) = &self.resume {
            el = el.with_child(
                Element::new("resume", ns::SM)
                    .with_attr("previd", &r.previd)
                    .with_attr("h", r.h.to_string()),
            );
        }
        if let Some(b) = &self.bind {
            let mut bind = Element::new("bind", ns::BIND2);
            if let Some(tag) = &b.tag {
                bind = bind.with_child(Element::new("tag", ns::BIND2).with_text(tag));
            }
            if let Some(sm) = b.sm {
                let mut e = Element::new("enable", ns::SM);
                if sm.resume {
                    e = e.with_attr("resume", "true");
                }
                if sm.max > 0 {
                    e = e.with_attr("max", sm.max.to_string());
                }
                bind = bind.with_child(e);
            }
            if b.carbons {
                bind = bind.with_child(Element::new("enable", ns::CARBONS));
            }
            if b.inactive {
                bind = bind.with_child(Element::new("inactive", ns::CSI));
            }
            el = el.with_child(bind);
        }
        el
    }
}

/// A SASL2 `<challenge/>` or `<response/>` (`name`) carrying `data`.
pub fn data_element(name: &str, data: &[u8]) -> Vec<u8> {
    // (empty data: an empty element, as RFC 6120 §6.4.3 has it for
    // challenges; `=` is the initial response's marker)
    Element::new(name, ns::SASL2)
        .with_text(B64.encode(data))
        .to_bytes(ns::CLIENT)
}

/// The data of a `<challenge/>` or `<response/>`.
pub fn read_data(el: &Element) -> Result<Vec<u8>, Sasl2Error> {
    decode(&el.text())
}

/// A SASL2 `<failure/>` with a SASL condition (RFC 6120 §6.5) and text.
pub fn failure(condition: &str, text: Option<&str>) -> Vec<u8> {
    let mut el = Element::new("failure", ns::SASL2).with_child(Element::new(condition, ns::SASL));
    if let Some(text) = text {
        el = el.with_child(Element::new("text", ns::SASL2).with_text(text));
    }
    el.to_bytes(ns::CLIENT)
}

/// The condition of a SASL2 `<failure/>` (`not-authorized` if it names none).
pub fn failure_condition(el: &Element) -> String {
    el.elements()
        .find(|c| c.ns == ns::SASL)
        .map(|c| c.name.clone())
        .unwrap_or_else(|| "not-authorized".into())
}

/// A `<success/>`: the mechanism's additional data (absent when empty),
/// the authorization identifier (a bare or full JID), and the answers to
/// inline requests, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Success {
    /// The mechanism's last message (SCRAM's server-final).
    pub additional_data: Vec<u8>,
    /// The authenticated (and bound, after Bind2 or a resumption) JID.
    pub authorization_identifier: String,
    /// Inline answers: `<bound/>`, `<resumed/>`, `<failed/>`.
    pub inline: Vec<Element>,
}

impl Success {
    /// The element's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut el = Element::new("success", ns::SASL2);
        if !self.additional_data.is_empty() {
            el = el.with_child(
                Element::new("additional-data", ns::SASL2)
                    .with_text(B64.encode(&self.additional_data)),
            );
        }
        el = el.with_child(
            Element::new("authorization-identifier", ns::SASL2)
                .with_text(&self.authorization_identifier),
        );
        for i in &self.inline {
            el = el.with_child(i.clone());
        }
        el.to_bytes(ns::CLIENT)
    }

    /// Reads a `<success/>`.
    pub fn parse(el: &Element) -> Result<Success, Sasl2Error> {
        let additional_data = el
            .child("additional-data", ns::SASL2)
            .map(|d| decode(&d.text()))
            .transpose()?
            .unwrap_or_default();
        let authorization_identifier = el
            .child("authorization-identifier", ns::SASL2)
            .map(|a| a.text().trim().to_owned())
            .unwrap_or_default();
        let inline = el
            .elements()
            .filter(|c| c.ns != ns::SASL2)
            .cloned()
            .collect();
        Ok(Success {
            additional_data,
            authorization_identifier,
            inline,
        })
    }

    /// The inline answer `name` in `ns`, if any.
    pub fn inline(&self, name: &str, ns: &str) -> Option<&Element> {
        self.inline.iter().find(|e| e.name == name && e.ns == ns)
    }
}

/// Bind2's `<bound/>`, holding the answers to its inline requests (SM's
/// `<enabled/>` or `<failed/>`).
pub fn bound(children: Vec<Element>) -> Element {
    children
        .into_iter()
        .fold(Element::new("bound", ns::BIND2), Element::with_child)
}

/// The longest prefix of `text` of at most `max` bytes that ends on a
/// character boundary.
fn truncated(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// An initial response's text.
fn encode(data: &[u8]) -> String {
    if data.is_empty() {
        // RFC 6120 §6.4.2: `=` is an initial response without data.
        "=".to_owned()
    } else {
        B64.encode(data)
    }
}

fn decode(text: &str) -> Result<Vec<u8>, Sasl2Error> {
    match text.trim() {
        "" | "=" => Ok(Vec::new()),
        t => B64.decode(t).map_err(|_| Sasl2Error::IncorrectEncoding),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Element {
        Element::parse(xml.as_bytes(), ns::CLIENT).unwrap()
    }

    #[test]
    fn the_feature_offers_mechanisms_bind2_with_carbons_csi_sm_and_inline_resume() {
        let mut features = Element::new("features", ns::STREAMS);
        features = features.with_child(authentication_feature(
            &["SCRAM-SHA-1", "PLAIN"],
            &FastFeature::default(),
        ));
        let bytes = features.to_bytes(ns::CLIENT);
        let offer = Offer::from_features(&parse(std::str::from_utf8(&bytes).unwrap())).unwrap();
        assert_eq!(offer.mechanisms, ["SCRAM-SHA-1", "PLAIN"]);
        assert!(offer.bind2 && offer.sm);
        for var in [ns::SM, ns::CARBONS, ns::CSI] {
            assert!(offer.bind2_offers(var), "{var}");
        }
        assert_eq!(
            Offer::from_features(&Element::new("features", ns::STREAMS)),
            None
        );
    }

    #[test]
    fn authenticate_as_the_design_writes_it_parses_and_writes_back_the_same() {
        // docs/design/sasl2-fast.md §3.2 without FAST, plus a user agent
        let el = parse(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='SCRAM-SHA-256'>\
             <initial-response>biwsbj1hbGljZSxyPXJPcHJOR2Z3RWJlUldnYk5Fa3FP</initial-response>\
             <user-agent id='d4565fa7-4d72-4749-b3d3-740edbf87770'>\
             <software>longlink-sdk</software><device>Pixel 8</device></user-agent>\
             <resume xmlns='urn:xmpp:sm:3' previd='c2VjcmV0' h='41'/>\
             <bind xmlns='urn:xmpp:bind:0'><tag>longlink</tag>\
             <enable xmlns='urn:xmpp:sm:3' resume='true' max='300'/>\
             <enable xmlns='urn:xmpp:carbons:2'/><inactive xmlns='urn:xmpp:csi:0'/></bind>\
             <unknown xmlns='urn:example'/></authenticate>",
        );
        let a = Authenticate::parse(&el).unwrap();
        assert_eq!(a.mechanism, "SCRAM-SHA-256");
        assert_eq!(
            a.initial_response.as_deref(),
            Some(&b"n,,n=alice,r=rOprNGfwEbeRWgbNEkqO"[..])
        );
        let ua = a.user_agent.clone().unwrap();
        assert_eq!(
            ua.id.as_deref(),
            Some("d4565fa7-4d72-4749-b3d3-740edbf87770")
        );
        assert_eq!(ua.device.as_deref(), Some("Pixel 8"));
        assert_eq!(
            a.resume,
            Some(Resume {
                previd: "c2VjcmV0".into(),
                h: 41
            })
        );
        assert_eq!(
            a.bind,
            Some(BindRequest {
                tag: Some("longlink".into()),
                sm: Some(SmEnable {
                    resume: true,
                    max: 300
                }),
                carbons: true,
                inactive: true,
            })
        );
        let again = Authenticate::parse(&parse(
            std::str::from_utf8(&a.to_element().to_bytes(ns::CLIENT)).unwrap(),
        ))
        .unwrap();
        assert_eq!(again, a);
    }

    #[test]
    fn authenticate_refuses_no_mechanism_bad_base64_and_bad_resume_but_cuts_long_tags() {
        let cases = [
            (
                "<authenticate xmlns='urn:xmpp:sasl:2'/>",
                Sasl2Error::NoMechanism,
            ),
            (
                "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>!!</initial-response></authenticate>",
                Sasl2Error::IncorrectEncoding,
            ),
            (
                "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><resume xmlns='urn:xmpp:sm:3' previd='x' h='-1'/></authenticate>",
                Sasl2Error::BadResume,
            ),
        ];
        for (xml, err) in cases {
            assert_eq!(Authenticate::parse(&parse(xml)), Err(err), "{xml}");
        }
        // a long tag is cut on a character boundary, a long user-agent id
        // ignored: neither refuses the login
        let long = format!(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><user-agent id='{}'/><bind xmlns='urn:xmpp:bind:0'><tag>{}é</tag></bind></authenticate>",
            "u".repeat(MAX_USER_AGENT_ID_BYTES + 1),
            "t".repeat(MAX_TAG_BYTES - 1)
        );
        let long = Authenticate::parse(&parse(&long)).unwrap();
        assert_eq!(
            long.bind.and_then(|b| b.tag),
            Some("t".repeat(MAX_TAG_BYTES - 1))
        );
        assert_eq!(long.user_agent.and_then(|ua| ua.id), None);
        // no initial response at all, and an empty one, differ
        let none = Authenticate::parse(&parse(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'/>",
        ))
        .unwrap();
        assert_eq!(none.initial_response, None);
        let empty = Authenticate::parse(&parse(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>=</initial-response></authenticate>",
        ))
        .unwrap();
        assert_eq!(empty.initial_response, Some(Vec::new()));
    }

    #[test]
    fn fast_is_offered_inline_requested_used_and_granted_as_xep_0484_writes_it() {
        let fast = FastFeature {
            mechanisms: vec!["HT-SHA-256-EXPR", "HT-SHA-256-NONE"],
            tls_0rtt: true,
        };
        let feature = authentication_feature(&["SCRAM-SHA-256"], &fast);
        let features = Element::new("features", ns::STREAMS).with_child(feature);
        let bytes = features.to_bytes(ns::CLIENT);
        let offer = Offer::from_features(&parse(std::str::from_utf8(&bytes).unwrap())).unwrap();
        assert_eq!(offer.mechanisms, ["SCRAM-SHA-256"], "HT never among SASL's");
        assert_eq!(offer.fast, ["HT-SHA-256-EXPR", "HT-SHA-256-NONE"]);
        assert!(offer.fast_0rtt);
        let plain = authentication_feature(&["PLAIN"], &FastFeature::default());
        let plain = Element::new("features", ns::STREAMS).with_child(plain);
        let offer = Offer::from_features(&parse(
            std::str::from_utf8(&plain.to_bytes(ns::CLIENT)).unwrap(),
        ))
        .unwrap();
        assert!(offer.fast.is_empty() && !offer.fast_0rtt);

        // a use with count and invalidate, a request, as XEP-0484 §3 writes them
        let el = parse(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='HT-SHA-256-NONE'>\
             <initial-response>YWxpY2UAkJd4dGGhhOD6hOwAwTgRkLbE0WqOxEU8eyrF5/z5Ne0=</initial-response>\
             <user-agent id='d4565fa7'/><fast xmlns='urn:xmpp:fast:0' count='7' invalidate='true'/>\
             <request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/></authenticate>",
        );
        let a = Authenticate::parse(&el).unwrap();
        assert_eq!(
            a.fast,
            Some(FastUse {
                count: Some(7),
                invalidate: true
            })
        );
        assert_eq!(a.request_token.as_deref(), Some("HT-SHA-256-NONE"));
        let again = Authenticate::parse(&parse(
            std::str::from_utf8(&a.to_element().to_bytes(ns::CLIENT)).unwrap(),
        ))
        .unwrap();
        assert_eq!(again, a);
        // @xmpp/client's use: no count
        let a = Authenticate::parse(&parse(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='HT-SHA-256-NONE'><fast xmlns='urn:xmpp:fast:0'/></authenticate>",
        ))
        .unwrap();
        assert_eq!(a.fast, Some(FastUse::default()));

        // the grant, with an XEP-0082 expiry, inline in a success
        let token = Token {
            token: "WXZzciBwYmFmdmZnZiBqdmd1IGp2eXFhcmZm".into(),
            expiry: 1_798_111_200,
        };
        let el = token.to_element();
        assert_eq!(el.attr("expiry"), Some("2026-12-24T11:20:00Z"));
        let s = Success {
            authorization_identifier: "alice@example.org".into(),
            inline: vec![el],
            ..Success::default()
        };
        let back = Success::parse(&parse(std::str::from_utf8(&s.to_bytes()).unwrap())).unwrap();
        let got = Token::parse(back.inline("token", ns::FAST).unwrap()).unwrap();
        assert_eq!(got, token);
        assert_eq!(
            Token::parse(&parse(
                "<token xmlns='urn:xmpp:fast:0' token='x' expiry='soon'/>"
            )),
            None
        );
    }

    #[test]
    fn an_offer_serves_an_earlier_one_whose_inline_features_it_still_has() {
        let full = Offer {
            mechanisms: vec!["SCRAM-SHA-256".into()],
            bind2: true,
            bind2_features: vec![ns::SM.into(), ns::CARBONS.into()],
            sm: true,
            ..Offer::default()
        };
        let more = Offer {
            mechanisms: vec!["SCRAM-SHA-1".into(), "SCRAM-SHA-256".into()],
            bind2_features: vec![ns::CSI.into(), ns::SM.into(), ns::CARBONS.into()],
            ..full.clone()
        };
        assert!(more.serves(&full), "more, in another order");
        assert!(full.serves(&full));
        let no_carbons = Offer {
            bind2_features: vec![ns::SM.into()],
            ..full.clone()
        };
        assert!(!no_carbons.serves(&full));
        assert!(
            !Offer {
                sm: false,
                ..full.clone()
            }
            .serves(&full)
        );
        assert!(
            !Offer {
                bind2: false,
                ..full.clone()
            }
            .serves(&full)
        );
        assert!(full.serves(&Offer::default()));
    }

    #[test]
    fn success_uses_authorization_identifier_and_omits_empty_additional_data() {
        let s = Success {
            additional_data: Vec::new(),
            authorization_identifier: "alice@example.org/longlink/x".into(),
            inline: vec![bound(vec![
                Element::new("enabled", ns::SM).with_attr("id", "sm1"),
            ])],
        };
        let bytes = String::from_utf8(s.to_bytes()).unwrap();
        assert_eq!(
            bytes,
            "<success xmlns=\"urn:xmpp:sasl:2\"><authorization-identifier>alice@example.org/longlink/x</authorization-identifier><bound xmlns=\"urn:xmpp:bind:0\"><enabled xmlns=\"urn:xmpp:sm:3\" id=\"sm1\"/></bound></success>"
        );
        let back = Success::parse(&parse(&bytes)).unwrap();
        assert_eq!(back, s);
        assert!(back.inline("bound", ns::BIND2).is_some());
        let with_data = Success {
            additional_data: b"v=abc".to_vec(),
            ..s
        };
        let back = Success::parse(&parse(std::str::from_utf8(&with_data.to_bytes()).unwrap()));
        assert_eq!(back.unwrap().additional_data, b"v=abc");
    }

    #[test]
    fn failure_carries_a_sasl_condition_and_challenges_round_trip() {
        let f = failure("not-authorized", Some("no"));
        let el = parse(std::str::from_utf8(&f).unwrap());
        assert_eq!(el.ns, ns::SASL2);
        assert_eq!(failure_condition(&el), "not-authorized");
        let c = data_element("challenge", b"r=abc");
        assert_eq!(
            read_data(&parse(std::str::from_utf8(&c).unwrap())).unwrap(),
            b"r=abc"
        );
    }
}
