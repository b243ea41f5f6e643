//! Jittered exponential backoff between reconnection attempts, sans-IO:
//! the caller sleeps for what [`Backoff::next_delay`] says, and seeds the
//! generator the jitter comes from (so many CMs reconnecting to a restarted
//! peer spread out, and tests are repeatable).

use std::time::Duration;

use rand::Rng;
use rand::rngs::SmallRng;

/// Delays that double from `initial` up to `max`, each plus a random
/// jitter of up to half of it.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    /// The step of the next delay.
    step: Duration,
    rng: SmallRng,
}

impl Backoff {
    /// Steps from `initial` doubling to `max`; jitter drawn from `rng`.
    pub fn new(initial: Duration, max: Duration, rng: SmallRng) -> Self {
        Self {
            initial,
            max,
            step: initial.min(max),
            rng,
        }
    }

    /// How long to wait before the next attempt: the current step plus up
    /// to half of it (whole milliseconds); the step then doubles, up to the
    /// maximum.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        let half_ms = u64::try_from(step.as_millis() / 2).unwrap_or(u64::MAX);
        let jitter = Duration::from_millis(self.rng.gen_range(0..=half_ms));
        self.step = step.saturating_mul(2).min(self.max);
        step + jitter
    }

    /// Starts again from the initial step (e.g. after a link that worked).
    pub fn reset(&mut self) {
        self.step = self.initial.min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn backoff(seed: u64) -> Backoff {
        Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(3),
            SmallRng::seed_from_u64(seed),
        )
    }

    #[test]
    fn steps_double_up_to_the_maximum_with_up_to_half_as_much_jitter() {
        let mut b = backoff(1);
        let steps = [100, 200, 400, 800, 1600, 3000, 3000, 3000];
        for step in steps {
            let step = Duration::from_millis(step);
            let delay = b.next_delay();
            assert!(
                delay >= step && delay <= step + step / 2,
                "{delay:?} for step {step:?}"
            );
        }
    }

    #[test]
    fn the_jitter_varies_and_covers_its_range() {
        let mut seen_low = false;
        let mut seen_high = false;
        let mut distinct = std::collections::HashSet::new();
        for seed in 0..200 {
            let delay = backoff(seed).next_delay();
            distinct.insert(delay);
            seen_low |= delay < Duration::from_millis(110);
            seen_high |= delay > Duration::from_millis(140);
        }
        assert!(seen_low && seen_high && distinct.len() > 20, "{distinct:?}");
    }

    #[test]
    fn the_same_seed_gives_the_same_delays() {
        let (mut a, mut b) = (backoff(7), backoff(7));
        for _ in 0..10 {
            assert_eq!(a.next_delay(), b.next_delay());
        }
    }

    #[test]
    fn reset_starts_from_the_initial_step() {
        let mut b = backoff(3);
        for _ in 0..5 {
            b.next_delay();
        }
        b.reset();
        let delay = b.next_delay();
        assert!(delay <= Duration::from_millis(150), "{delay:?}");
    }

    #[test]
    fn an_initial_step_above_the_maximum_is_capped() {
        let mut b = Backoff::new(
            Duration::from_secs(10),
            Duration::from_secs(1),
            SmallRng::seed_from_u64(0),
        );
        assert!(b.next_delay() <= Duration::from_millis(1500));
    }
}
