//! The core-sim fixture: a generated, deterministic store of accounts and
//! rosters, so that a core can be loaded with millions of sessions without
//! hours of inserts. **A fixture of the load tool, never a production
//! backend**: it keeps what the core writes (offline and live rows) in
//! memory, is not transactional (nothing in it fails, so the storage
//! thread never rolls back; a panicking job's writes would stay), takes no
//! account or roster changes, and has no archive, vCards, group-chat
//! rooms or push registrations (core-sim runs the core with archiving off). The storage work a
//! login costs on a real database is measured apart (docs/SCALING.md).
//!
//! Users are `u0` … `u{N-1}`; user `i`'s contacts are `u{i±1}` …
//! `u{i±C/2}` (modulo N), all with subscription `both`, so rosters are
//! symmetric and presence fans out to `C` contacts. Every account has the
//! same credentials (password [`PASSWORD`], a fixed salt), so a simulated
//! client derives its SCRAM keys once.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use im_core::storage::{
    ArchiveEntry, ArchivePage, ArchiveQuery, OfflineMessage, OfflineQuota, OfflineRow, PepConfig,
    PepConfigured, PepItem, PepLastItem, PepOptions, PepPublished, PushRegistration, Roster,
    RosterItem, StorageError, Store, Stored, Subscription,
};
use xmpp_sasl::StoredCredentials;

/// Every fixture account's password.
pub const PASSWORD: &str = "sim";

/// The population: how many users, how many contacts each.
#[derive(Clone, Copy, Debug)]
pub struct Population {
    /// Users `u0` … `u{users-1}`.
    pub users: u32,
    /// Contacts per user (even; at most `users - 1`).
    pub contacts: u32,
}

impl Population {
    /// The index of user `name` (`u{i}`), if it is one of the population.
    pub fn index(&self, name: &str) -> Option<u32> {
        let digits = name.strip_prefix('u')?;
        if digits.starts_with('0') && digits.len() > 1 {
            return None;
        }
        digits.parse().ok().filter(|i| *i < self.users)
    }

    /// The contacts of user `i`, in roster order.
    pub fn contacts_of(&self, i: u32) -> impl Iterator<Item = u32> + '_ {
        let half = (self.contacts / 2).min(self.users.saturating_sub(1) / 2);
        let n = self.users;
        (1..=half).flat_map(move |k| [(i + k) % n, (i + n - k % n) % n])
    }
}

/// The fixture store (module docs).
pub struct FixtureStore {
    population: Population,
    domain: String,
    credentials: StoredCredentials,
    /// Offline and live rows by user, by row id.
    offline: HashMap<String, BTreeMap<i64, OfflineMessage>>,
    next_row: i64,
    offline_quota: u32,
}

impl FixtureStore {
    /// The fixture for `population` in `domain`.
    pub fn new(population: Population, domain: &str, offline_quota: u32) -> Self {
        Self {
            population,
            domain: domain.to_owned(),
            credentials: StoredCredentials::derive(
                PASSWORD,
                b"core-sim fixture",
                StoredCredentials::MIN_ITERATIONS,
            ),
            offline: HashMap::new(),
            next_row: 1,
            offline_quota,
        }
    }
}

/// What the fixture refuses: changes to generated data.
fn refused(what: &str) -> StorageError {
    StorageError::Unavailable(format!("the core-sim fixture does not take {what}"))
}

