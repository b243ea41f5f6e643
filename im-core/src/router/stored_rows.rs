//! Which offline-storage rows are out with a session and not yet
//! acknowledged, per user: a stored message is removed from storage only
//! once its client acknowledged it (XEP-0198 `<a h/>`), or once it was
//! handed to the link of a session without stream management. Until then
//! it stays stored, so a core crash loses nothing: the next login loads it
//! again.
//!
//! Removal is by "every row up to" ([`super::Action::RemoveOffline`]), so
//! the line removed never passes a row still out with a session or handed
//! back to storage by a session that ended unacknowledged; a load does not
//! hand out again a row that is out or acknowledged. Only users with rows
//! out or a load under way have an entry, so the table is bounded by the
//! ledgers' bounds and the sessions.
//!
//! Live rows (the durable copies of messages delivered live to SM
//! sessions, see `live_rows`) are out too, so the line never passes one
//! unacknowledged; but they were not handed out by a load, in row order, so
//! they never move the load's marks (`handed_upto`, `acked_upto`: rows
//! below those were all loaded), and once acknowledged they are removed by
//! id ([`Removal::rows`]), in the same action as the line.
//!
//! A live row can be in several ledgers at once (one message to several
//! SM sessions of a user): it is out as long as one holds it, so one
//! session's end does not hand it back while another still holds it (a
//! flush would deliver it to that one again); the first acknowledgement
//! removes it.
//!
//! A session of the user that ended with rows out hands them back: they are
//! loaded again by the next flush. A row acknowledged above a handed-back
//! one stays stored until that one is acknowledged too; if the entry was
//! dropped meanwhile (nothing out and no load under way), it can be
//! delivered once more (a duplicate with its original id, never a loss).
//!
//! A load may have read rows before their removal committed (it was queued
//! ahead of it): so while loads of the user are under way, the entry stays
//! (its marks say what was acknowledged) and live rows removed by id are
//! remembered, and such a load hands out none of them again.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What storage may remove now (see [`super::Action::RemoveOffline`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Removal {
    /// Every row up to this one.
    pub(crate) upto: i64,
    /// And these live rows above it.
    pub(crate) rows: Vec<i64>,
}

/// The rows out with sessions, per user (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct StoredRows {
    users: HashMap<String, UserRows>,
}

/// One user's rows.
#[derive(Debug, Default)]
struct UserRows {
    /// Rows in sessions' ledgers, not acknowledged, with how many ledgers
    /// hold each.
    out: BTreeMap<i64, u32>,
    /// Those of `out` that are live rows (not handed out by a load).
    live: BTreeSet<i64>,
    /// Rows a session handed back unacknowledged (still stored, to load
    /// again).
    returned: BTreeSet<i64>,
    /// The highest row handed out.
    handed_upto: i64,
    /// The highest row acknowledged.
    acked_upto: i64,
    /// Removal was asked for every row up to this one.
    removed_upto: i64,
    /// Loads of the user's stored messages under way.
    loads: u32,
    /// Live rows whose removal was asked while a load was under way (it
    /// may have read them); forgotten when no load is.
    removed_live: BTreeSet<i64>,
}

impl UserRows {
    /// Nothing out and no load under way: the entry says nothing a load
    /// needs.
    fn idle(&self) -> bool {
        self.out.is_empty() && self.loads == 0
    }
}

impl StoredRows {
    /// Drops `user`'s entry; a table left mostly empty by a burst of loads
    /// gives its memory back.
    fn forget(&mut self, user: &str) {
        self.users.remove(user);
        if self.users.capacity() > 1024 && self.users.len() < self.users.capacity() / 4 {
            self.users.shrink_to(self.users.len() * 2);
        }
    }

    /// Whether a loaded row of `user` is to be handed to a session: not
    /// one out with a session already, nor one acknowledged.
    pub(crate) fn wanted(&self, user: &str, row: i64) -> bool {
        let Some(u) = self.users.get(user) else {
            return true;
        };
        if u.out.contains_key(&row) || u.removed_live.contains(&row) {
            return false;
        }
        row > u.handed_upto.max(u.removed_upto) || u.returned.contains(&row)
    }

