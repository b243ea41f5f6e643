//! The client-facing QUIC listener (XEP-0467): ALPN `xmpp-client`, each
//! bidirectional stream one complete XMPP stream, driven by a
//! [`ClientSession`] state machine. [`run_session`] drives a session over
//! any byte stream, so the TCP and TLS listeners (`tcp.rs`) share it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use xmpp_stream::StreamCondition;

use crate::admission::{ClientPeer, NotAdmitted, PreAuthLimit, PreAuthSlot};
use crate::cores::Cores;
use crate::metrics::{DropReason, Metrics, StreamEnd, Transport, TransportMetrics};
use crate::now;
use crate::pool::bounce;
use crate::session::{
    AnnouncementUpdate, ClientSession, ClosedBy, Framing, SessionAction, SessionReport,
    SessionSettings,
};
use crate::sessions::{OpenSession, Sessions};

/// A write to a client that takes longer than this ends the session.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most frames from the core coalesced into one write.
const MAX_BATCH: usize = 64;
/// Largest chunk read from a client at once.
const READ_CHUNK: usize = 16 * 1024;

/// What each client session needs.
pub struct ListenerContext {
    /// What every session shares: domain, limits, read shaping.
    pub settings: Arc<SessionSettings>,
    /// Sessions registry.
    pub sessions: Arc<Sessions>,
    /// The core pools (one per core).
    pub pool: Arc<Cores>,
    /// Shutdown signal.
    pub shutdown: CancellationToken,
    /// Task tracker.
    pub tasks: TaskTracker,
    /// Client connections (handshakes) received so far (not counting the
    /// attempts answered with a Retry: their retries count).
    pub accepted: Arc<std::sync::atomic::AtomicU64>,
    /// QUIC connection attempts answered with a Retry so far.
    pub retried: Arc<std::sync::atomic::AtomicU64>,
    /// The CM's metrics.
    pub metrics: Arc<Metrics>,
    /// Client connections open now.
    pub open: Arc<std::sync::atomic::AtomicUsize>,
    /// Most client connections at once.
    pub max_clients: usize,
    /// Unauthenticated connections per client address.
    pub pre_auth: Arc<PreAuthLimit>,
    /// A QUIC connection with no open stream for this long is closed.
    pub stream_wait: Duration,
    /// A QUIC connection none of whose streams bound a session this long
    /// after its handshake is closed (each stream has its own negotiation
    /// deadline, but a connection could open one after another).
    pub auth_wait: Duration,
    /// Client QUIC connections are accepted with 0-RTT (the CM's
    /// `zero_rtt`; its QUIC TLS config allows early data).
    pub zero_rtt: bool,
}

/// Where a QUIC connection accepted with 0-RTT stands in its handshake.
#[derive(Clone, Debug, Default)]
enum HandshakeState {
    /// Not complete: the connection's streams may carry early data.
    #[default]
    Pending,
    /// Complete, with the connection's `tls-exporter` if computed.
    Complete(Option<Bytes>),
}

/// The handshake of a QUIC connection accepted with 0-RTT, as its
/// sessions see it: the connection's driver sets it once, when the
/// handshake completes (if it fails, the watch closes, and the
/// connection's streams end with it).
#[derive(Clone, Debug)]
pub struct HandshakeWatch(watch::Receiver<HandshakeState>);

impl HandshakeWatch {
    /// The connection's `tls-exporter` if the handshake is complete
    /// (`Some(None)`: complete, no exporter).
    fn completed(&self) -> Option<Option<Bytes>> {
        match &*self.0.borrow() {
            HandshakeState::Pending => None,
            HandshakeState::Complete(exporter) => Some(exporter.clone()),
        }
    }

    /// Waits for the handshake to complete: the connection's
    /// `tls-exporter`, if computed; `None` if the connection died first.
    async fn wait(mut self) -> Option<Option<Bytes>> {
        let state = self
            .0
            .wait_for(|s| matches!(s, HandshakeState::Complete(_)))
            .await
            .ok()?;
        match &*state {
            HandshakeState::Complete(exporter) => Some(exporter.clone()),
            HandshakeState::Pending => None,
        }
    }
}

/// Where a session's bytes come from: a QUIC stream (zero-copy chunks, no
/// buffer held while idle) or any other byte stream (TLS over TCP).
pub trait ByteSource {
    /// The next bytes; `Ok(None)` at the end of the stream.
    fn next_chunk(&mut self) -> impl std::future::Future<Output = std::io::Result<Option<Bytes>>>;
    /// The session has ended: read no more. A QUIC stream tells the client
    /// (STOP_SENDING), so a client blocked on flow control in the middle of
    /// a write it will never finish gets an error instead of waiting.
    fn stop(&mut self) {}
    /// Whether the client's network path changed since the last call (a
    /// QUIC connection that migrated); checked after each read.
    fn path_changed(&mut self) -> bool {
        false
    }
}

/// A QUIC stream's receiving side, with its connection's client address
/// as last seen (to notice migrations on reads, at no cost while idle).
pub struct QuicSource {
    recv: quinn::RecvStream,
    conn: quinn::Connection,
    path: std::net::SocketAddr,
}

