//! Durable storage: accounts (SCRAM credentials, never passwords), offline
//! messages, rosters, the message archive (XEP-0313), vCards, the
//! records of persistent group-chat rooms (XEP-0045) with their archives,
//! push registrations (XEP-0357) and FAST tokens (XEP-0484).
//!
//! [`Store`] is the one interface; it has two backends: [`Sqlite`], an
//! embedded on-disk database in the data directory (the default, no
//! server), and [`Postgres`], chosen by configuring a connection string.
//! Both run versioned schema migrations when opened.
//!
//! [`Storage`] runs a store on its own thread and gives the async core a
//! handle; the thread drains every queued job into one transaction (group
//! commit), so durable writes do not cost one commit each. Its queue is
//! bounded in bytes ([`Limits`]) and refuses rather than blocks.
//! [`FaultyStore`] wraps a store to inject faults.

use std::path::Path;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use xmpp_sasl::StoredCredentials;

mod fast;
mod faults;
mod pep;
mod postgres;
mod push;
mod sqlite;
#[cfg(test)]
mod tests;
mod worker;

pub use fast::{FastSlot, FastToken, MAX_FAST_CLIENTS};
pub use faults::{FaultPlan, FaultyStore};
pub use pep::{
    MAX_PEP_BYTES, MAX_PEP_ITEMS, MAX_PEP_NODES, PepAccess, PepConfig, PepConfigured, PepItem,
    PepLastItem, PepOptions, PepPublished,
};
pub use postgres::Postgres;
pub use push::{MAX_PUSH_REGISTRATIONS, PushRegistration};
pub use sqlite::Sqlite;
pub use worker::{JOB_OVERHEAD, Limits, RETRY_PAUSE, Storage};

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// SQLite reported an error.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL reported an error.
    #[error("database error: {0}")]
    Postgres(#[from] ::postgres::Error),
    /// A transaction failed to commit; the job's own result is void.
    #[error("commit failed: {0}")]
    Commit(String),
    /// The storage thread is gone (the core is shutting down).
    #[error("storage is closed")]
    Closed,
    /// The user's offline queue is full.
    #[error("offline quota exceeded")]
    QuotaExceeded,
    /// An archive query named an id the archive does not hold.
    #[error("no such archived message")]
    UnknownId,
    /// The data directory could not be created.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The storage queue is full (its byte budget is spent): the job was
    /// refused without running.
    #[error("storage is overloaded")]
    Overloaded,
    /// The job waited in the storage queue past its deadline (behind a slow
    /// or stalled database) and never ran.
    #[error("storage timed out")]
    Timeout,
    /// A job of the transaction panicked; the transaction was rolled back.
    #[error("a storage job panicked; its transaction was rolled back")]
    Panicked,
    /// The database cannot be reached; the store keeps reconnecting.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A [`FaultPlan`] made the call fail (tests and chaos runs only).
    #[error("injected fault")]
    Injected,
    /// A write's fence did not hold: this core no longer owns the user's
    /// slot at the epoch it wrote for (its lease expired, or another core
    /// claimed the slot). Nothing was written.
    #[error("fenced: slot {slot} is not this core's at epoch {epoch}")]
    Fenced {
        /// The slot.
        slot: u16,
        /// The epoch the write carried.
        epoch: i64,
    },
}

/// The fence a write for a user of a cluster's slot carries (issue 15):
/// the write goes ahead only if `core` owns `slot` at `epoch` with a live
/// lease, checked in the write's own transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteFence {
    /// The writing core's member id.
    pub core: String,
    /// The user's slot.
    pub slot: u16,
    /// The epoch this core owns it at.
    pub epoch: i64,
}

/// One stored offline message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfflineMessage {
    /// Row id (ascending in arrival order).
    pub id: i64,
    /// When it was stored (XEP-0082 timestamp).
    pub stamp: String,
    /// The stanza as routed.
    pub payload: Bytes,
}

/// Outcome of storing a message for a user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// Stored durably.
    Stored,
    /// The addressed local user does not exist.
    NoSuchUser,
}

/// Outcome of storing a message in a user's offline table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OfflineRow {
    /// Stored durably under this row id (ids increase in storing order).
    Row(i64),
    /// The addressed local user does not exist.
    NoSuchUser,
}

