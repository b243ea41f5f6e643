//! Live rows (see `live_rows`): a message delivered live to an SM session
//! is written to its user's offline table too, so that nothing
//! acknowledged to its sender is lost if the core dies before the
//! recipient's `<a h/>`.

use std::time::Duration;

use bytes::Bytes;
use cm_protocol::{Frame, Kind};

use super::test_support::*;
use super::{Action, Input, Router};

/// A live row write: (user, ticket, origin).
type LiveWrite = (String, u64, Option<(u64, u32)>);

/// The live row writes among `acts`.
fn live_writes(acts: &[Action]) -> Vec<LiveWrite> {
    acts.iter()
        .filter_map(|a| match a {
            Action::StoreOffline {
                user,
                live: Some(ticket),
                origin,
                ..
            } => Some((user.clone(), *ticket, *origin)),
            _ => None,
        })
        .collect()
}

/// The removals among `acts`: (user, upto, rows).
fn removals(acts: &[Action]) -> Vec<(String, i64, Vec<i64>)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::RemoveOffline { user, upto, rows } => Some((user.clone(), *upto, rows.clone())),
            _ => None,
        })
        .collect()
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

/// Bob (3, 30) enables SM too (he is the sender).
fn bob_enables_sm(r: &mut Router) {
    sm_enable(r, 3, 30, 60);
}

/// A body-less receipt from bob (3, 30) to alice@x/phone (not archived);
/// every action, its live row unwritten.
fn receipt(r: &mut Router, id: &str) -> Vec<Action> {
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
        &format!(
            "<message type='chat' to='alice@x/phone' id='{id}'><received xmlns='urn:xmpp:receipts' id='x'/></message>"
        ),
    )
}

#[test]
fn the_senders_ack_waits_for_the_live_row_of_a_message_routed_to_an_sm_recipient() {
    let mut r = router();
    sm_pair(&mut r);
    bob_enables_sm(&mut r);
    let acts = receipt(&mut r, "r1");
    assert_eq!(delivered_to(&acts), vec![(1, 10)], "delivered live at once");
    let writes = live_writes(&acts);
    let [(user, ticket, Some(origin))] = &writes[..] else {
        panic!("one live row write holding bob's ack: {acts:?}")
    };
    assert_eq!(user, "alice");
    // the Deliver goes out before the write is asked for
    let deliver = acts.iter().position(|a| matches!(a, Action::Send { .. }));
    let store = acts
        .iter()
        .position(|a| matches!(a, Action::StoreOffline { .. }));
    assert!(deliver < store, "{acts:?}");
    // bob asks: the receipt is not durable yet
    let acts = frame(&mut r, 3, Frame::AckRequest { sid: 30 });
    assert_eq!(handled(&acts), vec![0], "{acts:?}");
    // the row is written: bob's ack goes out
    let acts = r.run(Input::LiveStored {
        ticket: *ticket,
        row: 7,
        origin: Some(*origin),
    });
    assert_eq!(handled(&acts), vec![1], "{acts:?}");
}

#[test]
fn the_recipients_ack_removes_the_live_rows_it_covers_in_one_action() {
    let mut r = router();
    sm_pair(&mut r);
    let mut delivered = 0;
    let mut written = 0;
    let mut archived = 0;
    for i in 0..10 {
        let acts = stanza(
            &mut r,
            3,
            30,
            header(
                Kind::Message,
                "bob@x/pc",
                Some("alice@x/phone"),
                Some("chat"),
            ),
            &format!(
                "<message type='chat' to='alice@x/phone' id='m{i}'><body>m{i}</body></message>"
            ),
        );
        // the cost per message: one delivery, one archive write, one live row
        delivered += delivered_to(&acts).len();
        written += live_writes(&acts).len();
        archived += acts
            .iter()
            .filter(|a| matches!(a, Action::Archive { .. }))
            .count();
        assert_eq!(acts.len(), 3, "{acts:?}");
        commit_live(&mut r, acts);
    }
    assert_eq!((delivered, archived, written), (10, 10, 10));
    // alice acknowledges 4, then the rest: one removal each, by id
    let acts = frame(&mut r, 1, Frame::Acked { sid: 10, h: 4 });
    let removed = removals(&acts);
    assert_eq!(acts.len(), 1, "{acts:?}");
    let [(user, 0, rows)] = &removed[..] else {
        panic!("{acts:?}")
    };
    assert_eq!(user, "alice");
    assert_eq!(rows.len(), 4);
    assert!(rows.windows(2).all(|w| w[0] < w[1]));
    let acts = frame(&mut r, 1, Frame::Acked { sid: 10, h: 10 });
    let removed = removals(&acts);
    assert_eq!(acts.len(), 1, "{acts:?}");
    assert_eq!(removed[0].2.len(), 6);
    assert!(removed[0].2[0] > rows[3]);
    // nothing acknowledged again
    assert!(frame(&mut r, 1, Frame::Acked { sid: 10, h: 10 }).is_empty());
}

