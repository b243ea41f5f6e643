//! Throttling of password guessing, per account and per client address
//! (IPv4 address, IPv6 /64), sans-IO: the time comes in with every call.
//!
//! Each key may fail a few times freely (`free_failures`); every failure
//! beyond that blocks it for an exponentially growing time (`base_delay`
//! doubling up to `max_delay`). While an account or an address is blocked,
//! attempts for it are refused before any password is checked. A key whose
//! last failure is `forget_after` old starts over; a success clears its
//! account (not its address: one valid account must not reset an address
//! that guesses others).
//!
//! Attempts run in parallel (PBKDF2 on a pool, SCRAM across round trips),
//! so an attempt counts while it is in flight: [`AuthThrottle::begin`]
//! admits it only if the key would not be blocked were every attempt
//! already in flight to fail, and [`AuthThrottle::end`] settles it (a
//! failure counts, a success or an abandoned attempt does not). Parallel
//! guessers thus get no more password checks than serial ones.
//!
//! Each table holds at most `max_entries` keys, ordered by their last
//! failure in two classes: keys within their free failures, and keys that
//! went past them (blocked, or blocked before). When a table is full,
//! forgotten keys are swept out from the front of each class, and if none
//! was, the key of the first class that failed longest ago makes room; a
//! key of the second class goes only when the first is empty. So many
//! fresh names failing once (a guesser's cheap churn) never push out a
//! blocked account or address, and making room costs O(log n), not a scan.
//! A key pushed out forgets its attempts in flight too.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The throttle's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleSettings {
    /// Failures an account may have before it is blocked.
    pub account_free_failures: u32,
    /// Failures an address may have before it is blocked (higher: many
    /// users share an address behind carrier NAT).
    pub address_free_failures: u32,
    /// First blocking time; it doubles with each further failure.
    pub base_delay: Duration,
    /// Longest blocking time.
    pub max_delay: Duration,
    /// Failures this old are forgotten.
    pub forget_after: Duration,
    /// Most keys per table (accounts, addresses).
    pub max_entries: usize,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        Self {
            account_free_failures: 5,
            address_free_failures: 20,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            forget_after: Duration::from_secs(15 * 60),
            max_entries: 100_000,
        }
    }
}

/// An attempt was refused unchecked: its account or address is blocked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocked {
    /// When the block ends.
    pub until: Instant,
}

/// Why an attempt was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Its account or address is blocked until then.
    Blocked(Blocked),
    /// Attempts for its account or address already in flight would block
    /// it if they failed: it may try again once they are settled.
    InFlight,
}

/// How an admitted attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// The password was right.
    Succeeded,
    /// The password was checked and wrong (or the exchange was invalid).
    Failed,
    /// No password was checked (the session left, the exchange expired,
    /// a lookup failed, or it was refused before the check).
    Abandoned,
}

/// The failures of one key.
#[derive(Clone, Copy, Debug)]
struct Failures {
    count: u32,
    /// Attempts admitted and not yet settled.
    in_flight: u32,
    last: Instant,
    blocked_until: Instant,
    /// Where the key is in the table's order.
    rank: Rank,
}

/// A key's place in its table's order: its class (0: within its free
/// failures, 1: past them), its last failure, and a tie-break.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rank {
    class: usize,
    at: (Instant, u64),
}

/// One table of keys (see the module docs).
#[derive(Debug)]
struct Table<K> {
    entries: HashMap<K, Failures>,
    /// Per class, the keys by last failure (see [`Rank`]).
    order: [BTreeMap<(Instant, u64), K>; 2],
    next_seq: u64,
    free_failures: u32,
    /// Attempts in flight count as possible failures even for a key that
    /// has none yet (accounts); otherwise only once it failed (addresses:
    /// many users behind one NAT log in at once, and must not wait on
    /// each other).
    in_flight_without_failures: bool,
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn new(free_failures: u32, in_flight_without_failures: bool) -> Self {
        Self {
            entries: HashMap::new(),
            order: [BTreeMap::new(), BTreeMap::new()],
            next_seq: 0,
            free_failures,
            in_flight_without_failures,
        }
    }

