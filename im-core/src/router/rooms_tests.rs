//! Group chat in the router: a room's stanza leaves as one `DeliverMany`
//! per CM, an SM session's ledger keeps its own addressed copy (replayed
//! on resumption), persistent rooms' messages are archived before they
//! are acknowledged, and a session's end takes it out of its rooms.

use cm_protocol::{Frame, Kind};
use xmpp_stream::element::Element;
use xmpp_stream::ns;

use super::test_support::*;
use super::{Action, Input, Router};
use crate::muc::MucService;

const ROOM: &str = "lounge@conference.x";

fn muc_router() -> Router {
    router().with_muc(MucService::new("conference.x", 0, [3; 32]))
}

/// Runs a stanza and answers room loads (no stored room).
fn room_stanza(
    r: &mut Router,
    node: u32,
    sid: u64,
    h: cm_protocol::RouteHeader,
    p: &str,
) -> Vec<Action> {
    let mut acts = stanza(r, node, sid, h, p);
    while let Some(i) = acts
        .iter()
        .position(|a| matches!(a, Action::LoadRoom { .. }))
    {
        let Action::LoadRoom { room } = acts.remove(i) else {
            unreachable!()
        };
        acts.extend(r.run(Input::RoomLoaded {
            room,
            record: None,
            history: Vec::new(),
            failed: false,
        }));
    }
    acts
}

fn join(r: &mut Router, node: u32, sid: u64, full: &str, nick: &str) -> Vec<Action> {
    room_stanza(
        r,
        node,
        sid,
        header(Kind::Presence, full, Some(&format!("{ROOM}/{nick}")), None),
        "<presence><x xmlns='http://jabber.org/protocol/muc'/></presence>",
    )
}

/// alice (1, 10; SM on) owns an open room that bob (1, 11) and carol
/// (2, 20) joined; returns alice's SM id.
fn room_of_three(r: &mut Router) -> String {
    bound(r, 1, 10, "alice@x", "phone");
    let acts = sm_enable(r, 1, 10, 60);
    let id = acts
        .iter()
        .find_map(|a| match a {
            Action::Send {
                frame: Frame::SmEnabled { id, .. },
                ..
            } => Some(id.clone()),
            _ => None,
        })
        .expect("enabled");
    bound(r, 1, 11, "bob@x", "pc");
    bound(r, 2, 20, "carol@x", "tab");
    join(r, 1, 10, "alice@x/phone", "alice");
    room_stanza(
        r,
        1,
        10,
        header(Kind::Iq, "alice@x/phone", Some(ROOM), Some("set")),
        "<iq type='set' id='c'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>",
    );
    join(r, 1, 11, "bob@x/pc", "bob");
    join(r, 2, 20, "carol@x/tab", "carol");
    id
}

