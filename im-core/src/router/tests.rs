//! The router's unit tests: events in, actions out.

use std::time::{Duration, Instant};

use bytes::Bytes;
use cm_protocol::{Frame, Kind, SessionId, SmSnapshot};
use xmpp_stream::element::Element;
use xmpp_stream::{StanzaCondition, ns};

use super::test_support::*;
use super::{Action, Bounce, Input, RosterWrite, Router};
use crate::routing::NodeId;
use crate::storage::{Roster, RosterItem};

#[test]
fn message_to_full_and_bare_jid() {
    let mut r = router();
    let a = bound(&mut r, 1, 10, "alice@x", "phone");
    bound(&mut r, 3, 30, "carol@x", "pc");
    stanza(
        &mut r,
        3,
        30,
        header(Kind::Presence, "carol@x/pc", None, None),
        "<presence/>",
    );
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Message, &a, Some("carol@x/pc"), Some("chat")),
        "<message/>",
    );
    assert_eq!(delivered_to(&acts), vec![(3, 30)]);
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Message, &a, Some("carol@x"), Some("chat")),
        "<message/>",
    );
    assert_eq!(delivered_to(&acts), vec![(3, 30)]);
    // an offline full JID falls back to the bare JID
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Message, &a, Some("carol@x/gone"), Some("chat")),
        "<message/>",
    );
    assert_eq!(delivered_to(&acts), vec![(3, 30)]);
}

#[test]
fn offline_when_no_available_resource_and_flush_on_presence() {
    let mut r = router();
    let a = bound(&mut r, 1, 10, "alice@x", "phone");
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Message, &a, Some("bob@x"), Some("chat")),
        "<message/>",
    );
    assert!(matches!(&acts[..], [Action::StoreOffline { user, .. }] if user == "bob"));
    // failure to store (unknown user) answers the sender
    let Action::StoreOffline { bounce, .. } = acts[0].clone() else {
        unreachable!()
    };
    let acts = r.run(Input::StoreFailed {
        bounce,
        payload: Bytes::from_static(b"<message/>"),
        condition: StanzaCondition::ServiceUnavailable,
        origin: None,
        live: None,
    });
    assert_eq!(delivered_to(&acts), vec![(1, 10)]);
    // bob comes online: offline messages are flushed on initial presence
    bound(&mut r, 2, 20, "bob@x", "r");
    let acts = stanza(
        &mut r,
        2,
        20,
        header(Kind::Presence, "bob@x/r", None, None),
        "<presence/>",
    );
    assert!(acts.contains(&Action::FlushOffline {
        user: "bob".into(),
        to: (2, 20)
    }));
    // headline and error messages are never stored
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Message, &a, Some("dave@x"), Some("headline")),
        "<message/>",
    );
    assert!(acts.is_empty());
}

#[test]
fn conflict_kicks_the_old_session() {
    let mut r = router();
    bound(&mut r, 1, 10, "alice@x", "phone");
    let acts = r.run(Input::Frame {
        node: 2,
        frame: Frame::Bind {
            sid: 5,
            user: "alice@x".into(),
            iq_id: "b".into(),
            resource: Some("phone".into()),
            bind2: None,
        },
    });
    assert!(acts.contains(&Action::Send {
        node: 1,
        frame: Frame::Kick {
            sid: 10,
            condition: "conflict".into()
        }
    }));
    assert_eq!(r.table().full("alice@x", "phone").unwrap().node, 2);
}

#[test]
fn bind_generates_resources_and_refuses_bad_ones() {
    let mut r = router();
    let bind = |r: &mut Router, sid, resource: Option<&str>| {
        r.run(Input::Frame {
            node: 1,
            frame: Frame::Bind {
                sid,
                user: "a@x".into(),
                iq_id: "b".into(),
                resource: resource.map(Into::into),
                bind2: None,
            },
        })
    };
    let acts = bind(&mut r, 2, None);
    assert!(
        matches!(&acts[..], [Action::Send { frame: Frame::BindResult { result: Ok(j), .. }, .. }] if j.starts_with("a@x/ll-"))
    );
    let bad = "x".repeat(2000);
    let acts = bind(&mut r, 3, Some(&bad));
    assert!(
        matches!(&acts[..], [Action::Send { frame: Frame::BindResult { result: Err(e), .. }, .. }] if e == "bad-request")
    );
    // a retry after an error can succeed
    let acts = bind(&mut r, 3, Some("ok"));
    assert!(matches!(
        &acts[..],
        [Action::Send {
            frame: Frame::BindResult { result: Ok(_), .. },
            ..
        }]
    ));
}

#[test]
fn a_bounce_removes_the_session_and_goes_elsewhere_without_looping() {
    let mut r = router();
    let a = bound(&mut r, 1, 10, "alice@x", "phone");
    bound(&mut r, 2, 20, "bob@x", "one");
    bound(&mut r, 2, 21, "bob@x", "two");
    stanza(
        &mut r,
        2,
        20,
        header(Kind::Presence, "bob@x/one", None, None),
        "<presence/>",
    );
    stanza(
        &mut r,
        2,
        21,
        header(Kind::Presence, "bob@x/two", None, None),
        "<presence/>",
    );
    let _ = a;
    let payload =
        Bytes::from_static(b"<message to='bob@x/one' type='chat'><body>hi</body></message>");
    let acts = r.run(Input::Frame {
        node: 2,
        frame: Frame::Bounce {
            sid: 20,
            to: "bob@x/one".into(),
            payload: payload.clone(),
        },
    });
    assert!(delivered_to(&acts).contains(&(2, 21)));
    assert!(!delivered_to(&acts).contains(&(2, 20)));
    let acts = r.run(Input::Frame {
        node: 2,
        frame: Frame::Bounce {
            sid: 21,
            to: "bob@x/two".into(),
            payload,
        },
    });
    assert!(delivered_to(&acts).is_empty());
    assert!(matches!(acts.last(), Some(Action::StoreOffline { user, .. }) if user == "bob"));
}

#[test]
fn server_iqs_and_errors() {
    let mut r = router();
    let a = bound(&mut r, 1, 10, "alice@x", "phone");
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Iq, &a, Some("x"), Some("get")),
        "<iq type='get' id='i1'><ping xmlns='urn:xmpp:ping'/></iq>",
    );
    let Action::Send {
        frame: Frame::Deliver { payload, .. },
        ..
    } = &acts[0]
    else {
        panic!()
    };
    let el = Element::parse(payload, ns::CLIENT).unwrap();
    assert_eq!(el.attr("type"), Some("result"));
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Iq, &a, None, Some("get")),
        "<iq type='get' id='i1'><query xmlns='urn:unknown'/></iq>",
    );
    let Action::Send {
        frame: Frame::Deliver { payload, .. },
        ..
    } = &acts[0]
    else {
        panic!()
    };
    let el = Element::parse(payload, ns::CLIENT).unwrap();
    assert!(
        el.child("error", ns::CLIENT)
            .unwrap()
            .child("service-unavailable", ns::STANZA_ERRORS)
            .is_some()
    );
    // remote domains are not served
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Message, &a, Some("bob@elsewhere"), Some("chat")),
        "<message/>",
    );
    let Action::Send {
        frame: Frame::Deliver { payload, .. },
        ..
    } = &acts[0]
    else {
        panic!()
    };
    assert!(
        std::str::from_utf8(payload)
            .unwrap()
            .contains("remote-server-not-found")
    );
}

#[test]
fn node_gone_drops_routes_and_tells_other_resources() {
    let mut r = router();
    bound(&mut r, 1, 10, "alice@x", "phone");
    bound(&mut r, 2, 20, "alice@x", "desk");
    stanza(
        &mut r,
        1,
        10,
        header(Kind::Presence, "alice@x/phone", None, None),
        "<presence/>",
    );
    stanza(
        &mut r,
        2,
        20,
        header(Kind::Presence, "alice@x/desk", None, None),
        "<presence/>",
    );
    let acts = r.run(Input::NodeGone { node: 1 });
    assert_eq!(delivered_to(&acts), vec![(2, 20)]);
    assert_eq!(r.table().len(), 1);
}

#[test]
fn a_detached_session_keeps_its_messages_and_resumes_on_another_cm() {
    let mut r = router();
    let id = sm_pair(&mut r);
    for b in ["m1", "m2", "m3"] {
        assert_eq!(delivered_to(&chat(&mut r, b)), vec![(1, 10)]);
    }
    frame(&mut r, 1, Frame::Acked { sid: 10, h: 1 });
    // alice's CM dies: the session waits, the route stays
    let acts = r.run(Input::NodeGone { node: 1 });
    assert!(acts.is_empty(), "{acts:?}");
    assert_eq!(r.sm_counts(), (1, 1));
    assert!(delivered_to(&chat(&mut r, "m4")).is_empty());
    // someone else cannot use the id
    let acts = frame(
        &mut r,
        2,
        Frame::Resume {
            sid: 99,
            user: "mallory@x".into(),
            previd: id.clone(),
            h: 0,
        },
    );
    assert!(
        matches!(&acts[..], [Action::Send { frame: Frame::Resumed { result: Err(c), .. }, .. }] if c == "item-not-found")
    );
    // alice resumes on node 2, having received m1 and m2
    let acts = frame(
        &mut r,
        2,
        Frame::Resume {
            sid: 20,
            user: "alice@x".into(),
            previd: id,
            h: 2,
        },
    );
    // (the live rows it acknowledged go first)
    let [Action::RemoveOffline { rows, .. }, acts @ ..] = acts.as_slice() else {
        panic!("{acts:?}")
    };
    assert!(!rows.is_empty());
    let Action::Send {
        node: 2,
        frame: Frame::Resumed {
            result: Ok(res), ..
        },
    } = &acts[0]
    else {
        panic!("{acts:?}")
    };
    assert_eq!(res.jid, "alice@x/phone");
    let replay = payloads(acts);
    assert_eq!(replay.len(), 2);
    assert!(replay[0].contains("m3") && replay[1].contains("m4"));
    assert_eq!(r.sm_counts(), (1, 0));
    // new messages go to the new place
    assert_eq!(delivered_to(&chat(&mut r, "m5")), vec![(2, 20)]);
}

