//! The pool of QUIC connections from this CM to the core.
//!
//! `pool_size` connections, each driven by its own task that dials with
//! jittered exponential backoff ([`Reconnect`] on the `RECONNECT`
//! schedule), says Hello, re-announces the bound sessions it carries
//! (those with stanzas the core never confirmed are kicked to resume, and
//! fenced until they end: [`crate::sessions::Fence`]), then pumps frames
//! both ways. Session `sid` always uses connection
//! `sid % pool_size`, so a session's frames stay in order. Each connection
//! has a bounded queue that outlives reconnects: while the core is away,
//! sessions wait on it (and QUIC flow control slows their clients) instead
//! of memory growing.
//!
//! A CM keeps one pool per core ([`crate::cores::Cores`]); each pool has
//! its id, tells the routing of the `SlotOwners` it receives and of its
//! links, re-announces only the sessions routed to it, and drops at
//! dequeue a frame whose session moved to another core since it was routed
//! ([`Stamp`]); a moved session's re-announcement is queued
//! ([`Queued::Reannounce`]) and made from the registry when taken.
//!
//! A `DeliverMany` from the core (one stanza for many sessions, a group
//! chat's fan-out) is handed to each of its sessions as a `Deliver` of the
//! stanza stamped with that session's full JID, in the frame's order;
//! copies for sessions gone or not bound are dropped, never bounced.
//!
//! What the core's `Welcome` offers clients (SASL mechanisms, in-band
//! registration) is published as a [`CoreOffer`]; until the first one,
//! sessions hold their stream features.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cm_protocol::{Frame, FrameDecoder, SessionId, read_frame};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use xmpp_stream::pacing::Backoff;

use crate::backoff::Reconnect;
use crate::core_map::PoolId;
use crate::metrics::{DropReason, Metrics};
use crate::session::CoreOffer;
use crate::sessions::{Dispatch, Fence, Reannouncement, Sessions};

/// Reconnection to the core: the first retry after a loss within 0–100 ms
/// (uniformly spread, so the CMs of a restarted core do not return in one
/// wave), then 0.5–1 × 100 ms doubling to 3 s. The count starts over only
/// after a connection stayed up (welcomed) for 3 s, so a core that welcomes
/// and then drops every connection is soon retried only every 1.5–3 s, not
/// in a loop limited by the round trip.
const RECONNECT: Backoff = Backoff::spread(Duration::from_millis(100), Duration::from_secs(3));

/// Default bytes of frames ([`Frame::queued_bytes`]) queued per pool
/// connection; sessions wait while it is full.
pub const POOL_QUEUE_BYTES: usize = 16 * 1024 * 1024;

/// One pooled connection's queue, bounded in bytes: a frame waits for its
/// bytes of the budget and gives them back when the connection takes it.
struct PoolSender {
    tx: mpsc::UnboundedSender<Queued>,
    budget: Arc<Semaphore>,
    /// The budget's size: no frame asks for more.
    bytes: usize,
}

/// The generation a session's frame was routed with, and the session's
/// current one: a frame whose generation is no longer current was routed
/// before its session moved to another core and must not be sent
/// ([`crate::core_map::Action::Move`]).
#[derive(Clone, Debug)]
pub struct Stamp {
    /// The generation the frame was routed with.
    pub generation: u32,
    /// The session's generation now.
    pub current: Arc<AtomicU32>,
}

impl Stamp {
    /// Whether the session has not moved since.
    pub fn is_current(&self) -> bool {
        self.current.load(Ordering::Acquire) == self.generation
    }
}

/// What a pooled connection's queue holds.
#[derive(Debug)]
pub(crate) enum Queued {
    /// A frame (holding its bytes of the budget, unless it was pushed
    /// past it: re-announced sessions' held frames).
    Frame {
        frame: Frame,
        _bytes: Option<OwnedSemaphorePermit>,
        stamp: Option<Stamp>,
    },
    /// Announce session `sid` (if bound), as the registry holds it when
    /// the connection takes this: it moved to this core.
    Reannounce { sid: SessionId, stamp: Stamp },
}

/// The receiving end of one pooled connection's queue.
pub(crate) struct PoolQueue(mpsc::UnboundedReceiver<Queued>);

impl PoolQueue {
    /// The next frame (its bytes return to the budget), skipping
    /// re-announcements; `None` once the pool is gone. For tests.
    #[cfg(test)]
    pub(crate) async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Queued::Frame { frame, .. } = self.0.recv().await? {
                return Some(frame);
            }
        }
    }

    /// The next item; `None` once the pool is gone.
    pub(crate) async fn next(&mut self) -> Option<Queued> {
        self.0.recv().await
    }

    /// The next item if one is queued.
    fn try_next(&mut self) -> Option<Queued> {
        self.0.try_recv().ok()
    }
}

