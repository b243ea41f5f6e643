//! Private XML storage (XEP-0049): the elements of one namespace (one or
//! more, as set together) that only their user reads and replaces, handed
//! to the driver as queries. Namespaces of the `jabber:` family are
//! refused (§3), as are namespaces over [`MAX_NAMESPACE_BYTES`] and data
//! over [`MAX_PRIVATE_BYTES`]; the store bounds the namespaces per user.
//! The elements are kept as this core writes them out again: a prefix
//! declared only for use in text or attribute values is not kept.

use bytes::Bytes;
use cm_protocol::RouteHeader;
use xmpp_stream::element::Element;
use xmpp_stream::{StanzaCondition, ns};

use crate::address;
use crate::router::{Query, Router};
use crate::routing::SessionAddr;

/// Most bytes of what one namespace keeps.
pub const MAX_PRIVATE_BYTES: usize = 64 * 1024;
/// Longest namespace name (it is part of the storage key).
pub const MAX_NAMESPACE_BYTES: usize = 1023;

impl Router {
    /// A private XML get or set of `bare`'s own.
    pub(in crate::router) fn private_iq(
        &mut self,
        addr: SessionAddr,
        header: &RouteHeader,
        query: &Element,
        bare: &str,
    ) {
        // A get names one element; a set holds one or more of one
        // namespace (XEP-0049 §2.3), which name the data.
        let elements: Vec<&Element> = query.elements().collect();
        let get = header.stanza_type.as_deref() == Some("get");
        let Some(first) = elements.first() else {
            return self.reply_error(addr.0, addr.1, header, StanzaCondition::BadRequest);
        };
        if (get && elements.len() > 1) || elements.iter().any(|e| e.ns != first.ns) {
            return self.reply_error(addr.0, addr.1, header, StanzaCondition::BadRequest);
        }
        let namespace = first.ns.clone();
        if namespace.starts_with("jabber:")
            || namespace.is_empty()
            || namespace.len() > MAX_NAMESPACE_BYTES
        {
            return self.reply_error(addr.0, addr.1, header, StanzaCondition::NotAcceptable);
        }
        let user = address::local(bare).unwrap_or_default().to_owned();
        let (requester, iq_id) = (header.from.clone(), header.id.clone().unwrap_or_default());
        let query = if get {
            Query::PrivateGet {
                user,
                name: first.name.clone(),
                namespace,
                requester,
                iq_id,
            }
        } else {
            let bytes: Vec<u8> = elements
                .iter()
                .flat_map(|e| e.to_bytes(ns::PRIVATE))
                .collect();
            if bytes.len() > MAX_PRIVATE_BYTES {
                return self.reply_error(
                    addr.0,
                    addr.1,
                    header,
                    StanzaCondition::ResourceConstraint,
                );
            }
            Query::PrivateSet {
                user,
                namespace,
                element: Bytes::from(bytes),
                requester,
                iq_id,
            }
        };
        self.query(addr, header, query);
    }
}

#[cfg(test)]
mod tests {
    use cm_protocol::Kind;

    use crate::router::test_support::*;
    use crate::router::{Action, Query};

    fn private_iq(itype: &str, inner: &str) -> Vec<Action> {
        let mut r = router();
        bound(&mut r, 1, 10, "alice@x", "phone");
        stanza(
            &mut r,
            1,
            10,
            header(Kind::Iq, "alice@x/phone", None, Some(itype)),
            &format!(
                "<iq type='{itype}' id='i1'><query xmlns='jabber:iq:private'>{inner}</query></iq>"
            ),
        )
    }

    #[test]
    fn a_get_and_a_set_become_queries_for_the_elements_namespace() {
        let got = private_iq("get", "<prefs xmlns='exodus:prefs'/>");
        assert!(
            matches!(&got[..], [Action::Query { query: Query::PrivateGet { user, name, namespace, .. }, .. }]
                if user == "alice" && name == "prefs" && namespace == "exodus:prefs"),
            "{got:?}"
        );
        let set = private_iq("set", "<prefs xmlns='exodus:prefs'><d>1</d></prefs>");
        assert!(
            matches!(&set[..], [Action::Query { query: Query::PrivateSet { namespace, element, .. }, .. }]
                if namespace == "exodus:prefs"
                    && String::from_utf8_lossy(element) == "<prefs xmlns=\"exodus:prefs\"><d>1</d></prefs>"),
            "{set:?}"
        );
    }

    #[test]
    fn a_set_of_several_elements_of_one_namespace_is_stored_together() {
        let set = private_iq("set", "<a xmlns='n:s'>1</a><b xmlns='n:s'/>");
        assert!(
            matches!(&set[..], [Action::Query { query: Query::PrivateSet { namespace, element, .. }, .. }]
                if namespace == "n:s"
                    && String::from_utf8_lossy(element) == "<a xmlns=\"n:s\">1</a><b xmlns=\"n:s\"/>"),
            "{set:?}"
        );
    }

    #[test]
    fn jabber_namespaces_mixed_or_long_ones_and_oversized_data_are_refused_without_a_query() {
        let big = format!(
            "<p xmlns='a:b'>{}</p>",
            "x".repeat(super::MAX_PRIVATE_BYTES)
        );
        let long = format!(
            "<p xmlns='urn:{}'/>",
            "n".repeat(super::MAX_NAMESPACE_BYTES)
        );
        for (itype, inner, condition) in [
            ("set", "<query xmlns='jabber:iq:roster'/>", "not-acceptable"),
            ("get", "<x xmlns='jabber:client'/>", "not-acceptable"),
            ("get", "<a xmlns='a:a'/><b xmlns='a:a'/>", "bad-request"),
            ("set", "<a xmlns='a:a'/><b xmlns='b:b'/>", "bad-request"),
            ("get", "", "bad-request"),
            ("set", big.as_str(), "resource-constraint"),
            ("set", long.as_str(), "not-acceptable"),
        ] {
            let acts = private_iq(itype, inner);
            let replies = payloads(&acts);
            assert!(
                matches!(&replies[..], [p] if p.contains(condition)),
                "{itype} {}: {acts:?}",
                &inner[..inner.len().min(60)]
            );
        }
    }
}
