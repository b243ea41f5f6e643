//! Personal eventing (XEP-0163) in the router: publish and read requests
//! become queries, sessions' entity capabilities are learned (asked once
//! per verification string), and stored changes reach exactly the
//! sessions that want their node.

use bytes::Bytes;
use cm_protocol::{Kind, RouteHeader};
use xmpp_stream::element::Element;
use xmpp_stream::ns;

use super::test_support::*;
use super::{Action, Input, PepEvent, PepRelation, Query};
use crate::caps::verification_string;
use crate::storage::{MAX_PEP_ITEMS, PepAccess, PepOptions};

const NODE: &str = "urn:xmpp:avatar:metadata";

/// A client's disco#info wanting notifications of `nodes`.
fn client_info(nodes: &[&str]) -> String {
    let mut info = String::from(
        "<query xmlns='http://jabber.org/protocol/disco#info'>\
         <identity category='client' type='phone' name='t'/>",
    );
    for n in nodes {
        info.push_str(&format!("<feature var='{n}+notify'/>"));
    }
    info.push_str("</query>");
    info
}

fn ver_of(info: &str) -> String {
    verification_string(&Element::parse(info.as_bytes(), ns::CLIENT).unwrap())
}

/// `full`'s session sends available presence showing caps `ver`.
fn present(r: &mut super::Router, node: u32, sid: u64, full: &str, ver: &str) -> Vec<Action> {
    stanza(
        r,
        node,
        sid,
        header(Kind::Presence, full, None, None),
        &format!(
            "<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://app' ver='{ver}'/></presence>"
        ),
    )
}

/// The id of the disco#info question `acts` ask of `to`, if any.
fn question(acts: &[Action], to: (u32, u64)) -> Option<String> {
    deliveries(acts).into_iter().find_map(|(addr, p)| {
        let el = Element::parse(p.as_bytes(), ns::CLIENT).ok()?;
        let q = el.child("query", ns::DISCO_INFO)?;
        (addr == to
            && el.attr("type") == Some("get")
            && q.attr("node")?.starts_with("https://app#"))
        .then(|| el.attr("id").map(str::to_owned))
        .flatten()
    })
}

/// `full`'s session answers question `id` with `info`.
fn answer(
    r: &mut super::Router,
    node: u32,
    sid: u64,
    full: &str,
    id: &str,
    info: &str,
) -> Vec<Action> {
    let h = RouteHeader {
        kind: Kind::Iq,
        stanza_type: Some("result".into()),
        to: None,
        id: Some(id.into()),
        from: full.into(),
    };
    stanza(
        r,
        node,
        sid,
        h,
        &format!("<iq type='result' id='{id}'>{info}</iq>"),
    )
}

fn last_items(acts: &[Action]) -> Vec<(&(u32, u64), &Query)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Query {
                to,
                query: q @ Query::PepLastItems { .. },
            } => Some((to, q)),
            _ => None,
        })
        .collect()
}

/// Alice (1, 10) and bob (2, 20), subscribed both ways; both present with
/// caps wanting `NODE`; the answered question's actions.
fn friends_wanting_the_node(r: &mut super::Router) -> Vec<Action> {
    bound_with_contact(r, 1, 10, "alice@x", "bob@x");
    bound_with_contact(r, 2, 20, "bob@x", "alice@x");
    let info = client_info(&[NODE, "urn:xmpp:nick"]);
    let ver = ver_of(&info);
    let asked = present(r, 1, 10, "alice@x/phone", &ver);
    let id = question(&asked, (1, 10)).expect("alice is asked");
    assert!(last_items(&asked).is_empty(), "{asked:?}");
    let mut acts = answer(r, 1, 10, "alice@x/phone", &id, &info);
    acts.extend(present(r, 2, 20, "bob@x/phone", &ver));
    acts
}

