//! Service discovery (XEP-0030): what the server and an account offer.

use xmpp_stream::element::Element;
use xmpp_stream::ns;

/// What the server offers beyond what every longlink core serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerOffers {
    /// STUN/TURN services are configured (XEP-0215).
    pub extdisco: bool,
    /// SASL2 (XEP-0388) with Bind2 (XEP-0386) is offered at login.
    pub sasl2: bool,
    /// FAST tokens (XEP-0484) are offered in SASL2.
    pub fast: bool,
}

/// The server's disco#info (XEP-0030): exactly what is served.
pub(crate) fn disco_info(offers: ServerOffers) -> Element {
    let mut vars = vec![
        ns::DISCO_INFO,
        ns::DISCO_ITEMS,
        ns::PING,
        ns::ROSTER,
        ns::CARBONS,
        ns::VCARD,
        ns::BLOCKING,
        ns::PRIVATE,
        "msgoffline",
    ];
    if offers.extdisco {
        vars.push(ns::EXTDISCO);
    }
    if offers.sasl2 {
        vars.extend([ns::SASL2, ns::BIND2]);
        if offers.fast {
            vars.push(ns::FAST);
        }
    }
    features(
        Element::new("identity", ns::DISCO_INFO)
            .with_attr("category", "server")
            .with_attr("type", "im")
            .with_attr("name", "longlink"),
        &vars,
    )
}

/// The `ver` of the server's entity capabilities (XEP-0115 §5.1): the
/// SHA-1 of its disco#info's identities and features, sorted, as the
/// CMs show it in stream features (the `Welcome` frame carries it).
pub fn caps_ver(offers: ServerOffers) -> String {
    crate::caps::verification_string(&disco_info(offers))
}

/// An account's disco#info: its archive and stable ids (XEP-0313 §6),
/// push notifications (XEP-0357).
pub(in crate::router) fn account_info(archive: bool, push: bool) -> Element {
    let mut vars = vec![ns::DISCO_INFO];
    if archive {
        vars.extend([ns::MAM, ns::SID]);
    }
    if push {
        vars.push(crate::push::FEATURE);
    }
    vars.extend(PEP_FEATURES);
    features(
        Element::new("identity", ns::DISCO_INFO)
            .with_attr("category", "account")
            .with_attr("type", "registered"),
        &vars,
    )
    .with_child(
        Element::new("identity", ns::DISCO_INFO)
            .with_attr("category", "pubsub")
            .with_attr("type", "pep"),
    )
}

/// What an account's personal eventing service serves (XEP-0163 §9,
/// XEP-0060 §10).
const PEP_FEATURES: [&str; 21] = [
    ns::PUBSUB,
    "http://jabber.org/protocol/pubsub#access-open",
    "http://jabber.org/protocol/pubsub#access-presence",
    "http://jabber.org/protocol/pubsub#access-whitelist",
    "http://jabber.org/protocol/pubsub#auto-create",
    "http://jabber.org/protocol/pubsub#auto-subscribe",
    "http://jabber.org/protocol/pubsub#config-node",
    "http://jabber.org/protocol/pubsub#create-nodes",
    "http://jabber.org/protocol/pubsub#delete-items",
    "http://jabber.org/protocol/pubsub#delete-nodes",
    "http://jabber.org/protocol/pubsub#filtered-notifications",
    "http://jabber.org/protocol/pubsub#item-ids",
    "http://jabber.org/protocol/pubsub#last-published",
    "http://jabber.org/protocol/pubsub#multi-items",
    "http://jabber.org/protocol/pubsub#persistent-items",
    "http://jabber.org/protocol/pubsub#publish",
    "http://jabber.org/protocol/pubsub#publish-options",
    "http://jabber.org/protocol/pubsub#retract-items",
    "http://jabber.org/protocol/pubsub#retrieve-items",
    // bookmarks kept in step with private XML (XEP-0402 §5.3)
    "urn:xmpp:bookmarks:1#compat",
    // avatars kept in step with the vCard (XEP-0398)
    "urn:xmpp:pep-vcard-conversion:0",
];

/// A disco#info query with `identity` and the features `vars`.
fn features(identity: Element, vars: &[&str]) -> Element {
    let mut q = Element::new("query", ns::DISCO_INFO).with_child(identity);
    for var in vars {
        q = q.with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", *var));
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caps_ver_of_xep_0115s_own_example_is_the_one_it_publishes() {
        // XEP-0115 §5.2: Exodus 0.9.1
        let info = features(
            Element::new("identity", ns::DISCO_INFO)
                .with_attr("category", "client")
                .with_attr("type", "pc")
                .with_attr("name", "Exodus 0.9.1"),
            &[
                "http://jabber.org/protocol/caps",
                ns::DISCO_INFO,
                ns::DISCO_ITEMS,
                "http://jabber.org/protocol/muc",
            ],
        );
        assert_eq!(
            crate::caps::verification_string(&info),
            "QgayPKawpkPSDYmwT/WM94uAlu0="
        );
        // a name that starts another sorts first ('#' is below '<')
        let pair = features(
            Element::new("identity", ns::DISCO_INFO)
                .with_attr("category", "client")
                .with_attr("type", "pc"),
            &["urn:x:1#compat", "urn:x:1"],
        );
        let mut hashed = String::from("client/pc//<urn:x:1<urn:x:1#compat<");
        hashed = {
            use base64::Engine;
            use sha1::Digest;
            base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(hashed.as_bytes()))
        };
        assert_eq!(crate::caps::verification_string(&pair), hashed);
        // and the server's changes with what it offers
        let plain = ServerOffers {
            extdisco: false,
            sasl2: false,
            fast: false,
        };
        let all = ServerOffers {
            extdisco: true,
            sasl2: true,
            fast: true,
        };
        assert_ne!(
            caps_ver(plain),
            caps_ver(ServerOffers {
                extdisco: true,
                ..plain
            })
        );
        assert_ne!(
            caps_ver(plain),
            caps_ver(ServerOffers {
                sasl2: true,
                ..plain
            })
        );
        let info = disco_info(all).to_bytes(ns::CLIENT);
        let info = String::from_utf8(info).unwrap();
        for var in [ns::SASL2, ns::BIND2, ns::FAST, ns::EXTDISCO] {
            assert!(info.contains(&format!("var=\"{var}\"")), "{var}: {info}");
        }
    }
}
