//! Unit tests of [`ClientSession`]: whole exchanges, driven by bytes,
//! frames and `Instant`s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cm_protocol::Frame;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use xmpp_stream::element::Element;
use xmpp_stream::framer::Limits;
use xmpp_stream::{StreamCondition, ns};

use super::*;

const HEADER: &[u8] = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='x' version='1.0'>";
const AUTH_PLAIN: &[u8] =
    b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>";

fn settings(read_rate: u64, read_burst: u64) -> Arc<SessionSettings> {
    Arc::new(SessionSettings {
        domain: "x".into(),
        limits: Limits::default(),
        read_rate,
        read_burst,
    })
}

fn offer(registration: bool) -> Arc<CoreOffer> {
    Arc::new(CoreOffer {
        mechanisms: vec!["SCRAM-SHA-256".into(), "PLAIN".into()],
        registration,
        caps: "QgayPKawpkPSDYmwT/WM94uAlu0=".into(),
        sasl2: false,
        fast: false,
    })
}

fn session_at(now: Instant, offer: Option<Arc<CoreOffer>>, seed: u64) -> ClientSession {
    ClientSession::new(
        7,
        settings(256 * 1024, 1024 * 1024),
        Framing::Stream,
        offer,
        SmallRng::seed_from_u64(seed),
        now,
    )
}

fn session() -> ClientSession {
    session_at(Instant::now(), Some(offer(false)), 1)
}

/// One input, then the batch's actions.
trait Drive {
    fn data(&mut self, bytes: &[u8]) -> Vec<SessionAction>;
    fn core(&mut self, frame: Frame) -> Vec<SessionAction>;
    fn deliver(&mut self, xml: &'static str) -> Vec<SessionAction>;
    fn closed(&mut self) -> Vec<SessionAction>;
}

impl Drive for ClientSession {
    fn data(&mut self, bytes: &[u8]) -> Vec<SessionAction> {
        self.on_data(Instant::now(), bytes);
        self.poll_actions()
    }

    fn core(&mut self, frame: Frame) -> Vec<SessionAction> {
        self.on_core(frame);
        self.poll_actions()
    }

    fn deliver(&mut self, xml: &'static str) -> Vec<SessionAction> {
        self.core(Frame::Deliver {
            sid: 7,
            payload: Bytes::from_static(xml.as_bytes()),
        })
    }

