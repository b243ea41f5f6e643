//! Message Carbons (XEP-0280 §6): copies of a chat message for the
//! sender's and the recipient's other resources that enabled them.

use xmpp_stream::ns;

use super::Router;
use super::forward::wrap_forwarded;
use crate::address;
use crate::routing::SessionAddr;

impl Router {
    /// Whether a session of `bare` enabled carbons.
    pub(super) fn wants_carbons(&self, bare: &str) -> bool {
        self.table.resources(bare).iter().any(|r| r.carbons)
    }

    /// Carbon copies of a chat message (XEP-0280 §6) embedding `inner` (see
    /// [`super::conversation`]): to the sender's other resources that
    /// enabled carbons (if `sender`, its session and bare JID, is given:
    /// not for a message another core's user sent), and to the recipient's
    /// that did not get the message itself.
    pub(super) fn carbon_copies(
        &mut self,
        sender: Option<(SessionAddr, &str)>,
        to_bare: &str,
        delivered: &[SessionAddr],
        inner: &[u8],
    ) {
        let from = sender.map(|(addr, _)| addr);
        let sent = sender.map(|(_, bare)| ("sent", bare));
        let copies: Vec<(SessionAddr, &str, String)> = sent
            .into_iter()
            .chain([("received", to_bare)])
            .flat_map(|(kind, bare)| {
                self.table.resources(bare).iter().filter_map(move |r| {
                    let addr = (r.node, r.sid);
                    (r.carbons && r.available && Some(addr) != from && !delivered.contains(&addr))
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
                inner,
                &format!("</{kind}></message>"),
            );
            self.deliver_copy(addr, copy);
        }
    }
}
