//! The router's tokio driver: feeds events to the sans-IO [`Router`] with
//! the time they arrived, sleeps until the router's next deadline
//! ([`Router::poll_timeout`], asked again after every input), and carries
//! out the router's actions (frames to CM links, offline storage). It reads
//! one clock, tokio's (see [`now`]), so a test that pauses tokio's time
//! drives the router's deadlines too.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use cm_protocol::Frame;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use xmpp_stream::StanzaCondition;
use xmpp_stream::stanza::{append_child, delay_element, inspect};

use crate::links::{Links, NodeInfo, SendError};
use crate::metrics::{Metrics, label};
use crate::router::{Action, Input, Router};
use crate::routing::{NodeId, RouteRow, SessionAddr};
use crate::storage::{Storage, StorageError, Stored};

/// Events for the router task.
pub enum Event {
    /// An input for the router.
    Router(Input),
    /// The admin endpoint wants the routing table.
    Snapshot(oneshot::Sender<RoutesSnapshot>),
    /// A user's offline flush finished.
    FlushDone(String),
}

/// Extra attempts at an archive write whose commit failed.
const ARCHIVE_RETRIES: u64 = 3;

/// Storage jobs (offline stores and flushes) in flight at once; beyond that
/// the router waits, which slows the CM links instead of growing memory.
pub const STORAGE_SLOTS: usize = 1024;

/// The routing table as the admin endpoint shows it.
#[derive(Clone, Debug, Serialize)]
pub struct RoutesSnapshot {
    /// CM nodes with their session counts.
    pub nodes: Vec<NodeRoutes>,
    /// Every route.
    pub routes: Vec<RouteRow>,
}

/// One node in a [`RoutesSnapshot`].
#[derive(Clone, Debug, Serialize)]
pub struct NodeRoutes {
    /// Node.
    #[serde(flatten)]
    pub info: NodeInfo,
    /// Sessions routed to it.
    pub sessions: usize,
}

/// Router input queue length: readers wait beyond it.
pub const ROUTER_QUEUE: usize = 64 * 1024;

/// The router's driver (see the module docs).
pub struct Driver {
    router: Router,
    links: Arc<Links>,
    storage: Storage,
    metrics: Arc<Metrics>,
    /// Own sender, for storage completions.
    events: mpsc::Sender<Event>,
    /// Domain (for delay stamps).
    domain: String,
    /// Bounds storage jobs in flight (see [`STORAGE_SLOTS`]).
    storage_slots: Arc<tokio::sync::Semaphore>,
    /// Users whose offline messages are being flushed (one flush at a time).
    flushing: HashSet<String>,
    /// The flush to run when a user's current one is done.
    flush_next: HashMap<String, SessionAddr>,
    /// SM sessions (tracked, detached) as the metrics last showed them.
    sm_shown: Option<(usize, usize)>,
}

impl Driver {
    /// A driver for `router`; `events` is the sender of the queue
    /// [`Driver::run`] reads (storage completions come back through it).
    pub fn new(
        router: Router,
        links: Arc<Links>,
        storage: Storage,
        metrics: Arc<Metrics>,
        events: mpsc::Sender<Event>,
        domain: String,
    ) -> Self {
        Self {
            router,
            links,
            storage,
            metrics,
            events,
            domain,
            storage_slots: Arc::new(tokio::sync::Semaphore::new(STORAGE_SLOTS)),
            flushing: HashSet::new(),
            flush_next: HashMap::new(),
            sm_shown: None,
        }
    }