    /// Whether `row` of `user` is out with a session.
    pub(crate) fn is_out(&self, user: &str, row: i64) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.out.contains_key(&row))
    }

    /// `row` of `user` went into a session's ledger.
    pub(crate) fn handed(&mut self, user: &str, row: i64) {
        let u = self.users.entry(user.to_owned()).or_default();
        u.returned.remove(&row);
        u.live.remove(&row);
        *u.out.entry(row).or_default() += 1;
        u.handed_upto = u.handed_upto.max(row);
    }

    /// Live row `row` of `user` is in `holders` sessions' ledgers (its
    /// message was delivered live; the row came back from storage). A row
    /// storage was already asked to remove, or one a flush handed out
    /// already, is not taken in again (a safeguard: a load waits for the
    /// live rows of its user being written, so neither should happen).
    pub(crate) fn live(&mut self, user: &str, row: i64, holders: u32) {
        let u = self.users.entry(user.to_owned()).or_default();
        if row <= u.removed_upto {
            if u.idle() {
                self.forget(user);
            }
            return;
        }
        match u.out.get_mut(&row) {
            // a flush handed it out already
            Some(n) => *n += holders,
            None => {
                u.out.insert(row, holders.max(1));
                u.live.insert(row);
            }
        }
    }

    /// The client acknowledged these rows of `user` (or they were handed to
    /// a session without stream management): what storage may now remove,
    /// if the line moved or live rows were acknowledged. A row not out
    /// (acknowledged already, by another session holding the same live
    /// row) is ignored.
    pub(crate) fn acked(&mut self, user: &str, rows: &[i64]) -> Option<Removal> {
        if rows.is_empty() {
            return None;
        }
        let u = self.users.get_mut(user)?;
        let mut live = Vec::new();
        for row in rows {
            if u.out.remove(row).is_none() {
                continue;
            }
            if u.live.remove(row) {
                live.push(*row);
            } else {
                u.acked_upto = u.acked_upto.max(*row);
            }
        }
        let held = [u.out.keys().next(), u.returned.first()]
            .into_iter()
            .flatten()
            .min()
            .map_or(i64::MAX, |first| first - 1);
        let line = u.acked_upto.min(held);
        let moved = line > u.removed_upto;
        if moved {
            u.removed_upto = line;
        }
        let upto = u.removed_upto;
        live.retain(|&row| row > upto);
        if u.loads > 0 {
            u.removed_live.extend(&live);
        }
        let removal = (moved || !live.is_empty()).then_some(Removal { upto, rows: live });
        if u.idle() {
            self.forget(user);
        }
        removal
    }

    /// A session of `user` ended with these rows unacknowledged: those no
    /// other session holds stay stored, to be loaded again; returns them.
    pub(crate) fn returned(&mut self, user: &str, rows: &[i64]) -> Vec<i64> {
        let Some(u) = self.users.get_mut(user) else {
            return Vec::new();
        };
        let mut back = Vec::new();
        for row in rows {
            let Some(n) = u.out.get_mut(row) else {
                continue;
            };
            if *n > 1 {
                *n -= 1; // still in another session's ledger
                continue;
            }
            u.out.remove(row);
            // a live row handed back is loaded as any stored one
            u.live.remove(row);
            u.returned.insert(*row);
            back.push(*row);
        }
        if u.idle() {
            // Nothing out: a load hands out what storage holds.
            self.forget(user);
        }
        back
    }

    /// A load of `user`'s stored messages was queued.
    pub(crate) fn load_started(&mut self, user: &str) {
        self.users.entry(user.to_owned()).or_default().loads += 1;
    }

    /// A load of `user`'s stored messages ended (its rows were handed out,
    /// or it failed).
    pub(crate) fn load_ended(&mut self, user: &str) {
        let Some(u) = self.users.get_mut(user) else {
            return;
        };
        u.loads = u.loads.saturating_sub(1);
        if u.loads == 0 {
            u.removed_live.clear();
        }
        if u.idle() {
            self.forget(user);
        }
    }

    /// Users with rows out.
    #[cfg(test)]
    pub(crate) fn users(&self) -> usize {
        self.users.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(upto: i64) -> Removal {
        Removal {
            upto,
            rows: Vec::new(),
        }
    }

    #[test]
    fn rows_are_removed_only_up_to_the_first_unacknowledged_one() {
        let mut rows = StoredRows::default();
        for r in 1..=5 {
            assert!(rows.wanted("bob", r));
            rows.handed("bob", r);
        }
        // a second load does not hand them out again
        assert!(!rows.wanted("bob", 3));
        assert!(rows.wanted("bob", 6));
        assert_eq!(rows.acked("bob", &[1, 2]), Some(up(2)));
        assert!(!rows.wanted("bob", 2), "acknowledged");
        assert_eq!(rows.acked("bob", &[3, 4, 5]), Some(up(5)));
        assert_eq!(rows.users(), 0);
    }

    #[test]
    fn a_second_session_acknowledging_does_not_remove_rows_another_holds() {
        let mut rows = StoredRows::default();
        for r in 1..=3 {
            rows.handed("bob", r);
        }
        for r in 4..=5 {
            rows.handed("bob", r);
        }
        // the second ledger (4, 5) is acknowledged first
        assert_eq!(rows.acked("bob", &[4, 5]), None);
        assert_eq!(rows.acked("bob", &[1]), Some(up(1)));
        assert_eq!(rows.acked("bob", &[2, 3]), Some(up(5)));
    }

    #[test]
    fn rows_handed_back_stay_stored_and_block_removal_past_them() {
        let mut rows = StoredRows::default();
        for r in 1..=4 {
            rows.handed("bob", r);
        }
        rows.returned("bob", &[1, 2]);
        assert!(rows.wanted("bob", 1), "loadable again");
        assert!(!rows.wanted("bob", 3), "still out");
        assert_eq!(rows.acked("bob", &[3]), None, "1 and 2 are stored still");
        rows.handed("bob", 1);
        rows.handed("bob", 2);
        assert_eq!(rows.acked("bob", &[1, 2, 4]), Some(up(4)));
        assert_eq!(rows.users(), 0);
    }

    #[test]
    fn live_rows_are_removed_by_id_and_never_move_the_load_marks() {
        let mut rows = StoredRows::default();
        // a flush handed 1 and 2; live rows 3 and 5 went out; 4 is stored
        // for a flush still to come (never loaded)
        rows.handed("bob", 1);
        rows.handed("bob", 2);
        rows.live("bob", 3, 1);
        rows.live("bob", 5, 1);
        assert!(!rows.wanted("bob", 5), "out live");
        assert!(rows.wanted("bob", 4), "a live row is no load mark");
        // the live rows acknowledged first: removed by id, not by line
        assert_eq!(
            rows.acked("bob", &[5]),
            Some(Removal {
                upto: 0,
                rows: vec![5]
            })
        );
        // a second session holding the same live row acknowledges it: no-op
        assert_eq!(rows.acked("bob", &[5]), None);
        assert_eq!(rows.acked("bob", &[1, 2]), Some(up(2)));
        // the line stops at 2 (row 4 was never loaded): 3 goes by id
        assert_eq!(
            rows.acked("bob", &[3]),
            Some(Removal {
                upto: 2,
                rows: vec![3]
            })
        );
        assert_eq!(rows.users(), 0);
    }

    #[test]
    fn an_unacknowledged_live_row_holds_the_line_and_comes_back_by_a_load() {
        let mut rows = StoredRows::default();
        rows.live("bob", 3, 1);
        for r in [4, 5] {
            rows.handed("bob", r);
        }
        assert_eq!(rows.acked("bob", &[4, 5]), Some(up(2)), "live 3 is out");
        rows.live("bob", 6, 1);
        rows.returned("bob", &[3]);
        assert!(rows.wanted("bob", 3), "handed back: loadable");
        rows.handed("bob", 3);
        assert_eq!(
            rows.acked("bob", &[3, 6]),
            Some(Removal {
                upto: 5,
                rows: vec![6]
            })
        );
    }

    #[test]
    fn a_live_row_in_two_ledgers_is_not_handed_back_while_one_still_holds_it() {
        let mut rows = StoredRows::default();
        rows.live("bob", 7, 2);
        assert!(rows.returned("bob", &[7]).is_empty(), "the other holds it");
        assert!(!rows.wanted("bob", 7), "so no flush hands it out again");
        assert_eq!(
            rows.acked("bob", &[7]),
            Some(Removal {
                upto: 0,
                rows: vec![7]
            })
        );
        // held by one: its end hands it back
        rows.live("bob", 8, 1);
        assert_eq!(rows.returned("bob", &[8]), vec![8]);
        assert!(rows.wanted("bob", 8));
    }

    #[test]
    fn while_a_load_is_under_way_rows_acknowledged_meanwhile_are_not_wanted_again() {
        let mut rows = StoredRows::default();
        rows.handed("bob", 1);
        rows.live("bob", 5, 1);
        rows.load_started("bob");
        assert_eq!(
            rows.acked("bob", &[1, 5]),
            Some(Removal {
                upto: 1,
                rows: vec![5]
            })
        );
        assert!(!rows.wanted("bob", 1), "below the line");
        assert!(!rows.wanted("bob", 5), "removed by id meanwhile");
        assert!(rows.wanted("bob", 6));
        rows.load_ended("bob");
        assert_eq!(rows.users(), 0, "forgotten once no load is under way");
    }

    #[test]
    fn a_live_row_whose_removal_was_asked_already_is_not_taken_in_again() {
        let mut rows = StoredRows::default();
        // a flush read live row 3 before its id came back, handed it out
        // and saw it acknowledged: removed by the line
        rows.handed("bob", 2);
        rows.handed("bob", 3);
        rows.handed("bob", 9);
        assert_eq!(rows.acked("bob", &[2, 3]), Some(up(3)));
        rows.live("bob", 3, 1);
        assert!(
            !rows.is_out("bob", 3),
            "not out: nothing holds the line on it"
        );
        assert_eq!(rows.acked("bob", &[9]), Some(up(9)));
        assert_eq!(rows.users(), 0);
    }
}