    fn closed(&mut self) -> Vec<SessionAction> {
        self.on_closed();
        self.poll_actions()
    }
}

fn written(actions: &[SessionAction]) -> String {
    actions
        .iter()
        .filter_map(|a| match a {
            SessionAction::Write(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        })
        .collect()
}

fn to_core(actions: &[SessionAction]) -> Vec<Frame> {
    actions
        .iter()
        .filter_map(|a| match a {
            SessionAction::ToCore(f) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

fn announced(actions: &[SessionAction]) -> Vec<AnnouncementUpdate> {
    actions
        .iter()
        .filter_map(|a| match a {
            SessionAction::Announcement(u) => Some(u.clone()),
            _ => None,
        })
        .collect()
}

fn authenticate(s: &mut ClientSession) {
    let a = s.data(HEADER);
    assert!(written(&a).contains("<mechanism>SCRAM-SHA-256</mechanism>"));
    let a = s.data(AUTH_PLAIN);
    assert!(
        matches!(&to_core(&a)[..], [Frame::AuthStart { mechanism, data, .. }] if mechanism == "PLAIN" && &data[..] == b"\0a\0b")
    );
    let a = s.core(Frame::AuthSuccess {
        sid: 7,
        data: Bytes::new(),
        user: "a@x".into(),
        token: None,
    });
    assert!(written(&a).contains("<success"));
}

fn bind(s: &mut ClientSession) {
    authenticate(s);
    let a = s.data(HEADER);
    assert!(written(&a).contains("urn:ietf:params:xml:ns:xmpp-bind"));
    let a = s.data(b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>phone</resource></bind></iq>");
    assert!(matches!(&to_core(&a)[..], [Frame::Bind { resource: Some(r), .. }] if r == "phone"));
    let a = s.core(Frame::BindResult {
        sid: 7,
        iq_id: "b1".into(),
        result: Ok("a@x/phone".into()),
    });
    assert_eq!(
        announced(&a),
        vec![AnnouncementUpdate::Bound {
            jid: "a@x/phone".into(),
            available: false,
            priority: 0,
            sm: None,
        }]
    );
    assert!(written(&a).contains("<jid>a@x/phone</jid>"));
}

fn bound_session() -> ClientSession {
    let mut s = session();
    bind(&mut s);
    s
}

fn enable_sm(s: &mut ClientSession, id: &str) -> Vec<SessionAction> {
    s.data(b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>");
    s.core(Frame::SmEnabled {
        sid: 7,
        id: id.into(),
        max: 300,
    })
}

#[test]
fn negotiates_and_stamps_from() {
    let mut s = bound_session();
    let a =
        s.data(b"<message to='b@x' from='evil@x' type='chat' id='m1'><body>hi</body></message>");
    let [
        Frame::Stanza {
            header, payload, ..
        },
    ] = &to_core(&a)[..]
    else {
        panic!("{a:?}")
    };
    assert_eq!(header.from, "a@x/phone");
    assert_eq!(header.to.as_deref(), Some("b@x"));
    let el = Element::parse(payload, ns::CLIENT).unwrap();
    assert_eq!(el.attr("from"), Some("a@x/phone"));
    // whitespace keep-alives between stanzas are fine
    assert!(s.data(b" \n\t ").is_empty());
    // deliveries are written as they are
    let a = s.deliver("<message/>");
    assert_eq!(written(&a), "<message/>");
    assert_eq!(
        to_core(&s.closed()),
        vec![Frame::SessionEnd {
            sid: 7,
            jid: Some("a@x/phone".into()),
            clean: false,
        }]
    );
}

#[test]
fn a_stanza_a_strict_parser_refuses_ends_the_stream_and_never_reaches_the_core() {
    for poison in [
        &b"<message to='b@x' type='chat'><body>hi</body><x xmlns='u' a='<b'/></message>"[..],
        b"<message to='b@x' type='chat'><body>a]]>b</body></message>",
        b"<message to='b@x' type='chat'><x xmlns:p='u' xmlns:q='u' p:a='1' q:a='2'/></message>",
    ] {
        let mut s = bound_session();
        let a = s.data(poison);
        assert!(
            written(&a).contains("not-well-formed"),
            "{}: {a:?}",
            String::from_utf8_lossy(poison)
        );
        assert!(a.contains(&SessionAction::Close(ClosedBy::Server)));
        assert!(
            !to_core(&a)
                .iter()
                .any(|f| matches!(f, Frame::Stanza { .. })),
            "{}",
            String::from_utf8_lossy(poison)
        );
    }
}

#[test]
fn server_claims_a_client_forged_are_cut_from_every_stanza_it_relays() {
    let mut s = bound_session();
    let forged = concat!(
        "<b:message xmlns:b='jabber:client' to='b@x' type='headline'><b:body>hi</b:body>",
        "<stanza-id xmlns='urn:xmpp:sid:0' by='b@x' id='forged1'/>",
        "<s:stanza-id xmlns:s='urn:xmpp:sid:0' by='x' id='forged2'/>",
        "<stanza-id xmlns='urn:xmpp:sid:0' by='room@conference.elsewhere' id='theirs'/>",
        "<delay xmlns='urn:xmpp:delay' from='x' stamp='1999-01-01T00:00:00Z'/>",
        "<sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>",
        "<message from='b@x' to='a@x' type='chat'><body>fake</body></message>",
        "</forwarded></sent>",
        "<result xmlns='urn:xmpp:mam:2' queryid='q' id='r'><forwarded xmlns='urn:xmpp:forward:0'/></result>",
        "</b:message>",
        "<presence><delay xmlns='urn:xmpp:delay' from='x' stamp='1999-01-01T00:00:00Z'/></presence>",
    );
    let frames = to_core(&s.data(forged.as_bytes()));
    let [
        Frame::Stanza { payload: m, .. },
        Frame::Stanza { payload: p, .. },
    ] = &frames[..]
    else {
        panic!("{frames:?}")
    };
    let m = Element::parse(m, ns::CLIENT).unwrap();
    assert_eq!(
        m.child("body", ns::CLIENT).map(Element::text).as_deref(),
        Some("hi")
    );
    let ids: Vec<_> = m
        .elements()
        .filter(|e| e.ns == ns::SID)
        .filter_map(|e| e.attr("id"))
        .collect();
    assert_eq!(ids, ["theirs"]);
    for (name, namespace) in [
        ("delay", ns::DELAY),
        ("sent", ns::CARBONS),
        ("result", ns::MAM),
    ] {
        assert!(m.child(name, namespace).is_none(), "{name} survived");
    }
    let p = Element::parse(p, ns::CLIENT).unwrap();
    assert!(p.child("delay", ns::DELAY).is_none());
}

#[test]
fn broadcast_presence_changes_are_announced_once_per_batch() {
    let mut s = bound_session();
    let a = s.data(b"<presence><priority>5</priority></presence>");
    assert_eq!(to_core(&a).len(), 1);
    assert_eq!(
        announced(&a),
        vec![AnnouncementUpdate::Presence {
            available: true,
            priority: 5
        }]
    );
    // the same presence again changes nothing; directed presence neither
    let a = s.data(b"<presence><priority>5</priority></presence><presence to='b@x'/>");
    assert_eq!(to_core(&a).len(), 2);
    assert_eq!(announced(&a), vec![]);
    // two changes in one batch: the last one is announced
    let a = s.data(b"<presence type='unavailable'/><presence><priority>-1</priority></presence>");
    assert_eq!(
        announced(&a),
        vec![AnnouncementUpdate::Presence {
            available: true,
            priority: -1
        }]
    );
    let a = s.data(b"<presence type='unavailable'/>");
    assert_eq!(
        announced(&a),
        vec![AnnouncementUpdate::Presence {
            available: false,
            priority: -1
        }]
    );
}

#[test]
fn stanzas_before_auth_end_the_stream() {
    let mut s = session();
    s.data(HEADER);
    let a = s.data(b"<message to='b@x'><body>hi</body></message>");
    assert!(written(&a).contains("not-authorized"));
    assert!(a.contains(&SessionAction::Close(ClosedBy::Server)));
    assert!(s.closed().is_empty());
}

#[test]
fn wrong_domain_and_bad_xml_get_stream_errors() {
    let mut s = session();
    let a = s.data(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='other' version='1.0'>");
    assert!(written(&a).contains("host-unknown"));
    let mut s = bound_session();
    let a = s.data(b"<message><body>&bogus;</body></message>");
    assert!(written(&a).contains("not-well-formed"));
    assert!(a.contains(&SessionAction::Close(ClosedBy::Server)));
}

#[test]
fn auth_failures_are_relayed_and_limited() {
    let mut s = session();
    s.data(HEADER);
    for i in 0..3 {
        s.data(AUTH_PLAIN);
        let a = s.core(Frame::AuthFailure {
            sid: 7,
            condition: "not-authorized".into(),
        });
        assert!(written(&a).contains("<not-authorized"));
        assert_eq!(a.contains(&SessionAction::Close(ClosedBy::Server)), i == 2);
    }
}

#[test]
fn a_bind_lost_by_a_restarted_core_is_answered_with_an_error() {
    let mut s = session();
    authenticate(&mut s);
    s.data(HEADER);
    s.data(b"<iq type='set' id='bind-9'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>");
    // what the pool sends unbound sessions when the core instance changed
    let a = s.core(Frame::AuthFailure {
        sid: 7,
        condition: "temporary-auth-failure".into(),
    });
    assert!(a.is_empty());
    let a = s.core(Frame::BindResult {
        sid: 7,
        iq_id: String::new(),
        result: Err("internal-server-error".into()),
    });
    let text = written(&a);
    assert!(
        text.contains("id=\"bind-9\"") && text.contains("internal-server-error"),
        "{text}"
    );
    // the client may bind again
    let a = s
        .data(b"<iq type='set' id='bind-10'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>");
    assert!(matches!(&to_core(&a)[..], [Frame::Bind { iq_id, .. }] if iq_id == "bind-10"));
}

#[test]
fn auth_without_initial_response_gets_an_empty_challenge() {
    let mut s = session();
    s.data(HEADER);
    let a = s.data(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'/>");
    assert!(written(&a).contains("<challenge"));
    assert!(to_core(&a).is_empty());
    let a = s.data(b"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>AGEAYg==</response>");
    assert!(
        matches!(&to_core(&a)[..], [Frame::AuthStart { mechanism, data, .. }] if mechanism == "PLAIN" && &data[..] == b"\0a\0b")
    );
}

#[test]
fn mechanisms_the_core_does_not_offer_are_refused() {
    let mut s = session();
    s.data(HEADER);
    let a = s.data(
        b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>eA==</auth>",
    );
    assert!(written(&a).contains("<invalid-mechanism"));
    assert!(to_core(&a).is_empty());
}

#[test]
fn aborts_count_and_a_stale_answer_is_dropped() {
    let mut s = session();
    s.data(HEADER);
    s.data(AUTH_PLAIN);
    let a = s.data(b"<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
    assert!(written(&a).contains("<aborted"));
    // a new attempt; the core's late answer to the aborted one is ignored
    s.data(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGMAZA==</auth>");
    let a = s.core(Frame::AuthSuccess {
        sid: 7,
        data: Bytes::new(),
        user: "a@x".into(),
        token: None,
    });
    assert!(a.is_empty(), "{a:?}");
    let a = s.core(Frame::AuthFailure {
        sid: 7,
        condition: "not-authorized".into(),
    });
    assert!(written(&a).contains("not-authorized"));
    // the third failure or abort ends the stream
    s.data(AUTH_PLAIN);
    let a = s.data(b"<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
    assert!(a.contains(&SessionAction::Close(ClosedBy::Server)));
}

#[test]
fn kick_closes_with_conflict() {
    let mut s = bound_session();
    let a = s.core(Frame::Kick {
        sid: 7,
        condition: "conflict".into(),
    });
    assert!(written(&a).contains("<conflict"));
    assert!(a.contains(&SessionAction::Close(ClosedBy::Server)));
}

#[test]
fn a_clients_stream_end_is_answered_and_ends_its_session_cleanly_with_or_without_sm() {
    for sm in [false, true] {
        let mut s = bound_session();
        if sm {
            enable_sm(&mut s, "S");
        }
        let a = s.data(b"</stream:stream>");
        assert_eq!(
            a,
            vec![
                SessionAction::Write(Bytes::from_static(b"</stream:stream>")),
                SessionAction::Report(SessionReport::Ended(EndReason::ClientClosed)),
                SessionAction::Close(ClosedBy::Client),
            ],
            "sm {sm}"
        );
        assert!(!s.wants_read());
        assert_eq!(
            to_core(&s.closed()),
            vec![Frame::SessionEnd {
                sid: 7,
                jid: Some("a@x/phone".into()),
                clean: true,
            }],
            "sm {sm}"
        );
    }
}

#[test]
fn stream_management_counts_requests_and_checks_acks() {
    let mut s = bound_session();
    let a = s.data(b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>");
    assert_eq!(
        to_core(&a),
        vec![Frame::SmEnable {
            sid: 7,
            resume: true,
            max: 0
        }]
    );
    let a = s.core(Frame::SmEnabled {
        sid: 7,
        id: "ID".into(),
        max: 300,
    });
    assert!(
        written(&a)
            .contains("<enabled xmlns=\"urn:xmpp:sm:3\" id=\"ID\" resume=\"true\" max=\"300\"/>"),
        "{}",
        written(&a)
    );
    // the counters come with it, not after it
    assert_eq!(
        announced(&a),
        vec![AnnouncementUpdate::StreamManagement(SmAnnouncement {
            id: "ID".into(),
            max: 300,
            counts: SmCounts::default(),
        })]
    );
    // one batch of two deliveries: both written, then one <r/>
    s.on_core(Frame::Deliver {
        sid: 7,
        payload: Bytes::from_static(b"<message/>"),
    });
    s.on_core(Frame::Deliver {
        sid: 7,
        payload: Bytes::from_static(b"<message/>"),
    });
    let a = s.poll_actions();
    assert_eq!(
        written(&a),
        "<message/><message/><r xmlns=\"urn:xmpp:sm:3\"/>"
    );
    // the next burst waits for the answer
    assert_eq!(written(&s.deliver("<message/>")), "<message/>");
    let a = s.data(b"<a xmlns='urn:xmpp:sm:3' h='2'/>");
    assert_eq!(to_core(&a), vec![Frame::Acked { sid: 7, h: 2 }]);
    let a = s.data(b"<r xmlns='urn:xmpp:sm:3'/>");
    assert_eq!(to_core(&a), vec![Frame::AckRequest { sid: 7 }]);
    let a = s.core(Frame::Handled { sid: 7, h: 4 });
    assert_eq!(
        written(&a),
        "<a xmlns=\"urn:xmpp:sm:3\" h=\"4\"/><r xmlns=\"urn:xmpp:sm:3\"/>"
    );
    let a = s.data(b"<a xmlns='urn:xmpp:sm:3' h='4'/>");
    assert!(written(&a).contains("undefined-condition"));
    assert!(a.contains(&SessionAction::Close(ClosedBy::Server)));
}

#[test]
fn sm_counters_leave_the_session_once_per_batch_and_only_when_changed() {
    let mut s = bound_session();
    enable_sm(&mut s, "ID");
    let a = s.data(b"<message to='b@x'/><message to='b@x'/><message to='b@x'/>");
    assert_eq!(to_core(&a).len(), 3);
    assert_eq!(
        announced(&a),
        vec![AnnouncementUpdate::SmCounters(SmCounts {
            handled: 3,
            ..SmCounts::default()
        })]
    );
    // the counters reach the registry before the frames they count leave
    // (a link that dies with them on it is re-announced with them counted)
    assert!(matches!(
        a.first(),
        Some(SessionAction::Announcement(AnnouncementUpdate::SmCounters(c))) if c.handled == 3
    ));
    // a keep-alive changes nothing
    assert_eq!(announced(&s.data(b" ")), vec![]);
    s.on_core(Frame::Deliver {
        sid: 7,
        payload: Bytes::from_static(b"<message/>"),
    });
    s.on_core(Frame::Deliver {
        sid: 7,
        payload: Bytes::from_static(b"<message/>"),
    });
    assert_eq!(
        announced(&s.poll_actions()),
        vec![AnnouncementUpdate::SmCounters(SmCounts {
            handled: 3,
            sent: 2,
            client_acked: 0,
            next_seq: 2,
            confirmed: 0,
        })]
    );
    assert_eq!(
        announced(&s.data(b"<a xmlns='urn:xmpp:sm:3' h='2'/>")),
        vec![AnnouncementUpdate::SmCounters(SmCounts {
            handled: 3,
            sent: 2,
            client_acked: 2,
            next_seq: 2,
            confirmed: 0,
        })]
    );
    // without stream management there is nothing to announce
    let mut plain = bound_session();
    assert_eq!(announced(&plain.data(b"<message to='b@x'/>")), vec![]);
}

#[test]
fn an_sm_enable_and_the_stanzas_behind_it_are_known_to_the_registry_before_they_leave_for_the_core()
{
    let mut s = bound_session();
    let a = s.data(
        b"<enable xmlns='urn:xmpp:sm:3' resume='true'/><message to='b@x'/><message to='b@x'/>",
    );
    let enabling = SessionAction::Announcement(AnnouncementUpdate::SmEnabling(true));
    let counts = SessionAction::Announcement(AnnouncementUpdate::SmCounters(SmCounts {
        handled: 2,
        ..SmCounts::default()
    }));
    let position = |action: &SessionAction| a.iter().position(|x| x == action).expect("sent");
    let first_frame = |stanza: bool| {
        a.iter()
            .position(|x| match x {
                SessionAction::ToCore(Frame::Stanza { .. }) => stanza,
                SessionAction::ToCore(Frame::SmEnable { .. }) => !stanza,
                _ => false,
            })
            .expect("sent")
    };
    assert!(position(&enabling) < first_frame(false), "{a:?}");
    assert!(first_frame(false) < first_frame(true), "{a:?}");
    assert!(position(&counts) < first_frame(true), "{a:?}");
    // the core's answer makes it a stream-managed session in the registry
    let a = s.core(Frame::SmEnabled {
        sid: 7,
        id: "ID".into(),
        max: 300,
    });
    assert!(matches!(
        &announced(&a)[..],
        [AnnouncementUpdate::StreamManagement(sm)] if sm.counts.handled == 2
    ));
}

#[test]
fn the_cores_handled_becomes_the_confirmed_count_up_to_what_the_client_sent() {
    let mut s = bound_session();
    enable_sm(&mut s, "ID");
    s.data(b"<message to='b@x'/><message to='b@x'/><message to='b@x'/>");
    s.data(b"<r xmlns='urn:xmpp:sm:3'/>");
    let counts = |confirmed| {
        vec![AnnouncementUpdate::SmCounters(SmCounts {
            handled: 3,
            confirmed,
            ..SmCounts::default()
        })]
    };
    assert_eq!(
        announced(&s.core(Frame::Handled { sid: 7, h: 2 })),
        counts(2)
    );
    // an older answer, or one beyond what the client sent, confirms nothing
    assert_eq!(announced(&s.core(Frame::Handled { sid: 7, h: 1 })), vec![]);
    assert_eq!(announced(&s.core(Frame::Handled { sid: 7, h: 4 })), vec![]);
    assert_eq!(
        announced(&s.core(Frame::Handled { sid: 7, h: 3 })),
        counts(3)
    );
}

#[test]
fn inactive_clients_get_messages_at_once_and_the_latest_presence_later() {
    let mut s = bound_session();
    s.data(b"<enable xmlns='urn:xmpp:sm:3'/>");
    s.core(Frame::SmEnabled {
        sid: 7,
        id: String::new(),
        max: 0,
    });
    s.data(b"<inactive xmlns='urn:xmpp:csi:0'/>");
    assert!(written(&s.deliver("<presence from='b@x/1'><show>away</show></presence>")).is_empty());
    let a = s.deliver("<presence from='b@x/1'/>");
    assert!(written(&a).is_empty());
    assert_eq!(
        to_core(&a),
        vec![Frame::Skipped {
            sid: 7,
            seqs: vec![0]
        }]
    );
    assert_eq!(
        written(&s.deliver("<message/>")),
        "<message/><r xmlns=\"urn:xmpp:sm:3\"/>"
    );
    let a = s.data(b"<active xmlns='urn:xmpp:csi:0'/>");
    assert_eq!(written(&a), "<presence from='b@x/1'/>");
}

/// Authenticates, restarts the stream and asks to resume SM id `P` with
/// the client's `h` = 3.
fn resuming_session() -> ClientSession {
    let mut s = session();
    authenticate(&mut s);
    let a = s.data(HEADER);
    assert!(written(&a).contains("urn:xmpp:sm:3"));
    let a = s.data(b"<resume xmlns='urn:xmpp:sm:3' previd='P' h='3'/>");
    assert_eq!(
        to_core(&a),
        vec![Frame::Resume {
            sid: 7,
            user: "a@x".into(),
            previd: "P".into(),
            h: 3
        }]
    );
    s
}

/// The core's answer to [`resuming_session`]: its `h` is 9, the previous
/// stream was available with priority 2.
fn resumed_frame() -> Frame {
    Frame::Resumed {
        sid: 7,
        result: Ok(cm_protocol::Resumption {
            jid: "a@x/phone".into(),
            h: 9,
            available: true,
            priority: 2,
            max: 300,
        }),
    }
}

#[test]
fn an_accepted_resumption_is_announced_whole_and_counts_replays_from_the_clients_h() {
    let mut s = resuming_session();
    let a = s.core(resumed_frame());
    assert!(written(&a).contains("<resumed xmlns=\"urn:xmpp:sm:3\" previd=\"P\" h=\"9\"/>"));
    // one update with the presence and SM counters resumed: nothing left at
    // a placeholder for a later update to fill in
    assert_eq!(
        announced(&a),
        vec![AnnouncementUpdate::Bound {
            jid: "a@x/phone".into(),
            available: true,
            priority: 2,
            sm: Some(SmAnnouncement {
                id: "P".into(),
                max: 300,
                counts: SmCounts {
                    handled: 9,
                    sent: 3,
                    client_acked: 3,
                    next_seq: 0,
                    confirmed: 9,
                },
            }),
        }]
    );
    // replayed deliveries are written and counted from the client's h
    assert!(written(&s.deliver("<message/>")).contains("<r "));
    let a = s.data(b"<a xmlns='urn:xmpp:sm:3' h='4'/>");
    assert_eq!(to_core(&a), vec![Frame::Acked { sid: 7, h: 4 }]);
}

#[test]
fn a_resume_batch_with_a_replay_reaches_the_registry_with_its_counters_at_every_step() {
    let mut s = resuming_session();
    // the answer and the replay arrive in one batch
    s.on_core(resumed_frame());
    s.on_core(Frame::Deliver {
        sid: 7,
        payload: Bytes::from_static(b"<message id='m1'/>"),
    });
    s.on_core(Frame::Deliver {
        sid: 7,
        payload: Bytes::from_static(b"<message id='m2'/>"),
    });
    let a = s.poll_actions();
    assert_eq!(
        written(&a),
        "<resumed xmlns=\"urn:xmpp:sm:3\" previd=\"P\" h=\"9\"/><message id='m1'/><message id='m2'/><r xmlns=\"urn:xmpp:sm:3\"/>"
    );
    // The registry, applying the updates in order, may re-announce the
    // session between any two of them: each step must be the truth.
    let registry = crate::sessions::Sessions::starting_at(6);
    let opened = registry.open();
    assert_eq!(opened.sid, 7);
    let announce =
        |registry: &crate::sessions::Sessions| match &registry.announcements(0, 1).frames[..] {
            [
                Frame::Announce {
                    jid,
                    available,
                    priority,
                    sm: Some(sm),
                    ..
                },
            ] => (jid.clone(), *available, *priority, sm.clone()),
            other => panic!("{other:?}"),
        };
    let updates = announced(&a);
    assert_eq!(updates.len(), 2, "{updates:?}");
    let mut steps = Vec::new();
    for update in updates {
        registry.update(7, update);
        steps.push(announce(&registry));
    }
    let snapshot = |sent, next_seq| cm_protocol::SmSnapshot {
        id: "P".into(),
        handled: 9,
        sent,
        client_acked: 3,
        next_seq,
        max: 300,
        detached: false,
    };
    let jid = String::from("a@x/phone");
    assert_eq!(
        steps,
        vec![
            (jid.clone(), true, 2, snapshot(3, 0)),
            (jid, true, 2, snapshot(5, 2)),
        ]
    );
}

#[test]
fn a_refused_resumption_leaves_the_client_free_to_bind() {
    let mut s = resuming_session();
    let a = s.core(Frame::Resumed {
        sid: 7,
        result: Err("item-not-found".into()),
    });
    assert!(written(&a).contains("<failed xmlns=\"urn:xmpp:sm:3\"><item-not-found"));
    assert_eq!(announced(&a), vec![]);
    let a = s.data(b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>");
    assert!(matches!(&to_core(&a)[..], [Frame::Bind { .. }]));
}

#[test]
fn registration_is_offered_and_relayed_where_the_core_offers_it() {
    let mut s = session_at(Instant::now(), Some(offer(true)), 1);
    let a = s.data(HEADER);
    assert!(written(&a).contains("<register xmlns=\"http://jabber.org/features/iq-register\""));
    let a = s.data(b"<iq type='set' id='r1'><query xmlns='jabber:iq:register'><username>d</username><password>p</password></query></iq>");
    assert_eq!(
        to_core(&a),
        vec![Frame::Register {
            sid: 7,
            username: "d".into(),
            password: "p".into()
        }]
    );
    let a = s.core(Frame::RegisterResult {
        sid: 7,
        error: Some("conflict".into()),
    });
    let text = written(&a);
    assert!(
        text.contains("id=\"r1\"") && text.contains("<conflict"),
        "{text}"
    );
    // not offered: a registration IQ is a stanza before authentication
    let mut s = session();
    let a = s.data(HEADER);
    assert!(!written(&a).contains("iq-register"));
    let a = s.data(b"<iq type='get' id='r1'><query xmlns='jabber:iq:register'/></iq>");
    assert!(written(&a).contains("not-authorized"));
}

#[test]
fn features_wait_for_the_core_offer_and_what_the_client_sent_meanwhile_is_handled_after_it() {
    let t0 = Instant::now();
    let mut s = session_at(t0, None, 1);
    // a client that sends its header and its <auth/> at once
    s.on_data(t0, &[HEADER, AUTH_PLAIN].concat());
    let a = s.poll_actions();
    let text = written(&a);
    assert!(
        text.starts_with("<?xml") || text.starts_with("<stream:stream"),
        "{text}"
    );
    assert!(!text.contains("features"), "{text}");
    assert!(to_core(&a).is_empty());
    assert!(s.awaits_core_offer());
    s.on_core_offer(offer(true));
    let a = s.poll_actions();
    let text = written(&a);
    assert!(
        text.starts_with("<stream:features>") && text.contains("iq-register"),
        "{text}"
    );
    // what the client sent meanwhile is handled now
    assert!(
        matches!(&to_core(&a)[..], [Frame::AuthStart { mechanism, .. }] if mechanism == "PLAIN")
    );
    assert!(!s.awaits_core_offer());
    assert!(s.wants_read());
}

#[test]
fn while_the_features_wait_reading_goes_on_up_to_one_stanzas_worth() {
    let t0 = Instant::now();
    let mut s = session_at(t0, None, 1);
    s.on_data(t0, HEADER);
    s.poll_actions();
    assert!(s.awaits_core_offer());
    // reading goes on (so the driver notices a client that leaves)...
    assert!(s.wants_read());
    let limit = Limits::default().max_stanza_bytes;
    s.on_data(t0, &vec![b' '; limit - 1]);
    assert!(s.wants_read());
    assert_eq!(s.poll_actions(), vec![]);
    // ...but nothing is parsed meanwhile: past one stanza's worth it stops
    s.on_data(t0, b" ");
    assert!(!s.wants_read());
    s.on_core_offer(offer(false));
    assert!(written(&s.poll_actions()).starts_with("<stream:features>"));
    assert!(s.wants_read());
}

#[test]
fn features_go_out_at_once_when_the_offer_is_known() {
    let mut s = session_at(Instant::now(), Some(offer(false)), 1);
    let a = s.data(HEADER);
    assert_eq!(a.len(), 1, "header and features in one write: {a:?}");
    assert!(written(&a).contains("<stream:features>"));
    assert!(!s.awaits_core_offer());
}

#[test]
fn a_core_that_never_answers_ends_the_stream_with_remote_connection_failed() {
    let t0 = Instant::now();
    let mut s = session_at(t0, None, 1);
    s.on_data(t0, HEADER);
    s.poll_actions();
    assert_eq!(s.poll_timeout(), Some(t0 + NEGOTIATION_TIMEOUT));
    s.handle_timeout(t0 + NEGOTIATION_TIMEOUT);
    let a = s.poll_actions();
    let text = written(&a);
    assert!(text.contains("<remote-connection-failed"), "{text}");
    assert!(
        !text.contains("<stream:stream"),
        "the header went out before: {text}"
    );
    assert_eq!(a.last(), Some(&SessionAction::Close(ClosedBy::Server)));
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn negotiation_times_out_exactly_at_its_deadline() {
    let t0 = Instant::now();
    let deadline = t0 + NEGOTIATION_TIMEOUT;
    let mut s = session_at(t0, Some(offer(false)), 1);
    assert_eq!(s.poll_timeout(), Some(deadline));
    s.on_data(t0 + Duration::from_secs(1), HEADER);
    s.poll_actions();
    // authenticated but not bound: the deadline stands
    s.on_data(t0 + Duration::from_secs(2), AUTH_PLAIN);
    s.on_core(Frame::AuthSuccess {
        sid: 7,
        data: Bytes::new(),
        user: "a@x".into(),
        token: None,
    });
    s.poll_actions();
    assert_eq!(s.poll_timeout(), Some(deadline));
    s.handle_timeout(deadline - Duration::from_nanos(1));
    assert_eq!(s.poll_actions(), vec![]);
    s.handle_timeout(deadline);
    let a = s.poll_actions();
    let text = written(&a);
    assert!(text.contains("<connection-timeout"), "{text}");
    // a stream error needs an open stream: the restarted one gets a header first
    assert!(
        text.starts_with("<?xml") || text.starts_with("<stream:stream"),
        "{text}"
    );
    assert_eq!(a.last(), Some(&SessionAction::Close(ClosedBy::Server)));
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn a_bound_session_has_no_negotiation_deadline() {
    let t0 = Instant::now();
    let mut s = session_at(t0, Some(offer(false)), 1);
    bind(&mut s);
    assert_eq!(s.poll_timeout(), None);
    s.handle_timeout(t0 + NEGOTIATION_TIMEOUT * 2);
    assert_eq!(s.poll_actions(), vec![]);
    let a = s.data(b"<message to='b@x'/>");
    assert_eq!(to_core(&a).len(), 1);
}

#[test]
fn reading_pauses_when_the_read_budget_is_spent_and_resumes_in_time() {
    let t0 = Instant::now();
    // 1000 bytes a second, 4000 at once
    let mut s = ClientSession::new(
        7,
        settings(1000, 4000),
        Framing::Stream,
        Some(offer(false)),
        SmallRng::seed_from_u64(1),
        t0,
    );
    s.on_data(t0, HEADER);
    assert!(s.wants_read());
    // whitespace keep-alives up to the burst: still within budget
    s.on_data(t0, &vec![b' '; 4000 - HEADER.len()]);
    assert!(s.wants_read());
    // 1000 bytes more: one second's worth over budget
    s.on_data(t0, &[b' '; 1000]);
    assert!(!s.wants_read());
    let resume = t0 + Duration::from_secs(1);
    assert_eq!(s.poll_timeout(), Some(resume));
    s.handle_timeout(resume - Duration::from_millis(1));
    assert!(!s.wants_read());
    s.handle_timeout(resume);
    assert!(s.wants_read());
    // what remains is the negotiation deadline
    assert_eq!(s.poll_timeout(), Some(t0 + NEGOTIATION_TIMEOUT));
    assert_eq!(
        written(&s.poll_actions())
            .matches("<stream:features>")
            .count(),
        1
    );
    // after a quiet second the budget has refilled by the rate
    let later = resume + Duration::from_secs(1);
    s.on_data(later, &[b' '; 1000]);
    assert!(s.wants_read());
    s.on_data(later, &[b' '; 500]);
    assert!(!s.wants_read());
    assert_eq!(s.poll_timeout(), Some(later + Duration::from_millis(500)));
}

#[test]
fn the_same_seed_gives_the_same_stream_ids() {
    let header_with_seed = |seed| {
        let mut s = session_at(Instant::now(), Some(offer(false)), seed);
        let text = written(&s.data(HEADER));
        let start = text.find(" id=").expect("a stream id") + 5;
        text[start..start + 16].to_owned()
    };
    assert_eq!(header_with_seed(42), header_with_seed(42));
    assert_ne!(header_with_seed(42), header_with_seed(43));
    // the restarted stream gets a new id from the same generator
    let mut s = session_at(Instant::now(), Some(offer(false)), 42);
    let first = written(&s.data(HEADER));
    s.data(AUTH_PLAIN);
    s.core(Frame::AuthSuccess {
        sid: 7,
        data: Bytes::new(),
        user: "a@x".into(),
        token: None,
    });
    let second = written(&s.data(HEADER));
    assert!(first.contains(&header_with_seed(42)));
    assert!(!second.contains(&header_with_seed(42)));
}

#[test]
fn websocket_openings_are_messages_of_their_own() {
    let mut s = ClientSession::new(
        7,
        settings(256 * 1024, 1024 * 1024),
        Framing::WebSocket,
        Some(offer(false)),
        SmallRng::seed_from_u64(1),
        Instant::now(),
    );
    let a = s.data(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='x' version='1.0'>");
    let writes: Vec<String> = a
        .iter()
        .filter_map(|a| match a {
            SessionAction::Write(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(writes.len(), 2, "{writes:?}");
    assert!(writes[0].starts_with("<open"), "{writes:?}");
    assert!(
        writes[1].starts_with("<stream:features xmlns:stream=\"http://etherx.jabber.org/streams\""),
        "{writes:?}"
    );
    let a = s.data(b"<message to='b@x'/>");
    assert!(written(&a).contains("not-authorized"));
    assert!(written(&a).ends_with("<close xmlns=\"urn:ietf:params:xml:ns:xmpp-framing\"/>"));
}

#[test]
fn shutdown_closes_with_a_stream_error_once() {
    let mut s = bound_session();
    s.close(StreamCondition::SystemShutdown, None);
    let a = s.poll_actions();
    assert!(written(&a).contains("<system-shutdown"));
    assert_eq!(a.last(), Some(&SessionAction::Close(ClosedBy::Server)));
    s.close(StreamCondition::SystemShutdown, None);
    assert_eq!(s.poll_actions(), vec![]);
    assert!(!s.wants_read());
}

fn reported(actions: &[SessionAction]) -> Vec<SessionReport> {
    actions
        .iter()
        .filter_map(|a| match a {
            SessionAction::Report(r) => Some(*r),
            _ => None,
        })
        .collect()
}

fn ended(condition: StreamCondition, refusal: Option<Refusal>) -> SessionReport {
    SessionReport::Ended(EndReason::StreamError { condition, refusal })
}

#[test]
fn every_sasl_outcome_is_reported_with_its_result() {
    let mut s = session();
    s.data(HEADER);
    let a = s
        .data(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='X-NONE'>AGEAYg==</auth>");
    assert_eq!(
        reported(&a),
        vec![SessionReport::Login(LoginResult::InvalidMechanism)]
    );
    let a = s.data(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>!!</auth>");
    assert_eq!(
        reported(&a),
        vec![SessionReport::Login(LoginResult::IncorrectEncoding)]
    );
    for (condition, result) in [
        ("not-authorized", LoginResult::Failed),
        ("temporary-auth-failure", LoginResult::TemporaryFailure),
    ] {
        s.data(AUTH_PLAIN);
        let a = s.core(Frame::AuthFailure {
            sid: 7,
            condition: condition.into(),
        });
        assert_eq!(
            reported(&a),
            vec![SessionReport::Login(result)],
            "{condition}"
        );
    }
    // the third failure (an abort counts) ends the stream
    let a = s.data(b"<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
    assert_eq!(
        reported(&a),
        vec![
            SessionReport::Login(LoginResult::Aborted),
            ended(
                StreamCondition::PolicyViolation,
                Some(Refusal::AuthFailures)
            ),
        ]
    );
    let mut s = session();
    s.data(HEADER);
    s.data(AUTH_PLAIN);
    let a = s.core(Frame::AuthSuccess {
        sid: 7,
        data: Bytes::new(),
        user: "a@x".into(),
        token: None,
    });
    assert_eq!(reported(&a), vec![SessionReport::Login(LoginResult::Ok)]);
}

#[test]
fn a_stanza_over_the_size_limit_is_reported_as_refused_just_before_the_close() {
    let mut s = bound_session();
    let body = "a".repeat(Limits::default().max_stanza_bytes);
    let big = format!("<message to='b@x'><body>{body}</body></message>");
    let a = s.data(big.as_bytes());
    assert!(to_core(&a).is_empty());
    assert_eq!(
        a[a.len() - 2..],
        [
            SessionAction::Report(ended(
                StreamCondition::PolicyViolation,
                Some(Refusal::StanzaLimits)
            )),
            SessionAction::Close(ClosedBy::Server),
        ]
    );
}

#[test]
fn an_end_says_whether_the_client_closed_was_refused_or_the_stream_was_ended_for_it() {
    // where the session is, what the client sends, and the end reported
    enum At {
        Fresh,
        Opened,
        Bound,
    }
    let cases: [(At, &[u8], SessionReport); 5] = [
        (
            At::Bound,
            b"</stream:stream>",
            SessionReport::Ended(EndReason::ClientClosed),
        ),
        (
            At::Opened,
            b"<message to='b@x'><body>hi</body></message>",
            ended(StreamCondition::NotAuthorized, Some(Refusal::Unauthenticated)),
        ),
        (
            At::Fresh,
            b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='other' version='1.0'>",
            ended(StreamCondition::HostUnknown, Some(Refusal::HostUnknown)),
        ),
        (
            At::Bound,
            b"<message><body>&bogus;</body></message>",
            ended(StreamCondition::NotWellFormed, Some(Refusal::Malformed)),
        ),
        (
            At::Bound,
            b"<a xmlns='urn:xmpp:sm:3' h='1'/>",
            ended(
                StreamCondition::UnsupportedStanzaType,
                Some(Refusal::StreamManagement),
            ),
        ),
    ];
    for (at, input, expected) in cases {
        let mut s = match at {
            At::Bound => bound_session(),
            At::Fresh | At::Opened => session(),
        };
        if let At::Opened = at {
            s.data(HEADER);
        }
        let a = s.data(input);
        assert_eq!(
            reported(&a),
            vec![expected],
            "{}",
            String::from_utf8_lossy(input)
        );
    }
    // not the client's doing: no refusal
    let mut s = bound_session();
    let a = s.core(Frame::Kick {
        sid: 7,
        condition: "conflict".into(),
    });
    assert_eq!(reported(&a), vec![ended(StreamCondition::Conflict, None)]);
    let mut s = bound_session();
    s.close(StreamCondition::SystemShutdown, None);
    assert_eq!(
        reported(&s.poll_actions()),
        vec![ended(StreamCondition::SystemShutdown, None)]
    );
    let t0 = Instant::now();
    let mut s = session_at(t0, Some(offer(false)), 1);
    s.on_data(t0, HEADER);
    s.poll_actions();
    s.handle_timeout(t0 + NEGOTIATION_TIMEOUT);
    assert_eq!(
        reported(&s.poll_actions()),
        vec![ended(
            StreamCondition::ConnectionTimeout,
            Some(Refusal::NegotiationTimeout)
        )]
    );
}

#[test]
fn each_pause_of_reading_for_a_spent_budget_is_reported_once() {
    let t0 = Instant::now();
    let mut s = ClientSession::new(
        7,
        settings(1000, 4000),
        Framing::Stream,
        Some(offer(false)),
        SmallRng::seed_from_u64(1),
        t0,
    );
    s.on_data(t0, HEADER);
    s.on_data(t0, &vec![b' '; 4000 - HEADER.len()]);
    assert_eq!(reported(&s.poll_actions()), vec![]);
    s.on_data(t0, &[b' '; 1000]);
    assert_eq!(reported(&s.poll_actions()), vec![SessionReport::ReadPaused]);
    s.handle_timeout(t0 + Duration::from_secs(1));
    assert_eq!(reported(&s.poll_actions()), vec![]);
    s.on_data(t0 + Duration::from_secs(1), &[b' '; 2000]);
    assert_eq!(reported(&s.poll_actions()), vec![SessionReport::ReadPaused]);
}

#[test]
fn stream_features_before_and_after_authentication_show_the_cores_entity_capabilities() {
    let caps = "<c xmlns=\"http://jabber.org/protocol/caps\" hash=\"sha-1\" node=\"https://longlink.invalid/caps\" ver=\"QgayPKawpkPSDYmwT/WM94uAlu0=\"/>";
    let mut s = session_at(Instant::now(), Some(offer(false)), 1);
    let a = s.data(HEADER);
    assert!(written(&a).contains(caps), "{}", written(&a));
    let mut s = session_at(Instant::now(), Some(offer(false)), 1);
    authenticate(&mut s);
    let a = s.data(HEADER);
    let text = written(&a);
    assert!(
        text.contains("urn:ietf:params:xml:ns:xmpp-bind") && text.contains(caps),
        "{text}"
    );
}

// ---- SASL2 (XEP-0388) with Bind2 (XEP-0386) and inline resumption ----

fn sasl2_session() -> ClientSession {
    let offer = Arc::new(CoreOffer {
        sasl2: true,
        fast: false,
        ..(*offer(false)).clone()
    });
    session_at(Instant::now(), Some(offer), 1)
}

const AUTHENTICATE_BIND2: &[u8] = b"<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'>\
    <initial-response>AGEAYg==</initial-response>\
    <user-agent id='d4565fa7-4d72-4749-b3d3-740edbf87770'><software>t</software></user-agent>\
    <bind xmlns='urn:xmpp:bind:0'><tag>app</tag>\
    <enable xmlns='urn:xmpp:sm:3' resume='true' max='300'/>\
    <enable xmlns='urn:xmpp:carbons:2'/></bind></authenticate>";

fn auth_success(s: &mut ClientSession) -> Vec<SessionAction> {
    s.core(Frame::AuthSuccess {
        sid: 7,
        data: Bytes::from_static(b"v=sig"),
        user: "a@x".into(),
        token: None,
    })
}

#[test]
fn sasl2_is_offered_only_when_the_core_says_so() {
    let a = sasl2_session().data(HEADER);
    let w = written(&a);
    assert!(w.contains("<authentication xmlns=\"urn:xmpp:sasl:2\"><mechanism>SCRAM-SHA-256</mechanism><mechanism>PLAIN</mechanism><inline><bind xmlns=\"urn:xmpp:bind:0\">"), "{w}");
    assert!(
        w.contains("<feature var=\"urn:xmpp:sm:3\"/>")
            && w.contains("<sm xmlns=\"urn:xmpp:sm:3\"/>")
    );
    // the SASL1 list is still there
    assert!(w.contains("<mechanisms xmlns=\"urn:ietf:params:xml:ns:xmpp-sasl\">"));
    let a = session().data(HEADER);
    assert!(!written(&a).contains("urn:xmpp:sasl:2"));
    // without the offer, an <authenticate/> ends the stream
    let mut s = session();
    s.data(HEADER);
    let a = s.data(AUTHENTICATE_BIND2);
    assert!(written(&a).contains("not-authorized"), "{a:?}");
    assert!(a.contains(&SessionAction::Close(ClosedBy::Server)));
}

#[test]
fn sasl2_bind2_binds_with_tag_carbons_and_sm_then_writes_one_success_without_restart() {
    let mut s = sasl2_session();
    s.data(HEADER);
    let a = s.data(AUTHENTICATE_BIND2);
    assert!(
        matches!(&to_core(&a)[..], [Frame::AuthStart { mechanism, data, .. }] if mechanism == "PLAIN" && &data[..] == b"\0a\0b"),
        "{a:?}"
    );
    assert_eq!(written(&a), "");
    let a = auth_success(&mut s);
    assert_eq!(written(&a), "", "nothing before the inline answers");
    assert_eq!(
        to_core(&a),
        vec![Frame::Bind {
            sid: 7,
            user: "a@x".into(),
            iq_id: String::new(),
            resource: None,
            bind2: Some(cm_protocol::Bind2 {
                tag: Some("app".into()),
                carbons: true,
                sm: Some(cm_protocol::SmRequest {
                    resume: true,
                    max: 300
                }),
            }),
        }]
    );
    // the client pipelines its presence: it waits, unparsed
    assert!(to_core(&s.data(b"<presence/>")).is_empty());
    let a = s.core(Frame::BindResult {
        sid: 7,
        iq_id: String::new(),
        result: Ok("a@x/app/r1".into()),
    });
    assert_eq!(written(&a), "", "the success waits for SmEnabled");
    let a = s.core(Frame::SmEnabled {
        sid: 7,
        id: "sm1".into(),
        max: 300,
    });
    let w = written(&a);
    assert_eq!(
        w,
        "<success xmlns=\"urn:xmpp:sasl:2\"><additional-data>dj1zaWc=</additional-data>\
         <authorization-identifier>a@x/app/r1</authorization-identifier>\
         <bound xmlns=\"urn:xmpp:bind:0\"><enabled xmlns=\"urn:xmpp:sm:3\" id=\"sm1\" resume=\"true\" max=\"300\"/></bound></success>\
         <stream:features><csi xmlns=\"urn:xmpp:csi:0\"/><ver xmlns=\"urn:xmpp:features:rosterver\"/>\
         <c xmlns=\"http://jabber.org/protocol/caps\" hash=\"sha-1\" node=\"https://longlink.invalid/caps\" ver=\"QgayPKawpkPSDYmwT/WM94uAlu0=\"/></stream:features>"
    );
    // the pipelined presence now goes to the core, stamped and counted
    let frames = to_core(&a);
    assert!(
        matches!(&frames[..], [Frame::Stanza { header, .. }] if header.from == "a@x/app/r1"),
        "{frames:?}"
    );
    let updates = announced(&a);
    assert!(
        updates
            .iter()
            .any(|u| matches!(u, AnnouncementUpdate::StreamManagement(sm) if sm.id == "sm1")),
        "{updates:?}"
    );
    // SM numbering is on: a delivery is counted and acknowledged
    let a = s.deliver("<message/>");
    assert_eq!(written(&a), "<message/><r xmlns=\"urn:xmpp:sm:3\"/>");
}

#[test]
fn sasl2_inline_resume_success_is_bound_at_once_and_the_ledger_follows() {
    let mut s = sasl2_session();
    s.data(HEADER);
    s.data(b"<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>AGEAYg==</initial-response>\
        <resume xmlns='urn:xmpp:sm:3' previd='sm0' h='4'/>\
        <bind xmlns='urn:xmpp:bind:0'><enable xmlns='urn:xmpp:sm:3' resume='true'/></bind></authenticate>");
    let a = auth_success(&mut s);
    assert_eq!(
        to_core(&a),
        vec![Frame::Resume {
            sid: 7,
            user: "a@x".into(),
            previd: "sm0".into(),
            h: 4
        }]
    );
    let a = s.core(Frame::Resumed {
        sid: 7,
        result: Ok(cm_protocol::Resumption {
            jid: "a@x/app/r0".into(),
            h: 9,
            available: true,
            priority: 1,
            max: 300,
        }),
    });
    let w = written(&a);
    assert!(
        w.starts_with("<success xmlns=\"urn:xmpp:sasl:2\"><additional-data>dj1zaWc=</additional-data><authorization-identifier>a@x/app/r0</authorization-identifier><resumed xmlns=\"urn:xmpp:sm:3\" previd=\"sm0\" h=\"9\"/></success><stream:features><csi xmlns=\"urn:xmpp:csi:0\"/>"),
        "{w}"
    );
    assert!(!w.contains("bound"));
    // SM is on again: it is not offered (@xmpp/client resumes again if it is)
    assert!(!w.contains("<sm "), "{w}");
    assert!(to_core(&a).is_empty(), "no bind after a resumption");
    // the replayed ledger is written after it
    let a = s.deliver("<message id='missed'/>");
    assert!(written(&a).starts_with("<message id='missed'/>"));
    // stream management is on: an <enable/> now is refused, as the
    // features said
    let a = s.data(b"<enable xmlns='urn:xmpp:sm:3'/>");
    assert!(written(&a).contains("unexpected-request"), "{a:?}");
}

#[test]
fn sasl2_failed_inline_resume_falls_back_to_bind2_in_the_same_success() {
    let mut s = sasl2_session();
    s.data(HEADER);
    s.data(b"<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>AGEAYg==</initial-response>\
        <resume xmlns='urn:xmpp:sm:3' previd='gone' h='4'/>\
        <bind xmlns='urn:xmpp:bind:0'><tag>app</tag></bind></authenticate>");
    auth_success(&mut s);
    let a = s.core(Frame::Resumed {
        sid: 7,
        result: Err("item-not-found".into()),
    });
    assert_eq!(written(&a), "");
    assert!(
        matches!(&to_core(&a)[..], [Frame::Bind { bind2: Some(b), .. }] if b.sm.is_none() && !b.carbons)
    );
    let a = s.core(Frame::BindResult {
        sid: 7,
        iq_id: String::new(),
        result: Ok("a@x/app/r2".into()),
    });
    let w = written(&a);
    assert!(
        w.starts_with("<success xmlns=\"urn:xmpp:sasl:2\"><additional-data>dj1zaWc=</additional-data><authorization-identifier>a@x/app/r2</authorization-identifier>\
            <failed xmlns=\"urn:xmpp:sm:3\"><item-not-found xmlns=\"urn:ietf:params:xml:ns:xmpp-stanzas\"/></failed>\
            <bound xmlns=\"urn:xmpp:bind:0\"/></success><stream:features><sm xmlns=\"urn:xmpp:sm:3\"/>"),
        "{w}"
    );
}

#[test]
fn sasl2_without_inline_requests_authenticates_and_the_client_binds_the_legacy_way() {
    let mut s = sasl2_session();
    s.data(HEADER);
    // no initial response: an empty challenge asks for it
    let a = s.data(b"<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'/>");
    assert_eq!(
        written(&a),
        "<challenge xmlns=\"urn:xmpp:sasl:2\"></challenge>"
    );
    let a = s.data(b"<response xmlns='urn:xmpp:sasl:2'>AGEAYg==</response>");
    assert_eq!(to_core(&a).len(), 1);
    let a = auth_success(&mut s);
    let w = written(&a);
    assert!(w.contains("<authorization-identifier>a@x</authorization-identifier></success><stream:features><bind xmlns=\"urn:ietf:params:xml:ns:xmpp-bind\"/>"), "{w}");
    let a = s.data(b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>");
    assert!(matches!(
        &to_core(&a)[..],
        [Frame::Bind { bind2: None, .. }]
    ));
}

#[test]
fn sasl2_failure_keeps_the_stream_for_a_retry_and_challenges_use_the_sasl2_namespace() {
    let mut s = sasl2_session();
    s.data(HEADER);
    s.data(AUTHENTICATE_BIND2);
    let a = s.core(Frame::AuthFailure {
        sid: 7,
        condition: "not-authorized".into(),
    });
    assert_eq!(
        written(&a),
        "<failure xmlns=\"urn:xmpp:sasl:2\"><not-authorized xmlns=\"urn:ietf:params:xml:ns:xmpp-sasl\"/></failure>"
    );
    assert!(!a.contains(&SessionAction::Close(ClosedBy::Server)));
    // a retry with SCRAM on the same stream: challenge and response in SASL2
    let a = s.data(b"<authenticate xmlns='urn:xmpp:sasl:2' mechanism='SCRAM-SHA-256'><initial-response>biwsbj1hLHI9eA==</initial-response></authenticate>");
    assert!(
        matches!(&to_core(&a)[..], [Frame::AuthStart { mechanism, .. }] if mechanism == "SCRAM-SHA-256")
    );
    let a = s.core(Frame::AuthChallenge {
        sid: 7,
        data: Bytes::from_static(b"r=xy"),
    });
    assert_eq!(
        written(&a),
        "<challenge xmlns=\"urn:xmpp:sasl:2\">cj14eQ==</challenge>"
    );
    // a SASL1 response in the middle of a SASL2 exchange ends the stream
    let a = s.data(b"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>eA==</response>");
    assert!(a.contains(&SessionAction::Close(ClosedBy::Server)));
}

#[test]
fn sasl2_unknown_mechanism_bad_base64_and_bad_resume_are_sasl2_failures_counted() {
    let mut s = sasl2_session();
    s.data(HEADER);
    let a = s.data(b"<authenticate xmlns='urn:xmpp:sasl:2' mechanism='X-NONE'><initial-response>AA==</initial-response></authenticate>");
    assert!(written(&a).contains("<invalid-mechanism"), "{a:?}");
    let a = s.data(b"<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>!!</initial-response></authenticate>");
    assert!(written(&a).contains("<incorrect-encoding"), "{a:?}");
    let a = s.data(b"<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>AGEAYg==</initial-response><resume xmlns='urn:xmpp:sm:3' previd='x'/></authenticate>");
    assert!(written(&a).contains("<malformed-request"), "{a:?}");
    // counted as in SASL1 (an unknown mechanism is not): a third ends it
    assert!(
        !a.contains(&SessionAction::Close(ClosedBy::Server)),
        "{a:?}"
    );
    let a = s.data(b"<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>!!</initial-response></authenticate>");
    assert!(a.contains(&SessionAction::Close(ClosedBy::Server)), "{a:?}");
}

#[test]
fn sasl2_a_refused_bind2_leaves_sm_off_so_the_legacy_enable_works_and_the_deadline_runs_until_the_success()
 {
    let now = Instant::now();
    let offer = Arc::new(CoreOffer {
        sasl2: true,
        fast: false,
        ..(*offer(false)).clone()
    });
    let mut s = session_at(now, Some(offer.clone()), 1);
    s.data(HEADER);
    s.data(AUTHENTICATE_BIND2);
    auth_success(&mut s);
    let a = s.core(Frame::BindResult {
        sid: 7,
        iq_id: String::new(),
        result: Err("resource-constraint".into()),
    });
    let w = written(&a);
    assert!(
        w.contains("<success xmlns=\"urn:xmpp:sasl:2\">") && !w.contains("<bound"),
        "{w}"
    );
    // a legacy bind (no restart), then a legacy <enable/>: asked of the
    // core, not failed
    let a = s.data(b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>");
    assert!(
        matches!(&to_core(&a)[..], [Frame::Bind { bind2: None, .. }]),
        "{a:?}"
    );
    s.core(Frame::BindResult {
        sid: 7,
        iq_id: "b1".into(),
        result: Ok("a@x/r2".into()),
    });
    let a = s.data(b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>");
    assert!(!written(&a).contains("<failed"), "{a:?}");
    assert!(
        to_core(&a)
            .iter()
            .any(|f| matches!(f, Frame::SmEnable { .. })),
        "{a:?}"
    );

    // bound, but SmEnabled never comes: the negotiation deadline ends it
    let mut s = session_at(now, Some(offer), 1);
    s.data(HEADER);
    s.data(AUTHENTICATE_BIND2);
    auth_success(&mut s);
    s.core(Frame::BindResult {
        sid: 7,
        iq_id: String::new(),
        result: Ok("a@x/app/r1".into()),
    });
    assert!(
        s.poll_timeout().is_some(),
        "a deadline while SmEnabled is awaited"
    );
    s.handle_timeout(now + NEGOTIATION_TIMEOUT + Duration::from_secs(1));
    let a = s.poll_actions();
    assert!(
        a.iter().any(|x| matches!(x, SessionAction::Close(_))),
        "the stream ends at the deadline: {a:?}"
    );
}

#[test]
fn sasl2_a_presence_in_the_same_flight_as_the_authenticate_waits_for_the_success() {
    let mut s = sasl2_session();
    s.data(HEADER);
    let mut flight = AUTHENTICATE_BIND2.to_vec();
    flight.extend_from_slice(b"<presence/>");
    let a = s.data(&flight);
    assert!(!written(&a).contains("not-authorized"), "{a:?}");
    assert!(
        matches!(&to_core(&a)[..], [Frame::AuthStart { .. }]),
        "{a:?}"
    );
    auth_success(&mut s);
    s.core(Frame::BindResult {
        sid: 7,
        iq_id: String::new(),
        result: Ok("a@x/app/r1".into()),
    });
    let a = s.core(Frame::SmEnabled {
        sid: 7,
        id: "sm1".into(),
        max: 300,
    });
    let frames = to_core(&a);
    assert!(
        matches!(&frames[..], [Frame::Stanza { header, .. }] if header.from == "a@x/app/r1"),
        "{frames:?}"
    );
}

// ---- FAST (XEP-0484) ----

fn fast_session(exporter: Option<&'static [u8]>) -> ClientSession {
    let offer = Arc::new(CoreOffer {
        sasl2: true,
        fast: true,
        ..(*offer(false)).clone()
    });
    let s = session_at(Instant::now(), Some(offer), 1);
    match exporter {
        Some(e) => s.with_tls_exporter(Bytes::from_static(e)),
        None => s,
    }
}

#[test]
fn fast_is_offered_inline_with_expr_only_where_the_exporter_is_known_and_never_as_sasl() {
    let w = written(&fast_session(Some(&[5; 32])).data(HEADER));
    assert!(
        w.contains("<fast xmlns=\"urn:xmpp:fast:0\"><mechanism>HT-SHA-256-EXPR</mechanism><mechanism>HT-SHA-256-NONE</mechanism></fast>"),
        "{w}"
    );
    assert_eq!(w.matches("HT-SHA-256").count(), 2, "not among SASL's: {w}");
    let w = written(&fast_session(None).data(HEADER));
    assert!(
        w.contains("<fast xmlns=\"urn:xmpp:fast:0\"><mechanism>HT-SHA-256-NONE</mechanism></fast>"),
        "{w}"
    );
    assert!(!written(&sasl2_session().data(HEADER)).contains("urn:xmpp:fast:0"));
}

#[test]
fn a_fast_token_use_reaches_the_core_with_its_user_agent_count_and_binding_and_a_granted_token_is_written()
 {
    let mut s = fast_session(Some(&[5; 32]));
    s.data(HEADER);
    let a = s.data(
        b"<authenticate xmlns='urn:xmpp:sasl:2' mechanism='HT-SHA-256-EXPR'>\
          <initial-response>YQBo</initial-response><user-agent id='ua-1'/>\
          <fast xmlns='urn:xmpp:fast:0' count='4'/>\
          <request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/></authenticate>",
    );
    let [
        Frame::AuthStart {
            mechanism,
            data,
            fast,
            ..
        },
    ] = &to_core(&a)[..]
    else {
        panic!("{a:?}");
    };
    assert_eq!(
        (mechanism.as_str(), &data[..]),
        ("HT-SHA-256-EXPR", &b"a\0h"[..])
    );
    assert_eq!(fast.user_agent.as_deref(), Some("ua-1"));
    assert_eq!(fast.count, Some(4));
    assert_eq!(fast.request_token.as_deref(), Some("HT-SHA-256-NONE"));
    assert_eq!(fast.tls_exporter.as_deref(), Some(&[5u8; 32][..]));
    assert!(!fast.early && !fast.invalidate);
    let a = s.core(Frame::AuthSuccess {
        sid: 7,
        data: Bytes::from_static(b"proof"),
        user: "a@x".into(),
        token: Some(cm_protocol::FastTokenGrant {
            token: "tok".into(),
            expiry: 1_798_111_200,
        }),
    });
    let w = written(&a);
    assert!(
        w.contains("<token xmlns=\"urn:xmpp:fast:0\" token=\"tok\" expiry=\"2026-12-24T11:20:00Z\"/></success>"),
        "{w}"
    );
}

#[test]
fn an_ht_mechanism_this_connection_does_not_offer_is_refused_and_a_token_is_asked_only_for_an_offered_one()
 {
    // no exporter: no -EXPR
    let mut s = fast_session(None);
    s.data(HEADER);
    let a = s.data(
        b"<authenticate xmlns='urn:xmpp:sasl:2' mechanism='HT-SHA-256-EXPR'>\
          <initial-response>YQBo</initial-response><user-agent id='ua-1'/></authenticate>",
    );
    assert!(to_core(&a).is_empty());
    assert!(written(&a).contains("invalid-mechanism"), "{a:?}");
    // -UNIQ is never offered, so never asked of the core
    let a = s.data(
        b"<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'>\
          <initial-response>AGEAYg==</initial-response><user-agent id='ua-1'/>\
          <request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-UNIQ'/></authenticate>",
    );
    let [Frame::AuthStart { fast, .. }] = &to_core(&a)[..] else {
        panic!("{a:?}");
    };
    assert_eq!(fast.request_token, None);
    assert_eq!(fast.tls_exporter, None);
}

// ---- QUIC 0-RTT: the early rule (docs/design/sasl2-fast.md §6.2) ----

/// A FAST session whose transport's handshake is not complete (0-RTT).
fn early_session() -> ClientSession {
    fast_session(None).with_early_data()
}

const AUTHENTICATE_NONE: &[u8] =
    b"<authenticate xmlns='urn:xmpp:sasl:2' mechanism='HT-SHA-256-NONE'>\
    <initial-response>YQBo</initial-response><user-agent id='ua-1'/>\
    <fast xmlns='urn:xmpp:fast:0' count='5'/></authenticate>";

const AUTHENTICATE_NONE_BIND2: &[u8] =
    b"<authenticate xmlns='urn:xmpp:sasl:2' mechanism='HT-SHA-256-NONE'>\
    <initial-response>YQBo</initial-response><user-agent id='ua-1'/>\
    <fast xmlns='urn:xmpp:fast:0' count='5'/>\
    <bind xmlns='urn:xmpp:bind:0'><tag>app</tag></bind></authenticate>";

const FAST_NONE_0RTT: &str = "<fast xmlns=\"urn:xmpp:fast:0\" tls-0rtt=\"true\"><mechanism>HT-SHA-256-NONE</mechanism></fast>";

#[test]
fn features_written_in_early_data_offer_only_ht_none_and_tls_0rtt() {
    let mut s = early_session();
    let w = written(&s.data(HEADER));
    assert!(w.contains(FAST_NONE_0RTT), "{w}");
    assert!(!w.contains("HT-SHA-256-EXPR"), "{w}");
    // the same once the core's offer comes late
    let offer = Arc::new(CoreOffer {
        sasl2: true,
        fast: true,
        ..(*offer(false)).clone()
    });
    let mut s = session_at(Instant::now(), None, 1).with_early_data();
    s.data(HEADER);
    s.on_core_offer(offer);
    let w = written(&s.poll_actions());
    assert!(w.contains(FAST_NONE_0RTT), "{w}");
}

#[test]
fn a_session_on_a_zero_rtt_transport_offers_tls_0rtt_also_after_its_handshake() {
    let mut s = fast_session(Some(&[5; 32])).with_zero_rtt();
    let w = written(&s.data(HEADER));
    assert!(
        w.contains("<fast xmlns=\"urn:xmpp:fast:0\" tls-0rtt=\"true\"><mechanism>HT-SHA-256-EXPR</mechanism><mechanism>HT-SHA-256-NONE</mechanism></fast>"),
        "{w}"
    );
    // without 0-RTT on its transport, no tls-0rtt
    let w = written(&fast_session(Some(&[5; 32])).data(HEADER));
    assert!(!w.contains("tls-0rtt"), "{w}");
}

#[test]
fn an_authenticate_in_early_data_reaches_the_core_marked_early_without_an_exporter() {
    let mut s = early_session();
    s.data(HEADER);
    let a = s.data(AUTHENTICATE_NONE);
    let [
        Frame::AuthStart {
            mechanism, fast, ..
        },
    ] = &to_core(&a)[..]
    else {
        panic!("{a:?}");
    };
    assert_eq!(mechanism, "HT-SHA-256-NONE");
    assert!(fast.early);
    assert_eq!(fast.tls_exporter, None);
    assert_eq!(fast.count, Some(5));
    assert_eq!(fast.user_agent.as_deref(), Some("ua-1"));
    // its success is written before the handshake completes (0.5-RTT data)
    let a = auth_success(&mut s);
    assert!(
        written(&a).contains("<success xmlns=\"urn:xmpp:sasl:2\">"),
        "{a:?}"
    );
}

#[test]
fn a_stanza_pipelined_behind_an_early_authenticate_waits_for_the_handshake_and_goes_after_it() {
    let mut s = early_session();
    let mut flight = HEADER.to_vec();
    flight.extend_from_slice(AUTHENTICATE_NONE_BIND2);
    flight.extend_from_slice(b"<presence/>");
    let a = s.data(&flight);
    assert!(
        matches!(&to_core(&a)[..], [Frame::AuthStart { fast, .. }] if fast.early),
        "{a:?}"
    );
    let a = auth_success(&mut s);
    assert!(matches!(&to_core(&a)[..], [Frame::Bind { .. }]), "{a:?}");
    let a = s.core(Frame::BindResult {
        sid: 7,
        iq_id: String::new(),
        result: Ok("a@x/app/r1".into()),
    });
    // bound and its success written, but the presence still waits
    assert!(
        written(&a).contains("<bound xmlns=\"urn:xmpp:bind:0\"/>"),
        "{a:?}"
    );
    assert!(to_core(&a).is_empty(), "{a:?}");
    assert!(to_core(&s.data(b"<message to='b@x'/>")).is_empty());
    // while it waits, reading goes on only up to one stanza's worth
    let limit = Limits::default().max_stanza_bytes;
    s.on_data(Instant::now(), &vec![b' '; limit]);
    assert!(!s.wants_read());
    s.on_handshake_complete(Some(Bytes::from_static(&[5; 32])));
    let frames = to_core(&s.poll_actions());
    assert!(
        matches!(&frames[..], [Frame::Stanza { header: h1, .. }, Frame::Stanza { header: h2, .. }]
            if h1.from == "a@x/app/r1" && h2.to.as_deref() == Some("b@x")),
        "{frames:?}"
    );
    assert!(s.wants_read());
}

#[test]
fn a_second_authenticate_in_early_data_waits_for_the_handshake_and_is_not_early() {
    let mut s = early_session();
    s.data(HEADER);
    assert_eq!(to_core(&s.data(AUTHENTICATE_NONE)).len(), 1);
    let a = s.core(Frame::AuthFailure {
        sid: 7,
        condition: "not-authorized".into(),
    });
    assert!(written(&a).contains("not-authorized"), "{a:?}");
    // the retry is not acted on before the handshake completes
    let a = s.data(AUTHENTICATE_NONE);
    assert!(to_core(&a).is_empty() && written(&a).is_empty(), "{a:?}");
    s.on_handshake_complete(Some(Bytes::from_static(&[5; 32])));
    let a = s.poll_actions();
    let [Frame::AuthStart { fast, .. }] = &to_core(&a)[..] else {
        panic!("{a:?}");
    };
    assert!(!fast.early);
    assert_eq!(fast.tls_exporter.as_deref(), Some(&[5u8; 32][..]));
}

#[test]
fn sasl1_auth_password_authenticate_registration_and_stream_end_in_early_data_wait_until_the_handshake()
 {
    // SASL1 <auth/>
    let mut s = early_session();
    s.data(HEADER);
    let a = s.data(AUTH_PLAIN);
    assert!(to_core(&a).is_empty() && written(&a).is_empty(), "{a:?}");
    // (and anything behind it, even an <authenticate/>)
    assert!(to_core(&s.data(AUTHENTICATE_NONE)).is_empty());
    s.on_handshake_complete(None);
    let a = s.poll_actions();
    assert!(
        matches!(&to_core(&a)[..], [Frame::AuthStart { mechanism, fast, .. }] if mechanism == "PLAIN" && !fast.early),
        "{a:?}"
    );
    // a SASL2 <authenticate/> with a password (no count would stop its replay)
    let mut s = early_session();
    s.data(HEADER);
    let a = s.data(AUTHENTICATE_BIND2);
    assert!(to_core(&a).is_empty() && written(&a).is_empty(), "{a:?}");
    s.on_handshake_complete(None);
    let a = s.poll_actions();
    assert!(
        matches!(&to_core(&a)[..], [Frame::AuthStart { mechanism, fast, .. }] if mechanism == "PLAIN" && !fast.early),
        "{a:?}"
    );
    // a registration IQ
    let offer = Arc::new(CoreOffer {
        sasl2: true,
        fast: true,
        ..(*offer(true)).clone()
    });
    let mut s = session_at(Instant::now(), Some(offer), 1).with_early_data();
    s.data(HEADER);
    let a = s.data(b"<iq type='set' id='r1'><query xmlns='jabber:iq:register'><username>d</username><password>p</password></query></iq>");
    assert!(to_core(&a).is_empty() && written(&a).is_empty(), "{a:?}");
    s.on_handshake_complete(None);
    let a = s.poll_actions();
    assert!(
        matches!(&to_core(&a)[..], [Frame::Register { username, .. }] if username == "d"),
        "{a:?}"
    );
    // the stream's end
    let mut s = early_session();
    s.data(HEADER);
    let a = s.data(b"</stream:stream>");
    assert!(
        !a.contains(&SessionAction::Close(ClosedBy::Client)),
        "{a:?}"
    );
    s.on_handshake_complete(None);
    assert!(
        s.poll_actions()
            .contains(&SessionAction::Close(ClosedBy::Client))
    );
}
