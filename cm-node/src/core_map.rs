//! Which core takes a session's frames: the sans-IO routing of a CM that
//! talks to several cores ([`CoreMap`]), driven by [`crate::cores`].
//!
//! Until a core sends `SlotOwners` the CM is in single-core mode and every
//! frame goes to the seed pool (the configured core), as it always did.
//! In cluster mode:
//! - a session's frames before its user is known (Register, AuthStart,
//!   AuthResponse; a SessionEnd of an unauthenticated session) go to one
//!   pool chosen at its first frame (the seed if it is up, else the first
//!   pool that is): the SASL state lives in that core;
//! - from its first `Bind` or `Resume` (which name the bare JID the core
//!   authenticated) every frame goes to the owner of that user's slot;
//! - while the slot has no known owner, the frames wait here in order, at
//!   most [`HELD_BYTES_PER_SESSION`] per session and [`HELD_BYTES`] in all,
//!   for at most [`HOLD_TIME`]; past any of them the session is kicked
//!   (`connection-timeout`: its client resumes later);
//! - when a slot changes owner (a `SlotOwners` or a core whose links stayed
//!   down past [`DOWN_GRACE`]), each session of the slot moves: its
//!   generation rises (frames stamped earlier and still queued for the old
//!   owner are dropped at dequeue), it is re-announced on the new owner
//!   before anything else of it, then its held frames follow
//!   ([`Action::Move`]).
//! - a stream-managed session that closes resumably is remembered as
//!   *detached* (its `Announce`, marked detached) until its resumption time
//!   is nearly over, at most [`DETACHED_BYTES`] of them: whenever its slot
//!   gets a new owner, that core is told of it, so its client can resume
//!   there although the core it detached at is gone, with what is left of
//!   its resumption time. A core ends it with a `Kick` for its id other
//!   than `connection-timeout` (it resumed elsewhere or expired there;
//!   [`CoreMap::ended_by_core`]): it is forgotten, or never remembered.
//!
//! Pools: one per core named in a `cores` list (at most [`MAX_POOLS`]); a
//! pool other than the seed whose links are all down and that no
//! `SlotOwners` named for [`UNLISTED_GRACE`] is stopped.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use cm_protocol::slots::{Slot, SlotMap, slot_of};
use cm_protocol::{CoreAddress, Frame, SessionId, SlotEpoch};

/// A pool of connections to one core; 0 is the seed.
pub type PoolId = usize;

/// The seed pool (the configured core address).
pub const SEED: PoolId = 0;

/// Most core pools a CM keeps (the seed included).
pub const MAX_POOLS: usize = 64;

/// Bytes of frames ([`Frame::queued_bytes`]) one session may hold while its
/// slot has no known owner.
pub const HELD_BYTES_PER_SESSION: usize = 256 * 1024;

/// Bytes of frames all sessions together may hold while owners are unknown.
pub const HELD_BYTES: usize = 64 * 1024 * 1024;

/// A session's frames wait for an owner at most this long.
pub const HOLD_TIME: Duration = Duration::from_secs(30);

/// A core whose pool has had no connection up for this long is taken for
/// dead: its slots have no known owner until another core claims them.
pub const DOWN_GRACE: Duration = Duration::from_secs(5);

/// A pool (not the seed) whose links are down and whose core no
/// `SlotOwners` named for this long is stopped.
pub const UNLISTED_GRACE: Duration = Duration::from_secs(30);

/// Bytes of announcements of detached sessions (see the module docs) a
/// CM keeps; past it, those whose resumption time ends soonest go first.
pub const DETACHED_BYTES: usize = 32 * 1024 * 1024;

/// A detached session is forgotten this long before its resumption time
/// ends, so that no core hears of a session its old core has expired.
const DETACHED_MARGIN: Duration = Duration::from_secs(10);

/// What the driver must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Start a pool of connections to `address` (`host:port`).
    StartPool {
        /// Its id.
        pool: PoolId,
        /// Where the core listens for CMs.
        address: String,
    },
    /// Stop a pool (its id may be reused).
    StopPool {
        /// Its id.
        pool: PoolId,
    },
    /// Session `sid` changed core: frames of it stamped with an earlier
    /// generation than `gen` are stale (never to be sent). With `to`, it
    /// is re-announced there (if bound), then `frames` (held while the
    /// owner was unknown) follow in order, all stamped `gen`.
    Move {
        /// The session.
        sid: SessionId,
        /// Its generation from now on.
        generation: u32,
        /// Its new core, if known.
        to: Option<PoolId>,
        /// Frames it held, in order.
        frames: Vec<Frame>,
    },
    /// End session `sid` with `connection-timeout` (its client resumes,
    /// or authenticates, again).
    Kick {
        /// The session.
        sid: SessionId,
        /// Why.
        reason: KickReason,
    },
}

/// Why a session is kicked ([`Action::Kick`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KickReason {
    /// It waited too long, or held too much, for its slot's unknown owner.
    NoOwner,
    /// Its authentication, `Bind` or `Resume` went to a core taken for
    /// dead since: no answer will come.
    CoreDied,
}

/// Where a session's frame goes ([`CoreMap::route`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// To this pool, stamped with the session's generation.
    To {
        /// The pool.
        pool: PoolId,
        /// The session's generation (see [`Action::Move`]).
        generation: u32,
        /// The frame.
        frame: Frame,
    },
    /// Held until the owner is known (nothing to do now).
    Held,
    /// Dropped: the session is being kicked ([`Action::Kick`] follows).
    Dropped,
}

/// One pool's core, as far as this CM knows it.
#[derive(Debug)]
struct PoolState {
    /// Where it is dialed.
    address: String,
    /// Its member id, from its own `SlotOwners`.
    member: Option<String>,
    /// The version of the last `SlotOwners` taken from it.
    version: u64,
    /// Welcomed connections up now.
    links_up: usize,
    /// Since when none is up (none: some are).
    down_since: Option<Instant>,
    /// Its claims were forgotten (down past the grace).
    forgotten: bool,
    /// When a `SlotOwners` last named it among the live cores.
    named_at: Instant,
}

/// One session's route.
#[derive(Debug, Default)]
struct SessionRoute {
    /// The pool its unauthenticated frames go to.
    auth: Option<PoolId>,
    /// Its user's slot, once known (from Bind or Resume).
    slot: Option<Slot>,
    /// Its user's bare JID (to place it again if the slot count changes).
    user: Option<String>,
    /// Where its frames go now (none: held).
    target: Option<PoolId>,
    /// Where they went last (while held: the core it moved away from).
    last_target: Option<PoolId>,
    /// Raised at every move.
    generation: u32,
    /// Where its Bind or Resume went, until it is bound.
    binding_at: Option<PoolId>,
    /// Frames held while the owner is unknown.
    held: VecDeque<Frame>,
    held_bytes: usize,
    held_since: Option<Instant>,
    /// Kicked: its frames are dropped until it closes.
    kicked: bool,
    /// A core ended it for good: not remembered as detached when it closes.
    ended_by_core: bool,
    /// Its client closed its stream (a clean `SessionEnd` was routed): it
    /// cannot be resumed.
    ended_cleanly: bool,
}

/// A session that closed resumably, remembered for its slot's next owner.
#[derive(Debug)]
struct DetachedSession {
    /// Its user's slot.
    slot: Slot,
    /// Its `Announce`, marked detached.
    announce: Frame,
    /// When its resumption time ends.
    ends_at: Instant,
    /// When it is forgotten ([`DETACHED_MARGIN`] before that).
    forget_at: Instant,
    /// What it counts against [`DETACHED_BYTES`].
    bytes: usize,
}