#[test]
fn an_expired_session_leaves_its_unacknowledged_messages_in_offline_storage() {
    let mut r = router();
    sm_pair(&mut r);
    chat(&mut r, "m1");
    chat(&mut r, "m2");
    frame(&mut r, 1, Frame::Acked { sid: 10, h: 1 });
    frame(
        &mut r,
        1,
        Frame::SessionEnd {
            sid: 10,
            jid: Some("alice@x/phone".into()),
            clean: false,
        },
    );
    assert!(r.timeout(t0() + Duration::from_secs(59)).is_empty());
    // m2 is stored already (its live row): not stored again, nor removed
    let acts = r.timeout(t0() + Duration::from_secs(61));
    assert!(acts.is_empty(), "{acts:?}");
    assert_eq!(r.table().len(), 1);
    assert_eq!(r.sm_counts(), (0, 0));
}

#[test]
fn acks_wait_for_offline_stores_and_too_high_is_kicked() {
    let mut r = router();
    bound(&mut r, 1, 10, "alice@x", "phone");
    frame(
        &mut r,
        1,
        Frame::SmEnable {
            sid: 10,
            resume: false,
            max: 0,
        },
    );
    // to an offline user: stored, and the ack waits for the store
    let acts = stanza(
        &mut r,
        1,
        10,
        header(
            Kind::Message,
            "alice@x/phone",
            Some("carol@x"),
            Some("chat"),
        ),
        // no body, so no archive write: only the store holds the ack
        "<message type='chat' to='carol@x'><thread>hi</thread></message>",
    );
    let [
        Action::StoreOffline {
            origin: Some(origin),
            ..
        },
    ] = &acts[..]
    else {
        panic!("{acts:?}")
    };
    let origin = *origin;
    let acts = frame(&mut r, 1, Frame::AckRequest { sid: 10 });
    assert!(matches!(
        &acts[..],
        [Action::Send {
            frame: Frame::Handled { h: 0, .. },
            ..
        }]
    ));
    let acts = r.run(Input::Stored { origin });
    assert!(matches!(
        &acts[..],
        [Action::Send {
            frame: Frame::Handled { h: 1, .. },
            ..
        }]
    ));
    let acts = frame(&mut r, 1, Frame::Acked { sid: 10, h: 5 });
    assert!(
        matches!(&acts[..], [Action::Send { frame: Frame::Kick { condition, .. }, .. }] if condition == "undefined-condition")
    );
}

#[test]
fn stanzas_from_a_stream_the_session_left_are_dropped() {
    let mut r = router();
    let id = sm_pair(&mut r);
    frame(
        &mut r,
        2,
        Frame::Resume {
            sid: 20,
            user: "alice@x".into(),
            previd: id,
            h: 0,
        },
    );
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Message, "alice@x/phone", Some("bob@x"), Some("chat")),
        "<message type='chat' to='bob@x'><body>late</body></message>",
    );
    assert!(acts.is_empty(), "{acts:?}");
}

#[test]
fn offline_messages_go_through_the_ledger_and_a_clean_close_keeps_nothing() {
    let mut r = router();
    bound(&mut r, 1, 10, "bob@x", "laptop");
    frame(
        &mut r,
        1,
        Frame::SmEnable {
            sid: 10,
            resume: true,
            max: 0,
        },
    );
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Presence, "bob@x/laptop", None, None),
        "<presence/>",
    );
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::FlushOffline { .. }))
    );
    let messages = (1..=5)
        .map(|i| {
            (
                i,
                Bytes::from(format!(
                    "<message type='chat' id='o{i}'><body>{i}</body></message>"
                )),
            )
        })
        .collect();
    let acts = r.run(Input::Offline {
        user: "bob".into(),
        to: (1, 10),
        messages,
    });
    assert_eq!(payloads(&acts).len(), 5);
    let acts = frame(&mut r, 1, Frame::Acked { sid: 10, h: 5 });
    assert_eq!(
        acts,
        vec![Action::RemoveOffline {
            user: "bob".into(),
            upto: 5,
            rows: vec![],
        }]
    );
    let acts = frame(
        &mut r,
        1,
        Frame::SessionEnd {
            sid: 10,
            jid: Some("bob@x/laptop".into()),
            clean: true,
        },
    );
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Action::StoreOffline { .. })),
        "{acts:?}"
    );
    assert_eq!(r.table().len(), 0);
}

#[test]
fn a_cm_back_after_its_sessions_detached_has_them_resume() {
    let mut r = router();
    let id = sm_pair(&mut r);
    r.run(Input::NodeGone { node: 1 });
    chat(&mut r, "while cut off");
    let announce = |sm| Frame::Announce {
        sid: 10,
        jid: "alice@x/phone".into(),
        available: true,
        priority: 0,
        sm,
    };
    let snapshot = SmSnapshot {
        id,
        handled: 0,
        sent: 0,
        client_acked: 0,
        next_seq: 0,
        max: 60,
        detached: false,
    };
    let acts = frame(&mut r, 1, announce(Some(snapshot)));
    assert!(
        matches!(&acts[..], [Action::Send { frame: Frame::Kick { condition, .. }, .. }] if condition == "connection-timeout"),
        "{acts:?}"
    );
}

#[test]
fn a_full_ledger_spills_to_storage_and_is_flushed_once_the_client_caught_up() {
    let mut r = router();
    sm_pair(&mut r);
    let max = super::sm_sessions::MAX_UNACKED;
    for i in 0..max {
        assert_eq!(delivered_to(&chat(&mut r, &format!("m{i}"))).len(), 1);
    }
    let acts = chat(&mut r, "spilled");
    assert!(
        matches!(&acts[..], [Action::StoreOffline { user, .. }] if user == "alice"),
        "{acts:?}"
    );
    // acknowledging a little is not enough (the live rows acknowledged
    // go); half is
    let acts = frame(&mut r, 1, Frame::Acked { sid: 10, h: 10 });
    assert!(
        matches!(&acts[..], [Action::RemoveOffline { rows, .. }] if rows.len() == 10),
        "{acts:?}"
    );
    let acts = frame(
        &mut r,
        1,
        Frame::Acked {
            sid: 10,
            h: (max / 2) as u32,
        },
    );
    assert!(
        matches!(&acts[..], [Action::RemoveOffline { .. }, Action::FlushOffline { user, to: (1, 10) }] if user == "alice"),
        "{acts:?}"
    );
}

#[test]
fn live_stanzas_wait_behind_the_login_flush_and_then_flow() {
    let mut r = router();
    let _ = sm_pair(&mut r);
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Presence, "alice@x/phone", None, None),
        "<presence/>",
    );
    assert!(acts.contains(&Action::FlushOffline {
        user: "alice".into(),
        to: (1, 10)
    }));
    // an IQ answer is not held back
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Iq, "alice@x/phone", Some("x"), Some("get")),
        "<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>",
    );
    assert_eq!(delivered_to(&acts), vec![(1, 10)]);
    // a message arriving during the flush is stored behind the stored ones
    let acts = chat(&mut r, "during");
    assert!(
        matches!(&acts[..], [Action::StoreOffline { .. }]),
        "{acts:?}"
    );
    let acts = r.run(Input::Offline {
        user: "alice".into(),
        to: (1, 10),
        messages: vec![(
            1,
            Bytes::from_static(b"<message type='chat'><body>old</body></message>"),
        )],
    });
    assert_eq!(payloads(&acts).len(), 1);
    // it flushes again for what was stored meanwhile
    assert!(acts.contains(&Action::FlushOffline {
        user: "alice".into(),
        to: (1, 10)
    }));
    let acts = r.run(Input::Offline {
        user: "alice".into(),
        to: (1, 10),
        messages: Vec::new(),
    });
    assert!(acts.is_empty(), "{acts:?}");
    // and live traffic flows again
    assert_eq!(delivered_to(&chat(&mut r, "after")), vec![(1, 10)]);
}

#[test]
fn late_bounces_of_an_ended_sm_session_are_not_routed_twice() {
    let mut r = router();
    sm_pair(&mut r);
    chat(&mut r, "m1");
    // a clean close: the unacknowledged m1 stays in offline storage (its
    // live row), not stored again
    let acts = frame(
        &mut r,
        1,
        Frame::SessionEnd {
            sid: 10,
            jid: Some("alice@x/phone".into()),
            clean: true,
        },
    );
    assert!(acts.is_empty(), "{acts:?}");
    // the CM bounces m1 from the closed session's queue: nothing more happens
    let acts = frame(
        &mut r,
        1,
        Frame::Bounce {
            sid: 10,
            to: "alice@x/phone".into(),
            payload: Bytes::from_static(
                b"<message type='chat' to='alice@x/phone'><body>m1</body></message>",
            ),
        },
    );
    assert!(acts.is_empty(), "{acts:?}");
}

#[test]
fn a_lost_pool_connection_detaches_its_sm_sessions_only() {
    let mut r = router();
    sm_pair(&mut r);
    // sid 10 rides connection 10 % 2 = 0; losing connection 1 changes nothing
    r.run(Input::LinkLost {
        node: 1,
        index: 1,
        pool_size: 2,
    });
    assert_eq!(r.sm_counts(), (1, 0));
    r.run(Input::LinkLost {
        node: 1,
        index: 0,
        pool_size: 2,
    });
    assert_eq!(r.sm_counts(), (1, 1));
    assert!(delivered_to(&chat(&mut r, "kept")).is_empty());
}

