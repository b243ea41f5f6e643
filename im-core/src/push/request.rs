//! The pure parts the router needs around the service: a client's
//! `<enable/>` and `<disable/>` (XEP-0357 §5, §6), and the error of an app
//! server's answer to a publish.

use bytes::Bytes;
use jid::Jid;
use xmpp_stream::element::Element;
use xmpp_stream::{StanzaCondition, ns};

use super::{ErrorType, NS};

/// Longest node name taken (it is part of the storage key).
pub const MAX_NODE_BYTES: usize = 1023;
/// Longest app server JID taken (RFC 7622: three parts of 1023 bytes).
pub const MAX_JID_BYTES: usize = 3071;
/// Most bytes of a publish-options form, as this server writes it out.
pub const MAX_OPTIONS_BYTES: usize = 2048;

/// A client's request, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushRequest {
    /// Publish notifications to `node` of `jid` (insert or replace).
    Enable {
        /// The app server's push service, normalized.
        jid: String,
        /// The node.
        node: String,
        /// The publish-options form (`<x xmlns='jabber:x:data'
        /// type='submit'>`, as this server writes it), if one was given.
        options: Option<Bytes>,
    },
    /// Stop publishing to `node` of `jid`, or to every node of `jid`.
    Disable {
        /// The app server's push service, normalized.
        jid: String,
        /// The node; `None`: all of that service's.
        node: Option<String>,
    },
}

/// Why a client's `<enable/>` or `<disable/>` is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The element is neither `<enable/>` nor `<disable/>` of
    /// `urn:xmpp:push:0`.
    #[error("not an enable or disable of urn:xmpp:push:0")]
    NotPush,
    /// No `jid` attribute.
    #[error("the jid attribute is missing")]
    MissingJid,
    /// A `jid` that is not a valid JID (or is longer than
    /// [`MAX_JID_BYTES`]).
    #[error("the jid attribute is not a valid JID")]
    BadJid,
    /// An enable without a `node`, or a `node` that is empty.
    #[error("the node attribute is missing or empty")]
    MissingNode,
    /// A node longer than [`MAX_NODE_BYTES`].
    #[error("the node is too long")]
    NodeTooLong,
    /// The `jabber:x:data` child is not a publish-options form.
    #[error("the form is not a publish-options form")]
    BadForm,
    /// The publish-options form is longer than [`MAX_OPTIONS_BYTES`].
    #[error("the publish-options form is too large")]
    FormTooLarge,
}

impl RequestError {
    /// The stanza error to answer the IQ with.
    pub fn condition(self) -> StanzaCondition {
        match self {
            RequestError::NodeTooLong | RequestError::FormTooLarge => {
                StanzaCondition::NotAcceptable
            }
            _ => StanzaCondition::BadRequest,
        }
    }
}

/// Parses the child of a client's IQ set to its own bare JID: an
/// `<enable/>` needs `jid` and `node` (the schema of XEP-0357 §12 makes
/// `node` required) and may hold a publish-options form, the first
/// `jabber:x:data` child, whose `FORM_TYPE` must be
/// `http://jabber.org/protocol/pubsub#publish-options` (it is kept with
/// `type='submit'`); a `<disable/>` needs `jid`, `node` optional.
pub fn parse_request(el: &Element) -> Result<PushRequest, RequestError> {
    if el.ns != NS || (el.name != "enable" && el.name != "disable") {
        return Err(RequestError::NotPush);
    }
    let jid = normalized_jid(el.attr("jid").ok_or(RequestError::MissingJid)?)?;
    let node = match el.attr("node") {
        None => None,
        Some("") => return Err(RequestError::MissingNode),
        Some(n) if n.len() > MAX_NODE_BYTES => return Err(RequestError::NodeTooLong),
        Some(n) => Some(n.to_owned()),
    };
    if el.name == "disable" {
        return Ok(PushRequest::Disable { jid, node });
    }
    let node = node.ok_or(RequestError::MissingNode)?;
    let options = match el.child("x", ns::DATA) {
        None => None,
        Some(form) => Some(publish_options(form)?),
    };
    Ok(PushRequest::Enable { jid, node, options })
}

/// A JID as the service compares it: parsed and written back (RFC 7622
/// normalization), or [`RequestError::BadJid`].
fn normalized_jid(raw: &str) -> Result<String, RequestError> {
    if raw.len() > MAX_JID_BYTES {
        return Err(RequestError::BadJid);
    }
    Jid::new(raw)
        .map(|j| j.to_string())
        .map_err(|_| RequestError::BadJid)
}

/// Whether two JIDs name the same entity (compared normalized; one that
/// does not parse only as written).
pub(super) fn same_jid(a: &str, b: &str) -> bool {
    a == b || matches!((Jid::new(a), Jid::new(b)), (Ok(a), Ok(b)) if a == b)
}

/// The form's XML as kept, once checked.
fn publish_options(form: &Element) -> Result<Bytes, RequestError> {
    let form_type = form
        .elements()
        .find(|f| f.name == "field" && f.ns == ns::DATA && f.attr("var") == Some("FORM_TYPE"))
        .and_then(|f| f.child("value", ns::DATA))
        .map(|v| v.text());
    if form_type.as_deref().map(str::trim) != Some(ns::PUBSUB_PUBLISH_OPTIONS) {
        return Err(RequestError::BadForm);
    }
    let mut form = form.clone();
    form.set_attr("type", "submit");
    let bytes = form.to_bytes(ns::CLIENT);
    if bytes.len() > MAX_OPTIONS_BYTES {
        return Err(RequestError::FormTooLarge);
    }
    Ok(Bytes::from(bytes))
}

/// A stored publish-options form read back: the `<x/>` of `jabber:x:data`
/// it must be (it was written by [`parse_request`]), or `None` if the
/// bytes are not one (damaged storage).
pub(super) fn stored_options(bytes: &[u8]) -> Option<Element> {
    Element::parse(bytes, ns::DATA)
        .ok()
        .filter(|x| x.name == "x" && x.ns == ns::DATA)
}

/// The error type and condition of an app server's IQ error (its
/// `<error/>` child); a missing or unknown type reads as `cancel`, a
/// missing condition as `undefined-condition`.
pub fn publish_error(iq: &Element) -> (ErrorType, StanzaCondition) {
    let Some(error) = iq.elements().find(|e| e.name == "error") else {
        return (ErrorType::Cancel, StanzaCondition::UndefinedCondition);
    };
    let kind = error
        .attr("type")
        .and_then(ErrorType::parse)
        .unwrap_or(ErrorType::Cancel);
    let condition = error
        .elements()
        .find(|c| c.ns == ns::STANZA_ERRORS && c.name != "text")
        .map_or(StanzaCondition::UndefinedCondition, |c| {
            StanzaCondition::from_name(&c.name)
        });
    (kind, condition)
}
