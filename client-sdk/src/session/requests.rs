//! The IQs a session waits answers for, matched by id, each with a
//! deadline after which it is given up.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::im::ArchivedMessage;

/// How long an IQ waits for its answer.
pub(crate) const IQ_TIMEOUT: Duration = Duration::from_secs(30);
/// IQs waiting at once; beyond that requests fail at once.
pub(crate) const MAX_PENDING_IQS: usize = 4096;
/// Archive results kept for one query (the server pages far fewer).
pub(crate) const MAX_HISTORY_RESULTS: usize = 1000;

/// Which request of the app an answer goes to (chosen by the driver).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestId(pub u64);

/// Who waits for an IQ's answer.
#[derive(Debug, PartialEq)]
pub(crate) enum Waiter {
    /// The app, for its own IQ (or the roster).
    App(RequestId),
    /// The app, for a page of the archive: the results that arrive before
    /// the answer (their `queryid` is the IQ's id) are collected here.
    History {
        request: RequestId,
        results: Vec<ArchivedMessage>,
    },
    /// The roster a new login fetches again: its items become roster pushes.
    RosterRefresh,
    /// Enabling carbons: nobody needs the answer.
    Carbons,
}

/// The table of waiting IQs (bounded by [`MAX_PENDING_IQS`]).
#[derive(Debug, Default)]
pub(crate) struct PendingIqs {
    waiting: HashMap<String, (Waiter, (Instant, u64))>,
    /// The same IQs by deadline (the `u64` keeps equal deadlines apart).
    deadlines: BTreeMap<(Instant, u64), String>,
    next: u64,
}

/// The table is full.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Full;

impl PendingIqs {
    /// Waits for the answer to IQ `id` until `deadline`.
    pub(crate) fn insert(
        &mut self,
        id: String,
        waiter: Waiter,
        deadline: Instant,
    ) -> Result<(), Full> {
        if self.waiting.len() >= MAX_PENDING_IQS {
            return Err(Full);
        }
        let key = (deadline, self.next);
        self.next += 1;
        self.deadlines.insert(key, id.clone());
        if let Some((_, old)) = self.waiting.insert(id, (waiter, key)) {
            self.deadlines.remove(&old);
        }
        Ok(())
    }

    /// The waiter of IQ `id`, which is answered.
    pub(crate) fn take(&mut self, id: &str) -> Option<Waiter> {
        let (waiter, key) = self.waiting.remove(id)?;
        self.deadlines.remove(&key);
        Some(waiter)
    }

    /// Collects an archive result for the query `query_id`; false if no
    /// such query waits.
    pub(crate) fn collect(&mut self, query_id: &str, result: Option<ArchivedMessage>) -> bool {
        match self.waiting.get_mut(query_id) {
            Some((Waiter::History { results, .. }, _)) => {
                if let Some(m) = result
                    && results.len() < MAX_HISTORY_RESULTS
                {
                    results.push(m);
                }
                true
            }
            _ => false,
        }
    }

    /// The earliest deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first_key_value().map(|((at, _), _)| *at)
    }

    /// Removes and returns the IQs whose deadline is `now` or earlier.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<Waiter> {
        let mut expired = Vec::new();
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let id = entry.remove();
            if let Some((waiter, _)) = self.waiting.remove(&id) {
                expired.push(waiter);
            }
        }
        expired
    }

    /// Removes and returns every waiter (the session is over).
    pub(crate) fn drain(&mut self) -> Vec<Waiter> {
        self.deadlines.clear();
        self.waiting
            .drain()
            .map(|(_, (waiter, _))| waiter)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iqs_expire_in_deadline_order_and_answered_ones_never_expire() {
        let t0 = Instant::now();
        let mut table = PendingIqs::default();
        table
            .insert("a".into(), Waiter::App(RequestId(1)), t0 + IQ_TIMEOUT)
            .unwrap();
        table
            .insert("b".into(), Waiter::Carbons, t0 + Duration::from_secs(1))
            .unwrap();
        table
            .insert("c".into(), Waiter::App(RequestId(3)), t0 + IQ_TIMEOUT)
            .unwrap();
        assert_eq!(table.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(table.take("b"), Some(Waiter::Carbons));
        assert_eq!(table.take("b"), None);
        assert_eq!(table.next_deadline(), Some(t0 + IQ_TIMEOUT));
        assert!(
            table
                .expire(t0 + IQ_TIMEOUT - Duration::from_nanos(1))
                .is_empty()
        );
        assert_eq!(
            table.expire(t0 + IQ_TIMEOUT),
            vec![Waiter::App(RequestId(1)), Waiter::App(RequestId(3))]
        );
        assert_eq!(table.next_deadline(), None);
    }

    #[test]
    fn the_table_is_bounded() {
        let t0 = Instant::now();
        let mut table = PendingIqs::default();
        for i in 0..MAX_PENDING_IQS {
            table.insert(i.to_string(), Waiter::Carbons, t0).unwrap();
        }
        assert_eq!(
            table.insert("one more".into(), Waiter::Carbons, t0),
            Err(Full)
        );
        assert_eq!(table.drain().len(), MAX_PENDING_IQS);
        assert_eq!(table.next_deadline(), None);
    }

    #[test]
    fn history_results_are_collected_only_for_a_waiting_query_and_bounded() {
        let t0 = Instant::now();
        let mut table = PendingIqs::default();
        assert!(!table.collect("q", None));
        let waiter = Waiter::History {
            request: RequestId(1),
            results: Vec::new(),
        };
        table.insert("q".into(), waiter, t0).unwrap();
        let archived = |n: usize| ArchivedMessage {
            id: n.to_string(),
            stamp: None,
            message: crate::event::message_from(&xmpp_stream::element::Element::new(
                "message",
                xmpp_stream::ns::CLIENT,
            )),
        };
        for n in 0..MAX_HISTORY_RESULTS + 5 {
            assert!(table.collect("q", Some(archived(n))));
        }
        let Some(Waiter::History { results, .. }) = table.take("q") else {
            panic!("a history waiter");
        };
        assert_eq!(results.len(), MAX_HISTORY_RESULTS);
        assert_eq!(results[0].id, "0");
    }
}
