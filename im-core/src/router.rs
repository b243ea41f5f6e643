//! The router: a sans-IO state machine that owns the routing table and
//! decides, for every frame from a CM, what happens (RFC 6120 §10,
//! RFC 6121 §8.5). Inputs are events with the time they happen at
//! ([`Router::handle`], [`Router::handle_timeout`]); outputs are
//! [`Action`]s the driver takes one by one ([`Router::poll_action`]) and
//! carries out (send a frame to a node, store or flush offline messages).
//! No sockets, no clocks, no randomness, no storage: tests feed events and
//! instants, and read actions.
//!
//! The router coordinates; each concern's state is a type of its own:
//! the routing table ([`RoutingTable`]), stream-management sessions
//! (`sm_sessions`: ledgers, tokens, expiry deadlines), the roster cache
//! (`roster_cache`: rosters and the frames waiting for one) and archive ids
//! (`archive_ids`). The rules it applies live one concern per module:
//! stanza routing (`rules`), binding and session ends (`binding`),
//! presence, subscriptions, frames waiting for rosters (`roster_waits`),
//! stream management (`stream_management`), offline delivery (`offline`),
//! server IQs (`iq`, one module per protocol), conversation messages,
//! looked into only when the archive or carbons need it (`conversation`,
//! `archive`, `carbons`), storage queries (`query`), and what it emits
//! (`output`).

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;
use cm_protocol::Frame;
use xmpp_stream::StanzaCondition;

use crate::address;
use crate::storage::{ArchiveEntry, Roster, RosterItem};

mod archive;
mod archive_ids;
mod binding;
mod blocking;
mod carbons;
mod components;
mod conversation;
mod flush_retries;
mod forward;
mod iq;
mod live_rows;
mod loads;
mod offline;
mod output;
mod parked_resumes;
mod peers;
mod pep;
mod presence;
mod push;
mod query;
mod rooms;
mod roster_cache;
mod roster_waits;
mod roster_writes;
mod rules;
mod shards;
mod sm_sessions;
mod stored_rows;
mod stream_management;
mod subscriptions;

use crate::routing::{NodeId, RoutingTable, SessionAddr};
pub(crate) use archive_ids::ArchiveIds;
use binding::ResourceNames;
use flush_retries::FlushRetries;
pub use flush_retries::{FLUSH_RETRY_FIRST, FLUSH_RETRY_MAX};
pub(crate) use forward::{embeddable, wrap_forwarded};
pub use iq::{ServerOffers, UPLOAD, UploadService};
pub(crate) use iq::{config_form, pubsub_error};
pub use live_rows::MAX_PENDING_TICKETS;
use live_rows::{LiveRows, MessageRow};
use loads::Loads;
pub use pep::{PepEvent, PepRelation, notification};
pub use push::PushChange;
pub use query::Query;
use query::QueryId;
use roster_cache::{RosterCache, roster_for};
use roster_writes::RosterWrites;
pub use shards::{FORWARD_BYTES, FORWARD_GIVE_UP};
use shards::{Forwards, Inbound, Ownership};
use sm_sessions::{Incoming, Origin, SmSessions};
use stored_rows::StoredRows;

/// Capacity of the action queue past which, once drained, it gives memory
/// back (a burst, such as a big CM's departure, can queue millions).
const ACTIONS_SHRINK_ABOVE: usize = 64 * 1024;
/// Frames waiting for rosters (all sessions) at which the router asks the
/// driver to stop taking CM frames, and below which it asks again.
pub const INTAKE_CLOSE_AT: usize = 64 * 1024;
/// See [`INTAKE_CLOSE_AT`].
pub const INTAKE_OPEN_BELOW: usize = 16 * 1024;
/// Capacity a drained action queue keeps when it gives memory back.
const ACTIONS_KEPT: usize = 1024;