impl Store for FixtureStore {
    fn begin(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
    fn commit(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
    fn rollback(&mut self) {}
    fn savepoint(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
    fn rollback_to_savepoint(&mut self) -> Result<(), StorageError> {
        Err(refused("rollbacks"))
    }
    fn release_savepoint(&mut self) -> Result<(), StorageError> {
        Ok(())
    }

    fn add_user(&mut self, _: &str, _: &StoredCredentials) -> Result<bool, StorageError> {
        Err(refused("new accounts"))
    }
    fn set_credentials(&mut self, _: &str, _: &StoredCredentials) -> Result<bool, StorageError> {
        Err(refused("password changes"))
    }
    fn delete_user(&mut self, _: &str) -> Result<bool, StorageError> {
        Err(refused("account deletion"))
    }
    fn credentials(&mut self, username: &str) -> Result<Option<StoredCredentials>, StorageError> {
        Ok(self
            .population
            .index(username)
            .map(|_| self.credentials.clone()))
    }
    fn user_count(&mut self) -> Result<u64, StorageError> {
        Ok(u64::from(self.population.users))
    }

    fn store_offline_row(
        &mut self,
        username: &str,
        stamp: &str,
        payload: &[u8],
        quota: OfflineQuota,
    ) -> Result<OfflineRow, StorageError> {
        if self.population.index(username).is_none() {
            return Ok(OfflineRow::NoSuchUser);
        }
        let rows = self.offline.entry(username.to_owned()).or_default();
        if quota == OfflineQuota::Checked && rows.len() >= self.offline_quota as usize {
            return Err(StorageError::QuotaExceeded);
        }
        let id = self.next_row;
        self.next_row += 1;
        rows.insert(
            id,
            OfflineMessage {
                id,
                stamp: stamp.to_owned(),
                payload: Bytes::copy_from_slice(payload),
            },
        );
        Ok(OfflineRow::Row(id))
    }
    fn offline(&mut self, username: &str) -> Result<Vec<OfflineMessage>, StorageError> {
        Ok(self
            .offline
            .get(username)
            .map(|rows| rows.values().cloned().collect())
            .unwrap_or_default())
    }
    fn remove_offline(&mut self, username: &str, last_id: i64) -> Result<(), StorageError> {
        if let Some(rows) = self.offline.get_mut(username) {
            rows.retain(|id, _| *id > last_id);
            if rows.is_empty() {
                self.offline.remove(username);
            }
        }
        Ok(())
    }
    fn remove_offline_rows(&mut self, username: &str, ids: &[i64]) -> Result<(), StorageError> {
        if let Some(rows) = self.offline.get_mut(username) {
            for id in ids {
                rows.remove(id);
            }
            if rows.is_empty() {
                self.offline.remove(username);
            }
        }
        Ok(())
    }

    fn roster(&mut self, username: &str) -> Result<Roster, StorageError> {
        let Some(i) = self.population.index(username) else {
            return Ok(Roster::default());
        };
        let items = self
            .population
            .contacts_of(i)
            .map(|c| RosterItem {
                jid: format!("u{c}@{}", self.domain),
                name: None,
                groups: Vec::new(),
                subscription: Subscription::Both,
                ask: false,
                pending_in: false,
                listed: true,
            })
            .collect();
        Ok(Roster {
            version: 1,
            items,
            blocked: Vec::new(),
        })
    }
    fn put_roster_item(&mut self, _: &str, _: &RosterItem, _: u64) -> Result<(), StorageError> {
        Err(refused("roster changes"))
    }
    fn remove_roster_item(&mut self, _: &str, _: &str, _: u64) -> Result<(), StorageError> {
        Err(refused("roster changes"))
    }

    fn archive(&mut self, _: &ArchiveEntry) -> Result<Stored, StorageError> {
        Err(refused("archive entries (run the core with archiving off)"))
    }
    fn query_archive(&mut self, _: &str, _: &ArchiveQuery) -> Result<ArchivePage, StorageError> {
        Ok(ArchivePage {
            items: Vec::new(),
            complete: true,
        })
    }
    fn block(&mut self, _: &str, _: &[String]) -> Result<(), StorageError> {
        Err(refused("block lists"))
    }
    fn unblock(&mut self, _: &str, _: &[String]) -> Result<(), StorageError> {
        Err(refused("block lists"))
    }
    fn blocks_any(&mut self, _: &str, _: &[String]) -> Result<bool, StorageError> {
        // (the generated population blocks nobody)
        Ok(false)
    }
    fn private_xml(&mut self, _: &str, _: &str) -> Result<Option<Bytes>, StorageError> {
        Ok(None)
    }
    fn set_private_xml(&mut self, _: &str, _: &str, _: &[u8]) -> Result<Stored, StorageError> {
        Err(refused("private XML"))
    }
    fn pep_publish(
        &mut self,
        _: &str,
        _: &str,
        _: &PepItem,
        _: &PepOptions,
    ) -> Result<PepPublished, StorageError> {
        Err(refused("PEP items"))
    }
    fn pep_configure(
        &mut self,
        _: &str,
        _: &str,
        _: &PepOptions,
        _: bool,
    ) -> Result<PepConfigured, StorageError> {
        Err(refused("PEP nodes"))
    }
    fn pep_items(
        &mut self,
        _: &str,
        _: &str,
        _: &[String],
        _: Option<u32>,
    ) -> Result<Option<(PepConfig, Vec<PepItem>)>, StorageError> {
        Ok(None)
    }
    fn pep_retract(
        &mut self,
        _: &str,
        _: &str,
        _: &str,
    ) -> Result<Option<PepConfig>, StorageError> {
        Ok(None)
    }
    fn pep_delete(&mut self, _: &str, _: &str) -> Result<Option<PepConfig>, StorageError> {
        Ok(None)
    }
    fn pep_last_items(
        &mut self,
        _: &[String],
        _: &[String],
    ) -> Result<Vec<PepLastItem>, StorageError> {
        Ok(Vec::new())
    }
    fn vcard(&mut self, _: &str) -> Result<Option<Bytes>, StorageError> {
        Ok(None)
    }
    fn set_vcard(&mut self, _: &str, _: &[u8]) -> Result<Stored, StorageError> {
        Err(refused("vCards"))
    }
    fn muc_room(&mut self, _: &str) -> Result<Option<Bytes>, StorageError> {
        Ok(None)
    }
    fn set_muc_room(&mut self, _: &str, _: &[u8]) -> Result<(), StorageError> {
        Err(refused("group-chat rooms"))
    }
    fn delete_muc_room(&mut self, _: &str) -> Result<bool, StorageError> {
        Ok(false)
    }
    fn muc_rooms(&mut self, _: usize) -> Result<Vec<String>, StorageError> {
        Ok(Vec::new())
    }
    fn push_enable(
        &mut self,
        _: &str,
        _: &str,
        _: &str,
        _: Option<&[u8]>,
    ) -> Result<Stored, StorageError> {
        Err(refused("push registrations"))
    }
    fn push_disable(&mut self, _: &str, _: &str, _: Option<&str>) -> Result<usize, StorageError> {
        Ok(0)
    }
    fn push_registrations(&mut self, _: &str) -> Result<Vec<PushRegistration>, StorageError> {
        Ok(Vec::new())
    }
    fn fast_tokens(
        &mut self,
        _: &str,
        _: &[u8],
    ) -> Result<Vec<im_core::storage::FastToken>, StorageError> {
        Ok(Vec::new())
    }
    fn fast_issue(
        &mut self,
        _: &str,
        _: &[u8],
        _: &im_core::storage::FastToken,
    ) -> Result<Stored, StorageError> {
        Err(refused("FAST tokens"))
    }
    fn fast_use(
        &mut self,
        _: &str,
        _: &[u8],
        _: &im_core::storage::FastToken,
        _: Option<i64>,
    ) -> Result<bool, StorageError> {
        Ok(false)
    }
    fn fast_invalidate(&mut self, _: &str, _: &[u8]) -> Result<(), StorageError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rosters_are_symmetric_and_hold_the_configured_number_of_contacts() {
        let p = Population {
            users: 1000,
            contacts: 50,
        };
        for i in [0, 1, 24, 500, 999] {
            let contacts: Vec<u32> = p.contacts_of(i).collect();
            assert_eq!(contacts.len(), 50);
            assert!(!contacts.contains(&i));
            for c in contacts {
                assert!(p.contacts_of(c).any(|back| back == i), "{i} ↔ {c}");
            }
        }
        let small = Population {
            users: 5,
            contacts: 50,
        };
        let mut few: Vec<u32> = small.contacts_of(0).collect();
        few.sort_unstable();
        assert_eq!(
            few,
            vec![1, 2, 3, 4],
            "a small population: everyone else once"
        );
    }

    #[test]
    fn only_the_population_exists() {
        let p = Population {
            users: 10,
            contacts: 2,
        };
        assert_eq!(p.index("u0"), Some(0));
        assert_eq!(p.index("u9"), Some(9));
        assert_eq!(p.index("u10"), None);
        assert_eq!(p.index("u01"), None, "one spelling per user");
        assert_eq!(p.index("alice"), None);
        let mut store = FixtureStore::new(p, "sim.test", 10);
        assert!(matches!(
            store.store_offline_row("u3", "t", b"<m/>", OfflineQuota::Checked),
            Ok(OfflineRow::Row(_))
        ));
        assert!(matches!(
            store.store_offline_row("u10", "t", b"<m/>", OfflineQuota::Checked),
            Ok(OfflineRow::NoSuchUser)
        ));
        assert_eq!(store.offline("u3").map(|r| r.len()).ok(), Some(1));
        assert!(store.credentials("u3").ok().flatten().is_some());
        assert!(store.credentials("u10").ok().flatten().is_none());
    }
}