    /// Runs until shutdown.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Event>, shutdown: CancellationToken) {
        self.show_metrics();
        loop {
            let deadline = self.router.poll_timeout();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = sleep_until(deadline) => self.router.handle_timeout(now()),
                e = rx.recv() => match e {
                    Some(Event::Router(input)) => self.router.handle(input, now()),
                    Some(Event::Snapshot(tx)) => {
                        let _ = tx.send(self.snapshot());
                        continue;
                    }
                    Some(Event::FlushDone(user)) => {
                        self.flushing.remove(&user);
                        match self.flush_next.remove(&user) {
                            Some(to) => self.execute(Action::FlushOffline { user, to }).await,
                            None => continue,
                        }
                    }
                    None => return,
                },
            }
            while let Some(action) = self.router.poll_action() {
                self.execute(action).await;
            }
            self.show_metrics();
        }
    }

    /// Brings the router's gauges up to date.
    fn show_metrics(&mut self) {
        self.metrics.sessions.set(self.router.table().len() as i64);
        let stats = self.router.stats();
        self.metrics.sm_resumed.set(stats.resumed as i64);
        self.metrics
            .sm_resume_failed
            .set(stats.resume_failed as i64);
        self.metrics.sm_expired.set(stats.sm_expired as i64);
        let counts = self.router.sm_counts();
        if self.sm_shown != Some(counts) {
            self.sm_shown = Some(counts);
            let (tracked, detached) = counts;
            let g = &self.metrics.sm_sessions;
            g.get_or_create(&label("state", "attached"))
                .set((tracked - detached) as i64);
            g.get_or_create(&label("state", "detached"))
                .set(detached as i64);
        }
    }

    fn snapshot(&self) -> RoutesSnapshot {
        let counts = self.router.table().counts();
        let nodes = self
            .links
            .nodes()
            .into_iter()
            .map(|info| NodeRoutes {
                sessions: counts.get(&info.id).copied().unwrap_or(0),
                info,
            })
            .collect();
        RoutesSnapshot {
            nodes,
            routes: self.router.table().rows(),
        }
    }

    async fn execute(&mut self, action: Action) {
        match action {
            Action::Send { node, frame } => self.send(node, frame),
            Action::StoreOffline {
                user,
                payload,
                bounce,
                origin,
            } => {
                self.metrics.offline_stored.inc();
                let storage = self.storage.clone();
                let events = self.events.clone();
                let Ok(slot) = self.storage_slots.clone().acquire_owned().await else {
                    return;
                };
                // Queued here, in routing order: stored messages keep their order.
                let stamp = now_stamp();
                let stored = storage.submit(move |db| db.store_offline(&user, &stamp, &payload));
                tokio::spawn(async move {
                    let result = stored.await;
                    drop(slot);
                    if let Some(origin) = origin {
                        let _ = events.send(Event::Router(Input::Stored { origin })).await;
                    }
                    let cond = match result {
                        Ok(Stored::Stored) => return,
                        Ok(Stored::NoSuchUser) => StanzaCondition::ServiceUnavailable,
                        Err(StorageError::QuotaExceeded) => StanzaCondition::ResourceConstraint,
                        Err(e) => {
                            tracing::error!(error = %e, "storing an offline message failed");
                            StanzaCondition::InternalServerError
                        }
                    };
                    if !bounce.sender.is_empty() {
                        let input = Input::OfflineFailed {
                            bounce,
                            condition: cond,
                        };
                        let _ = events.send(Event::Router(input)).await;
                    }
                });
            }
            Action::FlushOffline { user, to } => {
                if !self.flushing.insert(user.clone()) {
                    // one flush per user at a time: this one follows
                    self.flush_next.insert(user, to);
                    return;
                }
                let Ok(slot) = self.storage_slots.clone().acquire_owned().await else {
                    return;
                };
                self.flush_offline(user, to, slot);
            }
            Action::LoadRoster { user } => {
                let load = |storage: Storage, user: &str| {
                    let local = crate::address::local(user).unwrap_or_default().to_owned();
                    storage.submit(move |db| {
                        if db.credentials(&local)?.is_none() {
                            return Ok(None);
                        }
                        db.roster(&local).map(Some)
                    })
                };
                let Ok(slot) = self.storage_slots.clone().acquire_owned().await else {
                    return;
                };
                let loaded = load(self.storage.clone(), &user);
                let (events, storage) = (self.events.clone(), self.storage.clone());
                tokio::spawn(async move {
                    let mut result = loaded.await;
                    for attempt in 1..=ARCHIVE_RETRIES {
                        let Err(e) = &result else { break };
                        tracing::warn!(error = %e, user, attempt, "loading a roster failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
                        result = load(storage.clone(), &user).await;
                    }
                    drop(slot);
                    let input = match result {
                        Ok(roster) => Input::RosterLoaded { user, roster },
                        Err(e) => {
                            tracing::error!(error = %e, user, "loading a roster failed for good");
                            Input::RosterFailed { user }
                        }
                    };
                    let _ = events.send(Event::Router(input)).await;
                });
            }
            Action::SaveRosterItem {
                user,
                item,
                version,
            } => {
                self.write(move |db| db.put_roster_item(&user, &item, version))
                    .await
            }
            Action::RemoveRosterItem { user, jid, version } => {
                self.write(move |db| db.remove_roster_item(&user, &jid, version))
                    .await
            }
            Action::Archive {
                mut entries,
                origin,
            } => {
                let stamp = crate::queries::now_micros();
                for e in &mut entries {
                    e.stamp = stamp;
                }
                self.metrics.archived.inc_by(entries.len() as u64);
                let Ok(slot) = self.storage_slots.clone().acquire_owned().await else {
                    return;
                };
                let write = |storage: Storage, entries: Vec<crate::storage::ArchiveEntry>| {
                    storage.submit(move |db| {
                        for e in &entries {
                            db.archive(e)?;
                        }
                        Ok(())
                    })
                };
                let archived = write(self.storage.clone(), entries.clone());
                let (events, storage) = (self.events.clone(), self.storage.clone());
                tokio::spawn(async move {
                    let mut result = archived.await;
                    // A commit can fail for another job of its batch: try again alone.
                    for attempt in 1..=ARCHIVE_RETRIES {
                        let Err(e) = &result else { break };
                        tracing::warn!(error = %e, attempt, "archiving a message failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
                        result = write(storage.clone(), entries.clone()).await;
                    }
                    drop(slot);
                    match (result, origin) {
                        (Ok(()), Some(origin)) => {
                            let _ = events.send(Event::Router(Input::Stored { origin })).await;
                        }
                        (Ok(()), None) => {}
                        // Not durable, so never acknowledged: the sender's
                        // acknowledgements stop here, it reconnects and
                        // resends from the last durable one.
                        (Err(e), _) => {
                            tracing::error!(error = %e, "archiving a message failed for good")
                        }
                    }
                });
            }
            Action::Query { to, query } => {
                let Ok(slot) = self.storage_slots.clone().acquire_owned().await else {
                    return;
                };
                let domain = self.domain.clone();
                let answered = self
                    .storage
                    .submit(move |db| Ok(crate::queries::answer(db, &query, &domain)));
                let events = self.events.clone();
                tokio::spawn(async move {
                    let payloads = answered.await.unwrap_or_else(|e| {
                        tracing::error!(error = %e, "answering a query failed");
                        Vec::new()
                    });
                    drop(slot);
                    let _ = events
                        .send(Event::Router(Input::Replies { to, payloads }))
                        .await;
                });
            }
            Action::RemoveOffline { user, upto } => {
                let metrics = self.metrics.clone();
                let Ok(slot) = self.storage_slots.clone().acquire_owned().await else {
                    return;
                };
                // Queued now, before any later load of the same user's messages.
                let removed = self
                    .storage
                    .submit(move |db| db.remove_offline(&user, upto));
                tokio::spawn(async move {
                    match removed.await {
                        Ok(()) => metrics.offline_delivered.inc(),
                        Err(e) => {
                            tracing::error!(error = %e, "removing delivered offline messages failed");
                            0
                        }
                    };
                    drop(slot);
                });
            }
        }
    }

    /// Queues a write whose outcome nobody waits for (errors are logged).
    async fn write(
        &self,
        f: impl FnOnce(&mut dyn crate::storage::Store) -> Result<(), StorageError> + Send + 'static,
    ) {
        let Ok(slot) = self.storage_slots.clone().acquire_owned().await else {
            return;
        };
        let written = self.storage.submit(f);
        tokio::spawn(async move {
            if let Err(e) = written.await {
                tracing::error!(error = %e, "a storage write failed");
            }
            drop(slot);
        });
    }

    /// Sends a frame; a delivery that cannot reach its CM link is reported
    /// to the router, whose next actions say what becomes of it.
    fn send(&mut self, node: NodeId, frame: Frame) {
        let sid = frame.sid().unwrap_or(0);
        if matches!(frame, Frame::Deliver { .. }) {
            self.metrics.delivered.inc();
        }
        let Err((reason, frame)) = self.links.send(node, sid, frame) else {
            return;
        };
        match reason {
            SendError::Full => {
                self.metrics.link_overflow.inc();
                tracing::warn!(node, "CM link full");
            }
            SendError::NoLink => {
                self.metrics
                    .link_errors
                    .get_or_create(&label("reason", "no-link"))
                    .inc();
            }
        }
        if let Frame::Deliver { payload, .. } = *frame {
            self.router.delivery_failed((node, sid), payload, now());
        }
    }

    /// Loads a user's stored messages, stamps them with their delay and
    /// hands them to the router, which delivers them (through the session's
    /// ledger when it has one) and then has them removed. One flush per
    /// user at a time.
    fn flush_offline(
        &self,
        user: String,
        to: SessionAddr,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        let storage = self.storage.clone();
        let domain = self.domain.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            let name = user.clone();
            let loaded = storage.call(move |db| db.offline(&name)).await;
            drop(slot);
            match loaded {
                Ok(msgs) => {
                    let messages = msgs
                        .iter()
                        .map(|m| {
                            let payload = match inspect(&m.payload) {
                                Ok(top) => append_child(
                                    &m.payload,
                                    &top,
                                    &delay_element(&domain, &m.stamp),
                                ),
                                Err(_) => Bytes::clone(&m.payload),
                            };
                            (m.id, payload)
                        })
                        .collect();
                    let input = Input::Offline {
                        user: user.clone(),
                        to,
                        messages,
                    };
                    let _ = events.send(Event::Router(input)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "loading offline messages failed");
                    // let the router stop holding new messages back
                    let input = Input::Offline {
                        user: user.clone(),
                        to,
                        messages: Vec::new(),
                    };
                    let _ = events.send(Event::Router(input)).await;
                }
            }
            let _ = events.send(Event::FlushDone(user)).await;
        });
    }
}

/// The time now on tokio's clock (which a test can pause), as the router
/// takes it.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Sleeps until `deadline`, or forever if there is none.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The current time as an XEP-0082 timestamp.
pub fn now_stamp() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_drivers_clock_and_its_sleep_both_follow_tokios_paused_time() {
        let start = now();
        let deadline = start + Duration::from_secs(60);
        // tokio's time is paused: the sleep ends at once, its clock moved
        // on to the deadline, and so has the time the router is given
        sleep_until(Some(deadline)).await;
        let woke = now();
        assert!(woke >= deadline, "{:?}", woke - start);
        assert!(woke - start < Duration::from_secs(61), "{:?}", woke - start);
    }
}
