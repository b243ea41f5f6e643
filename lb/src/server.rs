//! The balancer process: public UDP sockets, the backend socket, the
//! control endpoint and the admin endpoint, around the sans-IO
//! [`Balancer`].
//!
//! Data plane: each socket has one task that receives in batches
//! (`recvmmsg` with GRO through quinn-udp), splits GRO buffers into
//! datagrams, asks the balancer, and sends each forwarded datagram
//! encapsulated (client → CM) or decapsulated (CM → client).

use std::collections::HashSet;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::balancer::{Backend, Balancer, Decision, DropReason};
use crate::control::{self, Registration};
use crate::encap;
use crate::metrics::Metrics;

/// How long a CM must stay away before its connections count as dead (a
/// control link that blinks must not get its clients reset).
pub const DEPARTED_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// QUIC-LB settings shared by the balancer and its CMs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuicLbSettings {
    /// Config rotation id (0..=6).
    #[serde(default)]
    pub config_id: u8,
    /// Server id octets.
    #[serde(default = "default_sid_len")]
    pub server_id_len: usize,
    /// Nonce octets.
    #[serde(default = "default_nonce_len")]
    pub nonce_len: usize,
    /// Encrypt CIDs with the key in `PKI_DIR/quic-lb.key` (otherwise plaintext).
    #[serde(default = "yes")]
    pub encrypted: bool,
}

fn default_sid_len() -> usize {
    2
}
fn default_nonce_len() -> usize {
    6
}
fn yes() -> bool {
    true
}

impl Default for QuicLbSettings {
    fn default() -> Self {
        Self {
            config_id: 0,
            server_id_len: default_sid_len(),
            nonce_len: default_nonce_len(),
            encrypted: true,
        }
    }
}

impl QuicLbSettings {
    /// The QUIC-LB config, reading the key from the PKI directory when encrypted.
    pub fn config(&self, pki_dir: &std::path::Path) -> Result<quic_lb::LbConfig, LbError> {
        let key = if self.encrypted {
            Some(certs::load_quic_lb_key(
                &certs::PkiPaths::new(pki_dir).quic_lb_key(),
            )?)
        } else {
            None
        };
        quic_lb::LbConfig::new(self.config_id, self.server_id_len, self.nonce_len, key)
            .map_err(|e| LbError::Config(e.to_string()))
    }

    /// A server id as the octets carried in CIDs (big-endian, `server_id_len` long).
    pub fn server_id_bytes(&self, server_id: u64) -> Option<Vec<u8>> {
        let bytes = server_id.to_be_bytes();
        let len = self.server_id_len.min(8);
        if self.server_id_len > 8 || bytes[..8 - len].iter().any(|b| *b != 0) {
            return None;
        }
        let mut out = vec![0u8; self.server_id_len - len];
        out.extend_from_slice(&bytes[8 - len..]);
        Some(out)
    }
}

/// Balancer configuration (`longlink lb --config FILE`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbSettings {
    /// Public UDP addresses clients send to (IPv4 and/or IPv6).
    pub listen: Vec<SocketAddr>,
    /// UDP address CMs exchange encapsulated datagrams with.
    pub backend_listen: SocketAddr,
    /// QUIC control endpoint CMs register on (mutual TLS).
    pub control_listen: SocketAddr,
    /// Admin HTTP (metrics, backends, drain); keep it on loopback.
    pub admin_listen: SocketAddr,
    /// Cluster PKI directory (ca.pem, lb.pem, lb.key, quic-lb.key).
    pub pki_dir: PathBuf,
    /// QUIC-LB connection-id settings.
    #[serde(default)]
    pub quic_lb: QuicLbSettings,
    /// Maglev table size (prime).
    #[serde(default = "default_table")]
    pub table_size: usize,
}

fn default_table() -> usize {
    crate::maglev::DEFAULT_TABLE_SIZE
}

impl LbSettings {
    /// Settings with every address on loopback with ephemeral ports.
    pub fn local(pki_dir: PathBuf) -> Self {
        let any: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            listen: vec![any],
            backend_listen: any,
            control_listen: any,
            admin_listen: any,
            pki_dir,
            quic_lb: QuicLbSettings::default(),
            table_size: default_table(),
        }
    }
}

/// Why the balancer could not start.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// Certificates or keys could not be loaded.
    #[error("certificates: {0}")]
    Certs(#[from] certs::CertError),
    /// Bad configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// A socket could not be bound.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> LbError {
    let context = context.into();
    move |source| LbError::Io { context, source }
}

