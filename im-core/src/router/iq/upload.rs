//! The upload service's JID (XEP-0363): its disco#info (identity
//! store/file, the feature, and the largest file in the XEP-0128 form) and
//! slot requests, which become queries the driver answers with the upload
//! service ([`crate::upload`]).

use bytes::Bytes;
use cm_protocol::RouteHeader;
use xmpp_stream::element::Element;
use xmpp_stream::{StanzaCondition, ns};

use crate::address;
use crate::router::{Query, Router};
use crate::routing::SessionAddr;

/// HTTP File Upload (XEP-0363).
pub const UPLOAD: &str = "urn:xmpp:http:upload:0";

/// The upload service as the router knows it.
#[derive(Clone, Debug)]
pub struct UploadService {
    /// Its JID.
    pub jid: String,
    /// The largest file it takes.
    pub max_file_bytes: u64,
}

impl Router {
    /// An IQ to the upload service's JID.
    pub(in crate::router) fn upload_iq(
        &mut self,
        addr: SessionAddr,
        header: &RouteHeader,
        payload: &[u8],
        sender_bare: &str,
    ) {
        let Some(service) = self.upload.clone() else {
            return;
        };
        let get = header.stanza_type.as_deref() == Some("get");
        let child = Element::parse(payload, ns::CLIENT)
            .ok()
            .and_then(|iq| iq.elements().next().cloned());
        let Some(child) = child.filter(|_| get) else {
            return self.reply_error(addr.0, addr.1, header, StanzaCondition::BadRequest);
        };
        let result = |r: &Router| {
            let mut iq = super::iq_result(header);
            iq.set_attr("from", r.upload.as_ref().map_or("", |u| u.jid.as_str()));
            iq
        };
        let reply = match (child.name.as_str(), child.ns.as_str()) {
            ("query", ns::DISCO_INFO) if child.attr("node").is_none() => {
                result(self).with_child(info(&service))
            }
            ("query", ns::DISCO_ITEMS) if child.attr("node").is_none() => {
                result(self).with_child(Element::new("query", ns::DISCO_ITEMS))
            }
            ("request", UPLOAD) => {
                let size = child.attr("size").and_then(|s| s.parse::<u64>().ok());
                let (Some(filename), Some(size)) = (child.attr("filename"), size) else {
                    return self.reply_error(addr.0, addr.1, header, StanzaCondition::BadRequest);
                };
                let query = Query::UploadSlot {
                    user: address::local(sender_bare).unwrap_or_default().to_owned(),
                    filename: filename.to_owned(),
                    size,
                    content_type: child.attr("content-type").map(str::to_owned),
                    service: service.jid.clone(),
                    requester: header.from.clone(),
                    iq_id: header.id.clone().unwrap_or_default(),
                };
                return self.query(addr, header, query);
            }
            _ => {
                return self.reply_error(
                    addr.0,
                    addr.1,
                    header,
                    StanzaCondition::FeatureNotImplemented,
                );
            }
        };
        self.deliver(addr, Bytes::from(reply.to_bytes(ns::CLIENT)));
    }
}

/// The service's disco#info (XEP-0363 §3).
fn info(service: &UploadService) -> Element {
    let field = |var: &str, value: &str| {
        Element::new("field", ns::DATA)
            .with_attr("var", var)
            .with_child(Element::new("value", ns::DATA).with_text(value))
    };
    Element::new("query", ns::DISCO_INFO)
        .with_child(
            Element::new("identity", ns::DISCO_INFO)
                .with_attr("category", "store")
                .with_attr("type", "file")
                .with_attr("name", "HTTP File Upload"),
        )
        .with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", UPLOAD))
        .with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::DISCO_INFO))
        .with_child(
            Element::new("x", ns::DATA)
                .with_attr("type", "result")
                .with_child(field("FORM_TYPE", UPLOAD).with_attr("type", "hidden"))
                .with_child(field("max-file-size", &service.max_file_bytes.to_string())),
        )
}