/// The routing state (see the module docs).
#[derive(Debug)]
pub struct CoreMap {
    /// Owners of the slots; none until the first `SlotOwners` (single-core mode).
    slots: Option<SlotMap>,
    pools: Vec<Option<PoolState>>,
    sessions: HashMap<SessionId, SessionRoute>,
    /// Sessions holding frames.
    holding: HashSet<SessionId>,
    held_bytes: usize,
    /// Sessions closed lately and the pool their frames went to last, for
    /// their frames still queued ([`Self::ended_at`]); at most
    /// [`ENDED_REMEMBERED`], oldest forgotten first.
    ended: HashMap<SessionId, PoolId>,
    ended_order: VecDeque<SessionId>,
    /// Sessions that closed resumably (see the module docs).
    detached: HashMap<SessionId, DetachedSession>,
    detached_by_time: BTreeSet<(Instant, SessionId)>,
    detached_bytes: usize,
    actions: VecDeque<Action>,
}

/// What a detached session costs beside its announcement: its entries in
/// two maps.
const DETACHED_OVERHEAD: usize = 96;

/// Closed sessions whose last pool is remembered (about 40 bytes each).
const ENDED_REMEMBERED: usize = 16 * 1024;

impl CoreMap {
    /// A map whose seed pool dials `seed` (`host:port`), at `now`.
    pub fn new(seed: String, now: Instant) -> Self {
        Self {
            slots: None,
            pools: vec![Some(PoolState {
                address: seed,
                member: None,
                version: 0,
                links_up: 0,
                down_since: Some(now),
                forgotten: false,
                named_at: now,
            })],
            sessions: HashMap::new(),
            holding: HashSet::new(),
            held_bytes: 0,
            ended: HashMap::new(),
            ended_order: VecDeque::new(),
            detached: HashMap::new(),
            detached_by_time: BTreeSet::new(),
            detached_bytes: 0,
            actions: VecDeque::new(),
        }
    }

    /// Whether a core has sent `SlotOwners` (cluster mode).
    pub fn is_cluster(&self) -> bool {
        self.slots.is_some()
    }

    /// Where session `sid`'s next frame goes.
    pub fn route(&mut self, sid: SessionId, frame: Frame, now: Instant) -> Route {
        let user = match &frame {
            Frame::Bind { user, .. } | Frame::Resume { user, .. } => Some(user.as_str()),
            _ => None,
        };
        if self.slots.is_none() {
            // Single-core mode: the seed; remember the user of a session
            // that binds, in case cluster mode begins while it lives.
            if let Some(user) = user {
                let route = self.sessions.entry(sid).or_default();
                route.user = Some(user.to_owned());
                route.target = Some(SEED);
                route.auth = Some(SEED);
            }
            let generation = self.sessions.get(&sid).map_or(0, |r| r.generation);
            return Route::To {
                pool: SEED,
                generation,
                frame,
            };
        }
        if matches!(frame, Frame::Bounce { .. }) {
            return self.route_bounce(sid, frame);
        }
        let auth_pool = self.auth_pool();
        let route = self.sessions.entry(sid).or_default();
        if route.kicked {
            return Route::Dropped;
        }
        if matches!(frame, Frame::SessionEnd { clean: true, .. }) {
            route.ended_cleanly = true;
        }
        if let (Some(user), None) = (user, &route.user) {
            let slots = self.slots.as_ref().map_or(1, SlotMap::slot_count);
            route.slot = Some(slot_of(user, slots));
            route.user = Some(user.to_owned());
            route.target = owner_pool(&self.pools, self.slots.as_ref(), route.slot);
        }
        if route.user.is_none() {
            let pool = *route.auth.get_or_insert(auth_pool);
            return Route::To {
                pool,
                generation: route.generation,
                frame,
            };
        }
        let binds = matches!(frame, Frame::Bind { .. } | Frame::Resume { .. });
        match route.target {
            Some(pool) if route.held.is_empty() => {
                if binds {
                    route.binding_at = Some(pool);
                }
                Route::To {
                    pool,
                    generation: route.generation,
                    frame,
                }
            }
            _ => {
                let cost = frame.queued_bytes();
                if route.held_bytes + cost > HELD_BYTES_PER_SESSION
                    || self.held_bytes + cost > HELD_BYTES
                {
                    self.kick(sid, KickReason::NoOwner);
                    return Route::Dropped;
                }
                if binds {
                    // (goes out when an owner is known; an earlier
                    // attempt's core is no longer waited on)
                    route.binding_at = None;
                }
                route.held.push_back(frame);
                route.held_bytes += cost;
                route.held_since.get_or_insert(now);
                self.held_bytes += cost;
                self.holding.insert(sid);
                Route::Held
            }
        }
    }

    /// A delivery session `sid` could not take goes back to a core, never
    /// held or dropped (its sender was acknowledged): to the session's
    /// core, else the one it moved away from (which routes it on to the
    /// recipient's owner), else the seed.
    fn route_bounce(&self, sid: SessionId, frame: Frame) -> Route {
        let route = self.sessions.get(&sid);
        let pool = route
            .and_then(|r| r.target.or(r.last_target))
            .or_else(|| self.ended_at(sid))
            .filter(|&p| self.pools.get(p).is_some_and(Option::is_some))
            .unwrap_or(SEED);
        Route::To {
            pool,
            generation: route.map_or(0, |r| r.generation),
            frame,
        }
    }

    /// Where the frames of session `sid`, closed lately, went last.
    pub fn ended_at(&self, sid: SessionId) -> Option<PoolId> {
        self.ended.get(&sid).copied()
    }

    /// Whether session `sid` closed resumably and is remembered for its
    /// slot's next owner.
    pub fn is_detached(&self, sid: SessionId) -> bool {
        self.detached.contains_key(&sid)
    }

    /// Detached sessions remembered now, and the bytes they count.
    pub fn detached(&self) -> (usize, usize) {
        (self.detached.len(), self.detached_bytes)
    }

    /// Whether session `sid` is open (has a route).
    pub fn is_routed(&self, sid: SessionId) -> bool {
        self.sessions.contains_key(&sid)
    }

    /// Session `sid` is bound (its Bind or Resume succeeded): if it moved
    /// while binding, it is announced where its frames go now.
    pub fn bound(&mut self, sid: SessionId) {
        let Some(route) = self.sessions.get_mut(&sid) else {
            return;
        };
        let binding_at = route.binding_at.take();
        if self.slots.is_some()
            && binding_at.is_some()
            && route.target.is_some()
            && binding_at != route.target
        {
            route.generation += 1;
            self.actions.push_back(Action::Move {
                sid,
                generation: route.generation,
                to: route.target,
                frames: Vec::new(),
            });
        }
    }

