//! The router's tokio driver: feeds events to the sans-IO [`Router`] with
//! the time they arrived, sleeps until the router's next deadline
//! ([`Router::poll_timeout`], asked again after every input), and carries
//! out the router's actions (frames to CM links, storage jobs). It reads
//! one clock, tokio's (see [`now`]), so a test that pauses tokio's time
//! drives the router's deadlines too.
//!
//! The router's task never waits for storage: routing, presence and pings
//! go on while the database is slow or down. Storage jobs are charged
//! against a byte budget and refused at once when it is full; one still
//! queued at its deadline is abandoned and never runs ([`StorageLimits`]).
//! Roster loads alone wait for room instead (in order, up to the same
//! deadline): a burst of logins, or every session re-announced after a
//! restart, would otherwise fail most of its sessions.
//! Every durable write of a message reports exactly one outcome, and only
//! once it is known: [`Input::Stored`] after the commit, or
//! [`Input::StoreFailed`] (full queue or deadline: `resource-constraint`;
//! no such user: `service-unavailable`; quota: `resource-constraint`;
//! anything else after its retries: `internal-server-error`). A query that
//! fails reports [`Input::QueryFailed`]. A roster change reports
//! [`Input::RosterWritten`] or [`Input::RosterWriteFailed`] (same
//! conditions; the router holds its answers until then). Removals of
//! acknowledged offline messages are not waited for: a failure is logged
//! (a removed row that failed to go may be delivered again, with its id).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cm_protocol::{Frame, SessionId};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use xmpp_stream::StanzaCondition;
use xmpp_stream::pacing::TokenBucket;
use xmpp_stream::stanza::{append_child, delay_element, inspect};

use crate::links::{Links, NodeInfo, SendError};
use crate::metrics::{Metrics, label};
use crate::router::{Action, Bounce, Input, Query, RosterWrite, Router};
use crate::routing::{MAX_RESOURCES_PER_ACCOUNT, NodeId, RouteRow, SessionAddr};
use crate::storage::{OfflineQuota, OfflineRow, Storage, StorageError, Store, WriteFence};

/// Events for the router task.
pub enum Event {
    /// An input for the router.
    Router(Input),
    /// The admin endpoint wants the routing table.
    Snapshot(oneshot::Sender<RoutesSnapshot>),
    /// A user's offline flush finished.
    FlushDone(String),
}

/// The sender of a message stored offline: the one its bounce names, or
/// else its `from` (stamped by the CM).
fn offline_sender(bounce: &Bounce, payload: &[u8]) -> Option<String> {
    if !bounce.sender.is_empty() {
        return Some(bounce.sender.clone());
    }
    let top = xmpp_stream::stanza::inspect(payload).ok()?;
    top.attr("from").map(str::to_owned)
}

/// What an offline store job did.
enum OfflineStore {
    /// Stored (or no such user), as the store says.
    Done(OfflineRow),
    /// The recipient blocks the sender (XEP-0191): nothing stored.
    Blocked,
}

/// Checks every fence of a write in its transaction (none outside a
/// cluster).
fn check_fences(db: &mut dyn Store, fences: &[WriteFence]) -> Result<(), StorageError> {
    fences.iter().try_for_each(|f| db.check_fence(f))
}

/// Extra attempts at a storage job that failed or whose transaction failed
/// (a commit can fail for another job of its batch), made by the storage
/// thread in queue order.
const ARCHIVE_RETRIES: u32 = 3;

/// Bytes of storage work queued at once, by default (see [`StorageLimits`]).
pub const STORAGE_QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// How long a storage job may wait in the queue, by default.
pub const STORAGE_DEADLINE: Duration = Duration::from_secs(10);
/// What one queued job is charged on top of the message bytes it carries.
const JOB_COST: usize = 512;
/// How often the router is told the Unix time.
const WALL_CLOCK_EVERY: Duration = Duration::from_secs(60);
/// How soon roster loads waiting for storage room look again.
const LOAD_RETRY: Duration = Duration::from_millis(5);

/// Bounds on the storage work the driver queues. The router's task never
/// waits for storage: a job that does not fit in `queue_bytes` is refused at
/// once, and one still queued (not started) when `deadline` passes is
/// abandoned; either way a message's sender gets a `resource-constraint`
/// error, and the message is neither stored nor acknowledged as stored.
#[derive(Clone, Copy, Debug)]
pub struct StorageLimits {
    /// Most bytes queued (message bytes plus a fixed cost per job).
    pub queue_bytes: usize,
    /// Longest a job waits in the queue before it is abandoned.
    pub deadline: Duration,
}

impl Default for StorageLimits {
    fn default() -> Self {
        Self {
            queue_bytes: STORAGE_QUEUE_BYTES,
            deadline: STORAGE_DEADLINE,
        }
    }
}

/// The routing table as the admin endpoint shows it.
#[derive(Clone, Debug, Serialize)]
pub struct RoutesSnapshot {
    /// CM nodes with their session counts.
    pub nodes: Vec<NodeRoutes>,
    /// Every route.
    pub routes: Vec<RouteRow>,
    /// In a cluster of cores: this core's part and the live cores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterView>,
}

/// A cluster of cores as one core sees it (in [`RoutesSnapshot`]).
#[derive(Clone, Debug, Serialize)]
pub struct ClusterView {
    /// This core's member id.
    pub member: String,
    /// The cluster's slot count.
    pub slot_count: u16,
    /// Slots this core owns now.
    pub slots_owned: usize,
    /// Messages and subscription stanzas forwarded and not answered yet.
    pub forwards_waiting: usize,
    /// The live cores as the last lease round read them: member id,
    /// address, slots owned, draining.
    pub cores: Vec<crate::shards::Member>,
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
/// Storage completions queued for the router: a completion's task waits
/// beyond it (the driver reads them whatever else it does).
const COMPLETIONS_QUEUE: usize = 64 * 1024;

/// The router's driver (see the module docs).
pub struct Driver {
    router: Router,
    links: Arc<Links>,
    storage: Storage,
    metrics: Arc<Metrics>,
    /// Own sender, for storage completions: a channel apart from the CM
    /// links' (read even while the router has intake closed).
    events: mpsc::Sender<Event>,
    /// Where storage completions come back.
    completions: mpsc::Receiver<Event>,
    /// Whether CM frames are taken now ([`Action::Intake`]).
    intake_open: bool,
    /// When the router is next told the Unix time ([`Input::WallClock`]).
    wall_clock: tokio::time::Interval,
    /// Warnings of full CM links: at most one a second (five at once).
    overflow_warnings: TokenBucket,
    /// Frames dropped on full links since the last warning.
    overflow_unlogged: u64,
    /// The version of the last `SlotOwners` this core sent.
    slot_owners_version: u64,
    /// Domain (for delay stamps).
    domain: String,
    /// Bounds on queued storage work.
    limits: StorageLimits,
    /// Bytes of storage work queued now (see [`StorageLimits`]).
    budget: Budget,
    /// Inputs the driver made itself while carrying out actions (storage
    /// work refused at once), handed to the router next.
    refused: VecDeque<Input>,
    /// Offline flushes running and waiting, one running per user.
    flushes: Flushes,
    /// The upload service's slots (XEP-0363), if offered.
    upload: Option<Arc<crate::upload::Slots>>,
    /// Roster loads waiting for room in the storage budget, oldest first.
    /// A load is asked for once per user whose frames wait for it, so this
    /// holds at most one entry per user with a session (or a subscription
    /// stanza) waiting: a burst of logins or a rebuild after a restart waits
    /// here instead of failing its sessions.
    roster_loads: VecDeque<(String, Instant)>,
    /// SM sessions (tracked, detached) as the metrics last showed them.
    sm_shown: Option<(usize, usize)>,
    /// This core's part in a cluster of cores; none: the single core.
    cluster: Option<ClusterLinks>,
    /// The external components connected (XEP-0114).
    components: crate::components::ComponentLinks,
}

/// What the driver of a core in a cluster carries out the router's
/// cluster actions with.
pub struct ClusterLinks {
    /// This core's member id.
    pub member: String,
    /// The cluster's slot count.
    pub slot_count: u16,
    /// Links to the peer cores.
    pub peers: crate::peers::PeerLinks,
    /// The live cores, as the lease driver last read them.
    pub cores: tokio::sync::watch::Receiver<Vec<crate::shards::Member>>,
    /// Where this core's latest `SlotOwners` is kept for new links.
    pub slot_owners: tokio::sync::watch::Sender<Option<Frame>>,
    /// Answers to the lease driver.
    pub lease_commands: mpsc::Sender<crate::shards::LeaseCommand>,
}

impl Driver {
    /// A driver for `router`. [`Driver::run`] reads CM frames and admin
    /// requests from its `rx`; storage completions come back on a channel
    /// of the driver's own.
    pub fn new(
        router: Router,
        links: Arc<Links>,
        storage: Storage,
        metrics: Arc<Metrics>,
        domain: String,
    ) -> Self {
        let (events, completions) = mpsc::channel(COMPLETIONS_QUEUE);
        Self {
            router,
            links,
            storage,
            metrics,
            events,
            completions,
            intake_open: true,
            wall_clock: {
                let mut every = tokio::time::interval(WALL_CLOCK_EVERY);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                every
            },
            overflow_warnings: TokenBucket::new(1, 5, now()),
            overflow_unlogged: 0,
            slot_owners_version: 0,
            domain,
            limits: StorageLimits::default(),
            budget: Budget::new(STORAGE_QUEUE_BYTES),
            refused: VecDeque::new(),
            upload: None,
            flushes: Flushes::default(),
            roster_loads: VecDeque::new(),
            sm_shown: None,
            cluster: None,
            components: Default::default(),
        }
    }

