//! The tokio side of external components: the TCP listener on
//! `component_listen` (plain TCP, as XEP-0114 specifies; loopback or a
//! private network is the intended deployment), one task per connection
//! running a [`ComponentStream`], and the registry of connected components
//! the router's driver sends to ([`ComponentLinks`]).
//!
//! Bounds: [`super::MAX_CONNECTIONS`] connections at once (more are
//! closed as they come); reads shaped by a token bucket (the stream stops
//! being read while its budget is spent); stanzas towards one component
//! queued up to [`super::QUEUE_BYTES`] (one that does not fit is given
//! back to the router, whose sender gets `resource-constraint`); a write
//! that takes longer than [`super::WRITE_TIMEOUT`] ends the connection.
//!
//! One connection per component name: a second one that authenticates
//! while the first is connected is refused with `conflict` (the working
//! connection is kept; two instances of a component started by mistake
//! would otherwise take the name from each other in turn, each
//! reconnection cutting the other off).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use xmpp_stream::{StanzaCondition, StreamCondition};

use super::stream::{ComponentStream, Ended, StreamAction, StreamSettings, to_component};
use crate::driver::Event;
use crate::router::Input;

/// Bytes read from a component at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Most bytes of queued stanzas written to a component in one write.
const WRITE_BATCH: usize = 64 * 1024;

/// The queue towards one connected component: a stanza holds its bytes of
/// the budget until the connection's task takes it.
struct Link {
    /// Which connection holds the name.
    conn: u64,
    tx: mpsc::UnboundedSender<(Bytes, OwnedSemaphorePermit)>,
    budget: Arc<Semaphore>,
}

/// Why a stanza could not be queued for a component.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendRefused {
    /// The component is not connected.
    NotConnected,
    /// Its queue is full (it does not read fast enough).
    Full,
}

impl SendRefused {
    /// The stanza error its sender gets.
    pub fn condition(self) -> StanzaCondition {
        match self {
            SendRefused::NotConnected => StanzaCondition::ServiceUnavailable,
            SendRefused::Full => StanzaCondition::ResourceConstraint,
        }
    }
}

/// The connected components, by name (shared by the driver, which sends,
/// and the connections' tasks).
#[derive(Clone, Default)]
pub struct ComponentLinks {
    links: Arc<Mutex<HashMap<String, Link>>>,
    queue_bytes: Option<usize>,
}

impl ComponentLinks {
    /// A registry whose queues hold `bytes` each (a stanza larger than
    /// that still goes into an empty queue).
    pub fn with_queue_bytes(bytes: usize) -> Self {
        Self {
            links: Default::default(),
            queue_bytes: Some(bytes),
        }
    }