    /// Session `sid` ended at `now`: its route and held frames are
    /// forgotten. In cluster mode a resumable session (`announcement`: its
    /// `Announce`) that did not end cleanly is remembered as detached, so
    /// that its slot's next owner hears of it and its client can resume
    /// there (if its slot has no known owner now, the next one hears of it
    /// as soon as it is known). Frames it held are dropped: the owner
    /// counts what the last core confirmed, and the client resends the rest
    /// after resuming.
    pub fn close(&mut self, sid: SessionId, announcement: Option<Frame>, now: Instant) {
        let Some(route) = self.sessions.remove(&sid) else {
            return;
        };
        self.held_bytes -= route.held_bytes;
        self.holding.remove(&sid);
        let slot = route.slot.or_else(|| {
            let count = self.slots.as_ref()?.slot_count();
            Some(slot_of(route.user.as_deref()?, count))
        });
        if self.slots.is_some()
            && !route.ended_cleanly
            && !route.ended_by_core
            && let (Some(slot), Some(announce)) = (slot, announcement)
            && self.keep_detached(sid, slot, announce, now)
            && route.generation > 0
            && let Some(to) = route.target
        {
            // It moved: its re-announcement may have been still queued,
            // and is then never sent; the owner hears of it now (after its
            // end, on the same connection; a core that has it ignores this).
            self.tell_detached(sid, to, now);
        }
        self.remember_ended(sid, route.target.or(route.last_target).or(route.auth));
    }

    /// Remembers session `sid` as detached (if its `announce` says it can
    /// be resumed), within [`DETACHED_BYTES`]; whether it did.
    fn keep_detached(
        &mut self,
        sid: SessionId,
        slot: Slot,
        mut announce: Frame,
        now: Instant,
    ) -> bool {
        let Frame::Announce { sm: Some(sm), .. } = &mut announce else {
            return false;
        };
        if sm.id.is_empty() || sm.max == 0 {
            return false;
        }
        sm.detached = true;
        let lasts = Duration::from_secs(u64::from(sm.max)).saturating_sub(DETACHED_MARGIN);
        if lasts.is_zero() {
            return false;
        }
        let ends_at = now + Duration::from_secs(u64::from(sm.max));
        let forget_at = now + lasts;
        let bytes = announce.queued_bytes() + DETACHED_OVERHEAD;
        self.forget_detached(sid);
        // room from those ending no later than the new one, soonest first
        // (else the new one would be the first to go: not kept)
        let mut kept = self.detached_bytes;
        let mut goes = Vec::new();
        for &(at, other) in &self.detached_by_time {
            if kept + bytes <= DETACHED_BYTES || at > forget_at {
                break;
            }
            kept -= self.detached.get(&other).map_or(0, |d| d.bytes);
            goes.push(other);
        }
        if kept + bytes > DETACHED_BYTES {
            return false;
        }
        for other in goes {
            self.forget_detached(other);
        }
        self.detached_by_time.insert((forget_at, sid));
        self.detached_bytes += bytes;
        self.detached.insert(
            sid,
            DetachedSession {
                slot,
                announce,
                ends_at,
                forget_at,
                bytes,
            },
        );
        true
    }

    /// Tells pool `to`'s core of detached session `sid`, with what is left
    /// of its resumption time at `now`.
    fn tell_detached(&mut self, sid: SessionId, to: PoolId, now: Instant) {
        let Some(d) = self.detached.get(&sid) else {
            return;
        };
        let mut announce = d.announce.clone();
        if let Frame::Announce { sm: Some(sm), .. } = &mut announce {
            let left = d.ends_at.saturating_duration_since(now);
            sm.max = u32::try_from(left.as_secs()).unwrap_or(u32::MAX).max(1);
        }
        self.actions.push_back(Action::Move {
            sid,
            generation: 0,
            to: Some(to),
            frames: vec![announce],
        });
    }

    /// A core ended session `sid` for good (a `Kick` other than
    /// `connection-timeout`: it resumed elsewhere, expired, or was
    /// replaced): it is not remembered as detached, or forgotten if it is.
    pub fn ended_by_core(&mut self, sid: SessionId) {
        if let Some(route) = self.sessions.get_mut(&sid) {
            route.ended_by_core = true;
        }
        self.forget_detached(sid);
    }

    /// Forgets detached session `sid` (its time is over, or a core ended
    /// it).
    fn forget_detached(&mut self, sid: SessionId) {
        if let Some(d) = self.detached.remove(&sid) {
            self.detached_by_time.remove(&(d.forget_at, sid));
            self.detached_bytes -= d.bytes;
        }
    }

    /// Whether pool `pool` carries session `sid` now (what a returning
    /// connection re-announces). In single-core mode the seed carries all.
    pub fn carries(&self, pool: PoolId, sid: SessionId) -> bool {
        if self.slots.is_none() {
            return pool == SEED;
        }
        match self.sessions.get(&sid) {
            Some(r) if r.user.is_some() => r.target == Some(pool),
            Some(r) => r.auth == Some(pool),
            None => pool == SEED,
        }
    }

    /// Whether bound session `sid` is routed to another pool than `pool`
    /// now (it moved away from `pool`'s core). A session waiting for an
    /// owner has not moved anywhere yet.
    pub fn moved_away(&self, pool: PoolId, sid: SessionId) -> bool {
        self.slots.is_some()
            && self
                .sessions
                .get(&sid)
                .is_some_and(|r| r.user.is_some() && r.target.is_some_and(|t| t != pool))
    }

    /// A `SlotOwners` (numbered `version` by its core) arrived on pool
    /// `pool` at `now`; one older than the last taken from the same core
    /// (it came on another connection) is ignored.
    #[allow(clippy::too_many_arguments)]
    pub fn on_slot_owners(
        &mut self,
        pool: PoolId,
        core: &str,
        slot_count: u16,
        version: u64,
        owned: &[SlotEpoch],
        cores: &[CoreAddress],
        now: Instant,
    ) {
        // the last version taken from this core, on any pool (two pools may
        // reach one core for a while: see `duplicate` below)
        let last = self
            .pools
            .iter()
            .flatten()
            .filter(|p| p.member.as_deref() == Some(core))
            .map(|p| p.version)
            .max();
        let Some(state) = self.pools.get_mut(pool).and_then(Option::as_mut) else {
            return;
        };
        if let Some(last) = last.filter(|last| version < *last) {
            tracing::debug!(
                core,
                version,
                last,
                "an older SlotOwners than one taken already: ignored"
            );
            return;
        }
        state.version = version;
        let previous = state.member.replace(core.to_owned());
        state.forgotten = false;
        state.named_at = now;
        let mut changed = Vec::new();
        let slots = self.slots.get_or_insert_with(|| SlotMap::new(slot_count));
        if slots.slot_count() != slot_count.max(1) {
            tracing::warn!(
                core,
                slot_count,
                known = slots.slot_count(),
                "a core counts slots differently: its claims are ignored"
            );
            return;
        }
        if let Some(old) = previous.filter(|old| old != core) {
            // The core at this address restarted: what it claimed is void.
            changed.extend(slots.forget(&old));
        }
        let claims: Vec<(u16, u64)> = owned.iter().map(|s| (s.slot, s.epoch)).collect();
        changed.extend(slots.apply(core, &claims));
        // A pool that reports a member another live pool already has dials
        // the same core twice: the later one goes.
        let duplicate = self.pools.iter().enumerate().any(|(i, p)| {
            i != pool
                && p.as_ref()
                    .is_some_and(|p| p.member.as_deref() == Some(core) && !p.forgotten)
        });
        if duplicate && pool != SEED {
            tracing::info!(core, pool, "a second pool to one core: stopped");
            self.pools[pool] = None;
            self.actions.push_back(Action::StopPool { pool });
            // its sessions go to the other pool to the same core
            let orphans: Vec<SessionId> = self
                .sessions
                .iter()
                .filter(|(_, r)| r.target == Some(pool))
                .map(|(sid, _)| *sid)
                .collect();
            for sid in orphans {
                self.move_session(sid);
            }
        }
        for listed in cores {
            self.named(listed, now);
        }
        self.moved(&changed, now);
    }