    /// Sends the router's stanzas for external components through `links`.
    pub fn with_components(mut self, links: crate::components::ComponentLinks) -> Self {
        self.components = links;
        self
    }

    /// Carries out the router's cluster actions with `cluster`.
    pub fn with_cluster(mut self, cluster: ClusterLinks) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// Other bounds on queued storage work than the defaults.
    pub fn with_storage_limits(mut self, limits: StorageLimits) -> Self {
        self.limits = limits;
        self.budget = Budget::new(limits.queue_bytes);
        self
    }

    /// Offers the upload service (XEP-0363) whose slots `slots` grants.
    pub fn with_upload(mut self, slots: Arc<crate::upload::Slots>) -> Self {
        self.upload = Some(slots);
        self
    }

    /// Answers an upload slot request with the upload service, off the
    /// driver's task (it reads the user's directory).
    fn upload_slot(&mut self, to: SessionAddr, query: Query) {
        let Some(slots) = self.upload.clone() else {
            return self.refused.push_back(Input::QueryFailed {
                to,
                condition: StanzaCondition::ServiceUnavailable,
            });
        };
        // (bounded: each answer blocks a thread of the blocking pool)
        let Some(permit) = slots.grant_permit() else {
            return self.refused.push_back(Input::QueryFailed {
                to,
                condition: StanzaCondition::ResourceConstraint,
            });
        };
        let events = self.events.clone();
        tokio::spawn(async move {
            let answer = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let now = crate::external_services::ExternalServices::unix_now();
                crate::upload::answer(&slots, &query, now, rand::random())
            })
            .await;
            let input = match answer {
                Ok(reply) => Input::Replies {
                    to,
                    payloads: vec![reply],
                    events: Vec::new(),
                    iq: true,
                },
                Err(_) => Input::QueryFailed {
                    to,
                    condition: StanzaCondition::InternalServerError,
                },
            };
            let _ = events.send(Event::Router(input)).await;
        });
    }

    /// Runs until shutdown.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Event>, shutdown: CancellationToken) {
        self.show_metrics();
        loop {
            let deadline = self.router.poll_timeout();
            // Loads waiting for storage room look again soon even if no
            // event comes (a job that frees room need not report back).
            let retry = (!self.roster_loads.is_empty()).then(|| now() + LOAD_RETRY);
            let intake_open = self.intake_open;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = sleep_until(deadline) => self.router.handle_timeout(now()),
                _ = sleep_until(retry) => {}
                _ = self.wall_clock.tick() => {
                    let unix_secs = crate::external_services::ExternalServices::unix_now();
                    self.router.handle(Input::WallClock { unix_secs }, now());
                }
                // (the driver holds a sender of its own: never closed)
                Some(e) = self.completions.recv() => {
                    if !self.on_event(e) {
                        continue;
                    }
                }
                e = rx.recv(), if intake_open => match e {
                    Some(e) => {
                        if !self.on_event(e) {
                            continue;
                        }
                    }
                    None => return,
                },
            }
            self.carry_out();
            self.show_metrics();
        }
    }

    /// Handles one event; false if it gave the router nothing to do.
    fn on_event(&mut self, event: Event) -> bool {
        match event {
            Event::Router(input) => self.router.handle(input, now()),
            Event::Snapshot(tx) => {
                let _ = tx.send(self.snapshot());
                return false;
            }
            Event::FlushDone(user) => match self.flushes.done(&user) {
                Some(to) => self.run_flush(user, to),
                None => return false,
            },
        }
        true
    }

    /// Carries out the router's actions, and hands it what the driver
    /// refused meanwhile (whose actions are carried out in turn).
    fn carry_out(&mut self) {
        self.start_roster_loads();
        loop {
            while let Some(action) = self.router.poll_action() {
                self.execute(action);
            }
            let Some(input) = self.refused.pop_front() else {
                return;
            };
            self.router.handle(input, now());
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
            cluster: self.cluster.as_ref().map(|c| ClusterView {
                member: c.member.clone(),
                slot_count: c.slot_count,
                slots_owned: self.router.slots_owned(),
                forwards_waiting: self.router.forwards_waiting(),
                cores: c.cores.borrow().clone(),
            }),
        }
    }

    /// Starts the waiting roster loads the storage budget has room for, in
    /// order; one that waited past the storage deadline fails (storage is
    /// stalled: its sessions end, as when a queued load is late).
    fn start_roster_loads(&mut self) {
        let now = now();
        while let Some((_, since)) = self.roster_loads.front() {
            if now.duration_since(*since) >= self.limits.deadline {
                if let Some((user, _)) = self.roster_loads.pop_front() {
                    tracing::warn!(user, "storage overloaded: roster not loaded in time");
                    self.refused.push_back(Input::RosterFailed { user });
                }
                continue;
            }
            let Some(charge) = self.budget.charge(0) else {
                return;
            };
            let Some((user, _)) = self.roster_loads.pop_front() else {
                return;
            };
            self.load_roster(user, charge);
        }
    }

    /// Loads `user`'s roster (`None` for no such account) for the router.
    fn load_roster(&mut self, user: String, charge: Charge) {
        let local = crate::address::local(&user).unwrap_or_default().to_owned();
        let job = move || {
            let local = local.clone();
            move |db: &mut dyn Store| {
                if db.credentials(&local)?.is_none() {
                    return Ok(None);
                }
                db.roster(&local).map(Some)
            }
        };
        let outcome =
            Queued::new(&self.storage, self.limits.deadline, charge).run(ARCHIVE_RETRIES, job);
        let events = self.events.clone();
        tokio::spawn(async move {
            let input = match outcome.await {
                Ok(roster) => Input::RosterLoaded { user, roster },
                Err(e) => {
                    tracing::error!(error = %e, user, "loading a roster failed for good");
                    Input::RosterFailed { user }
                }
            };
            let _ = events.send(Event::Router(input)).await;
        });
    }

    /// Carries out one action. Never waits: storage work is queued within
    /// the byte budget or refused at once (see [`StorageLimits`]).
    fn execute(&mut self, action: Action) {
        match action {
            Action::Intake { open } => {
                if !open {
                    tracing::info!("many frames wait for rosters: CM frames paused");
                }
                self.intake_open = open;
            }
            Action::Send { node, frame } => self.send(node, frame),
            Action::ToComponent { name, payload } => {
                if let Err(refused) = self.components.try_send(&name, payload.clone()) {
                    self.refused.push_back(Input::ComponentRefused {
                        name,
                        payload,
                        condition: refused.condition(),
                    });
                }
            }
            Action::Forward { core, frame } => self.forward(&core, frame),
            Action::SlotsOwned { owned } => self.tell_slots(owned),
            Action::HandedOver { slot } => {
                if let Some(c) = &self.cluster {
                    let _ = c
                        .lease_commands
                        .try_send(crate::shards::LeaseCommand::HandedOver(slot));
                }
            }
            Action::StoreOffline {
                user,
                payload,
                bounce,
                origin,
                live,
                wake,
            } => {
                if live.is_none() {
                    self.metrics.offline_stored.inc();
                }
                let Some(charge) = self.budget.charge(payload.len()) else {
                    return self.refuse_write(bounce, payload, origin, live);
                };
                // A live row is bounded by the ledgers, not the quota.
                let quota = match live {
                    Some(_) => OfflineQuota::Exempt,
                    None => OfflineQuota::Checked,
                };
                // Nobody waits for this store (no SM sender's ack, no live
                // row, no sender to answer): a message rerouted at its
                // session's end, or one its link had no room for. Its sender
                // may hold an acknowledgement already, so it is tried again
                // until it commits (see `store_again`).
                let unwaited = origin.is_none() && live.is_none() && bounce.sender.is_empty();
                // Queued here, in routing order: stored messages keep their order.
                let stamp = now_stamp();
                let recipient = user.clone();
                let fences = self.fences([user.as_str()]);
                // A message for a user with no session: the router does not
                // hold the user's block list (XEP-0191), so the store looks
                // (at the sender the bounce names, or else the one the
                // stanza's `from` names, as a forwarded one's does).
                let own = format!("{user}@{}", self.domain);
                let sender_forms = live
                    .is_none()
                    .then(|| offline_sender(&bounce, &payload))
                    .flatten()
                    // (a user's own JIDs are never blocked for the user)
                    .filter(|sender| crate::address::bare(sender) != own)
                    .map(|sender| crate::block_list::owned_forms(&sender));
                let job = Arc::new({
                    let payload = payload.clone();
                    move || {
                        let (user, stamp, payload) = (user.clone(), stamp.clone(), payload.clone());
                        let (fences, sender_forms) = (fences.clone(), sender_forms.clone());
                        move |db: &mut dyn Store| {
                            check_fences(db, &fences)?;
                            if let Some(forms) = &sender_forms
                                && db.blocks_any(&user, forms)?
                            {
                                return Ok(OfflineStore::Blocked);
                            }
                            db.store_offline_row(&user, &stamp, &payload, quota)
                                .map(OfflineStore::Done)
                        }
                    }
                });
                let first = job.clone();
                let outcome = Queued::new(&self.storage, self.limits.deadline, charge)
                    .run(ARCHIVE_RETRIES, move || first());
                let events = self.events.clone();
                let fenced = self.metrics.writes_fenced.clone();
                let again = unwaited.then(|| StoreAgain {
                    storage: self.storage.clone(),
                    budget: self.budget.clone(),
                    deadline: self.limits.deadline,
                });
                tokio::spawn(async move {
                    let mut outcome = outcome.await;
                    if let Some(again) = again
                        && outcome.is_err()
                    {
                        outcome = again.until_stored(outcome, payload.len(), job).await;
                        if outcome.is_ok() {
                            // stored after later jobs, maybe after the
                            // user's flush: the router flushes again
                            let input = Input::OfflineStoredLate { user: recipient };
                            let _ = events.send(Event::Router(input)).await;
                            return;
                        }
                    }
                    // (this result may reach the router after that of a job
                    // queued later, e.g. a flush's load that read the row:
                    // the router holds such a load until this comes)
                    let condition = match (outcome, live) {
                        (Ok(OfflineStore::Done(OfflineRow::Row(row))), Some(ticket)) => {
                            let input = Input::LiveStored {
                                ticket,
                                row,
                                origin,
                            };
                            let _ = events.send(Event::Router(input)).await;
                            return;
                        }
                        (Ok(OfflineStore::Done(OfflineRow::Row(_))), None) => {
                            if let Some(origin) = origin {
                                let _ = events.send(Event::Router(Input::Stored { origin })).await;
                            }
                            if wake {
                                let input = Input::OfflineStored {
                                    user: recipient,
                                    payload,
                                };
                                let _ = events.send(Event::Router(input)).await;
                            }
                            return;
                        }
                        // (XEP-0191: a blocked sender's message is refused so)
                        (
                            Ok(OfflineStore::Done(OfflineRow::NoSuchUser) | OfflineStore::Blocked),
                            _,
                        ) => StanzaCondition::ServiceUnavailable,
                        (Err(e), _) if e.is_fenced() => {
                            fenced.inc();
                            let input = Input::StoreFenced {
                                user: recipient,
                                bounce,
                                payload,
                                origin,
                                live,
                            };
                            let _ = events.send(Event::Router(input)).await;
                            return;
                        }
                        (Err(e), _) => e.condition(),
                    };
                    let input = Input::StoreFailed {
                        bounce,
                        payload,
                        condition,
                        origin,
                        live,
                    };
                    let _ = events.send(Event::Router(input)).await;
                });
            }
            Action::FlushOffline { user, to } => match self.flushes.start(&user, to) {
                FlushStart::Run => self.run_flush(user, to),
                FlushStart::Wait => {}
                FlushStart::Refused => {
                    tracing::warn!(user, "too many offline flushes waiting: one not loaded");
                    self.refused
                        .push_back(Input::OfflineLoadFailed { user, to });
                }
            },
            Action::LoadRoster { user } => {
                self.roster_loads.push_back((user, now()));
                self.start_roster_loads();
            }
            Action::WriteRoster { txn, writes } => {
                let Some(charge) = self.budget.charge(0) else {
                    tracing::warn!("storage queue full: a roster change is refused");
                    return self.refused.push_back(Input::RosterWriteFailed {
                        txn,
                        condition: StanzaCondition::ResourceConstraint,
                    });
                };
                let fences = self.fences(writes.iter().map(|w| match w {
                    RosterWrite::Put { user, .. }
                    | RosterWrite::Remove { user, .. }
                    | RosterWrite::Block { user, .. }
                    | RosterWrite::Unblock { user, .. } => user.as_str(),
                }));
                let job = move || {
                    let writes = writes.clone();
                    let fences = fences.clone();
                    move |db: &mut dyn Store| {
                        // one change: all of its writes or none
                        crate::storage::all_or_none(db, |db| {
                            check_fences(db, &fences)?;
                            for w in &writes {
                                match w {
                                    RosterWrite::Put {
                                        user,
                                        item,
                                        version,
                                    } => db.put_roster_item(user, item, *version)?,
                                    RosterWrite::Remove { user, jid, version } => {
                                        db.remove_roster_item(user, jid, *version)?
                                    }
                                    RosterWrite::Block { user, jids } => db.block(user, jids)?,
                                    RosterWrite::Unblock { user, jids } => {
                                        db.unblock(user, jids)?
                                    }
                                }
                            }
                            Ok(())
                        })
                    }
                };
                // Writes are idempotent: a retry repeats them all.
                let outcome = Queued::new(&self.storage, self.limits.deadline, charge)
                    .run(ARCHIVE_RETRIES, job);
                let events = self.events.clone();
                let fenced = self.metrics.writes_fenced.clone();
                tokio::spawn(async move {
                    let input = match outcome.await {
                        Ok(()) => Input::RosterWritten { txn },
                        Err(e) => {
                            if e.is_fenced() {
                                fenced.inc();
                            }
                            Input::RosterWriteFailed {
                                txn,
                                condition: e.condition(),
                            }
                        }
                    };
                    let _ = events.send(Event::Router(input)).await;
                });
            }
            Action::Archive {
                mut entries,
                origin,
                bounce,
            } => {
                let stamp = crate::queries::now_micros();
                for e in &mut entries {
                    e.stamp = stamp;
                }
                self.metrics.archived.inc_by(entries.len() as u64);
                let payload = entries
                    .first()
                    .map(|e| e.payload.clone())
                    .unwrap_or_default();
                let Some(charge) = self.budget.charge(payload.len() * entries.len()) else {
                    return self.refuse_write(bounce, payload, origin, None);
                };
                let fences = self.fences(entries.iter().map(|e| e.user.as_str()));
                let job = move || {
                    let entries = entries.clone();
                    let fences = fences.clone();
                    move |db: &mut dyn Store| {
                        check_fences(db, &fences)?;
                        for e in &entries {
                            // a room's archive is kept only with its record:
                            // a message for a room not stored is refused,
                            // not acknowledged as if archived
                            if e.user.contains('@') && db.muc_room(&e.user)?.is_none() {
                                return Err(StorageError::UnknownId);
                            }
                            db.archive(e)?;
                        }
                        Ok(())
                    }
                };
                let outcome = Queued::new(&self.storage, self.limits.deadline, charge)
                    .run(ARCHIVE_RETRIES, job);
                let events = self.events.clone();
                let fenced = self.metrics.writes_fenced.clone();
                tokio::spawn(async move {
                    // A commit can fail for another job of its batch: tried again alone.
                    let input = match (outcome.await, origin) {
                        (Ok(()), Some(origin)) => Input::Stored { origin },
                        (Ok(()), None) => return,
                        // Not durable: the sender is told, and only then is
                        // the stanza acknowledged (see Input::StoreFailed).
                        // (the sender's own archive: answered, not forwarded)
                        (Err(e), origin) if e.is_fenced() => {
                            fenced.inc();
                            Input::StoreFenced {
                                user: String::new(),
                                bounce,
                                payload,
                                origin,
                                live: None,
                            }
                        }
                        (Err(e), origin) => Input::StoreFailed {
                            bounce,
                            payload,
                            condition: e.condition(),
                            origin,
                            live: None,
                        },
                    };
                    let _ = events.send(Event::Router(input)).await;
                });
            }
            Action::Query { to, query } => {
                let iq = query.answers_iq();
                // (a query of the server's own is answered with nothing)
                let failed = move |condition| match iq {
                    true => Input::QueryFailed { to, condition },
                    false => Input::Replies {
                        to,
                        payloads: Vec::new(),
                        events: Vec::new(),
                        iq,
                    },
                };
                if let Query::UploadSlot { .. } = &query {
                    return self.upload_slot(to, query);
                }
                let Some(charge) = self.budget.charge(query.bytes()) else {
                    return self
                        .refused
                        .push_back(failed(StanzaCondition::ResourceConstraint));
                };
                let domain = self.domain.clone();
                let job = move || {
                    let (query, domain) = (query.clone(), domain.clone());
                    move |db: &mut dyn Store| Ok(crate::queries::answer(db, &query, &domain))
                };
                let outcome = Queued::new(&self.storage, self.limits.deadline, charge).run(0, job);
                let events = self.events.clone();
                tokio::spawn(async move {
                    let input = match outcome.await {
                        Ok(answer) => Input::Replies {
                            to,
                            payloads: answer.payloads,
                            events: answer.events,
                            iq,
                        },
                        Err(e) => {
                            tracing::error!(error = %e, "answering a query failed");
                            failed(e.condition())
                        }
                    };
                    let _ = events.send(Event::Router(input)).await;
                });
            }
            Action::LoadRoom { room } => {
                let failed = Input::RoomLoaded {
                    room: room.clone(),
                    record: None,
                    history: Vec::new(),
                    failed: true,
                };
                let Some(charge) = self.budget.charge(0) else {
                    return self.refused.push_back(failed);
                };
                let job = {
                    let room = room.clone();
                    move || {
                        let room = room.clone();
                        move |db: &mut dyn Store| {
                            let Some(record) = db.muc_room(&room)? else {
                                return Ok((None, Vec::new()));
                            };
                            // its newest messages are its history
                            let query = crate::storage::ArchiveQuery {
                                from_end: true,
                                max: crate::muc::room::MAX_HISTORY,
                                ..Default::default()
                            };
                            // (a failed read of the archive leaves the room
                            // without history rather than unreachable)
                            let history = match db.query_archive(&room, &query) {
                                Ok(page) => page
                                    .items
                                    .into_iter()
                                    .map(|a| (a.stamp, a.payload))
                                    .collect(),
                                Err(e) => {
                                    tracing::warn!(room, error = %e, "a room's history could not be read");
                                    Vec::new()
                                }
                            };
                            Ok((Some(record), history))
                        }
                    }
                };
                let outcome = Queued::new(&self.storage, self.limits.deadline, charge).run(0, job);
                let events = self.events.clone();
                tokio::spawn(async move {
                    let input = match outcome.await {
                        Ok((record, history)) => Input::RoomLoaded {
                            room,
                            record,
                            history,
                            failed: false,
                        },
                        Err(e) => {
                            tracing::error!(room, error = %e, "loading a room failed");
                            failed
                        }
                    };
                    let _ = events.send(Event::Router(input)).await;
                });
            }
            Action::SaveRoom {
                room,
                record,
                answer,
            } => {
                let fences = self.fences([room.as_str()]);
                let saved = |a: &crate::muc::Answer, payload: &Bytes| Input::RoomSaved {
                    room: room.clone(),
                    to: a.to.clone(),
                    payload: payload.clone(),
                };
                let Some(charge) = self.budget.charge(record.len()) else {
                    tracing::error!(room, "storage overloaded: a room's record is not stored");
                    if let Some(a) = &answer {
                        self.refused.push_back(saved(a, &a.error));
                    }
                    return;
                };
                let job = {
                    let room = room.clone();
                    move || {
                        let (room, record, fences) = (room.clone(), record.clone(), fences.clone());
                        move |db: &mut dyn Store| {
                            check_fences(db, &fences)?;
                            db.set_muc_room(&room, &record)
                        }
                    }
                };
                let outcome = Queued::new(&self.storage, self.limits.deadline, charge)
                    .run(ARCHIVE_RETRIES, job);
                let events = self.events.clone();
                let (ok, failed) = match &answer {
                    Some(a) => (Some(saved(a, &a.result)), Some(saved(a, &a.error))),
                    None => (None, None),
                };
                tokio::spawn(async move {
                    let input = match outcome.await {
                        Ok(()) => ok,
                        Err(e) => {
                            tracing::error!(room, error = %e, "storing a room's record failed");
                            failed
                        }
                    };
                    if let Some(input) = input {
                        let _ = events.send(Event::Router(input)).await;
                    }
                });
            }
            Action::WritePush { change } => {
                let failed = Input::PushWritten {
                    change: change.clone(),
                    ok: false,
                };
                let Some(charge) = self.budget.charge(0) else {
                    return self.refused.push_back(failed);
                };
                let fences = self.fences([change.user.as_str()]);
                let job = {
                    let change = change.clone();
                    move || {
                        let (change, fences) = (change.clone(), fences.clone());
                        move |db: &mut dyn Store| {
                            check_fences(db, &fences)?;
                            match &change.request {
                                crate::push::PushRequest::Enable { jid, node, options } => db
                                    .push_enable(&change.user, jid, node, options.as_deref())
                                    .map(|_| ()),
                                crate::push::PushRequest::Disable { jid, node } => db
                                    .push_disable(&change.user, jid, node.as_deref())
                                    .map(|_| ()),
                            }
                        }
                    }
                };
                let outcome = Queued::new(&self.storage, self.limits.deadline, charge)
                    .run(ARCHIVE_RETRIES, job);
                let events = self.events.clone();
                tokio::spawn(async move {
                    let ok = match outcome.await {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::warn!(error = %e, "a push registration was not stored");
                            false
                        }
                    };
                    let _ = events
                        .send(Event::Router(Input::PushWritten { change, ok }))
                        .await;
                });
            }
            Action::LoadPush { user } => {
                let failed = Input::PushLoaded {
                    user: user.clone(),
                    registrations: None,
                };
                let Some(charge) = self.budget.charge(0) else {
                    return self.refused.push_back(failed);
                };
                let job = {
                    let user = user.clone();
                    move || {
                        let user = user.clone();
                        move |db: &mut dyn Store| db.push_registrations(&user)
                    }
                };
                let outcome = Queued::new(&self.storage, self.limits.deadline, charge).run(0, job);
                let events = self.events.clone();
                tokio::spawn(async move {
                    let registrations = match outcome.await {
                        Ok(r) => Some(r),
                        Err(e) => {
                            tracing::warn!(user, error = %e, "push registrations could not be read");
                            None
                        }
                    };
                    let input = Input::PushLoaded {
                        user,
                        registrations,
                    };
                    let _ = events.send(Event::Router(input)).await;
                });
            }
            Action::DisablePush { user, jid, node } => {
                let fences = self.fences([user.as_str()]);
                self.write(move |db| {
                    check_fences(db, &fences)?;
                    db.push_disable(&user, &jid, Some(&node)).map(|_| ())
                });
            }
            Action::DeleteRoom { room } => {
                let fences = self.fences([room.as_str()]);
                self.write(move |db| {
                    check_fences(db, &fences)?;
                    db.delete_muc_room(&room).map(|_| ())
                });
            }
            Action::RemoveOffline { user, upto, rows } => {
                let metrics = self.metrics.clone();
                let fences = self.fences([user.as_str()]);
                // Queued now, before any later load of the same user's messages.
                self.write(move |db| {
                    check_fences(db, &fences)?;
                    if upto > 0 {
                        db.remove_offline(&user, upto)?;
                    }
                    if !rows.is_empty() {
                        db.remove_offline_rows(&user, &rows)?;
                    }
                    metrics.offline_delivered.inc();
                    Ok(())
                });
            }
        }
    }

    /// A durable write that could not even be queued (the storage queue is
    /// full): its sender is refused at once.
    fn refuse_write(
        &mut self,
        bounce: Bounce,
        payload: Bytes,
        origin: Option<(u64, u32)>,
        live: Option<u64>,
    ) {
        tracing::warn!("storage queue full: a message is refused");
        self.refused.push_back(Input::StoreFailed {
            bounce,
            payload,
            condition: StanzaCondition::ResourceConstraint,
            origin,
            live,
        });
    }

    /// Queues a write whose outcome nobody waits for (errors are logged;
    /// see the module docs for what that leaves).
    fn write(
        &mut self,
        f: impl FnOnce(&mut dyn Store) -> Result<(), StorageError> + Send + 'static,
    ) {
        let Some(charge) = self.budget.charge(0) else {
            tracing::error!("storage queue full: a write is dropped");
            return;
        };
        let written = self.storage.submit(move |db| {
            let _charge = charge;
            f(db)
        });
        let fenced = self.metrics.writes_fenced.clone();
        tokio::spawn(async move {
            match written.await {
                Ok(()) => {}
                Err(e @ StorageError::Fenced { .. }) => {
                    fenced.inc();
                    tracing::info!(error = %e, "a write refused by the fence (its slot moved)");
                }
                Err(e) => tracing::error!(error = %e, "a storage write failed"),
            }
        });
    }

    /// The fences of a write for `users` (local parts): one per user this
    /// core owns; if it owns none of them (it lost their slots since the
    /// write was decided), one that cannot hold, so the write is refused.
    /// Empty outside a cluster.
    fn fences<'a>(&self, users: impl IntoIterator<Item = &'a str>) -> Vec<WriteFence> {
        let Some(cluster) = &self.cluster else {
            return Vec::new();
        };
        let mut fences: Vec<WriteFence> = Vec::new();
        let mut unowned = None;
        for user in users {
            match self.router.fence_for(user) {
                Some((slot, Some(epoch))) if !fences.iter().any(|f| f.slot == slot) => {
                    fences.push(WriteFence {
                        core: cluster.member.clone(),
                        slot,
                        epoch: epoch as i64,
                    });
                }
                Some((_, Some(_))) => {}
                Some((slot, None)) => unowned = unowned.or(Some(slot)),
                None => {}
            }
        }
        if fences.is_empty()
            && let Some(slot) = unowned
        {
            fences.push(WriteFence {
                core: cluster.member.clone(),
                slot,
                epoch: -1,
            });
        }
        fences
    }

    /// Sends a frame to a peer core; a forward that finds no room is
    /// refused to the router, which sends it again when it can.
    fn forward(&mut self, core: &str, frame: Frame) {
        let Some(cluster) = &self.cluster else { return };
        if let Err(refused) = cluster.peers.send(core, frame)
            && let Frame::Forward { seq, .. } = *refused
            && seq != 0
        {
            self.refused.push_back(Input::ForwardDone {
                core: core.to_owned(),
                seq,
                accepted: false,
            });
        }
    }

    /// Tells the CMs and the peer cores what this core owns now.
    fn tell_slots(&mut self, owned: Vec<cm_protocol::SlotEpoch>) {
        let Some(cluster) = &self.cluster else { return };
        let cores = cluster
            .cores
            .borrow()
            .iter()
            .map(|m| cm_protocol::CoreAddress {
                core: m.core.clone(),
                address: m.address.clone(),
            })
            .collect();
        self.slot_owners_version += 1;
        let frame = Frame::SlotOwners {
            core: cluster.member.clone(),
            slot_count: cluster.slot_count,
            version: self.slot_owners_version,
            owned,
            cores,
        };
        // CM links get it in line behind the deliveries already queued
        // (so a CM moves a session only after the old core's last frame
        // for it); peer links follow the watch (crate::peers)
        self.links.publish(&cluster.slot_owners, frame);
    }

    /// Sends a frame; a delivery that cannot reach its CM link is reported
    /// to the router, whose next actions say what becomes of it.
    fn send(&mut self, node: NodeId, frame: Frame) {
        match frame {
            Frame::DeliverMany { sids, payload } => self.send_fanout(node, sids, payload),
            frame => self.send_one(node, frame),
        }
    }

    /// Sends a frame on the connection of its session.
    fn send_one(&mut self, node: NodeId, frame: Frame) {
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
                // A CM that stopped reading fills its link with every frame
                // for it: a few warnings a second, not one per frame.
                if self.overflow_warnings.try_take(1, now()) {
                    let unlogged = std::mem::take(&mut self.overflow_unlogged);
                    tracing::warn!(
                        node,
                        frame = frame.name(),
                        dropped_unlogged = unlogged,
                        "CM link full"
                    );
                } else {
                    self.overflow_unlogged += 1;
                }
            }
            SendError::NoLink => {
                self.metrics
                    .link_errors
                    .get_or_create(&label("reason", "no-link"))
                    .inc();
            }
        }
        match *frame {
            Frame::Deliver { payload, .. } => {
                self.router.delivery_failed((node, sid), payload, now())
            }
            Frame::DeliverMany { sids, payload } => {
                for sid in sids {
                    self.router
                        .delivery_failed((node, sid), payload.clone(), now());
                }
            }
            _ => {}
        }
    }

    /// Sends a room's fan-out to a CM: one `DeliverMany` per pooled
    /// connection, each with the sessions that connection carries (so
    /// every session's frames keep one connection and one order).
    fn send_fanout(&mut self, node: NodeId, sids: Vec<SessionId>, payload: Bytes) {
        self.metrics.delivered.inc_by(sids.len() as u64);
        let Some(size) = self.links.pool_size(node) else {
            // (no link: each session's delivery failed)
            for sid in sids {
                self.router
                    .delivery_failed((node, sid), payload.clone(), now());
            }
            return;
        };
        let mut by_conn: Vec<Vec<SessionId>> = vec![Vec::new(); usize::from(size)];
        for sid in sids {
            by_conn[(sid % u64::from(size)) as usize].push(sid);
        }
        for sids in by_conn.into_iter().filter(|s| !s.is_empty()) {
            self.send_one(
                node,
                Frame::DeliverMany {
                    sids,
                    payload: payload.clone(),
                },
            );
        }
    }

    /// Runs the flush of `user`'s stored messages to `to` (the one
    /// [`Flushes`] counts as running for the user).
    fn run_flush(&mut self, user: String, to: SessionAddr) {
        match self.budget.charge(0) {
            Some(charge) => self.flush_offline(user, to, charge),
            None => {
                // Nothing loaded: the router keeps holding new messages
                // back and asks again later; the rows stay stored.
                tracing::warn!(user, "storage overloaded: offline messages not loaded");
                let next = self.flushes.done(&user);
                self.refused.push_back(Input::OfflineLoadFailed {
                    user: user.clone(),
                    to,
                });
                if let Some(next) = next {
                    self.run_flush(user, next);
                }
            }
        }
    }

    /// Loads a user's stored messages, stamps them with their delay and
    /// hands them to the router, which delivers them (through the session's
    /// ledger when it has one) and then has them removed. One flush per
    /// user at a time.
    fn flush_offline(&self, user: String, to: SessionAddr, charge: Charge) {
        let storage = self.storage.clone();
        let domain = self.domain.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            let name = user.clone();
            let loaded = storage
                .call(move |db| {
                    let _charge = charge;
                    db.offline(&name)
                })
                .await;
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
                    // the router keeps holding new messages back, and retries
                    let input = Input::OfflineLoadFailed {
                        user: user.clone(),
                        to,
                    };
                    let _ = events.send(Event::Router(input)).await;
                }
            }
            let _ = events.send(Event::FlushDone(user)).await;
        });
    }
}

