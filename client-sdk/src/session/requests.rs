//! The IQs a session waits answers for, matched by id and by who answers
//! (only whom the IQ went to, so another sender who guesses an id cannot
//! answer it), each with a deadline after which it is given up.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use xmpp_stream::element::Element;

use crate::im::{self, ArchivedMessage, HistoryPage};
use crate::muc::{self, RoomMessage};

/// How long an IQ waits for its answer.
pub(crate) const IQ_TIMEOUT: Duration = Duration::from_secs(30);
/// IQs waiting at once; beyond that requests fail at once.
pub(crate) const MAX_PENDING_IQS: usize = 4096;
/// Archive results kept for one query: a query asks for no more (the
/// server pages far fewer anyway).
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
        results: HistoryResults,
    },
    /// The app, for a page of a room's archive (the IQ went to the room,
    /// whose results only count).
    RoomHistory {
        request: RequestId,
        room: String,
        results: HistoryResults<RoomMessage>,
    },
    /// The roster a new login fetches again: its items become roster pushes.
    RosterRefresh,
    /// Enabling carbons: nobody needs the answer.
    Carbons,
    /// The session's XEP-0410 self-ping of a room (its key), this IQ id:
    /// the answer (or its absence) says whether the app is still in it.
    RoomPing { room: String, id: String },
}

impl Waiter {
    /// The app's request it answers, if it is the app's.
    pub(crate) fn request(&self) -> Option<RequestId> {
        match self {
            Waiter::App(id)
            | Waiter::History { request: id, .. }
            | Waiter::RoomHistory { request: id, .. } => Some(*id),
            Waiter::RosterRefresh | Waiter::Carbons | Waiter::RoomPing { .. } => None,
        }
    }
}

/// Who may answer an IQ (RFC 6120 §8.1.2.1 and §10.3.3). The server may
/// always: an answer without `from`, or from its domain (the account's),
/// is the server's (it stamps every other sender's `from`; it answers from
/// its domain for anyone, e.g. a storage error).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Responder {
    /// The account (an IQ without `to`, or to its own bare JID): the server
    /// answers for it, from the bare JID (or as the server).
    Account,
    /// The address the IQ went to.
    Jid(String),
}

impl Responder {
    /// Who answers an IQ `to` that address, sent by the account `own` (a
    /// bare JID).
    pub(crate) fn of(to: Option<&str>, own: &str) -> Self {
        match to {
            Some(to) if !same_jid(to, own) => Responder::Jid(to.to_owned()),
            _ => Responder::Account,
        }
    }

    /// Whether an answer `from` that address is this responder's (or the
    /// server's).
    pub(crate) fn answers(&self, from: Option<&str>, own: &str) -> bool {
        let Some(from) = from else { return true };
        let server = own
            .split_once('@')
            .is_some_and(|(_, domain)| same_jid(from, domain));
        server
            || match self {
                Responder::Account => same_jid(from, own),
                Responder::Jid(to) => same_jid(from, to),
            }
    }
}

/// Whether two JIDs are the same address as the server compares them: the
/// bare part (localpart and domain) without regard to ASCII case, the
/// resource exactly.
pub(crate) fn same_jid(a: &str, b: &str) -> bool {
    let (a_bare, a_resource) = a.split_once('/').map_or((a, None), |(b, r)| (b, Some(r)));
    let (b_bare, b_resource) = b.split_once('/').map_or((b, None), |(b, r)| (b, Some(r)));
    a_bare.eq_ignore_ascii_case(b_bare) && a_resource == b_resource
}

/// The table of waiting IQs (bounded by [`MAX_PENDING_IQS`]).
#[derive(Debug, Default)]
pub(crate) struct PendingIqs {
    waiting: HashMap<String, (Waiter, Responder, (Instant, u64))>,
    /// The same IQs by deadline (the `u64` keeps equal deadlines apart).
    deadlines: BTreeMap<(Instant, u64), String>,
    next: u64,
}

/// The table is full.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Full;

impl PendingIqs {
    /// Waits for the answer to IQ `id` from `responder` until `deadline`.
    pub(crate) fn insert(
        &mut self,
        id: String,
        waiter: Waiter,
        responder: Responder,
        deadline: Instant,
    ) -> Result<(), Full> {
        if self.waiting.len() >= MAX_PENDING_IQS {
            return Err(Full);
        }
        let key = (deadline, self.next);
        self.next += 1;
        self.deadlines.insert(key, id.clone());
        if let Some((_, _, old)) = self.waiting.insert(id, (waiter, responder, key)) {
            self.deadlines.remove(&old);
        }
        Ok(())
    }

