//! Push notifications (XEP-0357): a sans-IO service that decides when a
//! user's app servers are told that something arrived while no session of
//! the user could take it, and what the publish says. The router owns it:
//! it feeds the events ([`PushService::notify`] when a message or a
//! subscription request is stored or held for a user with no available,
//! attached session; [`PushService::user_online`]; the app servers'
//! answers) with the time, and carries out the [`PushAction`]s
//! ([`PushService::poll_action`]): load a user's registrations, send a
//! publish, remove a registration an app server refused for good. No
//! clocks, no storage, no sockets, no randomness (publish ids come from a
//! seed).
//!
//! **Coalescing.** One publish per burst per registration: the first
//! trigger after a quiet period opens a window of [`COALESCE`]; triggers
//! within it only add to the counts; at its end one publish goes out with
//! the counts since the user was last online and the last sender. While a
//! publish is in flight (or waits to be tried again) new triggers are
//! counted for the next one, which opens its window when the first ends.
//!
//! **Failures.** A publish is best effort. An answer of type `wait`, a
//! transient condition of another type (`internal-server-error`,
//! `remote-server-not-found`, `resource-constraint`,
//! `recipient-unavailable`, `service-unavailable`: an app server that is
//! a component not connected just now), or no answer within
//! [`PUBLISH_TIMEOUT`] is tried again after [`RETRY_FIRST`] doubling up to
//! [`RETRY_MAX`], [`MAX_TRIES`] tries in all, then given up (logged; the
//! registration stays, the next trigger starts afresh). Any other error
//! (`cancel`, `auth`, `modify`: `item-not-found`, `not-authorized`,
//! `forbidden`, …) disables the registration (XEP-0357 §7.1:
//! [`PushAction::Disable`]). Registrations are durable (the store's
//! `push_registrations`); this service holds a bounded cache of them.

mod notification;
mod request;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use xmpp_stream::StanzaCondition;

use crate::storage::{MAX_PUSH_REGISTRATIONS, PushRegistration};
use notification::{Pending, Publish, publish_iq};
pub use request::{
    MAX_JID_BYTES, MAX_NODE_BYTES, MAX_OPTIONS_BYTES, PushRequest, RequestError, parse_request,
    publish_error,
};

/// `urn:xmpp:push:0`: the namespace of `<enable/>`, `<disable/>` and
/// `<notification/>`, and the feature an account's disco#info lists.
pub const NS: &str = "urn:xmpp:push:0";
/// The account feature (XEP-0357 §4.1), listed in the disco#info of a
/// user's bare JID.
pub const FEATURE: &str = NS;
/// The `FORM_TYPE` of the summary a notification holds.
pub const SUMMARY: &str = "urn:xmpp:push:summary";
/// What every publish id starts with: an IQ result or error to a user's
/// bare JID with such an id answers a publish (see
/// [`PushService::published`]).
pub const ID_PREFIX: &str = "push-";

/// How long the first trigger after a quiet period waits for more before
/// its registration's publish goes out.
pub const COALESCE: Duration = Duration::from_secs(2);
/// How long a publish waits for the app server's answer before it counts
/// as failed (and is tried again).
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// The pause before the first new try of a failed publish; it doubles
/// with each try, up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest pause between tries.
pub const RETRY_MAX: Duration = Duration::from_secs(300);
/// Tries of one publish (the first included) before it is given up.
pub const MAX_TRIES: u32 = 8;
/// Users whose registrations (and pending counts) are cached, loading
/// ones included; past it the least recently used is forgotten.
pub const MAX_CACHED_USERS: usize = 100_000;
/// Bytes of the cache (registrations with their forms, senders and
/// bodies, plus [`USER_OVERHEAD`] a user and [`REGISTRATION_OVERHEAD`] a
/// registration); past it the least recently used users are forgotten.
pub const MAX_CACHED_BYTES: usize = 64 * 1024 * 1024;
/// What a cached user is counted in [`MAX_CACHED_BYTES`] beyond its name
/// and pending sender and body.
pub const USER_OVERHEAD: usize = 192;
/// What a cached registration is counted beyond its JID, node and form.
pub const REGISTRATION_OVERHEAD: usize = 160;
/// Users whose registrations are being loaded at once; a trigger for a
/// user not cached past it is dropped (no notification).
pub const MAX_LOADING: usize = 1024;
/// Publishes sent and not answered at once; past it due publishes wait,
/// in order, for one to end.
pub const MAX_IN_FLIGHT: usize = 10_000;
/// Enables and disables of a user remembered while its registrations
/// load; past it they are forgotten and the registrations loaded again.
pub const MAX_OPS_WHILE_LOADING: usize = 32;
/// Most bytes of a message body a notification carries (cut at a
/// character boundary), when bodies are sent at all.
pub const MAX_BODY_BYTES: usize = 512;