/// The first pause before an offline store nobody waits for is tried again
/// after its retries failed; it doubles up to [`STORE_AGAIN_MAX`].
pub const STORE_AGAIN_FIRST: Duration = Duration::from_millis(500);
/// The longest pause between tries of an offline store nobody waits for.
pub const STORE_AGAIN_MAX: Duration = Duration::from_secs(10);

/// What trying an offline store again needs: an offline store nobody waits
/// for (a message rerouted at its session's end, whose sender may hold an
/// acknowledgement) is tried again until it commits, as long as it fails
/// for a passing reason (not a full quota or an unknown user) and the
/// storage queue has room for it: its bytes stay charged while it waits,
/// so the waiting ones are bounded by the queue's bytes. A retry can land
/// behind a later message of the same user (better than losing it).
struct StoreAgain {
    storage: Storage,
    budget: Budget,
    deadline: Duration,
}

impl StoreAgain {
    /// Tries the store `make` builds again, with backoff, while `outcome`
    /// is a passing failure and the queue has room; its last outcome.
    async fn until_stored<T, J>(
        self,
        mut outcome: Result<T, JobError>,
        bytes: usize,
        make: Arc<impl Fn() -> J + Send + Sync + 'static>,
    ) -> Result<T, JobError>
    where
        T: Send + 'static,
        J: FnOnce(&mut dyn Store) -> Result<T, StorageError> + Send + 'static,
    {
        let mut pause = STORE_AGAIN_FIRST;
        loop {
            match &outcome {
                Err(e) if e.is_transient() => {}
                _ => return outcome,
            }
            let Some(hold) = self.budget.charge(bytes) else {
                tracing::error!("storage queue full: an unacknowledged message is not stored");
                return outcome;
            };
            tracing::warn!("an unacknowledged message could not be stored yet; trying again");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(STORE_AGAIN_MAX);
            let make = make.clone();
            outcome = Queued::new(&self.storage, self.deadline, hold)
                .run(ARCHIVE_RETRIES, move || make())
                .await;
        }
    }
}

