//! Answers to the router's storage-backed queries ([`Query`]): archive
//! pages (XEP-0313 results and `<fin/>`), vCards and private XML
//! (XEP-0049). Runs on the storage
//! thread, inside the job, so a query costs one hop.

use bytes::Bytes;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use xmpp_stream::element::{Element, escape};
use xmpp_stream::stanza::{StanzaKind, delay_element, error_reply};
use xmpp_stream::{StanzaCondition, ns};

use crate::router::{PepEvent, Query, embeddable, wrap_forwarded};
use crate::storage::{StorageError, Store, all_or_none};

/// Most bytes of archived messages in one answer (the rest is the next page).
pub const MAX_PAGE_BYTES: usize = 256 * 1024;
/// Most bytes of items in one answer to a PEP items request (the newest
/// that fit, one at least).
pub const MAX_ITEMS_BYTES: usize = 512 * 1024;
/// Most bytes of the notifications answering a session's
/// `PepLastItems` (the rest are not sent).
pub const MAX_LAST_ITEMS_BYTES: usize = 1024 * 1024;

mod avatars;
mod bookmarks;
mod pep;

/// What answers a query.
#[derive(Debug, Default)]
pub struct Answer {
    /// The stanzas for the asking session, in order (errors become stanza
    /// errors).
    pub payloads: Vec<Bytes>,
    /// Changes to personal eventing nodes it stored, to notify.
    pub events: Vec<PepEvent>,
}

/// Answers `query`. Each storage call runs in a savepoint of its own: a
/// failed statement is undone there, so the job (which answers rather than
/// fails) leaves the transaction its batch shares usable.
pub fn answer(db: &mut dyn Store, query: &Query, domain: &str) -> Answer {
    if let Some(answer) = pep::answer(db, query, domain) {
        return answer;
    }
    Answer {
        payloads: replies(db, query, domain),
        events: Vec::new(),
    }
}