    fn blocked_until<Q>(&self, key: &Q, now: Instant) -> Option<Instant>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries
            .get(key)
            .map(|f| f.blocked_until)
            .filter(|until| *until > now)
    }

    /// Whether one more attempt for `key` may be admitted at `now`: it is
    /// not blocked, and the attempts in flight failing would not block it.
    fn admits<Q>(&self, key: &Q, now: Instant, settings: &ThrottleSettings) -> Result<(), Refused>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let Some(f) = self.entries.get(key) else {
            return Ok(());
        };
        if f.blocked_until > now {
            return Err(Refused::Blocked(Blocked {
                until: f.blocked_until,
            }));
        }
        let count = if now.saturating_duration_since(f.last) >= settings.forget_after {
            0
        } else {
            f.count
        };
        if f.in_flight > 0
            && (count > 0 || self.in_flight_without_failures)
            && count.saturating_add(f.in_flight) > self.free_failures
        {
            return Err(Refused::InFlight);
        }
        Ok(())
    }

    /// Makes the entry of `key` if it is absent (room first if the table
    /// is full).
    fn ensure(&mut self, key: &K, now: Instant, settings: &ThrottleSettings) {
        if self.entries.contains_key(key) {
            return;
        }
        if self.entries.len() >= settings.max_entries {
            self.make_room(now, settings);
        }
        let rank = Rank {
            class: 0,
            at: (now, self.next_seq),
        };
        self.next_seq += 1;
        self.order[0].insert(rank.at, key.clone());
        self.entries.insert(
            key.clone(),
            Failures {
                count: 0,
                in_flight: 0,
                last: now,
                blocked_until: now,
                rank,
            },
        );
    }

    /// Moves `key` to its place in the order after its failures changed.
    fn rerank(&mut self, key: &K) {
        let Some(f) = self.entries.get_mut(key) else {
            return;
        };
        let rank = Rank {
            class: usize::from(f.count > self.free_failures),
            at: (f.last, f.rank.at.1),
        };
        if rank != f.rank {
            if let Some(k) = self.order[f.rank.class].remove(&f.rank.at) {
                self.order[rank.class].insert(rank.at, k);
            }
            f.rank = rank;
        }
    }

    /// Drops `key` and its place in the order.
    fn remove<Q>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(f) = self.entries.remove(key) {
            self.order[f.rank.class].remove(&f.rank.at);
        }
    }

    fn begin(&mut self, key: K, now: Instant, settings: &ThrottleSettings) {
        self.ensure(&key, now, settings);
        if let Some(f) = self.entries.get_mut(&key) {
            f.in_flight = f.in_flight.saturating_add(1);
        }
    }

    /// Settles an attempt admitted by `begin` (if its entry was dropped
    /// meanwhile, there is nothing to settle).
    fn settle<Q>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(f) = self.entries.get_mut(key) {
            f.in_flight = f.in_flight.saturating_sub(1);
        }
    }

    fn failed(&mut self, key: K, now: Instant, settings: &ThrottleSettings) {
        let free_failures = self.free_failures;
        self.ensure(&key, now, settings);
        let Some(f) = self.entries.get_mut(&key) else {
            return;
        };
        if now.saturating_duration_since(f.last) >= settings.forget_after {
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
        if f.count > free_failures {
            let doublings = (f.count - free_failures - 1).min(31);
            let delay = settings
                .base_delay
                .saturating_mul(1 << doublings)
                .min(settings.max_delay);
            f.blocked_until = now + delay;
        }
        self.rerank(&key);
    }

    /// Forgets the failures of `key`; its attempts in flight still count.
    fn forget(&mut self, key: &K, now: Instant) {
        match self.entries.get_mut(key) {
            Some(f) if f.in_flight > 0 => {
                f.count = 0;
                f.blocked_until = now;
                self.rerank(key);
            }
            Some(_) => self.remove(key),
            None => {}
        }
    }

    /// Sweeps forgotten keys out from the front of each class; if none
    /// was, drops the first key of the first class that has one (see the
    /// module docs). Only when the table is full.
    fn make_room(&mut self, now: Instant, settings: &ThrottleSettings) {
        let mut swept = false;
        for class in 0..2 {
            while let Some((&(last, _), key)) = self.order[class].first_key_value() {
                let forgotten = now.saturating_duration_since(last) >= settings.forget_after
                    && self.entries.get(key).is_none_or(|f| f.blocked_until <= now);
                if !forgotten {
                    break;
                }
                let key = key.clone();
                self.remove(&key);
                swept = true;
            }
        }
        if swept {
            return;
        }
        let first = self.order.iter().find_map(|o| o.first_key_value());
        if let Some((_, key)) = first {
            let key = key.clone();
            self.remove(&key);
        }
    }
}

