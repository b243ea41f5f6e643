//! Service discovery (XEP-0030): what the server and an account offer.

use xmpp_stream::element::Element;
use xmpp_stream::ns;

/// The server's disco#info (XEP-0030): exactly what is served.
pub(in crate::router) fn disco_info(extdisco: bool) -> Element {
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
    if extdisco {
        vars.push(ns::EXTDISCO);
    }
    features(
        Element::new("identity", ns::DISCO_INFO)
            .with_attr("category", "server")
            .with_attr("type", "im")
            .with_attr("name", "longlink"),
        &vars,
    )
}

/// An account's disco#info: its archive and stable ids (XEP-0313 §6).
pub(in crate::router) fn account_info(archive: bool) -> Element {
    features(
        Element::new("identity", ns::DISCO_INFO)
            .with_attr("category", "account")
            .with_attr("type", "registered"),
        match archive {
            true => &[ns::DISCO_INFO, ns::MAM, ns::SID],
            false => &[ns::DISCO_INFO],
        },
    )
}

/// A disco#info query with `identity` and the features `vars`.
fn features(identity: Element, vars: &[&str]) -> Element {
    let mut q = Element::new("query", ns::DISCO_INFO).with_child(identity);
    for var in vars {
        q = q.with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", *var));
    }
    q
}
