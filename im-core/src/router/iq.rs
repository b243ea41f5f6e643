//! IQs the server answers itself, for itself or on behalf of an account
//! (RFC 6120 §10.3, RFC 6121 §8.5.1, §8.5.3.1): one module per protocol;
//! ping (XEP-0199) is answered here.

mod blocking;
mod carbons;
mod disco;
pub use disco::ServerOffers;
pub(super) use disco::caps_ver;
mod extdisco;
mod mam;
pub(super) use mam::parse_mam_query;
mod pep;
pub use pep::{config_form, pubsub_error};
mod private;
mod roster;
mod upload;
pub use upload::{UPLOAD, UploadService};
mod vcard;

use bytes::Bytes;
use cm_protocol::RouteHeader;
use jid::Jid;
use xmpp_stream::element::Element;
use xmpp_stream::{StanzaCondition, ns};

use super::Router;
use crate::routing::SessionAddr;

impl Router {
    /// A get or set to the server or to the sender's own account (no
    /// resource): answered, or refused with `service-unavailable`.
    pub(super) fn server_iq(
        &mut self,
        addr: SessionAddr,
        header: &RouteHeader,
        to: Option<&Jid>,
        payload: &[u8],
        sender_bare: &str,
    ) {
        let itype = header.stanza_type.as_deref().unwrap_or("");
        // The request's one child element says what is asked.
        let Ok(el) = Element::parse(payload, ns::CLIENT) else {
            self.reply_error(addr.0, addr.1, header, StanzaCondition::BadRequest);
            return;
        };
        let Some(child) = el.elements().next() else {
            self.reply_error(addr.0, addr.1, header, StanzaCondition::BadRequest);
            return;
        };
        let own = to.is_none_or(|j| j.to_bare().to_string() == sender_bare);
        let for_account = to.is_some_and(|j| j.node().is_some());
        let result = || {
            let mut r = iq_result(header);
            if let Some(j) = to {
                r.set_attr("from", j.to_string());
            }
            r
        };
        let reply = match (child.name.as_str(), child.ns.as_str(), itype) {
            // Anyone's vCard can be read; everything else is one's own.
            ("vCard", ns::VCARD, _) if own || itype == "get" => {
                return self.vcard_iq(addr, header, child, to.filter(|_| !own), sender_bare);
            }
            ("pubsub", ns::PUBSUB | ns::PUBSUB_OWNER, _) if for_account || to.is_none() => {
                return self.pep_iq(addr, header, child, to, sender_bare);
            }
            _ if !own && for_account => {
                return self.reply_error(
                    addr.0,
                    addr.1,
                    header,
                    StanzaCondition::ServiceUnavailable,
                );
            }
            ("ping", ns::PING, "get") => result(),
            ("query", ns::DISCO_INFO | ns::DISCO_ITEMS, "get")
                if child.attr("node").is_some() && (for_account || child.ns == ns::DISCO_ITEMS) =>
            {
                // (no nodes there: XEP-0030 §3.2, §4.2)
                return self.reply_error(addr.0, addr.1, header, StanzaCondition::ItemNotFound);
            }
            ("query", ns::DISCO_INFO, "get") => match (for_account, child.attr("node")) {
                (true, _) => result().with_child(disco::account_info(
                    self.archive.is_some(),
                    self.push_offered(),
                )),
                (false, None) => result().with_child(disco::disco_info(self.server_offers())),
                // XEP-0115 §6.2: the node of the caps the CMs show is
                // answered (echoed); any other is unknown
                (false, Some(node)) => {
                    let offers = self.server_offers();
                    let ours = format!(
                        "{}#{}",
                        xmpp_stream::stream::CAPS_NODE,
                        disco::caps_ver(offers)
                    );
                    if node != ours {
                        return self.reply_error(
                            addr.0,
                            addr.1,
                            header,
                            StanzaCondition::ItemNotFound,
                        );
                    }
                    let mut info = disco::disco_info(offers);
                    info.set_attr("node", ours);
                    result().with_child(info)
                }
            },
            ("query", ns::DISCO_ITEMS, "get") if !for_account => {
                // the server's services (XEP-0030 §4)
                let mut items = Element::new("query", ns::DISCO_ITEMS);
                if let Some(muc) = self.muc_jid() {
                    items = items.with_child(
                        Element::new("item", ns::DISCO_ITEMS)
                            .with_attr("jid", muc)
                            .with_attr("name", "Chatrooms"),
                    );
                }
                if let Some(upload) = &self.upload {
                    items = items.with_child(
                        Element::new("item", ns::DISCO_ITEMS)
                            .with_attr("jid", upload.jid.clone())
                            .with_attr("name", "HTTP File Upload"),
                    );
                }
                // external components connected here (XEP-0114)
                for name in self.components_connected() {
                    items = items
                        .with_child(Element::new("item", ns::DISCO_ITEMS).with_attr("jid", name));
                }
                result().with_child(items)
            }
            ("query", ns::DISCO_ITEMS, "get") => {
                result().with_child(Element::new("query", ns::DISCO_ITEMS))
            }
            ("query", ns::ROSTER, _) => return self.roster_iq(addr, header, child, sender_bare),
            ("query", ns::PRIVATE, _) => {
                return self.private_iq(addr, header, child, sender_bare);
            }
            ("query", ns::MAM, _) if self.archive.is_some() => {
                return self.mam_iq(addr, header, child, sender_bare);
            }
            (_, ns::BLOCKING, _) => return self.blocking_iq(addr, header, child, sender_bare),
            ("services" | "credentials", ns::EXTDISCO, "get") if !for_account => {
                return self.extdisco_iq(addr, header, child, sender_bare);
            }
            ("enable" | "disable", crate::push::NS, _) if own => {
                return self.push_iq(addr, header, child, sender_bare);
            }
            ("enable", ns::CARBONS, "set") => return self.carbons_iq(addr, header, true),
            ("disable", ns::CARBONS, "set") => return self.carbons_iq(addr, header, false),
            _ => {
                return self.reply_error(
                    addr.0,
                    addr.1,
                    header,
                    StanzaCondition::ServiceUnavailable,
                );
            }
        };
        self.deliver(addr, Bytes::from(reply.to_bytes(ns::CLIENT)));
    }
}

/// An `<iq type='result'/>` answering `header`.
pub(super) fn iq_result(header: &RouteHeader) -> Element {
    let mut iq = Element::new("iq", ns::CLIENT)
        .with_attr("type", "result")
        .with_attr("to", header.from.clone());
    if let Some(id) = &header.id {
        iq.set_attr("id", id.clone());
    }
    iq
}
