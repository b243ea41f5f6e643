//! The CM side of the core: accepting pooled QUIC connections from CM nodes
//! (mutual TLS with the cluster CA) and the registry of live nodes.
//!
//! Every connection carries one bidirectional stream of `cm-protocol`
//! frames. A reader task decodes frames and hands routing frames to the
//! router (awaiting when it is busy, so QUIC flow control slows the CM down
//! instead of memory growing); SASL frames go to the auth service. A writer
//! task per connection drains a queue bounded in bytes ([`LINK_QUEUE_BYTES`])
//! onto the stream; a frame that does not fit is given back to the router
//! ([`SendError::Full`]), which detaches the session it was for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use cm_protocol::{Frame, FrameDecoder, SessionId, read_frame};
use prometheus_client::metrics::gauge::Gauge;
use quinn::{Connection, RecvStream, SendStream};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthService, Outcome};
use crate::driver::Event;
use crate::metrics::{Metrics, label};
use crate::router::Input;
use crate::routing::NodeId;

/// Bytes of frames ([`Frame::queued_bytes`]) queued towards one pooled
/// connection before it counts as full.
pub const LINK_QUEUE_BYTES: usize = 32 * 1024 * 1024;

/// The sending end of one connection's queue, bounded in bytes: a frame
/// holds its bytes of the budget until the writer takes it.
#[derive(Clone)]
pub struct LinkSender {
    tx: mpsc::UnboundedSender<(Frame, OwnedSemaphorePermit)>,
    budget: Arc<Semaphore>,
    bytes: usize,
}

/// The writer's end of one connection's queue.
pub struct LinkReceiver(mpsc::UnboundedReceiver<(Frame, OwnedSemaphorePermit)>);

impl LinkSender {
    /// A queue of `bytes` (a frame larger than that still goes into an
    /// empty queue).
    pub fn channel(bytes: usize) -> (LinkSender, LinkReceiver) {
        let bytes = bytes.clamp(1, Semaphore::MAX_PERMITS);
        let (tx, rx) = mpsc::unbounded_channel();
        let budget = Arc::new(Semaphore::new(bytes));
        (LinkSender { tx, budget, bytes }, LinkReceiver(rx))
    }

    fn cost(&self, frame: &Frame) -> u32 {
        frame.queued_bytes().min(self.bytes) as u32
    }

    /// Queues `frame` if its bytes fit now.
    pub fn try_send(&self, frame: Frame) -> Result<(), (SendError, Box<Frame>)> {
        if self.tx.is_closed() {
            return Err((SendError::NoLink, Box::new(frame)));
        }
        match self
            .budget
            .clone()
            .try_acquire_many_owned(self.cost(&frame))
        {
            Ok(bytes) => self
                .tx
                .send((frame, bytes))
                .map_err(|e| (SendError::NoLink, Box::new(e.0.0))),
            Err(_) => Err((SendError::Full, Box::new(frame))),
        }
    }

    /// Queues `frame` whatever the queue holds (for the few frames of state
    /// that must never be dropped and must keep their place in line:
    /// `SlotOwners`, at most one per ownership change).
    pub fn push(&self, frame: Frame) {
        if let Ok(none) = self.budget.clone().try_acquire_many_owned(0) {
            let _ = self.tx.send((frame, none));
        }
    }

    /// Queues `frame` once its bytes fit; gives it back if the link is gone.
    pub async fn send(&self, frame: Frame) -> Result<(), Box<Frame>> {
        let Ok(bytes) = self
            .budget
            .clone()
            .acquire_many_owned(self.cost(&frame))
            .await
        else {
            return Err(Box::new(frame));
        };
        self.tx.send((frame, bytes)).map_err(|e| Box::new(e.0.0))
    }
}

impl LinkReceiver {
    /// The next frame (its bytes return to the budget).
    pub async fn recv(&mut self) -> Option<Frame> {
        self.0.recv().await.map(|(frame, _bytes)| frame)
    }

    /// The next frame if one is queued.
    pub fn try_recv(&mut self) -> Option<Frame> {
        self.0.try_recv().ok().map(|(frame, _bytes)| frame)
    }
}