impl QuicSource {
    /// The receiving side `recv` of a stream on `conn`.
    pub fn new(recv: quinn::RecvStream, conn: quinn::Connection) -> Self {
        let path = conn.remote_address();
        Self { recv, conn, path }
    }
}

impl ByteSource for QuicSource {
    async fn next_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
        match self.recv.read_chunk(READ_CHUNK, true).await {
            Ok(c) => Ok(c.map(|c| c.bytes)),
            Err(e) => Err(std::io::Error::other(e)),
        }
    }

    fn stop(&mut self) {
        let _ = self.recv.stop(0u32.into());
    }

    fn path_changed(&mut self) -> bool {
        let now = self.conn.remote_address();
        std::mem::replace(&mut self.path, now) != now
    }
}

/// Where a session's bytes go. A write is a list of parts, each a whole
/// element or header (WebSocket sends each part as its own message).
pub trait ByteSink {
    /// Writes the parts, in order.
    fn send_parts(
        &mut self,
        parts: &[Bytes],
    ) -> impl std::future::Future<Output = std::io::Result<()>>;
    /// Ends the stream (after the writes).
    fn finish(&mut self) -> impl std::future::Future<Output = ()>;
}

/// A QUIC send stream as a [`ByteSink`]; finishing waits (briefly) until the
/// client has the last bytes, so a closing stream error is not lost.
pub struct QuicSink(pub quinn::SendStream);

impl ByteSink for QuicSink {
    async fn send_parts(&mut self, parts: &[Bytes]) -> std::io::Result<()> {
        let mut chunks: Vec<Bytes> = parts.to_vec();
        self.0
            .write_all_chunks(&mut chunks)
            .await
            .map_err(std::io::Error::other)
    }

    async fn finish(&mut self) {
        let _ = self.0.finish();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.0.stopped()).await;
    }
}

/// Any `AsyncWrite` as a [`ByteSink`]: the parts go out as one write.
pub struct Writer<W>(pub W);

impl<W: AsyncWrite + Unpin> ByteSink for Writer<W> {
    async fn send_parts(&mut self, parts: &[Bytes]) -> std::io::Result<()> {
        if let [one] = parts {
            self.0.write_all(one).await?;
        } else {
            self.0.write_all(&parts.concat()).await?;
        }
        self.0.flush().await
    }

    async fn finish(&mut self) {
        let _ = self.0.shutdown().await;
    }
}

/// Any `AsyncRead` as a [`ByteSource`] (a small buffer per read).
pub struct Reader<R>(pub R);

/// Bytes read at once from a TLS stream.
const STREAM_READ: usize = 4096;

impl<R: AsyncRead + Unpin> ByteSource for Reader<R> {
    async fn next_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
        let mut buf = BytesMut::with_capacity(STREAM_READ);
        match self.0.read_buf(&mut buf).await? {
            0 => Ok(None),
            _ => Ok(Some(buf.freeze())),
        }
    }
}

/// Counts an open client connection for as long as it lives.
pub struct OpenGuard(Arc<std::sync::atomic::AtomicUsize>);

/// Why a client connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The CM holds `max_clients` connections.
    #[error("connection limit reached")]
    Full,
    /// The client's address holds its cap of unauthenticated connections.
    #[error("too many unauthenticated connections from this address")]
    PreAuthPerAddress,
    /// A QUIC client must prove its address first (the listener answers
    /// with a Retry): its address holds an unauthenticated connection
    /// already, or the CM holds half its `max_clients`.
    #[error("address not validated")]
    AddressNotValidated,
}

/// What an admitted connection holds while it lives.
pub struct Admitted {
    /// Its place among the open connections.
    pub open: OpenGuard,
    /// Its client and its place under the per-address cap.
    pub peer: ClientPeer,
}

/// Counts a new client connection over TCP (whose handshake validated the
/// address) from `ip`, or says why it is refused.
pub fn admit(ctx: &ListenerContext, ip: IpAddr) -> Result<Admitted, Refused> {
    admit_quic(ctx, ip, true)
}

/// [`admit`] for a QUIC connection attempt whose address quinn has
/// `validated` or not: an unvalidated one must validate (Retry) when its
/// address holds an unauthenticated connection already (so forged Initials
/// hold at most one slot of the address they claim, see `admission.rs`), or
/// when the CM holds half its `max_clients` (so forged Initials from many
/// addresses cannot fill the CM either).
pub fn admit_quic(ctx: &ListenerContext, ip: IpAddr, validated: bool) -> Result<Admitted, Refused> {
    let admitted = count_in(ctx, ip, validated);
    let counter = match admitted {
        Err(Refused::AddressNotValidated) => &ctx.retried,
        _ => &ctx.accepted,
    };
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    match admitted {
        Err(Refused::Full) => ctx.metrics.dropped(DropReason::MaxClients),
        Err(Refused::PreAuthPerAddress) => ctx.metrics.dropped(DropReason::PreAuthPerAddress),
        Err(Refused::AddressNotValidated) => {
            ctx.metrics.quic_retries.inc();
        }
        Ok(_) => {}
    }
    admitted
}