fn fanouts(acts: &[Action]) -> Vec<(u32, Vec<u64>, String)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Send {
                node,
                frame: Frame::DeliverMany { sids, payload },
            } => Some((
                *node,
                sids.clone(),
                String::from_utf8_lossy(payload).into_owned(),
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn a_room_message_is_one_deliver_many_per_cm_without_to() {
    let mut r = muc_router();
    let _ = room_of_three(&mut r);
    let acts = room_stanza(
        &mut r,
        1,
        11,
        header(Kind::Message, "bob@x/pc", Some(ROOM), Some("groupchat")),
        "<message type='groupchat' id='g1'><body>hello room</body></message>",
    );
    let mut fan = fanouts(&acts);
    fan.sort();
    assert_eq!(fan.len(), 2, "{acts:?}");
    let mut node1 = fan[0].1.clone();
    node1.sort();
    assert_eq!((fan[0].0, node1), (1, vec![10, 11]));
    assert_eq!((fan[1].0, fan[1].1.clone()), (2, vec![20]));
    let m = Element::parse(fan[0].2.as_bytes(), ns::CLIENT).unwrap();
    assert_eq!(m.attr("to"), None);
    assert_eq!(m.attr("from"), Some("lounge@conference.x/bob"));
    // and no copy of it as a frame of its own
    assert!(!payloads(&acts).iter().any(|p| p.contains("hello room")));
    // a temporary room archives nothing
    assert!(!acts.iter().any(|a| matches!(a, Action::Archive { .. })));
}

#[test]
fn an_sm_sessions_ledger_keeps_an_addressed_copy_that_a_resumption_replays() {
    let mut r = muc_router();
    let id = room_of_three(&mut r);
    // alice's connection drops; the room goes on
    end_session(&mut r, 1, 10, "alice@x/phone", false);
    let acts = room_stanza(
        &mut r,
        1,
        11,
        header(Kind::Message, "bob@x/pc", Some(ROOM), Some("groupchat")),
        "<message type='groupchat' id='g2'><body>while you were away</body></message>",
    );
    // held for alice, sent to bob and carol
    let sent: Vec<u64> = fanouts(&acts).into_iter().flat_map(|f| f.1).collect();
    assert!(!sent.contains(&10), "{sent:?}");
    let acts = frame(
        &mut r,
        2,
        Frame::Resume {
            sid: 21,
            user: "alice@x".into(),
            previd: id,
            h: 0,
        },
    );
    let replay: Vec<Element> = payloads(&acts)
        .iter()
        .filter_map(|p| Element::parse(p.as_bytes(), ns::CLIENT).ok())
        .filter(|e| e.child("body", ns::CLIENT).is_some())
        .collect();
    let last = replay.last().expect("replayed");
    assert_eq!(
        last.child("body", ns::CLIENT).unwrap().text(),
        "while you were away"
    );
    assert_eq!(last.attr("to"), Some("alice@x/phone"));
}

#[test]
fn a_sessions_end_takes_it_out_of_its_rooms() {
    let mut r = muc_router();
    let _ = room_of_three(&mut r);
    let acts = end_session(&mut r, 2, 20, "carol@x/tab", true);
    // (alice, a moderator, is shown carol's jid; bob is not)
    let gone: Vec<_> = fanouts(&acts)
        .into_iter()
        .filter(|f| f.2.contains("unavailable") && f.2.contains("lounge@conference.x/carol"))
        .collect();
    let mut to: Vec<u64> = gone.iter().flat_map(|f| f.1.clone()).collect();
    to.sort();
    assert_eq!(to, vec![10, 11]);
    let with_jid: Vec<u64> = gone
        .iter()
        .filter(|f| f.2.contains("carol@x/tab"))
        .flat_map(|f| f.1.clone())
        .collect();
    assert_eq!(with_jid, vec![10]);
    // carol is no occupant any more: a self-ping from a new session of hers fails
    bound(&mut r, 2, 22, "carol@x", "tab");
    let acts = room_stanza(
        &mut r,
        2,
        22,
        header(
            Kind::Iq,
            "carol@x/tab",
            Some(&format!("{ROOM}/carol")),
            Some("get"),
        ),
        "<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>",
    );
    assert!(payloads(&acts)[0].contains("not-acceptable"), "{acts:?}");
}

#[test]
fn a_persistent_rooms_message_waits_for_its_archive_before_the_ack() {
    let mut r = muc_router();
    let _ = room_of_three(&mut r);
    let acts = room_stanza(
        &mut r,
        1,
        10,
        header(Kind::Iq, "alice@x/phone", Some(ROOM), Some("set")),
        "<iq type='set' id='c2'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_persistentroom'><value>1</value></field></x></query></iq>",
    );
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::SaveRoom { room, .. } if room == ROOM))
    );
    // alice (SM) says something and asks for an acknowledgement
    let acts = room_stanza(
        &mut r,
        1,
        10,
        header(
            Kind::Message,
            "alice@x/phone",
            Some(ROOM),
            Some("groupchat"),
        ),
        "<message type='groupchat' id='g3'><body>kept</body></message>",
    );
    let Some(Action::Archive {
        entries, origin, ..
    }) = acts
        .iter()
        .find(|a| matches!(a, Action::Archive { .. }))
        .cloned()
    else {
        panic!("archived: {acts:?}")
    };
    assert_eq!(entries[0].user, ROOM);
    assert_eq!(entries[0].peer, "lounge@conference.x/alice");
    let origin = origin.expect("the acknowledgement waits");
    let acts = frame(&mut r, 1, Frame::AckRequest { sid: 10 });
    assert!(
        !acts.iter().any(
            |a| matches!(a, Action::Send { frame: Frame::Handled { h, .. }, .. } if *h >= origin.1)
        ),
        "{acts:?}"
    );
    let acts = r.run(Input::Stored { origin });
    let acts = [acts, frame(&mut r, 1, Frame::AckRequest { sid: 10 })].concat();
    assert!(
        acts.iter().any(
            |a| matches!(a, Action::Send { frame: Frame::Handled { h, .. }, .. } if *h >= origin.1)
        ),
        "{acts:?}"
    );
}

#[test]
fn the_server_lists_the_group_chat_service() {
    let mut r = muc_router();
    bound(&mut r, 1, 10, "alice@x", "phone");
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Iq, "alice@x/phone", Some("x"), Some("get")),
        "<iq type='get' id='d'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
    );
    assert!(payloads(&acts)[0].contains("conference.x"), "{acts:?}");
}