/// A UDP socket with quinn-udp's batched I/O state, used from the
/// data-plane threads. The socket is non-blocking: a thread waits in
/// `poll(2)` until it is readable (with a timeout, to notice shutdown), then
/// takes whatever is queued in one `recvmmsg`. A full send buffer makes the
/// thread wait for room, which is the backpressure UDP has. (A blocking
/// socket would not do: `recvmmsg` without `MSG_WAITFORONE`, as quinn-udp
/// calls it, waits for a whole batch, which held every datagram for the
/// read timeout when traffic was light.)
struct UdpIo {
    sock: std::net::UdpSocket,
    state: UdpSocketState,
    addr: SocketAddr,
}

impl UdpIo {
    fn bind(addr: SocketAddr) -> Result<Self, LbError> {
        let sock = std::net::UdpSocket::bind(addr).map_err(io(format!("bind {addr}")))?;
        let state = UdpSocketState::new((&sock).into()).map_err(io("socket options"))?;
        let _ = state.set_recv_buffer_size((&sock).into(), 4 << 20);
        let _ = state.set_send_buffer_size((&sock).into(), 4 << 20);
        // quinn-udp has made the socket non-blocking; see `wait`.
        let addr = sock.local_addr().map_err(io("local address"))?;
        Ok(Self { sock, state, addr })
    }

