//! The Blocking Command (XEP-0191): the list's IQs, and what a block does
//! to messages, IQs and presence both ways.

use bytes::Bytes;
use cm_protocol::Kind;

use super::test_support::*;
use super::{Action, Input, RosterWrite, Router};

/// Alice (1, 10) and Bob (2, 20), each with the other in the roster (both
/// ways subscribed), both available.
fn friends(r: &mut Router) {
    bound_with_contact(r, 1, 10, "alice@x", "bob@x");
    bound_with_contact(r, 2, 20, "bob@x", "alice@x");
    for (node, sid, full) in [(1, 10, "alice@x/phone"), (2, 20, "bob@x/phone")] {
        stanza(
            r,
            node,
            sid,
            header(Kind::Presence, full, None, None),
            "<presence/>",
        );
    }
}

/// An IQ `body` of type `itype` from alice's session (1, 10).
fn alice_iq(r: &mut Router, itype: &str, body: &str) -> Vec<Action> {
    stanza(
        r,
        1,
        10,
        header(Kind::Iq, "alice@x/phone", None, Some(itype)),
        &format!("<iq type='{itype}' id='i1'>{body}</iq>"),
    )
}

fn to(acts: &[Action], node: u32, sid: u64) -> Vec<String> {
    deliveries(acts)
        .into_iter()
        .filter(|(a, _)| *a == (node, sid))
        .map(|(_, p)| p)
        .collect()
}

#[test]
fn a_block_is_written_before_its_result_and_then_pushed_to_every_session_that_asked_for_the_list() {
    let mut r = router();
    friends(&mut r);
    bound(&mut r, 1, 11, "alice@x", "desk");
    for sid in [10, 11] {
        let got = stanza(
            &mut r,
            1,
            sid,
            header(Kind::Iq, "alice@x/x", None, Some("get")),
            "<iq type='get' id='g'><blocklist xmlns='urn:xmpp:blocking'/></iq>",
        );
        assert!(
            to(&got, 1, sid)
                .iter()
                .any(|p| p.contains("<blocklist xmlns=\"urn:xmpp:blocking\"/>")),
            "{got:?}"
        );
    }
    let asked = r.step(Input::Frame {
        node: 1,
        frame: cm_protocol::Frame::Stanza {
            sid: 10,
            header: header(Kind::Iq, "alice@x/phone", None, Some("set")),
            payload: Bytes::from_static(
                b"<iq type='set' id='b1'><block xmlns='urn:xmpp:blocking'><item jid='bob@x'/></block></iq>",
            ),
        },
    });
    assert_eq!(
        roster_writes(&asked),
        vec![RosterWrite::Block {
            user: "alice".into(),
            jids: vec!["bob@x".into()]
        }]
    );
    assert!(delivered_to(&asked).is_empty(), "{asked:?}");
    let txn = asked
        .iter()
        .find_map(|a| match a {
            Action::WriteRoster { txn, .. } => Some(*txn),
            _ => None,
        })
        .unwrap_or_default();
    let done = r.step(Input::RosterWritten { txn });
    let to_phone = to(&done, 1, 10);
    assert!(
        to_phone
            .iter()
            .any(|p| p.contains("type=\"result\"") && p.contains("id=\"i1\"")),
        "{done:?}"
    );
    for sid in [10, 11] {
        assert!(
            to(&done, 1, sid).iter().any(|p| p
                .contains("<block xmlns=\"urn:xmpp:blocking\"><item jid=\"bob@x\"/></block>")
                && p.contains("type=\"set\"")),
            "push to {sid}: {done:?}"
        );
    }
    // bob, subscribed to alice, sees her go offline
    assert!(
        to(&done, 2, 20)
            .iter()
            .any(|p| p.contains("type=\"unavailable\"") && p.contains("from=\"alice@x/phone\"")),
        "{done:?}"
    );
    // and the list now has him
    let got = alice_iq(&mut r, "get", "<blocklist xmlns='urn:xmpp:blocking'/>");
    assert!(
        to(&got, 1, 10)
            .iter()
            .any(|p| p.contains("<item jid=\"bob@x\"/>")),
        "{got:?}"
    );
}

