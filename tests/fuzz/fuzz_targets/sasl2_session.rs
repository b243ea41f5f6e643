//! The CM's per-stream state machine from its first stream header on, with
//! SASL2 (XEP-0388) offered: the client's bytes are arbitrary, so they may
//! log in with SASL2 (Bind2, inline SM enable and carbons, an inline
//! resumption, failures and retries, data pipelined behind the
//! `<authenticate/>`) or SASL1, and the core answers what is pending at
//! it when the input says so. The first octet seeds the stream ids; then
//! each octet below 0xd0 says how many of the following octets (1 to 208)
//! are the client's next bytes, and each octet from 0xd0 up is one event
//! from the core or the clock (see [`Harness::event`]).
//!
//! Checked: what the CM writes to the client frames and parses as XML; no
//! client stanza reaches the core before the client was told the stream
//! is bound (a `<success/>` with `<bound/>` or `<resumed/>`, a bind result
//! or a `<resumed/>`), and each one relayed is stamped with the bound JID
//! and parses, its routing header saying what it says; at most one
//! authentication success per stream; the features after a bound SASL2
//! success offer `<sm/>` only while stream management is off; after the
//! stream closed nothing goes to the core but one `SessionEnd`, and that
//! one does whenever the core knew of the session (the stream is closed
//! at the end of every input). FAST (XEP-0484) is offered; the seed's low
//! bits make the stream early (QUIC 0-RTT, until an event completes its
//! handshake) and give it a `tls-exporter`: while early, nothing but an
//! `HT-SHA-256-NONE` authentication, marked early, and after its success
//! its inline resumption or Bind2 binding reach the core.

#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cm_node::session::{
    AnnouncementUpdate, ClientSession, CoreOffer, Framing, SessionAction, SessionReport,
    SessionSettings,
};
use cm_protocol::{Frame, Kind, Resumption};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use xmpp_stream::element::Element;
use xmpp_stream::framer::{FrameEvent, Framer, Limits};
use xmpp_stream::ns;

const SID: u64 = 7;
/// The user the core authenticates, whatever the credentials.
const USER: &str = "alice@example.org";
/// The full JID every bind and resumption the core grants is for.
const JID: &str = "alice@example.org/r";
const HEADER: &[u8] = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.org' version='1.0'>";

struct Harness {
    session: ClientSession,
    now: Instant,
    /// Frames what the CM writes (its own headers count as restarts).
    written: Framer,
    /// The CM closed the stream (`Close`), or the driver said it is gone.
    closed: bool,
    /// The driver told the session the stream is gone (`on_closed`).
    gone: bool,
    /// A `Report(Ended)` came (it must come once, just before the close).
    ended: bool,
    /// `SessionEnd` went to the core.
    session_ended: bool,
    /// The client was told the stream is bound.
    bound: bool,
    /// The registry was told the session is bound.
    announced: bool,
    /// Stream management is on, as the client was told.
    sm_on: bool,
    /// Authentication successes written (SASL1 or SASL2).
    successes: u32,
    /// The next features follow a bound SASL2 success.
    features_after_bound_success: bool,
    /// An `AuthStart` / `AuthResponse` waits for the core's answer.
    pending_auth: bool,
    /// `iq_id` of the `Bind` at the core; whether SM enable is folded in.
    pending_bind: Option<(String, bool)>,
    /// A `Resume` is at the core.
    pending_resume: bool,
    /// An `SmEnable` (or a Bind2 SM enable whose bind succeeded) waits.
    pending_sm: bool,
    /// The transport's handshake is not complete (0-RTT data).
    early: bool,
    /// The core answered an authentication with a success.
    core_authenticated: bool,
    /// The stream started early.
    started_early: bool,
}

fn client_reader() -> Framer {
    Framer::new(Limits {
        max_stanza_bytes: 2 * 1024 * 1024,
        ..Limits::default()
    })
}