/// Something the driver must do (see [`Router::poll_action`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Stop (`open` false) or start again taking frames from the CM links:
    /// too many frames wait for rosters to load (a flood of logins, or every
    /// session re-announced after a restart), and the flood is paced by
    /// storage instead of held in memory. Storage outcomes keep coming.
    Intake {
        /// Take CM frames.
        open: bool,
    },
    /// Send a frame to a CM node (on the pooled connection for `sid`).
    Send {
        /// Target node.
        node: NodeId,
        /// The frame.
        frame: Frame,
    },
    /// Store a message for an offline user. Report [`Input::Stored`] for
    /// `origin` once committed, or [`Input::StoreFailed`] (with `bounce`
    /// and the payload) if the user does not exist, the quota is full or
    /// the write failed for good: never [`Input::Stored`] before the
    /// outcome is known.
    StoreOffline {
        /// Bare username (local part).
        user: String,
        /// The stanza.
        payload: Bytes,
        /// What to tell the sender if storing fails.
        bounce: Bounce,
        /// The SM session (token, `h`) whose acknowledgement waits for this
        /// store.
        origin: Option<(u64, u32)>,
        /// A live row: the message went live to the user's SM sessions,
        /// and this is its durable copy until they acknowledge it. Not
        /// held to the offline quota; report [`Input::LiveStored`] with
        /// the row id (not [`Input::Stored`]), or [`Input::StoreFailed`]
        /// with this ticket.
        live: Option<u64>,
        /// Once stored, report [`Input::OfflineStored`]: the message waits
        /// for a user who is away, whose phone may be woken (XEP-0357).
        wake: bool,
    },
    /// Remove a user's stored messages up to `upto`, and the live rows
    /// `rows`: their clients acknowledged them (or they were handed to
    /// sessions without stream management).
    RemoveOffline {
        /// Username (local part).
        user: String,
        /// Every row up to this one (0: none).
        upto: i64,
        /// And these rows (live rows above `upto`).
        rows: Vec<i64>,
    },
    /// Load the user's stored messages for this session and report
    /// [`Input::Offline`] (they are removed by a later
    /// [`Action::RemoveOffline`]).
    FlushOffline {
        /// Username (local part).
        user: String,
        /// Session to deliver to.
        to: SessionAddr,
    },
    /// Load a user's roster and report [`Input::RosterLoaded`].
    LoadRoster {
        /// Bare JID.
        user: String,
    },
    /// Write a roster change (one or more items of one or two rosters)
    /// and report [`Input::RosterWritten`] once it committed, or
    /// [`Input::RosterWriteFailed`]: never the first before the outcome is
    /// known. What the change delivers waits for it (see `roster_writes`).
    WriteRoster {
        /// The change's id, for the report.
        txn: u64,
        /// The writes, in order.
        writes: Vec<RosterWrite>,
    },
    /// Archive a message (one entry per archive it goes into); stamp the
    /// entries with the time, and report [`Input::Stored`] for `origin`
    /// once committed, or [`Input::StoreFailed`] (with an empty bounce and
    /// the first entry's payload) if the write failed for good.
    Archive {
        /// The entries.
        entries: Vec<ArchiveEntry>,
        /// The SM session (token, `h`) whose acknowledgement waits.
        origin: Option<(u64, u32)>,
        /// What to tell the sender if the write fails (empty: its `from`).
        bounce: Bounce,
    },
    /// Send a frame (`Forward`) to the peer core `core` (a member id).
    Forward {
        /// The peer.
        core: String,
        /// The frame.
        frame: Frame,
    },
    /// The slots this core owns changed: tell the CMs and the peer cores
    /// (`SlotOwners`).
    SlotsOwned {
        /// Every slot owned now, with its epoch.
        owned: Vec<cm_protocol::SlotEpoch>,
    },
    /// A slot the lease driver asked to hand over is handed over (tell it).
    HandedOver {
        /// The slot.
        slot: cm_protocol::slots::Slot,
    },
    /// Store a push registration change (XEP-0357) and report
    /// [`Input::PushWritten`].
    WritePush {
        /// The change and what answers it.
        change: PushChange,
    },
    /// Load a user's push registrations and report [`Input::PushLoaded`].
    LoadPush {
        /// The user (local part).
        user: String,
    },
    /// Remove a push registration an app server refused for good.
    DisablePush {
        /// The user (local part).
        user: String,
        /// The app server's push service.
        jid: String,
        /// The node.
        node: String,
    },
    /// Load a group chat room's record and report [`Input::RoomLoaded`]
    /// (`failed` if it could not be read).
    LoadRoom {
        /// The room's bare JID.
        room: String,
    },
    /// Store a persistent room's record (insert or replace); report
    /// [`Input::RoomSaved`] with the answer's result once committed, or
    /// with its error if the write failed for good.
    SaveRoom {
        /// The room's bare JID.
        room: String,
        /// The record.
        record: Bytes,
        /// Whom to tell, and what.
        answer: Option<crate::muc::Answer>,
    },
    /// Remove a room's record and its archive.
    DeleteRoom {
        /// The room's bare JID.
        room: String,
    },
    /// Answer a query from storage and hand the stanzas back through
    /// [`Input::Replies`], or report [`Input::QueryFailed`] if it could not
    /// be answered (its transaction failed, or storage is overloaded).
    Query {
        /// The asking session.
        to: SessionAddr,
        /// The query.
        query: Query,
    },
    /// Send a stanza to the external component `name` (XEP-0114); if it
    /// cannot be queued (not connected, its queue full), report
    /// [`Input::ComponentRefused`] with it.
    ToComponent {
        /// The component's name (its domain).
        name: String,
        /// The stanza, in `jabber:client` terms.
        payload: Bytes,
    },
}