fn count_in(ctx: &ListenerContext, ip: IpAddr, validated: bool) -> Result<Admitted, Refused> {
    let open = ctx.open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let guard = OpenGuard(ctx.open.clone());
    if open >= ctx.max_clients {
        return Err(Refused::Full);
    }
    if !validated && open >= ctx.max_clients / 2 {
        return Err(Refused::AddressNotValidated);
    }
    let pre_auth = ctx
        .pre_auth
        .admit_quic(ip, validated)
        .map_err(|e| match e {
            NotAdmitted::AtCap => Refused::PreAuthPerAddress,
            NotAdmitted::Unvalidated => Refused::AddressNotValidated,
        })?;
    Ok(Admitted {
        open: guard,
        peer: ClientPeer {
            ip,
            pre_auth: PreAuthSlot::new(pre_auth),
            tls_exporter: None,
            handshake: None,
        },
    })
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Accepts client connections until shutdown. Each attempt is admitted
/// here, in order, so the check of its address and the count of it are one
/// step (attempts arriving together cannot all pass one check).
pub async fn run(endpoint: quinn::Endpoint, ctx: Arc<ListenerContext>) {
    loop {
        let incoming = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            i = endpoint.accept() => match i { Some(i) => i, None => return },
        };
        let remote = incoming.remote_address();
        match admit_quic(&ctx, remote.ip(), incoming.remote_address_validated()) {
            Ok(admitted) if ctx.zero_rtt => {
                ctx.metrics.transport(Transport::Quic).accepted.inc();
                match incoming.accept() {
                    Ok(connecting) => {
                        ctx.tasks.spawn(serve_0rtt_connection(
                            ctx.clone(),
                            connecting,
                            remote,
                            admitted,
                        ));
                    }
                    Err(e) => {
                        tracing::info!(%remote, error = %e, "client handshake failed");
                        ctx.metrics.quic_handshakes_failed.inc();
                    }
                }
            }
            Ok(admitted) => {
                ctx.metrics.transport(Transport::Quic).accepted.inc();
                ctx.tasks.spawn(serve_connection(
                    ctx.clone(),
                    incoming.into_future(),
                    remote,
                    admitted,
                ));
            }
            Err(Refused::AddressNotValidated) => {
                tracing::debug!(%remote, "client asked to validate its address (Retry)");
                // Never fails for an unvalidated address; refuse if it does.
                if let Err(e) = incoming.retry() {
                    e.into_incoming().refuse();
                }
            }
            Err(why) => {
                tracing::warn!(%remote, max = ctx.max_clients, "client refused: {why}");
                incoming.refuse();
            }
        }
    }
}

/// Takes the handshake rather than the `quinn::Incoming`: an `Incoming` is
/// 384 bytes, and this task's future would keep room for it (twice, as
/// argument and moved local) for as long as the connection lives; the
/// handshake's future is 56.
async fn serve_connection(
    ctx: Arc<ListenerContext>,
    handshake: quinn::IncomingFuture,
    remote: std::net::SocketAddr,
    admitted: Admitted,
) {
    let Admitted {
        open: _open,
        mut peer,
    } = admitted;
    let conn = match handshake.await {
        Ok(c) => {
            ctx.metrics.quic_handshakes_completed.inc();
            c
        }
        Err(e) => {
            tracing::info!(%remote, error = %e, "client handshake failed");
            ctx.metrics.quic_handshakes_failed.inc();
            return;
        }
    };
    peer.tls_exporter = quic_tls_exporter(&conn);
    serve_streams(ctx, conn, remote, peer, None).await;
}

/// The `tls-exporter` channel binding of a QUIC connection whose
/// handshake is complete.
fn quic_tls_exporter(conn: &quinn::Connection) -> Option<Bytes> {
    crate::admission::tls_exporter(|out, label| {
        conn.export_keying_material(out, label, b"").is_ok()
    })
}

/// [`serve_connection`] with 0-RTT (the CM's `zero_rtt`): the streams
/// are served at once, their sessions started early, and when the
/// handshake completes they learn it (with the exporter) through a
/// [`HandshakeWatch`]. (`into_0rtt` always succeeds on a server; should it
/// not, the handshake is awaited as without 0-RTT.)
async fn serve_0rtt_connection(
    ctx: Arc<ListenerContext>,
    connecting: quinn::Connecting,
    remote: std::net::SocketAddr,
    admitted: Admitted,
) {
    let Admitted {
        open: _open,
        mut peer,
    } = admitted;
    let (conn, early) = match connecting.into_0rtt() {
        Ok((conn, accepted)) => {
            let (done, watch) = watch::channel(HandshakeState::Pending);
            peer.handshake = Some(HandshakeWatch(watch));
            (conn, Some(EarlyConnection { accepted, done }))
        }
        Err(connecting) => match connecting.await {
            Ok(conn) => {
                ctx.metrics.quic_handshakes_completed.inc();
                peer.tls_exporter = quic_tls_exporter(&conn);
                (conn, None)
            }
            Err(e) => {
                tracing::info!(%remote, error = %e, "client handshake failed");
                ctx.metrics.quic_handshakes_failed.inc();
                return;
            }
        },
    };
    serve_streams(ctx, conn, remote, peer, early).await;
}

