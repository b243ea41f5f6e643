use super::*;

const ROOM: &str = "lounge@conference.example.org";

fn service() -> MucService {
    MucService::new("conference.example.org", 0, [7; 32])
}

fn stanza(from: &str, to: &str, xml: &str) -> Inbound {
    Inbound {
        from: from.into(),
        to: to.into(),
        payload: Bytes::from(xml.to_owned()),
        hold: None,
    }
}

fn drain(s: &mut MucService) -> Vec<MucAction> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

/// What `jid` receives of `actions` (fan-outs included), as elements.
fn received(actions: &[MucAction], jid: &str) -> Vec<Element> {
    actions
        .iter()
        .filter_map(|a| match a {
            MucAction::Send { to, payload, .. } if to == jid => Some(payload.clone()),
            MucAction::Fanout { to, payload, .. } if to.iter().any(|t| &**t == jid) => {
                Some(payload.clone())
            }
            _ => None,
        })
        .map(|p| Element::parse(&p, ns::CLIENT).unwrap())
        .collect()
}

fn codes(p: &Element) -> Vec<String> {
    p.child("x", MUC_USER)
        .map(|x| {
            x.elements()
                .filter(|s| s.name == "status")
                .filter_map(|s| s.attr("code").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn error_of(e: &Element) -> Option<String> {
    (e.attr("type") == Some("error")).then(|| {
        e.child("error", ns::CLIENT)
            .and_then(|er| er.elements().next())
            .map(|c| c.name.clone())
            .unwrap_or_default()
    })
}

fn join(s: &mut MucService, who: &str, nick: &str, extra: &str) -> Vec<MucAction> {
    s.handle(
        stanza(
            who,
            &format!("{ROOM}/{nick}"),
            &format!("<presence><x xmlns='{MUC}'>{extra}</x></presence>"),
        ),
        1000,
    );
    let mut out = drain(s);
    if let Some(MucAction::Load { room }) = out.first().cloned() {
        s.loaded(&room, None, Vec::new(), 1000);
        out = drain(s);
    }
    out
}

/// A room created by alice and opened as an instant room.
fn open_room(s: &mut MucService) {
    join(s, "alice@example.org/phone", "alice", "");
    s.handle(
        stanza(
            "alice@example.org/phone",
            ROOM,
            &format!(
                "<iq type='set' id='c1'><query xmlns='{MUC_OWNER}'><x xmlns='jabber:x:data' type='submit'/></query></iq>"
            ),
        ),
        1000,
    );
    drain(s);
}

#[test]
fn the_first_join_loads_then_creates_a_locked_room_with_status_201() {
    let mut s = service();
    s.handle(
        stanza(
            "alice@example.org/phone",
            &format!("{ROOM}/alice"),
            &format!("<presence><x xmlns='{MUC}'/></presence>"),
        ),
        1000,
    );
    assert_eq!(drain(&mut s), vec![MucAction::Load { room: ROOM.into() }]);
    s.loaded(ROOM, None, Vec::new(), 1000);
    let out = drain(&mut s);
    let got = received(&out, "alice@example.org/phone");
    let own = got.iter().find(|e| e.name == "presence").unwrap();
    let mut c = codes(own);
    c.sort();
    assert_eq!(c, ["110", "201"]);
    let item = own
        .child("x", MUC_USER)
        .unwrap()
        .child("item", MUC_USER)
        .unwrap();
    assert_eq!(item.attr("affiliation"), Some("owner"));
    assert_eq!(item.attr("role"), Some("moderator"));
    assert!(own.child("occupant-id", OCCUPANT_ID).is_some());
    // the subject comes last, empty
    assert!(got.last().unwrap().child("subject", ns::CLIENT).is_some());
    // locked: nobody else may enter
    let out = join(&mut s, "bob@example.org/pc", "bob", "");
    let err = received(&out, "bob@example.org/pc");
    assert_eq!(error_of(&err[0]).as_deref(), Some("item-not-found"));
}

#[test]
fn occupants_see_each_other_and_messages_fan_out_with_stanza_and_occupant_ids() {
    let mut s = service();
    open_room(&mut s);
    let out = join(&mut s, "bob@example.org/pc", "bob", "");
    // bob first learns of alice, then of himself
    let bob = received(&out, "bob@example.org/pc");
    assert_eq!(bob[0].attr("from"), Some(&*format!("{ROOM}/alice")));
    assert_eq!(codes(&bob[1]), ["110"]);
    // alice learns of bob (semi-anonymous: she is a moderator, so with his jid)
    let alice = received(&out, "alice@example.org/phone");
    let item = alice[0]
        .child("x", MUC_USER)
        .unwrap()
        .child("item", MUC_USER)
        .unwrap();
    assert_eq!(item.attr("jid"), Some("bob@example.org/pc"));
    s.handle(
        stanza(
            "bob@example.org/pc",
            ROOM,
            "<message type='groupchat' id='m1'><body>hi</body><stanza-id xmlns='urn:xmpp:sid:0' id='forged' by='lounge@conference.example.org'/></message>",
        ),
        2000,
    );
    let out = drain(&mut s);
    let fan: Vec<&MucAction> = out
        .iter()
        .filter(|a| matches!(a, MucAction::Fanout { .. }))
        .collect();
    assert_eq!(fan.len(), 1, "one fan-out for the whole room: {out:?}");
    let MucAction::Fanout { to, payload, .. } = fan[0] else {
        unreachable!()
    };
    let mut to: Vec<&str> = to.iter().map(|t| &**t).collect();
    to.sort();
    assert_eq!(to, ["alice@example.org/phone", "bob@example.org/pc"]);
    let m = Element::parse(payload, ns::CLIENT).unwrap();
    assert_eq!(m.attr("to"), None);
    assert_eq!(m.attr("from"), Some(&*format!("{ROOM}/bob")));
    let ids: Vec<&str> = m
        .elements()
        .filter(|e| e.name == "stanza-id")
        .filter_map(|e| e.attr("id"))
        .collect();
    assert_eq!(ids.len(), 1);
    assert_ne!(ids[0], "forged");
    assert!(m.child("occupant-id", OCCUPANT_ID).is_some());
    // a temporary room keeps no archive
    assert!(!out.iter().any(|a| matches!(a, MucAction::Archive { .. })));
}

#[test]
fn strangers_and_visitors_cannot_speak() {
    let mut s = service();
    open_room(&mut s);
    s.handle(
        stanza(
            "eve@example.org/x",
            ROOM,
            "<message type='groupchat'><body>x</body></message>",
        ),
        1,
    );
    let out = drain(&mut s);
    assert_eq!(
        error_of(&received(&out, "eve@example.org/x")[0]).as_deref(),
        Some("not-acceptable")
    );
    assert!(!out.iter().any(|a| matches!(a, MucAction::Fanout { .. })));
}

#[test]
fn self_ping_is_answered_for_occupants_and_refused_for_others() {
    let mut s = service();
    open_room(&mut s);
    let ping = format!("<iq type='get' id='p'><ping xmlns='{}'/></iq>", ns::PING);
    s.handle(
        stanza("alice@example.org/phone", &format!("{ROOM}/alice"), &ping),
        1,
    );
    let out = drain(&mut s);
    assert_eq!(
        received(&out, "alice@example.org/phone")[0].attr("type"),
        Some("result")
    );
    // another session of alice's is not joined
    s.handle(
        stanza("alice@example.org/laptop", &format!("{ROOM}/alice"), &ping),
        1,
    );
    let out = drain(&mut s);
    assert_eq!(
        error_of(&received(&out, "alice@example.org/laptop")[0]).as_deref(),
        Some("not-acceptable")
    );
}

#[test]
fn history_is_sent_on_join_with_delay_and_limited_by_maxstanzas() {
    let mut s = service();
    open_room(&mut s);
    for i in 0..5 {
        s.handle(
            stanza(
                "alice@example.org/phone",
                ROOM,
                &format!("<message type='groupchat'><body>m{i}</body></message>"),
            ),
            1_700_000_000 + i,
        );
    }
    drain(&mut s);
    let out = join(
        &mut s,
        "bob@example.org/pc",
        "bob",
        "<history maxstanzas='2'/>",
    );
    let bodies: Vec<String> = received(&out, "bob@example.org/pc")
        .iter()
        .filter_map(|m| m.child("body", ns::CLIENT).map(|b| b.text()))
        .collect();
    assert_eq!(bodies, ["m3", "m4"]);
    let m = received(&out, "bob@example.org/pc")
        .into_iter()
        .find(|m| m.child("body", ns::CLIENT).is_some())
        .unwrap();
    assert_eq!(m.attr("to"), Some("bob@example.org/pc"));
    let delay = m.child("delay", ns::DELAY).unwrap();
    assert_eq!(delay.attr("from"), Some(ROOM));
    assert!(
        delay
            .attr("stamp")
            .unwrap()
            .starts_with("2023-11-14T22:13:23")
    );
}

#[test]
fn passwords_members_only_and_bans_refuse_entry() {
    let mut s = service();
    open_room(&mut s);
    let set = |s: &mut MucService, fields: &str| {
        s.handle(
            stanza(
                "alice@example.org/phone",
                ROOM,
                &format!(
                    "<iq type='set' id='c'><query xmlns='{MUC_OWNER}'><x xmlns='jabber:x:data' type='submit'>{fields}</x></query></iq>"
                ),
            ),
            1,
        );
        drain(s)
    };
    set(
        &mut s,
        "<field var='muc#roomconfig_roomsecret'><value>pw</value></field>",
    );
    let out = join(&mut s, "bob@example.org/pc", "bob", "");
    assert_eq!(
        error_of(&received(&out, "bob@example.org/pc")[0]).as_deref(),
        Some("not-authorized")
    );
    let out = join(
        &mut s,
        "bob@example.org/pc",
        "bob",
        "<password>pw</password>",
    );
    let bob = received(&out, "bob@example.org/pc");
    assert_eq!(codes(&bob[1]), ["110"]);
    // ban bob: he is removed with 301 and cannot come back
    s.handle(
        stanza(
            "alice@example.org/phone",
            ROOM,
            &format!("<iq type='set' id='b'><query xmlns='{MUC_ADMIN}'><item affiliation='outcast' jid='bob@example.org'><reason>spam</reason></item></query></iq>"),
        ),
        1,
    );
    let out = drain(&mut s);
    let bob = received(&out, "bob@example.org/pc");
    assert_eq!(bob[0].attr("type"), Some("unavailable"));
    let mut c = codes(&bob[0]);
    c.sort();
    assert_eq!(c, ["110", "301"]);
    let out = join(
        &mut s,
        "bob@example.org/pc",
        "bob",
        "<password>pw</password>",
    );
    assert_eq!(
        error_of(&received(&out, "bob@example.org/pc")[0]).as_deref(),
        Some("forbidden")
    );
    set(
        &mut s,
        "<field var='muc#roomconfig_membersonly'><value>1</value></field>",
    );
    let out = join(
        &mut s,
        "carol@example.org/x",
        "carol",
        "<password>pw</password>",
    );
    assert_eq!(
        error_of(&received(&out, "carol@example.org/x")[0]).as_deref(),
        Some("registration-required")
    );
}

#[test]
fn a_moderator_kicks_with_307_and_participants_cannot() {
    let mut s = service();
    open_room(&mut s);
    join(&mut s, "bob@example.org/pc", "bob", "");
    join(&mut s, "carol@example.org/x", "carol", "");
    let kick = |who: &str| {
        stanza(
            who,
            ROOM,
            &format!(
                "<iq type='set' id='k'><query xmlns='{MUC_ADMIN}'><item nick='carol' role='none'/></query></iq>"
            ),
        )
    };
    s.handle(kick("bob@example.org/pc"), 1);
    let out = drain(&mut s);
    assert_eq!(
        error_of(&received(&out, "bob@example.org/pc")[0]).as_deref(),
        Some("not-allowed")
    );
    s.handle(kick("alice@example.org/phone"), 1);
    let out = drain(&mut s);
    let carol = received(&out, "carol@example.org/x");
    assert!(codes(&carol[0]).contains(&"307".to_owned()));
    let bob = received(&out, "bob@example.org/pc");
    assert_eq!(bob[0].attr("type"), Some("unavailable"));
    assert!(codes(&bob[0]).contains(&"307".to_owned()));
    // carol is out: her message is refused
    s.handle(
        stanza(
            "carol@example.org/x",
            ROOM,
            "<message type='groupchat'><body>x</body></message>",
        ),
        1,
    );
    assert_eq!(
        error_of(&received(&drain(&mut s), "carol@example.org/x")[0]).as_deref(),
        Some("not-acceptable")
    );
}

#[test]
fn a_persistent_room_is_saved_and_comes_back_from_its_record() {
    let mut s = service();
    open_room(&mut s);
    s.handle(
        stanza(
            "alice@example.org/phone",
            ROOM,
            &format!("<iq type='set' id='c'><query xmlns='{MUC_OWNER}'><x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_persistentroom'><value>1</value></field><field var='muc#roomconfig_roomname'><value>Lounge</value></field></x></query></iq>"),
        ),
        1,
    );
    let out = drain(&mut s);
    let record = out
        .iter()
        .find_map(|a| match a {
            MucAction::Save { record, .. } => Some(record.clone()),
            _ => None,
        })
        .expect("saved");
    // a persistent room's messages go to its archive
    s.handle(
        stanza(
            "alice@example.org/phone",
            ROOM,
            "<message type='groupchat'><body>kept</body></message>",
        ),
        1,
    );
    assert!(
        drain(&mut s)
            .iter()
            .any(|a| matches!(a, MucAction::Archive { room, .. } if room == ROOM))
    );
    // everyone leaves; the room stays (persistent), then a new core loads it
    s.session_gone("alice@example.org/phone");
    // (empty, it leaves memory: it is stored)
    assert_eq!(s.rooms(), 0);
    let mut fresh = service();
    fresh.handle(
        stanza(
            "bob@example.org/pc",
            ROOM,
            &format!(
                "<iq type='get' id='d'><query xmlns='{}'/></iq>",
                ns::DISCO_INFO
            ),
        ),
        1,
    );
    assert_eq!(
        drain(&mut fresh),
        vec![MucAction::Load { room: ROOM.into() }]
    );
    fresh.loaded(ROOM, Some(&record), vec![(5, Bytes::from_static(b"<message from='lounge@conference.example.org/alice' type='groupchat'><body>kept</body></message>"))], 1);
    let out = drain(&mut fresh);
    let info = &received(&out, "bob@example.org/pc")[0];
    let q = info.child("query", ns::DISCO_INFO).unwrap();
    assert_eq!(
        q.child("identity", ns::DISCO_INFO).unwrap().attr("name"),
        Some("Lounge")
    );
    assert!(
        q.elements()
            .any(|f| f.attr("var") == Some("muc_persistent"))
    );
    // alice is still its owner, and the archive's newest messages are the history
    let out = join(&mut fresh, "alice@example.org/phone", "alice", "");
    let kept = received(&out, "alice@example.org/phone")
        .into_iter()
        .find(|m| m.child("body", ns::CLIENT).is_some())
        .expect("history from the archive");
    assert!(kept.child("delay", ns::DELAY).is_some());
    let own = received(&out, "alice@example.org/phone")
        .into_iter()
        .find(|p| codes(p).contains(&"110".to_owned()))
        .unwrap();
    assert_eq!(
        own.child("x", MUC_USER)
            .unwrap()
            .child("item", MUC_USER)
            .unwrap()
            .attr("affiliation"),
        Some("owner")
    );
}

#[test]
fn a_temporary_room_ends_with_its_last_occupant_and_stores_nothing() {
    let mut s = service();
    open_room(&mut s);
    s.handle(
        stanza(
            "alice@example.org/phone",
            &format!("{ROOM}/alice"),
            "<presence type='unavailable'/>",
        ),
        1,
    );
    let out = drain(&mut s);
    assert_eq!(s.rooms(), 0);
    assert!(
        !out.iter()
            .any(|a| matches!(a, MucAction::Delete { .. } | MucAction::Save { .. }))
    );
    let own = &received(&out, "alice@example.org/phone")[0];
    assert_eq!(own.attr("type"), Some("unavailable"));
}

#[test]
fn a_corrupt_record_is_never_replaced_by_a_new_room() {
    let mut s = service();
    s.handle(
        stanza(
            "alice@example.org/phone",
            &format!("{ROOM}/alice"),
            &format!("<presence><x xmlns='{MUC}'/></presence>"),
        ),
        1,
    );
    drain(&mut s);
    s.loaded(ROOM, Some(b"{not json"), Vec::new(), 1);
    let out = drain(&mut s);
    assert_eq!(
        error_of(&received(&out, "alice@example.org/phone")[0]).as_deref(),
        Some("internal-server-error")
    );
    assert_eq!(s.rooms(), 0);
}

#[test]
fn nick_conflicts_are_refused_and_nick_changes_announce_303() {
    let mut s = service();
    open_room(&mut s);
    let out = join(&mut s, "bob@example.org/pc", "alice", "");
    assert_eq!(
        error_of(&received(&out, "bob@example.org/pc")[0]).as_deref(),
        Some("conflict")
    );
    join(&mut s, "bob@example.org/pc", "bob", "");
    s.handle(
        stanza(
            "bob@example.org/pc",
            &format!("{ROOM}/robert"),
            "<presence/>",
        ),
        1,
    );
    let out = drain(&mut s);
    let alice = received(&out, "alice@example.org/phone");
    assert_eq!(alice[0].attr("type"), Some("unavailable"));
    assert_eq!(codes(&alice[0]), ["303"]);
    assert_eq!(
        alice[0]
            .child("x", MUC_USER)
            .unwrap()
            .child("item", MUC_USER)
            .unwrap()
            .attr("nick"),
        Some("robert")
    );
    assert_eq!(alice[1].attr("from"), Some(&*format!("{ROOM}/robert")));
}

#[test]
fn mediated_invitations_reach_the_invitee_from_the_room() {
    let mut s = service();
    open_room(&mut s);
    s.handle(
        stanza(
            "alice@example.org/phone",
            ROOM,
            &format!("<message><x xmlns='{MUC_USER}'><invite to='dave@example.org'><reason>come</reason></invite></x></message>"),
        ),
        1,
    );
    let out = drain(&mut s);
    let m = &received(&out, "dave@example.org")[0];
    assert_eq!(m.attr("from"), Some(ROOM));
    let invite = m
        .child("x", MUC_USER)
        .unwrap()
        .child("invite", MUC_USER)
        .unwrap();
    assert_eq!(invite.attr("from"), Some("alice@example.org"));
}

#[test]
fn the_service_advertises_muc_self_ping_and_occupant_ids() {
    let mut s = service();
    s.handle(
        stanza(
            "alice@example.org/phone",
            "conference.example.org",
            &format!(
                "<iq type='get' id='i'><query xmlns='{}'/></iq>",
                ns::DISCO_INFO
            ),
        ),
        1,
    );
    let out = drain(&mut s);
    let q = received(&out, "alice@example.org/phone")[0]
        .child("query", ns::DISCO_INFO)
        .cloned()
        .unwrap();
    let features: Vec<&str> = q.elements().filter_map(|f| f.attr("var")).collect();
    for f in [MUC, SELF_PING, OCCUPANT_ID] {
        assert!(features.contains(&f), "{f}");
    }
}

#[test]
fn a_session_joining_again_under_its_nick_gets_the_room_again() {
    let mut s = service();
    open_room(&mut s);
    s.handle(
        stanza(
            "alice@example.org/phone",
            ROOM,
            "<message type='groupchat'><body>said</body></message>",
        ),
        1,
    );
    drain(&mut s);
    join(&mut s, "bob@example.org/pc", "bob", "");
    // bob's client lost track (a new stream bound to the same resource) and joins again
    let out = join(&mut s, "bob@example.org/pc", "bob", "");
    let got = received(&out, "bob@example.org/pc");
    assert!(
        got.iter()
            .any(|p| p.attr("from") == Some(&*format!("{ROOM}/alice")))
    );
    assert!(got.iter().any(|p| codes(p) == ["110"]));
    assert!(got.iter().any(|m| m.child("body", ns::CLIENT).is_some()));
    assert!(got.last().unwrap().child("subject", ns::CLIENT).is_some());
    // nobody else heard anything of it
    assert!(received(&out, "alice@example.org/phone").is_empty());
}

#[test]
fn one_session_of_two_leaving_hears_110_with_its_own_jid_and_nobody_else_hears() {
    let mut s = service();
    open_room(&mut s);
    join(&mut s, "bob@example.org/pc", "bob", "");
    join(&mut s, "bob@example.org/phone", "bob", "");
    s.handle(
        stanza(
            "bob@example.org/phone",
            &format!("{ROOM}/bob"),
            "<presence type='unavailable'/>",
        ),
        1,
    );
    let out = drain(&mut s);
    let own = received(&out, "bob@example.org/phone");
    assert_eq!(own.len(), 1);
    assert_eq!(codes(&own[0]), ["110"]);
    let item = own[0]
        .child("x", MUC_USER)
        .unwrap()
        .child("item", MUC_USER)
        .unwrap();
    assert_eq!(item.attr("jid"), Some("bob@example.org/phone"));
    assert!(received(&out, "alice@example.org/phone").is_empty());
    assert!(received(&out, "bob@example.org/pc").is_empty());
}

#[test]
fn private_messages_lose_forged_claims_and_carry_the_senders_occupant_id() {
    let mut s = service();
    open_room(&mut s);
    join(&mut s, "bob@example.org/pc", "bob", "");
    s.handle(
        stanza(
            "bob@example.org/pc",
            &format!("{ROOM}/alice"),
            &format!("<message type='chat' id='p1'><body>psst</body><stanza-id xmlns='urn:xmpp:sid:0' id='x' by='{ROOM}'/><occupant-id xmlns='{OCCUPANT_ID}' id='forged'/><x xmlns='{MUC_USER}'><status code='110'/></x></message>"),
        ),
        1,
    );
    let out = drain(&mut s);
    let m = &received(&out, "alice@example.org/phone")[0];
    assert_eq!(m.attr("from"), Some(&*format!("{ROOM}/bob")));
    assert_eq!(m.attr("to"), Some("alice@example.org/phone"));
    assert!(m.child("stanza-id", ns::SID).is_none());
    let ids: Vec<&str> = m
        .elements()
        .filter(|e| e.ns == OCCUPANT_ID)
        .filter_map(|e| e.attr("id"))
        .collect();
    assert_eq!(ids.len(), 1);
    assert_ne!(ids[0], "forged");
    let x = m.child("x", MUC_USER).unwrap();
    assert!(x.elements().next().is_none(), "no forged status");
}

#[test]
fn chat_states_are_passed_on_but_not_kept_as_history() {
    let mut s = service();
    open_room(&mut s);
    s.handle(
        stanza(
            "alice@example.org/phone",
            ROOM,
            "<message type='groupchat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
        ),
        1,
    );
    assert!(
        drain(&mut s)
            .iter()
            .any(|a| matches!(a, MucAction::Fanout { .. }))
    );
    let out = join(&mut s, "bob@example.org/pc", "bob", "");
    assert!(
        !received(&out, "bob@example.org/pc")
            .iter()
            .any(|m| m.name == "message" && m.child("subject", ns::CLIENT).is_none())
    );
}

#[test]
fn history_honours_seconds() {
    let mut s = service();
    open_room(&mut s);
    for (i, at) in [(0, 1000), (1, 1900), (2, 1990)] {
        s.handle(
            stanza(
                "alice@example.org/phone",
                ROOM,
                &format!("<message type='groupchat'><body>m{i}</body></message>"),
            ),
            at,
        );
    }
    drain(&mut s);
    // (join() runs at Unix time 1000: ask at 2000 instead)
    s.handle(
        stanza(
            "bob@example.org/pc",
            &format!("{ROOM}/bob"),
            &format!("<presence><x xmlns='{MUC}'><history seconds='150'/></x></presence>"),
        ),
        2000,
    );
    let out = drain(&mut s);
    let bodies: Vec<String> = received(&out, "bob@example.org/pc")
        .iter()
        .filter_map(|m| m.child("body", ns::CLIENT).map(|b| b.text()))
        .collect();
    assert_eq!(bodies, ["m1", "m2"]);
}

#[test]
fn stanzas_waiting_for_a_load_hold_their_acknowledgement_until_handled() {
    let mut s = service();
    let mut waiting = stanza(
        "alice@example.org/phone",
        &format!("{ROOM}/alice"),
        &format!("<presence><x xmlns='{MUC}'/></presence>"),
    );
    assert!(s.would_wait(&waiting.to));
    waiting.hold = Some((9, 1));
    s.handle(waiting, 1);
    assert_eq!(drain(&mut s), vec![MucAction::Load { room: ROOM.into() }]);
    s.loaded(ROOM, None, Vec::new(), 1);
    let out = drain(&mut s);
    assert_eq!(out.last(), Some(&MucAction::Release { hold: (9, 1) }));
    // a failed load refuses and releases too
    let room2 = "other@conference.example.org";
    let mut w = stanza("bob@example.org/pc", &format!("{room2}/bob"), "<presence/>");
    w.hold = Some((9, 2));
    s.handle(w, 1);
    drain(&mut s);
    s.load_failed(room2);
    let out = drain(&mut s);
    assert_eq!(
        error_of(&received(&out, "bob@example.org/pc")[0]).as_deref(),
        Some("resource-constraint")
    );
    assert_eq!(out.last(), Some(&MucAction::Release { hold: (9, 2) }));
    // and a session that ends while its stanza waits gives it up
    let mut w = stanza(
        "carol@example.org/x",
        &format!("{room2}/carol"),
        "<presence/>",
    );
    w.hold = Some((9, 3));
    s.handle(w, 1);
    drain(&mut s);
    s.session_gone("carol@example.org/x");
    assert_eq!(drain(&mut s), vec![MucAction::Release { hold: (9, 3) }]);
}

#[test]
fn moderation_keeps_an_owner_and_moderator_is_an_admins_to_give_or_take() {
    let mut s = service();
    open_room(&mut s);
    let iq = |s: &mut MucService, who: &str, items: &str| {
        s.handle(
            stanza(
                who,
                ROOM,
                &format!("<iq type='set' id='a'><query xmlns='{MUC_ADMIN}'>{items}</query></iq>"),
            ),
            1,
        );
        let out = drain(s);
        received(&out, who).first().and_then(error_of)
    };
    // two owners demoted at once would leave none
    assert_eq!(
        iq(
            &mut s,
            "alice@example.org/phone",
            "<item affiliation='owner' jid='bob@example.org'/>"
        ),
        None
    );
    assert_eq!(
        iq(
            &mut s,
            "alice@example.org/phone",
            "<item affiliation='member' jid='bob@example.org'/><item affiliation='member' jid='alice@example.org'/>"
        )
        .as_deref(),
        Some("conflict")
    );
    // carol, a participant made moderator by the owner, cannot unmake another moderator
    join(&mut s, "carol@example.org/x", "carol", "");
    join(&mut s, "dave@example.org/x", "dave", "");
    assert_eq!(
        iq(
            &mut s,
            "alice@example.org/phone",
            "<item nick='carol' role='moderator'/><item nick='dave' role='moderator'/>"
        ),
        None
    );
    assert_eq!(
        iq(
            &mut s,
            "carol@example.org/x",
            "<item nick='dave' role='participant'/>"
        )
        .as_deref(),
        Some("not-allowed")
    );
}

#[test]
fn a_room_turned_members_only_removes_non_members_with_322() {
    let mut s = service();
    open_room(&mut s);
    join(&mut s, "bob@example.org/pc", "bob", "");
    s.handle(
        stanza(
            "alice@example.org/phone",
            ROOM,
            &format!("<iq type='set' id='c'><query xmlns='{MUC_OWNER}'><x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_membersonly'><value>1</value></field></x></query></iq>"),
        ),
        1,
    );
    let out = drain(&mut s);
    let bob = received(&out, "bob@example.org/pc");
    let gone = bob
        .iter()
        .find(|p| p.attr("type") == Some("unavailable"))
        .expect("removed");
    assert!(codes(gone).contains(&"322".to_owned()));
}

#[test]
fn a_password_rooms_archive_is_for_its_occupants_and_members() {
    let mut s = service();
    open_room(&mut s);
    s.handle(
        stanza(
            "alice@example.org/phone",
            ROOM,
            &format!("<iq type='set' id='c'><query xmlns='{MUC_OWNER}'><x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_persistentroom'><value>1</value></field><field var='muc#roomconfig_roomsecret'><value>pw</value></field></x></query></iq>"),
        ),
        1,
    );
    drain(&mut s);
    let mam = "<iq type='set' id='q'><query xmlns='urn:xmpp:mam:2'/></iq>";
    s.handle(stanza("eve@example.org/x", ROOM, mam), 1);
    let out = drain(&mut s);
    assert_eq!(
        error_of(&received(&out, "eve@example.org/x")[0]).as_deref(),
        Some("forbidden")
    );
    s.handle(stanza("alice@example.org/phone", ROOM, mam), 1);
    assert!(
        drain(&mut s)
            .iter()
            .any(|a| matches!(a, MucAction::Query { .. }))
    );
}

/// The service's indexes agree: every session a room lists is indexed
/// as joined to it and the other way round, and each nick's sessions are
/// the sessions naming it.
fn consistent(s: &MucService) {
    for (room_jid, room) in &s.rooms {
        for (full, nick) in &room.nicks {
            let o = room.occupants.get(nick).expect("a nick's occupant");
            assert!(o.sessions.contains(full), "{full} under {nick}");
            assert!(
                s.joined.get(full).is_some_and(|r| r.contains(room_jid)),
                "{full} not indexed in {room_jid}"
            );
        }
        for (nick, o) in &room.occupants {
            assert!(!o.sessions.is_empty(), "{nick} has no session");
            for full in &o.sessions {
                assert_eq!(room.nicks.get(full), Some(nick));
            }
        }
    }
    for (full, rooms) in &s.joined {
        assert!(!rooms.is_empty());
        for r in rooms {
            if let Some(room) = s.rooms.get(r) {
                assert!(room.nicks.contains_key(full), "{full} indexed in {r}");
            }
        }
    }
}

#[test]
fn random_sequences_of_hostile_and_ordinary_stanzas_keep_the_indexes_consistent() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x4d55_4301);
    let users = ["alice", "bob", "carol"];
    let resources = ["a", "b"];
    let rooms = ["r1", "r2"];
    let nicks = ["n1", "n2", "alice", "", "x'<&"];
    for round in 0..300 {
        let mut s = service();
        for _ in 0..60 {
            let user = users[rng.gen_range(0..users.len())];
            let from = format!("{user}@example.org/{}", resources[rng.gen_range(0..2)]);
            let room = format!("{}@conference.example.org", rooms[rng.gen_range(0..2)]);
            let nick = nicks[rng.gen_range(0..nicks.len())];
            let other = users[rng.gen_range(0..users.len())];
            let (to, xml) = match rng.gen_range(0..14) {
                0 | 1 => (
                    format!("{room}/{nick}"),
                    format!(
                        "<presence><x xmlns='{MUC}'><history maxstanzas='{}'/></x></presence>",
                        rng.gen_range(0..5)
                    ),
                ),
                2 => (
                    format!("{room}/{nick}"),
                    "<presence type='unavailable'/>".to_owned(),
                ),
                3 => (
                    format!("{room}/{nick}"),
                    "<presence><show>away</show></presence>".to_owned(),
                ),
                4 => (
                    room.clone(),
                    "<message type='groupchat'><body>hi</body></message>".to_owned(),
                ),
                5 => (
                    room.clone(),
                    "<message type='groupchat'><subject>s</subject></message>".to_owned(),
                ),
                6 => (
                    room.clone(),
                    format!(
                        "<iq type='set' id='c'><query xmlns='{MUC_OWNER}'><x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_membersonly'><value>{}</value></field></x></query></iq>",
                        rng.gen_range(0..2)
                    ),
                ),
                7 => (
                    room.clone(),
                    format!(
                        "<iq type='set' id='k'><query xmlns='{MUC_ADMIN}'><item nick='{nick}' role='{}'/></query></iq>",
                        ["none", "visitor", "participant", "moderator"][rng.gen_range(0..4)]
                    ),
                ),
                8 => (
                    room.clone(),
                    format!(
                        "<iq type='set' id='b'><query xmlns='{MUC_ADMIN}'><item jid='{other}@example.org' affiliation='{}'/></query></iq>",
                        ["outcast", "none", "member", "admin", "owner"][rng.gen_range(0..5)]
                    ),
                ),
                9 => (
                    room.clone(),
                    format!(
                        "<iq type='set' id='d'><query xmlns='{MUC_OWNER}'><destroy/></query></iq>"
                    ),
                ),
                10 => (
                    format!("{room}/{nick}"),
                    "<message type='chat'><body>pm</body></message>".to_owned(),
                ),
                11 => (
                    format!("{room}/{nick}"),
                    format!("<iq type='get' id='p'><ping xmlns='{}'/></iq>", ns::PING),
                ),
                12 => {
                    s.session_gone(&from);
                    continue;
                }
                _ => (room.clone(), "<message type='groupchat'><body".to_owned()),
            };
            s.handle(stanza(&from, &to, &xml), 1000 + round);
            // loads are answered at once, sometimes as failed
            while let Some(a) = s.poll_action() {
                if let MucAction::Load { room } = a {
                    match rng.gen_range(0..8) {
                        0 => s.load_failed(&room),
                        _ => s.loaded(&room, None, Vec::new(), 1000),
                    }
                }
            }
            consistent(&s);
        }
    }
}

#[test]
fn a_user_creates_at_most_twenty_rooms_an_hour_and_joining_existing_ones_is_not_counted() {
    let mut s = service();
    let create = |s: &mut MucService, n: u32, at: u64| {
        let room = format!("r{n}@conference.example.org");
        s.handle(
            stanza(
                "mallory@example.org/bot",
                &format!("{room}/m"),
                &format!("<presence><x xmlns='{MUC}'/></presence>"),
            ),
            at,
        );
        drain(s);
        s.loaded(&room, None, Vec::new(), at);
        let out = drain(s);
        let got = received(&out, "mallory@example.org/bot");
        error_of(&got[0])
    };
    for n in 0..MAX_CREATIONS_PER_WINDOW {
        assert_eq!(create(&mut s, n, 1000), None, "room {n}");
    }
    assert_eq!(
        create(&mut s, 99, 1000).as_deref(),
        Some("resource-constraint")
    );
    // another user still creates, and mallory joins a room that exists
    open_room(&mut s);
    let out = join(&mut s, "mallory@example.org/bot", "m", "");
    assert_eq!(
        error_of(&received(&out, "mallory@example.org/bot")[0]),
        None
    );
    // the next window counts afresh
    assert_eq!(create(&mut s, 100, 1000 + CREATION_WINDOW_SECS), None);
}
