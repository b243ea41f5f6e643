//! A chat or normal message between local users, made ready for delivery:
//! stamped with its archive id and archived (XEP-0313, XEP-0359), and the
//! form its carbon copies embed (XEP-0280). The core parses such a message
//! at most once, and only when the archive or carbons need it:
//!
//! - neither (archiving off or no `<body` in the bytes, and no session of
//!   either user enabled carbons): not parsed at all;
//! - otherwise one [`inspect`] pass (the top-level element: where the start
//!   tag ends, its attributes), shared by the stamp and the carbons;
//! - or, instead, one [`Element::parse`] when the bytes name the stanza-id
//!   namespace (a forged `<stanza-id/>` to strip before archiving) or the
//!   carbons or hints namespace (a `<private/>` or `<no-copy/>` that keeps
//!   carbons away); the message is then written out again from the tree.

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
        let archive = self.archive.is_some() && contains(&payload, b"<body");
        let carbons = self.wants_carbons(sender_bare) || self.wants_carbons(to_bare);
        if !archive && !carbons {
            return Prepared {
                payload,
                carbon: None,
            };
        }
        // XEP-0359 §3.1: ids claiming to be ours come only from us.
        let forged_ids = archive && contains(&payload, ns::SID.as_bytes());
        let hints = carbons
            && (contains(&payload, ns::CARBONS.as_bytes())
                || contains(&payload, ns::HINTS.as_bytes()));
        if forged_ids || hints {
            return self.prepare_from_tree(sender_bare, to_bare, payload, archive, carbons);
        }
        let Ok(top) = inspect(&payload) else {
            return Prepared {
                carbon: carbons.then(|| payload.clone()),
                payload,
            };
        };
        // A message written `<message/>` has no body (the `<body` was in
        // an attribute value): nothing to archive.
        let payload = match archive && !top.empty {
            true => self.archive_stamped(sender_bare, to_bare, &payload, &top),
            false => payload,
        };
        Prepared {
            carbon: carbons.then(|| embeddable_as(&payload, &top)),
            payload,
        }
    }

    /// [`Router::prepare_conversation`] with the message parsed into a tree.
    fn prepare_from_tree(
        &mut self,
        sender_bare: &str,
        to_bare: &str,
        payload: Bytes,
        archive: bool,
        carbons: bool,
    ) -> Prepared {
        let Ok(mut message) = Element::parse(&payload, ns::CLIENT) else {
            return Prepared {
                carbon: carbons.then(|| payload.clone()),
                payload,
            };
        };
        let private = message.child("private", ns::CARBONS).is_some()
            || message.child("no-copy", ns::HINTS).is_some();
        let carbons = carbons && !private;
        if !archive {
            // Written out with its namespace declared: embeddable as is.
            return Prepared {
                carbon: carbons.then(|| Bytes::from(message.to_bytes(""))),
                payload,
            };
        }
        message
            .children
            .retain(|c| !matches!(c, Node::Element(e) if e.name == "stanza-id" && e.ns == ns::SID));
        let id = self.next_archive_id();
        message
            .children
            .push(Node::Element(stanza_id(&id, to_bare)));
        let stamped = Bytes::from(message.to_bytes(""));
        self.archive(sender_bare, to_bare, id, stamped.clone());
        Prepared {
            carbon: carbons.then(|| stamped.clone()),
            payload: stamped,
        }
    }

    /// Appends the message's `<stanza-id/>` to its bytes and archives it.
    fn archive_stamped(
        &mut self,
        sender_bare: &str,
        to_bare: &str,
        payload: &[u8],
        top: &TopLevel,
    ) -> Bytes {
        let id = self.next_archive_id();
        let stamped = append_child(payload, top, &stanza_id(&id, to_bare).to_bytes(ns::CLIENT));
        self.archive(sender_bare, to_bare, id, stamped.clone());
        stamped
    }
}

/// The `<stanza-id/>` (XEP-0359) the archive of `by` gives a message.
fn stanza_id(id: &str, by: &str) -> Element {
    Element::new("stanza-id", ns::SID)
        .with_attr("id", id)
        .with_attr("by", by)
}