    fn send(&self, to: SocketAddr, contents: &[u8], segment_size: Option<usize>) -> bool {
        let t = Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        };
        for _ in 0..SEND_WAITS {
            match self.state.send((&self.sock).into(), &t) {
                Ok(()) => return true,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.wait(libc::POLLOUT);
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// Waits until the socket is ready for `events` or [`WAIT_MS`] pass;
    /// true if it is ready.
    fn wait(&self, events: libc::c_short) -> bool {
        use std::os::fd::AsRawFd;
        let mut fd = libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: `fd` is one valid pollfd for an open socket, and the
        // count passed is 1.
        unsafe { libc::poll(&mut fd, 1, WAIT_MS) > 0 }
    }
}

/// How long a data-plane thread waits for its socket at a time (it checks
/// for shutdown in between).
const WAIT_MS: libc::c_int = 100;

/// How many waits for send-buffer room before a datagram is dropped.
const SEND_WAITS: usize = 10;

/// Datagrams for one destination gathered into one GSO send when they have
/// the same size (the last may be shorter), flushed at the end of each
/// receive batch.
struct Outbox {
    buf: Vec<u8>,
    dest: Option<SocketAddr>,
    segment: usize,
    count: usize,
    max_segments: usize,
    closed: bool,
}

impl Outbox {
    fn new(max_segments: usize) -> Self {
        Self {
            buf: Vec::with_capacity(64 * 1024),
            dest: None,
            segment: 0,
            count: 0,
            max_segments: max_segments.max(1),
            closed: false,
        }
    }

    /// Queues one datagram written by `write`; returns false if sending failed.
    fn push(
        &mut self,
        io: &UdpIo,
        dest: SocketAddr,
        len: usize,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> bool {
        let mut ok = true;
        let fits = self.dest == Some(dest)
            && !self.closed
            && self.count < self.max_segments
            && len <= self.segment
            && self.buf.len() + len <= 64 * 1024 - 1024;
        if !fits {
            ok = self.flush(io);
            self.dest = Some(dest);
            self.segment = len;
        }
        write(&mut self.buf);
        self.count += 1;
        // A shorter datagram must be the last of a GSO batch.
        self.closed = len < self.segment;
        ok
    }

    fn flush(&mut self, io: &UdpIo) -> bool {
        let ok = match self.dest {
            Some(dest) if self.count > 0 => {
                let seg = (self.count > 1).then_some(self.segment);
                io.send(dest, &self.buf, seg)
            }
            _ => true,
        };
        self.buf.clear();
        self.count = 0;
        self.dest = None;
        self.closed = false;
        ok
    }
}

struct Shared {
    balancer: RwLock<Balancer>,
    settings: LbSettings,
    metrics: Metrics,
    public: Vec<UdpIo>,
    backend: UdpIo,
    drained: Mutex<HashSet<String>>,
    /// Registration generation per node, so an old connection's end does not remove a newer one.
    generations: Mutex<std::collections::HashMap<String, u64>>,
}

/// A running balancer.
pub struct LbHandle {
    /// Public client-facing addresses.
    pub public_addrs: Vec<SocketAddr>,
    /// Address CMs exchange encapsulated datagrams with.
    pub backend_addr: SocketAddr,
    /// Control endpoint for CM registration.
    pub control_addr: SocketAddr,
    /// Admin HTTP address.
    pub admin_addr: SocketAddr,
    shared: Arc<Shared>,
    control: quinn::Endpoint,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl LbHandle {
    /// Backends currently in the table.
    pub fn backends(&self) -> Vec<Backend> {
        self.shared
            .balancer
            .read()
            .map(|b| b.backends().to_vec())
            .unwrap_or_default()
    }

    /// Drains (or undrains) a CM; false if unknown.
    pub fn set_draining(&self, node: &str, draining: bool) -> bool {
        set_draining(&self.shared, node, draining)
    }

    /// Prometheus text of the balancer's metrics.
    pub fn metrics(&self) -> String {
        self.shared.metrics.render()
    }

    /// Stops the balancer.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.control.close(0u32.into(), b"balancer stopping");
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await;
    }
}

fn set_draining(shared: &Shared, node: &str, draining: bool) -> bool {
    let mut drained = shared.drained.lock().unwrap_or_else(|e| e.into_inner());
    if draining {
        drained.insert(node.to_owned());
    } else {
        drained.remove(node);
    }
    let known = shared
        .balancer
        .write()
        .map(|mut b| b.set_draining(node, draining))
        .unwrap_or(false);
    if known {
        shared.metrics.membership_changes.inc();
        tracing::info!(node, draining, "drain state changed");
    }
    known
}

/// Starts a balancer.
pub async fn start(settings: LbSettings) -> Result<LbHandle, LbError> {
    let config = settings.quic_lb.config(&settings.pki_dir)?;
    let balancer = Balancer::new(vec![config], settings.table_size).map_err(LbError::Config)?;
    let public = settings
        .listen
        .iter()
        .map(|a| UdpIo::bind(*a))
        .collect::<Result<Vec<_>, _>>()?;
    if public.is_empty() {
        return Err(LbError::Config("no listen address".into()));
    }
    let backend = UdpIo::bind(settings.backend_listen)?;
    let public_addrs = public.iter().map(|u| u.addr).collect::<Vec<_>>();
    let backend_addr = backend.addr;

    let pki = certs::PkiPaths::new(&settings.pki_dir);
    let tls =
        certs::cluster_server_config(&pki.ca_cert(), &pki.lb_cert(), &pki.lb_key(), control::ALPN)?;
    let tls = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| LbError::Config(e.to_string()))?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(tls));
    server_config.transport_config(Arc::new(control::transport()));
    let control_ep = quinn::Endpoint::server(server_config, settings.control_listen)
        .map_err(io(format!("bind control {}", settings.control_listen)))?;
    let control_addr = control_ep.local_addr().map_err(io("local address"))?;

    let metrics = Metrics::new();
    metrics.table_size.set(settings.table_size as i64);
    let admin_listen = settings.admin_listen;
    let shared = Arc::new(Shared {
        balancer: RwLock::new(balancer),
        settings,
        metrics,
        public,
        backend,
        drained: Mutex::default(),
        generations: Mutex::default(),
    });
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    for i in 0..shared.public.len() {
        let (shared, stop) = (shared.clone(), shutdown.clone());
        spawn_data_thread(format!("lb-client-{i}"), move || {
            client_loop(&shared, i, &stop)
        })?;
    }
    let (s2, stop) = (shared.clone(), shutdown.clone());
    spawn_data_thread("lb-backend".into(), move || backend_loop(&s2, &stop))?;
    tasks.spawn(control_loop(
        shared.clone(),
        control_ep.clone(),
        shutdown.clone(),
        tasks.clone(),
    ));

    let listener = tokio::net::TcpListener::bind(admin_listen)
        .await
        .map_err(io(format!("bind admin {admin_listen}")))?;
    let admin_addr = listener.local_addr().map_err(io("admin address"))?;
    let app = admin_routes(shared.clone());
    let stop = shutdown.clone();
    tasks.spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
    });
    tracing::info!(?public_addrs, %backend_addr, %control_addr, %admin_addr, "balancer started");
    Ok(LbHandle {
        public_addrs,
        backend_addr,
        control_addr,
        admin_addr,
        shared,
        control: control_ep,
        shutdown,
        tasks,
    })
}

fn spawn_data_thread(name: String, f: impl FnOnce() + Send + 'static) -> Result<(), LbError> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .map(|_| ())
        .map_err(io(format!("start thread {name}")))
}