#[test]
fn an_ack_that_comes_before_the_row_id_removes_the_row_when_it_comes() {
    let mut r = router();
    sm_pair(&mut r);
    let acts = receipt(&mut r, "r1");
    let [(_, ticket, _)] = live_writes(&acts)[..] else {
        panic!("{acts:?}")
    };
    let acts = frame(&mut r, 1, Frame::Acked { sid: 10, h: 1 });
    assert!(removals(&acts).is_empty(), "no id to remove yet: {acts:?}");
    let acts = r.run(Input::LiveStored {
        ticket,
        row: 41,
        origin: None,
    });
    assert_eq!(removals(&acts), vec![("alice".into(), 0, vec![41])]);
}

#[test]
fn an_expired_ledger_hands_its_live_rows_back_and_stores_nothing_twice() {
    let mut r = router();
    sm_pair(&mut r);
    chat(&mut r, "m1");
    chat(&mut r, "m2");
    // m3's row is still being written when the session expires
    let acts = receipt(&mut r, "m3");
    let [(_, pending, _)] = live_writes(&acts)[..] else {
        panic!("{acts:?}")
    };
    let acts = frame(&mut r, 1, Frame::Acked { sid: 10, h: 1 });
    let [(_, _, m1_rows)] = &removals(&acts)[..] else {
        panic!("m1's row goes: {acts:?}")
    };
    let m1 = m1_rows[0];
    end_session(&mut r, 1, 10, "alice@x/phone", false);
    let acts = r.timeout(t0() + Duration::from_secs(61));
    assert!(
        !acts.iter().any(|a| matches!(
            a,
            Action::StoreOffline { .. } | Action::RemoveOffline { .. }
        )),
        "m2 stays stored as it is, once: {acts:?}"
    );
    assert_eq!(r.sm_counts(), (0, 0));
    // alice is back (available) before m3's row id comes: it is handed
    // back too, and a flush for her is asked for
    bound(&mut r, 2, 20, "alice@x", "tablet");
    stanza(
        &mut r,
        2,
        20,
        header(Kind::Presence, "alice@x/tablet", None, None),
        "<presence/>",
    );
    // (her login's flush is under way; the next one waits for it)
    let acts = r.run(Input::LiveStored {
        ticket: pending,
        row: m1 + 2,
        origin: None,
    });
    assert!(removals(&acts).is_empty(), "{acts:?}");
    // the login's flush loads m2 and m3 (m1 was removed): both delivered
    let m2 = m1 + 1;
    let acts = r.run(Input::Offline {
        user: "alice".into(),
        to: (2, 20),
        messages: vec![
            (
                m2,
                Bytes::from_static(b"<message type='chat'><body>m2</body></message>"),
            ),
            (
                m1 + 2,
                Bytes::from_static(
                    b"<message type='chat'><received xmlns='urn:xmpp:receipts' id='x'/></message>",
                ),
            ),
        ],
    });
    assert_eq!(delivered_to(&acts), vec![(2, 20), (2, 20)], "{acts:?}");
    assert!(live_writes(&acts).is_empty());
}