#[test]
fn a_blocked_senders_message_and_iq_are_refused_and_the_blocker_cannot_send_to_them() {
    let mut r = router();
    friends(&mut r);
    alice_iq(
        &mut r,
        "set",
        "<block xmlns='urn:xmpp:blocking'><item jid='bob@x'/></block>",
    );
    let from_bob = stanza(
        &mut r,
        2,
        20,
        header(Kind::Message, "bob@x/phone", Some("alice@x"), Some("chat")),
        "<message type='chat' id='m1'><body>hi</body></message>",
    );
    assert!(to(&from_bob, 1, 10).is_empty(), "{from_bob:?}");
    assert!(
        to(&from_bob, 2, 20)
            .iter()
            .any(|p| p.contains("type=\"error\"") && p.contains("<service-unavailable")),
        "{from_bob:?}"
    );
    assert!(
        !from_bob
            .iter()
            .any(|a| matches!(a, Action::StoreOffline { .. } | Action::Archive { .. })),
        "neither stored nor archived: {from_bob:?}"
    );
    let iq = stanza(
        &mut r,
        2,
        20,
        header(Kind::Iq, "bob@x/phone", Some("alice@x/phone"), Some("get")),
        "<iq type='get' id='q'><query xmlns='jabber:iq:version'/></iq>",
    );
    assert!(to(&iq, 1, 10).is_empty(), "{iq:?}");
    assert!(
        to(&iq, 2, 20)
            .iter()
            .any(|p| p.contains("<service-unavailable")),
        "{iq:?}"
    );

    let from_alice = stanza(
        &mut r,
        1,
        10,
        header(Kind::Message, "alice@x/phone", Some("bob@x"), Some("chat")),
        "<message type='chat' id='m2'><body>hi</body></message>",
    );
    assert!(to(&from_alice, 2, 20).is_empty(), "{from_alice:?}");
    assert!(
        to(&from_alice, 1, 10)
            .iter()
            .any(|p| p.contains("<not-acceptable")
                && p.contains("<blocked xmlns=\"urn:xmpp:blocking:errors\"/>")
                && p.contains("id=\"i1\"")),
        "{from_alice:?}"
    );
    let iq = stanza(
        &mut r,
        1,
        10,
        header(Kind::Iq, "alice@x/phone", Some("bob@x/phone"), Some("get")),
        "<iq type='get' id='v'><query xmlns='jabber:iq:version'/></iq>",
    );
    assert!(to(&iq, 2, 20).is_empty(), "{iq:?}");
    assert!(
        to(&iq, 1, 10)
            .iter()
            .any(|p| p.starts_with("<iq") && p.contains("<blocked ")),
        "{iq:?}"
    );
}

#[test]
fn presence_stops_both_ways_while_blocked_and_comes_back_on_unblock() {
    let mut r = router();
    friends(&mut r);
    alice_iq(
        &mut r,
        "set",
        "<block xmlns='urn:xmpp:blocking'><item jid='bob@x'/></block>",
    );
    let alice_again = stanza(
        &mut r,
        1,
        10,
        header(Kind::Presence, "alice@x/phone", None, None),
        "<presence><show>away</show></presence>",
    );
    assert!(to(&alice_again, 2, 20).is_empty(), "{alice_again:?}");
    let bob_again = stanza(
        &mut r,
        2,
        20,
        header(Kind::Presence, "bob@x/phone", None, None),
        "<presence><show>dnd</show></presence>",
    );
    assert!(to(&bob_again, 1, 10).is_empty(), "{bob_again:?}");
    let directed = stanza(
        &mut r,
        2,
        20,
        header(Kind::Presence, "bob@x/phone", Some("alice@x"), None),
        "<presence/>",
    );
    assert!(to(&directed, 1, 10).is_empty(), "{directed:?}");

    // an empty unblock unblocks everyone: bob gets alice's presence again
    let unblocked = alice_iq(&mut r, "set", "<unblock xmlns='urn:xmpp:blocking'/>");
    assert_eq!(
        roster_writes(&unblocked),
        vec![RosterWrite::Unblock {
            user: "alice".into(),
            jids: vec![]
        }]
    );
    assert!(
        to(&unblocked, 2, 20)
            .iter()
            .any(|p| p.contains("<show>away</show>")),
        "{unblocked:?}"
    );
    // … and alice gets bob's
    assert!(
        to(&unblocked, 1, 10)
            .iter()
            .any(|p| p.contains("<show>dnd</show>")),
        "{unblocked:?}"
    );
    let chat = stanza(
        &mut r,
        2,
        20,
        header(Kind::Message, "bob@x/phone", Some("alice@x"), Some("chat")),
        "<message type='chat' id='m3'><body>back</body></message>",
    );
    assert_eq!(delivered_to(&chat), vec![(1, 10)], "{chat:?}");
}

