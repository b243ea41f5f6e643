//! External components (XEP-0114) in the router: stanzas from users to a
//! component's domain, stanzas from a component to users, errors both
//! ways, directed presence, disco#items, a cluster of cores.

use bytes::Bytes;
use cm_protocol::slots::slot_of;
use cm_protocol::{Frame, Kind, RouteHeader, SlotEpoch};
use xmpp_stream::StanzaCondition;

use super::test_support::*;
use super::{Action, Input, Router};
use crate::shards::{Epoch, LeaseEvent};

const PUSH: &str = "push.x";

/// A router for `x` with the component `push.x` configured, connected
/// if `up`.
fn with_push(up: bool) -> Router {
    let mut r = router().with_components([PUSH.to_owned()]);
    if up {
        assert!(r.run(Input::ComponentUp { name: PUSH.into() }).is_empty());
    }
    r
}

/// What `acts` send to components: (name, stanza).
fn to_components(acts: &[Action]) -> Vec<(String, String)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::ToComponent { name, payload } => {
                Some((name.clone(), String::from_utf8_lossy(payload).into_owned()))
            }
            _ => None,
        })
        .collect()
}

/// A stanza from the component, as its stream hands it over.
fn from_push(
    r: &mut Router,
    kind: Kind,
    from: &str,
    to: &str,
    stype: Option<&str>,
    p: &str,
) -> Vec<Action> {
    r.run(Input::FromComponent {
        name: PUSH.into(),
        header: RouteHeader {
            kind,
            stanza_type: stype.map(Into::into),
            to: Some(to.into()),
            id: Some("c1".into()),
            from: from.into(),
        },
        payload: Bytes::copy_from_slice(p.as_bytes()),
    })
}

#[test]
fn a_users_stanzas_to_a_connected_component_go_to_it_as_they_came() {
    let mut r = with_push(true);
    bound(&mut r, 1, 10, "alice@x", "phone");
    let p = "<message from='alice@x/phone' to='user1@push.x' type='chat' id='m1'><body>hi</body></message>";
    let acts = stanza(
        &mut r,
        1,
        10,
        header(
            Kind::Message,
            "alice@x/phone",
            Some("user1@push.x"),
            Some("chat"),
        ),
        p,
    );
    assert_eq!(to_components(&acts), [(PUSH.to_owned(), p.to_owned())]);
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Action::Archive { .. } | Action::StoreOffline { .. })),
        "{acts:?}"
    );
    // the component's domain itself, and an IQ
    let iq = "<iq from='alice@x/phone' to='push.x' type='set' id='e'><enable xmlns='urn:xmpp:push:0'/></iq>";
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Iq, "alice@x/phone", Some("push.x"), Some("set")),
        iq,
    );
    assert_eq!(to_components(&acts), [(PUSH.to_owned(), iq.to_owned())]);
}

#[test]
fn a_component_not_connected_answers_iqs_and_messages_service_unavailable_and_drops_presence() {
    let mut r = with_push(false);
    bound(&mut r, 1, 10, "alice@x", "phone");
    for (kind, stype, p) in [
        (
            Kind::Iq,
            Some("get"),
            "<iq type='get' id='i1'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        ),
        (
            Kind::Message,
            Some("chat"),
            "<message type='chat' id='i1'><body>x</body></message>",
        ),
    ] {
        let acts = stanza(
            &mut r,
            1,
            10,
            header(kind, "alice@x/phone", Some(PUSH), stype),
            p,
        );
        assert!(to_components(&acts).is_empty());
        let got = payloads(&acts);
        assert_eq!(got.len(), 1, "{acts:?}");
        assert!(
            got[0].contains("service-unavailable") && got[0].contains("from=\"push.x\""),
            "{}",
            got[0]
        );
    }
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Presence, "alice@x/phone", Some(PUSH), None),
        "<presence/>",
    );
    assert!(acts.is_empty(), "{acts:?}");
    // and once it went away again, the same
    r.run(Input::ComponentUp { name: PUSH.into() });
    r.run(Input::ComponentDown { name: PUSH.into() });
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Message, "alice@x/phone", Some(PUSH), Some("chat")),
        "<message type='chat' id='i2'><body>x</body></message>",
    );
    assert!(payloads(&acts)[0].contains("service-unavailable"));
}

