//! XML namespaces used by longlink.

/// `jabber:client`, the default namespace of client streams.
pub const CLIENT: &str = "jabber:client";
/// `jabber:component:accept`, the default namespace of an external
/// component's stream (XEP-0114).
pub const COMPONENT_ACCEPT: &str = "jabber:component:accept";
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
/// XEP-0388 Extensible SASL Profile (SASL2).
pub const SASL2: &str = "urn:xmpp:sasl:2";
/// XEP-0386 Bind 2.
pub const BIND2: &str = "urn:xmpp:bind:0";
/// XEP-0484 Fast Authentication Streamlining Tokens.
pub const FAST: &str = "urn:xmpp:fast:0";
/// XEP-0352 client state indication.
pub const CSI: &str = "urn:xmpp:csi:0";
/// XEP-0184 message delivery receipts.
pub const RECEIPTS: &str = "urn:xmpp:receipts";
/// RFC 6120 STARTTLS.
pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
/// RFC 7395 XMPP over WebSocket framing (`<open/>`, `<close/>`).
pub const FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";
/// Rosters (RFC 6121).
pub const ROSTER: &str = "jabber:iq:roster";
/// Roster versioning stream feature (XEP-0237).
pub const ROSTER_VER: &str = "urn:xmpp:features:rosterver";
/// Message Carbons (XEP-0280).
pub const CARBONS: &str = "urn:xmpp:carbons:2";
/// Stanza Forwarding (XEP-0297).
pub const FORWARD: &str = "urn:xmpp:forward:0";
/// Message Archive Management (XEP-0313).
pub const MAM: &str = "urn:xmpp:mam:2";
/// What every version of the XEP-0313 namespace begins with.
pub const MAM_PREFIX: &str = "urn:xmpp:mam:";
/// Legacy delayed delivery (XEP-0091), still read by some clients.
pub const LEGACY_DELAY: &str = "jabber:x:delay";
/// Unique and stable stanza ids (XEP-0359).
pub const SID: &str = "urn:xmpp:sid:0";
/// Result Set Management (XEP-0059).
pub const RSM: &str = "http://jabber.org/protocol/rsm";
/// Data Forms (XEP-0004).
pub const DATA: &str = "jabber:x:data";
/// vCard-temp (XEP-0054).
pub const VCARD: &str = "vcard-temp";
/// In-band registration (XEP-0077).
pub const REGISTER: &str = "jabber:iq:register";
/// In-band registration stream feature (XEP-0077 §4).
pub const REGISTER_FEATURE: &str = "http://jabber.org/features/iq-register";
/// Message processing hints (XEP-0334).
pub const HINTS: &str = "urn:xmpp:hints";
/// Entity capabilities (XEP-0115).
pub const CAPS: &str = "http://jabber.org/protocol/caps";
/// External service discovery (XEP-0215).
pub const EXTDISCO: &str = "urn:xmpp:extdisco:2";
/// Private XML storage (XEP-0049).
pub const PRIVATE: &str = "jabber:iq:private";
/// Blocking Command (XEP-0191).
pub const BLOCKING: &str = "urn:xmpp:blocking";
/// Its application-specific error condition (XEP-0191 §3.5).
pub const BLOCKING_ERRORS: &str = "urn:xmpp:blocking:errors";
/// Publish-subscribe (XEP-0060), as personal eventing uses it (XEP-0163).
pub const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
/// Publish-subscribe owner requests (node configuration and deletion).
pub const PUBSUB_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
/// Publish-subscribe notifications.
pub const PUBSUB_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
/// Publish-subscribe application errors.
pub const PUBSUB_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
/// The `FORM_TYPE` of publish options.
pub const PUBSUB_PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";
/// The `FORM_TYPE` of a node's configuration.
pub const PUBSUB_NODE_CONFIG: &str = "http://jabber.org/protocol/pubsub#node_config";