impl Harness {
    fn new(seed: u64) -> Self {
        let now = Instant::now();
        let settings = Arc::new(SessionSettings {
            domain: "example.org".into(),
            limits: Limits::default(),
            read_rate: 1024 * 1024,
            read_burst: 1024 * 1024,
        });
        let offer = Arc::new(CoreOffer {
            mechanisms: vec!["SCRAM-SHA-256".into(), "PLAIN".into()],
            registration: true,
            caps: "QgayPKawpkPSDYmwT/WM94uAlu0=".into(),
            sasl2: true,
            fast: true,
        });
        let mut session = ClientSession::new(
            SID,
            settings,
            Framing::Stream,
            Some(offer),
            SmallRng::seed_from_u64(seed),
            now,
        );
        let early = seed & 1 == 1;
        if early {
            session = session.with_early_data();
        } else if seed & 2 == 2 {
            session = session.with_tls_exporter(Bytes::from_static(&[7; 32]));
        }
        let mut h = Self {
            session,
            now,
            written: client_reader(),
            closed: false,
            gone: false,
            ended: false,
            session_ended: false,
            bound: false,
            announced: false,
            sm_on: false,
            successes: 0,
            features_after_bound_success: false,
            pending_auth: false,
            pending_bind: None,
            pending_resume: false,
            pending_sm: false,
            early,
            core_authenticated: false,
            started_early: early,
        };
        h.data(HEADER);
        h
    }

    fn data(&mut self, bytes: &[u8]) {
        self.session.on_data(self.now, bytes);
        self.actions();
    }

    fn core(&mut self, frame: Frame) {
        self.session.on_core(frame);
        self.actions();
    }

    fn actions(&mut self) {
        for action in self.session.poll_actions() {
            match action {
                SessionAction::Write(bytes) => self.check_written(&bytes),
                SessionAction::ToCore(frame) => self.check_to_core(frame),
                SessionAction::Announcement(AnnouncementUpdate::Bound { jid, .. }) => {
                    assert_eq!(jid, JID);
                    assert!(!self.announced, "announced bound twice");
                    self.announced = true;
                }
                SessionAction::Announcement(_) => {}
                SessionAction::Report(report) => {
                    if matches!(report, SessionReport::Ended(_)) {
                        assert!(!self.ended, "a stream reported ended twice");
                        self.ended = true;
                    }
                }
                SessionAction::Close(_) => {
                    assert!(self.ended, "a close with no report of why just before");
                    assert!(!self.closed, "closed twice");
                    self.closed = true;
                }
            }
        }
        // the registry learns a binding in the batch that tells the client
        assert!(
            !self.bound || self.announced,
            "the client was told it is bound, the registry was not"
        );
    }

    /// Checks a frame to the core and notes what it asks.
    fn check_to_core(&mut self, frame: Frame) {
        if let Frame::SessionEnd { sid, .. } = frame {
            assert_eq!(sid, SID);
            assert!(!self.session_ended, "SessionEnd twice");
            self.session_ended = true;
            return;
        }
        assert!(
            !self.closed && !self.gone,
            "a frame to the core after the close: {frame:?}"
        );
        if let Frame::AuthStart {
            mechanism, fast, ..
        } = &frame
        {
            // (an exchange begun early keeps its mark after the handshake: its
            // initial response came as early data)
            assert!(
                fast.early == self.early || (fast.early && self.started_early),
                "early marks early data only"
            );
            if self.early {
                assert_eq!(mechanism, "HT-SHA-256-NONE", "only a token in early data");
                assert!(
                    fast.tls_exporter.is_none(),
                    "no binding before the handshake"
                );
            }
        } else if self.early {
            // (what the counted authentication asked inline — a
            // resumption, a Bind2 binding — runs after its success; nothing
            // the client sent as a stanza or another exchange does)
            assert!(
                matches!(
                    frame,
                    Frame::Resume { .. } | Frame::Bind { bind2: Some(_), .. }
                ) && self.core_authenticated,
                "only a token's authentication and its inline requests in early data: {frame:?}"
            );
        }
        match frame {
            Frame::Stanza {
                sid,
                header,
                payload,
            } => {
                assert_eq!(sid, SID);
                assert!(
                    self.bound,
                    "a stanza to the core before the client was told it is bound: {:?}",
                    String::from_utf8_lossy(&payload)
                );
                assert_eq!(header.from, JID, "relayed from someone else");
                let el = Element::parse(&payload, ns::CLIENT).unwrap_or_else(|e| {
                    panic!(
                        "relayed a stanza that does not parse ({e}): {:?}",
                        String::from_utf8_lossy(&payload)
                    )
                });
                let name = match header.kind {
                    Kind::Message => "message",
                    Kind::Presence => "presence",
                    Kind::Iq => "iq",
                };
                assert_eq!(el.name, name, "{:?}", String::from_utf8_lossy(&payload));
                assert_eq!(el.ns, ns::CLIENT, "{:?}", String::from_utf8_lossy(&payload));
                assert_eq!(
                    el.attr("from"),
                    Some(JID),
                    "not stamped: {:?}",
                    String::from_utf8_lossy(&payload)
                );
                assert_eq!(
                    el.attr("to"),
                    header.to.as_deref(),
                    "routed elsewhere than addressed: {:?}",
                    String::from_utf8_lossy(&payload)
                );
            }
            Frame::AuthStart { sid, .. } | Frame::AuthResponse { sid, .. } => {
                assert_eq!(sid, SID);
                assert_eq!(self.successes, 0, "SASL after a success");
                self.pending_auth = true;
            }
            Frame::Bind {
                sid, iq_id, bind2, ..
            } => {
                assert_eq!(sid, SID);
                assert!(
                    self.pending_bind.is_none(),
                    "a second bind while one is pending"
                );
                let sm = bind2.is_some_and(|b| b.sm.is_some());
                self.pending_bind = Some((iq_id, sm));
            }
            Frame::Resume { sid, user, .. } => {
                assert_eq!(sid, SID);
                assert_eq!(user, USER);
                self.pending_resume = true;
            }
            Frame::SmEnable { sid, .. } => {
                assert_eq!(sid, SID);
                assert!(self.bound, "SM enabled before the bind");
                self.pending_sm = true;
            }
            other => assert_eq!(other.sid(), Some(SID), "{other:?}"),
        }
    }