    /// Pool `pool` has `up` welcomed connections at `now`.
    pub fn on_links(&mut self, pool: PoolId, up: usize, now: Instant) {
        let Some(state) = self.pools.get_mut(pool).and_then(Option::as_mut) else {
            return;
        };
        state.links_up = up;
        match (up, state.down_since) {
            (0, None) => state.down_since = Some(now),
            (1.., Some(_)) => state.down_since = None,
            _ => {}
        }
    }

    /// Timers due at `now`: cores down past the grace are forgotten (and
    /// the sessions whose Bind or Resume went to them, which no answer will
    /// reach, kicked so their clients try again), unlisted pools stopped,
    /// sessions that waited too long kicked.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut changed = Vec::new();
        let mut dead = Vec::new();
        for (id, pool) in self.pools.iter_mut().enumerate() {
            let Some(p) = pool else { continue };
            let down_long = p.down_since.is_some_and(|t| now >= t + DOWN_GRACE);
            if down_long
                && !p.forgotten
                && let (Some(member), Some(slots)) = (&p.member, self.slots.as_mut())
            {
                tracing::info!(
                    core = member,
                    "core unreachable: its slots wait for a new owner"
                );
                changed.extend(slots.forget(member));
                p.forgotten = true;
                dead.push(id);
            }
            if id != SEED && down_long && now >= p.named_at + UNLISTED_GRACE {
                *pool = None;
                self.actions.push_back(Action::StopPool { pool: id });
            }
        }
        changed.sort_unstable();
        changed.dedup();
        self.moved(&changed, now);
        let unanswered: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, r)| {
                let authenticating = r.user.is_none() && r.auth.is_some_and(|p| dead.contains(&p));
                authenticating || r.binding_at.is_some_and(|p| dead.contains(&p))
            })
            .map(|(sid, _)| *sid)
            .collect();
        for sid in unanswered {
            self.kick(sid, KickReason::CoreDied);
        }
        let late: Vec<SessionId> = self
            .holding
            .iter()
            .filter(|sid| {
                self.sessions
                    .get(sid)
                    .and_then(|r| r.held_since)
                    .is_some_and(|t| now >= t + HOLD_TIME)
            })
            .copied()
            .collect();
        for sid in late {
            self.kick(sid, KickReason::NoOwner);
        }
        while let Some(&(at, sid)) = self.detached_by_time.first()
            && at <= now
        {
            self.forget_detached(sid);
        }
    }

    /// When [`CoreMap::handle_timeout`] is due next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let pools = self.pools.iter().enumerate().flat_map(|(id, p)| {
            let p = p.as_ref()?;
            let down = p.down_since?;
            let forget = (!p.forgotten && p.member.is_some()).then_some(down + DOWN_GRACE);
            let stop = (id != SEED).then(|| (down + DOWN_GRACE).max(p.named_at + UNLISTED_GRACE));
            Some([forget, stop])
        });
        let holds = self
            .holding
            .iter()
            .filter_map(|sid| self.sessions.get(sid)?.held_since)
            .map(|t| t + HOLD_TIME);
        let detached = self.detached_by_time.first().map(|(at, _)| *at);
        pools.flatten().flatten().chain(holds).chain(detached).min()
    }

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Core pools now.
    pub fn pools(&self) -> usize {
        self.pools.iter().flatten().count()
    }

    /// Slots with a known owner.
    pub fn owned_slots(&self) -> usize {
        self.slots.as_ref().map_or(0, |s| {
            (0..s.slot_count())
                .filter(|n| s.owner(Slot(*n)).is_some())
                .count()
        })
    }

    /// Bytes of frames held for unknown owners.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// The pool a new session authenticates through: the seed if it is
    /// up, else the first pool that is, else the seed.
    fn auth_pool(&self) -> PoolId {
        let up = |p: &Option<PoolState>| p.as_ref().is_some_and(|p| p.links_up > 0);
        if up(&self.pools[SEED]) {
            return SEED;
        }
        self.pools.iter().position(up).unwrap_or(SEED)
    }

    /// A `cores` list names `core`: its pool is kept (or started).
    fn named(&mut self, core: &CoreAddress, now: Instant) {
        let existing = self
            .pools
            .iter_mut()
            .flatten()
            .find(|p| p.member.as_deref() == Some(&core.core) || p.address == core.address);
        if let Some(p) = existing {
            p.named_at = now;
            return;
        }
        // New ids first: a stopped pool's last link reports may still come
        // under its id; one is reused only once MAX_POOLS ids exist.
        let free = self.pools.iter().position(Option::is_none);
        let pool = match free {
            _ if self.pools.len() < MAX_POOLS => {
                self.pools.push(None);
                self.pools.len() - 1
            }
            Some(i) => i,
            None => {
                tracing::warn!(
                    core = core.core,
                    "{MAX_POOLS} core pools already: not dialed"
                );
                return;
            }
        };
        self.pools[pool] = Some(PoolState {
            address: core.address.clone(),
            member: Some(core.core.clone()),
            version: 0,
            links_up: 0,
            down_since: Some(now),
            forgotten: false,
            named_at: now,
        });
        self.actions.push_back(Action::StartPool {
            pool,
            address: core.address.clone(),
        });
    }

    /// Slots `changed` owner at `now`: their sessions move.
    fn moved(&mut self, changed: &[Slot], now: Instant) {
        if changed.is_empty() {
            return;
        }
        let changed: HashSet<Slot> = changed.iter().copied().collect();
        let slot_count = self.slots.as_ref().map(SlotMap::slot_count);
        let mut affected = Vec::new();
        for (sid, route) in &mut self.sessions {
            let Some(slot) = route.slot.or_else(|| {
                // bound in single-core mode: placed now
                route.slot = Some(slot_of(route.user.as_deref()?, slot_count?));
                route.slot
            }) else {
                continue;
            };
            if changed.contains(&slot) && !route.kicked {
                affected.push(*sid);
            }
        }
        for sid in affected {
            self.move_session(sid);
        }
        // detached sessions of the slots: their new owners hear of them
        let mut told: Vec<(SessionId, PoolId)> = Vec::new();
        for (sid, d) in &self.detached {
            if changed.contains(&d.slot)
                && let Some(to) = owner_pool(&self.pools, self.slots.as_ref(), Some(d.slot))
            {
                told.push((*sid, to));
            }
        }
        told.sort_unstable();
        for (sid, to) in told {
            self.tell_detached(sid, to, now);
        }
    }

    /// Sends session `sid` where its slot's owner is now (the same pool
    /// too: its core restarted, or took the slot back at a new epoch, and
    /// forgot the session), re-announced there, its held frames following.
    fn move_session(&mut self, sid: SessionId) {
        let to = {
            let Some(route) = self.sessions.get(&sid) else {
                return;
            };
            owner_pool(&self.pools, self.slots.as_ref(), route.slot)
        };
        let Some(route) = self.sessions.get_mut(&sid) else {
            return;
        };
        if route.target.is_some() {
            route.last_target = route.target;
        }
        route.target = to;
        route.generation += 1;
        let mut frames = Vec::new();
        if to.is_some() {
            self.held_bytes -= route.held_bytes;
            route.held_bytes = 0;
            route.held_since = None;
            self.holding.remove(&sid);
            frames.extend(route.held.drain(..));
            if frames
                .iter()
                .any(|f| matches!(f, Frame::Bind { .. } | Frame::Resume { .. }))
            {
                route.binding_at = to;
            }
        }
        self.actions.push_back(Action::Move {
            sid,
            generation: route.generation,
            to,
            frames,
        });
    }

    /// Remembers where closed session `sid`'s frames went last.
    fn remember_ended(&mut self, sid: SessionId, pool: Option<PoolId>) {
        let Some(pool) = pool else { return };
        if self.ended_order.len() >= ENDED_REMEMBERED
            && let Some(old) = self.ended_order.pop_front()
        {
            self.ended.remove(&old);
        }
        if self.ended.insert(sid, pool).is_none() {
            self.ended_order.push_back(sid);
        }
    }

    /// Kicks session `sid` for `reason`, dropping what it held.
    fn kick(&mut self, sid: SessionId, reason: KickReason) {
        let Some(route) = self.sessions.get_mut(&sid) else {
            return;
        };
        if route.kicked {
            return;
        }
        route.kicked = true;
        self.held_bytes -= route.held_bytes;
        route.held_bytes = 0;
        route.held.clear();
        route.held_since = None;
        self.holding.remove(&sid);
        self.actions.push_back(Action::Kick { sid, reason });
    }
}