#[test]
fn a_block_list_loaded_with_the_roster_applies_and_a_domain_item_blocks_everyone_there() {
    let mut r = router();
    let acts = r.step(Input::Frame {
        node: 1,
        frame: cm_protocol::Frame::Bind {
            sid: 10,
            user: "alice@x".into(),
            iq_id: "b".into(),
            resource: Some("phone".into()),
            bind2: None,
        },
    });
    assert!(matches!(&acts[..], [Action::LoadRoster { .. }]), "{acts:?}");
    r.step(Input::RosterLoaded {
        user: "alice@x".into(),
        roster: Some(crate::storage::Roster {
            version: 1,
            items: Vec::new(),
            blocked: vec!["x".into()],
        }),
    });
    bound(&mut r, 2, 20, "bob@x", "pc");
    let from_bob = stanza(
        &mut r,
        2,
        20,
        header(
            Kind::Message,
            "bob@x/pc",
            Some("alice@x/phone"),
            Some("chat"),
        ),
        "<message type='chat' id='m1'><body>hi</body></message>",
    );
    assert!(to(&from_bob, 1, 10).is_empty(), "{from_bob:?}");
    // the server itself stays reachable: a ping to the domain is answered
    let ping = stanza(
        &mut r,
        1,
        10,
        header(Kind::Iq, "alice@x/phone", Some("x"), Some("get")),
        "<iq type='get' id='p' to='x'><ping xmlns='urn:xmpp:ping'/></iq>",
    );
    assert!(
        to(&ping, 1, 10)
            .iter()
            .any(|p| p.contains("type=\"result\"")),
        "{ping:?}"
    );
}

#[test]
fn block_requests_without_items_or_with_bad_jids_are_refused_and_write_nothing() {
    let mut r = router();
    friends(&mut r);
    for (body, condition) in [
        ("<block xmlns='urn:xmpp:blocking'/>", "bad-request"),
        (
            "<block xmlns='urn:xmpp:blocking'><item jid='@@bad'/></block>",
            "jid-malformed",
        ),
        (
            "<block xmlns='urn:xmpp:blocking'><item/></block>",
            "bad-request",
        ),
    ] {
        let acts = alice_iq(&mut r, "set", body);
        assert!(roster_writes(&acts).is_empty(), "{acts:?}");
        assert!(
            to(&acts, 1, 10).iter().any(|p| p.contains(condition)),
            "{body}: {acts:?}"
        );
    }
}

/// Whether `acts` deliver a presence to session (`node`, `sid`).
fn has_presence(acts: &[Action], node: u32, sid: u64) -> bool {
    to(acts, node, sid).iter().any(|p| p.contains("<presence"))
}

/// Bob (2, 20) blocks alice.
fn bob_blocks_alice(r: &mut Router) {
    stanza(
        r,
        2,
        20,
        header(Kind::Iq, "bob@x/phone", None, Some("set")),
        "<iq type='set' id='b'><block xmlns='urn:xmpp:blocking'><item jid='alice@x'/></block></iq>",
    );
}

/// Alice (1, 10) blocks `jid`; the actions.
fn alice_blocks(r: &mut Router, jid: &str) -> Vec<Action> {
    alice_iq(
        r,
        "set",
        &format!("<block xmlns='urn:xmpp:blocking'><item jid='{jid}'/></block>"),
    )
}

#[test]
fn a_blocked_contact_approving_an_old_request_or_asking_shows_the_blocker_nothing() {
    let mut r = router();
    bound(&mut r, 1, 10, "alice@x", "phone");
    bound(&mut r, 2, 20, "bob@x", "phone");
    for (node, sid, full) in [(1, 10, "alice@x/phone"), (2, 20, "bob@x/phone")] {
        stanza(
            &mut r,
            node,
            sid,
            header(Kind::Presence, full, None, None),
            "<presence/>",
        );
    }
    // alice asked bob before she blocked him
    stanza(
        &mut r,
        1,
        10,
        header(
            Kind::Presence,
            "alice@x/phone",
            Some("bob@x"),
            Some("subscribe"),
        ),
        "<presence type='subscribe'/>",
    );
    alice_blocks(&mut r, "bob@x");
    for ptype in ["subscribed", "subscribe"] {
        let acts = stanza(
            &mut r,
            2,
            20,
            header(Kind::Presence, "bob@x/phone", Some("alice@x"), Some(ptype)),
            &format!("<presence type='{ptype}'/>"),
        );
        assert!(to(&acts, 1, 10).is_empty(), "{ptype}: {acts:?}");
    }
}

