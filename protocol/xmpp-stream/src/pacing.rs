//! How fast things may go, sans-IO (the caller passes the time and the
//! randomness):
//!
//! - [`TokenBucket`]: the rates clients are held to. The CM shapes each
//!   stream's reads with it (a session over its budget is not cut off; the
//!   CM stops reading until the bucket refills, so flow control slows the
//!   sender and a flooding client cannot starve the others); the core
//!   limits in-band registrations with it.
//! - [`Backoff`]: the jittered exponential backoff between reconnection
//!   attempts, for phones (the client SDK: the first retry at once) and for
//!   the cluster's own links (CM to core, CM to balancer: the first retry
//!   too after a random part of the first step), so a fleet that lost a peer
//!   does not come back in one wave.

use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `rate` tokens per second sustained, `burst` at once; starts full.
    pub fn new(rate: u64, burst: u64, now: Instant) -> Self {
        Self {
            rate: rate.max(1) as f64,
            burst: burst.max(1) as f64,
            tokens: burst.max(1) as f64,
            last: now,
        }
    }

    /// Takes `amount` tokens at `now`, going into debt if there are not
    /// enough; returns how long until the debt is paid (zero while within
    /// the budget), i.e. how long to wait before using more.
    pub fn take(&mut self, amount: usize, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= amount as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// Takes `amount` tokens at `now` if that many are there; otherwise
    /// takes nothing and returns false.
    pub fn try_take(&mut self, amount: usize, now: Instant) -> bool {
        self.refill(now);
        if self.tokens < amount as f64 {
            return false;
        }
        self.tokens -= amount as f64;
        true
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }
}

/// A reconnection schedule: attempt `n ≥ 1` after `min(base × 2^(n-1),
/// cap)`, scaled by a random factor in 0.5–1; attempt 0 (the first retry
/// after a loss) either at once ([`Backoff::new`]: whoever just lost a link
/// wants it back) or after a uniformly random part of `base`
/// ([`Backoff::spread`]: peers that lost the same link together, such as
/// servers whose core restarted, come back spread over `base`, not in one
/// wave).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    /// Attempt 0 waits 0..base instead of nothing.
    spread_first: bool,
}

impl Backoff {
    /// Delays doubling from `base` (before the second attempt) to `cap`;
    /// the first attempt at once.
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            spread_first: false,
        }
    }

    /// Like [`Backoff::new`], but the first attempt too waits: a uniformly
    /// random delay in 0..`base`.
    pub const fn spread(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            spread_first: true,
        }
    }

    /// The longest delay.
    pub const fn cap(&self) -> Duration {
        self.cap
    }

    /// The delay before attempt `attempt` (0: the first), before jitter.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        match attempt {
            0 if self.spread_first => self.base.min(self.cap),
            0 => Duration::ZERO,
            _ => self
                .base
                .saturating_mul(1u32 << (attempt - 1).min(20))
                .min(self.cap),
        }
    }

    /// The delay before attempt `attempt`, where `jitter` is a uniform
    /// random number in [0, 1] drawn by the caller (values outside are
    /// clamped): the ceiling times `jitter` for a spread first attempt,
    /// otherwise times `0.5 + jitter / 2`.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let jitter = jitter.clamp(0.0, 1.0);
        let factor = if attempt == 0 {
            jitter
        } else {
            0.5 + jitter / 2.0
        };
        self.ceiling(attempt).mul_f64(factor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_at_once_then_doubles_to_the_cap_with_jitter_in_range() {
        let b = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        assert_eq!(b.delay(0, 1.0), Duration::ZERO);
        assert_eq!(b.ceiling(1), Duration::from_millis(200));
        assert_eq!(b.ceiling(2), Duration::from_millis(400));
        assert_eq!(b.ceiling(8), Duration::from_millis(25_600));
        assert_eq!(b.ceiling(9), Duration::from_secs(30));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(30));
        assert_eq!(b.delay(1, 0.0), Duration::from_millis(100));
        assert_eq!(b.delay(1, 1.0), Duration::from_millis(200));
        assert_eq!(b.delay(2, 0.5), Duration::from_millis(300));
        assert_eq!(b.delay(2, 7.0), Duration::from_millis(400), "clamped");
        assert_eq!(b.cap(), Duration::from_secs(30));
    }

    #[test]
    fn a_spread_backoff_waits_a_random_part_of_the_base_before_the_first_attempt() {
        let b = Backoff::spread(Duration::from_millis(200), Duration::from_secs(30));
        assert_eq!(b.ceiling(0), Duration::from_millis(200));
        assert_eq!(b.delay(0, 0.0), Duration::ZERO);
        assert_eq!(b.delay(0, 0.25), Duration::from_millis(50));
        assert_eq!(b.delay(0, 1.0), Duration::from_millis(200));
        assert_eq!(b.delay(0, -3.0), Duration::ZERO, "clamped");
        // the rest of the schedule is the same as without the spread
        let at_once = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        for attempt in 1..12 {
            assert_eq!(b.ceiling(attempt), at_once.ceiling(attempt));
            assert_eq!(b.delay(attempt, 0.3), at_once.delay(attempt, 0.3));
        }
        // a base above the cap is capped for the first attempt too
        let tight = Backoff::spread(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(tight.delay(0, 1.0), Duration::from_secs(1));
    }

    #[test]
    fn bursts_pass_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut s = TokenBucket::new(1000, 4000, t0);
        assert_eq!(s.take(4000, t0), Duration::ZERO);
        // 1000 bytes over budget at 1000 B/s: wait one second
        assert_eq!(s.take(1000, t0), Duration::from_secs(1));
        // after that second the debt is paid, nothing more is owed
        assert_eq!(s.take(0, t0 + Duration::from_secs(1)), Duration::ZERO);
        // over a long run the average is the rate
        let mut now = t0 + Duration::from_secs(1);
        let mut waited = Duration::ZERO;
        for _ in 0..100 {
            let w = s.take(500, now);
            waited += w;
            now += w;
        }
        let secs = waited.as_secs_f64();
        assert!((49.0..=51.0).contains(&secs), "{secs}");
    }

    #[test]
    fn try_take_refuses_without_going_into_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 2, t0);
        assert!(b.try_take(1, t0));
        assert!(b.try_take(1, t0));
        assert!(!b.try_take(1, t0));
        // a refusal costs nothing: a tenth of a second later one token is back
        assert!(!b.try_take(1, t0 + Duration::from_millis(50)));
        assert!(b.try_take(1, t0 + Duration::from_millis(100)));
    }

    #[test]
    fn idle_time_refills_only_up_to_the_burst() {
        let t0 = Instant::now();
        let mut s = TokenBucket::new(100, 1000, t0);
        s.take(1000, t0);
        assert_eq!(s.take(1000, t0 + Duration::from_secs(3600)), Duration::ZERO);
        assert!(s.take(1, t0 + Duration::from_secs(3600)) > Duration::ZERO);
    }
}
