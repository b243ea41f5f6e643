//! What became of every message of a chaos run: sent, acknowledged by the
//! server (XEP-0198), delivered to the recipient's app (after the SDK's
//! duplicate filter), refused; plus the kills and each user's connection
//! history, so a lost message can be explained. Shared by all client
//! tasks behind one mutex (short critical sections, no I/O inside).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

/// Connection events remembered per user (the oldest forgotten first).
const HISTORY_PER_USER: usize = 256;
/// Out-of-order deliveries kept for the report (all are counted).
const ORDER_SAMPLES: usize = 100;

/// The body of message `seq` of `sender`.
pub fn body(sender: usize, seq: u64) -> String {
    format!("chaos {sender} {seq}")
}

/// The sender and sequence number in a body [`body`] made.
pub fn parse_body(body: &str) -> Option<(usize, u64)> {
    let mut parts = body.strip_prefix("chaos ")?.split(' ');
    let sender = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((sender, seq))
}

/// One message.
#[derive(Clone, Debug, Default)]
struct Record {
    recipient: usize,
    /// The id `send_message` returned (None until it returned, or if it failed).
    id: Option<String>,
    sent_at: f64,
    acked_at: Option<f64>,
    /// Deliveries to the recipient's app.
    delivered: u32,
    delivered_at: Option<f64>,
    /// The error condition the recipient's server answered with.
    refused: Option<String>,
    /// Why the SDK gave up on it.
    failed: Option<String>,
    /// `send_message` itself failed: never handed to the SDK.
    abandoned: bool,
}

/// A SIGKILL of one process and its restart.
#[derive(Clone, Debug)]
pub struct Kill {
    /// Seconds since the run started.
    pub at: f64,
    /// What was killed.
    pub victim: String,
    /// When it was started again.
    pub restarted_at: Option<f64>,
}

/// The totals the run prints and checks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Messages handed to the SDK.
    pub sent: u64,
    /// Acknowledged by the server.
    pub acknowledged: u64,
    /// Delivered at least once.
    pub delivered: u64,
    /// Deliveries beyond the first (the SDK's filter let them through).
    pub duplicates: u64,
    /// Deliveries with a lower sequence number than one the recipient
    /// already had from that sender.
    pub out_of_order: u64,
    /// Answered with an error by the server.
    pub refused: u64,
    /// Given up by the SDK (outbox full, session over).
    pub failed: u64,
    /// Never acknowledged (the sender may send again after a new login).
    pub unacknowledged: u64,
    /// Acknowledged, not delivered and not refused.
    pub lost: u64,
    /// Deliveries of bodies no sent message has.
    pub unknown: u64,
}

/// An acknowledged message that never arrived, with what happened around it.
#[derive(Clone, Debug)]
pub struct Lost {
    /// Sender's user number.
    pub sender: usize,
    /// Recipient's user number.
    pub recipient: usize,
    /// Its sequence number at the sender.
    pub seq: u64,
    /// Its id.
    pub id: String,
    /// Seconds since the start when it was sent.
    pub sent_at: f64,
    /// ...and acknowledged.
    pub acked_at: f64,
    /// Whether the recipient's archive (XEP-0313) has it, if looked up:
    /// acknowledged and archived means the core stored it and failed to
    /// deliver it; not archived, that the core never routed it.
    pub archived: Option<bool>,
}

/// An out-of-order delivery.
#[derive(Clone, Debug)]
pub struct Disorder {
    /// Sender.
    pub sender: usize,
    /// Recipient.
    pub recipient: usize,
    /// The sequence number delivered...
    pub seq: u64,
    /// ...after this higher one.
    pub after: u64,
    /// Seconds since the start.
    pub at: f64,
}

#[derive(Default)]
struct Inner {
    /// By sender, by sequence number.
    records: Vec<Vec<Record>>,
    /// (recipient, sender) → highest sequence number delivered.
    highest: HashMap<(usize, usize), u64>,
    out_of_order: u64,
    disorder: Vec<Disorder>,
    unknown: u64,
    kills: Vec<Kill>,
    history: Vec<VecDeque<(f64, String)>>,
}

/// The shared record of a run.
pub struct Ledger {
    start: Instant,
    inner: Mutex<Inner>,
}

impl Ledger {
    /// An empty ledger for `users` users; times count from now.
    pub fn new(users: usize) -> Self {
        Self {
            start: Instant::now(),
            inner: Mutex::new(Inner {
                records: vec![Vec::new(); users],
                history: vec![VecDeque::new(); users],
                ..Default::default()
            }),
        }
    }

    /// Seconds since the run started.
    pub fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // a panicking client task must not hide the counts
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A message from `sender` to `recipient` is about to be sent: its
    /// sequence number.
    pub fn sending(&self, sender: usize, recipient: usize) -> u64 {
        let now = self.now();
        let mut inner = self.lock();
        let list = &mut inner.records[sender];
        list.push(Record {
            recipient,
            sent_at: now,
            ..Default::default()
        });
        list.len() as u64 - 1
    }

