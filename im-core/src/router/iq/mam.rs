//! Archive queries (XEP-0313 §4): the query form, and queries handed to
//! the driver as [`Query::Archive`].

use bytes::Bytes;
use cm_protocol::RouteHeader;
use jid::BareJid;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use xmpp_stream::element::Element;
use xmpp_stream::{StanzaCondition, ns};

use super::iq_result;
use crate::address;
use crate::router::{Query, Router};
use crate::routing::SessionAddr;
use crate::storage::ArchiveQuery;

/// Most messages one archive query returns.
pub const MAX_PAGE: usize = 250;
/// Messages per page when the client does not say.
const DEFAULT_PAGE: usize = 50;

impl Router {
    /// An archive query (XEP-0313 §4) or a request for its form.
    pub(in crate::router) fn mam_iq(
        &mut self,
        addr: SessionAddr,
        header: &RouteHeader,
        query: &Element,
        bare: &str,
    ) {
        if header.stanza_type.as_deref() == Some("get") {
            let reply =
                iq_result(header).with_child(Element::new("query", ns::MAM).with_child(mam_form()));
            return self.deliver(addr, Bytes::from(reply.to_bytes(ns::CLIENT)));
        }
        match parse_mam_query(query) {
            Ok((q, flip)) => {
                let query = Query::Archive {
                    user: address::local(bare).unwrap_or_default().to_owned(),
                    requester: header.from.clone(),
                    iq_id: header.id.clone().unwrap_or_default(),
                    query_id: query.attr("queryid").map(str::to_owned),
                    query: q,
                    flip,
                };
                self.query(addr, header, query);
            }
            Err(condition) => self.reply_error(addr.0, addr.1, header, condition),
        }
    }
}

/// The query form (XEP-0313 §4.1.1), listing the fields served.
fn mam_form() -> Element {
    let field = |var: &str, ftype: &str| {
        Element::new("field", ns::DATA)
            .with_attr("var", var)
            .with_attr("type", ftype)
    };
    Element::new("x", ns::DATA)
        .with_attr("type", "form")
        .with_child(
            field("FORM_TYPE", "hidden")
                .with_child(Element::new("value", ns::DATA).with_text(ns::MAM)),
        )
        .with_child(field("with", "jid-single"))
        .with_child(field("start", "text-single"))
        .with_child(field("end", "text-single"))
        .with_child(field("before-id", "text-single"))
        .with_child(field("after-id", "text-single"))
}

/// Reads the form and paging of a query: the storage query and whether to
/// flip the page.
pub(in crate::router) fn parse_mam_query(
    query: &Element,
) -> Result<(ArchiveQuery, bool), StanzaCondition> {
    let mut q = ArchiveQuery {
        max: DEFAULT_PAGE,
        ..Default::default()
    };
    if let Some(form) = query.child("x", ns::DATA) {
        for field in form.elements().filter(|f| f.name == "field") {
            let value = field
                .child("value", ns::DATA)
                .map(|v| v.text())
                .unwrap_or_default();
            match field.attr("var").unwrap_or_default() {
                "with" => {
                    let jid = BareJid::new(&value).map_err(|_| StanzaCondition::BadRequest)?;
                    q.with = Some(jid.to_string());
                }
                "start" => q.start = Some(parse_time(&value)?),
                "end" => q.end = Some(parse_time(&value)?),
                "after-id" => q.after = Some(value),
                "before-id" => q.before = Some(value),
                "FORM_TYPE" => {
                    if value != ns::MAM {
                        return Err(StanzaCondition::BadRequest);
                    }
                }
                _ => return Err(StanzaCondition::FeatureNotImplemented),
            }
        }
    }
    if let Some(set) = query.child("set", ns::RSM) {
        if let Some(max) = set.child("max", ns::RSM) {
            q.max = max
                .text()
                .trim()
                .parse::<usize>()
                .map_err(|_| StanzaCondition::BadRequest)?
                .min(MAX_PAGE);
        }
        if let Some(after) = set.child("after", ns::RSM) {
            q.after = Some(after.text());
        }
        if let Some(before) = set.child("before", ns::RSM) {
            // <before/> alone: the last page; with an id: the page before it.
            q.from_end = true;
            let id = before.text();
            if !id.is_empty() {
                q.before = Some(id);
            }
        }
        if set.child("index", ns::RSM).is_some() {
            return Err(StanzaCondition::FeatureNotImplemented);
        }
    }
    let flip = query.child("flip-page", ns::MAM).is_some();
    Ok((q, flip))
}

/// An XEP-0082 timestamp as microseconds since the Unix epoch.
fn parse_time(s: &str) -> Result<i64, StanzaCondition> {
    OffsetDateTime::parse(s.trim(), &Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1000) as i64)
        .map_err(|_| StanzaCondition::BadRequest)
}