/// Flushes of one user that may wait behind its running one: one per
/// session address, bounded by the user's sessions (plus as many of
/// sessions that ended meanwhile).
pub const MAX_WAITING_FLUSHES: usize = 2 * MAX_RESOURCES_PER_ACCOUNT;

/// Offline flushes: one runs per user at a time (each loads all of the
/// user's stored messages); the others wait their turn, each address once.
#[derive(Debug, Default)]
struct Flushes {
    /// Users with a flush running.
    running: HashSet<String>,
    /// The flushes to run, in order, when a user's current one is done.
    next: HashMap<String, VecDeque<SessionAddr>>,
}

/// What becomes of a flush asked for.
#[derive(Debug, PartialEq, Eq)]
enum FlushStart {
    /// Run it now.
    Run,
    /// It waits for the user's running one (or is waiting already).
    Wait,
    /// Too many wait ([`MAX_WAITING_FLUSHES`]): answer it as not loaded.
    Refused,
}

impl Flushes {
    /// A flush of `user`'s messages to `to` is asked for.
    fn start(&mut self, user: &str, to: SessionAddr) -> FlushStart {
        if self.running.insert(user.to_owned()) {
            return FlushStart::Run;
        }
        let waiting = self.next.entry(user.to_owned()).or_default();
        if waiting.contains(&to) {
            FlushStart::Wait
        } else if waiting.len() >= MAX_WAITING_FLUSHES {
            FlushStart::Refused
        } else {
            waiting.push_back(to);
            FlushStart::Wait
        }
    }

