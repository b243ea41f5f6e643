//! The app's handle on a session: [`Client`]. It sends what the app asks
//! to the session task (`crate::driver`) as commands, and gets answers
//! back on oneshot channels and events on a bounded queue; it shares no
//! state with the task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{mpsc, oneshot, watch};
use xmpp_stream::element::Element;
use xmpp_stream::ns;

use crate::connection::{Dialer, TokenState, client_endpoint};
use crate::driver::{self, Driver, ToSession};
use crate::session::{Answer, Command, Request, Session, SessionConfig, Snapshot};
use crate::sm::Outgoing;
use crate::{ClientError, ConnectOptions, EVENT_QUEUE, Event, IqResponse, Message};

/// Commands waiting for the session task.
const COMMAND_QUEUE: usize = 1024;
/// How long a request ([`Client::ask`]) waits at most, from handing it to
/// the session task to its answer (the session itself gives an IQ 30 s;
/// this guards against a task held up by a full event queue or a
/// connection that takes no writes).
const ANSWER_GUARD: Duration = Duration::from_secs(35);

/// A logged-in session. Stanzas go through a session task that keeps the
/// connection alive: it reconnects and resumes by itself, and keeps what
/// is sent while offline in an outbox.
///
/// The task also answers requests (IQs, the roster, history). It waits
/// while the app's event queue ([`crate::EVENT_QUEUE`]) is full, so an app
/// must keep reading events for answers to come (a request gives up with
/// [`ClientError::Timeout`] after 35 s) and for what it sends to be taken
/// (sending waits meanwhile, without limit).
pub struct Client {
    jid: String,
    domain: String,
    to_session: mpsc::Sender<ToSession>,
    events: mpsc::Receiver<Event>,
    /// What the session task last published (kept after it ended).
    snapshot: watch::Receiver<Snapshot>,
    endpoint: quinn::Endpoint,
    task: tokio::task::JoinHandle<()>,
    resumed: bool,
    /// `connect` logged in with SASL2.
    sasl2: bool,
    /// The FAST token the session's logins use and renew.
    tokens: Arc<std::sync::Mutex<TokenState>>,
    /// The `<user-agent id/>` it is bound to.
    user_agent_id: String,
    receipts: bool,
    /// The entity capabilities every presence shows (XEP-0115).
    caps: Element,
}

/// A session's event queue, taken out of its [`Client`] with
/// [`Client::take_events`].
pub struct Events(mpsc::Receiver<Event>);

impl Events {
    /// The next event; `None` once the session is over.
    pub async fn next(&mut self) -> Option<Event> {
        self.0.recv().await
    }

    /// The next event if one is waiting now, without waiting (`None`:
    /// none yet, or the session is over).
    pub fn try_next(&mut self) -> Option<Event> {
        self.0.try_recv().ok()
    }
}

/// A fresh id for a message the app sends. The handle makes it (not the
/// session, whose ids are `lls…` from its seeded RNG) so that
/// [`Client::send_message`] returns it without a round trip through the
/// session task: the app knows the id before the first state event about
/// it can arrive. A process-wide counter keeps ids apart within the
/// process, the random part across processes and restarts.
pub(crate) fn new_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("ll{n:x}-{:08x}", rand::random::<u32>())
}