#[test]
fn frames_wait_in_order_for_a_roster_and_the_router_never_blocks() {
    let mut r = router();
    let bind = Frame::Bind {
        sid: 10,
        user: "alice@x".into(),
        iq_id: "b".into(),
        resource: Some("phone".into()),
        bind2: None,
    };
    // The bind waits for alice's roster; so does her next frame.
    let acts = r.step(Input::Frame {
        node: 1,
        frame: bind,
    });
    assert_eq!(
        acts,
        vec![Action::LoadRoster {
            user: "alice@x".into()
        }]
    );
    let ping = Frame::Stanza {
        sid: 10,
        header: header(Kind::Iq, "alice@x/phone", None, Some("get")),
        payload: Bytes::from_static(b"<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>"),
    };
    assert!(
        r.step(Input::Frame {
            node: 1,
            frame: ping
        })
        .is_empty()
    );
    // Another user's session is not held up meanwhile.
    assert_eq!(bound(&mut r, 2, 20, "bob@x", "pc"), "bob@x/pc");
    let roster = Roster {
        version: 7,
        items: vec![RosterItem {
            jid: "bob@x".into(),
            subscription: crate::storage::Subscription::Both,
            listed: true,
            ..Default::default()
        }],
        blocked: Vec::new(),
    };
    let acts = r.step(Input::RosterLoaded {
        user: "alice@x".into(),
        roster: Some(roster),
    });
    assert!(
        matches!(&acts[0], Action::Send { frame: Frame::BindResult { result: Ok(j), .. }, .. } if j == "alice@x/phone"),
        "{acts:?}"
    );
    assert_eq!(delivered_to(&acts[1..]), vec![(1, 10)]);
    // Her roster is kept while she is online: versioning answers empty.
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Iq, "alice@x/phone", None, Some("get")),
        "<iq type='get' id='r'><query xmlns='jabber:iq:roster' ver='7'/></iq>",
    );
    let d = deliveries(&acts);
    assert!(
        d[0].1.contains("type=\"result\"") && !d[0].1.contains("query"),
        "{d:?}"
    );
    // Presence reaches the subscribed contact, and she gets his at login.
    stanza(
        &mut r,
        2,
        20,
        header(Kind::Presence, "bob@x/pc", None, None),
        "<presence from='bob@x/pc'/>",
    );
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Presence, "alice@x/phone", None, None),
        "<presence from='alice@x/phone'/>",
    );
    let mut to: Vec<_> = deliveries(&acts)
        .into_iter()
        .map(|(a, p)| (a, p.contains("bob@x/pc")))
        .collect();
    to.sort();
    assert_eq!(to, vec![((1, 10), true), ((2, 20), false)], "{acts:?}");
}

#[test]
fn a_request_to_an_offline_user_is_kept_and_shown_at_their_login() {
    let mut r = router();
    bound(&mut r, 1, 10, "alice@x", "phone");
    let acts = stanza(
        &mut r,
        1,
        10,
        header(
            Kind::Presence,
            "alice@x/phone",
            Some("bob@x"),
            Some("subscribe"),
        ),
        "<presence to='bob@x' type='subscribe'/>",
    );
    let puts: Vec<RosterWrite> = roster_writes(&acts);
    let saved: Vec<(String, bool, bool)> = puts
        .iter()
        .filter_map(|w| match w {
            RosterWrite::Put { user, item, .. } => Some((user.clone(), item.ask, item.pending_in)),
            _ => None,
        })
        .collect();
    assert_eq!(
        saved,
        vec![("alice".into(), true, false), ("bob".into(), false, true)]
    );
    assert!(
        delivered_to(&acts).is_empty(),
        "bob has no session: {acts:?}"
    );
    // Bob logs in: his roster comes from storage with the request.
    let Some(RosterWrite::Put { item, version, .. }) = puts
        .iter()
        .find(|w| matches!(w, RosterWrite::Put { user, .. } if user == "bob"))
    else {
        panic!("{acts:?}")
    };
    let stored = Roster {
        version: *version,
        items: vec![item.clone()],
        blocked: Vec::new(),
    };
    let bind = Frame::Bind {
        sid: 20,
        user: "bob@x".into(),
        iq_id: "b".into(),
        resource: Some("pc".into()),
        bind2: None,
    };
    let acts = r.step(Input::Frame {
        node: 2,
        frame: bind,
    });
    assert_eq!(
        acts,
        vec![Action::LoadRoster {
            user: "bob@x".into()
        }]
    );
    r.step(Input::RosterLoaded {
        user: "bob@x".into(),
        roster: Some(stored),
    });
    // … and the request reaches him with his initial presence.
    let acts = stanza(
        &mut r,
        2,
        20,
        header(Kind::Presence, "bob@x/pc", None, None),
        "<presence/>",
    );
    let d = deliveries(&acts);
    assert!(
        d.iter().any(|(a, p)| *a == (2, 20)
            && p.contains("type=\"subscribe\"")
            && p.contains("from=\"alice@x\"")),
        "{d:?}"
    );
}

#[test]
fn chat_is_archived_before_the_ack_stamped_and_carbon_copied() {
    let mut r = router();
    bound(&mut r, 1, 10, "alice@x", "phone");
    bound(&mut r, 1, 11, "alice@x", "desk");
    bound(&mut r, 2, 20, "bob@x", "pc");
    for (sid, res) in [(10, "phone"), (11, "desk")] {
        stanza(
            &mut r,
            1,
            sid,
            header(Kind::Presence, &format!("alice@x/{res}"), None, None),
            "<presence/>",
        );
    }
    stanza(
        &mut r,
        2,
        20,
        header(Kind::Presence, "bob@x/pc", None, None),
        "<presence/>",
    );
    stanza(
        &mut r,
        1,
        11,
        header(Kind::Iq, "alice@x/desk", None, Some("set")),
        "<iq type='set' id='c'><enable xmlns='urn:xmpp:carbons:2'/></iq>",
    );
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Message, "alice@x/phone", Some("bob@x"), Some("chat")),
        "<message from='alice@x/phone' to='bob@x' type='chat'><body>hi</body><stanza-id xmlns='urn:xmpp:sid:0' id='forged' by='bob@x'/></message>",
    );
    let Some(Action::Archive { entries, .. }) =
        acts.iter().find(|a| matches!(a, Action::Archive { .. }))
    else {
        panic!("{acts:?}")
    };
    let owners: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e.user.as_str(), e.peer.as_str()))
        .collect();
    assert_eq!(owners, vec![("alice", "bob@x"), ("bob", "alice@x")]);
    let id = entries[0].id.clone();
    let d = deliveries(&acts);
    assert_eq!(d.len(), 2, "{d:?}");
    assert_eq!(d[0].0, (2, 20));
    assert!(
        d[0].1.contains(&format!("id=\"{id}\"")) && !d[0].1.contains("forged"),
        "{}",
        d[0].1
    );
    assert_eq!(d[1].0, (1, 11));
    assert!(
        d[1].1.contains("<sent xmlns=\"urn:xmpp:carbons:2\">"),
        "{}",
        d[1].1
    );
    // A private message is not copied.
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Message, "alice@x/phone", Some("bob@x"), Some("chat")),
        "<message to='bob@x' type='chat'><body>psst</body><private xmlns='urn:xmpp:carbons:2'/></message>",
    );
    assert_eq!(delivered_to(&acts), vec![(2, 20)]);
}

/// Ends alice's stream (node 1, sid 10) uncleanly at `now`: her SM session detaches.
fn drop_alice_at(r: &mut Router, now: Instant) -> Vec<Action> {
    r.run_at(
        Input::Frame {
            node: 1,
            frame: Frame::SessionEnd {
                sid: 10,
                jid: Some("alice@x/phone".into()),
                clean: false,
            },
        },
        now,
    )
}

#[test]
fn without_detached_sessions_there_is_no_deadline() {
    let mut r = router();
    assert_eq!(r.poll_timeout(), None);
    // attached SM sessions have none either
    sm_pair(&mut r);
    assert_eq!(r.poll_timeout(), None);
}

#[test]
fn a_detached_session_expires_exactly_at_its_deadline() {
    let mut r = router();
    sm_pair(&mut r); // alice: resumable for 60 s
    chat(&mut r, "m1");
    let detached_at = t0() + Duration::from_millis(5_250);
    drop_alice_at(&mut r, detached_at);
    let deadline = detached_at + Duration::from_secs(60);
    assert_eq!(r.poll_timeout(), Some(deadline));
    // not a nanosecond before
    assert!(r.timeout(deadline - Duration::from_nanos(1)).is_empty());
    assert_eq!(r.sm_counts(), (1, 1));
    assert_eq!(r.poll_timeout(), Some(deadline));
    // at the deadline itself: unacknowledged m1 stays in offline storage
    // (its live row), not stored a second time
    let acts = r.timeout(deadline);
    assert!(acts.is_empty(), "{acts:?}");
    assert_eq!(r.sm_counts(), (0, 0));
    assert_eq!(r.poll_timeout(), None);
    assert_eq!(r.stats().sm_expired, 1);
}

#[test]
fn poll_timeout_reports_the_earliest_deadline() {
    let mut r = router();
    sm_pair(&mut r); // alice: 60 s
    bound(&mut r, 2, 20, "carol@x", "tab");
    let acts = frame(
        &mut r,
        2,
        Frame::SmEnable {
            sid: 20,
            resume: true,
            max: 10,
        },
    );
    assert!(matches!(
        &acts[..],
        [Action::Send {
            frame: Frame::SmEnabled { max: 10, .. },
            ..
        }]
    ));
    drop_alice_at(&mut r, t0());
    let carol_at = t0() + Duration::from_secs(20);
    r.run_at(
        Input::Frame {
            node: 2,
            frame: Frame::SessionEnd {
                sid: 20,
                jid: Some("carol@x/tab".into()),
                clean: false,
            },
        },
        carol_at,
    );
    // carol detached later but expires first
    assert_eq!(r.poll_timeout(), Some(carol_at + Duration::from_secs(10)));
    r.timeout(carol_at + Duration::from_secs(10));
    assert_eq!(r.sm_counts(), (1, 1));
    assert_eq!(r.poll_timeout(), Some(t0() + Duration::from_secs(60)));
    // both at once when time jumps past both
    let mut r2 = router();
    sm_pair(&mut r2);
    drop_alice_at(&mut r2, t0());
    r2.timeout(t0() + Duration::from_secs(3600));
    assert_eq!(r2.sm_counts(), (0, 0));
}

