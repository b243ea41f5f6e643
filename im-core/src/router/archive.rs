//! The message archive (XEP-0313) with stable ids (XEP-0359): a chat
//! message between local users gets a `<stanza-id/>` and goes into both
//! users' archives ([`Action::Archive`]); an SM sender's acknowledgement
//! waits for that commit, so an acknowledged message is always on disk.

use bytes::Bytes;
use xmpp_stream::element::{Element, Node};
use xmpp_stream::ns;
use xmpp_stream::stanza::{append_child, inspect};

use super::{Action, Router, contains};
use crate::address;
use crate::storage::ArchiveEntry;

impl Router {
    /// Gives a chat message between local users its stable id and archives
    /// it for both; returns the stanza to deliver.
    pub(super) fn archive_message(
        &mut self,
        sender_bare: &str,
        to_bare: &str,
        payload: Bytes,
    ) -> Bytes {
        if self.archive.is_none() || !contains(&payload, b"<body") {
            return payload; // chat states, receipts: not archived
        }
        // XEP-0359 §3.1: ids claiming to be ours come only from us.
        let payload = if contains(&payload, ns::SID.as_bytes()) {
            strip_stanza_ids(&payload).unwrap_or(payload)
        } else {
            payload
        };
        let Ok(top) = inspect(&payload) else {
            return payload;
        };
        let Some(ids) = &mut self.archive else {
            return payload;
        };
        let id = ids.next_id();
        let tag = Element::new("stanza-id", ns::SID)
            .with_attr("id", id.clone())
            .with_attr("by", to_bare)
            .to_bytes(ns::CLIENT);
        let stamped = append_child(&payload, &top, &tag);
        let mut entries = vec![ArchiveEntry {
            user: address::local(sender_bare).unwrap_or_default().to_owned(),
            id: id.clone(),
            peer: to_bare.to_owned(),
            stamp: 0,
            payload: stamped.clone(),
        }];
        if to_bare != sender_bare {
            entries.push(ArchiveEntry {
                user: address::local(to_bare).unwrap_or_default().to_owned(),
                id,
                peer: sender_bare.to_owned(),
                stamp: 0,
                payload: stamped.clone(),
            });
        }
        let origin = self.hold_ack();
        self.emit(Action::Archive { entries, origin });
        stamped
    }
}

/// Removes `<stanza-id/>` children a client put in (only the server may
/// claim them).
fn strip_stanza_ids(payload: &[u8]) -> Option<Bytes> {
    let mut el = Element::parse(payload, ns::CLIENT).ok()?;
    el.children
        .retain(|c| !matches!(c, Node::Element(e) if e.name == "stanza-id" && e.ns == ns::SID));
    Some(Bytes::from(el.to_bytes("")))
}
