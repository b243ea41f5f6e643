//! A chat or normal message between local users, made ready for delivery:
//! stamped with its archive id and archived (XEP-0313, XEP-0359), and the
//! form its carbon copies embed (XEP-0280). The core looks inside such a
//! message only when the archive or carbons need it, and keeps its bytes
//! unless a forged id has to come out:
//!
//! - neither (archiving off or no body, and no session of either user
//!   enabled carbons): not parsed at all, unless the bytes have a `:body`
//!   and no `<body` (a body under a namespace prefix, see [`has_body`]);
//! - otherwise one [`inspect`] pass (the top-level element: where the start
//!   tag ends, its attributes), shared by the stamp (appended to the bytes)
//!   and the carbons;
//! - when the bytes name the stanza-id namespace (archiving: a forged
//!   `<stanza-id/>` to strip, though usually an `<origin-id/>`) or the
//!   carbons or hints namespace (carbons: a `<private/>` or `<no-copy/>`
//!   keeps them away), one [`Element::parse`] first, as a reader. Only when
//!   it finds a `<stanza-id/>` to strip is the message written out again
//!   from the tree (stamped); otherwise the bytes are kept and take the
//!   [`inspect`] way above. A message the tree cannot parse takes it too.

use bytes::Bytes;
use xmpp_stream::element::{Element, Node};
use xmpp_stream::ns;
use xmpp_stream::stanza::{TopLevel, append_child, inspect};

use super::forward::embeddable_as;
use super::{Router, contains};

/// A conversation message ready for delivery.
pub(super) struct Prepared {
    /// The stanza to deliver (stamped if archived).
    pub(super) payload: Bytes,
    /// What carbon copies embed (its namespace declared); none: no copies.
    pub(super) carbon: Option<Bytes>,
}

impl Router {
    /// Archives a chat or normal message from `sender_bare` to `to_bare` if
    /// it has a body, and prepares its carbon copies if someone wants them.
    pub(super) fn prepare_conversation(
        &mut self,
        sender_bare: &str,
        to_bare: &str,
        payload: Bytes,
    ) -> Prepared {
        // chat states, receipts: not archived
        let archive = self.archive.is_some() && has_body(&payload);
        let mut carbons = self.wants_carbons(sender_bare) || self.wants_carbons(to_bare);
        if !archive && !carbons {
            return Prepared {
                payload,
                carbon: None,
            };
        }
        // XEP-0359 §3.1: ids claiming to be ours come only from us. An
        // element name cannot be escaped, so a `<stanza-id/>` (prefixed or
        // not) shows in the bytes; an `<origin-id/>`, in the same namespace
        // and on most clients' messages, does not cost a tree.
        let forged_ids = archive && contains(&payload, b"stanza-id");
        let hints = carbons
            && (contains(&payload, ns::CARBONS.as_bytes())
                || contains(&payload, ns::HINTS.as_bytes()));
        if forged_ids || hints {
            match Element::parse(&payload, ns::CLIENT) {
                Ok(mut message) => {
                    carbons &= !is_private(&message);
                    if archive && strip_stanza_ids(&mut message) {
                        return self.stamp_from_tree(
                            sender_bare,
                            to_bare,
                            message,
                            payload,
                            carbons,
                        );
                    }
                }
                // Whether it carries a forged id is unknown: it goes on as
                // it came, not archived and not stamped.
                Err(_) if forged_ids => {
                    return self.prepare_from_bytes(sender_bare, to_bare, payload, false, carbons);
                }
                Err(_) => {}
            }
        }
        self.prepare_from_bytes(sender_bare, to_bare, payload, archive, carbons)
    }

    /// What the carbon copies of a conversation message forwarded by
    /// another core embed, for its recipient's side here (the sender's core
    /// archived and stamped it, and copied it to the sender's resources):
    /// none if no session of `to_bare` enabled carbons or the message asks
    /// to be kept from them.
    pub(super) fn received_carbon(&self, to_bare: &str, payload: &Bytes) -> Option<Bytes> {
        if !self.wants_carbons(to_bare) {
            return None;
        }
        let hints =
            contains(payload, ns::CARBONS.as_bytes()) || contains(payload, ns::HINTS.as_bytes());
        if hints && Element::parse(payload, ns::CLIENT).is_ok_and(|m| is_private(&m)) {
            return None;
        }
        match inspect(payload) {
            Ok(top) => Some(embeddable_as(payload, &top)),
            Err(_) => Some(payload.clone()),
        }
    }