#[test]
fn resuming_cancels_the_deadline_and_a_new_detach_sets_a_fresh_one() {
    let mut r = router();
    let id = sm_pair(&mut r);
    drop_alice_at(&mut r, t0());
    assert_eq!(r.poll_timeout(), Some(t0() + Duration::from_secs(60)));
    let resumed_at = t0() + Duration::from_secs(30);
    let acts = r.run_at(
        Input::Frame {
            node: 2,
            frame: Frame::Resume {
                sid: 20,
                user: "alice@x".into(),
                previd: id,
                h: 0,
            },
        },
        resumed_at,
    );
    assert!(
        matches!(
            &acts[0],
            Action::Send {
                frame: Frame::Resumed { result: Ok(_), .. },
                ..
            }
        ),
        "{acts:?}"
    );
    assert_eq!(r.poll_timeout(), None);
    // the old deadline passes: nothing expires
    assert!(r.timeout(t0() + Duration::from_secs(61)).is_empty());
    assert_eq!(r.sm_counts(), (1, 0));
    // detached again (its new CM is gone): the resumption time starts over
    let gone_at = t0() + Duration::from_secs(100);
    r.run_at(Input::NodeGone { node: 2 }, gone_at);
    assert_eq!(r.poll_timeout(), Some(gone_at + Duration::from_secs(60)));
}

#[test]
fn a_new_session_taking_a_detached_sessions_jid_removes_its_deadline() {
    let mut r = router();
    sm_pair(&mut r);
    chat(&mut r, "m1");
    drop_alice_at(&mut r, t0());
    assert_eq!(r.poll_timeout(), Some(t0() + Duration::from_secs(60)));
    // alice binds phone again on another CM instead of resuming: conflict
    let acts = r.run_at(
        Input::Frame {
            node: 2,
            frame: Frame::Bind {
                sid: 20,
                user: "alice@x".into(),
                iq_id: "b".into(),
                resource: Some("phone".into()),
                bind2: None,
            },
        },
        t0() + Duration::from_secs(10),
    );
    assert!(
        acts.iter().any(|a| matches!(a, Action::Send { node: 1, frame: Frame::Kick { sid: 10, condition } } if condition == "conflict")),
        "{acts:?}"
    );
    // what it never acknowledged is handed on at once (no session of
    // alice's is available: its live row stays stored, not stored twice)
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Action::StoreOffline { .. })),
        "{acts:?}"
    );
    assert_eq!(r.sm_counts(), (0, 0));
    assert_eq!(r.poll_timeout(), None);
    assert!(r.timeout(t0() + Duration::from_secs(60)).is_empty());
    assert_eq!(r.stats().sm_expired, 0);
}

#[test]
fn a_lost_pool_connection_starts_its_sm_sessions_deadlines() {
    let mut r = router();
    sm_pair(&mut r); // alice (1, 10): connection 10 % 2 = 0, 60 s
    let lost_at = t0() + Duration::from_secs(7);
    r.run_at(
        Input::LinkLost {
            node: 1,
            index: 0,
            pool_size: 2,
        },
        lost_at,
    );
    let deadline = lost_at + Duration::from_secs(60);
    assert_eq!(r.poll_timeout(), Some(deadline));
    assert!(r.timeout(deadline - Duration::from_nanos(1)).is_empty());
    assert_eq!(r.sm_counts(), (1, 1));
    r.timeout(deadline);
    assert_eq!(r.sm_counts(), (0, 0));
    assert_eq!(r.stats().sm_expired, 1);
}

#[test]
fn a_resume_handled_before_the_due_expiry_still_wins() {
    let mut r = router();
    let id = sm_pair(&mut r);
    chat(&mut r, "m1");
    drop_alice_at(&mut r, t0());
    let deadline = t0() + Duration::from_secs(60);
    // the resume arrives just after the deadline, before handle_timeout
    let acts = r.run_at(
        Input::Frame {
            node: 2,
            frame: Frame::Resume {
                sid: 20,
                user: "alice@x".into(),
                previd: id,
                h: 0,
            },
        },
        deadline + Duration::from_millis(1),
    );
    assert!(
        matches!(
            &acts[0],
            Action::Send {
                frame: Frame::Resumed { result: Ok(_), .. },
                ..
            }
        ),
        "{acts:?}"
    );
    assert_eq!(payloads(&acts[1..]).len(), 1, "m1 replayed: {acts:?}");
    assert!(r.timeout(deadline + Duration::from_millis(2)).is_empty());
    assert_eq!(r.sm_counts(), (1, 0));
}

#[test]
fn a_restored_session_gets_at_most_the_servers_resumption_time() {
    let mut before = router();
    let id = sm_pair(&mut before);
    // the core restarted; alice's CM announces her with what it was told
    // (or claims): a day
    let mut r = router();
    let acts = frame(
        &mut r,
        1,
        Frame::Announce {
            sid: 10,
            jid: "alice@x/phone".into(),
            available: true,
            priority: 0,
            sm: Some(SmSnapshot {
                id,
                handled: 0,
                sent: 0,
                client_acked: 0,
                next_seq: 0,
                max: 86_400,
                detached: false,
            }),
        },
    );
    // (an available restored session is flushed, see below, and asked
    // what it wants notified: see pep_tests)
    assert_eq!(
        without_caps_questions(acts),
        vec![Action::FlushOffline {
            user: "alice".into(),
            to: (1, 10)
        }]
    );
    assert_eq!(r.sm_counts(), (1, 0));
    drop_alice_at(&mut r, t0());
    assert_eq!(r.poll_timeout(), Some(t0() + Duration::from_secs(300)));
}

#[test]
fn a_session_that_is_not_resumable_ends_at_once_without_a_deadline() {
    let mut r = router();
    bound(&mut r, 1, 10, "alice@x", "phone");
    frame(
        &mut r,
        1,
        Frame::SmEnable {
            sid: 10,
            resume: false,
            max: 0,
        },
    );
    drop_alice_at(&mut r, t0());
    assert_eq!(r.poll_timeout(), None);
    assert_eq!(r.sm_counts(), (0, 0));
    assert_eq!(r.table().len(), 0);
}

#[test]
fn a_failed_delivery_kicks_before_the_rest_of_the_input_is_carried_out() {
    let mut r = router();
    sm_pair(&mut r);
    // two deliveries waiting; the first cannot be handed to the link
    bound(&mut r, 1, 11, "alice@x", "desk");
    r.handle(
        Input::Frame {
            node: 3,
            frame: Frame::Stanza {
                sid: 30,
                header: header(Kind::Presence, "bob@x/pc", Some("alice@x/phone"), None),
                payload: Bytes::from_static(b"<presence to='alice@x/phone'/>"),
            },
        },
        t0(),
    );
    r.handle(
        Input::Frame {
            node: 3,
            frame: Frame::Stanza {
                sid: 30,
                header: header(Kind::Presence, "bob@x/pc", Some("alice@x/desk"), None),
                payload: Bytes::from_static(b"<presence to='alice@x/desk'/>"),
            },
        },
        t0(),
    );
    let first = r.poll_action();
    assert!(
        matches!(
            first,
            Some(Action::Send {
                node: 1,
                frame: Frame::Deliver { sid: 10, .. }
            })
        ),
        "{first:?}"
    );
    r.delivery_failed(
        (1, 10),
        Bytes::from_static(b"<presence to='alice@x/phone'/>"),
        t0(),
    );
    let next = r.poll_action();
    assert!(
        matches!(&next, Some(Action::Send { frame: Frame::Kick { sid: 10, condition }, .. }) if condition == "connection-timeout"),
        "{next:?}"
    );
    assert_eq!(r.sm_counts(), (1, 1));
    assert_eq!(r.poll_timeout(), Some(t0() + Duration::from_secs(60)));
    assert!(matches!(
        r.poll_action(),
        Some(Action::Send {
            node: 1,
            frame: Frame::Deliver { sid: 11, .. }
        })
    ));
    assert_eq!(r.poll_action(), None);
}

#[test]
fn a_failed_delivery_to_a_session_without_sm_stores_a_chat_or_normal_message_first() {
    let mut r = router();
    bound(&mut r, 1, 10, "alice@x", "phone");
    bound(&mut r, 2, 20, "bob@x", "pc");
    // an action of the input being carried out waits behind
    r.emit(Action::LoadRoster {
        user: "carol@x".into(),
    });
    let chat = Bytes::from_static(b"<message type='chat'><body>hi</body></message>");
    r.delivery_failed((1, 10), chat.clone(), t0());
    assert_eq!(
        r.poll_action(),
        Some(Action::StoreOffline {
            user: "alice".into(),
            payload: chat,
            bounce: super::Bounce {
                sender: String::new(),
                to: String::new(),
                id: None,
            },
            origin: None,
            live: None,
            wake: false,
        })
    );
    assert!(matches!(r.poll_action(), Some(Action::LoadRoster { .. })));
    assert_eq!(r.stats().offline_stored, 1);
    // a normal message (no type) too; the session stays bound
    let normal = Bytes::from_static(b"<message><body>hi</body></message>");
    r.delivery_failed((1, 10), normal, t0());
    assert!(matches!(
        &r.drain()[..],
        [Action::StoreOffline { user, .. }] if user == "alice"
    ));
    assert!(r.table().full("alice@x", "phone").is_some());
    // anything else is lost, as on a broken stream
    for other in [
        &b"<message type='headline'><body>hi</body></message>"[..],
        b"<message type='error'/>",
        b"<presence/>",
        b"<iq type='result' id='1'/>",
        b"<message",
    ] {
        r.delivery_failed((2, 20), Bytes::from_static(other), t0());
        assert_eq!(r.drain(), vec![], "{}", String::from_utf8_lossy(other));
    }
    // a session no longer bound: nobody to store for
    r.delivery_failed((9, 90), Bytes::from_static(b"<message/>"), t0());
    assert_eq!(r.drain(), vec![]);
}

#[test]
fn a_failed_delivery_to_a_detached_sm_session_does_nothing_more() {
    let mut r = router();
    sm_pair(&mut r);
    drop_alice_at(&mut r, t0());
    assert_eq!(r.sm_counts(), (1, 1));
    let chat = Bytes::from_static(b"<message type='chat'><body>hi</body></message>");
    r.delivery_failed((1, 10), chat, t0() + Duration::from_secs(1));
    // its ledger keeps the stanza: neither stored nor kicked again, and
    // the deadline stays the first detach's
    assert_eq!(r.drain(), vec![]);
    assert_eq!(r.poll_timeout(), Some(t0() + Duration::from_secs(60)));
}

