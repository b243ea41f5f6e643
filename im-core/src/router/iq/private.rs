//! Private XML storage (XEP-0049): one element per namespace that only its
//! user reads and replaces, handed to the driver as queries. Namespaces
//! of the `jabber:` family are refused (§3), as are elements over
//! [`MAX_PRIVATE_BYTES`]; the store bounds the namespaces per user.

use bytes::Bytes;
use cm_protocol::RouteHeader;
use xmpp_stream::element::Element;
use xmpp_stream::{StanzaCondition, ns};

use crate::address;
use crate::router::{Query, Router};
use crate::routing::SessionAddr;

/// Most bytes of one stored element.
pub const MAX_PRIVATE_BYTES: usize = 64 * 1024;

impl Router {
    /// A private XML get or set of `bare`'s own.
    pub(in crate::router) fn private_iq(
        &mut self,
        addr: SessionAddr,
        header: &RouteHeader,
        query: &Element,
        bare: &str,
    ) {
        let mut children = query.elements();
        let (Some(element), None) = (children.next(), children.next()) else {
            // exactly one element, whose namespace names the data
            return self.reply_error(addr.0, addr.1, header, StanzaCondition::BadRequest);
        };
        if element.ns.starts_with("jabber:") || element.ns.is_empty() {
            return self.reply_error(addr.0, addr.1, header, StanzaCondition::NotAcceptable);
        }
        let user = address::local(bare).unwrap_or_default().to_owned();
        let (requester, iq_id) = (header.from.clone(), header.id.clone().unwrap_or_default());
        let query = match header.stanza_type.as_deref() {
            Some("get") => Query::PrivateGet {
                user,
                name: element.name.clone(),
                namespace: element.ns.clone(),
                requester,
                iq_id,
            },
            _ => {
                let bytes = element.to_bytes(ns::PRIVATE);
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
                    namespace: element.ns.clone(),
                    element: Bytes::from(bytes),
                    requester,
                    iq_id,
                }
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
    fn jabber_namespaces_two_elements_and_oversized_ones_are_refused_without_a_query() {
        let big = format!(
            "<p xmlns='a:b'>{}</p>",
            "x".repeat(super::MAX_PRIVATE_BYTES)
        );
        for (itype, inner, condition) in [
            ("set", "<query xmlns='jabber:iq:roster'/>", "not-acceptable"),
            ("get", "<x xmlns='jabber:client'/>", "not-acceptable"),
            ("get", "<a xmlns='a:a'/><b xmlns='b:b'/>", "bad-request"),
            ("get", "", "bad-request"),
            ("set", big.as_str(), "resource-constraint"),
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
