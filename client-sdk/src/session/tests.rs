//! The session without sockets: time is passed in, outputs are read back.

use rand::SeedableRng;

use super::*;
use crate::im::{Subscription, SubscriptionRequest};
use crate::muc::{Affiliation, Removal, Role, RoomInvite};

const OWN: &str = "alice@example.org";
const ACK_TIMEOUT: Duration = Duration::from_secs(20);
const PING_INTERVAL: Duration = Duration::from_secs(600);

fn config() -> SessionConfig {
    SessionConfig {
        jid: OWN.into(),
        resource: Some("phone".into()),
        stream_management: true,
        carbons: false,
        resume_max_secs: 0,
        reconnect: true,
        ack_timeout: ACK_TIMEOUT,
        receipts: true,
        message_states: true,
        previous_session: None,
        notify: vec!["urn:xmpp:nick".into()],
        room_ping_interval: Some(PING_INTERVAL),
    }
}

fn xml(s: &str) -> Element {
    Element::parse_in_stream(s.as_bytes()).unwrap()
}

fn drain(s: &mut Session) -> Vec<Output> {
    std::iter::from_fn(|| s.poll_output()).collect()
}

/// What was written, as text.
fn written(outputs: &[Output]) -> Vec<String> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Transmit(b) | Output::TransmitStanza(Outgoing { bytes: b, .. }) => {
                Some(String::from_utf8_lossy(b).into_owned())
            }
            _ => None,
        })
        .collect()
}

/// The session's snapshot, brought up to date from a default one.
fn snapshot(s: &Session) -> Snapshot {
    let mut snapshot = Snapshot::default();
    s.update_snapshot(&mut snapshot);
    snapshot
}

fn events(outputs: &[Output]) -> Vec<Event> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn replies(outputs: &[Output]) -> Vec<(RequestId, Result<Answer, ClientError>)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Reply { id, answer } => Some((*id, answer.clone())),
            _ => None,
        })
        .collect()
}

fn state(id: &str, state: MessageState) -> Event {
    Event::MessageState {
        id: id.into(),
        state,
    }
}

fn message(id: &str) -> Command {
    let bytes = Bytes::from(format!(
        "<message to='bob@example.org' type='chat' id='{id}'><body>{id}</body></message>"
    ));
    Command::Send(Outgoing {
        bytes,
        id: Some(id.into()),
    })
}

fn bound() -> Negotiated {
    Negotiated {
        resumed: None,
        jid: Some(format!("{OWN}/phone")),
        ..Negotiated::default()
    }
}

/// A session whose first connection came up at `t0` with stream
/// management enabled (SM id `sm-1`); its outputs so far are drained.
fn connected(config: SessionConfig, t0: Instant) -> Session {
    let mut s = Session::new(config, StdRng::seed_from_u64(7));
    s.on_connected(t0, bound());
    let first = drain(&mut s);
    assert_eq!(
        written(&first),
        vec!["<enable xmlns=\"urn:xmpp:sm:3\" resume=\"true\"/>"]
    );
    assert!(events(&first).is_empty(), "no Reconnected for the first");
    s.on_element(
        t0,
        xml("<enabled xmlns='urn:xmpp:sm:3' id='sm-1' resume='true'/>"),
    );
    assert!(drain(&mut s).is_empty());
    s
}

/// The id the session gave the IQ it wrote last.
fn last_iq_id(outputs: &[Output]) -> String {
    let text = written(outputs)
        .into_iter()
        .rfind(|w| w.starts_with("<iq"))
        .expect("an IQ written");
    xml(&text).attr("id").expect("an id").to_owned()
}

#[test]
fn an_unanswered_ack_request_declares_the_connection_dead_exactly_at_its_deadline() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    s.command(t0, message("m1"));
    let out = drain(&mut s);
    assert_eq!(written(&out).len(), 2);
    assert_eq!(written(&out)[1], "<r xmlns=\"urn:xmpp:sm:3\"/>");
    assert_eq!(events(&out), vec![state("m1", MessageState::Sent)]);
    let deadline = t0 + ACK_TIMEOUT;
    assert_eq!(s.poll_timeout(), Some(deadline));
    // a second stanza does not ask again, nor move the deadline
    s.command(t0 + Duration::from_secs(5), message("m2"));
    assert_eq!(written(&drain(&mut s)).len(), 1);
    assert_eq!(s.poll_timeout(), Some(deadline));
    s.handle_timeout(deadline - Duration::from_nanos(1));
    assert!(drain(&mut s).is_empty());
    s.handle_timeout(deadline);
    assert_eq!(
        drain(&mut s),
        vec![
            Output::CloseConnection { clean: false },
            Output::Event(Event::ConnectionLost(
                "no acknowledgement from the server in time".into()
            )),
            Output::Connect {
                resumption: Some(("sm-1".into(), 0)),
                resource: Some("phone".into()),
            },
        ]
    );
}

#[test]
fn an_answered_ack_request_clears_its_deadline_and_acknowledges_the_messages() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    s.command(t0, message("m1"));
    drain(&mut s);
    s.on_element(t0, xml("<a xmlns='urn:xmpp:sm:3' h='1'/>"));
    assert_eq!(
        events(&drain(&mut s)),
        vec![state("m1", MessageState::Acknowledged)]
    );
    assert_eq!(s.poll_timeout(), None);
    s.handle_timeout(t0 + ACK_TIMEOUT * 2);
    assert!(drain(&mut s).is_empty());
}

#[test]
fn the_server_asking_for_an_ack_gets_our_count_of_its_stanzas() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    s.on_element(t0, xml("<presence from='bob@example.org/desk'/>"));
    s.on_element(t0, xml("<presence from='carol@example.org/pc'/>"));
    drain(&mut s);
    s.on_element(t0, xml("<r xmlns='urn:xmpp:sm:3'/>"));
    assert_eq!(
        written(&drain(&mut s)),
        vec!["<a xmlns=\"urn:xmpp:sm:3\" h=\"2\"/>"]
    );
    assert_eq!(s.sm.resumption(), Some(("sm-1".into(), 2)));
}

#[test]
fn reconnection_starts_at_once_then_backs_off_with_jitter_up_to_the_cap_and_resets() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    s.on_stream_end("stream ended".into());
    let out = drain(&mut s);
    assert_eq!(
        out,
        vec![
            Output::CloseConnection { clean: false },
            Output::Event(Event::ConnectionLost("stream ended".into())),
            Output::Connect {
                resumption: Some(("sm-1".into(), 0)),
                resource: Some("phone".into()),
            },
        ]
    );
    let mut now = t0;
    let mut delays = Vec::new();
    for attempt in 1..=14u32 {
        s.on_connect_failed(now, ClientError::Unreachable("no route".into()));
        assert!(drain(&mut s).is_empty());
        let due = s.poll_timeout().expect("a retry is scheduled");
        let delay = due - now;
        let ceiling = RECONNECT.ceiling(attempt);
        assert!(
            delay >= ceiling / 2 && delay <= ceiling,
            "attempt {attempt}: {delay:?} against {ceiling:?}"
        );
        assert!(delay <= RECONNECT.ceiling(u32::MAX));
        delays.push(delay);
        s.handle_timeout(due - Duration::from_nanos(1));
        assert!(drain(&mut s).is_empty(), "not before it is due");
        now = due;
        s.handle_timeout(now);
        assert!(matches!(drain(&mut s).as_slice(), [Output::Connect { .. }]));
    }
    // growing early on, capped at the end
    assert!(delays[3] > delays[0]);
    assert_eq!(RECONNECT.ceiling(14), RECONNECT.ceiling(u32::MAX));
    s.on_connected(
        now,
        Negotiated {
            resumed: Some(0),
            jid: None,
            ..Negotiated::default()
        },
    );
    assert_eq!(
        events(&drain(&mut s)),
        vec![Event::Reconnected { resumed: true }]
    );
    // lost again: the count starts over, the first attempt goes at once
    let later = now + Duration::from_secs(600);
    s.on_stream_end("again".into());
    let out = drain(&mut s);
    assert!(
        matches!(out.last(), Some(Output::Connect { .. })),
        "{out:?}"
    );
    s.on_connect_failed(later, ClientError::Timeout);
    let delay = s.poll_timeout().unwrap() - later;
    assert!(delay >= RECONNECT.ceiling(1) / 2 && delay <= RECONNECT.ceiling(1));
}

#[test]
fn a_refused_login_while_reconnecting_ends_the_session() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    s.on_stream_end("gone".into());
    drain(&mut s);
    s.on_connect_failed(t0, ClientError::Auth("not-authorized".into()));
    assert_eq!(
        drain(&mut s),
        vec![
            Output::Event(Event::StreamError(
                "authentication failed: not-authorized".into()
            )),
            Output::Event(Event::Disconnected),
            Output::Ended,
        ]
    );
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn a_temporary_auth_failure_while_reconnecting_is_retried_with_backoff_and_loses_nothing() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    s.command(t0, message("m1"));
    drain(&mut s);
    s.on_stream_end("gone".into());
    drain(&mut s);
    // RFC 6120 §6.5.12: the server (a CM whose core is away) asks to retry later
    let mut now = t0;
    for attempt in 1..=4u32 {
        s.on_connect_failed(now, ClientError::Auth("temporary-auth-failure".into()));
        assert_eq!(
            drain(&mut s),
            vec![],
            "attempt {attempt}: the session goes on"
        );
        let due = s.poll_timeout().expect("a retry is scheduled");
        let ceiling = RECONNECT.ceiling(attempt);
        assert!(
            due - now >= ceiling / 2 && due - now <= ceiling,
            "attempt {attempt}: {:?} against {ceiling:?}",
            due - now
        );
        s.handle_timeout(due - Duration::from_nanos(1));
        assert_eq!(drain(&mut s), vec![], "not before it is due");
        now = due;
        s.handle_timeout(now);
        assert_eq!(
            drain(&mut s),
            vec![Output::Connect {
                resumption: Some(("sm-1".into(), 0)),
                resource: Some("phone".into()),
            }]
        );
    }
    // the core is back: the session resumes and resends what it kept
    s.on_connected(
        now,
        Negotiated {
            resumed: Some(0),
            jid: None,
            ..Negotiated::default()
        },
    );
    let out = drain(&mut s);
    assert!(written(&out)[0].contains("id='m1'"), "{out:?}");
    assert_eq!(
        events(&out),
        vec![
            state("m1", MessageState::Sent),
            Event::Reconnected { resumed: true }
        ]
    );
}

#[test]
fn without_reconnection_a_lost_connection_ends_the_session() {
    let t0 = Instant::now();
    let mut s = connected(
        SessionConfig {
            reconnect: false,
            ..config()
        },
        t0,
    );
    s.on_stream_end("stream ended".into());
    let out = drain(&mut s);
    assert!(!out.iter().any(|o| matches!(o, Output::Connect { .. })));
    assert_eq!(out.last(), Some(&Output::Ended));
}

#[test]
fn after_resumption_what_the_servers_h_does_not_cover_is_resent_then_the_outbox() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    for id in ["m1", "m2", "m3"] {
        s.command(t0, message(id));
    }
    s.on_element(t0, xml("<a xmlns='urn:xmpp:sm:3' h='1'/>"));
    s.on_element(t0, xml("<message from='bob@example.org/desk' id='b1'/>"));
    drain(&mut s);
    s.on_stream_end("stream ended".into());
    let out = drain(&mut s);
    assert_eq!(
        out.last(),
        Some(&Output::Connect {
            resumption: Some(("sm-1".into(), 1)),
            resource: Some("phone".into()),
        })
    );
    // written while offline: kept in the outbox
    s.command(t0, message("m4"));
    assert_eq!(
        events(&drain(&mut s)),
        vec![state("m4", MessageState::Queued)]
    );
    // the server got m1 and m2
    s.on_connected(
        t0,
        Negotiated {
            resumed: Some(2),
            jid: None,
            ..Negotiated::default()
        },
    );
    let out = drain(&mut s);
    let w = written(&out);
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(w[0].contains("id='m3'"), "{w:?}");
    assert!(w[1].contains("id='m4'"), "{w:?}");
    assert_eq!(w[2], "<r xmlns=\"urn:xmpp:sm:3\"/>");
    assert_eq!(
        events(&out),
        vec![
            state("m2", MessageState::Acknowledged),
            state("m3", MessageState::Sent),
            state("m4", MessageState::Sent),
            Event::Reconnected { resumed: true },
        ]
    );
    // counting goes on from the server's h
    s.on_element(t0, xml("<a xmlns='urn:xmpp:sm:3' h='4'/>"));
    assert_eq!(
        events(&drain(&mut s)),
        vec![
            state("m3", MessageState::Acknowledged),
            state("m4", MessageState::Acknowledged),
        ]
    );
}

#[test]
fn after_a_new_login_everything_unacknowledged_is_resent_with_the_presence() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    s.command(t0, Command::Presence(Bytes::from_static(b"<presence/>")));
    s.on_element(t0, xml("<a xmlns='urn:xmpp:sm:3' h='1'/>"));
    s.command(t0, Command::Active(false));
    s.command(t0, message("m1"));
    drain(&mut s);
    s.on_stream_end("stream ended".into());
    drain(&mut s);
    s.on_connected(
        t0,
        Negotiated {
            resumed: None,
            jid: Some(format!("{OWN}/other")),
            ..Negotiated::default()
        },
    );
    // (an unacknowledged presence would go out twice: kept, and resent)
    let w = written(&drain(&mut s));
    assert_eq!(
        w,
        vec![
            "<enable xmlns=\"urn:xmpp:sm:3\" resume=\"true\"/>".to_owned(),
            "<inactive xmlns=\"urn:xmpp:csi:0\"/>".to_owned(),
            "<presence/>".to_owned(),
            "<message to='bob@example.org' type='chat' id='m1'><body>m1</body></message>"
                .to_owned(),
            "<r xmlns=\"urn:xmpp:sm:3\"/>".to_owned(),
        ]
    );
    // the next login asks for the resource the server gave this one
    s.on_stream_end("again".into());
    assert_eq!(
        drain(&mut s).last(),
        Some(&Output::Connect {
            resumption: None,
            resource: Some("other".into()),
        })
    );
}