    /// `user`'s running flush is done: the next one to run (counted as
    /// running), if any.
    fn done(&mut self, user: &str) -> Option<SessionAddr> {
        let next = self.next.get_mut(user).and_then(VecDeque::pop_front);
        if self.next.get(user).is_some_and(VecDeque::is_empty) {
            self.next.remove(user);
        }
        if next.is_none() {
            self.running.remove(user);
        }
        next
    }
}

/// The bytes of storage work queued, against its bound.
#[derive(Clone)]
struct Budget {
    used: Arc<AtomicUsize>,
    max: usize,
}

/// What one queued job holds of the [`Budget`]; given back when dropped
/// (when the job ran, or was dropped unrun).
struct Charge {
    used: Arc<AtomicUsize>,
    bytes: usize,
}

impl Budget {
    fn new(max: usize) -> Self {
        Self {
            used: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// Charges a job carrying `bytes` of messages; none if it does not fit.
    fn charge(&self, bytes: usize) -> Option<Charge> {
        let bytes = bytes + JOB_COST;
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + bytes <= self.max).then_some(used + bytes)
            })
            .ok()?;
        Some(Charge {
            used: self.used.clone(),
            bytes,
        })
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Why a storage job did not give a result.
#[derive(Debug, thiserror::Error)]
enum JobError {
    /// It was still queued when its deadline passed: it never ran.
    #[error("storage job abandoned after waiting past its deadline")]
    Late,
    /// It ran and failed (after its retries).
    #[error(transparent)]
    Failed(#[from] StorageError),
}

impl JobError {
    /// Whether trying the job again later may work (it was late, or failed
    /// for a passing reason).
    fn is_transient(&self) -> bool {
        match self {
            JobError::Late => true,
            JobError::Failed(e) => e.is_transient(),
        }
    }