    /// The waiter of IQ `id`, which is answered by `from` (the account
    /// is `own`); `None` (and the IQ still waits) if `from` is not whom it
    /// went to.
    pub(crate) fn answer(&mut self, id: &str, from: Option<&str>, own: &str) -> Option<Waiter> {
        let (_, responder, _) = self.waiting.get(id)?;
        if !responder.answers(from, own) {
            tracing::debug!(id, from, "IQ answer from whom it did not go to: ignored");
            return None;
        }
        self.cancel(id)
    }

    /// How many IQs wait (for tests: nothing may leak).
    #[cfg(test)]
    pub(crate) fn waiting_count(&self) -> usize {
        self.waiting.len()
    }

    /// Stops waiting for IQ `id`; its waiter.
    pub(crate) fn cancel(&mut self, id: &str) -> Option<Waiter> {
        let (waiter, _, key) = self.waiting.remove(id)?;
        self.deadlines.remove(&key);
        Some(waiter)
    }

    /// Collects an archive result for the query `query_id`; false if no
    /// such query waits.
    pub(crate) fn collect(&mut self, query_id: &str, result: Option<ArchivedMessage>) -> bool {
        match self.waiting.get_mut(query_id) {
            Some((Waiter::History { results, .. }, _, _)) => {
                if let Some(m) = result {
                    results.push(m);
                }
                true
            }
            _ => false,
        }
    }