/// The part of a client address failures count against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum AddressKey {
    V4(u32),
    /// The /64 prefix.
    V6(u64),
}

impl AddressKey {
    fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => AddressKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressKey::V4(u32::from(v4)),
                None => AddressKey::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// The failure throttle (see the module docs).
#[derive(Debug)]
pub struct AuthThrottle {
    settings: ThrottleSettings,
    accounts: Table<String>,
    addresses: Table<AddressKey>,
}

impl AuthThrottle {
    /// A throttle with these bounds.
    pub fn new(settings: ThrottleSettings) -> Self {
        Self {
            accounts: Table::new(settings.account_free_failures, true),
            addresses: Table::new(settings.address_free_failures, false),
            settings,
        }
    }

    /// Whether an attempt for `account` (normalized) from `ip` may be
    /// checked at `now`.
    pub fn check(&self, now: Instant, account: &str, ip: Option<IpAddr>) -> Result<(), Blocked> {
        let by_account = self.accounts.blocked_until(account, now);
        let by_address = ip.and_then(|ip| self.addresses.blocked_until(&AddressKey::of(ip), now));
        match by_account.max(by_address) {
            Some(until) => Err(Blocked { until }),
            None => Ok(()),
        }
    }

    /// Admits an attempt for `account` (normalized) from `ip` at `now`, to
    /// be settled with [`end`](Self::end) exactly once; refused if either
    /// is blocked or would be were the attempts in flight for it to fail.
    pub fn begin(
        &mut self,
        now: Instant,
        account: &str,
        ip: Option<IpAddr>,
    ) -> Result<(), Refused> {
        let address = ip.map(AddressKey::of);
        self.accounts.admits(account, now, &self.settings)?;
        if let Some(a) = &address {
            self.addresses.admits(a, now, &self.settings)?;
        }
        self.accounts.begin(account.to_owned(), now, &self.settings);
        if let Some(a) = address {
            self.addresses.begin(a, now, &self.settings);
        }
        Ok(())
    }

    /// Settles an attempt admitted by [`begin`](Self::begin) at `now`.
    pub fn end(&mut self, now: Instant, account: &str, ip: Option<IpAddr>, how: Settled) {
        let address = ip.map(AddressKey::of);
        self.accounts.settle(account);
        if let Some(a) = &address {
            self.addresses.settle(a);
        }
        match how {
            Settled::Succeeded => self.succeeded(now, account),
            Settled::Failed => self.failed(now, account, ip),
            Settled::Abandoned => {}
        }
    }

    /// An attempt for `account` from `ip` failed at `now`.
    pub fn failed(&mut self, now: Instant, account: &str, ip: Option<IpAddr>) {
        self.accounts
            .failed(account.to_owned(), now, &self.settings);
        if let Some(ip) = ip {
            self.addresses
                .failed(AddressKey::of(ip), now, &self.settings);
        }
    }

    /// `account` authenticated: its failures are forgotten.
    pub fn succeeded(&mut self, now: Instant, account: &str) {
        self.accounts.forget(&account.to_owned(), now);
    }