/// One roster write of an [`Action::WriteRoster`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RosterWrite {
    /// Store a roster item (added or changed).
    Put {
        /// Username (local part).
        user: String,
        /// The item.
        item: RosterItem,
        /// The roster's new version.
        version: u64,
    },
    /// Remove a roster item.
    Remove {
        /// Username (local part).
        user: String,
        /// The contact's bare JID.
        jid: String,
        /// The roster's new version.
        version: u64,
    },
    /// Add JIDs to a block list (XEP-0191).
    Block {
        /// Username (local part).
        user: String,
        /// The JIDs.
        jids: Vec<String>,
    },
    /// Remove JIDs from a block list.
    Unblock {
        /// Username (local part).
        user: String,
        /// The JIDs; all of them if empty.
        jids: Vec<String>,
    },
}

/// Enough of a stanza to answer it with an error later. An empty
/// `sender` means: take the sender, recipient and id from the stanza's own
/// attributes (its `from` was stamped by the CM).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bounce {
    /// The original sender (full JID).
    pub sender: String,
    /// The original recipient as addressed.
    pub to: String,
    /// The stanza id.
    pub id: Option<String>,
}

/// Events the router reacts to.
#[derive(Clone, Debug)]
pub enum Input {
    /// The slots this core owns changed (the lease driver's events, in
    /// order).
    Ownership {
        /// The events.
        events: Vec<crate::shards::LeaseEvent>,
    },
    /// This core's link to peer `core` came up or went down: forwards
    /// sent on it and not answered are sent again when it is up.
    PeerLink {
        /// The peer's member id.
        core: String,
        /// Up (false: down).
        up: bool,
    },
    /// A peer core answered a `Forward` this core sent.
    ForwardDone {
        /// The peer's member id.
        core: String,
        /// The forward's number.
        seq: u64,
        /// Taken (false: the peer does not own the recipient's slot).
        accepted: bool,
    },
    /// A routing frame from a node.
    Frame {
        /// Node.
        node: NodeId,
        /// The frame.
        frame: Frame,
    },
    /// A node's last connection is gone and its grace period passed.
    NodeGone {
        /// Node.
        node: NodeId,
    },
    /// One pooled connection of a node ended (frames in flight on it are lost).
    LinkLost {
        /// Node.
        node: NodeId,
        /// The connection's index in the node's pool.
        index: u16,
        /// The pool's size.
        pool_size: u16,
    },
    /// A durable write ([`Action::StoreOffline`], [`Action::Archive`])
    /// an SM session's stanza waited for committed.
    Stored {
        /// (token, `h`) from the action's origin.
        origin: (u64, u32),
    },
    /// The live row of an [`Action::StoreOffline`] committed as `row`
    /// (and the SM stanza `origin` waited for it).
    LiveStored {
        /// The action's `live` ticket.
        ticket: u64,
        /// The row id storage gave it.
        row: i64,
        /// (token, `h`) from the action's origin.
        origin: Option<(u64, u32)>,
    },
    /// A durable write of a message failed for good ([`Action::StoreOffline`]
    /// or [`Action::Archive`]): its sender is answered with `condition`,
    /// then the stanza counts as handled (its acknowledgement is released).
    StoreFailed {
        /// What the action carried to answer the sender.
        bounce: Bounce,
        /// The message (the error's addresses and id when `bounce` has no
        /// sender).
        payload: Bytes,
        /// The error to answer with.
        condition: StanzaCondition,
        /// The SM session (token, `h`) whose acknowledgement waited.
        origin: Option<(u64, u32)>,
        /// The action's `live` ticket (a live row that was not written).
        live: Option<u64>,
    },
    /// A durable write of a message was refused by the fence: this core no
    /// longer owns the slot of the user it wrote for. A stanza forwarded by
    /// a peer core is refused back to it (its sender's core sends it to the
    /// new owner); any other goes to the recipient's new owner as a
    /// forward (its sender's acknowledgement, if one waits, waiting for
    /// that), or, if this core serves the recipient again, is answered as
    /// [`Input::StoreFailed`] with `resource-constraint`.
    StoreFenced {
        /// The recipient whose slot this core no longer owns (local part).
        user: String,
        /// As in [`Input::StoreFailed`].
        bounce: Bounce,
        /// As in [`Input::StoreFailed`].
        payload: Bytes,
        /// As in [`Input::StoreFailed`].
        origin: Option<(u64, u32)>,
        /// As in [`Input::StoreFailed`].
        live: Option<u64>,
    },
    /// A roster asked for by [`Action::LoadRoster`] (`None`: no account).
    RosterLoaded {
        /// Bare JID.
        user: String,
        /// The roster.
        roster: Option<Roster>,
    },
    /// The Unix time now, in seconds (the driver says so every minute, so
    /// that credentials follow a corrected system clock).
    WallClock {
        /// Seconds since the Unix epoch.
        unix_secs: u64,
    },
    /// The writes of an [`Action::WriteRoster`] committed.
    RosterWritten {
        /// The action's `txn`.
        txn: u64,
    },
    /// The writes of an [`Action::WriteRoster`] failed for good (or were
    /// refused): the change is undone and its sender answered with
    /// `condition`.
    RosterWriteFailed {
        /// The action's `txn`.
        txn: u64,
        /// The error to answer with.
        condition: StanzaCondition,
    },
    /// A roster asked for by [`Action::LoadRoster`] could not be read: the
    /// sessions whose frames waited for it are ended.
    RosterFailed {
        /// Bare JID.
        user: String,
    },
    /// The answer to an [`Action::Query`].
    Replies {
        /// The asking session.
        to: SessionAddr,
        /// Stanzas to deliver, in order.
        payloads: Vec<Bytes>,
        /// Changes to nodes the query stored: their readers are notified.
        events: Vec<PepEvent>,
        /// Whether the query answered an IQ ([`Query::answers_iq`]).
        iq: bool,
    },
    /// An [`Action::Query`] could not be answered: the IQ gets an error.
    QueryFailed {
        /// The asking session.
        to: SessionAddr,
        /// The error to answer with.
        condition: StanzaCondition,
    },
    /// Loading the stored messages of an [`Action::FlushOffline`] failed
    /// (storage refused, down or late): the session keeps holding new
    /// messages behind the stored ones, and the flush is asked for again
    /// after a backoff ([`FLUSH_RETRY_FIRST`] doubling up to
    /// [`FLUSH_RETRY_MAX`]).
    OfflineLoadFailed {
        /// Username (local part).
        user: String,
        /// The session the flush was for.
        to: SessionAddr,
    },
    /// An offline store nobody waited for (no `origin`, no live row, no
    /// sender in its bounce) committed only after being tried again, so
    /// maybe after the user's flush: the user's best available session (if
    /// any) gets a flush.
    OfflineStoredLate {
        /// Username (local part).
        user: String,
    },
    /// An [`Action::WritePush`] committed (`ok`) or failed.
    PushWritten {
        /// The change.
        change: PushChange,
        /// Stored.
        ok: bool,
    },
    /// A message an [`Action::StoreOffline`] with `wake` stored committed.
    OfflineStored {
        /// The user (local part).
        user: String,
        /// The message.
        payload: Bytes,
    },
    /// The answer to an [`Action::LoadPush`] (`None`: it failed).
    PushLoaded {
        /// The user (local part).
        user: String,
        /// The registrations.
        registrations: Option<Vec<crate::storage::PushRegistration>>,
    },
    /// The answer to an [`Action::LoadRoom`].
    RoomLoaded {
        /// The room's bare JID.
        room: String,
        /// Its record; none: no such room.
        record: Option<Bytes>,
        /// Its newest archived messages (µs since the epoch, message),
        /// oldest first: its history.
        history: Vec<(i64, Bytes)>,
        /// It could not be read (the stanzas waiting for it get an error).
        failed: bool,
    },
    /// An [`Action::SaveRoom`] with an answer is done: `payload` (its
    /// result or its error) goes to `to`.
    RoomSaved {
        /// The room's bare JID.
        room: String,
        /// The asker.
        to: String,
        /// What it gets.
        payload: Bytes,
    },
    /// The external component `name` (XEP-0114) connected to this core
    /// (its handshake was right, and no other connection holds the name).
    ComponentUp {
        /// Its name (its domain).
        name: String,
    },
    /// The external component `name` went away.
    ComponentDown {
        /// Its name.
        name: String,
    },
    /// A stanza from the external component `name`: its stream checked
    /// that it is `from` the component's domain and has a `to`.
    FromComponent {
        /// The component's name.
        name: String,
        /// The stanza's routing header (`from` as in the payload).
        header: cm_protocol::RouteHeader,
        /// The stanza, in `jabber:client` terms.
        payload: Bytes,
    },
    /// A stanza of an [`Action::ToComponent`] could not be queued: its
    /// sender is answered with `condition` if it waits for an answer.
    ComponentRefused {
        /// The component.
        name: String,
        /// The stanza.
        payload: Bytes,
        /// `service-unavailable` (gone) or `resource-constraint` (its
        /// queue is full).
        condition: StanzaCondition,
    },
    /// A user's stored messages, loaded for a session that became available.
    Offline {
        /// Username (local part).
        user: String,
        /// The session.
        to: SessionAddr,
        /// (row id, stanza with delay stamp), oldest first.
        messages: Vec<(i64, Bytes)>,
    },
}