/// What the router tells the service about (a user with no available
/// session, or only detached ones).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// A message was stored or held for the user.
    Message {
        /// The sender's bare JID.
        from: String,
        /// The body text, if the message has one.
        body: Option<String>,
    },
    /// A subscription request arrived for the user.
    Subscription {
        /// The requester's bare JID.
        from: String,
    },
}

/// The type of an app server's IQ error (RFC 6120 §8.3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorType {
    /// Retry after providing credentials.
    Auth,
    /// Do not retry (the error cannot be remedied).
    Cancel,
    /// Proceed (the condition was only a warning).
    Continue,
    /// Retry after changing the data sent.
    Modify,
    /// Retry after waiting (the error is temporary).
    Wait,
}

impl ErrorType {
    /// The type of an `<error type=…/>`, if known.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "auth" => ErrorType::Auth,
            "cancel" => ErrorType::Cancel,
            "continue" => ErrorType::Continue,
            "modify" => ErrorType::Modify,
            "wait" => ErrorType::Wait,
            _ => return None,
        })
    }
}

/// Whether an error answering a publish disables its registration (else
/// the publish is tried again): see the module docs.
pub fn is_permanent(error: ErrorType, condition: StanzaCondition) -> bool {
    use StanzaCondition::*;
    match error {
        ErrorType::Wait | ErrorType::Continue => false,
        ErrorType::Auth | ErrorType::Cancel | ErrorType::Modify => !matches!(
            condition,
            InternalServerError
                | RemoteServerNotFound
                | ResourceConstraint
                | RecipientUnavailable
                | ServiceUnavailable
        ),
    }
}

/// What the service decided (see [`PushService::poll_action`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushAction {
    /// Load the user's registrations (the store's `push_registrations`)
    /// and report [`PushService::registrations_loaded`], or
    /// [`PushService::load_failed`].
    LoadRegistrations {
        /// The user (local part).
        user: String,
    },
    /// Send this IQ to the app server and report its answer
    /// ([`PushService::published`], [`PushService::publish_failed`]);
    /// a publish not answered within [`PUBLISH_TIMEOUT`] is tried again
    /// by the service itself. The IQ is complete, `from` the user's bare
    /// JID.
    Publish {
        /// The IQ's id (it starts with [`ID_PREFIX`]).
        id: String,
        /// The user (local part) it notifies.
        user: String,
        /// The app server's push service.
        to: String,
        /// The `<iq type='set'/>`.
        payload: Bytes,
    },
    /// The app server refused a publish for good: remove the registration
    /// from storage (`push_disable` with this node). The service has
    /// forgotten it already.
    Disable {
        /// The user (local part).
        user: String,
        /// The app server's push service.
        jid: String,
        /// The node.
        node: String,
    },
}

/// The service's counters (for metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PushStats {
    /// Publishes sent (tries included).
    pub published: u64,
    /// Publishes the app server accepted.
    pub accepted: u64,
    /// Tries that failed transiently or timed out.
    pub failed: u64,
    /// Publishes given up after [`MAX_TRIES`].
    pub given_up: u64,
    /// Registrations disabled on a permanent error.
    pub disabled: u64,
    /// Triggers dropped: too many users loading ([`MAX_LOADING`]), or a
    /// user's registrations could not be loaded.
    pub dropped: u64,
    /// Users forgotten to stay within the cache's bounds.
    pub evicted: u64,
}

/// A registration's key in the service.
type RegId = u64;

/// Where a registration's notification stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Nothing to send.
    Idle,
    /// A burst's window, ending then.
    Window(Instant),
    /// Due, waiting for a place among the publishes in flight
    /// ([`MAX_IN_FLIGHT`]); `tries` made of it so far.
    Ready { seq: u64, tries: u32 },
    /// Sent as `id`, unanswered; it times out at `deadline`.
    InFlight {
        id: String,
        deadline: Instant,
        tries: u32,
    },
    /// Failed `tries` times; tried again at `until`.
    Backoff { until: Instant, tries: u32 },
}

