//! The CM's core pools and the driver of their routing ([`Cores`]): one
//! [`Pool`] per core, sessions' frames sent where [`CoreMap`] says, its
//! actions carried out (pools started and stopped, sessions re-announced
//! on the core they moved to, kicked), its timers run by a task.
//!
//! A CM starts with one pool, the seed (the configured core address), and
//! stays in single-core mode, where a frame takes the same path as ever
//! (no lock), until a core sends `SlotOwners`. A session's `Bind` or
//! `Resume`, its binding and its end take the routing's lock once each in
//! either mode (so a cluster that starts later knows its users); in cluster
//! mode every frame does.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use cm_protocol::{Frame, SessionId};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::core_map::{Action, CoreMap, KickReason, PoolId, Route, SEED};
use crate::metrics::{DropReason, Metrics};
use crate::pool::{CoreEvents, OfferCell, Pool, PoolClosed, PoolSetup, Queued, Stamp};
use crate::session::CoreOffer;
use crate::sessions::Sessions;

/// The routing's timers run at most this often.
const TICK_FLOOR: Duration = Duration::from_millis(250);
/// ... and at least this often.
const TICK_CEILING: Duration = Duration::from_secs(1);

/// How new core pools are dialed (what every pool shares).
pub struct Dialer {
    /// Connections per core.
    pub pool_size: u16,
    /// Node name.
    pub node: String,
    /// Address clients use to reach this CM.
    pub client_addr: SocketAddr,
    /// QUIC endpoint to dial from (cluster client TLS).
    pub endpoint: quinn::Endpoint,
    /// Bytes of frames queued per connection at most.
    pub queue_bytes: usize,
    /// Shutdown signal (each pool stops with a child of it).
    pub shutdown: CancellationToken,
    /// Where pool tasks run.
    pub tasks: TaskTracker,
}

/// The core pools and their routing (see the module docs).
pub struct Cores {
    seed: Arc<Pool>,
    /// A core has sent `SlotOwners` (set once, never cleared).
    cluster: AtomicBool,
    state: Mutex<State>,
    sessions: Arc<Sessions>,
    metrics: Arc<Metrics>,
    offer: Arc<OfferCell>,
    /// None: a CM of one pool made by a test.
    dialer: Option<Dialer>,
    me: Weak<Cores>,
}

struct State {
    map: CoreMap,
    pools: Vec<Option<PoolHandle>>,
    /// Each routed session's generation (see [`Stamp`]).
    generations: HashMap<SessionId, Arc<AtomicU32>>,
}

struct PoolHandle {
    pool: Arc<Pool>,
    stop: CancellationToken,
}

impl State {
    fn stamp(&mut self, sid: SessionId, generation: u32) -> Stamp {
        let current = self
            .generations
            .entry(sid)
            .or_insert_with(|| Arc::new(AtomicU32::new(generation)))
            .clone();
        Stamp {
            generation,
            current,
        }
    }

    fn pool(&self, id: PoolId) -> Option<&Arc<Pool>> {
        Some(&self.pools.get(id)?.as_ref()?.pool)
    }
}

impl Cores {
    /// Starts the seed pool to `seed` and the routing's timer task.
    pub fn start(
        seed: SocketAddr,
        dialer: Dialer,
        sessions: Arc<Sessions>,
        metrics: Arc<Metrics>,
    ) -> Arc<Cores> {
        let offer = crate::pool::offer_cell();
        let tasks = dialer.tasks.clone();
        let shutdown = dialer.shutdown.clone();
        let cores = Arc::new_cyclic(|me: &Weak<Cores>| {
            let stop = shutdown.child_token();
            let seed_pool = Pool::start(
                dialer.pool_size,
                setup(&dialer, me, &sessions, &metrics, &offer, SEED, seed, &stop),
                &tasks,
            );
            Cores {
                seed: seed_pool.clone(),
                cluster: AtomicBool::new(false),
                state: Mutex::new(State {
                    map: CoreMap::new(seed.to_string(), crate::now()),
                    pools: vec![Some(PoolHandle {
                        pool: seed_pool,
                        stop,
                    })],
                    generations: HashMap::new(),
                }),
                sessions,
                metrics,
                offer,
                dialer: Some(dialer),
                me: me.clone(),
            }
        });
        tasks.spawn(timers(Arc::downgrade(&cores), shutdown));
        cores
    }