/// Router counters, read by the metrics endpoint.
#[derive(Clone, Copy, Debug, Default)]
pub struct RouterStats {
    /// Stanzas received from CMs.
    pub stanzas_in: u64,
    /// Deliver frames emitted.
    pub delivered: u64,
    /// Messages sent to offline storage.
    pub offline_stored: u64,
    /// Error replies generated.
    pub errors: u64,
    /// SM sessions resumed.
    pub resumed: u64,
    /// Resumptions refused.
    pub resume_failed: u64,
    /// Detached SM sessions that expired.
    pub sm_expired: u64,
}

/// The router (see the module docs).
pub struct Router {
    domain: String,
    table: RoutingTable,
    /// Actions not yet taken by the driver (it takes all of them after
    /// every input, so this holds what one input produced; its memory is
    /// given back once a burst drained, see [`ACTIONS_SHRINK_ABOVE`]).
    out: VecDeque<Action>,
    /// Names of resources the server picks.
    resources: ResourceNames,
    /// The driver was asked to stop taking CM frames ([`Action::Intake`]).
    intake_closed: bool,
    /// Stream-management sessions (XEP-0198).
    sessions: SmSessions,
    /// The SM stanza being routed, for the storage actions its
    /// acknowledgement waits for.
    origin: Option<Origin>,
    /// Rosters in memory, and the frames waiting for one.
    rosters: RosterCache,
    /// Roster changes being built or written.
    roster_writes: RosterWrites,
    /// Offline-storage rows out with sessions and not yet acknowledged.
    stored_rows: StoredRows,
    /// Live rows being written.
    live_rows: LiveRows,
    /// Flushes whose load failed, waiting to be asked for again.
    flush_retries: FlushRetries,
    /// Loads of stored messages under way.
    loads: Loads,
    /// The live row of the message being routed.
    live_ticket: MessageRow,
    /// Sessions with a storage query being answered (one at a time), with
    /// what its error answer needs.
    querying: HashMap<SessionAddr, QueryId>,
    /// Roster pushes sent (their ids).
    push_counter: u64,
    /// Ids of archived messages; none: messages are not archived (XEP-0313).
    archive: Option<ArchiveIds>,
    /// STUN and TURN servers told to clients (XEP-0215); none: not offered.
    external: Option<crate::external_services::ExternalServices>,
    /// What logins offer (SASL2, FAST), as disco#info lists it.
    login: (bool, bool),
    stats: RouterStats,
    /// The slots this core serves in a cluster; none: every user.
    shard: Option<Ownership>,
    /// Messages and subscription stanzas forwarded to peer cores (or routed
    /// home), waiting for their answers.
    forwards: Forwards,
    /// Stanzas forwarded by peer cores, waiting for their writes.
    inbound: Inbound,
    /// Peer cores' links, by node.
    peer_links: HashMap<NodeId, String>,
    /// The time of the input being handled.
    now: Option<Instant>,
    /// Resumptions waiting for their session's announcement (a cluster).
    parked: parked_resumes::ParkedResumes,
    /// What the sessions' entity capabilities stand for (XEP-0115).
    caps: crate::caps::CapsCache,
    /// Sessions with a [`Query::PepLastItems`] out (one each).
    last_items: std::collections::HashSet<SessionAddr>,
    /// Ids of PEP notifications.
    event_ids: ArchiveIds,
    /// The upload service (XEP-0363); none: not offered.
    upload: Option<UploadService>,
    /// The group chat service (XEP-0045); none: not offered.
    muc: Option<crate::muc::MucService>,
    /// Push notifications (XEP-0357); none: not offered.
    push: Option<crate::push::PushService>,
    /// The last Unix time told ([`Input::WallClock`]) and when.
    wall: Option<(Instant, u64)>,
    /// A push trigger was counted for the message being routed (one per
    /// message, however many of the user's sessions hold it).
    push_counted: bool,
    /// Messages a ledger held are being routed again (they were counted
    /// for push when first held).
    rerouting: bool,
    /// Rooms' stanzas go in a frame per session (see
    /// [`Router::with_fanout_per_session`]).
    fanout_per_session: bool,
    /// External components (XEP-0114): configured, and connected here.
    components: components::Components,
}