/// One cached registration.
struct Reg {
    user: String,
    jid: String,
    node: String,
    /// The publish-options form as this server writes it (checked).
    options: Option<Bytes>,
    created: i64,
    phase: Phase,
    /// The first trigger not covered by a publish sent (or in flight).
    dirty_since: Option<Instant>,
}

impl Reg {
    fn bytes(&self) -> usize {
        REGISTRATION_OVERHEAD
            + self.jid.len()
            + self.node.len()
            + self.options.as_ref().map_or(0, Bytes::len)
    }
}

/// An enable or disable that came while the user's registrations loaded.
enum Op {
    Enable(PushRegistration),
    Disable { jid: String, node: Option<String> },
}

/// One cached user.
#[derive(Default)]
struct User {
    /// Its registrations; `None` while they load.
    regs: Option<Vec<RegId>>,
    /// What came while they load, applied over what loads.
    ops: Vec<Op>,
    /// Too many ops came while loading: load again.
    reload: bool,
    /// The counts since the user was last online.
    pending: Pending,
    /// The first trigger while the registrations loaded.
    first_unseen: Option<Instant>,
    /// Its place in the LRU order.
    lru: u64,
    /// What it is counted in the cache's bytes.
    bytes: usize,
}

/// The service (see the module docs).
pub struct PushService {
    /// The users' domain (publishes come from their bare JIDs).
    domain: String,
    include_body: bool,
    include_sender: bool,
    users: HashMap<String, User>,
    /// Users by last use (LRU order → user).
    lru: BTreeMap<u64, String>,
    lru_next: u64,
    loading: usize,
    bytes: usize,
    regs: HashMap<RegId, Reg>,
    reg_next: RegId,
    /// Each registration's one deadline (window end, retry, IQ timeout).
    timers: BTreeSet<(Instant, RegId)>,
    /// Publishes in flight by id.
    in_flight: HashMap<String, RegId>,
    /// Due registrations waiting for a place in flight, in order.
    ready: BTreeMap<u64, RegId>,
    ready_next: u64,
    /// The last time an input said.
    now: Option<Instant>,
    seed: u64,
    ids: u64,
    stats: PushStats,
    out: VecDeque<PushAction>,
}

impl PushService {
    /// The service for the users of `domain`; publish ids derive from
    /// `seed` (give each process a random one, so that ids do not repeat
    /// across restarts). Message bodies are not sent (see
    /// [`PushService::with_include_body`]).
    pub fn new(domain: &str, seed: u64) -> Self {
        Self {
            domain: domain.to_owned(),
            include_body: false,
            include_sender: false,
            users: HashMap::new(),
            lru: BTreeMap::new(),
            lru_next: 0,
            loading: 0,
            bytes: 0,
            regs: HashMap::new(),
            reg_next: 0,
            timers: BTreeSet::new(),
            in_flight: HashMap::new(),
            ready: BTreeMap::new(),
            ready_next: 0,
            now: None,
            seed,
            ids: 0,
            stats: PushStats::default(),
            out: VecDeque::new(),
        }
    }

    /// Sends the last message's body (`last-message-body`, at most
    /// [`MAX_BODY_BYTES`]) to the app servers: off by default, since it
    /// passes through third parties (XEP-0357 §9).
    pub fn with_include_body(mut self, on: bool) -> Self {
        self.include_body = on;
        self
    }

    /// Puts the sender's bare JID in notifications (`last-message-sender`;
    /// off by default: the app server, a third party, would learn who
    /// writes to whom).
    pub fn with_include_sender(mut self, on: bool) -> Self {
        self.include_sender = on;
        self
    }

    /// The next action to carry out.
    pub fn poll_action(&mut self) -> Option<PushAction> {
        self.out.pop_front()
    }

    /// The service's counters.
    pub fn stats(&self) -> PushStats {
        self.stats
    }

    /// Users cached (loading ones included).
    pub fn users_cached(&self) -> usize {
        self.users.len()
    }

    /// Publishes sent and not answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    // ---- inputs ----