#[test]
fn a_message_to_two_sm_sessions_of_a_user_writes_one_row_removed_by_the_first_ack() {
    let mut r = router();
    bound(&mut r, 1, 10, "alice@x", "phone");
    bound(&mut r, 1, 11, "alice@x", "desk");
    bound(&mut r, 3, 30, "bob@x", "pc");
    for (sid, res) in [(10, "phone"), (11, "desk")] {
        stanza(
            &mut r,
            1,
            sid,
            header(Kind::Presence, &format!("alice@x/{res}"), None, None),
            "<presence/>",
        );
        // (their login flushes find nothing)
        r.run(Input::Offline {
            user: "alice".into(),
            to: (1, sid),
            messages: Vec::new(),
        });
    }
    // SM on, once their presences went round: the ledgers are empty
    for sid in [10, 11] {
        sm_enable(&mut r, 1, sid, 60);
    }
    let acts = stanza(
        &mut r,
        3,
        30,
        header(Kind::Message, "bob@x/pc", Some("alice@x"), Some("chat")),
        "<message type='chat' to='alice@x'><received xmlns='urn:xmpp:receipts' id='x'/></message>",
    );
    let mut to = delivered_to(&acts);
    to.sort();
    assert_eq!(to, vec![(1, 10), (1, 11)], "{acts:?}");
    assert_eq!(live_writes(&acts).len(), 1, "one row: {acts:?}");
    commit_live(&mut r, acts);
    let acts = frame(&mut r, 1, Frame::Acked { sid: 11, h: 1 });
    let removed = removals(&acts);
    assert_eq!(removed.len(), 1, "{acts:?}");
    assert_eq!(removed[0].2.len(), 1);
    // the other session's ack of the same row asks for nothing
    assert!(frame(&mut r, 1, Frame::Acked { sid: 10, h: 1 }).is_empty());
}

#[test]
fn a_failed_live_row_answers_its_sender_and_the_message_is_rerouted_on_the_ledgers_end() {
    let mut r = router();
    sm_pair(&mut r);
    let acts = receipt(&mut r, "r1");
    let [(_, ticket, _)] = live_writes(&acts)[..] else {
        panic!("{acts:?}")
    };
    let payload = Bytes::from_static(
        b"<message type='chat' from='bob@x/pc' to='alice@x/phone' id='r1'><received xmlns='urn:xmpp:receipts' id='x'/></message>",
    );
    let acts = r.run(Input::StoreFailed {
        bounce: super::Bounce::default(),
        payload,
        condition: xmpp_stream::StanzaCondition::InternalServerError,
        origin: None,
        live: Some(ticket),
    });
    // bob is told
    assert_eq!(delivered_to(&acts), vec![(3, 30)], "{acts:?}");
    // alice's clean close: the message, with no row, is stored as before
    let acts = end_session(&mut r, 1, 10, "alice@x/phone", true);
    assert!(
        matches!(&acts[..], [Action::StoreOffline { live: None, user, .. }] if user == "alice"),
        "{acts:?}"
    );
}

#[test]
fn chat_states_left_unacknowledged_are_removed_when_the_ledger_ends() {
    let mut r = router();
    sm_pair(&mut r);
    let acts = stanza(
        &mut r,
        3,
        30,
        header(
            Kind::Message,
            "bob@x/pc",
            Some("alice@x/phone"),
            Some("chat"),
        ),
        "<message type='chat' to='alice@x/phone'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
    );
    assert_eq!(live_writes(&acts).len(), 1);
    commit_live(&mut r, acts);
    chat(&mut r, "kept");
    let acts = end_session(&mut r, 1, 10, "alice@x/phone", true);
    // the chat state's row goes; the chat's stays for the next login
    let removed = removals(&acts);
    assert_eq!(removed.len(), 1, "{acts:?}");
    assert_eq!(removed[0].2.len(), 1);
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Action::StoreOffline { .. })),
        "{acts:?}"
    );
}