/// A connection accepted with 0-RTT whose handshake is not complete.
struct EarlyConnection {
    /// Resolves when the handshake completes or fails (its bool means
    /// nothing on a server).
    accepted: quinn::ZeroRttAccepted,
    /// Tells the connection's sessions.
    done: watch::Sender<HandshakeState>,
}

/// The handshake of a connection accepted with 0-RTT ended: counted, and
/// if it completed, the exporter is computed and the connection's
/// sessions (and those to come) learn it. If it failed, the watch closes
/// with `early` and the streams end with the connection.
fn handshake_ended(
    ctx: &ListenerContext,
    conn: &quinn::Connection,
    remote: std::net::SocketAddr,
    peer: &mut ClientPeer,
    early: EarlyConnection,
) {
    peer.handshake = None;
    // (quinn's verdict means nothing on a server, and it resolves too when
    // the connection closes — ours closing a replay that never finished
    // its handshake, or a close frame replayed in 0-RTT. The handshake is
    // complete when TLS can export keying material, which it cannot
    // before the client's Finished; a connection still open when the
    // future resolved completed it.)
    let exporter = quic_tls_exporter(conn);
    if exporter.is_none()
        && let Some(e) = conn.close_reason()
    {
        tracing::info!(%remote, error = %e, "client handshake failed");
        ctx.metrics.quic_handshakes_failed.inc();
        // (the watch closes with `early`: the held data is never handled)
        return;
    }
    ctx.metrics.quic_handshakes_completed.inc();
    peer.tls_exporter = exporter;
    early
        .done
        .send_replace(HandshakeState::Complete(peer.tls_exporter.clone()));
}

/// Serves a client connection's streams, each a [`run_session`], until the
/// connection ends (or has none for `stream_wait`, or authenticates none in
/// `auth_wait`). `early`: its handshake is not complete yet (0-RTT).
async fn serve_streams(
    ctx: Arc<ListenerContext>,
    conn: quinn::Connection,
    remote: std::net::SocketAddr,
    mut peer: ClientPeer,
    mut early: Option<EarlyConnection>,
) {
    // The connection's streams; while it has none, it has `stream_wait` to
    // open one (keep-alives alone do not hold a client slot).
    let mut streams = tokio::task::JoinSet::new();
    let auth_deadline = tokio::time::Instant::now() + ctx.auth_wait;
    loop {
        let idle = streams.is_empty();
        let wait = tokio::time::sleep(ctx.stream_wait);
        let unauthenticated = !peer.pre_auth.is_released();
        let handshaking = early.is_some();
        let stream = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            _ = async { if let Some(e) = early.as_mut() { (&mut e.accepted).await; } }, if handshaking => {
                if let Some(e) = early.take() {
                    handshake_ended(&ctx, &conn, remote, &mut peer, e);
                }
                continue;
            }
            _ = tokio::time::sleep_until(auth_deadline), if unauthenticated => {
                if peer.pre_auth.is_released() {
                    continue;
                }
                tracing::debug!(%remote, "client connection closed: not authenticated in time");
                conn.close(0u32.into(), b"not authenticated");
                break;
            }
            _ = wait, if idle => {
                tracing::debug!(%remote, "client connection closed: no stream opened in time");
                conn.close(0u32.into(), b"no stream");
                break;
            }
            Some(ended) = streams.join_next(), if !idle => {
                // The client ended its only stream with </stream:stream>:
                // it is done with the connection too. Closing it now frees
                // it at once, and a client that then falls silent (or
                // whose own close is lost) holds nothing until a timeout.
                if matches!(ended, Ok(Some(ClosedBy::Client))) && streams.is_empty() {
                    tracing::debug!(%remote, "client connection closed: its stream ended");
                    conn.close(0u32.into(), b"stream closed");
                    break;
                }
                continue;
            }
            s = conn.accept_bi() => s,
        };
        match stream {
            Ok((send, recv)) => {
                streams.spawn(run_session(
                    ctx.clone(),
                    QuicSink(send),
                    QuicSource::new(recv, conn.clone()),
                    Transport::Quic,
                    peer.clone(),
                ));
            }
            Err(e) => {
                tracing::debug!(%remote, error = %e, "client connection ended");
                break;
            }
        }
    }
    // A handshake that ended as the connection did is still counted (not
    // one cut short by shutdown).
    if let Some(mut e) = early.take()
        && (&mut e.accepted).now_or_never().is_some()
    {
        handshake_ended(&ctx, &conn, remote, &mut peer, e);
    }
    // Sessions end on their own (shutdown, or their stream is gone).
    while streams.join_next().await.is_some() {}
}

/// Writes to the client; false if the stream is gone or stuck. Counts the
/// bytes written.
async fn write<W: ByteSink>(send: &mut W, parts: &[Bytes], counts: &TransportMetrics) -> bool {
    let written = matches!(
        tokio::time::timeout(WRITE_TIMEOUT, send.send_parts(parts)).await,
        Ok(Ok(()))
    );
    if written {
        counts
            .bytes_out
            .inc_by(parts.iter().map(|p| p.len() as u64).sum());
    }
    written
}