/// What a pool tells the routing of a CM with several cores
/// ([`crate::cores::Cores`]) and asks it.
pub trait CoreEvents: Send + Sync {
    /// A `SlotOwners` arrived on pool `pool`.
    fn slot_owners(&self, pool: PoolId, frame: Frame);
    /// Pool `pool` has `up` welcomed connections now.
    fn links(&self, pool: PoolId, up: usize);
    /// The sessions pool `pool` carries among `candidates` (all: `None`).
    fn carried(&self, pool: PoolId, candidates: Vec<SessionId>) -> Option<HashSet<SessionId>>;
    /// A frame of session `sid` routed before it moved was taken from pool
    /// `pool`'s queue (not sent).
    fn stale(&self, pool: PoolId, sid: SessionId, frame: Frame);
    /// Whether session `sid` moved from pool `pool`'s core to another:
    /// deliveries, acknowledgements and kicks from the core it left (one
    /// that was paused, say, and runs on before it notices) are not the
    /// session's any more.
    fn moved_away(&self, pool: PoolId, sid: SessionId) -> bool;
    /// A core ended session `sid` for good (a `Kick` other than
    /// `connection-timeout`): it is not to be remembered as detached.
    fn ended_by_core(&self, sid: SessionId);
}

/// The pool (see the module docs).
pub struct Pool {
    senders: Vec<PoolSender>,
    /// Random id of this CM process, sent in every Hello.
    instance: u64,
    /// What the cores offer clients; none until the first Welcome (shared
    /// by every pool of a CM).
    offer: Arc<OfferCell>,
    /// Welcomed connections up now.
    links_up: AtomicUsize,
}

/// Where the first core's offer is published (shared by a CM's pools).
pub type OfferCell = watch::Sender<Option<Arc<CoreOffer>>>;

/// A new, empty offer cell.
pub fn offer_cell() -> Arc<OfferCell> {
    Arc::new(watch::Sender::new(None))
}

/// What a pool connection needs.
pub struct PoolSetup {
    /// Node name.
    pub node: String,
    /// Address clients use to reach this CM.
    pub client_addr: SocketAddr,
    /// The core.
    pub core: SocketAddr,
    /// QUIC endpoint to dial from (configured with the cluster client TLS).
    pub endpoint: quinn::Endpoint,
    /// Session registry.
    pub sessions: Arc<Sessions>,
    /// Shutdown signal.
    pub shutdown: CancellationToken,
    /// Bytes of frames queued per connection at most.
    pub queue_bytes: usize,
    /// The CM's metrics (frames, links, drops).
    pub metrics: Arc<Metrics>,
    /// Where Welcome offers are published.
    pub offer: Arc<OfferCell>,
    /// This pool's id among the CM's core pools.
    pub id: PoolId,
    /// The CM's routing among several cores (told of SlotOwners and
    /// links; asks which sessions this pool carries).
    pub events: Option<Weak<dyn CoreEvents>>,
}

/// The pool is gone (shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the core connection pool is closed")]
pub struct PoolClosed;

impl Pool {
    /// Starts `size` connection tasks.
    pub fn start(size: u16, setup: PoolSetup, tasks: &TaskTracker) -> Arc<Pool> {
        let size = size.max(1);
        let (pool, receivers) = Self::with_queues(size, setup.queue_bytes, setup.offer.clone());
        let pool = Arc::new(pool);
        let setup = Arc::new(setup);
        for (index, rx) in receivers.into_iter().enumerate() {
            tasks.spawn(connection_task(
                pool.clone(),
                setup.clone(),
                index as u16,
                size,
                rx,
            ));
        }
        pool
    }

