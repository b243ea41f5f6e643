//! Which slots this core owns: the sans-IO half of slot ownership.
//!
//! [`SlotLeases`] decides; the database keeps the truth. Every
//! `round_every` the machine asks for a [`Round`] (one transaction, see
//! [`super::LeaseStore`]): it renews this core's membership lease, gives
//! back slots it has handed over, claims unowned slots up to its fair
//! share, and returns every slot the core owns with its epoch, and the live
//! members. From the answer the machine tells its owner what changed, as
//! [`LeaseEvent`]s: a slot now owned (load and serve it), a slot lost (stop
//! at once), a slot to hand over (stop taking frames for it, drain, then
//! call [`SlotLeases::handed_over`]).
//!
//! **Locally** a lease counts as held until `lease` after the moment its
//! last successful round was *sent*: the database set its expiry later than
//! that, by its own clock, so the core stops serving before the database
//! lets anyone else take over (up to clock-rate drift, which fencing
//! covers). Past that moment, with no newer successful round (the database
//! unreachable, the process paused), every slot is lost, and the next round
//! rejoins: it gives back whatever the database still says this core owns
//! and claims afresh with new epochs, so nothing the old incarnation
//! started can pass a fence.
//!
//! **Fair share**: with `n` live members that are not draining, sorted by
//! id, member `i` should own `slots / n`, one more if `i < slots % n`. A
//! core claims only unowned slots (no owner, or an owner whose lease
//! expired) up to its share, and hands over slots beyond its share only
//! while some member owns fewer than its own share, in batches of
//! `handover_batch`: so a joining core gets slots as the others release
//! them, a dead core's slots are claimed by the survivors, and a draining
//! core (share 0) gives everything away.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use cm_protocol::slots::Slot;

/// A slot's ownership epoch: raised each time the slot changes owner, and
/// carried by every durable write done for the slot's users, which the
/// database refuses unless the epoch is still the slot's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub i64);

/// What a core needs to take part in slot ownership.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// This core's id, unique in the cluster and stable across restarts.
    pub core: String,
    /// This process's random number: two processes with the same `core`
    /// (a replacement started while the old one is paused) are two members
    /// and never own, or pass a fence for, the same slot at once.
    pub incarnation: u64,
    /// Where CMs and other cores reach this core (`host:port`).
    pub address: String,
    /// The cluster's slot count (the same for every core and CM).
    pub slots: u16,
    /// How long a membership lease lasts in the database without renewal:
    /// a dead core's slots move after at most `lease + round_every`.
    pub lease: Duration,
    /// How often a round renews the lease.
    pub round_every: Duration,
    /// Slots handed over at once (moves happen in pieces this size).
    pub handover_batch: usize,
}

impl LeaseConfig {
    /// Defaults for process `incarnation` (random, drawn by the caller) of
    /// `core` at `address`: 4096 slots, an 8 s lease renewed every 2 s (a
    /// dead core's slots move within 10 s), hand-overs of 256 (a core that joins three others gets its share in about four rounds).
    pub fn new(core: impl Into<String>, address: impl Into<String>, incarnation: u64) -> Self {
        Self {
            core: core.into(),
            incarnation,
            address: address.into(),
            slots: cm_protocol::slots::DEFAULT_SLOTS,
            lease: Duration::from_secs(8),
            round_every: Duration::from_secs(2),
            handover_batch: 256,
        }
    }

    /// The id this process takes part as: `core#incarnation`. It owns
    /// slots in the database and is what its writes' fences name.
    pub fn member(&self) -> String {
        format!("{}#{:016x}", self.core, self.incarnation)
    }
}

/// One lease round for the database to run in one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Round {
    /// Matches the round to its outcome.
    pub id: u64,
    /// The member taking part ([`LeaseConfig::member`]).
    pub core: String,
    /// Its address, published with its membership.
    pub address: String,
    /// The membership lease to set from the database's `now()`.
    pub lease: Duration,
    /// The core is draining: it claims nothing and others should not count
    /// it in their shares.
    pub draining: bool,
    /// Give back every slot the database says this core owns before
    /// claiming (the first round of a process, and after a lost lease).
    pub rejoin: bool,
    /// Slots handed over since the last round, to give back.
    pub release: Vec<Slot>,
    /// How many unowned slots to claim, at most.
    pub claim: u32,
}

/// What a round found, from the database.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoundOutcome {
    /// Every slot this core owns after the round, with its epoch.
    pub owned: Vec<(Slot, Epoch)>,
    /// The cores whose membership lease is live, sorted by id.
    pub members: Vec<Member>,
}

/// A live core, as a round saw it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Member {
    /// Its member id (`core#incarnation`).
    pub core: String,
    /// Where it is reached.
    pub address: String,
    /// Whether it is draining (giving its slots away).
    pub draining: bool,
    /// How many slots it owns.
    pub slots: u32,
}

