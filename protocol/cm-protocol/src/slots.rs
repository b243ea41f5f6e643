//! Shard slots: the fixed partition of users that cores own (issue 15).
//!
//! Every user belongs to one slot, chosen by a hash of the bare JID, and
//! each slot is owned by one live core at a time. CMs and cores must agree
//! on the slot of every user, across versions and machines, so the hash is
//! a specified one (SipHash-2-4 with zero keys, over the UTF-8 bytes of the
//! bare JID as the core normalizes it) and its output is pinned by tests.
//! It is not keyed: a user cannot choose a JID to land in a slot any more
//! cheaply than by trying names, and a slot is only a unit of placement.

use std::hash::Hasher;

use siphasher::sip::SipHasher24;

/// Slots in a cluster unless configured otherwise: enough that a slot is a
/// small piece of the users (moves are cheap), few enough that the map of
/// owners is a few kilobytes.
pub const DEFAULT_SLOTS: u16 = 4096;

/// One shard slot: a number below the cluster's slot count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot(pub u16);

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The slot of the user whose normalized bare JID (`localpart@domain`) is
/// `bare`, in a cluster of `slots` slots (at least 1; 0 is taken as 1).
pub fn slot_of(bare: &str, slots: u16) -> Slot {
    let mut hasher = SipHasher24::new_with_keys(0, 0);
    hasher.write(bare.as_bytes());
    Slot((hasher.finish() % u64::from(slots.max(1))) as u16)
}

/// Who owns each slot, as the owners say it (`SlotOwners` frames): the
/// view a CM routes sessions by and a core forwards stanzas by. A claim
/// with a higher epoch wins and one below the highest epoch seen for the
/// slot is refused, even once the slot has no known owner, so a paused
/// core's stale word cannot undo its successor's; a core's claims go when
/// it says it no longer owns a slot or when the holder of the map forgets
/// it (its links are gone).
#[derive(Clone, Debug)]
pub struct SlotMap {
    /// Owner (index into `cores`) of each slot; none: unknown.
    owners: Vec<Option<u32>>,
    /// The highest epoch claimed for each slot (kept when the owner goes).
    epochs: Vec<u64>,
    /// Member ids of the cores named so far (never shrinks: a few per
    /// process start).
    cores: Vec<String>,
}

impl SlotMap {
    /// A map of `slots` slots, none of them owned.
    pub fn new(slots: u16) -> Self {
        let n = usize::from(slots.max(1));
        Self {
            owners: vec![None; n],
            epochs: vec![0; n],
            cores: Vec::new(),
        }
    }

    /// The number of slots.
    pub fn slot_count(&self) -> u16 {
        self.owners.len() as u16
    }

    /// The owner of `slot`, if known.
    pub fn owner(&self, slot: Slot) -> Option<&str> {
        let core = (*self.owners.get(usize::from(slot.0))?)?;
        self.cores.get(core as usize).map(String::as_str)
    }

    /// The owner of `bare`'s slot, if known.
    pub fn owner_of(&self, bare: &str) -> Option<&str> {
        self.owner(slot_of(bare, self.slot_count()))
    }

    /// `core` says it owns exactly `owned` (slot, epoch): each claim with
    /// an epoch above the slot's highest takes it, as does one at that
    /// epoch if the slot has no other owner; slots it held and no longer
    /// names have no known owner. Returns the slots whose owner changed,
    /// or whose owner claimed it again at a new epoch (it lost the slot
    /// and took it back, forgetting its sessions in between). Slots beyond
    /// the map's count are ignored.
    pub fn apply(&mut self, core: &str, owned: &[(u16, u64)]) -> Vec<Slot> {
        let id = self.core_id(core);
        let mut named = vec![false; self.owners.len()];
        let mut changed = Vec::new();
        for &(slot, epoch) in owned {
            let i = usize::from(slot);
            let (Some(owner), Some(known)) = (self.owners.get_mut(i), self.epochs.get_mut(i))
            else {
                continue;
            };
            named[i] = true;
            let stale = epoch < *known || (epoch == *known && owner.is_some_and(|c| c != id));
            if stale {
                continue;
            }
            if *owner != Some(id) || epoch != *known {
                changed.push(Slot(slot));
            }
            *owner = Some(id);
            *known = epoch;
        }
        for (slot, owner) in self.owners.iter_mut().enumerate() {
            if !named[slot] && *owner == Some(id) {
                *owner = None;
                changed.push(Slot(slot as u16));
            }
        }
        changed.sort_unstable();
        changed
    }

    /// Forgets what `core` claimed (its links are gone): its slots have no
    /// known owner until another core claims them. Returns those slots.
    pub fn forget(&mut self, core: &str) -> Vec<Slot> {
        self.apply(core, &[])
    }