/// Whether an offline store is held to the user's offline quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OfflineQuota {
    /// Refused with [`StorageError::QuotaExceeded`] when the user's table
    /// holds the quota already (a message for a user who cannot take it).
    Checked,
    /// Not checked: a live row, the durable copy of a message delivered
    /// live to a stream-management session, bounded by the ledgers' own
    /// bounds instead (see the router's `live_rows`).
    Exempt,
}

/// A roster item's subscription state (RFC 6121 §2.1.2.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Subscription {
    /// Neither sees the other's presence.
    #[default]
    None,
    /// The user sees the contact's presence.
    To,
    /// The contact sees the user's presence.
    From,
    /// Both.
    Both,
}

impl Subscription {
    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::To => "to",
            Self::From => "from",
            Self::Both => "both",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Self {
        match s {
            "to" => Self::To,
            "from" => Self::From,
            "both" => Self::Both,
            _ => Self::None,
        }
    }

    /// Whether the user receives the contact's presence.
    pub fn to(self) -> bool {
        matches!(self, Self::To | Self::Both)
    }

    /// Whether the contact receives the user's presence.
    pub fn from(self) -> bool {
        matches!(self, Self::From | Self::Both)
    }

    /// The state with `to` and `from` set as given.
    pub fn with(to: bool, from: bool) -> Self {
        match (to, from) {
            (false, false) => Self::None,
            (true, false) => Self::To,
            (false, true) => Self::From,
            (true, true) => Self::Both,
        }
    }
}

/// One contact in a user's roster, with its subscription state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RosterItem {
    /// The contact's bare JID.
    pub jid: String,
    /// The user's name for the contact.
    pub name: Option<String>,
    /// Groups the user put the contact in.
    pub groups: Vec<String>,
    /// Subscription state.
    pub subscription: Subscription,
    /// The user asked to subscribe and waits for an answer (pending out).
    pub ask: bool,
    /// The contact asked to subscribe and waits for the user (pending in).
    pub pending_in: bool,
    /// Shown in the user's roster: false for an item that only records a
    /// request the user has not answered.
    pub listed: bool,
}

/// A user's roster with its version (XEP-0237).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Roster {
    /// Increases with every change.
    pub version: u64,
    /// Items, in no particular order.
    pub items: Vec<RosterItem>,
    /// The JIDs the user blocks (XEP-0191), in no particular order: loaded
    /// with the roster, since the same stanzas need both.
    pub blocked: Vec<String>,
}

/// One message for a user's archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveEntry {
    /// The archive's owner: a local part, or a persistent room's bare JID
    /// (see [`Store::set_muc_room`]).
    pub user: String,
    /// The stable id (XEP-0359 stanza-id), unique in the archive.
    pub id: String,
    /// The other party's bare JID.
    pub peer: String,
    /// When it was archived, in microseconds since the Unix epoch.
    pub stamp: i64,
    /// The message as routed.
    pub payload: Bytes,
}

/// Which part of an archive to return (XEP-0313 with XEP-0059 paging).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchiveQuery {
    /// Only messages with this bare JID.
    pub with: Option<String>,
    /// Not before this time (µs since the epoch).
    pub start: Option<i64>,
    /// Not after this time (µs since the epoch).
    pub end: Option<i64>,
    /// Only messages after this id.
    pub after: Option<String>,
    /// Only messages before this id.
    pub before: Option<String>,
    /// The page at the end of the range (newest messages) rather than at its
    /// start: `<before/>`, or `<before>id</before>`.
    pub from_end: bool,
    /// Most messages to return.
    pub max: usize,
}

/// One archived message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Archived {
    /// Its stable id.
    pub id: String,
    /// When it was archived (µs since the epoch).
    pub stamp: i64,
    /// The message.
    pub payload: Bytes,
}

/// One page of an archive query, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchivePage {
    /// The messages.
    pub items: Vec<Archived>,
    /// No message matches beyond this page (in the paging direction).
    pub complete: bool,
}