#[test]
fn unknown_caps_are_asked_once_and_a_session_then_gets_the_newest_items_it_may_read() {
    let mut r = router();
    let acts = friends_wanting_the_node(&mut r);
    // bob shows the same string: known now, not asked again
    assert_eq!(question(&acts, (2, 20)), None);
    let queries = last_items(&acts);
    assert_eq!(queries.len(), 2, "{acts:?}");
    for ((to, query), (me, other)) in queries.iter().zip([("alice", "bob"), ("bob", "alice")]) {
        let Query::PepLastItems {
            owners,
            nodes,
            requester,
        } = query
        else {
            unreachable!()
        };
        assert_eq!(*requester, format!("{me}@x/phone"), "{to:?}");
        assert_eq!(
            owners,
            &[
                (me.to_owned(), PepRelation::Owner),
                (other.to_owned(), PepRelation::Subscriber)
            ]
        );
        assert_eq!(nodes, &["urn:xmpp:avatar:metadata", "urn:xmpp:nick"]);
    }
    // the same caps again: nothing new to send
    let again = present(
        &mut r,
        2,
        20,
        "bob@x/phone",
        &ver_of(&client_info(&[NODE, "urn:xmpp:nick"])),
    );
    assert!(last_items(&again).is_empty(), "{again:?}");
}

#[test]
fn an_answer_from_another_session_or_with_an_error_teaches_nothing() {
    let mut r = router();
    bound_with_contact(&mut r, 1, 10, "alice@x", "bob@x");
    bound(&mut r, 1, 11, "alice@x", "pc");
    let info = client_info(&[NODE]);
    let ver = ver_of(&info);
    let id = question(&present(&mut r, 1, 10, "alice@x/phone", &ver), (1, 10)).unwrap();
    // the pc session did not get the question: its answer is ignored
    assert!(last_items(&answer(&mut r, 1, 11, "alice@x/pc", &id, &info)).is_empty());
    let h = RouteHeader {
        kind: Kind::Iq,
        stanza_type: Some("error".into()),
        to: None,
        id: Some(id.clone()),
        from: "alice@x/phone".into(),
    };
    stanza(&mut r, 1, 10, h, &format!("<iq type='error' id='{id}'/>"));
    // refused: the next session showing it is asked
    assert!(question(&present(&mut r, 1, 11, "alice@x/pc", &ver), (1, 11)).is_some());
}

fn stored(r: &mut super::Router, access: PepAccess, node: &str) -> Vec<Action> {
    let body = format!(
        "<event xmlns='http://jabber.org/protocol/pubsub#event'><items node='{node}'><item id='1'><x xmlns='urn:t'/></item></items></event>"
    );
    r.run(Input::Replies {
        to: (1, 10),
        payloads: Vec::new(),
        events: vec![PepEvent {
            owner: "alice".into(),
            node: node.into(),
            access,
            body: Bytes::from(body),
        }],
        iq: true,
    })
}

#[test]
fn a_stored_publish_notifies_the_readers_sessions_that_want_its_node_and_no_others() {
    let mut r = router();
    friends_wanting_the_node(&mut r);
    // bob's second session shows no caps: it wants nothing
    bound(&mut r, 2, 21, "bob@x", "pc");
    stanza(
        &mut r,
        2,
        21,
        header(Kind::Presence, "bob@x/pc", None, None),
        "<presence/>",
    );
    let acts = stored(&mut r, PepAccess::Presence, NODE);
    let got = deliveries(&acts);
    let to: Vec<_> = got.iter().map(|(a, _)| *a).collect();
    assert_eq!(to, [(1, 10), (2, 20)], "{acts:?}");
    for ((_, p), full) in got.iter().zip(["alice@x/phone", "bob@x/phone"]) {
        let m = Element::parse(p.as_bytes(), ns::CLIENT).unwrap();
        assert_eq!(m.attr("from"), Some("alice@x"));
        assert_eq!(m.attr("to"), Some(full));
        assert_eq!(m.attr("type"), Some("headline"));
        assert!(m.child("event", ns::PUBSUB_EVENT).is_some(), "{p}");
    }
    // a whitelist node notifies only the owner; a node nobody wants, nobody
    let owner_only = delivered_to(&stored(&mut r, PepAccess::Whitelist, NODE));
    assert_eq!(owner_only, [(1, 10)]);
    assert!(delivered_to(&stored(&mut r, PepAccess::Open, "urn:other")).is_empty());
    // once bob blocks alice, he gets none of her notifications
    stanza(
        &mut r,
        2,
        20,
        header(Kind::Iq, "bob@x/phone", None, Some("set")),
        "<iq type='set' id='b'><block xmlns='urn:xmpp:blocking'><item jid='alice@x'/></block></iq>",
    );
    assert_eq!(
        delivered_to(&stored(&mut r, PepAccess::Open, NODE)),
        [(1, 10)]
    );
}

