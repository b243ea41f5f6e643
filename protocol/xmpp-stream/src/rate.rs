//! Rate limits on what clients may do: a token bucket, sans-IO (the caller
//! passes the time). The CM shapes each stream's reads with it (a session
//! over its budget is not cut off; the CM stops reading until the bucket
//! refills, so flow control slows the sender and a flooding client cannot
//! starve the others); the core limits in-band registrations with it.

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

#[cfg(test)]
mod tests {
    use super::*;

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