/// Runs `f`'s writes all or none inside the batch's transaction: when `f`
/// fails, what it wrote is undone and the other jobs of the batch still
/// commit. For a job of several writes (a roster change), since the jobs of
/// one batch share a transaction.
pub fn all_or_none<T>(
    db: &mut dyn Store,
    f: impl FnOnce(&mut dyn Store) -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    db.savepoint()?;
    match f(db) {
        Ok(t) => {
            db.release_savepoint()?;
            Ok(t)
        }
        Err(e) => {
            // (if even this fails, the backend fails the whole batch)
            db.rollback_to_savepoint()?;
            Err(e)
        }
    }
}

/// The storage interface both backends implement. Calls run on the
/// storage thread, inside the transaction [`Storage`] opened.
pub trait Store: Send {
    /// Opens a transaction.
    fn begin(&mut self) -> Result<(), StorageError>;
    /// Commits the open transaction.
    fn commit(&mut self) -> Result<(), StorageError>;
    /// Abandons the open transaction.
    fn rollback(&mut self);
    /// Marks a point in the open transaction that
    /// [`Store::rollback_to_savepoint`] returns to (see [`all_or_none`]).
    fn savepoint(&mut self) -> Result<(), StorageError>;
    /// Undoes what was written since the last savepoint; the transaction
    /// (and the other jobs of its batch) go on.
    fn rollback_to_savepoint(&mut self) -> Result<(), StorageError>;
    /// Forgets the last savepoint, keeping what was written since.
    fn release_savepoint(&mut self) -> Result<(), StorageError>;
    /// Checks a write's fence in the open transaction (and keeps the
    /// slot from changing hands until it ends); [`StorageError::Fenced`]
    /// if it does not hold. Stores without slot leases (the embedded one)
    /// have nothing to check.
    fn check_fence(&mut self, fence: &WriteFence) -> Result<(), StorageError> {
        let _ = fence;
        Ok(())
    }

    /// Creates an account; returns false if it exists.
    fn add_user(&mut self, username: &str, creds: &StoredCredentials)
    -> Result<bool, StorageError>;
    /// Replaces an account's credentials; returns false if it does not exist.
    fn set_credentials(
        &mut self,
        username: &str,
        creds: &StoredCredentials,
    ) -> Result<bool, StorageError>;
    /// Deletes an account with everything stored for it; false if absent.
    fn delete_user(&mut self, username: &str) -> Result<bool, StorageError>;
    /// An account's stored credentials.
    fn credentials(&mut self, username: &str) -> Result<Option<StoredCredentials>, StorageError>;
    /// Number of accounts.
    fn user_count(&mut self) -> Result<u64, StorageError>;

    /// Stores an offline message for an existing user, within the quota.
    fn store_offline(
        &mut self,
        username: &str,
        stamp: &str,
        payload: &[u8],
    ) -> Result<Stored, StorageError> {
        Ok(
            match self.store_offline_row(username, stamp, payload, OfflineQuota::Checked)? {
                OfflineRow::Row(_) => Stored::Stored,
                OfflineRow::NoSuchUser => Stored::NoSuchUser,
            },
        )
    }
    /// Stores an offline message for an existing user (held to the quota
    /// or not, as `quota` says) and returns its row id.
    fn store_offline_row(
        &mut self,
        username: &str,
        stamp: &str,
        payload: &[u8],
        quota: OfflineQuota,
    ) -> Result<OfflineRow, StorageError>;
    /// A user's offline messages, oldest first.
    fn offline(&mut self, username: &str) -> Result<Vec<OfflineMessage>, StorageError>;
    /// Removes delivered offline messages up to and including `last_id`.
    fn remove_offline(&mut self, username: &str, last_id: i64) -> Result<(), StorageError>;
    /// Removes these offline messages of a user (delivered live rows).
    fn remove_offline_rows(&mut self, username: &str, ids: &[i64]) -> Result<(), StorageError>;

    /// A user's roster (empty, version 0, for an unknown user).
    fn roster(&mut self, username: &str) -> Result<Roster, StorageError>;
    /// Adds or replaces a roster item and sets the roster's version.
    fn put_roster_item(
        &mut self,
        username: &str,
        item: &RosterItem,
        version: u64,
    ) -> Result<(), StorageError>;
    /// Removes a roster item and sets the roster's version.
    fn remove_roster_item(
        &mut self,
        username: &str,
        jid: &str,
        version: u64,
    ) -> Result<(), StorageError>;