    /// A pool of `size` connections' queues (at least one) of `bytes`
    /// each, and their receiving ends.
    fn with_queues(size: u16, bytes: usize, offer: Arc<OfferCell>) -> (Pool, Vec<PoolQueue>) {
        let bytes = bytes.clamp(1, Semaphore::MAX_PERMITS);
        let (senders, receivers) = (0..size.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                let budget = Arc::new(Semaphore::new(bytes));
                (PoolSender { tx, budget, bytes }, PoolQueue(rx))
            })
            .unzip();
        let pool = Pool {
            senders,
            instance: rand::random(),
            offer,
            links_up: AtomicUsize::new(0),
        };
        (pool, receivers)
    }

    /// A pool without connection tasks, for driver tests: what sessions
    /// send the core arrives on the receivers; [`Pool::welcome_for_tests`]
    /// plays the core's `Welcome`.
    #[cfg(test)]
    pub(crate) fn detached(size: u16) -> (Arc<Pool>, Vec<PoolQueue>) {
        let (pool, receivers) = Self::with_queues(size, POOL_QUEUE_BYTES, offer_cell());
        (Arc::new(pool), receivers)
    }

    /// What a `Welcome` offering `offer` does, for driver tests.
    #[cfg(test)]
    pub(crate) fn welcome_for_tests(&self, offer: CoreOffer) {
        self.welcomed(offer);
    }

    /// Queues a frame for the core on the session's connection (waits
    /// while its queue holds its budget of bytes).
    pub async fn send(&self, sid: SessionId, frame: Frame) -> Result<(), PoolClosed> {
        self.send_stamped(sid, frame, None).await
    }

    /// [`Pool::send`] of a frame routed with `stamp` (dropped at dequeue
    /// if its session moved meanwhile).
    pub async fn send_stamped(
        &self,
        sid: SessionId,
        frame: Frame,
        stamp: Option<Stamp>,
    ) -> Result<(), PoolClosed> {
        let queue = self.sender(sid);
        let cost = frame.queued_bytes().min(queue.bytes) as u32;
        let bytes = queue
            .budget
            .clone()
            .acquire_many_owned(cost)
            .await
            .map_err(|_| PoolClosed)?;
        let item = Queued::Frame {
            frame,
            _bytes: Some(bytes),
            stamp,
        };
        queue.tx.send(item).map_err(|_| PoolClosed)
    }

    /// Queues at once, past the byte budget: what a session that moved here
    /// sends first (its re-announcement, then the frames it held while
    /// its core was unknown, themselves bounded), in order before anything
    /// routed to it later.
    pub(crate) fn push_now(&self, sid: SessionId, item: Queued) {
        let _ = self.sender(sid).tx.send(item);
    }

    fn sender(&self, sid: SessionId) -> &PoolSender {
        &self.senders[(sid % self.senders.len() as u64) as usize]
    }

    /// Welcomed connections up now.
    pub fn links_up(&self) -> usize {
        self.links_up.load(Ordering::Relaxed)
    }

    /// Bytes of frames queued toward the core now, over every connection.
    pub fn queued_bytes(&self) -> usize {
        self.senders
            .iter()
            .map(|q| q.bytes.saturating_sub(q.budget.available_permits()))
            .sum()
    }

    /// What the core offers clients, if a Welcome has come yet (the
    /// latest one's, across reconnections).
    pub fn core_offer(&self) -> Option<Arc<CoreOffer>> {
        self.offer.borrow().clone()
    }

    /// Waits until the core has offered something (at once if it has).
    pub async fn wait_core_offer(&self) -> Arc<CoreOffer> {
        let mut offers = self.offer.subscribe();
        loop {
            if let Some(offer) = offers.borrow_and_update().clone() {
                return offer;
            }
            if offers.changed().await.is_err() {
                // the pool holds the sender as long as it lives
                std::future::pending::<()>().await;
            }
        }
    }

    /// Records what a Welcome offers; sessions waiting for it go on.
    fn welcomed(&self, offer: CoreOffer) {
        self.offer.send_if_modified(|current| {
            if current.as_deref() == Some(&offer) {
                return false;
            }
            *current = Some(Arc::new(offer));
            true
        });
    }
}

#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("{0}")]
    Frame(#[from] cm_protocol::ReadFrameError),
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("shutting down")]
    Shutdown,
}

async fn connection_task(
    pool: Arc<Pool>,
    setup: Arc<PoolSetup>,
    index: u16,
    size: u16,
    mut rx: PoolQueue,
) {
    let mut backoff = Reconnect::new(RECONNECT, SmallRng::seed_from_u64(rand::random()));
    let mut instance = None;
    loop {
        let link = Link {
            index,
            size,
            last_instance: &mut instance,
            backoff: &mut backoff,
        };
        let mut up = LinkUp {
            pool: &pool,
            setup: &setup,
            up: false,
        };
        let result = run_connection(&pool, &setup, &mut rx, link, &mut up).await;
        drop(up);
        match result {
            Err(LinkError::Shutdown) => return,
            Ok(()) => tracing::info!(index, "core connection closed"),
            Err(e) => tracing::warn!(index, error = %e, "core connection failed"),
        }
        setup.metrics.core_link_failures.inc();
        tokio::select! {
            _ = setup.shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay(crate::now())) => {}
        }
    }
}

/// Counts a pooled connection in the `core_links` gauge and its pool's
/// links while it is up (welcomed), and tells the routing.
struct LinkUp<'a> {
    pool: &'a Pool,
    setup: &'a PoolSetup,
    up: bool,
}

impl LinkUp<'_> {
    fn welcomed(&mut self) {
        if !std::mem::replace(&mut self.up, true) {
            self.setup.metrics.core_links.inc();
            let up = self.pool.links_up.fetch_add(1, Ordering::Relaxed) + 1;
            if let Some(events) = self.setup.events() {
                events.links(self.setup.id, up);
            }
        }
    }
}

impl Drop for LinkUp<'_> {
    fn drop(&mut self) {
        if self.up {
            self.setup.metrics.core_links.dec();
            let up = self.pool.links_up.fetch_sub(1, Ordering::Relaxed) - 1;
            if let Some(events) = self.setup.events() {
                events.links(self.setup.id, up);
            }
        }
    }
}

impl PoolSetup {
    /// The routing among several cores, while the CM lives.
    fn events(&self) -> Option<Arc<dyn CoreEvents>> {
        self.events.as_ref()?.upgrade()
    }

