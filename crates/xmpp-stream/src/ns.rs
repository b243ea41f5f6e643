//! XML namespaces used by longlink.

/// `jabber:client`, the default namespace of client streams.
pub const CLIENT: &str = "jabber:client";
/// The stream namespace (`stream:` prefix).
pub const STREAMS: &str = "http://etherx.jabber.org/streams";
/// Stream error conditions.
pub const STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
/// Stanza error conditions.
pub const STANZA_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
/// SASL negotiation.
pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
/// Resource binding.
pub const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
/// XEP-0199 ping.
pub const PING: &str = "urn:xmpp:ping";
/// XEP-0030 disco#info.
pub const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
/// XEP-0030 disco#items.
pub const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
/// XEP-0203 delayed delivery.
pub const DELAY: &str = "urn:xmpp:delay";
/// The `xml:` prefix namespace.
pub const XML: &str = "http://www.w3.org/XML/1998/namespace";
/// XEP-0198 stream management.
pub const SM: &str = "urn:xmpp:sm:3";
/// XEP-0352 client state indication.
pub const CSI: &str = "urn:xmpp:csi:0";
/// XEP-0184 message delivery receipts.
pub const RECEIPTS: &str = "urn:xmpp:receipts";
/// RFC 6120 STARTTLS.
pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
/// RFC 7395 XMPP over WebSocket framing (`<open/>`, `<close/>`).
pub const FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";