    fn record(&self, sender: usize, seq: u64, f: impl FnOnce(&mut Record, f64)) {
        let now = self.now();
        let mut inner = self.lock();
        if let Some(r) = inner
            .records
            .get_mut(sender)
            .and_then(|l| l.get_mut(seq as usize))
        {
            f(r, now);
        }
    }

    /// The SDK took it and gave it `id`.
    pub fn sent(&self, sender: usize, seq: u64, id: &str) {
        self.record(sender, seq, |r, _| r.id = Some(id.to_owned()));
    }

    /// The SDK refused to take it.
    pub fn abandoned(&self, sender: usize, seq: u64) {
        self.record(sender, seq, |r, _| r.abandoned = true);
    }

    /// The server acknowledged it.
    pub fn acknowledged(&self, sender: usize, seq: u64) {
        self.record(sender, seq, |r, now| {
            r.acked_at.get_or_insert(now);
        });
    }

    /// The SDK gave up on it.
    pub fn failed(&self, sender: usize, seq: u64, why: &str) {
        self.record(sender, seq, |r, _| r.failed = Some(why.to_owned()));
    }

    /// `sender`'s client closed (or its session ended for good): what it
    /// had sent and was not acknowledged will not be, as far as this run
    /// can tell.
    pub fn closed(&self, sender: usize) {
        let mut inner = self.lock();
        if let Some(list) = inner.records.get_mut(sender) {
            for r in list
                .iter_mut()
                .filter(|r| r.id.is_some() && r.acked_at.is_none() && r.failed.is_none())
            {
                r.failed = Some("client closed before it was acknowledged".into());
            }
        }
    }

    /// The server answered it with an error.
    pub fn refused(&self, sender: usize, seq: u64, condition: &str) {
        self.record(sender, seq, |r, _| r.refused = Some(condition.to_owned()));
    }

    /// `recipient`'s app received message `seq` of `sender`.
    pub fn delivered(&self, recipient: usize, sender: usize, seq: u64) {
        let now = self.now();
        let mut inner = self.lock();
        let Some(r) = inner
            .records
            .get_mut(sender)
            .and_then(|l| l.get_mut(seq as usize))
            .filter(|r| r.recipient == recipient)
        else {
            inner.unknown += 1;
            return;
        };
        r.delivered += 1;
        if r.delivered > 1 {
            return;
        }
        r.delivered_at = Some(now);
        let highest = inner.highest.entry((recipient, sender)).or_insert(seq);
        if seq < *highest {
            let after = *highest;
            inner.out_of_order += 1;
            if inner.disorder.len() < ORDER_SAMPLES {
                inner.disorder.push(Disorder {
                    sender,
                    recipient,
                    seq,
                    after,
                    at: now,
                });
            }
        } else {
            *highest = seq;
        }
    }

    /// Something happened to `user`'s connection.
    pub fn note(&self, user: usize, what: impl Into<String>) {
        let now = self.now();
        let mut inner = self.lock();
        if let Some(h) = inner.history.get_mut(user) {
            if h.len() == HISTORY_PER_USER {
                h.pop_front();
            }
            h.push_back((now, what.into()));
        }
    }

    /// A process was killed; returns its index for [`Self::restarted`].
    pub fn killed(&self, victim: &str) -> usize {
        let at = self.now();
        let mut inner = self.lock();
        inner.kills.push(Kill {
            at,
            victim: victim.to_owned(),
            restarted_at: None,
        });
        inner.kills.len() - 1
    }

    /// Kill `index`'s victim runs again.
    pub fn restarted(&self, index: usize) {
        let now = self.now();
        if let Some(k) = self.lock().kills.get_mut(index) {
            k.restarted_at = Some(now);
        }
    }

    /// The kills so far.
    pub fn kills(&self) -> Vec<Kill> {
        self.lock().kills.clone()
    }

    /// (acknowledged but not yet delivered or refused, handed to the SDK
    /// but neither acknowledged nor given up yet): what the end of the run
    /// waits for.
    pub fn outstanding(&self) -> (u64, u64) {
        let inner = self.lock();
        let mut undelivered = 0;
        let mut unacked = 0;
        for r in inner.records.iter().flatten() {
            if r.abandoned || r.failed.is_some() || r.refused.is_some() {
                continue;
            }
            match (r.acked_at, r.delivered) {
                (Some(_), 0) => undelivered += 1,
                (None, _) if r.id.is_some() => unacked += 1,
                _ => {}
            }
        }
        (undelivered, unacked)
    }

    /// The totals, the lost messages and samples of disorder.
    pub fn tally(&self) -> (Counts, Vec<Lost>, Vec<Disorder>) {
        let inner = self.lock();
        let mut c = Counts {
            out_of_order: inner.out_of_order,
            unknown: inner.unknown,
            ..Default::default()
        };
        let mut lost = Vec::new();
        for (sender, list) in inner.records.iter().enumerate() {
            for (seq, r) in list.iter().enumerate() {
                if r.abandoned {
                    continue;
                }
                c.sent += 1;
                c.delivered += u64::from(r.delivered > 0);
                c.duplicates += u64::from(r.delivered.saturating_sub(1));
                c.refused += u64::from(r.refused.is_some());
                c.failed += u64::from(r.failed.is_some());
                match r.acked_at {
                    Some(acked_at) => {
                        c.acknowledged += 1;
                        if r.delivered == 0 && r.refused.is_none() {
                            c.lost += 1;
                            lost.push(Lost {
                                sender,
                                recipient: r.recipient,
                                seq: seq as u64,
                                id: r.id.clone().unwrap_or_default(),
                                sent_at: r.sent_at,
                                acked_at,
                                archived: None,
                            });
                        }
                    }
                    None => c.unacknowledged += 1,
                }
            }
        }
        (c, lost, inner.disorder.clone())
    }