/// A change of ownership the core must act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseEvent {
    /// The core owns `slot` from now, at `epoch`: load its users' state as
    /// they come and serve them.
    Owned {
        /// The slot.
        slot: Slot,
        /// The epoch its writes carry.
        epoch: Epoch,
    },
    /// The core no longer owns `slot`: stop serving its users at once.
    Lost {
        /// The slot.
        slot: Slot,
    },
    /// Hand `slot` over: stop taking frames for its users, finish what is
    /// under way, then call [`SlotLeases::handed_over`]. The slot is still
    /// owned (its writes still pass) until the next round gives it back.
    HandOver {
        /// The slot.
        slot: Slot,
    },
}

/// A slot this core owns.
#[derive(Clone, Copy, Debug)]
struct Held {
    epoch: Epoch,
    /// A hand-over was asked for and has not finished.
    handing_over: bool,
}

/// A round sent and not answered.
#[derive(Debug)]
struct InFlight {
    id: u64,
    sent: Instant,
    release: Vec<Slot>,
    rejoin: bool,
}

/// The sans-IO state machine of this core's slot ownership (module docs).
#[derive(Debug)]
pub struct SlotLeases {
    config: LeaseConfig,
    /// [`LeaseConfig::member`].
    member: String,
    held: BTreeMap<Slot, Held>,
    /// Slots handed over, to give back in the next round.
    handed_over: BTreeSet<Slot>,
    /// Until when the lease counts as held here; `None` while nothing is.
    valid_until: Option<Instant>,
    in_flight: Option<InFlight>,
    /// When the next round is due (if none is in flight).
    next_round: Instant,
    next_id: u64,
    members: Vec<Member>,
    rejoin: bool,
    draining: bool,
    /// Unowned slots to claim in the next round.
    claim: u32,
    events: VecDeque<LeaseEvent>,
}

impl SlotLeases {
    /// A core that owns nothing yet; its first round is due at `now`.
    pub fn new(config: LeaseConfig, now: Instant) -> Self {
        Self {
            member: config.member(),
            config,
            held: BTreeMap::new(),
            handed_over: BTreeSet::new(),
            valid_until: None,
            in_flight: None,
            next_round: now,
            next_id: 0,
            members: Vec::new(),
            rejoin: true,
            draining: false,
            claim: 0,
            events: VecDeque::new(),
        }
    }

    /// The round to run now, if one is due and none is in flight. Its
    /// outcome must come back through [`Self::handle_outcome`] (a failure
    /// too, within the store's deadline).
    pub fn poll_round(&mut self, now: Instant) -> Option<Round> {
        if self.in_flight.is_some() || now < self.next_round {
            return None;
        }
        self.next_id += 1;
        let release: Vec<Slot> = self.handed_over.iter().copied().collect();
        let round = Round {
            id: self.next_id,
            core: self.member.clone(),
            address: self.config.address.clone(),
            lease: self.config.lease,
            draining: self.draining,
            rejoin: self.rejoin,
            release: release.clone(),
            claim: if self.draining { 0 } else { self.claim },
        };
        self.in_flight = Some(InFlight {
            id: round.id,
            sent: now,
            release,
            rejoin: self.rejoin,
        });
        Some(round)
    }

    /// The outcome of round `id`: `None` if it failed (the database could
    /// not be reached or refused; nothing is known to have changed).
    pub fn handle_outcome(&mut self, id: u64, outcome: Option<RoundOutcome>, now: Instant) {
        let Some(sent) = self.in_flight.take_if(|f| f.id == id) else {
            return;
        };
        self.next_round = now + self.config.round_every;
        self.expire(now);
        let Some(outcome) = outcome else {
            return;
        };
        if self.rejoin && !sent.rejoin {
            // The lease ran out here while this round was under way: what
            // it renewed belongs to the old incarnation. Rejoin at once.
            self.next_round = now;
            return;
        }
        self.rejoin = false;
        for slot in &sent.release {
            self.handed_over.remove(slot);
        }
        let valid_until = sent.sent + self.config.lease;
        if valid_until <= now {
            // Answered too late to count: the database may already have
            // let others take over.
            self.lose_all();
            return;
        }
        self.valid_until = Some(valid_until);
        self.apply(&outcome.owned);
        self.members = outcome.members;
        self.plan(now);
    }