    /// Of the sessions connection `index` of `size` carries, those this
    /// pool carries (all: `None`, a CM with one core).
    fn carried(&self, index: u16, size: u16) -> Option<HashSet<SessionId>> {
        let events = self.events()?;
        events.carried(self.id, self.sessions.carried(index, size))
    }
}

/// One pooled connection's place in the pool and what it remembers across
/// reconnections.
struct Link<'a> {
    index: u16,
    size: u16,
    /// The core instance the last connection was welcomed by.
    last_instance: &'a mut Option<u64>,
    /// Reconnection delays; told when a connection is welcomed.
    backoff: &'a mut Reconnect,
}

async fn run_connection(
    pool: &Pool,
    setup: &PoolSetup,
    rx: &mut PoolQueue,
    link: Link<'_>,
    up: &mut LinkUp<'_>,
) -> Result<(), LinkError> {
    let Link {
        index,
        size,
        last_instance,
        backoff,
    } = link;
    let connecting = setup
        .endpoint
        .connect(setup.core, certs::CORE_SERVER_NAME)?;
    let conn = tokio::select! {
        _ = setup.shutdown.cancelled() => return Err(LinkError::Shutdown),
        c = connecting => c?,
    };
    let (mut send, mut recv) = conn.open_bi().await?;
    let mut out = BytesMut::new();
    Frame::Hello {
        node: setup.node.clone(),
        client_addr: setup.client_addr.to_string(),
        conn_index: index,
        pool_size: size,
        instance: pool.instance,
    }
    .encode(&mut out);
    send.write_all(&out).await?;
    out.clear();
    let mut decoder = FrameDecoder::new();
    let welcome =
        tokio::time::timeout(Duration::from_secs(10), read_frame(&mut recv, &mut decoder))
            .await
            .map_err(|_| LinkError::Protocol("no welcome".into()))??;
    match welcome {
        Some(Frame::Welcome {
            mechanisms,
            instance,
            registration,
            caps,
            sasl2,
            fast,
            ..
        }) => {
            pool.welcomed(CoreOffer {
                mechanisms,
                registration,
                caps,
                sasl2,
                fast,
            });
            tracing::info!(index, core_instance = instance, "connected to the core");
            if last_instance.is_some_and(|last| last != instance) {
                // A new core knows nothing of SASL exchanges or binds in progress:
                // fail them so the clients can retry instead of waiting forever.
                let carried = setup.carried(index, size);
                for sid in setup.sessions.unbound_among(index, size, carried.as_ref()) {
                    let failure = Frame::AuthFailure {
                        sid,
                        condition: "temporary-auth-failure".into(),
                    };
                    let bind = Frame::BindResult {
                        sid,
                        iq_id: String::new(),
                        result: Err("internal-server-error".into()),
                    };
                    let resume = Frame::Resumed {
                        sid,
                        result: Err("item-not-found".into()),
                    };
                    let register = Frame::RegisterResult {
                        sid,
                        error: Some("internal-server-error".into()),
                    };
                    let _ = setup.sessions.dispatch(sid, failure);
                    let _ = setup.sessions.dispatch(sid, bind);
                    let _ = setup.sessions.dispatch(sid, resume);
                    let _ = setup.sessions.dispatch(sid, register);
                }
            }
            *last_instance = Some(instance);
            backoff.established(crate::now());
            up.welcomed();
        }
        other => {
            return Err(LinkError::Protocol(format!(
                "expected welcome, got {other:?}"
            )));
        }
    }
    let Reannouncement {
        frames: announcements,
        mut fence,
    } = setup
        .sessions
        .announcements_among(index, size, setup.carried(index, size).as_ref());
    if !announcements.is_empty() {
        tracing::info!(
            index,
            sessions = announcements.len(),
            "re-announcing sessions"
        );
    }
    for a in announcements {
        a.encode(&mut out);
    }
    if !out.is_empty() {
        send.write_all(&out).await?;
        out.clear();
    }
    let mut bounces: Vec<Frame> = Vec::new();
    let metrics = &*setup.metrics;
    let (frames_out, frames_in) = (metrics.frames_to_core(), metrics.frames_from_core());
    // What came in the Welcome's read (a cluster core's SlotOwners follows
    // it at once) is handled now, not when more bytes arrive.
    while let Some(frame) = decoder
        .next_frame()
        .map_err(cm_protocol::ReadFrameError::from)?
    {
        frames_in.inc();
        dispatch(pool, setup, frame, &mut bounces);
    }
    for b in bounces.drain(..) {
        if encode(&b, &mut out) {
            frames_out.inc();
        }
    }
    if !out.is_empty() {
        send.write_all(&out).await?;
        out.clear();
    }
    loop {
        tokio::select! {
            _ = setup.shutdown.cancelled() => {
                conn.close(0u32.into(), b"cm shutting down");
                return Err(LinkError::Shutdown);
            }
            item = rx.next() => {
                let Some(item) = item else { return Err(LinkError::Shutdown) };
                let mut next = Some(item);
                while let Some(item) = next {
                    if let Some(f) = take(setup, item, &mut fence) {
                        if fence.passes(&f) {
                            if encode(&f, &mut out) {
                                frames_out.inc();
                            } else {
                                metrics.dropped(DropReason::FrameTooLarge);
                            }
                        } else {
                            metrics.dropped(DropReason::Fenced);
                        }
                    }
                    next = if out.len() < 256 * 1024 { rx.try_next() } else { None };
                }
                if out.is_empty() {
                    continue;
                }
                send.write_all(&out).await?;
                out.clear();
            }
            chunk = recv.read_chunk(64 * 1024, true) => {
                let Some(chunk) = chunk.map_err(cm_protocol::ReadFrameError::from)? else { return Ok(()) };
                decoder.push(&chunk.bytes);
                while let Some(frame) = decoder.next_frame().map_err(cm_protocol::ReadFrameError::from)? {
                    frames_in.inc();
                    dispatch(pool, setup, frame, &mut bounces);
                }
                if !bounces.is_empty() {
                    for b in bounces.drain(..) {
                        if encode(&b, &mut out) {
                            frames_out.inc();
                        } else {
                            metrics.dropped(DropReason::FrameTooLarge);
                        }
                    }
                    send.write_all(&out).await?;
                    out.clear();
                }
            }
        }
    }
}