#[test]
fn messages_to_sessions_without_sm_write_no_live_row() {
    let mut r = router();
    bound(&mut r, 1, 10, "alice@x", "phone");
    bound(&mut r, 3, 30, "bob@x", "pc");
    let acts = receipt(&mut r, "r1");
    assert_eq!(delivered_to(&acts), vec![(1, 10)]);
    assert!(live_writes(&acts).is_empty(), "{acts:?}");
}

/// Alice's phone (1, 10) and desk (1, 11), both available with SM, their
/// login flushes done; bob (3, 30) without SM.
fn alice_on_two_sm_sessions(r: &mut Router) {
    bound(r, 1, 10, "alice@x", "phone");
    bound(r, 1, 11, "alice@x", "desk");
    bound(r, 3, 30, "bob@x", "pc");
    for (sid, res) in [(10, "phone"), (11, "desk")] {
        stanza(
            r,
            1,
            sid,
            header(Kind::Presence, &format!("alice@x/{res}"), None, None),
            "<presence/>",
        );
        r.run(Input::Offline {
            user: "alice".into(),
            to: (1, sid),
            messages: Vec::new(),
        });
        sm_enable(r, 1, sid, 60);
    }
}

/// A chat `body` from bob (3, 30) to `to`, its live row not written.
fn chat_to(r: &mut Router, to: &str, body: &str) -> Vec<Action> {
    stanza(
        r,
        3,
        30,
        header(Kind::Message, "bob@x/pc", Some(to), Some("chat")),
        &format!("<message type='chat' to='{to}' id='{body}'><body>{body}</body></message>"),
    )
}

#[test]
fn a_ledger_ending_with_live_rows_still_being_written_flushes_the_best_session_so_nothing_overtakes_them()
 {
    let mut r = router();
    alice_on_two_sm_sessions(&mut r);
    // m1 goes live to the phone; its row is still being written when the
    // phone closes its stream without acknowledging it
    let acts = chat_to(&mut r, "alice@x/phone", "m1");
    assert_eq!(delivered_to(&acts), vec![(1, 10)]);
    let [(_, ticket, _)] = live_writes(&acts)[..] else {
        panic!("{acts:?}")
    };
    let acts = end_session(&mut r, 1, 10, "alice@x/phone", true);
    assert!(
        flushes(&acts, Some((1, 11))),
        "the desk is flushed at once, its load queued behind m1's write: {acts:?}"
    );
    // m2, to alice's bare JID, reaches the desk only behind m1
    let acts = chat_to(&mut r, "alice@x", "m2");
    assert!(
        delivered_to(&acts).is_empty(),
        "m2 waits behind m1: {acts:?}"
    );
    // the load read m1's row (and m2's) before m1's id came back: it waits
    // for that id (until then m1 could be out with a session unknown)
    let m1 = 5000;
    let acts = r.run(Input::Offline {
        user: "alice".into(),
        to: (1, 11),
        messages: vec![
            (
                m1,
                Bytes::from_static(b"<message type='chat' id='m1'><body>m1</body></message>"),
            ),
            (
                m1 + 1,
                Bytes::from_static(b"<message type='chat' id='m2'><body>m2</body></message>"),
            ),
        ],
    });
    assert!(payloads(&acts).is_empty(), "{acts:?}");
    // m1's id comes back: nobody holds it, so the waiting load hands it to
    // the desk, then m2
    let acts = r.run(Input::LiveStored {
        ticket,
        row: m1,
        origin: None,
    });
    assert_eq!(
        payloads(&acts),
        vec![
            "<message type='chat' id='m1'><body>m1</body></message>".to_owned(),
            "<message type='chat' id='m2'><body>m2</body></message>".to_owned()
        ],
        "in order"
    );
    // (m1 handed back asked for a flush meanwhile: it comes after this
    // one, and hands out neither again)
    assert!(flushes(&acts, Some((1, 11))), "{acts:?}");
    let acts = r.run(Input::Offline {
        user: "alice".into(),
        to: (1, 11),
        messages: vec![stored(m1, "m1"), stored(m1 + 1, "m2")],
    });
    assert!(payloads(&acts).is_empty(), "{acts:?}");
    assert!(!r.stored_rows.wanted("alice", m1));
    // (the desk's ledger: the phone's unavailable presence, m1, m2)
    let acts = frame(&mut r, 1, Frame::Acked { sid: 11, h: 3 });
    assert_eq!(removals(&acts), vec![("alice".to_owned(), m1 + 1, vec![])]);
}

