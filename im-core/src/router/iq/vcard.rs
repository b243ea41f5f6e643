//! vCards (XEP-0054): anyone's can be read, one's own replaced; both are
//! handed to the driver as queries.

use bytes::Bytes;
use cm_protocol::RouteHeader;
use jid::Jid;
use xmpp_stream::element::Element;
use xmpp_stream::{StanzaCondition, ns};

use crate::address;
use crate::router::{Query, Router};
use crate::routing::SessionAddr;

impl Router {
    /// vCard get (anyone's) or set (one's own).
    pub(in crate::router) fn vcard_iq(
        &mut self,
        addr: SessionAddr,
        header: &RouteHeader,
        vcard: &Element,
        to: Option<&Jid>,
        bare: &str,
    ) {
        let owner = to.map_or_else(|| bare.to_owned(), |j| j.to_bare().to_string());
        let requester = header.from.clone();
        let iq_id = header.id.clone().unwrap_or_default();
        let query = if header.stanza_type.as_deref() == Some("get") {
            Query::VCardGet {
                user: address::local(&owner).unwrap_or_default().to_owned(),
                from: to.map(|_| owner.clone()),
                requester,
                iq_id,
            }
        } else if owner == bare {
            Query::VCardSet {
                user: address::local(bare).unwrap_or_default().to_owned(),
                vcard: Bytes::from(vcard.to_bytes(ns::CLIENT)),
                requester,
                iq_id,
            }
        } else {
            return self.reply_error(addr.0, addr.1, header, StanzaCondition::Forbidden);
        };
        self.query(addr, header, query);
    }
}