#[test]
fn a_request_a_blocked_user_left_while_the_user_was_offline_is_not_shown_at_login() {
    let mut r = router();
    bound(&mut r, 2, 20, "bob@x", "phone");
    // bob asks alice, who has no session: kept as a request waiting for her
    stanza(
        &mut r,
        2,
        20,
        header(
            Kind::Presence,
            "bob@x/phone",
            Some("alice@x"),
            Some("subscribe"),
        ),
        "<presence type='subscribe'/>",
    );
    bound(&mut r, 1, 10, "alice@x", "phone");
    alice_blocks(&mut r, "bob@x");
    let online = stanza(
        &mut r,
        1,
        10,
        header(Kind::Presence, "alice@x/phone", None, None),
        "<presence/>",
    );
    assert!(
        !to(&online, 1, 10)
            .iter()
            .any(|p| p.contains("type=\"subscribe\"")),
        "{online:?}"
    );
}

#[test]
fn unblocking_sends_no_presence_where_a_domain_item_or_the_contact_still_blocks() {
    let mut r = router();
    friends(&mut r);
    alice_blocks(&mut r, "bob@x");
    alice_blocks(&mut r, "x");
    let unblocked = alice_iq(
        &mut r,
        "set",
        "<unblock xmlns='urn:xmpp:blocking'><item jid='bob@x'/></unblock>",
    );
    assert!(to(&unblocked, 2, 20).is_empty(), "{unblocked:?}");
    // bob blocks alice too; alice unblocks everyone: still nothing to bob
    bob_blocks_alice(&mut r);
    let all = alice_iq(&mut r, "set", "<unblock xmlns='urn:xmpp:blocking'/>");
    assert!(
        !to(&all, 2, 20).iter().any(|p| p.contains("<presence")),
        "{all:?}"
    );
}

#[test]
fn a_full_jid_item_stops_presence_with_that_resource_only_and_the_blocker_sees_it_go() {
    let mut r = router();
    friends(&mut r);
    let desk = bound(&mut r, 2, 22, "bob@x", "desk");
    stanza(
        &mut r,
        2,
        22,
        header(Kind::Presence, &desk, None, None),
        "<presence/>",
    );
    let blocked = alice_blocks(&mut r, "bob@x/desk");
    // bob/desk sees alice go; bob/phone does not
    assert!(
        to(&blocked, 2, 22)
            .iter()
            .any(|p| p.contains("type=\"unavailable\"")),
        "{blocked:?}"
    );
    assert!(
        !to(&blocked, 2, 20)
            .iter()
            .any(|p| p.contains("type=\"unavailable\"")),
        "{blocked:?}"
    );
    // alice sees bob/desk go, and only bob/desk
    assert!(
        to(&blocked, 1, 10)
            .iter()
            .any(|p| p.contains("from=\"bob@x/desk\"") && p.contains("type=\"unavailable\"")),
        "{blocked:?}"
    );
    assert!(
        !to(&blocked, 1, 10)
            .iter()
            .any(|p| p.contains("from=\"bob@x/phone\"")),
        "{blocked:?}"
    );
    let away = stanza(
        &mut r,
        1,
        10,
        header(Kind::Presence, "alice@x/phone", None, None),
        "<presence><show>away</show></presence>",
    );
    assert!(to(&away, 2, 22).is_empty(), "{away:?}");
    assert!(!to(&away, 2, 20).is_empty(), "{away:?}");
    let from_desk = stanza(
        &mut r,
        2,
        22,
        header(Kind::Presence, &desk, None, None),
        "<presence><show>dnd</show></presence>",
    );
    assert!(to(&from_desk, 1, 10).is_empty(), "{from_desk:?}");
}

#[test]
fn blocking_the_own_domain_leaves_the_users_own_sessions_alone() {
    let mut r = router();
    friends(&mut r);
    bound(&mut r, 1, 11, "alice@x", "desk");
    alice_blocks(&mut r, "x");
    let to_self = stanza(
        &mut r,
        1,
        10,
        header(
            Kind::Message,
            "alice@x/phone",
            Some("alice@x/desk"),
            Some("chat"),
        ),
        "<message type='chat'><body>note</body></message>",
    );
    assert_eq!(delivered_to(&to_self), vec![(1, 11)], "{to_self:?}");
    let to_bob = stanza(
        &mut r,
        1,
        10,
        header(Kind::Message, "alice@x/phone", Some("bob@x"), Some("chat")),
        "<message type='chat'><body>hi</body></message>",
    );
    assert!(to(&to_bob, 2, 20).is_empty(), "{to_bob:?}");
}