/// Alice on phone (1, 10) and desk (1, 11, carbons on), Bob on pc (2, 20),
/// all available.
fn carbons_trio(r: &mut Router) {
    bound(r, 1, 10, "alice@x", "phone");
    bound(r, 1, 11, "alice@x", "desk");
    bound(r, 2, 20, "bob@x", "pc");
    for (node, sid, full) in [
        (1, 10, "alice@x/phone"),
        (1, 11, "alice@x/desk"),
        (2, 20, "bob@x/pc"),
    ] {
        stanza(
            r,
            node,
            sid,
            header(Kind::Presence, full, None, None),
            "<presence/>",
        );
    }
    stanza(
        r,
        1,
        11,
        header(Kind::Iq, "alice@x/desk", None, Some("set")),
        "<iq type='set' id='c'><enable xmlns='urn:xmpp:carbons:2'/></iq>",
    );
}

#[test]
fn a_message_neither_archived_nor_copied_is_delivered_as_it_came() {
    let mut r = router();
    bound(&mut r, 1, 10, "alice@x", "phone");
    bound(&mut r, 2, 20, "bob@x", "pc");
    stanza(
        &mut r,
        2,
        20,
        header(Kind::Presence, "bob@x/pc", None, None),
        "<presence/>",
    );
    // not even XML: the core does not look inside (the CM validated what it sends)
    let payload = "<message type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/>";
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Message, "alice@x/phone", Some("bob@x"), Some("chat")),
        payload,
    );
    assert_eq!(deliveries(&acts), vec![((2, 20), payload.to_owned())]);
}

#[test]
fn a_chat_state_is_copied_without_being_archived() {
    let mut r = router();
    carbons_trio(&mut r);
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Message, "alice@x/phone", Some("bob@x"), Some("chat")),
        "<message to='bob@x' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>",
    );
    assert!(!acts.iter().any(|a| matches!(a, Action::Archive { .. })));
    let d = deliveries(&acts);
    assert_eq!(d.len(), 2, "{d:?}");
    assert_eq!(d[1].0, (1, 11));
    assert!(
        d[1].1.contains("<sent xmlns=\"urn:xmpp:carbons:2\"><forwarded xmlns=\"urn:xmpp:forward:0\"><message to=\"bob@x\" type=\"chat\" xmlns=\"jabber:client\"><active"),
        "{}",
        d[1].1
    );
}

#[test]
fn a_private_message_is_archived_with_forged_ids_stripped_and_not_copied() {
    let mut r = router();
    carbons_trio(&mut r);
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Message, "alice@x/phone", Some("bob@x"), Some("chat")),
        "<message to='bob@x' type='chat'><body>psst</body><stanza-id xmlns='urn:xmpp:sid:0' id='forged' by='bob@x'/><private xmlns='urn:xmpp:carbons:2'/></message>",
    );
    let Some(Action::Archive { entries, .. }) =
        acts.iter().find(|a| matches!(a, Action::Archive { .. }))
    else {
        panic!("{acts:?}")
    };
    let d = deliveries(&acts);
    assert_eq!(d.len(), 1, "no copy: {d:?}");
    assert_eq!(d[0].0, (2, 20));
    let delivered = &d[0].1;
    assert!(!delivered.contains("forged"), "{delivered}");
    assert!(
        delivered.contains(&format!("id=\"{}\"", entries[0].id)),
        "{delivered}"
    );
    assert!(
        delivered.contains("<private xmlns=\"urn:xmpp:carbons:2\"/>"),
        "{delivered}"
    );
    assert_eq!(&entries[0].payload[..], delivered.as_bytes());
}

/// `original` with the `<stanza-id/>` of archive id `id` by `by` appended,
/// as the core stamps a message it keeps the bytes of.
fn with_stanza_id(original: &str, id: &str, by: &str) -> String {
    let end = original.rfind("</").unwrap();
    format!(
        "{}<stanza-id xmlns=\"urn:xmpp:sid:0\" id=\"{id}\" by=\"{by}\"/>{}",
        &original[..end],
        &original[end..]
    )
}

/// The archive entries among `acts` (one `Archive` action expected).
fn archived(acts: &[Action]) -> &[crate::storage::ArchiveEntry] {
    match acts.iter().find(|a| matches!(a, Action::Archive { .. })) {
        Some(Action::Archive { entries, .. }) => entries,
        _ => panic!("not archived: {acts:?}"),
    }
}

#[test]
fn a_chat_with_a_hint_is_delivered_as_it_came_stamped_and_its_copy_embeds_those_bytes() {
    let mut r = router();
    carbons_trio(&mut r);
    let original = "<message to='alice@x/phone' type='chat'><body>hi</body><store xmlns='urn:xmpp:hints'/></message>";
    let acts = stanza(
        &mut r,
        2,
        20,
        header(
            Kind::Message,
            "bob@x/pc",
            Some("alice@x/phone"),
            Some("chat"),
        ),
        original,
    );
    let entries = archived(&acts);
    let d = deliveries(&acts);
    assert_eq!(d.len(), 2, "{d:?}");
    assert_eq!(d[0].0, (1, 10));
    // the tree only read it: the bytes are the client's, the stamp appended
    let stamped = with_stanza_id(original, &entries[0].id, "alice@x");
    assert_eq!(d[0].1, stamped);
    assert_eq!(d[0].1.as_bytes(), &entries[0].payload[..]);
    // the desk gets a "received" copy of the stamped message
    assert_eq!(d[1].0, (1, 11));
    let start_tag = "<message to='alice@x/phone' type='chat'>".len();
    assert!(
        d[1].1.contains(&format!(
            "<received xmlns=\"urn:xmpp:carbons:2\"><forwarded xmlns=\"urn:xmpp:forward:0\"><message to=\"alice@x/phone\" type=\"chat\" xmlns=\"jabber:client\">{}</forwarded>",
            &stamped[start_tag..]
        )),
        "{}",
        d[1].1
    );
}

#[test]
fn a_plain_chat_is_stamped_in_its_bytes_and_its_carbon_embeds_exactly_them() {
    // the common case: archive and carbons on, a body, no hint or id
    let mut r = router();
    carbons_trio(&mut r);
    let original = "<message to='bob@x' type='chat' id='m1'><body>hi</body></message>";
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Message, "alice@x/phone", Some("bob@x"), Some("chat")),
        original,
    );
    let entries = archived(&acts);
    let stamped = with_stanza_id(original, &entries[0].id, "bob@x");
    let d = deliveries(&acts);
    assert_eq!(d.len(), 2, "{d:?}");
    assert_eq!(d[0], ((2, 20), stamped.clone()));
    assert!(entries.iter().all(|e| e.payload == stamped.as_bytes()));
    // the sent copy: the start tag with its namespace declared, then the
    // stamped bytes after their start tag, byte for byte
    let start_tag = "<message to='bob@x' type='chat' id='m1'>".len();
    assert_eq!(d[1].0, (1, 11));
    assert_eq!(
        d[1].1,
        format!(
            "<message xmlns=\"jabber:client\" from=\"alice@x\" to=\"alice@x/desk\" type=\"chat\"><sent xmlns=\"urn:xmpp:carbons:2\"><forwarded xmlns=\"urn:xmpp:forward:0\"><message to=\"bob@x\" type=\"chat\" id=\"m1\" xmlns=\"jabber:client\">{}</forwarded></sent></message>",
            &stamped[start_tag..]
        )
    );
}

#[test]
fn a_message_with_an_origin_id_is_delivered_and_archived_as_it_came_with_the_stanza_id_appended() {
    let mut r = router();
    bound(&mut r, 1, 10, "alice@x", "phone");
    bound(&mut r, 2, 20, "bob@x", "pc");
    stanza(
        &mut r,
        2,
        20,
        header(Kind::Presence, "bob@x/pc", None, None),
        "<presence/>",
    );
    // an origin-id shares the stanza-id namespace but is no <stanza-id/>: the
    // bytes are kept, the stanza-id appended (no tree is read)
    let original = "<message xmlns:p='urn:p' p:x='1' to='bob@x' type='chat'><body>hi</body><origin-id xmlns='urn:xmpp:sid:0' id='o1'/></message>";
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Message, "alice@x/phone", Some("bob@x"), Some("chat")),
        original,
    );
    let entries = archived(&acts);
    let stamped = with_stanza_id(original, &entries[0].id, "bob@x");
    assert_eq!(deliveries(&acts), vec![((2, 20), stamped.clone())]);
    assert!(entries.iter().all(|e| e.payload == stamped.as_bytes()));
}

#[test]
fn a_message_rewritten_to_strip_a_forged_id_keeps_its_prefix_declarations() {
    let mut r = router();
    carbons_trio(&mut r);
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Message, "alice@x/phone", Some("bob@x"), Some("chat")),
        "<message xmlns:p='urn:p' p:x='1' to='bob@x' type='chat'><body>hi</body><stanza-id xmlns='urn:xmpp:sid:0' id='forged' by='bob@x'/><x xmlns='urn:x' p:y='2'/></message>",
    );
    let entries = archived(&acts);
    let d = deliveries(&acts);
    assert_eq!(d.len(), 2, "{d:?}");
    let delivered = &d[0].1;
    assert!(!delivered.contains("forged"), "{delivered}");
    assert_eq!(&entries[0].payload[..], delivered.as_bytes());
    // namespace-well-formed (every prefix declared), for the recipient and
    // for the copy alike
    for (_, stanza) in &d {
        if let Err(e) = Element::parse(stanza.as_bytes(), ns::CLIENT) {
            panic!("{e:?}: {stanza}");
        }
    }
    let message = Element::parse(delivered.as_bytes(), ns::CLIENT).unwrap();
    assert_eq!(message.attr("p:x"), Some("1"));
    assert_eq!(message.prefixes, [("p".to_owned(), "urn:p".to_owned())]);
    assert_eq!(message.child("x", "urn:x").unwrap().attr("p:y"), Some("2"));
}

