//! Fault injection for storage: [`FaultyStore`] wraps a real [`Store`] and
//! consults a [`FaultPlan`] before every call, so tests (and, later, the
//! chaos tool) can make the disk or database fail, refuse commits or stall,
//! and heal it again, while the real store underneath does the real work.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use bytes::Bytes;
use xmpp_sasl::StoredCredentials;

use super::{
    ArchiveEntry, ArchivePage, ArchiveQuery, FastToken, OfflineMessage, OfflineQuota, OfflineRow,
    PepConfig, PepConfigured, PepItem, PepLastItem, PepOptions, PepPublished, PushRegistration,
    Roster, RosterItem, StorageError, Store, Stored,
};

/// What the next storage calls do; shared (cheap clone) between a test and
/// the store it wraps.
#[derive(Clone, Default)]
pub struct FaultPlan {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when a stall ends.
    healed: Condvar,
}

#[derive(Default)]
struct State {
    fail_all: bool,
    fail_writes: usize,
    fail_commits: usize,
    fail_offline_loads: usize,
    stalled: bool,
    calls: u64,
    commits: u64,
}

/// The kind of a store call, for deciding which faults apply to it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    Read,
    Write,
    Begin,
    Commit,
    /// Loading a user's offline messages (a read a flush needs).
    OfflineLoad,
}

impl FaultPlan {
    /// A plan that injects nothing (until told to).
    pub fn new() -> Self {
        Self::default()
    }

    /// Every call (reads, writes, begin and commit) fails with
    /// [`StorageError::Injected`] until healed.
    pub fn fail_all(&self) {
        self.state().fail_all = true;
    }

    /// The next `n` write calls (store_offline, archive writes, roster
    /// writes, room records, removals...) fail.
    pub fn fail_writes(&self, n: usize) {
        self.state().fail_writes = n;
    }

    /// Write calls still to fail (see [`FaultPlan::fail_writes`]).
    pub fn writes_to_fail(&self) -> usize {
        self.state().fail_writes
    }

    /// The next `n` commits fail (the whole batch rolls back).
    pub fn fail_commits(&self, n: usize) {
        self.state().fail_commits = n;
    }

    /// The next `n` loads of offline messages (a flush's read) fail.
    pub fn fail_offline_loads(&self, n: usize) {
        self.state().fail_offline_loads = n;
    }

    /// Loads of offline messages still to fail (see
    /// [`FaultPlan::fail_offline_loads`]).
    pub fn offline_load_failures_left(&self) -> usize {
        self.state().fail_offline_loads
    }

    /// Every call blocks until [`FaultPlan::heal`] (a stalled disk / hung
    /// database).
    pub fn stall(&self) {
        self.state().stalled = true;
    }

    /// Back to normal; releases stalled calls.
    pub fn heal(&self) {
        let mut s = self.state();
        *s = State {
            calls: s.calls,
            commits: s.commits,
            ..State::default()
        };
        drop(s);
        self.shared.healed.notify_all();
    }

    /// Calls made so far (to let tests wait on "the write was attempted");
    /// a stalled call counts as soon as it starts waiting.
    pub fn calls(&self) -> u64 {
        self.state().calls
    }

    /// Commits that reached the real store (and so were attempted there).
    pub fn commits(&self) -> u64 {
        self.state().commits
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a call, waits out a stall, and says whether it must fail.
    fn check(&self, call: Call) -> Result<(), StorageError> {
        let mut s = self.state();
        s.calls += 1;
        while s.stalled {
            s = self
                .shared
                .healed
                .wait(s)
                .unwrap_or_else(|e| e.into_inner());
        }
        if s.fail_all {
            return Err(StorageError::Injected);
        }
        let budget = match call {
            Call::Write => &mut s.fail_writes,
            Call::Commit => &mut s.fail_commits,
            Call::OfflineLoad => &mut s.fail_offline_loads,
            Call::Read | Call::Begin => return Ok(()),
        };
        match *budget {
            0 => {
                s.commits += u64::from(call == Call::Commit);
                Ok(())
            }
            _ => {
                *budget -= 1;
                Err(StorageError::Injected)
            }
        }
    }
}

/// A Store that consults the plan before delegating to the real store it
/// wraps.
pub struct FaultyStore {
    inner: Box<dyn Store>,
    plan: FaultPlan,
}

impl FaultyStore {
    /// Wraps `inner`, injecting the faults `plan` names.
    pub fn new(inner: Box<dyn Store>, plan: FaultPlan) -> Self {
        Self { inner, plan }
    }
}

impl Store for FaultyStore {
    fn begin(&mut self) -> Result<(), StorageError> {
        self.plan.check(Call::Begin)?;
        self.inner.begin()
    }