/// Why a send to a node failed.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// The node has no live connection.
    NoLink,
    /// The connection's queue is full.
    Full,
}

struct Conn {
    id: u64,
    /// Its index in the CM's pool.
    index: u16,
    /// The CM's pool size when it connected.
    pool_size: u16,
    tx: LinkSender,
    /// Cancelled when a newer connection replaces this one: its handler
    /// closes it at once.
    replaced: CancellationToken,
}

impl Conn {
    /// What the router hears when this connection's frames in flight are lost.
    fn lost(&self, node: NodeId) -> Input {
        Input::LinkLost {
            node,
            index: self.index,
            pool_size: self.pool_size,
        }
    }
}

/// A connection just registered.
pub(crate) struct Registered {
    pub(crate) node: NodeId,
    conn_id: u64,
    /// A new process of the node: the routes of its old one are gone
    /// (the router was told `NodeGone`).
    restarted: bool,
    /// The node's connection at the same pool index that this one replaced
    /// (the same process reconnected before the core noticed the old one
    /// end): its loss, which the router was told.
    lost: Option<Input>,
    /// Cancelled when a newer connection replaces this one.
    replaced: CancellationToken,
}

struct NodeEntry {
    name: String,
    /// The CM process instance last seen.
    instance: u64,
    /// The CM's pool size.
    pool_size: u16,
    client_addr: String,
    conns: Vec<Conn>,
    /// Bumped on every connect so a stale grace timer does nothing.
    epoch: u64,
}

/// Registry of CM nodes and their pooled connections.
#[derive(Default)]
pub struct Links {
    inner: Mutex<LinksInner>,
    gauges: Option<LinkGauges>,
}

/// The gauges that show the registry: set on every change, under its lock,
/// so they read what it holds.
pub struct LinkGauges {
    /// Nodes with at least one connection.
    pub nodes: Gauge,
    /// Registered connections in all.
    pub connections: Gauge,
}

#[derive(Default)]
struct LinksInner {
    ids: HashMap<String, NodeId>,
    nodes: HashMap<NodeId, NodeEntry>,
    next_conn: u64,
}

/// A node as shown by the admin endpoint.
#[derive(Clone, Debug, Serialize)]
pub struct NodeInfo {
    /// Node id in this core.
    pub id: NodeId,
    /// Node name (from its certificate).
    pub name: String,
    /// Address clients use to reach it.
    pub client_addr: String,
    /// Pooled connections open.
    pub connections: usize,
}

