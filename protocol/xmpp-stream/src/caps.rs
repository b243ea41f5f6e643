//! Entity capabilities (XEP-0115): the verification string a client
//! shows in presence and a server in stream features, computed from a
//! disco#info answer.

use crate::element::Element;
use crate::ns;

/// A form field: its `var` and its values.
type Field = (String, Vec<String>);

/// The XEP-0115 verification string (§5.1, SHA-1) of a disco#info
/// `<query/>`: identities, features and extended forms, each sorted.
pub fn verification_string(info: &Element) -> String {
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
    // extended forms (XEP-0128), by FORM_TYPE; fields by var, values sorted
    let mut forms: Vec<(String, Vec<Field>)> = info
        .elements()
        .filter(|e| e.name == "x" && e.ns == ns::DATA)
        .filter_map(|form| {
            let mut form_type = None;
            let mut fields = Vec::new();
            for field in form.elements().filter(|f| f.name == "field") {
                let var = field.attr("var").unwrap_or_default().to_owned();
                let mut values: Vec<String> = field
                    .elements()
                    .filter(|v| v.name == "value")
                    .map(|v| v.text())
                    .collect();
                if var == "FORM_TYPE" {
                    form_type = values.pop();
                } else {
                    values.sort();
                    fields.push((var, values));
                }
            }
            fields.sort();
            Some((form_type?, fields))
        })
        .collect();
    forms.sort();
    for (form_type, fields) in forms {
        s.push_str(&form_type);
        s.push('<');
        for (var, values) in fields {
            s.push_str(&var);
            s.push('<');
            for v in values {
                s.push_str(&v);
                s.push('<');
            }
        }
    }
    base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(s.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// XEP-0115 §5.3, the complex example (with an extended form).
    const COMPLEX: &str = "<query xmlns='http://jabber.org/protocol/disco#info' node='http://psi-im.org#q07IKJEyjvHSyhy//CH0CxmKi8w='>\
        <identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>\
        <identity xml:lang='el' category='client' name='Ψ 0.11' type='pc'/>\
        <feature var='http://jabber.org/protocol/caps'/>\
        <feature var='http://jabber.org/protocol/disco#info'/>\
        <feature var='http://jabber.org/protocol/disco#items'/>\
        <feature var='http://jabber.org/protocol/muc'/>\
        <x xmlns='jabber:x:data' type='result'>\
          <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>\
          <field var='ip_version' type='text-multi'><value>ipv4</value><value>ipv6</value></field>\
          <field var='os'><value>Mac</value></field>\
          <field var='os_version'><value>10.5.1</value></field>\
          <field var='software'><value>Psi</value></field>\
          <field var='software_version'><value>0.11</value></field>\
        </x></query>";

    fn info(xml: &str) -> Element {
        Element::parse(xml.as_bytes(), crate::ns::CLIENT).unwrap()
    }

    #[test]
    fn the_verification_string_matches_xep_0115s_examples() {
        assert_eq!(
            verification_string(&info(COMPLEX)),
            "q07IKJEyjvHSyhy//CH0CxmKi8w="
        );
        // §5.2, the simple example
        let simple = "<query xmlns='http://jabber.org/protocol/disco#info'>\
            <identity category='client' name='Exodus 0.9.1' type='pc'/>\
            <feature var='http://jabber.org/protocol/caps'/>\
            <feature var='http://jabber.org/protocol/disco#info'/>\
            <feature var='http://jabber.org/protocol/disco#items'/>\
            <feature var='http://jabber.org/protocol/muc'/></query>";
        assert_eq!(
            verification_string(&info(simple)),
            "QgayPKawpkPSDYmwT/WM94uAlu0="
        );
    }
}