    /// Whether the fence refused the job (this core lost the slot).
    fn is_fenced(&self) -> bool {
        matches!(self, JobError::Failed(StorageError::Fenced { .. }))
    }

    /// The stanza error that answers a message whose write ended so.
    fn condition(&self) -> StanzaCondition {
        match self {
            JobError::Late
            | JobError::Failed(
                StorageError::QuotaExceeded
                | StorageError::Overloaded
                | StorageError::Timeout
                | StorageError::Fenced { .. },
            ) => StanzaCondition::ResourceConstraint,
            JobError::Failed(e) => {
                tracing::error!(error = %e, "a storage job failed for good");
                StanzaCondition::InternalServerError
            }
        }
    }
}

/// A job's run state, shared by the job and its waiter, so that exactly
/// one of "it ran" and "it was abandoned" happens.
const QUEUED: u8 = 0;
const STARTED: u8 = 1;
const ABANDONED: u8 = 2;

/// A storage job with its deadline and its charge: run (and retried) by
/// [`Queued::run`].
struct Queued {
    storage: Storage,
    deadline: tokio::time::Instant,
    charge: Arc<Charge>,
}

impl Queued {
    fn new(storage: &Storage, deadline: Duration, charge: Charge) -> Self {
        Self {
            storage: storage.clone(),
            deadline: tokio::time::Instant::now() + deadline,
            charge: Arc::new(charge),
        }
    }

    /// Queues the job `make` builds now — in the caller's order, so jobs
    /// keep routing order (stored messages keep theirs) — and returns the
    /// future of its result. The storage thread tries it again (up to
    /// `retries` times) while it fails with anything but a refusal (a full
    /// quota, an unknown id, a full or late queue), in queue order: a
    /// retried write never lands behind a later one (see
    /// [`Storage::submit_retried`]). A job still queued at the deadline is
    /// abandoned (it will not run); one that started is waited for.
    fn run<T, J>(
        self,
        retries: u32,
        make: impl Fn() -> J + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, JobError>> + Send
    where
        T: Send + 'static,
        J: FnOnce(&mut dyn Store) -> Result<T, StorageError> + Send + 'static,
    {
        let state = Arc::new(AtomicU8::new(QUEUED));
        let (claim, charge) = (state.clone(), self.charge.clone());
        let mut result = Box::pin(self.storage.submit_retried(0, retries, move |db| {
            let _charge = &charge;
            // the first attempt claims the job; a retry finds it started
            match claim.compare_exchange(QUEUED, STARTED, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) | Err(STARTED) => make()(db),
                Err(_) => Err(StorageError::Closed),
            }
        }));
        async move {
            let outcome = tokio::select! {
                r = &mut result => r,
                _ = tokio::time::sleep_until(self.deadline) => {
                    if state
                        .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        return Err(JobError::Late);
                    }
                    (&mut result).await
                }
            };
            outcome.map_err(JobError::from)
        }
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

    use cm_protocol::{Kind, RouteHeader, SessionId};
    use xmpp_sasl::StoredCredentials;

    use super::*;
    use crate::storage::{FaultPlan, FaultyStore, Sqlite};

    #[test]
    fn every_waiting_flush_of_a_user_runs_once_in_order_after_the_running_one() {
        let mut f = Flushes::default();
        assert_eq!(f.start("x", (1, 1)), FlushStart::Run);
        // sessions B and C ask while A's flush runs; B asks twice
        assert_eq!(f.start("x", (1, 2)), FlushStart::Wait);
        assert_eq!(f.start("x", (1, 3)), FlushStart::Wait);
        assert_eq!(f.start("x", (1, 2)), FlushStart::Wait);
        // another user's flush is not held up
        assert_eq!(f.start("y", (2, 1)), FlushStart::Run);
        assert_eq!(f.done("x"), Some((1, 2)));
        assert_eq!(f.done("x"), Some((1, 3)));
        assert_eq!(f.done("x"), None);
        // nothing left running: the next request runs at once
        assert_eq!(f.start("x", (1, 4)), FlushStart::Run);
        assert_eq!(f.done("x"), None);
        assert_eq!(f.done("y"), None);
        assert!(f.running.is_empty() && f.next.is_empty());
    }

    #[test]
    fn waiting_flushes_of_a_user_are_bounded_and_one_past_the_bound_is_refused() {
        let mut f = Flushes::default();
        assert_eq!(f.start("x", (1, 0)), FlushStart::Run);
        for sid in 1..=MAX_WAITING_FLUSHES as u64 {
            assert_eq!(f.start("x", (1, sid)), FlushStart::Wait);
        }
        assert_eq!(f.start("x", (1, 9999)), FlushStart::Refused);
        // one already waiting is still just waiting
        assert_eq!(f.start("x", (1, 1)), FlushStart::Wait);
        for sid in 1..=MAX_WAITING_FLUSHES as u64 {
            assert_eq!(f.done("x"), Some((1, sid)));
        }
        assert_eq!(f.done("x"), None);
    }

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

    /// How long a test waits for a frame it expects.
    const WAIT: Duration = Duration::from_secs(10);

    /// A running driver over a real SQLite store behind a [`FaultPlan`],
    /// with one CM node whose frames the test reads.
    struct Harness {
        events: mpsc::Sender<Event>,
        frames: crate::links::LinkReceiver,
        plan: FaultPlan,
        node: NodeId,
        shutdown: CancellationToken,
        _dir: tempfile::TempDir,
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            self.plan.heal();
            self.shutdown.cancel();
        }
    }

    /// Accounts alice, bob and carol (offline quota `quota`).
    async fn harness(quota: u32, limits: Option<StorageLimits>) -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let plan = FaultPlan::new();
        let (p, d) = (plan.clone(), dir.path().to_owned());
        let storage = Storage::start(move || {
            let real: Box<dyn Store> = Box::new(Sqlite::open(&d, quota)?);
            Ok(Box::new(FaultyStore::new(real, p)) as Box<dyn Store>)
        })
        .expect("storage");
        for user in ["alice", "bob", "carol"] {
            storage
                .call(move |db| db.add_user(user, &StoredCredentials::new("pw", 4096)))
                .await
                .expect("account");
        }
        let links = Arc::new(Links::default());
        let (tx, frames) = crate::links::LinkSender::channel(64 * 1024 * 1024);
        let node = links.register("cm-1", 1, (0, 1), "127.0.0.1:5222", tx).node;
        let (events, rx) = mpsc::channel(ROUTER_QUEUE);
        let mut driver = Driver::new(
            Router::new("x", 1, [7; 32]),
            links,
            storage,
            Arc::new(Metrics::new()),
            "x".into(),
        );
        if let Some(limits) = limits {
            driver = driver.with_storage_limits(limits);
        }
        let shutdown = CancellationToken::new();
        tokio::spawn(driver.run(rx, shutdown.clone()));
        Harness {
            events,
            frames,
            plan,
            node,
            shutdown,
            _dir: dir,
        }
    }

    impl Harness {
        async fn frame(&self, frame: Frame) {
            let node = self.node;
            self.events
                .send(Event::Router(Input::Frame { node, frame }))
                .await
                .expect("driver running");
        }

        /// The next frame `want` accepts (others skipped), within [`WAIT`].
        async fn until(&mut self, what: &str, want: impl Fn(&Frame) -> bool) -> Frame {
            let frames = &mut self.frames;
            let found = tokio::time::timeout(WAIT, async {
                loop {
                    let f = frames.recv().await.expect("frames");
                    if want(&f) {
                        return f;
                    }
                }
            })
            .await;
            found.unwrap_or_else(|_| panic!("no {what} within {WAIT:?}"))
        }

        /// Binds `user@x/res` as `sid` and sends its initial presence.
        async fn online(&mut self, sid: SessionId, user: &str, res: &str) {
            self.frame(Frame::Bind {
                sid,
                user: format!("{user}@x"),
                iq_id: "b".into(),
                resource: Some(res.into()),
                bind2: None,
            })
            .await;
            self.until(
                "bind result",
                |f| matches!(f, Frame::BindResult { sid: s, .. } if *s == sid),
            )
            .await;
            self.stanza(
                sid,
                Kind::Presence,
                &format!("{user}@x/{res}"),
                None,
                None,
                "<presence/>",
            )
            .await;
        }

        /// Enables SM (not resumable) for `sid`.
        async fn enable_sm(&mut self, sid: SessionId) {
            self.frame(Frame::SmEnable {
                sid,
                resume: false,
                max: 0,
            })
            .await;
            self.until(
                "SM enabled",
                |f| matches!(f, Frame::SmEnabled { sid: s, .. } if *s == sid),
            )
            .await;
        }

        async fn stanza(
            &self,
            sid: SessionId,
            kind: Kind,
            from: &str,
            to: Option<&str>,
            stype: Option<&str>,
            payload: &str,
        ) {
            let header = RouteHeader {
                kind,
                stanza_type: stype.map(Into::into),
                to: to.map(Into::into),
                // the id as the CM's header carries it
                id: payload
                    .split(" id='")
                    .nth(1)
                    .and_then(|rest| rest.split('\'').next())
                    .map(Into::into),
                from: from.into(),
            };
            self.frame(Frame::Stanza {
                sid,
                header,
                payload: Bytes::copy_from_slice(payload.as_bytes()),
            })
            .await;
        }

