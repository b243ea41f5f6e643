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

mod error;
mod event;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use quinn::{RecvStream, SendStream};
use tokio::sync::{Mutex, mpsc, oneshot};
pub use xmpp_sasl::Mechanism;
use xmpp_sasl::ScramClient;
use xmpp_stream::element::Element;
use xmpp_stream::framer::{FrameEvent, Framer, Limits};
use xmpp_stream::{ns, stream};

pub use error::ClientError;
pub use event::{Event, IqResponse, Message, Presence};

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
        }
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

/// A logged-in session.
pub struct Client {
    jid: String,
    domain: String,
    send: Arc<Mutex<SendStream>>,
    events: mpsc::Receiver<Event>,
    pending: Pending,
    conn: quinn::Connection,
    endpoint: quinn::Endpoint,
    next_id: std::sync::atomic::AtomicU64,
}

impl Client {
    /// Connects over QUIC, authenticates with SCRAM-SHA-256 and binds a resource.
    pub async fn connect(opts: ConnectOptions) -> Result<Client, ClientError> {
        let timeout = opts.timeout;
        tokio::time::timeout(timeout, Self::connect_inner(opts))
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    async fn connect_inner(opts: ConnectOptions) -> Result<Client, ClientError> {
        let bare = jid::BareJid::new(&opts.jid)
            .map_err(|e| ClientError::Config(format!("invalid JID: {e}")))?;
        let username = bare
            .node()
            .map(|n| n.to_string())
            .ok_or_else(|| ClientError::Config("the JID needs a user part".into()))?;
        let domain = bare.domain().to_string();
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
        let conn = endpoint
            .connect(opts.server, &domain)
            .map_err(|e| ClientError::Unreachable(e.to_string()))?
            .await
            .map_err(ClientError::from_connection)?;
        let (send, recv) = conn.open_bi().await.map_err(ClientError::from_connection)?;
        let mut nego = Negotiation {
            send,
            recv,
            framer: Framer::new(Limits {
                max_stanza_bytes: 1024 * 1024,
                ..Limits::default()
            }),
        };
        nego.open(&domain).await?;
        nego.authenticate(&username, &opts.password, opts.mechanism)
            .await?;
        nego.open(&domain).await?;
        let jid = nego.bind(opts.resource.as_deref()).await?;
        let Negotiation { send, recv, framer } = nego;

        let (tx, events) = mpsc::channel(1024);
        let pending: Pending = Arc::default();
        tokio::spawn(read_loop(recv, framer, tx, pending.clone()));
        Ok(Client {
            jid,
            domain,
            send: Arc::new(Mutex::new(send)),
            events,
            pending,
            conn,
            endpoint,
            next_id: std::sync::atomic::AtomicU64::new(1),
        })
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

    fn new_id(&self) -> String {
        let n = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("ll{n:x}-{:08x}", rand::random::<u32>())
    }

    /// Sends available presence with a priority.
    pub async fn send_presence(&self, priority: i8) -> Result<(), ClientError> {
        let mut p = Element::new("presence", ns::CLIENT);
        if priority != 0 {
            p = p.with_child(Element::new("priority", ns::CLIENT).with_text(priority.to_string()));
        }
        self.write(&p.to_bytes(ns::CLIENT)).await
    }

    /// Sends a chat message; returns its id.
    pub async fn send_message(&self, to: &str, body: &str) -> Result<String, ClientError> {
        let id = self.new_id();
        let m = Element::new("message", ns::CLIENT)
            .with_attr("to", to)
            .with_attr("type", "chat")
            .with_attr("id", id.clone())
            .with_child(Element::new("body", ns::CLIENT).with_text(body));
        self.write(&m.to_bytes(ns::CLIENT)).await?;
        Ok(id)
    }

    /// Sends an IQ and waits for its result or error.
    pub async fn iq(&self, mut iq: Element) -> Result<IqResponse, ClientError> {
        let id = self.new_id();
        iq.set_attr("id", id.clone());
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), tx);
        self.write(&iq.to_bytes(ns::CLIENT)).await?;
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

    /// Writes raw XML to the stream (escape hatch for tests and tools).
    pub async fn send_raw(&self, xml: &[u8]) -> Result<(), ClientError> {
        self.write(xml).await
    }

    async fn write(&self, bytes: &[u8]) -> Result<(), ClientError> {
        self.send
            .lock()
            .await
            .write_all(bytes)
            .await
            .map_err(|e| ClientError::Disconnected(e.to_string()))
    }

    /// The next event; `None` once the session is over.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Waits for the next message, skipping other events, up to `timeout`.
    pub async fn next_message(&mut self, timeout: Duration) -> Result<Message, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => return Err(ClientError::Timeout),
                Ok(None) => return Err(ClientError::Closed),
                Ok(Some(Event::Message(m))) => return Ok(m),
                Ok(Some(Event::StreamError(c))) => return Err(ClientError::Stream(c)),
                Ok(Some(Event::Disconnected)) => return Err(ClientError::Closed),
                Ok(Some(_)) => {}
            }
        }
    }

    /// Ends the stream cleanly and closes the connection.
    pub async fn disconnect(self) {
        {
            let mut send = self.send.lock().await;
            let _ = send.write_all(stream::STREAM_CLOSE).await;
            let _ = send.finish();
        }
        let mut events = self.events;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(e) = events.recv().await {
                if matches!(e, Event::Disconnected) {
                    break;
                }
            }
        })
        .await;
        self.conn.close(0u32.into(), b"bye");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }

    /// Drops the connection without closing the stream (like losing the network).
    pub fn abort(self) {
        self.conn.close(0u32.into(), b"");
    }
}