/// Counts a session in the `sessions` gauge of its transport, negotiating
/// until it is bound, for as long as it lives.
struct SessionGauge<'a> {
    counts: &'a TransportMetrics,
    bound: bool,
}

impl<'a> SessionGauge<'a> {
    fn new(counts: &'a TransportMetrics) -> Self {
        counts.negotiating.inc();
        Self {
            counts,
            bound: false,
        }
    }

    /// The session is bound (or resumed): once per stream.
    fn bound(&mut self) {
        if !std::mem::replace(&mut self.bound, true) {
            self.counts.negotiating.dec();
            self.counts.bound.inc();
        }
    }
}

impl Drop for SessionGauge<'_> {
    fn drop(&mut self) {
        match self.bound {
            true => self.counts.bound.dec(),
            false => self.counts.negotiating.dec(),
        };
    }
}

/// Drives one client XMPP stream over a byte stream until it ends: feeds
/// the [`ClientSession`] what happens (bytes, core frames, the core's
/// offer, timers, shutdown) and carries out its actions. Writes to the
/// client are gathered and made before the next frame to the core (and at
/// the end of the batch); what the registry announces is updated at once,
/// not after the writes before it (a write to a slow client can take up to
/// [`WRITE_TIMEOUT`], and a core reconnecting meanwhile must get the
/// session as it is). It counts what the session reports and what goes
/// through it in the metrics of its `transport`. Returns who ended the
/// stream if the session did (`None`: the client's stream or connection
/// went away).
pub async fn run_session<R, W>(
    ctx: Arc<ListenerContext>,
    mut send: W,
    mut recv: R,
    transport: Transport,
    mut peer: ClientPeer,
) -> Option<ClosedBy>
where
    R: ByteSource,
    W: ByteSink,
{
    let metrics = &*ctx.metrics;
    let counts = metrics.transport(transport);
    let mut gauge = SessionGauge::new(counts);
    let OpenSession {
        sid,
        frames: mut rx,
        kill,
        sm_counts,
    } = ctx.sessions.open();
    let framing = match transport {
        Transport::WebSocket => Framing::WebSocket,
        Transport::Quic | Transport::StartTls | Transport::DirectTls => Framing::Stream,
    };
    let mut session = ClientSession::new(
        sid,
        ctx.settings.clone(),
        framing,
        ctx.pool.core_offer(),
        SmallRng::seed_from_u64(rand::random()),
        now(),
    )
    .with_client_ip(peer.ip);
    if transport == Transport::Quic && ctx.zero_rtt {
        session = session.with_zero_rtt();
    }
    // (taken: the session holds them only while it needs them, not the
    // peer for the stream's life)
    let mut exporter = peer.tls_exporter.take();
    // On a connection accepted with 0-RTT whose handshake is not complete,
    // the session starts early and waits (boxed: only such sessions pay)
    // for the handshake.
    let mut handshake = None;
    if let Some(watch) = peer.handshake.take() {
        match watch.completed() {
            Some(completed) => exporter = exporter.or(completed),
            None => {
                session = session.with_early_data();
                handshake = Some(Box::pin(watch.wait()));
            }
        }
    }
    if let Some(exporter) = exporter {
        session = session.with_tls_exporter(exporter);
    }
    // How the stream ended, once known (for the metrics), and who ended it.
    let mut end = None;
    let mut ended = None;
    loop {
        let timeout = session.poll_timeout();
        let reading = session.wants_read();
        let awaiting_offer = session.awaits_core_offer();
        tokio::select! {
            _ = sleep_until(timeout) => session.handle_timeout(now()),
            _ = ctx.shutdown.cancelled() => session.close(StreamCondition::SystemShutdown, None),
            _ = kill.cancelled() => session.close(StreamCondition::ResourceConstraint, Some("client is not reading fast enough")),
            offer = ctx.pool.wait_core_offer(), if awaiting_offer => session.on_core_offer(offer),
            done = async { match handshake.as_mut() { Some(h) => h.await, None => std::future::pending().await } }, if handshake.is_some() => {
                handshake = None;
                // (None: the connection died in its handshake; its stream ends with it)
                if let Some(exporter) = done {
                    session.on_handshake_complete(exporter);
                }
            }
            chunk = recv.next_chunk(), if reading => match chunk {
                Ok(Some(c)) => {
                    counts.bytes_in.inc_by(c.len() as u64);
                    if recv.path_changed() {
                        metrics.quic_path_changes.inc();
                    }
                    session.on_data(now(), &c)
                }
                Ok(None) | Err(_) => {
                    end = Some(StreamEnd::Disconnected);
                    break;
                }
            },
            frame = rx.recv() => match frame {
                Some(f) => {
                    // Take whatever else is queued too: one write for a burst.
                    on_core(&mut session, f.into_frame(), counts);
                    for _ in 1..MAX_BATCH {
                        match rx.try_recv() {
                            Ok(f) => on_core(&mut session, f.into_frame(), counts),
                            Err(_) => break,
                        }
                    }
                }
                None => break,
            },
        }
        let mut close = false;
        let mut pending: Vec<Bytes> = Vec::new();
        for action in session.poll_actions() {
            let flushes = !matches!(
                action,
                SessionAction::Write(_) | SessionAction::Announcement(_) | SessionAction::Report(_)
            );
            if flushes && !pending.is_empty() {
                if !write(&mut send, &pending, counts).await {
                    close = true;
                    end.get_or_insert(StreamEnd::WriteFailed);
                }
                pending.clear();
            }
            match action {
                SessionAction::Write(bytes) => pending.push(bytes),
                SessionAction::ToCore(frame) => {
                    let stanza = matches!(frame, cm_protocol::Frame::Stanza { .. });
                    if ctx.pool.send(sid, frame).await.is_err() {
                        close = true;
                        end.get_or_insert(StreamEnd::PoolClosed);
                    } else if stanza {
                        counts.stanzas_in.inc();
                    }
                }
                // Nearly every batch: the session's own slot, not the registry's lock.
                SessionAction::Announcement(AnnouncementUpdate::SmCounters(sm)) => {
                    sm_counts.store(sm)
                }
                SessionAction::Announcement(update) => {
                    let bound = matches!(update, AnnouncementUpdate::Bound { .. });
                    if bound {
                        // Authenticated and bound: no longer counted per address.
                        peer.pre_auth.release();
                        gauge.bound();
                    }
                    ctx.sessions.update(sid, update);
                    if bound {
                        // announced where its frames go now, if it moved while binding
                        ctx.pool.bound(sid);
                    }
                }
                SessionAction::Report(report) => match report {
                    SessionReport::Login(result) => metrics.login(transport, result),
                    SessionReport::ReadPaused => {
                        counts.read_throttles.inc();
                    }
                    SessionReport::Ended(reason) => {
                        if let crate::session::EndReason::StreamError {
                            refusal: Some(r), ..
                        } = reason
                        {
                            metrics.dropped(DropReason::Session(r));
                        }
                        end.get_or_insert(StreamEnd::Session(reason));
                    }
                },
                SessionAction::Close(by) => {
                    ended = Some(by);
                    close = true;
                }
            }
        }
        if !pending.is_empty() && !write(&mut send, &pending, counts).await {
            close = true;
            end.get_or_insert(StreamEnd::WriteFailed);
        }
        if close {
            break;
        }
        if rx.is_empty() {
            session.shrink();
        }
    }
    metrics.stream_ended(transport, end.unwrap_or(StreamEnd::Disconnected));
    drop(gauge);
    recv.stop();
    // (for its slot's next owners: a resumable session is remembered as
    // detached; see `core_map`)
    let announcement = ctx.sessions.closing_announcement(sid);
    ctx.sessions.close(sid);
    session.on_closed();
    for action in session.poll_actions() {
        if let SessionAction::ToCore(frame) = action {
            let _ = ctx.pool.send(sid, frame).await;
        }
    }
    // Anything still queued for this session goes back to the core (but
    // fan-out copies, which are dropped).
    rx.close();
    while let Ok(frame) = rx.try_recv() {
        metrics.dropped(DropReason::SessionGone);
        if let Some(b) = frame.into_bounceable().and_then(|f| bounce(sid, f)) {
            let _ = ctx.pool.send(sid, b).await;
        }
    }
    ctx.pool.closed(sid, announcement);
    let _ = tokio::time::timeout(Duration::from_secs(2), send.finish()).await;
    ended
}