    /// When `user` last received any message before `t`, and first after
    /// it: whether its session was receiving at all around a loss.
    pub fn deliveries_around(&self, user: usize, t: f64) -> (Option<f64>, Option<f64>) {
        let inner = self.lock();
        let mut before: Option<f64> = None;
        let mut after: Option<f64> = None;
        for r in inner
            .records
            .iter()
            .flatten()
            .filter(|r| r.recipient == user)
        {
            match r.delivered_at {
                Some(d) if d <= t => before = Some(before.map_or(d, |b| b.max(d))),
                Some(d) => after = Some(after.map_or(d, |a| a.min(d))),
                None => {}
            }
        }
        (before, after)
    }

    /// Every message as CSV (sender, seq, recipient, id, sent, acked,
    /// deliveries, first delivery, refused, failed), for the run's directory.
    pub fn messages_csv(&self) -> String {
        let inner = self.lock();
        let mut out = String::from(
            "sender,seq,recipient,id,sent,acked,deliveries,delivered,refused,failed\n",
        );
        let t = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.3}"));
        for (sender, list) in inner.records.iter().enumerate() {
            for (seq, r) in list.iter().enumerate().filter(|(_, r)| !r.abandoned) {
                out.push_str(&format!(
                    "{sender},{seq},{},{},{:.3},{},{},{},{},{}\n",
                    r.recipient,
                    r.id.as_deref().unwrap_or_default(),
                    r.sent_at,
                    t(r.acked_at),
                    r.delivered,
                    t(r.delivered_at),
                    r.refused.as_deref().unwrap_or_default(),
                    r.failed.as_deref().unwrap_or_default(),
                ));
            }
        }
        out
    }

    /// Every user's connection history, one line per event, for the run's
    /// directory.
    pub fn histories(&self) -> String {
        let inner = self.lock();
        let mut out = String::new();
        for (user, h) in inner.history.iter().enumerate() {
            for (t, what) in h {
                out.push_str(&format!("{t:8.2}s user{user} {what}\n"));
            }
        }
        out
    }

    /// `user`'s connection history between `from` and `to` (seconds).
    pub fn history(&self, user: usize, from: f64, to: f64) -> Vec<(f64, String)> {
        self.lock()
            .history
            .get(user)
            .map(|h| {
                h.iter()
                    .filter(|(t, _)| (from..=to).contains(t))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_and_foreign_bodies_are_not_ours() {
        assert_eq!(parse_body(&body(12, 345)), Some((12, 345)));
        assert_eq!(parse_body("chaos 1"), None);
        assert_eq!(parse_body("chaos 1 2 3"), None);
        assert_eq!(parse_body("hello"), None);
    }

    #[test]
    fn tally_counts_lost_duplicates_and_disorder() {
        let l = Ledger::new(2);
        // 0 → 1: seq 0 acked and delivered twice, seq 1 acked and never
        // delivered, seq 2 delivered before seq 1... and seq 3 after seq 2
        // but seq 4 (unacked) arrives, then seq 3: out of order.
        for _ in 0..5 {
            let seq = l.sending(0, 1);
            l.sent(0, seq, &format!("id{seq}"));
        }
        for seq in 0..4 {
            l.acknowledged(0, seq);
        }
        l.delivered(1, 0, 0);
        l.delivered(1, 0, 0);
        l.delivered(1, 0, 2);
        l.delivered(1, 0, 4);
        l.delivered(1, 0, 3);
        // a body naming the wrong recipient is not a delivery
        l.delivered(0, 0, 2);
        let (c, lost, disorder) = l.tally();
        assert_eq!(c.sent, 5);
        assert_eq!(c.acknowledged, 4);
        assert_eq!(c.delivered, 4);
        assert_eq!(c.duplicates, 1);
        assert_eq!(c.out_of_order, 1);
        assert_eq!(c.unknown, 1);
        assert_eq!(c.lost, 1);
        assert_eq!(c.unacknowledged, 1);
        assert_eq!((lost[0].sender, lost[0].recipient, lost[0].seq), (0, 1, 1));
        assert_eq!(lost[0].id, "id1");
        assert_eq!((disorder[0].seq, disorder[0].after), (3, 4));
        // seq 1 is owed to its recipient, seq 4 an acknowledgement to its sender
        assert_eq!(l.outstanding(), (1, 1));
        l.closed(0);
        assert_eq!(l.outstanding(), (1, 0), "a closed client owes nothing more");
    }
}