fn iq(
    r: &mut super::Router,
    node: u32,
    sid: u64,
    full: &str,
    itype: &str,
    to: Option<&str>,
    body: &str,
) -> Vec<Action> {
    let to_attr = to.map(|t| format!(" to='{t}'")).unwrap_or_default();
    stanza(
        r,
        node,
        sid,
        header(Kind::Iq, full, to, Some(itype)),
        &format!("<iq type='{itype}' id='i1'{to_attr}>{body}</iq>"),
    )
}

fn query(acts: &[Action]) -> Option<&Query> {
    acts.iter().find_map(|a| match a {
        Action::Query { query, .. } => Some(query),
        _ => None,
    })
}

#[test]
fn publishes_and_item_requests_become_queries_with_their_options_and_the_readers_standing() {
    let mut r = router();
    bound_with_contact(&mut r, 1, 10, "alice@x", "bob@x");
    bound_with_contact(&mut r, 2, 20, "bob@x", "alice@x");
    bound(&mut r, 3, 30, "carol@x", "phone");
    let publish = "<pubsub xmlns='http://jabber.org/protocol/pubsub'>\
        <publish node='urn:xmpp:nick'><item id='current'><nick xmlns='http://jabber.org/protocol/nick'>A</nick></item></publish>\
        <publish-options><x xmlns='jabber:x:data' type='submit'>\
        <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
        <field var='pubsub#access_model'><value>open</value></field>\
        <field var='pubsub#max_items'><value>max</value></field>\
        <field var='pubsub#persist_items'><value>true</value></field>\
        </x></publish-options></pubsub>";
    let acts = iq(&mut r, 1, 10, "alice@x/phone", "set", None, publish);
    let Some(Query::PepPublish {
        user,
        node,
        item,
        options,
        ..
    }) = query(&acts)
    else {
        panic!("{acts:?}")
    };
    assert_eq!(
        (user.as_str(), node.as_str(), item.id.as_str()),
        ("alice", "urn:xmpp:nick", "current")
    );
    assert_eq!(
        String::from_utf8_lossy(&item.payload),
        "<nick xmlns=\"http://jabber.org/protocol/nick\">A</nick>"
    );
    assert_eq!(
        *options,
        PepOptions {
            access: Some(PepAccess::Open),
            max_items: Some(MAX_PEP_ITEMS)
        }
    );
    // (its answer, so alice may ask again)
    r.run(Input::Replies {
        to: (1, 10),
        payloads: Vec::new(),
        events: Vec::new(),
        iq: true,
    });
    // reading: the owner, a subscribed contact, anyone else
    let items = "<pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='urn:xmpp:nick' max_items='1'/></pubsub>";
    for (node, sid, full, to, relation, from) in [
        (1, 10, "alice@x/phone", None, PepRelation::Owner, None),
        (
            2,
            20,
            "bob@x/phone",
            Some("alice@x"),
            PepRelation::Subscriber,
            Some("alice@x"),
        ),
        (
            3,
            30,
            "carol@x/phone",
            Some("alice@x"),
            PepRelation::Other,
            Some("alice@x"),
        ),
    ] {
        let acts = iq(&mut r, node, sid, full, "get", to, items);
        r.run(Input::Replies {
            to: (node, sid),
            payloads: Vec::new(),
            events: Vec::new(),
            iq: true,
        });
        assert!(
            matches!(query(&acts), Some(Query::PepItems { owner, relation: rel, from: f, max: Some(1), .. })
                if owner == "alice" && *rel == relation && f.as_deref() == from),
            "{full}: {acts:?}"
        );
    }
    // refused without a query
    for (full, to, body, condition) in [
        ("bob@x/phone", Some("alice@x"), publish, "forbidden"),
        (
            "alice@x/phone",
            None,
            "<pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='n'/></pubsub>",
            "item-required",
        ),
        (
            "alice@x/phone",
            None,
            "<pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='n'><item><a xmlns='a'/><b xmlns='b'/></item></publish></pubsub>",
            "invalid-payload",
        ),
        (
            "alice@x/phone",
            None,
            "<pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='n'><item><a xmlns='a'/></item></publish>\
             <publish-options><x xmlns='jabber:x:data' type='submit'><field var='pubsub#access_model'><value>roster</value></field></x></publish-options></pubsub>",
            "precondition-not-met",
        ),
        (
            "alice@x/phone",
            None,
            "<pubsub xmlns='http://jabber.org/protocol/pubsub'><items/></pubsub>",
            "nodeid-required",
        ),
        (
            "alice@x/phone",
            None,
            "<pubsub xmlns='http://jabber.org/protocol/pubsub'><subscribe node='n' jid='alice@x'/></pubsub>",
            "unsupported",
        ),
    ] {
        let (node, sid) = if full.starts_with("bob") {
            (2, 20)
        } else {
            (1, 10)
        };
        let acts = iq(&mut r, node, sid, full, "set", to, body);
        assert!(query(&acts).is_none(), "{body}: {acts:?}");
        let replies = payloads(&acts);
        assert!(
            matches!(&replies[..], [p] if p.contains(condition) && p.contains("type=\"error\"")),
            "{body}: {acts:?}"
        );
    }
}