/// Stream negotiation before the session is handed to the read loop.
struct Negotiation {
    send: SendStream,
    recv: RecvStream,
    framer: Framer,
}

impl Negotiation {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.send
            .write_all(bytes)
            .await
            .map_err(|e| ClientError::Disconnected(e.to_string()))
    }

    async fn next(&mut self) -> Result<FrameEvent, ClientError> {
        loop {
            if let Some(ev) = self
                .framer
                .next_event()
                .map_err(|e| ClientError::Protocol(e.to_string()))?
            {
                return Ok(ev);
            }
            match self.recv.read_chunk(64 * 1024, true).await {
                Ok(Some(c)) => self.framer.push(&c.bytes),
                Ok(None) => return Err(ClientError::Disconnected("stream closed".into())),
                Err(e) => return Err(ClientError::Disconnected(e.to_string())),
            }
        }
    }

    /// The next top-level element; stream errors become errors.
    async fn element(&mut self) -> Result<Element, ClientError> {
        match self.next().await? {
            FrameEvent::Element(raw) => {
                let el = Element::parse_in_stream(&raw)
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                if el.name == "error" && el.ns == ns::STREAMS {
                    return Err(ClientError::Stream(event::stream_error_condition(&el)));
                }
                Ok(el)
            }
            FrameEvent::Open(_) => Err(ClientError::Protocol("unexpected stream header".into())),
            FrameEvent::Close => Err(ClientError::Disconnected("server closed the stream".into())),
        }
    }

    async fn open(&mut self, domain: &str) -> Result<(), ClientError> {
        self.framer.restart();
        self.write(&stream::client_header(domain, None)).await?;
        match self.next().await? {
            FrameEvent::Open(_) => Ok(()),
            _ => Err(ClientError::Protocol("expected a stream header".into())),
        }
    }

    async fn authenticate(
        &mut self,
        username: &str,
        password: &str,
        mechanism: Mechanism,
    ) -> Result<(), ClientError> {
        let features = self.element().await?;
        let offered = features
            .child("mechanisms", ns::SASL)
            .map(|m| m.elements().map(|e| e.text()).collect::<Vec<_>>())
            .unwrap_or_default();
        if !offered.iter().any(|m| m == mechanism.name()) {
            return Err(ClientError::Auth("invalid-mechanism".into()));
        }
        let mut scram = mechanism
            .scram_hash()
            .map(|h| ScramClient::new(h, username, password));
        let initial = match &scram {
            Some(s) => s.client_first(),
            None => xmpp_sasl::plain_message(username, password),
        };
        let auth = stream::sasl_element("auth", Some(mechanism.name()), Some(&B64.encode(initial)));
        self.write(&auth).await?;
        loop {
            let el = self.element().await?;
            let text = el.text();
            let data = match text.trim() {
                "" | "=" => Vec::new(),
                t => B64
                    .decode(t)
                    .map_err(|_| ClientError::Protocol("SASL data is not base64".into()))?,
            };
            match el.name.as_str() {
                "challenge" => {
                    let reply = scram
                        .as_mut()
                        .ok_or_else(|| ClientError::Protocol("challenge for PLAIN".into()))?
                        .handle_server_first(&data)
                        .map_err(|e| ClientError::Auth(e.condition().to_owned()))?;
                    self.write(&stream::sasl_element(
                        "response",
                        None,
                        Some(&B64.encode(reply)),
                    ))
                    .await?;
                }
                "success" => {
                    if let Some(scram) = &scram {
                        scram
                            .verify_server_final(&data)
                            .map_err(|_| ClientError::Auth("server signature invalid".into()))?;
                    }
                    return Ok(());
                }
                "failure" => {
                    let cond = el
                        .elements()
                        .find(|c| c.name != "text")
                        .map(|c| c.name.clone())
                        .unwrap_or_else(|| "not-authorized".into());
                    return Err(ClientError::Auth(cond));
                }
                other => {
                    return Err(ClientError::Protocol(format!(
                        "unexpected <{other}/> during SASL"
                    )));
                }
            }
        }
    }

    async fn bind(&mut self, resource: Option<&str>) -> Result<String, ClientError> {
        let features = self.element().await?;
        if features.child("bind", ns::BIND).is_none() {
            return Err(ClientError::Protocol(
                "server offers no resource binding".into(),
            ));
        }
        let mut bind = Element::new("bind", ns::BIND);
        if let Some(r) = resource {
            bind = bind.with_child(Element::new("resource", ns::BIND).with_text(r));
        }
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("type", "set")
            .with_attr("id", "bind-1")
            .with_child(bind);
        self.write(&iq.to_bytes(ns::CLIENT)).await?;
        let reply = self.element().await?;
        if reply.attr("type") == Some("result") {
            return reply
                .child("bind", ns::BIND)
                .and_then(|b| b.child("jid", ns::BIND))
                .map(|j| j.text())
                .ok_or_else(|| ClientError::Protocol("bind result without a JID".into()));
        }
        Err(ClientError::StanzaError(
            event::stanza_error_condition(&reply).unwrap_or_else(|| "undefined-condition".into()),
        ))
    }
}

async fn read_loop(
    mut recv: RecvStream,
    mut framer: Framer,
    tx: mpsc::Sender<Event>,
    pending: Pending,
) {
    'outer: loop {
        loop {
            match framer.next_event() {
                Ok(Some(FrameEvent::Element(raw))) => {
                    let Ok(el) = Element::parse_in_stream(&raw) else {
                        continue;
                    };
                    if let Some(event) = event::classify(el, &pending) {
                        let stop = matches!(event, Event::StreamError(_));
                        if tx.send(event).await.is_err() || stop {
                            break 'outer;
                        }
                    }
                }
                Ok(Some(FrameEvent::Close)) => break 'outer,
                Ok(Some(FrameEvent::Open(_))) => {}
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "malformed data from the server");
                    break 'outer;
                }
            }
        }
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(c)) => framer.push(&c.bytes),
            _ => break,
        }
    }
    let _ = tx.send(Event::Disconnected).await;
}