/// Hands a frame from the core to the session, counting the stanzas it
/// carries to the client.
fn on_core(session: &mut ClientSession, frame: cm_protocol::Frame, counts: &TransportMetrics) {
    if matches!(frame, cm_protocol::Frame::Deliver { .. }) {
        counts.stanzas_out.inc();
    }
    session.on_core(frame);
}

/// Sleeps until `deadline`; never returns without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, AtomicUsize};

    use cm_protocol::{Frame, Resumption, SmSnapshot};
    use tokio::sync::{Semaphore, mpsc};
    use xmpp_stream::framer::Limits;

    use super::*;
    use crate::pool::Pool;
    use crate::session::CoreOffer;

    const HEADER: &[u8] = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='x' version='1.0'>";
    const AUTH_PLAIN: &[u8] =
        b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>";

    fn context(pool: Arc<Pool>) -> Arc<ListenerContext> {
        let sessions = Arc::new(Sessions::starting_at(0));
        let pool = Cores::single(pool, sessions.clone());
        Arc::new(ListenerContext {
            settings: Arc::new(SessionSettings {
                domain: "x".into(),
                limits: Limits::default(),
                read_rate: 256 * 1024,
                read_burst: 1024 * 1024,
            }),
            sessions,
            pool,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            accepted: Arc::new(AtomicU64::new(0)),
            retried: Arc::new(AtomicU64::new(0)),
            metrics: Arc::new(Metrics::new()),
            open: Arc::new(AtomicUsize::new(0)),
            max_clients: 10,
            pre_auth: Arc::new(PreAuthLimit::new(10)),
            stream_wait: Duration::from_secs(10),
            auth_wait: Duration::from_secs(90),
            zero_rtt: false,
        })
    }

    /// The client's side of the bytes: what the test sends; its end when
    /// the sender is dropped.
    struct ChannelSource(mpsc::UnboundedReceiver<&'static [u8]>);

    impl ByteSource for ChannelSource {
        async fn next_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
            Ok(self.0.recv().await.map(Bytes::from_static))
        }
    }

    /// A client that reports every write as it starts and lets it finish
    /// only when the test adds a permit: a slow phone, on demand.
    struct GatedSink {
        written: mpsc::UnboundedSender<String>,
        gate: Arc<Semaphore>,
    }

    impl ByteSink for GatedSink {
        async fn send_parts(&mut self, parts: &[Bytes]) -> std::io::Result<()> {
            let _ = self
                .written
                .send(String::from_utf8_lossy(&parts.concat()).into_owned());
            self.gate
                .acquire()
                .await
                .map_err(std::io::Error::other)?
                .forget();
            Ok(())
        }

        async fn finish(&mut self) {}
    }

    struct Client {
        send: mpsc::UnboundedSender<&'static [u8]>,
        written: mpsc::UnboundedReceiver<String>,
        gate: Arc<Semaphore>,
    }

    impl Client {
        /// The next write the session starts, finished at once.
        async fn read(&mut self) -> String {
            let text = self.written.recv().await.expect("a write");
            self.gate.add_permits(1);
            text
        }
    }

    fn start(ctx: &Arc<ListenerContext>) -> (Client, tokio::task::JoinHandle<Option<ClosedBy>>) {
        let (send, recv) = mpsc::unbounded_channel();
        let (written_tx, written) = mpsc::unbounded_channel();
        let gate = Arc::new(Semaphore::new(0));
        let sink = GatedSink {
            written: written_tx,
            gate: gate.clone(),
        };
        let ip: IpAddr = [127, 0, 0, 1].into();
        let peer = ClientPeer {
            ip,
            pre_auth: PreAuthSlot::new(ctx.pre_auth.admit(ip).expect("admitted")),
            tls_exporter: None,
            handshake: None,
        };
        let task = tokio::spawn(run_session(
            ctx.clone(),
            sink,
            ChannelSource(recv),
            Transport::Quic,
            peer,
        ));
        let client = Client {
            send,
            written,
            gate,
        };
        (client, task)
    }

    /// Opens the stream, authenticates as a@x with the core's answer
    /// played by the test, and restarts the stream (the features after it
    /// are left to read); the session's id.
    async fn authenticate(
        ctx: &Arc<ListenerContext>,
        client: &mut Client,
        core: &mut crate::pool::PoolQueue,
    ) -> u64 {
        client.send.send(HEADER).unwrap();
        assert!(client.read().await.contains("<mechanism>PLAIN</mechanism>"));
        client.send.send(AUTH_PLAIN).unwrap();
        let Some(Frame::AuthStart { sid, .. }) = core.recv().await else {
            panic!("no AuthStart")
        };
        let success = Frame::AuthSuccess {
            sid,
            data: Bytes::new(),
            user: "a@x".to_owned(),
            token: None,
        };
        ctx.sessions.dispatch(sid, success);
        assert!(client.read().await.contains("<success"));
        client.send.send(HEADER).unwrap();
        sid
    }

    fn offer() -> CoreOffer {
        CoreOffer {
            mechanisms: vec!["PLAIN".into()],
            registration: false,
            caps: String::new(),
            sasl2: true,
            fast: false,
        }
    }

    #[tokio::test]
    async fn a_resumption_reaches_the_registry_with_its_counters_while_the_replay_is_written() {
        let (pool, mut core) = Pool::detached(1);
        pool.welcome_for_tests(offer());
        let ctx = context(pool);
        let (mut client, task) = start(&ctx);
        let sid = authenticate(&ctx, &mut client, &mut core[0]).await;
        assert!(client.read().await.contains("urn:xmpp:sm:3"));
        client
            .send
            .send(b"<resume xmlns='urn:xmpp:sm:3' previd='P' h='3'/>")
            .unwrap();
        assert!(matches!(
            core[0].recv().await,
            Some(Frame::Resume { h: 3, .. })
        ));
        // the answer and the replay, in one batch
        let resumption = Resumption {
            jid: "a@x/phone".into(),
            h: 9,
            available: true,
            priority: 2,
            max: 300,
        };
        ctx.sessions.dispatch(
            sid,
            Frame::Resumed {
                sid,
                result: Ok(resumption),
            },
        );
        for _ in 0..2 {
            let payload = Bytes::from_static(b"<message/>");
            ctx.sessions.dispatch(sid, Frame::Deliver { sid, payload });
        }
        // the phone is slow: the batch's write has started and not finished
        let write = client.written.recv().await.expect("a write");
        assert!(
            write.starts_with("<resumed") && write.matches("<message/>").count() == 2,
            "{write}"
        );
        // meanwhile a reconnecting pool announces the session as it is
        assert_eq!(
            ctx.sessions.announcements(0, 1).frames,
            vec![Frame::Announce {
                sid,
                jid: "a@x/phone".into(),
                available: true,
                priority: 2,
                sm: Some(SmSnapshot {
                    id: "P".into(),
                    handled: 9,
                    sent: 5,
                    client_acked: 3,
                    next_seq: 2,
                    max: 300,
                    detached: false,
                }),
            }]
        );
        client.gate.add_permits(1);
        drop(client.send);
        assert_eq!(task.await.unwrap(), None, "the client's stream went away");
        assert!(ctx.sessions.is_empty());
        assert!(matches!(
            core[0].recv().await,
            Some(Frame::SessionEnd { clean: false, .. })
        ));
    }

    // Paused time: the driver must take the time from tokio's clock, or the
    // deadline it sleeps until never passes for the session.
    #[tokio::test(start_paused = true)]
    async fn a_stream_that_never_authenticates_ends_at_its_deadline_on_tokios_clock() {
        let wall_clock = std::time::Instant::now();
        let (pool, _core) = Pool::detached(1);
        pool.welcome_for_tests(offer());
        let ctx = context(pool);
        let started = tokio::time::Instant::now();
        let (mut client, task) = start(&ctx);
        client.gate.add_permits(16);
        client.send.send(HEADER).unwrap();
        assert_eq!(task.await.unwrap(), Some(ClosedBy::Server));
        assert_eq!(started.elapsed(), crate::session::NEGOTIATION_TIMEOUT);
        let mut writes = Vec::new();
        while let Ok(w) = client.written.try_recv() {
            writes.push(w);
        }
        assert!(
            writes
                .last()
                .is_some_and(|w| w.contains("<connection-timeout")),
            "{writes:?}"
        );
        assert!(ctx.sessions.is_empty());
        // not after spinning until the wall clock caught up
        assert!(wall_clock.elapsed() < crate::session::NEGOTIATION_TIMEOUT);
    }

    #[tokio::test]
    async fn a_cm_at_half_its_client_limit_asks_every_unvalidated_address_to_validate() {
        let (pool, _core) = Pool::detached(1);
        let ctx = context(pool);
        let held: Vec<_> = (0..5u8)
            .map(|i| admit_quic(&ctx, [10, 0, 0, i].into(), false).expect("below half"))
            .collect();
        let fresh: IpAddr = [10, 0, 1, 1].into();
        assert_eq!(
            admit_quic(&ctx, fresh, false).err(),
            Some(Refused::AddressNotValidated)
        );
        assert!(admit_quic(&ctx, fresh, true).is_ok());
        drop(held);
        assert!(admit_quic(&ctx, fresh, false).is_ok());
    }

    #[tokio::test]
    async fn the_driver_counts_a_sessions_state_bytes_login_stanzas_and_end() {
        let (pool, mut core) = Pool::detached(1);
        pool.welcome_for_tests(offer());
        let ctx = context(pool);
        let quic = ctx.metrics.transport(Transport::Quic);
        let (mut client, task) = start(&ctx);
        let sid = authenticate(&ctx, &mut client, &mut core[0]).await;
        assert_eq!((quic.negotiating.get(), quic.bound.get()), (1, 0));
        client.read().await;
        client
            .send
            .send(b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
            .unwrap();
        assert!(matches!(core[0].recv().await, Some(Frame::Bind { .. })));
        ctx.sessions.dispatch(
            sid,
            Frame::BindResult {
                sid,
                iq_id: "b".into(),
                result: Ok("a@x/r".into()),
            },
        );
        assert!(client.read().await.contains("a@x/r"));
        assert_eq!((quic.negotiating.get(), quic.bound.get()), (0, 1));
        client.send.send(b"<message to='b@x'/>").unwrap();
        assert!(matches!(core[0].recv().await, Some(Frame::Stanza { .. })));
        let payload = Bytes::from_static(b"<message from='b@x' to='a@x/r'/>");
        ctx.sessions.dispatch(sid, Frame::Deliver { sid, payload });
        assert!(client.read().await.contains("from='b@x'"));
        // the client leaves without closing its stream
        drop(client.send);
        task.await.unwrap();
        assert_eq!((quic.negotiating.get(), quic.bound.get()), (0, 0));
        assert_eq!((quic.stanzas_in.get(), quic.stanzas_out.get()), (1, 1));
        let sent = 2 * HEADER.len()
            + AUTH_PLAIN.len()
            + b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>".len()
            + b"<message to='b@x'/>".len();
        assert_eq!(quic.bytes_in.get(), sent as u64);
        assert!(quic.bytes_out.get() > 0);
        let text = ctx.metrics.render();
        for line in [
            "longlink_cm_logins_total{transport=\"quic\",result=\"ok\"} 1",
            "longlink_cm_stream_ends_total{transport=\"quic\",reason=\"disconnected\"} 1",
        ] {
            assert!(text.contains(line), "{line}: {text}");
        }
    }

    #[tokio::test]
    async fn a_client_that_leaves_while_the_features_wait_for_the_core_is_noticed() {
        let (pool, _core) = Pool::detached(1);
        let ctx = context(pool);
        let (mut client, task) = start(&ctx);
        client.send.send(HEADER).unwrap();
        let header = client.read().await;
        assert!(!header.contains("features"), "{header}");
        assert_eq!(ctx.sessions.len(), 1);
        drop(client.send);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the session ends with its client")
            .unwrap();
        assert!(ctx.sessions.is_empty());
    }
}
