//! A handle on the sans-IO session for the fuzz targets (feature `fuzzing`,
//! not part of the API): a session with a negotiated connection, fed the
//! server's bytes through the same framing and parsing as a live
//! connection's reader, with a few app commands and clock steps between.
//!
//! It checks what it can cheaply check on every step: what the session
//! writes is well-formed XML, nothing comes out after the session ended, and
//! the outputs of one step are bounded.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::SeedableRng;
use rand::rngs::StdRng;
use xmpp_stream::element::Element;
use xmpp_stream::framer::{FrameEvent, Framer, Limits};

use crate::im::HistoryQuery;
use crate::session::{Command, Negotiated, Output, Request, RequestId, Session, SessionConfig};
use crate::sm::Outgoing;

/// Most outputs one step may produce (a resend of a full outbox is the
/// largest legitimate burst).
const MAX_OUTPUTS_PER_STEP: usize = crate::session::MAX_OUTBOX * 4 + 64;

/// The stream header in front of what the server sends (as after a
/// negotiation).
const SERVER_HEADER: &[u8] = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' from='example.org' id='s1' version='1.0'>";

/// A header in front of what the client writes, to frame it.
const CLIENT_HEADER: &[u8] = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.org' version='1.0'>";

/// The room [`AppStep::JoinRoom`] joins.
const FUZZ_ROOM: &str = "coven@conference.example.org";

/// What the app can do between the server's bytes.
#[derive(Clone, Copy, Debug)]
pub enum AppStep {
    /// Send a chat message (followed by the app).
    SendMessage,
    /// Ask for the roster.
    Roster,
    /// Ask for a page of the archive.
    History,
    /// Set available presence.
    Presence,
    /// Switch XEP-0352 client state.
    Inactive,
    /// Let this much time pass.
    Wait(Duration),
    /// The connection broke (the server's stream ended).
    ConnectionLost,
    /// A write failed (`true`: the server stopped reading).
    WriteFailed(bool),
    /// The connection the session asked for came up (resumed with this `h`,
    /// or a new login).
    Connected(Option<u32>),
    /// Close the session cleanly.
    Close,
    /// Join the room `coven@conference.example.org` as `me`.
    JoinRoom,
    /// Leave it.
    LeaveRoom,
}

/// A session after a normal negotiation, and a reader framing the server's
/// stream for it.
pub struct InboundHarness {
    session: Session,
    reader: Framer,
    /// Frames what the session writes, to check it.
    written: Framer,
    now: Instant,
    ended: bool,
    next_request: u64,
}

impl InboundHarness {
    /// A session whose first connection was negotiated (a new login, bound
    /// as `alice@example.org/phone`), with stream management on or off.
    pub fn new(seed: u64, stream_management: bool) -> Self {
        let config = SessionConfig {
            jid: "alice@example.org".into(),
            resource: Some("phone".into()),
            stream_management,
            carbons: true,
            resume_max_secs: 0,
            reconnect: true,
            ack_timeout: Duration::from_secs(20),
            receipts: true,
            message_states: true,
            previous_session: None,
            notify: Vec::new(),
            room_ping_interval: Some(crate::DEFAULT_ROOM_PING_INTERVAL),
        };
        let mut harness = Self {
            session: Session::new(config, StdRng::seed_from_u64(seed)),
            reader: server_reader(),
            written: client_writer(),
            now: Instant::now(),
            ended: false,
            next_request: 0,
        };
        harness.session.on_connected(
            harness.now,
            Negotiated {
                resumed: None,
                jid: Some("alice@example.org/phone".into()),
                ..Negotiated::default()
            },
        );
        harness.drain();
        harness
    }

    /// Bytes of the server's stream, read as a live connection reads them.
    pub fn server_bytes(&mut self, data: &[u8]) {
        self.reader.push(data);
        loop {
            match self.reader.next_event() {
                Ok(Some(FrameEvent::Element(raw))) => {
                    let inbound = crate::connection::read_element(&raw);
                    self.session.on_inbound(self.now, inbound);
                }
                Ok(Some(FrameEvent::Open(_))) => {}
                Ok(Some(FrameEvent::Close)) => {
                    self.session
                        .on_stream_end("server closed the stream".into());
                    self.new_server_stream();
                    break;
                }
                Ok(None) => break,
                Err(e) => {
                    self.session
                        .on_stream_end(format!("malformed data from the server: {e}"));
                    self.new_server_stream();
                    break;
                }
            }
            self.drain();
        }
        self.drain();
    }