#[test]
fn a_presence_changed_offline_is_sent_even_when_the_session_resumes() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    s.command(t0, Command::Presence(Bytes::from_static(b"<presence/>")));
    drain(&mut s);
    s.on_stream_end("stream ended".into());
    drain(&mut s);
    s.command(
        t0,
        Command::Presence(Bytes::from_static(
            b"<presence><show>away</show></presence>",
        )),
    );
    drain(&mut s);
    s.on_connected(
        t0,
        Negotiated {
            resumed: Some(1),
            jid: None,
            ..Negotiated::default()
        },
    );
    let w = written(&drain(&mut s));
    assert_eq!(w[0], "<presence><show>away</show></presence>");
    assert_eq!(w.len(), 2, "sent once, then <r/>: {w:?}");
}

#[test]
fn the_outbox_is_bounded() {
    let t0 = Instant::now();
    let mut s = connected(
        SessionConfig {
            message_states: false,
            ..config()
        },
        t0,
    );
    s.on_stream_end("stream ended".into());
    drain(&mut s);
    for i in 0..MAX_OUTBOX {
        s.command(t0, message(&i.to_string()));
    }
    assert!(drain(&mut s).is_empty());
    s.command(
        t0,
        Command::Request(RequestId(1), Request::Iq(xml("<iq type='get'/>"))),
    );
    assert_eq!(
        replies(&drain(&mut s)),
        vec![(
            RequestId(1),
            Err(ClientError::Busy("the outbox is full".into()))
        )]
    );
}

#[test]
fn duplicate_messages_are_dropped_counted_and_not_receipted_twice() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    let m = "<message from='bob@example.org/desk' to='alice@example.org/phone' type='chat' id='b1'>\
             <body>hi</body><request xmlns='urn:xmpp:receipts'/></message>";
    s.on_element(t0, xml(m));
    let out = drain(&mut s);
    let ev = events(&out);
    assert!(matches!(&ev[..], [Event::Message(m)] if m.body.as_deref() == Some("hi")));
    let receipt = written(&out);
    assert!(receipt[0].contains("<received xmlns=\"urn:xmpp:receipts\" id=\"b1\"/>"));
    assert!(receipt[0].contains("to=\"bob@example.org/desk\""));
    s.on_element(t0, xml(m));
    let out = drain(&mut s);
    assert!(events(&out).is_empty());
    assert!(!written(&out).iter().any(|w| w.contains("received")));
    // same id from someone else is no duplicate
    s.on_element(
        t0,
        xml("<message from='carol@example.org/pc' type='chat' id='b1'><body>yo</body></message>"),
    );
    assert_eq!(events(&drain(&mut s)).len(), 1);
    assert_eq!(snapshot(&s).duplicates_dropped, 1);
}

#[test]
fn a_stanza_id_counts_only_from_the_own_archive_and_a_delay_only_from_the_server() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    // forgeries first: the SDK must not take the first one it sees
    let m = "<message from='bob@example.org/desk' to='alice@example.org/phone' type='chat' id='c1'>\
             <body>hi</body>\
             <delay xmlns='urn:xmpp:delay' from='bob@example.org/desk' stamp='1999-01-01T00:00:00Z'/>\
             <delay xmlns='urn:xmpp:delay' from='evil.example' stamp='1998-01-01T00:00:00Z'/>\
             <delay xmlns='urn:xmpp:delay' from='example.org' stamp='2026-01-01T00:00:00Z'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='bob@example.org' id='forged'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' id='no-by'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='alice@example.org' id='real'/></message>";
    s.on_element(t0, xml(m));
    let ev = events(&drain(&mut s));
    let [Event::Message(m)] = &ev[..] else {
        panic!("{ev:?}")
    };
    assert_eq!(m.stanza_id.as_deref(), Some("real"));
    assert_eq!(m.delay.as_deref(), Some("2026-01-01T00:00:00Z"));
    // only forgeries: none taken
    let m = "<message from='bob@example.org/desk' type='chat' id='c2'><body>x</body>\
             <delay xmlns='urn:xmpp:delay' stamp='1999-01-01T00:00:00Z'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='example.org' id='forged'/></message>";
    s.on_element(t0, xml(m));
    let ev = events(&drain(&mut s));
    let [Event::Message(m)] = &ev[..] else {
        panic!("{ev:?}")
    };
    assert_eq!((m.stanza_id.as_deref(), m.delay.as_deref()), (None, None));
}

#[test]
fn a_delivery_receipt_moves_the_message_to_delivered() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    s.on_element(
        t0,
        xml("<message from='bob@example.org/desk' id='r1'><received xmlns='urn:xmpp:receipts' id='m1'/></message>"),
    );
    assert_eq!(
        events(&drain(&mut s)),
        vec![state("m1", MessageState::Delivered)]
    );
}

#[test]
fn iq_replies_go_to_the_request_with_their_id_and_unanswered_ones_time_out() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    let ping = "<iq type='get' to='example.org'><ping xmlns='urn:xmpp:ping'/></iq>";
    s.command(t0, Command::Request(RequestId(1), Request::Iq(xml(ping))));
    let first = last_iq_id(&drain(&mut s));
    s.command(t0, Command::Request(RequestId(2), Request::Iq(xml(ping))));
    let second = last_iq_id(&drain(&mut s));
    let t1 = t0 + Duration::from_secs(1);
    s.command(t1, Command::Request(RequestId(3), Request::Iq(xml(ping))));
    let third = last_iq_id(&drain(&mut s));
    assert_ne!(first, second);
    s.on_element(t1, xml("<a xmlns='urn:xmpp:sm:3' h='3'/>"));
    // answered out of order
    s.on_element(t0, xml(&format!("<iq type='result' id='{second}'/>")));
    s.on_element(
        t0,
        xml(&format!(
            "<iq type='error' id='{first}'><error type='cancel'>\
             <service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        )),
    );
    let got = replies(&drain(&mut s));
    assert_eq!(got.len(), 2);
    assert!(
        matches!(&got[0], (RequestId(2), Ok(Answer::Iq(r))) if r.id == second && r.error.is_none())
    );
    assert!(matches!(&got[1], (RequestId(1), Ok(Answer::Iq(r)))
        if r.error.as_deref() == Some("service-unavailable")));
    // an answer nobody waits for is an event
    s.on_element(t0, xml(&format!("<iq type='result' id='{first}'/>")));
    assert!(matches!(&events(&drain(&mut s))[..], [Event::Iq(r)] if r.id == first));
    // the third times out 30 s after it was asked, exactly
    assert_eq!(s.poll_timeout(), Some(t1 + IQ_TIMEOUT));
    s.handle_timeout(t1 + IQ_TIMEOUT - Duration::from_nanos(1));
    assert!(replies(&drain(&mut s)).is_empty());
    s.handle_timeout(t1 + IQ_TIMEOUT);
    assert_eq!(
        replies(&drain(&mut s)),
        vec![(RequestId(3), Err(ClientError::Timeout))]
    );
    // too late now
    s.on_element(t0, xml(&format!("<iq type='result' id='{third}'/>")));
    assert!(replies(&drain(&mut s)).is_empty());
}

#[test]
fn requests_waiting_when_the_session_ends_fail_as_closed() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    s.command(
        t0,
        Command::Request(RequestId(4), Request::Iq(xml("<iq type='get'/>"))),
    );
    drain(&mut s);
    s.command(t0, Command::Abort);
    assert_eq!(
        drain(&mut s),
        vec![
            Output::CloseConnection { clean: false },
            Output::Reply {
                id: RequestId(4),
                answer: Err(ClientError::Closed)
            },
            Output::Event(Event::Disconnected),
            Output::Ended,
        ]
    );
}

#[test]
fn roster_pushes_from_the_own_account_are_answered_and_reported() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    s.on_element(
        t0,
        xml("<iq type='set' id='push-1' from='alice@example.org'><query xmlns='jabber:iq:roster'>\
             <item jid='bob@example.org' subscription='both' name='Bob'><group>Friends</group></item>\
             </query></iq>"),
    );
    let out = drain(&mut s);
    assert_eq!(
        written(&out)[0],
        "<iq type=\"result\" id=\"push-1\"/>",
        "answered (RFC 6121 §2.1.6)"
    );
    assert_eq!(
        events(&out),
        vec![Event::RosterPush(RosterItem {
            jid: "bob@example.org".into(),
            name: Some("Bob".into()),
            groups: vec!["Friends".into()],
            subscription: Subscription::Both,
            pending: false,
        })]
    );
    // a "push" from someone else is neither answered nor a roster change
    s.on_element(
        t0,
        xml(
            "<iq type='set' id='push-2' from='mallory@example.org'><query xmlns='jabber:iq:roster'>\
             <item jid='bob@example.org' subscription='remove'/></query></iq>",
        ),
    );
    let out = drain(&mut s);
    assert!(!written(&out).iter().any(|w| w.contains("push-2")));
    assert!(matches!(&events(&out)[..], [Event::Iq(r)] if r.id == "push-2"));
}

#[test]
fn a_new_login_fetches_the_roster_again_once_the_app_asked_for_it() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    s.command(t0, Command::Request(RequestId(1), Request::Roster));
    let id = last_iq_id(&drain(&mut s));
    s.on_element(
        t0,
        xml(&format!(
            "<iq type='result' id='{id}'><query xmlns='jabber:iq:roster'/></iq>"
        )),
    );
    assert!(matches!(
        &replies(&drain(&mut s))[..],
        [(RequestId(1), Ok(Answer::Iq(_)))]
    ));
    s.on_element(t0, xml("<a xmlns='urn:xmpp:sm:3' h='1'/>"));
    s.on_stream_end("stream ended".into());
    drain(&mut s);
    s.on_connected(t0, bound());
    let out = drain(&mut s);
    let refresh = last_iq_id(&out);
    assert!(written(&out).iter().any(|w| w.contains("jabber:iq:roster")));
    s.on_element(
        t0,
        xml(&format!(
            "<iq type='result' id='{refresh}'><query xmlns='jabber:iq:roster'>\
             <item jid='bob@example.org' subscription='to'/>\
             <item jid='carol@example.org' ask='subscribe'/></query></iq>"
        )),
    );
    let ev = events(&drain(&mut s));
    assert_eq!(ev.len(), 2);
    assert!(matches!(&ev[0], Event::RosterPush(i) if i.subscription == Subscription::To));
    assert!(matches!(&ev[1], Event::RosterPush(i) if i.pending));
}

#[test]
fn carbons_are_enabled_at_each_new_login_and_their_answer_is_not_an_event() {
    let t0 = Instant::now();
    let mut s = Session::new(
        SessionConfig {
            carbons: true,
            ..config()
        },
        StdRng::seed_from_u64(1),
    );
    s.on_connected(t0, bound());
    let out = drain(&mut s);
    assert!(written(&out)[1].contains("urn:xmpp:carbons:2"));
    let id = last_iq_id(&out);
    s.on_element(t0, xml(&format!("<iq type='result' id='{id}'/>")));
    assert!(drain(&mut s).is_empty());
}

#[test]
fn archive_results_are_collected_into_the_page_their_query_closes() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    let query = HistoryQuery {
        with: Some("bob@example.org".into()),
        max: Some(2),
        ..HistoryQuery::default()
    };
    s.command(t0, Command::Request(RequestId(5), Request::History(query)));
    let out = drain(&mut s);
    let id = last_iq_id(&out);
    assert!(written(&out)[0].contains(&format!("queryid=\"{id}\"")));
    let result = |archive_id: &str, body: &str| {
        format!(
            "<message to='alice@example.org/phone'><result xmlns='urn:xmpp:mam:2' queryid='{id}' id='{archive_id}'>\
             <forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='urn:xmpp:delay' stamp='2024-01-01T00:00:00Z'/>\
             <message xmlns='jabber:client' from='bob@example.org/desk' type='chat'><body>{body}</body></message>\
             </forwarded></result></message>"
        )
    };
    s.on_element(t0, xml(&result("a1", "one")));
    s.on_element(t0, xml(&result("a2", "two")));
    // results of a query nobody waits for are dropped
    s.on_element(t0, xml(&result("a3", "three").replace(&id, "other")));
    assert!(drain(&mut s).is_empty(), "results are not events");
    s.on_element(
        t0,
        xml(&format!(
            "<iq type='result' id='{id}'><fin xmlns='urn:xmpp:mam:2' complete='true'>\
             <set xmlns='http://jabber.org/protocol/rsm'><first>a1</first><last>a2</last></set></fin></iq>"
        )),
    );
    let got = replies(&drain(&mut s));
    let [(RequestId(5), Ok(Answer::History(page)))] = &got[..] else {
        panic!("{got:?}");
    };
    assert!(page.complete);
    assert_eq!(page.first.as_deref(), Some("a1"));
    assert_eq!(page.last.as_deref(), Some("a2"));
    let bodies: Vec<_> = page
        .messages
        .iter()
        .map(|m| (m.id.as_str(), m.message.body.as_deref().unwrap_or_default()))
        .collect();
    assert_eq!(bodies, vec![("a1", "one"), ("a2", "two")]);
    assert_eq!(
        page.messages[0].stamp.as_deref(),
        Some("2024-01-01T00:00:00Z")
    );
}