impl Router {
    /// A router for `domain`. `seed` (random, from outside) varies
    /// generated resources, SM resumption tokens and, until
    /// [`Router::with_archive`], archive ids between runs; SM ids are keyed
    /// with `sm_secret` (persisted, so they survive a core restart).
    pub fn new(domain: &str, seed: u64, sm_secret: [u8; 32]) -> Self {
        Self {
            domain: domain.to_owned(),
            table: RoutingTable::new(),
            out: VecDeque::new(),
            resources: ResourceNames::new(seed),
            sessions: SmSessions::new(seed, sm_secret),
            origin: None,
            rosters: RosterCache::default(),
            roster_writes: RosterWrites::default(),
            stored_rows: StoredRows::default(),
            live_rows: LiveRows::default(),
            flush_retries: FlushRetries::default(),
            loads: Loads::default(),
            live_ticket: MessageRow::Unset,
            querying: Default::default(),
            push_counter: 0,
            archive: Some(ArchiveIds::new(seed)),
            external: None,
            login: (true, false),
            stats: RouterStats::default(),
            intake_closed: false,
            shard: None,
            forwards: Forwards::default(),
            inbound: Inbound::default(),
            peer_links: HashMap::new(),
            now: None,
            parked: Default::default(),
            caps: Default::default(),
            last_items: Default::default(),
            event_ids: ArchiveIds::new(seed.rotate_left(32)),
            upload: None,
            muc: None,
            push: None,
            wall: None,
            fanout_per_session: false,
            components: Default::default(),
            push_counted: false,
            rerouting: false,
        }
    }