    /// Takes the current time: loses every slot if the lease ran out here.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire(now);
    }

    /// When [`Self::handle_timeout`] or [`Self::poll_round`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let round = self.in_flight.is_none().then_some(self.next_round);
        match (round, self.valid_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next change to act on.
    pub fn poll_event(&mut self) -> Option<LeaseEvent> {
        self.events.pop_front()
    }

    /// The owner finished handing `slot` over (after
    /// [`LeaseEvent::HandOver`]); the next round gives it back.
    pub fn handed_over(&mut self, slot: Slot) {
        if self.held.get(&slot).is_some_and(|h| h.handing_over) {
            self.held.remove(&slot);
            self.handed_over.insert(slot);
        }
    }

    /// Starts giving every slot away (before a planned shutdown); the next
    /// rounds announce it and hand slots over in batches.
    pub fn drain(&mut self, now: Instant) {
        self.draining = true;
        self.plan(now);
        self.next_round = self.next_round.min(now);
    }

    /// The epoch of `slot` if this core owns it now (a slot being handed
    /// over still counts until it is given back).
    pub fn epoch(&self, slot: Slot) -> Option<Epoch> {
        self.held.get(&slot).map(|h| h.epoch)
    }

    /// How many slots this core owns.
    pub fn owned(&self) -> usize {
        self.held.len()
    }

    /// The live members the last round saw, sorted by id.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Loses everything if the local lease ran out.
    fn expire(&mut self, now: Instant) {
        if self.valid_until.is_some_and(|t| now >= t) {
            self.lose_all();
        }
    }

    /// Every slot is lost; the next round rejoins.
    fn lose_all(&mut self) {
        for slot in std::mem::take(&mut self.held).into_keys() {
            self.events.push_back(LeaseEvent::Lost { slot });
        }
        self.handed_over.clear();
        self.valid_until = None;
        self.rejoin = true;
        self.claim = 0;
    }

    /// Makes `held` what the database says, telling the owner each change.
    fn apply(&mut self, owned: &[(Slot, Epoch)]) {
        let now_owned: BTreeMap<Slot, Epoch> = owned.iter().copied().collect();
        let gone: Vec<Slot> = self
            .held
            .iter()
            .filter(|(slot, held)| now_owned.get(slot) != Some(&held.epoch))
            .map(|(slot, _)| *slot)
            .collect();
        for slot in gone {
            self.held.remove(&slot);
            self.events.push_back(LeaseEvent::Lost { slot });
        }
        for (slot, epoch) in now_owned {
            if self.held.contains_key(&slot) || self.handed_over.contains(&slot) {
                continue;
            }
            self.held.insert(
                slot,
                Held {
                    epoch,
                    handing_over: false,
                },
            );
            self.events.push_back(LeaseEvent::Owned { slot, epoch });
        }
    }

    /// From the members: how many slots to claim next, which to hand over,
    /// and whether the next round should come at once.
    fn plan(&mut self, now: Instant) {
        let share = self.share();
        let keeping = self.held.values().filter(|h| !h.handing_over).count() as u32;
        let owned_by_live: u32 = self.members.iter().map(|m| m.slots).sum();
        let unowned = u32::from(self.config.slots).saturating_sub(owned_by_live);
        self.claim = share.saturating_sub(self.held.len() as u32);
        if self.claim > 0 && unowned > 0 && !self.draining {
            // A member died or gave slots back: claim them now, not a
            // round later.
            self.next_round = now;
        }
        if keeping <= share || !(self.draining || self.someone_below_share()) {
            return;
        }
        let handing = self.held.len() as u32 - keeping;
        let batch = (self.config.handover_batch as u32).saturating_sub(handing);
        let give: Vec<Slot> = self
            .held
            .iter()
            .rev()
            .filter(|(_, h)| !h.handing_over)
            .map(|(slot, _)| *slot)
            .take((keeping - share).min(batch) as usize)
            .collect();
        for slot in give {
            if let Some(h) = self.held.get_mut(&slot) {
                h.handing_over = true;
            }
            self.events.push_back(LeaseEvent::HandOver { slot });
        }
    }

    /// This core's fair share of slots among the live members that are not
    /// draining (itself counted even before a round has seen it).
    fn share(&self) -> u32 {
        if self.draining {
            return 0;
        }
        let mut active: Vec<&str> = self
            .members
            .iter()
            .filter(|m| !m.draining)
            .map(|m| m.core.as_str())
            .collect();
        if !active.contains(&self.member.as_str()) {
            active.push(&self.member);
            active.sort_unstable();
        }
        let index = active.iter().position(|c| *c == self.member).unwrap_or(0);
        share_of(self.config.slots, active.len(), index)
    }

    /// Whether a live member that is not draining owns fewer slots than
    /// its share.
    fn someone_below_share(&self) -> bool {
        let active: Vec<&Member> = self.members.iter().filter(|m| !m.draining).collect();
        active.iter().enumerate().any(|(i, m)| {
            m.core != self.member && m.slots < share_of(self.config.slots, active.len(), i)
        })
    }
}

/// Member `index`'s share of `slots` among `members` (sorted by id).
fn share_of(slots: u16, members: usize, index: usize) -> u32 {
    let (slots, members) = (u32::from(slots), members.max(1) as u32);
    slots / members + u32::from((index as u32) < slots % members)
}
