//! The CM's per-stream state machine after a normal login (PLAIN relayed to
//! the core, a new stream, a bind) fed arbitrary client bytes, with core
//! frames and clock steps between. The first octet seeds the stream ids;
//! then each octet below 0xe0 says how many of the following octets (1 to
//! 224) are the client's next bytes, and each octet from 0xe0 up is one
//! event from the core or the clock. The core answers `SmEnable` itself.
//!
//! Checked: every stanza relayed to the core is the session's, stamped with
//! the bound JID, and parses, with the routing header saying what the
//! stanza says; what the CM writes to the client frames and parses as XML;
//! no stanza goes to the core after the stream closed.

#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cm_node::session::{
    ClientSession, CoreOffer, Framing, SessionAction, SessionReport, SessionSettings,
};
use cm_protocol::{Frame, Kind};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use xmpp_stream::element::Element;
use xmpp_stream::framer::{FrameEvent, Framer, Limits};
use xmpp_stream::ns;

const SID: u64 = 7;
const JID: &str = "alice@example.org/r";
const HEADER: &[u8] = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.org' version='1.0'>";

struct Harness {
    session: ClientSession,
    now: Instant,
    /// Frames what the CM writes (after a header of our own: the CM's
    /// headers count as restarts of it).
    written: Framer,
    closed: bool,
    /// A `Report(Ended)` came (it must come once, just before the close).
    ended: bool,
    bound: bool,
    /// `iq_id` of the bind the CM relayed.
    bind_iq: Option<String>,
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
            // (the SASL1 login of this harness; SASL2's stage has its own
            // target, sasl2_session)
            sasl2: false,
            fast: false,
        });
        let session = ClientSession::new(
            SID,
            settings,
            Framing::Stream,
            Some(offer),
            SmallRng::seed_from_u64(seed),
            now,
        );
        let mut h = Self {
            session,
            now,
            written: client_reader(),
            closed: false,
            ended: false,
            bound: false,
            bind_iq: None,
        };
        h.data(HEADER);
        h.data(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHNlY3JldA==</auth>");
        h.core(Frame::AuthSuccess {
            sid: SID,
            data: Bytes::new(),
            user: "alice".into(),
            token: None,
        });
        h.data(HEADER);
        h.data(b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>r</resource></bind></iq>");
        let iq_id = h.bind_iq.clone().expect("the CM relays the bind");
        h.core(Frame::BindResult {
            sid: SID,
            iq_id,
            result: Ok(JID.into()),
        });
        assert!(h.bound, "the session is bound");
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
        let mut answers = Vec::new();
        for action in self.session.poll_actions() {
            match action {
                SessionAction::Write(bytes) => self.check_written(&bytes),
                SessionAction::ToCore(frame) => {
                    assert!(
                        !(self.closed && matches!(frame, Frame::Stanza { .. })),
                        "a stanza to the core after the close: {frame:?}"
                    );
                    if let Some(answer) = self.check_to_core(frame) {
                        answers.push(answer);
                    }
                }
                SessionAction::Announcement(update) => {
                    if let cm_node::session::AnnouncementUpdate::Bound { jid, .. } = update {
                        assert_eq!(jid, JID);
                        self.bound = true;
                    }
                }
                SessionAction::Report(report) => {
                    if matches!(report, SessionReport::Ended(_)) {
                        assert!(!self.ended, "a stream reported ended twice");
                        self.ended = true;
                    }
                }
                SessionAction::Close(_) => {
                    assert!(self.ended, "a close with no report of why just before");
                    self.closed = true;
                }
            }
        }
        for frame in answers {
            self.core(frame);
        }
    }

    /// Checks a frame to the core; the core's answer, if it gives one here.
    fn check_to_core(&mut self, frame: Frame) -> Option<Frame> {
        match frame {
            Frame::Stanza {
                sid,
                header,
                payload,
            } => {
                assert_eq!(sid, SID);
                assert!(self.bound, "a stanza before the bind");
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
                None
            }
            Frame::Bind { sid, iq_id, .. } => {
                assert_eq!(sid, SID);
                self.bind_iq = Some(iq_id);
                None
            }
            Frame::SmEnable { sid, max, .. } => {
                assert_eq!(sid, SID);
                Some(Frame::SmEnabled {
                    sid,
                    id: "c21pZA".into(),
                    max,
                })
            }
            other => {
                assert_eq!(other.sid(), Some(SID), "{other:?}");
                None
            }
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
                Ok(Some(FrameEvent::Element(raw))) => {
                    if let Err(e) = Element::parse_in_stream(&raw) {
                        panic!(
                            "the CM wrote an element that does not parse ({e}): {:?}",
                            String::from_utf8_lossy(&raw)
                        );
                    }
                }
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

    fn event(&mut self, op: u8) {
        match op - 0xe0 {
            0..=7 => self.core(Frame::Deliver {
                sid: SID,
                payload: Bytes::from_static(
                    b"<message from='bob@example.org/desk' to='alice@example.org/r' type='chat' id='d1'><body>hi</body></message>",
                ),
            }),
            8 => self.core(Frame::Deliver {
                sid: SID,
                payload: Bytes::from_static(
                    b"<iq from='bob@example.org/desk' to='alice@example.org/r' type='get' id='q1'><ping xmlns='urn:xmpp:ping'/></iq>",
                ),
            }),
            9..=15 => self.core(Frame::Handled {
                sid: SID,
                h: u32::from(op - 0xe9),
            }),
            16 => self.core(Frame::Kick {
                sid: SID,
                condition: "conflict".into(),
            }),
            17..=24 => {
                self.now += Duration::from_secs(u64::from(op - 0xf0) * 15);
                self.session.handle_timeout(self.now);
                self.actions();
            }
            25 => {
                self.session.on_closed();
                self.actions();
            }
            _ => {
                self.now += Duration::from_millis(100);
                self.session.handle_timeout(self.now);
                self.actions();
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, mut input)) = data.split_first() else {
        return;
    };
    let mut h = Harness::new(u64::from(seed));
    while let [op, rest @ ..] = input {
        if *op >= 0xe0 {
            h.event(*op);
            input = rest;
        } else {
            let n = (usize::from(*op) + 1).min(rest.len());
            h.data(&rest[..n]);
            input = &rest[n..];
        }
    }
});