    /// A message or subscription request for `user` (local part) arrived
    /// at `now` while no available session of theirs could take it.
    pub fn notify(&mut self, now: Instant, user: &str, trigger: Trigger) {
        self.now = Some(now);
        if !self.ensure_user(user) {
            self.stats.dropped += 1;
            tracing::debug!(user, "push: too many users loading, trigger dropped");
            return;
        }
        let include_body = self.include_body;
        let include_sender = self.include_sender;
        let Some(u) = self.users.get_mut(user) else {
            return;
        };
        let p = &mut u.pending;
        match trigger {
            Trigger::Message { from, body } => {
                p.messages = p.messages.saturating_add(1);
                p.last_sender = include_sender.then_some(from);
                p.last_body = body.filter(|_| include_body).map(cut_body);
            }
            Trigger::Subscription { .. } => p.subscriptions = p.subscriptions.saturating_add(1),
        }
        let ids = match &u.regs {
            None => {
                u.first_unseen.get_or_insert(now);
                Vec::new()
            }
            Some(ids) => ids.clone(),
        };
        for id in ids {
            self.triggered(id, now);
        }
        self.recount(user);
        self.make_room();
    }

    /// An available session of `user` came: the pending counts start
    /// again from zero, and nothing waiting is sent (a publish in flight
    /// is not tried again).
    pub fn user_online(&mut self, user: &str) {
        let Some(u) = self.users.get_mut(user) else {
            return;
        };
        u.pending = Pending::default();
        u.first_unseen = None;
        let ids = u.regs.clone().unwrap_or_default();
        for id in ids {
            if let Some(reg) = self.regs.get_mut(&id) {
                reg.dirty_since = None;
                if !matches!(reg.phase, Phase::InFlight { .. }) {
                    self.set_phase(id, Phase::Idle);
                }
            }
        }
        self.recount(user);
    }

    /// The router stored `registration` for `user` (an `<enable/>`): the
    /// cache, if it holds the user, takes it (replacing the one of the
    /// same JID and node; past [`MAX_PUSH_REGISTRATIONS`] the oldest goes,
    /// as in storage).
    pub fn enable(&mut self, user: &str, registration: PushRegistration) {
        let Some(u) = self.users.get_mut(user) else {
            return;
        };
        if u.regs.is_none() {
            return self.remember_op(user, Op::Enable(registration));
        }
        self.add_reg(user, registration);
        self.recount(user);
        self.make_room();
    }

    /// The router removed `user`'s registration of `jid` and `node` (all
    /// of `jid`'s with no node) from storage (a `<disable/>`): nothing
    /// more is published to it.
    pub fn disable(&mut self, user: &str, jid: &str, node: Option<&str>) {
        let Some(u) = self.users.get_mut(user) else {
            return;
        };
        let Some(ids) = u.regs.clone() else {
            let op = Op::Disable {
                jid: jid.to_owned(),
                node: node.map(str::to_owned),
            };
            return self.remember_op(user, op);
        };
        for id in ids {
            let matches = self.regs.get(&id).is_some_and(|r| {
                request::same_jid(&r.jid, jid) && node.is_none_or(|n| n == r.node)
            });
            if matches {
                self.drop_reg(id);
            }
        }
        self.recount(user);
    }

    /// The registrations asked for by [`PushAction::LoadRegistrations`]
    /// (oldest first, as the store lists them); triggers that came
    /// meanwhile open their windows from the first of them.
    pub fn registrations_loaded(&mut self, user: &str, registrations: Vec<PushRegistration>) {
        let Some(u) = self.users.get_mut(user) else {
            return;
        };
        if u.regs.is_some() {
            return;
        }
        if u.reload {
            u.reload = false;
            u.ops.clear();
            self.out.push_back(PushAction::LoadRegistrations {
                user: user.to_owned(),
            });
            return;
        }
        u.regs = Some(Vec::new());
        let ops = std::mem::take(&mut u.ops);
        let first = u.first_unseen.take().filter(|_| !u.pending.is_empty());
        self.loading -= 1;
        let mut registrations = registrations;
        registrations.sort_by_key(|r| r.created);
        for r in registrations {
            self.add_reg(user, r);
        }
        for op in ops {
            match op {
                Op::Enable(r) => self.add_reg(user, r),
                Op::Disable { jid, node } => {
                    let ids = self.users.get(user).and_then(|u| u.regs.clone());
                    for id in ids.unwrap_or_default() {
                        let matches = self.regs.get(&id).is_some_and(|r| {
                            request::same_jid(&r.jid, &jid)
                                && node.as_ref().is_none_or(|n| *n == r.node)
                        });
                        if matches {
                            self.drop_reg(id);
                        }
                    }
                }
            }
        }
        if let Some(first) = first {
            let ids = self.users.get(user).and_then(|u| u.regs.clone());
            for id in ids.unwrap_or_default() {
                self.triggered(id, first);
            }
        }
        self.recount(user);
        self.make_room();
    }