    /// Adds a message to a user's archive, or to a room's when the entry's
    /// `user` is a stored room's bare JID (an unknown user's or room's
    /// entry is dropped). The write may be held until the transaction
    /// commits, so call it between [`Store::begin`] and [`Store::commit`],
    /// as [`Storage`] does.
    fn archive(&mut self, entry: &ArchiveEntry) -> Result<Stored, StorageError>;
    /// One page of a user's (or a room's) archive.
    fn query_archive(
        &mut self,
        username: &str,
        query: &ArchiveQuery,
    ) -> Result<ArchivePage, StorageError>;

    /// Adds JIDs to a user's block list (XEP-0191); those already in it
    /// stay as they are.
    fn block(&mut self, username: &str, jids: &[String]) -> Result<(), StorageError>;
    /// Removes JIDs from a user's block list; all of them if `jids` is
    /// empty.
    fn unblock(&mut self, username: &str, jids: &[String]) -> Result<(), StorageError>;
    /// Whether a user's block list holds any of `jids` (the forms of one
    /// sender's JID that a block list item can match: see
    /// [`crate::block_list::forms`]).
    fn blocks_any(&mut self, username: &str, jids: &[String]) -> Result<bool, StorageError>;
    /// Those of `users` whose block lists hold any of `jids` (one lookup
    /// each unless the backend does better).
    fn blockers(&mut self, users: &[String], jids: &[String]) -> Result<Vec<String>, StorageError> {
        let mut found = Vec::new();
        for user in users {
            if self.blocks_any(user, jids)? {
                found.push(user.clone());
            }
        }
        Ok(found)
    }

    /// A user's private XML element of `namespace` (XEP-0049), as stored.
    fn private_xml(
        &mut self,
        username: &str,
        namespace: &str,
    ) -> Result<Option<Bytes>, StorageError>;
    /// Replaces a user's private XML element of `namespace`; refused with
    /// [`StorageError::QuotaExceeded`] if it is a new namespace and the
    /// user keeps [`MAX_PRIVATE_NAMESPACES`] already.
    fn set_private_xml(
        &mut self,
        username: &str,
        namespace: &str,
        element: &[u8],
    ) -> Result<Stored, StorageError>;

    /// Publishes an item to a user's node (XEP-0163), creating the node
    /// with `options` (over the defaults) if it does not exist; refused if
    /// it exists with a configuration `options` does not match. The node
    /// keeps its newest `max_items`. Past [`MAX_PEP_NODES`] nodes or
    /// [`MAX_PEP_BYTES`] bytes a user: [`StorageError::QuotaExceeded`].
    fn pep_publish(
        &mut self,
        username: &str,
        node: &str,
        item: &PepItem,
        options: &PepOptions,
    ) -> Result<PepPublished, StorageError>;
    /// Creates a node (`create`) or changes an existing one's
    /// configuration, dropping items past a lowered `max_items`.
    fn pep_configure(
        &mut self,
        username: &str,
        node: &str,
        options: &PepOptions,
        create: bool,
    ) -> Result<PepConfigured, StorageError>;
    /// A node's configuration and items: those of `ids` if any are named,
    /// else the newest `max` (all if none), oldest first. None if there is
    /// no such node.
    fn pep_items(
        &mut self,
        username: &str,
        node: &str,
        ids: &[String],
        max: Option<u32>,
    ) -> Result<Option<(PepConfig, Vec<PepItem>)>, StorageError>;
    /// Removes an item; its node's configuration if both existed.
    fn pep_retract(
        &mut self,
        username: &str,
        node: &str,
        id: &str,
    ) -> Result<Option<PepConfig>, StorageError>;
    /// Removes a node and its items; its configuration if it existed.
    fn pep_delete(&mut self, username: &str, node: &str)
    -> Result<Option<PepConfig>, StorageError>;
    /// The newest item of each of `owners`' (local parts) nodes named in
    /// `nodes` that has one, with the node's configuration.
    fn pep_last_items(
        &mut self,
        owners: &[String],
        nodes: &[String],
    ) -> Result<Vec<PepLastItem>, StorageError>;

    /// A user's vCard (XEP-0054), as stored.
    fn vcard(&mut self, username: &str) -> Result<Option<Bytes>, StorageError>;
    /// Replaces a user's vCard.
    fn set_vcard(&mut self, username: &str, vcard: &[u8]) -> Result<Stored, StorageError>;

