//! External service discovery (XEP-0215): the STUN and TURN servers of the
//! core's configuration, with fresh credentials for those that need them
//! (see [`crate::external_services`]). Answered from memory: no storage.

use bytes::Bytes;
use cm_protocol::RouteHeader;
use xmpp_stream::element::Element;
use xmpp_stream::{StanzaCondition, ns};

use super::iq_result;
use crate::address;
use crate::external_services::ExternalService;
use crate::router::Router;
use crate::routing::SessionAddr;

impl Router {
    /// A `<services/>` get (all, or those of its `type`) or a
    /// `<credentials/>` get (for the one `<service/>` it names).
    pub(in crate::router) fn extdisco_iq(
        &mut self,
        addr: SessionAddr,
        header: &RouteHeader,
        request: &Element,
        bare: &str,
    ) {
        let (Some(external), Some(now)) = (&self.external, self.now) else {
            return self.reply_error(addr.0, addr.1, header, StanzaCondition::ServiceUnavailable);
        };
        let user = address::local(bare).unwrap_or_default();
        let unix = external.unix_at(now);
        let service = |s: &ExternalService| service_element(s, user, unix);
        let answer = if request.name == "services" {
            let kind = request.attr("type");
            external
                .services()
                .iter()
                .filter(|s| kind.is_none_or(|k| k == s.kind))
                .fold(Element::new("services", ns::EXTDISCO), |l, s| {
                    l.with_child(service(s))
                })
        } else {
            let asked = request.child("service", ns::EXTDISCO);
            let (Some(kind), Some(host)) = (
                asked.and_then(|a| a.attr("type")),
                asked.and_then(|a| a.attr("host")),
            ) else {
                return self.reply_error(addr.0, addr.1, header, StanzaCondition::BadRequest);
            };
            let port = match asked.and_then(|a| a.attr("port")) {
                None => None,
                Some(p) => match p.parse::<u16>() {
                    Ok(p) => Some(p),
                    Err(_) => {
                        return self.reply_error(
                            addr.0,
                            addr.1,
                            header,
                            StanzaCondition::BadRequest,
                        );
                    }
                },
            };
            // (every match: one host may serve UDP and TCP apart)
            let found: Vec<&ExternalService> = external
                .services()
                .iter()
                .filter(|s| {
                    s.kind == kind
                        && s.host == host
                        && (port.is_none() || port == s.port)
                        && s.secret.is_some()
                })
                .collect();
            if found.is_empty() {
                return self.reply_error(addr.0, addr.1, header, StanzaCondition::ItemNotFound);
            }
            found
                .into_iter()
                .fold(Element::new("credentials", ns::EXTDISCO), |c, s| {
                    c.with_child(service(s))
                })
        };
        let reply = iq_result(header).with_child(answer);
        self.deliver(addr, Bytes::from(reply.to_bytes(ns::CLIENT)));
    }
}