    /// A CM of the one pool `pool` (no dialing), for driver tests.
    #[cfg(test)]
    pub(crate) fn single(pool: Arc<Pool>, sessions: Arc<Sessions>) -> Arc<Cores> {
        Arc::new_cyclic(|me| Cores {
            offer: crate::pool::offer_cell(),
            seed: pool.clone(),
            cluster: AtomicBool::new(false),
            state: Mutex::new(State {
                map: CoreMap::new("seed".into(), crate::now()),
                pools: vec![Some(PoolHandle {
                    pool,
                    stop: CancellationToken::new(),
                })],
                generations: HashMap::new(),
            }),
            sessions,
            metrics: Arc::new(Metrics::new()),
            dialer: None,
            me: me.clone(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame of session `sid` for the core that takes it (waits
    /// while that connection's queue holds its budget of bytes). A frame
    /// held for an unknown owner returns at once.
    pub async fn send(&self, sid: SessionId, frame: Frame) -> Result<(), PoolClosed> {
        let binds = matches!(frame, Frame::Bind { .. } | Frame::Resume { .. });
        if !binds && !self.cluster.load(Ordering::Acquire) {
            return self.seed.send(sid, frame).await;
        }
        let routed = {
            let mut state = self.lock();
            let routed = match state.map.route(sid, frame, crate::now()) {
                Route::To {
                    pool,
                    generation,
                    frame,
                } => {
                    let stamp = state.map.is_cluster().then(|| state.stamp(sid, generation));
                    let handle = state.pool(pool).cloned();
                    if handle.is_none() {
                        // (a pool stopped a moment ago: the session
                        // resumes, rather than lose a frame unseen)
                        self.metrics.dropped(DropReason::NoOwner);
                        self.sessions.kick(sid);
                    }
                    handle.map(|p| (p, frame, stamp))
                }
                Route::Held => None,
                Route::Dropped => {
                    self.metrics.dropped(DropReason::NoOwner);
                    None
                }
            };
            self.apply(&mut state);
            routed
        };
        match routed {
            Some((pool, frame, stamp)) => pool.send_stamped(sid, frame, stamp).await,
            None => Ok(()),
        }
    }

    /// Session `sid` is bound (announced from now on).
    pub fn bound(&self, sid: SessionId) {
        let mut state = self.lock();
        state.map.bound(sid);
        self.apply(&mut state);
    }

    /// Session `sid` ended (after its last frame was sent); `announcement`
    /// is its `Announce` if it can still be resumed (see
    /// [`CoreMap::close`]).
    pub fn closed(&self, sid: SessionId, announcement: Option<Frame>) {
        let mut state = self.lock();
        state.map.close(sid, announcement, crate::now());
        state.generations.remove(&sid);
        self.apply(&mut state);
    }

    /// What the cores offer clients, if one has welcomed this CM yet.
    pub fn core_offer(&self) -> Option<Arc<CoreOffer>> {
        self.seed.core_offer()
    }

    /// Waits until a core has offered something (at once if one has).
    pub async fn wait_core_offer(&self) -> Arc<CoreOffer> {
        self.seed.wait_core_offer().await
    }

    /// Bytes of frames queued toward the cores now (every pool).
    pub fn queued_bytes(&self) -> usize {
        let pools: Vec<Arc<Pool>> = self
            .lock()
            .pools
            .iter()
            .flatten()
            .map(|p| p.pool.clone())
            .collect();
        pools.iter().map(|p| p.queued_bytes()).sum()
    }

    /// Core pools now.
    pub fn pools(&self) -> usize {
        self.lock().map.pools()
    }

    /// Shard slots whose owner is known.
    pub fn owned_slots(&self) -> usize {
        self.lock().map.owned_slots()
    }

    /// Bytes of frames held for unknown owners.
    pub fn held_bytes(&self) -> usize {
        self.lock().map.held_bytes()
    }

    /// Sessions remembered as detached for their slots' next owners, and
    /// the bytes they count.
    pub fn detached(&self) -> (usize, usize) {
        self.lock().map.detached()
    }

    /// Carries out what the routing decided (under its lock, so a moved
    /// session's re-announcement is queued before anything routed later).
    fn apply(&self, state: &mut State) {
        while let Some(action) = state.map.poll_action() {
            match action {
                Action::StartPool { pool, address } => self.start_pool(state, pool, &address),
                Action::StopPool { pool } => {
                    if let Some(handle) = state.pools.get_mut(pool).and_then(Option::take) {
                        tracing::info!(pool, "core pool stopped");
                        handle.stop.cancel();
                    }
                }
                Action::Move {
                    sid,
                    generation,
                    to,
                    frames,
                } => {
                    if !state.map.is_routed(sid) {
                        // a detached session's announcement, for its
                        // slot's new owner (no stamp: nothing of it is
                        // queued any more)
                        if let Some(pool) = to.and_then(|to| state.pool(to)) {
                            for frame in frames {
                                pool.push_now(
                                    sid,
                                    Queued::Frame {
                                        frame,
                                        _bytes: None,
                                        stamp: None,
                                    },
                                );
                            }
                        }
                        continue;
                    }
                    let stamp = state.stamp(sid, generation);
                    stamp.current.store(generation, Ordering::Release);
                    let Some(pool) = to.and_then(|to| state.pool(to)) else {
                        continue;
                    };
                    pool.push_now(
                        sid,
                        Queued::Reannounce {
                            sid,
                            stamp: stamp.clone(),
                        },
                    );
                    for frame in frames {
                        let stamp = Some(stamp.clone());
                        pool.push_now(
                            sid,
                            Queued::Frame {
                                frame,
                                _bytes: None,
                                stamp,
                            },
                        );
                    }
                }
                Action::Kick { sid, reason } => {
                    let reason = match reason {
                        KickReason::NoOwner => {
                            tracing::debug!(sid, "kicked: no owner for its user in time");
                            DropReason::NoOwner
                        }
                        KickReason::CoreDied => {
                            tracing::debug!(
                                sid,
                                "kicked: its authentication, bind or resumption went to a core that died"
                            );
                            DropReason::CoreDied
                        }
                    };
                    self.metrics.dropped(reason);
                    self.sessions.kick(sid);
                }
            }
        }
    }

    fn start_pool(&self, state: &mut State, id: PoolId, address: &str) {
        let Some(dialer) = &self.dialer else { return };
        let stop = dialer.shutdown.child_token();
        let pool = match address.parse::<SocketAddr>() {
            Ok(addr) => {
                tracing::info!(pool = id, %addr, "dialing a core");
                let setup = setup(
                    dialer,
                    &self.me,
                    &self.sessions,
                    &self.metrics,
                    &self.offer,
                    id,
                    addr,
                    &stop,
                );
                Pool::start(dialer.pool_size, setup, &dialer.tasks)
            }
            Err(_) => {
                // Frames routed to it fail: their sessions end.
                tracing::error!(
                    pool = id,
                    address,
                    "a core's address is not ip:port: not dialed"
                );
                stop.cancel();
                return;
            }
        };
        if state.pools.len() <= id {
            state.pools.resize_with(id + 1, || None);
        }
        state.pools[id] = Some(PoolHandle { pool, stop });
    }
}

impl CoreEvents for Cores {
    fn slot_owners(&self, pool: PoolId, frame: Frame) {
        let Frame::SlotOwners {
            core,
            slot_count,
            version,
            owned,
            cores,
        } = frame
        else {
            return;
        };
        let mut state = self.lock();
        state.map.on_slot_owners(
            pool,
            &core,
            slot_count,
            version,
            &owned,
            &cores,
            crate::now(),
        );
        if state.map.is_cluster() {
            self.cluster.store(true, Ordering::Release);
        }
        self.apply(&mut state);
    }

    fn links(&self, pool: PoolId, up: usize) {
        let mut state = self.lock();
        state.map.on_links(pool, up, crate::now());
        self.apply(&mut state);
    }

    fn carried(&self, pool: PoolId, candidates: Vec<SessionId>) -> Option<HashSet<SessionId>> {
        if !self.cluster.load(Ordering::Acquire) {
            return None;
        }
        let state = self.lock();
        Some(
            candidates
                .into_iter()
                .filter(|sid| state.map.carries(pool, *sid))
                .collect(),
        )
    }

    fn moved_away(&self, pool: PoolId, sid: SessionId) -> bool {
        self.cluster.load(Ordering::Acquire) && self.lock().map.moved_away(pool, sid)
    }

    fn ended_by_core(&self, sid: SessionId) {
        if self.cluster.load(Ordering::Acquire) {
            self.lock().map.ended_by_core(sid);
        }
    }

    fn stale(&self, _pool: PoolId, sid: SessionId, frame: Frame) {
        match frame {
            // Lost with the move: the client resends it after resuming.
            Frame::Stanza { .. } | Frame::AckRequest { .. } => self.sessions.kick(sid),
            // No stanza order to keep: they go where the session is now.
            frame @ (Frame::Bind { .. }
            | Frame::Resume { .. }
            | Frame::SmEnable { .. }
            | Frame::SessionEnd { .. }
            | Frame::Bounce { .. }) => {
                let mut state = self.lock();
                if !state.map.is_routed(sid) {
                    // Closed since: its end and what it handed back go
                    // where its frames went last; nothing is left to bind.
                    let last = state.map.ended_at(sid).and_then(|p| state.pool(p));
                    if let (Some(p), Frame::SessionEnd { .. } | Frame::Bounce { .. }) =
                        (last, &frame)
                    {
                        p.push_now(
                            sid,
                            Queued::Frame {
                                frame,
                                _bytes: None,
                                stamp: None,
                            },
                        );
                    }
                    return;
                }
                if let Route::To {
                    pool,
                    generation,
                    frame,
                } = state.map.route(sid, frame, crate::now())
                {
                    let stamp = Some(state.stamp(sid, generation));
                    if let Some(p) = state.pool(pool) {
                        p.push_now(
                            sid,
                            Queued::Frame {
                                frame,
                                _bytes: None,
                                stamp,
                            },
                        );
                    }
                }
                self.apply(&mut state);
            }
            _ => {}
        }
    }
}

/// What pool `id` to `core` needs.
#[allow(clippy::too_many_arguments)]
fn setup(
    dialer: &Dialer,
    me: &Weak<Cores>,
    sessions: &Arc<Sessions>,
    metrics: &Arc<Metrics>,
    offer: &Arc<OfferCell>,
    id: PoolId,
    core: SocketAddr,
    stop: &CancellationToken,
) -> PoolSetup {
    let events: Weak<dyn CoreEvents> = me.clone();
    PoolSetup {
        node: dialer.node.clone(),
        client_addr: dialer.client_addr,
        core,
        endpoint: dialer.endpoint.clone(),
        sessions: sessions.clone(),
        shutdown: stop.clone(),
        queue_bytes: dialer.queue_bytes,
        metrics: metrics.clone(),
        offer: offer.clone(),
        id,
        events: Some(events),
    }
}

/// Runs the routing's timers until shutdown.
async fn timers(cores: Weak<Cores>, shutdown: CancellationToken) {
    loop {
        let wait = {
            let Some(cores) = cores.upgrade() else { return };
            let due = cores.lock().map.poll_timeout();
            due.map_or(TICK_CEILING, |t| t.saturating_duration_since(crate::now()))
                .clamp(TICK_FLOOR, TICK_CEILING)
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let Some(cores) = cores.upgrade() else { return };
        let mut state = cores.lock();
        state.map.handle_timeout(crate::now());
        cores.apply(&mut state);
    }
}