    /// What the CM writes must frame and parse as XML.
    fn check_written(&mut self, bytes: &[u8]) {
        if bytes.starts_with(b"<?xml") {
            // a new stream (after authentication): the client reads it afresh
            self.written = client_reader();
        }
        self.written.push(bytes);
        loop {
            match self.written.next_event() {
                Ok(Some(FrameEvent::Element(raw))) => match Element::parse_in_stream(&raw) {
                    Ok(el) => self.observe(&el),
                    Err(e) => panic!(
                        "the CM wrote an element that does not parse ({e}): {:?}",
                        String::from_utf8_lossy(&raw)
                    ),
                },
                Ok(Some(FrameEvent::Open(_))) => {}
                Ok(Some(FrameEvent::Close)) => self.written = client_reader(),
                Ok(None) => break,
                Err(e) => panic!(
                    "the CM wrote malformed XML ({e}): {:?}",
                    String::from_utf8_lossy(bytes)
                ),
            }
        }
    }

    /// Follows what the client learns from an element the CM wrote.
    fn observe(&mut self, el: &Element) {
        let features_after_success = std::mem::take(&mut self.features_after_bound_success);
        match (el.ns.as_str(), el.name.as_str()) {
            (ns::SASL2, "success") => {
                self.successes += 1;
                assert_eq!(self.successes, 1, "a second success on one stream");
                let bound = el.child("bound", ns::BIND2);
                let resumed = el.child("resumed", ns::SM);
                let id = el
                    .child("authorization-identifier", ns::SASL2)
                    .map(|i| i.text());
                if bound.is_some() || resumed.is_some() {
                    assert_eq!(id.as_deref(), Some(JID));
                    self.bound = true;
                    self.features_after_bound_success = true;
                    self.sm_on |= resumed.is_some()
                        || bound.is_some_and(|b| b.child("enabled", ns::SM).is_some());
                } else {
                    assert_eq!(id.as_deref(), Some(USER));
                }
            }
            (ns::SASL, "success") => {
                self.successes += 1;
                assert_eq!(self.successes, 1, "a second success on one stream");
            }
            (ns::STREAMS, "features") if features_after_success => {
                assert!(
                    !(self.sm_on && el.child("sm", ns::SM).is_some()),
                    "<sm/> offered after a success that turned stream management on"
                );
            }
            (ns::CLIENT, "iq")
                if el.attr("type") == Some("result") && el.child("bind", ns::BIND).is_some() =>
            {
                self.bound = true;
            }
            (ns::SM, "resumed") => {
                self.bound = true;
                self.sm_on = true;
            }
            (ns::SM, "enabled") => self.sm_on = true,
            _ => {}
        }
    }

    fn clock(&mut self, step: Duration) {
        self.now += step;
        self.session.handle_timeout(self.now);
        self.actions();
    }