#[test]
fn a_components_message_reaches_the_user_or_offline_storage() {
    let mut r = with_push(true);
    bound(&mut r, 1, 10, "alice@x", "phone");
    stanza(
        &mut r,
        1,
        10,
        header(Kind::Presence, "alice@x/phone", None, None),
        "<presence/>",
    );
    let p = "<message from='bot@push.x' to='alice@x/phone' type='chat' id='c1'><body>ding</body></message>";
    let acts = from_push(
        &mut r,
        Kind::Message,
        "bot@push.x",
        "alice@x/phone",
        Some("chat"),
        p,
    );
    assert_eq!(deliveries(&acts), [((1, 10), p.to_owned())]);
    // to the bare JID: the best session
    let acts = from_push(
        &mut r,
        Kind::Message,
        "bot@push.x",
        "alice@x",
        Some("chat"),
        p,
    );
    assert_eq!(delivered_to(&acts), [(1, 10)]);
    // a user with no session: stored, as from anyone
    let acts = from_push(
        &mut r,
        Kind::Message,
        "bot@push.x",
        "bob@x",
        Some("chat"),
        p,
    );
    let stored: Vec<_> = acts
        .iter()
        .filter_map(|a| match a {
            Action::StoreOffline {
                user, live: None, ..
            } => Some(user.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(stored, ["bob"]);
    // if storing fails, the component hears of it
    let acts = r.run(Input::StoreFailed {
        bounce: Default::default(),
        payload: Bytes::copy_from_slice(p.as_bytes()),
        condition: StanzaCondition::ResourceConstraint,
        origin: None,
        live: None,
    });
    let got = to_components(&acts);
    assert_eq!(got.len(), 1, "{acts:?}");
    assert!(
        got[0].1.contains("resource-constraint") && got[0].1.contains("to=\"bot@push.x\""),
        "{}",
        got[0].1
    );
}

#[test]
fn a_components_iq_reaches_the_full_jid_and_the_answer_goes_back_to_it() {
    let mut r = with_push(true);
    bound(&mut r, 1, 10, "alice@x", "phone");
    let get = "<iq from='push.x' to='alice@x/phone' type='get' id='c1'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>";
    let acts = from_push(
        &mut r,
        Kind::Iq,
        "push.x",
        "alice@x/phone",
        Some("get"),
        get,
    );
    assert_eq!(deliveries(&acts), [((1, 10), get.to_owned())]);
    let result = "<iq from='alice@x/phone' to='push.x' type='result' id='c1'/>";
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Iq, "alice@x/phone", Some("push.x"), Some("result")),
        result,
    );
    assert_eq!(to_components(&acts), [(PUSH.to_owned(), result.to_owned())]);
    // a session that is not there: service-unavailable back to the component
    let acts = from_push(&mut r, Kind::Iq, "push.x", "alice@x/gone", Some("get"), get);
    let got = to_components(&acts);
    assert_eq!(got.len(), 1, "{acts:?}");
    assert!(got[0].1.contains("service-unavailable") && got[0].1.contains("id=\"c1\""));
    // a ping to the server is answered; anything else to it is not served
    let ping = "<iq from='push.x' to='x' type='get' id='c1'><ping xmlns='urn:xmpp:ping'/></iq>";
    let acts = from_push(&mut r, Kind::Iq, "push.x", "x", Some("get"), ping);
    let got = to_components(&acts);
    assert!(
        got[0].1.contains("type=\"result\"") && got[0].1.contains("to=\"push.x\""),
        "{got:?}"
    );
    // a remote domain is not reachable
    let acts = from_push(
        &mut r,
        Kind::Message,
        "push.x",
        "a@elsewhere.net",
        Some("chat"),
        "<message/>",
    );
    assert!(
        to_components(&acts)[0]
            .1
            .contains("remote-server-not-found")
    );
}

#[test]
fn a_component_is_trusted_for_its_own_domain_only() {
    let mut r = with_push(true);
    bound(&mut r, 1, 10, "alice@x", "phone");
    // (its stream checks `from`; the router checks again)
    let p = "<message from='bob@x' to='alice@x/phone' type='chat'><body>forged</body></message>";
    let acts = from_push(
        &mut r,
        Kind::Message,
        "bob@x",
        "alice@x/phone",
        Some("chat"),
        p,
    );
    assert!(acts.is_empty(), "{acts:?}");
    // nor does a component not connected speak
    r.run(Input::ComponentDown { name: PUSH.into() });
    let p = "<message from='push.x' to='alice@x/phone' type='chat'><body>late</body></message>";
    let acts = from_push(
        &mut r,
        Kind::Message,
        "push.x",
        "alice@x/phone",
        Some("chat"),
        p,
    );
    assert!(acts.is_empty(), "{acts:?}");
}

#[test]
fn a_sessions_directed_presence_to_a_component_ends_with_its_unavailable_presence() {
    let mut r = with_push(true);
    bound(&mut r, 1, 10, "alice@x", "phone");
    stanza(
        &mut r,
        1,
        10,
        header(Kind::Presence, "alice@x/phone", None, None),
        "<presence/>",
    );
    let p = "<presence from='alice@x/phone' to='gw.user@push.x'/>";
    let acts = stanza(
        &mut r,
        1,
        10,
        header(
            Kind::Presence,
            "alice@x/phone",
            Some("gw.user@push.x"),
            None,
        ),
        p,
    );
    assert_eq!(to_components(&acts), [(PUSH.to_owned(), p.to_owned())]);
    let acts = end_session(&mut r, 1, 10, "alice@x/phone", true);
    let got = to_components(&acts);
    assert_eq!(got.len(), 1, "{acts:?}");
    assert!(
        got[0].1.contains("type=\"unavailable\"") && got[0].1.contains("to='gw.user@push.x'"),
        "{}",
        got[0].1
    );
    // presence from the component reaches the user's available sessions
    bound(&mut r, 1, 11, "alice@x", "pc");
    stanza(
        &mut r,
        1,
        11,
        header(Kind::Presence, "alice@x/pc", None, None),
        "<presence/>",
    );
    let p = "<presence from='gw.user@push.x' to='alice@x'/>";
    let acts = from_push(&mut r, Kind::Presence, "gw.user@push.x", "alice@x", None, p);
    assert_eq!(delivered_to(&acts), [(1, 11)]);
    // probes are not
    let acts = from_push(
        &mut r,
        Kind::Presence,
        "gw.user@push.x",
        "alice@x",
        Some("probe"),
        p,
    );
    assert!(acts.is_empty(), "{acts:?}");
}

#[test]
fn a_stanza_a_component_could_not_take_is_answered_to_its_sender() {
    let mut r = with_push(true);
    bound(&mut r, 1, 10, "alice@x", "phone");
    let acts = r.run(Input::ComponentRefused {
        name: PUSH.into(),
        payload: Bytes::from_static(b"<iq from='alice@x/phone' to='push.x' type='set' id='q'/>"),
        condition: StanzaCondition::ResourceConstraint,
    });
    let got = payloads(&acts);
    assert_eq!(got.len(), 1, "{acts:?}");
    assert!(
        got[0].contains("resource-constraint") && got[0].contains("id=\"q\""),
        "{}",
        got[0]
    );
    // (presence and answers are not answered)
    let acts = r.run(Input::ComponentRefused {
        name: PUSH.into(),
        payload: Bytes::from_static(b"<iq from='alice@x/phone' to='push.x' type='result' id='q'/>"),
        condition: StanzaCondition::ServiceUnavailable,
    });
    assert!(acts.is_empty(), "{acts:?}");
}

#[test]
fn the_servers_disco_items_list_the_components_connected() {
    let mut r = with_push(false);
    bound(&mut r, 1, 10, "alice@x", "phone");
    let ask = |r: &mut Router| {
        let acts = stanza(
            r,
            1,
            10,
            header(Kind::Iq, "alice@x/phone", Some("x"), Some("get")),
            "<iq type='get' id='d'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
        );
        payloads(&acts).join("")
    };
    assert!(!ask(&mut r).contains(PUSH));
    r.run(Input::ComponentUp { name: PUSH.into() });
    assert!(ask(&mut r).contains("jid=\"push.x\""), "{}", ask(&mut r));
}

#[test]
fn in_a_cluster_a_components_message_to_another_cores_user_is_forwarded_there() {
    const SLOTS: u16 = 2;
    let names: Vec<String> = (0..64).map(|i| format!("u{i}@x")).collect();
    let ours = names[0].clone();
    let theirs = names
        .iter()
        .find(|n| slot_of(n, SLOTS) != slot_of(&ours, SLOTS))
        .cloned()
        .unwrap_or_default();
    let mut r = router()
        .with_cluster("core-a#1", SLOTS)
        .with_components([PUSH.to_owned()]);
    r.run(Input::Ownership {
        events: vec![LeaseEvent::Owned {
            slot: slot_of(&ours, SLOTS),
            epoch: Epoch(1),
        }],
    });
    frame(
        &mut r,
        7,
        Frame::SlotOwners {
            core: "core-b#1".into(),
            slot_count: SLOTS,
            version: 1,
            owned: vec![SlotEpoch {
                slot: slot_of(&theirs, SLOTS).0,
                epoch: 1,
            }],
            cores: Vec::new(),
        },
    );
    r.run(Input::ComponentUp { name: PUSH.into() });
    let p = format!(
        "<message from='push.x' to='{theirs}' type='chat' id='c1'><body>x</body></message>"
    );
    let acts = from_push(&mut r, Kind::Message, "push.x", &theirs, Some("chat"), &p);
    let forwarded: Vec<_> = acts
        .iter()
        .filter_map(|a| match a {
            Action::Forward {
                core,
                frame: Frame::Forward { header, .. },
            } => Some((core.clone(), header.from.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(forwarded, [("core-b#1".to_owned(), PUSH.to_owned())]);
}