#[test]
fn a_session_flooding_control_frames_while_its_roster_loads_is_ended_once_and_its_end_still_waits()
{
    let mut r = router();
    let bind = Frame::Bind {
        sid: 10,
        user: "alice@x".into(),
        iq_id: "b".into(),
        resource: Some("phone".into()),
        bind2: None,
    };
    assert_eq!(
        r.step(Input::Frame {
            node: 1,
            frame: bind
        }),
        vec![Action::LoadRoster {
            user: "alice@x".into()
        }]
    );
    // `<r/>` after `<r/>` while the roster loads: the bind and 1023 more wait.
    for _ in 1..super::roster_cache::MAX_DEFERRED {
        let acts = r.step(Input::Frame {
            node: 1,
            frame: Frame::AckRequest { sid: 10 },
        });
        assert!(acts.is_empty(), "{acts:?}");
    }
    let kick = Action::Send {
        node: 1,
        frame: Frame::Kick {
            sid: 10,
            condition: "policy-violation".into(),
        },
    };
    let acts = r.step(Input::Frame {
        node: 1,
        frame: Frame::AckRequest { sid: 10 },
    });
    assert_eq!(acts, vec![kick], "the session is ended when it goes over");
    let acts = r.step(Input::Frame {
        node: 1,
        frame: Frame::AckRequest { sid: 10 },
    });
    assert!(
        acts.is_empty(),
        "ended once, later frames dropped: {acts:?}"
    );
    // its end waits in order behind the rest, so the core learns of it
    let acts = r.step(Input::Frame {
        node: 1,
        frame: Frame::SessionEnd {
            sid: 10,
            jid: Some("alice@x/phone".into()),
            clean: false,
        },
    });
    assert!(acts.is_empty(), "{acts:?}");
    r.step(Input::RosterLoaded {
        user: "alice@x".into(),
        roster: Some(Roster::default()),
    });
    assert!(
        r.table().full("alice@x", "phone").is_none(),
        "the bind went through, then the session ended"
    );
}

#[test]
fn a_message_bounced_after_its_session_went_over_the_roster_wait_bound_goes_offline() {
    let mut r = router();
    bound(&mut r, 1, 10, "alice@x", "phone");
    bound(&mut r, 2, 20, "bob@x", "pc");
    stanza(
        &mut r,
        1,
        10,
        header(Kind::Presence, "alice@x/phone", None, None),
        "<presence/>",
    );
    // alice asks carol (no session, roster not loaded): her frames wait for it
    let acts = r.step(Input::Frame {
        node: 1,
        frame: Frame::Stanza {
            sid: 10,
            header: header(
                Kind::Presence,
                "alice@x/phone",
                Some("carol@x"),
                Some("subscribe"),
            ),
            payload: Bytes::from_static(b"<presence to='carol@x' type='subscribe'/>"),
        },
    });
    assert_eq!(
        acts,
        vec![Action::LoadRoster {
            user: "carol@x".into()
        }]
    );
    // and go over the bound: her session is ended
    let mut kicked = false;
    for _ in 0..super::roster_cache::MAX_DEFERRED {
        let acts = r.step(Input::Frame {
            node: 1,
            frame: Frame::AckRequest { sid: 10 },
        });
        kicked |= acts.iter().any(|a| {
            matches!(a, Action::Send { frame: Frame::Kick { sid: 10, condition }, .. } if condition == "policy-violation")
        });
    }
    assert!(kicked);
    // bob writes to her meanwhile; her CM, ending the session, bounces it
    let message = "<message to='alice@x/phone' type='chat'><body>hi</body></message>";
    let acts = stanza(
        &mut r,
        2,
        20,
        header(
            Kind::Message,
            "bob@x/pc",
            Some("alice@x/phone"),
            Some("chat"),
        ),
        message,
    );
    let [((1, 10), delivered)] = &deliveries(&acts)[..] else {
        panic!("{acts:?}")
    };
    let payload = Bytes::from(delivered.clone());
    for frame in [
        Frame::Bounce {
            sid: 10,
            to: "alice@x/phone".into(),
            payload: payload.clone(),
        },
        Frame::SessionEnd {
            sid: 10,
            jid: Some("alice@x/phone".into()),
            clean: false,
        },
    ] {
        let acts = r.step(Input::Frame { node: 1, frame });
        assert!(acts.is_empty(), "waits in order: {acts:?}");
    }
    let mut acts = r.step(Input::RosterLoaded {
        user: "carol@x".into(),
        roster: Some(Roster::default()),
    });
    // the subscription's roster writes commit; the frames behind them go on
    let txn = match acts.first() {
        Some(Action::WriteRoster { txn, .. }) => *txn,
        _ => panic!("{acts:?}"),
    };
    acts.extend(r.step(Input::RosterWritten { txn }));
    assert!(
        acts.iter().any(|a| matches!(
            a,
            Action::StoreOffline { user, payload: p, .. } if user == "alice" && *p == payload
        )),
        "the bounced message is stored for alice: {acts:?}"
    );
    assert!(r.table().full("alice@x", "phone").is_none());
}

#[test]
fn stanza_bytes_waiting_for_a_roster_are_bounded() {
    let mut r = router();
    let bind = Frame::Bind {
        sid: 10,
        user: "alice@x".into(),
        iq_id: "b".into(),
        resource: Some("phone".into()),
        bind2: None,
    };
    r.step(Input::Frame {
        node: 1,
        frame: bind,
    });
    let big = format!(
        "<message to='bob@x' type='chat'><body>{}</body></message>",
        "x".repeat(60 * 1024)
    );
    let mut kicked_after = None;
    for n in 1..=20 {
        let acts = r.step(Input::Frame {
            node: 1,
            frame: Frame::Stanza {
                sid: 10,
                header: header(Kind::Message, "alice@x/phone", Some("bob@x"), Some("chat")),
                payload: Bytes::from(big.clone()),
            },
        });
        if !acts.is_empty() {
            assert!(
                matches!(&acts[..], [Action::Send { frame: Frame::Kick { condition, .. }, .. }] if condition == "policy-violation"),
                "{acts:?}"
            );
            kicked_after = Some(n);
            break;
        }
    }
    // 1 MiB holds 17 of these 60 KiB messages; the 18th goes over
    assert_eq!(kicked_after, Some(18));
}

#[test]
fn the_action_queue_gives_memory_back_once_a_burst_drained() {
    let mut r = router();
    bound(&mut r, 1, 10, "alice@x", "phone");
    // one input, 100 000 actions: an archive query's answer
    let burst = 100_000;
    r.handle(
        Input::Replies {
            to: (1, 10),
            payloads: vec![Bytes::from_static(b"<message/>"); burst],
            events: Vec::new(),
            iq: true,
        },
        t0(),
    );
    assert!(r.out.capacity() >= burst);
    assert_eq!(r.drain().len(), burst);
    assert!(
        r.out.capacity() <= 2 * super::ACTIONS_KEPT,
        "{}",
        r.out.capacity()
    );
    // a small queue keeps its memory
    r.handle(
        Input::Replies {
            to: (1, 10),
            payloads: vec![Bytes::from_static(b"<message/>"); 5000],
            events: Vec::new(),
            iq: true,
        },
        t0(),
    );
    let kept = r.out.capacity();
    r.drain();
    assert_eq!(r.out.capacity(), kept);
}

/// Bob (node 1, sid 10) with SM (resumable for 60 s) and his initial
/// presence sent; five stored messages (rows 1..=5) loaded for him.
fn bob_with_five_stored(r: &mut Router) -> Vec<Action> {
    bound(r, 1, 10, "bob@x", "laptop");
    frame(
        r,
        1,
        Frame::SmEnable {
            sid: 10,
            resume: true,
            max: 60,
        },
    );
    stanza(
        r,
        1,
        10,
        header(Kind::Presence, "bob@x/laptop", None, None),
        "<presence/>",
    );
    r.run(Input::Offline {
        user: "bob".into(),
        to: (1, 10),
        messages: stored_messages(1..=5),
    })
}

/// Stored chat messages with these row ids (body: the row id).
fn stored_messages(rows: std::ops::RangeInclusive<i64>) -> Vec<(i64, Bytes)> {
    rows.map(|i| {
        (
            i,
            Bytes::from(format!(
                "<message type='chat' id='o{i}'><body>{i}</body></message>"
            )),
        )
    })
    .collect()
}

#[test]
fn stored_messages_are_removed_only_once_acknowledged() {
    let mut r = router();
    let acts = bob_with_five_stored(&mut r);
    assert_eq!(payloads(&acts).len(), 5);
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Action::RemoveOffline { .. })),
        "removed before any acknowledgement: {acts:?}"
    );
    let acts = frame(&mut r, 1, Frame::Acked { sid: 10, h: 2 });
    assert_eq!(
        acts,
        vec![Action::RemoveOffline {
            user: "bob".into(),
            upto: 2,
            rows: vec![],
        }]
    );
    // a second load of the same rows (before the removal ran) hands out
    // only what is new
    let acts = r.run(Input::Offline {
        user: "bob".into(),
        to: (1, 10),
        messages: stored_messages(1..=6),
    });
    assert_eq!(
        payloads(&acts),
        vec!["<message type='chat' id='o6'><body>6</body></message>"]
    );
}

#[test]
fn stored_messages_a_session_never_acknowledged_stay_stored_when_it_expires() {
    let mut r = router();
    bob_with_five_stored(&mut r);
    frame(&mut r, 1, Frame::Acked { sid: 10, h: 1 });
    drop_session(&mut r, 1, 10, "bob@x/laptop");
    let acts = r.timeout(t0() + Duration::from_secs(61));
    // rows 2..=5 are still stored: neither stored again nor removed
    assert!(
        !acts.iter().any(|a| matches!(
            a,
            Action::StoreOffline { .. } | Action::RemoveOffline { .. }
        )),
        "{acts:?}"
    );
    assert_eq!(r.sm_counts(), (0, 0));
    // his next session loads them again, and gets all four
    bound(&mut r, 2, 20, "bob@x", "phone");
    let acts = stanza(
        &mut r,
        2,
        20,
        header(Kind::Presence, "bob@x/phone", None, None),
        "<presence/>",
    );
    assert!(acts.contains(&Action::FlushOffline {
        user: "bob".into(),
        to: (2, 20)
    }));
    let acts = r.run(Input::Offline {
        user: "bob".into(),
        to: (2, 20),
        messages: stored_messages(2..=5),
    });
    assert_eq!(payloads(&acts).len(), 4);
    // without SM, handed to the link is acknowledged
    assert!(acts.contains(&Action::RemoveOffline {
        user: "bob".into(),
        upto: 5,
        rows: vec![],
    }));
}