/// The stanzas answering a query other than personal eventing's.
fn replies(db: &mut dyn Store, query: &Query, domain: &str) -> Vec<Bytes> {
    match query {
        Query::Archive {
            user,
            requester,
            iq_id,
            query_id,
            query,
            flip,
        } => {
            let page = match all_or_none(db, |db| db.query_archive(user, query)) {
                Ok(page) => page,
                Err(e) => return vec![failure(e, requester, iq_id, domain)],
            };
            let mut items = page.items;
            let mut complete = page.complete;
            // Bounded in bytes too, keeping the messages next to the cursor.
            let mut bytes = 0;
            let mut keep = |a: &crate::storage::Archived| {
                bytes += a.payload.len();
                bytes <= MAX_PAGE_BYTES
            };
            let fitting = match query.from_end {
                false => items.iter().take_while(|a| keep(a)).count(),
                true => items.iter().rev().take_while(|a| keep(a)).count(),
            }
            .max(1)
            .min(items.len());
            if fitting < items.len() {
                complete = false;
                match query.from_end {
                    false => items.truncate(fitting),
                    true => {
                        items.drain(..items.len() - fitting);
                    }
                }
            }
            if *flip {
                items.reverse();
            }
            // (a room's archive is kept under the room's bare JID)
            let room = user.contains('@');
            let bare = match room {
                true => user.clone(),
                false => format!("{user}@{domain}"),
            };
            let mut out = Vec::with_capacity(items.len() + 1);
            let query_attr = query_id
                .as_deref()
                .map(|q| format!(" queryid=\"{}\"", escape(q)))
                .unwrap_or_default();
            for item in &items {
                let head = format!(
                    "<message xmlns=\"jabber:client\" from=\"{}\" to=\"{}\"><result xmlns=\"{}\"{query_attr} id=\"{}\">",
                    escape(&bare),
                    escape(requester),
                    ns::MAM,
                    escape(&item.id)
                );
                let delay = delay_element(domain, &micros_to_stamp(item.stamp));
                let inner = embeddable(&item.payload);
                out.push(wrap_forwarded(
                    &head,
                    Some(&delay),
                    &inner,
                    "</result></message>",
                ));
            }
            let mut set = Element::new("set", ns::RSM);
            if let (Some(first), Some(last)) = (items.first(), items.last()) {
                set = set
                    .with_child(Element::new("first", ns::RSM).with_text(first.id.clone()))
                    .with_child(Element::new("last", ns::RSM).with_text(last.id.clone()));
            }
            let mut fin = Element::new("fin", ns::MAM).with_child(set);
            if complete {
                fin.set_attr("complete", "true");
            }
            out.push(result(requester, iq_id, room.then_some(bare.as_str()), Some(fin)));
            out
        }
        Query::VCardGet {
            user,
            from,
            requester,
            iq_id,
        } => match all_or_none(db, |db| db.vcard(user)) {
            Ok(stored) => {
                let mut iq = result(requester, iq_id, from.as_deref(), None).to_vec();
                // Insert the stored element before `</iq>`.
                let vcard = stored.unwrap_or_else(|| {
                    Bytes::from(Element::new("vCard", ns::VCARD).to_bytes(ns::CLIENT))
                });
                let close = iq.len() - "</iq>".len();
                iq.splice(close..close, vcard.iter().copied());
                vec![Bytes::from(iq)]
            }
            Err(e) => vec![failure(e, requester, iq_id, domain)],
        },
        Query::PrivateGet {
            user,
            name,
            namespace,
            requester,
            iq_id,
        } => match all_or_none(db, |db| db.private_xml(user, namespace)) {
            Ok(stored) => {
                // (the elements as this core wrote them; an empty one if none)
                let query = stored
                    .and_then(|b| {
                        let mut wrapped = b"<query xmlns='jabber:iq:private'>".to_vec();
                        wrapped.extend_from_slice(&b);
                        wrapped.extend_from_slice(b"</query>");
                        Element::parse(&wrapped, ns::CLIENT).ok()
                    })
                    .unwrap_or_else(|| {
                        Element::new("query", ns::PRIVATE)
                            .with_child(Element::new(name.clone(), namespace.clone()))
                    });
                vec![result(requester, iq_id, None, Some(query))]
            }
            Err(e) => vec![failure(e, requester, iq_id, domain)],
        },
        Query::PrivateSet {
            user,
            namespace,
            element,
            requester,
            iq_id,
        } => match all_or_none(db, |db| db.set_private_xml(user, namespace, element)) {
            Ok(_) => vec![result(requester, iq_id, None, None)],
            Err(e) => vec![failure(e, requester, iq_id, domain)],
        },
        // (answered by `pep::answer`)
        Query::VCardSet { .. }
        | Query::PepPublish { .. }
        | Query::PepRetract { .. }
        | Query::PepConfigure { .. }
        | Query::PepConfigGet { .. }
        | Query::PepDelete { .. }
        | Query::PepItems { .. }
        | Query::PepLastItems { .. }
        // (the upload service answers it: see the driver)
        | Query::UploadSlot { .. } => Vec::new(),
    }
}

/// `<iq type='result'>` with an optional child (always with an end tag).
pub(crate) fn result(to: &str, id: &str, from: Option<&str>, child: Option<Element>) -> Bytes {
    let mut iq = Element::new("iq", ns::CLIENT)
        .with_attr("type", "result")
        .with_attr("to", to)
        .with_attr("id", id);
    if let Some(from) = from {
        iq.set_attr("from", from);
    }
    match child {
        Some(c) => Bytes::from(iq.with_child(c).to_bytes(ns::CLIENT)),
        None => {
            let mut bytes = iq.to_bytes(ns::CLIENT);
            if bytes.ends_with(b"/>") {
                bytes.truncate(bytes.len() - 2);
                bytes.extend_from_slice(b"></iq>");
            }
            Bytes::from(bytes)
        }
    }
}

pub(crate) fn failure(e: StorageError, to: &str, id: &str, domain: &str) -> Bytes {
    let condition = match e {
        StorageError::UnknownId => StanzaCondition::ItemNotFound,
        StorageError::QuotaExceeded => StanzaCondition::ResourceConstraint,
        e => {
            tracing::error!(error = %e, "storage query failed");
            StanzaCondition::InternalServerError
        }
    };
    error_reply(StanzaKind::Iq, Some(id), domain, to, condition, None)
}

/// Microseconds since the epoch as an XEP-0082 timestamp.
pub fn micros_to_stamp(micros: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

/// Now, in microseconds since the epoch.
pub fn now_micros() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
}