    /// Serves only the users of the slots it owns in a cluster of `slots`
    /// slots, as core `member` ([`Input::Ownership`] says which): the
    /// others' stanzas go to their owners ([`Action::Forward`]).
    pub fn with_cluster(mut self, member: &str, slots: u16) -> Self {
        self.shard = Some(Ownership::new(member, slots));
        self
    }

    /// The fence a write for local user `user` (its local part) carries:
    /// none outside a cluster; the user's slot and the epoch this core
    /// owns it at, or no epoch if this core does not own it (the write
    /// must not happen).
    pub fn fence_for(&self, user: &str) -> Option<(u16, Option<u64>)> {
        let shard = self.shard.as_ref()?;
        // (a room's archive is written for the room's bare JID)
        let slot = match user.contains('@') {
            true => shard.slot(user),
            false => shard.slot(&format!("{user}@{}", self.domain)),
        };
        Some((slot.0, shard.epoch(slot)))
    }

    /// Slots this core owns (0 outside a cluster).
    pub fn slots_owned(&self) -> usize {
        self.shard.as_ref().map_or(0, |s| s.owned().len())
    }

    /// Messages and subscription stanzas forwarded and not answered yet.
    pub fn forwards_waiting(&self) -> usize {
        self.forwards.len()
    }

    /// Lets each account bind at most `max` resources at once (default
    /// [`crate::routing::MAX_RESOURCES_PER_ACCOUNT`]); more binds are
    /// refused with `resource-constraint`.
    pub fn with_max_resources(mut self, max: usize) -> Self {
        self.table = RoutingTable::with_max_per_account(max);
        self
    }

    /// Archives messages (the default) or not; `base` starts the archive
    /// ids. Give it the wall-clock time in µs times 16 at start: ids then
    /// increase across restarts unless a run averaged more than 16 million
    /// archived messages a second.
    pub fn with_archive(mut self, on: bool, base: u64) -> Self {
        self.archive = on.then(|| ArchiveIds::new(base));
        self
    }

    /// Lists SASL2 with Bind2, and FAST, in the server's disco#info as
    /// the authentication service offers them.
    pub fn with_login_features(mut self, sasl2: bool, fast: bool) -> Self {
        self.login = (sasl2, fast);
        self
    }

    /// What the server's disco#info lists beyond the fixed features.
    fn server_offers(&self) -> ServerOffers {
        ServerOffers {
            extdisco: self.external.is_some(),
            sasl2: self.login.0,
            fast: self.login.0 && self.login.1,
        }
    }

    /// Tells clients about these STUN and TURN servers (XEP-0215); with
    /// none, the feature is not offered.
    pub fn with_external_services(
        mut self,
        services: crate::external_services::ExternalServices,
    ) -> Self {
        self.external = (!services.services().is_empty()).then_some(services);
        self
    }

    /// Offers the upload service `service` (XEP-0363).
    pub fn with_upload(mut self, service: UploadService) -> Self {
        self.upload = Some(service);
        self
    }

    /// SM sessions tracked (attached or detached) and of those detached.
    pub fn sm_counts(&self) -> (usize, usize) {
        self.sessions.counts()
    }

    /// The routing table (read-only).
    pub fn table(&self) -> &RoutingTable {
        &self.table
    }

    /// The router's counters.
    pub fn stats(&self) -> RouterStats {
        self.stats
    }

    /// Handles one event that happened at `now`; its actions wait in
    /// [`Router::poll_action`]. It expires nothing: an input is handled
    /// before deadlines due at the same instant or earlier that
    /// [`Router::handle_timeout`] has not reached yet, so a `Resume` just
    /// after its session's deadline can still win (as it could within the
    /// old one-second tick).
    pub fn handle(&mut self, input: Input, now: Instant) {
        self.now = Some(now);
        // (one push trigger per routed message: an input routes one)
        self.push_counted = false;
        self.handle_input(input, now);
        self.pace_intake();
    }

    /// Asks the driver to stop or start taking CM frames as the frames
    /// waiting for rosters cross [`INTAKE_CLOSE_AT`] and
    /// [`INTAKE_OPEN_BELOW`].
    fn pace_intake(&mut self) {
        let waiting = self.rosters.deferred();
        let open = if self.intake_closed {
            waiting < INTAKE_OPEN_BELOW
        } else {
            waiting < INTAKE_CLOSE_AT
        };
        if open == self.intake_closed {
            self.intake_closed = !open;
            self.emit(Action::Intake { open });
        }
    }