impl Links {
    /// An empty registry that keeps `gauges` up to date.
    pub fn with_gauges(gauges: LinkGauges) -> Self {
        Self {
            inner: Mutex::default(),
            gauges: Some(gauges),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LinksInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the gauges from `inner` (called with the lock held).
    fn show(&self, inner: &LinksInner) {
        if let Some(g) = &self.gauges {
            let (nodes, connections) = inner.counts();
            g.nodes.set(nodes as i64);
            g.connections.set(connections as i64);
        }
    }

    /// [`register_telling`](Self::register_telling) with no one to tell.
    #[cfg(test)]
    pub(crate) fn register(
        &self,
        name: &str,
        instance: u64,
        pool: (u16, u16),
        client_addr: &str,
        tx: LinkSender,
    ) -> Registered {
        self.register_telling(name, instance, pool, client_addr, tx, |_| {})
    }

    /// Registers a connection of node `name` from CM process `instance`.
    /// A node name runs once, so the connections it replaces are told to
    /// close: all of a previous process's (the node restarted: `tell` gets
    /// `NodeGone`), or the one at the same pool index (the process
    /// reconnected: `tell` gets its `LinkLost`). `tell` is called under
    /// the registry's lock, so the router hears it before any frame of a
    /// connection of the new process (see [`forward_if_current`]) and after
    /// every frame of the replaced ones.
    ///
    /// [`forward_if_current`]: Self::forward_if_current
    pub(crate) fn register_telling(
        &self,
        name: &str,
        instance: u64,
        (index, pool_size): (u16, u16),
        client_addr: &str,
        tx: LinkSender,
        mut tell: impl FnMut(Input),
    ) -> Registered {
        let mut inner = self.lock();
        let next = inner.ids.len() as NodeId + 1;
        let id = *inner.ids.entry(name.to_owned()).or_insert(next);
        inner.next_conn += 1;
        let conn_id = inner.next_conn;
        let entry = inner.nodes.entry(id).or_insert_with(|| NodeEntry {
            name: name.to_owned(),
            instance,
            pool_size,
            client_addr: client_addr.to_owned(),
            conns: Vec::new(),
            epoch: 0,
        });
        entry.client_addr = client_addr.to_owned();
        let restarted = entry.instance != instance;
        let mut lost = None;
        if restarted {
            // Connections of the dead process would linger until their idle
            // timeout; its routes go with `NodeGone`, not link by link.
            for old in entry.conns.drain(..) {
                old.replaced.cancel();
            }
            entry.instance = instance;
        } else if let Some(at) = entry.conns.iter().position(|c| c.index == index) {
            let old = entry.conns.swap_remove(at);
            old.replaced.cancel();
            lost = Some(old.lost(id));
        }
        let pool_size = pool_size.max(1);
        entry.pool_size = pool_size;
        let replaced = CancellationToken::new();
        entry.conns.push(Conn {
            id: conn_id,
            index,
            pool_size,
            tx,
            replaced: replaced.clone(),
        });
        entry.epoch += 1;
        if restarted {
            tell(Input::NodeGone { node: id });
        }
        if let Some(lost) = &lost {
            tell(lost.clone());
        }
        self.show(&inner);
        Registered {
            node: id,
            conn_id,
            restarted,
            lost,
            replaced,
        }
    }

    /// Removes a connection that ended. If it was still registered (not
    /// replaced), `lost` gets its `LinkLost` under the registry's lock, so
    /// the router hears it before anything from a connection that registers
    /// after; returns the node's epoch if it has no connection left.
    fn unregister(&self, node: NodeId, conn_id: u64, lost: impl FnOnce(Input)) -> Option<u64> {
        let mut inner = self.lock();
        let entry = inner.nodes.get_mut(&node)?;
        let at = entry.conns.iter().position(|c| c.id == conn_id)?;
        let conn = entry.conns.swap_remove(at);
        lost(conn.lost(node));
        let gone = entry.conns.is_empty().then_some(entry.epoch);
        self.show(&inner);
        gone
    }

    /// If the node is still without connections at `epoch`, `gone` is
    /// called (under the lock: no connection registers meanwhile, so its
    /// frames cannot come before the `NodeGone` it sends); whether it was.
    fn if_still_gone(&self, node: NodeId, epoch: u64, gone: impl FnOnce()) -> bool {
        let inner = self.lock();
        let still = inner
            .nodes
            .get(&node)
            .is_some_and(|e| e.conns.is_empty() && e.epoch == epoch);
        if still {
            gone();
        }
        still
    }

    /// Hands a frame read from connection `conn_id` of `node` on (`send`,
    /// under the lock) only while that connection is registered: a frame a
    /// replaced connection read late (its process restarted, or it
    /// reconnected) never reaches the router after the `NodeGone` or
    /// `LinkLost` its replacement sent. Whether it was handed on.
    fn forward_if_current(&self, node: NodeId, conn_id: u64, send: impl FnOnce()) -> bool {
        let inner = self.lock();
        let current = inner
            .nodes
            .get(&node)
            .is_some_and(|e| e.conns.iter().any(|c| c.id == conn_id));
        if current {
            send();
        }
        current
    }

    /// Queues a frame for `node` on the connection that carries session `sid`;
    /// gives the frame back if it cannot.
    pub fn send(
        &self,
        node: NodeId,
        sid: SessionId,
        frame: Frame,
    ) -> Result<(), (SendError, Box<Frame>)> {
        let inner = self.lock();
        let Some(entry) = inner.nodes.get(&node).filter(|e| !e.conns.is_empty()) else {
            return Err((SendError::NoLink, Box::new(frame)));
        };
        // The connection the CM uses for this session, else any live one.
        let index = (sid % u64::from(entry.pool_size)) as u16;
        let conn = entry
            .conns
            .iter()
            .find(|c| c.index == index)
            .unwrap_or(&entry.conns[(sid % entry.conns.len() as u64) as usize]);
        conn.tx.try_send(frame)
    }

    /// The size of `node`'s connection pool (a session `sid` is carried
    /// by connection `sid % size`); none if it has no live connection.
    pub fn pool_size(&self, node: NodeId) -> Option<u16> {
        let inner = self.lock();
        inner
            .nodes
            .get(&node)
            .filter(|e| !e.conns.is_empty())
            .map(|e| e.pool_size.max(1))
    }

    /// Publishes this core's new `SlotOwners`: into `latest` (what a
    /// connection gets when it registers, [`Links::push_latest`]) and onto
    /// every connection of every node, in line behind what each holds,
    /// whatever its queue holds ([`LinkSender::push`]). Both under the
    /// registry's lock, so no connection gets an older one after a newer.
    pub fn publish(&self, latest: &tokio::sync::watch::Sender<Option<Frame>>, frame: Frame) {
        let inner = self.lock();
        latest.send_replace(Some(frame.clone()));
        for entry in inner.nodes.values() {
            for conn in &entry.conns {
                conn.tx.push(frame.clone());
            }
        }
    }

    /// Pushes the latest `SlotOwners` (if any) onto a connection just
    /// registered (under the registry's lock: see [`Links::publish`]).
    pub fn push_latest(
        &self,
        tx: &LinkSender,
        latest: &tokio::sync::watch::Receiver<Option<Frame>>,
    ) {
        let _inner = self.lock();
        if let Some(frame) = latest.borrow().clone() {
            tx.push(frame);
        }
    }

    /// Nodes known to this core.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let inner = self.lock();
        let mut v: Vec<NodeInfo> = inner
            .nodes
            .iter()
            .map(|(id, e)| NodeInfo {
                id: *id,
                name: e.name.clone(),
                client_addr: e.client_addr.clone(),
                connections: e.conns.len(),
            })
            .collect();
        v.sort_by_key(|n| n.id);
        v
    }

    /// Number of nodes with at least one connection, and connections in all.
    pub fn counts(&self) -> (usize, usize) {
        self.lock().counts()
    }
}

impl LinksInner {
    fn counts(&self) -> (usize, usize) {
        let live = self.nodes.values().filter(|e| !e.conns.is_empty()).count();
        let conns = self.nodes.values().map(|e| e.conns.len()).sum();
        (live, conns)
    }
}

/// Everything a connection handler needs.
#[derive(Clone)]
pub struct LinkContext {
    /// Node registry.
    pub links: Arc<Links>,
    /// Router input.
    pub router: mpsc::Sender<Event>,
    /// SASL.
    pub auth: Arc<AuthService>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Domain served.
    pub domain: String,
    /// This core's instance id.
    pub instance: u64,
    /// The `ver` of the server's entity capabilities (XEP-0115) the CMs
    /// show in stream features.
    pub caps: String,
    /// Grace before a connection-less node's routes are dropped.
    pub grace: Duration,
    /// Shutdown signal.
    pub shutdown: CancellationToken,
    /// In a cluster: this core's latest `SlotOwners`, said after every
    /// `Welcome`.
    pub slot_owners: Option<tokio::sync::watch::Receiver<Option<Frame>>>,
}

/// Serves one incoming CM connection until it closes.
pub async fn serve(ctx: LinkContext, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(%remote, error = %e, "refused CM connection: TLS handshake failed");
            ctx.metrics
                .link_errors
                .get_or_create(&label("reason", "handshake"))
                .inc();
            return;
        }
    };
    let Some(name) = peer_node_name(&conn).or_else(|| {
        // a peer core of a cluster: it names itself in its Hello
        (ctx.slot_owners.is_some() && is_peer_core(&conn)).then(String::new)
    }) else {
        tracing::warn!(%remote, "refused CM connection: certificate names no CM node");
        ctx.metrics
            .link_errors
            .get_or_create(&label("reason", "identity"))
            .inc();
        conn.close(1u32.into(), b"certificate names no node");
        return;
    };
    if let Err(e) = run_link(&ctx, &conn, &name).await {
        tracing::info!(%remote, node = %name, error = %e, "CM connection ended");
    }
}