#[test]
fn a_session_available_again_gets_the_newest_items_again_and_an_owner_who_blocks_it_is_left_out() {
    let mut r = router();
    friends_wanting_the_node(&mut r);
    r.run(Input::Replies {
        to: (2, 20),
        payloads: Vec::new(),
        events: Vec::new(),
        iq: false,
    });
    // alice blocks bob: bob's next query leaves her out
    stanza(
        &mut r,
        1,
        10,
        header(Kind::Iq, "alice@x/phone", None, Some("set")),
        "<iq type='set' id='b'><block xmlns='urn:xmpp:blocking'><item jid='bob@x'/></block></iq>",
    );
    let ver = ver_of(&client_info(&[NODE, "urn:xmpp:nick"]));
    stanza(
        &mut r,
        2,
        20,
        header(Kind::Presence, "bob@x/phone", None, Some("unavailable")),
        "<presence type='unavailable'/>",
    );
    let back = present(&mut r, 2, 20, "bob@x/phone", &ver);
    let queries = last_items(&back);
    let [(_, Query::PepLastItems { owners, nodes, .. })] = &queries[..] else {
        panic!("{back:?}")
    };
    assert_eq!(owners, &[("bob".to_owned(), PepRelation::Owner)]);
    assert_eq!(nodes.len(), 2);
    // one at a time: while it is out, a new node known from carol's
    // answer asks nothing for bob
    bound(&mut r, 3, 30, "carol@x", "phone");
    let wider = client_info(&[NODE, "urn:xmpp:nick", "urn:new"]);
    let id = question(
        &present(&mut r, 3, 30, "carol@x/phone", &ver_of(&wider)),
        (3, 30),
    )
    .unwrap();
    answer(&mut r, 3, 30, "carol@x/phone", &id, &wider);
    let more = present(&mut r, 2, 20, "bob@x/phone", &ver_of(&wider));
    assert!(question(&more, (2, 20)).is_none());
    assert!(last_items(&more).is_empty(), "{more:?}");
}

#[test]
fn a_notification_another_core_forwards_reaches_only_the_sessions_that_want_its_node() {
    use cm_protocol::Frame;
    let mut r = router();
    bound_with_contact(&mut r, 2, 20, "bob@x", "alice@x");
    bound(&mut r, 2, 21, "bob@x", "pc");
    let info = client_info(&[NODE]);
    let id = question(
        &present(&mut r, 2, 20, "bob@x/phone", &ver_of(&info)),
        (2, 20),
    )
    .unwrap();
    answer(&mut r, 2, 20, "bob@x/phone", &id, &info);
    stanza(
        &mut r,
        2,
        21,
        header(Kind::Presence, "bob@x/pc", None, None),
        "<presence/>",
    );
    let forwarded = |r: &mut super::Router, from: &str, node: &str| {
        let payload = super::notification(
            "alice@x",
            "bob@x",
            "pep-1",
            format!("<event xmlns='http://jabber.org/protocol/pubsub#event'><items node='{node}'><item id='1'/></items></event>").as_bytes(),
        );
        let h = RouteHeader {
            kind: Kind::Message,
            stanza_type: Some("headline".into()),
            to: Some("bob@x".into()),
            id: Some("pep-1".into()),
            from: from.into(),
        };
        frame(
            r,
            9,
            Frame::Forward {
                seq: 0,
                header: h,
                payload,
            },
        )
    };
    let got = deliveries(&forwarded(&mut r, "alice@x", NODE));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, (2, 20));
    assert!(got[0].1.contains("to=\"bob@x/phone\""), "{got:?}");
    assert!(delivered_to(&forwarded(&mut r, "alice@x", "urn:other")).is_empty());
}

