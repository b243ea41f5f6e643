//! The publish a notification is (XEP-0357 §7): a pubsub publish of one
//! item, a `<notification/>` holding the `urn:xmpp:push:summary` form, to
//! the registration's node, with its publish-options form if it has one.

use bytes::Bytes;
use xmpp_stream::element::Element;
use xmpp_stream::ns;

use super::{NS, SUMMARY};

/// What a user was sent while no session of theirs could take it: counted
/// since the user was last online.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Pending {
    /// Messages.
    pub messages: u32,
    /// Subscription requests.
    pub subscriptions: u32,
    /// The last message's sender (a bare JID).
    pub last_sender: Option<String>,
    /// The last message's body, if bodies are sent, cut to
    /// [`super::MAX_BODY_BYTES`].
    pub last_body: Option<String>,
}

impl Pending {
    /// Nothing to notify of.
    pub fn is_empty(&self) -> bool {
        self.messages == 0 && self.subscriptions == 0
    }

    /// Bytes held beyond the struct.
    pub fn heap_bytes(&self) -> usize {
        self.last_sender.as_ref().map_or(0, String::len)
            + self.last_body.as_ref().map_or(0, String::len)
    }
}

/// What one publish says, and where it goes.
pub(super) struct Publish<'a> {
    /// The publish's IQ id.
    pub id: &'a str,
    /// The user's bare JID (the publisher).
    pub from: &'a str,
    /// The app server's push service.
    pub to: &'a str,
    /// The node.
    pub node: &'a str,
    /// The counts and last message.
    pub pending: &'a Pending,
    /// The registration's publish-options form.
    pub options: Option<Element>,
}

/// A `<field var=VAR><value>VALUE</value></field>` of a data form.
fn field(var: &str, value: &str) -> Element {
    Element::new("field", ns::DATA)
        .with_attr("var", var)
        .with_child(Element::new("value", ns::DATA).with_text(value))
}

/// The complete `<iq type='set'/>` of a publish.
pub(super) fn publish_iq(p: Publish<'_>) -> Bytes {
    let mut summary = Element::new("x", ns::DATA)
        .with_attr("type", "submit")
        .with_child(field("FORM_TYPE", SUMMARY));
    let pending = p.pending;
    if pending.messages > 0 {
        summary = summary.with_child(field("message-count", &pending.messages.to_string()));
    }
    if pending.subscriptions > 0 {
        summary = summary.with_child(field(
            "pending-subscription-count",
            &pending.subscriptions.to_string(),
        ));
    }
    if pending.messages > 0 {
        if let Some(sender) = &pending.last_sender {
            summary = summary.with_child(field("last-message-sender", sender));
        }
        if let Some(body) = &pending.last_body {
            summary = summary.with_child(field("last-message-body", body));
        }
    }
    let item = Element::new("item", ns::PUBSUB)
        .with_child(Element::new("notification", NS).with_child(summary));
    let mut pubsub = Element::new("pubsub", ns::PUBSUB).with_child(
        Element::new("publish", ns::PUBSUB)
            .with_attr("node", p.node)
            .with_child(item),
    );
    if let Some(form) = p.options {
        pubsub = pubsub.with_child(Element::new("publish-options", ns::PUBSUB).with_child(form));
    }
    let iq = Element::new("iq", ns::CLIENT)
        .with_attr("type", "set")
        .with_attr("from", p.from)
        .with_attr("to", p.to)
        .with_attr("id", p.id)
        .with_child(pubsub);
    Bytes::from(iq.to_bytes(ns::CLIENT))
}