fn is_peer_core(conn: &Connection) -> bool {
    conn.peer_identity()
        .and_then(|identity| {
            identity
                .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|chain| chain.first().map(certs::is_core_cert))
        .unwrap_or(false)
}

fn peer_node_name(conn: &Connection) -> Option<String> {
    let identity = conn.peer_identity()?;
    let chain = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    certs::node_name_from_cert(chain.first()?)
}

#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("{0}")]
    Frame(#[from] cm_protocol::ReadFrameError),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("shutting down")]
    Shutdown,
    #[error("replaced by a newer connection of the node")]
    Replaced,
}

async fn run_link(ctx: &LinkContext, conn: &Connection, name: &str) -> Result<(), LinkError> {
    let (send, mut recv) = tokio::time::timeout(Duration::from_secs(10), conn.accept_bi())
        .await
        .map_err(|_| LinkError::Protocol("no stream opened".into()))??;
    let mut decoder = FrameDecoder::new();
    let hello = read_frame(&mut recv, &mut decoder).await?;
    let Some(Frame::Hello {
        node,
        client_addr,
        conn_index,
        pool_size,
        instance,
    }) = hello
    else {
        return Err(LinkError::Protocol("expected hello".into()));
    };
    // A peer core (its certificate is the core's) names itself: a member
    // id `name#incarnation`, never a CM's name.
    let peer = name.is_empty() && node.contains('#');
    let name = if peer { node.as_str() } else { name };
    if node != name {
        ctx.metrics
            .link_errors
            .get_or_create(&label("reason", "identity"))
            .inc();
        conn.close(2u32.into(), b"node name does not match certificate");
        return Err(LinkError::Protocol(format!(
            "hello names {node}, certificate {name}"
        )));
    }
    let (tx, rx) = LinkSender::channel(LINK_QUEUE_BYTES);
    // Welcome is the first frame, before anything the router sends once
    // the connection is registered.
    let _ = tx.try_send(Frame::Welcome {
        domain: ctx.domain.clone(),
        instance: ctx.instance,
        mechanisms: ctx.auth.mechanisms(),
        registration: ctx.auth.registration(),
        caps: ctx.caps.clone(),
        sasl2: ctx.auth.sasl2(),
        fast: ctx.auth.fast(),
    });
    // What registering tells the router goes under the registry's lock,
    // so room for it is reserved first (at most a NodeGone and a LinkLost).
    let mut permits = ctx
        .router
        .reserve_many(2)
        .await
        .map_err(|_| LinkError::Shutdown)?;
    let Registered {
        node: node_id,
        conn_id,
        restarted,
        lost,
        replaced,
    } = ctx.links.register_telling(
        name,
        instance,
        (conn_index, pool_size),
        &client_addr,
        tx.clone(),
        |input| {
            if let Some(permit) = permits.next() {
                permit.send(Event::Router(input));
            }
        },
    );
    drop(permits);
    if lost.is_some() {
        tracing::info!(
            node = name,
            conn_index,
            "CM reconnected before its old connection ended: that one is lost"
        );
    }
    if restarted {
        tracing::info!(
            node = name,
            "CM restarted: dropped the routes of its previous process"
        );
    }
    tracing::info!(node = name, node_id, conn_index, %client_addr, remote = %conn.remote_address(), "CM connected");
    // (after registering: a change from now on is pushed to this
    // connection too, behind this one)
    if let Some(latest) = &ctx.slot_owners {
        ctx.links.push_latest(&tx, latest);
    }
    let writer = tokio::spawn(write_loop(send, rx));
    let result = tokio::select! {
        r = read_loop(ctx, (node_id, conn_id), peer, &tx, &mut recv, &mut decoder) => r,
        _ = replaced.cancelled() => Err(LinkError::Replaced),
    };
    writer.abort();
    if matches!(result, Err(LinkError::Replaced)) {
        conn.close(3u32.into(), b"replaced by a newer connection of this node");
    }
    // Frames in flight on this connection are gone, both ways (unless a
    // newer connection replaced it, which told the router already).
    let permit = ctx.router.reserve().await.ok();
    let gone = ctx.links.unregister(node_id, conn_id, |lost| {
        if let Some(permit) = permit {
            permit.send(Event::Router(lost));
        }
    });
    if let Some(epoch) = gone {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ctx.grace).await;
            let Ok(permit) = ctx.router.reserve().await else {
                return;
            };
            let gone = ctx.links.if_still_gone(node_id, epoch, || {
                permit.send(Event::Router(Input::NodeGone { node: node_id }));
            });
            if gone {
                tracing::info!(
                    node_id,
                    "CM gone after its grace period; dropped its routes"
                );
            }
        });
    }
    result
}