#[test]
fn the_upload_service_is_listed_described_and_turns_a_slot_request_into_a_query() {
    let mut r = router().with_upload(super::UploadService {
        jid: "upload.x".into(),
        max_file_bytes: 1000,
    });
    bound(&mut r, 1, 10, "alice@x", "phone");
    let items = iq(
        &mut r,
        1,
        10,
        "alice@x/phone",
        "get",
        Some("x"),
        "<query xmlns='http://jabber.org/protocol/disco#items'/>",
    );
    assert!(
        payloads(&items)[0].contains("jid=\"upload.x\""),
        "{items:?}"
    );
    let info = iq(
        &mut r,
        1,
        10,
        "alice@x/phone",
        "get",
        Some("upload.x"),
        "<query xmlns='http://jabber.org/protocol/disco#info'/>",
    );
    let info = &payloads(&info)[0];
    assert!(info.contains("category=\"store\"") && info.contains("urn:xmpp:http:upload:0"));
    assert!(info.contains("<value>1000</value>"), "{info}");
    let slot = iq(
        &mut r,
        1,
        10,
        "alice@x/phone",
        "get",
        Some("upload.x"),
        "<request xmlns='urn:xmpp:http:upload:0' filename='a.jpg' size='10' content-type='image/jpeg'/>",
    );
    assert!(
        matches!(query(&slot), Some(Query::UploadSlot { user, filename, size: 10, content_type: Some(t), service, .. })
            if user == "alice" && filename == "a.jpg" && t == "image/jpeg" && service == "upload.x"),
        "{slot:?}"
    );
    // without a size: refused at once
    r.run(Input::Replies {
        to: (1, 10),
        payloads: Vec::new(),
        events: Vec::new(),
        iq: true,
    });
    let bad = iq(
        &mut r,
        1,
        10,
        "alice@x/phone",
        "get",
        Some("upload.x"),
        "<request xmlns='urn:xmpp:http:upload:0' filename='a.jpg'/>",
    );
    assert!(query(&bad).is_none());
    assert!(payloads(&bad)[0].contains("bad-request"), "{bad:?}");
}

#[test]
fn a_session_a_cm_announces_is_asked_its_features_and_then_gets_notifications_without_a_replay() {
    use cm_protocol::Frame;
    let mut r = router();
    bound_with_contact(&mut r, 1, 10, "alice@x", "bob@x");
    // bob's session comes by a CM's announcement (as after a core restart)
    let acts = frame(
        &mut r,
        2,
        Frame::Announce {
            sid: 20,
            jid: "bob@x/phone".into(),
            available: true,
            priority: 0,
            sm: None,
        },
    );
    let asked = deliveries(&acts)
        .into_iter()
        .find(|(a, p)| *a == (2, 20) && p.contains("disco#info"))
        .map(|(_, p)| Element::parse(p.as_bytes(), ns::CLIENT).unwrap());
    let asked = asked.unwrap_or_else(|| panic!("bob is not asked: {acts:?}"));
    assert!(
        asked
            .child("query", ns::DISCO_INFO)
            .unwrap()
            .attr("node")
            .is_none()
    );
    let id = asked.attr("id").unwrap().to_owned();
    let info = client_info(&[NODE]);
    let answered = answer(&mut r, 2, 20, "bob@x/phone", &id, &info);
    assert!(last_items(&answered).is_empty(), "no replay: {answered:?}");
    // alice's publish reaches him; the string is known for others now
    let mut r2 = r;
    let got = delivered_to(&stored_as(&mut r2, "alice", PepAccess::Presence, NODE));
    assert!(got.contains(&(2, 20)), "{got:?}");
}

fn stored_as(r: &mut super::Router, owner: &str, access: PepAccess, node: &str) -> Vec<Action> {
    let body = format!(
        "<event xmlns='http://jabber.org/protocol/pubsub#event'><items node='{node}'><item id='1'/></items></event>"
    );
    r.run(Input::Replies {
        to: (1, 10),
        payloads: Vec::new(),
        events: vec![PepEvent {
            owner: owner.into(),
            node: node.into(),
            access,
            body: Bytes::from(body),
        }],
        iq: true,
    })
}