impl Client {
    /// Connects over QUIC, authenticates (SCRAM-SHA-256 unless changed),
    /// then resumes `previous_session` or binds a resource, and enables
    /// stream management.
    pub async fn connect(opts: ConnectOptions) -> Result<Client, ClientError> {
        let timeout = opts.timeout;
        tokio::time::timeout(timeout, Self::connect_inner(opts))
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    async fn connect_inner(mut opts: ConnectOptions) -> Result<Client, ClientError> {
        let bare = jid::BareJid::new(&opts.jid)
            .map_err(|e| ClientError::Config(format!("invalid JID: {e}")))?;
        // normalized, as the server writes it (stringprep)
        opts.jid = bare.to_string();
        let username = bare
            .node()
            .map(|n| n.to_string())
            .ok_or_else(|| ClientError::Config("the JID needs a user part".into()))?;
        let domain = bare.domain().to_string();
        let endpoint = client_endpoint(&opts)?;
        let dialer = Dialer {
            endpoint: endpoint.clone(),
            server: opts.server,
            domain: domain.clone(),
            username,
            password: opts.password.clone(),
            mechanism: opts.mechanism,
            sasl2: opts.sasl2,
            tag: opts.tag.clone(),
            stream_management: opts.stream_management.then_some(opts.resume_max_secs),
            carbons: opts.carbons,
            known_offer: Arc::default(),
            fast: opts.fast && opts.sasl2,
            user_agent_id: opts
                .user_agent_id
                .clone()
                .unwrap_or_else(random_user_agent_id),
            tokens: Arc::new(std::sync::Mutex::new(TokenState {
                token: opts.fast_token.clone(),
                ..TokenState::default()
            })),
            zero_rtt: opts.zero_rtt,
        };
        let tokens = dialer.tokens.clone();
        let user_agent_id = dialer.user_agent_id.clone();
        let (live, negotiated) = dialer
            .clone()
            .connect(opts.previous_session.clone(), opts.resource.clone())
            .await?;
        let resumed = negotiated.resumed.is_some();
        let sasl2 = negotiated.sasl2;
        let jid = negotiated.jid.clone().unwrap_or_else(|| opts.jid.clone());
        let mut session = Session::new(SessionConfig::new(&opts), StdRng::from_entropy());
        session.on_connected(driver::now(), negotiated);
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let (to_session, from_app) = mpsc::channel(COMMAND_QUEUE);
        let (driver, snapshot) = Driver::new(session, dialer, opts.timeout, live, events_tx);
        let task = tokio::spawn(driver.run(from_app));
        Ok(Client {
            jid,
            domain,
            to_session,
            events,
            snapshot,
            endpoint,
            task,
            resumed,
            sasl2,
            tokens,
            user_agent_id,
            receipts: opts.receipts,
            caps: crate::pep::caps_element(&opts.notify),
        })
    }

    /// Tells the server whether the app is in the foreground (XEP-0352):
    /// while inactive, the server holds back presence and delivers messages.
    pub async fn set_active(&self, active: bool) -> Result<(), ClientError> {
        self.command(Command::Active(active)).await
    }

    /// Messages dropped because their sender and id were seen before (as
    /// of the session task's last step; the final count once it ended).
    pub fn duplicates_dropped(&self) -> u64 {
        self.snapshot.borrow().duplicates_dropped
    }

    /// Whether `connect` logged in with SASL2 (XEP-0388; see
    /// [`ConnectOptions::sasl2`]).
    pub fn used_sasl2(&self) -> bool {
        self.sasl2
    }

    /// The FAST token (XEP-0484) the next login would use, with its count,
    /// as of now: an app that keeps logins fast across processes saves it
    /// (as a credential) with [`Client::user_agent_id`] after each login
    /// and gives both back in [`ConnectOptions`]. None: no token (FAST
    /// off or not offered, or the server refused the last one).
    pub fn fast_token(&self) -> Option<crate::FastToken> {
        self.tokens.lock().ok()?.token.clone()
    }

    /// How many logins of this session (the first and each reconnection)
    /// authenticated with a FAST token instead of the password.
    pub fn fast_logins(&self) -> u64 {
        self.tokens.lock().map_or(0, |t| t.logins)
    }

    /// How many logins of this session went as QUIC 0-RTT data (the
    /// server accepted the early data: one round trip back).
    pub fn zero_rtt_logins(&self) -> u64 {
        self.tokens.lock().map_or(0, |t| t.early_logins)
    }

    /// The `<user-agent id/>` this session's FAST tokens are bound to.
    pub fn user_agent_id(&self) -> &str {
        &self.user_agent_id
    }

    /// Whether `connect` resumed `previous_session`.
    pub fn was_resumed(&self) -> bool {
        self.resumed
    }

    /// The current SM id and `h`, for resuming from another process
    /// ([`ConnectOptions::with_previous_session`]); None if not resumable.
    /// It stays readable after the session ended (an app going to the
    /// background saves it, to resume later). Its `h` counts every stanza
    /// the session received, including any whose event the app has not
    /// read yet: resuming with it tells the server those were handled, so
    /// read the events that are waiting ([`Client::next_event`]) before
    /// saving it, or they are not delivered again.
    pub fn resumption(&self) -> Option<(String, u32)> {
        self.snapshot.borrow().resumption.clone()
    }

    /// The bound full JID.
    pub fn jid(&self) -> &str {
        &self.jid
    }

    /// The local address of the QUIC socket.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    /// The device's network changed (call it from the OS network callback):
    /// moves the QUIC connection to a fresh local socket on a new port. No
    /// new handshake, no new login; QUIC path validation runs underneath.
    pub fn network_changed(&self) -> Result<(), ClientError> {
        let ip = self
            .endpoint
            .local_addr()
            .map(|a| a.ip())
            .map_err(|e| ClientError::Disconnected(e.to_string()))?;
        self.rebind_to(SocketAddr::new(ip, 0))
    }

    /// Moves the QUIC connection to a socket bound at `local` (e.g. another
    /// interface's address).
    pub fn rebind_to(&self, local: SocketAddr) -> Result<(), ClientError> {
        let socket = std::net::UdpSocket::bind(local)
            .map_err(|e| ClientError::Config(format!("bind {local}: {e}")))?;
        self.endpoint
            .rebind(socket)
            .map_err(|e| ClientError::Disconnected(format!("rebind: {e}")))
    }

    /// Sends available presence with a priority.
    pub async fn send_presence(&self, priority: i8) -> Result<(), ClientError> {
        let mut p = Element::new("presence", ns::CLIENT);
        if priority != 0 {
            p = p.with_child(Element::new("priority", ns::CLIENT).with_text(priority.to_string()));
        }
        self.presence(p).await
    }

    /// Sends a broadcast presence, kept to send again after a new login.
    pub(crate) async fn presence(&self, p: Element) -> Result<(), ClientError> {
        let p = p.with_child(self.caps.clone());
        self.command(Command::Presence(Bytes::from(p.to_bytes(ns::CLIENT))))
            .await
    }

    /// Hands the session task a command. It waits, without limit, while
    /// the command queue ([`COMMAND_QUEUE`]) is full: while the task is
    /// held up waiting for the app to read its events, or for the
    /// connection to take its writes. That is the backpressure on an app
    /// that sends faster than either.
    pub(crate) async fn command(&self, c: Command) -> Result<(), ClientError> {
        self.to_session
            .send(ToSession::Command(c))
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Asks the session something and waits for its answer: for room in the
    /// command queue and for the answer together at most [`ANSWER_GUARD`]
    /// (then [`ClientError::Timeout`]; the request may still be carried out
    /// if it was handed over).
    pub(crate) async fn ask(&self, request: Request) -> Result<Answer, ClientError> {
        let asked = async {
            let (tx, rx) = oneshot::channel();
            self.to_session
                .send(ToSession::Request(request, tx))
                .await
                .map_err(|_| ClientError::Closed)?;
            rx.await.unwrap_or(Err(ClientError::Closed))
        };
        tokio::time::timeout(ANSWER_GUARD, asked)
            .await
            .unwrap_or(Err(ClientError::Timeout))
    }

    async fn stanza(&self, bytes: Vec<u8>, id: Option<String>) -> Result<(), ClientError> {
        let bytes = Bytes::from(bytes);
        self.command(Command::Send(Outgoing { bytes, id })).await
    }

    /// Sends a stanza through the outbox and stream management; `id` is
    /// the message id whose progress the app follows, if any.
    pub(crate) async fn send_stanza(
        &self,
        el: Element,
        id: Option<String>,
    ) -> Result<(), ClientError> {
        self.stanza(el.to_bytes(ns::CLIENT), id).await
    }

    /// Sends a chat message; returns its id. Its progress arrives as
    /// [`Event::MessageState`] (queued, sent, acknowledged, delivered).
    pub async fn send_message(&self, to: &str, body: &str) -> Result<String, ClientError> {
        let id = new_id();
        let mut m = Element::new("message", ns::CLIENT)
            .with_attr("to", to)
            .with_attr("type", "chat")
            .with_attr("id", id.clone())
            .with_child(Element::new("body", ns::CLIENT).with_text(body));
        if self.receipts {
            m = m.with_child(Element::new("request", ns::RECEIPTS));
        }
        self.stanza(m.to_bytes(ns::CLIENT), Some(id.clone()))
            .await?;
        Ok(id)
    }

    /// Sends an IQ (the session sets its id) and waits for its result or
    /// error: 30 s once the session task has it, 35 s in all.
    pub async fn iq(&self, iq: Element) -> Result<IqResponse, ClientError> {
        match self.ask(Request::Iq(iq)).await? {
            Answer::Iq(r) => Ok(r),
            _ => Err(ClientError::Closed),
        }
    }

    /// XEP-0199 ping of the server; returns the round-trip time.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let start = Instant::now();
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("type", "get")
            .with_attr("to", self.domain.clone())
            .with_child(Element::new("ping", ns::PING));
        let r = self.iq(iq).await?;
        match r.error {
            None => Ok(start.elapsed()),
            Some(cond) => Err(ClientError::StanzaError(cond)),
        }
    }

    /// Writes raw XML to the stream (escape hatch for tests and tools); it
    /// counts as one stanza for stream management.
    pub async fn send_raw(&self, xml: &[u8]) -> Result<(), ClientError> {
        self.stanza(xml.to_vec(), None).await
    }

    /// The next event; `None` once the session is over (or at once, once
    /// [`Client::take_events`] took the queue).
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Takes the event queue out of the client, to read it on a task of its
    /// own while others use the client (a binding shares one client among
    /// the app's threads). From then on the client's own reading
    /// ([`Client::next_event`], [`Client::next_message`]) finds the queue
    /// closed and [`Client::disconnect`] returns no events: they all come
    /// through the [`Events`], until it returns `None` when the session is
    /// over. The session still waits while the queue is full: keep reading.
    pub fn take_events(&mut self) -> Events {
        let (_, closed) = mpsc::channel(1);
        Events(std::mem::replace(&mut self.events, closed))
    }

    /// Waits for the next message, skipping other events, up to `timeout`.
    pub async fn next_message(&mut self, timeout: Duration) -> Result<Message, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut stream_error = None;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => return Err(ClientError::Timeout),
                Ok(None) | Ok(Some(Event::Disconnected)) => {
                    return Err(stream_error.map_or(ClientError::Closed, ClientError::Stream));
                }
                Ok(Some(Event::Message(m))) => return Ok(m),
                // final only if the session ends (a CM shutting down is not)
                Ok(Some(Event::StreamError(c))) => stream_error = Some(c),
                Ok(Some(_)) => {}
            }
        }
    }

    /// Ends the stream cleanly (the session ends: nothing waits for a
    /// resumption) and closes the connection. Returns the events the app
    /// had not read, and those that came while closing: the session
    /// acknowledged their stanzas to the server, so they are the app's
    /// last chance to see them. At most [`EVENT_QUEUE`] are returned (the
    /// rest of a flood arriving while closing is dropped).
    pub async fn disconnect(self) -> Vec<Event> {
        let Client {
            to_session,
            mut events,
            endpoint,
            task,
            ..
        } = self;
        let mut pending = Vec::new();
        let closing = to_session
            .send(ToSession::Command(Command::Close))
            .await
            .is_ok();
        let wait = if closing {
            Duration::from_secs(3)
        } else {
            Duration::ZERO
        };
        // Read until the session ends (it closes the queue) or the wait
        // is over; then what is still queued.
        let _ = tokio::time::timeout(wait, async {
            while pending.len() < EVENT_QUEUE {
                match events.recv().await {
                    Some(ev) => pending.push(ev),
                    None => break,
                }
            }
        })
        .await;
        while pending.len() < EVENT_QUEUE
            && let Ok(ev) = events.try_recv()
        {
            pending.push(ev);
        }
        // nobody reads events any more: the task must not wait for that
        drop(events);
        if closing {
            let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        pending
    }

    /// Drops the connection without closing the stream (like losing the
    /// network for good): a resumable session waits at the server.
    pub fn abort(self) {
        let _ = self.to_session.try_send(ToSession::Command(Command::Abort));
    }
}

/// A random UUID (version 4) for a client that was given no user-agent id.
fn random_user_agent_id() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}