/// A `<service/>` (XEP-0215 §3.2) for `user` at Unix time `now`.
fn service_element(s: &ExternalService, user: &str, now: u64) -> Element {
    let mut e = Element::new("service", ns::EXTDISCO)
        .with_attr("type", s.kind.clone())
        .with_attr("host", s.host.clone());
    if let Some(port) = s.port {
        e.set_attr("port", port.to_string());
    }
    if let Some(transport) = &s.transport {
        e.set_attr("transport", transport.clone());
    }
    if let Some(name) = &s.name {
        e.set_attr("name", name.clone());
    }
    if let Some(c) = s.credentials(user, now) {
        let expires = crate::queries::micros_to_stamp((c.expires as i64).saturating_mul(1_000_000));
        e.set_attr("username", c.username);
        e.set_attr("password", c.password);
        e.set_attr("expires", expires);
        e.set_attr("restricted", "1");
    }
    e
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cm_protocol::Kind;

    use crate::external_services::{ExternalService, ExternalServices};
    use crate::router::Router;
    use crate::router::test_support::*;

    fn with_services() -> Router {
        let turn = ExternalService::turn_for_tests();
        let stun = ExternalService {
            kind: "stun".into(),
            secret: None,
            ..turn.clone()
        };
        // Unix time 1796125516 at t0 - 10 s: 1796125526 at t0
        let services = ExternalServices::new(
            vec![stun, turn],
            t0() - Duration::from_secs(10),
            1_796_125_516,
        );
        let mut r = router().with_external_services(services);
        bound(&mut r, 1, 10, "alice@x", "phone");
        r
    }

    fn ask(r: &mut Router, inner: &str) -> Vec<String> {
        payloads(&stanza(
            r,
            1,
            10,
            header(Kind::Iq, "alice@x/phone", Some("x"), Some("get")),
            &format!("<iq type='get' id='e'>{inner}</iq>"),
        ))
    }

    #[test]
    fn services_are_listed_with_fresh_credentials_for_those_with_a_secret() {
        let mut r = with_services();
        let all = ask(&mut r, "<services xmlns='urn:xmpp:extdisco:2'/>");
        let [reply] = &all[..] else { panic!("{all:?}") };
        assert!(
            reply.contains(
                "<service type=\"stun\" host=\"turn.example\" port=\"3478\" transport=\"udp\"/>"
            ),
            "{reply}"
        );
        // expiry: t0's Unix time + 600 s
        assert!(
            reply.contains("username=\"1796126126:alice\"")
                && reply.contains("expires=\"2026-12-01T")
                && reply.contains("restricted=\"1\""),
            "{reply}"
        );
        let turn_only = ask(
            &mut r,
            "<services xmlns='urn:xmpp:extdisco:2' type='turn'/>",
        );
        assert!(
            matches!(&turn_only[..], [p] if !p.contains("\"stun\"") && p.contains("\"turn\"")),
            "{turn_only:?}"
        );
        let creds = ask(
            &mut r,
            "<credentials xmlns='urn:xmpp:extdisco:2'><service type='turn' host='turn.example'/></credentials>",
        );
        assert!(
            matches!(&creds[..], [p] if p.contains("<credentials") && p.contains("password=")),
            "{creds:?}"
        );
        let none = ask(
            &mut r,
            "<credentials xmlns='urn:xmpp:extdisco:2'><service type='stun' host='turn.example'/></credentials>",
        );
        assert!(
            matches!(&none[..], [p] if p.contains("item-not-found")),
            "{none:?}"
        );
        let bad_port = ask(
            &mut r,
            "<credentials xmlns='urn:xmpp:extdisco:2'><service type='turn' host='turn.example' port='x'/></credentials>",
        );
        assert!(
            matches!(&bad_port[..], [p] if p.contains("bad-request")),
            "{bad_port:?}"
        );
        let unnamed = ask(
            &mut r,
            "<credentials xmlns='urn:xmpp:extdisco:2'><service type='turn'/></credentials>",
        );
        assert!(
            matches!(&unnamed[..], [p] if p.contains("bad-request")),
            "{unnamed:?}"
        );
    }

    #[test]
    fn without_services_the_feature_is_neither_offered_nor_answered() {
        let mut r = router();
        bound(&mut r, 1, 10, "alice@x", "phone");
        let got = ask(&mut r, "<services xmlns='urn:xmpp:extdisco:2'/>");
        assert!(
            matches!(&got[..], [p] if p.contains("service-unavailable")),
            "{got:?}"
        );
        let info = ask(
            &mut r,
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        );
        assert!(
            matches!(&info[..], [p] if !p.contains("extdisco")),
            "{info:?}"
        );
        let mut r = with_services();
        let info = ask(
            &mut r,
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        );
        assert!(
            matches!(&info[..], [p] if p.contains("urn:xmpp:extdisco:2")),
            "{info:?}"
        );
    }

    #[test]
    fn the_caps_node_is_answered_and_echoed_and_any_other_node_is_unknown() {
        let mut r = with_services();
        let node = format!(
            "{}#{}",
            xmpp_stream::stream::CAPS_NODE,
            crate::router::server_caps_ver(crate::router::ServerOffers {
                extdisco: true,
                sasl2: true,
                fast: false,
            })
        );
        let ours = ask(
            &mut r,
            &format!("<query xmlns='http://jabber.org/protocol/disco#info' node='{node}'/>"),
        );
        assert!(
            matches!(&ours[..], [p] if p.contains(&format!("node=\"{node}\"")) && p.contains("urn:xmpp:extdisco:2")),
            "{ours:?}"
        );
        for unknown in [
            "<query xmlns='http://jabber.org/protocol/disco#info' node='urn:other'/>",
            "<query xmlns='http://jabber.org/protocol/disco#items' node='urn:other'/>",
        ] {
            let other = ask(&mut r, unknown);
            assert!(
                matches!(&other[..], [p] if p.contains("item-not-found")),
                "{other:?}"
            );
        }
    }
}
