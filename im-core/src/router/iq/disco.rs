//! Service discovery (XEP-0030): what the server and an account offer.

use xmpp_stream::element::Element;
use xmpp_stream::ns;

/// The server's disco#info (XEP-0030): exactly what is served.
pub(crate) fn disco_info(extdisco: bool) -> Element {
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

/// The `ver` of the server's entity capabilities (XEP-0115 §5.1): the
/// SHA-1 of its disco#info's identities and features, sorted, as the
/// CMs show it in stream features (the `Welcome` frame carries it).
pub fn caps_ver(extdisco: bool) -> String {
    caps_ver_of(&disco_info(extdisco))
}

/// The XEP-0115 `ver` of a disco#info `<query/>` (identities and
/// features; longlink's has no extended forms).
fn caps_ver_of(info: &Element) -> String {
    use base64::Engine;
    use sha1::Digest;
    // (sorted by the values themselves, then joined: a name that is the
    // start of another comes first, as §5.1 orders them)
    let mut identities: Vec<[String; 4]> = info
        .elements()
        .filter(|e| e.name == "identity")
        .map(|e| {
            let a = |n: &str| e.attr(n).unwrap_or_default().to_owned();
            [a("category"), a("type"), a("xml:lang"), a("name")]
        })
        .collect();
    identities.sort();
    let mut features: Vec<&str> = info
        .elements()
        .filter(|e| e.name == "feature")
        .filter_map(|e| e.attr("var"))
        .collect();
    features.sort_unstable();
    let mut s = String::new();
    for [category, kind, lang, name] in &identities {
        s.push_str(&format!("{category}/{kind}/{lang}/{name}<"));
    }
    for var in features {
        s.push_str(var);
        s.push('<');
    }
    base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(s.as_bytes()))
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
        assert_eq!(caps_ver_of(&info), "QgayPKawpkPSDYmwT/WM94uAlu0=");
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
        assert_eq!(caps_ver_of(&pair), hashed);
        // and the server's changes with what it offers
        assert_ne!(caps_ver(false), caps_ver(true));
    }
}