#[test]
fn a_refused_archive_query_is_a_stanza_error() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    s.command(
        t0,
        Command::Request(RequestId(5), Request::History(HistoryQuery::default())),
    );
    let id = last_iq_id(&drain(&mut s));
    s.on_element(
        t0,
        xml(&format!(
            "<iq type='error' id='{id}'><error type='modify'>\
             <bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        )),
    );
    assert_eq!(
        replies(&drain(&mut s)),
        vec![(
            RequestId(5),
            Err(ClientError::StanzaError("bad-request".into()))
        )]
    );
}

#[test]
fn subscription_requests_and_presence_become_events() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    s.on_element(
        t0,
        xml("<presence from='bob@example.org/desk' type='subscribe'/>"),
    );
    s.on_element(
        t0,
        xml("<presence from='bob@example.org/desk'><priority>5</priority></presence>"),
    );
    let ev = events(&drain(&mut s));
    assert_eq!(
        ev[0],
        Event::Subscription {
            from: "bob@example.org".into(),
            kind: SubscriptionRequest::Subscribe,
        }
    );
    assert!(matches!(&ev[1], Event::Presence(p) if p.available && p.priority == 5));
}

#[test]
fn transient_stream_errors_reconnect_and_final_ones_end_the_session() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    let error = |condition: &str| {
        xml(&format!(
            "<stream:error><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
        ))
    };
    s.on_element(t0, error("system-shutdown"));
    let out = drain(&mut s);
    assert_eq!(
        out[0],
        Output::Event(Event::StreamError("system-shutdown".into()))
    );
    assert!(matches!(out.last(), Some(Output::Connect { .. })));
    s.on_connected(
        t0,
        Negotiated {
            resumed: Some(0),
            jid: None,
            ..Negotiated::default()
        },
    );
    drain(&mut s);
    s.on_element(t0, error("conflict"));
    assert_eq!(
        drain(&mut s),
        vec![
            Output::Event(Event::StreamError("conflict".into())),
            Output::CloseConnection { clean: false },
            Output::Event(Event::Disconnected),
            Output::Ended,
        ]
    );
}

#[test]
fn a_server_that_stops_reading_has_two_seconds_for_its_last_words() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    s.on_write_failed(t0, "stopped by peer: error 0", true, None);
    assert_eq!(s.poll_timeout(), Some(t0 + LAST_WORDS));
    // nothing more is written meanwhile: stanzas wait in the outbox
    s.command(t0, message("m1"));
    let out = drain(&mut s);
    assert!(written(&out).is_empty());
    assert_eq!(events(&out), vec![state("m1", MessageState::Queued)]);
    // its reason arrives in time: the session ends for it
    s.on_element(
        t0,
        xml("<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"),
    );
    assert_eq!(drain(&mut s).last(), Some(&Output::Ended));

    // no reason in time: the connection counts as lost at the deadline
    let mut s = connected(config(), t0);
    s.on_write_failed(t0, "stopped by peer: error 0", true, None);
    s.handle_timeout(t0 + LAST_WORDS - Duration::from_nanos(1));
    assert!(drain(&mut s).is_empty());
    s.handle_timeout(t0 + LAST_WORDS);
    let out = drain(&mut s);
    assert_eq!(
        events(&out),
        vec![Event::ConnectionLost(
            "write: stopped by peer: error 0".into()
        )]
    );
    assert!(matches!(out.last(), Some(Output::Connect { .. })));
}

#[test]
fn any_other_write_failure_loses_the_connection_at_once() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    s.on_write_failed(t0, "connection lost", false, None);
    let out = drain(&mut s);
    assert_eq!(out[0], Output::CloseConnection { clean: false });
    assert!(matches!(out.last(), Some(Output::Connect { .. })));
}

#[test]
fn a_clean_close_acknowledges_ends_the_stream_and_waits_for_the_servers_end() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    s.on_element(
        t0,
        xml("<message from='bob@example.org/desk'><body>x</body></message>"),
    );
    drain(&mut s);
    s.command(t0, Command::Close);
    let out = drain(&mut s);
    assert_eq!(
        written(&out),
        vec!["<a xmlns=\"urn:xmpp:sm:3\" h=\"1\"/>", "</stream:stream>"]
    );
    assert_eq!(out.last(), Some(&Output::FinishSending));
    assert_eq!(s.poll_timeout(), Some(t0 + CLOSE_WAIT));
    // the server's goodbye traffic is not for the app
    s.on_element(
        t0,
        xml("<message from='bob@example.org/desk'><body>y</body></message>"),
    );
    assert!(drain(&mut s).is_empty());
    s.on_stream_end("server closed the stream".into());
    assert_eq!(
        drain(&mut s),
        vec![
            Output::CloseConnection { clean: true },
            Output::Event(Event::Disconnected),
            Output::Ended,
        ]
    );

    // a server that never ends its stream: closed at the deadline
    let mut s = connected(config(), t0);
    s.command(t0, Command::Close);
    drain(&mut s);
    s.handle_timeout(t0 + CLOSE_WAIT - Duration::from_nanos(1));
    assert!(drain(&mut s).is_empty());
    s.handle_timeout(t0 + CLOSE_WAIT);
    assert_eq!(drain(&mut s)[0], Output::CloseConnection { clean: true });
}

#[test]
fn closing_while_offline_fails_what_never_reached_the_server() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    s.command(t0, message("m1"));
    s.on_stream_end("stream ended".into());
    s.command(t0, message("m2"));
    drain(&mut s);
    s.command(t0, Command::Close);
    let out = drain(&mut s);
    let failed = |id: &str| state(id, MessageState::Failed("session closed".into()));
    assert_eq!(
        events(&out),
        vec![failed("m2"), failed("m1"), Event::Disconnected]
    );
    assert!(written(&out).is_empty());
    assert_eq!(out.last(), Some(&Output::Ended));
}

#[test]
fn a_saved_session_resumed_at_the_first_connection_continues_its_counters() {
    let t0 = Instant::now();
    let mut s = Session::new(
        SessionConfig {
            previous_session: Some(("sm-old".into(), 20)),
            ..config()
        },
        StdRng::seed_from_u64(1),
    );
    s.on_connected(
        t0,
        Negotiated {
            resumed: Some(3),
            jid: None,
            ..Negotiated::default()
        },
    );
    let out = drain(&mut s);
    assert!(
        written(&out).is_empty(),
        "no <enable/>: the session goes on"
    );
    assert!(events(&out).is_empty());
    s.on_element(
        t0,
        xml("<message from='bob@example.org/desk'><body>x</body></message>"),
    );
    drain(&mut s);
    assert_eq!(snapshot(&s).resumption, Some(("sm-old".into(), 21)));
    s.command(t0, message("m1"));
    drain(&mut s);
    s.on_element(t0, xml("<a xmlns='urn:xmpp:sm:3' h='4'/>"));
    assert_eq!(
        events(&drain(&mut s)),
        vec![state("m1", MessageState::Acknowledged)]
    );
}

#[test]
fn a_saved_session_the_server_no_longer_holds_becomes_a_new_one() {
    let t0 = Instant::now();
    let mut s = Session::new(
        SessionConfig {
            previous_session: Some(("sm-old".into(), 20)),
            ..config()
        },
        StdRng::seed_from_u64(1),
    );
    s.on_connected(t0, bound());
    assert_eq!(
        written(&drain(&mut s)),
        vec!["<enable xmlns=\"urn:xmpp:sm:3\" resume=\"true\"/>"]
    );
    assert_eq!(snapshot(&s).resumption, None);
}

#[test]
fn the_same_seed_makes_the_same_ids_and_delays() {
    let run = |seed: u64| {
        let t0 = Instant::now();
        let mut s = Session::new(config(), StdRng::seed_from_u64(seed));
        s.on_connected(t0, bound());
        s.command(
            t0,
            Command::Request(RequestId(1), Request::Iq(xml("<iq type='get'/>"))),
        );
        let id = last_iq_id(&drain(&mut s));
        s.on_stream_end("gone".into());
        s.on_connect_failed(t0, ClientError::Timeout);
        (id, s.poll_timeout().map(|at| at - t0))
    };
    assert_eq!(run(3), run(3));
    assert_ne!(run(3).0, run(4).0);
}

#[test]
fn an_inactive_state_is_sent_on_every_new_connection() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    s.command(t0, Command::Active(false));
    assert_eq!(
        written(&drain(&mut s)),
        vec!["<inactive xmlns=\"urn:xmpp:csi:0\"/>"]
    );
    s.on_stream_end("gone".into());
    s.command(t0, Command::Active(false));
    drain(&mut s);
    s.on_connected(
        t0,
        Negotiated {
            resumed: Some(0),
            jid: None,
            ..Negotiated::default()
        },
    );
    assert_eq!(
        written(&drain(&mut s)),
        vec!["<inactive xmlns=\"urn:xmpp:csi:0\"/>"]
    );
}

#[test]
fn the_snapshot_changes_only_when_the_resumption_state_or_the_duplicates_do() {
    let t0 = Instant::now();
    let mut s = Session::new(config(), StdRng::seed_from_u64(7));
    let mut seen = Snapshot::default();
    assert!(!s.update_snapshot(&mut seen), "nothing resumable yet");
    s.on_connected(t0, bound());
    s.on_element(
        t0,
        xml("<enabled xmlns='urn:xmpp:sm:3' id='sm-1' resume='true'/>"),
    );
    assert!(s.update_snapshot(&mut seen));
    assert_eq!(seen.resumption, Some(("sm-1".into(), 0)));
    assert!(!s.update_snapshot(&mut seen), "unchanged");
    let m = "<message from='bob@example.org/desk' type='chat' id='b1'><body>hi</body></message>";
    s.on_element(t0, xml(m));
    assert!(s.update_snapshot(&mut seen));
    assert_eq!(seen.resumption, Some(("sm-1".into(), 1)));
    s.on_element(t0, xml(m));
    assert!(s.update_snapshot(&mut seen));
    assert_eq!(
        seen,
        Snapshot {
            resumption: Some(("sm-1".into(), 2)),
            duplicates_dropped: 1,
        }
    );
    // the server refuses to resume: a new session, nothing to resume yet
    s.on_stream_end("gone".into());
    s.on_connected(t0, bound());
    assert!(s.update_snapshot(&mut seen));
    assert_eq!(seen.resumption, None);
    assert_eq!(seen.duplicates_dropped, 1);
}

/// A session without stream management whose first connection came up at
/// `t0`; its outputs so far are drained.
fn connected_without_sm(t0: Instant) -> Session {
    let mut s = Session::new(
        SessionConfig {
            stream_management: false,
            ..config()
        },
        StdRng::seed_from_u64(7),
    );
    s.on_connected(t0, bound());
    assert!(drain(&mut s).is_empty());
    s
}

/// Hands out outputs up to the first stanza transmit, as the driver does,
/// and returns that stanza.
fn next_stanza(s: &mut Session) -> Outgoing {
    loop {
        match s.poll_output() {
            Some(Output::TransmitStanza(out)) => return out,
            Some(_) => {}
            None => panic!("no stanza to write"),
        }
    }
}

#[test]
fn without_stream_management_stanzas_whose_write_failed_go_back_to_the_outbox_in_order() {
    let t0 = Instant::now();
    let mut s = connected_without_sm(t0);
    for id in ["m1", "m2", "m3"] {
        s.command(t0, message(id));
    }
    // the driver writes m1, which fails; m2 and m3 wait in the session's queue
    let m1 = next_stanza(&mut s);
    assert_eq!(m1.id.as_deref(), Some("m1"));
    s.on_write_failed(t0, "stopped by peer: error 0", true, Some(m1));
    let out = drain(&mut s);
    assert!(written(&out).is_empty(), "{out:?}");
    // (their Sent was not handed out: the app never hears it)
    assert_eq!(
        events(&out),
        vec![
            state("m1", MessageState::Queued),
            state("m2", MessageState::Queued),
            state("m3", MessageState::Queued),
        ]
    );
    // written meanwhile: behind them
    s.command(t0, message("m4"));
    assert_eq!(
        events(&drain(&mut s)),
        vec![state("m4", MessageState::Queued)]
    );
    s.handle_timeout(t0 + LAST_WORDS);
    assert!(matches!(
        drain(&mut s).last(),
        Some(Output::Connect {
            resumption: None,
            ..
        })
    ));
    s.on_connected(t0 + LAST_WORDS, bound());
    let out = drain(&mut s);
    let ids: Vec<String> = written(&out)
        .iter()
        .map(|w| xml(w).attr("id").unwrap_or_default().to_owned())
        .collect();
    assert_eq!(ids, vec!["m1", "m2", "m3", "m4"]);
    assert_eq!(
        events(&out),
        vec![
            state("m1", MessageState::Sent),
            state("m2", MessageState::Sent),
            state("m3", MessageState::Sent),
            state("m4", MessageState::Sent),
            Event::Reconnected { resumed: false },
        ]
    );
}

#[test]
fn without_stream_management_a_stanza_whose_write_failed_is_sent_again_after_a_reconnection() {
    let t0 = Instant::now();
    let mut s = connected_without_sm(t0);
    s.command(t0, message("m1"));
    let m1 = next_stanza(&mut s);
    s.on_write_failed(t0, "connection lost", false, Some(m1));
    let out = drain(&mut s);
    assert_eq!(
        events(&out),
        vec![
            state("m1", MessageState::Queued),
            Event::ConnectionLost("write: connection lost".into()),
        ]
    );
    assert!(matches!(out.last(), Some(Output::Connect { .. })));
    s.on_connected(t0, bound());
    let w = written(&drain(&mut s));
    assert_eq!(w.len(), 1);
    assert!(w[0].contains("id='m1'"), "{w:?}");
}