#[test]
fn past_the_pending_live_rows_bound_a_message_goes_live_and_its_sender_gets_an_error_not_an_ack() {
    let mut r = router();
    r.live_rows = super::live_rows::LiveRows::with_limit(1);
    sm_pair(&mut r);
    bob_enables_sm(&mut r);
    let first = receipt(&mut r, "r1");
    assert_eq!(live_writes(&first).len(), 1);
    // (as the CM stamps it: with its sender)
    let acts = stanza(
        &mut r,
        3,
        30,
        header(
            Kind::Message,
            "bob@x/pc",
            Some("alice@x/phone"),
            Some("chat"),
        ),
        "<message type='chat' from='bob@x/pc' to='alice@x/phone' id='r2'><received xmlns='urn:xmpp:receipts' id='x'/></message>",
    );
    assert!(
        delivered_to(&acts).contains(&(1, 10)),
        "still delivered live: {acts:?}"
    );
    assert!(live_writes(&acts).is_empty(), "no row for it: {acts:?}");
    let errors: Vec<_> = deliveries(&acts)
        .into_iter()
        .filter(|(to, p)| *to == (3, 30) && p.contains("type=\"error\"") && p.contains("id=\"r2\""))
        .collect();
    assert_eq!(errors.len(), 1, "bob is told about r2: {acts:?}");
    assert!(errors[0].1.contains("resource-constraint"), "{errors:?}");
}

#[test]
fn a_live_row_whose_sessions_all_ended_before_its_id_came_is_flushed_to_the_user_when_it_comes() {
    let mut r = router();
    alice_on_two_sm_sessions(&mut r);
    let acts = chat_to(&mut r, "alice@x/phone", "m1");
    let [(_, ticket, _)] = live_writes(&acts)[..] else {
        panic!("{acts:?}")
    };
    end_session(&mut r, 1, 10, "alice@x/phone", true);
    // the desk's flush found nothing (its load ran before m1's write, as a
    // retried write can land behind it)
    r.run(Input::Offline {
        user: "alice".into(),
        to: (1, 11),
        messages: Vec::new(),
    });
    let acts = r.run(Input::LiveStored {
        ticket,
        row: 7000,
        origin: None,
    });
    assert!(
        flushes(&acts, Some((1, 11))),
        "m1 is stored and nobody holds it: the desk is flushed: {acts:?}"
    );
    assert!(r.stored_rows.wanted("alice", 7000));
}

#[test]
fn a_ledger_ending_while_another_session_holds_its_live_row_asks_no_flush_and_the_other_keeps_it() {
    let mut r = router();
    alice_on_two_sm_sessions(&mut r);
    // to the bare JID: phone and desk both take it, one row
    let acts = chat_to(&mut r, "alice@x", "m1");
    assert_eq!(delivered_to(&acts).len(), 2, "{acts:?}");
    let [(_, ticket, _)] = live_writes(&acts)[..] else {
        panic!("{acts:?}")
    };
    let acts = end_session(&mut r, 1, 10, "alice@x/phone", true);
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Action::FlushOffline { .. })),
        "the desk holds m1: no flush could bring it but twice: {acts:?}"
    );
    let acts = r.run(Input::LiveStored {
        ticket,
        row: 7100,
        origin: None,
    });
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Action::FlushOffline { .. })),
        "{acts:?}"
    );
    assert!(r.stored_rows.is_out("alice", 7100), "out with the desk");
    // (the desk's ledger: the phone's unavailable presence, m1)
    let acts = frame(&mut r, 1, Frame::Acked { sid: 11, h: 2 });
    assert_eq!(removals(&acts), vec![("alice".to_owned(), 0, vec![7100])]);
}