    fn handle_input(&mut self, input: Input, now: Instant) {
        match input {
            Input::Ownership { events } => self.ownership(events),
            Input::ForwardDone {
                core,
                seq,
                accepted,
            } => self.forward_done(&core, seq, accepted, now),
            Input::PeerLink { core, up } => self.peer_link(&core, up),
            Input::NodeGone { node } => {
                if !self.peer_link_gone(node) {
                    self.node_gone(node, now)
                }
            }
            Input::LinkLost {
                node,
                index,
                pool_size,
            } => self.link_lost(node, index, pool_size, now),
            Input::Frame { node, frame } => self.frame(node, frame, now),
            Input::Stored { origin } => self.stored(origin),
            Input::LiveStored {
                ticket,
                row,
                origin,
            } => {
                if let Some(origin) = origin {
                    self.stored(origin);
                }
                self.live_written(ticket, Some(row));
            }
            Input::Offline { user, to, messages } => self.stored_loaded(user, to, messages),
            Input::OfflineLoadFailed { user, to } => self.flush_failed(&user, to, now),
            Input::OfflineStoredLate { user } => self.stored_late(&user),
            Input::RosterLoaded { user, roster } => self.roster_loaded(user, roster, now),
            Input::RosterFailed { user } => self.roster_failed(user),
            Input::RosterWritten { txn } => self.roster_written(txn, now),
            Input::RoomLoaded {
                room,
                record,
                history,
                failed,
            } => self.room_loaded(&room, record, history, failed),
            Input::RoomSaved { room, to, payload } => self.room_saved(&to, &room, payload),
            Input::PushWritten { change, ok } => self.push_written(change, ok, now),
            Input::OfflineStored { user, payload } => self.push_stored(&user, &payload),
            Input::PushLoaded {
                user,
                registrations,
            } => self.push_loaded(&user, registrations, now),
            Input::WallClock { unix_secs } => {
                self.wall = Some((now, unix_secs));
                if let Some(external) = &mut self.external {
                    external.set_clock(now, unix_secs);
                }
            }
            Input::RosterWriteFailed { txn, condition } => {
                self.roster_write_failed(txn, condition, now)
            }
            Input::StoreFailed {
                bounce,
                payload,
                condition,
                origin,
                live,
            } => {
                if let Some(ticket) = live {
                    self.live_written(ticket, None);
                }
                self.store_failed(bounce, &payload, condition, origin)
            }
            Input::StoreFenced {
                user,
                bounce,
                payload,
                origin,
                live,
            } => {
                if let Some(ticket) = live {
                    self.live_written(ticket, None);
                }
                match origin {
                    Some(origin) if self.inbound_refused(origin.0) => self.stored(origin),
                    _ => self.store_fenced(&user, bounce, payload, origin),
                }
            }
            Input::QueryFailed { to, condition } => self.query_failed(to, condition),
            Input::ComponentUp { name } => self.component_up(name),
            Input::ComponentDown { name } => self.component_down(&name),
            Input::FromComponent {
                name,
                header,
                payload,
            } => self.component_stanza(&name, header, payload),
            Input::ComponentRefused {
                name,
                payload,
                condition,
            } => self.component_refused(&name, &payload, condition),
            Input::Replies {
                to,
                payloads,
                events,
                iq,
            } => {
                if iq {
                    self.querying.remove(&to);
                } else {
                    self.last_items_answered(to);
                }
                if self.table.jid_of(to.0, to.1).is_some() {
                    for p in payloads {
                        self.deliver_copy(to, p);
                    }
                }
                for event in events {
                    self.pep_event(event);
                }
            }
        }
    }

