//! The message archive (XEP-0313) and stable ids (XEP-0359), Message
//! Carbons (XEP-0280) and vCards (XEP-0054): the parts of message handling
//! that copy or keep messages, and the IQs that read what was kept.
//!
//! A chat message between local users gets a `<stanza-id/>` and goes into
//! both users' archives ([`Action::Archive`]); an SM sender's
//! acknowledgement waits for that commit, so an acknowledged message is
//! always on disk. Queries become [`Action::Query`], which the driver
//! answers from storage.

use bytes::Bytes;
use cm_protocol::RouteHeader;
use jid::{BareJid, Jid};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use xmpp_stream::element::{Element, Node};
use xmpp_stream::stanza::{append_child, inspect, rewrite_attrs};
use xmpp_stream::{StanzaCondition, ns};

use super::roster::{contains, iq_result};
use super::{Action, Router};
use crate::address;
use crate::routing::SessionAddr;
use crate::storage::{ArchiveEntry, ArchiveQuery};

/// Most messages one archive query returns.
pub const MAX_PAGE: usize = 250;
/// Messages per page when the client does not say.
const DEFAULT_PAGE: usize = 50;

/// A request the driver answers from storage; the stanzas it produces go
/// back to the session through [`super::Input::Replies`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    /// One page of an archive (XEP-0313).
    Archive {
        /// The archive's owner (local part).
        user: String,
        /// The requesting session's full JID.
        requester: String,
        /// The IQ's id.
        iq_id: String,
        /// The client's `queryid`, echoed in every result.
        query_id: Option<String>,
        /// What to return.
        query: ArchiveQuery,
        /// Newest first (`<flip-page/>`).
        flip: bool,
    },
    /// A user's vCard (XEP-0054).
    VCardGet {
        /// Whose (local part).
        user: String,
        /// The reply's `from` (the owner's bare JID, or none for one's own).
        from: Option<String>,
        /// The requesting session's full JID.
        requester: String,
        /// The IQ's id.
        iq_id: String,
    },
    /// Replaces the user's own vCard.
    VCardSet {
        /// Whose (local part).
        user: String,
        /// The `<vCard/>` element.
        vcard: Bytes,
        /// The requesting session's full JID.
        requester: String,
        /// The IQ's id.
        iq_id: String,
    },
}

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
        self.out.push(Action::Archive { entries, origin });
        stamped
    }

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

    /// `<enable/>` or `<disable/>` carbons for a session.
    pub(super) fn carbons_iq(&mut self, addr: SessionAddr, header: &RouteHeader, enable: bool) {
        if let Some(r) = self.table.route_mut(addr.0, addr.1) {
            r.carbons = enable;
        }
        self.deliver(addr, Bytes::from(iq_result(header).to_bytes(ns::CLIENT)));
    }

    /// An archive query (XEP-0313 §4) or a request for its form.
    pub(super) fn mam_iq(
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

    /// vCard get (anyone's) or set (one's own).
    pub(super) fn vcard_iq(
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

    /// Hands a query to the driver; one at a time per session.
    fn query(&mut self, addr: SessionAddr, header: &RouteHeader, query: Query) {
        if !self.querying.insert(addr) {
            return self.reply_error(addr.0, addr.1, header, StanzaCondition::ResourceConstraint);
        }
        self.out.push(Action::Query { to: addr, query });
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
fn parse_mam_query(query: &Element) -> Result<(ArchiveQuery, bool), StanzaCondition> {
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

/// Removes `<stanza-id/>` children a client put in (only the server may
/// claim them).
fn strip_stanza_ids(payload: &[u8]) -> Option<Bytes> {
    let mut el = Element::parse(payload, ns::CLIENT).ok()?;
    el.children
        .retain(|c| !matches!(c, Node::Element(e) if e.name == "stanza-id" && e.ns == ns::SID));
    Some(Bytes::from(el.to_bytes("")))
}

/// A stanza that can be embedded in another namespace: its own `xmlns`
/// declared.
pub(crate) fn embeddable(payload: &Bytes) -> Bytes {
    match inspect(payload) {
        Ok(top) if top.ns == ns::CLIENT && top.attr("xmlns").is_none() => {
            rewrite_attrs(payload, &top, &[("xmlns", Some(ns::CLIENT))])
        }
        _ => payload.clone(),
    }
}

/// `head` + `<forwarded>` (with an optional delay) around `inner` + `tail`.
pub(crate) fn wrap_forwarded(head: &str, delay: Option<&[u8]>, inner: &[u8], tail: &str) -> Bytes {
    let mut out = Vec::with_capacity(head.len() + inner.len() + tail.len() + 128);
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(b"<forwarded xmlns=\"urn:xmpp:forward:0\">");
    if let Some(d) = delay {
        out.extend_from_slice(d);
    }
    out.extend_from_slice(inner);
    out.extend_from_slice(b"</forwarded>");
    out.extend_from_slice(tail.as_bytes());
    Bytes::from(out)
}