#[test]
fn a_flush_asked_for_while_one_runs_is_made_once_that_one_is_done() {
    let mut r = router();
    bound(&mut r, 1, 10, "alice@x", "phone");
    sm_enable(&mut r, 1, 10, 60);
    // her login's flush is under way
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Presence, "alice@x/phone", None, None),
        "<presence/>",
    );
    assert!(flushes(&acts, None), "{acts:?}");
    // a store that failed and was tried again commits late; its flush
    // waits for the running one, whose load may have read before it
    let acts = r.run(Input::OfflineStoredLate {
        user: "alice".into(),
    });
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Action::FlushOffline { .. })),
        "{acts:?}"
    );
    let acts = r.run(Input::Offline {
        user: "alice".into(),
        to: (1, 10),
        messages: Vec::new(),
    });
    assert!(
        flushes(&acts, Some((1, 10))),
        "flushed again for the late store: {acts:?}"
    );
}

/// Alice's phone (1, 10) with SM, and bob (3, 30), before her initial
/// presence.
fn alice_phone_before_presence(r: &mut Router) {
    bound(r, 1, 10, "alice@x", "phone");
    sm_enable(r, 1, 10, 60);
    bound(r, 3, 30, "bob@x", "pc");
}

/// Alice's initial presence from her phone (1, 10).
fn alice_presence(r: &mut Router) -> Vec<Action> {
    stanza(
        r,
        1,
        10,
        header(Kind::Presence, "alice@x/phone", None, None),
        "<presence/>",
    )
}

/// Stored message `body` (a chat from bob) as a load returns it.
fn stored(row: i64, body: &str) -> (i64, Bytes) {
    let xml = format!("<message type='chat' id='{body}'><body>{body}</body></message>");
    (row, Bytes::from(xml))
}

/// How many of `acts` deliver a stanza carrying `body` to the phone.
fn copies(acts: &[Action], body: &str) -> usize {
    deliveries(acts)
        .iter()
        .filter(|(to, xml)| *to == (1, 10) && xml.contains(&format!("<body>{body}</body>")))
        .count()
}