        /// A chat from alice (sid 10) to `to`, id `id`.
        async fn chat(&self, to: &str, id: &str, inner: &str) {
            let payload = format!(
                "<message from='alice@x/phone' to='{to}' type='chat' id='{id}'>{inner}</message>"
            );
            self.stanza(
                10,
                Kind::Message,
                "alice@x/phone",
                Some(to),
                Some("chat"),
                &payload,
            )
            .await;
        }
    }

    /// Whether `f` delivers to `sid` a stanza containing `needle`.
    fn delivers(f: &Frame, sid: SessionId, needle: &str) -> bool {
        matches!(f, Frame::Deliver { sid: s, payload } if *s == sid && crate::router::contains(payload, needle.as_bytes()))
    }

    impl Harness {
        /// Every frame up to and including the first `want` accepts,
        /// within [`WAIT`].
        async fn frames_until(&mut self, what: &str, want: impl Fn(&Frame) -> bool) -> Vec<Frame> {
            let frames = &mut self.frames;
            let found = tokio::time::timeout(WAIT, async {
                let mut seen = Vec::new();
                loop {
                    let f = frames.recv().await.expect("frames");
                    let done = want(&f);
                    seen.push(f);
                    if done {
                        return seen;
                    }
                }
            })
            .await;
            found.unwrap_or_else(|_| panic!("no {what} within {WAIT:?}"))
        }

        /// A roster get from alice (sid 10) with id `id`; returns its
        /// result's payload and every frame seen before it.
        async fn alice_roster(&mut self, id: &str) -> (String, Vec<Frame>) {
            let get = format!("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq>");
            self.stanza(10, Kind::Iq, "alice@x/phone", None, Some("get"), &get)
                .await;
            let needle = format!("id=\"{id}\"");
            let mut seen = self
                .frames_until("the roster result", |f| delivers(f, 10, &needle))
                .await;
            let Some(Frame::Deliver { payload, .. }) = seen.pop() else {
                unreachable!("frames_until ends with the match")
            };
            (String::from_utf8_lossy(&payload).into_owned(), seen)
        }
    }

    /// Whether `f` is a roster push (server-made ids start with `push-`).
    fn is_push(f: &Frame) -> bool {
        matches!(f, Frame::Deliver { payload, .. } if crate::router::contains(payload, b"push-"))
    }