    fn commit(&mut self) -> Result<(), StorageError> {
        self.plan.check(Call::Commit)?;
        self.inner.commit()
    }

    fn rollback(&mut self) {
        // A rollback cannot fail; it still waits out a stall.
        let _ = self.plan.check(Call::Read);
        self.inner.rollback()
    }

    fn savepoint(&mut self) -> Result<(), StorageError> {
        self.plan.check(Call::Read)?;
        self.inner.savepoint()
    }

    fn rollback_to_savepoint(&mut self) -> Result<(), StorageError> {
        self.plan.check(Call::Read)?;
        self.inner.rollback_to_savepoint()
    }

    fn release_savepoint(&mut self) -> Result<(), StorageError> {
        self.plan.check(Call::Read)?;
        self.inner.release_savepoint()
    }

    fn check_fence(&mut self, fence: &super::WriteFence) -> Result<(), StorageError> {
        self.plan.check(Call::Read)?;
        self.inner.check_fence(fence)
    }

    fn add_user(
        &mut self,
        username: &str,
        creds: &StoredCredentials,
    ) -> Result<bool, StorageError> {
        self.plan.check(Call::Write)?;
        self.inner.add_user(username, creds)
    }

    fn set_credentials(
        &mut self,
        username: &str,
        creds: &StoredCredentials,
    ) -> Result<bool, StorageError> {
        self.plan.check(Call::Write)?;
        self.inner.set_credentials(username, creds)
    }

    fn delete_user(&mut self, username: &str) -> Result<bool, StorageError> {
        self.plan.check(Call::Write)?;
        self.inner.delete_user(username)
    }

    fn credentials(&mut self, username: &str) -> Result<Option<StoredCredentials>, StorageError> {
        self.plan.check(Call::Read)?;
        self.inner.credentials(username)
    }

    fn user_count(&mut self) -> Result<u64, StorageError> {
        self.plan.check(Call::Read)?;
        self.inner.user_count()
    }

    fn store_offline_row(
        &mut self,
        username: &str,
        stamp: &str,
        payload: &[u8],
        quota: OfflineQuota,
    ) -> Result<OfflineRow, StorageError> {
        self.plan.check(Call::Write)?;
        self.inner
            .store_offline_row(username, stamp, payload, quota)
    }

    fn offline(&mut self, username: &str) -> Result<Vec<OfflineMessage>, StorageError> {
        self.plan.check(Call::OfflineLoad)?;
        self.inner.offline(username)
    }

    fn remove_offline(&mut self, username: &str, last_id: i64) -> Result<(), StorageError> {
        self.plan.check(Call::Write)?;
        self.inner.remove_offline(username, last_id)
    }

    fn remove_offline_rows(&mut self, username: &str, ids: &[i64]) -> Result<(), StorageError> {
        self.plan.check(Call::Write)?;
        self.inner.remove_offline_rows(username, ids)
    }

    fn roster(&mut self, username: &str) -> Result<Roster, StorageError> {
        self.plan.check(Call::Read)?;
        self.inner.roster(username)
    }

    fn put_roster_item(
        &mut self,
        username: &str,
        item: &RosterItem,
        version: u64,
    ) -> Result<(), StorageError> {
        self.plan.check(Call::Write)?;
        self.inner.put_roster_item(username, item, version)
    }

    fn remove_roster_item(
        &mut self,
        username: &str,
        jid: &str,
        version: u64,
    ) -> Result<(), StorageError> {
        self.plan.check(Call::Write)?;
        self.inner.remove_roster_item(username, jid, version)
    }

    fn archive(&mut self, entry: &ArchiveEntry) -> Result<Stored, StorageError> {
        self.plan.check(Call::Write)?;
        self.inner.archive(entry)
    }

    fn query_archive(
        &mut self,
        username: &str,
        query: &ArchiveQuery,
    ) -> Result<ArchivePage, StorageError> {
        self.plan.check(Call::Read)?;
        self.inner.query_archive(username, query)
    }

    fn block(&mut self, username: &str, jids: &[String]) -> Result<(), StorageError> {
        self.plan.check(Call::Write)?;
        self.inner.block(username, jids)
    }

    fn unblock(&mut self, username: &str, jids: &[String]) -> Result<(), StorageError> {
        self.plan.check(Call::Write)?;
        self.inner.unblock(username, jids)
    }

    fn blocks_any(&mut self, username: &str, jids: &[String]) -> Result<bool, StorageError> {
        self.plan.check(Call::Read)?;
        self.inner.blocks_any(username, jids)
    }

    fn private_xml(
        &mut self,
        username: &str,
        namespace: &str,
    ) -> Result<Option<Bytes>, StorageError> {
        self.plan.check(Call::Read)?;
        self.inner.private_xml(username, namespace)
    }

