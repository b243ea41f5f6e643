//! Per-session traffic shaping: a token bucket over the bytes a client
//! sends. A session over its budget is not cut off; the CM simply stops
//! reading from it until the bucket refills, so QUIC flow control slows the
//! sender down and a flooding client cannot starve the others. Sans-IO: the
//! caller passes the time.

use std::time::{Duration, Instant};

/// A token bucket (see the module docs).
#[derive(Clone, Debug)]
pub struct Shaper {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Shaper {
    /// `rate` bytes per second sustained, `burst` bytes at once.
    pub fn new(rate: u64, burst: u64, now: Instant) -> Self {
        Self {
            rate: rate.max(1) as f64,
            burst: burst.max(1) as f64,
            tokens: burst.max(1) as f64,
            last: now,
        }
    }

    /// Accounts `bytes` read at `now`; returns how long to wait before
    /// reading again (zero while within the budget).
    pub fn take(&mut self, bytes: usize, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst) - bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_pass_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut s = Shaper::new(1000, 4000, t0);
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
    fn idle_time_refills_only_up_to_the_burst() {
        let t0 = Instant::now();
        let mut s = Shaper::new(100, 1000, t0);
        s.take(1000, t0);
        assert_eq!(s.take(1000, t0 + Duration::from_secs(3600)), Duration::ZERO);
        assert!(s.take(1, t0 + Duration::from_secs(3600)) > Duration::ZERO);
    }
}