#[test]
fn with_stream_management_a_failed_write_leaves_the_stanzas_to_it() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    s.command(t0, message("m1"));
    s.command(t0, message("m2"));
    // tracked stanzas go out as plain transmits: nothing to hand back
    assert!(matches!(s.poll_output(), Some(Output::Transmit(_))));
    s.on_write_failed(t0, "connection lost", false, None);
    let out = drain(&mut s);
    assert!(
        !events(&out).iter().any(|e| matches!(
            e,
            Event::MessageState {
                state: MessageState::Queued,
                ..
            }
        )),
        "{out:?}"
    );
    assert!(s.outbox.is_empty());
    s.on_connected(
        t0,
        Negotiated {
            resumed: Some(0),
            jid: None,
            ..Negotiated::default()
        },
    );
    let w = written(&drain(&mut s));
    assert!(
        w[0].contains("id='m1'") && w[1].contains("id='m2'"),
        "{w:?}"
    );
}

#[test]
fn a_stanza_whose_write_fails_while_closing_fails() {
    let t0 = Instant::now();
    let mut s = connected_without_sm(t0);
    s.command(t0, message("m1"));
    s.command(t0, Command::Close);
    let m1 = next_stanza(&mut s);
    s.on_write_failed(t0, "connection lost", false, Some(m1));
    let out = drain(&mut s);
    assert_eq!(
        events(&out),
        vec![
            state("m1", MessageState::Failed("session closed".into())),
            Event::Disconnected,
        ]
    );
    assert_eq!(out.last(), Some(&Output::Ended));
}

#[test]
fn closing_after_a_write_failure_fails_what_the_server_never_acknowledged() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    s.command(t0, message("m1"));
    drain(&mut s);
    s.on_write_failed(t0, "stopped by peer: error 0", true, None);
    s.command(t0, Command::Close);
    let out = drain(&mut s);
    assert_eq!(
        events(&out),
        vec![
            state("m1", MessageState::Failed("session closed".into())),
            Event::Disconnected,
        ]
    );
    assert_eq!(out.last(), Some(&Output::Ended));
}

#[test]
fn the_handle_going_away_while_closing_ends_the_session_at_once() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    s.command(t0, Command::Close);
    drain(&mut s);
    assert_eq!(s.poll_timeout(), Some(t0 + CLOSE_WAIT));
    // the driver turns a closed command channel into Abort
    s.command(t0, Command::Abort);
    assert_eq!(
        drain(&mut s),
        vec![
            Output::CloseConnection { clean: true },
            Output::Event(Event::Disconnected),
            Output::Ended,
        ]
    );
    assert_eq!(s.poll_timeout(), None);
    // and again (the channel answers None every time): nothing more
    s.command(t0, Command::Abort);
    assert!(drain(&mut s).is_empty());
}

#[test]
fn an_archive_query_asks_for_no_more_than_a_page_keeps() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    let max_asked = |s: &mut Session, max: Option<usize>| {
        let query = HistoryQuery {
            max,
            ..HistoryQuery::default()
        };
        s.command(t0, Command::Request(RequestId(1), Request::History(query)));
        let w = written(&drain(s));
        let iq = xml(&w[0]);
        let set = iq
            .child("query", ns::MAM)
            .and_then(|q| q.child("set", ns::RSM))
            .expect("an RSM set");
        set.child("max", ns::RSM).map(Element::text)
    };
    assert_eq!(
        max_asked(&mut s, Some(5000)),
        Some(MAX_HISTORY_RESULTS.to_string())
    );
    assert_eq!(max_asked(&mut s, Some(20)), Some("20".into()));
    assert_eq!(max_asked(&mut s, None), None, "the server's default");
}

#[test]
fn an_iq_answer_completes_its_request_only_from_whom_the_request_went_to() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    let ask = |s: &mut Session, n: u64, to: Option<&str>| {
        let to = to.map_or(String::new(), |to| format!(" to='{to}'"));
        let iq = format!("<iq type='get'{to}><ping xmlns='urn:xmpp:ping'/></iq>");
        s.command(t0, Command::Request(RequestId(n), Request::Iq(xml(&iq))));
        last_iq_id(&drain(s))
    };
    let answer = |s: &mut Session, id: &str, from: Option<&str>| {
        let from = from.map_or(String::new(), |f| format!(" from='{f}'"));
        s.on_element(t0, xml(&format!("<iq type='result' id='{id}'{from}/>")));
        replies(&drain(s))
    };
    // to a contact's resource: another sender who guessed the id does not answer it
    let to_bob = ask(&mut s, 1, Some("bob@example.org/phone"));
    assert!(answer(&mut s, &to_bob, Some("mallory@example.org/x")).is_empty());
    assert!(answer(&mut s, &to_bob, Some("bob@example.org/desk")).is_empty());
    assert!(answer(&mut s, &to_bob, Some("bob@example.org")).is_empty());
    // the contact does (the server writes the address in its own case)
    let got = answer(&mut s, &to_bob, Some("Bob@Example.org/phone"));
    assert!(matches!(&got[..], [(RequestId(1), Ok(_))]), "{got:?}");
    // to no one (the account): the server answers, nobody else
    let to_account = ask(&mut s, 2, None);
    assert!(answer(&mut s, &to_account, Some("bob@example.org")).is_empty());
    assert!(answer(&mut s, &to_account, Some("alice@example.org/desk")).is_empty());
    let got = answer(&mut s, &to_account, Some(OWN));
    assert!(matches!(&got[..], [(RequestId(2), Ok(_))]), "{got:?}");
    let again = ask(&mut s, 3, Some(OWN));
    let got = answer(&mut s, &again, Some("example.org"));
    assert!(matches!(&got[..], [(RequestId(3), Ok(_))]), "{got:?}");
    // a stanza without `from` comes from the server itself (it stamps every
    // other sender's): it may answer any request
    let to_domain = ask(&mut s, 4, Some("example.org"));
    assert!(answer(&mut s, &to_domain, Some("evil.example")).is_empty());
    let got = answer(&mut s, &to_domain, None);
    assert!(matches!(&got[..], [(RequestId(4), Ok(_))]), "{got:?}");
    // and so is one from our domain (the server's error on a contact's behalf)
    let to_carol = ask(&mut s, 5, Some("carol@example.org"));
    let got = answer(&mut s, &to_carol, Some("example.org"));
    assert!(matches!(&got[..], [(RequestId(5), Ok(_))]), "{got:?}");
}

#[test]
fn a_stanza_the_sdk_cannot_parse_still_counts_for_the_servers_acks() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    // frames, but a strict reader refuses a reference in a namespace name
    let unreadable = b"<message from='bob@example.org/x' id='m1' type='chat'>\
        <body>hi</body><x xmlns='urn:a&gt;b'/></message>";
    s.on_inbound(t0, crate::connection::read_element(unreadable));
    let readable =
        b"<message from='bob@example.org/x' id='m2' type='chat'><body>2</body></message>";
    s.on_inbound(t0, crate::connection::read_element(readable));
    drain(&mut s);
    s.on_element(t0, xml("<r xmlns='urn:xmpp:sm:3'/>"));
    assert_eq!(
        written(&drain(&mut s)),
        vec!["<a xmlns=\"urn:xmpp:sm:3\" h=\"2\"/>"]
    );
}

#[test]
fn after_a_resumption_the_unacknowledged_stanzas_go_before_a_presence_changed_while_away() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    s.command(t0, message("m1"));
    drain(&mut s);
    s.on_stream_end("stream ended".into());
    drain(&mut s);
    // the presence changes while the stream is away
    s.command(
        t0,
        Command::Presence(Bytes::from_static(
            b"<presence><show>away</show></presence>",
        )),
    );
    drain(&mut s);
    s.on_connected(
        t0,
        Negotiated {
            resumed: Some(0),
            jid: None,
            ..Negotiated::default()
        },
    );
    let w = written(&drain(&mut s));
    let m1 = w.iter().position(|x| x.contains("id='m1'"));
    let presence = w.iter().position(|x| x.contains("<show>away</show>"));
    assert!(
        matches!((m1, presence), (Some(m), Some(p)) if m < p),
        "m1 (sent again) first, then the presence: {w:?}"
    );
}

#[test]
fn the_servers_caps_question_is_answered_with_the_notify_nodes_and_notifications_become_pep_events()
{
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    let ver =
        xmpp_stream::caps::verification_string(&crate::pep::client_info(&["urn:xmpp:nick".into()]));
    // the node of the shown capabilities: answered, node echoed
    s.on_element(
        t0,
        xml(&format!(
            "<iq type='get' from='example.org' id='caps-1'><query xmlns='http://jabber.org/protocol/disco#info' node='{}#{ver}'/></iq>",
            crate::pep::CAPS_NODE
        )),
    );
    let out = drain(&mut s);
    let w = written(&out);
    assert!(events(&out).is_empty(), "{out:?}");
    assert!(
        matches!(&w[..], [a, r] if r.starts_with("<r ") && a.contains("id=\"caps-1\"") && a.contains("type=\"result\"")
            && a.contains("var=\"urn:xmpp:nick+notify\"") && a.contains(&format!("#{ver}\""))),
        "{w:?}"
    );
    // a notification from an account's bare JID
    s.on_element(
        t0,
        xml("<message from='bob@example.org' type='headline' id='pep-1'><event xmlns='http://jabber.org/protocol/pubsub#event'>\
             <items node='urn:xmpp:nick'><item id='current'><nick xmlns='http://jabber.org/protocol/nick'>Bob</nick></item>\
             <retract id='old'/></items></event></message>"),
    );
    let out = drain(&mut s);
    let ev = events(&out);
    let [Event::Pep(pep)] = &ev[..] else {
        panic!("{ev:?}")
    };
    assert_eq!(
        (pep.from.as_str(), pep.node.as_str()),
        ("bob@example.org", "urn:xmpp:nick")
    );
    assert_eq!(pep.items.len(), 1);
    assert_eq!(pep.items[0].id, "current");
    assert_eq!(
        pep.items[0].payload.as_ref().map(|p| p.text()),
        Some("Bob".into())
    );
    assert_eq!(pep.retracted, ["old"]);
    // one from a full JID is no notification
    s.on_element(
        t0,
        xml("<message from='bob@example.org/x' type='headline' id='pep-2'><event xmlns='http://jabber.org/protocol/pubsub#event'><items node='n'/></event></message>"),
    );
    assert!(matches!(&events(&drain(&mut s))[..], [Event::Message(_)]));
}

// Group chat (XEP-0045): rooms the app joined.

const ROOM: &str = "coven@conference.example.org";

fn join_request(nick: &str, password: Option<&str>, history: Option<u32>) -> Request {
    Request::JoinRoom {
        room: ROOM.into(),
        nick: nick.into(),
        password: password.map(str::to_owned),
        history,
    }
}

/// A presence of the room's occupant `nick` with `inner` in its
/// `muc#user` `<x/>` and `extra` after it.
fn occupant(nick: &str, attrs: &str, inner: &str, extra: &str) -> Element {
    xml(&format!(
        "<presence from='{ROOM}/{nick}' to='alice@example.org/phone'{attrs}>\
         <x xmlns='http://jabber.org/protocol/muc#user'>{inner}</x>{extra}</presence>"
    ))
}

/// The app's own presence in the room as `nick` (code 110).
fn self_presence(nick: &str) -> Element {
    occupant(
        nick,
        "",
        "<item affiliation='member' role='participant'/><status code='110'/>",
        "<occupant-id xmlns='urn:xmpp:occupant-id:0' id='occ-me'/>",
    )
}

/// A session joined to [`ROOM`] as `me` at `t0` (request 1); outputs drained.
fn in_room(t0: Instant) -> Session {
    let mut s = connected(config(), t0);
    s.command(
        t0,
        Command::Request(RequestId(1), join_request("me", None, None)),
    );
    drain(&mut s);
    s.on_element(t0, self_presence("me"));
    let got = replies(&drain(&mut s));
    assert!(
        matches!(&got[..], [(RequestId(1), Ok(Answer::RoomJoined(_)))]),
        "{got:?}"
    );
    s
}