    fn queue_bytes(&self) -> usize {
        self.queue_bytes
            .unwrap_or(super::QUEUE_BYTES)
            .clamp(1, Semaphore::MAX_PERMITS)
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Link>> {
        self.links.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `payload` for component `name` if its bytes fit now.
    pub fn try_send(&self, name: &str, payload: Bytes) -> Result<(), SendRefused> {
        let map = self.map();
        let Some(link) = map.get(name) else {
            return Err(SendRefused::NotConnected);
        };
        let cost = payload.len().clamp(1, self.queue_bytes()) as u32;
        let permit = link
            .budget
            .clone()
            .try_acquire_many_owned(cost)
            .map_err(|_| SendRefused::Full)?;
        link.tx
            .send((payload, permit))
            .map_err(|_| SendRefused::NotConnected)
    }

    /// Whether `name` is connected.
    pub fn is_connected(&self, name: &str) -> bool {
        self.map().contains_key(name)
    }

    /// Takes `name` for connection `conn`, unless another holds it.
    fn claim(&self, name: &str, conn: u64) -> Option<QueueReceiver> {
        let mut map = self.map();
        if map.contains_key(name) {
            return None;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let budget = Arc::new(Semaphore::new(self.queue_bytes()));
        map.insert(name.to_owned(), Link { conn, tx, budget });
        Some(QueueReceiver(rx))
    }

    /// Gives `name` back, if connection `conn` holds it.
    fn release(&self, name: &str, conn: u64) {
        let mut map = self.map();
        if map.get(name).is_some_and(|l| l.conn == conn) {
            map.remove(name);
        }
    }
}

/// A connection's end of its queue.
struct QueueReceiver(mpsc::UnboundedReceiver<(Bytes, OwnedSemaphorePermit)>);

impl QueueReceiver {
    /// The next stanza (its bytes go back to the budget).
    async fn recv(&mut self) -> Option<Bytes> {
        self.0.recv().await.map(|(payload, _bytes)| payload)
    }

    fn try_recv(&mut self) -> Option<Bytes> {
        self.0.try_recv().ok().map(|(payload, _bytes)| payload)
    }
}

/// What the listener and its connections need.
#[derive(Clone)]
pub struct ComponentSetup {
    /// The components' names and secrets, the server's domain, the bounds.
    pub settings: Arc<StreamSettings>,
    /// The registry the driver sends through.
    pub links: ComponentLinks,
    /// The router's input.
    pub router: mpsc::Sender<Event>,
    /// Stops the listener and ends every connection (`system-shutdown`).
    pub shutdown: CancellationToken,
    /// Where the connections' tasks are tracked.
    pub tasks: TaskTracker,
}

/// Accepts components on `listener` until shutdown, at most
/// [`super::MAX_CONNECTIONS`] at once.
pub async fn serve(listener: TcpListener, setup: ComponentSetup) {
    let slots = Arc::new(Semaphore::new(super::MAX_CONNECTIONS));
    let mut next_conn = 0u64;
    loop {
        let (socket, peer) = tokio::select! {
            () = setup.shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a component connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many component connections: one refused");
            drop(socket);
            continue;
        };
        next_conn += 1;
        let conn = next_conn;
        let setup2 = setup.clone();
        setup.tasks.spawn(async move {
            connection(socket, peer, conn, setup2).await;
            drop(slot);
        });
    }
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// One component's connection, from accept to close.
async fn connection(socket: TcpStream, peer: SocketAddr, conn: u64, setup: ComponentSetup) {
    let _ = socket.set_nodelay(true);
    let (mut reader, mut writer) = socket.into_split();
    let mut machine = ComponentStream::new(setup.settings.clone(), rand::random(), now());
    let mut buf = vec![0u8; READ_CHUNK];
    // the name this connection holds, and its queue
    let mut held: Option<(String, QueueReceiver)> = None;
    let mut batch = Vec::new();
    let why = 'conn: loop {
        while let Some(action) = machine.poll_action() {
            match action {
                StreamAction::Write(bytes) => {
                    if !write(&mut writer, &bytes).await {
                        break 'conn "write failed";
                    }
                }
                StreamAction::Authenticated { name } => match setup.links.claim(&name, conn) {
                    Some(queue) => {
                        // (the router hears of it before any of its stanzas)
                        let up = Input::ComponentUp { name: name.clone() };
                        if setup.router.send(Event::Router(up)).await.is_err() {
                            setup.links.release(&name, conn);
                            break 'conn "core stopping";
                        }
                        tracing::info!(component = name, %peer, "component connected");
                        held = Some((name, queue));
                        machine.claimed(true);
                    }
                    None => {
                        tracing::warn!(component = name, %peer, "a component connected twice: the second is refused");
                        machine.claimed(false);
                    }
                },
                StreamAction::Stanza { header, payload } => {
                    let Some((name, _)) = &held else { continue };
                    let input = Input::FromComponent {
                        name: name.clone(),
                        header,
                        payload,
                    };
                    if setup.router.send(Event::Router(input)).await.is_err() {
                        break 'conn "core stopping";
                    }
                }
                StreamAction::Close(Ended::ByComponent) => break 'conn "closed by the component",
                StreamAction::Close(Ended::Error(condition)) => {
                    tracing::debug!(%peer, %condition, "component stream ended");
                    break 'conn condition.name();
                }
            }
        }
        let deadline = machine.poll_timeout().map(tokio::time::Instant::from_std);
        let queue = held.as_mut().map(|(_, q)| q);
        let wake = tokio::select! {
            () = setup.shutdown.cancelled() => Wake::Shutdown,
            read = reader.read(&mut buf), if machine.wants_read() => Wake::Read(read.ok()),
            Some(first) = recv(queue) => Wake::Queued(first),
            () = sleep_until(deadline) => Wake::Timer,
        };
        match wake {
            Wake::Shutdown => machine.close(
                StreamCondition::SystemShutdown,
                "the server is shutting down",
            ),
            Wake::Read(None | Some(0)) => break 'conn "disconnected",
            Wake::Read(Some(n)) => machine.handle_data(&buf[..n], now()),
            Wake::Queued(first) => {
                batch.clear();
                batch.extend_from_slice(&to_component(first));
                while batch.len() < WRITE_BATCH
                    && let Some(next) = held.as_mut().and_then(|(_, q)| q.try_recv())
                {
                    batch.extend_from_slice(&to_component(next));
                }
                if !write(&mut writer, &batch).await {
                    break 'conn "write failed";
                }
            }
            Wake::Timer => machine.handle_timeout(now()),
        }
    };
    let _ = writer.shutdown().await;
    if let Some((name, mut queue)) = held {
        tracing::info!(component = name, %peer, why, "component disconnected");
        // the router hears of it before another connection can take the
        // name (so its "up" never comes before this "down")
        let down = Input::ComponentDown { name: name.clone() };
        let _ = setup.router.send(Event::Router(down)).await;
        setup.links.release(&name, conn);
        // what was queued for it and not written: its senders are told
        while let Some(payload) = queue.try_recv() {
            let refused = Input::ComponentRefused {
                name: name.clone(),
                payload,
                condition: StanzaCondition::ServiceUnavailable,
            };
            if setup.router.send(Event::Router(refused)).await.is_err() {
                break;
            }
        }
    } else {
        tracing::debug!(%peer, why, "component connection closed");
    }
}

/// What woke a connection's task.
enum Wake {
    /// The core is shutting down.
    Shutdown,
    /// Bytes read (none: the connection is gone).
    Read(Option<usize>),
    /// A stanza queued for the component.
    Queued(Bytes),
    /// The stream's deadline.
    Timer,
}

/// The next stanza of `queue`, or never if there is none (not yet
/// authenticated).
async fn recv(queue: Option<&mut QueueReceiver>) -> Option<Bytes> {
    match queue {
        Some(q) => q.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Writes `bytes` within [`super::WRITE_TIMEOUT`]; false if it failed or
/// took longer.
async fn write(writer: &mut tokio::net::tcp::OwnedWriteHalf, bytes: &[u8]) -> bool {
    matches!(
        tokio::time::timeout(super::WRITE_TIMEOUT, writer.write_all(bytes)).await,
        Ok(Ok(()))
    )
}
