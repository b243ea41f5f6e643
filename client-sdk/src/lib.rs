//! The longlink client library: XMPP over QUIC (XEP-0467) with a typed API.
//!
//! ```no_run
//! # async fn demo() -> Result<(), client_sdk::ClientError> {
//! use client_sdk::{Client, ConnectOptions, Event};
//! let opts = ConnectOptions::new("127.0.0.1:5222".parse().unwrap(), "alice@example.org", "secret")
//!     .with_ca_file("dev/pki/ca.pem");
//! let mut client = Client::connect(opts).await?;
//! client.send_presence(0).await?;
//! let id = client.send_message("bob@example.org", "hello").await?;
//! while let Some(Event::Message(m)) = client.next_event().await {
//!     println!("{} says {:?}", m.from, m.body);
//! }
//! # Ok(()) }
//! ```

mod driver;
mod error;
mod event;
pub mod im;
pub mod negotiation;
pub mod sm;
pub mod transport;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
pub use xmpp_sasl::Mechanism;
use xmpp_stream::element::Element;
use xmpp_stream::ns;

use driver::{Command, Driver};
pub use error::ClientError;
pub use event::{Carbon, Event, IqResponse, Message, MessageState, Presence};
use sm::Outgoing;

/// ALPN of XMPP client connections.
pub const ALPN: &[u8] = b"xmpp-client";

/// Where the client trusts certificates from.
#[derive(Clone, Debug)]
pub enum Trust {
    /// A PEM file of CA certificates (e.g. the cluster CA).
    CaFile(PathBuf),
    /// A ready root store.
    Roots(Arc<rustls::RootCertStore>),
}

/// How to connect and log in.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// The server (CM or balancer) address.
    pub server: SocketAddr,
    /// Bare JID to log in as.
    pub jid: String,
    /// Password.
    pub password: String,
    /// Requested resource (server-generated if None).
    pub resource: Option<String>,
    /// Trusted roots.
    pub trust: Trust,
    /// Give up connecting and logging in after this long.
    pub timeout: Duration,
    /// SASL mechanism to use (SCRAM-SHA-256 unless changed).
    pub mechanism: Mechanism,
    /// Enable XEP-0198 stream management with resumption (default on).
    pub stream_management: bool,
    /// Ask for carbon copies of this account's conversations (XEP-0280).
    pub carbons: bool,
    /// Resumption time to ask for, in seconds (0: the server's default).
    pub resume_max_secs: u32,
    /// Reconnect by itself when the connection is lost (default on).
    pub reconnect: bool,
    /// An `<r/>` unanswered this long means the connection is dead.
    pub ack_timeout: Duration,
    /// Ask for and send XEP-0184 delivery receipts (default on).
    pub receipts: bool,
    /// A session to resume instead of binding a new one (SM id, our `h`).
    pub previous_session: Option<(String, u32)>,
    /// Report each sent message's progress as [`Event::MessageState`]
    /// (off by default: an app that turns it on must read its events).
    pub message_states: bool,
}

impl ConnectOptions {
    /// Options with defaults: no resource, 10 s timeout, trust `ca.pem` in the working directory.
    pub fn new(server: SocketAddr, jid: &str, password: &str) -> Self {
        Self {
            server,
            jid: jid.to_owned(),
            password: password.to_owned(),
            resource: None,
            trust: Trust::CaFile(PathBuf::from("ca.pem")),
            timeout: Duration::from_secs(10),
            mechanism: Mechanism::ScramSha256,
            stream_management: true,
            carbons: true,
            resume_max_secs: 0,
            reconnect: true,
            ack_timeout: Duration::from_secs(20),
            receipts: true,
            previous_session: None,
            message_states: false,
        }
    }

    /// Reports each sent message's progress as [`Event::MessageState`].
    pub fn with_message_states(mut self) -> Self {
        self.message_states = true;
        self
    }

    /// No carbon copies of the account's other conversations.
    pub fn without_carbons(mut self) -> Self {
        self.carbons = false;
        self
    }

    /// A plain session: no stream management, no reconnection (what a
    /// desktop client without XEP-0198 does).
    pub fn without_stream_management(mut self) -> Self {
        self.stream_management = false;
        self.reconnect = false;
        self
    }

    /// Asks for this resumption time (seconds).
    pub fn with_resume_max(mut self, secs: u32) -> Self {
        self.resume_max_secs = secs;
        self
    }

    /// Tries to resume this session (from [`Client::resumption`]) first.
    pub fn with_previous_session(mut self, id: &str, h: u32) -> Self {
        self.previous_session = Some((id.to_owned(), h));
        self
    }

    /// Whether to ask for and send delivery receipts.
    pub fn with_receipts(mut self, on: bool) -> Self {
        self.receipts = on;
        self
    }

    /// Uses another SASL mechanism.
    pub fn with_mechanism(mut self, mechanism: Mechanism) -> Self {
        self.mechanism = mechanism;
        self
    }

    /// Trusts the CA certificates in a PEM file.
    pub fn with_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.trust = Trust::CaFile(path.into());
        self
    }

    /// Requests a resource.
    pub fn with_resource(mut self, resource: &str) -> Self {
        self.resource = Some(resource.to_owned());
        self
    }
}

type Pending = Arc<std::sync::Mutex<HashMap<String, oneshot::Sender<IqResponse>>>>;

/// Events waiting for the app; when it stops reading, the session stops
/// reading the server (which then holds back, bounded by QUIC flow control).
pub const EVENT_QUEUE: usize = 4096;