async fn read_loop(
    ctx: &LinkContext,
    (node, conn_id): (NodeId, u64),
    peer: bool,
    reply: &LinkSender,
    recv: &mut RecvStream,
    decoder: &mut FrameDecoder,
) -> Result<(), LinkError> {
    loop {
        let frame = tokio::select! {
            _ = ctx.shutdown.cancelled() => return Err(LinkError::Shutdown),
            f = read_frame(recv, decoder) => f?,
        };
        let Some(frame) = frame else { return Ok(()) };
        match frame {
            Frame::AuthStart {
                sid,
                mechanism,
                data,
                client_ip,
                fast,
            } => {
                let ctx = ctx.clone();
                let reply = reply.clone();
                tokio::spawn(async move {
                    let outcome = ctx
                        .auth
                        .start((node, sid), &mechanism, &data, client_ip, &fast)
                        .await;
                    answer_auth(&ctx, sid, outcome, &reply).await;
                });
            }
            Frame::Register {
                sid,
                username,
                password,
            } => {
                let (ctx, reply) = (ctx.clone(), reply.clone());
                tokio::spawn(async move {
                    let error = ctx.auth.register(&username, &password).await.err();
                    let outcome = error.unwrap_or("created");
                    ctx.metrics
                        .registrations
                        .get_or_create(&label("result", outcome))
                        .inc();
                    let error = error.map(str::to_owned);
                    let _ = reply.send(Frame::RegisterResult { sid, error }).await;
                });
            }
            Frame::AuthResponse { sid, data } => {
                // Never wait on our own link's queue (nor on storage, for a
                // FAST token) while reading it.
                let (ctx, reply) = (ctx.clone(), reply.clone());
                tokio::spawn(async move {
                    let outcome = ctx.auth.respond((node, sid), &data).await;
                    answer_auth(&ctx, sid, outcome, &reply).await
                });
            }
            Frame::SessionEnd { sid, jid, clean } => {
                ctx.auth.abort((node, sid));
                forward(ctx, (node, conn_id), Frame::SessionEnd { sid, jid, clean }).await?;
            }
            f @ (Frame::Bind { .. }
            | Frame::Announce { .. }
            | Frame::Stanza { .. }
            | Frame::Bounce { .. }
            | Frame::SmEnable { .. }
            | Frame::AckRequest { .. }
            | Frame::Acked { .. }
            | Frame::Skipped { .. }
            | Frame::Resume { .. }) => forward(ctx, (node, conn_id), f).await?,
            // only a peer core forwards stanzas and says what it owns
            f @ (Frame::Forward { .. } | Frame::SlotOwners { .. }) if peer => {
                forward(ctx, (node, conn_id), f).await?
            }
            other => {
                return Err(LinkError::Protocol(format!(
                    "unexpected {} frame",
                    other.name()
                )));
            }
        }
    }
}