#[test]
fn a_join_sends_its_presence_and_completes_with_the_own_presence_and_the_occupants_before_it() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    s.command(
        t0,
        Command::Request(
            RequestId(1),
            join_request("thirdwitch", Some("cauldron"), Some(5)),
        ),
    );
    let out = drain(&mut s);
    let w = written(&out);
    assert!(
        w[0].starts_with(&format!(
            "<presence to=\"{ROOM}/thirdwitch\"><x xmlns=\"http://jabber.org/protocol/muc\">\
             <history maxstanzas=\"5\"/><password>cauldron</password></x><c xmlns=\"http://jabber.org/protocol/caps\""
        )),
        "{w:?}"
    );
    assert!(replies(&out).is_empty(), "waits for the room");
    // the occupants already there: one shows its real JID, one does not
    s.on_element(
        t0,
        occupant(
            "firstwitch",
            "",
            "<item affiliation='owner' role='moderator' jid='crone1@example.org/desktop'/>",
            "<occupant-id xmlns='urn:xmpp:occupant-id:0' id='occ-1'/>",
        ),
    );
    s.on_element(
        t0,
        occupant(
            "secondwitch",
            "",
            "<item affiliation='admin' role='moderator'/>",
            "<show>away</show>",
        ),
    );
    let ev = events(&drain(&mut s));
    let [Event::Occupant(first), Event::Occupant(second)] = &ev[..] else {
        panic!("{ev:?}")
    };
    assert!(first.available && !first.is_self);
    assert_eq!(first.room, ROOM);
    assert_eq!(first.occupant.nick, "firstwitch");
    assert_eq!(first.occupant.role, Role::Moderator);
    assert_eq!(first.occupant.affiliation, Affiliation::Owner);
    assert_eq!(
        first.occupant.jid.as_deref(),
        Some("crone1@example.org/desktop")
    );
    assert_eq!(first.occupant.occupant_id.as_deref(), Some("occ-1"));
    assert_eq!(second.occupant.jid, None);
    assert_eq!(second.occupant.show.as_deref(), Some("away"));
    // the own presence: 110, the room is new (201) and non-anonymous (100)
    s.on_element(
        t0,
        occupant(
            "thirdwitch",
            "",
            "<item affiliation='owner' role='moderator' jid='alice@example.org/phone'/>\
             <status code='100'/><status code='110'/><status code='201'/>",
            "<occupant-id xmlns='urn:xmpp:occupant-id:0' id='occ-me'/>",
        ),
    );
    let out = drain(&mut s);
    let ev = events(&out);
    assert!(
        matches!(&ev[..], [Event::Occupant(p)] if p.is_self && p.available),
        "{ev:?}"
    );
    let got = replies(&out);
    let [(RequestId(1), Ok(Answer::RoomJoined(joined)))] = &got[..] else {
        panic!("{got:?}")
    };
    assert_eq!(joined.room, ROOM);
    assert_eq!(joined.nick, "thirdwitch");
    assert_eq!(joined.me.occupant_id.as_deref(), Some("occ-me"));
    assert_eq!(joined.me.affiliation, Affiliation::Owner);
    assert!(joined.created() && joined.non_anonymous());
    let nicks: Vec<_> = joined.occupants.iter().map(|o| o.nick.as_str()).collect();
    assert_eq!(nicks, ["firstwitch", "secondwitch"]);
    assert_eq!(joined.status_codes, [100, 110, 201]);
    // a contact's presence is still a presence
    s.on_element(t0, xml("<presence from='bob@example.org/desk'/>"));
    assert!(matches!(&events(&drain(&mut s))[..], [Event::Presence(_)]));
}

#[test]
fn the_own_presence_is_known_by_the_real_jid_and_the_room_may_change_the_nick() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    s.command(
        t0,
        Command::Request(RequestId(1), join_request("me", None, None)),
    );
    drain(&mut s);
    // no 110, but the room shows the app's full JID; the nick was changed (210)
    s.on_element(
        t0,
        occupant(
            "me (2)",
            "",
            "<item affiliation='none' role='participant' jid='Alice@example.org/phone'/><status code='210'/>",
            "",
        ),
    );
    let got = replies(&drain(&mut s));
    let [(RequestId(1), Ok(Answer::RoomJoined(joined)))] = &got[..] else {
        panic!("{got:?}")
    };
    assert_eq!(joined.nick, "me (2)");
    assert!(joined.occupants.is_empty());
}

#[test]
fn history_the_subject_and_live_messages_of_a_room_become_room_events_only() {
    let t0 = Instant::now();
    let mut s = in_room(t0);
    // history: the room's delay and id; a forged delay and id do not count
    s.on_element(
        t0,
        xml(&format!(
            "<message from='{ROOM}/firstwitch' type='groupchat' id='h1'><body>Thrice</body>\
             <delay xmlns='urn:xmpp:delay' from='evil.example' stamp='1999-01-01T00:00:00Z'/>\
             <delay xmlns='urn:xmpp:delay' from='{ROOM}' stamp='2026-01-01T10:00:00Z'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='alice@example.org' id='forged'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='{ROOM}' id='sid-1'/>\
             <occupant-id xmlns='urn:xmpp:occupant-id:0' id='occ-1'/></message>"
        )),
    );
    s.on_element(
        t0,
        xml(&format!(
            "<message from='{ROOM}/firstwitch' type='groupchat' id='s1'><subject>Fire Burn</subject></message>"
        )),
    );
    s.on_element(
        t0,
        xml(&format!(
            "<message from='{ROOM}/secondwitch' type='groupchat' id='l1'><body>bubble</body>\
             <request xmlns='urn:xmpp:receipts'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='{ROOM}' id='sid-2'/></message>"
        )),
    );
    let out = drain(&mut s);
    assert!(
        !written(&out).iter().any(|w| w.contains("received")),
        "no receipts in a room"
    );
    let ev = events(&out);
    let [
        Event::RoomMessage(history),
        Event::RoomSubject {
            room,
            nick,
            subject,
        },
        Event::RoomMessage(live),
    ] = &ev[..]
    else {
        panic!("{ev:?}")
    };
    assert_eq!(history.room, ROOM);
    assert_eq!(history.nick.as_deref(), Some("firstwitch"));
    assert_eq!(history.id.as_deref(), Some("h1"));
    assert_eq!(history.body.as_deref(), Some("Thrice"));
    assert_eq!(history.delay.as_deref(), Some("2026-01-01T10:00:00Z"));
    assert!(history.is_history);
    assert_eq!(history.stanza_id.as_deref(), Some("sid-1"));
    assert_eq!(history.occupant_id.as_deref(), Some("occ-1"));
    assert_eq!(
        (room.as_str(), nick.as_deref(), subject.as_str()),
        (ROOM, Some("firstwitch"), "Fire Burn")
    );
    assert!(!live.is_history && live.delay.is_none());
    assert_eq!(live.stanza_id.as_deref(), Some("sid-2"));
    // the same archive id again (history sent again, without its id): dropped
    s.on_element(
        t0,
        xml(&format!(
            "<message from='{ROOM}/secondwitch' type='groupchat'><body>bubble</body>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='{ROOM}' id='sid-2'/></message>"
        )),
    );
    assert!(events(&drain(&mut s)).is_empty());
    assert_eq!(snapshot(&s).duplicates_dropped, 1);
}

#[test]
fn a_room_presence_error_completes_the_join_as_that_error_and_the_room_is_forgotten() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    for (n, condition) in [
        (1, "not-authorized"),
        (2, "registration-required"),
        (3, "forbidden"),
        (4, "conflict"),
    ] {
        s.command(
            t0,
            Command::Request(RequestId(n), join_request("me", None, None)),
        );
        drain(&mut s);
        s.on_element(
            t0,
            xml(&format!(
                "<presence from='{ROOM}/me' type='error'><x xmlns='http://jabber.org/protocol/muc'/>\
                 <error type='auth' by='{ROOM}'><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>"
            )),
        );
        let out = drain(&mut s);
        assert_eq!(
            replies(&out),
            vec![(
                RequestId(n),
                Err(ClientError::StanzaError(condition.into()))
            )]
        );
        assert!(events(&out).is_empty());
    }
    // not a room any more: its presence is a plain one
    s.on_element(t0, occupant("firstwitch", "", "", ""));
    assert!(matches!(&events(&drain(&mut s))[..], [Event::Presence(_)]));
}

#[test]
fn a_join_while_one_is_under_way_is_refused_and_an_unanswered_one_times_out_and_leaves() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    s.command(
        t0,
        Command::Request(RequestId(1), join_request("me", None, None)),
    );
    drain(&mut s);
    s.command(
        t0,
        Command::Request(RequestId(2), join_request("me", None, None)),
    );
    assert!(matches!(
        &replies(&drain(&mut s))[..],
        [(RequestId(2), Err(ClientError::Busy(_)))]
    ));
    let deadline = t0 + rooms::ROOM_TIMEOUT;
    assert_eq!(s.poll_timeout(), Some(t0 + ACK_TIMEOUT).min(Some(deadline)));
    s.on_element(t0, xml("<a xmlns='urn:xmpp:sm:3' h='1'/>"));
    assert_eq!(s.poll_timeout(), Some(deadline));
    s.handle_timeout(deadline);
    let out = drain(&mut s);
    assert_eq!(
        replies(&out),
        vec![(RequestId(1), Err(ClientError::Timeout))]
    );
    assert!(
        written(&out)[0].contains("type=\"unavailable\""),
        "{:?}",
        written(&out)
    );
}

#[test]
fn kicks_bans_and_nick_changes_are_occupant_events_and_the_own_kick_forgets_the_room() {
    let t0 = Instant::now();
    let mut s = in_room(t0);
    s.on_element(
        t0,
        occupant(
            "pistol",
            " type='unavailable'",
            "<item affiliation='none' role='none'><actor nick='Fluellen'/><reason>Avaunt</reason></item>\
             <status code='307'/>",
            "",
        ),
    );
    s.on_element(
        t0,
        occupant(
            "earl",
            " type='unavailable'",
            "<item affiliation='outcast' role='none'/><status code='301'/>",
            "",
        ),
    );
    s.on_element(
        t0,
        occupant(
            "oldhag",
            " type='unavailable'",
            "<item affiliation='member' role='participant' nick='newhag'/><status code='303'/>",
            "",
        ),
    );
    let ev = events(&drain(&mut s));
    let [
        Event::Occupant(kicked),
        Event::Occupant(banned),
        Event::Occupant(renamed),
    ] = &ev[..]
    else {
        panic!("{ev:?}")
    };
    assert!(!kicked.available && !kicked.is_self);
    assert_eq!(kicked.removal, Some(Removal::Kicked));
    assert_eq!(kicked.actor.as_deref(), Some("Fluellen"));
    assert_eq!(kicked.reason.as_deref(), Some("Avaunt"));
    assert_eq!(kicked.status_codes, [307]);
    assert_eq!(banned.removal, Some(Removal::Banned));
    assert_eq!(banned.occupant.affiliation, Affiliation::Outcast);
    assert_eq!(renamed.new_nick.as_deref(), Some("newhag"));
    assert_eq!(renamed.removal, None);
    // the app itself is kicked: the room is forgotten
    s.on_element(
        t0,
        occupant(
            "me",
            " type='unavailable'",
            "<item affiliation='none' role='none'/><status code='110'/><status code='307'/>",
            "",
        ),
    );
    let ev = events(&drain(&mut s));
    assert!(
        matches!(&ev[..], [Event::Occupant(p)] if p.is_self && p.removal == Some(Removal::Kicked)),
        "{ev:?}"
    );
    s.on_element(
        t0,
        xml(&format!(
            "<message from='{ROOM}/x' type='groupchat'><body>late</body></message>"
        )),
    );
    assert!(matches!(&events(&drain(&mut s))[..], [Event::Message(_)]));
}

#[test]
fn a_destroyed_room_is_reported_and_forgotten() {
    let t0 = Instant::now();
    let mut s = in_room(t0);
    s.on_element(
        t0,
        occupant(
            "me",
            " type='unavailable'",
            "<item affiliation='none' role='none'/><status code='110'/>\
             <destroy jid='new@conference.example.org'><reason>moved</reason></destroy>",
            "",
        ),
    );
    let ev = events(&drain(&mut s));
    assert!(
        matches!(&ev[..], [Event::Occupant(p), Event::RoomDestroyed { room, reason, alternate }]
            if p.is_self && room == ROOM && reason.as_deref() == Some("moved")
                && alternate.as_deref() == Some("new@conference.example.org")),
        "{ev:?}"
    );
}

#[test]
fn invitations_mediated_and_direct_become_invite_events() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    s.on_element(
        t0,
        xml(&format!(
            "<message from='{ROOM}' to='alice@example.org' id='inv1'>\
             <x xmlns='http://jabber.org/protocol/muc#user'>\
             <invite from='crone1@example.org/desktop'><reason>Hey Alice</reason></invite>\
             <password>cauldronburn</password></x><body>fallback</body></message>"
        )),
    );
    s.on_element(
        t0,
        xml(&format!(
            "<message from='crone1@example.org/desktop' to='alice@example.org' id='inv2'>\
             <x xmlns='jabber:x:conference' jid='{ROOM}' password='pw' reason='join us'/></message>"
        )),
    );
    // a mediated invitation must come from a room, not an occupant
    s.on_element(
        t0,
        xml(&format!(
            "<message from='{ROOM}/mallory' id='inv3'><x xmlns='http://jabber.org/protocol/muc#user'>\
             <invite from='crone1@example.org'/></x></message>"
        )),
    );
    let ev = events(&drain(&mut s));
    assert_eq!(
        ev[..2],
        [
            Event::RoomInvite(RoomInvite {
                room: ROOM.into(),
                from: "crone1@example.org/desktop".into(),
                reason: Some("Hey Alice".into()),
                password: Some("cauldronburn".into()),
                direct: false,
            }),
            Event::RoomInvite(RoomInvite {
                room: ROOM.into(),
                from: "crone1@example.org/desktop".into(),
                reason: Some("join us".into()),
                password: Some("pw".into()),
                direct: true,
            }),
        ]
    );
    assert!(matches!(&ev[2..], [Event::Message(_)]), "{ev:?}");
}