    /// The registrations of `user` could not be loaded: the triggers that
    /// waited are dropped (the next one loads them again).
    pub fn load_failed(&mut self, user: &str) {
        if self.users.get(user).is_some_and(|u| u.regs.is_none()) {
            tracing::warn!(user, "push: registrations could not be loaded");
            self.stats.dropped += 1;
            self.forget_user(user);
        }
    }

    /// The app server `from` answered publish `id` with a result at
    /// `now`. False if `id` is no publish in flight to `from` (a late or
    /// stray answer, which the router drops).
    pub fn published(&mut self, now: Instant, id: &str, from: &str) -> bool {
        self.now = Some(now);
        let Some(reg_id) = self.answered(id, from) else {
            return false;
        };
        self.stats.accepted += 1;
        self.finished(reg_id, now);
        self.drain_ready(now);
        true
    }

    /// The app server `from` answered publish `id` with an error of
    /// `error` type and `condition` at `now`: the publish is tried again
    /// later, or its registration disabled ([`is_permanent`]). False if
    /// `id` is no publish in flight to `from`.
    pub fn publish_failed(
        &mut self,
        now: Instant,
        id: &str,
        from: &str,
        error: ErrorType,
        condition: StanzaCondition,
    ) -> bool {
        self.now = Some(now);
        let Some(reg_id) = self.answered(id, from) else {
            return false;
        };
        if is_permanent(error, condition) {
            if let Some(reg) = self.regs.get(&reg_id) {
                tracing::info!(
                    user = %reg.user,
                    jid = %reg.jid,
                    %condition,
                    "push: the app server refused a publish; registration disabled"
                );
                self.stats.disabled += 1;
                self.out.push_back(PushAction::Disable {
                    user: reg.user.clone(),
                    jid: reg.jid.clone(),
                    node: reg.node.clone(),
                });
                let user = reg.user.clone();
                self.drop_reg(reg_id);
                self.recount(&user);
            }
        } else {
            self.failed_try(reg_id, now);
        }
        self.drain_ready(now);
        true
    }