/// What a queued item sends: its frame unless its session moved since it
/// was routed (then the routing hears of it), or a moved session's
/// `Announce` as the registry holds it now (if it is still bound and
/// still here; kicked and fenced if its client sent more than its old
/// core confirmed).
fn take(setup: &PoolSetup, item: Queued, fence: &mut Fence) -> Option<Frame> {
    match item {
        Queued::Frame { frame, stamp, .. } => {
            if stamp.as_ref().is_none_or(Stamp::is_current) {
                return Some(frame);
            }
            setup.metrics.dropped(DropReason::Moved);
            if let (Some(events), Some(sid)) = (setup.events(), frame.sid()) {
                events.stale(setup.id, sid, frame);
            }
            None
        }
        Queued::Reannounce { sid, stamp } => {
            if !stamp.is_current() {
                return None;
            }
            setup.sessions.announcement(sid, fence)
        }
    }
}

/// Encodes a frame for the core; one above the frame limit (which the core
/// would answer by closing the link for every session on it) is dropped
/// (false).
fn encode(frame: &Frame, out: &mut BytesMut) -> bool {
    match frame.try_encode(out) {
        Ok(_) => true,
        Err(e) => {
            tracing::error!(sid = frame.sid(), error = %e, "frame for the core dropped");
            false
        }
    }
}

fn dispatch(pool: &Pool, setup: &PoolSetup, frame: Frame, bounces: &mut Vec<Frame>) {
    let frame = match frame {
        Frame::SlotOwners { .. } => {
            match setup.events() {
                Some(events) => events.slot_owners(setup.id, frame),
                None => tracing::warn!("SlotOwners from the core, but this CM routes to one core"),
            }
            return;
        }
        Frame::DeliverMany { sids, payload } => {
            let events = setup.events();
            let moved_away = |sid| events.as_ref().is_some_and(|e| e.moved_away(setup.id, sid));
            deliver_many(&setup.sessions, &setup.metrics, moved_away, sids, payload);
            return;
        }
        frame => frame,
    };
    let sid = match &frame {
        Frame::Deliver { sid, .. }
        | Frame::AuthChallenge { sid, .. }
        | Frame::AuthSuccess { sid, .. }
        | Frame::AuthFailure { sid, .. }
        | Frame::BindResult { sid, .. }
        | Frame::Kick { sid, .. }
        | Frame::SmEnabled { sid, .. }
        | Frame::Handled { sid, .. }
        | Frame::Resumed { sid, .. }
        | Frame::RegisterResult { sid, .. } => *sid,
        Frame::Welcome {
            mechanisms,
            registration,
            caps,
            sasl2,
            fast,
            ..
        } => {
            pool.welcomed(CoreOffer {
                mechanisms: mechanisms.clone(),
                registration: *registration,
                caps: caps.clone(),
                sasl2: *sasl2,
                fast: *fast,
            });
            return;
        }
        other => {
            tracing::warn!(frame = other.name(), "unexpected frame from the core");
            return;
        }
    };
    // (answers to a request the core was sent, a bind or a resumption,
    // are the session's wherever it went since)
    if matches!(
        frame,
        Frame::Deliver { .. } | Frame::Handled { .. } | Frame::Kick { .. }
    ) && let Some(events) = setup.events()
        && events.moved_away(setup.id, sid)
    {
        setup.metrics.dropped(DropReason::Moved);
        return;
    }
    if let Frame::Kick { condition, .. } = &frame
        && condition != xmpp_stream::StreamCondition::ConnectionTimeout.name()
        && let Some(events) = setup.events()
    {
        events.ended_by_core(sid);
    }
    let undelivered = match setup.sessions.dispatch(sid, frame) {
        Dispatch::Queued => return,
        Dispatch::Gone(f) => {
            setup.metrics.dropped(DropReason::SessionGone);
            f
        }
        Dispatch::Overflow(f) => {
            setup.metrics.dropped(DropReason::SessionQueueFull);
            f
        }
    };
    if let Some(b) = bounce(sid, undelivered) {
        bounces.push(b);
    }
}