#[test]
fn a_blocker_can_still_cancel_a_blocked_contacts_subscription() {
    let mut r = router();
    friends(&mut r);
    alice_blocks(&mut r, "bob@x");
    let acts = stanza(
        &mut r,
        1,
        10,
        header(
            Kind::Presence,
            "alice@x/phone",
            Some("bob@x"),
            Some("unsubscribed"),
        ),
        "<presence type='unsubscribed'/>",
    );
    let writes = roster_writes(&acts);
    assert!(
        writes
            .iter()
            .any(|w| matches!(w, RosterWrite::Put { user, item, .. }
            if user == "alice" && !item.subscription.from())),
        "{acts:?}"
    );
}

#[test]
fn a_message_stored_before_the_block_is_removed_instead_of_delivered() {
    let mut r = router();
    bound(&mut r, 1, 10, "alice@x", "phone");
    alice_blocks(&mut r, "bob@x");
    stanza(
        &mut r,
        1,
        10,
        header(Kind::Presence, "alice@x/phone", None, None),
        "<presence/>",
    );
    let acts = r.run(Input::Offline {
        user: "alice".into(),
        to: (1, 10),
        messages: vec![
            (
                1,
                Bytes::from_static(
                    b"<message from='bob@x/pc' type='chat'><body>old</body></message>",
                ),
            ),
            (
                2,
                Bytes::from_static(
                    b"<message from='carol@x/pc' type='chat'><body>hi</body></message>",
                ),
            ),
        ],
    });
    let got = payloads(&acts);
    assert!(matches!(&got[..], [p] if p.contains("carol")), "{acts:?}");
    // (no SM here: carol's is handed to the link, bob's removed unseen)
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::RemoveOffline { upto: 2, .. })),
        "{acts:?}"
    );
}

#[test]
fn a_block_list_over_its_byte_bound_is_refused_whole() {
    let mut r = router();
    friends(&mut r);
    let long = "a".repeat(1000);
    let items: String = (0..70)
        .map(|i| format!("<item jid='{long}{i}@x'/>"))
        .collect();
    let acts = alice_iq(
        &mut r,
        "set",
        &format!("<block xmlns='urn:xmpp:blocking'>{items}</block>"),
    );
    assert!(roster_writes(&acts).is_empty(), "{acts:?}");
    assert!(
        to(&acts, 1, 10)
            .iter()
            .any(|p| p.contains("resource-constraint")),
        "{acts:?}"
    );
}

#[test]
fn a_blocked_contacts_cancellation_reveals_none_of_the_blockers_sessions() {
    let mut r = router();
    friends(&mut r);
    alice_blocks(&mut r, "bob@x");
    // alice comes online on a new device after the block
    bound(&mut r, 1, 11, "alice@x", "laptop");
    stanza(
        &mut r,
        1,
        11,
        header(Kind::Presence, "alice@x/laptop", None, None),
        "<presence/>",
    );
    let cancelled = stanza(
        &mut r,
        2,
        20,
        header(
            Kind::Presence,
            "bob@x/phone",
            Some("alice@x"),
            Some("unsubscribe"),
        ),
        "<presence type='unsubscribe'/>",
    );
    assert!(
        !to(&cancelled, 2, 20).iter().any(|p| p.contains("alice@x/")),
        "{cancelled:?}"
    );
}

#[test]
fn a_block_sends_its_unavailable_to_no_session_that_blocks_the_blocker() {
    let mut r = router();
    friends(&mut r);
    // bob blocks alice first; then alice blocks bob
    bob_blocks_alice(&mut r);
    let blocked = alice_blocks(&mut r, "bob@x");
    assert!(!has_presence(&blocked, 2, 20), "{blocked:?}");
    assert!(!has_presence(&blocked, 1, 10), "{blocked:?}");
}

#[test]
fn blocking_one_resource_of_a_contact_who_blocks_the_user_sends_it_nothing() {
    let mut r = router();
    friends(&mut r);
    bob_blocks_alice(&mut r);
    let blocked = alice_blocks(&mut r, "bob@x/phone");
    assert!(!has_presence(&blocked, 2, 20), "{blocked:?}");
    // and an account has no disco nodes
    let node = stanza(
        &mut r,
        1,
        10,
        header(Kind::Iq, "alice@x/phone", Some("alice@x"), Some("get")),
        "<iq type='get' id='n'><query xmlns='http://jabber.org/protocol/disco#info' node='urn:xmpp:omemo:2:bundles'/></iq>",
    );
    assert!(
        to(&node, 1, 10)
            .iter()
            .any(|p| p.contains("item-not-found")),
        "{node:?}"
    );
}