#[test]
fn a_nick_change_completes_with_the_new_nick_or_fails_with_the_rooms_error() {
    let t0 = Instant::now();
    let mut s = in_room(t0);
    let change = |n| {
        Command::Request(
            RequestId(n),
            Request::ChangeNick {
                room: ROOM.into(),
                nick: "newme".into(),
            },
        )
    };
    s.command(t0, change(2));
    let w = written(&drain(&mut s));
    assert_eq!(w[0], format!("<presence to=\"{ROOM}/newme\"/>"));
    s.on_element(
        t0,
        occupant(
            "me",
            " type='unavailable'",
            "<item affiliation='member' role='participant' nick='newme'/><status code='303'/><status code='110'/>",
            "",
        ),
    );
    assert!(
        replies(&drain(&mut s)).is_empty(),
        "the new nick's presence follows"
    );
    s.on_element(t0, self_presence("newme"));
    let out = drain(&mut s);
    assert_eq!(
        replies(&out),
        vec![(RequestId(2), Ok(Answer::NickChanged("newme".into())))]
    );
    // a taken nick
    s.command(t0, change(3));
    drain(&mut s);
    s.on_element(
        t0,
        xml(&format!(
            "<presence from='{ROOM}/newme' type='error'><error type='cancel'>\
             <conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>"
        )),
    );
    assert_eq!(
        replies(&drain(&mut s)),
        vec![(
            RequestId(3),
            Err(ClientError::StanzaError("conflict".into()))
        )]
    );
    // still in the room
    s.on_element(
        t0,
        xml(&format!(
            "<message from='{ROOM}/x' type='groupchat'><body>hi</body></message>"
        )),
    );
    assert!(matches!(
        &events(&drain(&mut s))[..],
        [Event::RoomMessage(_)]
    ));
}

#[test]
fn leaving_sends_the_unavailable_presence_and_forgets_the_room_at_its_answer() {
    let t0 = Instant::now();
    let mut s = in_room(t0);
    s.command(
        t0,
        Command::LeaveRoom {
            room: ROOM.into(),
            status: Some("bye".into()),
        },
    );
    let w = written(&drain(&mut s));
    assert_eq!(
        w[0],
        format!("<presence to=\"{ROOM}/me\" type=\"unavailable\"><status>bye</status></presence>")
    );
    s.on_element(
        t0,
        occupant(
            "me",
            " type='unavailable'",
            "<item affiliation='member' role='none'/><status code='110'/>",
            "",
        ),
    );
    let ev = events(&drain(&mut s));
    assert!(
        matches!(&ev[..], [Event::Occupant(p)] if p.is_self && !p.available && p.removal.is_none()),
        "{ev:?}"
    );
    s.on_element(t0, occupant("other", "", "", ""));
    assert!(matches!(&events(&drain(&mut s))[..], [Event::Presence(_)]));
}

#[test]
fn after_a_new_login_rooms_are_joined_again_asking_for_the_missed_history_before_what_was_queued() {
    let t0 = Instant::now();
    let mut s = in_room(t0);
    // heard from at t0 + 100 s; the connection is lost at t0 + 200 s
    let heard = t0 + Duration::from_secs(100);
    s.on_element(
        heard,
        xml(&format!(
            "<message from='{ROOM}/firstwitch' type='groupchat' id='m1'><body>one</body>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='{ROOM}' id='sid-1'/></message>"
        )),
    );
    drain(&mut s);
    let lost = t0 + Duration::from_secs(200);
    s.on_stream_end("gone".into());
    drain(&mut s);
    // sent while offline: queued
    s.command(
        lost,
        Command::Send(Outgoing {
            bytes: Bytes::from(format!(
                "<message to='{ROOM}' type='groupchat' id='g1'><body>back</body></message>"
            )),
            id: Some("g1".into()),
        }),
    );
    drain(&mut s);
    let back = t0 + Duration::from_secs(260);
    s.on_connected(back, bound());
    let out = drain(&mut s);
    let w = written(&out);
    let joins: Vec<_> = w
        .iter()
        .enumerate()
        .filter(|(_, x)| x.contains("http://jabber.org/protocol/muc\""))
        .collect();
    // one fresh join (the first one, never acknowledged, is not sent again)
    let [(at, join)] = &joins[..] else {
        panic!("{w:?}")
    };
    assert!(
        join.contains(&format!("to=\"{ROOM}/me\"")) && join.contains("<history seconds=\"170\"/>"),
        "{join}"
    );
    let g1 = w.iter().position(|x| x.contains("id='g1'"));
    assert!(matches!(g1, Some(g) if g > *at), "the join first: {w:?}");
    assert!(events(&out).contains(&Event::Reconnected { resumed: false }));
    // the occupants again, then the own presence: rejoined
    s.on_element(
        back,
        occupant(
            "firstwitch",
            "",
            "<item affiliation='owner' role='moderator'/>",
            "",
        ),
    );
    s.on_element(back, self_presence("me"));
    let out = drain(&mut s);
    assert!(replies(&out).is_empty());
    let ev = events(&out);
    let [
        Event::Occupant(_),
        Event::Occupant(me),
        Event::RoomRejoined(joined),
    ] = &ev[..]
    else {
        panic!("{ev:?}")
    };
    assert!(me.is_self);
    assert_eq!(joined.room, ROOM);
    assert_eq!(joined.occupants.len(), 1);
    // history seen before (same archive id): dropped; new history: kept
    for (sid, body) in [("sid-1", "one"), ("sid-3", "three")] {
        s.on_element(
            back,
            xml(&format!(
                "<message from='{ROOM}/firstwitch' type='groupchat'><body>{body}</body>\
                 <delay xmlns='urn:xmpp:delay' from='{ROOM}' stamp='2026-01-01T00:00:00Z'/>\
                 <stanza-id xmlns='urn:xmpp:sid:0' by='{ROOM}' id='{sid}'/></message>"
            )),
        );
    }
    let ev = events(&drain(&mut s));
    assert!(
        matches!(&ev[..], [Event::RoomMessage(m)] if m.body.as_deref() == Some("three") && m.is_history),
        "{ev:?}"
    );
}

#[test]
fn a_rejoin_keeps_the_password_and_no_history_if_the_app_wants_none() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    s.command(
        t0,
        Command::Request(RequestId(1), join_request("me", Some("pw"), Some(0))),
    );
    drain(&mut s);
    s.on_element(t0, self_presence("me"));
    drain(&mut s);
    s.on_stream_end("gone".into());
    drain(&mut s);
    s.on_connected(t0 + Duration::from_secs(5), bound());
    let w = written(&drain(&mut s));
    assert!(
        w.iter()
            .any(|x| x.contains("<history maxstanzas=\"0\"/><password>pw</password>")),
        "{w:?}"
    );
}

#[test]
fn a_refused_rejoin_is_an_event_and_the_room_is_forgotten() {
    let t0 = Instant::now();
    let mut s = in_room(t0);
    s.on_stream_end("gone".into());
    drain(&mut s);
    s.on_connected(t0, bound());
    drain(&mut s);
    s.on_element(
        t0,
        xml(&format!(
            "<presence from='{ROOM}/me' type='error'><error type='auth'>\
             <forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>"
        )),
    );
    assert_eq!(
        events(&drain(&mut s)),
        vec![Event::RoomRejoinFailed {
            room: ROOM.into(),
            error: ClientError::StanzaError("forbidden".into()),
        }]
    );
    // nothing more to rejoin
    s.on_stream_end("gone".into());
    drain(&mut s);
    s.on_connected(t0, bound());
    assert!(
        !written(&drain(&mut s))
            .iter()
            .any(|x| x.contains("protocol/muc")),
    );
}

#[test]
fn after_a_resumption_rooms_stay_joined_and_a_join_asked_offline_goes_out_before_the_outbox() {
    let t0 = Instant::now();
    let mut s = in_room(t0);
    s.on_element(t0, xml("<a xmlns='urn:xmpp:sm:3' h='1'/>"));
    drain(&mut s);
    s.on_stream_end("gone".into());
    drain(&mut s);
    let other = "other@conference.example.org";
    s.command(
        t0,
        Command::Request(
            RequestId(2),
            Request::JoinRoom {
                room: other.into(),
                nick: "me".into(),
                password: None,
                history: None,
            },
        ),
    );
    s.command(
        t0,
        Command::Send(Outgoing {
            bytes: Bytes::from(format!(
                "<message to='{other}' type='groupchat' id='g1'><body>hi</body></message>"
            )),
            id: Some("g1".into()),
        }),
    );
    let out = drain(&mut s);
    assert!(written(&out).is_empty(), "offline: nothing written");
    s.on_connected(
        t0,
        Negotiated {
            resumed: Some(1),
            jid: None,
            ..Negotiated::default()
        },
    );
    let w = written(&drain(&mut s));
    let joins: Vec<_> = w.iter().filter(|x| x.contains("protocol/muc\"")).collect();
    assert!(
        matches!(&joins[..], [j] if j.contains(&format!("to=\"{other}/me\""))),
        "{w:?}"
    );
    let join = w.iter().position(|x| x.contains("protocol/muc\""));
    let g1 = w.iter().position(|x| x.contains("id='g1'"));
    assert!(matches!((join, g1), (Some(j), Some(g)) if j < g), "{w:?}");
}

#[test]
fn a_rooms_archive_is_asked_of_the_room_and_only_its_results_count() {
    let t0 = Instant::now();
    let mut s = in_room(t0);
    let query = HistoryQuery {
        max: Some(5000),
        latest: true,
        ..HistoryQuery::default()
    };
    s.command(
        t0,
        Command::Request(
            RequestId(7),
            Request::RoomHistory {
                room: ROOM.into(),
                query,
            },
        ),
    );
    let out = drain(&mut s);
    let id = last_iq_id(&out);
    let iq = written(&out)
        .into_iter()
        .rfind(|w| w.starts_with("<iq"))
        .unwrap();
    assert!(iq.contains(&format!("to=\"{ROOM}\"")), "{iq}");
    assert!(iq.contains("<max>1000</max>"), "{iq}");
    let result = |from: &str, archive_id: &str| {
        format!(
            "<message from='{from}' to='alice@example.org/phone'><result xmlns='urn:xmpp:mam:2' queryid='{id}' id='{archive_id}'>\
             <forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='urn:xmpp:delay' stamp='2026-01-01T00:00:00Z'/>\
             <message xmlns='jabber:client' from='{ROOM}/firstwitch' type='groupchat'><body>{archive_id}</body></message>\
             </forwarded></result></message>"
        )
    };
    s.on_element(t0, xml(&result(ROOM, "a1")));
    // someone else's result for the room's query: not collected
    s.on_element(t0, xml(&result("mallory@example.org", "forged")));
    let out = drain(&mut s);
    assert!(
        !events(&out)
            .iter()
            .any(|e| matches!(e, Event::RoomMessage(_))),
        "{out:?}"
    );
    s.on_element(
        t0,
        xml(&format!(
            "<iq type='result' id='{id}' from='{ROOM}'><fin xmlns='urn:xmpp:mam:2' complete='true'>\
             <set xmlns='http://jabber.org/protocol/rsm'><first>a1</first><last>a1</last></set></fin></iq>"
        )),
    );
    let got = replies(&drain(&mut s));
    let [(RequestId(7), Ok(Answer::RoomHistory(page)))] = &got[..] else {
        panic!("{got:?}")
    };
    assert!(page.complete);
    let msgs: Vec<_> = page
        .messages
        .iter()
        .map(|m| (m.stanza_id.as_deref(), m.nick.as_deref(), m.is_history))
        .collect();
    assert_eq!(msgs, [(Some("a1"), Some("firstwitch"), true)]);
}

#[test]
fn a_self_ping_the_room_passes_on_is_answered() {
    let t0 = Instant::now();
    let mut s = in_room(t0);
    s.on_element(
        t0,
        xml(&format!(
            "<iq from='{ROOM}/me' id='c0ffee' type='get'><ping xmlns='urn:xmpp:ping'/></iq>"
        )),
    );
    let out = drain(&mut s);
    assert!(events(&out).is_empty());
    assert_eq!(
        written(&out)[0],
        format!("<iq type=\"result\" to=\"{ROOM}/me\" id=\"c0ffee\"/>")
    );
}

#[test]
fn requests_waiting_on_rooms_fail_as_closed_when_the_session_ends() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    s.command(
        t0,
        Command::Request(RequestId(1), join_request("me", None, None)),
    );
    drain(&mut s);
    s.command(t0, Command::Abort);
    let out = drain(&mut s);
    assert_eq!(
        replies(&out),
        vec![(RequestId(1), Err(ClientError::Closed))]
    );
}

#[test]
fn without_stream_management_a_join_whose_write_failed_is_not_sent_twice_after_a_new_login() {
    let t0 = Instant::now();
    let mut s = connected_without_sm(t0);
    s.command(
        t0,
        Command::Request(RequestId(1), join_request("me", None, None)),
    );
    let join = next_stanza(&mut s);
    s.on_write_failed(t0, "connection lost", false, Some(join));
    drain(&mut s);
    s.on_connected(t0, bound());
    let w = written(&drain(&mut s));
    let joins = w.iter().filter(|x| x.contains("protocol/muc\"")).count();
    assert_eq!(joins, 1, "{w:?}");
    s.on_element(t0, self_presence("me"));
    assert!(matches!(
        &replies(&drain(&mut s))[..],
        [(RequestId(1), Ok(Answer::RoomJoined(_)))]
    ));
}

#[test]
fn joining_again_right_after_leaving_is_not_undone_by_the_answer_to_the_leave() {
    let t0 = Instant::now();
    let mut s = in_room(t0);
    s.command(
        t0,
        Command::LeaveRoom {
            room: ROOM.into(),
            status: None,
        },
    );
    s.command(
        t0,
        Command::Request(RequestId(2), join_request("me", None, None)),
    );
    drain(&mut s);
    s.on_element(
        t0,
        occupant(
            "me",
            " type='unavailable'",
            "<item affiliation='member' role='none'/><status code='110'/>",
            "",
        ),
    );
    assert!(replies(&drain(&mut s)).is_empty());
    s.on_element(t0, self_presence("me"));
    assert!(matches!(
        &replies(&drain(&mut s))[..],
        [(RequestId(2), Ok(Answer::RoomJoined(_)))]
    ));
}

// XEP-0410 self-pings of the rooms joined.