/// Hands each session of a `DeliverMany`, in order, its copy of `payload`
/// stamped with the session's full JID as a `Deliver`, queued as one from
/// the core is (so stream management numbers it, client state indication
/// and the queue's budget see it, as any `Deliver`). A session that moved
/// to another core since (`moved_away`), is gone or is not bound gets no
/// copy; a session whose queue is full is killed, as for a `Deliver`. None of these copies bounces: a group chat copy for a session
/// that is gone is dropped.
fn deliver_many(
    sessions: &Sessions,
    metrics: &Metrics,
    moved_away: impl Fn(SessionId) -> bool,
    sids: Vec<SessionId>,
    payload: Bytes,
) {
    let mut unstampable = false;
    for sid in sids {
        if moved_away(sid) {
            metrics.dropped(DropReason::Moved);
            continue;
        }
        let Some(jid) = sessions.jid(sid) else {
            metrics.dropped(DropReason::SessionGone);
            continue;
        };
        let copy = match xmpp_stream::stanza::stamp_to(&payload, &jid) {
            Some(stamped) => stamped,
            None => {
                // The core's stanza has a `to` already, or is no stanza:
                // written as it came, as a `Deliver` of it would be, so
                // the session still counts the copy the core counted.
                if !std::mem::replace(&mut unstampable, true) {
                    tracing::warn!(sid, "fan-out stanza not stamped with `to`: sent as it came");
                }
                payload.clone()
            }
        };
        match sessions.dispatch_copy(sid, Frame::Deliver { sid, payload: copy }) {
            Dispatch::Queued => {}
            Dispatch::Gone(_) => metrics.dropped(DropReason::SessionGone),
            Dispatch::Overflow(_) => metrics.dropped(DropReason::SessionQueueFull),
        }
    }
}