/// Hands a frame of connection `conn_id` to the router, unless the
/// connection was replaced meanwhile (see [`Links::forward_if_current`]).
async fn forward(
    ctx: &LinkContext,
    (node, conn_id): (NodeId, u64),
    frame: Frame,
) -> Result<(), LinkError> {
    let permit = ctx
        .router
        .reserve()
        .await
        .map_err(|_| LinkError::Shutdown)?;
    let event = Event::Router(Input::Frame { node, frame });
    match ctx
        .links
        .forward_if_current(node, conn_id, || permit.send(event))
    {
        true => Ok(()),
        false => Err(LinkError::Replaced),
    }
}

async fn answer_auth(ctx: &LinkContext, sid: SessionId, outcome: Outcome, reply: &LinkSender) {
    let frame = match outcome {
        Outcome::Challenge(data) => Frame::AuthChallenge {
            sid,
            data: data.into(),
        },
        Outcome::Success { data, user, token } => {
            ctx.metrics
                .auth
                .get_or_create(&label("result", "success"))
                .inc();
            Frame::AuthSuccess {
                sid,
                data: data.into(),
                user,
                token,
            }
        }
        Outcome::Failure(condition) => {
            ctx.metrics
                .auth
                .get_or_create(&label("result", condition))
                .inc();
            Frame::AuthFailure {
                sid,
                condition: condition.into(),
            }
        }
    };
    let _ = reply.send(frame).await;
}

