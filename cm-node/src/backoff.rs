//! The CM's reconnection pacing for its own links (to the core, to the
//! balancer): a [`Reconnect`] counts attempts against the shared schedule
//! ([`xmpp_stream::pacing::Backoff`]) and draws its jitter from a seeded
//! generator, so many CMs reconnecting to a restarted peer spread out and
//! tests are repeatable. Sans-IO: the caller sleeps for what it says.

use std::time::Duration;

use rand::Rng;
use rand::rngs::SmallRng;
use xmpp_stream::pacing::Backoff;

/// Attempts made since the link last worked, and the delays between them.
#[derive(Clone, Debug)]
pub struct Reconnect {
    schedule: Backoff,
    attempt: u32,
    rng: SmallRng,
}

impl Reconnect {
    /// Delays following `schedule`; jitter drawn from `rng`.
    pub fn new(schedule: Backoff, rng: SmallRng) -> Self {
        Self {
            schedule,
            attempt: 0,
            rng,
        }
    }

    /// How long to wait before the next attempt (the first at once).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.schedule.delay(self.attempt, self.rng.r#gen());
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// The link worked: the next loss is retried at once, then from the
    /// shortest delay.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    const SCHEDULE: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(3));

    fn reconnect(seed: u64) -> Reconnect {
        Reconnect::new(SCHEDULE, SmallRng::seed_from_u64(seed))
    }

    #[test]
    fn the_first_retry_is_at_once_then_delays_follow_the_schedule() {
        let mut r = reconnect(1);
        assert_eq!(r.next_delay(), Duration::ZERO);
        for attempt in 1..12 {
            let ceiling = SCHEDULE.ceiling(attempt);
            let delay = r.next_delay();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} for attempt {attempt}"
            );
        }
    }

    #[test]
    fn the_jitter_varies_with_the_seed_and_repeats_with_it() {
        let second = |seed| {
            let mut r = reconnect(seed);
            r.next_delay();
            r.next_delay()
        };
        let distinct: std::collections::HashSet<_> = (0..200).map(second).collect();
        assert!(distinct.len() > 20, "{distinct:?}");
        assert_eq!(second(7), second(7));
    }

    #[test]
    fn reset_starts_again_at_once() {
        let mut r = reconnect(3);
        for _ in 0..5 {
            r.next_delay();
        }
        r.reset();
        assert_eq!(r.next_delay(), Duration::ZERO);
        assert!(r.next_delay() <= Duration::from_millis(100));
    }
}