    /// A persistent group-chat room's record (XEP-0045), as stored, by the
    /// room's bare JID (`room@conference.example.org`); None if there is
    /// no such room.
    fn muc_room(&mut self, room: &str) -> Result<Option<Bytes>, StorageError>;
    /// Stores a room's record under its bare JID, replacing any record it
    /// had. Like the other writes it checks no fence itself: a job that
    /// must be fenced calls [`Store::check_fence`] first, in the same job.
    /// Keys are meant to be bare JIDs: a key without `@` is stored, but
    /// it could be an account's local part, so [`Store::archive`] never
    /// takes it for a room and [`Store::delete_muc_room`] leaves the
    /// archive under it alone.
    fn set_muc_room(&mut self, room: &str, record: &[u8]) -> Result<(), StorageError>;
    /// Deletes a room's record and its message archive (the archive rows
    /// whose owner is the room's bare JID, which contains `@` and so is no
    /// account's); returns whether a record existed.
    fn delete_muc_room(&mut self, room: &str) -> Result<bool, StorageError>;
    /// The bare JIDs of the stored rooms, in byte order (both backends
    /// alike), at most `limit` of them.
    fn muc_rooms(&mut self, limit: usize) -> Result<Vec<String>, StorageError>;

    /// Enables push notifications (XEP-0357) of an existing user to `node`
    /// of the app server `jid`, publishing with `options` (the XML of a
    /// publish-options form), replacing the registration of the same
    /// `jid` and `node` (its options, and its age: it counts as enabled
    /// now). A user keeps at most [`MAX_PUSH_REGISTRATIONS`]: past that
    /// the oldest is deleted.
    fn push_enable(
        &mut self,
        username: &str,
        jid: &str,
        node: &str,
        options: Option<&[u8]>,
    ) -> Result<Stored, StorageError>;
    /// Disables a user's registration of `jid` and `node`, or with no
    /// `node` every registration of that app server; returns how many
    /// were deleted.
    fn push_disable(
        &mut self,
        username: &str,
        jid: &str,
        node: Option<&str>,
    ) -> Result<usize, StorageError>;
    /// A user's push registrations, oldest first.
    fn push_registrations(&mut self, username: &str)
    -> Result<Vec<PushRegistration>, StorageError>;

    /// The FAST tokens (XEP-0484) of a user's user agent `client` (the
    /// SHA-256 of its id): at most one per slot, `Current` first.
    fn fast_tokens(
        &mut self,
        username: &str,
        client: &[u8],
    ) -> Result<Vec<FastToken>, StorageError>;
    /// Stores `token` (its slot is ignored: it goes to `New`, replacing an
    /// unused new token) for an existing user's user agent. A user keeps
    /// tokens for at most [`MAX_FAST_CLIENTS`] user agents: past that, the
    /// user agent whose newest token expires first loses its tokens.
    fn fast_issue(
        &mut self,
        username: &str,
        client: &[u8],
        token: &FastToken,
    ) -> Result<Stored, StorageError>;
    /// Records a successful authentication with `token` (a row read
    /// before: its slot and seed name it), carrying `count`: false, and
    /// nothing changed, if that token is no longer in that slot (deleted,
    /// replaced, promoted meanwhile) or `count` is not above its
    /// `last_count` (a replay); else the count is stored and a `New` token
    /// becomes `Current`, the old current one deleted. One conditional
    /// update decides, so of two uses with the same count on any cores
    /// exactly one succeeds.
    fn fast_use(
        &mut self,
        username: &str,
        client: &[u8],
        token: &FastToken,
        count: Option<i64>,
    ) -> Result<bool, StorageError>;
    /// Deletes a user agent's tokens (both slots).
    fn fast_invalidate(&mut self, username: &str, client: &[u8]) -> Result<(), StorageError>;
}

/// Whether `owner` of an archive row (or a room key) is a room's bare JID:
/// one with `@`, which no account's local part has (nodeprep forbids it).
fn is_room(owner: &str) -> bool {
    owner.contains('@')
}

/// Most namespaces one user keeps private XML under (XEP-0049); with the
/// element size bound (`MAX_PRIVATE_BYTES` in the router), at most 4 MiB
/// a user.
pub const MAX_PRIVATE_NAMESPACES: i64 = 64;

