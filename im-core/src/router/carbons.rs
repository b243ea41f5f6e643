//! Message Carbons (XEP-0280 §6): copies of a chat message for the
//! sender's and the recipient's other resources that enabled them.

use bytes::Bytes;
use xmpp_stream::element::Element;
use xmpp_stream::ns;

use super::forward::{embeddable, wrap_forwarded};
use super::{Router, contains};
use crate::address;
use crate::routing::SessionAddr;

impl Router {
    /// Carbon copies of a chat message (XEP-0280 §6): to the sender's other
    /// resources that enabled carbons, and to the recipient's that did not
    /// get the message itself.
    pub(super) fn carbon_copies(
        &mut self,
        sender: SessionAddr,
        sender_bare: &str,
        to_bare: &str,
        delivered: &[SessionAddr],
        payload: &Bytes,
    ) {
        let wants = |bare: &str| self.table.resources(bare).iter().any(|r| r.carbons);
        if !wants(sender_bare) && !wants(to_bare) {
            return;
        }
        if (contains(payload, ns::CARBONS.as_bytes()) || contains(payload, ns::HINTS.as_bytes()))
            && Element::parse(payload, ns::CLIENT).is_ok_and(|m| {
                m.child("private", ns::CARBONS).is_some() || m.child("no-copy", ns::HINTS).is_some()
            })
        {
            return;
        }
        let inner = embeddable(payload);
        let copies: Vec<(SessionAddr, &str, String)> =
            [("sent", sender_bare), ("received", to_bare)]
                .into_iter()
                .flat_map(|(kind, bare)| {
                    self.table.resources(bare).iter().filter_map(move |r| {
                        let addr = (r.node, r.sid);
                        (r.carbons && r.available && addr != sender && !delivered.contains(&addr))
                            .then(|| (addr, kind, format!("{bare}/{}", r.resource)))
                    })
                })
                .collect();
        let mut seen = Vec::new();
        for (addr, kind, full) in copies {
            if seen.contains(&addr) {
                continue; // a message to oneself: one copy
            }
            seen.push(addr);
            let bare = address::bare(&full);
            let copy = wrap_forwarded(
                &format!(
                    "<message xmlns=\"jabber:client\" from=\"{}\" to=\"{}\" type=\"chat\"><{kind} xmlns=\"{}\">",
                    xmpp_stream::element::escape(bare),
                    xmpp_stream::element::escape(&full),
                    ns::CARBONS
                ),
                None,
                &inner,
                &format!("</{kind}></message>"),
            );
            self.deliver_copy(addr, copy);
        }
    }
}