    /// Collects a result `from` that address (the account is `own`) of
    /// a room's archive for the query `query_id`; false if no such query
    /// of that room waits.
    pub(crate) fn collect_room(
        &mut self,
        query_id: &str,
        from: Option<&str>,
        own: &str,
        result: &Element,
    ) -> bool {
        match self.waiting.get_mut(query_id) {
            Some((Waiter::RoomHistory { room, results, .. }, responder, _))
                if responder.answers(from, own) =>
            {
                if let Some(m) = muc::archived(result, room) {
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
            if let Some((waiter, _, _)) = self.waiting.remove(&id) {
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
            .map(|(_, (waiter, _, _))| waiter)
            .collect()
    }
}

/// The results of one archive query as they arrive, at most
/// [`MAX_HISTORY_RESULTS`]. A server that sends more (one that ignores the
/// query's `max`) gets them cut at the end away from where the query
/// started — the newest paging forward, the oldest paging back — and the
/// page says so, so that paging on from it skips nothing.
#[derive(Debug, PartialEq)]
pub(crate) struct HistoryResults<T = ArchivedMessage> {
    messages: VecDeque<T>,
    /// The query pages back (`before`, or the latest messages).
    backward: bool,
    /// More arrived than were kept.
    cut: bool,
}

/// What a page's edge is named by: its archive id.
pub(crate) trait ArchiveId {
    /// The archive id.
    fn archive_id(&self) -> Option<String>;
}

impl ArchiveId for ArchivedMessage {
    fn archive_id(&self) -> Option<String> {
        Some(self.id.clone())
    }
}

impl ArchiveId for RoomMessage {
    fn archive_id(&self) -> Option<String> {
        self.stanza_id.clone()
    }
}

impl<T: ArchiveId> HistoryResults<T> {
    /// Results of a query paging back (`backward`) or forward.
    pub(crate) fn new(backward: bool) -> Self {
        Self {
            messages: VecDeque::new(),
            backward,
            cut: false,
        }
    }

    /// The next result (the server sends them oldest first).
    fn push(&mut self, m: T) {
        if self.messages.len() < MAX_HISTORY_RESULTS {
            self.messages.push_back(m);
            return;
        }
        self.cut = true;
        if self.backward {
            self.messages.pop_front();
            self.messages.push_back(m);
        }
    }

    /// The page the query's answer `iq` closes. When results were cut, it is
    /// incomplete and its edge in the paging direction (`last` forward,
    /// `first` back) is the last message kept, not the server's.
    pub(crate) fn into_page(self, iq: &Element) -> HistoryPage<T> {
        let Self {
            messages,
            backward,
            cut,
        } = self;
        let mut page = im::history_page(iq, messages.into());
        if cut {
            page.complete = false;
            if backward {
                page.first = page.messages.first().and_then(ArchiveId::archive_id);
            } else {
                page.last = page.messages.last().and_then(ArchiveId::archive_id);
            }
        }
        page
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: &str = "alice@example.org";
    const ACCOUNT: Responder = Responder::Account;

    #[test]
    fn iqs_expire_in_deadline_order_and_answered_ones_never_expire() {
        let t0 = Instant::now();
        let mut table = PendingIqs::default();
        table
            .insert(
                "a".into(),
                Waiter::App(RequestId(1)),
                ACCOUNT,
                t0 + IQ_TIMEOUT,
            )
            .unwrap();
        table
            .insert(
                "b".into(),
                Waiter::Carbons,
                ACCOUNT,
                t0 + Duration::from_secs(1),
            )
            .unwrap();
        table
            .insert(
                "c".into(),
                Waiter::App(RequestId(3)),
                ACCOUNT,
                t0 + IQ_TIMEOUT,
            )
            .unwrap();
        assert_eq!(table.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(table.answer("b", None, OWN), Some(Waiter::Carbons));
        assert_eq!(table.answer("b", None, OWN), None);
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
            table
                .insert(i.to_string(), Waiter::Carbons, ACCOUNT, t0)
                .unwrap();
        }
        assert_eq!(
            table.insert("one more".into(), Waiter::Carbons, ACCOUNT, t0),
            Err(Full)
        );
        assert_eq!(table.drain().len(), MAX_PENDING_IQS);
        assert_eq!(table.next_deadline(), None);
    }

    fn archived(n: usize) -> ArchivedMessage {
        ArchivedMessage {
            id: n.to_string(),
            stamp: None,
            message: crate::event::message_from(
                &Element::new("message", xmpp_stream::ns::CLIENT),
                crate::event::Trusted::default(),
            ),
        }
    }

    /// A complete page's answer, whose ids run from `first` to `last`.
    fn fin(first: usize, last: usize) -> Element {
        Element::parse_in_stream(
            format!(
                "<iq type='result' id='q'><fin xmlns='urn:xmpp:mam:2' complete='true'>\
                 <set xmlns='http://jabber.org/protocol/rsm'><first>{first}</first><last>{last}</last></set>\
                 </fin></iq>"
            )
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn history_results_are_collected_only_for_a_waiting_query_and_bounded() {
        let t0 = Instant::now();
        let mut table = PendingIqs::default();
        assert!(!table.collect("q", None));
        let waiter = Waiter::History {
            request: RequestId(1),
            results: HistoryResults::new(false),
        };
        table.insert("q".into(), waiter, ACCOUNT, t0).unwrap();
        for n in 0..MAX_HISTORY_RESULTS + 5 {
            assert!(table.collect("q", Some(archived(n))));
        }
        let Some(Waiter::History { results, .. }) = table.cancel("q") else {
            panic!("a history waiter");
        };
        let page = results.into_page(&fin(0, MAX_HISTORY_RESULTS + 4));
        assert_eq!(page.messages.len(), MAX_HISTORY_RESULTS);
        assert_eq!(page.messages[0].id, "0");
    }

    #[test]
    fn a_page_cut_paging_forward_is_incomplete_and_goes_on_after_the_last_kept() {
        let mut results = HistoryResults::new(false);
        for n in 0..MAX_HISTORY_RESULTS + 2 {
            results.push(archived(n));
        }
        let page = results.into_page(&fin(0, MAX_HISTORY_RESULTS + 1));
        assert!(!page.complete);
        assert_eq!(page.first.as_deref(), Some("0"));
        let last_kept = (MAX_HISTORY_RESULTS - 1).to_string();
        assert_eq!(page.last.as_deref(), Some(last_kept.as_str()));
        assert_eq!(
            page.messages.last().map(|m| m.id.as_str()),
            Some(&*last_kept)
        );
    }

    #[test]
    fn a_page_cut_paging_back_keeps_the_newest_and_goes_on_before_the_first_kept() {
        let mut results = HistoryResults::new(true);
        for n in 0..MAX_HISTORY_RESULTS + 2 {
            results.push(archived(n));
        }
        let newest = (MAX_HISTORY_RESULTS + 1).to_string();
        let page = results.into_page(&fin(0, MAX_HISTORY_RESULTS + 1));
        assert!(!page.complete);
        assert_eq!(page.first.as_deref(), Some("2"));
        assert_eq!(page.messages[0].id, "2");
        assert_eq!(page.last.as_deref(), Some(newest.as_str()));
        assert_eq!(page.messages.len(), MAX_HISTORY_RESULTS);
    }

    #[test]
    fn a_page_within_the_bound_is_the_servers() {
        let mut results = HistoryResults::new(false);
        for n in 0..3 {
            results.push(archived(n));
        }
        let page = results.into_page(&fin(0, 2));
        assert!(page.complete);
        assert_eq!(
            (page.first.as_deref(), page.last.as_deref()),
            (Some("0"), Some("2"))
        );
        assert_eq!(page.messages.len(), 3);
    }
}