/// The stream of session (`node`, `sid`) of `full` ends uncleanly.
fn drop_session(r: &mut Router, node: NodeId, sid: SessionId, full: &str) -> Vec<Action> {
    frame(
        r,
        node,
        Frame::SessionEnd {
            sid,
            jid: Some(full.into()),
            clean: false,
        },
    )
}

/// Alice (node 1, sid 10) with SM, not resumable; Bob (node 3, sid 30)
/// available without SM.
fn alice_with_sm_and_bob(r: &mut Router) {
    bound(r, 1, 10, "alice@x", "phone");
    bound(r, 3, 30, "bob@x", "pc");
    stanza(
        r,
        3,
        30,
        header(Kind::Presence, "bob@x/pc", None, None),
        "<presence/>",
    );
    frame(
        r,
        1,
        Frame::SmEnable {
            sid: 10,
            resume: false,
            max: 0,
        },
    );
}

/// The `h` values of the Handled frames in `acts`.
fn handled(acts: &[Action]) -> Vec<u32> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Send {
                frame: Frame::Handled { h, .. },
                ..
            } => Some(*h),
            _ => None,
        })
        .collect()
}

#[test]
fn a_failed_archive_write_answers_the_sender_and_later_stanzas_are_acknowledged() {
    let mut r = router();
    alice_with_sm_and_bob(&mut r);
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Message, "alice@x/phone", Some("bob@x"), Some("chat")),
        "<message from='alice@x/phone' type='chat' to='bob@x' id='m1'><body>hi</body></message>",
    );
    let Some(Action::Archive {
        entries,
        origin: Some(origin),
        ..
    }) = acts.iter().find(|a| matches!(a, Action::Archive { .. }))
    else {
        panic!("{acts:?}")
    };
    let (payload, origin) = (entries[0].payload.clone(), *origin);
    // not durable yet: not acknowledged (the CM stamped `from`, which
    // the archive entry keeps)
    assert_eq!(
        handled(&frame(&mut r, 1, Frame::AckRequest { sid: 10 })),
        vec![0]
    );
    let acts = r.run(Input::StoreFailed {
        bounce: Bounce::default(),
        payload,
        condition: StanzaCondition::InternalServerError,
        origin: Some(origin),
        live: None,
    });
    // the sender hears of it first, then the stanza counts as handled
    let errors = deliveries(&acts);
    assert_eq!(errors.len(), 1, "{acts:?}");
    assert_eq!(errors[0].0, (1, 10));
    assert!(errors[0].1.contains("type=\"error\"") && errors[0].1.contains("m1"));
    assert!(
        errors[0].1.contains("internal-server-error"),
        "{}",
        errors[0].1
    );
    assert_eq!(handled(&acts), vec![1], "{acts:?}");
    assert!(matches!(
        acts.last(),
        Some(Action::Send {
            frame: Frame::Handled { .. },
            ..
        })
    ));
    // the next stanza is acknowledged normally
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Message, "alice@x/phone", Some("bob@x"), Some("chat")),
        "<message from='alice@x/phone' type='chat' to='bob@x' id='m2'><body>again</body></message>",
    );
    let Some(Action::Archive {
        origin: Some(origin),
        ..
    }) = acts.iter().find(|a| matches!(a, Action::Archive { .. }))
    else {
        panic!("{acts:?}")
    };
    let origin = *origin;
    r.run(Input::Stored { origin });
    assert_eq!(
        handled(&frame(&mut r, 1, Frame::AckRequest { sid: 10 })),
        vec![2]
    );
}

#[test]
fn a_failed_store_without_a_bounce_answers_the_sender_the_message_names() {
    let mut r = router();
    alice_with_sm_and_bob(&mut r);
    // a message from alice, rerouted from an ended ledger: nothing but its
    // own attributes says who sent it
    let acts = r.run(Input::StoreFailed {
        bounce: Bounce::default(),
        payload: Bytes::from_static(
            b"<message from='alice@x/phone' to='carol@x' type='chat' id='m7'><body>x</body></message>",
        ),
        condition: StanzaCondition::InternalServerError,
        origin: None,
        live: None,
    });
    let errors = deliveries(&acts);
    assert_eq!(errors.len(), 1, "{acts:?}");
    assert_eq!(errors[0].0, (1, 10));
    assert!(
        errors[0].1.contains("m7") && errors[0].1.contains("from=\"carol@x\""),
        "{}",
        errors[0].1
    );
    // an error is never answered
    let acts = r.run(Input::StoreFailed {
        bounce: Bounce::default(),
        payload: Bytes::from_static(
            b"<message from='alice@x/phone' to='carol@x' type='error' id='m8'/>",
        ),
        condition: StanzaCondition::InternalServerError,
        origin: None,
        live: None,
    });
    assert!(acts.is_empty(), "{acts:?}");
}

#[test]
fn a_query_that_could_not_be_answered_gets_an_error() {
    let mut r = router();
    bound(&mut r, 1, 10, "alice@x", "phone");
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Iq, "alice@x/phone", None, Some("get")),
        "<iq type='get' id='i1'><vCard xmlns='vcard-temp'/></iq>",
    );
    assert!(matches!(&acts[..], [Action::Query { .. }]), "{acts:?}");
    let acts = r.run(Input::QueryFailed {
        to: (1, 10),
        condition: StanzaCondition::InternalServerError,
    });
    let errors = deliveries(&acts);
    assert_eq!(errors.len(), 1, "{acts:?}");
    assert!(
        errors[0].1.contains("<iq")
            && errors[0].1.contains("id=\"i1\"")
            && errors[0].1.contains("internal-server-error"),
        "{}",
        errors[0].1
    );
    // the session may ask again
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Iq, "alice@x/phone", None, Some("get")),
        "<iq type='get' id='i1'><vCard xmlns='vcard-temp'/></iq>",
    );
    assert!(matches!(&acts[..], [Action::Query { .. }]), "{acts:?}");
}

/// A roster set from alice (1, 10) adding bob, handled as the driver
/// hands it over (no storage answer yet).
fn roster_set_adding_bob(r: &mut Router, id: &str) -> Vec<Action> {
    let mut h = header(Kind::Iq, "alice@x/phone", None, Some("set"));
    h.id = Some(id.into());
    let payload = format!(
        "<iq type='set' id='{id}'><query xmlns='jabber:iq:roster'><item jid='bob@x'/></query></iq>"
    );
    r.step(Input::Frame {
        node: 1,
        frame: Frame::Stanza {
            sid: 10,
            header: h,
            payload: Bytes::from(payload),
        },
    })
}

/// A roster get from alice (1, 10), run to its answer.
fn alice_roster(r: &mut Router) -> String {
    let acts = stanza(
        r,
        1,
        10,
        header(Kind::Iq, "alice@x/phone", None, Some("get")),
        "<iq type='get' id='i1'><query xmlns='jabber:iq:roster'/></iq>",
    );
    let p = payloads(&acts);
    assert_eq!(p.len(), 1, "{acts:?}");
    p[0].clone()
}

#[test]
fn a_roster_sets_result_and_push_wait_for_the_commit_and_a_failure_undoes_it() {
    let mut r = router();
    bound(&mut r, 1, 10, "alice@x", "phone");
    assert!(!alice_roster(&mut r).contains("bob@x"));
    // the write goes out; nothing is delivered until it commits
    let acts = roster_set_adding_bob(&mut r, "s1");
    let [Action::WriteRoster { txn, writes }] = &acts[..] else {
        panic!("one write and nothing else: {acts:?}")
    };
    assert!(
        matches!(&writes[..], [RosterWrite::Put { user, item, .. }] if user == "alice" && item.jid == "bob@x"),
        "{writes:?}"
    );
    let txn = *txn;
    // alice's next frame waits behind the write
    let get = r.step(Input::Frame {
        node: 1,
        frame: Frame::Stanza {
            sid: 10,
            header: header(Kind::Iq, "alice@x/phone", None, Some("get")),
            payload: Bytes::from_static(
                b"<iq type='get' id='i1'><query xmlns='jabber:iq:roster'/></iq>",
            ),
        },
    });
    assert!(get.is_empty(), "waits for the write: {get:?}");
    // the write fails: an error, no push, and the get then shows no bob
    let acts = r.step(Input::RosterWriteFailed {
        txn,
        condition: StanzaCondition::InternalServerError,
    });
    let p = payloads(&acts);
    assert_eq!(p.len(), 2, "the error, then the get's answer: {acts:?}");
    assert!(
        p[0].contains("id=\"s1\"") && p[0].contains("internal-server-error"),
        "{p:?}"
    );
    assert!(
        p[1].contains("id=\"i1\"") && !p[1].contains("bob@x"),
        "{p:?}"
    );
    assert!(!p.iter().any(|s| s.contains("push-")), "{p:?}");
    // again, and this time it commits: the result and the push go out then
    let acts = roster_set_adding_bob(&mut r, "s2");
    let [Action::WriteRoster { txn, .. }] = &acts[..] else {
        panic!("{acts:?}")
    };
    let acts = r.step(Input::RosterWritten { txn: *txn });
    let p = payloads(&acts);
    assert!(
        p.iter().any(|s| s.contains("push-") && s.contains("bob@x")),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|s| s.contains("id=\"s2\"") && s.contains("result")),
        "{p:?}"
    );
    assert!(alice_roster(&mut r).contains("bob@x"));
}

