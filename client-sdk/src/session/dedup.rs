//! Duplicate suppression: a message whose sender and id were seen lately
//! is dropped (after a re-login the server may deliver again what the old
//! session had already handed over).

use std::collections::{HashSet, VecDeque};

/// How many (sender, id) pairs are remembered.
pub(crate) const SEEN_CAPACITY: usize = 4096;

/// The (sender, id) pairs of the last [`SEEN_CAPACITY`] messages.
#[derive(Debug, Default)]
pub(crate) struct DuplicateFilter {
    set: HashSet<(String, String)>,
    order: VecDeque<(String, String)>,
}

impl DuplicateFilter {
    /// Records (from, id); false if it was already there.
    pub(crate) fn first_time(&mut self, from: &str, id: &str) -> bool {
        let key = (from.to_owned(), id.to_owned());
        if self.set.contains(&key) {
            return false;
        }
        if self.order.len() >= SEEN_CAPACITY
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.order.push_back(key.clone());
        self.set.insert(key);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_seen_before_is_a_duplicate_until_it_falls_out_of_capacity() {
        let mut seen = DuplicateFilter::default();
        assert!(seen.first_time("a", "1"));
        assert!(!seen.first_time("a", "1"));
        assert!(seen.first_time("b", "1"));
        for i in 0..SEEN_CAPACITY {
            seen.first_time("c", &i.to_string());
        }
        assert!(seen.first_time("a", "1"));
    }
}
