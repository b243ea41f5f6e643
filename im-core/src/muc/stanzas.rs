//! The stanzas a room sends: occupants' presence (with the `muc#user`
//! item and status codes), broadcast messages (stamped with the room's
//! stanza id and the occupant id), history and subject.

use bytes::Bytes;
use xmpp_stream::element::{Element, Node};
use xmpp_stream::ns;
use xmpp_stream::stanza::{append_child, delay_element, inspect};

use super::room::{Affiliation, Occupant, Role};
use super::{MUC_USER, OCCUPANT_ID};

/// What one presence of an occupant says beyond its own presence.
#[derive(Clone, Debug, Default)]
pub struct PresenceNote<'a> {
    /// The occupant left (or was removed).
    pub unavailable: bool,
    /// Status codes (110 is added for the occupant's own sessions).
    pub codes: Vec<u16>,
    /// The new nick (303).
    pub new_nick: Option<&'a str>,
    /// A reason (kick, ban).
    pub reason: Option<&'a str>,
    /// The room is destroyed: an alternate venue and reason.
    pub destroyed: Option<(Option<&'a str>, Option<&'a str>)>,
}

/// The presence of occupant `nick` of `room` (no `to`), with the real JID
/// if `jid` is given.
pub fn occupant_presence(
    room: &str,
    nick: &str,
    occupant: &Occupant,
    affiliation: Affiliation,
    role: Role,
    jid: Option<&str>,
    note: &PresenceNote<'_>,
) -> Element {
    let mut p = Element::new("presence", ns::CLIENT).with_attr("from", format!("{room}/{nick}"));
    if note.unavailable {
        p.set_attr("type", "unavailable");
    } else {
        for child in &occupant.presence {
            p.children.push(Node::Element(child.clone()));
        }
    }
    let mut item = Element::new("item", MUC_USER)
        .with_attr("affiliation", affiliation.name())
        .with_attr("role", role.name());
    if let Some(jid) = jid {
        item.set_attr("jid", jid);
    }
    if let Some(new) = note.new_nick {
        item.set_attr("nick", new);
    }
    if let Some(reason) = note.reason {
        item = item.with_child(Element::new("reason", MUC_USER).with_text(reason));
    }
    let mut x = Element::new("x", MUC_USER).with_child(item);
    if let Some((venue, reason)) = note.destroyed {
        let mut d = Element::new("destroy", MUC_USER);
        if let Some(v) = venue {
            d.set_attr("jid", v);
        }
        if let Some(r) = reason {
            d = d.with_child(Element::new("reason", MUC_USER).with_text(r));
        }
        x = x.with_child(d);
    }
    for code in &note.codes {
        x = x.with_child(Element::new("status", MUC_USER).with_attr("code", code.to_string()));
    }
    p.with_child(x).with_child(
        Element::new("occupant-id", OCCUPANT_ID).with_attr("id", occupant.occupant_id.clone()),
    )
}

/// A message from an occupant (`from`, `room/nick`) as the room passes
/// it on: the client's `id`, `xml:lang` and children, less anything only
/// a server may say (stanza ids, occupant ids, delays, `muc#user`
/// elements: status codes, items, invitations), with the sender's
/// occupant id; no `to`.
fn passed_on(sent: &Element, from: &str, mtype: &str, occupant_id: &str) -> Element {
    let mut m = Element::new("message", ns::CLIENT)
        .with_attr("from", from)
        .with_attr("type", mtype);
    if let Some(id) = sent.attr("id") {
        m.set_attr("id", id);
    }
    if let Some(lang) = sent.attr("xml:lang") {
        m.set_attr("xml:lang", lang);
    }
    for child in &sent.children {
        if let Node::Element(e) = child {
            let claim = (e.name == "stanza-id" && e.ns == ns::SID)
                || e.ns == OCCUPANT_ID
                || e.ns == ns::DELAY
                || e.ns == ns::LEGACY_DELAY
                || e.ns == MUC_USER;
            if !claim {
                m.children.push(Node::Element(e.clone()));
            }
        }
    }
    m.with_child(Element::new("occupant-id", OCCUPANT_ID).with_attr("id", occupant_id))
}

/// A groupchat message from `from` (`room/nick`) as broadcast: what
/// [`passed_on`] keeps, and the room's stanza id.
pub fn broadcast_message(
    sent: &Element,
    from: &str,
    room: &str,
    stanza_id: &str,
    occupant_id: &str,
) -> Element {
    passed_on(sent, from, "groupchat", occupant_id).with_child(
        Element::new("stanza-id", ns::SID)
            .with_attr("id", stanza_id)
            .with_attr("by", room),
    )
}

/// A private message between occupants (XEP-0045 §7.5): what
/// [`passed_on`] keeps, marked with an empty `muc#user` element.
pub fn private_message(sent: &Element, from: &str, mtype: &str, occupant_id: &str) -> Element {
    passed_on(sent, from, mtype, occupant_id).with_child(Element::new("x", MUC_USER))
}

/// A history message: `payload` with a delay stamp from the room.
pub fn with_delay(payload: &[u8], room: &str, at: u64) -> Option<Bytes> {
    let top = inspect(payload).ok()?;
    let when = crate::queries::micros_to_stamp(i64::try_from(at).ok()?.saturating_mul(1_000_000));
    Some(append_child(payload, &top, &delay_element(room, &when)))
}

/// The subject message (an empty `<subject/>` if none).
pub fn subject_message(room: &str, nick: &str, text: &str) -> Element {
    let from = if nick.is_empty() {
        room.to_owned()
    } else {
        format!("{room}/{nick}")
    };
    Element::new("message", ns::CLIENT)
        .with_attr("from", from)
        .with_attr("type", "groupchat")
        .with_child(Element::new("subject", ns::CLIENT).with_text(text))
}