/// Opens the configured store: PostgreSQL when `database_url` is given,
/// else the embedded database in `data_dir`.
pub fn open(
    database_url: Option<&str>,
    data_dir: &Path,
    offline_quota: u32,
) -> Result<Box<dyn Store>, StorageError> {
    Ok(match database_url {
        Some(url) => Box::new(Postgres::open(url, offline_quota)?),
        None => Box::new(Sqlite::open(data_dir, offline_quota)?),
    })
}

/// For test suites and benchmarks: a new empty PostgreSQL database on the
/// server `LONGLINK_TEST_POSTGRES` names (a libpq key-value string such as
/// `host=127.0.0.1 port=5432 user=postgres`), as a connection string; `None`
/// when unset. Panics if `LONGLINK_REQUIRE_POSTGRES` is set but the server
/// is not, or cannot be reached, so CI cannot skip the backend silently.
pub fn postgres_for_tests(prefix: &str) -> Option<String> {
    let base = match std::env::var("LONGLINK_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            assert!(
                std::env::var_os("LONGLINK_REQUIRE_POSTGRES").is_none(),
                "LONGLINK_REQUIRE_POSTGRES is set but LONGLINK_TEST_POSTGRES is not"
            );
            tracing::warn!("PostgreSQL backend not tested: LONGLINK_TEST_POSTGRES is unset");
            return None;
        }
    };
    let name = format!(
        "{prefix}_{}_{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    // On a thread of its own: the client runs a runtime, which cannot nest
    // in a caller's.
    let (server, db) = (base.clone(), name.clone());
    let created = std::thread::spawn(move || {
        ::postgres::Client::connect(&server, ::postgres::NoTls)?
            .batch_execute(&format!("CREATE DATABASE {db}"))
    })
    .join();
    match created {
        Ok(Ok(())) => Some(format!("{base} dbname={name}")),
        Ok(Err(e)) => panic!("creating database {name} at LONGLINK_TEST_POSTGRES={base}: {e}"),
        Err(_) => panic!("creating database {name}: the thread panicked"),
    }
}

/// Encodes roster groups for a text column.
fn encode_groups(groups: &[String]) -> String {
    serde_json::to_string(groups).unwrap_or_else(|_| "[]".into())
}

/// Decodes roster groups from a text column.
fn decode_groups(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

/// An archive id (16 hex digits, as the router writes them) as the number
/// the backends store; anything else names no archived message.
fn archive_key(id: &str) -> Result<i64, StorageError> {
    u64::from_str_radix(id, 16)
        .ok()
        .filter(|_| !id.is_empty() && id.len() <= 16)
        .map(|k| k as i64)
        .ok_or(StorageError::UnknownId)
}

/// The stored number of an archive id as the id clients see.
fn archive_id(key: i64) -> String {
    format!("{:016x}", key as u64)
}

/// The WHERE conditions of an archive query after `username = $1`, with
/// `$n` placeholders from 2 on (SQLite accepts `?n` written as `$n` too),
/// and which of (with, start, end, after, before) they use, in order.
fn archive_filter(q: &ArchiveQuery) -> (String, [bool; 5]) {
    let used = [
        q.with.is_some(),
        q.start.is_some(),
        q.end.is_some(),
        q.after.is_some(),
        q.before.is_some(),
    ];
    let mut sql = String::new();
    let mut n = 2;
    for (on, cond) in used
        .iter()
        .zip(["peer = $", "stamp >= $", "stamp <= $", "id > $", "id < $"])
    {
        if *on {
            sql.push_str(&format!(" AND {cond}{n}"));
            n += 1;
        }
    }
    let order = if q.from_end { "DESC" } else { "ASC" };
    sql.push_str(&format!(" ORDER BY id {order} LIMIT ${n}"));
    (sql, used)
}

/// Turns rows fetched in paging order (at most `max + 1`) into a page,
/// oldest first.
fn page(items: &mut Vec<Archived>, q: &ArchiveQuery) -> ArchivePage {
    let complete = items.len() <= q.max;
    items.truncate(q.max);
    if q.from_end {
        items.reverse();
    }
    ArchivePage {
        items: std::mem::take(items),
        complete,
    }
}