    /// Something the app or the network does.
    pub fn app(&mut self, step: AppStep) {
        let now = self.now;
        match step {
            AppStep::SendMessage => {
                let id = format!("m{}", self.next_request);
                self.next_request += 1;
                let bytes = Bytes::from(format!(
                    "<message to='bob@example.org' type='chat' id='{id}'><body>hi</body></message>"
                ));
                self.session.command(
                    now,
                    Command::Send(Outgoing {
                        bytes,
                        id: Some(id),
                    }),
                );
            }
            AppStep::Roster => {
                let id = self.request_id();
                self.session
                    .command(now, Command::Request(id, Request::Roster));
            }
            AppStep::History => {
                let id = self.request_id();
                let query = HistoryQuery {
                    with: Some("bob@example.org".into()),
                    max: Some(20),
                    ..HistoryQuery::default()
                };
                self.session
                    .command(now, Command::Request(id, Request::History(query)));
            }
            AppStep::Presence => self.session.command(
                now,
                Command::Presence(Bytes::from_static(
                    b"<presence><priority>1</priority></presence>",
                )),
            ),
            AppStep::Inactive => self.session.command(now, Command::Active(false)),
            AppStep::Wait(d) => {
                self.now += d;
                self.session.handle_timeout(self.now);
            }
            AppStep::ConnectionLost => {
                self.session.on_stream_end("connection lost".into());
                self.new_server_stream();
            }
            AppStep::WriteFailed(stopped) => {
                self.session
                    .on_write_failed(now, "stream stopped", stopped, None);
            }
            AppStep::Connected(resumed) => {
                let jid = resumed
                    .is_none()
                    .then(|| "alice@example.org/phone".to_owned());
                self.session.on_connected(
                    now,
                    Negotiated {
                        resumed,
                        jid,
                        ..Negotiated::default()
                    },
                );
                self.new_server_stream();
            }
            AppStep::Close => self.session.command(now, Command::Close),
            AppStep::JoinRoom => {
                let id = self.request_id();
                let request = Request::JoinRoom {
                    room: FUZZ_ROOM.into(),
                    nick: "me".into(),
                    password: None,
                    history: Some(20),
                };
                self.session.command(now, Command::Request(id, request));
            }
            AppStep::LeaveRoom => self.session.command(
                now,
                Command::LeaveRoom {
                    room: FUZZ_ROOM.into(),
                    status: None,
                },
            ),
        }
        self.drain();
    }

    /// Whether the session ended.
    pub fn ended(&self) -> bool {
        self.ended
    }

    fn request_id(&mut self) -> RequestId {
        self.next_request += 1;
        RequestId(self.next_request)
    }

    /// A new connection: the reader starts on a fresh stream, and so does
    /// the check of what the client writes.
    fn new_server_stream(&mut self) {
        self.reader = server_reader();
        self.written = client_writer();
    }

    /// Takes every output and checks it.
    fn drain(&mut self) {
        let mut n = 0;
        while let Some(output) = self.session.poll_output() {
            n += 1;
            assert!(n <= MAX_OUTPUTS_PER_STEP, "unbounded outputs in one step");
            assert!(!self.ended, "output after Ended: {output:?}");
            match output {
                Output::Transmit(bytes) | Output::TransmitStanza(Outgoing { bytes, .. }) => {
                    self.check_written(&bytes);
                }
                Output::Ended => self.ended = true,
                Output::FinishSending | Output::CloseConnection { .. } => {}
                Output::Connect { .. } | Output::Event(_) | Output::Reply { .. } => {}
            }
        }
    }

    /// What the client writes must frame and parse as XML.
    fn check_written(&mut self, bytes: &[u8]) {
        self.written.push(bytes);
        loop {
            match self.written.next_event() {
                Ok(Some(FrameEvent::Element(raw))) => {
                    if let Err(e) = Element::parse_in_stream(&raw) {
                        panic!(
                            "the client wrote an element that does not parse ({e}): {:?}",
                            String::from_utf8_lossy(&raw)
                        );
                    }
                }
                Ok(Some(FrameEvent::Close)) => self.written = client_writer(),
                Ok(Some(FrameEvent::Open(_))) => {}
                Ok(None) => break,
                Err(e) => panic!(
                    "the client wrote malformed XML ({e}): {:?}",
                    String::from_utf8_lossy(bytes)
                ),
            }
        }
    }
}

/// The reader of a live connection (the negotiation's limits) after the
/// server's stream header.
fn server_reader() -> Framer {
    let mut framer = Framer::new(Limits {
        max_stanza_bytes: 1024 * 1024,
        ..Limits::default()
    });
    framer.push(SERVER_HEADER);
    framer
}

/// Frames what the client writes on one stream.
fn client_writer() -> Framer {
    let mut framer = Framer::new(Limits {
        max_stanza_bytes: 2 * 1024 * 1024,
        ..Limits::default()
    });
    framer.push(CLIENT_HEADER);
    framer
}