/// State the session task shares with the handle.
#[derive(Debug, Default)]
struct Shared {
    resumption: std::sync::Mutex<Option<(String, u32)>>,
    /// Messages dropped as duplicates (same sender and id seen before).
    duplicates: std::sync::atomic::AtomicU64,
    /// Archive results collected for running history queries, by query id.
    history: std::sync::Mutex<HashMap<String, Vec<im::ArchivedMessage>>>,
    /// The app asked for the roster: a new session (after a re-login) asks
    /// again, so roster pushes keep coming.
    roster_wanted: std::sync::atomic::AtomicBool,
}

/// A logged-in session. Stanzas go through a session task that keeps the
/// connection alive: it reconnects and resumes by itself, and keeps what
/// is sent while offline in an outbox.
pub struct Client {
    jid: String,
    domain: String,
    cmds: mpsc::Sender<Command>,
    events: mpsc::Receiver<Event>,
    pending: Pending,
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    resumed: bool,
    receipts: bool,
}

/// A fresh stanza id.
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
        let attached = driver::negotiate(
            endpoint.clone(),
            opts.clone(),
            domain.clone(),
            username.clone(),
            opts.previous_session.clone(),
            opts.resource.clone(),
        )
        .await?;
        let resumed = attached.resumed;
        let jid = attached.jid.clone().unwrap_or_else(|| opts.jid.clone());
        let (tx, events) = mpsc::channel(EVENT_QUEUE);
        let (cmds, cmd_rx) = mpsc::channel(1024);
        let pending: Pending = Arc::default();
        let shared = Arc::new(Shared::default());
        let resource = jid.split_once('/').map(|(_, r)| r.to_owned());
        let receipts = opts.receipts;
        let previous = opts.previous_session.clone();
        let mut driver = Driver::new(
            opts,
            endpoint.clone(),
            domain.clone(),
            username,
            resource,
            tx,
            pending.clone(),
            shared.clone(),
        );
        driver.attach(attached, previous).await;
        tokio::spawn(driver.run(cmd_rx));
        Ok(Client {
            jid,
            domain,
            cmds,
            events,
            pending,
            endpoint,
            shared,
            resumed: resumed.is_some(),
            receipts,
        })
    }

    /// Tells the server whether the app is in the foreground (XEP-0352):
    /// while inactive, the server holds back presence and delivers messages.
    pub async fn set_active(&self, active: bool) -> Result<(), ClientError> {
        self.command(Command::Active(active)).await
    }

    /// Messages dropped because their sender and id were seen before.
    pub fn duplicates_dropped(&self) -> u64 {
        self.shared
            .duplicates
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether `connect` resumed `previous_session`.
    pub fn was_resumed(&self) -> bool {
        self.resumed
    }

    /// The current SM id and `h`, for resuming from another process
    /// ([`ConnectOptions::with_previous_session`]); None if not resumable.
    pub fn resumption(&self) -> Option<(String, u32)> {
        self.shared
            .resumption
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
        self.command(Command::Presence(Bytes::from(p.to_bytes(ns::CLIENT))))
            .await
    }

    async fn command(&self, c: Command) -> Result<(), ClientError> {
        self.cmds.send(c).await.map_err(|_| ClientError::Closed)
    }

    async fn stanza(&self, bytes: Vec<u8>, id: Option<String>) -> Result<(), ClientError> {
        let bytes = Bytes::from(bytes);
        self.command(Command::Stanza(Outgoing { bytes, id })).await
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

    /// Sends an IQ and waits for its result or error.
    pub async fn iq(&self, mut iq: Element) -> Result<IqResponse, ClientError> {
        let id = new_id();
        iq.set_attr("id", id.clone());
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), tx);
        self.stanza(iq.to_bytes(ns::CLIENT), None).await?;
        match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => {
                self.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                Err(ClientError::Timeout)
            }
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

    /// The next event; `None` once the session is over.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
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
    /// resumption) and closes the connection.
    pub async fn disconnect(self) {
        let (done, wait) = oneshot::channel();
        if self.cmds.send(Command::Close(done)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(3), wait).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }

    /// Drops the connection without closing the stream (like losing the
    /// network for good): a resumable session waits at the server.
    pub fn abort(self) {
        let _ = self.cmds.try_send(Command::Abort);
    }
}

/// The QUIC endpoint of a client: one per [`Client`], kept across
/// reconnections so TLS session tickets make them cheaper.
pub(crate) fn client_endpoint(opts: &ConnectOptions) -> Result<quinn::Endpoint, ClientError> {
    let roots = match &opts.trust {
        Trust::CaFile(path) => {
            certs::load_roots(path).map_err(|e| ClientError::Config(e.to_string()))?
        }
        Trust::Roots(r) => (**r).clone(),
    };
    let tls =
        certs::client_config(roots, &[ALPN]).map_err(|e| ClientError::Config(e.to_string()))?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| ClientError::Config(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    // Phones: a keep-alive inside common NAT/firewall UDP timeouts (30 s),
    // and an idle timeout after which the connection counts as lost.
    transport
        .keep_alive_interval(Some(Duration::from_secs(25)))
        .max_idle_timeout(Duration::from_secs(90).try_into().ok());
    config.transport_config(Arc::new(transport));
    let bind: SocketAddr = if opts.server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let mut endpoint =
        quinn::Endpoint::client(bind).map_err(|e| ClientError::Unreachable(e.to_string()))?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}