    fn set_private_xml(
        &mut self,
        username: &str,
        namespace: &str,
        element: &[u8],
    ) -> Result<Stored, StorageError> {
        self.plan.check(Call::Write)?;
        self.inner.set_private_xml(username, namespace, element)
    }

    fn pep_publish(
        &mut self,
        username: &str,
        node: &str,
        item: &PepItem,
        options: &PepOptions,
    ) -> Result<PepPublished, StorageError> {
        self.plan.check(Call::Write)?;
        self.inner.pep_publish(username, node, item, options)
    }

    fn pep_configure(
        &mut self,
        username: &str,
        node: &str,
        options: &PepOptions,
        create: bool,
    ) -> Result<PepConfigured, StorageError> {
        self.plan.check(Call::Write)?;
        self.inner.pep_configure(username, node, options, create)
    }

    fn pep_items(
        &mut self,
        username: &str,
        node: &str,
        ids: &[String],
        max: Option<u32>,
    ) -> Result<Option<(PepConfig, Vec<PepItem>)>, StorageError> {
        self.plan.check(Call::Read)?;
        self.inner.pep_items(username, node, ids, max)
    }

    fn pep_retract(
        &mut self,
        username: &str,
        node: &str,
        id: &str,
    ) -> Result<Option<PepConfig>, StorageError> {
        self.plan.check(Call::Write)?;
        self.inner.pep_retract(username, node, id)
    }

    fn pep_delete(
        &mut self,
        username: &str,
        node: &str,
    ) -> Result<Option<PepConfig>, StorageError> {
        self.plan.check(Call::Write)?;
        self.inner.pep_delete(username, node)
    }

    fn pep_last_items(
        &mut self,
        owners: &[String],
        nodes: &[String],
    ) -> Result<Vec<PepLastItem>, StorageError> {
        self.plan.check(Call::Read)?;
        self.inner.pep_last_items(owners, nodes)
    }

    fn vcard(&mut self, username: &str) -> Result<Option<Bytes>, StorageError> {
        self.plan.check(Call::Read)?;
        self.inner.vcard(username)
    }

    fn set_vcard(&mut self, username: &str, vcard: &[u8]) -> Result<Stored, StorageError> {
        self.plan.check(Call::Write)?;
        self.inner.set_vcard(username, vcard)
    }

    fn muc_room(&mut self, room: &str) -> Result<Option<Bytes>, StorageError> {
        self.plan.check(Call::Read)?;
        self.inner.muc_room(room)
    }

    fn set_muc_room(&mut self, room: &str, record: &[u8]) -> Result<(), StorageError> {
        self.plan.check(Call::Write)?;
        self.inner.set_muc_room(room, record)
    }

    fn delete_muc_room(&mut self, room: &str) -> Result<bool, StorageError> {
        self.plan.check(Call::Write)?;
        self.inner.delete_muc_room(room)
    }

    fn muc_rooms(&mut self, limit: usize) -> Result<Vec<String>, StorageError> {
        self.plan.check(Call::Read)?;
        self.inner.muc_rooms(limit)
    }

    fn push_enable(
        &mut self,
        username: &str,
        jid: &str,
        node: &str,
        options: Option<&[u8]>,
    ) -> Result<Stored, StorageError> {
        self.plan.check(Call::Write)?;
        self.inner.push_enable(username, jid, node, options)
    }

    fn push_disable(
        &mut self,
        username: &str,
        jid: &str,
        node: Option<&str>,
    ) -> Result<usize, StorageError> {
        self.plan.check(Call::Write)?;
        self.inner.push_disable(username, jid, node)
    }

    fn push_registrations(
        &mut self,
        username: &str,
    ) -> Result<Vec<PushRegistration>, StorageError> {
        self.plan.check(Call::Read)?;
        self.inner.push_registrations(username)
    }

    fn fast_tokens(
        &mut self,
        username: &str,
        client: &[u8],
    ) -> Result<Vec<FastToken>, StorageError> {
        self.plan.check(Call::Read)?;
        self.inner.fast_tokens(username, client)
    }

    fn fast_issue(
        &mut self,
        username: &str,
        client: &[u8],
        token: &FastToken,
    ) -> Result<Stored, StorageError> {
        self.plan.check(Call::Write)?;
        self.inner.fast_issue(username, client, token)
    }

    fn fast_use(
        &mut self,
        username: &str,
        client: &[u8],
        token: &FastToken,
        count: Option<i64>,
    ) -> Result<bool, StorageError> {
        self.plan.check(Call::Write)?;
        self.inner.fast_use(username, client, token, count)
    }

    fn fast_invalidate(&mut self, username: &str, client: &[u8]) -> Result<(), StorageError> {
        self.plan.check(Call::Write)?;
        self.inner.fast_invalidate(username, client)
    }
}