    /// The earliest instant [`PushService::handle_timeout`] has work at
    /// (a window's end, a retry, a publish's timeout; now, if due
    /// publishes wait for a place in flight that is free).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timer = self.timers.first().map(|(at, _)| *at);
        let ready = if self.ready.is_empty() || self.in_flight.len() >= MAX_IN_FLIGHT {
            None
        } else {
            self.now
        };
        timer.into_iter().chain(ready).min()
    }

    /// Time reached `now`: windows that ended publish, retries due are
    /// sent, publishes unanswered past [`PUBLISH_TIMEOUT`] fail.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = Some(now);
        while let Some(&(at, id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, id));
            let Some(reg) = self.regs.get(&id) else {
                continue;
            };
            match reg.phase.clone() {
                Phase::Window(_) => self.fire(id, 0, now),
                Phase::Backoff { tries, .. } => self.fire(id, tries, now),
                Phase::InFlight { tries, .. } => {
                    tracing::debug!(user = %reg.user, jid = %reg.jid, "push: publish timed out");
                    self.set_phase(id, Phase::Backoff { until: now, tries });
                    self.failed_try(id, now);
                }
                Phase::Idle | Phase::Ready { .. } => {}
            }
        }
        self.drain_ready(now);
    }

    /// Forgets the users `keep` says no to (in a cluster: their slots went
    /// to another core, which loads their registrations itself); their
    /// publishes in flight are abandoned.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let gone: Vec<String> = self
            .users
            .keys()
            .filter(|u| !keep(u.as_str()))
            .cloned()
            .collect();
        for user in gone {
            self.forget_user(&user);
        }
    }

    // ---- the machinery ----

    /// Caches `user` (touching it), loading it if new; false if it is not
    /// cached and no more loads may start.
    fn ensure_user(&mut self, user: &str) -> bool {
        self.lru_next += 1;
        let seq = self.lru_next;
        if let Some(u) = self.users.get_mut(user) {
            self.lru.remove(&u.lru);
            u.lru = seq;
            self.lru.insert(seq, user.to_owned());
            return true;
        }
        if self.loading >= MAX_LOADING {
            return false;
        }
        self.users.insert(
            user.to_owned(),
            User {
                lru: seq,
                ..User::default()
            },
        );
        self.lru.insert(seq, user.to_owned());
        self.loading += 1;
        self.out.push_back(PushAction::LoadRegistrations {
            user: user.to_owned(),
        });
        self.recount(user);
        self.make_room();
        true
    }

    /// Forgets the least recently used users (not loading) until the
    /// cache is within its bounds.
    fn make_room(&mut self) {
        while self.users.len() > MAX_CACHED_USERS || self.bytes > MAX_CACHED_BYTES {
            let victim = self
                .lru
                .values()
                .find(|u| self.users.get(*u).is_some_and(|u| u.regs.is_some()))
                .cloned();
            let Some(victim) = victim else {
                return;
            };
            self.stats.evicted += 1;
            self.forget_user(&victim);
        }
    }

    /// Drops a user and everything of theirs.
    fn forget_user(&mut self, user: &str) {
        let Some(u) = self.users.remove(user) else {
            return;
        };
        self.lru.remove(&u.lru);
        self.bytes -= u.bytes;
        match u.regs {
            None => self.loading -= 1,
            Some(ids) => {
                for id in ids {
                    self.set_phase(id, Phase::Idle);
                    self.regs.remove(&id);
                }
            }
        }
    }

    /// Counts `user`'s bytes again.
    fn recount(&mut self, user: &str) {
        let Some(u) = self.users.get_mut(user) else {
            return;
        };
        let regs: usize = u
            .regs
            .iter()
            .flatten()
            .filter_map(|id| self.regs.get(id))
            .map(Reg::bytes)
            .sum();
        let ops: usize = u
            .ops
            .iter()
            .map(|op| match op {
                Op::Enable(r) => {
                    REGISTRATION_OVERHEAD
                        + r.jid.len()
                        + r.node.len()
                        + r.options.as_ref().map_or(0, Bytes::len)
                }
                Op::Disable { jid, node } => {
                    REGISTRATION_OVERHEAD + jid.len() + node.as_ref().map_or(0, String::len)
                }
            })
            .sum();
        let bytes = USER_OVERHEAD + user.len() + u.pending.heap_bytes() + regs + ops;
        self.bytes = self.bytes - u.bytes + bytes;
        u.bytes = bytes;
    }

    /// Keeps an enable or disable for when the user's registrations have
    /// loaded (or, past [`MAX_OPS_WHILE_LOADING`], loads them again).
    fn remember_op(&mut self, user: &str, op: Op) {
        let Some(u) = self.users.get_mut(user) else {
            return;
        };
        if u.reload || u.ops.len() >= MAX_OPS_WHILE_LOADING {
            u.ops.clear();
            u.reload = true;
        } else {
            u.ops.push(op);
        }
        self.recount(user);
        self.make_room();
    }

    /// Adds (or replaces) a registration of a loaded user; past
    /// [`MAX_PUSH_REGISTRATIONS`] the oldest goes. One whose stored form
    /// is damaged is left out (logged): a publish without its credentials
    /// would only be refused.
    fn add_reg(&mut self, user: &str, r: PushRegistration) {
        let options = match r.options {
            None => None,
            Some(raw) => match request::stored_options(&raw) {
                Some(form) => Some(Bytes::from(form.to_bytes(xmpp_stream::ns::CLIENT))),
                None => {
                    tracing::warn!(
                        user,
                        jid = %r.jid,
                        "push: a stored publish-options form does not parse; registration left out"
                    );
                    return;
                }
            },
        };
        let Some(ids) = self.users.get(user).and_then(|u| u.regs.clone()) else {
            return;
        };
        let same = ids.iter().copied().find(|id| {
            self.regs
                .get(id)
                .is_some_and(|x| x.node == r.node && request::same_jid(&x.jid, &r.jid))
        });
        if let Some(reg) = same.and_then(|id| self.regs.get_mut(&id)) {
            reg.options = options;
            reg.created = r.created;
            return;
        }
        self.reg_next += 1;
        let id = self.reg_next;
        self.regs.insert(
            id,
            Reg {
                user: user.to_owned(),
                jid: r.jid,
                node: r.node,
                options,
                created: r.created,
                phase: Phase::Idle,
                dirty_since: None,
            },
        );
        let Some(list) = self.users.get_mut(user).and_then(|u| u.regs.as_mut()) else {
            return;
        };
        list.push(id);
        let bound = usize::try_from(MAX_PUSH_REGISTRATIONS).unwrap_or(usize::MAX);
        if list.len() > bound {
            let regs = &self.regs;
            let oldest = list
                .iter()
                .copied()
                .min_by_key(|id| regs.get(id).map_or(i64::MIN, |r| r.created));
            if let Some(oldest) = oldest {
                self.drop_reg(oldest);
            }
        }
    }

    /// Removes a registration from its user and from every index.
    fn drop_reg(&mut self, id: RegId) {
        self.set_phase(id, Phase::Idle);
        let Some(reg) = self.regs.remove(&id) else {
            return;
        };
        if let Some(list) = self.users.get_mut(&reg.user).and_then(|u| u.regs.as_mut()) {
            list.retain(|x| *x != id);
        }
    }

    /// Moves a registration to `new`, keeping the timers, the ready queue
    /// and the publishes in flight in step.
    fn set_phase(&mut self, id: RegId, new: Phase) {
        let Some(reg) = self.regs.get_mut(&id) else {
            return;
        };
        match std::mem::replace(&mut reg.phase, new.clone()) {
            Phase::Idle => {}
            Phase::Window(at) | Phase::Backoff { until: at, .. } => {
                self.timers.remove(&(at, id));
            }
            Phase::Ready { seq, .. } => {
                self.ready.remove(&seq);
            }
            Phase::InFlight {
                id: publish,
                deadline,
                ..
            } => {
                self.timers.remove(&(deadline, id));
                self.in_flight.remove(&publish);
            }
        }
        match new {
            Phase::Idle => {}
            Phase::Window(at) | Phase::Backoff { until: at, .. } => {
                self.timers.insert((at, id));
            }
            Phase::Ready { seq, .. } => {
                self.ready.insert(seq, id);
            }
            Phase::InFlight {
                id: publish,
                deadline,
                ..
            } => {
                self.timers.insert((deadline, id));
                self.in_flight.insert(publish, id);
            }
        }
    }

    /// A trigger at `at` for one registration: it opens a window if none
    /// is open and nothing is in flight or waiting to be tried again.
    fn triggered(&mut self, id: RegId, at: Instant) {
        let Some(reg) = self.regs.get_mut(&id) else {
            return;
        };
        reg.dirty_since.get_or_insert(at);
        if reg.phase == Phase::Idle {
            self.set_phase(id, Phase::Window(at + COALESCE));
        }
    }

    /// The registration of publish `id` in flight to `from`, if any.
    fn answered(&self, id: &str, from: &str) -> Option<RegId> {
        let reg_id = *self.in_flight.get(id)?;
        let reg = self.regs.get(&reg_id)?;
        request::same_jid(&reg.jid, from).then_some(reg_id)
    }

    /// Sends a registration's publish now (its `tries`-th try was the
    /// last), or queues it for a place in flight; nothing if the user has
    /// nothing pending any more.
    fn fire(&mut self, id: RegId, tries: u32, now: Instant) {
        let Some(reg) = self.regs.get(&id) else {
            return;
        };
        let nothing = self
            .users
            .get(&reg.user)
            .is_none_or(|u| u.pending.is_empty());
        let queued = matches!(reg.phase, Phase::Ready { .. });
        if nothing {
            if let Some(reg) = self.regs.get_mut(&id) {
                reg.dirty_since = None;
            }
            return self.set_phase(id, Phase::Idle);
        }
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            if !queued {
                self.ready_next += 1;
                let seq = self.ready_next;
                self.set_phase(id, Phase::Ready { seq, tries });
            }
            return;
        }
        let publish = self.next_id();
        let (Some(reg), domain) = (self.regs.get_mut(&id), &self.domain) else {
            return;
        };
        let Some(u) = self.users.get(&reg.user) else {
            return;
        };
        reg.dirty_since = None;
        let from = format!("{}@{domain}", reg.user);
        let options = reg.options.as_deref().and_then(request::stored_options);
        let payload = publish_iq(Publish {
            id: &publish,
            from: &from,
            to: &reg.jid,
            node: &reg.node,
            pending: &u.pending,
            options,
        });
        self.out.push_back(PushAction::Publish {
            id: publish.clone(),
            user: reg.user.clone(),
            to: reg.jid.clone(),
            payload,
        });
        self.stats.published += 1;
        self.set_phase(
            id,
            Phase::InFlight {
                id: publish,
                deadline: now + PUBLISH_TIMEOUT,
                tries: tries + 1,
            },
        );
    }

    /// A registration's publish ended (accepted or given up): what came
    /// meanwhile opens the next window, else it is idle.
    fn finished(&mut self, id: RegId, now: Instant) {
        let Some(reg) = self.regs.get(&id) else {
            return;
        };
        let pending = self
            .users
            .get(&reg.user)
            .is_some_and(|u| !u.pending.is_empty());
        match reg.dirty_since.filter(|_| pending) {
            Some(since) => {
                self.set_phase(id, Phase::Window((since + COALESCE).max(now)));
            }
            _ => {
                if let Some(reg) = self.regs.get_mut(&id) {
                    reg.dirty_since = None;
                }
                self.set_phase(id, Phase::Idle);
            }
        }
    }

    /// A try failed transiently (or timed out): again after a pause, or
    /// given up after [`MAX_TRIES`].
    fn failed_try(&mut self, id: RegId, now: Instant) {
        self.stats.failed += 1;
        let Some(reg) = self.regs.get(&id) else {
            return;
        };
        let tries = match reg.phase {
            Phase::InFlight { tries, .. } | Phase::Backoff { tries, .. } => tries,
            _ => 1,
        };
        let pending = self
            .users
            .get(&reg.user)
            .is_some_and(|u| !u.pending.is_empty());
        if !pending {
            return self.set_phase(id, Phase::Idle);
        }
        if tries >= MAX_TRIES {
            tracing::warn!(
                user = %reg.user,
                jid = %reg.jid,
                tries,
                "push: a publish failed every try; given up"
            );
            self.stats.given_up += 1;
            return self.finished(id, now);
        }
        let pause = RETRY_FIRST
            .saturating_mul(1 << (tries - 1).min(16))
            .min(RETRY_MAX);
        self.set_phase(
            id,
            Phase::Backoff {
                until: now + pause,
                tries,
            },
        );
    }

    /// Sends due publishes that waited for a place in flight.
    fn drain_ready(&mut self, now: Instant) {
        while self.in_flight.len() < MAX_IN_FLIGHT {
            let Some((_, id)) = self.ready.pop_first() else {
                return;
            };
            let tries = match self.regs.get(&id).map(|r| &r.phase) {
                Some(Phase::Ready { tries, .. }) => *tries,
                _ => continue,
            };
            // (out of the queue already: `fire` sets its phase anew)
            if let Some(reg) = self.regs.get_mut(&id) {
                reg.phase = Phase::Idle;
            }
            self.fire(id, tries, now);
        }
    }

    /// A new publish id: a counter from the mixed seed, through a
    /// bijective mix, so ids never repeat within a run (and two seeds'
    /// runs overlap only by chance).
    fn next_id(&mut self) -> String {
        self.ids += 1;
        let n = mix(self.seed).wrapping_add(self.ids);
        format!("{ID_PREFIX}{:016x}", mix(n))
    }
}

/// The SplitMix64 finalizer (a bijection on u64).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A body cut to [`MAX_BODY_BYTES`] at a character boundary.
fn cut_body(mut body: String) -> String {
    if body.len() > MAX_BODY_BYTES {
        let mut end = MAX_BODY_BYTES;
        while !body.is_char_boundary(end) {
            end -= 1;
        }
        body.truncate(end);
    }
    body
}

#[cfg(test)]
mod tests;