/// The server acknowledges everything written (so no acknowledgement
/// deadline hides the self-ping's).
fn ack_all(s: &mut Session, now: Instant) {
    let h = s.sm.sent();
    s.on_element(now, xml(&format!("<a xmlns='urn:xmpp:sm:3' h='{h}'/>")));
    drain(s);
}

/// [`in_room`] with the join acknowledged: nothing is due but the room's
/// self-ping.
fn in_quiet_room(t0: Instant) -> Session {
    let mut s = in_room(t0);
    ack_all(&mut s, t0);
    s
}

/// The id of the self-ping of [`ROOM`]'s `me` among what was written.
fn room_ping(outputs: &[Output]) -> Option<String> {
    written(outputs)
        .into_iter()
        .find(|w| {
            w.starts_with("<iq type=\"get\"")
                && w.contains(&format!("to=\"{ROOM}/me\""))
                && w.contains("<ping xmlns=\"urn:xmpp:ping\"/>")
        })
        .map(|w| xml(&w).attr("id").expect("an id").to_owned())
}

/// Lets time pass until the next self-ping of [`ROOM`] goes out (one
/// due while the room was heard from lately is moved first): when, and
/// its id.
fn next_room_ping(s: &mut Session) -> (Instant, String) {
    for _ in 0..3 {
        let due = s.poll_timeout().expect("a self-ping is scheduled");
        s.handle_timeout(due);
        if let Some(id) = room_ping(&drain(s)) {
            return (due, id);
        }
    }
    panic!("no self-ping")
}

/// The join presences among what was written.
fn joins(outputs: &[Output]) -> Vec<String> {
    written(outputs)
        .into_iter()
        .filter(|w| w.contains("http://jabber.org/protocol/muc\""))
        .collect()
}

/// The room's answer to the self-ping `id`: a result, or this error.
fn ping_answer(id: &str, error: Option<&str>) -> Element {
    match error {
        None => xml(&format!(
            "<iq from='{ROOM}/me' to='alice@example.org/phone' id='{id}' type='result'/>"
        )),
        Some(condition) => xml(&format!(
            "<iq from='{ROOM}/me' to='alice@example.org/phone' id='{id}' type='error'>\
             <error type='cancel'><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             </error></iq>"
        )),
    }
}

/// The next self-ping is due within the interval's jitter after `from`.
fn assert_ping_due_after(s: &Session, from: Instant) -> Instant {
    let due = s.poll_timeout().expect("a self-ping is scheduled");
    assert!(
        due >= from + PING_INTERVAL * 3 / 4 && due < from + PING_INTERVAL * 5 / 4,
        "due {:?} after {from:?}",
        due - from
    );
    due
}

#[test]
fn a_joined_room_is_self_pinged_after_an_interval_of_silence_and_one_heard_from_later() {
    let t0 = Instant::now();
    let mut s = in_quiet_room(t0);
    let due = assert_ping_due_after(&s, t0);
    s.handle_timeout(due - Duration::from_millis(1));
    assert!(drain(&mut s).is_empty(), "nothing before it is due");
    s.handle_timeout(due);
    let out = drain(&mut s);
    let id = room_ping(&out).expect("the self-ping");
    assert!(events(&out).is_empty());
    // one in flight at a time: none more until it is answered
    ack_all(&mut s, due);
    assert_eq!(s.poll_timeout(), Some(due + IQ_TIMEOUT));
    s.on_element(due, ping_answer(&id, None));
    drain(&mut s);
    let next = assert_ping_due_after(&s, due);
    // the room speaks meanwhile: its ping moves to an interval after that
    let heard = next - PING_INTERVAL / 2;
    s.on_element(
        heard,
        xml(&format!(
            "<message from='{ROOM}/firstwitch' type='groupchat' id='m1'><body>hi</body></message>"
        )),
    );
    drain(&mut s);
    s.handle_timeout(next);
    let out = drain(&mut s);
    assert_eq!(room_ping(&out), None, "{out:?}");
    let moved = assert_ping_due_after(&s, heard);
    s.handle_timeout(moved);
    assert!(room_ping(&drain(&mut s)).is_some());
}

#[test]
fn a_self_ping_answered_as_still_joined_changes_nothing() {
    let t0 = Instant::now();
    let mut s = in_quiet_room(t0);
    // XEP-0410 §4: a result; errors of a client that got the ping and does
    // not answer pings; the nick renamed by another client
    for error in [
        None,
        Some("service-unavailable"),
        Some("feature-not-implemented"),
        Some("item-not-found"),
    ] {
        let due = s.poll_timeout().expect("a self-ping is scheduled");
        s.handle_timeout(due);
        let id = room_ping(&drain(&mut s)).expect("the self-ping");
        s.on_element(due, ping_answer(&id, error));
        let out = drain(&mut s);
        assert!(joins(&out).is_empty(), "{error:?}: no rejoin");
        assert!(events(&out).is_empty(), "{error:?}: {out:?}");
        assert!(replies(&out).is_empty());
        // acknowledge what the session wrote, so only the ping is due
        ack_all(&mut s, due);
        assert_ping_due_after(&s, due);
    }
}

#[test]
fn a_room_that_lost_the_app_is_joined_again_asking_for_the_history_since_it_was_last_heard() {
    let t0 = Instant::now();
    let mut s = in_quiet_room(t0);
    let heard = t0 + Duration::from_secs(30);
    s.on_element(
        heard,
        xml(&format!(
            "<message from='{ROOM}/firstwitch' type='groupchat' id='m1'><body>one</body>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='{ROOM}' id='sid-1'/></message>"
        )),
    );
    drain(&mut s);
    let (due, id) = next_room_ping(&mut s);
    let answered = due + Duration::from_secs(2);
    s.on_element(answered, ping_answer(&id, Some("not-acceptable")));
    let out = drain(&mut s);
    assert!(events(&out).is_empty(), "{out:?}");
    let seconds = (answered - heard).as_secs() + rooms::REJOIN_HISTORY_MARGIN_SECS;
    let [join] = &joins(&out)[..] else {
        panic!("one join: {out:?}")
    };
    assert!(
        join.contains(&format!("to=\"{ROOM}/me\""))
            && join.contains(&format!("<history seconds=\"{seconds}\"/>")),
        "{join}"
    );
    // no self-ping while joining
    ack_all(&mut s, answered);
    assert_eq!(s.poll_timeout(), Some(answered + rooms::ROOM_TIMEOUT));
    // the room takes the app back: an event, and the pings go on
    s.on_element(answered, self_presence("me"));
    let out = drain(&mut s);
    assert!(replies(&out).is_empty());
    let ev = events(&out);
    assert!(
        matches!(&ev[..], [Event::Occupant(me), Event::RoomRejoined(j)] if me.is_self && j.room == ROOM),
        "{ev:?}"
    );
    assert_ping_due_after(&s, answered);
    // history seen before is dropped, what was missed is kept
    for (sid, body) in [("sid-1", "one"), ("sid-2", "two")] {
        s.on_element(
            answered,
            xml(&format!(
                "<message from='{ROOM}/firstwitch' type='groupchat'><body>{body}</body>\
                 <delay xmlns='urn:xmpp:delay' from='{ROOM}' stamp='2026-01-01T00:00:00Z'/>\
                 <stanza-id xmlns='urn:xmpp:sid:0' by='{ROOM}' id='{sid}'/></message>"
            )),
        );
    }
    let ev = events(&drain(&mut s));
    assert!(
        matches!(&ev[..], [Event::RoomMessage(m)] if m.body.as_deref() == Some("two")),
        "{ev:?}"
    );
}

#[test]
fn a_refused_rejoin_after_a_self_ping_is_an_event_and_the_room_is_forgotten() {
    let t0 = Instant::now();
    let mut s = in_quiet_room(t0);
    let due = s.poll_timeout().expect("a self-ping is scheduled");
    s.handle_timeout(due);
    let id = room_ping(&drain(&mut s)).expect("the self-ping");
    s.on_element(due, ping_answer(&id, Some("not-acceptable")));
    drain(&mut s);
    s.on_element(
        due,
        xml(&format!(
            "<presence from='{ROOM}/me' type='error'><error type='auth'>\
             <forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>"
        )),
    );
    assert_eq!(
        events(&drain(&mut s)),
        vec![Event::RoomRejoinFailed {
            room: ROOM.into(),
            error: ClientError::StanzaError("forbidden".into()),
        }]
    );
    ack_all(&mut s, due);
    assert_eq!(s.poll_timeout(), None, "nothing left to ping");
}

#[test]
fn unanswered_self_pings_never_rejoin_and_are_tried_again_an_interval_later() {
    let t0 = Instant::now();
    let mut s = in_quiet_room(t0);
    let mut due = s.poll_timeout().expect("a self-ping is scheduled");
    let mut ids = Vec::new();
    for _ in 0..3 {
        s.handle_timeout(due);
        ids.push(room_ping(&drain(&mut s)).expect("the self-ping"));
        ack_all(&mut s, due);
        let gave_up = due + IQ_TIMEOUT;
        assert_eq!(s.poll_timeout(), Some(gave_up));
        s.handle_timeout(gave_up);
        let out = drain(&mut s);
        assert!(joins(&out).is_empty(), "no rejoin on a timeout: {out:?}");
        assert!(events(&out).is_empty() && replies(&out).is_empty());
        due = assert_ping_due_after(&s, gave_up);
    }
    // nor on an inconclusive answer (the room's server unreachable, or
    // overloaded)
    for error in ["remote-server-not-found", "resource-constraint"] {
        s.handle_timeout(due);
        let id = room_ping(&drain(&mut s)).expect("the self-ping");
        s.on_element(due, ping_answer(&id, Some(error)));
        let out = drain(&mut s);
        ack_all(&mut s, due);
        assert!(joins(&out).is_empty(), "{error}: {out:?}");
        due = assert_ping_due_after(&s, due);
    }
    // a late answer to a ping given up on counts for nothing
    s.on_element(due, ping_answer(&ids[0], Some("not-acceptable")));
    assert!(joins(&drain(&mut s)).is_empty());
}

/// The connection drops and the stream is resumed at `at`; outputs drained.
fn resume(s: &mut Session, at: Instant) -> Vec<Output> {
    s.on_stream_end("gone".into());
    drain(s);
    let h = s.sm.sent();
    s.on_connected(
        at,
        Negotiated {
            resumed: Some(h),
            ..Negotiated::default()
        },
    );
    drain(s)
}

/// Lets time pass to the next timeout (which must be at most `by`): when,
/// and what came out.
fn next_timeout(s: &mut Session, by: Instant) -> (Instant, Vec<Output>) {
    let due = s.poll_timeout().expect("a timeout");
    assert!(due <= by, "due {due:?} after {by:?}");
    s.handle_timeout(due);
    (due, drain(s))
}

#[test]
fn a_resumed_stream_self_pings_every_joined_room_within_a_short_spread_and_rejoins_one_that_lost_the_app()
 {
    let t0 = Instant::now();
    let mut s = in_quiet_room(t0);
    s.on_stream_end("gone".into());
    drain(&mut s);
    assert_eq!(s.poll_timeout(), None, "no self-ping while offline");
    let back = t0 + Duration::from_secs(5);
    s.on_connected(
        back,
        Negotiated {
            resumed: Some(1),
            ..Negotiated::default()
        },
    );
    let out = drain(&mut s);
    assert!(events(&out).contains(&Event::Reconnected { resumed: true }));
    assert!(joins(&out).is_empty(), "the room is still joined: {out:?}");
    assert_eq!(room_ping(&out), None, "not at once: spread");
    // the room speaks (what it queued before a restart, maybe): the ping
    // after a resumption goes all the same
    s.on_element(
        back,
        xml(&format!(
            "<message from='{ROOM}/firstwitch' type='groupchat' id='m1'><body>hi</body></message>"
        )),
    );
    drain(&mut s);
    ack_all(&mut s, back);
    let (due, out) = next_timeout(&mut s, back + rooms::RESUME_PING_SPREAD);
    let id = room_ping(&out).expect("a self-ping soon after the resumption");
    // the server restarted meanwhile and forgot the occupants
    s.on_element(due, ping_answer(&id, Some("not-acceptable")));
    let out = drain(&mut s);
    let [join] = &joins(&out)[..] else {
        panic!("one join: {out:?}")
    };
    let seconds = (due - back).as_secs() + rooms::REJOIN_HISTORY_MARGIN_SECS;
    assert!(
        join.contains(&format!("<history seconds=\"{seconds}\"/>")),
        "{join}"
    );
    s.on_element(due, self_presence("me"));
    assert!(
        events(&drain(&mut s))
            .iter()
            .any(|e| matches!(e, Event::RoomRejoined(j) if j.room == ROOM))
    );
}

#[test]
fn resumptions_ping_many_rooms_at_different_moments_within_the_spread() {
    let t0 = Instant::now();
    let mut s = connected(config(), t0);
    let rooms: Vec<String> = (0..20)
        .map(|i| format!("r{i}@conference.example.org"))
        .collect();
    for (i, room) in rooms.iter().enumerate() {
        s.command(
            t0,
            Command::Request(
                RequestId(i as u64),
                Request::JoinRoom {
                    room: room.clone(),
                    nick: "me".into(),
                    password: None,
                    history: None,
                },
            ),
        );
        s.on_element(
            t0,
            xml(&format!(
                "<presence from='{room}/me'><x xmlns='http://jabber.org/protocol/muc#user'>\
                 <item affiliation='member' role='participant'/><status code='110'/></x></presence>"
            )),
        );
    }
    drain(&mut s);
    let back = t0 + Duration::from_secs(5);
    let out = resume(&mut s, back);
    assert!(written(&out).iter().all(|w| !w.contains("urn:xmpp:ping")));
    ack_all(&mut s, back);
    let mut moments = Vec::new();
    let mut pinged = 0;
    while pinged < rooms.len() {
        let (due, out) = next_timeout(&mut s, back + rooms::RESUME_PING_SPREAD);
        let n = written(&out)
            .iter()
            .filter(|w| w.contains("urn:xmpp:ping"))
            .count();
        assert!(n > 0, "{out:?}");
        pinged += n;
        moments.push(due);
        ack_all(&mut s, due);
    }
    assert_eq!(pinged, rooms.len());
    assert!(moments.len() > rooms.len() / 2, "spread: {moments:?}");
}