/// The pool of the owner of `slot`, if the owner is known and has one.
fn owner_pool(
    pools: &[Option<PoolState>],
    slots: Option<&SlotMap>,
    slot: Option<Slot>,
) -> Option<PoolId> {
    let owner = slots?.owner(slot?)?;
    pools.iter().position(|p| {
        p.as_ref()
            .is_some_and(|p| p.member.as_deref() == Some(owner))
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use cm_protocol::{Kind, RouteHeader};

    use super::*;

    const SLOTS: u16 = 16;

    /// A new `SlotOwners` version (rising across the tests).
    fn word() -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn stanza(sid: SessionId, n: u8) -> Frame {
        Frame::Stanza {
            sid,
            header: RouteHeader {
                kind: Kind::Message,
                stanza_type: None,
                to: Some("b@x".into()),
                id: None,
                from: "u@x/r".into(),
            },
            payload: Bytes::from(vec![n; 8]),
        }
    }

    fn bind(sid: SessionId, user: &str) -> Frame {
        Frame::Bind {
            sid,
            user: user.into(),
            iq_id: "b".into(),
            resource: None,
            bind2: None,
        }
    }

    fn auth(sid: SessionId) -> Frame {
        Frame::AuthStart {
            sid,
            mechanism: "PLAIN".into(),
            data: Bytes::new(),
            client_ip: None,
            fast: Default::default(),
        }
    }

    fn core(name: &str, address: &str) -> CoreAddress {
        CoreAddress {
            core: name.into(),
            address: address.into(),
        }
    }

    fn claims(slots: &[(u16, u64)]) -> Vec<SlotEpoch> {
        slots
            .iter()
            .map(|&(slot, epoch)| SlotEpoch { slot, epoch })
            .collect()
    }

    fn actions(map: &mut CoreMap) -> Vec<Action> {
        std::iter::from_fn(|| map.poll_action()).collect()
    }

    /// The kicks among `map`'s actions (the others are dropped).
    fn kicks(map: &mut CoreMap) -> Vec<Action> {
        actions(map)
            .into_iter()
            .filter(|a| matches!(a, Action::Kick { .. }))
            .collect()
    }

    fn slot(user: &str) -> u16 {
        slot_of(user, SLOTS).0
    }

    /// A map in cluster mode: the seed is core a (pool 0), b is pool 1,
    /// both up; a owns every slot but `b_slots`, which b owns.
    fn two_cores(now: Instant, b_slots: &[u16]) -> CoreMap {
        let mut map = CoreMap::new("10.0.0.1:7000".into(), now);
        let cores = [core("a#1", "10.0.0.1:7000"), core("b#1", "10.0.0.2:7000")];
        let a: Vec<(u16, u64)> = (0..SLOTS)
            .filter(|s| !b_slots.contains(s))
            .map(|s| (s, 1))
            .collect();
        map.on_slot_owners(SEED, "a#1", SLOTS, word(), &claims(&a), &cores, now);
        assert_eq!(
            actions(&mut map),
            vec![Action::StartPool {
                pool: 1,
                address: "10.0.0.2:7000".into()
            }]
        );
        let b: Vec<(u16, u64)> = b_slots.iter().map(|&s| (s, 1)).collect();
        map.on_slot_owners(1, "b#1", SLOTS, word(), &claims(&b), &cores, now);
        map.on_links(SEED, 2, now);
        map.on_links(1, 2, now);
        assert_eq!(actions(&mut map), vec![]);
        map
    }

    /// Two users in different slots.
    fn users() -> (&'static str, &'static str) {
        let u = "alice@x";
        let v = ["bob@x", "carol@x", "dave@x", "erin@x"]
            .into_iter()
            .find(|v| slot(v) != slot(u))
            .expect("users in different slots");
        (u, v)
    }

    #[test]
    fn without_slot_owners_everything_goes_to_the_seed() {
        let now = Instant::now();
        let mut map = CoreMap::new("10.0.0.1:7000".into(), now);
        for frame in [auth(1), bind(1, "alice@x"), stanza(1, 1)] {
            assert_eq!(
                map.route(1, frame.clone(), now),
                Route::To {
                    pool: SEED,
                    generation: 0,
                    frame
                }
            );
        }
        map.bound(1);
        map.handle_timeout(now + Duration::from_secs(600));
        assert!(!map.is_cluster());
        assert_eq!(actions(&mut map), vec![]);
        assert!(map.carries(SEED, 1) && !map.carries(1, 1));
    }

    #[test]
    fn an_authentication_stays_with_the_core_it_started_at() {
        let now = Instant::now();
        let mut map = two_cores(now, &[]);
        // the seed goes down: a new session authenticates through b ...
        map.on_links(SEED, 0, now);
        let to = |r: Route| match r {
            Route::To { pool, .. } => pool,
            other => panic!("{other:?}"),
        };
        assert_eq!(to(map.route(7, auth(7), now)), 1);
        // ... and stays there when the seed is back
        map.on_links(SEED, 2, now);
        let response = Frame::AuthResponse {
            sid: 7,
            data: Bytes::new(),
        };
        assert_eq!(to(map.route(7, response, now)), 1);
        assert!(map.carries(1, 7) && !map.carries(SEED, 7));
        // a session starting now authenticates through the seed
        assert_eq!(to(map.route(8, auth(8), now)), SEED);
    }

    #[test]
    fn a_bound_session_goes_to_its_users_owner() {
        let (u, v) = users();
        let now = Instant::now();
        let mut map = two_cores(now, &[slot(v)]);
        for (sid, user, pool) in [(1, u, SEED), (2, v, 1)] {
            map.route(sid, auth(sid), now);
            let bound = map.route(sid, bind(sid, user), now);
            assert!(
                matches!(bound, Route::To { pool: p, .. } if p == pool),
                "{bound:?}"
            );
            map.bound(sid);
            let next = map.route(sid, stanza(sid, 1), now);
            assert!(
                matches!(next, Route::To { pool: p, .. } if p == pool),
                "{next:?}"
            );
            assert!(map.carries(pool, sid));
        }
        assert_eq!(actions(&mut map), vec![]);
    }

    #[test]
    fn frames_wait_for_an_unknown_owner_and_follow_its_claim_in_order() {
        let (u, _) = users();
        let now = Instant::now();
        let mut map = two_cores(now, &[slot(u)]);
        map.route(1, bind(1, u), now);
        map.bound(1);
        // b withdraws u's slot: nobody owns it
        map.on_slot_owners(1, "b#1", SLOTS, word(), &[], &[], now);
        let [
            Action::Move {
                sid: 1,
                generation: 1,
                to: None,
                frames,
            },
        ] = &actions(&mut map)[..]
        else {
            panic!("no move")
        };
        assert!(frames.is_empty());
        assert_eq!(map.route(1, stanza(1, 1), now), Route::Held);
        assert_eq!(map.route(1, stanza(1, 2), now), Route::Held);
        assert_eq!(map.held_bytes(), 2 * stanza(1, 1).queued_bytes());
        assert!(map.poll_timeout().is_some_and(|t| t <= now + HOLD_TIME));
        // a claims it at a later epoch: re-announced there, then the frames in order
        map.on_slot_owners(
            SEED,
            "a#1",
            SLOTS,
            word(),
            &claims(&[(slot(u), 2)]),
            &[],
            now,
        );
        assert_eq!(
            actions(&mut map),
            vec![Action::Move {
                sid: 1,
                generation: 2,
                to: Some(SEED),
                frames: vec![stanza(1, 1), stanza(1, 2)],
            }]
        );
        assert_eq!(map.held_bytes(), 0);
        assert!(matches!(
            map.route(1, stanza(1, 3), now),
            Route::To {
                pool: SEED,
                generation: 2,
                ..
            }
        ));
    }

    #[test]
    fn a_session_that_holds_too_much_or_waits_too_long_is_kicked() {
        let (u, v) = users();
        let now = Instant::now();
        let mut map = two_cores(now, &[slot(u), slot(v)]);
        map.route(1, bind(1, u), now);
        map.route(2, bind(2, v), now);
        map.bound(1);
        map.bound(2);
        map.on_links(1, 0, now);
        // b's links stay down past the grace: its slots have no owner
        map.handle_timeout(now + DOWN_GRACE);
        assert_eq!(actions(&mut map).len(), 2);
        let later = now + DOWN_GRACE;
        let big = Frame::Deliver {
            sid: 1,
            payload: Bytes::from(vec![0; HELD_BYTES_PER_SESSION]),
        };
        assert_eq!(map.route(1, big, later), Route::Dropped);
        assert_eq!(
            actions(&mut map),
            vec![Action::Kick {
                sid: 1,
                reason: KickReason::NoOwner
            }]
        );
        assert_eq!(map.route(1, stanza(1, 1), later), Route::Dropped);
        assert_eq!(map.route(2, stanza(2, 1), later), Route::Held);
        map.handle_timeout(later + HOLD_TIME);
        let kicks = kicks(&mut map);
        assert_eq!(
            kicks,
            vec![Action::Kick {
                sid: 2,
                reason: KickReason::NoOwner
            }]
        );
        assert_eq!(map.held_bytes(), 0);
    }

    #[test]
    fn a_move_to_another_core_raises_the_generation_and_re_announces_before_later_frames() {
        let (u, _) = users();
        let now = Instant::now();
        let mut map = two_cores(now, &[]);
        map.route(1, bind(1, u), now);
        map.bound(1);
        assert!(matches!(
            map.route(1, stanza(1, 1), now),
            Route::To {
                pool: SEED,
                generation: 0,
                ..
            }
        ));
        // b takes u's slot at a later epoch (a has not withdrawn yet)
        map.on_slot_owners(1, "b#1", SLOTS, word(), &claims(&[(slot(u), 2)]), &[], now);
        assert_eq!(
            actions(&mut map),
            vec![Action::Move {
                sid: 1,
                generation: 1,
                to: Some(1),
                frames: vec![]
            }]
        );
        // the driver queues the re-announcement before this frame
        assert!(matches!(
            map.route(1, stanza(1, 2), now),
            Route::To {
                pool: 1,
                generation: 1,
                ..
            }
        ));
        assert!(map.carries(1, 1) && !map.carries(SEED, 1));
        // what a still sends the session is not the session's any more
        assert!(map.moved_away(SEED, 1) && !map.moved_away(1, 1));
        // a's withdrawal moves nothing more
        let rest: Vec<_> = (0..SLOTS)
            .filter(|s| *s != slot(u))
            .map(|s| (s, 1))
            .collect();
        map.on_slot_owners(SEED, "a#1", SLOTS, word(), &claims(&rest), &[], now);
        assert_eq!(actions(&mut map), vec![]);
    }

    #[test]
    fn an_older_slot_owners_from_a_core_arriving_after_a_newer_one_changes_nothing() {
        // (the two came on different connections to the same core)
        let now = Instant::now();
        let (_, v) = users();
        let mut map = two_cores(now, &[]);
        map.route(2, auth(2), now);
        map.route(2, bind(2, v), now);
        map.bound(2);
        let newer = word();
        let older = newer - 1;
        let a_all: Vec<(u16, u64)> = (0..SLOTS).map(|s| (s, 1)).collect();
        let a_without_v: Vec<(u16, u64)> = a_all
            .iter()
            .copied()
            .filter(|&(s, _)| s != slot(v))
            .collect();
        // a gave v's slot up (newer), then its older word claiming it comes
        map.on_slot_owners(
            SEED,
            "a#1",
            SLOTS,
            newer,
            &claims(&a_without_v),
            &both_cores(),
            now,
        );
        assert_eq!(
            moves_of(actions(&mut map), 2).len(),
            1,
            "v waits for an owner"
        );
        map.on_slot_owners(
            SEED,
            "a#1",
            SLOTS,
            older,
            &claims(&a_all),
            &both_cores(),
            now,
        );
        assert_eq!(
            moves_of(actions(&mut map), 2),
            vec![],
            "ignored: v still waits"
        );
        assert_eq!(map.route(2, stanza(2, 1), now), Route::Held);
        // the same word again (sent after every Welcome) is taken
        map.on_slot_owners(
            SEED,
            "a#1",
            SLOTS,
            newer,
            &claims(&a_without_v),
            &both_cores(),
            now,
        );
        assert_eq!(moves_of(actions(&mut map), 2), vec![]);
        assert_eq!(map.owned_slots(), usize::from(SLOTS) - 1);
    }

    #[test]
    fn a_stale_claim_from_a_paused_core_moves_nothing() {
        let (u, _) = users();
        let now = Instant::now();
        let mut map = two_cores(now, &[]);
        map.route(1, bind(1, u), now);
        map.on_slot_owners(1, "b#1", SLOTS, word(), &claims(&[(slot(u), 5)]), &[], now);
        assert_eq!(actions(&mut map).len(), 1);
        // a wakes up and repeats its claim at epoch 1
        let all: Vec<_> = (0..SLOTS).map(|s| (s, 1)).collect();
        map.on_slot_owners(SEED, "a#1", SLOTS, word(), &claims(&all), &[], now);
        assert_eq!(actions(&mut map), vec![]);
        assert!(matches!(
            map.route(1, stanza(1, 1), now),
            Route::To { pool: 1, .. }
        ));
    }

    #[test]
    fn a_session_that_moved_while_binding_is_announced_where_it_went_once_bound() {
        let (u, _) = users();
        let now = Instant::now();
        let mut map = two_cores(now, &[]);
        map.route(1, bind(1, u), now);
        map.on_slot_owners(1, "b#1", SLOTS, word(), &claims(&[(slot(u), 2)]), &[], now);
        assert_eq!(actions(&mut map).len(), 1);
        // the Bind went to a; the session is announced to b once bound
        map.bound(1);
        assert_eq!(
            actions(&mut map),
            vec![Action::Move {
                sid: 1,
                generation: 2,
                to: Some(1),
                frames: vec![]
            }]
        );
    }

    #[test]
    fn a_restarted_core_at_the_same_address_loses_its_old_claims_and_a_dead_pool_is_stopped() {
        let (u, _) = users();
        let now = Instant::now();
        let mut map = two_cores(now, &[slot(u)]);
        assert_eq!(map.owned_slots(), usize::from(SLOTS));
        assert_eq!(map.pools(), 2);
        // b restarts as b#2 and claims nothing yet
        map.on_slot_owners(1, "b#2", SLOTS, word(), &[], &[], now);
        assert_eq!(map.owned_slots(), usize::from(SLOTS) - 1);
        // b goes away for good: a stops naming it
        map.on_links(1, 0, now);
        map.handle_timeout(now + DOWN_GRACE);
        assert_eq!(actions(&mut map), vec![]);
        let cores = [core("a#1", "10.0.0.1:7000")];
        let later = now + UNLISTED_GRACE;
        let a: Vec<_> = (0..SLOTS)
            .filter(|s| *s != slot(u))
            .map(|s| (s, 1))
            .collect();
        map.on_slot_owners(SEED, "a#1", SLOTS, word(), &claims(&a), &cores, later);
        map.handle_timeout(later);
        assert_eq!(actions(&mut map), vec![Action::StopPool { pool: 1 }]);
        assert_eq!(map.pools(), 1);
    }

    #[test]
    fn a_session_whose_bind_went_to_a_core_that_died_is_kicked_once_the_core_is_taken_for_dead() {
        let (u, v) = users();
        let now = Instant::now();
        let mut map = two_cores(now, &[slot(v)]);
        // v binds at b; u binds at a and is bound
        map.route(2, auth(2), now);
        map.route(2, bind(2, v), now);
        map.route(1, auth(1), now);
        map.route(1, bind(1, u), now);
        map.bound(1);
        assert_eq!(actions(&mut map), vec![]);
        // b dies before answering: nothing yet within the grace
        map.on_links(1, 0, now);
        map.handle_timeout(now + DOWN_GRACE / 2);
        assert_eq!(actions(&mut map), vec![]);
        // past it: v's Bind will never be answered, so v is kicked; u is not
        map.handle_timeout(now + DOWN_GRACE);
        let acts = actions(&mut map);
        assert!(
            acts.contains(&Action::Kick {
                sid: 2,
                reason: KickReason::CoreDied
            }),
            "{acts:?}"
        );
        assert!(
            !acts
                .iter()
                .any(|a| matches!(a, Action::Kick { sid: 1, .. })),
            "{acts:?}"
        );
        // once only
        map.handle_timeout(now + DOWN_GRACE * 2);
        assert!(
            !actions(&mut map)
                .iter()
                .any(|a| matches!(a, Action::Kick { sid: 2, .. }))
        );
    }

    #[test]
    fn a_session_authenticating_at_a_core_that_died_is_kicked_once_the_core_is_taken_for_dead() {
        let (u, _) = users();
        let now = Instant::now();
        let mut map = two_cores(now, &[]);
        // 3 is mid-SASL at the seed; 1 authenticated there and is bound
        map.route(3, auth(3), now);
        map.route(1, auth(1), now);
        map.route(1, bind(1, u), now);
        map.bound(1);
        let _ = actions(&mut map);
        map.on_links(SEED, 0, now);
        map.handle_timeout(now + DOWN_GRACE);
        let kicks = kicks(&mut map);
        assert_eq!(
            kicks,
            vec![Action::Kick {
                sid: 3,
                reason: KickReason::CoreDied
            }],
            "its SASL state died with the core; the bound one moves instead"
        );
    }

    #[test]
    fn a_bounce_is_never_held_or_dropped_and_goes_to_the_core_the_session_left() {
        let (_, v) = users();
        let now = Instant::now();
        let mut map = two_cores(now, &[slot(v)]);
        map.route(2, auth(2), now);
        map.route(2, bind(2, v), now);
        map.bound(2);
        let bounce = Frame::Bounce {
            sid: 2,
            to: format!("{v}/r"),
            payload: Bytes::from_static(b"<message/>"),
        };
        // b gives v's slot up and nobody has claimed it yet: stanzas wait,
        // a bounce goes back to b (which routes it on to the next owner)
        let cores = [core("a#1", "10.0.0.1:7000"), core("b#1", "10.0.0.2:7000")];
        map.on_slot_owners(1, "b#1", SLOTS, word(), &[], &cores, now);
        let _ = actions(&mut map);
        assert_eq!(map.route(2, stanza(2, 1), now), Route::Held);
        assert!(matches!(
            map.route(2, bounce.clone(), now),
            Route::To { pool: 1, .. }
        ));
        // closed: what is still queued for it finds where it went last
        map.close(2, None, now);
        assert!(!map.is_routed(2));
        assert_eq!(map.ended_at(2), Some(1));
        assert!(matches!(
            map.route(2, bounce, now),
            Route::To { pool: 1, .. }
        ));
        assert!(!map.is_routed(2), "routing a bounce makes no route");
    }

    /// Session 2 of user `v` (of b's slot) bound at b, then b gives the
    /// slot up at `now` (no owner known); also `v`'s `Announce` for sid 2.
    fn bound_then_unowned(now: Instant) -> (CoreMap, &'static str, Frame) {
        let (_, v) = users();
        let mut map = two_cores(now, &[slot(v)]);
        map.route(2, auth(2), now);
        map.route(2, bind(2, v), now);
        map.bound(2);
        map.on_slot_owners(1, "b#1", SLOTS, word(), &[], &both_cores(), now);
        let _ = actions(&mut map);
        let announce = Frame::Announce {
            sid: 2,
            jid: format!("{v}/r"),
            available: true,
            priority: 0,
            sm: Some(cm_protocol::SmSnapshot {
                id: "sm-2".into(),
                handled: 3,
                sent: 4,
                client_acked: 2,
                next_seq: 4,
                max: 300,
                detached: false,
            }),
        };
        (map, v, announce)
    }

    /// `announce` as a detached session's with `left` seconds to resume.
    fn detached(mut announce: Frame, left: u32) -> Frame {
        if let Frame::Announce { sm: Some(sm), .. } = &mut announce {
            sm.detached = true;
            sm.max = left;
        }
        announce
    }

    /// The frames of the moves of session `sid` among `acts`, and where to.
    fn moves_of(acts: Vec<Action>, sid: SessionId) -> Vec<(Option<PoolId>, Vec<Frame>)> {
        acts.into_iter()
            .filter_map(|a| match a {
                Action::Move {
                    sid: s, to, frames, ..
                } if s == sid => Some((to, frames)),
                _ => None,
            })
            .collect()
    }

    fn both_cores() -> [CoreAddress; 2] {
        [core("a#1", "10.0.0.1:7000"), core("b#1", "10.0.0.2:7000")]
    }

    #[test]
    fn a_resumable_session_closed_while_its_slot_has_no_owner_is_announced_detached_at_the_next_owner()
     {
        let now = Instant::now();
        // b gives the slot up; the client's stanza and the end wait
        let (mut map, v, announce) = bound_then_unowned(now);
        assert_eq!(map.route(2, stanza(2, 1), now), Route::Held);
        let end = Frame::SessionEnd {
            sid: 2,
            jid: Some(format!("{v}/r")),
            clean: false,
        };
        assert_eq!(map.route(2, end, now), Route::Held);
        map.close(2, Some(announce.clone()), now);
        assert!(!map.is_routed(2) && map.is_detached(2));
        assert_eq!(map.held_bytes(), 0, "what it held is dropped");
        // bounces still queued for it go to the core it left
        assert_eq!(map.ended_at(2), Some(1));
        // a claims the slot: it hears of the detached session, not the stanza
        let later = now + Duration::from_secs(1);
        map.on_slot_owners(
            SEED,
            "a#1",
            SLOTS,
            word(),
            &claims(&[(slot(v), 2)]),
            &both_cores(),
            later,
        );
        assert_eq!(
            moves_of(actions(&mut map), 2),
            vec![(Some(SEED), vec![detached(announce, 299)])]
        );
        assert!(map.is_detached(2), "kept for the moves after this one");
    }

    #[test]
    fn a_session_detached_at_its_owner_is_announced_to_each_next_owner_until_a_core_ends_it() {
        let now = Instant::now();
        let (_, v) = users();
        let mut map = two_cores(now, &[slot(v)]);
        map.route(2, auth(2), now);
        map.route(2, bind(2, v), now);
        map.bound(2);
        let (_, _, announce) = bound_then_unowned(now);
        // the client's stream is gone; its end went to b, which holds it
        let end = Frame::SessionEnd {
            sid: 2,
            jid: Some(format!("{v}/r")),
            clean: false,
        };
        assert!(matches!(map.route(2, end, now), Route::To { pool: 1, .. }));
        map.close(2, Some(announce.clone()), now);
        assert!(map.is_detached(2));
        assert_eq!(map.detached().0, 1);
        assert_eq!(actions(&mut map), vec![]);
        // b dies: while the slot has no owner nobody is told ...
        map.on_links(1, 0, now);
        map.handle_timeout(now + DOWN_GRACE);
        assert_eq!(moves_of(actions(&mut map), 2), vec![]);
        // ... then a claims it and hears of the session
        let later = now + Duration::from_secs(9);
        let claim = claims(&[(slot(v), 2)]);
        map.on_slot_owners(SEED, "a#1", SLOTS, word(), &claim, &both_cores(), later);
        assert_eq!(
            moves_of(actions(&mut map), 2),
            vec![(Some(SEED), vec![detached(announce.clone(), 291)])]
        );
        // the client resumed at a, which says so (a kick for the old
        // session): no later owner hears of it
        map.ended_by_core(2);
        assert_eq!(map.detached(), (0, 0));
        let b_back = claims(&[(slot(v), 3)]);
        map.on_links(1, 1, later);
        map.on_slot_owners(1, "b#2", SLOTS, word(), &b_back, &both_cores(), later);
        assert_eq!(moves_of(actions(&mut map), 2), vec![]);
    }

    #[test]
    fn a_session_that_closes_after_a_move_is_told_detached_to_its_new_owner_at_once() {
        // (its re-announcement may still have been queued, never to be sent)
        let now = Instant::now();
        let (mut map, v, announce) = bound_then_unowned(now);
        let claim = claims(&[(slot(v), 2)]);
        map.on_slot_owners(SEED, "a#1", SLOTS, word(), &claim, &both_cores(), now);
        let _ = actions(&mut map);
        map.close(2, Some(announce.clone()), now);
        assert_eq!(
            moves_of(actions(&mut map), 2),
            vec![(Some(SEED), vec![detached(announce.clone(), 300)])]
        );
        // one that never moved: its core has its end, nothing more
        let (_, v) = users();
        let mut map = two_cores(now, &[slot(v)]);
        map.route(2, bind(2, v), now);
        map.bound(2);
        map.close(2, Some(announce), now);
        assert!(map.is_detached(2));
        assert_eq!(moves_of(actions(&mut map), 2), vec![]);
    }

    #[test]
    fn a_session_that_ended_cleanly_or_for_good_at_a_core_or_cannot_resume_is_not_remembered() {
        let now = Instant::now();
        let (mut map, v, announce) = bound_then_unowned(now);
        let clean = Frame::SessionEnd {
            sid: 2,
            jid: Some(format!("{v}/r")),
            clean: true,
        };
        map.route(2, clean, now);
        map.close(2, Some(announce.clone()), now);
        assert!(!map.is_detached(2));
        // not resumable: an empty SM id
        let (mut map, _, mut announce) = bound_then_unowned(now);
        if let Frame::Announce { sm: Some(sm), .. } = &mut announce {
            sm.id.clear();
        }
        map.close(2, Some(announce), now);
        assert!(!map.is_detached(2));
        // one a core ended for good before it closed (its kick came first)
        let (mut map, _, announce) = bound_then_unowned(now);
        map.ended_by_core(2);
        map.close(2, Some(announce), now);
        assert!(!map.is_detached(2));
        // single-core mode keeps nothing
        let mut single = CoreMap::new("10.0.0.1:7000".into(), now);
        single.route(2, bind(2, v), now);
        let (_, _, announce) = bound_then_unowned(now);
        single.close(2, Some(announce), now);
        assert!(!single.is_detached(2));
    }

    #[test]
    fn a_detached_session_is_forgotten_before_its_resumption_time_ends() {
        let now = Instant::now();
        let (mut map, _, announce) = bound_then_unowned(now);
        map.close(2, Some(announce), now);
        let forget_at = now + Duration::from_secs(300) - DETACHED_MARGIN;
        assert_eq!(map.poll_timeout(), Some(forget_at));
        map.handle_timeout(forget_at - Duration::from_millis(1));
        assert!(map.is_detached(2));
        map.handle_timeout(forget_at);
        assert!(!map.is_detached(2));
        assert_eq!(map.detached(), (0, 0));
        assert_eq!(map.poll_timeout(), None);
        assert!(
            !actions(&mut map)
                .iter()
                .any(|a| matches!(a, Action::Kick { sid: 2, .. })),
            "nothing to kick: the session is gone"
        );
    }

    #[test]
    fn detached_sessions_past_their_byte_bound_go_soonest_to_expire_first() {
        let now = Instant::now();
        let (_, v) = users();
        let mut map = two_cores(now, &[slot(v)]);
        // announcements of 4 MiB each (a long resource), the first with
        // the shortest resumption time
        let big = |sid: SessionId, max: u32| Frame::Announce {
            sid,
            jid: format!("{v}/{}", "r".repeat(4 << 20)),
            available: true,
            priority: 0,
            sm: Some(cm_protocol::SmSnapshot {
                id: format!("sm-{sid}"),
                handled: 0,
                sent: 0,
                client_acked: 0,
                next_seq: 0,
                max,
                detached: false,
            }),
        };
        let fits = DETACHED_BYTES / (4 << 20);
        for sid in 1..=fits as u64 + 1 {
            map.route(sid, bind(sid, v), now);
            let max = if sid == 2 { 60 } else { 300 };
            map.close(sid, Some(big(sid, max)), now);
        }
        let (count, bytes) = map.detached();
        assert!(bytes <= DETACHED_BYTES, "{bytes}");
        assert_eq!(count, fits - 1);
        assert!(!map.is_detached(2), "the soonest to expire went first");
        assert!(map.is_detached(fits as u64 + 1), "the newest is kept");
        // a newcomer ending before all of them is not kept, and costs
        // none of them their place
        let sid = fits as u64 + 2;
        map.route(sid, bind(sid, v), now);
        map.close(sid, Some(big(sid, 30)), now);
        assert!(!map.is_detached(sid));
        assert_eq!(map.detached(), (count, bytes));
    }
}