/// Receives batches on `io` (recvmmsg, GRO buffers split by stride), calling
/// `each(datagram, source)` per datagram and `done()` after each batch, until
/// shutdown.
fn recv_batches(
    io: &UdpIo,
    shutdown: &CancellationToken,
    mut each: impl FnMut(&[u8], SocketAddr),
    mut done: impl FnMut(),
) {
    let batch = quinn_udp::BATCH_SIZE.max(1);
    let seg = io.state.gro_segments().max(1);
    let mut bufs: Vec<Vec<u8>> = (0..batch)
        .map(|_| vec![0u8; (seg * 1600).clamp(1600, 64 * 1024)])
        .collect();
    let mut metas = vec![RecvMeta::default(); batch];
    while !shutdown.is_cancelled() {
        if !io.wait(libc::POLLIN) {
            continue; // timeout: check for shutdown
        }
        let mut slices: Vec<IoSliceMut<'_>> = bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let n = match io.state.recv((&io.sock).into(), &mut slices, &mut metas) {
            Ok(n) => n,
            Err(_) => continue, // another thread took it, or a transient error
        };
        drop(slices);
        for (buf, meta) in bufs.iter().zip(&metas).take(n) {
            let stride = if meta.stride == 0 {
                meta.len
            } else {
                meta.stride
            };
            for datagram in buf[..meta.len].chunks(stride.max(1)) {
                each(datagram, meta.addr);
            }
        }
        done();
    }
}

fn client_loop(shared: &Shared, index: usize, shutdown: &CancellationToken) {
    let io = &shared.public[index];
    let outbox = std::cell::RefCell::new(Outbox::new(shared.backend.state.max_gso_segments()));
    recv_batches(
        io,
        shutdown,
        |datagram, from| {
            let Ok(balancer) = shared.balancer.read() else {
                return;
            };
            match balancer.route(datagram) {
                Decision::Forward { index, addr } => {
                    let len = encap::header_len(&from) + datagram.len();
                    let sent = outbox.borrow_mut().push(&shared.backend, addr, len, |buf| {
                        encap::encode(from, datagram, buf);
                    });
                    if !sent {
                        shared.metrics.dropped("send_busy");
                    }
                    let backend = &balancer.backends()[index];
                    backend.packets.inc();
                    backend.bytes.inc_by(datagram.len() as u64);
                }
                Decision::Drop(reason) => shared.metrics.dropped(reason.name()),
            }
        },
        || {
            if !outbox.borrow_mut().flush(&shared.backend) {
                shared.metrics.dropped("send_busy");
            }
        },
    );
}

fn backend_loop(shared: &Shared, shutdown: &CancellationToken) {
    recv_batches(
        &shared.backend,
        shutdown,
        |datagram, from| {
            let known = shared
                .balancer
                .read()
                .map(|b| b.is_backend_addr(&from))
                .unwrap_or(false);
            if !known {
                shared.metrics.dropped("foreign_return");
                return;
            }
            let Ok((client, payload)) = encap::decode(datagram) else {
                shared.metrics.dropped("bad_encapsulation");
                return;
            };
            let Some(public) = shared
                .public
                .iter()
                .find(|p| p.addr.is_ipv4() == client.is_ipv4())
            else {
                shared.metrics.dropped("no_public_socket");
                return;
            };
            if public.send(client, payload, None) {
                shared.metrics.returned.inc();
            } else {
                shared.metrics.dropped("send_busy");
            }
        },
        || {},
    );
}

async fn control_loop(
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => return,
            i = endpoint.accept() => match i { Some(i) => i, None => return },
        };
        tasks.spawn(serve_cm(shared.clone(), incoming));
    }
}

async fn serve_cm(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(%remote, error = %e, "refused control connection: handshake failed");
            shared.metrics.dropped("control_refused");
            return;
        }
    };
    let name = conn
        .peer_identity()
        .and_then(|id| {
            id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|chain| chain.first().and_then(certs::node_name_from_cert));
    let Some(name) = name else {
        tracing::warn!(%remote, "refused control connection: certificate names no CM");
        conn.close(1u32.into(), b"no node name");
        return;
    };
    let result = register(&shared, &conn, &name).await;
    let Ok(generation) = result.map_err(|e| {
        tracing::warn!(%remote, node = %name, error = %e, "registration refused");
    }) else {
        return;
    };
    let reason = conn.closed().await;
    let current = shared
        .generations
        .lock()
        .map(|g| g.get(&name).copied() == Some(generation))
        .unwrap_or(false);
    let removed = if current {
        shared
            .balancer
            .write()
            .ok()
            .and_then(|mut b| b.remove(&name))
    } else {
        None
    };
    if let Some(server_id) = removed {
        shared.metrics.membership_changes.inc();
        shared.metrics.backends.dec();
        tracing::info!(node = %name, %reason, "CM left the balancer");
        // Still away after the grace period: dead, not blinking. From then on
        // its clients' packets reach a live CM, whose stateless reset sends
        // them to reconnect at once.
        let shared = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(DEPARTED_GRACE).await;
            if let Ok(mut b) = shared.balancer.write() {
                b.mark_departed(&server_id);
            }
        });
    }
}