#[test]
fn the_app_can_check_its_rooms_now_but_a_ping_waiting_is_not_sent_again() {
    let t0 = Instant::now();
    let mut s = in_quiet_room(t0);
    let before = s.iqs.waiting_count();
    s.command(t0, Command::CheckRooms);
    let first = room_ping(&drain(&mut s)).expect("a self-ping at once");
    for _ in 0..10 {
        s.command(t0, Command::CheckRooms);
        assert_eq!(room_ping(&drain(&mut s)), None, "one waits already");
    }
    assert_eq!(s.iqs.waiting_count(), before + 1);
    s.on_element(t0, ping_answer(&first, Some("not-acceptable")));
    assert_eq!(joins(&drain(&mut s)).len(), 1);
}

#[test]
fn a_ping_superseded_by_a_resumption_stops_waiting_and_its_answer_counts_for_nothing_nor_reaches_the_app()
 {
    let t0 = Instant::now();
    let mut s = in_quiet_room(t0);
    let before = s.iqs.waiting_count();
    s.command(t0, Command::CheckRooms);
    let mut ids = vec![room_ping(&drain(&mut s)).expect("a self-ping")];
    let mut now = t0;
    for _ in 0..5 {
        now += Duration::from_secs(1);
        resume(&mut s, now);
        assert_eq!(
            s.iqs.waiting_count(),
            before,
            "the old ping no longer waits"
        );
        ack_all(&mut s, now);
        let (due, out) = next_timeout(&mut s, now + rooms::RESUME_PING_SPREAD);
        ids.push(room_ping(&out).expect("a new self-ping"));
        assert_eq!(s.iqs.waiting_count(), before + 1);
        ack_all(&mut s, due);
        now = due;
    }
    for (i, old) in ids[..ids.len() - 1].iter().enumerate() {
        let error = (i % 2 == 0).then_some("not-acceptable");
        s.on_element(now, ping_answer(old, error));
        let out = drain(&mut s);
        assert!(joins(&out).is_empty());
        assert!(
            events(&out).is_empty(),
            "a superseded ping's answer reaches no one: {out:?}"
        );
    }
    s.on_element(
        now,
        ping_answer(ids.last().unwrap(), Some("not-acceptable")),
    );
    assert_eq!(joins(&drain(&mut s)).len(), 1);
}

/// In [`ROOM`] as "me" (acknowledged), with no periodic self-ping.
fn in_room_without_ping_interval(t0: Instant) -> Session {
    let mut s = connected(
        SessionConfig {
            room_ping_interval: None,
            ..config()
        },
        t0,
    );
    s.command(
        t0,
        Command::Request(RequestId(1), join_request("me", None, None)),
    );
    drain(&mut s);
    s.on_element(t0, self_presence("me"));
    ack_all(&mut s, t0);
    s
}

#[test]
fn without_a_ping_interval_rooms_are_pinged_only_after_a_resumption_or_when_asked() {
    let t0 = Instant::now();
    let mut s = in_room_without_ping_interval(t0);
    assert_eq!(s.poll_timeout(), None);
    s.handle_timeout(t0 + PING_INTERVAL * 10);
    assert_eq!(room_ping(&drain(&mut s)), None);
    s.command(t0, Command::CheckRooms);
    let id = room_ping(&drain(&mut s)).expect("asked: a self-ping");
    s.on_element(t0, ping_answer(&id, None));
    ack_all(&mut s, t0);
    assert_eq!(s.poll_timeout(), None, "and none after it");
    resume(&mut s, t0);
    ack_all(&mut s, t0);
    let (_, out) = next_timeout(&mut s, t0 + rooms::RESUME_PING_SPREAD);
    assert!(room_ping(&out).is_some());
}

/// [`in_quiet_room`] whose self-ping found the app out: the rejoin was
/// written at the returned moment (and acknowledged).
fn rejoining(t0: Instant) -> (Session, Instant) {
    let mut s = in_quiet_room(t0);
    let (due, id) = next_room_ping(&mut s);
    s.on_element(due, ping_answer(&id, Some("not-acceptable")));
    assert_eq!(joins(&drain(&mut s)).len(), 1);
    ack_all(&mut s, due);
    (s, due)
}

#[test]
fn an_unanswered_rejoin_of_the_sessions_own_keeps_the_room_and_is_tried_again_after_a_ping() {
    let t0 = Instant::now();
    let (mut s, sent) = rejoining(t0);
    // offline its time does not run
    s.on_stream_end("gone".into());
    drain(&mut s);
    let late = sent + rooms::ROOM_TIMEOUT * 10;
    s.handle_timeout(late);
    let out = drain(&mut s);
    assert!(events(&out).is_empty(), "{out:?}");
    // back: a full wait again from the resumption
    s.on_connected(
        late,
        Negotiated {
            resumed: Some(s.sm.sent()),
            ..Negotiated::default()
        },
    );
    drain(&mut s);
    ack_all(&mut s, late);
    assert_eq!(s.poll_timeout(), Some(late + rooms::ROOM_TIMEOUT));
    let gave_up = late + rooms::ROOM_TIMEOUT;
    s.handle_timeout(gave_up);
    let out = drain(&mut s);
    assert!(events(&out).is_empty(), "not forgotten: {out:?}");
    assert!(
        written(&out).iter().all(|w| !w.contains("unavailable")),
        "not left: {out:?}"
    );
    // the room is pinged again soon, and joined again if still needed
    let due = s.poll_timeout().expect("a retry");
    assert!(
        due >= gave_up + rooms::REJOIN_RETRY * 3 / 4 && due < gave_up + rooms::REJOIN_RETRY * 5 / 4,
        "{:?}",
        due - gave_up
    );
    s.handle_timeout(due);
    let id = room_ping(&drain(&mut s)).expect("the retry's self-ping");
    s.on_element(due, ping_answer(&id, Some("not-acceptable")));
    assert_eq!(joins(&drain(&mut s)).len(), 1);
    s.on_element(due, self_presence("me"));
    assert!(
        events(&drain(&mut s))
            .iter()
            .any(|e| matches!(e, Event::RoomRejoined(j) if j.room == ROOM))
    );
}

#[test]
fn a_rejoin_that_creates_the_room_anew_leaves_it_at_once_and_fails() {
    let t0 = Instant::now();
    let (mut s, at) = rejoining(t0);
    s.on_element(
        at,
        occupant(
            "me",
            "",
            "<item affiliation='owner' role='moderator'/><status code='110'/><status code='201'/>",
            "",
        ),
    );
    let out = drain(&mut s);
    assert_eq!(
        events(&out),
        vec![Event::RoomRejoinFailed {
            room: ROOM.into(),
            error: ClientError::StanzaError("item-not-found".into()),
        }]
    );
    let w = written(&out);
    assert!(
        w.iter()
            .any(|w| w.contains(&format!("to=\"{ROOM}/me\"")) && w.contains("unavailable")),
        "{w:?}"
    );
    ack_all(&mut s, at);
    assert_eq!(s.poll_timeout(), None, "no ping of a room being left");
    // what the room sent behind the 201 (its subject) and the answer to
    // the leave reach no one; after it the room is forgotten
    s.on_element(
        at,
        xml(&format!(
            "<message from='{ROOM}' to='alice@example.org/phone' type='groupchat'><subject/></message>"
        )),
    );
    s.on_element(
        at,
        occupant(
            "me",
            " type='unavailable'",
            "<item affiliation='owner' role='none'/><status code='110'/>",
            "",
        ),
    );
    let out = drain(&mut s);
    assert!(events(&out).is_empty(), "{out:?}");
    s.on_element(at, self_presence("me"));
    assert!(
        events(&drain(&mut s))
            .iter()
            .all(|e| !matches!(e, Event::RoomRejoined(_))),
        "the room is forgotten"
    );
}

#[test]
fn a_ping_interval_out_of_bounds_is_clamped_and_a_huge_one_never_overflows() {
    let addr = "127.0.0.1:5222".parse().unwrap();
    for (asked, kept) in [
        (Duration::MAX, rooms::MAX_ROOM_PING_INTERVAL),
        (Duration::from_millis(1), rooms::MIN_ROOM_PING_INTERVAL),
        (PING_INTERVAL, PING_INTERVAL),
    ] {
        let opts = ConnectOptions::new(addr, OWN, "pw").with_room_ping_interval(Some(asked));
        assert_eq!(SessionConfig::new(&opts).room_ping_interval, Some(kept));
    }
    // unclamped (as the session would never get it): still no panic
    let t0 = Instant::now();
    let mut s = connected(
        SessionConfig {
            room_ping_interval: Some(Duration::MAX),
            ..config()
        },
        t0,
    );
    s.command(
        t0,
        Command::Request(RequestId(1), join_request("me", None, None)),
    );
    s.on_element(t0, self_presence("me"));
    ack_all(&mut s, t0);
    let due = s.poll_timeout().expect("a ping, a day away at most");
    assert!(due <= t0 + rooms::MAX_ROOM_PING_INTERVAL * 5 / 4);
    s.handle_timeout(due);
    assert!(room_ping(&drain(&mut s)).is_some());
}

#[test]
fn no_self_ping_goes_to_a_room_whose_nick_change_is_under_way() {
    let t0 = Instant::now();
    let mut s = in_quiet_room(t0);
    let due = s.poll_timeout().expect("a self-ping is scheduled");
    let asked = due - Duration::from_secs(1);
    s.command(
        asked,
        Command::Request(
            RequestId(2),
            Request::ChangeNick {
                room: ROOM.into(),
                nick: "newme".into(),
            },
        ),
    );
    drain(&mut s);
    ack_all(&mut s, asked);
    s.handle_timeout(due);
    assert_eq!(room_ping(&drain(&mut s)), None);
    s.command(due, Command::CheckRooms);
    assert_eq!(room_ping(&drain(&mut s)), None, "not even when asked");
    // held back while the change is under way...
    let mut now = due;
    for _ in 0..3 {
        let (at, out) = next_timeout(&mut s, now + Duration::from_secs(1));
        assert_eq!(room_ping(&out), None);
        now = at;
    }
    // ...and sent within a second of its end, long before its deadline
    s.on_element(now, self_presence("newme"));
    let out = drain(&mut s);
    assert!(
        matches!(&replies(&out)[..], [(RequestId(2), Ok(_))]),
        "{out:?}"
    );
    ack_all(&mut s, now);
    let (at, out) = next_timeout(&mut s, now + Duration::from_secs(1));
    assert!(
        written(&out)
            .iter()
            .any(|w| w.contains(&format!("to=\"{ROOM}/newme\"")) && w.contains("urn:xmpp:ping")),
        "the self-ping, to the new nick: {out:?}"
    );
    assert!(at < asked + rooms::ROOM_TIMEOUT);
}

#[test]
fn a_forced_ping_that_finds_the_iq_table_full_is_tried_again_without_a_ping_interval() {
    let t0 = Instant::now();
    let mut s = in_room_without_ping_interval(t0);
    // the app fills the IQ table
    for i in 0..super::requests::MAX_PENDING_IQS {
        s.command(
            t0,
            Command::Request(
                RequestId(10 + i as u64),
                Request::Iq(xml(
                    "<iq type='get' to='example.org'><ping xmlns='urn:xmpp:ping'/></iq>",
                )),
            ),
        );
    }
    drain(&mut s);
    resume(&mut s, t0);
    ack_all(&mut s, t0);
    // the resumption's ping finds no room in the table
    let (due, out) = next_timeout(&mut s, t0 + rooms::RESUME_PING_SPREAD);
    assert_eq!(room_ping(&out), None);
    // the app's IQs time out, and the ping is tried again in time
    let mut sent = None;
    while let Some(next) = s.poll_timeout() {
        assert!(next <= due + rooms::REJOIN_RETRY, "no retry in time");
        s.handle_timeout(next);
        if let Some(id) = room_ping(&drain(&mut s)) {
            sent = Some(id);
            break;
        }
    }
    assert!(sent.is_some(), "the forced ping was tried again");
}

#[test]
fn a_ping_written_again_after_a_new_login_is_answered_to_no_one() {
    let t0 = Instant::now();
    let mut s = in_quiet_room(t0);
    s.command(t0, Command::CheckRooms);
    let id = room_ping(&drain(&mut s)).expect("a self-ping");
    // the server forgot the session: a new login, which writes what was
    // not acknowledged again (the ping among it) before joining anew
    s.on_stream_end("gone".into());
    drain(&mut s);
    s.on_connected(t0, bound());
    let out = drain(&mut s);
    assert!(
        written(&out).iter().any(|w| w.contains(&id)),
        "the ping went again: {out:?}"
    );
    assert_eq!(joins(&out).len(), 1, "{out:?}");
    s.on_element(t0, ping_answer(&id, Some("not-acceptable")));
    let out = drain(&mut s);
    assert!(events(&out).is_empty(), "{out:?}");
    assert!(joins(&out).is_empty(), "{out:?}");
}
