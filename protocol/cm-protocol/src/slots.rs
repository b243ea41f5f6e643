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

#[cfg(test)]
mod tests {
    use super::*;

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