    /// One event from the core or the clock, `op` from 0xd0 up. The core
    /// answers only what is pending at it (else the event does nothing).
    fn event(&mut self, op: u8) {
        match op - 0xd0 {
            0..=2 if self.pending_auth => {
                self.pending_auth = false;
                self.core_authenticated = true;
                let data = if op & 1 == 0 {
                    Bytes::from_static(b"v=sig")
                } else {
                    Bytes::new()
                };
                self.core(Frame::AuthSuccess {
                    sid: SID,
                    data,
                    user: USER.into(),
                    token: (op == 0xd2).then(|| cm_protocol::FastTokenGrant {
                        token: "dG9rZW4".into(),
                        expiry: 1_798_111_200,
                    }),
                });
            }
            3 | 4 if self.pending_auth => {
                self.pending_auth = false;
                self.core(Frame::AuthFailure {
                    sid: SID,
                    condition: if op == 0xd3 {
                        "not-authorized".into()
                    } else {
                        "temporary-auth-failure".into()
                    },
                });
            }
            5 if self.pending_auth => {
                self.pending_auth = false;
                self.core(Frame::AuthChallenge {
                    sid: SID,
                    data: Bytes::from_static(b"r=xy,s=c2FsdA==,i=4096"),
                });
            }
            6..=8 => {
                if let Some((iq_id, sm)) = self.pending_bind.take() {
                    self.pending_sm |= sm;
                    self.core(Frame::BindResult {
                        sid: SID,
                        iq_id,
                        result: Ok(JID.into()),
                    });
                }
            }
            9 => {
                if let Some((iq_id, _)) = self.pending_bind.take() {
                    self.core(Frame::BindResult {
                        sid: SID,
                        iq_id,
                        result: Err("resource-constraint".into()),
                    });
                }
            }
            10 | 11 if self.pending_resume => {
                self.pending_resume = false;
                self.core(Frame::Resumed {
                    sid: SID,
                    result: Ok(Resumption {
                        jid: JID.into(),
                        h: u32::from(op - 0xda) * 3,
                        available: op == 0xda,
                        priority: 1,
                        max: 300,
                    }),
                });
            }
            12 if self.pending_resume => {
                self.pending_resume = false;
                self.core(Frame::Resumed {
                    sid: SID,
                    result: Err("item-not-found".into()),
                });
            }
            13 | 14 if self.pending_sm => {
                self.pending_sm = false;
                self.core(Frame::SmEnabled {
                    sid: SID,
                    id: if op == 0xdd {
                        "c21pZA".into()
                    } else {
                        String::new()
                    },
                    max: 300,
                });
            }
            15..=20 => self.core(Frame::Deliver {
                sid: SID,
                payload: Bytes::from_static(
                    b"<message from='bob@example.org/desk' to='alice@example.org/r' type='chat' id='d1'><body>hi</body></message>",
                ),
            }),
            21 => self.core(Frame::Deliver {
                sid: SID,
                payload: Bytes::from_static(
                    b"<iq from='bob@example.org/desk' to='alice@example.org/r' type='get' id='q1'><ping xmlns='urn:xmpp:ping'/></iq>",
                ),
            }),
            22 | 23 => self.core(Frame::Deliver {
                sid: SID,
                payload: Bytes::from_static(
                    b"<presence from='bob@example.org/desk' to='alice@example.org/r'><show>away</show></presence>",
                ),
            }),
            24..=27 => self.core(Frame::Handled {
                sid: SID,
                h: u32::from(op - 0xe8),
            }),
            28 => self.core(Frame::Kick {
                sid: SID,
                condition: "conflict".into(),
            }),
            29..=36 => self.clock(Duration::from_secs(u64::from(op - 0xec) * 15)),
            37 if !self.gone => {
                self.gone = true;
                self.session.on_closed();
                self.actions();
            }
            38 if self.early => {
                self.early = false;
                self.session
                    .on_handshake_complete(Some(Bytes::from_static(&[7; 32])));
                self.actions();
            }
            _ => self.clock(Duration::from_millis(100)),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, mut input)) = data.split_first() else {
        return;
    };
    let mut h = Harness::new(u64::from(seed));
    while let [op, rest @ ..] = input {
        if *op >= 0xd0 {
            h.event(*op);
            input = rest;
        } else {
            let n = (usize::from(*op) + 1).min(rest.len());
            h.data(&rest[..n]);
            input = &rest[n..];
        }
    }
    // The stream goes at the end of the input whatever happened: a
    // session the core knows of (authenticated, bound, or with an
    // authentication or resumption at the core) must say so once.
    let core_knows = h.successes > 0 || h.bound || h.pending_auth || h.pending_resume;
    if !h.gone {
        h.gone = true;
        h.session.on_closed();
        h.actions();
    }
    assert!(
        !core_knows || h.session_ended,
        "the core never learned the stream ended"
    );
});