    fn core_id(&mut self, core: &str) -> u32 {
        match self.cores.iter().position(|c| c == core) {
            Some(i) => i as u32,
            None => {
                self.cores.push(core.to_owned());
                (self.cores.len() - 1) as u32
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_takes_unknown_slots_and_a_later_epoch_takes_them_from_another_core() {
        let mut map = SlotMap::new(8);
        assert_eq!(map.apply("a#1", &[(0, 1), (1, 1)]), vec![Slot(0), Slot(1)]);
        assert_eq!(map.owner(Slot(0)), Some("a#1"));
        assert_eq!(map.owner(Slot(2)), None);
        // b claims slot 1 at a later epoch: it moves; a's word on 0 stays.
        assert_eq!(map.apply("b#1", &[(1, 2)]), vec![Slot(1)]);
        assert_eq!(map.owner(Slot(1)), Some("b#1"));
        // a, paused, repeats its stale claim: slot 1 stays b's.
        assert_eq!(map.apply("a#1", &[(0, 1), (1, 1)]), vec![]);
        assert_eq!(map.owner(Slot(1)), Some("b#1"));
    }

    #[test]
    fn a_claim_below_the_highest_epoch_seen_is_refused_even_once_the_slot_is_unowned() {
        let mut map = SlotMap::new(8);
        map.apply("a#1", &[(0, 1)]);
        map.apply("b#1", &[(0, 2)]);
        // b's links go (or it releases the slot); a, paused, comes back
        assert_eq!(map.forget("b#1"), vec![Slot(0)]);
        assert_eq!(map.apply("a#1", &[(0, 1)]), vec![]);
        assert_eq!(map.owner(Slot(0)), None);
        // b (or anyone at a later epoch) may take it
        assert_eq!(map.apply("b#1", &[(0, 2)]), vec![Slot(0)]);
        assert_eq!(map.owner(Slot(0)), Some("b#1"));
        // an older frame of b's own, arriving late, changes nothing
        assert_eq!(map.apply("b#1", &[(0, 1)]), vec![]);
        assert_eq!(map.owner(Slot(0)), Some("b#1"));
    }

    #[test]
    fn a_slot_its_owner_claims_again_at_a_new_epoch_counts_as_changed() {
        let mut map = SlotMap::new(8);
        map.apply("a#1", &[(0, 1), (1, 1)]);
        // the same claims again: nothing changed
        assert_eq!(map.apply("a#1", &[(0, 1), (1, 1)]), vec![]);
        // a lost slot 1 and took it back (its sessions were forgotten)
        assert_eq!(map.apply("a#1", &[(0, 1), (1, 3)]), vec![Slot(1)]);
        assert_eq!(map.owner(Slot(1)), Some("a#1"));
    }

    #[test]
    fn slots_a_core_no_longer_names_or_a_forgotten_core_held_have_no_owner() {
        let mut map = SlotMap::new(8);
        map.apply("a#1", &[(0, 1), (1, 1), (2, 1)]);
        map.apply("b#1", &[(3, 1)]);
        assert_eq!(map.apply("a#1", &[(0, 1)]), vec![Slot(1), Slot(2)]);
        assert_eq!(map.owner(Slot(1)), None);
        assert_eq!(map.forget("a#1"), vec![Slot(0)]);
        assert_eq!(map.owner(Slot(0)), None);
        assert_eq!(map.owner(Slot(3)), Some("b#1"));
        // out-of-range slots are ignored
        assert_eq!(map.apply("b#1", &[(3, 1), (99, 1)]), vec![]);
    }

    #[test]
    fn owner_of_a_user_is_the_owner_of_its_slot() {
        let mut map = SlotMap::new(4096);
        let slot = slot_of("alice@example.org", 4096);
        map.apply("a#1", &[(slot.0, 7)]);
        assert_eq!(map.owner_of("alice@example.org"), Some("a#1"));
    }

    /// The values are part of the cluster's contract: CMs and cores of
    /// different versions must place users alike. If this test fails, the
    /// placement changed, which needs a migration, not a new expectation.
    #[test]
    fn slot_of_is_pinned_to_siphash24_with_zero_keys() {
        assert_eq!(slot_of("alice@example.org", 4096), Slot(PINNED[0]));
        assert_eq!(slot_of("bob@example.org", 4096), Slot(PINNED[1]));
        assert_eq!(slot_of("", 4096), Slot(PINNED[2]));
        assert_eq!(slot_of("ünïcode@example.org", 1000), Slot(PINNED[3]));
    }

    /// Computed by an independent SipHash-2-4 (a Python transcription of
    /// the paper's, checked against its published test vector).
    const PINNED: [u16; 4] = [1581, 2321, 215, 911];

    #[test]
    fn slot_of_stays_below_the_slot_count_and_treats_zero_as_one() {
        for n in [1u16, 2, 7, 4096, u16::MAX] {
            for user in ["a@b", "carol@example.org", "x"] {
                assert!(slot_of(user, n).0 < n);
            }
        }
        assert_eq!(slot_of("a@b", 0), Slot(0));
    }

    #[test]
    fn one_hundred_thousand_users_spread_evenly_over_4096_slots() {
        let mut counts = vec![0u32; 4096];
        for i in 0..100_000 {
            counts[slot_of(&format!("user{i}@example.org"), 4096).0 as usize] += 1;
        }
        // 24.4 per slot on average; a binomial's spread is about ±5.
        let (min, max) = (
            counts.iter().copied().min().unwrap_or(0),
            counts.iter().copied().max().unwrap_or(0),
        );
        assert!(min >= 5 && max <= 50, "min {min} max {max}");
    }
}