    /// The earliest deadline the router keeps (a detached SM session's
    /// expiry, a failed flush's retry): call [`Router::handle_timeout`]
    /// then. None: no deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.sessions.next_expiry(),
            self.flush_retries.next_due(),
            self.next_forward_deadline(),
            self.parked.next_deadline(),
            self.push
                .as_ref()
                .and_then(crate::push::PushService::poll_timeout),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Time reached `now`: detached SM sessions whose resumption time is
    /// over expire (what they never acknowledged goes to another resource
    /// or offline storage), and failed flushes due again are asked for.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = Some(now);
        self.expire_forwards(now);
        self.expire_parked(now);
        self.expire(now);
        self.retry_flushes(now);
        self.push_timeout(now);
    }

    /// The next action to carry out, in order; take them all after every
    /// input.
    pub fn poll_action(&mut self) -> Option<Action> {
        let action = self.out.pop_front();
        if action.is_none() && self.out.capacity() > ACTIONS_SHRINK_ABOVE {
            self.out.shrink_to(ACTIONS_KEPT);
        }
        action
    }

    /// A `Deliver` of `payload` to `addr` could not be handed to its CM
    /// link at `now`. An SM session detaches and is told to resume (its
    /// ledger keeps the stanza, and the resumption replays it); for any
    /// other session a chat or normal message goes to offline storage, and
    /// anything else is lost, as on a broken stream. Its actions come next
    /// from [`Router::poll_action`], before any left from the input being
    /// carried out.
    pub fn delivery_failed(&mut self, addr: SessionAddr, payload: Bytes, now: Instant) {
        let queued = self.out.len();
        if self.sessions.is_tracked(addr) {
            if self.sessions.is_attached(addr) {
                self.detach(addr, now);
                self.kick_to_resume(addr);
            }
        } else {
            self.store_undeliverable(addr, payload);
        }
        let new = self.out.len() - queued;
        self.out.rotate_right(new);
    }

    /// A frame from a CM's session: it waits behind that session's frames
    /// still waiting for a roster (or for a roster it needs itself, or
    /// while its user's roster is being written), else it is handled now.
    fn frame(&mut self, node: NodeId, frame: Frame, now: Instant) {
        // Frames wait, in order, for rosters not loaded yet.
        if let Some(sid) = frame.sid()
            && let Some(user) = self.rosters.waited_for((node, sid))
        {
            return self.defer(user, node, frame);
        }
        // … and for rosters being written: the sessions of their users …
        if self.rosters.any_writing()
            && let Some(sid) = frame.sid()
            && let Some(jid) = self.table.jid_of(node, sid)
            && self.rosters.is_writing(address::bare(jid))
        {
            let user = address::bare(jid).to_owned();
            return self.defer(user, node, frame);
        }
        if self.refuse_unserved(node, &frame) {
            return;
        }
        // … and any frame that needs one (of a user this core serves).
        if let Some(user) = roster_for(&frame, &self.domain)
            && self.serves(&user)
            && !self.rosters.is_ready(&user)
        {
            return self.defer(user, node, frame);
        }
        match frame {
            Frame::Forward {
                seq,
                header,
                payload,
            } => self.forwarded_in(node, seq, header, payload),
            Frame::SlotOwners { core, owned, .. } => self.peer_slots(node, core, &owned),
            Frame::Bind {
                sid,
                user,
                iq_id,
                resource,
                bind2,
            } => self.bind(node, sid, &user, iq_id, resource, bind2),
            Frame::Announce {
                sid,
                jid,
                available,
                priority,
                sm,
            } => self.announced((node, sid), &jid, available, priority, sm, now),
            Frame::Stanza {
                sid,
                header,
                payload,
            } => {
                self.stats.stanzas_in += 1;
                match self.sessions.count_in((node, sid), &payload) {
                    // a stream the session has left (resumed elsewhere)
                    Incoming::FromDetached => return,
                    // sent again after a resumption; routed the first time
                    Incoming::Resent => return,
                    Incoming::Counted(origin) => self.origin = Some(origin),
                    Incoming::Untracked if self.table.jid_of(node, sid).is_none() => return,
                    Incoming::Untracked => {}
                }
                self.stanza(node, sid, header, payload);
                self.origin = None;
            }
            Frame::Bounce { sid, to, payload } => {
                if !self.bounce_tracked((node, sid), now) {
                    self.bounced(node, sid, &to, payload)
                }
            }
            Frame::SessionEnd { sid, clean, .. } => {
                if clean && self.sessions.is_tracked((node, sid)) {
                    self.end_tracked((node, sid));
                } else if self.sessions.is_tracked((node, sid)) {
                    self.detach((node, sid), now);
                } else {
                    self.session_end(node, sid)
                }
            }
            f @ (Frame::SmEnable { .. }
            | Frame::AckRequest { .. }
            | Frame::Acked { .. }
            | Frame::Skipped { .. }
            | Frame::Resume { .. }) => self.sm_frame(node, f),
            other => tracing::warn!(node, frame = other.name(), "unexpected frame from a CM"),
        }
    }

    /// Available sessions of `bare` other than `except`.
    fn others(&self, bare: &str, except: Option<SessionAddr>) -> Vec<SessionAddr> {
        self.table
            .resources(bare)
            .iter()
            .filter(|r| r.available && Some((r.node, r.sid)) != except)
            .map(|r| (r.node, r.sid))
            .collect()
    }

    /// The local part of a session's JID (its account).
    fn user_of(&self, (node, sid): SessionAddr) -> Option<String> {
        let jid = self.table.jid_of(node, sid)?;
        address::local(jid).map(str::to_owned)
    }
}

/// Whether `hay` contains `needle`.
pub(super) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The `ver` of the server's entity capabilities (XEP-0115), for the CMs'
/// stream features: the same disco#info the router answers.
pub fn server_caps_ver(offers: ServerOffers) -> String {
    iq::caps_ver(offers)
}

#[cfg(test)]
mod blocking_tests;
#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
mod components_tests;
#[cfg(test)]
mod live_row_tests;
#[cfg(test)]
mod pep_tests;
#[cfg(test)]
mod push_tests;
#[cfg(test)]
mod rooms_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