/// How many stanzas `acts` deliver to the phone.
fn to_phone(acts: &[Action]) -> u32 {
    let n = deliveries(acts)
        .iter()
        .filter(|(to, _)| *to == (1, 10))
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[test]
fn a_load_that_read_a_live_row_before_its_id_came_waits_for_it_and_delivers_it_not_twice() {
    let mut r = router();
    alice_phone_before_presence(&mut r);
    // m1 reaches the phone live before its initial presence
    let acts = chat_to(&mut r, "alice@x/phone", "m1");
    assert_eq!(copies(&acts, "m1"), 1);
    let [(_, ticket, _)] = live_writes(&acts)[..] else {
        panic!("{acts:?}")
    };
    // the presence's flush was queued behind m1's write and read its row;
    // the load's result comes before the write's
    let acts = alice_presence(&mut r);
    assert!(flushes(&acts, Some((1, 10))), "{acts:?}");
    let acts = r.run(Input::Offline {
        user: "alice".into(),
        to: (1, 10),
        messages: vec![stored(5000, "m1")],
    });
    assert_eq!(copies(&acts, "m1"), 0, "waits for m1's id: {acts:?}");
    let acts = r.run(Input::LiveStored {
        ticket,
        row: 5000,
        origin: None,
    });
    assert_eq!(
        copies(&acts, "m1"),
        0,
        "out with the phone already: {acts:?}"
    );
    assert!(!r.stored_rows.wanted("alice", 5000));
}

#[test]
fn a_load_waits_only_for_live_rows_of_its_own_user() {
    let mut r = router();
    alice_phone_before_presence(&mut r);
    bound(&mut r, 2, 20, "carol@x", "tab");
    sm_enable(&mut r, 2, 20, 60);
    // a live row of carol's is being written
    let acts = chat_to(&mut r, "carol@x/tab", "c1");
    assert_eq!(live_writes(&acts).len(), 1, "{acts:?}");
    alice_presence(&mut r);
    let acts = r.run(Input::Offline {
        user: "alice".into(),
        to: (1, 10),
        messages: vec![stored(3, "old")],
    });
    assert_eq!(copies(&acts, "old"), 1, "{acts:?}");
}

#[test]
fn a_live_row_acknowledged_while_a_load_that_read_it_is_under_way_is_not_delivered_again() {
    let mut r = router();
    alice_phone_before_presence(&mut r);
    let mut sent = to_phone(&alice_presence(&mut r));
    sent += to_phone(&r.run(Input::Offline {
        user: "alice".into(),
        to: (1, 10),
        messages: Vec::new(),
    }));
    let live = chat_to(&mut r, "alice@x/phone", "m1");
    let acts = commit_live(&mut r, live);
    assert_eq!(copies(&acts, "m1"), 1);
    sent += to_phone(&acts);
    // a late store asks for a flush; its load is queued ahead of m1's
    // removal, so it reads m1
    let acts = r.run(Input::OfflineStoredLate {
        user: "alice".into(),
    });
    assert!(flushes(&acts, Some((1, 10))), "{acts:?}");
    let acts = frame(&mut r, 1, Frame::Acked { sid: 10, h: sent });
    let [(_, 0, rows)] = &removals(&acts)[..] else {
        panic!("m1 removed by id: {acts:?}")
    };
    let m1 = rows[0];
    let acts = r.run(Input::Offline {
        user: "alice".into(),
        to: (1, 10),
        messages: vec![(m1, stored(m1, "m1").1), stored(m1 + 1, "late")],
    });
    assert_eq!(copies(&acts, "m1"), 0, "acknowledged: {acts:?}");
    assert_eq!(copies(&acts, "late"), 1, "{acts:?}");
}

#[test]
fn stored_rows_acknowledged_while_a_second_load_that_read_them_is_under_way_are_not_delivered_again()
 {
    let mut r = router();
    alice_phone_before_presence(&mut r);
    let mut sent = to_phone(&alice_presence(&mut r));
    let acts = r.run(Input::Offline {
        user: "alice".into(),
        to: (1, 10),
        messages: vec![stored(1, "a"), stored(2, "b")],
    });
    assert_eq!(copies(&acts, "a") + copies(&acts, "b"), 2);
    sent += to_phone(&acts);
    let acts = r.run(Input::OfflineStoredLate {
        user: "alice".into(),
    });
    assert!(flushes(&acts, Some((1, 10))), "{acts:?}");
    // both acknowledged (nothing out any more) before the second load's
    // result, which read them ahead of their removal
    let acts = frame(&mut r, 1, Frame::Acked { sid: 10, h: sent });
    assert_eq!(removals(&acts), vec![("alice".to_owned(), 2, vec![])]);
    let acts = r.run(Input::Offline {
        user: "alice".into(),
        to: (1, 10),
        messages: vec![stored(1, "a"), stored(2, "b"), stored(3, "c")],
    });
    assert_eq!(copies(&acts, "a") + copies(&acts, "b"), 0, "{acts:?}");
    assert_eq!(copies(&acts, "c"), 1, "{acts:?}");
    assert_eq!(r.stored_rows.users(), 1, "c is out");
    sent += to_phone(&acts);
    let acts = frame(&mut r, 1, Frame::Acked { sid: 10, h: sent });
    assert_eq!(removals(&acts), vec![("alice".to_owned(), 3, vec![])]);
    assert_eq!(r.stored_rows.users(), 0, "nothing out, no load under way");
}

#[test]
fn a_session_without_sm_has_one_load_under_way_and_one_asked_for_meanwhile_follows_it() {
    let mut r = router();
    bound(&mut r, 1, 10, "alice@x", "desk");
    let acts = stanza(
        &mut r,
        1,
        10,
        header(Kind::Presence, "alice@x/desk", None, None),
        "<presence/>",
    );
    assert!(flushes(&acts, Some((1, 10))), "{acts:?}");
    for _ in 0..2 {
        let acts = r.run(Input::OfflineStoredLate {
            user: "alice".into(),
        });
        assert!(!flushes(&acts, None), "one under way: {acts:?}");
    }
    let acts = r.run(Input::Offline {
        user: "alice".into(),
        to: (1, 10),
        messages: vec![stored(1, "a")],
    });
    assert_eq!(payloads(&acts).len(), 1, "{acts:?}");
    let asked = acts
        .iter()
        .filter(|a| matches!(a, Action::FlushOffline { to: (1, 10), .. }))
        .count();
    assert_eq!(asked, 1, "the two asked for meanwhile, once: {acts:?}");
    let acts = r.run(Input::Offline {
        user: "alice".into(),
        to: (1, 10),
        messages: vec![stored(2, "b")],
    });
    assert!(!flushes(&acts, None), "{acts:?}");
    assert_eq!(r.stored_rows.users(), 0, "no load under way");
}

#[test]
fn a_failed_load_is_no_longer_under_way_and_its_retry_is_asked_for() {
    let mut r = router();
    alice_phone_before_presence(&mut r);
    alice_presence(&mut r);
    assert_eq!(r.stored_rows.users(), 1, "a load under way");
    r.handle(
        Input::OfflineLoadFailed {
            user: "alice".into(),
            to: (1, 10),
        },
        t0(),
    );
    assert_eq!(r.stored_rows.users(), 0);
    r.handle_timeout(t0() + super::FLUSH_RETRY_FIRST);
    let acts: Vec<Action> = std::iter::from_fn(|| r.poll_action()).collect();
    assert!(flushes(&acts, Some((1, 10))), "retried: {acts:?}");
    assert_eq!(r.stored_rows.users(), 1, "under way again");
}

#[test]
fn a_load_asked_for_again_after_the_session_enabled_sm_holds_new_messages_behind_it() {
    let mut r = router();
    bound(&mut r, 1, 10, "alice@x", "phone");
    bound(&mut r, 3, 30, "bob@x", "pc");
    alice_presence(&mut r);
    // SM comes after the presence's load was asked for; a late store asks
    // for another meanwhile
    sm_enable(&mut r, 1, 10, 60);
    r.run(Input::OfflineStoredLate {
        user: "alice".into(),
    });
    let acts = r.run(Input::Offline {
        user: "alice".into(),
        to: (1, 10),
        messages: Vec::new(),
    });
    assert!(flushes(&acts, Some((1, 10))), "{acts:?}");
    // a new message waits behind the late-stored one
    let acts = chat_to(&mut r, "alice@x/phone", "new");
    assert_eq!(copies(&acts, "new"), 0, "{acts:?}");
    assert!(stored_behind(&acts, "new"), "{acts:?}");
}

/// Whether `acts` store a message carrying `body` for a flush (not as a
/// live row).
fn stored_behind(acts: &[Action], body: &str) -> bool {
    acts.iter().any(|a| {
        matches!(a, Action::StoreOffline { payload, live: None, .. }
            if String::from_utf8_lossy(payload).contains(&format!("<body>{body}</body>")))
    })
}

#[test]
fn a_load_retried_after_the_session_enabled_sm_holds_new_messages_behind_it() {
    let mut r = router();
    bound(&mut r, 1, 10, "alice@x", "phone");
    bound(&mut r, 3, 30, "bob@x", "pc");
    alice_presence(&mut r);
    r.handle(
        Input::OfflineLoadFailed {
            user: "alice".into(),
            to: (1, 10),
        },
        t0(),
    );
    sm_enable(&mut r, 1, 10, 60);
    r.handle_timeout(t0() + super::FLUSH_RETRY_FIRST);
    let acts: Vec<Action> = std::iter::from_fn(|| r.poll_action()).collect();
    assert!(flushes(&acts, Some((1, 10))), "retried: {acts:?}");
    let acts = chat_to(&mut r, "alice@x/phone", "new");
    assert_eq!(copies(&acts, "new"), 0, "{acts:?}");
    assert!(stored_behind(&acts, "new"), "{acts:?}");
}