    /// [`Router::prepare_conversation`] on the bytes: one [`inspect`] pass,
    /// the stamp appended to them.
    fn prepare_from_bytes(
        &mut self,
        sender_bare: &str,
        to_bare: &str,
        payload: Bytes,
        archive: bool,
        carbons: bool,
    ) -> Prepared {
        if !archive && !carbons {
            return Prepared {
                payload,
                carbon: None,
            };
        }
        let Ok(top) = inspect(&payload) else {
            return Prepared {
                carbon: carbons.then(|| payload.clone()),
                payload,
            };
        };
        // A message written `<message/>` has no body (the `<body` was in
        // an attribute value): nothing to archive.
        let payload = if archive && !top.empty {
            let stamped = self.archive_stamped(sender_bare, to_bare, &payload, &top);
            // `top` still describes the stamped bytes, which the carbon's
            // start tag is rewritten from: `append_child` inserts before
            // the end tag of a non-empty element, its start tag untouched.
            debug_assert!(stamped.starts_with(&payload[..top.start_len]));
            stamped
        } else {
            payload
        };
        Prepared {
            carbon: carbons.then(|| embeddable_as(&payload, &top)),
            payload,
        }
    }

    /// Appends the message's `<stanza-id/>` to its bytes and archives it.
    fn archive_stamped(
        &mut self,
        sender_bare: &str,
        to_bare: &str,
        payload: &Bytes,
        top: &TopLevel,
    ) -> Bytes {
        let Some(id) = self.next_archive_id() else {
            return payload.clone();
        };
        let stamped = append_child(payload, top, &stanza_id(&id, to_bare).to_bytes(ns::CLIENT));
        self.archive(sender_bare, to_bare, id, stamped.clone());
        stamped
    }

    /// Stamps and archives a message whose forged ids were stripped from
    /// its tree, written out again (`payload`: as it came, delivered if
    /// archiving is off after all).
    fn stamp_from_tree(
        &mut self,
        sender_bare: &str,
        to_bare: &str,
        mut message: Element,
        payload: Bytes,
        carbons: bool,
    ) -> Prepared {
        let Some(id) = self.next_archive_id() else {
            return Prepared {
                carbon: carbons.then(|| payload.clone()),
                payload,
            };
        };
        message
            .children
            .push(Node::Element(stanza_id(&id, to_bare)));
        // Written with its namespace declared: embeddable as is.
        let stamped = Bytes::from(message.to_bytes(""));
        self.archive(sender_bare, to_bare, id, stamped.clone());
        Prepared {
            carbon: carbons.then(|| stamped.clone()),
            payload: stamped,
        }
    }
}

/// Whether a message has a `<body/>` (in `jabber:client`), so it is
/// archived. An unprefixed `<body` in the bytes decides at once (the common
/// case, as before); only bytes with a `:body` but no `<body` (a body under
/// a prefix, `<b:body xmlns:b='jabber:client'>`) are parsed to look.
fn has_body(payload: &[u8]) -> bool {
    if contains(payload, b"<body") {
        return true;
    }
    contains(payload, b":body")
        && Element::parse(payload, ns::CLIENT).is_ok_and(|m| m.child("body", ns::CLIENT).is_some())
}

/// Whether the message asks to be kept from carbons (XEP-0280 §7
/// `<private/>`, XEP-0334 `<no-copy/>`).
fn is_private(message: &Element) -> bool {
    message.child("private", ns::CARBONS).is_some() || message.child("no-copy", ns::HINTS).is_some()
}

/// Removes the `<stanza-id/>` children a client put in (only the server may
/// claim them); whether there were any.
fn strip_stanza_ids(message: &mut Element) -> bool {
    let before = message.children.len();
    message
        .children
        .retain(|c| !matches!(c, Node::Element(e) if e.name == "stanza-id" && e.ns == ns::SID));
    message.children.len() != before
}

/// The `<stanza-id/>` (XEP-0359) the archive of `by` gives a message.
fn stanza_id(id: &str, by: &str) -> Element {
    Element::new("stanza-id", ns::SID)
        .with_attr("id", id)
        .with_attr("by", by)
}