    #[tokio::test]
    async fn roster_loads_past_the_storage_budget_wait_for_room_instead_of_ending_their_sessions() {
        // Room for two queued jobs; storage stalled, so none finishes.
        let limits = StorageLimits {
            queue_bytes: 2 * JOB_COST,
            deadline: Duration::from_secs(5),
        };
        let mut h = harness(100, Some(limits)).await;
        h.plan.stall();
        for (sid, user) in [(10, "alice"), (20, "bob"), (30, "carol")] {
            h.frame(Frame::Bind {
                sid,
                user: format!("{user}@x"),
                iq_id: "b".into(),
                resource: Some("phone".into()),
                bind2: None,
            })
            .await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        h.plan.heal();
        let mut bound = std::collections::HashSet::new();
        while bound.len() < 3 {
            let f = h
                .until("a bind result (or a kick)", |f| {
                    matches!(f, Frame::BindResult { .. } | Frame::Kick { .. })
                })
                .await;
            match f {
                Frame::BindResult { sid, .. } => bound.insert(sid),
                other => panic!("a session ended while its roster waited: {other:?}"),
            };
        }
    }

    #[tokio::test]
    async fn with_too_many_frames_waiting_for_rosters_cm_frames_wait_until_storage_catches_up() {
        use crate::router::INTAKE_CLOSE_AT;
        let mut h = harness(100, None).await;
        h.online(10, "alice", "phone").await;
        h.plan.stall();
        // Binds of users whose rosters cannot load while storage stalls.
        for i in 0..INTAKE_CLOSE_AT {
            h.frame(Frame::Bind {
                sid: 1000 + i as SessionId,
                user: format!("u{i}@x"),
                iq_id: "b".into(),
                resource: Some("r".into()),
                bind2: None,
            })
            .await;
        }
        // alice's message to herself needs no roster, but comes after them.
        h.chat("alice@x/phone", "m1", "<body>hi</body>").await;
        let early = tokio::time::timeout(Duration::from_millis(500), async {
            loop {
                let f = h.frames.recv().await.expect("frames");
                if delivers(&f, 10, "m1") {
                    return f;
                }
            }
        })
        .await;
        assert!(early.is_err(), "the intake is closed: the message waits");
        h.plan.heal();
        h.until("the message, once the rosters loaded", |f| {
            delivers(f, 10, "m1")
        })
        .await;
    }

    #[tokio::test]
    async fn a_roster_set_whose_write_fails_gets_an_error_no_push_and_the_roster_stays_as_stored() {
        let mut h = harness(100, None).await;
        h.online(10, "alice", "phone").await;
        let (before, _) = h.alice_roster("g1").await;
        assert!(!before.contains("bob@x"), "{before}");
        // the write and every retry fail
        h.plan.fail_writes(1 + ARCHIVE_RETRIES as usize);
        let set = "<iq type='set' id='s1'><query xmlns='jabber:iq:roster'>\
                   <item jid='bob@x' name='Bob'/></query></iq>";
        h.stanza(10, Kind::Iq, "alice@x/phone", None, Some("set"), set)
            .await;
        let seen = h
            .frames_until("the answer to the set", |f| delivers(f, 10, "id=\"s1\""))
            .await;
        let answer = seen.last().expect("the answer");
        assert!(
            delivers(answer, 10, "type=\"error\"") && delivers(answer, 10, "internal-server-error"),
            "the set is refused: {answer:?}"
        );
        assert!(
            !seen.iter().any(is_push),
            "no push for a change not stored: {seen:?}"
        );
        // a later get shows the roster as stored, and no push came meanwhile
        let (after, seen) = h.alice_roster("g2").await;
        assert!(
            !after.contains("bob@x"),
            "memory kept the failed change: {after}"
        );
        assert!(!seen.iter().any(is_push), "{seen:?}");
        // storage works again: the same set is stored, answered and pushed
        let set = set.replace("s1", "s2");
        h.stanza(10, Kind::Iq, "alice@x/phone", None, Some("set"), &set)
            .await;
        let seen = h
            .frames_until("the answer to the set", |f| delivers(f, 10, "id=\"s2\""))
            .await;
        assert!(
            delivers(seen.last().expect("answer"), 10, "type=\"result\""),
            "{seen:?}"
        );
        assert!(
            seen.iter().any(is_push),
            "pushed before its result: {seen:?}"
        );
        let (after, _) = h.alice_roster("g3").await;
        assert!(after.contains("bob@x"), "{after}");
    }

    #[tokio::test]
    async fn a_subscription_whose_roster_write_fails_is_refused_and_not_forwarded() {
        let mut h = harness(100, None).await;
        h.online(10, "alice", "phone").await;
        h.online(30, "bob", "pc").await;
        h.alice_roster("g1").await;
        h.plan.fail_writes(1 + ARCHIVE_RETRIES as usize);
        let subscribe = "<presence to='bob@x' type='subscribe' id='p1'/>";
        h.stanza(
            10,
            Kind::Presence,
            "alice@x/phone",
            Some("bob@x"),
            Some("subscribe"),
            subscribe,
        )
        .await;
        let seen = h
            .frames_until("the error to alice", |f| delivers(f, 10, "type=\"error\""))
            .await;
        let error = seen.last().expect("the error");
        assert!(
            delivers(error, 10, "internal-server-error") && delivers(error, 10, "p1"),
            "{error:?}"
        );
        assert!(!seen.iter().any(is_push), "{seen:?}");
        assert!(
            !seen.iter().any(|f| delivers(f, 30, "subscribe")),
            "forwarded though not stored: {seen:?}"
        );
        let (after, seen) = h.alice_roster("g2").await;
        assert!(
            !after.contains("bob@x"),
            "memory kept the failed change: {after}"
        );
        assert!(
            !seen.iter().any(|f| delivers(f, 30, "subscribe")),
            "{seen:?}"
        );
        // healed: the same request is stored, then forwarded to bob
        h.stanza(
            10,
            Kind::Presence,
            "alice@x/phone",
            Some("bob@x"),
            Some("subscribe"),
            subscribe,
        )
        .await;
        h.until("the request at bob", |f| delivers(f, 30, "subscribe"))
            .await;
        let (after, _) = h.alice_roster("g3").await;
        assert!(after.contains("bob@x"), "{after}");
    }

    #[tokio::test]
    async fn an_archive_write_that_fails_for_good_is_refused_to_its_sender_and_later_acks_flow() {
        let mut h = harness(100, None).await;
        h.online(10, "alice", "phone").await;
        h.online(30, "bob", "pc").await;
        h.enable_sm(10).await;
        // the first attempt and every retry fail
        h.plan.fail_writes(1 + ARCHIVE_RETRIES as usize);
        h.chat("bob@x", "m1", "<body>one</body>").await;
        h.frame(Frame::AckRequest { sid: 10 }).await;
        // delivered to bob at once (archiving runs beside it)
        h.until("delivery to bob", |f| delivers(f, 30, "one")).await;
        h.until("the error to alice", |f| delivers(f, 10, "type=\"error\""))
            .await;
        let handled = h
            .until("an acknowledgement of m1", |f| {
                matches!(f, Frame::Handled { h: 1, .. })
            })
            .await;
        assert!(matches!(handled, Frame::Handled { sid: 10, h: 1 }));
        // the next message is archived and acknowledged normally
        h.chat("bob@x", "m2", "<body>two</body>").await;
        h.until("delivery to bob", |f| delivers(f, 30, "two")).await;
        h.frame(Frame::AckRequest { sid: 10 }).await;
        h.until("an acknowledgement of m2", |f| {
            matches!(f, Frame::Handled { sid: 10, h: 2 })
        })
        .await;
    }

    #[tokio::test]
    async fn an_offline_store_that_fails_is_refused_before_it_is_acknowledged() {
        let mut h = harness(100, None).await;
        h.online(10, "alice", "phone").await;
        h.enable_sm(10).await;
        h.plan.fail_writes(1 + ARCHIVE_RETRIES as usize);
        // no body: no archive write, only the offline store
        h.chat("carol@x", "m1", "<thread>t</thread>").await;
        h.frame(Frame::AckRequest { sid: 10 }).await;
        h.until("the first answer to <r/>", |f| {
            matches!(f, Frame::Handled { sid: 10, h: 0 })
        })
        .await;
        let next = h
            .until("the error or an acknowledgement", |f| {
                delivers(f, 10, "type=\"error\"") || matches!(f, Frame::Handled { .. })
            })
            .await;
        assert!(
            delivers(&next, 10, "m1"),
            "acknowledged before its sender was told: {next:?}"
        );
        h.until("the acknowledgement after the error", |f| {
            matches!(f, Frame::Handled { sid: 10, h: 1 })
        })
        .await;
    }

    #[tokio::test]
    async fn a_flush_whose_load_fails_keeps_new_messages_behind_the_stored_ones_and_retries() {
        let mut h = harness(100, None).await;
        h.online(10, "alice", "phone").await;
        h.enable_sm(10).await;
        // stored for carol (offline): acknowledged once committed
        h.chat("carol@x", "s1", "<body>stored</body>").await;
        h.frame(Frame::AckRequest { sid: 10 }).await;
        h.until("s1 stored", |f| {
            matches!(f, Frame::Handled { sid: 10, h: 1 })
        })
        .await;
        // carol comes online with SM; her flush's load fails
        h.plan.fail_offline_loads(1);
        h.frame(Frame::Bind {
            sid: 20,
            user: "carol@x".into(),
            iq_id: "b".into(),
            resource: Some("tablet".into()),
            bind2: None,
        })
        .await;
        h.until("bind result", |f| {
            matches!(f, Frame::BindResult { sid: 20, .. })
        })
        .await;
        h.enable_sm(20).await;
        h.stanza(
            20,
            Kind::Presence,
            "carol@x/tablet",
            None,
            None,
            "<presence/>",
        )
        .await;
        let failed = tokio::time::timeout(WAIT, async {
            while h.plan.offline_load_failures_left() > 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        assert!(failed.is_ok(), "the flush's load was never tried");
        // the failure reaches the router before the next message (a round trip)
        h.stanza(
            20,
            Kind::Iq,
            "carol@x/tablet",
            Some("x"),
            Some("get"),
            "<iq type='get' id='ping1' to='x'><ping xmlns='urn:xmpp:ping'/></iq>",
        )
        .await;
        h.until("the ping's answer", |f| delivers(f, 20, "ping1"))
            .await;
        // a new message must not overtake the stored one
        h.chat("carol@x/tablet", "n2", "<body>new</body>").await;
        let first = h
            .until("a message for carol", |f| {
                delivers(f, 20, "stored") || delivers(f, 20, "new")
            })
            .await;
        assert!(
            delivers(&first, 20, "stored"),
            "a new message overtook the stored one: {first:?}"
        );
        h.until("the new message after it", |f| delivers(f, 20, "new"))
            .await;
    }

    #[tokio::test]
    async fn an_offline_store_retried_after_a_failure_stays_ahead_of_the_next_one() {
        let mut h = harness(100, None).await;
        h.online(10, "alice", "phone").await;
        h.enable_sm(10).await;
        // m1's first write fails; m2 is queued right behind it
        h.plan.fail_writes(1);
        h.chat("carol@x", "m1", "<thread>one</thread>").await;
        h.chat("carol@x", "m2", "<thread>two</thread>").await;
        h.frame(Frame::AckRequest { sid: 10 }).await;
        h.until("both stored", |f| {
            matches!(f, Frame::Handled { sid: 10, h: 2 })
        })
        .await;
        h.online(20, "carol", "tablet").await;
        let first = h
            .until("a stored message for carol", |f| {
                delivers(f, 20, "<thread>")
            })
            .await;
        assert!(
            delivers(&first, 20, "id='m1'"),
            "the retried store landed behind the next one: {first:?}"
        );
        h.until("the second one", |f| delivers(f, 20, "id='m2'"))
            .await;
    }

    #[tokio::test]
    async fn an_unacknowledged_message_stored_at_a_sessions_end_is_retried_until_it_commits() {
        let mut h = harness(100, None).await;
        h.online(10, "alice", "phone").await;
        h.online(20, "carol", "tablet").await;
        h.enable_sm(20).await;
        // m1 goes live to carol; its live row fails (alice hears of it)
        h.plan.fail_writes(1 + ARCHIVE_RETRIES as usize);
        h.chat("carol@x/tablet", "m1", "<thread>t</thread>").await;
        h.until("m1 at carol", |f| delivers(f, 20, "id='m1'")).await;
        h.until("the error to alice", |f| delivers(f, 10, "type=\"error\""))
            .await;
        // carol's stream dies unacknowledged: m1 goes to storage, whose
        // first tries fail
        h.plan.fail_writes(1 + ARCHIVE_RETRIES as usize);
        h.frame(Frame::SessionEnd {
            sid: 20,
            jid: None,
            clean: false,
        })
        .await;
        let failed = tokio::time::timeout(WAIT, async {
            while h.plan.writes_to_fail() > 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        assert!(failed.is_ok(), "the store was never tried");
        // carol comes back: m1 was stored after all
        h.online(21, "carol", "tablet").await;
        h.until("m1 stored for carol", |f| delivers(f, 21, "id='m1'"))
            .await;
    }

    #[tokio::test]
    async fn with_storage_stalled_pings_and_presence_flow_and_after_heal_messages_are_stored() {
        const QUEUED: usize = STORAGE_JOBS_BEFORE_FIX + 100;
        let mut h = harness(10_000, None).await;
        h.online(10, "alice", "phone").await;
        h.online(30, "bob", "pc").await;
        h.plan.stall();
        for i in 0..QUEUED {
            h.chat("carol@x", &format!("q{i}"), "<thread>t</thread>")
                .await;
        }
        h.stanza(
            10,
            Kind::Iq,
            "alice@x/phone",
            Some("x"),
            Some("get"),
            "<iq type='get' id='ping1' to='x'><ping xmlns='urn:xmpp:ping'/></iq>",
        )
        .await;
        h.until("the ping's answer", |f| delivers(f, 10, "ping1"))
            .await;
        h.stanza(
            10,
            Kind::Presence,
            "alice@x/phone",
            Some("bob@x/pc"),
            None,
            "<presence to='bob@x/pc'><status>here</status></presence>",
        )
        .await;
        h.until("the directed presence", |f| delivers(f, 30, "here"))
            .await;
        assert!(h.plan.calls() > 0, "storage was reached and stalled");
        h.plan.heal();
        // everything queued is stored: carol gets every message
        h.online(20, "carol", "tablet").await;
        let mut got = 0;
        while got < QUEUED {
            h.until("a stored message for carol", |f| {
                delivers(f, 20, "<thread>")
            })
            .await;
            got += 1;
        }
    }

    /// Storage jobs the driver let wait before the router task blocked
    /// (its former semaphore).
    const STORAGE_JOBS_BEFORE_FIX: usize = 1024;

    #[tokio::test]
    async fn a_message_to_an_offline_user_is_refused_when_the_storage_queue_is_full_or_late() {
        let limits = StorageLimits {
            queue_bytes: 4 * 1024,
            deadline: Duration::from_millis(300),
        };
        let mut h = harness(100, Some(limits)).await;
        h.online(10, "alice", "phone").await;
        h.plan.stall();
        // waits in the queue past its deadline: refused, never stored
        h.chat("carol@x", "late", "<thread>t</thread>").await;
        h.until("the refusal of the late message", |f| {
            delivers(f, 10, "late") && delivers(f, 10, "resource-constraint")
        })
        .await;
        // more than the queue holds: the rest refused at once
        let filler = "x".repeat(1024);
        for i in 0..8 {
            h.chat(
                "carol@x",
                &format!("full{i}"),
                &format!("<thread>{filler}</thread>"),
            )
            .await;
        }
        h.until(
            "a refusal of a message the full queue has no room for",
            |f| delivers(f, 10, "full") && delivers(f, 10, "resource-constraint"),
        )
        .await;
        h.plan.heal();
        h.chat("carol@x", "after", "<thread>t</thread>").await;
        // carol gets what was stored after the heal; nothing refused was stored
        h.online(20, "carol", "tablet").await;
        let first = h
            .until("a stored message for carol", |f| {
                delivers(f, 20, "<thread>")
            })
            .await;
        assert!(
            !delivers(&first, 20, "late"),
            "a refused message was stored: {first:?}"
        );
        h.until("the message sent after the heal", |f| {
            delivers(f, 20, "after")
        })
        .await;
    }
}