#[test]
fn a_message_that_waited_for_its_room_to_load_is_acknowledged_only_once_archived() {
    let mut r = muc_router();
    bound(&mut r, 1, 10, "alice@x", "phone");
    sm_enable(&mut r, 1, 10, 60);
    // a stored persistent room, of which alice is a member; not loaded yet
    let record = crate::muc::room::RoomRecord {
        config: crate::muc::room::RoomConfig {
            persistent: true,
            ..Default::default()
        },
        affiliations: [("alice@x".to_owned(), crate::muc::room::Affiliation::Owner)].into(),
        subject: Default::default(),
    };
    let record = bytes::Bytes::from(serde_json::to_vec(&record).unwrap());
    let load = |r: &mut Router, acts: Vec<Action>| -> Vec<Action> {
        let mut out = Vec::new();
        for a in acts {
            match a {
                Action::LoadRoom { room } => out.extend(r.run(Input::RoomLoaded {
                    room,
                    record: Some(record.clone()),
                    history: Vec::new(),
                    failed: false,
                })),
                a => out.push(a),
            }
        }
        out
    };
    let acts = stanza(
        &mut r,
        1,
        10,
        header(
            Kind::Presence,
            "alice@x/phone",
            Some(&format!("{ROOM}/alice")),
            None,
        ),
        "<presence><x xmlns='http://jabber.org/protocol/muc'/></presence>",
    );
    load(&mut r, acts);
    // she leaves: the room leaves memory; her next message waits for a load
    stanza(
        &mut r,
        1,
        10,
        header(
            Kind::Presence,
            "alice@x/phone",
            Some(&format!("{ROOM}/alice")),
            Some("unavailable"),
        ),
        "<presence type='unavailable'/>",
    );
    assert_eq!(r.rooms_open(), 0);
    let acts = stanza(
        &mut r,
        1,
        10,
        header(
            Kind::Message,
            "alice@x/phone",
            Some(ROOM),
            Some("groupchat"),
        ),
        "<message type='groupchat' id='w1'><body>to an empty room</body></message>",
    );
    assert!(acts.iter().any(|a| matches!(a, Action::LoadRoom { .. })));
    let handled = |acts: &[Action]| {
        acts.iter()
            .filter_map(|a| match a {
                Action::Send {
                    frame: Frame::Handled { h, .. },
                    ..
                } => Some(*h),
                _ => None,
            })
            .max()
    };
    // while it loads, an ack request is not answered past it
    let before = handled(&frame(&mut r, 1, Frame::AckRequest { sid: 10 }));
    let acts = load(&mut r, acts);
    // alice is no occupant now: refused with an error, and only then acknowledged
    assert!(
        payloads(&acts).iter().any(|p| p.contains("not-acceptable")),
        "{acts:?}"
    );
    let after = handled(&[acts, frame(&mut r, 1, Frame::AckRequest { sid: 10 })].concat());
    assert!(after > before, "{before:?} {after:?}");
}

#[test]
fn an_invitation_to_another_domain_is_not_stored_for_a_local_namesake() {
    let mut r = muc_router();
    let _ = room_of_three(&mut r);
    let acts = room_stanza(
        &mut r,
        1,
        10,
        header(Kind::Message, "alice@x/phone", Some(ROOM), None),
        "<message><x xmlns='http://jabber.org/protocol/muc#user'><invite to='bob@elsewhere.example'/></x></message>",
    );
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Action::StoreOffline { .. })),
        "{acts:?}"
    );
    assert!(
        !payloads(&acts).iter().any(|p| p.contains("invite")),
        "{acts:?}"
    );
}

#[test]
fn a_session_replaced_by_a_new_bind_of_its_jid_leaves_its_rooms_quietly() {
    let mut r = muc_router();
    let _ = room_of_three(&mut r);
    // bob's client comes back on another CM and binds the same resource
    let acts = r.run(Input::Frame {
        node: 2,
        frame: Frame::Bind {
            sid: 21,
            user: "bob@x".into(),
            iq_id: "b2".into(),
            resource: Some("pc".into()),
            bind2: None,
        },
    });
    let gone: Vec<u64> = fanouts(&acts)
        .into_iter()
        .filter(|f| f.2.contains("unavailable") && f.2.contains("lounge@conference.x/bob"))
        .flat_map(|f| f.1)
        .collect();
    assert!(gone.contains(&10) && gone.contains(&20), "{acts:?}");
    // the new session, which joined nothing, is told nothing of the room
    assert!(
        !deliveries(&acts)
            .iter()
            .any(|(addr, p)| *addr == (2, 21) && p.contains("conference")),
        "{acts:?}"
    );
    assert!(!fanouts(&acts).iter().any(|f| f.0 == 2 && f.1.contains(&21)));
}