/// Writes the connection's queued frames, many per write.
async fn write_loop(mut send: SendStream, mut rx: LinkReceiver) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while let Some(frame) = rx.recv().await {
        encode(&frame, &mut buf);
        while buf.len() < 256 * 1024 {
            match rx.try_recv() {
                Some(f) => encode(&f, &mut buf),
                None => break,
            }
        }
        if send.write_all(&buf).await.is_err() {
            return;
        }
        buf.clear();
    }
}

/// Encodes a frame for a CM; one above the frame limit (which the CM would
/// answer by closing the link for every session on it) is dropped.
fn encode(frame: &Frame, out: &mut BytesMut) {
    if let Err(e) = frame.try_encode(out) {
        tracing::error!(sid = frame.sid(), error = %e, "frame for a CM dropped");
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn deliver(n: usize) -> Frame {
        Frame::Deliver {
            sid: 1,
            payload: Bytes::from(vec![b'x'; n]),
        }
    }

    fn connect(links: &Links, instance: u64, index: u16) -> Registered {
        let (tx, _rx) = LinkSender::channel(1000);
        links.register("cm-1", instance, (index, 2), "127.0.0.1:5000", tx)
    }

    /// `unregister`, returning what the router hears from it.
    fn end(links: &Links, c: &Registered) -> (Option<u64>, Vec<Input>) {
        let mut heard = Vec::new();
        let gone = links.unregister(c.node, c.conn_id, |lost| heard.push(lost));
        (gone, heard)
    }

    #[test]
    fn a_restarted_nodes_new_process_closes_the_old_ones_connections_and_their_end_loses_nothing() {
        let links = Links::default();
        let old = [connect(&links, 1, 0), connect(&links, 1, 1)];
        let new = connect(&links, 2, 0);
        assert!(new.restarted);
        assert!(
            new.lost.is_none(),
            "the old process's routes go with NodeGone"
        );
        assert!(old.iter().all(|c| c.replaced.is_cancelled()));
        assert!(!new.replaced.is_cancelled());
        assert_eq!(links.counts(), (1, 1));
        // The old process's connections end (at the latest at their idle
        // timeout): the new process's sessions on their indexes stay attached.
        for c in &old {
            assert!(matches!(end(&links, c), (None, heard) if heard.is_empty()));
        }
        assert_eq!(links.counts(), (1, 1));
        let (gone, heard) = end(&links, &new);
        assert!(gone.is_some(), "the node's last connection ended");
        assert!(matches!(
            heard[..],
            [Input::LinkLost {
                node: 1,
                index: 0,
                pool_size: 2
            }]
        ));
    }

    #[test]
    fn a_reconnection_at_the_same_index_loses_the_old_connection_at_once_and_only_once() {
        let links = Links::default();
        let old = connect(&links, 1, 0);
        let other = connect(&links, 1, 1);
        let new = connect(&links, 1, 0);
        assert!(!new.restarted);
        assert!(matches!(
            new.lost,
            Some(Input::LinkLost {
                node: 1,
                index: 0,
                pool_size: 2
            })
        ));
        assert!(old.replaced.is_cancelled());
        assert!(!other.replaced.is_cancelled());
        assert_eq!(links.counts(), (1, 2));
        assert!(matches!(end(&links, &old), (None, heard) if heard.is_empty()));
        assert_eq!(links.counts(), (1, 2));
        let (gone, heard) = end(&links, &other);
        assert_eq!(gone, None, "index 0 is still connected");
        assert!(matches!(heard[..], [Input::LinkLost { index: 1, .. }]));
    }

    /// `register_telling`, returning what the router hears from it.
    fn connect_telling(links: &Links, instance: u64, index: u16) -> (Registered, Vec<Input>) {
        let (tx, _rx) = LinkSender::channel(1000);
        let mut heard = Vec::new();
        let c = links.register_telling("cm-1", instance, (index, 2), "x", tx, |i| heard.push(i));
        (c, heard)
    }

    #[test]
    fn registering_tells_the_router_node_gone_or_link_lost_and_replaced_connections_forward_nothing_after()
     {
        let links = Links::default();
        let (old, heard) = connect_telling(&links, 1, 0);
        assert!(heard.is_empty(), "a first connection replaces nothing");
        assert!(links.forward_if_current(old.node, old.conn_id, || {}));
        // the same process reconnects at index 0: the old one's loss is told
        let (again, heard) = connect_telling(&links, 1, 0);
        assert!(matches!(
            heard[..],
            [Input::LinkLost {
                node: 1,
                index: 0,
                ..
            }]
        ));
        let mut late = false;
        assert!(!links.forward_if_current(old.node, old.conn_id, || late = true));
        assert!(!late, "a replaced connection's late frame is not handed on");
        // a new process: NodeGone is told, the old process forwards nothing
        let (new, heard) = connect_telling(&links, 2, 1);
        assert!(matches!(heard[..], [Input::NodeGone { node: 1 }]));
        assert!(!links.forward_if_current(again.node, again.conn_id, || late = true));
        assert!(!late);
        assert!(links.forward_if_current(new.node, new.conn_id, || {}));
    }

    #[test]
    fn node_gone_after_the_grace_is_told_only_while_the_node_has_no_connection_at_its_epoch() {
        let links = Links::default();
        let c = connect(&links, 1, 0);
        let (gone, _) = end(&links, &c);
        let epoch = gone.expect("its last connection");
        let back = connect(&links, 1, 0);
        let mut told = false;
        assert!(!links.if_still_gone(c.node, epoch, || told = true));
        assert!(!told, "it came back: its routes stay");
        let (gone, _) = end(&links, &back);
        assert!(links.if_still_gone(back.node, gone.expect("last"), || told = true));
        assert!(told);
    }

    #[test]
    fn a_link_queue_is_full_at_its_byte_budget_and_has_room_again_once_the_writer_takes_frames() {
        let (tx, mut rx) = LinkSender::channel(1024 * 1024);
        let frame = deliver(64 * 1024);
        let mut queued = 0;
        let refused = loop {
            match tx.try_send(frame.clone()) {
                Ok(()) => queued += 1,
                Err(e) => break e,
            }
            assert!(queued <= 1024, "{queued} frames of 64 KiB queued");
        };
        assert_eq!(refused, (SendError::Full, Box::new(frame.clone())));
        assert_eq!(queued, 1024 * 1024 / frame.queued_bytes());
        assert_eq!(rx.try_recv(), Some(frame.clone()));
        assert_eq!(tx.try_send(frame.clone()), Ok(()));
        // a frame above the whole budget still goes into an empty queue
        let (tx, _rx) = LinkSender::channel(1000);
        assert_eq!(tx.try_send(deliver(5000)), Ok(()));
        assert!(matches!(tx.try_send(deliver(1)), Err((SendError::Full, _))));
        // a link that is gone says so
        let (tx, rx) = LinkSender::channel(1000);
        drop(rx);
        assert!(matches!(
            tx.try_send(deliver(1)),
            Err((SendError::NoLink, _))
        ));
    }
}