async fn register(shared: &Shared, conn: &quinn::Connection, name: &str) -> Result<u64, String> {
    let (mut send, mut recv) = tokio::time::timeout(Duration::from_secs(5), conn.accept_bi())
        .await
        .map_err(|_| "no registration".to_owned())?
        .map_err(|e| e.to_string())?;
    let line = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1024))
        .await
        .map_err(|_| "slow registration".to_owned())?;
    let checked = line
        .map_err(|e| format!("unreadable registration: {e}"))
        .and_then(|line| {
            serde_json::from_slice::<Registration>(&line)
                .map_err(|e| format!("bad registration: {e}"))
        })
        .and_then(|reg| {
            if reg.node != name {
                return Err(format!(
                    "node {} does not match certificate {name}",
                    reg.node
                ));
            }
            match shared.settings.quic_lb.server_id_bytes(reg.server_id) {
                Some(id) => Ok((reg, id)),
                None => Err(format!("server id {} does not fit", reg.server_id)),
            }
        });
    let (reg, server_id) = match checked {
        Ok(ok) => ok,
        Err(why) => {
            let _ = send.write_all(format!("{why}\n").as_bytes()).await;
            let _ = send.finish();
            return Err(why);
        }
    };
    let draining = shared
        .drained
        .lock()
        .map(|d| d.contains(name))
        .unwrap_or(false);
    let generation = {
        let mut g = shared.generations.lock().unwrap_or_else(|e| e.into_inner());
        let e = g.entry(name.to_owned()).or_insert(0);
        *e += 1;
        *e
    };
    let taken = {
        let mut b = shared.balancer.write().map_err(|_| "poisoned".to_owned())?;
        match b
            .backends()
            .iter()
            .find(|o| o.server_id == server_id && o.name != name)
        {
            Some(other) => Some(format!("server id taken by {}", other.name)),
            None => {
                let new = !b.backends().iter().any(|o| o.name == name);
                let labels = vec![("backend", name.to_owned())];
                b.upsert(Backend {
                    name: name.to_owned(),
                    server_id,
                    addr: reg.encap,
                    draining,
                    packets: shared.metrics.packets.get_or_create(&labels).clone(),
                    bytes: shared.metrics.bytes.get_or_create(&labels).clone(),
                });
                if new {
                    shared.metrics.backends.inc();
                }
                None
            }
        }
    };
    if let Some(why) = taken {
        let _ = send.write_all(format!("{why}\n").as_bytes()).await;
        let _ = send.finish();
        return Err(why);
    }
    shared.metrics.membership_changes.inc();
    send.write_all(b"ok\n").await.map_err(|e| e.to_string())?;
    let _ = send.finish();
    tracing::info!(node = name, encap = %reg.encap, server_id = reg.server_id, draining, "CM joined the balancer");
    Ok(generation)
}

/// One backend in the admin JSON.
#[derive(Serialize)]
struct BackendView {
    name: String,
    server_id: String,
    addr: SocketAddr,
    draining: bool,
}

fn admin_routes(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(admin_metrics))
        .route("/backends", get(admin_backends))
        .route("/drain/{node}", post(admin_drain))
        .route("/undrain/{node}", post(admin_undrain))
        .with_state(shared)
}

async fn admin_metrics(State(s): State<Arc<Shared>>) -> Response {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn admin_backends(State(s): State<Arc<Shared>>) -> Response {
    let list: Vec<BackendView> = s
        .balancer
        .read()
        .map(|b| {
            b.backends()
                .iter()
                .map(|b| BackendView {
                    name: b.name.clone(),
                    server_id: b.server_id.iter().map(|x| format!("{x:02x}")).collect(),
                    addr: b.addr,
                    draining: b.draining,
                })
                .collect()
        })
        .unwrap_or_default();
    Json(list).into_response()
}

async fn admin_drain(State(s): State<Arc<Shared>>, Path(node): Path<String>) -> StatusCode {
    if set_draining(&s, &node, true) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

async fn admin_undrain(State(s): State<Arc<Shared>>, Path(node): Path<String>) -> StatusCode {
    if set_draining(&s, &node, false) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

/// Every drop reason the data plane counts (for docs and tests).
pub fn drop_reasons() -> impl Iterator<Item = &'static str> {
    DropReason::ALL.iter().map(|r| r.name()).chain([
        "send_busy",
        "foreign_return",
        "bad_encapsulation",
        "no_public_socket",
        "control_refused",
    ])
}