/// Turns an undeliverable Deliver for session `sid` back into a Bounce for the core.
pub fn bounce(sid: SessionId, frame: Frame) -> Option<Frame> {
    let Frame::Deliver { payload, .. } = frame else {
        return None;
    };
    let top = xmpp_stream::stanza::inspect(&payload).ok()?;
    let to = top.attr("to")?.to_owned();
    Some(Frame::Bounce { sid, to, payload })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::AnnouncementUpdate;
    use crate::sessions::OpenSession;

    fn offer(mechanisms: &[&str], registration: bool) -> CoreOffer {
        CoreOffer {
            mechanisms: mechanisms.iter().map(|m| m.to_string()).collect(),
            registration,
            caps: String::new(),
            sasl2: true,
            fast: false,
        }
    }

    /// A `longlink_cm_drops_total` count.
    fn drops(metrics: &Metrics, reason: DropReason) -> f64 {
        let name = format!("longlink_cm_drops_total{{reason=\"{}\"}}", reason.name());
        metrics
            .render()
            .lines()
            .find_map(|line| {
                let (n, v) = line.rsplit_once(' ')?;
                (n == name).then(|| v.parse().ok()).flatten()
            })
            .unwrap_or(0.0)
    }

    fn bind(sessions: &Sessions, s: &OpenSession, jid: &str) {
        sessions.update(
            s.sid,
            AnnouncementUpdate::Bound {
                jid: jid.into(),
                available: true,
                priority: 0,
                sm: None,
            },
        );
    }

    /// Every frame queued for a session so far.
    fn taken(s: &mut OpenSession) -> Vec<Frame> {
        std::iter::from_fn(|| s.frames.try_recv().ok().map(|q| q.into_frame())).collect()
    }

    fn deliver(sid: SessionId, payload: &'static [u8]) -> Frame {
        Frame::Deliver {
            sid,
            payload: Bytes::from_static(payload),
        }
    }

    const ROOM_MESSAGE: &[u8] =
        b"<message from='room@muc.x/nick' type='groupchat'><body>hi</body></message>";

    #[test]
    fn a_deliver_many_hands_each_bound_session_a_deliver_addressed_to_it_in_order() {
        let sessions = Sessions::starting_at(0);
        let metrics = Metrics::new();
        let mut alice = sessions.open();
        let mut unbound = sessions.open();
        let mut carol = sessions.open();
        bind(&sessions, &alice, "alice@x/phone");
        bind(&sessions, &carol, "carol@x/it's&me");
        let gone = carol.sid + 100;
        // a Deliver before and one after keep their places around the copy
        sessions.dispatch(alice.sid, deliver(alice.sid, b"<message id='1'/>"));
        deliver_many(
            &sessions,
            &metrics,
            |_| false,
            vec![carol.sid, unbound.sid, gone, alice.sid],
            Bytes::from_static(ROOM_MESSAGE),
        );
        sessions.dispatch(alice.sid, deliver(alice.sid, b"<message id='3'/>"));
        assert_eq!(
            taken(&mut alice),
            vec![
                deliver(alice.sid, b"<message id='1'/>"),
                deliver(
                    alice.sid,
                    b"<message to='alice@x/phone' from='room@muc.x/nick' type='groupchat'><body>hi</body></message>"
                ),
                deliver(alice.sid, b"<message id='3'/>"),
            ]
        );
        let copies = taken(&mut carol);
        assert_eq!(
            copies,
            vec![deliver(
                carol.sid,
                b"<message to='carol@x/it&apos;s&amp;me' from='room@muc.x/nick' type='groupchat'><body>hi</body></message>"
            )]
        );
        let [Frame::Deliver { payload, .. }] = &copies[..] else {
            unreachable!()
        };
        let top = xmpp_stream::stanza::inspect(payload).expect("a stanza");
        assert_eq!(top.attr("to"), Some("carol@x/it's&me"));
        // the unbound and the gone session get nothing, and nothing bounces
        assert!(taken(&mut unbound).is_empty());
        assert_eq!(drops(&metrics, DropReason::SessionGone), 2.0);
        assert_eq!(drops(&metrics, DropReason::SessionQueueFull), 0.0);
    }

    #[test]
    fn a_session_that_moved_away_gets_no_copy() {
        let sessions = Sessions::starting_at(0);
        let metrics = Metrics::new();
        let mut stays = sessions.open();
        let mut moved = sessions.open();
        bind(&sessions, &stays, "a@x/1");
        bind(&sessions, &moved, "b@x/1");
        let moved_sid = moved.sid;
        deliver_many(
            &sessions,
            &metrics,
            |sid| sid == moved_sid,
            vec![moved.sid, stays.sid],
            Bytes::from_static(b"<presence/>"),
        );
        assert!(taken(&mut moved).is_empty());
        assert_eq!(
            taken(&mut stays),
            vec![deliver(stays.sid, b"<presence to='a@x/1'/>")]
        );
        assert_eq!(drops(&metrics, DropReason::Moved), 1.0);
    }

    #[test]
    fn a_copy_right_behind_a_bind_or_a_resumption_finds_the_session_bound() {
        let sessions = Sessions::starting_at(0);
        let metrics = Metrics::new();
        let mut bound = sessions.open();
        let mut resumed = sessions.open();
        let mut refused = sessions.open();
        // the answers are queued; the sessions' drivers have not taken them
        let bind_result = Frame::BindResult {
            sid: bound.sid,
            iq_id: "b1".into(),
            result: Ok("a@x/new".into()),
        };
        let resumption = Frame::Resumed {
            sid: resumed.sid,
            result: Ok(cm_protocol::Resumption {
                jid: "b@x/back".into(),
                h: 0,
                available: true,
                priority: 0,
                max: 300,
            }),
        };
        let failure = Frame::Resumed {
            sid: refused.sid,
            result: Err("item-not-found".into()),
        };
        for frame in [bind_result.clone(), resumption.clone(), failure.clone()] {
            let sid = frame.sid().expect("a session's");
            assert_eq!(sessions.dispatch(sid, frame), Dispatch::Queued);
        }
        assert_eq!(sessions.jid(bound.sid).as_deref(), Some("a@x/new"));
        deliver_many(
            &sessions,
            &metrics,
            |_| false,
            vec![bound.sid, resumed.sid, refused.sid],
            Bytes::from_static(b"<presence/>"),
        );
        assert_eq!(
            taken(&mut bound),
            vec![bind_result, deliver(bound.sid, b"<presence to='a@x/new'/>")]
        );
        assert_eq!(
            taken(&mut resumed),
            vec![
                resumption,
                deliver(resumed.sid, b"<presence to='b@x/back'/>")
            ]
        );
        assert_eq!(taken(&mut refused), vec![failure]);
        // the driver's announcement takes over
        bind(&sessions, &bound, "a@x/new");
        assert_eq!(sessions.jid(bound.sid).as_deref(), Some("a@x/new"));
    }

    #[test]
    fn a_full_session_queue_kills_the_session_and_its_copy_is_dropped() {
        let sessions = Sessions::starting_at(0).with_queue_bytes(1);
        let metrics = Metrics::new();
        let mut full = sessions.open();
        let mut fine = sessions.open();
        bind(&sessions, &full, "a@x/1");
        bind(&sessions, &fine, "b@x/1");
        // (a frame above the whole budget still goes into an empty queue)
        sessions.dispatch(full.sid, deliver(full.sid, b"<message/>"));
        deliver_many(
            &sessions,
            &metrics,
            |_| false,
            vec![full.sid, fine.sid],
            Bytes::from_static(b"<presence/>"),
        );
        assert!(full.kill.is_cancelled());
        assert_eq!(taken(&mut full), vec![deliver(full.sid, b"<message/>")]);
        assert_eq!(
            taken(&mut fine),
            vec![deliver(fine.sid, b"<presence to='b@x/1'/>")]
        );
        assert_eq!(drops(&metrics, DropReason::SessionQueueFull), 1.0);
    }

    #[test]
    fn a_payload_that_cannot_be_stamped_is_still_counted_as_one_deliver_per_session() {
        let sessions = Sessions::starting_at(0);
        let metrics = Metrics::new();
        let mut a = sessions.open();
        let mut b = sessions.open();
        bind(&sessions, &a, "a@x/1");
        bind(&sessions, &b, "b@x/1");
        deliver_many(
            &sessions,
            &metrics,
            |_| false,
            vec![a.sid, b.sid],
            Bytes::from_static(b"<message to='someone@x'/>"),
        );
        assert_eq!(
            taken(&mut a),
            vec![deliver(a.sid, b"<message to='someone@x'/>")]
        );
        assert_eq!(
            taken(&mut b),
            vec![deliver(b.sid, b"<message to='someone@x'/>")]
        );
    }

    #[tokio::test]
    async fn a_session_waits_while_its_pool_queue_holds_its_byte_budget() {
        use futures_util::FutureExt;
        let (pool, mut queues) = Pool::with_queues(1, 100_000, offer_cell());
        let stanza = |n: u8| Frame::Bounce {
            sid: 1,
            to: "a@x/r".into(),
            payload: Bytes::from(vec![n; 60_000]),
        };
        pool.send(1, stanza(1)).await.unwrap();
        // the second does not fit beside the first: the session waits
        let mut second = Box::pin(pool.send(1, stanza(2)));
        assert!((&mut second).now_or_never().is_none());
        // once the connection takes the first, it goes in
        assert_eq!(queues[0].recv().await, Some(stanza(1)));
        tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("queued once there is room")
            .unwrap();
        assert_eq!(queues[0].recv().await, Some(stanza(2)));
        // a frame above the whole budget still goes into an empty queue
        let huge = Frame::Deliver {
            sid: 1,
            payload: Bytes::from(vec![0; 200_000]),
        };
        let sent = pool.send(1, huge.clone()).now_or_never();
        assert!(matches!(sent, Some(Ok(()))));
    }

    #[tokio::test]
    async fn queued_bytes_are_what_the_connections_queues_hold_until_taken() {
        let (pool, mut queues) = Pool::with_queues(2, 100_000, offer_cell());
        let frame = |sid, n| Frame::Bounce {
            sid,
            to: "a@x/r".into(),
            payload: Bytes::from(vec![0; n]),
        };
        assert_eq!(pool.queued_bytes(), 0);
        pool.send(1, frame(1, 1000)).await.unwrap();
        pool.send(2, frame(2, 3000)).await.unwrap();
        let cost = frame(1, 1000).queued_bytes() + frame(2, 3000).queued_bytes();
        assert_eq!(pool.queued_bytes(), cost);
        assert_eq!(queues[1].recv().await, Some(frame(1, 1000)));
        assert_eq!(pool.queued_bytes(), frame(2, 3000).queued_bytes());
        assert_eq!(queues[0].recv().await, Some(frame(2, 3000)));
        assert_eq!(pool.queued_bytes(), 0);
    }

    #[test]
    fn an_unchanged_offer_is_not_published_again() {
        let (pool, _queues) = Pool::detached(1);
        let mut offers = pool.offer.subscribe();
        assert_eq!(pool.core_offer(), None);
        pool.welcomed(offer(&["PLAIN"], false));
        assert!(offers.has_changed().unwrap());
        let first = offers.borrow_and_update().clone().expect("an offer");
        assert_eq!(*first, offer(&["PLAIN"], false));
        // every reconnection's Welcome saying the same publishes nothing
        pool.welcomed(offer(&["PLAIN"], false));
        assert!(!offers.has_changed().unwrap());
        assert!(Arc::ptr_eq(&pool.core_offer().unwrap(), &first));
        // a core that offers something else is published
        pool.welcomed(offer(&["PLAIN"], true));
        assert!(offers.has_changed().unwrap());
        assert_eq!(*pool.core_offer().unwrap(), offer(&["PLAIN"], true));
    }

    #[tokio::test]
    async fn a_waiter_wakes_on_the_first_offer() {
        let (pool, _queues) = Pool::detached(1);
        let waiter = tokio::spawn({
            let pool = pool.clone();
            async move { pool.wait_core_offer().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        pool.welcomed(offer(&["SCRAM-SHA-256"], false));
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(*got, offer(&["SCRAM-SHA-256"], false));
    }

    #[tokio::test]
    async fn waiting_once_the_offer_is_known_returns_at_once() {
        let (pool, _queues) = Pool::detached(1);
        pool.welcomed(offer(&["PLAIN"], true));
        let got = tokio::time::timeout(Duration::ZERO, pool.wait_core_offer())
            .await
            .expect("at once");
        assert_eq!(*got, offer(&["PLAIN"], true));
    }
}