    /// Keys held (accounts, addresses).
    pub fn len(&self) -> (usize, usize) {
        (self.accounts.entries.len(), self.addresses.entries.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ThrottleSettings {
        ThrottleSettings {
            account_free_failures: 3,
            address_free_failures: 5,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(8),
            forget_after: Duration::from_secs(60),
            max_entries: 4,
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn an_account_is_blocked_after_its_free_failures_for_a_doubling_time_up_to_the_maximum() {
        let t0 = Instant::now();
        let mut t = AuthThrottle::new(settings());
        let from = ip("192.0.2.1");
        for i in 0..3 {
            assert_eq!(t.check(t0, "alice", from), Ok(()), "failure {i}");
            t.failed(t0, "alice", from);
        }
        // the fourth failure blocks for 1 s
        t.failed(t0, "alice", from);
        let s = Duration::from_secs(1);
        assert_eq!(t.check(t0, "alice", None), Err(Blocked { until: t0 + s }));
        assert_eq!(t.check(t0 + s, "alice", None), Ok(()));
        // then 2 s, 4 s, 8 s, and no more than 8 s
        let mut now = t0 + s;
        for delay in [2, 4, 8, 8, 8] {
            t.failed(now, "alice", None);
            let until = now + Duration::from_secs(delay);
            assert_eq!(t.check(now, "alice", None), Err(Blocked { until }));
            now = until;
        }
        // other accounts are not affected
        assert_eq!(t.check(t0, "bob", None), Ok(()));
    }

    #[test]
    fn an_address_is_blocked_for_every_account_after_its_own_free_failures() {
        let t0 = Instant::now();
        let mut t = AuthThrottle::new(settings());
        let from = ip("2001:db8:1:2::7");
        for user in ["a", "b", "c", "d", "e"] {
            t.failed(t0, user, from);
        }
        assert_eq!(t.check(t0, "f", from), Ok(()));
        t.failed(t0, "f", from);
        let blocked = Err(Blocked {
            until: t0 + Duration::from_secs(1),
        });
        // another host of the same /64 is the same subscriber
        assert_eq!(t.check(t0, "g", ip("2001:db8:1:2::99")), blocked);
        assert_eq!(t.check(t0, "g", ip("2001:db8:1:3::7")), Ok(()));
        assert_eq!(t.check(t0, "g", None), Ok(()));
    }

    #[test]
    fn failures_are_forgotten_after_a_quiet_time_and_an_accounts_on_success() {
        let t0 = Instant::now();
        let mut t = AuthThrottle::new(settings());
        for _ in 0..4 {
            t.failed(t0, "alice", None);
        }
        assert!(t.check(t0, "alice", None).is_err());
        // a minute later the count starts over: one failure blocks nothing
        let later = t0 + Duration::from_secs(61);
        t.failed(later, "alice", None);
        assert_eq!(t.check(later, "alice", None), Ok(()));
        for _ in 0..3 {
            t.failed(later, "alice", None);
        }
        assert!(t.check(later, "alice", None).is_err());
        t.succeeded(later, "alice");
        assert_eq!(t.check(later, "alice", None), Ok(()));
    }

    #[test]
    fn attempts_in_flight_count_until_settled_and_only_failures_stay_counted() {
        let t0 = Instant::now();
        let mut t = AuthThrottle::new(settings());
        let from = ip("192.0.2.1");
        // free_failures 3: four may be in flight, as four may fail serially
        for i in 0..4 {
            assert_eq!(t.begin(t0, "alice", from), Ok(()), "attempt {i}");
        }
        assert_eq!(t.begin(t0, "alice", None), Err(Refused::InFlight));
        // an abandoned attempt frees its place without counting
        t.end(t0, "alice", from, Settled::Abandoned);
        assert_eq!(t.begin(t0, "alice", from), Ok(()));
        // a success forgets the account's failures, not the others in flight
        t.end(t0, "alice", from, Settled::Failed);
        t.end(t0, "alice", from, Settled::Succeeded);
        assert_eq!(t.begin(t0, "alice", from), Ok(()));
        assert_eq!(t.begin(t0, "alice", from), Ok(()));
        assert_eq!(t.begin(t0, "alice", None), Err(Refused::InFlight));
        // all four fail: blocked, as four serial failures would block it
        for _ in 0..4 {
            t.end(t0, "alice", from, Settled::Failed);
        }
        let blocked = Blocked {
            until: t0 + Duration::from_secs(1),
        };
        assert_eq!(t.begin(t0, "alice", None), Err(Refused::Blocked(blocked)));
        // after the block, one attempt at a time
        let later = t0 + Duration::from_secs(1);
        assert_eq!(t.begin(later, "alice", None), Ok(()));
        assert_eq!(t.begin(later, "alice", None), Err(Refused::InFlight));
        t.end(later, "alice", None, Settled::Abandoned);
        // the address counted its attempts in flight too, and was settled
        assert_eq!(
            t.addresses.entries[&AddressKey::of(from.unwrap())].in_flight,
            0
        );
    }

    #[test]
    fn an_address_that_failed_admits_at_most_its_free_failures_plus_one_in_flight_across_accounts()
    {
        let t0 = Instant::now();
        let mut t = AuthThrottle::new(settings());
        let from = ip("2001:db8::1");
        // no failures yet: logins from one address (a NAT) do not wait on
        // each other, however many are in flight
        for user in ["a", "b", "c", "d", "e", "f", "g", "h"] {
            assert_eq!(t.begin(t0, user, from), Ok(()), "{user}");
        }
        for user in ["a", "b", "c", "d", "e", "f", "g", "h"] {
            t.end(t0, user, from, Settled::Abandoned);
        }
        // once it failed, what is in flight counts as possible failures
        t.begin(t0, "x", from).unwrap();
        t.end(t0, "x", from, Settled::Failed);
        for user in ["a", "b", "c", "d", "e"] {
            assert_eq!(t.begin(t0, user, from), Ok(()), "{user}");
        }
        assert_eq!(t.begin(t0, "g", ip("2001:db8::2")), Err(Refused::InFlight));
        assert_eq!(t.begin(t0, "g", None), Ok(()));
    }

    #[test]
    fn a_full_table_sweeps_forgotten_keys_and_then_drops_the_oldest() {
        let t0 = Instant::now();
        let mut t = AuthThrottle::new(settings());
        for (i, user) in ["a", "b", "c", "d"].into_iter().enumerate() {
            t.failed(t0 + Duration::from_secs(i as u64), user, None);
        }
        assert_eq!(t.len(), (4, 0));
        // none forgotten yet: the oldest ("a") makes room
        t.failed(t0 + Duration::from_secs(10), "e", None);
        assert_eq!(t.len(), (4, 0));
        assert!(!t.accounts.entries.contains_key("a"));
        // all forgotten: swept out
        t.failed(t0 + Duration::from_secs(200), "f", None);
        assert_eq!(t.len(), (1, 0));
    }

    #[test]
    fn fresh_names_failing_once_never_push_a_blocked_account_out_of_a_full_table() {
        let t0 = Instant::now();
        let mut t = AuthThrottle::new(settings());
        for i in 0..4 {
            t.failed(t0 + Duration::from_millis(i), "victim", None);
        }
        let blocked = t.check(t0 + Duration::from_millis(10), "victim", None);
        assert!(blocked.is_err(), "four failures block it (3 free)");
        // a guesser churns the table with 100 fresh names, each failing once
        for i in 0..100u64 {
            t.failed(t0 + Duration::from_millis(20 + i), &format!("n{i}"), None);
        }
        assert_eq!(t.len().0, 4, "the table stays at its bound");
        assert_eq!(
            t.check(t0 + Duration::from_millis(200), "victim", None),
            blocked,
            "still blocked, until the same instant"
        );
        // with only blocked keys left, the one that failed longest ago goes
        for u in ["x", "y", "z"] {
            for i in 0..4 {
                t.failed(t0 + Duration::from_millis(300 + i), u, None);
            }
        }
        t.failed(t0 + Duration::from_millis(400), "w", None);
        assert!(
            t.check(t0 + Duration::from_millis(500), "victim", None)
                .is_ok()
        );
        assert!(t.check(t0 + Duration::from_millis(500), "x", None).is_err());
    }
}