#[test]
fn a_message_whose_body_is_namespace_prefixed_is_archived_and_a_foreign_body_is_not() {
    let mut r = router();
    bound(&mut r, 1, 10, "alice@x", "phone");
    bound(&mut r, 3, 30, "bob@x", "pc");
    let send = |r: &mut Router, inner: &str| {
        stanza(
            r,
            3,
            30,
            header(
                Kind::Message,
                "bob@x/pc",
                Some("alice@x/phone"),
                Some("chat"),
            ),
            &format!("<message type='chat' to='alice@x/phone' id='m'>{inner}</message>"),
        )
    };
    let archived = |acts: &[Action]| acts.iter().any(|a| matches!(a, Action::Archive { .. }));
    // the body in jabber:client, under a prefix of its own
    let acts = send(&mut r, "<b:body xmlns:b='jabber:client'>hi</b:body>");
    assert!(archived(&acts), "a prefixed body is a body: {acts:?}");
    // an element called body in another namespace is not one
    let acts = send(&mut r, "<x:body xmlns:x='urn:example:other'>hi</x:body>");
    assert!(!archived(&acts), "{acts:?}");
    let acts = send(
        &mut r,
        "<active xmlns='http://jabber.org/protocol/chatstates'/>",
    );
    assert!(!archived(&acts), "{acts:?}");
}

#[test]
fn a_resume_during_a_flush_flushes_again_at_the_new_address_and_chat_flows_after() {
    let mut r = router();
    let id = sm_pair(&mut r);
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Presence, "alice@x/phone", None, None),
        "<presence/>",
    );
    assert!(acts.contains(&Action::FlushOffline {
        user: "alice".into(),
        to: (1, 10)
    }));
    // before the flush's result, alice resumes on node 2
    let acts = frame(
        &mut r,
        2,
        Frame::Resume {
            sid: 20,
            user: "alice@x".into(),
            previd: id,
            h: 0,
        },
    );
    assert!(
        acts.contains(&Action::FlushOffline {
            user: "alice".into(),
            to: (2, 20)
        }),
        "{acts:?}"
    );
    // the result for the old address finds no one: the rows stay stored
    let acts = r.run(Input::Offline {
        user: "alice".into(),
        to: (1, 10),
        messages: stored_messages(1..=2),
    });
    assert!(delivered_to(&acts).is_empty(), "{acts:?}");
    // the flush for the new address delivers them there
    let acts = r.run(Input::Offline {
        user: "alice".into(),
        to: (2, 20),
        messages: stored_messages(1..=2),
    });
    assert_eq!(delivered_to(&acts), vec![(2, 20), (2, 20)]);
    // and live chat flows to the session again
    assert_eq!(delivered_to(&chat(&mut r, "after")), vec![(2, 20)]);
}

#[test]
fn a_restored_available_sm_session_is_flushed_and_an_unavailable_one_is_not() {
    let mut before = router();
    let id = sm_pair(&mut before);
    let snapshot = SmSnapshot {
        id,
        handled: 0,
        sent: 3,
        client_acked: 1,
        next_seq: 3,
        max: 60,
        detached: false,
    };
    // the core restarted: alice's CM announces her, available
    let mut r = router();
    let acts = frame(
        &mut r,
        1,
        Frame::Announce {
            sid: 10,
            jid: "alice@x/phone".into(),
            available: true,
            priority: 0,
            sm: Some(snapshot.clone()),
        },
    );
    assert_eq!(
        without_caps_questions(acts),
        vec![Action::FlushOffline {
            user: "alice".into(),
            to: (1, 10)
        }]
    );
    // stored rows the dead core handed out come to her again
    let acts = r.run(Input::Offline {
        user: "alice".into(),
        to: (1, 10),
        messages: stored_messages(1..=2),
    });
    assert_eq!(delivered_to(&acts), vec![(1, 10), (1, 10)]);
    // the client acknowledges all it got (3 before, the core's caps
    // question, the 2 stored): the restored ledger counted the question
    let acts = frame(&mut r, 1, Frame::Acked { sid: 10, h: 6 });
    assert!(
        !acts.iter().any(|a| matches!(
            a,
            Action::Send {
                frame: Frame::Kick { .. },
                ..
            }
        )),
        "{acts:?}"
    );
    // one not yet available waits for its initial presence
    let mut r = router();
    let acts = frame(
        &mut r,
        1,
        Frame::Announce {
            sid: 10,
            jid: "alice@x/phone".into(),
            available: false,
            priority: 0,
            sm: Some(snapshot),
        },
    );
    assert!(acts.is_empty(), "{acts:?}");
}

#[test]
fn a_resumption_with_a_write_pending_counts_on_from_the_h_it_reported() {
    let mut r = router();
    let id = sm_pair(&mut r);
    let send_m1 = |r: &mut Router, node: NodeId, sid: SessionId| {
        let acts = stanza(
            r,
            node,
            sid,
            header(Kind::Message, "alice@x/phone", Some("bob@x"), Some("chat")),
            "<message from='alice@x/phone' type='chat' to='bob@x' id='m1'><body>hi</body></message>",
        );
        // its archive write and its offline store for bob (not available)
        let origins: Vec<(u64, u32)> = acts
            .iter()
            .filter_map(|a| match a {
                Action::Archive { origin, .. } | Action::StoreOffline { origin, .. } => *origin,
                _ => None,
            })
            .collect();
        assert_eq!(origins.len(), 2, "{acts:?}");
        origins
    };
    // m1's writes are still pending when alice's CM dies
    let first = send_m1(&mut r, 1, 10);
    r.run(Input::NodeGone { node: 1 });
    let acts = frame(
        &mut r,
        2,
        Frame::Resume {
            sid: 20,
            user: "alice@x".into(),
            previd: id,
            h: 0,
        },
    );
    let Some(Frame::Resumed {
        result: Ok(res), ..
    }) = acts.iter().find_map(|a| match a {
        Action::Send { frame, .. } => Some(frame),
        _ => None,
    })
    else {
        panic!("{acts:?}")
    };
    // only what is durable: m1 is not
    assert_eq!(res.h, 0);
    // so the client sends m1 again: counted, not routed a second time (no
    // second archive row, store or delivery)
    let again = stanza(
        &mut r,
        2,
        20,
        header(Kind::Message, "alice@x/phone", Some("bob@x"), Some("chat")),
        "<message from='alice@x/phone' type='chat' to='bob@x' id='m1'><body>hi</body></message>",
    );
    assert!(again.is_empty(), "m1 was routed once already: {again:?}");
    // its first writes still hold the acknowledgement
    assert_eq!(
        handled(&frame(&mut r, 2, Frame::AckRequest { sid: 20 })),
        vec![0],
        "m1 is not durable yet"
    );
    for origin in first {
        r.run(Input::Stored { origin });
    }
    // the client sent one stanza on the resumed stream after h 0
    assert_eq!(
        handled(&frame(&mut r, 2, Frame::AckRequest { sid: 20 })),
        vec![1],
        "the core counted what the client sent, no more"
    );
    // a new stanza after the resent ones is routed
    assert_eq!(send_m1(&mut r, 2, 20).len(), 2);
}

#[test]
fn after_a_resumption_a_stanza_that_is_not_the_one_sent_before_is_routed_never_dropped() {
    let mut r = router();
    let id = sm_pair(&mut r);
    // m1 (a chat to offline bob: archive and offline writes) is pending
    // when alice's CM dies
    let m1 =
        "<message from='alice@x/phone' type='chat' to='bob@x' id='m1'><body>hi</body></message>";
    let chat = header(Kind::Message, "alice@x/phone", Some("bob@x"), Some("chat"));
    stanza(&mut r, 1, 10, chat.clone(), m1);
    r.run(Input::NodeGone { node: 1 });
    frame(
        &mut r,
        2,
        Frame::Resume {
            sid: 20,
            user: "alice@x".into(),
            previd: id,
            h: 0,
        },
    );
    let available = |r: &Router| r.table.resources("alice@x").iter().any(|res| res.available);
    assert!(!available(&r), "no presence sent yet");
    // the client sends a presence before resending m1 (as the SDK did when
    // its presence changed while away): it is new, so it is routed
    stanza(
        &mut r,
        2,
        20,
        header(Kind::Presence, "alice@x/phone", None, None),
        "<presence from='alice@x/phone'><show>away</show></presence>",
    );
    assert!(
        available(&r),
        "alice is available: her presence was not dropped"
    );
    // m1 comes after it: no longer where it was expected, so routed again
    // (a duplicate the recipient's SDK drops by id, never a loss)
    let again = stanza(&mut r, 2, 20, chat, m1);
    assert!(
        again
            .iter()
            .any(|a| matches!(a, Action::StoreOffline { .. })),
        "{again:?}"
    );
}

#[test]
fn too_many_frames_waiting_for_rosters_close_the_intake_until_loads_drain_them() {
    use super::{INTAKE_CLOSE_AT, INTAKE_OPEN_BELOW};
    let mut r = router();
    let intake = |acts: &[Action]| {
        acts.iter().find_map(|a| match a {
            Action::Intake { open } => Some(*open),
            _ => None,
        })
    };
    // every bind of a new user waits for that user's roster (`step`: the
    // loads are not answered)
    let bind = |r: &mut Router, i: usize| {
        r.step(Input::Frame {
            node: 1,
            frame: Frame::Bind {
                sid: i as SessionId,
                user: format!("u{i}@x"),
                iq_id: "b".into(),
                resource: Some("r".into()),
                bind2: None,
            },
        })
    };
    for i in 0..INTAKE_CLOSE_AT - 1 {
        assert_eq!(intake(&bind(&mut r, i)), None, "open below the bound");
    }
    assert_eq!(intake(&bind(&mut r, INTAKE_CLOSE_AT - 1)), Some(false));
    // loads come back; the intake opens once few enough still wait
    let mut opened_at = None;
    for i in 0..INTAKE_CLOSE_AT {
        let acts = r.step(Input::RosterLoaded {
            user: format!("u{i}@x"),
            roster: Some(Roster::default()),
        });
        if let Some(open) = intake(&acts) {
            assert!(open);
            opened_at = Some(INTAKE_CLOSE_AT - 1 - i);
            break;
        }
    }
    assert_eq!(
        opened_at,
        Some(INTAKE_OPEN_BELOW - 1),
        "frames still waiting when it opened"
    );
}

/// `acts` without the server's entity capabilities questions (XEP-0115).
fn without_caps_questions(acts: Vec<Action>) -> Vec<Action> {
    acts.into_iter()
        .filter(|a| {
            !matches!(a, Action::Send { frame: Frame::Deliver { payload, .. }, .. }
                if payload.windows(10).any(|w| w == b"id=\"caps-a"))
        })
        .collect()
}
